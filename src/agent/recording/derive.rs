//! Everything derived from a spool, by a consumer that reads it from disk.
//!
//! The transcript, the asciicast and the queue of CloudWatch stream records are
//! functions of the spool's events alone (event times, not the wall clock; per event, not
//! per batch) and of the recording's own settings (`session.json`: the stream mode,
//! `stream_input`) — with the agent's redaction rules for the command lines typed at
//! prompts, which the recorder finds on the transcript's screen (`recorder::commands`) and
//! which are masked here before they are written. The [`Deriver`] renders them (the terminal emulator runs here) from
//! records the spool's reader ([`crate::spool::reader`]) reads back from the file — for a live session in bounded
//! steps on the recordings' background workers (lowest CPU priority, shared by every
//! session, `background.rs`), following the writer ([`crate::spool::writer`]) at its own pace
//! ([`follow`]), and for recovery after a crash ([`rebuild`]) in one pass: the same code
//! either way. During a flood it lags and catches up; the lag is what the spool holds on disk,
//! never memory (the reader holds at most one read of
//! [`crate::spool::reader::READ_CHUNK`] plus one record).
//!
//! The derived files have disk space reserved ahead like the spool. When a derived file
//! cannot grow (the disk is full), the deriver waits for space under `fail-open` and
//! tells the writer, which records a gap from then on until the deriver has room again
//! (nothing the spool holds is dropped, and the spool does not eat the derived files'
//! room); under `fail-closed` it raises the alarm that ends the session.

use super::{RebuildError, Rebuilt, Summary, BATCH, DEFAULT_HEADROOM, INTERRUPTED};
use crate::audit::redact::Redactor;
use crate::delivery::cwl::{
    self, redacted_marker, render_input, Direction, StreamMode, StreamRecord,
};
use crate::recorder::summary::{SpoolSummary, SummaryBuilder};
use crate::recorder::{Event, EventKind, Recorder, StartInfo, TypedCommand};
use crate::spool::format::{self as spool, Chain};
use crate::spool::layout::{owner_only, Paths, EVENTS_FILE, STREAM_FILE};
use crate::spool::reader::{OpenError, ReadError, Reader};
use crate::spool::reserve::{ReservedFile, RETRY_RESERVE};
use crate::spool::writer::{Alarm, Progress, SpoolWriter, Written};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Typed input is held back (to stream whole lines, not keystrokes) at most this long
/// (milliseconds).
const INPUT_HOLD_MS: u64 = 1000;
/// The same for the derived files (the end's last lines, gap notes).
const DERIVED_GUARD: u64 = 64 * 1024;
/// Derived bytes gathered before they are written.
const DERIVED_BUFFER: usize = 256 * 1024;

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
        if self.buf.capacity() > DERIVED_BUFFER * 2 {
            self.buf = Vec::new();
        }
        r.map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.name)))
    }

    /// Room for what is gathered plus `more`, keeping `keep` reserved.
    fn has_room(&mut self, more: u64, keep: u64, now: Instant) -> bool {
        self.file.has_room(self.buf.len() as u64 + more, keep, now)
    }
}

/// A recording's derived files.
#[derive(Debug)]
pub(super) struct DerivedFiles {
    transcript: Derived,
    cast: Derived,
    stream: Option<Derived>,
    stream_bytes: u64,
    headroom: u64,
}

impl DerivedFiles {
    /// Opens them for appending, or with `fresh` emptied first (a rebuild derives them
    /// again from the spool). The asciicast's reservation step is `headroom`, the
    /// transcript's and the stream queue's a quarter of it.
    pub(super) fn open(
        paths: &Paths,
        streaming: bool,
        fresh: bool,
        headroom: u64,
    ) -> std::io::Result<Self> {
        let quarter = headroom / 4;
        Ok(Self {
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
    ///
    /// # Errors
    /// The space cannot be had.
    pub(super) fn reserve(&mut self) -> std::io::Result<()> {
        let quarter = self.headroom / 4;
        self.cast.file.reserve(self.headroom)?;
        self.transcript.file.reserve(quarter)?;
        if let Some(s) = &mut self.stream {
            s.file.reserve(quarter)?;
        }
        Ok(())
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Derived> {
        [
            Some(&mut self.transcript),
            Some(&mut self.cast),
            self.stream.as_mut(),
        ]
        .into_iter()
        .flatten()
    }

    /// The file that has no room for an event carrying `data` bytes, if one has none
    /// (`control`: a gap or the end, which may use the guard).
    fn lacking(&mut self, data: u64, control: bool, now: Instant) -> Option<&'static str> {
        let keep = if control { 0 } else { DERIVED_GUARD };
        // What one event can add to a derived file: JSON escaping at worst six bytes a
        // byte, plus lines the terminal commits (a screen).
        let more = data.saturating_mul(6) + 16 * 1024;
        self.all()
            .find_map(|d| (!d.has_room(more, keep, now)).then_some(d.name))
    }

    /// Hands back the unused reservations.
    fn release(&mut self) {
        for d in self.all() {
            d.file.release();
        }
    }
}

/// The deriver's state. See the module doc.
#[derive(Debug)]
pub(super) struct Deriver {
    rec: Recorder,
    files: DerivedFiles,
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
    /// A gap whose record said it opened, not yet closed: its start.
    open_gap: Option<u64>,
    /// Spool records derived, and the chain value of the last.
    records: u64,
    chain: Chain,
    /// Under `fail-closed`: raised when a derived file cannot be written.
    alarm: Option<Arc<Alarm>>,
    /// Told once that the derived files wait for space.
    waiting_told: bool,
    /// Set while a derived file has no room (the writer then records a gap).
    stalled: Arc<AtomicBool>,
    summary: Summary,
    /// The session's summary (`summary.json`), fed every event derived. The commands-as-
    /// typed finder counts into it with `session_summary.count_command()`.
    session_summary: SummaryBuilder,
    progress: watch::Sender<u64>,
    /// What the stream carries: the mode, and whether plain typed input.
    mode: StreamMode,
    stream_input: bool,
    /// Masks secrets in command lines typed at prompts.
    redactor: Redactor,
}

/// What a recording's stream carries, and how its command lines are masked: the
/// recording's own settings ([`super::Meta`]), so a rebuild derives what the live session
/// did.
#[derive(Debug, Clone)]
pub(super) struct DeriveSettings {
    pub(super) mode: StreamMode,
    pub(super) stream_input: bool,
    pub(super) redactor: Redactor,
}

impl DeriveSettings {
    pub(super) fn new(meta: &super::Meta, redactor: Redactor) -> Self {
        Self {
            mode: meta.fields.as_ref().map(|f| f.mode).unwrap_or_default(),
            stream_input: meta.stream_input,
            redactor,
        }
    }
}

impl Deriver {
    /// A deriver for the session `start` describes (the spool's record 0), writing into
    /// `files`; `progress` tells the streamer how far the stream queue is written.
    pub(super) fn new(
        start: StartInfo,
        files: DerivedFiles,
        progress: watch::Sender<u64>,
        settings: DeriveSettings,
    ) -> Self {
        let started_unix_ms = start.started_unix_ms;
        let session_summary = SummaryBuilder::new(&start);
        // Commands typed at prompts: sessions with a terminal only.
        let terminal = start.term.is_some();
        let rec = Recorder::new(start).forget_taken_lines();
        let mut deriver = Self {
            session_summary,
            rec: if terminal { rec.with_commands() } else { rec },
            files,
            started_unix_ms,
            stream_seq: 0,
            pending_input: Vec::new(),
            open_input: String::new(),
            pending_since: None,
            redacted: None,
            open_gap: None,
            records: 0,
            chain: spool::CHAIN_START,
            alarm: None,
            waiting_told: false,
            stalled: Arc::default(),
            summary: Summary {
                events: 1,
                ..Summary::default()
            },
            progress,
            mode: settings.mode,
            stream_input: settings.stream_input,
            redactor: settings.redactor,
        };
        // The asciicast header.
        deriver.gather_cast_lines();
        deriver
    }

    /// Moves the recorder's new asciicast lines into the asciicast's buffer.
    fn gather_cast_lines(&mut self) {
        for line in self.rec.take_asciicast_lines() {
            self.files.cast.buf.extend_from_slice(line.as_bytes());
            self.files.cast.buf.push(b'\n');
        }
    }

    /// Under `fail-closed`: the alarm raised when a derived file cannot be written.
    pub(super) fn with_alarm(mut self, alarm: Option<Arc<Alarm>>) -> Self {
        self.alarm = alarm;
        self
    }

    /// The flag set while a derived file has no room, shared with the writer.
    pub(super) fn stall_flag(&self) -> Arc<AtomicBool> {
        self.stalled.clone()
    }

    /// The gap left open by the spool read so far, if any: its start.
    pub(super) fn open_gap(&self) -> Option<u64> {
        self.open_gap
    }

    /// Derives one event read from the spool (record number `records`, counting from 1,
    /// with chain value `chain`).
    pub(super) fn derive(&mut self, event: &Event, records: u64, chain: Chain) {
        (self.records, self.chain) = (records, chain);
        self.session_summary.push(event);
        if matches!(event.kind, EventKind::Start(_)) {
            // Its header is written by `new`.
            return;
        }
        self.rec.commit(event);
        // Its asciicast lines at once: what is gathered is what the room checks count.
        self.gather_cast_lines();
        if let EventKind::Output { data } = &event.kind {
            self.summary.output_bytes += data.len() as u64;
        }
        if let EventKind::Gap { from_ms, to_ms, .. } = &event.kind {
            self.open_gap = to_ms.is_none().then_some(*from_ms);
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
        self.render(event);
        for command in self.rec.take_commands() {
            self.command(command);
        }
    }

    /// A command line typed at a prompt: masked, counted, streamed.
    fn command(&mut self, mut command: TypedCommand) {
        command.redact(|argv| self.redactor.redact(argv));
        self.session_summary.count_command();
        self.stream_command(command);
    }

    /// Whether every derived file has room for `event` (see the module doc); when not,
    /// the writer is told to stop taking space and the caller tries again later. Under
    /// `fail-closed` it raises the alarm instead and goes on into the guard, as it does
    /// once the writer is finished (`done`).
    fn room_for(&mut self, event: &Event, done: &dyn Fn() -> bool) -> bool {
        let (data, control) = match &event.kind {
            EventKind::Output { data } | EventKind::Input { data } => (data.len() as u64, false),
            EventKind::InputRedacted { .. } | EventKind::Resize { .. } => (0, false),
            EventKind::Start(_)
            | EventKind::End { .. }
            | EventKind::Gap { .. }
            | EventKind::Tunnel(_)
            | EventKind::Process(_) => (0, true),
        };
        let Some(file) = self.files.lacking(data, control, Instant::now()) else {
            self.stalled.store(false, Ordering::SeqCst);
            return true;
        };
        // The writer stops taking space too (a gap in the spool), so that what the
        // session does while the disk is full is a gap everywhere, not a spool that ate
        // the derived files' room.
        self.stalled.store(true, Ordering::SeqCst);
        let reason = format!("no space left on the recordings' file system for the {file}");
        if let Some(alarm) = &self.alarm {
            alarm.raise(reason);
            return true;
        }
        if done() {
            return true;
        }
        if !self.waiting_told {
            self.waiting_told = true;
            tracing::warn!(%reason, "The recording's derived files wait for disk space (the spool holds the session; they catch up when space returns)");
        }
        false
    }

    /// The summary, once every event is derived: the writer's part from `written`.
    fn finish(mut self, written: &Written) -> Summary {
        self.end_batch();
        self.files.release();
        self.summary.spool_records = written.spool_records;
        self.summary.spool_head.clone_from(&written.spool_head);
        if self.summary.error.is_none() {
            self.summary.error.clone_from(&written.error);
        }
        let spool = SpoolSummary {
            records: written.spool_records,
            chain_head: written.spool_head.clone(),
        };
        let problems: Vec<String> = self.summary.error.iter().cloned().collect();
        self.summary.session = Some(self.session_summary.finish(spool, &problems));
        self.summary
    }

    /// Transcript lines and stream records for one event (times are event times).
    fn render(&mut self, event: &Event) {
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
            EventKind::Input { .. } if !self.stream_input => {
                // Not streamed (`stream_input = "off"`); the spool has it.
                self.close_redacted(at);
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
                    records: self.records,
                    head: spool::hex(&self.chain),
                };
                self.stream_with(at, Direction::End, vec![line], Some(end));
            }
            EventKind::Tunnel(t) => {
                self.stream_tunnel(at, t.clone());
            }
            EventKind::Process(p) => {
                let direction = match p.phase {
                    crate::recorder::event::ProcessPhase::Exec => Direction::Exec,
                    crate::recorder::event::ProcessPhase::Exit => Direction::Exit,
                };
                let lines = vec![p.note()];
                self.stream_record_full(at, direction, lines, None, None, Some(p.clone()));
            }
            EventKind::Resize { .. } | EventKind::Start(_) => {}
        }
        // Keep what is gathered small: write it out once it is large.
        let r = self
            .files
            .all()
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
            if let Some(alarm) = &self.alarm {
                alarm.raise(format!("cannot write {what}: {e}"));
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

    /// A tunnel audit record: its line, and its fields for a reader of the stream.
    fn stream_tunnel(&mut self, at: u64, tunnel: crate::recorder::event::Tunnel) {
        let lines = vec![tunnel.note()];
        self.stream_record(at, Direction::Tunnel, lines, None, Some(tunnel));
    }

    fn stream_with(
        &mut self,
        at: u64,
        direction: Direction,
        lines: Vec<String>,
        end: Option<cwl::SpoolEnd>,
    ) {
        self.stream_record(at, direction, lines, end, None);
    }

    fn stream_record(
        &mut self,
        at: u64,
        direction: Direction,
        lines: Vec<String>,
        end: Option<cwl::SpoolEnd>,
        tunnel: Option<crate::recorder::event::Tunnel>,
    ) {
        self.stream_record_full(at, direction, lines, end, tunnel, None);
    }

    fn stream_record_full(
        &mut self,
        at: u64,
        direction: Direction,
        lines: Vec<String>,
        end: Option<cwl::SpoolEnd>,
        tunnel: Option<crate::recorder::event::Tunnel>,
        process: Option<crate::recorder::event::Process>,
    ) {
        let record = StreamRecord {
            seq: self.stream_seq,
            unix_ms: self.started_unix_ms.saturating_add(at),
            direction,
            lines,
            end,
            tunnel,
            process,
            command: None,
        };
        self.queue(record);
    }

    /// A command record, dated when its Enter was typed (a little before the output that
    /// showed the line, so before the record ahead of it: the batcher keeps a batch in
    /// order). Its `sessionData` is empty: filters on it must not count the command again.
    fn stream_command(&mut self, command: TypedCommand) {
        let record = StreamRecord {
            seq: self.stream_seq,
            unix_ms: self.started_unix_ms.saturating_add(command.at_ms),
            direction: Direction::Command,
            lines: Vec::new(),
            end: None,
            tunnel: None,
            process: None,
            command: Some(command),
        };
        self.queue(record);
    }

    /// Appends a record to the stream queue, when streaming; in upstream mode only output
    /// records (upstream streams nothing else).
    fn queue(&mut self, record: StreamRecord) {
        if self.mode == StreamMode::Upstream && record.direction != Direction::Output {
            return;
        }
        let Some(out) = self.files.stream.as_mut() else {
            return;
        };
        self.stream_seq += 1;
        let line = serde_json::to_string(&record).unwrap_or_default();
        out.buf.extend_from_slice(line.as_bytes());
        out.buf.push(b'\n');
        self.files.stream_bytes += line.len() as u64 + 1;
    }

    /// End of a batch: writes every file, wakes the streamer.
    pub(super) fn end_batch(&mut self) {
        let r = self.files.all().try_for_each(Derived::flush);
        self.note(r, "recording");
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

/// Most events one step of a live deriver takes before it hands the background worker
/// to another session's step.
const STEP_EVENTS: usize = 8 * BATCH;
/// Most bytes of session data one step takes (the same reason).
const STEP_BYTES: u64 = 4 * 1024 * 1024;

/// A live session's deriver between steps: the deriver, its reader of the spool, and an
/// event read but not derived yet (its files had no room).
pub(super) struct Follower {
    deriver: Deriver,
    tail: Reader<File>,
    pending: Option<(Event, Chain)>,
    /// The spool could not be read back: nothing more is derived.
    failed: bool,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Everything published is derived.
    Caught,
    /// The derived files have no room: try again after [`RETRY_RESERVE`].
    Stalled,
    /// The step's bounds were reached with more to derive.
    More,
}

impl Follower {
    pub(super) fn new(deriver: Deriver, tail: Reader<File>) -> Self {
        Self {
            deriver,
            tail,
            pending: None,
            failed: false,
        }
    }

    /// Derives what the writer has published, up to the step's bounds. Blocking (reads
    /// the spool, writes the derived files).
    fn step(&mut self, written: &Written, done: &dyn Fn() -> bool) -> Step {
        let (mut handled, mut bytes) = (0usize, 0u64);
        let step = loop {
            if handled >= STEP_EVENTS || bytes >= STEP_BYTES {
                break Step::More;
            }
            let (event, chain) = match self.pending.take() {
                Some(read) => read,
                None => match self.tail.next_event(Some(written.offset)) {
                    Ok(Some(read)) => read,
                    Ok(None) => break Step::Caught,
                    Err(e) => {
                        // What this process wrote cannot be read back: what follows is
                        // not derived (the spool itself is whole; a restart rebuilds
                        // from it).
                        self.deriver.note(
                            Err(std::io::Error::other(format!("reading it back: {e}"))),
                            EVENTS_FILE,
                        );
                        self.failed = true;
                        break Step::Caught;
                    }
                },
            };
            if !self.deriver.room_for(&event, done) {
                self.pending = Some((event, chain));
                break Step::Stalled;
            }
            if let EventKind::Output { data } | EventKind::Input { data } = &event.kind {
                bytes += data.len() as u64;
            }
            self.deriver.derive(&event, self.tail.records(), chain);
            handled += 1;
            if handled % BATCH == 0 {
                self.deriver.end_batch();
            }
        };
        if handled > 0 {
            self.deriver.end_batch();
        }
        step
    }

    /// Everything is derived once the writer is finished and nothing is left to read.
    fn is_complete(&self, written: &Written) -> bool {
        self.failed
            || (written.done && self.pending.is_none() && self.tail.offset() >= written.offset)
    }
}

/// A live session's deriver: follows the writer's [`Progress`] until the writer is
/// finished and every record is derived; the whole summary. A task on the runtime that
/// owns no thread: each step runs on the recordings' background workers (lowest CPU
/// priority, bounded steps, see `background.rs`), and between steps it waits for the
/// spool to grow, or for disk space.
pub(super) async fn follow(mut follower: Follower, progress: Arc<Progress>) -> Summary {
    let mut wait = Step::Caught;
    loop {
        let written = match wait {
            Step::Caught => progress.wait_past(follower.tail.offset()).await,
            Step::Stalled => {
                tokio::time::sleep(RETRY_RESERVE).await;
                progress.now()
            }
            Step::More => progress.now(),
        };
        let shared = progress.clone();
        let stepped = super::background::run(move || {
            let step = follower.step(&written, &|| shared.is_done());
            (follower, step, written)
        })
        .await;
        let Some((returned, step, written)) = stepped else {
            return Summary::deriver_stopped();
        };
        follower = returned;
        if follower.failed || follower.is_complete(&written) {
            // Wait for the writer to finish (its part of the summary), then report.
            let last = progress.wait_past(u64::MAX).await;
            let deriver = follower.deriver;
            return super::background::run(move || deriver.finish(&last))
                .await
                .unwrap_or_else(Summary::deriver_stopped);
        }
        wait = step;
    }
}

/// Re-derives a recording's transcript, asciicast and stream queue from its spool after a
/// crash, with its own stream settings (`meta`, its `session.json`) and `redactor` for
/// command lines (the agent's rules now: a rule changed since the session masks its
/// command lines differently in the re-derived stream); cuts off a torn last record; when the session never ended, appends an `end`
/// event saying it was interrupted (continuing the hash chain), after closing a gap left
/// open. Blocking. The same `Deriver` as a live session's, reading the same way.
///
/// # Errors
/// [`RebuildError::Corrupt`]: the spool is unreadable, corrupt in its middle or altered
/// (the text says where): the recording must be quarantined, not delivered.
/// [`RebuildError::Transient`]: the files could not be read or written (an I/O error, a
/// full disk): try again.
pub fn rebuild(
    paths: &Paths,
    meta: &super::Meta,
    redactor: Redactor,
) -> Result<Rebuilt, RebuildError> {
    let streaming = meta.streaming();
    use RebuildError::{Corrupt, Transient};
    let mut tail = match Reader::open(&paths.events) {
        Ok(reader) => reader.verifying(),
        Err(e) => {
            let text = format!("cannot open the spool: {e}");
            return Err(match e {
                OpenError::Io(io) if io.kind() != std::io::ErrorKind::NotFound => Transient(text),
                _ => Corrupt(text),
            });
        }
    };
    let file_len = std::fs::metadata(&paths.events).map_or(0, |m| m.len());
    let next = |tail: &mut Reader<File>| -> Result<Option<(Event, Chain)>, RebuildError> {
        match tail.next_event(None) {
            Ok(read) => Ok(read),
            // A torn last record: the spool ends before it.
            Err(ReadError::Torn(_)) => Ok(None),
            Err(ReadError::Unreadable(e)) => Err(Transient(e)),
            Err(ReadError::Corrupt(e)) => Err(Corrupt(e)),
        }
    };
    let (start, start_chain) = match next(&mut tail)? {
        Some((
            event @ Event {
                kind: EventKind::Start(_),
                ..
            },
            chain,
        )) => (event, chain),
        Some(_) => {
            return Err(Corrupt(
                "the first record is not the session's start".into(),
            ))
        }
        None => return Err(Corrupt("the spool holds no events".into())),
    };
    let EventKind::Start(info) = &start.kind else {
        unreachable!("matched above")
    };
    let files = DerivedFiles::open(paths, streaming, true, DEFAULT_HEADROOM)
        .map_err(|e| Transient(format!("cannot rewrite the derived files: {e}")))?;
    let (progress, _) = watch::channel(0);
    let settings = DeriveSettings::new(meta, redactor);
    let mut deriver = Deriver::new(info.clone(), files, progress, settings);
    deriver.derive(&start, 1, start_chain);
    let mut read = ReadSoFar {
        ended: false,
        last: (0, 0, start_chain),
        handled: 0,
    };
    read.derive_rest(&mut tail, &mut deriver, &next)?;
    let (last_seq, last_at, head) = read.last;
    let was_ended = read.ended;
    let good = tail.offset();
    let torn_bytes = file_len.saturating_sub(good);
    if torn_bytes > 0 {
        OpenOptions::new()
            .write(true)
            .open(&paths.events)
            .and_then(|f| f.set_len(good))
            .map_err(|e| Transient(format!("cannot cut the torn last record: {e}")))?;
    }
    let records = tail.records();
    let mut written = Written {
        offset: good,
        done: true,
        spool_records: records,
        spool_head: spool::hex(&head),
        error: None,
    };
    if !was_ended {
        // The interruption (and the close of a gap left open) go into the spool, and are
        // derived from it like every other record.
        let mut writer = SpoolWriter::open(&paths.events, DEFAULT_HEADROOM)
            .map_err(|e| Transient(format!("cannot reopen the spool: {e}")))?
            .continuing(records, head, last_seq, last_at);
        if let Some(from_ms) = deriver.open_gap() {
            writer.write_control(
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
        writer.write_control(
            last_at,
            EventKind::End {
                exit_code: None,
                how: INTERRUPTED.into(),
            },
        );
        writer.end_batch(true);
        writer.release();
        written = writer.written();
        if let Some(e) = written.error.take() {
            return Err(Transient(e));
        }
        if written.spool_records <= records {
            return Err(Transient(
                "the interruption could not be recorded (the disk is full?)".into(),
            ));
        }
        tail.reread()
            .map_err(|e| Transient(format!("cannot read the spool again: {e}")))?;
        read.derive_rest(&mut tail, &mut deriver, &next)?;
    }
    let mut summary = deriver.finish(&written);
    if let Some(e) = summary.error.take() {
        return Err(Transient(e));
    }
    super::note_end(paths, &mut summary);
    Ok(Rebuilt {
        summary,
        interrupted: !was_ended,
        torn_bytes,
    })
}

/// What a rebuild has read so far.
struct ReadSoFar {
    ended: bool,
    /// The last event's seq, time and chain value.
    last: (u64, u64, Chain),
    handled: usize,
}

type NextRecord<'a> =
    dyn Fn(&mut Reader<File>) -> Result<Option<(Event, Chain)>, RebuildError> + 'a;

impl ReadSoFar {
    /// Derives every record left in the spool, checking their order.
    fn derive_rest(
        &mut self,
        tail: &mut Reader<File>,
        deriver: &mut Deriver,
        next: &NextRecord<'_>,
    ) -> Result<(), RebuildError> {
        use RebuildError::Corrupt;
        while let Some((event, chain)) = next(tail)? {
            if self.ended {
                return Err(Corrupt(format!(
                    "event {} follows the end event",
                    event.seq
                )));
            }
            match event.kind {
                EventKind::Start(_) => {
                    return Err(Corrupt(format!("event {} is a second start", event.seq)))
                }
                EventKind::End { .. } => self.ended = true,
                _ => {}
            }
            self.last = (event.seq, event.at_ms, chain);
            deriver.derive(&event, tail.records(), chain);
            self.handled += 1;
            if self.handled % BATCH == 0 {
                deriver.end_batch();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> StartInfo {
        StartInfo {
            session_id: "s-tail".into(),
            user: "alice".into(),
            run_as_user: "ssm-user".into(),
            owner: "alice".into(),
            target: "t".into(),
            reason: None,
            cols: 40,
            rows: 10,
            started_unix_ms: 0,
            term: None,
            shell: None,
        }
    }

    fn output(writer: &mut SpoolWriter, text: &str) {
        let data = text.as_bytes().to_vec();
        let len = data.len() as u64;
        assert!(writer.write(1, EventKind::Output { data }, len).is_some());
    }

    #[test]
    fn a_tail_follows_a_growing_spool_and_never_reads_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.spool");
        let mut writer = SpoolWriter::open(&path, 4096).unwrap();
        writer.start(info());
        output(&mut writer, "one");
        let first = writer.offset();
        output(&mut writer, "two");
        let mut tail = Reader::open(&path).unwrap();
        // Up to the first limit: the start and "one", then nothing, though "two" is there.
        assert!(matches!(
            tail.next_event(Some(first)).unwrap().unwrap().0.kind,
            EventKind::Start(_)
        ));
        let (one, _) = tail.next_event(Some(first)).unwrap().unwrap();
        assert_eq!(
            one.kind,
            EventKind::Output {
                data: b"one".to_vec()
            }
        );
        assert_eq!(tail.next_event(Some(first)).unwrap(), None);
        assert_eq!(tail.offset(), first);
        // The limit moves on: the rest, with the chain value the writer wrote.
        let (two, chain) = tail.next_event(Some(writer.offset())).unwrap().unwrap();
        assert_eq!(
            two.kind,
            EventKind::Output {
                data: b"two".to_vec()
            }
        );
        assert_eq!(spool::hex(&chain), writer.written().spool_head);
        assert_eq!(tail.records(), 3);
        assert_eq!(tail.next_event(Some(writer.offset())).unwrap(), None);
    }

    #[test]
    fn a_spool_cut_below_what_was_written_is_an_error_not_a_wait() {
        let dir = tempfile::tempdir().unwrap();
        // A spool of two records, and where the first ended and the second; cut at `at`.
        let spool = |name: &str, at: &dyn Fn(u64, u64) -> u64| {
            let path = dir.path().join(name);
            let mut writer = SpoolWriter::open(&path, 4096).unwrap();
            writer.start(info());
            let boundary = writer.offset();
            output(&mut writer, "one");
            let written = writer.offset();
            // (Closed first: handing back its reservation sets the file's length.)
            drop(writer);
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(at(boundary, written)).unwrap();
            (path, written)
        };
        // Cut at a record boundary, after the writer published its length: "nothing more
        // yet" would have the deriver wait forever for bytes that are gone.
        let (path, written) = spool("boundary", &|boundary, _| boundary);
        let mut tail = Reader::open(&path).unwrap();
        assert!(tail.next_event(Some(written)).unwrap().is_some());
        let err = tail.next_event(Some(written)).unwrap_err();
        assert!(
            matches!(&err, ReadError::Corrupt(why) if why.contains("it was cut")),
            "{err:?}"
        );
        // Cut inside a record.
        let (path, written) = spool("inside", &|_, written| written - 2);
        let mut tail = Reader::open(&path).unwrap();
        assert!(tail.next_event(Some(written)).unwrap().is_some());
        let err = tail.next_event(Some(written)).unwrap_err();
        assert!(
            matches!(&err, ReadError::Corrupt(why) if why.contains("it was cut")),
            "{err:?}"
        );
        // Without a limit (a rebuild), the same file ends in a torn record.
        let mut tail = Reader::open(&path).unwrap();
        assert!(tail.next_event(None).unwrap().is_some());
        assert!(matches!(tail.next_event(None), Err(ReadError::Torn(_))));
    }
}
