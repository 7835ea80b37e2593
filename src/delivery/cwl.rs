//! CloudWatch Logs event shaping and batching (pure).
//!
//! * [`StreamRecord`]: what the recorder hands to the streamer — clean transcript lines
//!   (direction `output`), typed input rendered as text (direction `input`), a command
//!   line typed at a prompt (direction and `eventType` `command`), the audit's exec and
//!   exit, tunnels, gaps and the end, numbered.
//! * [`stream_messages`]: one record as upstream-schema JSON messages (§8.3:
//!   `eventVersion`, `eventTime`, `awsRegion`, `target.id`, `userIdentity.arn`,
//!   `runAsUser`, `sessionId`, `sessionData`), plus our own `sequence` (per log stream,
//!   contiguous from 0, so duplicates after a retry or a crash are identifiable),
//!   `direction` and, last, `chain`: the hash chain over the stream's messages (below).
//!   A record too large for one event is split across several, each under
//!   [`MAX_MESSAGE_BYTES`].
//! * [`StreamChecker`]: `session-agent verify cloudwatch://…` — checks a stream's chain
//!   message by message, tells identical re-sends (duplicates) from alterations and gaps.
//!
//! ## The CloudWatch hash chain
//!
//! Each streamed message ends with `"chain":"<64 hex>"}`, the SHA-256 of the previous
//! message's chain value (32 zero bytes before the first) followed by this message's
//! bytes *without* the chain field (the same JSON, closed with `}` where `,"chain"`
//! begins). The chain is a pure function of the record stream, so a stream resumed after
//! a crash re-derives the same values: a message sent twice carries the same chain value
//! and is reported as a duplicate, not as an alteration.
//! * [`Batcher`]: groups timestamped messages into `PutLogEvents` calls within the service
//!   limits: at most [`MAX_BATCH_EVENTS`] events, [`MAX_BATCH_BYTES`] bytes counting
//!   [`EVENT_OVERHEAD`] per event, chronological, spanning at most 24 hours.
//! * [`transcript_events`]: the clean transcript split into plain-text events for the
//!   upload at close (§8.4), at line boundaries where possible.
//!
//! Upstream differences on purpose: upstream batches lines into 33,000-byte events, four
//! per call, every second, and stamps events with the upload time; we send each record as
//! soon as it exists (the streamer coalesces for a moment), as many per call as the limits
//! allow, stamped with the time the output happened, and we stream more than output.
//! [`StreamMode::Upstream`] (`cloudwatch_stream = "upstream"`) streams only what upstream
//! does — output lines, in its eight fields (`CloudWatchMessage` in amazon-ssm-agent's
//! `cloudwatchlogspublisher`), unchained — for consumers that accept nothing else.

use crate::spool::format::{chain_next, hex, Chain};
use serde::{Deserialize, Serialize};

/// Bytes the service adds to each event's message size when it sums a batch.
pub const EVENT_OVERHEAD: usize = 26;
/// Largest batch, in bytes (messages plus [`EVENT_OVERHEAD`] each).
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// Most events in one call.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Largest message we put in one event: the service limit is 256 KiB including the
/// overhead.
pub const MAX_MESSAGE_BYTES: usize = 262_144 - EVENT_OVERHEAD;
/// A batch may not span more than this (milliseconds).
pub const MAX_BATCH_SPAN_MS: i64 = 24 * 3600 * 1000;
/// Plain-text events of the upload at close are cut near this size (upstream: 200,000).
pub const UPLOAD_EVENT_BYTES: usize = 200_000;

/// Which way the recorded bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// What the terminal showed (clean transcript lines).
    Output,
    /// What the user typed (rendered with [`render_input`]; redacted input as a marker).
    Input,
    /// Part of the session could not be recorded (the recorder's gap record).
    Gap,
    /// The session ended: the stream's last message, with where the spool ended
    /// ([`SpoolEnd`]). A stream without it was cut short (or the session still runs).
    End,
    /// A connection through a port session opened, was refused or closed (the tunnel
    /// audit; the message carries its fields as `tunnel`).
    Tunnel,
    /// A session's process executed a program (the command audit; `eventType` `exec`,
    /// its fields as `process`).
    Exec,
    /// A session's process ended (`eventType` `exit`).
    Exit,
    /// A command line typed at a prompt (`eventType` `command`, `commandLine`, `prompt`,
    /// `time`; `sessionData` empty, so filters on it do not count the command again).
    Command,
}

/// What the CloudWatch stream carries (`cloudwatch_stream` in the agent's configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    /// Upstream's schema plus our fields (`sequence`, `direction`, `chain`, ...) and
    /// records (input, commands, exec/exit, tunnels, gaps, the end).
    #[default]
    Full,
    /// Exactly what amazon-ssm-agent streams: output lines only, in messages of its eight
    /// fields and nothing else (no `sequence`, no `chain`: `verify cloudwatch://` cannot
    /// check such a stream, and a batch re-sent after a crash is an unmarked duplicate).
    Upstream,
}

impl StreamMode {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamMode::Full => "full",
            StreamMode::Upstream => "upstream",
        }
    }

    fn is_full(&self) -> bool {
        *self == StreamMode::Full
    }
}

impl std::str::FromStr for StreamMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(StreamMode::Full),
            "upstream" => Ok(StreamMode::Upstream),
            other => Err(format!("{other:?} is not `full` or `upstream`")),
        }
    }
}

/// Where a session's spool ended, carried by the last streamed message so that a copy of
/// the spool cut short (or a stream cut short) shows against the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolEnd {
    /// Records in the spool, the end included.
    pub records: u64,
    /// The spool's hash chain value after its last record (hex).
    pub head: String,
}

/// One unit of streamed text, as the recorder writes it for the streamer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Position in the session's stream of records, from 0.
    pub seq: u64,
    /// Wall-clock time of the output or input, Unix milliseconds.
    pub unix_ms: u64,
    /// Output or input.
    pub direction: Direction,
    /// The text, one element per line, without line terminators.
    pub lines: Vec<String>,
    /// The end record only: where the spool ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<SpoolEnd>,
    /// Tunnel records only: the connection's audit fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<crate::recorder::event::Tunnel>,
    /// Exec and exit records only: the process's audit fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<crate::recorder::event::Process>,
    /// Command records only: the command line typed at a prompt (redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<crate::recorder::commands::TypedCommand>,
}

/// The fixed fields of every streamed message of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFields {
    /// AWS region of the log group.
    pub region: String,
    /// The instance (target) id.
    pub target_id: String,
    /// The session owner's identity (an IAM ARN on AWS).
    pub owner_arn: String,
    /// The OS account the shell runs as.
    pub run_as_user: String,
    /// The session id.
    pub session_id: String,
    /// How messages are shaped: ours ([`StreamMode::Full`]) or upstream's only.
    #[serde(default, skip_serializing_if = "StreamMode::is_full")]
    pub mode: StreamMode,
}

#[derive(Serialize)]
struct Target<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct UserIdentity<'a> {
    arn: &'a str,
}

/// The upstream message schema, field order as upstream marshals it, then ours.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    event_version: &'static str,
    event_time: String,
    aws_region: &'a str,
    target: Target<'a>,
    user_identity: UserIdentity<'a>,
    run_as_user: &'a str,
    session_id: &'a str,
    session_data: &'a [String],
    sequence: u64,
    direction: Direction,
    #[serde(skip_serializing_if = "Option::is_none")]
    spool_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spool_head: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel: Option<&'a crate::recorder::event::Tunnel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<&'static str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    process: Option<ProcessFields<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_line: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
}

/// An exec or exit of the command audit as fields of the event itself (camelCase, beside
/// the envelope, so queries and metric filters select `$.executable`, `$.exitCode`):
/// exec `pid`, `ppid`, `user`, `uid`, `euid`, `cwd`, `executable`, `argv`, `time`;
/// exit `pid`, `exitCode` or `signal`, `durationMs`, `time`; plus the markers.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProcessFields<'a> {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    ppid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    euid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    executable: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    argv: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    argv_truncated: bool,
    #[serde(skip_serializing_if = "is_zero_usize")]
    redactions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    details_unavailable: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    login_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit_session: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

impl<'a> ProcessFields<'a> {
    fn of(p: &'a crate::recorder::event::Process) -> Self {
        let exec = p.phase == crate::recorder::event::ProcessPhase::Exec;
        Self {
            pid: p.pid,
            ppid: p.ppid,
            user: p.user.as_deref(),
            uid: p.uid,
            euid: p.euid,
            cwd: p.cwd.as_deref(),
            executable: p.executable.as_deref(),
            argv: exec.then_some(p.argv.as_slice()),
            argv_truncated: p.argv_truncated,
            redactions: p.redactions,
            details_unavailable: p.details_unavailable.as_deref(),
            login_uid: p.login_uid,
            audit_session: p.audit_session,
            exit_code: p.exit_code,
            signal: p.signal,
            duration_ms: p.duration_ms,
        }
    }
}

/// amazon-ssm-agent's message, exactly (`CloudWatchMessage` in its
/// `cloudwatchlogspublisher`): these eight fields in this order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpstreamMessage<'a> {
    event_version: &'static str,
    event_time: String,
    aws_region: &'a str,
    target: Target<'a>,
    user_identity: UserIdentity<'a>,
    run_as_user: &'a str,
    session_id: &'a str,
    session_data: &'a [String],
}

/// Bytes the chain field adds to a message: `,"chain":"` + 64 hex + `"` (the closing
/// brace is shared).
pub const CHAIN_FIELD_BYTES: usize = 10 + 64 + 1;

/// Appends the chain field to a message serialized without it and advances `chain`.
fn seal(body: &str, chain: &mut Chain) -> String {
    *chain = chain_next(chain, body.as_bytes());
    let open = body.strip_suffix('}').unwrap_or(body);
    format!("{open},\"chain\":\"{}\"}}", hex(chain))
}

/// Splits a chained message into the body the chain value covers and the claimed value.
pub fn unseal(message: &str) -> Option<(String, Chain)> {
    let cut = message.len().checked_sub(CHAIN_FIELD_BYTES + 1)?;
    let (open, tail) = (message.get(..cut)?, message.get(cut..)?);
    let hex_value = tail.strip_prefix(",\"chain\":\"")?.strip_suffix("\"}")?;
    let mut claimed = [0u8; 32];
    for (i, byte) in claimed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex_value.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((format!("{open}}}"), claimed))
}

/// One event ready for `PutLogEvents`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// Unix milliseconds.
    pub timestamp_ms: i64,
    /// The message text.
    pub message: String,
}

impl LogEvent {
    /// Size as the service counts it.
    pub fn cost(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }
}

/// The JSON messages for one record: usually one; more when the record's lines do not
/// fit one event (each part keeps the record's sequence number and time, parts in order).
/// Each message is sealed with the stream's hash chain, which `chain` carries from one
/// call to the next. An empty record yields nothing (a command record has no lines).
///
/// In [`StreamMode::Upstream`] only output records give messages, in upstream's schema
/// alone, unsealed (`chain` is left as it is).
pub fn stream_messages(
    fields: &SessionFields,
    record: &StreamRecord,
    chain: &mut Chain,
) -> Vec<LogEvent> {
    if fields.mode == StreamMode::Upstream {
        return upstream_messages(fields, record);
    }
    if record.lines.is_empty() && record.command.is_none() {
        return Vec::new();
    }
    let timestamp_ms = i64::try_from(record.unix_ms).unwrap_or(i64::MAX);
    let event_time = crate::timefmt::rfc3339(record.unix_ms, false);
    let fitted = fit(
        &record.lines,
        MAX_MESSAGE_BYTES - CHAIN_FIELD_BYTES,
        |part| {
            serde_json::to_string(&Message {
                event_version: "1.0",
                event_time: event_time.clone(),
                aws_region: &fields.region,
                target: Target {
                    id: &fields.target_id,
                },
                user_identity: UserIdentity {
                    arn: &fields.owner_arn,
                },
                run_as_user: &fields.run_as_user,
                session_id: &fields.session_id,
                session_data: part,
                sequence: record.seq,
                direction: record.direction,
                spool_records: record.end.as_ref().map(|e| e.records),
                spool_head: record.end.as_ref().map(|e| e.head.as_str()),
                tunnel: record.tunnel.as_ref(),
                event_type: match record.direction {
                    Direction::Exec => Some("exec"),
                    Direction::Exit => Some("exit"),
                    Direction::Command => Some("command"),
                    _ => None,
                },
                process: record.process.as_ref().map(ProcessFields::of),
                command_line: record.command.as_ref().map(|c| c.command_line.as_str()),
                prompt: record.command.as_ref().map(|c| c.prompt.as_str()),
                time: (record.command.is_some() || record.process.is_some())
                    .then(|| crate::timefmt::rfc3339(record.unix_ms, true)),
            })
            .unwrap_or_default()
        },
    );
    fitted
        .into_iter()
        .map(|message| LogEvent {
            timestamp_ms,
            message: seal(&message, chain),
        })
        .collect()
}

/// The messages `render` makes of `lines`, each at most `limit` bytes: depth-first, a
/// part that is too large is halved (by lines, or a single line by characters) until
/// every part fits. A part of at most one character cannot shrink and is kept (the
/// fixed fields are bounded far below the limit). In order.
fn fit(lines: &[String], limit: usize, render: impl Fn(&[String]) -> String) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending: Vec<Vec<String>> = vec![lines.to_vec()];
    while let Some(part) = pending.pop() {
        let message = render(&part);
        if message.len() <= limit || part.iter().map(String::len).sum::<usize>() <= 1 {
            out.push(message);
            continue;
        }
        let (first, second) = halve(part);
        pending.push(second);
        pending.push(first);
    }
    out
}

/// [`stream_messages`] in [`StreamMode::Upstream`]: output records only, upstream's eight
/// fields, split like ours when too large.
fn upstream_messages(fields: &SessionFields, record: &StreamRecord) -> Vec<LogEvent> {
    if record.direction != Direction::Output || record.lines.is_empty() {
        return Vec::new();
    }
    let timestamp_ms = i64::try_from(record.unix_ms).unwrap_or(i64::MAX);
    let event_time = crate::timefmt::rfc3339(record.unix_ms, false);
    fit(&record.lines, MAX_MESSAGE_BYTES, |part| {
        serde_json::to_string(&UpstreamMessage {
            event_version: "1.0",
            event_time: event_time.clone(),
            aws_region: &fields.region,
            target: Target {
                id: &fields.target_id,
            },
            user_identity: UserIdentity {
                arn: &fields.owner_arn,
            },
            run_as_user: &fields.run_as_user,
            session_id: &fields.session_id,
            session_data: part,
        })
        .unwrap_or_default()
    })
    .into_iter()
    .map(|message| LogEvent {
        timestamp_ms,
        message,
    })
    .collect()
}

/// Two halves of lines that do not fit one message: by lines, or a single line by
/// characters.
fn halve(part: Vec<String>) -> (Vec<String>, Vec<String>) {
    if part.len() > 1 {
        let mut first = part;
        let second = first.split_off(first.len() / 2);
        (first, second)
    } else {
        let line = part.into_iter().next().unwrap_or_default();
        let (a, b) = split_at_char(&line, line.len() / 2);
        (vec![a.to_owned()], vec![b.to_owned()])
    }
}

/// Splits `s` near byte `at`, on a character boundary, never producing an empty first
/// half for a non-empty string.
fn split_at_char(s: &str, at: usize) -> (&str, &str) {
    let mut i = at.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    if i == 0 {
        i = s.chars().next().map_or(0, char::len_utf8);
    }
    s.split_at(i)
}

/// Typed input as readable text: one line per Enter (CR or LF), other control bytes in
/// caret notation (`^C`, `^[` for ESC, `^?` for DEL), invalid UTF-8 as U+FFFD. A trailing
/// line without Enter is kept.
pub fn render_input(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => {
                lines.push(std::mem::take(&mut line));
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
            }
            '\u{7f}' => line.push_str("^?"),
            c if u32::from(c) < 0x20 => {
                line.push('^');
                line.push(char::from(b'@' + u8::try_from(u32::from(c)).unwrap_or(0)));
            }
            c => line.push(c),
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The marker streamed in place of input typed with echo off.
pub fn redacted_marker(bytes: usize, lines: usize, over_ms: u64) -> String {
    let mut text = format!("[input redacted: {bytes} bytes typed with echo off");
    if lines > 0 {
        text.push_str(&format!(", {lines} Enter"));
    }
    if over_ms >= 100 {
        #[allow(clippy::cast_precision_loss)] // milliseconds of a session
        text.push_str(&format!(", over {:.1} s", over_ms as f64 / 1000.0));
    }
    text.push(']');
    text
}

/// What [`StreamChecker::check`] made of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The next message of the chain.
    Next,
    /// An identical copy of a message already checked (a re-send after a retry or a
    /// crash), skipped.
    Duplicate,
}

/// Checks a CloudWatch stream's messages in the order the service returns them.
#[derive(Debug, Default)]
pub struct StreamChecker {
    head: Chain,
    /// Chain values seen, each with the value before it (to recognise re-sends).
    seen: std::collections::HashMap<Chain, Chain>,
    messages: u64,
    duplicates: u64,
    last_sequence: Option<u64>,
    end: Option<SpoolEnd>,
    gaps: Vec<String>,
}

impl StreamChecker {
    /// A checker at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages in the chain so far (duplicates not counted).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Duplicates skipped.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The chain value after the last message.
    pub fn head(&self) -> Chain {
        self.head
    }

    /// Where the spool ended, from the stream's end message; `None` until one is seen
    /// (a stream cut short, or a session still being streamed).
    pub fn spool_end(&self) -> Option<&SpoolEnd> {
        self.end.as_ref()
    }

    /// Parts of the session the recording lacks (its gap lines), as they were streamed.
    pub fn gaps(&self) -> &[String] {
        &self.gaps
    }

    /// Notes what a checked message says of the recording: its end, its gaps.
    fn note(&mut self, body: &serde_json::Value) {
        if body.get("direction").and_then(serde_json::Value::as_str) == Some("end") {
            let records = body.get("spoolRecords").and_then(serde_json::Value::as_u64);
            let head = body.get("spoolHead").and_then(serde_json::Value::as_str);
            if let (Some(records), Some(head)) = (records, head) {
                self.end = Some(SpoolEnd {
                    records,
                    head: head.to_owned(),
                });
            }
        }
        // Only the recorder's own gap records count, never text in the output.
        if body.get("direction").and_then(serde_json::Value::as_str) == Some("gap") {
            if let Some(lines) = body
                .get("sessionData")
                .and_then(serde_json::Value::as_array)
            {
                for l in lines.iter().filter_map(serde_json::Value::as_str) {
                    self.gaps
                        .push(l.trim_start_matches('[').trim_end_matches(']').to_owned());
                }
            }
        }
    }

    /// Checks the next message of the stream (`index` counts every event read, for the
    /// report).
    ///
    /// # Errors
    /// The first alteration, gap or foreign message, described.
    pub fn check(&mut self, index: u64, message: &str) -> Result<Checked, String> {
        let Some((body, claimed)) = unseal(message) else {
            return Err(format!(
                "event {index}: no chain field (not a message streamed by session-agent, or cut short)"
            ));
        };
        let parsed = serde_json::from_str::<serde_json::Value>(&body).ok();
        let sequence = parsed
            .as_ref()
            .and_then(|v| v.get("sequence").and_then(serde_json::Value::as_u64));
        let Some(sequence) = sequence else {
            return Err(format!("event {index}: not a JSON message with a sequence"));
        };
        if chain_next(&self.head, body.as_bytes()) == claimed {
            let expected = self.last_sequence.map_or(0..=0, |s| s..=s + 1);
            if !expected.contains(&sequence) {
                return Err(format!(
                    "event {index}: sequence {sequence} where {} was expected (a gap)",
                    expected.end()
                ));
            }
            self.seen.insert(claimed, self.head);
            self.head = claimed;
            self.messages += 1;
            self.last_sequence = Some(sequence);
            if let Some(v) = &parsed {
                self.note(v);
            }
            return Ok(Checked::Next);
        }
        if let Some(prev) = self.seen.get(&claimed) {
            if chain_next(prev, body.as_bytes()) == claimed {
                self.duplicates += 1;
                return Ok(Checked::Duplicate);
            }
        }
        Err(format!(
            "event {index} (sequence {sequence}): chain value does not match: this message or one before it was altered, removed or reordered"
        ))
    }
}

/// Groups events into `PutLogEvents` calls within the limits.
#[derive(Debug, Default)]
pub struct Batcher {
    batches: Vec<Vec<LogEvent>>,
    bytes: usize,
}

impl Batcher {
    /// An empty batcher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an event (in chronological order; an earlier timestamp is raised to the
    /// previous one so a batch stays sorted). Events must be at most
    /// [`MAX_MESSAGE_BYTES`] (as [`stream_messages`] and [`transcript_events`] make them).
    pub fn push(&mut self, mut event: LogEvent) {
        let cost = event.cost();
        let start_new = match self.batches.last() {
            None => true,
            Some(batch) => {
                let first = batch.first().map_or(event.timestamp_ms, |e| e.timestamp_ms);
                let last = batch.last().map_or(event.timestamp_ms, |e| e.timestamp_ms);
                event.timestamp_ms = event.timestamp_ms.max(last);
                batch.len() >= MAX_BATCH_EVENTS
                    || self.bytes + cost > MAX_BATCH_BYTES
                    || event.timestamp_ms - first > MAX_BATCH_SPAN_MS
            }
        };
        if start_new {
            self.batches.push(Vec::new());
            self.bytes = 0;
        }
        self.bytes += cost;
        if let Some(batch) = self.batches.last_mut() {
            batch.push(event);
        }
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batches, in order.
    pub fn into_batches(self) -> Vec<Vec<LogEvent>> {
        self.batches
    }
}

/// The clean transcript as plain-text events for the upload at close: cut at line ends
/// near [`UPLOAD_EVENT_BYTES`], a longer line cut at a character boundary; the final
/// trailing newline trimmed (as upstream). Empty text yields nothing.
pub fn transcript_events(text: &str, timestamp_ms: i64) -> Vec<LogEvent> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let cut = if rest.len() <= UPLOAD_EVENT_BYTES {
            rest.len()
        } else {
            let window = split_at_char(rest, UPLOAD_EVENT_BYTES).0;
            match window.rfind('\n') {
                Some(nl) if nl > 0 => nl + 1,
                _ => window.len(),
            }
        };
        let (piece, tail) = rest.split_at(cut);
        let piece = piece.strip_suffix('\n').unwrap_or(piece);
        if !piece.is_empty() {
            out.push(LogEvent {
                timestamp_ms,
                message: piece.to_owned(),
            });
        }
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields() -> SessionFields {
        SessionFields {
            region: "us-east-1".into(),
            target_id: "i-0123456789abcdef0".into(),
            owner_arn: "arn:aws:iam::123456789012:user/alice".into(),
            run_as_user: "ssm-user".into(),
            session_id: "alice-0a1b2c3d".into(),
            mode: StreamMode::Full,
        }
    }

    #[test]
    fn message_has_the_upstream_schema_in_order_plus_ours() {
        let record = StreamRecord {
            seq: 7,
            unix_ms: 1_729_534_091_500,
            direction: Direction::Output,
            lines: vec!["$ ls".into(), "a  b".into()],
            end: None,
            tunnel: None,
            process: None,
            command: None,
        };
        let mut chain = crate::spool::format::CHAIN_START;
        let events = stream_messages(&fields(), &record, &mut chain);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].timestamp_ms, 1_729_534_091_500);
        let (body, claimed) = unseal(&events[0].message).unwrap();
        assert_eq!(
            claimed,
            chain_next(&crate::spool::format::CHAIN_START, body.as_bytes())
        );
        assert_eq!(chain, claimed);
        assert!(events[0].message.ends_with(&format!(
            r#","direction":"output","chain":"{}"}}"#,
            hex(&claimed)
        )));
        assert_eq!(
            body,
            r#"{"eventVersion":"1.0","eventTime":"2024-10-21T18:08:11Z","awsRegion":"us-east-1","target":{"id":"i-0123456789abcdef0"},"userIdentity":{"arn":"arn:aws:iam::123456789012:user/alice"},"runAsUser":"ssm-user","sessionId":"alice-0a1b2c3d","sessionData":["$ ls","a  b"],"sequence":7,"direction":"output"}"#
        );
    }

    #[test]
    fn exec_and_exit_events_carry_the_audit_fields_as_their_own() {
        use crate::recorder::event::{Process, ProcessPhase};
        let exec = Process {
            phase: ProcessPhase::Exec,
            pid: 4242,
            ppid: Some(4200),
            user: Some("ssm-user".into()),
            uid: Some(1001),
            euid: Some(0),
            cwd: Some("/home/ssm-user".into()),
            executable: Some("/usr/bin/curl".into()),
            argv: vec!["curl".into(), "-u".into(), "bob:[redacted]".into()],
            argv_truncated: false,
            redactions: 1,
            details_unavailable: None,
            login_uid: Some(1001),
            audit_session: Some(7),
            exit_code: None,
            signal: None,
            duration_ms: None,
        };
        let exit = Process {
            phase: ProcessPhase::Exit,
            ppid: None,
            user: None,
            uid: None,
            euid: None,
            cwd: None,
            executable: None,
            argv: Vec::new(),
            redactions: 0,
            login_uid: None,
            audit_session: None,
            exit_code: None,
            signal: Some(9),
            duration_ms: Some(1500),
            ..exec.clone()
        };
        let message = |direction, p: &Process| {
            let record = StreamRecord {
                seq: 3,
                unix_ms: 1_729_534_091_500,
                direction,
                lines: vec![p.note()],
                end: None,
                tunnel: None,
                process: Some(p.clone()),
                command: None,
            };
            let mut chain = crate::spool::format::CHAIN_START;
            let events = stream_messages(&fields(), &record, &mut chain);
            assert_eq!(events.len(), 1);
            serde_json::from_str::<serde_json::Value>(&events[0].message).unwrap()
        };
        let v = message(Direction::Exec, &exec);
        assert_eq!(v["eventType"], "exec");
        assert_eq!(v["sessionId"], "alice-0a1b2c3d");
        assert_eq!(v["runAsUser"], "ssm-user");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["ppid"], 4200);
        assert_eq!(v["user"], "ssm-user");
        assert_eq!(v["euid"], 0);
        assert_eq!(v["cwd"], "/home/ssm-user");
        assert_eq!(v["executable"], "/usr/bin/curl");
        assert_eq!(
            v["argv"],
            serde_json::json!(["curl", "-u", "bob:[redacted]"])
        );
        assert_eq!(v["auditSession"], 7);
        assert_eq!(v["time"], "2024-10-21T18:08:11.500Z");
        assert!(
            v.get("process").is_none() && v.get("exitCode").is_none(),
            "{v}"
        );
        let v = message(Direction::Exit, &exit);
        assert_eq!(v["eventType"], "exit");
        assert_eq!(
            (v["pid"].clone(), v["signal"].clone()),
            (4242.into(), 9.into())
        );
        assert_eq!(v["durationMs"], 1500);
        assert!(
            v.get("argv").is_none() && v.get("exitCode").is_none(),
            "{v}"
        );
    }

    #[test]
    fn a_command_event_has_the_envelope_its_fields_and_no_session_data() {
        let record = StreamRecord {
            seq: 0,
            unix_ms: 1_729_534_091_500,
            direction: Direction::Command,
            lines: Vec::new(),
            end: None,
            tunnel: None,
            process: None,
            command: Some(crate::recorder::commands::TypedCommand {
                at_ms: 12,
                prompt: "root@web-1:/tmp#".into(),
                command_line: "curl -u bob:[redacted] https://x".into(),
                prompt_from: crate::recorder::commands::PromptFrom::Cursor,
                truncated: false,
                redactions: 1,
            }),
        };
        let mut chain = crate::spool::format::CHAIN_START;
        let events = stream_messages(&fields(), &record, &mut chain);
        assert_eq!(events.len(), 1);
        let (body, _) = unseal(&events[0].message).unwrap();
        assert_eq!(
            body,
            r#"{"eventVersion":"1.0","eventTime":"2024-10-21T18:08:11Z","awsRegion":"us-east-1","target":{"id":"i-0123456789abcdef0"},"userIdentity":{"arn":"arn:aws:iam::123456789012:user/alice"},"runAsUser":"ssm-user","sessionId":"alice-0a1b2c3d","sessionData":[],"sequence":0,"direction":"command","eventType":"command","commandLine":"curl -u bob:[redacted] https://x","prompt":"root@web-1:/tmp#","time":"2024-10-21T18:08:11.500Z"}"#
        );
        // It chains like every other message.
        assert_eq!(check_all(&[events[0].message.clone()]), Ok((1, 0)));
    }

    #[test]
    fn upstream_mode_streams_output_lines_in_upstreams_eight_fields_only() {
        let upstream = SessionFields {
            mode: StreamMode::Upstream,
            ..fields()
        };
        let mut chain = crate::spool::format::CHAIN_START;
        let output = StreamRecord {
            seq: 3,
            unix_ms: 1_729_534_091_500,
            direction: Direction::Output,
            lines: vec!["$ ls".into(), "a  b".into()],
            end: None,
            tunnel: None,
            process: None,
            command: None,
        };
        let events = stream_messages(&upstream, &output, &mut chain);
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].message,
            r#"{"eventVersion":"1.0","eventTime":"2024-10-21T18:08:11Z","awsRegion":"us-east-1","target":{"id":"i-0123456789abcdef0"},"userIdentity":{"arn":"arn:aws:iam::123456789012:user/alice"},"runAsUser":"ssm-user","sessionId":"alice-0a1b2c3d","sessionData":["$ ls","a  b"]}"#
        );
        assert_eq!(chain, crate::spool::format::CHAIN_START, "no chain");
        // Nothing else is streamed in this mode.
        for direction in [
            Direction::Input,
            Direction::Gap,
            Direction::End,
            Direction::Tunnel,
            Direction::Exec,
            Direction::Exit,
            Direction::Command,
        ] {
            let record = StreamRecord {
                direction,
                ..output.clone()
            };
            assert!(stream_messages(&upstream, &record, &mut chain).is_empty());
        }
        // A record too large for one event is split, each part in the same schema.
        let big = StreamRecord {
            lines: vec!["x".repeat(200_000), "y".repeat(200_000)],
            ..output
        };
        let events = stream_messages(&upstream, &big, &mut chain);
        assert_eq!(events.len(), 2);
        for e in &events {
            assert!(e.message.len() <= MAX_MESSAGE_BYTES);
            let v: serde_json::Value = serde_json::from_str(&e.message).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 8, "{v}");
        }
        // The mode is kept beside a recording; full is the default and not written.
        let json = serde_json::to_string(&upstream).unwrap();
        assert!(json.ends_with(r#","mode":"upstream"}"#), "{json}");
        assert!(!serde_json::to_string(&fields()).unwrap().contains("mode"));
        let old: SessionFields =
            serde_json::from_str(&json.replace(r#","mode":"upstream""#, "")).unwrap();
        assert_eq!(old.mode, StreamMode::Full);
    }

    #[test]
    fn oversized_records_split_in_order_within_the_limit() {
        let line = "x".repeat(100_000);
        let record = StreamRecord {
            seq: 1,
            unix_ms: 5,
            direction: Direction::Output,
            lines: vec![
                line.clone(),
                line.clone(),
                line.clone(),
                "é".repeat(400_000),
            ],
            end: None,
            tunnel: None,
            process: None,
            command: None,
        };
        let events = stream_messages(&fields(), &record, &mut [0; 32]);
        assert!(events.len() > 2);
        let mut rebuilt = Vec::new();
        for e in &events {
            assert!(e.message.len() <= MAX_MESSAGE_BYTES, "{}", e.message.len());
            let v: serde_json::Value = serde_json::from_str(&e.message).unwrap();
            assert_eq!(v["sequence"], 1);
            for l in v["sessionData"].as_array().unwrap() {
                rebuilt.push(l.as_str().unwrap().to_owned());
            }
        }
        // Whole lines stay whole; the one huge line comes back in pieces, in order.
        assert_eq!(&rebuilt[..3], &[line.clone(), line.clone(), line]);
        assert_eq!(rebuilt[3..].concat(), "é".repeat(400_000));
    }

    fn chained(records: usize) -> Vec<String> {
        let mut chain = crate::spool::format::CHAIN_START;
        (0..records)
            .flat_map(|i| {
                let record = StreamRecord {
                    seq: i as u64,
                    unix_ms: 1000 + i as u64,
                    direction: Direction::Output,
                    lines: vec![format!("line {i}")],
                    end: None,
                    tunnel: None,
                    process: None,
                    command: None,
                };
                stream_messages(&fields(), &record, &mut chain)
            })
            .map(|e| e.message)
            .collect()
    }

    fn check_all(messages: &[String]) -> Result<(u64, u64), String> {
        let mut checker = StreamChecker::new();
        for (i, m) in messages.iter().enumerate() {
            checker.check(i as u64, m)?;
        }
        Ok((checker.messages(), checker.duplicates()))
    }

    #[test]
    fn the_stream_chain_tells_resends_from_edits_and_gaps() {
        let messages = chained(6);
        assert_eq!(check_all(&messages), Ok((6, 0)));
        // A crash re-sent messages 3 and 4 (identical, same chain values).
        let mut resent = messages.clone();
        resent.insert(5, messages[3].clone());
        resent.insert(6, messages[4].clone());
        assert_eq!(check_all(&resent), Ok((6, 2)));
        // One character changed.
        let mut edited = messages.clone();
        edited[2] = edited[2].replace("line 2", "line X");
        let err = check_all(&edited).unwrap_err();
        assert!(
            err.starts_with("event 2 (sequence 2): chain value"),
            "{err}"
        );
        // A message removed.
        let mut gap = messages.clone();
        gap.remove(3);
        let err = check_all(&gap).unwrap_err();
        assert!(err.starts_with("event 3 (sequence 4)"), "{err}");
        // Reordered.
        let mut swapped = messages.clone();
        swapped.swap(1, 2);
        assert!(check_all(&swapped).is_err());
        // Plain text (an upload at close) is not a chained stream.
        let err = check_all(&["hello".to_owned()]).unwrap_err();
        assert!(err.contains("no chain field"), "{err}");
        // The chain is a pure function of the records: derived twice, equal.
        assert_eq!(chained(6), messages);
    }

    #[test]
    fn the_fuzz_seed_stream_written_by_another_program_verifies() {
        // Written by a few lines of Python from the definition in the module docs: the
        // chain is reproducible outside this code.
        let seed = include_str!("../../fuzz/corpus/recordings/cloudwatch.jsonl");
        let lines: Vec<String> = seed.lines().map(str::to_owned).collect();
        assert_eq!(check_all(&lines), Ok((3, 1)));
    }

    #[test]
    fn input_renders_enter_as_lines_and_controls_in_caret_notation() {
        assert_eq!(render_input(b"ls -la\r"), ["ls -la"]);
        assert_eq!(render_input(b"a\r\nb\nc"), ["a", "b", "c"]);
        assert_eq!(render_input(b"vi x\x1b[A\x03\x7f"), ["vi x^[[A^C^?"]);
        assert_eq!(render_input(b"\xff"), ["\u{fffd}"]);
        assert!(render_input(b"").is_empty());
    }

    #[test]
    fn batches_respect_count_and_size_and_span() {
        let mut b = Batcher::new();
        for i in 0..25_000 {
            b.push(LogEvent {
                timestamp_ms: i,
                message: "m".into(),
            });
        }
        let batches = b.into_batches();
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [10_000, 10_000, 5_000]
        );

        let mut b = Batcher::new();
        for i in 0..8 {
            b.push(LogEvent {
                timestamp_ms: i,
                message: "y".repeat(MAX_MESSAGE_BYTES),
            });
        }
        for batch in b.into_batches() {
            assert!(batch.iter().map(LogEvent::cost).sum::<usize>() <= MAX_BATCH_BYTES);
            assert_eq!(batch.len(), 4);
        }

        let mut b = Batcher::new();
        b.push(LogEvent {
            timestamp_ms: 0,
            message: "a".into(),
        });
        b.push(LogEvent {
            timestamp_ms: MAX_BATCH_SPAN_MS + 1,
            message: "b".into(),
        });
        b.push(LogEvent {
            timestamp_ms: 5, // out of order: raised
            message: "c".into(),
        });
        let batches = b.into_batches();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1][1].timestamp_ms, MAX_BATCH_SPAN_MS + 1);
    }

    #[test]
    fn transcript_events_cut_at_line_ends() {
        assert!(transcript_events("", 1).is_empty());
        assert_eq!(transcript_events("a\nb\n", 1)[0].message, "a\nb");
        let line = format!("{}\n", "z".repeat(150_000));
        let text = line.repeat(3);
        let events = transcript_events(&text, 1);
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|e| e.message == line.trim_end()));
        let long = "q".repeat(450_000);
        let events = transcript_events(&long, 1);
        assert_eq!(events.len(), 3);
        assert_eq!(
            events
                .iter()
                .map(|e| e.message.as_str())
                .collect::<String>(),
            long
        );
    }

    proptest! {
        #[test]
        fn transcript_events_lose_nothing(text in "[a-z\n\u{e9}]{0,2000}") {
            let events = transcript_events(&text, 0);
            let joined = events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>();
            for e in &events {
                prop_assert!(e.message.len() <= MAX_MESSAGE_BYTES);
            }
            // Every non-newline character survives, in order.
            let strip = |s: &str| s.chars().filter(|c| *c != '\n').collect::<String>();
            prop_assert_eq!(strip(&joined.concat()), strip(&text));
        }

        #[test]
        fn batcher_never_breaks_limits(sizes in proptest::collection::vec(0usize..300_000, 0..40)) {
            let mut b = Batcher::new();
            for (i, n) in sizes.iter().enumerate() {
                b.push(LogEvent { timestamp_ms: i64::try_from(i).unwrap(), message: "v".repeat((*n).min(MAX_MESSAGE_BYTES)) });
            }
            let batches = b.into_batches();
            prop_assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), sizes.len());
            for batch in batches {
                prop_assert!(!batch.is_empty());
                prop_assert!(batch.len() <= MAX_BATCH_EVENTS);
                prop_assert!(batch.iter().map(LogEvent::cost).sum::<usize>() <= MAX_BATCH_BYTES);
                prop_assert!(batch.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
            }
        }
    }
}
