//! The one reader of spools: a live session's deriver following the file as the writer
//! appends to it, a rebuild after a crash, `verify`, `replay` and `transcript` (a local
//! file, an S3 body, standard input) all read records through [`Reader`].
//!
//! Memory is bounded whatever the input: the reader holds at most one read of
//! [`READ_CHUNK`] plus one record (a record is at most [`MAX_PAYLOAD`](super::format::MAX_PAYLOAD) bytes, and a
//! header claiming more is an error before anything is allocated for it).
//!
//! A read error is an error ([`ReadError::Unreadable`]), never taken for the end of the
//! spool: that would look like a torn tail, and a rebuild would cut good records off.

use super::format::{decode_record, Chain, ChainChecker, Record, SpoolError, MAGIC};
use crate::recorder::Event;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Most bytes a [`Reader`] reads from its input at once.
pub const READ_CHUNK: usize = 256 * 1024;

/// Why a [`Reader`] cannot read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The input ends inside the record at this offset: a write cut short (a crash); the
    /// records before it are whole.
    #[error("the record at byte {0} is incomplete (a write was cut short)")]
    Torn(u64),
    /// Reading failed (an I/O error, not the spool's content): nothing can be said of
    /// what follows.
    #[error("{0}")]
    Unreadable(String),
    /// A record is corrupt, altered, out of order, or not an event; or the input ends
    /// before a limit it was known to reach (cut after it was written).
    #[error("{0}")]
    Corrupt(String),
}

/// Why a spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file could not be opened or its header read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It does not start with the spool header.
    #[error("{}", SpoolError::BadMagic)]
    NotASpool,
}

/// Reads a spool's records in order, from its header on; never past a limit when one is
/// given (what the writer has published, for a file still being written).
#[derive(Debug)]
pub struct Reader<R> {
    inner: R,
    /// Input offset after the last record handed out.
    pos: u64,
    /// Bytes read past `pos`, not yet handed out.
    buf: Vec<u8>,
    /// Of `buf`, bytes already handed out.
    used: usize,
    /// Records handed out.
    records: u64,
    /// When set, the hash chain is checked too.
    checker: Option<ChainChecker>,
    /// An error was returned: the iterator ends.
    failed: bool,
}

impl Reader<File> {
    /// Opens a spool file and checks its header.
    ///
    /// # Errors
    /// [`OpenError`]; a file too short for a header is not a spool.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        Self::new(File::open(path)?)
    }

    /// Forgets what was read ahead: the next read starts at [`Self::offset`] (the file
    /// was cut there and written again).
    ///
    /// # Errors
    /// The file cannot be positioned.
    pub fn reread(&mut self) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        self.buf = Vec::new();
        self.used = 0;
        self.inner.seek(SeekFrom::Start(self.pos)).map(|_| ())
    }
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    ///
    /// # Errors
    /// [`OpenError::NotASpool`] (also for input shorter than the header), or the read
    /// failed.
    pub fn new(mut inner: R) -> Result<Self, OpenError> {
        let mut magic = [0u8; 8];
        if let Err(e) = inner.read_exact(&mut magic) {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                OpenError::NotASpool
            } else {
                OpenError::Io(e)
            });
        }
        if &magic != MAGIC {
            return Err(OpenError::NotASpool);
        }
        Ok(Self {
            inner,
            pos: MAGIC.len() as u64,
            buf: Vec::new(),
            used: 0,
            records: 0,
            checker: None,
            failed: false,
        })
    }

    /// Checks the hash chain as it reads (a spool that is not this process's own).
    #[must_use]
    pub fn verifying(mut self) -> Self {
        self.checker = Some(ChainChecker::new());
        self
    }

    /// Input offset after the last record read.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Records read.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The next record, reading no byte at or past `limit` (`None`: to the end of the
    /// input); `None` there when it falls between records.
    ///
    /// # Errors
    /// See [`ReadError`]; with a `limit`, input that ends before it is `Corrupt` (it was
    /// cut after the bytes were written: waiting for them would never end).
    pub fn next_record(&mut self, limit: Option<u64>) -> Result<Option<Record>, ReadError> {
        loop {
            match decode_record(&self.buf[self.used..], self.pos) {
                Ok(Some((record, n))) => {
                    if let Some(checker) = &mut self.checker {
                        checker
                            .check(&record)
                            .map_err(|e| ReadError::Corrupt(e.to_string()))?;
                    }
                    self.used += n;
                    self.pos += n as u64;
                    self.records += 1;
                    if self.used == self.buf.len() {
                        self.used = 0;
                        self.buf.clear();
                        if self.buf.capacity() > 2 * READ_CHUNK {
                            self.buf = Vec::new();
                        }
                    }
                    return Ok(Some(record));
                }
                Ok(None) | Err(SpoolError::Truncated { .. }) => {
                    if self.fill(limit)? == 0 {
                        return if self.used == self.buf.len() {
                            Ok(None)
                        } else {
                            Err(ReadError::Torn(self.pos))
                        };
                    }
                }
                Err(e) => return Err(ReadError::Corrupt(format!("record {}: {e}", self.records))),
            }
        }
    }

    /// Reads more of the input after what is buffered, up to `limit`; the bytes read.
    fn fill(&mut self, limit: Option<u64>) -> Result<usize, ReadError> {
        let read_to = self.pos + (self.buf.len() - self.used) as u64;
        let room = limit.unwrap_or(u64::MAX).saturating_sub(read_to);
        if room == 0 {
            return Ok(0);
        }
        self.buf.drain(..self.used);
        self.used = 0;
        let want = room.min(READ_CHUNK as u64);
        let got = read_up_to(&mut self.inner, &mut self.buf, want).map_err(|e| {
            ReadError::Unreadable(
                SpoolError::Unreadable {
                    offset: read_to,
                    reason: e.to_string(),
                }
                .to_string(),
            )
        })?;
        if got == 0 {
            if let Some(limit) = limit.filter(|l| read_to < *l) {
                return Err(ReadError::Corrupt(format!(
                    "the spool ends at byte {read_to}, before the {limit} bytes written to it: it was cut"
                )));
            }
        }
        Ok(got)
    }

    /// The next record as an event, with its chain value.
    ///
    /// # Errors
    /// See [`Self::next_record`]; a record that is not an event is `Corrupt`.
    pub fn next_event(&mut self, limit: Option<u64>) -> Result<Option<(Event, Chain)>, ReadError> {
        let index = self.records;
        let Some(record) = self.next_record(limit)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&record.payload);
        let event = Event::from_json_line(&text)
            .map_err(|e| ReadError::Corrupt(format!("record {index}: not an event: {e}")))?;
        Ok(Some((event, record.chain)))
    }
}

/// Appends up to `want` bytes of `r` to `buf`, retrying interrupted reads; the count.
/// An error after some bytes were read returns those (the records they hold come
/// first); the next call meets the error again.
fn read_up_to(r: &mut impl Read, buf: &mut Vec<u8>, want: u64) -> std::io::Result<usize> {
    let before = buf.len();
    loop {
        let left = want - (buf.len() - before) as u64;
        match r.by_ref().take(left).read_to_end(buf) {
            Ok(_) => return Ok(buf.len() - before),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) if buf.len() > before => return Ok(buf.len() - before),
            Err(e) => return Err(e),
        }
    }
}

/// Records to the end of the input; the first error ends it.
impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record(None) {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::format::{encode_record, encode_spool};

    fn spool_of(payloads: &[&str]) -> Vec<u8> {
        encode_spool(payloads)
    }

    /// Hands out one byte per read, then fails (or ends).
    struct Trickle<'a>(&'a [u8], bool);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.split_first() {
                Some((b, rest)) if !buf.is_empty() => {
                    buf[0] = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ if self.1 => Err(std::io::Error::other("the disk went away")),
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn records_come_whole_from_any_input_and_a_torn_tail_or_a_read_error_is_said() {
        let bytes = spool_of(&["a", "bb", "ccc"]);
        let all: Vec<Record> = Reader::new(&bytes[..])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            all.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
            [b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()]
        );
        let trickled: Vec<Record> = Reader::new(Trickle(&bytes, false))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(trickled, all);

        // Cut inside the last record: two records, then Torn at its offset.
        let mut r = Reader::new(&bytes[..bytes.len() - 2]).unwrap();
        r.next().unwrap().unwrap();
        r.next().unwrap().unwrap();
        let second_end = r.offset();
        assert_eq!(r.next(), Some(Err(ReadError::Torn(second_end))));
        assert_eq!(r.next(), None, "ends after an error");

        // A read error is not the end of the spool.
        let mut r = Reader::new(Trickle(&bytes[..bytes.len() - 2], true)).unwrap();
        r.next().unwrap().unwrap();
        r.next().unwrap().unwrap();
        assert!(matches!(r.next(), Some(Err(ReadError::Unreadable(_)))));

        assert!(matches!(
            Reader::new(&b"SASPOO"[..]),
            Err(OpenError::NotASpool)
        ));
        assert!(matches!(
            Reader::new(&b"NOTASPOOL"[..]),
            Err(OpenError::NotASpool)
        ));
    }

    #[test]
    fn a_limit_is_never_read_past_and_input_ending_before_it_is_corrupt() {
        let bytes = spool_of(&["one", "two"]);
        let mut r = Reader::new(&bytes[..]).unwrap();
        let first_end = {
            let mut probe = Reader::new(&bytes[..]).unwrap();
            probe.next().unwrap().unwrap();
            probe.offset()
        };
        // A limit at a record's end: that record, then nothing (not an error), however
        // often it is asked; the next record once the limit moves.
        assert!(r.next_record(Some(first_end)).unwrap().is_some());
        assert_eq!(r.next_record(Some(first_end)), Ok(None));
        assert_eq!(r.next_record(Some(first_end)), Ok(None));
        assert!(r.next_record(Some(bytes.len() as u64)).unwrap().is_some());
        // Limits are record ends (the writer publishes whole records): one inside a
        // record leaves it incomplete.
        let mut r = Reader::new(&bytes[..]).unwrap();
        r.next_record(Some(first_end + 3)).unwrap();
        assert_eq!(
            r.next_record(Some(first_end + 3)),
            Err(ReadError::Torn(first_end))
        );
        // The input is shorter than a limit said was written: cut.
        let mut r = Reader::new(&bytes[..]).unwrap();
        r.next_record(None).unwrap();
        r.next_record(None).unwrap();
        let end = r.offset();
        assert!(matches!(
            r.next_record(Some(end + 10)),
            Err(ReadError::Corrupt(_))
        ));
    }

    #[test]
    fn an_altered_record_is_caught_by_its_checksum_or_by_the_chain_when_verifying() {
        let bytes = spool_of(&["{\"x\":1}", "{\"x\":2}"]);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let mut r = Reader::new(&flipped[..]).unwrap();
        r.next().unwrap().unwrap();
        assert!(matches!(r.next(), Some(Err(ReadError::Corrupt(_)))));
        // A record re-encoded with a valid CRC but the wrong chain: only the chain sees it.
        let mut forged = MAGIC.to_vec();
        forged.extend(encode_record(&[7; 32], b"{\"x\":1}"));
        assert!(Reader::new(&forged[..]).unwrap().next().unwrap().is_ok());
        let mut checked = Reader::new(&forged[..]).unwrap().verifying();
        assert!(matches!(checked.next(), Some(Err(ReadError::Corrupt(_)))));
        // A record that is not an event is corrupt for an event reader.
        let mut r = Reader::new(&bytes[..]).unwrap();
        assert!(matches!(r.next_event(None), Err(ReadError::Corrupt(_))));
    }
}
