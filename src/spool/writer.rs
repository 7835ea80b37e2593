//! The output path's one job: append each event to the session's spool.
//!
//! The writer numbers and times an event, encodes it as a spool record (CRC and hash
//! chain, [`crate::spool::format`]) and appends it whole into space reserved ahead
//! ([`ReservedFile`]); nothing is rendered here. What cannot be written becomes an
//! explicit gap: a record opened at once (in the space kept for it) and closed, with the
//! bytes and events lost and the time span, when space returns or at the end. Under
//! `fail-closed` the first loss raises the [`Alarm`] and the session is ended.
//!
//! After each batch the writer publishes how far the spool is written ([`Progress`]);
//! the deriver (`derive.rs`, beside this file) reads the records from disk up to there, at its own
//! pace. The spool is `fdatasync`ed at most every [`SYNC_EVERY`] (group commit)
//! and at the end.

use super::reserve::ReservedFile;
use crate::recorder::{Event, EventKind};
use crate::spool::format::{self as spool, Chain};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Space kept reserved at the end of the spool for the records that say what happened
/// (a gap, the end), whatever else the disk holds.
pub const SPOOL_GUARD: u64 = 64 * 1024;

/// The spool is `fdatasync`ed at most this often while a session runs (group commit: a
/// flood of output must not wait for the disk after every 16 KiB).
pub const SYNC_EVERY: Duration = Duration::from_millis(200);

/// How far the spool is written, shared by the writer (who publishes) and the deriver
/// (who waits on it, on the runtime).
#[derive(Debug)]
pub struct Progress {
    state: watch::Sender<Written>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            state: watch::Sender::new(Written::default()),
        }
    }
}

/// See [`Progress`].
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Bytes of the spool holding whole records.
    pub offset: u64,
    /// The writer is finished: nothing will follow `offset`.
    pub done: bool,
    /// The writer's part of the summary (set with `done`).
    pub spool_records: u64,
    /// The chain head after the last record (hex), set with `done`.
    pub spool_head: String,
    /// A gap or the end could not itself be recorded (set with `done`).
    pub error: Option<String>,
}

impl Progress {
    /// The spool holds whole records up to `offset`.
    pub fn publish(&self, offset: u64) {
        self.state.send_if_modified(|s| {
            let moved = offset > s.offset;
            if moved {
                s.offset = offset;
            }
            moved
        });
    }

    /// The writer is finished.
    pub fn finish(&self, last: Written) {
        self.state.send_replace(Written { done: true, ..last });
    }

    /// Whether the writer is finished.
    pub fn is_done(&self) -> bool {
        self.state.borrow().done
    }

    /// What is written now.
    pub fn now(&self) -> Written {
        self.state.borrow().clone()
    }

    /// Waits until the spool is written past `pos` or the writer is finished; what is
    /// written then.
    pub async fn wait_past(&self, pos: u64) -> Written {
        let mut rx = self.state.subscribe();
        let waited = rx.wait_for(|s| s.offset > pos || s.done).await;
        match waited {
            Ok(s) => s.clone(),
            Err(_) => self.now(), // cannot happen: `self` holds the sender
        }
    }
}

/// Finishes a [`Progress`] whose writer stopped without finishing it (a panic), so the
/// deriver does not wait for it forever.
#[derive(Debug)]
pub struct FinishGuard(pub Arc<Progress>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        let last = self.0.now();
        if !last.done {
            self.0.finish(Written {
                error: last
                    .error
                    .or_else(|| Some("the recording's writer stopped unexpectedly".into())),
                ..last
            });
        }
    }
}

/// Under `fail-closed`: raised once, by the writer or the deriver, when the recording can
/// no longer be written; the session is then ended and no more input is typed.
#[derive(Debug)]
pub struct Alarm {
    tx: Mutex<Option<oneshot::Sender<String>>>,
    closed: Arc<AtomicBool>,
}

impl Alarm {
    pub fn new(tx: oneshot::Sender<String>, closed: Arc<AtomicBool>) -> Self {
        Self {
            tx: Mutex::new(Some(tx)),
            closed,
        }
    }

    /// Raises the alarm (the first reason wins).
    pub fn raise(&self, reason: String) {
        self.closed.store(true, Ordering::SeqCst);
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(reason);
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

/// Appends events to a spool. See the module doc.
#[derive(Debug)]
pub struct SpoolWriter {
    spool: ReservedFile,
    chain: Chain,
    records: u64,
    next_seq: u64,
    last_at: u64,
    last_sync: Instant,
    loss: Option<Loss>,
    alarm: Option<Arc<Alarm>>,
    started_unix_ms: u64,
    /// Set by the deriver while a derived file has no room: the writer then records a
    /// gap too, so the spool does not take what the derived files need.
    derived_stalled: Arc<AtomicBool>,
    /// A gap or end record could not be written: the recording is incomplete.
    pub error: Option<String>,
}

impl SpoolWriter {
    /// Opens `path` for appending with `headroom` bytes as its reservation step; a new
    /// spool gets its header. Nothing is reserved yet ([`Self::reserve`]).
    ///
    /// # Errors
    /// The file cannot be opened or its header written.
    pub fn open(path: &Path, headroom: u64) -> std::io::Result<Self> {
        let mut spool = ReservedFile::open(path, headroom)?;
        if spool.is_empty() {
            // The reservation proper (and what its failure means) is the caller's; the
            // header needs only a few bytes.
            let _ = spool.reserve(headroom);
            spool.append(spool::MAGIC)?;
        }
        Ok(Self {
            spool,
            chain: spool::CHAIN_START,
            records: 0,
            next_seq: 0,
            last_at: 0,
            last_sync: Instant::now(),
            loss: None,
            alarm: None,
            started_unix_ms: 0,
            derived_stalled: Arc::default(),
            error: None,
        })
    }

    /// Continues a spool whose records were read (a rebuild): `records` records, the last
    /// with chain value `chain`, event `last_seq` at `last_at`.
    pub fn continuing(mut self, records: u64, chain: Chain, last_seq: u64, last_at: u64) -> Self {
        self.records = records;
        self.chain = chain;
        self.next_seq = last_seq + 1;
        self.last_at = last_at;
        self
    }

    /// Under `fail-closed`: the alarm raised at the first loss.
    pub fn with_alarm(mut self, alarm: Option<Arc<Alarm>>) -> Self {
        self.alarm = alarm;
        self
    }

    /// The flag the deriver sets while its files have no room (see the field).
    pub fn with_stall_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.derived_stalled = flag;
        self
    }

    /// Reserves `bytes` ahead of the spool now.
    ///
    /// # Errors
    /// The space cannot be had.
    pub fn reserve(&mut self, bytes: u64) -> std::io::Result<()> {
        self.spool.reserve(bytes)
    }

    /// The session's wall-clock start (Unix ms), from its start event.
    pub fn started_unix_ms(&self) -> u64 {
        self.started_unix_ms
    }

    /// Bytes of the spool (whole records).
    pub fn offset(&self) -> u64 {
        self.spool.len()
    }

    /// Writes the start event (seq 0).
    pub fn start(&mut self, info: crate::recorder::StartInfo) {
        self.started_unix_ms = info.started_unix_ms;
        let event = Event {
            seq: 0,
            at_ms: 0,
            kind: EventKind::Start(info),
        };
        if let Err(e) = self.append(&event) {
            self.fail(format!("cannot write the spool: {e}"));
            return;
        }
        self.next_seq = 1;
    }

    /// Records one event carrying `data` bytes of the session; the event as written, or
    /// `None` when it could not be (counted in the gap).
    pub fn write(&mut self, at: u64, kind: EventKind, data: u64) -> Option<Event> {
        let control = matches!(kind, EventKind::End { .. });
        let event = Event {
            seq: self.next_seq,
            at_ms: at.max(self.last_at),
            kind,
        };
        let now = Instant::now();
        let stalled = !control && self.derived_stalled.load(Ordering::SeqCst);
        if self.loss.is_some() {
            // Recording resumes only once there is room again past the guard (for this
            // record and the gap's); the end always closes the gap (its record fits in
            // the guard).
            let record = (spool::HEADER_LEN + event.to_json_line().len()) as u64;
            let room = !stalled && self.spool.has_room(record + 512, SPOOL_GUARD, now);
            if !room && !control {
                self.count_loss(data);
                return None;
            }
            if !self.close_loss(event.at_ms) {
                // The gap's record itself could not be written: still in the gap.
                self.count_loss(data);
                return None;
            }
        }
        // The gap's record (if one was just written) took a number.
        let event = Event {
            seq: self.next_seq,
            ..event
        };
        let line = event.to_json_line();
        let record = (spool::HEADER_LEN + line.len()) as u64;
        let keep = if control { 0 } else { SPOOL_GUARD };
        if stalled || !self.spool.has_room(record, keep, now) {
            self.begin_loss(
                event.at_ms,
                data,
                "no space left on the recordings' file system".into(),
            );
            return None;
        }
        match self.append_line(&line) {
            Ok(()) => {
                self.wrote(&event);
                Some(event)
            }
            Err(e) => {
                self.begin_loss(
                    event.at_ms,
                    data,
                    format!("the recording could not be written: {e}"),
                );
                None
            }
        }
    }

    /// Writes a gap or end record, which may use the guard; the event, when written.
    pub fn write_control(&mut self, at: u64, kind: EventKind) -> Option<Event> {
        let event = Event {
            seq: self.next_seq,
            at_ms: at.max(self.last_at),
            kind,
        };
        let line = event.to_json_line();
        let len = (spool::HEADER_LEN + line.len()) as u64;
        let written = if self.spool.has_room(len, 0, Instant::now()) {
            self.append_line(&line)
        } else {
            Err(std::io::Error::other(
                "the space kept for it in the spool is used up",
            ))
        };
        match written {
            Ok(()) => {
                self.wrote(&event);
                Some(event)
            }
            Err(e) => {
                let what = format!("a gap in the recording could not itself be recorded: {e}");
                tracing::error!("{what}");
                self.error.get_or_insert(what);
                None
            }
        }
    }

    /// End of a batch: syncs the spool when due (or `now_too`).
    pub fn end_batch(&mut self, now_too: bool) {
        if now_too || self.last_sync.elapsed() >= SYNC_EVERY {
            if let Err(e) = self.spool.sync() {
                self.fail(format!("cannot sync the spool: {e}"));
            }
            self.last_sync = Instant::now();
        }
    }

    /// Hands back the unused reservation.
    pub fn release(&mut self) {
        self.spool.release();
    }

    /// The writer's part of the summary.
    pub fn written(&self) -> Written {
        Written {
            offset: self.offset(),
            done: true,
            spool_records: self.records,
            spool_head: spool::hex(&self.chain),
            error: self.error.clone(),
        }
    }

    fn append(&mut self, event: &Event) -> std::io::Result<()> {
        self.append_line(&event.to_json_line())?;
        self.wrote(event);
        Ok(())
    }

    /// Appends one record (whole, or not at all).
    fn append_line(&mut self, line: &str) -> std::io::Result<()> {
        let chain = spool::chain_next(&self.chain, line.as_bytes());
        self.spool
            .append(&spool::encode_record(&chain, line.as_bytes()))?;
        self.chain = chain;
        self.records += 1;
        Ok(())
    }

    fn wrote(&mut self, event: &Event) {
        self.next_seq = event.seq + 1;
        self.last_at = event.at_ms;
    }

    /// A failure that is not a lost event (a sync): the recording may be incomplete.
    fn fail(&mut self, what: String) {
        tracing::error!(error = %what, "Cannot write the recording; it may be incomplete");
        self.error.get_or_insert(what.clone());
        if let Some(alarm) = &self.alarm {
            alarm.raise(what);
        }
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
        if let Some(alarm) = &self.alarm {
            alarm.raise(reason);
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
    pub fn close_loss(&mut self, at: u64) -> bool {
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
        if self.write_control(at, kind).is_some() {
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
}
