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
//! delivery follows the document, whose destinations are kept beside the recording
//! (`session.json`, [`Meta`]). The recorder runs on its own thread so rendering (the
//! terminal emulator) overlaps with the pump; the [`Tap`] channel is bounded, so a
//! recorder that falls behind slows the shell rather than dropping or buffering without
//! bound. The transcript is written line by line as lines complete, so nothing of it is
//! held in memory. The streamer tails `stream.jsonl` by offset (no rescans) and retries
//! with backoff; what it could not deliver stays on disk.
//!
//! ## Sinks acknowledge; a crash costs nothing but a re-send
//!
//! Everything derived from the spool — transcript, asciicast, stream records and so the
//! CloudWatch messages and their chain — is a function of the event stream alone (event
//! times, not the wall clock; per-event, not per-batch), so [`rebuild`] re-derives it
//! identically after a crash. Each sink writes what it has acknowledged beside the
//! recording: `stream.ack` (last stream record stored), `s3.ack` (keys uploaded),
//! `upload.ack` (events of the upload at close). `delivery.json` marks the end; until it
//! exists the recording is unsettled and the next start delivers the rest
//! (`agent::recovery`).
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
//! its length and CRC and ends the readable spool there; [`rebuild`] cuts it off and, when
//! the session never ended, appends an `end` event saying it was interrupted.

use super::reserve::ReservedFile;
use crate::delivery::aws::{AwsError, BucketEncryption, Logs, Upload, S3};
use crate::delivery::cwl::{
    self, redacted_marker, render_input, Batcher, Direction, SessionFields, StreamRecord,
};
use crate::delivery::{s3_key, CwlDestination, S3Destination};
use crate::recorder::{EventKind, Recorder, StartInfo};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

/// Under `fail-closed`, how long input waits for the recorder to write it before it is
/// dropped (the recorder is stuck: the recording has failed).
const INPUT_ACK_WAIT: Duration = Duration::from_secs(10);
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
/// A destination that is not found (deleted, or not re-created yet) is retried this long
/// before delivery gives up; transient failures are retried while the daemon runs.
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
/// Name of the recording's delivery instructions ([`Meta`]).
pub const META_FILE: &str = "session.json";
/// The streamer's acknowledged position: the last stream record stored in CloudWatch.
pub const STREAM_ACK: &str = "stream.ack";
/// Events of the upload at close already stored in CloudWatch.
pub const UPLOAD_ACK: &str = "upload.ack";
/// S3 keys already uploaded.
pub const S3_ACK: &str = "s3.ack";

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

/// Creates a directory (and parents) readable by its owner only. On Windows there are
/// no modes: the directory inherits the state directory's ACL (SYSTEM and
/// Administrators only, set by `session-agent service install`).
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(path)
}

/// Owner-only (0600) files where the platform has modes; see [`private_dir`].
fn owner_only(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    options.mode(0o600);
    options
}

/// What a recording needs to be delivered, kept beside it (`session.json`) so that a
/// recording left behind by a crash can be delivered by the next start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The session.
    pub session_id: String,
    /// S3 upload at close.
    #[serde(default)]
    pub s3: Option<S3Destination>,
    /// CloudWatch Logs (streamed or uploaded at close).
    #[serde(default)]
    pub cwl: Option<CwlDestination>,
    /// The fixed fields of streamed messages.
    #[serde(default)]
    pub fields: Option<SessionFields>,
    /// Destinations skipped before the session started, reported in `delivery.json`.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Set when the recording ended: records in the spool...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_records: Option<u64>,
    /// ...and the hash chain's value after the last one (hex), to compare copies with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_head: Option<String>,
}

impl Meta {
    /// Whether the recording is streamed to CloudWatch Logs.
    pub fn streaming(&self) -> bool {
        self.cwl.as_ref().is_some_and(|d| d.streaming)
    }

    fn write(&self, paths: &Paths) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&paths.dir.join(META_FILE), &json)
    }

    /// Reads a recording's `session.json`.
    ///
    /// # Errors
    /// Missing or not a [`Meta`], described.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {META_FILE}: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{META_FILE} is not valid: {e}"))
    }
}

/// Replaces `path` with `bytes` (owner-only), atomically: a reader sees the old or the new
/// content, never a mix, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        owner_only(OpenOptions::new().create(true).write(true).truncate(true)).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
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
    Input(u64, Vec<u8>),
    /// Echo-off input: its byte count and line ends only.
    Redacted(u64, usize, usize),
    Resize(u64, u16, u16),
    End(u64, Option<i32>, String),
    /// An event read back from a spool (a rebuild), recorded as it was.
    Replayed(u64, EventKind),
    /// Input under `fail-closed`: the writer learns whether it was recorded before it
    /// types it.
    Acked(Box<Rec>, std::sync::mpsc::Sender<bool>),
}

impl Rec {
    /// Bytes of session data it carries (what a gap counts when it is lost).
    fn data_len(&self) -> usize {
        match self {
            Rec::Output(_, d) | Rec::Input(_, d) => d.len(),
            Rec::Redacted(_, n, _) => *n,
            Rec::Replayed(_, EventKind::Output { data } | EventKind::Input { data }) => data.len(),
            Rec::Acked(inner, _) => inner.data_len(),
            _ => 0,
        }
    }
}

/// The pump's handle to the recorder. Cheap to clone; every call applies back-pressure
/// when the recorder is behind.
#[derive(Debug, Clone)]
pub struct Tap {
    tx: mpsc::Sender<Rec>,
    started: Instant,
    /// Set when the recording failed under `fail-closed`: input no longer reaches the
    /// shell (nothing unrecorded is typed while the session is being ended).
    closed: Arc<AtomicBool>,
    /// `fail-closed`: input is typed only once the recorder has written it.
    strict: bool,
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

    /// Records typed input, from a blocking thread (the PTY writer), before it is written
    /// to the terminal. `echo_off` is the terminal's state as the bytes are written;
    /// unknown counts as off (never record what might be a password). Returns false when
    /// the bytes must not be written: the recording failed and the policy is
    /// `fail-closed`.
    pub fn input_blocking(&self, bytes: &[u8], echo_off: Option<bool>) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let msg = if echo_off.unwrap_or(true) {
            // The bytes go no further than this thread.
            Rec::Redacted(
                self.at(),
                bytes.len(),
                crate::recorder::event::line_ends(bytes),
            )
        } else {
            Rec::Input(self.at(), bytes.to_vec())
        };
        if !self.strict {
            let _ = self.tx.blocking_send(msg);
            return true;
        }
        // fail-closed: typed only once it is on disk (a recorder that is gone, or that
        // does not answer, counts as a failed recording).
        let (ack, recorded) = std::sync::mpsc::channel();
        if self
            .tx
            .blocking_send(Rec::Acked(Box::new(msg), ack))
            .is_err()
        {
            self.closed.store(true, Ordering::SeqCst);
            return false;
        }
        let ok = recorded.recv_timeout(INPUT_ACK_WAIT).unwrap_or(false);
        if !ok {
            self.closed.store(true, Ordering::SeqCst);
        }
        ok && !self.closed.load(Ordering::SeqCst)
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
    /// Parts of the session that could not be recorded (the disk was full), described.
    pub gaps: Vec<String>,
    /// Records in the spool, and the hash chain's value after the last one.
    pub spool_records: u64,
    /// See `spool_records` (hex).
    pub spool_head: String,
    /// A write to the state dir failed (the text says which); the recording is incomplete.
    pub error: Option<String>,
}

impl Summary {
    /// Why the recording is not the whole session, if it is not.
    pub fn incomplete(&self) -> Option<String> {
        let mut why: Vec<String> = self.gaps.clone();
        why.extend(self.error.clone());
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// How a recording is made: the reservation ahead of it and what to do when it fails.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Disk space reserved ahead of the spool and the asciicast (a quarter of it for the
    /// transcript and the stream queue), renewed as they grow, released at the end.
    pub headroom: u64,
    /// `recording_policy = "fail-closed"`: a recording that cannot be written ends the
    /// session (and the space must be reserved before it starts).
    pub fail_closed: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            headroom: DEFAULT_HEADROOM,
            fail_closed: false,
        }
    }
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
    /// Under `fail-closed`: fires with the reason when the recording can no longer be
    /// written (the session must end).
    pub failed: Option<oneshot::Receiver<String>>,
}

impl Recording {
    /// Creates the recording's directory and files, reserves their headroom, and starts
    /// its thread.
    ///
    /// # Errors
    /// The directory or a file could not be created, the thread not started, or (under
    /// `fail-closed`) the headroom not reserved.
    pub fn start(
        recordings_root: &Path,
        start: StartInfo,
        meta: &Meta,
        options: Options,
    ) -> std::io::Result<(Tap, Self)> {
        let paths = Paths::new(recordings_root, &start.session_id);
        private_dir(&paths.dir)?;
        meta.write(&paths)?;
        let streaming = meta.streaming();
        let mut files = Files::open(&paths, streaming, false, options.headroom)?;
        if let Err(e) = files.reserve() {
            if options.fail_closed {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot reserve {} MiB of disk space for the recording: {e}",
                        options.headroom.saturating_mul(3) / (1024 * 1024)
                    ),
                ));
            }
            tracing::warn!(session = %start.session_id, error = %e, "Cannot reserve disk space ahead of the recording; it is written without a reservation (recording_policy = \"fail-open\")");
        }
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let (done_tx, done) = oneshot::channel();
        let (progress_tx, progress_rx) = watch::channel(0u64);
        let (failed_tx, failed_rx) = oneshot::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let started_unix_ms = start.started_unix_ms;
        let mut worker = Worker::new(
            Recorder::new(start).forget_taken_lines(),
            files,
            progress_tx,
        );
        if options.fail_closed {
            worker.on_loss = Some((failed_tx, closed.clone()));
        }
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
                closed,
                strict: options.fail_closed,
            },
            Self {
                paths,
                started_unix_ms,
                done,
                stream_progress: streaming.then_some(progress_rx),
                failed: options.fail_closed.then_some(failed_rx),
            },
        ))
    }

    /// Waits until the recorder has written everything (after [`Tap::end`] or once every
    /// tap is dropped), and notes where the spool ended in `session.json`.
    pub async fn finish(self) -> (Paths, Summary) {
        let summary = self.done.await.unwrap_or_else(|_| Summary {
            error: Some("the recorder thread stopped unexpectedly".into()),
            ..Summary::default()
        });
        note_spool_end(&self.paths, &summary);
        (self.paths, summary)
    }
}

/// Records the spool's record count and chain head in `session.json` (beside the copy
/// in the last streamed CloudWatch message and `delivery.json`), so a copy of the spool
/// cut short can be told from the whole. A failure is logged, not fatal.
fn note_spool_end(paths: &Paths, summary: &Summary) {
    if summary.spool_head.is_empty() {
        return;
    }
    let written = Meta::read(&paths.dir).and_then(|mut meta| {
        meta.spool_records = Some(summary.spool_records);
        meta.spool_head = Some(summary.spool_head.clone());
        meta.write(paths).map_err(|e| e.to_string())
    });
    if let Err(e) = written {
        tracing::warn!(dir = %paths.dir.display(), error = %e, "Cannot note the spool's end in session.json");
    }
}

/// Space kept reserved at the end of the spool for the records that say what happened
/// (a gap, the end), whatever else the disk holds.
const SPOOL_GUARD: u64 = 64 * 1024;
/// The same for the derived files (the end's last lines, gap notes).
const DERIVED_GUARD: u64 = 64 * 1024;
/// Derived bytes gathered before they are written.
const DERIVED_BUFFER: usize = 256 * 1024;
/// Default [`Options::headroom`].
pub const DEFAULT_HEADROOM: u64 = 4 * 1024 * 1024;

/// One of the files derived from the events (transcript, asciicast, stream queue): text
/// gathered, then written whole into its reserved space.
#[derive(Debug)]
struct Derived {
    file: ReservedFile,
    buf: Vec<u8>,
    name: &'static str,
}

impl Derived {
    fn open(path: &Path, fresh: bool, chunk: u64, name: &'static str) -> std::io::Result<Self> {
        if fresh {
            let f = owner_only(OpenOptions::new().create(true).write(true)).open(path)?;
            f.set_len(0)?;
        }
        Ok(Self {
            file: ReservedFile::open(path, chunk)?,
            buf: Vec::new(),
            name,
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.file.append(&self.buf);
        self.buf.clear();
        r.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.name)))
    }

    /// Room for what is gathered plus `more`, keeping `keep` reserved.
    fn has_room(&mut self, more: u64, keep: u64, now: Instant) -> bool {
        self.file.has_room(self.buf.len() as u64 + more, keep, now)
    }
}

struct Files {
    spool: ReservedFile,
    /// The hash chain's value after the last record written, and how many there are.
    chain: crate::recorder::spool::Chain,
    records: u64,
    last_sync: Instant,
    transcript: Derived,
    cast: Derived,
    stream: Option<Derived>,
    stream_bytes: u64,
    headroom: u64,
}

impl Files {
    /// Opens a recording's files: the spool for appending (the header written when it is
    /// new); the derived files appended to, or with `fresh` emptied first (a rebuild
    /// derives them again from the spool).
    fn open(paths: &Paths, streaming: bool, fresh: bool, headroom: u64) -> std::io::Result<Self> {
        let mut spool = ReservedFile::open(&paths.events, headroom)?;
        if spool.is_empty() {
            // The reservation proper (and what its failure means) is Files::reserve's;
            // the header needs only a few bytes.
            let _ = spool.reserve(headroom);
            spool.append(crate::recorder::spool::MAGIC)?;
        }
        let quarter = headroom / 4;
        Ok(Self {
            spool,
            chain: crate::recorder::spool::CHAIN_START,
            records: 0,
            last_sync: Instant::now(),
            transcript: Derived::open(&paths.transcript, fresh, quarter, "transcript")?,
            cast: Derived::open(&paths.cast, fresh, headroom, "asciicast")?,
            stream: if streaming {
                Some(Derived::open(&paths.stream, fresh, quarter, STREAM_FILE)?)
            } else {
                None
            },
            stream_bytes: 0,
            headroom,
        })
    }

    /// Reserves the headroom of every file.
    fn reserve(&mut self) -> std::io::Result<()> {
        let quarter = self.headroom / 4;
        self.spool.reserve(self.headroom)?;
        self.cast.file.reserve(self.headroom)?;
        self.transcript.file.reserve(quarter)?;
        if let Some(s) = &mut self.stream {
            s.file.reserve(quarter)?;
        }
        Ok(())
    }

    fn derived(&mut self) -> impl Iterator<Item = &mut Derived> {
        [
            Some(&mut self.transcript),
            Some(&mut self.cast),
            self.stream.as_mut(),
        ]
        .into_iter()
        .flatten()
    }

    /// Whether an event of `record` spool bytes carrying `data` bytes can be recorded
    /// now in every file (`control`: a gap or end record, which may use the guards).
    fn has_room(&mut self, record: u64, data: u64, control: bool, now: Instant) -> bool {
        self.lacking(record, data, control, now).is_none()
    }

    /// The file that has no room for such an event, if one has none.
    fn lacking(
        &mut self,
        record: u64,
        data: u64,
        control: bool,
        now: Instant,
    ) -> Option<&'static str> {
        let (spool_keep, derived_keep) = if control {
            (0, 0)
        } else {
            (SPOOL_GUARD, DERIVED_GUARD)
        };
        if !self.spool.has_room(record, spool_keep, now) {
            return Some(EVENTS_FILE);
        }
        // What one event can add to a derived file: JSON escaping at worst six bytes a
        // byte, plus lines the terminal commits (a screen).
        let more = data.saturating_mul(6) + 16 * 1024;
        self.derived()
            .find_map(|d| (!d.has_room(more, derived_keep, now)).then_some(d.name))
    }

    /// Hands back the unused reservations.
    fn release(&mut self) {
        self.spool.release();
        for d in self.derived() {
            d.file.release();
        }
    }
}

/// A part of the session not recorded, while it lasts.
#[derive(Debug, Clone)]
struct Loss {
    from_ms: u64,
    bytes: u64,
    events: u64,
    reason: String,
}

/// The recorder thread's state. Everything it derives (transcript, asciicast, stream
/// records) is a function of the event stream alone — no wall clock, no batch
/// boundaries — so [`rebuild`] re-derives the same files, the same stream record numbers
/// and so the same CloudWatch chain from the spool after a crash.
///
/// An event is written to the spool first and only then recorded (numbered, rendered,
/// streamed): an event that cannot be written leaves no trace but the gap that counts it,
/// so the derived files never hold what the spool lacks, and the chain never skips.
struct Worker {
    rec: Recorder,
    files: Files,
    started_unix_ms: u64,
    stream_seq: u64,
    /// Complete typed lines not yet streamed.
    pending_input: Vec<String>,
    /// The line being typed (no Enter yet).
    open_input: String,
    /// When (event time) `open_input` started.
    pending_since: Option<u64>,
    /// The stretch of echo-off typing in progress.
    redacted: Option<Redacted>,
    /// Events with a smaller seq are already in the spool (a rebuild).
    spool_from: u64,
    /// What is being lost now (the disk is full).
    loss: Option<Loss>,
    /// A rebuild met a gap that was never closed (the agent stopped during it).
    replayed_open_gap: Option<u64>,
    /// Under `fail-closed`: told once, at the first loss.
    on_loss: Option<(oneshot::Sender<String>, Arc<AtomicBool>)>,
    summary: Summary,
    progress: watch::Sender<u64>,
}

impl Worker {
    fn new(rec: Recorder, files: Files, progress: watch::Sender<u64>) -> Self {
        let started_unix_ms = rec.start_info().map_or(0, |s| s.started_unix_ms);
        Self {
            rec,
            files,
            started_unix_ms,
            stream_seq: 0,
            pending_input: Vec::new(),
            open_input: String::new(),
            pending_since: None,
            redacted: None,
            spool_from: 0,
            loss: None,
            replayed_open_gap: None,
            on_loss: None,
            summary: Summary::default(),
            progress,
        }
    }

    /// The start event (seq 0).
    fn begin(&mut self) {
        if self.spool_from == 0 {
            let start = self.rec.start_event().to_json_line();
            if let Err(e) = self.write_record(&start) {
                self.note(Err(e), EVENTS_FILE);
            }
        }
        // The asciicast header.
        for line in self.rec.take_asciicast_lines() {
            self.files.cast.buf.extend_from_slice(line.as_bytes());
            self.files.cast.buf.push(b'\n');
        }
        self.summary.events = 1;
    }

    fn run(mut self, mut rx: mpsc::Receiver<Rec>) -> Summary {
        self.begin();
        let mut ended = false;
        while !ended {
            let Some(first) = rx.blocking_recv() else {
                // Every tap dropped without an end: the session task failed.
                let at = unix_ms().saturating_sub(self.started_unix_ms);
                let _ = self.apply(Rec::End(at, None, "recording closed without an end".into()));
                self.flush_lines(true);
                break;
            };
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(msg) = next.take() {
                ended |= matches!(msg, Rec::End(..));
                let _ = self.apply(msg);
                handled += 1;
                if !ended && handled < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.flush_lines(ended);
        }
        self.files.release();
        self.finish_summary()
    }

    fn finish_summary(&mut self) -> Summary {
        self.summary.spool_records = self.files.records;
        self.summary.spool_head = crate::recorder::spool::hex(&self.files.chain);
        self.summary.clone()
    }

    /// Records one message; whether it made it to disk.
    fn apply(&mut self, msg: Rec) -> bool {
        let data = msg.data_len() as u64;
        let (at, kind) = match msg {
            Rec::Acked(inner, ack) => {
                let recorded = self.apply(*inner);
                let _ = ack.send(recorded);
                return recorded;
            }
            Rec::Output(at, data) => (at, EventKind::Output { data }),
            Rec::Input(at, data) => (at, EventKind::Input { data }),
            Rec::Redacted(at, bytes, lines) => (at, EventKind::InputRedacted { bytes, lines }),
            Rec::Resize(at, cols, rows) => (at, EventKind::Resize { cols, rows }),
            Rec::End(at, exit_code, how) => (at, EventKind::End { exit_code, how }),
            Rec::Replayed(at, kind) => (at, kind),
        };
        let event = self.rec.next_event(at, kind);
        if event.seq < self.spool_from {
            // Read back from the spool (a rebuild): already on disk.
            self.record(&event);
            return true;
        }
        let control = matches!(event.kind, EventKind::End { .. });
        let now = Instant::now();
        if self.loss.is_some() {
            // Recording resumes only once every file has room again; the end always
            // closes the gap (its record fits in the guard).
            let line = event.to_json_line();
            let room = self
                .files
                .has_room(line.len() as u64 + 64, data, false, now);
            if !room && !control {
                self.count_loss(data);
                return false;
            }
            if !self.close_loss(event.at_ms) {
                // The gap's record itself could not be written: still in the gap.
                self.count_loss(data);
                return false;
            }
        }
        let event = self.rec.next_event(event.at_ms, event.kind);
        let line = event.to_json_line();
        let record_len = (crate::recorder::spool::HEADER_LEN + line.len()) as u64;
        if let Some(file) = self.files.lacking(record_len, data, control, now) {
            tracing::debug!(file, "No room to record an event");
            self.begin_loss(
                event.at_ms,
                data,
                "no space left on the recordings' file system".into(),
            );
            return false;
        }
        match self.write_record(&line) {
            Ok(()) => {
                self.record(&event);
                true
            }
            Err(e) => {
                self.begin_loss(
                    event.at_ms,
                    data,
                    format!("the recording could not be written: {e}"),
                );
                false
            }
        }
    }

    /// An event that is on disk: numbered, rendered, streamed.
    fn record(&mut self, event: &crate::recorder::Event) {
        self.rec.commit(event);
        // Its asciicast lines at once: what is gathered is what the room checks count.
        for line in self.rec.take_asciicast_lines() {
            self.files.cast.buf.extend_from_slice(line.as_bytes());
            self.files.cast.buf.push(b'\n');
        }
        if let EventKind::Output { data } = &event.kind {
            self.summary.output_bytes += data.len() as u64;
        }
        if let EventKind::Gap { from_ms, to_ms, .. } = &event.kind {
            self.replayed_open_gap = to_ms.is_none().then_some(*from_ms);
            if let (Some(note), true) = (
                crate::recorder::event::gap_note(&event.kind, self.started_unix_ms),
                to_ms.is_some(),
            ) {
                self.summary.gaps.push(
                    note.trim()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                );
            }
        }
        self.summary.events += 1;
        self.derive(event);
    }

    /// The first event that cannot be recorded: the gap opens, with a record saying so
    /// (in the guard), and under `fail-closed` the session is told to end.
    fn begin_loss(&mut self, at: u64, data: u64, reason: String) {
        tracing::error!(reason = %reason, "The recording cannot be written: a gap opens (what the session does is not recorded until space returns)");
        self.loss = Some(Loss {
            from_ms: at,
            bytes: data,
            events: 1,
            reason: reason.clone(),
        });
        let kind = EventKind::Gap {
            from_ms: at,
            to_ms: None,
            bytes: 0,
            events: 0,
            reason: reason.clone(),
        };
        let _ = self.write_control(at, kind);
        if let Some((tx, closed)) = self.on_loss.take() {
            closed.store(true, Ordering::SeqCst);
            let _ = tx.send(reason);
        }
    }

    fn count_loss(&mut self, data: u64) {
        if let Some(l) = &mut self.loss {
            l.bytes += data;
            l.events += 1;
        }
    }

    /// Recording resumes (or the session ends): the gap's record with what was lost.
    /// False when that record could not be written (the gap goes on, its counts kept).
    fn close_loss(&mut self, at: u64) -> bool {
        let Some(l) = self.loss.take() else {
            return true;
        };
        let kind = EventKind::Gap {
            from_ms: l.from_ms,
            to_ms: Some(at.max(l.from_ms)),
            bytes: l.bytes,
            events: l.events,
            reason: l.reason.clone(),
        };
        if self.write_control(at, kind) {
            tracing::warn!(
                lost_bytes = l.bytes,
                lost_events = l.events,
                "The recording resumes after a gap"
            );
            true
        } else {
            self.loss = Some(l);
            false
        }
    }

    /// Writes a gap or end record, which may use the guard; whether it was written.
    fn write_control(&mut self, at: u64, kind: EventKind) -> bool {
        let event = self.rec.next_event(at, kind);
        let line = event.to_json_line();
        let len = (crate::recorder::spool::HEADER_LEN + line.len()) as u64;
        let now = Instant::now();
        let written = match self.files.lacking(len, 0, true, now) {
            None => self.write_record(&line),
            Some(file) => Err(std::io::Error::other(format!(
                "the space kept for it in {file} is used up"
            ))),
        };
        match written {
            Ok(()) => {
                self.record(&event);
                true
            }
            Err(e) => {
                let what = format!("a gap in the recording could not itself be recorded: {e}");
                tracing::error!("{what}");
                if self.summary.error.is_none() {
                    self.summary.error = Some(what);
                }
                false
            }
        }
    }

    /// Appends one record to the spool (whole, or not at all).
    fn write_record(&mut self, line: &str) -> std::io::Result<()> {
        use crate::recorder::spool;
        let chain = spool::chain_next(&self.files.chain, line.as_bytes());
        self.files
            .spool
            .append(&spool::encode_record(&chain, line.as_bytes()))?;
        self.files.chain = chain;
        self.files.records += 1;
        Ok(())
    }

    /// Transcript lines and stream records for one event (times are event times).
    fn derive(&mut self, event: &crate::recorder::Event) {
        let at = event.at_ms;
        if self
            .pending_since
            .is_some_and(|since| at.saturating_sub(since) >= INPUT_HOLD_MS)
        {
            self.flush_input(at, true);
        }
        if self
            .redacted
            .is_some_and(|r| at.saturating_sub(r.last_ms) >= INPUT_HOLD_MS)
        {
            self.close_redacted(at);
        }
        match &event.kind {
            // Lines are taken after every output event: the commit points (and so the
            // transcript) are then a function of the event stream alone, and `session-agent
            // transcript` re-renders the raw stream identically.
            EventKind::Output { .. } => self.take_output_lines(at),
            EventKind::Gap { .. } => {
                self.take_output_lines(at);
                // Its own record too: a reader of the stream learns of the gap from what
                // the recorder says, not from text the session could print or a
                // full-screen program could paint over.
                if let Some(note) =
                    crate::recorder::event::gap_note(&event.kind, self.started_unix_ms)
                {
                    let line = note.trim().to_owned();
                    self.stream(at, Direction::Gap, vec![line]);
                }
            }
            EventKind::InputRedacted { bytes, lines } => {
                self.summary.redacted_bytes += *bytes as u64;
                let open = std::mem::take(&mut self.open_input);
                if !open.is_empty() {
                    self.pending_input.push(open);
                }
                // One marker per stretch of echo-off typing: per line (Enter), or per
                // burst when no Enter comes, with its bytes and how long it took.
                let r = self.redacted.get_or_insert(Redacted {
                    bytes: 0,
                    lines: 0,
                    first_ms: at,
                    last_ms: at,
                });
                r.bytes += bytes;
                r.lines += lines;
                r.last_ms = at;
                if *lines > 0 {
                    self.close_redacted(at);
                }
            }
            EventKind::Input { data } => {
                self.close_redacted(at);
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
            EventKind::End { exit_code, how } => {
                self.take_output_lines(at);
                self.close_redacted(at);
                self.flush_input(at, true);
                // The last stream record says the session ended, and where the spool
                // ended: a copy of the spool cut short shows against it.
                let mut line = format!("[session ended: {how}");
                if let Some(code) = exit_code {
                    line.push_str(&format!(", status {code}"));
                }
                line.push(']');
                let end = cwl::SpoolEnd {
                    records: self.files.records,
                    head: crate::recorder::spool::hex(&self.files.chain),
                };
                self.stream_with(at, Direction::End, vec![line], Some(end));
            }
            EventKind::Resize { .. } | EventKind::Start(_) => {}
        }
        // Keep what is gathered small: write it out once it is large.
        let r = self
            .files
            .derived()
            .filter(|d| d.buf.len() >= DERIVED_BUFFER)
            .try_for_each(Derived::flush);
        self.note(r, "recording");
    }

    /// Streams the marker of the stretch of echo-off typing in progress, if any.
    fn close_redacted(&mut self, at: u64) {
        if let Some(r) = self.redacted.take() {
            self.pending_input.push(redacted_marker(
                r.bytes,
                r.lines,
                r.last_ms.saturating_sub(r.first_ms),
            ));
            self.flush_input(at, true);
        }
    }

    fn note(&mut self, r: std::io::Result<()>, what: &str) {
        if let Err(e) = r {
            if self.summary.error.is_none() {
                tracing::error!(file = what, error = %e, "Cannot write the recording; it will be incomplete");
                self.summary.error = Some(format!("cannot write {what}: {e}"));
            }
            // Under fail-closed any failure to write the recording ends the session.
            if let Some((tx, closed)) = self.on_loss.take() {
                closed.store(true, Ordering::SeqCst);
                let _ = tx.send(format!("cannot write {what}: {e}"));
            }
        }
    }

    /// Commits transcript lines completed so far: to the transcript file and, when
    /// streaming, as one output record.
    fn take_output_lines(&mut self, at: u64) {
        let lines = self.rec.take_lines();
        if lines.is_empty() {
            return;
        }
        for l in &lines {
            self.files.transcript.buf.extend_from_slice(l.as_bytes());
            self.files.transcript.buf.push(b'\n');
        }
        self.stream(at, Direction::Output, lines);
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
        self.stream_with(at, direction, lines, None);
    }

    fn stream_with(
        &mut self,
        at: u64,
        direction: Direction,
        lines: Vec<String>,
        end: Option<cwl::SpoolEnd>,
    ) {
        let Some(out) = self.files.stream.as_mut() else {
            return;
        };
        let record = StreamRecord {
            seq: self.stream_seq,
            unix_ms: self.started_unix_ms.saturating_add(at),
            direction,
            lines,
            end,
        };
        self.stream_seq += 1;
        let line = serde_json::to_string(&record).unwrap_or_default();
        out.buf.extend_from_slice(line.as_bytes());
        out.buf.push(b'\n');
        self.files.stream_bytes += line.len() as u64 + 1;
    }

    /// End of a batch: write every file (the spool is already written), sync the spool
    /// when due, wake the streamer.
    fn flush_lines(&mut self, ended: bool) {
        let r = self.files.derived().try_for_each(Derived::flush);
        self.note(r, "recording");
        if ended || self.files.last_sync.elapsed() >= SYNC_EVERY {
            let r = self.files.spool.sync();
            self.note(r, EVENTS_FILE);
            self.files.last_sync = Instant::now();
        }
        if self.files.stream.is_some() {
            let _ = self.progress.send(self.files.stream_bytes);
        }
    }
}

/// A stretch of input typed with echo off: counts and times only.
#[derive(Debug, Clone, Copy)]
struct Redacted {
    bytes: usize,
    lines: usize,
    first_ms: u64,
    last_ms: u64,
}

/// What [`rebuild`] found in a spool.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// What the re-derivation produced (events counts the spool's records, plus the
    /// interruption marker when one was added).
    pub summary: Summary,
    /// The spool had no end event: the session was cut short by a crash, and an `end`
    /// event saying so was appended.
    pub interrupted: bool,
    /// Bytes of a torn last record cut off.
    pub torn_bytes: u64,
}

/// Why a recording could not be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    /// It cannot be trusted or read: corrupt, altered, not a recording. Quarantined.
    #[error("{0}")]
    Corrupt(String),
    /// The disk or file system failed for now (full, read-only, an I/O error): tried
    /// again later, never quarantined.
    #[error("{0}")]
    Transient(String),
}

/// The `how` of the end event appended to a recording whose session was cut short.
pub const INTERRUPTED: &str =
    "interrupted: the agent stopped before the session ended (recovered at the next start)";

/// Re-derives a recording's transcript, asciicast and stream queue from its spool after a
/// crash; cuts off a torn last record; when the session never ended, appends an `end`
/// event saying it was interrupted (continuing the hash chain), after closing a gap left
/// open. Blocking.
///
/// # Errors
/// [`RebuildError::Corrupt`]: the spool is unreadable, corrupt in its middle or altered
/// (the text says where): the recording must be quarantined, not delivered.
/// [`RebuildError::Transient`]: the files could not be written (a full disk): try again.
pub fn rebuild(paths: &Paths, streaming: bool) -> Result<Rebuilt, RebuildError> {
    use crate::recorder::spool::{ChainChecker, SpoolError};
    use crate::recorder::Event;
    use RebuildError::{Corrupt, Transient};
    let file = File::open(&paths.events).map_err(|e| {
        let text = format!("cannot open the spool: {e}");
        if e.kind() == std::io::ErrorKind::NotFound {
            Corrupt(text)
        } else {
            Transient(text)
        }
    })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = crate::replay::SpoolReader::new(BufReader::new(file)).map_err(Corrupt)?;
    let mut checker = ChainChecker::new();
    // Each event read, with the chain's value and the record count after it.
    type Read = Option<(Event, crate::recorder::spool::Chain, u64)>;
    let mut next_event =
        |reader: &mut crate::replay::SpoolReader<_>| -> Result<Read, RebuildError> {
            match reader.next() {
                None | Some(Err(SpoolError::Truncated { .. })) => Ok(None),
                Some(Err(e @ SpoolError::Unreadable { .. })) => Err(Transient(e.to_string())),
                Some(Err(e)) => Err(Corrupt(format!("record {}: {e}", checker.count()))),
                Some(Ok(record)) => {
                    checker.check(&record).map_err(|e| Corrupt(e.to_string()))?;
                    let text = String::from_utf8_lossy(&record.payload);
                    let event = Event::from_json_line(&text).map_err(|e| {
                        Corrupt(format!("record {}: not an event: {e}", checker.count() - 1))
                    })?;
                    Ok(Some((event, checker.head(), checker.count())))
                }
            }
        };
    let start = match next_event(&mut reader)? {
        Some((
            Event {
                kind: EventKind::Start(info),
                ..
            },
            _,
            _,
        )) => info,
        Some(_) => {
            return Err(Corrupt(
                "the first record is not the session's start".into(),
            ))
        }
        None => return Err(Corrupt("the spool holds no events".into())),
    };
    let files = Files::open(paths, streaming, true, DEFAULT_HEADROOM)
        .map_err(|e| Transient(format!("cannot rewrite the derived files: {e}")))?;
    let (progress, _) = watch::channel(0);
    let mut worker = Worker::new(Recorder::new(start).forget_taken_lines(), files, progress);
    worker.spool_from = u64::MAX;
    worker.begin();
    let mut last_at = 0;
    let mut ended = false;
    let mut handled = 0usize;
    let (mut head, mut count) = (crate::recorder::spool::CHAIN_START, 1);
    while let Some((event, chain, records)) = next_event(&mut reader)? {
        // What the live recorder knew as it recorded this event (the end's stream
        // record carries it).
        (worker.files.chain, worker.files.records) = (chain, records);
        (head, count) = (chain, records);
        if ended {
            return Err(Corrupt(format!(
                "event {} follows the end event",
                event.seq
            )));
        }
        last_at = event.at_ms;
        match event.kind {
            EventKind::Start(_) => {
                return Err(Corrupt(format!("event {} is a second start", event.seq)))
            }
            EventKind::End { .. } => ended = true,
            _ => {}
        }
        let _ = worker.apply(Rec::Replayed(event.at_ms, event.kind));
        handled += 1;
        if handled % BATCH == 0 {
            worker.flush_lines(false);
        }
    }
    let good = reader.offset();
    let torn_bytes = file_len.saturating_sub(good);
    if torn_bytes > 0 {
        OpenOptions::new()
            .write(true)
            .open(&paths.events)
            .and_then(|f| f.set_len(good))
            .map_err(|e| Transient(format!("cannot cut the torn last record: {e}")))?;
    }
    // From here on, new records are written after what was read.
    worker.files.spool = ReservedFile::open(&paths.events, DEFAULT_HEADROOM)
        .map_err(|e| Transient(format!("cannot reopen the spool: {e}")))?;
    if count == 1 {
        // Only the start was read.
        (head, count) = (checker.head(), checker.count());
    }
    worker.files.chain = head;
    worker.files.records = count;
    worker.spool_from = count;
    if !ended {
        if let Some(from_ms) = worker.replayed_open_gap.take() {
            worker.write_control(
                last_at,
                EventKind::Gap {
                    from_ms,
                    to_ms: Some(last_at.max(from_ms)),
                    bytes: 0,
                    events: 0,
                    reason: "the agent stopped during a gap; how much was lost is not known".into(),
                },
            );
        }
        let _ = worker.apply(Rec::End(last_at, None, INTERRUPTED.into()));
    }
    worker.flush_lines(true);
    worker.files.release();
    if let Some(e) = worker.summary.error.take() {
        return Err(Transient(e));
    }
    if !ended && worker.files.records <= count {
        return Err(Transient(
            "the interruption could not be recorded (the disk is full?)".into(),
        ));
    }
    let summary = worker.finish_summary();
    note_spool_end(paths, &summary);
    Ok(Rebuilt {
        summary,
        interrupted: !ended,
        torn_bytes,
    })
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
    /// Events stored (by this run of the streamer).
    pub events: u64,
    /// Why streaming stopped early, if it did (the rest is in the state dir).
    pub error: Option<String>,
}

/// The retry policy of every delivery call: transient failures (network, throttling,
/// 5xx) are retried for as long as the daemon runs — an outage of any length costs
/// nothing but delay; a destination that is not found is retried for
/// [`DELIVERY_PATIENCE`] (it may be re-created, e.g. after a LocalStack restart or a
/// re-deployed stack), then given up; anything else (denied, bad request) is given up at
/// once. Giving up leaves the recording in the state dir.
#[derive(Debug)]
struct Patience {
    retry: Retry,
    missing_since: Option<Instant>,
}

impl Patience {
    fn new() -> Self {
        Self {
            retry: Retry::new(),
            missing_since: None,
        }
    }

    /// A success: the next failure starts the backoff again.
    fn reset(&mut self) {
        *self = Self::new();
    }

    /// After a failure: the delay before the next try, or `None` to give up.
    fn next_delay(&mut self, e: &AwsError) -> Option<Duration> {
        match e {
            AwsError::Transient(_) => Some(self.retry.delay()),
            AwsError::NotFound(_) => {
                let since = *self.missing_since.get_or_insert_with(Instant::now);
                (since.elapsed() < DELIVERY_PATIENCE).then(|| self.retry.delay())
            }
            AwsError::Denied(_) | AwsError::Other(_) => None,
        }
    }
}

/// A number a sink acknowledged in an earlier run (`stream.ack`: the last record stored;
/// `upload.ack`: events stored); `None` when nothing was acknowledged yet.
fn read_ack_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Records a sink's acknowledged position. A failure is logged, not fatal: it only means
/// a restart may send again what this position covers.
fn write_ack(path: &Path, bytes: &[u8]) {
    if let Err(e) = write_atomic(path, bytes) {
        tracing::warn!(path = %path.display(), error = %e, "Cannot record a delivery position; a restart may send some of it again");
    }
}

/// Streams a recording's `stream.jsonl` to CloudWatch Logs (stream named by the session
/// id, created when missing) until the recording is complete and everything is sent.
///
/// After each stored batch the last complete record's number is written to `stream.ack`;
/// a streamer started again for the same recording (after a crash) re-derives the same
/// messages and chain, skips what the ack covers and sends the rest — a batch stored
/// just before a crash, before its ack, is sent again with the same sequence numbers and
/// chain values (identifiable duplicates). Transient failures are retried while the daemon runs,
/// a missing group or stream for [`DELIVERY_PATIENCE`].
pub async fn stream_to_cloudwatch(
    logs: Logs,
    group: String,
    fields: SessionFields,
    paths: Paths,
    mut progress: watch::Receiver<u64>,
) -> StreamReport {
    let stream = fields.session_id.clone();
    let ack_path = paths.dir.join(STREAM_ACK);
    let mut acked = read_ack_number(&ack_path);
    let mut chain = crate::recorder::spool::CHAIN_START;
    let mut offset = 0u64;
    let mut stored = 0u64;
    let mut created = false;
    let mut complete = false;
    let mut patience = Patience::new();
    loop {
        if !complete {
            if progress.changed().await.is_err() {
                complete = true;
            } else {
                tokio::time::sleep(COALESCE).await;
            }
        }
        loop {
            let available = *progress.borrow();
            if offset >= available && !complete {
                break;
            }
            let p = paths.stream.clone();
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
                        error: Some(format!("cannot read {}: {e}", paths.stream.display())),
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
            // (messages so far, record seq) at the end of each record, to acknowledge
            // whole records only.
            let mut ends: Vec<(usize, u64)> = Vec::new();
            let mut count = 0usize;
            for line in &lines {
                match serde_json::from_str::<StreamRecord>(line) {
                    Ok(record) => {
                        let messages = cwl::stream_messages(&fields, &record, &mut chain);
                        if acked.is_some_and(|a| record.seq <= a) {
                            continue; // stored by an earlier run (the chain still advances)
                        }
                        count += messages.len();
                        for e in messages {
                            batcher.push(e);
                        }
                        ends.push((count, record.seq));
                    }
                    Err(e) => {
                        tracing::warn!(session = %stream, error = %e, "Skipping an unreadable stream record")
                    }
                }
            }
            let mut sent = 0usize;
            for batch in batcher.into_batches() {
                loop {
                    let result = if created {
                        logs.put(&group, &stream, &batch).await
                    } else {
                        match logs.ensure_stream(&group, &stream).await {
                            Ok(()) => {
                                created = true;
                                continue;
                            }
                            Err(e) => Err(e),
                        }
                    };
                    match result {
                        Ok(rejected) => {
                            if rejected != crate::delivery::aws::Rejected::default() {
                                tracing::warn!(session = %stream, ?rejected, "CloudWatch Logs rejected some events (too old/new or expired)");
                            }
                            patience.reset();
                            break;
                        }
                        Err(e) => {
                            if matches!(e, AwsError::NotFound(_)) {
                                // The stream (or its group) vanished: create it again.
                                created = false;
                            }
                            let Some(delay) = patience.next_delay(&e) else {
                                return give_up(&e, &group, stored);
                            };
                            tracing::warn!(session = %stream, group = %group, error = %e, retry_in = ?delay, "CloudWatch Logs delivery failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
                sent += batch.len();
                stored += batch.len() as u64;
                let whole = ends.partition_point(|(c, _)| *c <= sent);
                if let Some(&(_, seq)) = whole.checked_sub(1).and_then(|i| ends.get(i)) {
                    acked = Some(seq);
                    write_ack(&ack_path, seq.to_string().as_bytes());
                }
            }
            offset = next;
        }
    }
}

fn give_up(e: &AwsError, group: &str, stored: u64) -> StreamReport {
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
    StreamReport {
        events: stored,
        error: Some(error),
    }
}

/// Runs one delivery call under [`Patience`].
pub(crate) async fn with_retries<F, Fut, T>(what: &str, mut f: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AwsError>>,
{
    let mut patience = Patience::new();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => match patience.next_delay(&e) {
                Some(delay) => {
                    tracing::warn!(what, error = %e, retry_in = ?delay, "Upload failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(e),
            },
        }
    }
}

/// Uploads the transcript, the asciicast and the spool to S3 at close. Keys already
/// uploaded (listed in `s3.ack`, from a run cut short by a crash) are not uploaded again:
/// each object is written once.
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
    let ack_path = paths.dir.join(S3_ACK);
    let mut done: Vec<String> = std::fs::read(&ack_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (path, ext, content_type) in [
        (&paths.transcript, "log", "text/plain; charset=utf-8"),
        (&paths.cast, "cast", "application/x-asciicast"),
        // The spool itself: `session-agent verify s3://…` checks its hash chain.
        (&paths.events, "spool", "application/octet-stream"),
    ] {
        let key = s3_key(&dest.prefix, session_id, ext);
        if done.contains(&key) {
            continue;
        }
        let up = Upload {
            bucket: &dest.bucket,
            key: &key,
            content_type,
            encryption,
        };
        with_retries("s3 upload", || s3.upload_file(&up, path))
            .await
            .map_err(|e| format!("S3 upload of s3://{}/{key} failed: {e}", dest.bucket))?;
        done.push(key);
        let json = serde_json::to_vec(&done).unwrap_or_default();
        write_ack(&ack_path, &json);
    }
    Ok(done)
}

/// Uploads the clean transcript to the log group at close (streaming off), as plain-text
/// events split within the limits. The number of events stored is kept in `upload.ack`,
/// so an upload cut short by a crash resumes after them (plain-text events carry no
/// sequence number: only a batch stored in the instant before the crash can repeat).
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
    let ack_path = paths.dir.join(UPLOAD_ACK);
    let skip = read_ack_number(&ack_path).unwrap_or(0);
    let now = i64::try_from(unix_ms()).unwrap_or(i64::MAX);
    let mut offset = 0u64;
    let mut index = 0u64;
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
            index += 1;
            if index > skip {
                batcher.push(e);
            }
        }
        for batch in batcher.into_batches() {
            with_retries("put log events", || {
                logs.put(&dest.group, session_id, &batch)
            })
            .await
            .map_err(fail)?;
            stored += batch.len() as u64;
            write_ack(&ack_path, (skip + stored).to_string().as_bytes());
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
    /// The recording holds the whole session: no gap, nothing failed to be written.
    #[serde(default)]
    pub recording_complete: bool,
    /// Records in the spool, and its chain head (hex): compare copies with them.
    #[serde(default)]
    pub spool_records: u64,
    /// See `spool_records`.
    #[serde(default)]
    pub spool_head: String,
}

impl Delivery {
    /// Delivers, then writes `delivery.json`.
    pub async fn run(self) -> DeliveryStatus {
        let mut status = DeliveryStatus {
            complete: true,
            ..DeliveryStatus::default()
        };
        status.recording_complete = self.summary.incomplete().is_none();
        status.spool_records = self.summary.spool_records;
        status.spool_head.clone_from(&self.summary.spool_head);
        if let Some(why) = self.summary.incomplete() {
            status.errors.push(format!("recording incomplete: {why}"));
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
        if let Err(e) = write_atomic(&path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "Cannot write the delivery status");
        }
        let recording = self
            .summary
            .incomplete()
            .map_or_else(|| "complete".to_owned(), |why| format!("INCOMPLETE: {why}"));
        if status.recording_complete {
            tracing::info!(session = %self.session_id, complete = status.complete, %recording, s3 = ?status.s3_keys, cloudwatch_events = status.cloudwatch_events, "Recording delivered");
        } else {
            tracing::error!(session = %self.session_id, complete = status.complete, %recording, s3 = ?status.s3_keys, cloudwatch_events = status.cloudwatch_events, "Recording delivered, but it does not hold the whole session");
        }
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

    fn streaming_meta(session_id: &str) -> Meta {
        Meta {
            session_id: session_id.into(),
            cwl: Some(CwlDestination {
                group: "g".into(),
                streaming: true,
                require_encryption: false,
            }),
            ..Meta::default()
        }
    }

    /// Records a small session with every kind of event; returns its paths.
    async fn record_session(root: &Path, session_id: &str) -> Paths {
        let (tap, recording) = Recording::start(
            root,
            start(session_id),
            &streaming_meta(session_id),
            Options::default(),
        )
        .unwrap();
        tap.output(b"$ ").await;
        let t = tap.clone();
        tokio::task::spawn_blocking(move || {
            t.input_blocking(b"ec", Some(false));
            t.input_blocking(b"ho hi\r", Some(false));
            t.input_blocking(b"secret\r", Some(true));
        })
        .await
        .unwrap();
        tap.output(b"echo hi\r\nhi\r\n").await;
        tap.resize(60, 20).await;
        for i in 0..100 {
            tap.output(format!("line {i}\r\n").as_bytes()).await;
        }
        tap.output(b"$ ").await;
        tap.end(Some(0), "exited").await;
        drop(tap);
        let (paths, summary) = recording.finish().await;
        assert!(summary.error.is_none());
        paths
    }

    fn derived(paths: &Paths) -> [Vec<u8>; 3] {
        [&paths.transcript, &paths.cast, &paths.stream].map(|p| std::fs::read(p).unwrap())
    }

    #[tokio::test]
    async fn a_rebuild_derives_the_same_files_from_the_spool() {
        let root = tempfile::tempdir().unwrap();
        let paths = record_session(root.path(), "s-r").await;
        let original = derived(&paths);
        let spool = std::fs::read(&paths.events).unwrap();
        for p in [&paths.transcript, &paths.cast, &paths.stream] {
            std::fs::write(p, b"garbage left by a crash").unwrap();
        }
        let rebuilt = rebuild(&paths, true).unwrap();
        assert!(!rebuilt.interrupted);
        assert_eq!(rebuilt.torn_bytes, 0);
        assert_eq!(derived(&paths), original);
        // The spool is left as it was.
        assert_eq!(std::fs::read(&paths.events).unwrap(), spool);
    }

    #[tokio::test]
    async fn a_spool_cut_by_a_crash_is_rebuilt_and_marked_interrupted() {
        let root = tempfile::tempdir().unwrap();
        let paths = record_session(root.path(), "s-k").await;
        let original = derived(&paths);
        // Drop the end record (the crash came before it) and leave half a record behind.
        let f = std::fs::File::open(&paths.events).unwrap();
        let mut reader = crate::replay::SpoolReader::new(BufReader::new(f)).unwrap();
        let mut ends = Vec::new();
        while let Some(Ok(_)) = reader.next() {
            ends.push(reader.offset());
        }
        let before_end = ends[ends.len() - 2];
        let mut spool = std::fs::read(&paths.events).unwrap();
        spool.truncate(usize::try_from(before_end).unwrap());
        spool.extend_from_slice(&[7, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&paths.events, &spool).unwrap();

        let rebuilt = rebuild(&paths, true).unwrap();
        assert!(rebuilt.interrupted);
        assert_eq!(rebuilt.torn_bytes, 7);
        // The interrupted end commits the same lines the real end did, and says so.
        let [transcript, _, stream] = derived(&paths);
        let note = format!("[session {INTERRUPTED}]\n");
        assert_eq!(transcript, [&original[0][..], note.as_bytes()].concat());
        let (new, old) = (
            String::from_utf8(stream).unwrap(),
            String::from_utf8(original[2].clone()).unwrap(),
        );
        // Same records up to the last output, which now says so, and the end record
        // that names how the session ended.
        let (new_lines, old_lines): (Vec<&str>, Vec<&str>) =
            (new.lines().collect(), old.lines().collect());
        assert_eq!(new_lines.len(), old_lines.len());
        let n = new_lines.len();
        assert_eq!(new_lines[..n - 2], old_lines[..n - 2]);
        assert!(
            new_lines[n - 2].contains("[session interrupted"),
            "{}",
            new_lines[n - 2]
        );
        assert!(
            new_lines[n - 1].contains("[session ended: interrupted"),
            "{}",
            new_lines[n - 1]
        );
        assert!(old_lines[n - 1].contains("[session ended: exited, status 0]"));
        // The spool now ends with the interruption, chain intact.
        let f = std::fs::File::open(&paths.events).unwrap();
        assert!(matches!(
            crate::replay::verify_spool(f).unwrap(),
            crate::replay::Verdict::Intact {
                torn_tail: false,
                ..
            }
        ));
        let f = std::fs::File::open(&paths.events).unwrap();
        let last = crate::replay::SpoolReader::new(f)
            .unwrap()
            .last()
            .unwrap()
            .unwrap();
        let text = String::from_utf8(last.payload).unwrap();
        assert!(text.contains(INTERRUPTED), "{text}");
        // A second rebuild (a crash during recovery) finds it ended and changes nothing.
        let spool = std::fs::read(&paths.events).unwrap();
        let again = rebuild(&paths, true).unwrap();
        assert!(!again.interrupted);
        assert_eq!(std::fs::read(&paths.events).unwrap(), spool);
    }

    #[tokio::test]
    async fn a_corrupt_or_altered_spool_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let paths = record_session(root.path(), "s-c").await;
        let good = std::fs::read(&paths.events).unwrap();
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x20;
        std::fs::write(&paths.events, &bad).unwrap();
        let err = rebuild(&paths, true).unwrap_err();
        assert!(
            matches!(&err, RebuildError::Corrupt(t) if t.starts_with("record ")),
            "{err}"
        );
        std::fs::write(&paths.events, b"not a spool").unwrap();
        assert!(rebuild(&paths, true).is_err());
        std::fs::write(&paths.events, crate::recorder::spool::MAGIC).unwrap();
        assert_eq!(
            rebuild(&paths, true).unwrap_err(),
            RebuildError::Corrupt("the spool holds no events".into())
        );
    }

    #[tokio::test]
    async fn recording_writes_private_files_and_streams_records() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let (tap, recording) = Recording::start(
            root.path(),
            start("s-1"),
            &streaming_meta("s-1"),
            Options::default(),
        )
        .unwrap();
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
