//! The spool format (pure): the raw timed stream as length-prefixed, checksummed,
//! hash-chained records.
//!
//! ```text
//! file   = MAGIC record*
//! MAGIC  = "SASPOOL1"                                   (8 bytes)
//! record = len:u32le  crc:u32le  chain:[u8; 32]  payload:[u8; len]
//!   payload = one event as a JSON line (no newline), see `event`
//!   crc     = CRC-32 (IEEE) of chain ‖ payload          — catches torn or corrupt writes
//!   chain   = SHA-256(previous chain ‖ payload)          — the hash chain; the first
//!             record's "previous chain" is 32 zero bytes
//! ```
//!
//! The CRC tells a torn tail (a crash mid-write: the record is incomplete) or random
//! corruption from a good record; the chain makes alteration evident: changing, removing
//! or reordering any record changes every chain value after it, so a chain value kept
//! elsewhere (the last one delivered to a sink, the copy in S3) exposes the edit. Someone
//! able to rewrite the whole file and every copy can recompute the chain: tamper
//! *evidence* relative to the copies, not a signature.

use sha2::{Digest, Sha256};

/// First bytes of every spool file.
pub const MAGIC: &[u8; 8] = b"SASPOOL1";
/// Bytes before a record's payload.
pub const HEADER_LEN: usize = 4 + 4 + 32;
/// Largest payload accepted when reading (an event carries at most one PTY chunk, base64).
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// A chain value.
pub type Chain = [u8; 32];

/// The chain value before the first record.
pub const CHAIN_START: Chain = [0; 32];

/// The chain value after `payload`.
pub fn chain_next(prev: &Chain, payload: &[u8]) -> Chain {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(payload);
    h.finalize().into()
}

/// Encodes one record whose chain value is `chain` (from [`chain_next`]).
///
/// # Panics
/// Never for payloads up to 4 GiB; larger ones are a caller bug (events are bounded).
pub fn encode_record(chain: &Chain, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut crc = crc32fast::Hasher::new();
    crc.update(chain);
    crc.update(payload);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(chain);
    out.extend_from_slice(payload);
    out
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its chain value as stored.
    pub chain: Chain,
    /// The event JSON.
    pub payload: Vec<u8>,
}

/// Why a spool could not be read past some point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// The file does not start with [`MAGIC`].
    #[error("not a spool file (no SASPOOL1 header)")]
    BadMagic,
    /// The record at this offset ends past the end of the file: a write was cut short.
    #[error("record at byte {offset} is incomplete (a write was cut short)")]
    Truncated {
        /// Byte offset of the record.
        offset: u64,
    },
    /// The record at this offset claims an impossible length.
    #[error("record at byte {offset} claims {len} bytes (more than {MAX_PAYLOAD})")]
    TooLarge {
        /// Byte offset of the record.
        offset: u64,
        /// The claimed length.
        len: u64,
    },
    /// The record's CRC does not match: corrupt.
    #[error("record at byte {offset} fails its checksum (corrupt)")]
    BadChecksum {
        /// Byte offset of the record.
        offset: u64,
    },
    /// Reading the file failed at this offset (an I/O error, not the file's content):
    /// nothing can be said of what follows.
    #[error("cannot read past byte {offset}: {reason}")]
    Unreadable {
        /// Byte offset of the record.
        offset: u64,
        /// The error.
        reason: String,
    },
}

/// Decodes the record at the start of `buf` (at file offset `offset`): the record and
/// its size, `Ok(None)` when `buf` is empty.
///
/// # Errors
/// See [`SpoolError`]; `Truncated` when `buf` ends inside the record.
pub fn decode_record(buf: &[u8], offset: u64) -> Result<Option<(Record, usize)>, SpoolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Err(SpoolError::Truncated { offset });
    };
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let len = word(0) as usize;
    if len > MAX_PAYLOAD {
        return Err(SpoolError::TooLarge {
            offset,
            len: len as u64,
        });
    }
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Err(SpoolError::Truncated { offset });
    };
    let mut chain = [0u8; 32];
    chain.copy_from_slice(&header[8..HEADER_LEN]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&chain);
    crc.update(payload);
    if crc.finalize() != word(4) {
        return Err(SpoolError::BadChecksum { offset });
    }
    Ok(Some((
        Record {
            chain,
            payload: payload.to_vec(),
        },
        HEADER_LEN + len,
    )))
}

/// The first break in a hash chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {index}: {what}")]
pub struct ChainBreak {
    /// 0-based record index.
    pub index: u64,
    /// What is wrong.
    pub what: String,
}

/// Checks records one at a time against the chain (and, when the payloads are events,
/// their sequence numbers for gaps).
#[derive(Debug, Clone)]
pub struct ChainChecker {
    prev: Chain,
    index: u64,
    next_seq: Option<u64>,
}

impl Default for ChainChecker {
    fn default() -> Self {
        Self {
            prev: CHAIN_START,
            index: 0,
            next_seq: None,
        }
    }
}

impl ChainChecker {
    /// A checker at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records checked so far.
    pub fn count(&self) -> u64 {
        self.index
    }

    /// The chain value after the last record checked.
    pub fn head(&self) -> Chain {
        self.prev
    }

    /// Checks the next record: its chain value, and that its event's `seq` follows the
    /// previous one.
    ///
    /// # Errors
    /// The first alteration or gap.
    pub fn check(&mut self, record: &Record) -> Result<(), ChainBreak> {
        let at = self.index;
        let want = chain_next(&self.prev, &record.payload);
        if want != record.chain {
            return Err(ChainBreak {
                index: at,
                what: "chain value does not match: this record or one before it was altered, removed or reordered".into(),
            });
        }
        let seq = serde_json::from_slice::<serde_json::Value>(&record.payload)
            .ok()
            .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
        match (seq, self.next_seq) {
            (Some(s), Some(expected)) if s != expected => {
                return Err(ChainBreak {
                    index: at,
                    what: format!("event seq {s} where {expected} was expected (a gap)"),
                })
            }
            (None, _) => {
                return Err(ChainBreak {
                    index: at,
                    what: "payload is not an event with a seq".into(),
                })
            }
            _ => {}
        }
        self.next_seq = seq.map(|s| s + 1);
        self.prev = want;
        self.index += 1;
        Ok(())
    }
}

/// A whole spool holding `payloads` in order (for tests of what reads spools).
#[cfg(test)]
pub(crate) fn encode_spool<P: AsRef<[u8]>>(payloads: impl IntoIterator<Item = P>) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let mut chain = CHAIN_START;
    for p in payloads {
        chain = chain_next(&chain, p.as_ref());
        out.extend(encode_record(&chain, p.as_ref()));
    }
    out
}

/// Hex of a chain value.
pub fn hex(chain: &Chain) -> String {
    chain.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spool(payloads: &[&str]) -> Vec<u8> {
        encode_spool(payloads)
    }

    fn read_all(bytes: &[u8]) -> (Vec<Record>, Option<SpoolError>) {
        let mut pos = MAGIC.len();
        let mut out = Vec::new();
        loop {
            match decode_record(&bytes[pos..], pos as u64) {
                Ok(Some((r, n))) => {
                    out.push(r);
                    pos += n;
                }
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    const EVENTS: [&str; 3] = [
        r#"{"seq":0,"at_ms":0,"type":"resize","cols":1,"rows":1}"#,
        r#"{"seq":1,"at_ms":5,"type":"output","data":"aGk="}"#,
        r#"{"seq":2,"at_ms":9,"type":"end","exit_code":0,"how":"exited"}"#,
    ];

    #[test]
    fn records_round_trip_and_the_chain_verifies() {
        let bytes = spool(&EVENTS);
        let (records, err) = read_all(&bytes);
        assert_eq!(err, None);
        assert_eq!(records.len(), 3);
        let mut c = ChainChecker::new();
        for r in &records {
            c.check(r).unwrap();
        }
        assert_eq!(c.count(), 3);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_corruption_fails_the_checksum() {
        let bytes = spool(&EVENTS);
        let (records, err) = read_all(&bytes[..bytes.len() - 3]);
        assert_eq!(records.len(), 2);
        assert!(matches!(err, Some(SpoolError::Truncated { .. })));
        let mut bad = bytes.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x20;
        let (records, err) = read_all(&bad);
        assert_eq!(records.len(), 2);
        assert!(matches!(err, Some(SpoolError::BadChecksum { .. })));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 36]);
        assert!(matches!(
            read_all(&huge).1,
            Some(SpoolError::TooLarge { .. })
        ));
    }

    #[test]
    fn alteration_removal_and_reordering_break_the_chain() {
        // Altered with a recomputed CRC (what an editor would do): the chain catches it.
        let (mut records, _) = read_all(&spool(&EVENTS));
        records[1].payload = br#"{"seq":1,"at_ms":5,"type":"output","data":"aG8="}"#.to_vec();
        let mut c = ChainChecker::new();
        c.check(&records[0]).unwrap();
        assert_eq!(c.check(&records[1]).unwrap_err().index, 1);

        let (mut records, _) = read_all(&spool(&EVENTS));
        records.remove(1);
        let mut c = ChainChecker::new();
        c.check(&records[0]).unwrap();
        assert_eq!(c.check(&records[1]).unwrap_err().index, 1);

        // A chain recomputed over a stream with a removed event still shows the gap.
        let bytes = spool(&[EVENTS[0], EVENTS[2]]);
        let (records, _) = read_all(&bytes);
        let mut c = ChainChecker::new();
        c.check(&records[0]).unwrap();
        let e = c.check(&records[1]).unwrap_err();
        assert!(e.what.contains("gap"), "{e}");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_record(&bytes, 0);
        }
    }
}
