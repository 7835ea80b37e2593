//! A session's recording: the I/O around the pure [`crate::recorder`].
//!
//! ```text
//!  pump (output, resize) ─┐                      ┌─▶ events.spool   raw timed stream (WAL)
//!  PTY writer (input +    ├─▶ Tap ─bounded─▶ recorder thread ─┼─▶ <id>.log       clean transcript
//!    echo state sampled) ─┘                      ├─▶ <id>.cast      asciicast v2
//!                                                └─▶ stream.jsonl ─▶ streamer task ─▶ CloudWatch
//!  at close: <id>.log + <id>.cast ─▶ S3;  <id>.log ─▶ CloudWatch (when not streaming)
//! ```
//!
//! Every session is recorded locally under `<state>/recordings/<id>/` (directories 0700,
//! files 0600: session users cannot read them), whatever the document says; remote
//! delivery follows the document. The recorder runs on its own thread so rendering (the
//! terminal emulator) overlaps with the pump; the [`Tap`] channel is bounded, so a
//! recorder that falls behind slows the shell rather than dropping or buffering without
//! bound. The transcript is written line by line as lines complete, so nothing of it is
//! held in memory. The streamer tails `stream.jsonl` by offset (no rescans) and retries
//! with backoff; what it could not deliver stays on disk.
//!
//! ## The spool and its durability window
//!
//! `events.spool` is written first, before anything is derived or handed to a sink: each
//! event becomes a length-prefixed, CRC-checked, hash-chained record
//! ([`crate::recorder::spool`]). The spool is flushed to the kernel at the end of every
//! batch (at most `BATCH` events) and `fdatasync`ed at most every [`SYNC_EVERY`] and at
//! the end of the session. So a killed agent (`kill -9`, a panic, the OOM killer) loses
//! only what had not reached the recorder yet — the events queued in the tap (at most
//! `TAP_QUEUE` chunks) and the batch being handled — while a power loss can also cost the
//! events written in the last [`SYNC_EVERY`]. A record cut short by a crash is detected by
//! its length and CRC and ends the readable spool there.

use crate::delivery::aws::{AwsError, BucketEncryption, Logs, Upload, S3};
use crate::delivery::cwl::{
    self, redacted_marker, render_input, Batcher, Direction, SessionFields, StreamRecord,
};
use crate::delivery::{s3_key, CwlDestination, S3Destination};
use crate::recorder::{EventKind, Recorder, StartInfo};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

/// Messages queued between the pump and the recorder thread.
const TAP_QUEUE: usize = 16;
/// Events the recorder handles before it flushes and hands lines on.
const BATCH: usize = 64;
/// Typed input is held back (to stream whole lines, not keystrokes) at most this long
/// (milliseconds).
const INPUT_HOLD_MS: u64 = 1000;
/// The streamer waits this long after new lines appear, so one call carries a burst.
const COALESCE: Duration = Duration::from_millis(150);
/// Most bytes of `stream.jsonl` the streamer reads per round (bounds its memory).
const STREAM_READ: usize = 4 * 1024 * 1024;
/// After the session ends, delivery keeps retrying transient failures this long.
pub const DELIVERY_PATIENCE: Duration = Duration::from_secs(120);
/// Name of the raw timed stream in a recording directory.
pub const EVENTS_FILE: &str = "events.spool";
/// The spool is `fdatasync`ed at most this often while a session runs (group commit: a
/// flood of output must not wait for the disk after every 16 KiB).
pub const SYNC_EVERY: Duration = Duration::from_millis(200);
/// Name of the streamer's queue in a recording directory.
pub const STREAM_FILE: &str = "stream.jsonl";
/// Name of the delivery report written when delivery finishes.
pub const STATUS_FILE: &str = "delivery.json";

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    crate::timefmt::unix_ms(SystemTime::now())
}

/// A file or directory name for a session id: `[A-Za-z0-9._-]` kept, anything else
/// (including `/`) replaced by `_`, a leading `.` too, at most 128 bytes; never empty.
pub fn safe_name(session_id: &str) -> String {
    let mut name: String = session_id
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with('.') {
        name.replace_range(0..1, "_");
    }
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// Creates a directory (and parents) readable by its owner only.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The paths of one recording.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The recording's directory.
    pub dir: PathBuf,
    /// The raw timed stream.
    pub events: PathBuf,
    /// The clean transcript.
    pub transcript: PathBuf,
    /// The asciicast.
    pub cast: PathBuf,
    /// The streamer's queue.
    pub stream: PathBuf,
}

impl Paths {
    /// The layout under `recordings_root` for a session.
    pub fn new(recordings_root: &Path, session_id: &str) -> Self {
        let name = safe_name(session_id);
        let dir = recordings_root.join(&name);
        Self {
            events: dir.join(EVENTS_FILE),
            transcript: dir.join(format!("{name}.log")),
            cast: dir.join(format!("{name}.cast")),
            stream: dir.join(STREAM_FILE),
            dir,
        }
    }
}

enum Rec {
    Output(u64, Vec<u8>),
    Input(u64, Vec<u8>, bool),
    Resize(u64, u16, u16),
    End(u64, Option<i32>, String),
}

/// The pump's handle to the recorder. Cheap to clone; every call applies back-pressure
/// when the recorder is behind.
#[derive(Debug, Clone)]
pub struct Tap {
    tx: mpsc::Sender<Rec>,
    started: Instant,
}

impl std::fmt::Debug for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rec")
    }
}

impl Tap {
    fn at(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records output the terminal showed.
    pub async fn output(&self, bytes: &[u8]) {
        let _ = self.tx.send(Rec::Output(self.at(), bytes.to_vec())).await;
    }

    /// Records a resize.
    pub async fn resize(&self, cols: u16, rows: u16) {
        let _ = self.tx.send(Rec::Resize(self.at(), cols, rows)).await;
    }

    /// Records typed input, from a blocking thread (the PTY writer). `echo_off_canonical`
    /// is the terminal's state as the bytes are written; unknown counts as off (never
    /// record what might be a password).
    pub fn input_blocking(&self, bytes: &[u8], echo_off_canonical: Option<bool>) {
        let _ = self.tx.blocking_send(Rec::Input(
            self.at(),
            bytes.to_vec(),
            echo_off_canonical.unwrap_or(true),
        ));
    }

    /// Records the end of the session.
    pub async fn end(&self, exit_code: Option<i32>, how: &str) {
        let _ = self
            .tx
            .send(Rec::End(self.at(), exit_code, how.to_owned()))
            .await;
    }
}

/// What the recorder thread reports when the recording is complete.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Events recorded (including start and end).
    pub events: u64,
    /// Bytes of output recorded.
    pub output_bytes: u64,
    /// Keystroke bytes withheld because echo was off.
    pub redacted_bytes: u64,
    /// A write to the state dir failed (the text says which); the recording is incomplete.
    pub error: Option<String>,
}

/// A running recording.
#[derive(Debug)]
pub struct Recording {
    /// Its files.
    pub paths: Paths,
    /// Wall-clock start, Unix ms.
    pub started_unix_ms: u64,
    done: oneshot::Receiver<Summary>,
    /// Bytes flushed to `stream.jsonl` (closed when the recording is complete); `None`
    /// when not streaming.
    pub stream_progress: Option<watch::Receiver<u64>>,
}

impl Recording {
    /// Creates the recording's directory and files and starts its thread.
    ///
    /// # Errors
    /// The directory or a file could not be created, or the thread not started.
    pub fn start(
        recordings_root: &Path,
        start: StartInfo,
        streaming: bool,
    ) -> std::io::Result<(Tap, Self)> {
        let paths = Paths::new(recordings_root, &start.session_id);
        private_dir(&paths.dir)?;
        let files = Files {
            events: {
                let mut f = BufWriter::new(private_file(&paths.events)?);
                if f.get_ref().metadata()?.len() == 0 {
                    f.write_all(crate::recorder::spool::MAGIC)?;
                }
                f
            },
            chain: crate::recorder::spool::CHAIN_START,
            last_sync: Instant::now(),
            transcript: BufWriter::new(private_file(&paths.transcript)?),
            cast: BufWriter::new(private_file(&paths.cast)?),
            stream: if streaming {
                Some(BufWriter::new(private_file(&paths.stream)?))
            } else {
                None
            },
            stream_bytes: 0,
        };
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let (done_tx, done) = oneshot::channel();
        let (progress_tx, progress_rx) = watch::channel(0u64);
        let started_unix_ms = start.started_unix_ms;
        let worker = Worker {
            rec: Recorder::new(start).forget_taken_lines(),
            files,
            started_unix_ms,
            stream_seq: 0,
            pending_output: Vec::new(),
            pending_output_at: 0,
            pending_input: Vec::new(),
            open_input: String::new(),
            pending_since: None,
            summary: Summary::default(),
            progress: progress_tx,
        };
        std::thread::Builder::new()
            .name("recorder".into())
            .stack_size(super::session::SESSION_THREAD_STACK)
            .spawn(move || {
                let summary = worker.run(rx);
                let _ = done_tx.send(summary);
            })?;
        Ok((
            Tap {
                tx,
                started: Instant::now(),
            },
            Self {
                paths,
                started_unix_ms,
                done,
                stream_progress: streaming.then_some(progress_rx),
            },
        ))
    }

    /// Waits until the recorder has written everything (after [`Tap::end`] or once every
    /// tap is dropped).
    pub async fn finish(self) -> (Paths, Summary) {
        let summary = self.done.await.unwrap_or_else(|_| Summary {
            error: Some("the recorder thread stopped unexpectedly".into()),
            ..Summary::default()
        });
        (self.paths, summary)
    }
}

struct Files {
    events: BufWriter<File>,
    /// The hash chain's value after the last record written.
    chain: crate::recorder::spool::Chain,
    last_sync: Instant,
    transcript: BufWriter<File>,
    cast: BufWriter<File>,
    stream: Option<BufWriter<File>>,
    stream_bytes: u64,
}

struct Worker {
    rec: Recorder,
    files: Files,
    started_unix_ms: u64,
    stream_seq: u64,
    /// Output lines gathered for the next stream record, and the time of the latest.
    pending_output: Vec<String>,
    pending_output_at: u64,
    /// Complete typed lines not yet streamed.
    pending_input: Vec<String>,
    /// The line being typed (no Enter yet).
    open_input: String,
    /// When `open_input` started.
    pending_since: Option<u64>,
    summary: Summary,
    progress: watch::Sender<u64>,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Rec>) -> Summary {
        let start = self.rec.start_event().to_json_line();
        self.write_event_line(&start);
        self.summary.events = 1;
        let mut ended = false;
        while !ended {
            let Some(first) = rx.blocking_recv() else {
                // Every tap dropped without an end: the session task failed.
                let at = self.last_at();
                self.apply(Rec::End(at, None, "recording closed without an end".into()));
                break;
            };
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(msg) = next.take() {
                ended |= matches!(msg, Rec::End(..));
                self.apply(msg);
                handled += 1;
                if !ended && handled < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.flush_lines(ended);
        }
        self.summary.clone()
    }

    fn last_at(&self) -> u64 {
        unix_ms().saturating_sub(self.started_unix_ms)
    }

    fn apply(&mut self, msg: Rec) {
        let event = match msg {
            Rec::Output(at, data) => {
                self.summary.output_bytes += data.len() as u64;
                let event = self.rec.output(at, &data);
                // Lines are taken after every output event: the commit points (and so
                // the transcript) are then a function of the event stream alone, and
                // `session-agent transcript` re-renders the raw stream identically.
                self.take_output_lines(at);
                event
            }
            Rec::Input(at, data, echo_off) => {
                // Output shown before this keystroke goes to the stream first (order).
                self.flush_output_record();
                let event = self.rec.input(at, &data, echo_off);
                match &event.kind {
                    EventKind::InputRedacted { bytes } => {
                        self.summary.redacted_bytes += *bytes as u64;
                        let open = std::mem::take(&mut self.open_input);
                        if !open.is_empty() {
                            self.pending_input.push(open);
                        }
                        self.pending_input.push(redacted_marker(*bytes));
                        self.flush_input(at, true);
                    }
                    EventKind::Input { data } => {
                        let mut lines = render_input(data);
                        let complete = data.ends_with(b"\r") || data.ends_with(b"\n");
                        if let Some(first) = lines.first_mut() {
                            first.insert_str(0, &std::mem::take(&mut self.open_input));
                        }
                        if !complete {
                            self.open_input = lines.pop().unwrap_or_default();
                            self.pending_since.get_or_insert(at);
                        }
                        if !lines.is_empty() {
                            self.pending_input.extend(lines);
                            self.flush_input(at, false);
                        }
                    }
                    _ => {}
                }
                event
            }
            Rec::Resize(at, cols, rows) => self.rec.resize(at, cols, rows),
            Rec::End(at, code, how) => {
                let event = self.rec.end(at, code, how);
                self.take_output_lines(at);
                self.flush_output_record();
                self.flush_input(at, true);
                event
            }
        };
        self.summary.events += 1;
        let line = event.to_json_line();
        self.write_event_line(&line);
    }

    fn write_event_line(&mut self, line: &str) {
        use crate::recorder::spool;
        let chain = spool::chain_next(&self.files.chain, line.as_bytes());
        self.files.chain = chain;
        let r = self
            .files
            .events
            .write_all(&spool::encode_record(&chain, line.as_bytes()));
        self.note(r, EVENTS_FILE);
    }

    fn note(&mut self, r: std::io::Result<()>, what: &str) {
        if let Err(e) = r {
            if self.summary.error.is_none() {
                tracing::error!(file = what, error = %e, "Cannot write the recording; it will be incomplete");
                self.summary.error = Some(format!("cannot write {what}: {e}"));
            }
        }
    }

    /// Commits transcript lines completed so far: to the transcript file at once and,
    /// when streaming, to the output record being gathered.
    fn take_output_lines(&mut self, at: u64) {
        let lines = self.rec.take_lines();
        if lines.is_empty() {
            return;
        }
        let mut text = String::new();
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        let r = self.files.transcript.write_all(text.as_bytes());
        self.note(r, "transcript");
        if self.files.stream.is_some() {
            self.pending_output_at = at;
            self.pending_output.extend(lines);
        }
    }

    /// Streams the gathered output lines as one record.
    fn flush_output_record(&mut self) {
        if self.pending_output.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.pending_output);
        self.stream(self.pending_output_at, Direction::Output, lines);
    }

    /// Streams the typed lines held back; with `partial`, the line still being typed too.
    fn flush_input(&mut self, at: u64, partial: bool) {
        if partial && !self.open_input.is_empty() {
            let open = std::mem::take(&mut self.open_input);
            self.pending_input.push(open);
        }
        if self.open_input.is_empty() {
            self.pending_since = None;
        }
        if self.pending_input.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.pending_input);
        self.stream(at, Direction::Input, lines);
    }

    fn stream(&mut self, at: u64, direction: Direction, lines: Vec<String>) {
        let Some(out) = self.files.stream.as_mut() else {
            return;
        };
        let record = StreamRecord {
            seq: self.stream_seq,
            unix_ms: self.started_unix_ms.saturating_add(at),
            direction,
            lines,
        };
        self.stream_seq += 1;
        let line = serde_json::to_string(&record).unwrap_or_default();
        let r = writeln!(out, "{line}");
        self.files.stream_bytes += line.len() as u64 + 1;
        self.note(r, "stream.jsonl");
    }

    /// End of a batch: hand completed lines on, flush every file, wake the streamer.
    fn flush_lines(&mut self, ended: bool) {
        let at = unix_ms().saturating_sub(self.started_unix_ms);
        self.flush_output_record();
        if self
            .pending_since
            .is_some_and(|since| at.saturating_sub(since) >= INPUT_HOLD_MS)
            || ended
        {
            self.flush_input(at, true);
        }
        let cast = self.rec.take_asciicast_lines();
        let mut r = Ok(());
        for line in cast {
            r = r.and_then(|()| writeln!(self.files.cast, "{line}"));
        }
        self.note(r, "asciicast");
        let r = self
            .files
            .events
            .flush()
            .and_then(|()| self.files.transcript.flush())
            .and_then(|()| self.files.cast.flush());
        self.note(r, "recording");
        if ended || self.files.last_sync.elapsed() >= SYNC_EVERY {
            let r = self.files.events.get_ref().sync_data();
            self.note(r, EVENTS_FILE);
            self.files.last_sync = Instant::now();
        }
        if let Some(s) = self.files.stream.as_mut() {
            let r = s.flush();
            self.note(r, "stream.jsonl");
            let _ = self.progress.send(self.files.stream_bytes);
        }
    }
}

/// Reads complete lines of `path` from `offset`, at most about `limit` bytes; returns
/// them and the offset after the last complete line.
fn read_lines_from(path: &Path, offset: u64, limit: usize) -> std::io::Result<(Vec<String>, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file.take(limit as u64));
    let mut lines = Vec::new();
    let mut pos = offset;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf)?;
        if n == 0 || !buf.ends_with('\n') {
            break; // end, or a partial line (still being written, or past the limit)
        }
        pos += n as u64;
        lines.push(buf.trim_end_matches('\n').to_owned());
    }
    if lines.is_empty() && pos == offset {
        // One line longer than the limit: read it whole rather than stall.
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::new(file);
        buf.clear();
        let n = reader.read_line(&mut buf)?;
        if buf.ends_with('\n') {
            pos += n as u64;
            lines.push(buf.trim_end_matches('\n').to_owned());
        }
    }
    Ok((lines, pos))
}

/// Backoff for delivery retries: 0.5 s doubling to 30 s.
#[derive(Debug)]
struct Retry {
    next: Duration,
}

impl Retry {
    fn new() -> Self {
        Self {
            next: Duration::from_millis(500),
        }
    }
    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        d
    }
}

/// How a stream to CloudWatch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    /// Events stored.
    pub events: u64,
    /// Why streaming stopped early, if it did (the rest is in the state dir).
    pub error: Option<String>,
}

/// Streams a recording's `stream.jsonl` to CloudWatch Logs (stream named by the session
/// id, created when missing) until the recording is complete and everything is sent.
/// Transient errors are retried with backoff (while the session runs, and for
/// [`DELIVERY_PATIENCE`] after it ended); a missing group, denied access or a bad request
/// stop streaming with a clear error.
pub async fn stream_to_cloudwatch(
    logs: Logs,
    group: String,
    fields: SessionFields,
    path: PathBuf,
    mut progress: watch::Receiver<u64>,
) -> StreamReport {
    let stream = fields.session_id.clone();
    let mut offset = 0u64;
    let mut stored = 0u64;
    let mut created = false;
    let mut complete = false;
    let mut ended_at: Option<Instant> = None;
    loop {
        if !complete {
            if progress.changed().await.is_err() {
                complete = true;
                ended_at = Some(Instant::now());
            } else {
                tokio::time::sleep(COALESCE).await;
            }
        }
        loop {
            let available = *progress.borrow();
            if offset >= available && !complete {
                break;
            }
            let p = path.clone();
            let read =
                tokio::task::spawn_blocking(move || read_lines_from(&p, offset, STREAM_READ))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r);
            let (lines, next) = match read {
                Ok(r) => r,
                Err(e) => {
                    return StreamReport {
                        events: stored,
                        error: Some(format!("cannot read {}: {e}", path.display())),
                    }
                }
            };
            if lines.is_empty() {
                if complete {
                    return StreamReport {
                        events: stored,
                        error: None,
                    };
                }
                break;
            }
            let mut batcher = Batcher::new();
            for line in &lines {
                match serde_json::from_str::<StreamRecord>(line) {
                    Ok(record) => {
                        for e in cwl::stream_messages(&fields, &record) {
                            batcher.push(e);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(session = %stream, error = %e, "Skipping an unreadable stream record")
                    }
                }
            }
            for batch in batcher.into_batches() {
                let mut retry = Retry::new();
                let mut recreated = false;
                loop {
                    if !created {
                        match logs.ensure_stream(&group, &stream).await {
                            Ok(()) => created = true,
                            Err(e) => {
                                if let Some(report) = give_up(&e, &group, stored, ended_at) {
                                    return report;
                                }
                                tracing::warn!(session = %stream, group = %group, error = %e, "CloudWatch Logs unavailable; retrying");
                                tokio::time::sleep(retry.delay()).await;
                                continue;
                            }
                        }
                    }
                    match logs.put(&group, &stream, &batch).await {
                        Ok(rejected) => {
                            if rejected != crate::delivery::aws::Rejected::default() {
                                tracing::warn!(session = %stream, ?rejected, "CloudWatch Logs rejected some events (too old/new or expired)");
                            }
                            stored += batch.len() as u64;
                            break;
                        }
                        Err(AwsError::NotFound(_)) if !recreated => {
                            // The stream (or its group) vanished: create the stream again,
                            // once; a missing group then fails there and ends streaming.
                            recreated = true;
                            created = false;
                        }
                        Err(e) => {
                            if let Some(report) = give_up(&e, &group, stored, ended_at) {
                                return report;
                            }
                            tracing::warn!(session = %stream, group = %group, error = %e, "PutLogEvents failed; retrying");
                            tokio::time::sleep(retry.delay()).await;
                        }
                    }
                }
            }
            offset = next;
        }
    }
}

fn give_up(
    e: &AwsError,
    group: &str,
    stored: u64,
    ended_at: Option<Instant>,
) -> Option<StreamReport> {
    let out_of_time = ended_at.is_some_and(|t| t.elapsed() > DELIVERY_PATIENCE);
    if e.is_transient() && !out_of_time {
        return None;
    }
    let error = match e {
        AwsError::NotFound(_) => format!(
            "CloudWatch Logs log group \"{group}\" does not exist (the agent never creates log groups): {e}"
        ),
        AwsError::Denied(_) => format!(
            "not allowed to write to CloudWatch Logs log group \"{group}\" (needs logs:CreateLogStream and logs:PutLogEvents): {e}"
        ),
        _ => format!("CloudWatch Logs log group \"{group}\": {e}"),
    };
    tracing::error!(group, %error, "Streaming to CloudWatch Logs stopped; the recording stays in the state dir");
    Some(StreamReport {
        events: stored,
        error: Some(error),
    })
}

/// Retries an upload step on transient errors for [`DELIVERY_PATIENCE`].
async fn with_retries<F, Fut, T>(what: &str, mut f: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AwsError>>,
{
    let started = Instant::now();
    let mut retry = Retry::new();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && started.elapsed() < DELIVERY_PATIENCE => {
                tracing::warn!(what, error = %e, "Upload failed; retrying");
                tokio::time::sleep(retry.delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Uploads the transcript and the asciicast to S3 at close.
///
/// # Errors
/// The first failed upload, described.
pub async fn upload_to_s3(
    s3: &S3,
    dest: &S3Destination,
    encryption: &BucketEncryption,
    paths: &Paths,
    session_id: &str,
) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (path, ext, content_type) in [
        (&paths.transcript, "log", "text/plain; charset=utf-8"),
        (&paths.cast, "cast", "application/x-asciicast"),
        // The spool itself: `session-agent verify s3://…` checks its hash chain.
        (&paths.events, "spool", "application/octet-stream"),
    ] {
        let key = s3_key(&dest.prefix, session_id, ext);
        let up = Upload {
            bucket: &dest.bucket,
            key: &key,
            content_type,
            encryption,
        };
        with_retries("s3 upload", || s3.upload_file(&up, path))
            .await
            .map_err(|e| format!("S3 upload of s3://{}/{key} failed: {e}", dest.bucket))?;
        keys.push(key);
    }
    Ok(keys)
}

/// Uploads the clean transcript to the log group at close (streaming off), as plain-text
/// events split within the limits.
///
/// # Errors
/// The upload failed, described.
pub async fn upload_to_cloudwatch(
    logs: &Logs,
    dest: &CwlDestination,
    paths: &Paths,
    session_id: &str,
) -> Result<u64, String> {
    let fail = |e: AwsError| format!("CloudWatch Logs upload to \"{}\" failed: {e}", dest.group);
    with_retries("create log stream", || {
        logs.ensure_stream(&dest.group, session_id)
    })
    .await
    .map_err(fail)?;
    let now = i64::try_from(unix_ms()).unwrap_or(i64::MAX);
    let mut offset = 0u64;
    let mut stored = 0u64;
    loop {
        let p = paths.transcript.clone();
        let (lines, next) =
            tokio::task::spawn_blocking(move || read_lines_from(&p, offset, STREAM_READ))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot read the transcript: {e}"))?;
        if lines.is_empty() {
            return Ok(stored);
        }
        let mut text = lines.join("\n");
        text.push('\n');
        let mut batcher = Batcher::new();
        for e in cwl::transcript_events(&text, now) {
            batcher.push(e);
        }
        for batch in batcher.into_batches() {
            with_retries("put log events", || {
                logs.put(&dest.group, session_id, &batch)
            })
            .await
            .map_err(fail)?;
            stored += batch.len() as u64;
        }
        offset = next;
    }
}

/// Where a finished session's recording still has to go, run after the session's
/// completion has been reported.
#[derive(Debug)]
pub struct Delivery {
    /// The session.
    pub session_id: String,
    /// The recording's files.
    pub paths: Paths,
    /// What the recorder reported.
    pub summary: Summary,
    /// S3 upload at close.
    pub s3: Option<(S3, S3Destination, BucketEncryption)>,
    /// CloudWatch upload at close (streaming off).
    pub cwl_upload: Option<(Logs, CwlDestination)>,
    /// The streamer, when streaming.
    pub streamer: Option<tokio::task::JoinHandle<StreamReport>>,
    /// A destination that was skipped before the session started (missing log group,
    /// AWS not configured), reported again in `delivery.json`.
    pub skipped: Vec<String>,
}

/// What `delivery.json` records.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DeliveryStatus {
    /// Everything asked for arrived (or nothing was asked): the local copy may be
    /// deleted by retention.
    pub complete: bool,
    /// S3 keys uploaded.
    #[serde(default)]
    pub s3_keys: Vec<String>,
    /// CloudWatch events stored.
    #[serde(default)]
    pub cloudwatch_events: u64,
    /// What went wrong.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl Delivery {
    /// Delivers, then writes `delivery.json`.
    pub async fn run(self) -> DeliveryStatus {
        let mut status = DeliveryStatus {
            complete: true,
            ..DeliveryStatus::default()
        };
        if let Some(e) = &self.summary.error {
            status.errors.push(format!("recording incomplete: {e}"));
        }
        status.errors.extend(self.skipped.iter().cloned());
        if let Some(handle) = self.streamer {
            match handle.await {
                Ok(report) => {
                    status.cloudwatch_events += report.events;
                    if let Some(e) = report.error {
                        status.complete = false;
                        status.errors.push(e);
                    }
                }
                Err(e) => {
                    status.complete = false;
                    status
                        .errors
                        .push(format!("the CloudWatch streamer failed: {e}"));
                }
            }
        }
        if let Some((logs, dest)) = &self.cwl_upload {
            match upload_to_cloudwatch(logs, dest, &self.paths, &self.session_id).await {
                Ok(n) => status.cloudwatch_events += n,
                Err(e) => {
                    tracing::error!(session = %self.session_id, error = %e, "CloudWatch Logs upload failed; the recording stays in the state dir");
                    status.complete = false;
                    status.errors.push(e);
                }
            }
        }
        if let Some((s3, dest, encryption)) = &self.s3 {
            match upload_to_s3(s3, dest, encryption, &self.paths, &self.session_id).await {
                Ok(keys) => status.s3_keys = keys,
                Err(e) => {
                    tracing::error!(session = %self.session_id, error = %e, "S3 upload failed; the recording stays in the state dir");
                    status.complete = false;
                    status.errors.push(e);
                }
            }
        }
        if !self.skipped.is_empty() {
            status.complete = false;
        }
        let json = serde_json::to_vec_pretty(&status).unwrap_or_default();
        let path = self.paths.dir.join(STATUS_FILE);
        let written = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&json));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "Cannot write the delivery status");
        }
        tracing::info!(session = %self.session_id, complete = status.complete, s3 = ?status.s3_keys, cloudwatch_events = status.cloudwatch_events, "Recording delivered");
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_cannot_escape_the_recordings_dir() {
        assert_eq!(safe_name("alice-0123abcd"), "alice-0123abcd");
        assert_eq!(safe_name("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(safe_name(".hidden"), "_hidden");
        assert_eq!(safe_name(""), "_");
        assert_eq!(safe_name("a/b\0c"), "a_b_c");
        assert_eq!(safe_name(&"x".repeat(500)).len(), 128);
    }

    #[test]
    fn lines_are_read_whole_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "one\ntwo\nthr").unwrap();
        let (lines, next) = read_lines_from(&p, 0, 1024).unwrap();
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(next, 8);
        let (lines, next2) = read_lines_from(&p, next, 1024).unwrap();
        assert!(lines.is_empty());
        assert_eq!(next2, 8);
        // A limit smaller than one line still makes progress.
        let (lines, _) = read_lines_from(&p, 0, 2).unwrap();
        assert_eq!(lines, ["one"]);
    }

    fn start(session_id: &str) -> StartInfo {
        StartInfo {
            session_id: session_id.into(),
            user: "alice".into(),
            run_as_user: "ssm-user".into(),
            owner: "alice".into(),
            target: "t".into(),
            reason: None,
            cols: 40,
            rows: 10,
            started_unix_ms: unix_ms(),
            term: None,
            shell: None,
        }
    }

    #[tokio::test]
    async fn recording_writes_private_files_and_streams_records() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let (tap, recording) = Recording::start(root.path(), start("s-1"), true).unwrap();
        let progress = recording.stream_progress.clone().unwrap();
        tap.output(b"$ ").await;
        let t = tap.clone();
        tokio::task::spawn_blocking(move || {
            t.input_blocking(b"ls\r", Some(false));
            t.input_blocking(b"hunter2\r", Some(true));
            t.input_blocking(b"x", None);
        })
        .await
        .unwrap();
        tap.output(b"ls\r\nfile\r\n$ ").await;
        tap.end(Some(0), "exited").await;
        drop(tap);
        let (paths, summary) = recording.finish().await;
        assert!(summary.error.is_none());
        assert_eq!(summary.redacted_bytes, 9);
        assert_eq!(
            std::fs::metadata(&paths.dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for f in [&paths.events, &paths.transcript, &paths.cast, &paths.stream] {
            let meta = std::fs::metadata(f).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", f.display());
            let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
            assert!(!text.contains("hunter2"), "{}: {text}", f.display());
            assert!(!text.contains(&crate::recorder::event::base64_encode(b"hunter2")));
        }
        assert_eq!(
            std::fs::read_to_string(&paths.transcript).unwrap(),
            "$ ls\nfile\n$\n"
        );
        let stream = std::fs::read_to_string(&paths.stream).unwrap();
        let records: Vec<StreamRecord> = stream
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(records.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        let inputs: Vec<&StreamRecord> = records
            .iter()
            .filter(|r| r.direction == Direction::Input)
            .collect();
        assert_eq!(inputs[0].lines, ["ls"]);
        assert!(inputs[1].lines[0].starts_with("[input redacted: 8 bytes"));
        assert!(inputs[2].lines[0].starts_with("[input redacted: 1 bytes"));
        assert_eq!(
            *progress.borrow(),
            std::fs::metadata(&paths.stream).unwrap().len()
        );
        let f = std::fs::File::open(&paths.events).unwrap();
        let records: Vec<_> = crate::replay::SpoolReader::new(f)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            String::from_utf8_lossy(&records.last().unwrap().payload).contains(r#""type":"end""#)
        );
        let f = std::fs::File::open(&paths.events).unwrap();
        assert!(matches!(
            crate::replay::verify_spool(f).unwrap(),
            crate::replay::Verdict::Intact {
                records: 7,
                torn_tail: false,
                ..
            }
        ));
    }
}
