//! `session-agent replay FILE`, `transcript FILE` and `verify FILE`: read a recording (the
//! spool `events.spool`, an `events.jsonl`, or an asciicast `.cast`) record by record and
//! play it to the terminal with its timing, print the clean text, or check its checksums
//! and hash chain. Memory stays bounded by the screen, whatever the
//! recording's size. The parsing and pacing are pure (`recorder::playback`); this module
//! is the file and terminal I/O.

use crate::recorder::playback::{detect, parse_line, Format, Frame, Pacer};
use crate::recorder::spool;
use crate::recorder::Transcript;
use clap::Args;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// `session-agent replay` options.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A recording: STATE_DIR/recordings/ID/events.spool, or ID.cast (local or
    /// downloaded from S3).
    pub file: PathBuf,
    /// Playback speed factor (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Pauses longer than this many seconds are shortened to it (skips idle time).
    #[arg(long, default_value_t = 2.0)]
    pub idle_limit: f64,
}

/// `session-agent transcript` options.
#[derive(Debug, Args)]
pub struct TranscriptArgs {
    /// A recording: STATE_DIR/recordings/ID/events.spool, or ID.cast.
    pub file: PathBuf,
}

/// A recording's lines, numbered from 1.
type Lines = Box<dyn Iterator<Item = Result<(usize, String), String>>>;

/// Reads a spool record by record, with bounded memory.
#[derive(Debug)]
pub struct SpoolReader<R> {
    inner: R,
    offset: u64,
    done: bool,
}

impl<R: Read> SpoolReader<R> {
    /// Checks the header.
    ///
    /// # Errors
    /// Not a spool, or unreadable.
    pub fn new(mut inner: R) -> Result<Self, String> {
        let mut magic = [0u8; 8];
        inner
            .read_exact(&mut magic)
            .map_err(|_| spool::SpoolError::BadMagic.to_string())?;
        if &magic != spool::MAGIC {
            return Err(spool::SpoolError::BadMagic.to_string());
        }
        Ok(Self {
            inner,
            offset: spool::MAGIC.len() as u64,
            done: false,
        })
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl<R: Read> Iterator for SpoolReader<R> {
    type Item = Result<spool::Record, spool::SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = vec![0u8; spool::HEADER_LEN];
        let got = read_full(&mut self.inner, &mut buf);
        if got == 0 {
            self.done = true;
            return None;
        }
        buf.truncate(got);
        if got == spool::HEADER_LEN {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len <= spool::MAX_PAYLOAD {
                buf.resize(spool::HEADER_LEN + len, 0);
                let n = read_full(&mut self.inner, &mut buf[spool::HEADER_LEN..]);
                buf.truncate(spool::HEADER_LEN + n);
            }
        }
        match spool::decode_record(&buf, self.offset) {
            Ok(Some((record, n))) => {
                self.offset += n as u64;
                Some(Ok(record))
            }
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

fn open(file: &PathBuf) -> Result<(Format, Lines), String> {
    let f =
        std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let mut reader = BufReader::new(f);
    // One open: the buffer's first fill shows whether this is a spool.
    let head = reader
        .fill_buf()
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if head.starts_with(spool::MAGIC) {
        let name = file.display().to_string();
        let records = SpoolReader::new(reader).map_err(|e| format!("{name}: {e}"))?;
        let lines = records.enumerate().map(move |(i, r)| match r {
            Ok(r) => Ok((i + 1, String::from_utf8_lossy(&r.payload).into_owned())),
            Err(e) => Err(format!("{name}: {e}")),
        });
        return Ok((Format::Events, Box::new(lines)));
    }
    let mut lines = reader
        .lines()
        .enumerate()
        .map(|(i, l)| {
            l.map(|l| (i + 1, l))
                .map_err(|e| format!("cannot read line {}: {e}", i + 1))
        })
        .peekable();
    let first = match lines.peek() {
        Some(Ok((_, l))) => l.clone(),
        Some(Err(e)) => return Err(e.clone()),
        None => return Err(format!("{} is empty", file.display())),
    };
    let format = detect(&first).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((format, Box::new(lines)))
}

/// Plays a recording to `out` with its timing.
///
/// # Errors
/// The file cannot be read or is not a recording (the line is named).
pub fn replay(args: &ReplayArgs, out: &mut impl Write) -> Result<(), String> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        return Err(format!("--speed {} must be a positive number", args.speed));
    }
    if !(args.idle_limit.is_finite() && args.idle_limit >= 0.0) {
        return Err(format!(
            "--idle-limit {} must be zero or more seconds",
            args.idle_limit
        ));
    }
    let (format, lines) = open(&args.file)?;
    // Checked finite and non-negative above; whole milliseconds are enough.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let idle_ms = (args.idle_limit * 1000.0) as u64;
    let mut pacer = Pacer::new(args.speed, idle_ms);
    for line in lines {
        let (n, text) = line?;
        if let Frame::Output { at_ms, data } =
            parse_line(format, n, &text).map_err(|e| format!("{}: {e}", args.file.display()))?
        {
            let wait = pacer.delay_ms(at_ms);
            if wait > 0 {
                std::thread::sleep(Duration::from_millis(wait));
            }
            out.write_all(&data)
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write: {e}"))?;
        }
    }
    Ok(())
}

/// Prints the clean transcript of a recording to `out`.
///
/// # Errors
/// The file cannot be read or is not a recording (the line is named).
pub fn transcript(args: &TranscriptArgs, out: &mut impl Write) -> Result<(), String> {
    let (format, lines) = open(&args.file)?;
    let mut t: Option<Transcript> = None;
    let write = |t: &mut Transcript, out: &mut dyn Write| -> Result<(), String> {
        for l in t.take_lines() {
            writeln!(out, "{l}").map_err(|e| format!("cannot write: {e}"))?;
        }
        Ok(())
    };
    for line in lines {
        let (n, text) = line?;
        let frame =
            parse_line(format, n, &text).map_err(|e| format!("{}: {e}", args.file.display()))?;
        if let (None, Frame::Size { cols, rows }) = (&t, &frame) {
            let mut tr = Transcript::new(*cols, *rows);
            tr.forget_taken_lines();
            t = Some(tr);
            continue;
        }
        let tr = t.get_or_insert_with(|| {
            let mut tr = Transcript::new(80, 24);
            tr.forget_taken_lines();
            tr
        });
        match frame {
            Frame::Size { cols, rows } => tr.resize(cols, rows),
            Frame::Output { data, .. } => {
                tr.process(&data);
                // After every output event, as the agent's recorder does: the same
                // commit points give the same transcript.
                write(tr, out)?;
            }
            Frame::Resize { cols, rows, .. } => tr.resize(cols, rows),
            Frame::Skip => {}
        }
    }
    if let Some(tr) = t.as_mut() {
        tr.finish();
        write(tr, out)?;
    }
    out.flush().map_err(|e| format!("cannot write: {e}"))
}

/// `session-agent verify` options.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// What to check: a spool (STATE_DIR/recordings/ID/events.spool), the copy uploaded
    /// at close (s3://BUCKET/PREFIX/ID.spool), or a streamed CloudWatch log
    /// (cloudwatch://LOG_GROUP/SESSION_ID; the group may contain '/'). S3 and CloudWatch
    /// are read with the standard AWS credential chain.
    pub source: String,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record's checksum and chain value are right and no event is missing.
    Intact {
        /// Records checked.
        records: u64,
        /// The chain value after the last record (compare with a copy kept elsewhere).
        head: String,
        /// The last record was cut short (a crash mid-write); everything before it is
        /// intact.
        torn_tail: bool,
    },
    /// The first alteration, corruption or gap.
    Broken(String),
}

/// Checks a spool read from `input`.
///
/// # Errors
/// Not a spool.
pub fn verify_spool(input: impl Read) -> Result<Verdict, String> {
    let mut checker = spool::ChainChecker::new();
    for record in SpoolReader::new(input)? {
        match record {
            Ok(r) => {
                if let Err(e) = checker.check(&r) {
                    return Ok(Verdict::Broken(e.to_string()));
                }
            }
            Err(spool::SpoolError::Truncated { .. }) => {
                return Ok(Verdict::Intact {
                    records: checker.count(),
                    head: spool::hex(&checker.head()),
                    torn_tail: true,
                })
            }
            Err(e) => return Ok(Verdict::Broken(format!("record {}: {e}", checker.count()))),
        }
    }
    Ok(Verdict::Intact {
        records: checker.count(),
        head: spool::hex(&checker.head()),
        torn_tail: false,
    })
}

/// Runs `verify`: prints the verdict; exit 0 intact, 1 broken, 2 unreadable.
pub async fn verify(args: &VerifyArgs, out: &mut impl Write) -> u8 {
    if let Some(rest) = args.source.strip_prefix("cloudwatch://") {
        return verify_cloudwatch(&args.source, rest, out).await;
    }
    let verdict = if let Some(rest) = args.source.strip_prefix("s3://") {
        let Some((bucket, key)) = rest.split_once('/') else {
            let _ = writeln!(out, "verify: {}: expected s3://BUCKET/KEY", args.source);
            return 2;
        };
        let config = crate::delivery::aws::load_config(None).await;
        let s3 = aws_sdk_s3::Client::new(&config);
        match s3.get_object().bucket(bucket).key(key).send().await {
            Ok(o) => match o.body.collect().await {
                Ok(bytes) => verify_spool(std::io::Cursor::new(bytes.into_bytes())),
                Err(e) => Err(format!("cannot read {}: {e}", args.source)),
            },
            Err(e) => Err(format!(
                "cannot get {}: {}",
                args.source,
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )),
        }
    } else {
        std::fs::File::open(&args.source)
            .map_err(|e| format!("cannot open {}: {e}", args.source))
            .and_then(|f| verify_spool(BufReader::new(f)))
            .map_err(|e| format!("{}: {e}", args.source))
    };
    match verdict {
        Ok(Verdict::Intact {
            records,
            head,
            torn_tail,
        }) => {
            let _ = writeln!(
                out,
                "intact: {records} records, checksums and hash chain verified, no gaps; chain head {head}"
            );
            if torn_tail {
                let _ = writeln!(out, "note: the last record was cut short (the writer stopped mid-write, e.g. a crash); it is not counted");
            }
            0
        }
        Ok(Verdict::Broken(what)) => {
            let _ = writeln!(out, "BROKEN: {what}");
            1
        }
        Err(e) => {
            let _ = writeln!(out, "verify: {e}");
            2
        }
    }
}

/// `verify cloudwatch://GROUP/STREAM`: reads the stream from its start and checks the
/// chain of every message (a streamed session log; an upload at close has no chain).
async fn verify_cloudwatch(source: &str, rest: &str, out: &mut impl Write) -> u8 {
    use crate::delivery::cwl::StreamChecker;
    // Group names may contain '/', stream names (session ids) do not.
    let Some((group, stream)) = rest
        .rsplit_once('/')
        .filter(|(g, s)| !g.is_empty() && !s.is_empty())
    else {
        let _ = writeln!(
            out,
            "verify: {source}: expected cloudwatch://LOG_GROUP/LOG_STREAM"
        );
        return 2;
    };
    let config = crate::delivery::aws::load_config(None).await;
    let logs = crate::delivery::aws::Logs::new(&config);
    let mut checker = StreamChecker::new();
    let mut token = None;
    let mut index = 0u64;
    loop {
        let (messages, next) = match logs.events_page(group, stream, token).await {
            Ok(page) => page,
            Err(e) => {
                let _ = writeln!(out, "verify: cannot read {source}: {e}");
                return 2;
            }
        };
        for m in &messages {
            if let Err(what) = checker.check(index, m) {
                let _ = writeln!(out, "BROKEN: {what}");
                return 1;
            }
            index += 1;
        }
        match next {
            Some(n) => token = Some(n),
            None => break,
        }
    }
    if checker.messages() == 0 {
        let _ = writeln!(out, "verify: {source} holds no events");
        return 2;
    }
    let _ = writeln!(
        out,
        "intact: {} events, hash chain verified, no gaps; {} identical re-sends skipped; chain head {}",
        checker.messages(),
        checker.duplicates(),
        spool::hex(&checker.head())
    );
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool_of(n: u64) -> Vec<u8> {
        let mut out = spool::MAGIC.to_vec();
        let mut chain = spool::CHAIN_START;
        for seq in 0..n {
            let p = format!(r#"{{"seq":{seq},"at_ms":{seq},"type":"resize","cols":80,"rows":24}}"#);
            chain = spool::chain_next(&chain, p.as_bytes());
            out.extend(spool::encode_record(&chain, p.as_bytes()));
        }
        out
    }

    #[test]
    fn verify_finds_intact_torn_altered_and_non_spools() {
        let good = spool_of(5);
        match verify_spool(&good[..]).unwrap() {
            Verdict::Intact {
                records: 5,
                torn_tail: false,
                head,
            } => assert_eq!(head.len(), 64),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            verify_spool(&good[..good.len() - 4]).unwrap(),
            Verdict::Intact {
                records: 4,
                torn_tail: true,
                ..
            }
        ));
        // A flipped byte without a fixed CRC: corrupt.
        let mut bad = good.clone();
        let at = good.len() - 10;
        bad[at] ^= 1;
        match verify_spool(&bad[..]).unwrap() {
            Verdict::Broken(what) => assert!(
                what.contains("record 4") && what.contains("checksum"),
                "{what}"
            ),
            other => panic!("{other:?}"),
        }
        // An edited record with its CRC recomputed: the chain shows it.
        let mut records: Vec<spool::Record> = SpoolReader::new(&good[..])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        records[2].payload = br#"{"seq":2,"at_ms":2,"type":"resize","cols":99,"rows":24}"#.to_vec();
        let mut edited = spool::MAGIC.to_vec();
        for r in &records {
            edited.extend(spool::encode_record(&r.chain, &r.payload));
        }
        match verify_spool(&edited[..]).unwrap() {
            Verdict::Broken(what) => assert!(what.starts_with("record 2:"), "{what}"),
            other => panic!("{other:?}"),
        }
        assert!(verify_spool(&b"{\"seq\":0}\n"[..]).is_err());
    }
}
