//! `session-agent replay FILE`, `transcript FILE` and `verify FILE`: read a recording (the
//! spool `events.spool`, an `events.jsonl`, or an asciicast `.cast`) record by record and
//! play it to the terminal with its timing, print the clean text, or check its checksums
//! and hash chain. Memory stays bounded by the screen, whatever the
//! recording's size. The parsing and pacing are pure (`recorder::playback`); this module
//! is the file and terminal I/O.

use crate::recorder::playback::{detect, parse_line, Format, Frame, Pacer};
use crate::recorder::Transcript;
use crate::spool::format as spool;
use crate::spool::reader::Reader;
use crate::spool::verify::{verify_spool, Verdict};
use clap::Args;
use std::io::{BufRead, BufReader, Write};
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
        let records = Reader::new(reader).map_err(|e| format!("{name}: {e}"))?;
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
