//! `session-agent replay`, `transcript`, `verify` and `audit`: read a recording (the
//! spool `events.spool`, an `events.jsonl`, or an asciicast `.cast`; named by its path,
//! its directory, or its session id, looked up in the state directory by
//! [`crate::sessions::locate`]) record by record and play it to the terminal with its
//! timing, print the clean text, check its checksums and hash chain, or print its process
//! audit. Memory stays bounded by the screen (and, for `audit`, by the rows waiting for
//! their exit, `recorder::audit_table`), whatever the recording's size. The parsing,
//! pacing and rows are pure (`recorder::playback`, `recorder::audit_table`); this module
//! is the file and terminal I/O.

use crate::recorder::audit_table::{AuditTable, Entry, TABLE_HEADER};
use crate::recorder::playback::{detect, parse_line, Format, Frame, Pacer};
use crate::recorder::{EventKind, Transcript};
use crate::sessions::{locate_spool, StateDirArg};
use crate::spool::format as spool;
use crate::spool::reader::{ReadError, Reader};
use crate::spool::verify::{verify_spool, Verdict};
use clap::Args;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `session-agent replay` options.
#[derive(Debug, Args)]
#[command(
    after_help = "In a terminal: space pauses and resumes, + and - (or up and down) \
double and halve the speed, . plays the next event while paused, right arrow skips 5 \
seconds, q or Ctrl-C quits. The terminal is put back as it was on every way out (the \
recording's screen modes and mouse reporting switched off, its queries never sent). \
Written to a pipe or file, the recorded output is copied as it is."
)]
pub struct ReplayArgs {
    /// A recording: a session id (looked up as STATE_DIR/recordings/ID), a recording's
    /// directory or its events.spool, or ID.cast (local or downloaded from S3).
    #[arg(value_name = "ID|FILE")]
    pub file: PathBuf,
    /// Playback speed factor (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Pauses longer than this many seconds are shortened to it (skips idle time).
    #[arg(long, default_value_t = 2.0)]
    pub idle_limit: f64,
    #[command(flatten)]
    pub state: StateDirArg,
}

/// `session-agent transcript` options.
#[derive(Debug, Args)]
pub struct TranscriptArgs {
    /// A recording: a session id (looked up as STATE_DIR/recordings/ID), a recording's
    /// directory or its events.spool, or ID.cast.
    #[arg(value_name = "ID|FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
}

/// The file a recording argument names: an existing file as it is, a directory's
/// `events.spool`, or a session id's under the state directory.
///
/// # Errors
/// None of these, with where it looked.
fn resolve(file: &Path, state: &StateDirArg) -> Result<PathBuf, String> {
    if file.is_file() {
        return Ok(file.to_owned());
    }
    match file.to_str() {
        Some(arg) => locate_spool(arg, &state.recordings()),
        None if file.is_dir() => Ok(file.join(crate::spool::layout::EVENTS_FILE)),
        None => Err(format!(
            "cannot open {}: no such file or directory",
            file.display()
        )),
    }
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
/// When standard output is a terminal, this is a player (module `player` below): the recorded
/// queries are taken out of the stream, the keys control it, and the terminal is put
/// back on every way out. Otherwise the recorded output is written as it is.
///
/// # Errors
/// The file cannot be read or is not a recording (the line is named); a signal ended it.
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
    let file = resolve(&args.file, &args.state)?;
    let (format, lines) = open(&file)?;
    // Checked finite and non-negative above; whole milliseconds are enough.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let idle_ms = (args.idle_limit * 1000.0) as u64;
    #[cfg(unix)]
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return player::play(args.speed, idle_ms, format, lines, &file, out);
    }
    let mut pacer = Pacer::new(args.speed, idle_ms);
    for line in lines {
        let (n, text) = line?;
        if let Frame::Output { at_ms, data } =
            parse_line(format, n, &text).map_err(|e| format!("{}: {e}", file.display()))?
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

/// The player in a terminal (Unix): raw mode, keys, the query filter, and the terminal
/// put back on every way out.
///
/// Keys: space pauses and resumes, `+`/`-` (or up/down) double or halve the speed, `.`
/// plays the next event while paused, right arrow skips 5 s of the recording, `q` or
/// Ctrl-C quits. Standard input is put in raw mode (no echo, no line editing, Ctrl-C a
/// key) when it is a terminal, and read by a thread; what is not a key (the terminal's
/// answers, mouse reports) is swallowed. The recorded queries are taken out of the
/// stream (`recorder::player::QueryFilter`), so a terminal has little to answer; at the
/// end the restore sequence is written, then one device-attributes query as a fence:
/// its answer, read within `FENCE_WAIT`, shows that every earlier answer has arrived
/// and been swallowed; what is left in the input queue is then discarded (`tcflush`)
/// before the settings are restored. SIGINT, SIGTERM and SIGHUP end the replay the same
/// way (watched through the runtime, checked at least every `TICK`); a panic restores
/// the terminal while unwinding (the guard's `Drop`).
#[cfg(unix)]
mod player {
    use super::{parse_line, Format, Frame, Lines, Pacer};
    use crate::recorder::player::{restore_sequence, Controls, KeyReader, QueryFilter};
    use std::io::{Read, Write};
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Longest the player sleeps between looks at the keys and signals.
    const TICK: Duration = Duration::from_millis(50);
    /// Longest wait for the answer to the closing fence query.
    const FENCE_WAIT: Duration = Duration::from_millis(300);

    /// The terminal as the player found it, put back when dropped.
    struct Guard {
        raw: Option<crate::client::terminal::RawMode>,
        keys: Option<mpsc::Receiver<Vec<u8>>>,
        alternate: bool,
        done: bool,
    }

    impl Guard {
        fn new() -> Self {
            let raw = crate::client::terminal::RawMode::enter().ok().flatten();
            let keys = raw.as_ref().map(|_| {
                let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(64);
                // Blocked in read() until input comes; the process ends after the replay.
                let _ = std::thread::Builder::new()
                    .name("replay-keys".into())
                    .spawn(move || {
                        let mut buf = [0u8; 1024];
                        loop {
                            match std::io::stdin().read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if tx.send(buf[..n].to_vec()).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                rx
            });
            Self {
                raw,
                keys,
                alternate: false,
                done: false,
            }
        }

        /// Input within `wait` (none when there is no terminal to read).
        fn input(&self, wait: Duration) -> Option<Vec<u8>> {
            match &self.keys {
                Some(rx) => rx.recv_timeout(wait).ok(),
                None => {
                    std::thread::sleep(wait);
                    None
                }
            }
        }

        /// Writes the restore sequence, swallows the terminal's pending answers and puts
        /// its settings back. Once.
        fn restore(&mut self, out: &mut dyn Write) {
            if self.done {
                return;
            }
            self.done = true;
            let mut seq = restore_sequence(self.alternate);
            if self.raw.is_some() {
                // The fence: answered after every earlier query.
                seq.extend_from_slice(b"\x1b[c");
            }
            let _ = out.write_all(&seq).and_then(|()| out.flush());
            if let Some(rx) = &self.keys {
                let deadline = Instant::now() + FENCE_WAIT;
                let mut tail: Vec<u8> = Vec::new();
                while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                    let Ok(bytes) = rx.recv_timeout(left) else {
                        break;
                    };
                    tail.extend_from_slice(&bytes);
                    if tail.len() > 256 {
                        tail.drain(..tail.len() - 256);
                    }
                    if is_device_attributes_answer(&tail) {
                        break;
                    }
                }
                let _ = nix::sys::termios::tcflush(
                    std::io::stdin(),
                    nix::sys::termios::FlushArg::TCIFLUSH,
                );
            }
            if let Some(raw) = self.raw.as_mut() {
                raw.restore();
            }
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            // Only reached unfinished by a panic unwinding: standard output is this
            // thread's (its lock is reentrant).
            self.restore(&mut std::io::stdout());
        }
    }

    /// Whether `tail` ends with a primary device attributes answer (`ESC [ ? ... c`).
    fn is_device_attributes_answer(tail: &[u8]) -> bool {
        let Some(start) = tail.windows(3).rposition(|w| w == b"\x1b[?") else {
            return false;
        };
        let rest = &tail[start + 3..];
        rest.last() == Some(&b'c')
            && rest[..rest.len() - 1]
                .iter()
                .all(|b| b.is_ascii_digit() || *b == b';')
    }

    /// The signals that end a replay, when there is a runtime to watch them.
    fn signals() -> Vec<(tokio::signal::unix::Signal, &'static str)> {
        use tokio::signal::unix::{signal, SignalKind};
        if tokio::runtime::Handle::try_current().is_err() {
            return Vec::new();
        }
        [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
        ]
        .into_iter()
        .filter_map(|(kind, name)| signal(kind).ok().map(|s| (s, name)))
        .collect()
    }

    fn caught(signals: &mut [(tokio::signal::unix::Signal, &'static str)]) -> Option<&'static str> {
        signals.iter_mut().find_map(|(s, name)| {
            futures_util::FutureExt::now_or_never(s.recv())
                .flatten()
                .map(|()| *name)
        })
    }

    enum Next {
        Play,
        Quit,
    }

    struct Player {
        guard: Guard,
        keys: KeyReader,
        controls: Controls,
        signals: Vec<(tokio::signal::unix::Signal, &'static str)>,
        /// Where the recording is: the last event played (ms).
        at_ms: u64,
    }

    impl Player {
        /// Waits `gap_ms` of the recording (at the current speed) before the event
        /// recorded at `next_ms`, following the keys.
        fn wait(&mut self, gap_ms: u64, next_ms: u64) -> Result<Next, String> {
            #[allow(clippy::cast_precision_loss)]
            let mut remaining = gap_ms as f64;
            loop {
                if let Some(name) = caught(&mut self.signals) {
                    return Err(format!("replay interrupted by {name}"));
                }
                if self.controls.quit {
                    return Ok(Next::Quit);
                }
                let play = if self.controls.paused {
                    std::mem::take(&mut self.controls.step)
                } else {
                    remaining <= 0.0 || self.controls.play_at_once(next_ms)
                };
                if play {
                    return Ok(Next::Play);
                }
                let wait = if self.controls.paused {
                    TICK
                } else {
                    Duration::from_secs_f64(remaining / self.controls.speed / 1000.0).min(TICK)
                };
                let started = Instant::now();
                if let Some(bytes) = self.guard.input(wait) {
                    for key in self.keys.feed(&bytes) {
                        self.controls.apply(key, self.at_ms);
                    }
                }
                if !self.controls.paused {
                    remaining -= started.elapsed().as_secs_f64() * 1000.0 * self.controls.speed;
                }
            }
        }
    }

    fn play_lines(
        player: &mut Player,
        filter: &mut QueryFilter,
        idle_ms: u64,
        format: Format,
        lines: Lines,
        file: &Path,
        out: &mut impl Write,
    ) -> Result<(), String> {
        let mut pacer = Pacer::new(1.0, idle_ms);
        let mut buf = Vec::new();
        for line in lines {
            let (n, text) = line?;
            let Frame::Output { at_ms, data } =
                parse_line(format, n, &text).map_err(|e| format!("{}: {e}", file.display()))?
            else {
                continue;
            };
            let gap = pacer.delay_ms(at_ms);
            if let Next::Quit = player.wait(gap, at_ms)? {
                break;
            }
            buf.clear();
            filter.filter(&data, &mut buf);
            player.guard.alternate = filter.in_alternate_screen();
            out.write_all(&buf)
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write: {e}"))?;
            player.at_ms = at_ms;
        }
        Ok(())
    }

    pub(super) fn play(
        speed: f64,
        idle_ms: u64,
        format: Format,
        lines: Lines,
        file: &Path,
        out: &mut impl Write,
    ) -> Result<(), String> {
        let mut player = Player {
            guard: Guard::new(),
            keys: KeyReader::new(),
            controls: Controls::new(speed),
            signals: signals(),
            at_ms: 0,
        };
        let mut filter = QueryFilter::new();
        let mut buf = Vec::new();
        let result = play_lines(&mut player, &mut filter, idle_ms, format, lines, file, out);
        buf.clear();
        filter.finish(&mut buf);
        let _ = out.write_all(&buf);
        player.guard.restore(out);
        result
    }
}

/// Prints the clean transcript of a recording to `out`.
///
/// # Errors
/// The file cannot be read or is not a recording (the line is named).
pub fn transcript(args: &TranscriptArgs, out: &mut impl Write) -> Result<(), String> {
    let file = resolve(&args.file, &args.state)?;
    let (format, lines) = open(&file)?;
    let mut t: Option<Transcript> = None;
    let write = |t: &mut Transcript, out: &mut dyn Write| -> Result<(), String> {
        for l in t.take_lines() {
            writeln!(out, "{l}").map_err(|e| format!("cannot write: {e}"))?;
        }
        Ok(())
    };
    for line in lines {
        let (n, text) = line?;
        let frame = parse_line(format, n, &text).map_err(|e| format!("{}: {e}", file.display()))?;
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
    /// What to check: a session id (its spool, STATE_DIR/recordings/ID/events.spool), a
    /// spool or a recording's directory, the copy uploaded at close
    /// (s3://BUCKET/PREFIX/ID.spool), or a streamed CloudWatch log
    /// (cloudwatch://LOG_GROUP/SESSION_ID; the group may contain '/'). S3 and CloudWatch
    /// are read with the standard AWS credential chain. A local spool is also compared
    /// with the end noted in its session.json.
    pub source: String,
    /// Another copy of the same recording (same forms as SOURCE): both must end at the
    /// same record with the same chain head, so a copy cut short or rewritten shows. A
    /// CloudWatch stream carries where the spool ended in its last message.
    #[arg(long, value_name = "SOURCE")]
    pub against: Option<String>,
    #[command(flatten)]
    pub state: StateDirArg,
}

/// A `verify` source as given, or, when it is local, the spool it names.
fn resolve_source(source: &str, state: &StateDirArg) -> Result<String, String> {
    if source.starts_with("s3://") || source.starts_with("cloudwatch://") {
        return Ok(source.to_owned());
    }
    let file = resolve(Path::new(source), state)?;
    Ok(file.to_string_lossy().into_owned())
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
    let resolved = resolve_source(&args.source, &args.state).and_then(|source| {
        let against = args
            .against
            .as_deref()
            .map(|a| resolve_source(a, &args.state))
            .transpose()?;
        Ok(VerifyArgs {
            source,
            against,
            state: args.state.clone(),
        })
    });
    let args = match resolved {
        Ok(args) => args,
        Err(e) => {
            let _ = writeln!(out, "verify: {e}");
            return 2;
        }
    };
    let args = &args;
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

/// `session-agent audit` options.
#[derive(Debug, Args)]
#[command(after_help = AUDIT_AFTER_HELP)]
pub struct AuditArgs {
    /// The recording: a session id (looked up as STATE_DIR/recordings/ID), a recording's
    /// directory, or its events.spool.
    #[arg(value_name = "ID|DIR")]
    pub recording: PathBuf,
    /// One JSON object per line (per program, exit or gap) instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateDirArg,
}

/// What `audit --help` adds.
pub const AUDIT_AFTER_HELP: &str = "The table: one row per program a process of the \
session executed (from the kernel: scripts' children, background and setsid jobs \
included), in the order they were executed, with its exit status or signal and how long \
it ran once its exit is read; \"exec'd again\" when the process executed another program \
(the next row with its pid); \"[details unavailable: …]\" when it ended before its \
arguments could be read; rows of exits whose program execution was not recorded (the \
session's first process, a fork that ran no program); the recording's gaps where they \
happened; and \"typed:\" rows, the command lines typed at a prompt as the screen showed \
them (sessions with a terminal; secrets masked by the built-in rules; display only: a \
program can paint any prompt, and a line typed with echo off shows nothing — the process \
rows are what ran). USER is the real user, /the effective one when it differs, named as \
on this host. Text the session controls (arguments, directories) is shown with control \
characters escaped (\\x{1b}).

--json: one object per line, with \"type\": \"process\" (time, timeUnixMs, atMs, pid, \
ppid, uid, euid, cwd, executable, argv, argvTruncated, redactions, loginUid, \
auditSession, detailsUnavailable, end: \
exited|signaled|replaced|running|unknown, exitCode, signal, durationMs), \"exit\" (time, \
timeUnixMs, atMs, pid, exitCode, signal, durationMs, execRecorded), or \"gap\" (time, \
timeUnixMs, atMs, fromMs, toMs — absent where the gap begins —, bytes, events, reason), \
or \"command\" (time, atMs, timeUnixMs, commandLine). \
Fields without a value are left out.

Memory: rows wait for their exit within 8 MiB; past it the oldest is printed as \
\"running\" and its exit later as a row of its own. Exit status: 0, or 1 when the spool \
cannot be read or is broken (what was read before is printed; `session-agent verify` \
says more).";

/// User names by uid, as this host knows them (a few thousand at most kept).
#[derive(Debug, Default)]
struct Names(std::collections::HashMap<u32, Option<String>>);

impl Names {
    fn get(&mut self, uid: u32) -> Option<String> {
        if let Some(name) = self.0.get(&uid) {
            return name.clone();
        }
        #[cfg(unix)]
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        #[cfg(not(unix))]
        let name = None;
        if self.0.len() < 4096 {
            self.0.insert(uid, name.clone());
        }
        name
    }
}

/// Prints a recording's process audit (see [`AUDIT_AFTER_HELP`]).
///
/// # Errors
/// The recording cannot be found or opened, is not a spool, or is broken (what was
/// read before is printed first).
pub fn audit(args: &AuditArgs, out: &mut impl Write) -> Result<(), String> {
    let path = resolve(&args.recording, &args.state)?;
    let name = path.display().to_string();
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {name}: {e}"))?;
    let mut reader = Reader::new(BufReader::new(file))
        .map_err(|e| format!("{name}: {e} (audit reads a recording's events.spool)"))?
        .verifying();
    let start = match reader.next_event(None) {
        Ok(Some((event, _))) => match event.kind {
            EventKind::Start(start) => start,
            _ => {
                return Err(format!(
                    "{name}: its first record is not the session's start"
                ))
            }
        },
        Ok(None) => return Err(format!("{name} holds no events")),
        Err(e) => return Err(format!("{name}: {e}")),
    };
    let w = |out: &mut dyn Write, text: &str| {
        writeln!(out, "{text}").map_err(|e| format!("cannot write: {e}"))
    };
    let mut names = Names::default();
    let mut lookup = |uid: u32| names.get(uid);
    let mut print = |out: &mut dyn Write, entries: Vec<Entry>| -> Result<(), String> {
        for e in entries {
            let line = if args.json {
                e.to_json_line()
            } else {
                e.table_line(&mut lookup)
            };
            w(out, &line)?;
        }
        Ok(())
    };
    if !args.json {
        use crate::recorder::audit_table::escape;
        w(
            out,
            &format!(
                "session {} of {}, as {} on {}, started {}",
                escape(&start.session_id),
                escape(&start.owner),
                escape(&start.run_as_user),
                escape(&start.target),
                crate::timefmt::rfc3339(start.started_unix_ms, true)
            ),
        )?;
        w(out, TABLE_HEADER)?;
    }
    let mut table = AuditTable::new(&start);
    // Typed commands (found on the recorded screen, as the agent does, masked by the
    // built-in rules) take their place among the rows.
    let mut commands = crate::recorder::CommandFinder::new(&start);
    let redactor = crate::audit::redact::Redactor::default();
    let mut ended = None;
    let mut failure = None;
    loop {
        match reader.next_event(None) {
            Ok(Some((event, _))) => {
                if let EventKind::End { how, .. } = &event.kind {
                    ended = Some(how.clone());
                }
                let mut ready = table.push(&event);
                for mut command in commands.push(&event) {
                    command.redact(|argv| redactor.redact(argv));
                    ready.extend(table.push_command(command.at_ms, command.command_line));
                }
                print(out, ready)?;
            }
            Ok(None) => break,
            Err(ReadError::Torn(_)) => {
                failure = Some(None);
                break;
            }
            Err(e) => {
                failure = Some(Some(e.to_string()));
                break;
            }
        }
    }
    let rest = table.finish();
    print(out, rest)?;
    if !args.json {
        w(out, &table.totals().line())?;
        match &ended {
            Some(how) => w(
                out,
                &format!("session ended: {}", crate::recorder::audit_table::escape(how)),
            )?,
            None => w(
                out,
                "the recording has no end: the session is still running, or the agent stopped (its next start recovers it)",
            )?,
        }
        if let Some(None) = failure {
            w(
                out,
                "note: the last record is incomplete (being written now, or a crash cut it short); it is not shown",
            )?;
        }
    }
    out.flush().map_err(|e| format!("cannot write: {e}"))?;
    match failure {
        Some(Some(e)) => Err(format!(
            "{name}: {e}; what came before is shown above (`session-agent verify` says more)"
        )),
        _ => Ok(()),
    }
}
