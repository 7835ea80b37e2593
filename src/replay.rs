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
        let unreadable = |offset, e: std::io::Error| {
            Some(Err(spool::SpoolError::Unreadable {
                offset,
                reason: e.to_string(),
            }))
        };
        let mut buf = vec![0u8; spool::HEADER_LEN];
        let got = match read_full(&mut self.inner, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                self.done = true;
                return unreadable(self.offset, e);
            }
        };
        if got == 0 {
            self.done = true;
            return None;
        }
        buf.truncate(got);
        if got == spool::HEADER_LEN {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len <= spool::MAX_PAYLOAD {
                buf.resize(spool::HEADER_LEN + len, 0);
                match read_full(&mut self.inner, &mut buf[spool::HEADER_LEN..]) {
                    Ok(n) => buf.truncate(spool::HEADER_LEN + n),
                    Err(e) => {
                        self.done = true;
                        return unreadable(self.offset, e);
                    }
                }
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

/// Reads until `buf` is full or the input ends; the count read. A read error is an
/// error, never taken for the end (it would look like a torn tail, and a rebuild would
/// cut good records off).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
#[command(
    after_help = "Exit status: 0 intact and complete (a session cut short by a crash \
and recovered says so, and counts as complete); 1 broken: a record altered, removed, \
reordered or corrupt, or the copies compared with --against differ; 2 unreadable; \
3 intact but INCOMPLETE: the recording has no end (cut short, or the session is still \
running) or parts of the session were not recorded (a gap: the disk was full)."
)]
pub struct VerifyArgs {
    /// What to check: a spool (STATE_DIR/recordings/ID/events.spool), the copy uploaded
    /// at close (s3://BUCKET/PREFIX/ID.spool), or a streamed CloudWatch log
    /// (cloudwatch://LOG_GROUP/SESSION_ID; the group may contain '/'). S3 and CloudWatch
    /// are read with the standard AWS credential chain. A local spool is also compared
    /// with the end noted in its session.json.
    pub source: String,
    /// Another copy of the same recording (same forms as SOURCE): both must end at the
    /// same record with the same chain head, so a copy cut short or rewritten shows. A
    /// CloudWatch stream carries where the spool ended in its last message.
    #[arg(long, value_name = "SOURCE")]
    pub against: Option<String>,
}

pub use crate::delivery::cwl::SpoolEnd;

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record's checksum and chain value are right and no event is missing from the
    /// chain; whether the recording is complete is in `ended` and `gaps`.
    Intact {
        /// Records checked.
        records: u64,
        /// The chain value after the last record (compare with a copy kept elsewhere).
        head: String,
        /// The last record was cut short (a crash mid-write); everything before it is
        /// intact.
        torn_tail: bool,
        /// How the session ended, from its end record; `None`: no end record (cut short,
        /// or still being recorded).
        ended: Option<String>,
        /// Parts of the session that were not recorded (gap records), described.
        gaps: Vec<String>,
    },
    /// The first alteration, corruption or gap in the chain.
    Broken(String),
}

impl Verdict {
    /// Intact, with its end record, and without gaps.
    pub fn complete(&self) -> bool {
        matches!(self, Verdict::Intact { ended: Some(_), gaps, torn_tail: false, .. } if gaps.is_empty())
    }
}

/// Checks a spool read from `input`.
///
/// # Errors
/// Not a spool.
pub fn verify_spool(input: impl Read) -> Result<Verdict, String> {
    use crate::recorder::{Event, EventKind};
    let mut checker = spool::ChainChecker::new();
    let mut ended: Option<String> = None;
    let mut gaps = Vec::new();
    let mut open_gap: Option<String> = None;
    let mut started_unix_ms = 0;
    let mut torn_tail = false;
    for record in SpoolReader::new(input)? {
        let r = match record {
            Ok(r) => r,
            Err(spool::SpoolError::Truncated { .. }) => {
                torn_tail = true;
                break;
            }
            Err(e @ spool::SpoolError::Unreadable { .. }) => return Err(e.to_string()),
            Err(e) => return Ok(Verdict::Broken(format!("record {}: {e}", checker.count()))),
        };
        if let Err(e) = checker.check(&r) {
            return Ok(Verdict::Broken(e.to_string()));
        }
        if ended.is_some() {
            return Ok(Verdict::Broken(format!(
                "record {}: an event after the session's end",
                checker.count() - 1
            )));
        }
        let Ok(event) = Event::from_json_line(&String::from_utf8_lossy(&r.payload)) else {
            return Ok(Verdict::Broken(format!(
                "record {}: not an event",
                checker.count() - 1
            )));
        };
        match &event.kind {
            EventKind::Start(info) => started_unix_ms = info.started_unix_ms,
            EventKind::End { exit_code, how } => {
                ended = Some(match exit_code {
                    Some(code) => format!("{how} (status {code})"),
                    None => how.clone(),
                });
            }
            gap @ EventKind::Gap { to_ms, .. } => {
                let note =
                    crate::recorder::event::gap_note(gap, started_unix_ms).unwrap_or_default();
                let text = note
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                if to_ms.is_some() {
                    open_gap = None;
                    gaps.push(text);
                } else {
                    open_gap = Some(text);
                }
            }
            _ => {}
        }
    }
    gaps.extend(open_gap.map(|g| format!("{g} (never closed)")));
    Ok(Verdict::Intact {
        records: checker.count(),
        head: spool::hex(&checker.head()),
        torn_tail,
        ended,
        gaps,
    })
}

/// What one source of a recording holds: its verdict, and where its spool ended.
struct Checked {
    /// Exit status alone.
    status: u8,
    /// Its end (records, head), when it has one to compare.
    end: Option<SpoolEnd>,
}

/// Runs `verify`: prints the verdict; exit 0 intact and complete, 1 broken (or copies
/// that differ), 2 unreadable, 3 intact but incomplete.
pub async fn verify(args: &VerifyArgs, out: &mut impl Write) -> u8 {
    let this = check_source(&args.source, out).await;
    if this.status == 2 {
        return 2;
    }
    let mut status = this.status;
    let other = match &args.against {
        Some(other) => {
            let _ = writeln!(out, "against {other}:");
            let checked = check_source(other, out).await;
            if checked.status == 2 {
                return 2;
            }
            status = worse(status, checked.status);
            Some((other.clone(), checked.end))
        }
        None => local_end_note(&args.source).map(|end| ("its session.json".to_owned(), Some(end))),
    };
    if let Some((name, theirs)) = other {
        match (&this.end, &theirs) {
            (Some(a), Some(b)) if a == b => {
                let _ = writeln!(
                    out,
                    "matches {name}: both end at record {} with chain head {}",
                    a.records, a.head
                );
            }
            (Some(a), Some(b)) => {
                let _ = writeln!(
                    out,
                    "MISMATCH with {name}: {} ends at record {} (chain head {}), {name} at record {} (chain head {}): one copy was cut short or rewritten",
                    args.source, a.records, a.head, b.records, b.head
                );
                status = 1;
            }
            (_, None) => {
                let _ = writeln!(
                    out,
                    "{name} says nothing of where the recording ended (no end recorded there)"
                );
                status = worse(status, 3);
            }
            (None, Some(b)) => {
                let _ = writeln!(
                    out,
                    "{name} says the recording ended at record {} (chain head {}), which {} lacks",
                    b.records, b.head, args.source
                );
                status = 1;
            }
        }
    }
    status
}

/// The worse of two verdicts' exit statuses: broken (1) over incomplete (3) over
/// complete (0).
fn worse(a: u8, b: u8) -> u8 {
    let rank = |s: u8| match s {
        1 => 3,
        3 => 2,
        0 => 1,
        _ => 4,
    };
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

/// The end a local spool's `session.json` noted, if any.
fn local_end_note(source: &str) -> Option<SpoolEnd> {
    if source.contains("://") {
        return None;
    }
    let dir = std::path::Path::new(source).parent()?;
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).ok()?).ok()?;
    Some(SpoolEnd {
        records: meta.get("spool_records")?.as_u64()?,
        head: meta.get("spool_head")?.as_str()?.to_owned(),
    })
}

async fn check_source(source: &str, out: &mut impl Write) -> Checked {
    if let Some(rest) = source.strip_prefix("cloudwatch://") {
        return verify_cloudwatch(source, rest, out).await;
    }
    let verdict = if let Some(rest) = source.strip_prefix("s3://") {
        let Some((bucket, key)) = rest.split_once('/') else {
            let _ = writeln!(out, "verify: {source}: expected s3://BUCKET/KEY");
            return Checked {
                status: 2,
                end: None,
            };
        };
        let config = crate::delivery::aws::load_config(None).await;
        let s3 = aws_sdk_s3::Client::new(&config);
        match s3.get_object().bucket(bucket).key(key).send().await {
            Ok(o) => match o.body.collect().await {
                Ok(bytes) => verify_spool(std::io::Cursor::new(bytes.into_bytes())),
                Err(e) => Err(format!("cannot read {source}: {e}")),
            },
            Err(e) => Err(format!(
                "cannot get {source}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )),
        }
    } else {
        std::fs::File::open(source)
            .map_err(|e| format!("cannot open {source}: {e}"))
            .and_then(|f| verify_spool(BufReader::new(f)))
            .map_err(|e| format!("{source}: {e}"))
    };
    report(verdict, out)
}

/// Prints a spool's verdict.
fn report(verdict: Result<Verdict, String>, out: &mut impl Write) -> Checked {
    match verdict {
        Ok(Verdict::Intact {
            records,
            head,
            torn_tail,
            ended,
            gaps,
        }) => {
            let end = ended.as_ref().map(|_| SpoolEnd {
                records,
                head: head.clone(),
            });
            let status = match (&ended, gaps.is_empty() && !torn_tail) {
                (Some(how), true) => {
                    let _ = writeln!(
                        out,
                        "intact and complete: {records} records, checksums and hash chain verified, no gaps; the session ended: {how}; chain head {head}"
                    );
                    if how.starts_with("interrupted") {
                        let _ = writeln!(out, "note: the session was cut short (the agent stopped); the recording ends where it was interrupted");
                    }
                    0
                }
                (Some(how), false) => {
                    let _ = writeln!(
                        out,
                        "INCOMPLETE: {records} records verified (checksums and hash chain intact) and the session ended ({how}), but parts of it were not recorded:"
                    );
                    for g in &gaps {
                        let _ = writeln!(out, "  {g}");
                    }
                    let _ = writeln!(out, "chain head {head}");
                    3
                }
                (None, _) => {
                    let _ = writeln!(
                        out,
                        "INCOMPLETE: {records} records verified (checksums and hash chain intact), but the recording has no end: it was cut short after record {}, or the session is still being recorded; chain head {head}",
                        records.saturating_sub(1)
                    );
                    for g in &gaps {
                        let _ = writeln!(out, "  and not recorded: {g}");
                    }
                    3
                }
            };
            if torn_tail {
                let _ = writeln!(out, "note: the last record was cut short (the writer stopped mid-write, e.g. a crash); it is not counted");
            }
            Checked { status, end }
        }
        Ok(Verdict::Broken(what)) => {
            let _ = writeln!(out, "BROKEN: {what}");
            Checked {
                status: 1,
                end: None,
            }
        }
        Err(e) => {
            let _ = writeln!(out, "verify: {e}");
            Checked {
                status: 2,
                end: None,
            }
        }
    }
}

/// `verify cloudwatch://GROUP/STREAM`: reads the stream from its start and checks the
/// chain of every message (a streamed session log; an upload at close has no chain), and
/// that it ends with the session's end.
async fn verify_cloudwatch(source: &str, rest: &str, out: &mut impl Write) -> Checked {
    use crate::delivery::cwl::StreamChecker;
    let fail = |status| Checked { status, end: None };
    // Group names may contain '/', stream names (session ids) do not.
    let Some((group, stream)) = rest
        .rsplit_once('/')
        .filter(|(g, s)| !g.is_empty() && !s.is_empty())
    else {
        let _ = writeln!(
            out,
            "verify: {source}: expected cloudwatch://LOG_GROUP/LOG_STREAM"
        );
        return fail(2);
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
                return fail(2);
            }
        };
        for m in &messages {
            if let Err(what) = checker.check(index, m) {
                let _ = writeln!(out, "BROKEN: {what}");
                return fail(1);
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
        return fail(2);
    }
    let head = spool::hex(&checker.head());
    match checker.spool_end() {
        Some(end) => {
            let _ = writeln!(
                out,
                "intact and complete: {} events, hash chain verified, no gaps, ending with the session's end; {} identical re-sends skipped; chain head {head}",
                checker.messages(),
                checker.duplicates(),
            );
            if !checker.gaps().is_empty() {
                let _ = writeln!(out, "INCOMPLETE: parts of the session were not recorded:");
                for g in checker.gaps() {
                    let _ = writeln!(out, "  {g}");
                }
            }
            Checked {
                status: if checker.gaps().is_empty() { 0 } else { 3 },
                end: Some(SpoolEnd {
                    records: end.records,
                    head: end.head.clone(),
                }),
            }
        }
        None => {
            let _ = writeln!(
                out,
                "INCOMPLETE: {} events, hash chain verified, but the stream has no end message: it was cut short, or the session is still being streamed; {} identical re-sends skipped; chain head {head}",
                checker.messages(),
                checker.duplicates(),
            );
            fail(3)
        }
    }
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
                ended: None,
                ..
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

    fn spool_from(payloads: &[String]) -> Vec<u8> {
        let mut out = spool::MAGIC.to_vec();
        let mut chain = spool::CHAIN_START;
        for p in payloads {
            chain = spool::chain_next(&chain, p.as_bytes());
            out.extend(spool::encode_record(&chain, p.as_bytes()));
        }
        out
    }

    #[test]
    fn only_a_recording_with_its_end_and_no_gap_is_complete() {
        let ev = |seq: u64, body: &str| format!(r#"{{"seq":{seq},"at_ms":{seq},{body}}}"#);
        let start = ev(
            0,
            r#""type":"start","session_id":"s","user":"u","run_as_user":"r","owner":"o","target":"t","cols":80,"rows":24,"started_unix_ms":1700000000000"#,
        );
        let out = |seq| ev(seq, r#""type":"output","data":"aGk=""#);
        let end = |seq| ev(seq, r#""type":"end","exit_code":0,"how":"exited""#);
        let whole = spool_from(&[start.clone(), out(1), end(2)]);
        let v = verify_spool(&whole[..]).unwrap();
        assert!(v.complete(), "{v:?}");
        let no_end = spool_from(&[start.clone(), out(1)]);
        let v = verify_spool(&no_end[..]).unwrap();
        assert!(
            !v.complete() && matches!(v, Verdict::Intact { ended: None, .. }),
            "{v:?}"
        );
        let gap = ev(
            2,
            r#""type":"gap","from_ms":2,"to_ms":9,"bytes":300,"events":4,"reason":"no space left""#,
        );
        let gapped = spool_from(&[start.clone(), out(1), gap, end(3)]);
        match verify_spool(&gapped[..]).unwrap() {
            v @ Verdict::Intact { .. } if !v.complete() => {
                let Verdict::Intact { gaps, .. } = v else {
                    unreachable!()
                };
                assert_eq!(gaps.len(), 1);
                assert!(
                    gaps[0].contains("300 bytes in 4 events") && gaps[0].contains("no space left"),
                    "{gaps:?}"
                );
                assert!(gaps[0].contains("2023-11-14T22:13:20Z"), "dated: {gaps:?}");
            }
            other => panic!("{other:?}"),
        }
        let open_gap = ev(
            1,
            r#""type":"gap","from_ms":2,"bytes":0,"events":0,"reason":"no space left""#,
        );
        let v = verify_spool(&spool_from(&[start.clone(), open_gap, end(2)])[..]).unwrap();
        assert!(
            matches!(&v, Verdict::Intact { gaps, .. } if gaps[0].ends_with("(never closed)")),
            "{v:?}"
        );
        // An event after the end is not a recording any writer makes.
        let after = spool_from(&[start, end(1), out(2)]);
        assert!(
            matches!(verify_spool(&after[..]).unwrap(), Verdict::Broken(w) if w.contains("after the session's end"))
        );
    }
}
