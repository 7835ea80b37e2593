//! A session's recording: the spool is the log, everything else a reader of it.
//!
//! ```text
//!  pump (output, resize) ─┐
//!  keyboard (input +      ├─▶ Tap ─bounded─▶ writer task ─▶ events.spool  (the log: CRC,
//!    echo state sampled)  │               (scrub.rs, then      hash chain, group commit)
//!  command audit (exec,  ─┘                spool::writer;         │ read back from disk
//!    exit, secrets)                        batches on blocking pool)
//!          deriver task (derive.rs; steps on background.rs, nice 19) ◀─┘
//!                                 ├─▶ <id>.log      clean transcript
//!                                 ├─▶ <id>.cast     asciicast v2
//!                                 └─▶ stream.jsonl ─▶ streamer task ─▶ CloudWatch
//!  at close (deliver.rs, with crate::delivery::upload): <id>.log + <id>.cast + spool ─▶ S3;
//!                                    <id>.log ─▶ CloudWatch (not streaming)
//! ```
//!
//! Every session is recorded locally under `<state>/recordings/<id>/` (directories 0700,
//! files 0600: session users cannot read them), whatever the document says; remote
//! delivery follows the document, whose destinations are kept beside the recording
//! (`session.json`, [`Meta`]).
//!
//! A recording owns no thread: the writer and the deriver are tasks that wait on the
//! runtime between batches, so an idle session costs a few hundred bytes of task state.
//!
//! ## Nothing but the spool on the output path
//!
//! What the shell prints goes from the PTY to the [`Tap`], and from there to the writer,
//! which appends it to the spool and does nothing else (`spool::writer`). The [`Tap`] channel
//! is bounded, so a writer that falls behind (a slow disk) slows the shell rather than
//! dropping or buffering without bound. Rendering — the terminal emulator behind the
//! transcript, the asciicast, the stream records — is the deriver's (`derive.rs`): it reads
//! the spool back from disk, at a lower CPU priority, and lags during a flood by what the
//! spool holds on disk, never by memory. Recovery after a crash ([`rebuild`]) runs the same
//! deriver over the same file.
//!
//! ## Secrets masked before the spool
//!
//! Between the tap and the spool the writer task runs every event through the session's
//! scrubber (`scrub.rs`, pure; its module docs say what is masked and the limits): a
//! typed line and its echo are held until Enter (bounded in bytes and time) and the
//! secrets the redaction rules find in the line (`audit::redact`, with the
//! administrator's `redact_flags` / `redact_patterns`) are replaced by the mask; secrets
//! learned that way, or from the command audit's argv ([`Tap::secrets_blocking`]), are
//! masked in everything recorded after. The spool, and so every file, stream and upload
//! derived from it, never holds them; the client's own view is not touched. With no
//! learned secret, output outside a typed line goes to the spool as it came, unscanned.
//! Events keep their order and their times.
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
//! Each event becomes a length-prefixed, CRC-checked, hash-chained record
//! ([`crate::spool::format`]), written to the kernel as it comes and `fdatasync`ed at
//! most every [`SYNC_EVERY`](crate::spool::writer::SYNC_EVERY) and at the end of the session. So a killed agent (`kill -9`,
//! a panic, the OOM killer) loses only what had not reached the writer yet — the events
//! queued in the tap (at most `TAP_QUEUE` chunks) and a typed line the scrubber holds
//! (at most its byte and time bounds) — while a power loss can also cost the
//! events written in the last [`SYNC_EVERY`](crate::spool::writer::SYNC_EVERY). A record cut short by a crash is detected by
//! its length and CRC and ends the readable spool there; [`rebuild`] cuts it off and, when
//! the session never ended, appends an `end` event saying it was interrupted.

mod background;
mod deliver;
mod derive;
mod scrub;

pub use scrub::Stats as ScrubStats;

pub use deliver::{Delivery, DeliveryStatus};
pub use derive::rebuild;

use crate::audit::redact::Redactor;

use crate::delivery::cwl::SessionFields;
use crate::delivery::{CwlDestination, S3Destination};
use crate::recorder::summary::{DeliverySummary, DestinationDelivery, SessionSummary};
use crate::recorder::{EventKind, StartInfo};
use crate::spool::layout::{write_atomic, LiveMark, Paths, META_FILE, SUMMARY_FILE};
use crate::spool::writer::{self, Alarm, Progress, SpoolWriter};
use derive::{DeriveSettings, DerivedFiles, Deriver, Follower};
use scrub::{Item, Scrubber};
#[cfg(unix)]
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

/// Under `fail-closed`, how long input waits for the writer to write it before it is
/// dropped (the writer is stuck: the recording has failed).
const INPUT_ACK_WAIT: Duration = Duration::from_secs(10);
/// Messages queued between the pump and the writer task.
const TAP_QUEUE: usize = 16;
/// Events the writer (or the deriver) handles before it publishes (or writes out) what it
/// has.
const BATCH: usize = 64;
/// Default [`Options::headroom`].
pub const DEFAULT_HEADROOM: u64 = 4 * 1024 * 1024;

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    crate::timefmt::unix_ms(SystemTime::now())
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
    /// Plain typed input goes to the CloudWatch stream (`stream_input`; a recording
    /// written before the setting existed streamed it).
    #[serde(default = "streamed_before")]
    pub stream_input: bool,
    /// Set when the recording ended: records in the spool...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_records: Option<u64>,
    /// ...and the hash chain's value after the last one (hex), to compare copies with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_head: Option<String>,
}

fn streamed_before() -> bool {
    true
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

enum Rec {
    Output(u64, Vec<u8>),
    Input(u64, Vec<u8>),
    /// Echo-off input: its byte count and line ends only.
    Redacted(u64, usize, usize),
    Resize(u64, u16, u16),
    Tunnel(u64, crate::recorder::event::Tunnel),
    Process(u64, crate::recorder::event::Process),
    /// Programs of the session the command audit lost (the kernel's queue overflowed):
    /// when (from, to), how many events at most, why.
    AuditGap(u64, u64, u64, String),
    End(u64, Option<i32>, String),
    /// Secrets to mask from now on (the command audit's), for the scrubber.
    Secrets(Vec<String>),
    /// Input under `fail-closed`: the writer learns whether it was recorded before it
    /// types it.
    Acked(Box<Rec>, oneshot::Sender<bool>),
    /// The writer's answer to an `Acked`, in its place among what the scrubber let
    /// through: true when everything written since the previous answer was.
    Ack(oneshot::Sender<bool>),
    /// Every tap was dropped without an end (the writer's own marker).
    Closed,
}

impl Rec {
    /// Bytes of session data it carries (what a gap counts when it is lost).
    fn data_len(&self) -> usize {
        match self {
            Rec::Output(_, d) | Rec::Input(_, d) => d.len(),
            Rec::Redacted(_, n, _) => *n,
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
    /// A tap that records nowhere, and a count of what reached it so far (unit tests
    /// of what feeds a recording).
    #[cfg(test)]
    pub(crate) fn counting() -> (Self, impl FnMut() -> usize) {
        let (tx, mut rx) = mpsc::channel(1024);
        let tap = Self {
            tx,
            started: Instant::now(),
            closed: Arc::new(AtomicBool::new(false)),
            strict: false,
        };
        let mut seen = 0;
        let count = move || {
            while rx.try_recv().is_ok() {
                seen += 1;
            }
            seen
        };
        (tap, count)
    }

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

    /// Records a connection through a port session (the tunnel audit).
    pub async fn tunnel(&self, tunnel: crate::recorder::event::Tunnel) {
        let _ = self.tx.send(Rec::Tunnel(self.at(), tunnel)).await;
    }

    /// Records a process of the session (the command audit), from a thread that is not
    /// the runtime's (the audit's reader).
    pub fn process_blocking(&self, process: crate::recorder::event::Process) {
        let _ = self.tx.blocking_send(Rec::Process(self.at(), process));
    }

    /// Records that the command audit lost up to `events` kernel events (of the whole
    /// host; some may have been this session's) since session millisecond `from_ms`,
    /// from the audit's reader thread. `verify` and the summary then call the recording
    /// incomplete.
    pub fn audit_gap_blocking(&self, from_ms: u64, events: u64, reason: &str) {
        let at = self.at();
        let _ = self.tx.blocking_send(Rec::AuditGap(
            at,
            from_ms.min(at),
            events,
            reason.to_owned(),
        ));
    }

    /// Secrets found elsewhere (the command audit: the literals
    /// [`Redactor::redact_with_secrets`] masked in an argv), masked in everything the
    /// session records from now on (and in what the scrubber still holds), from a thread
    /// that is not the runtime's. Secrets under 4 bytes are ignored (see `scrub.rs`).
    pub fn secrets_blocking(&self, secrets: Vec<String>) {
        if !secrets.is_empty() {
            let _ = self.tx.blocking_send(Rec::Secrets(secrets));
        }
    }

    /// [`secrets_blocking`](Self::secrets_blocking), from the runtime.
    pub async fn secrets(&self, secrets: Vec<String>) {
        if !secrets.is_empty() {
            let _ = self.tx.send(Rec::Secrets(secrets)).await;
        }
    }

    /// Session milliseconds now (the clock of the recording's events).
    pub fn now_ms(&self) -> u64 {
        self.at()
    }

    /// Records typed input before it is written to the terminal. `echo_off` is the
    /// terminal's state as the bytes are written; unknown counts as off (never record
    /// what might be a password). Returns false when the bytes must not be written: the
    /// recording failed and the policy is `fail-closed`. Under `fail-closed` a key the
    /// scrubber holds (a line being typed, until its echo) is answered once it is held:
    /// the line is written at most the scrubber's bounds later (see `scrub.rs`).
    pub async fn input(&self, bytes: &[u8], echo_off: Option<bool>) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let msg = if echo_off.unwrap_or(true) {
            // The bytes go no further than this function.
            Rec::Redacted(
                self.at(),
                bytes.len(),
                crate::recorder::event::line_ends(bytes),
            )
        } else {
            Rec::Input(self.at(), bytes.to_vec())
        };
        if !self.strict {
            let _ = self.tx.send(msg).await;
            return true;
        }
        // fail-closed: typed only once it is on disk (a recorder that is gone, or that
        // does not answer, counts as a failed recording).
        let (ack, recorded) = oneshot::channel();
        if self.tx.send(Rec::Acked(Box::new(msg), ack)).await.is_err() {
            self.closed.store(true, Ordering::SeqCst);
            return false;
        }
        let ok = matches!(
            tokio::time::timeout(INPUT_ACK_WAIT, recorded).await,
            Ok(Ok(true))
        );
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

/// What the recording reports when the recording is complete.
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
    /// The session's summary (`summary.json`), built from the same events; `None` when
    /// the deriver stopped before the end.
    pub session: Option<SessionSummary>,
    /// What the scrubber masked and learned (zero for a recording rebuilt after a crash:
    /// the spool holds the masked text, not the count).
    pub scrub: ScrubStats,
}

impl Summary {
    /// The summary of a recording whose deriver stopped before it finished (a panic).
    pub(crate) fn deriver_stopped() -> Self {
        Self {
            error: Some("the recording's deriver stopped unexpectedly".into()),
            ..Self::default()
        }
    }

    /// Why the recording is not the whole session, if it is not.
    pub fn incomplete(&self) -> Option<String> {
        let mut why: Vec<String> = self.gaps.clone();
        why.extend(self.error.clone());
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// How a recording is made: the reservation ahead of it, what to do when it fails, and
/// the rules that find secrets in what is typed and mask the command lines typed at
/// prompts.
#[derive(Debug, Clone)]
pub struct Options {
    /// Disk space reserved ahead of the spool and the asciicast (a quarter of it for the
    /// transcript and the stream queue), renewed as they grow, released at the end.
    pub headroom: u64,
    /// `recording_policy = "fail-closed"`: a recording that cannot be written ends the
    /// session (and the space must be reserved before it starts).
    pub fail_closed: bool,
    /// The redaction rules (built-in and the administrator's) the scrubber applies to
    /// typed lines.
    pub redactor: Arc<Redactor>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            headroom: DEFAULT_HEADROOM,
            fail_closed: false,
            redactor: Arc::default(),
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
        let mut writer = SpoolWriter::open(&paths.events, options.headroom)?;
        let mut files = DerivedFiles::open(&paths, streaming, false, options.headroom)?;
        let reserved = writer
            .reserve(options.headroom)
            .and_then(|()| files.reserve());
        if let Err(e) = reserved {
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
        let tail = crate::spool::reader::Reader::open(&paths.events)
            .map_err(|e| std::io::Error::other(format!("cannot read the spool back: {e}")))?;
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let (done_tx, done) = oneshot::channel();
        let (progress_tx, progress_rx) = watch::channel(0u64);
        let (failed_tx, failed_rx) = oneshot::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let alarm = options
            .fail_closed
            .then(|| Arc::new(Alarm::new(failed_tx, closed.clone())));
        let started_unix_ms = start.started_unix_ms;
        let settings = DeriveSettings::new(meta, Redactor::clone(&options.redactor));
        let deriver =
            Deriver::new(start.clone(), files, progress_tx, settings).with_alarm(alarm.clone());
        let writer = writer
            .with_alarm(alarm)
            .with_stall_flag(deriver.stall_flag());
        let progress = Arc::new(Progress::default());
        // Shown live (`session-agent sessions`) until its summary is written.
        let live = LiveMark::take(&paths.events)
            .map_err(|e| tracing::warn!(session = %start.session_id, error = %e, "Cannot mark the recording live; `session-agent sessions` will not show it as live"))
            .ok();
        let started = Instant::now();
        let scrubber = Scrubber::new(options.redactor.clone(), start.cols);
        let scrub_stats = Arc::new(Mutex::new(ScrubStats::default()));
        tokio::spawn(write_loop(
            writer,
            start,
            rx,
            progress.clone(),
            Scrubbing {
                scrubber,
                started,
                stats: scrub_stats.clone(),
            },
        ));
        let summary_paths = paths.clone();
        tokio::spawn(async move {
            let mut summary = derive::follow(Follower::new(deriver, tail), progress).await;
            // The writer set its scrubber's counts before it finished (the deriver's end).
            summary.scrub = scrub_stats.lock().map(|s| *s).unwrap_or_default();
            let summary = tokio::task::spawn_blocking(move || {
                // Shown live until the summary is written (the end of this closure).
                let _live = live;
                let mut summary = summary;
                note_end(&summary_paths, &mut summary);
                summary
            })
            .await
            .unwrap_or_else(|_| Summary::deriver_stopped());
            let _ = done_tx.send(summary);
        });
        Ok((
            Tap {
                tx,
                started,
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

    /// Its summary, once the deriver has caught up (after [`Tap::end`] or once every tap
    /// is dropped): the session need not wait for it, delivery does.
    pub fn finish(self) -> (Paths, PendingSummary) {
        let pending = PendingSummary {
            paths: self.paths.clone(),
            inner: Pending::Deriving(self.done),
        };
        (self.paths, pending)
    }
}

/// A recording's [`Summary`], ready or still being derived.
#[derive(Debug)]
pub struct PendingSummary {
    paths: Paths,
    inner: Pending,
}

#[derive(Debug)]
enum Pending {
    Ready(Box<Summary>),
    Deriving(oneshot::Receiver<Summary>),
}

impl PendingSummary {
    /// The recording's files.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// A summary already known (a rebuilt recording).
    pub fn ready(paths: Paths, summary: Summary) -> Self {
        Self {
            paths,
            inner: Pending::Ready(Box::new(summary)),
        }
    }

    /// Waits for the deriver to finish (it noted where the spool ended in
    /// `session.json` and wrote `summary.json`).
    pub async fn wait(self) -> Summary {
        match self.inner {
            Pending::Ready(summary) => *summary,
            Pending::Deriving(done) => done.await.unwrap_or_else(|_| Summary::deriver_stopped()),
        }
    }
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

/// The writer's scrubber and what it needs: the session's clock, where its counts go.
struct Scrubbing {
    scrubber: Scrubber<Rec>,
    /// The tap's clock (session ms are measured from it).
    started: Instant,
    stats: Arc<Mutex<ScrubStats>>,
}

impl Scrubbing {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Hands one message to the scrubber; what it lets through goes to `batch`, in order.
    /// Whether the recording ended.
    fn feed(&mut self, msg: Rec, batch: &mut Vec<Rec>) -> bool {
        let now = self.now();
        let mut out = Vec::new();
        let ended = match msg {
            Rec::Acked(inner, ack) => {
                let ended = self.feed(*inner, batch);
                batch.push(Rec::Ack(ack));
                return ended;
            }
            Rec::Secrets(secrets) => {
                self.scrubber.learn(&secrets);
                false
            }
            Rec::Output(at, data) => {
                self.scrubber.push(Item::Output { at, data }, now, &mut out);
                false
            }
            Rec::Input(at, data) => {
                self.scrubber.push(Item::Input { at, data }, now, &mut out);
                false
            }
            Rec::Redacted(at, bytes, lines) => {
                let item = Rec::Redacted(at, bytes, lines);
                self.scrubber
                    .push(Item::Hidden { lines, item }, now, &mut out);
                false
            }
            Rec::End(..) | Rec::Closed => {
                self.scrubber.finish(&mut out);
                out.push(Item::Other(msg));
                true
            }
            msg => {
                if let Rec::Resize(_, cols, _) = &msg {
                    self.scrubber.resize(*cols);
                }
                self.scrubber.push(Item::Other(msg), now, &mut out);
                false
            }
        };
        self.take(out, batch);
        ended
    }

    /// What is overdue, out.
    fn tick(&mut self, batch: &mut Vec<Rec>) {
        let mut out = Vec::new();
        self.scrubber.tick(self.now(), &mut out);
        self.take(out, batch);
    }

    fn take(&mut self, out: Vec<Item<Rec>>, batch: &mut Vec<Rec>) {
        for item in out {
            batch.push(match item {
                Item::Input { at, data } => Rec::Input(at, data),
                Item::Output { at, data } => Rec::Output(at, data),
                Item::Hidden { item, .. } => item,
                Item::Other(Rec::Process(at, p)) => Rec::Process(at, self.mask_process(p)),
                Item::Other(rec) => rec,
            });
        }
    }

    /// A process record with the learned secrets masked in its arguments, working
    /// directory and executable (counted in its `redactions`).
    fn mask_process(
        &mut self,
        mut p: crate::recorder::event::Process,
    ) -> crate::recorder::event::Process {
        for arg in &mut p.argv {
            if let Some((masked, n)) = self.scrubber.mask_text(arg) {
                *arg = masked;
                p.redactions += n;
            }
        }
        for field in [&mut p.cwd, &mut p.executable].into_iter().flatten() {
            if let Some((masked, _)) = self.scrubber.mask_text(field) {
                *field = masked;
            }
        }
        p
    }
}

/// The writer: takes what the tap sends through the scrubber and appends what it lets
/// through, in batches, publishing after each how far the spool is written; at the end
/// (or when every tap is dropped without one) the end record, a last sync, and what it
/// wrote. A task that owns no thread: each batch's writes (and the group commit's
/// `fdatasync`) run on the runtime's blocking pool, one batch at a time. When the
/// scrubber holds something, the task also wakes at its deadline.
async fn write_loop(
    mut writer: SpoolWriter,
    start: StartInfo,
    mut rx: mpsc::Receiver<Rec>,
    progress: Arc<Progress>,
    mut scrub: Scrubbing,
) {
    let _finished = writer::FinishGuard(progress.clone());
    let mut first = Some(start);
    let mut ended = false;
    while !ended {
        let mut batch = Vec::new();
        let next = match scrub.scrubber.deadline() {
            Some(due) => {
                let wake = scrub.started + Duration::from_millis(due);
                tokio::select! {
                    msg = rx.recv() => Some(msg),
                    () = tokio::time::sleep_until(wake.into()) => None,
                }
            }
            None => Some(rx.recv().await),
        };
        let mut taken = 0;
        match next {
            // Every tap dropped without an end: the session task failed.
            Some(msg) => {
                taken += 1;
                ended = scrub.feed(msg.unwrap_or(Rec::Closed), &mut batch);
            }
            None => scrub.tick(&mut batch),
        }
        while taken < BATCH && !ended {
            match rx.try_recv() {
                Ok(msg) => {
                    taken += 1;
                    ended = scrub.feed(msg, &mut batch);
                }
                Err(_) => break,
            }
        }
        if ended {
            if let Ok(mut stats) = scrub.stats.lock() {
                *stats = scrub.scrubber.stats();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let start = first.take();
        let mut w = writer;
        let written = tokio::task::spawn_blocking(move || {
            if let Some(start) = start {
                w.start(start);
            }
            // Whether everything since the last answer to an `Acked` was written.
            let mut ok = true;
            for msg in batch {
                let msg = match msg {
                    Rec::Ack(ack) => {
                        let _ = ack.send(ok);
                        ok = true;
                        continue;
                    }
                    Rec::Closed => {
                        let at = unix_ms().saturating_sub(w.started_unix_ms());
                        Rec::End(at, None, "recording closed without an end".into())
                    }
                    msg => msg,
                };
                ok &= apply(&mut w, msg);
            }
            w.end_batch(ended);
            if ended {
                w.release();
            }
            w
        })
        .await;
        // A batch that panicked leaves the writer gone; the guard reports it.
        let Ok(w) = written else { return };
        progress.publish(w.offset());
        if ended {
            progress.finish(w.written());
        }
        writer = w;
    }
}

/// Writes one message; whether it made it to the spool.
fn apply(writer: &mut SpoolWriter, msg: Rec) -> bool {
    let data = msg.data_len() as u64;
    let (at, kind) = match msg {
        Rec::Acked(inner, ack) => {
            let recorded = apply(writer, *inner);
            let _ = ack.send(recorded);
            return recorded;
        }
        Rec::Output(at, data) => (at, EventKind::Output { data }),
        Rec::Input(at, data) => (at, EventKind::Input { data }),
        Rec::Redacted(at, bytes, lines) => (at, EventKind::InputRedacted { bytes, lines }),
        Rec::Resize(at, cols, rows) => (at, EventKind::Resize { cols, rows }),
        Rec::Tunnel(at, t) => (at, EventKind::Tunnel(t)),
        Rec::Process(at, p) => (at, EventKind::Process(p)),
        Rec::AuditGap(at, from_ms, events, reason) => (
            at,
            EventKind::Gap {
                from_ms,
                to_ms: Some(at),
                bytes: 0,
                events,
                reason,
            },
        ),
        Rec::End(at, exit_code, how) => (at, EventKind::End { exit_code, how }),
        // Turned into an end, learned, answered before they get here.
        Rec::Closed | Rec::Secrets(_) | Rec::Ack(_) => return false,
    };
    writer.write(at, kind, data).is_some()
}

/// Once every event is derived (a live session's end, or a rebuild): records the
/// spool's record count and chain head in `session.json` (beside the copy in the last
/// streamed CloudWatch message and `delivery.json`), so a copy of the spool cut short can
/// be told from the whole; and writes `summary.json`, its delivery pending for each
/// destination `session.json` names. Blocking. A failure is logged, not fatal.
fn note_end(paths: &Paths, summary: &mut Summary) {
    let meta = Meta::read(&paths.dir);
    if !summary.spool_head.is_empty() {
        let written = meta.clone().and_then(|mut meta| {
            meta.spool_records = Some(summary.spool_records);
            meta.spool_head = Some(summary.spool_head.clone());
            meta.write(paths).map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            tracing::warn!(dir = %paths.dir.display(), error = %e, "Cannot note the spool's end in session.json");
        }
    }
    if let Some(session) = &mut summary.session {
        session.delivery = meta.map(|m| pending_delivery(&m)).unwrap_or_default();
        write_summary(paths, session);
    }
}

/// Every destination `meta` names, pending.
fn pending_delivery(meta: &Meta) -> DeliverySummary {
    DeliverySummary {
        s3: meta.s3.as_ref().map(|d| DestinationDelivery {
            location: format!(
                "s3://{}/{}",
                d.bucket,
                crate::delivery::s3_key(&d.prefix, &meta.session_id, "*")
            ),
            ..DestinationDelivery::default()
        }),
        cloud_watch_logs: meta.cwl.as_ref().map(|d| DestinationDelivery {
            location: format!("{} (log stream {})", d.group, meta.session_id),
            ..DestinationDelivery::default()
        }),
        skipped: meta.skipped.clone(),
    }
}

/// Writes a recording's `summary.json` (owner-only, atomically). A failure is logged,
/// not fatal: the recording itself is whole without it.
pub(crate) fn write_summary(paths: &Paths, summary: &SessionSummary) {
    let path = paths.dir.join(SUMMARY_FILE);
    let written = serde_json::to_vec_pretty(summary)
        .map_err(std::io::Error::other)
        .and_then(|json| write_atomic(&path, &json));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "Cannot write the recording's summary");
    }
}

// CORE

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::cwl::{Direction, StreamRecord};
    use std::io::BufReader;

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
            stream_input: true,
            ..Meta::default()
        }
    }

    /// A rebuild with the recording's own settings (its `session.json`).
    fn rebuild_as_recorded(paths: &Paths) -> Result<Rebuilt, RebuildError> {
        let meta = Meta::read(&paths.dir).unwrap();
        rebuild(paths, &meta, Redactor::default())
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
        tap.input(b"ec", Some(false)).await;
        tap.input(b"ho hi\r", Some(false)).await;
        tap.input(b"secret\r", Some(true)).await;
        tap.output(b"echo hi\r\nhi\r\n").await;
        tap.resize(60, 20).await;
        for i in 0..100 {
            tap.output(format!("line {i}\r\n").as_bytes()).await;
        }
        tap.output(b"$ ").await;
        tap.end(Some(0), "exited").await;
        drop(tap);
        let (paths, pending) = recording.finish();
        let summary = pending.wait().await;
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
        let rebuilt = rebuild_as_recorded(&paths).unwrap();
        assert!(!rebuilt.interrupted);
        assert_eq!(rebuilt.torn_bytes, 0);
        assert_eq!(derived(&paths), original);
        // The spool is left as it was.
        assert_eq!(std::fs::read(&paths.events).unwrap(), spool);
    }

    fn summary_json(paths: &Paths) -> SessionSummary {
        serde_json::from_slice(&std::fs::read(paths.dir.join(SUMMARY_FILE)).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_summary_is_written_at_the_end_and_a_rebuild_writes_the_same() {
        use crate::spool::layout::is_live;
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let id = "s-sum";
        let (tap, recording) = Recording::start(
            root.path(),
            start(id),
            &streaming_meta(id),
            Options::default(),
        )
        .unwrap();
        let spool = recording.paths.events.clone();
        // Live until its summary is written.
        assert_eq!(is_live(&spool), Some(true));
        tap.output(b"$ ").await;
        tap.input(b"ls\r", Some(false)).await;
        tap.input(b"hunter2\r", Some(true)).await;
        let exec = crate::recorder::event::Process {
            user: None,
            phase: crate::recorder::event::ProcessPhase::Exec,
            pid: 7,
            ppid: Some(1),
            uid: Some(0),
            euid: Some(0),
            cwd: Some("/".into()),
            executable: Some("/usr/bin/mysql".into()),
            argv: vec!["mysql".into(), "-p[redacted]".into()],
            redactions: 1,
            details_unavailable: None,
            argv_truncated: false,
            login_uid: None,
            audit_session: None,
            exit_code: None,
            signal: None,
            duration_ms: None,
        };
        let tap2 = tap.clone();
        let exit = crate::recorder::event::Process {
            phase: crate::recorder::event::ProcessPhase::Exit,
            argv: Vec::new(),
            exit_code: Some(7),
            ..exec.clone()
        };
        tokio::task::spawn_blocking(move || {
            tap2.process_blocking(exec);
            tap2.process_blocking(exit);
        })
        .await
        .unwrap();
        tap.output(b"file\r\n$ ").await;
        tap.end(Some(0), "exited").await;
        drop(tap);
        let (paths, pending) = recording.finish();
        let summary = pending.wait().await;
        assert_eq!(is_live(&spool), Some(false));
        let live = summary.session.clone().unwrap();
        let written = summary_json(&paths);
        assert_eq!(written.spool.records, summary.spool_records);
        assert_eq!(written.spool.chain_head, summary.spool_head);
        assert_eq!(written.session_id, id);
        assert_eq!(written.bytes.output, 10);
        assert_eq!(written.bytes.input, 3);
        assert_eq!(written.bytes.input_withheld, 8);
        assert_eq!(written.redactions.echo_off_lines, 1);
        assert_eq!(written.redactions.arguments_masked, 1);
        assert_eq!(
            (
                written.processes.executed,
                written.processes.exited,
                written.processes.exited_non_zero
            ),
            (1, 1, 1)
        );
        assert_eq!(
            (written.exit_code, written.ended_how.as_deref()),
            (Some(0), Some("exited"))
        );
        assert!(written.complete, "{:?}", written.incomplete_reasons);
        // Delivery pending for the destination session.json names.
        let cwl = written.delivery.cloud_watch_logs.clone().unwrap();
        assert_eq!(cwl.state, crate::recorder::summary::DeliveryState::Pending);
        assert!(written.delivery.s3.is_none());
        assert_eq!(
            written,
            SessionSummary {
                delivery: written.delivery.clone(),
                ..live
            }
        );
        assert_eq!(
            std::fs::metadata(paths.dir.join(SUMMARY_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // The rebuild derives the same summary from the same spool.
        std::fs::remove_file(paths.dir.join(SUMMARY_FILE)).unwrap();
        let rebuilt = rebuild_as_recorded(&paths).unwrap();
        assert_eq!(summary_json(&paths), written);
        assert_eq!(
            rebuilt.summary.session.unwrap(),
            SessionSummary {
                delivery: written.delivery.clone(),
                ..written.clone()
            }
        );
    }

    #[tokio::test]
    async fn a_spool_cut_by_a_crash_is_rebuilt_and_marked_interrupted() {
        let root = tempfile::tempdir().unwrap();
        let paths = record_session(root.path(), "s-k").await;
        let original = derived(&paths);
        // Drop the end record (the crash came before it) and leave half a record behind.
        let f = std::fs::File::open(&paths.events).unwrap();
        let mut reader = crate::spool::reader::Reader::new(BufReader::new(f)).unwrap();
        let mut ends = Vec::new();
        while let Some(Ok(_)) = reader.next() {
            ends.push(reader.offset());
        }
        let before_end = ends[ends.len() - 2];
        let mut spool = std::fs::read(&paths.events).unwrap();
        spool.truncate(usize::try_from(before_end).unwrap());
        spool.extend_from_slice(&[7, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&paths.events, &spool).unwrap();

        let rebuilt = rebuild_as_recorded(&paths).unwrap();
        assert!(rebuilt.interrupted);
        assert_eq!(rebuilt.torn_bytes, 7);
        let summary = summary_json(&paths);
        assert!(summary.interrupted && !summary.complete, "{summary:?}");
        assert_eq!(summary.ended_how.as_deref(), Some(INTERRUPTED));
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
            crate::spool::verify::verify_spool(f).unwrap(),
            crate::spool::verify::Verdict::Intact {
                torn_tail: false,
                ..
            }
        ));
        let f = std::fs::File::open(&paths.events).unwrap();
        let last = crate::spool::reader::Reader::new(f)
            .unwrap()
            .last()
            .unwrap()
            .unwrap();
        let text = String::from_utf8(last.payload).unwrap();
        assert!(text.contains(INTERRUPTED), "{text}");
        // A second rebuild (a crash during recovery) finds it ended and changes nothing.
        let spool = std::fs::read(&paths.events).unwrap();
        let again = rebuild_as_recorded(&paths).unwrap();
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
        let err = rebuild_as_recorded(&paths).unwrap_err();
        assert!(
            matches!(&err, RebuildError::Corrupt(t) if t.starts_with("record ")),
            "{err}"
        );
        std::fs::write(&paths.events, b"not a spool").unwrap();
        assert!(rebuild_as_recorded(&paths).is_err());
        std::fs::write(&paths.events, crate::spool::format::MAGIC).unwrap();
        assert_eq!(
            rebuild_as_recorded(&paths).unwrap_err(),
            RebuildError::Corrupt("the spool holds no events".into())
        );
    }

    /// Records one short shell session under `meta`; the stream records and summary.
    async fn stream_of(meta: &Meta) -> (Vec<StreamRecord>, Summary) {
        let root = tempfile::tempdir().unwrap();
        let mut info = start(&meta.session_id);
        info.term = Some("xterm".into());
        let (tap, recording) =
            Recording::start(root.path(), info, meta, Options::default()).unwrap();
        tap.output(b"$ ").await;
        tap.input(b"mysql -pS3CR3T db\r", Some(false)).await;
        tap.output(b"mysql -pS3CR3T db\r\nmysql> ").await;
        tap.input(b"quit\r", Some(false)).await;
        tap.output(b"quit\r\n$ ").await;
        tap.input(b"hunter2\r", Some(true)).await;
        tap.output(b"\r\n$ ").await;
        tap.end(Some(0), "exited").await;
        drop(tap);
        let (paths, pending) = recording.finish();
        let summary = pending.wait().await;
        let stream = std::fs::read_to_string(&paths.stream).unwrap();
        // A rebuild (after a crash) derives the same queue, commands and settings
        // included, from the spool and session.json.
        let live = derived(&paths);
        rebuild_as_recorded(&paths).unwrap();
        assert_eq!(derived(&paths), live);
        let records = stream
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (records, summary)
    }

    #[tokio::test]
    async fn commands_typed_are_streamed_masked_and_plain_input_only_when_asked() {
        let mut meta = streaming_meta("s-cmd");
        meta.stream_input = false;
        let (records, summary) = stream_of(&meta).await;
        assert_eq!(summary.session.as_ref().unwrap().commands, 2);
        let commands: Vec<(&str, &str)> = records
            .iter()
            .filter(|r| r.direction == Direction::Command)
            .map(|r| {
                let c = r.command.as_ref().unwrap();
                (c.prompt.as_str(), c.command_line.as_str())
            })
            .collect();
        assert_eq!(
            commands,
            [("$", "mysql -p[redacted] db"), ("mysql>", "quit")]
        );
        assert!(records.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        // No plain input; the echo-off marker still.
        let inputs: Vec<&Vec<String>> = records
            .iter()
            .filter(|r| r.direction == Direction::Input)
            .map(|r| &r.lines)
            .collect();
        assert_eq!(inputs.len(), 1, "{inputs:?}");
        assert!(inputs[0][0].starts_with("[input redacted: 8 bytes"));
        // With stream_input on, the typed lines too.
        meta.stream_input = true;
        let (records, _) = stream_of(&meta).await;
        assert!(records
            .iter()
            .any(|r| r.direction == Direction::Input && r.lines == ["quit"]));
    }

    #[tokio::test]
    async fn upstream_mode_queues_output_records_only() {
        let mut meta = streaming_meta("s-up");
        meta.fields = Some(crate::delivery::cwl::SessionFields {
            region: "us-east-1".into(),
            target_id: "t".into(),
            owner_arn: "alice".into(),
            run_as_user: "ssm-user".into(),
            session_id: "s-up".into(),
            mode: crate::delivery::cwl::StreamMode::Upstream,
        });
        let (records, summary) = stream_of(&meta).await;
        assert_eq!(
            summary.session.as_ref().unwrap().commands,
            2,
            "still found, for the summary"
        );
        assert!(!records.is_empty());
        assert!(
            records.iter().all(|r| r.direction == Direction::Output),
            "{records:?}"
        );
        assert!(records.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
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
        tap.input(b"ls\r", Some(false)).await;
        tap.input(b"hunter2\r", Some(true)).await;
        tap.input(b"x", None).await;
        tap.output(b"ls\r\nfile\r\n$ ").await;
        tap.end(Some(0), "exited").await;
        drop(tap);
        let (paths, pending) = recording.finish();
        let summary = pending.wait().await;
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
        let records: Vec<_> = crate::spool::reader::Reader::new(f)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            String::from_utf8_lossy(&records.last().unwrap().payload).contains(r#""type":"end""#)
        );
        let f = std::fs::File::open(&paths.events).unwrap();
        assert!(matches!(
            crate::spool::verify::verify_spool(f).unwrap(),
            crate::spool::verify::Verdict::Intact {
                records: 7,
                torn_tail: false,
                ..
            }
        ));
    }
}
