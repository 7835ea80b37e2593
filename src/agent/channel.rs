//! The agent's end of one data channel as a state machine: decoded frames, terminal
//! output, the shell's exit and time go in; [`Effect`]s come out. No sockets, no
//! terminal, no clock (`now` is a parameter), nothing async. `agent::session` is the
//! small pump around it: it reads the websocket and the PTY, sleeps until
//! [`Channel::next_deadline`], and carries out the effects in order.
//!
//! Why a machine: every decision a session's channel makes (which sequence number, when
//! to ack, when to stop reading the shell, when to retransmit, when the session is over)
//! is then testable with frames and instants, as `client::channel` is for the client's
//! end, and the pump keeps only what needs I/O (sends with a timeout, the reopen's dial
//! and its backoff, the keyboard queue, the recording tap).
//!
//! ```text
//!                 start_handshake ─▶ Handshake ─Encrypted─┐   (KMS only, §5)
//!  new ─▶ (no KMS) ───────────────────────────────────────┴─▶ Starting   (first Size, early keys)
//!  start ─▶ Running ── shell exited / PTY EOF ──▶ draining ──▶ End(ShellExited)
//!           │  channel_closed, cancel, limits, recording failure ─▶ End(…)
//!           └─ silence (DEAD_AFTER) or a closed socket ─▶ Reopen ─▶ on_reopened (resend all)
//! ```
//!
//! Output: read PTY chunks are sealed when the session is encrypted, given the next
//! sequence number (SYN on 0) and kept by the [`Sender`] until acknowledged; the pump
//! reads the PTY only while [`Channel::wants_output`] (room in the sender, not paused),
//! so a peer that does not acknowledge blocks the shell. Input: frames go through the
//! [`Receiver`] (reorder, duplicates re-acked) and come out as keystrokes to type or
//! sizes to apply; a frame is acknowledged only when the keyboard queue has room for
//! everything its delivery may release (§4.2's "not ready" rule), so a shell that does
//! not read its input slows the client down instead of growing a buffer.
//!
//! Pause (§4.8): `pause_publication` holds new output in the sender; `start_publication`,
//! any input and any acknowledge resume it. After the shell exits, output keeps flowing
//! until the PTY reports end of file or, [`EOF_AFTER_EXIT`] after the exit, has nothing
//! more; then unacknowledged output gets [`DRAIN`] (renewed by each ack, at most
//! [`MAX_DRAIN`]) before the session ends.

use super::budget::{MAX_DATA_MESSAGE, OUTPUT_IN_FLIGHT};
use crate::protocol::crypto::{Role, SessionCipher, CHALLENGE_LEN, ENCRYPTED_NOTICE};
use crate::protocol::frame::{AgentMessage, MessageType, PayloadType, FLAG_SYN};
use crate::protocol::payload::{
    flag, from_json, to_json, Acknowledge, EncryptionChallenge, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, KmsEncryptionParameters, KmsEncryptionResult,
    RequestedClientAction, SessionTypeParameters, Size, ACTION_STATUS_SUCCESS,
};
use crate::protocol::reliability::{
    PushOutcome, ReceiveOutcome, Receiver, ReceiverConfig, Sender, SenderConfig,
};
use bytes::Bytes;
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

/// Out-of-order input kept while waiting for a gap to fill. With the largest frame
/// ([`MAX_DATA_MESSAGE`]) it stays below the keyboard queue's budget
/// ([`INPUT_QUEUE_BYTES`]), so a delivery (the frame that fills the gap and everything
/// buffered behind it) always fits the queue once it has drained: it is accepted only
/// when it fits whole, so no acknowledged byte is ever dropped.
pub const INPUT_REORDER: usize = 512 * 1024;
const _: () = assert!(INPUT_REORDER + MAX_DATA_MESSAGE < INPUT_QUEUE_BYTES);
/// After the shell exits, how long unacknowledged output may take to drain (§6.6).
pub const DRAIN: Duration = Duration::from_secs(2);
/// After the shell exits, output keeps flowing until the PTY reports end of file; a
/// background job still holding the terminal must not keep the session open, so this is
/// how long we wait for that end of file.
pub const EOF_AFTER_EXIT: Duration = Duration::from_millis(500);
/// A data channel silent this long (no frame, no pong) is reopened (§1.5: 60 s pong wait).
pub const DEAD_AFTER: Duration = Duration::from_secs(90);
/// Upper bound on waiting for output to be acknowledged after the shell exited, however
/// steadily acks keep coming.
pub const MAX_DRAIN: Duration = Duration::from_secs(30);
/// Input queued for the PTY writer, in bytes (plus the chunk being written). Beyond it,
/// input frames are not accepted or acknowledged: the client sends them again later.
pub const INPUT_QUEUE_BYTES: usize = 1024 * 1024;
/// Keystrokes kept from before the shell started.
pub const EARLY_INPUT_MAX: usize = 64 * 1024;
/// Keepalive ping on the data channel (also when silence is checked, [`DEAD_AFTER`]).
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// How long each handshake step waits for the client (§5.7).
pub const HANDSHAKE_STEP: Duration = Duration::from_secs(15);
/// Told to the user when the client cannot do the handshake (a session type it does not
/// know).
pub const HANDSHAKE_CLIENT_HINT: &str = "the client did not complete the handshake for this session type; use a session-manager-plugin (1.1.70 or later) or session-agent connect";
/// Told to the user when the client cannot do KMS encryption.
pub const KMS_CLIENT_HINT: &str = "the client did not complete the KMS encryption handshake; use a session-manager-plugin or session-agent connect that supports KMS encryption, and allow it kms:GenerateDataKey on the key";

/// How the session ended, for agent_task_complete and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The shell exited by itself.
    ShellExited,
    /// channel_closed or daemon shutdown.
    Terminated,
    /// The data channel could not be kept open.
    ChannelLost(String),
    /// idleSessionTimeout or maxSessionDuration was reached.
    TimedOut(Limit),
    /// The agent itself could not carry on (a thread could not start).
    Internal(String),
    /// The recording could not be written and the policy is `fail-closed`.
    RecordingFailed(String),
}

/// Shown in a session that ends because its recording failed (`fail-closed`).
pub fn recording_failed_notice(reason: &str) -> String {
    format!(
        "[session-agent] This session ends now: its recording cannot be written ({reason}). The agent is set to end sessions it cannot record (recording_policy = \"fail-closed\")."
    )
}

/// Which time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// No input and no output for this long.
    Idle(Duration),
    /// The session lasted this long.
    MaxDuration(Duration),
}

impl Limit {
    fn minutes(d: Duration) -> u64 {
        d.as_secs().div_ceil(60)
    }

    /// The line shown in the session shortly before the end.
    pub fn warning(self, remaining: Duration) -> String {
        let secs = remaining.as_secs().max(1);
        match self {
            Limit::Idle(d) => format!(
                "[session-agent] No input or output for {} minute(s): this session ends in {secs} seconds unless there is activity.",
                Limit::minutes(d).saturating_sub(secs.div_ceil(60))
            ),
            Limit::MaxDuration(d) => format!(
                "[session-agent] This session reaches its maximum duration of {} minute(s) in {secs} seconds.",
                Limit::minutes(d)
            ),
        }
    }

    /// The line shown at the end, and the outcome text.
    pub fn ended(self) -> String {
        match self {
            Limit::Idle(d) => format!(
                "session ended after {} minute(s) without input or output",
                Limit::minutes(d)
            ),
            Limit::MaxDuration(d) => format!(
                "session reached its maximum duration of {} minute(s)",
                Limit::minutes(d)
            ),
        }
    }
}

/// The document's time limits, checked by the agent as well as the service (§6.8: upstream
/// leaves them to the service alone). Pure: times are parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// idleSessionTimeout.
    pub idle: Option<Duration>,
    /// maxSessionDuration.
    pub max: Option<Duration>,
}

/// What [`Limits::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitCheck {
    /// Nothing to do before `next` (if any).
    Quiet { next: Option<Instant> },
    /// Show a warning for `limit`, which ends the session at `at`.
    Warn { limit: Limit, at: Instant },
    /// End the session now.
    End(Limit),
}

impl Limits {
    /// How long before the end the warning comes: a minute, or half the limit if shorter.
    pub fn warn_before(limit: Duration) -> Duration {
        (limit / 2).min(Duration::from_secs(60))
    }

    /// Decides, given the session's start, its last activity, and the deadline already
    /// warned about (so each deadline is warned once; new activity moves the idle
    /// deadline and re-arms its warning).
    pub fn check(
        &self,
        now: Instant,
        started: Instant,
        last_activity: Instant,
        warned_for: Option<Instant>,
    ) -> LimitCheck {
        let mut candidates = Vec::new();
        if let Some(idle) = self.idle {
            candidates.push((Limit::Idle(idle), last_activity + idle));
        }
        if let Some(max) = self.max {
            candidates.push((Limit::MaxDuration(max), started + max));
        }
        let Some(&(limit, end)) = candidates.iter().min_by_key(|(_, end)| *end) else {
            return LimitCheck::Quiet { next: None };
        };
        if now >= end {
            return LimitCheck::End(limit);
        }
        let span = match limit {
            Limit::Idle(d) | Limit::MaxDuration(d) => d,
        };
        let warn_at = end - Self::warn_before(span);
        if now >= warn_at && warned_for != Some(end) {
            return LimitCheck::Warn { limit, at: end };
        }
        let next = if warned_for == Some(end) || now >= warn_at {
            end
        } else {
            warn_at
        };
        LimitCheck::Quiet { next: Some(next) }
    }
}

/// What the pump must do, in order. An [`Effect::End`] is always the last of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Put this encoded frame on the websocket.
    Send(Bytes),
    /// Send a websocket ping (keepalive).
    Ping,
    /// This terminal output (clear text) is about to be sent: record it first.
    Record(Bytes),
    /// Type these bytes into the shell (the keyboard queue; room was checked).
    Type(Vec<u8>),
    /// Apply this window size to the terminal (and record it).
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// The shell has exited: read what the terminal still holds without waiting
    /// (non-blocking), and answer with [`Channel::on_probed`].
    Probe,
    /// The channel is dead: reopen it (fresh token), then call [`Channel::on_reopened`]
    /// and send what it returns.
    Reopen,
    /// KMS Decrypt of the client's data key (the ciphertext, and the challenge when the
    /// client put it into the encryption context); answer with [`Channel::on_data_key`].
    Decrypt {
        /// The KMS ciphertext of the data key.
        blob: Vec<u8>,
        /// The handshake's challenge, when the client acknowledged it.
        challenge: Option<String>,
    },
    /// The handshake is complete (with KMS: output is sealed and input opened from now
    /// on).
    HandshakeDone,
    /// The KMS handshake failed: refuse the session with this text.
    Refuse(String),
    /// A flag from the client (PayloadType 10) other than TerminateSession, which ends
    /// the session itself: for the port forwarder (DisconnectToPort).
    Flag(u32),
    /// The session is over.
    End(Ending),
}

/// An inbound stream frame kept in the reorder buffer.
#[derive(Debug)]
struct Inbound(AgentMessage);

impl AsRef<[u8]> for Inbound {
    fn as_ref(&self) -> &[u8] {
        &self.0.payload
    }
}

/// Where the KMS handshake is (§5.2–§5.6).
#[derive(Debug)]
enum Step {
    /// HandshakeRequest sent (with this KMS challenge, when encrypting); waiting for
    /// HandshakeResponse.
    Response { challenge: Option<String> },
    /// Waiting for the pump's KMS Decrypt.
    Key,
    /// EncChallengeRequest sent; waiting for the answer.
    Challenge {
        secret: [u8; CHALLENGE_LEN],
        cipher: Box<SessionCipher>,
    },
}

#[derive(Debug)]
enum Phase {
    /// The KMS handshake, begun at `started`; `deadline` while waiting for the client.
    Handshake {
        started: Instant,
        step: Step,
        deadline: Option<Instant>,
    },
    /// Before the shell: the first Size and early keystrokes are kept.
    Starting,
    /// The shell runs (or its output drains).
    Running(Run),
    /// An [`Effect::End`] or [`Effect::Refuse`] was given: nothing more happens.
    Ended,
}

/// The running session's clocks and flags.
#[derive(Debug)]
struct Run {
    limits: Limits,
    started: Instant,
    /// Last input frame or output chunk (the idle limit).
    last_activity: Instant,
    /// The limit deadline already warned about.
    warned_for: Option<Instant>,
    /// When the limits need looking at again.
    limit_at: Option<Instant>,
    next_ping: Instant,
    /// The shell exited: the terminal is probed at this instant for more output.
    eof_at: Option<Instant>,
    /// No more output will be read.
    shell_done: bool,
    /// Draining: the session ends at this instant unless acks extend it…
    drain_at: Option<Instant>,
    /// …up to this cap.
    drain_cap: Option<Instant>,
    /// Output read while it could not be sent (the shell had exited and the peer was not
    /// taking more): sent first once it can be.
    held: Option<Vec<u8>>,
}

/// The agent side of one session's data channel. See the [module docs](self).
#[derive(Debug)]
pub struct Channel {
    session_id: String,
    sender: Sender,
    receiver: Receiver<Inbound>,
    /// Set by the KMS handshake: output sealed, input opened.
    cipher: Option<SessionCipher>,
    /// Last frame or message heard on the websocket (liveness).
    last_rx: Instant,
    phase: Phase,
    /// Keystrokes typed before the shell started.
    early_input: Vec<u8>,
    /// The client's first window size.
    size: Option<(u16, u16)>,
    /// `ClientVersion` from the HandshakeResponse.
    client_version: String,
    /// Output is terminal output, recorded as such (not for port sessions, whose bytes
    /// are the tunnel's).
    record_output: bool,
}

/// Message time; never 0 (a zero CreatedDate is refused by decoders).
fn now_ms() -> u64 {
    crate::timefmt::unix_ms(SystemTime::now()).max(1)
}

/// Whether the keyboard queue, with `room` bytes free, takes a delivery of `len` bytes
/// in all (one or more items; `bounded` counts an empty item as one byte).
fn fits(room: usize, len: usize) -> bool {
    room >= len.max(1)
}

impl Channel {
    /// A fresh channel, just opened at `now`: output numbered from 0, input expected
    /// from 0, in the starting phase.
    pub fn new(session_id: &str, now: Instant) -> Self {
        Self {
            session_id: session_id.to_owned(),
            sender: Sender::new(SenderConfig {
                max_entries: 100_000,
                max_bytes: OUTPUT_IN_FLIGHT,
            }),
            receiver: Receiver::new(ReceiverConfig {
                max_entries: 10_000,
                max_bytes: INPUT_REORDER,
            }),
            cipher: None,
            last_rx: now,
            phase: Phase::Starting,
            early_input: Vec::new(),
            size: None,
            client_version: String::new(),
            record_output: true,
        }
    }

    /// Output is not terminal output (a port session's tunnel): it is sent, never
    /// [`Effect::Record`]ed, and no notice (limits, destinations, the agent's stop) is
    /// written into it, as it would corrupt the tunnel's bytes.
    pub fn stop_recording_output(&mut self) {
        self.record_output = false;
    }

    /// Begins the handshake (§5): HandshakeRequest with SessionType (and `properties`:
    /// the document's for Port, `null` otherwise) and, with `kms` (`(key id, challenge)`,
    /// the challenge random, base64), KMSEncryption. Then, with KMS, [`Effect::Decrypt`]
    /// once the client's HandshakeResponse brings the data key, and the encryption
    /// challenge; [`Effect::HandshakeDone`] after HandshakeComplete, or
    /// [`Effect::Refuse`]. The client's version is kept ([`Channel::client_version`]).
    pub fn start_handshake(
        &mut self,
        agent_version: &str,
        session_type: &str,
        properties: serde_json::Value,
        kms: Option<(String, String)>,
        now: Instant,
    ) -> Vec<Effect> {
        let mut actions = vec![RequestedClientAction {
            action_type: "SessionType".into(),
            action_parameters: serde_json::to_value(SessionTypeParameters {
                session_type: session_type.into(),
                properties,
            })
            .unwrap_or_default(),
        }];
        let challenge = kms.map(|(kms_key_id, challenge)| {
            actions.push(RequestedClientAction {
                action_type: "KMSEncryption".into(),
                action_parameters: serde_json::to_value(KmsEncryptionParameters {
                    kms_key_id,
                    challenge: challenge.clone(),
                })
                .unwrap_or_default(),
            });
            challenge
        });
        let request = HandshakeRequest {
            agent_version: agent_version.into(),
            requested_client_actions: actions,
        };
        let mut fx = Vec::new();
        self.phase = Phase::Handshake {
            started: now,
            step: Step::Response { challenge },
            deadline: Some(now + HANDSHAKE_STEP),
        };
        if let Err(e) = self.send_stream(
            PayloadType::HandshakeRequest,
            Bytes::from(to_json(&request)),
            now,
            &mut fx,
        ) {
            self.refuse(e, &mut fx);
        }
        fx
    }

    /// The client's `ClientVersion` from its HandshakeResponse (empty without a
    /// handshake, as upstream).
    pub fn client_version(&self) -> &str {
        &self.client_version
    }

    /// The result of [`Effect::Decrypt`]: the 64-byte data key, or why KMS refused.
    pub fn on_data_key(&mut self, key: Result<Vec<u8>, String>, now: Instant) -> Vec<Effect> {
        use base64::Engine;
        let mut fx = Vec::new();
        let Phase::Handshake { step, deadline, .. } = &mut self.phase else {
            return fx;
        };
        if !matches!(step, Step::Key) {
            return fx;
        }
        let cipher = key.and_then(|key| {
            SessionCipher::new(&key, Role::Agent, rand::random()).map_err(|e| e.to_string())
        });
        let mut cipher = match cipher {
            Ok(c) => c,
            Err(e) => {
                self.refuse(e, &mut fx);
                return fx;
            }
        };
        let secret: [u8; CHALLENGE_LEN] = std::array::from_fn(|_| rand::random());
        let sealed = EncryptionChallenge {
            challenge: base64::engine::general_purpose::STANDARD.encode(cipher.seal(&secret)),
        };
        *step = Step::Challenge {
            secret,
            cipher: Box::new(cipher),
        };
        *deadline = Some(now + HANDSHAKE_STEP);
        if let Err(e) = self.send_stream(
            PayloadType::EncChallengeRequest,
            Bytes::from(to_json(&sealed)),
            now,
            &mut fx,
        ) {
            self.refuse(e, &mut fx);
        }
        fx
    }

    /// The client's first window size, once it came (before the shell starts).
    pub fn first_size(&self) -> Option<(u16, u16)> {
        self.size
    }

    /// The keystrokes typed before the shell started (taken once).
    pub fn take_early_input(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.early_input)
    }

    /// The shell started at `now`: the session runs under `limits`.
    pub fn start(&mut self, limits: Limits, now: Instant) -> Vec<Effect> {
        self.phase = Phase::Running(Run {
            limits,
            started: now,
            last_activity: now,
            warned_for: None,
            limit_at: None,
            next_ping: now + PING_EVERY,
            eof_at: None,
            shell_done: false,
            drain_at: None,
            drain_cap: None,
            held: None,
        });
        let mut fx = Vec::new();
        self.settle(now, &mut fx);
        fx
    }

    /// True while the pump should read the terminal: the shell runs, the sender has room
    /// and is not paused (back-pressure), and no held output waits.
    pub fn wants_output(&self) -> bool {
        match &self.phase {
            Phase::Running(run) => !run.shell_done && run.held.is_none() && self.can_send(),
            _ => false,
        }
    }

    /// True once the session has ended (or the handshake was refused).
    pub fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }

    /// When [`on_tick`](Self::on_tick) has something to do: a handshake step's deadline,
    /// the head-of-line retransmission, a limit's warning or end, the shell's end of
    /// file, the drain's end, the keepalive.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Handshake { deadline, .. } => *deadline,
            Phase::Running(run) => [
                self.sender.next_deadline(),
                run.limit_at,
                if run.shell_done { None } else { run.eof_at },
                run.drain_at,
                Some(run.next_ping),
            ]
            .into_iter()
            .flatten()
            .min(),
            Phase::Starting | Phase::Ended => None,
        }
    }

    /// Time passed: whatever is due at `now`.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        match &mut self.phase {
            Phase::Handshake {
                deadline: Some(d),
                step,
                ..
            } if now >= *d => {
                let (want, hint) = match step {
                    Step::Response { challenge: None } => {
                        (PayloadType::HandshakeResponse, HANDSHAKE_CLIENT_HINT)
                    }
                    Step::Response { .. } => (PayloadType::HandshakeResponse, KMS_CLIENT_HINT),
                    _ => (PayloadType::EncChallengeResponse, KMS_CLIENT_HINT),
                };
                let why = format!("{hint} (no {want:?} within {} s)", HANDSHAKE_STEP.as_secs());
                self.refuse(why, &mut fx);
                return fx;
            }
            Phase::Running(_) => {}
            _ => return fx,
        }
        let Phase::Running(run) = &mut self.phase else {
            return fx;
        };
        if run.drain_at.is_some_and(|d| now >= d) {
            self.end(Ending::ShellExited, &mut fx);
            return fx;
        }
        if !run.shell_done && run.eof_at.is_some_and(|d| now >= d) {
            if run.held.is_some() {
                // Output waits already (we are paused or full): wait for it to go.
                run.eof_at = Some(now + EOF_AFTER_EXIT);
            } else {
                run.eof_at = None;
                fx.push(Effect::Probe);
            }
        }
        let ping_due = now >= run.next_ping;
        if ping_due {
            // Every PING_EVERY; a late tick (a busy runtime) is not caught up in a burst.
            let next = run.next_ping + PING_EVERY;
            run.next_ping = if next > now { next } else { now + PING_EVERY };
        }
        if let Some(frame) = self.sender.poll_retransmit(now) {
            fx.push(Effect::Send(frame));
        }
        if ping_due {
            if now.saturating_duration_since(self.last_rx) > DEAD_AFTER {
                tracing::warn!(session = %self.session_id, "Data channel silent; reopening");
                fx.push(Effect::Reopen);
            } else {
                fx.push(Effect::Ping);
            }
        }
        self.settle(now, &mut fx);
        fx
    }

    /// Something other than a frame came on the websocket (a pong): the channel lives.
    pub fn heard(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// One binary websocket message. `input_room`: bytes free in the keyboard queue.
    pub fn on_frame(&mut self, raw: &[u8], now: Instant, input_room: usize) -> Vec<Effect> {
        self.last_rx = now;
        let mut fx = Vec::new();
        if self.is_ended() {
            return fx;
        }
        let m = match AgentMessage::decode(raw, MAX_DATA_MESSAGE) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(session = %self.session_id, error = %e, "Dropping a malformed frame");
                return fx;
            }
        };
        match self.phase {
            Phase::Handshake { .. } => self.handshake_frame(m, now, &mut fx),
            Phase::Starting => self.starting_frame(m, now, &mut fx),
            Phase::Running(_) => self.running_frame(m, now, input_room, &mut fx),
            Phase::Ended => {}
        }
        fx
    }

    /// A chunk read from the terminal (not empty).
    pub fn on_output(&mut self, bytes: &[u8], now: Instant) -> Vec<Effect> {
        self.on_output_as(PayloadType::Output, bytes, now)
    }

    /// A chunk of output of this payload type (not empty): standard output (1), a
    /// command's standard error (11, StdErr) or its exit code message (12, ExitCode).
    /// Recorded (the user sees all three) and sealed when encrypted, as upstream.
    pub fn on_output_as(
        &mut self,
        payload_type: PayloadType,
        bytes: &[u8],
        now: Instant,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let can_send = self.can_send();
        let Phase::Running(run) = &mut self.phase else {
            return fx;
        };
        run.last_activity = now;
        if can_send {
            self.send_output_as(
                payload_type,
                Bytes::copy_from_slice(bytes),
                true,
                now,
                &mut fx,
            );
        } else {
            // Read without room (the pump reads only while there is): kept, not lost.
            run.held
                .get_or_insert_with(Vec::new)
                .extend_from_slice(bytes);
        }
        self.settle(now, &mut fx);
        fx
    }

    /// The terminal reported end of file (no process holds it) or a failed read.
    pub fn on_pty_eof(&mut self, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Phase::Running(run) = &mut self.phase {
            Self::done_reading(run, now);
            self.settle(now, &mut fx);
        }
        fx
    }

    /// The shell process exited: its output is read until end of file, or until the
    /// terminal has nothing more [`EOF_AFTER_EXIT`] later (a background job may hold it).
    pub fn on_shell_exited(&mut self, now: Instant) -> Vec<Effect> {
        if let Phase::Running(run) = &mut self.phase {
            run.eof_at = Some(now + EOF_AFTER_EXIT);
        }
        Vec::new()
    }

    /// The answer to [`Effect::Probe`]: what a non-blocking read found (`None`: nothing).
    pub fn on_probed(&mut self, found: Option<Vec<u8>>, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Phase::Running(run) = &mut self.phase else {
            return fx;
        };
        match found {
            Some(bytes) if !bytes.is_empty() => {
                // More came: held until it can be sent, and the terminal looked at again.
                run.held
                    .get_or_insert_with(Vec::new)
                    .extend_from_slice(&bytes);
                run.eof_at = Some(now + EOF_AFTER_EXIT);
            }
            // Nothing more is coming (a background job may still hold the terminal; it
            // is killed on terminate).
            _ => Self::done_reading(run, now),
        }
        self.settle(now, &mut fx);
        fx
    }

    /// The websocket closed or failed: reopen.
    pub fn on_socket_closed(&mut self, now: Instant) -> Vec<Effect> {
        self.last_rx = now;
        if self.is_ended() {
            return Vec::new();
        }
        vec![Effect::Reopen]
    }

    /// The channel was reopened at `now`: every unacknowledged frame, to send again (the
    /// client discards duplicates). A drain under way starts again.
    pub fn on_reopened(&mut self, now: Instant) -> Vec<Bytes> {
        let frames = self.sender.retransmit_all(now);
        if let Phase::Running(run) = &mut self.phase {
            if run.shell_done {
                run.drain_at = Some(now + DRAIN);
            }
        }
        tracing::info!(session = %self.session_id, resent = frames.len(), "Data channel reopened");
        frames
    }

    /// The session is cancelled (channel_closed on the control channel, agent stop).
    pub fn on_cancel(&mut self) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.end(Ending::Terminated, &mut fx);
        fx
    }

    /// The recording cannot be written and the policy is fail-closed: say so, then end.
    pub fn on_recording_failed(&mut self, reason: &str, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.is_ended() {
            return fx;
        }
        let _ = self.notice_into(&recording_failed_notice(reason), now, &mut fx);
        self.end(Ending::RecordingFailed(reason.to_owned()), &mut fx);
        fx
    }

    /// A line written into the session as output (not recorded), in any phase.
    ///
    /// # Errors
    /// No room in the sender: a sequence number taken without room would be lost and
    /// stall the client.
    pub fn notice(&mut self, text: &str, now: Instant) -> Result<Vec<Effect>, String> {
        let mut fx = Vec::new();
        self.notice_into(text, now, &mut fx)?;
        Ok(fx)
    }

    fn notice_into(
        &mut self,
        text: &str,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Result<(), String> {
        if !self.record_output {
            // A tunnel: the text would be taken for the destination's bytes.
            return Ok(());
        }
        if !self.sender.has_capacity() {
            return Err("no room for a notice while output is backed up".into());
        }
        self.send_output(Bytes::from(format!("\r\n{text}\r\n")), false, now, fx);
        Ok(())
    }

    /// A flag for the client (PayloadType 10; multiplexed port sessions only: other
    /// clients would write it into the tunnel).
    ///
    /// # Errors
    /// No room in the sender while output is backed up.
    pub fn send_flag(&mut self, value: u32, now: Instant) -> Result<Vec<Effect>, String> {
        if !self.sender.has_capacity() {
            return Err("no room for a flag while output is backed up".into());
        }
        let mut fx = Vec::new();
        self.send_stream(
            PayloadType::Flag,
            Bytes::copy_from_slice(&flag::encode(value)),
            now,
            &mut fx,
        )?;
        Ok(fx)
    }

    fn can_send(&self) -> bool {
        !self.sender.is_paused() && self.sender.has_capacity()
    }

    fn done_reading(run: &mut Run, now: Instant) {
        run.shell_done = true;
        run.drain_at = Some(now + DRAIN);
        run.drain_cap = Some(now + MAX_DRAIN);
    }

    fn end(&mut self, ending: Ending, fx: &mut Vec<Effect>) {
        if !self.is_ended() {
            self.phase = Phase::Ended;
            fx.push(Effect::End(ending));
        }
    }

    fn refuse(&mut self, why: String, fx: &mut Vec<Effect>) {
        self.phase = Phase::Ended;
        fx.push(Effect::Refuse(why));
    }

    /// What follows from the state after every input: held output sent when it can be,
    /// the end once the shell is done and everything is acknowledged, the limits.
    fn settle(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        loop {
            let can_send = self.can_send();
            let empty = self.sender.is_empty();
            let Phase::Running(run) = &mut self.phase else {
                return;
            };
            if run.shell_done && run.held.is_none() && empty {
                self.end(Ending::ShellExited, fx);
                return;
            }
            if can_send {
                if let Some(bytes) = run.held.take() {
                    self.send_output(Bytes::from(bytes), true, now, fx);
                    continue;
                }
            }
            match run
                .limits
                .check(now, run.started, run.last_activity, run.warned_for)
            {
                LimitCheck::End(limit) => {
                    let _ =
                        self.notice_into(&format!("[session-agent] {}.", limit.ended()), now, fx);
                    self.end(Ending::TimedOut(limit), fx);
                    return;
                }
                LimitCheck::Warn { limit, at } => {
                    run.warned_for = Some(at);
                    let text = limit.warning(at.saturating_duration_since(now));
                    let _ = self.notice_into(&text, now, fx);
                }
                LimitCheck::Quiet { next } => {
                    run.limit_at = next;
                    return;
                }
            }
        }
    }

    /// Output for the peer: recorded first (`record`: terminal output, not a notice),
    /// sealed when encrypted, sent as one sequenced frame.
    fn send_output(&mut self, bytes: Bytes, record: bool, now: Instant, fx: &mut Vec<Effect>) {
        self.send_output_as(PayloadType::Output, bytes, record, now, fx);
    }

    fn send_output_as(
        &mut self,
        payload_type: PayloadType,
        bytes: Bytes,
        record: bool,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        if record && self.record_output {
            fx.push(Effect::Record(bytes.clone()));
        }
        let bytes = match &mut self.cipher {
            Some(c) => Bytes::from(c.seal(&bytes)),
            None => bytes,
        };
        if let Err(e) = self.send_stream(payload_type, bytes, now, fx) {
            tracing::debug!(session = %self.session_id, error = %e, "Cannot encode output");
        }
    }

    /// One sequenced `output_stream_data` frame (SYN on number 0), sent now unless
    /// paused (then sent on resume).
    fn send_stream(
        &mut self,
        payload_type: PayloadType,
        bytes: Bytes,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Result<(), String> {
        // The one frame that cannot be encoded, refused before a number is taken: a
        // number taken and not pushed would stall the peer.
        if bytes.is_empty() {
            return Err("an empty payload is not sent".into());
        }
        let seq = self.sender.next_sequence();
        let msg = AgentMessage::new(
            MessageType::OutputStreamData,
            payload_type,
            bytes,
            now_ms(),
            Uuid::new_v4(),
        )
        .with_sequence(seq, if seq == 0 { FLAG_SYN } else { 0 });
        let frame = match msg.encode() {
            Ok(f) => f,
            Err(e) => return Err(e.to_string()),
        };
        match self.sender.push(seq, msg.message_id, frame.clone(), now) {
            PushOutcome::Transmit => fx.push(Effect::Send(frame)),
            // Paused: kept, sent on resume. Full cannot happen (callers check for room).
            PushOutcome::Held | PushOutcome::Full | PushOutcome::DuplicateSequence => {}
        }
        Ok(())
    }

    fn resume(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        fx.extend(self.sender.resume(now).into_iter().map(Effect::Send));
    }

    fn on_ack(&mut self, m: &AgentMessage, now: Instant) {
        if let Ok(ack) = from_json::<Acknowledge>(&m.payload, "acknowledge") {
            self.sender
                .on_ack(ack.acknowledged_message_sequence_number, now);
        }
    }

    /// Feeds one input frame to the reorder buffer and acknowledges it when accepted;
    /// what it delivers, in order.
    fn accept(&mut self, m: AgentMessage, fx: &mut Vec<Effect>) -> Vec<AgentMessage> {
        let ack = Acknowledge::frame_for(&m, now_ms(), Uuid::new_v4()).encode();
        let outcome = self.receiver.on_frame(m.sequence_number, Inbound(m));
        if let (false, Ok(ack)) = (matches!(outcome, ReceiveOutcome::Full), ack) {
            fx.push(Effect::Send(ack));
        }
        match outcome {
            ReceiveOutcome::Deliver { items } => items.into_iter().map(|Inbound(m)| m).collect(),
            _ => Vec::new(),
        }
    }

    /// Opens an input payload when the session is encrypted (`None`: not decryptable,
    /// dropped with a warning).
    fn open_input(&self, payload: &[u8]) -> Option<Vec<u8>> {
        match &self.cipher {
            None => Some(payload.to_vec()),
            Some(c) => match c.open(payload) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(session = %self.session_id, error = %e, "Dropping input that does not decrypt");
                    None
                }
            },
        }
    }

    /// During the handshake: input is acknowledged, but only the payload the current
    /// step waits for is used (other input is dropped, as upstream does).
    fn handshake_frame(&mut self, m: AgentMessage, now: Instant, fx: &mut Vec<Effect>) {
        match m.message_type {
            MessageType::InputStreamData => {
                let want = match &self.phase {
                    Phase::Handshake {
                        step: Step::Response { .. },
                        ..
                    } => PayloadType::HandshakeResponse,
                    Phase::Handshake {
                        step: Step::Challenge { .. },
                        ..
                    } => PayloadType::EncChallengeResponse,
                    _ => PayloadType::Null,
                };
                let delivered = self.accept(m, fx);
                if let Some(item) = delivered.into_iter().find(|i| i.payload_type == want) {
                    let step = match want {
                        PayloadType::HandshakeResponse => {
                            self.on_handshake_response(&item.payload, now, fx)
                        }
                        _ => self.on_challenge_answer(&item.payload, now, fx),
                    };
                    if let Err(why) = step {
                        self.refuse(why, fx);
                    }
                }
            }
            MessageType::Acknowledge => self.on_ack(&m, now),
            MessageType::PausePublication => self.sender.pause(),
            MessageType::StartPublication => self.resume(now, fx),
            MessageType::ChannelClosed => {
                self.refuse(
                    "the client closed the session during the handshake".into(),
                    fx,
                );
            }
            _ => {}
        }
    }

    /// The client's HandshakeResponse: every action done, the data key's ciphertext.
    fn on_handshake_response(
        &mut self,
        raw: &[u8],
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Result<(), String> {
        use base64::Engine;
        let Phase::Handshake {
            step,
            deadline,
            started,
        } = &mut self.phase
        else {
            return Ok(());
        };
        let started = *started;
        let Step::Response { challenge } = step else {
            return Ok(());
        };
        let response: HandshakeResponse =
            from_json(raw, "HandshakeResponse").map_err(|e| e.to_string())?;
        let hint = if challenge.is_some() {
            KMS_CLIENT_HINT
        } else {
            HANDSHAKE_CLIENT_HINT
        };
        let mut result = None;
        for action in &response.processed_client_actions {
            if action.action_status != ACTION_STATUS_SUCCESS {
                return Err(format!(
                    "{hint} ({} {}: {})",
                    action.action_type,
                    match action.action_status {
                        2 => "failed",
                        3 => "unsupported",
                        _ => "not done",
                    },
                    action.error
                ));
            }
            if action.action_type == "KMSEncryption" {
                result = Some(
                    serde_json::from_value::<KmsEncryptionResult>(action.action_result.clone())
                        .map_err(|e| {
                            format!("the client's KMSEncryption result is unreadable: {e}")
                        })?,
                );
            }
        }
        let Some(kms_challenge) = challenge.take() else {
            // No encryption: the handshake is complete.
            self.client_version = response.client_version;
            self.phase = Phase::Starting;
            return self.complete_handshake(started, "", now, fx);
        };
        let result = result.ok_or_else(|| KMS_CLIENT_HINT.to_owned())?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(result.kms_cipher_text_key.as_bytes())
            .map_err(|e| format!("the client's KMSCipherTextKey is not base64: {e}"))?;
        let challenge = result.challenge_acknowledgement.then_some(kms_challenge);
        self.client_version = response.client_version;
        *step = Step::Key;
        *deadline = None;
        fx.push(Effect::Decrypt { blob, challenge });
        Ok(())
    }

    /// The client's answer to the encryption challenge: our secret, opened with its key
    /// and sealed again. HandshakeComplete, and the session is encrypted from here on.
    fn on_challenge_answer(
        &mut self,
        raw: &[u8],
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Result<(), String> {
        use base64::Engine;
        let Phase::Handshake { step, started, .. } = &mut self.phase else {
            return Ok(());
        };
        let started = *started;
        let Step::Challenge { secret, cipher } = step else {
            return Ok(());
        };
        let answer: EncryptionChallenge =
            from_json(raw, "EncChallengeResponse").map_err(|e| e.to_string())?;
        let opened = base64::engine::general_purpose::STANDARD
            .decode(answer.challenge.as_bytes())
            .map_err(|e| format!("the encryption challenge answer is not base64: {e}"))
            .and_then(|sealed| cipher.open(&sealed).map_err(|e| e.to_string()))?;
        if opened != secret[..] {
            return Err("the client answered the encryption challenge wrongly".into());
        }
        let Phase::Handshake {
            step: Step::Challenge { cipher, .. },
            ..
        } = std::mem::replace(&mut self.phase, Phase::Starting)
        else {
            return Ok(());
        };
        // HandshakeComplete itself is never sealed (`send_stream` does not seal).
        self.cipher = Some(*cipher);
        self.complete_handshake(started, ENCRYPTED_NOTICE, now, fx)
    }

    /// HandshakeComplete (how long the handshake took since `started`, and the message
    /// the client prints), then [`Effect::HandshakeDone`].
    fn complete_handshake(
        &mut self,
        started: Instant,
        customer_message: &str,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Result<(), String> {
        let complete = HandshakeComplete {
            handshake_time_to_complete: i64::try_from(
                now.saturating_duration_since(started).as_nanos(),
            )
            .unwrap_or(i64::MAX),
            customer_message: customer_message.into(),
        };
        self.send_stream(
            PayloadType::HandshakeComplete,
            Bytes::from(to_json(&complete)),
            now,
            fx,
        )?;
        fx.push(Effect::HandshakeDone);
        Ok(())
    }

    /// Before the shell: the first Size is kept for its spawn, keystrokes for its first
    /// input (up to [`EARLY_INPUT_MAX`]; beyond, frames are not acknowledged and the
    /// client sends them again later).
    fn starting_frame(&mut self, m: AgentMessage, now: Instant, fx: &mut Vec<Effect>) {
        match m.message_type {
            MessageType::InputStreamData => {
                if self.early_input.len() >= EARLY_INPUT_MAX {
                    return;
                }
                for item in self.accept(m, fx) {
                    match item.payload_type {
                        PayloadType::Size => {
                            if let Some(size) = parse_size(&item.payload) {
                                self.size = Some(size);
                            }
                        }
                        PayloadType::Output => {
                            if let Some(plain) = self.open_input(&item.payload) {
                                self.early_input.extend_from_slice(&plain);
                            }
                        }
                        PayloadType::Flag
                            if flag::decode(&item.payload) == Some(flag::TERMINATE_SESSION) =>
                        {
                            self.end(Ending::Terminated, fx);
                            return;
                        }
                        _ => {}
                    }
                }
            }
            MessageType::Acknowledge => self.on_ack(&m, now),
            MessageType::PausePublication => self.sender.pause(),
            MessageType::StartPublication => self.resume(now, fx),
            MessageType::ChannelClosed => self.end(Ending::Terminated, fx),
            _ => {}
        }
    }

    /// While the shell runs.
    fn running_frame(&mut self, m: AgentMessage, now: Instant, room: usize, fx: &mut Vec<Effect>) {
        let unacked_before = self.sender.len();
        match m.message_type {
            MessageType::InputStreamData => {
                if let Phase::Running(run) = &mut self.phase {
                    run.last_activity = now;
                }
                // Any input also lifts a pause (§4.8).
                self.resume(now, fx);
                // The shell is not reading (say, a paste into `sleep`): do not accept or
                // acknowledge more than the queue holds, in bytes; the client retransmits
                // later (the "not ready" rule, §4.2). Room for everything a delivery can
                // release: this frame and the out-of-order input buffered behind it.
                if !fits(room, m.payload.len() + self.receiver.buffered_bytes()) {
                    self.settle(now, fx);
                    return;
                }
                for item in self.accept(m, fx) {
                    match item.payload_type {
                        PayloadType::Output => {
                            // Nothing to type for an empty payload (and a delivery of
                            // many would cost the queue a byte each).
                            if let Some(plain) =
                                self.open_input(&item.payload).filter(|p| !p.is_empty())
                            {
                                fx.push(Effect::Type(plain));
                            }
                        }
                        PayloadType::Size => {
                            if let Some((cols, rows)) = parse_size(&item.payload) {
                                fx.push(Effect::Resize { cols, rows });
                            }
                        }
                        PayloadType::Flag => match flag::decode(&item.payload) {
                            Some(flag::TERMINATE_SESSION) => {
                                tracing::info!(session = %self.session_id, "The client asked to end the session (TerminateSession flag)");
                                self.end(Ending::Terminated, fx);
                                return;
                            }
                            Some(value) => fx.push(Effect::Flag(value)),
                            None => {
                                tracing::debug!(session = %self.session_id, "Ignoring a flag that is not four bytes");
                            }
                        },
                        other => {
                            tracing::debug!(session = %self.session_id, ?other, "Ignoring input payload type");
                        }
                    }
                }
            }
            MessageType::Acknowledge => {
                self.on_ack(&m, now);
                self.resume(now, fx);
            }
            MessageType::PausePublication => self.sender.pause(),
            MessageType::StartPublication => self.resume(now, fx),
            MessageType::ChannelClosed => {
                self.end(Ending::Terminated, fx);
                return;
            }
            other => {
                tracing::debug!(session = %self.session_id, message_type = %other, "Ignoring data-channel message");
            }
        }
        // While draining, every acknowledged frame buys more time (up to a cap).
        if let Phase::Running(run) = &mut self.phase {
            if run.shell_done && self.sender.len() < unacked_before {
                let extended = now + DRAIN;
                run.drain_at = Some(run.drain_cap.map_or(extended, |cap| extended.min(cap)));
            }
        }
        self.settle(now, fx);
    }
}

fn parse_size(payload: &[u8]) -> Option<(u16, u16)> {
    let s: Size = from_json(payload, "size").ok()?;
    // TIOCSWINSZ takes u16; upstream truncates, we clamp.
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX).max(1);
    Some((clamp(s.cols), clamp(s.rows)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ROOM: usize = INPUT_QUEUE_BYTES;

    fn frame(t: MessageType, seq: i64, pt: PayloadType, payload: &[u8]) -> Bytes {
        AgentMessage::new(t, pt, payload.to_vec(), 1, Uuid::new_v4())
            .with_sequence(seq, 0)
            .encode()
            .unwrap()
    }

    fn input(seq: i64, payload: &[u8]) -> Bytes {
        frame(
            MessageType::InputStreamData,
            seq,
            PayloadType::Output,
            payload,
        )
    }

    fn size(seq: i64, cols: u32, rows: u32) -> Bytes {
        let s = to_json(&json!({"cols": cols, "rows": rows}));
        frame(MessageType::InputStreamData, seq, PayloadType::Size, &s)
    }

    fn control(t: MessageType) -> Bytes {
        frame(t, 0, PayloadType::Null, b"{}")
    }

    fn decode(b: &Bytes) -> AgentMessage {
        AgentMessage::decode(b, MAX_DATA_MESSAGE).unwrap()
    }

    /// The acknowledge the client sends for `sent`.
    fn ack_of(sent: &AgentMessage) -> Bytes {
        Acknowledge::frame_for(sent, 1, Uuid::new_v4())
            .encode()
            .unwrap()
    }

    fn sends(fx: &[Effect]) -> Vec<AgentMessage> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Send(b) => Some(decode(b)),
                _ => None,
            })
            .collect()
    }

    /// The stream frames among the sends (output and handshake), as (seq, payload).
    fn outputs(fx: &[Effect]) -> Vec<(i64, Vec<u8>)> {
        sends(fx)
            .into_iter()
            .filter(|m| m.message_type == MessageType::OutputStreamData)
            .map(|m| (m.sequence_number, m.payload.to_vec()))
            .collect()
    }

    fn acks(fx: &[Effect]) -> Vec<i64> {
        sends(fx)
            .into_iter()
            .filter(|m| m.message_type == MessageType::Acknowledge)
            .map(|m| {
                from_json::<Acknowledge>(&m.payload, "ack")
                    .unwrap()
                    .acknowledged_message_sequence_number
            })
            .collect()
    }

    fn typed(fx: &[Effect]) -> Vec<u8> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Type(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn ends(fx: &[Effect]) -> Option<&Ending> {
        match fx.last() {
            Some(Effect::End(e)) => Some(e),
            _ => None,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn running(limits: Limits) -> (Channel, Instant) {
        let t0 = Instant::now();
        let mut c = Channel::new("s-1", t0);
        assert!(c.start(limits, t0).is_empty());
        (c, t0)
    }

    #[test]
    fn output_is_numbered_from_zero_with_syn_recorded_first_and_held_until_acked() {
        let (mut c, t0) = running(Limits::default());
        assert!(c.wants_output());
        let fx = c.on_output(b"hello", t0);
        assert_eq!(fx[0], Effect::Record(Bytes::from_static(b"hello")));
        let first = sends(&fx).remove(0);
        assert_eq!(
            (
                first.message_type.clone(),
                first.sequence_number,
                first.flags
            ),
            (MessageType::OutputStreamData, 0, FLAG_SYN)
        );
        assert_eq!(&first.payload[..], b"hello");
        let fx = c.on_output(b"world", t0);
        let second = sends(&fx).remove(0);
        assert_eq!((second.sequence_number, second.flags), (1, 0));
        assert_eq!(c.sender.len(), 2);
        // Acks, in any order, remove what they name; a repeated ack is harmless.
        assert!(c.on_frame(&ack_of(&second), t0, ROOM).is_empty());
        assert!(c.on_frame(&ack_of(&second), t0, ROOM).is_empty());
        assert_eq!(c.sender.len(), 1);
        c.on_frame(&ack_of(&first), t0, ROOM);
        assert!(c.sender.is_empty());
        // Nothing to retransmit: only the keepalive is due.
        assert_eq!(c.next_deadline(), Some(t0 + PING_EVERY));
    }

    #[test]
    fn a_full_sender_stops_the_reading() {
        let (mut c, t0) = running(Limits::default());
        c.sender = Sender::new(SenderConfig {
            max_entries: 1,
            max_bytes: 1 << 20,
        });
        let sent = sends(&c.on_output(b"a", t0)).remove(0);
        assert!(!c.wants_output(), "no room until the first is acked");
        c.on_frame(&ack_of(&sent), t0, ROOM);
        assert!(c.wants_output());
    }

    #[test]
    fn pause_holds_output_and_start_publication_input_or_an_ack_resumes_it() {
        let (mut c, t0) = running(Limits::default());
        assert!(c
            .on_frame(&control(MessageType::PausePublication), t0, ROOM)
            .is_empty());
        assert!(!c.wants_output(), "paused: the terminal is not read");
        // A notice while paused is numbered and kept, not sent; no retransmission either.
        assert!(c.notice("note", t0).unwrap().is_empty());
        assert_eq!(c.next_deadline(), Some(t0 + PING_EVERY));
        let fx = c.on_frame(&control(MessageType::StartPublication), t0, ROOM);
        assert_eq!(outputs(&fx), [(0, b"\r\nnote\r\n".to_vec())]);
        let note = sends(&fx).remove(0);
        assert!(c.wants_output());
        // Input lifts a pause too (§4.8)…
        c.on_frame(&control(MessageType::PausePublication), t0, ROOM);
        c.notice("two", t0).unwrap();
        let fx = c.on_frame(&input(0, b"x"), t0, ROOM);
        assert_eq!(outputs(&fx), [(1, b"\r\ntwo\r\n".to_vec())]);
        assert_eq!(acks(&fx), [0]);
        // …and so does an acknowledge.
        c.on_frame(&control(MessageType::PausePublication), t0, ROOM);
        c.notice("three", t0).unwrap();
        let fx = c.on_frame(&ack_of(&note), t0, ROOM);
        assert_eq!(outputs(&fx), [(2, b"\r\nthree\r\n".to_vec())]);
        assert!(c.wants_output());
    }

    #[test]
    fn the_oldest_unacked_frame_is_sent_again_at_its_deadline_not_before() {
        let (mut c, t0) = running(Limits::default());
        let sent = sends(&c.on_output(b"x", t0)).remove(0);
        let due = c.next_deadline().unwrap();
        assert!(due > t0 && due < t0 + PING_EVERY);
        assert!(c.on_tick(due - Duration::from_millis(1)).is_empty());
        let again = sends(&c.on_tick(due));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message_id, sent.message_id);
        assert_eq!(again[0].sequence_number, 0);
        // Acked: nothing more to send.
        c.on_frame(&ack_of(&sent), due, ROOM);
        assert_eq!(c.next_deadline(), Some(t0 + PING_EVERY));
    }

    #[test]
    fn input_is_reordered_typed_once_and_duplicates_are_acked_again() {
        let (mut c, t0) = running(Limits::default());
        let fx = c.on_frame(&input(1, b"b"), t0, ROOM);
        assert_eq!(acks(&fx), [1]);
        assert!(typed(&fx).is_empty());
        let fx = c.on_frame(&input(0, b"a"), t0, ROOM);
        assert_eq!(acks(&fx), [0]);
        assert_eq!(typed(&fx), b"ab");
        for dup in [input(0, b"a"), input(1, b"b")] {
            let fx = c.on_frame(&dup, t0, ROOM);
            assert_eq!(acks(&fx).len(), 1, "a duplicate is acked again");
            assert!(typed(&fx).is_empty(), "and not typed again");
        }
        // A frame that does not decode is dropped without an ack.
        assert!(c.on_frame(b"garbage", t0, ROOM).is_empty());
    }

    #[test]
    fn input_is_not_acknowledged_while_the_keyboard_queue_has_no_room() {
        let (mut c, t0) = running(Limits::default());
        assert!(c.on_frame(&input(0, b"abc"), t0, 2).is_empty());
        // The client retransmits; with room it is taken.
        let fx = c.on_frame(&input(0, b"abc"), t0, 3);
        assert_eq!((acks(&fx), typed(&fx)), (vec![0], b"abc".to_vec()));
        // Room is needed for the frame and what is buffered behind it.
        assert_eq!(acks(&c.on_frame(&input(2, b"zz"), t0, ROOM)), [2]);
        assert!(c.on_frame(&input(1, b"y"), t0, 2).is_empty());
        let fx = c.on_frame(&input(1, b"y"), t0, 3);
        assert_eq!((acks(&fx), typed(&fx)), (vec![1], b"yzz".to_vec()));
    }

    #[test]
    fn a_gap_filled_behind_a_large_buffer_is_taken_only_when_all_of_it_fits() {
        // Frames 1.. arrive before 0 (the client's window is large): buffered, acked.
        let (mut c, t0) = running(Limits::default());
        let frame = vec![b'x'; 16 * 1024];
        let mut buffered = 0;
        for seq in 1..100 {
            let fx = c.on_frame(&input(seq, &frame), t0, ROOM);
            if acks(&fx).is_empty() {
                break;
            }
            buffered += frame.len();
        }
        assert!(buffered <= INPUT_REORDER, "{buffered}");
        assert!(buffered + frame.len() > ROOM / 2);
        // The gap's frame with less room than it and everything behind it: not taken,
        // not acknowledged (the client sends it again), nothing typed and so nothing lost.
        let need = frame.len() + buffered;
        assert!(c.on_frame(&input(0, &frame), t0, need - 1).is_empty());
        // With room for all of it, all of it is typed, in order.
        let fx = c.on_frame(&input(0, &frame), t0, need);
        assert_eq!(acks(&fx), [0]);
        assert_eq!(typed(&fx).len(), need);
    }

    #[test]
    fn size_resizes_the_terminal_clamped_to_what_it_takes() {
        let (mut c, t0) = running(Limits::default());
        let fx = c.on_frame(&size(0, 100, 30), t0, ROOM);
        assert_eq!(acks(&fx), [0]);
        assert!(fx.contains(&Effect::Resize {
            cols: 100,
            rows: 30
        }));
        let fx = c.on_frame(&size(1, 70_000, 0), t0, ROOM);
        assert!(fx.contains(&Effect::Resize {
            cols: u16::MAX,
            rows: 1
        }));
    }

    #[test]
    fn channel_closed_cancel_and_a_recording_failure_end_the_session() {
        let (mut c, t0) = running(Limits::default());
        let fx = c.on_frame(&control(MessageType::ChannelClosed), t0, ROOM);
        assert_eq!(fx, [Effect::End(Ending::Terminated)]);
        assert!(c.is_ended() && !c.wants_output());
        assert!(c.on_frame(&input(0, b"late"), t0, ROOM).is_empty());
        assert!(c.on_tick(t0 + secs(3600)).is_empty());

        let (mut c, _) = running(Limits::default());
        assert_eq!(c.on_cancel(), [Effect::End(Ending::Terminated)]);

        let (mut c, t0) = running(Limits::default());
        let fx = c.on_recording_failed("disk full", t0);
        assert!(String::from_utf8_lossy(&outputs(&fx)[0].1).contains("disk full"));
        assert_eq!(
            ends(&fx),
            Some(&Ending::RecordingFailed("disk full".into()))
        );
    }

    #[test]
    fn the_idle_limit_warns_then_ends_and_input_rearms_it() {
        let idle = secs(600);
        let (mut c, t0) = running(Limits {
            idle: Some(idle),
            max: None,
        });
        let text = |fx: &[Effect]| {
            outputs(fx)
                .into_iter()
                .map(|(_, p)| String::from_utf8(p).unwrap())
                .collect::<String>()
        };
        c.heard(t0 + secs(530));
        let fx = c.on_tick(t0 + secs(540));
        assert!(text(&fx).contains("ends in 60 seconds"), "{fx:?}");
        assert!(ends(&fx).is_none());
        // Typing moves the deadline; the warning comes again for the new one.
        let typed_at = t0 + secs(570);
        c.on_frame(&input(0, b"x"), typed_at, ROOM);
        assert!(ends(&c.on_tick(t0 + secs(600))).is_none());
        c.heard(typed_at + secs(530));
        let fx = c.on_tick(typed_at + secs(540));
        assert!(text(&fx).contains("ends in 60 seconds"), "{fx:?}");
        c.heard(typed_at + secs(590));
        let fx = c.on_tick(typed_at + idle);
        assert!(text(&fx).contains("without input or output"), "{fx:?}");
        assert_eq!(ends(&fx), Some(&Ending::TimedOut(Limit::Idle(idle))));
    }

    #[test]
    fn after_the_exit_output_drains_and_the_session_ends_once_it_is_acked() {
        let (mut c, t0) = running(Limits::default());
        let sent = sends(&c.on_output(b"bye", t0)).remove(0);
        assert!(c.on_shell_exited(t0).is_empty());
        assert!(c.wants_output(), "output is read until the end of file");
        // Half a second later the terminal is looked at once more: nothing.
        let at = t0 + EOF_AFTER_EXIT;
        assert!(c.on_tick(at).contains(&Effect::Probe));
        assert!(
            ends(&c.on_probed(None, at)).is_none(),
            "bye is not acked yet"
        );
        assert!(!c.wants_output());
        let fx = c.on_frame(&ack_of(&sent), at, ROOM);
        assert_eq!(fx, [Effect::End(Ending::ShellExited)]);
    }

    #[test]
    fn a_drain_ends_at_its_deadline_each_ack_buying_time() {
        let (mut c, t0) = running(Limits::default());
        let first = sends(&c.on_output(b"1", t0)).remove(0);
        c.on_output(b"2", t0);
        assert!(c.on_pty_eof(t0).is_empty());
        assert_eq!(c.run().drain_at, Some(t0 + DRAIN));
        let acked_at = t0 + Duration::from_millis(1500);
        assert!(c.on_frame(&ack_of(&first), acked_at, ROOM).is_empty());
        assert!(
            ends(&c.on_tick(t0 + DRAIN)).is_none(),
            "the ack bought time"
        );
        let fx = c.on_tick(acked_at + DRAIN);
        assert_eq!(ends(&fx), Some(&Ending::ShellExited));
        // Acks never extend a drain beyond MAX_DRAIN.
        let (mut c, t0) = running(Limits::default());
        for i in 0..40u8 {
            c.on_output(&[i], t0);
        }
        c.on_pty_eof(t0);
        let frames: Vec<_> = c.sender.retransmit_all(t0).iter().map(decode).collect();
        for (i, f) in frames.iter().take(39).enumerate() {
            let at = t0 + secs(1) * u32::try_from(i).unwrap();
            c.on_frame(&ack_of(f), at, ROOM);
        }
        assert_eq!(c.run().drain_at, Some(t0 + MAX_DRAIN));
        // A reopen while draining gives the resent frames a fresh DRAIN.
        let reopened = t0 + secs(29);
        c.on_reopened(reopened);
        assert_eq!(c.run().drain_at, Some(reopened + DRAIN));
    }

    #[test]
    fn output_found_after_the_exit_is_held_until_it_can_be_sent() {
        let (mut c, t0) = running(Limits::default());
        c.on_frame(&control(MessageType::PausePublication), t0, ROOM);
        c.on_shell_exited(t0);
        let at = t0 + EOF_AFTER_EXIT;
        assert!(c.on_tick(at).contains(&Effect::Probe));
        assert!(c.on_probed(Some(b"late".to_vec()), at).is_empty(), "paused");
        // Held output keeps the terminal open for more; no new probe meanwhile.
        let later = at + EOF_AFTER_EXIT;
        assert!(!c.on_tick(later).contains(&Effect::Probe));
        let fx = c.on_frame(&control(MessageType::StartPublication), later, ROOM);
        assert_eq!(fx[0], Effect::Record(Bytes::from_static(b"late")));
        let sent = sends(&fx).remove(0);
        assert_eq!(&sent.payload[..], b"late");
        let at = later + EOF_AFTER_EXIT;
        assert!(c.on_tick(at).contains(&Effect::Probe));
        c.on_probed(None, at);
        assert_eq!(
            c.on_frame(&ack_of(&sent), at, ROOM),
            [Effect::End(Ending::ShellExited)]
        );
    }

    #[test]
    fn silence_reopens_the_channel_and_the_reopen_resends_everything_unacked() {
        let (mut c, t0) = running(Limits::default());
        c.on_output(b"a", t0);
        c.on_output(b"b", t0);
        c.sender.pause(); // no retransmissions in the way
        for n in 1..=3 {
            let fx = c.on_tick(t0 + PING_EVERY * n);
            assert_eq!(
                fx,
                [Effect::Ping],
                "at {n}: not silent for more than 90 s yet"
            );
        }
        // (A tick 45 s late.)
        let late = t0 + PING_EVERY * 4 + secs(45);
        assert_eq!(c.on_tick(late), [Effect::Reopen]);
        // The missed keepalives are not caught up in a burst: the next is a period later.
        assert_eq!(c.next_deadline(), Some(late + PING_EVERY));
        let again: Vec<_> = c
            .on_reopened(late)
            .iter()
            .map(|f| decode(f).sequence_number)
            .collect();
        assert_eq!(again, [0, 1]);
        assert!(c.wants_output(), "a reopen lifts a pause");
        // A socket that closes is reopened at once.
        assert_eq!(c.on_socket_closed(t0), [Effect::Reopen]);
    }

    #[test]
    fn before_the_shell_the_first_size_and_early_keys_are_kept() {
        let t0 = Instant::now();
        let mut c = Channel::new("s-1", t0);
        let fx = c.on_frame(&input(0, b"ls"), t0, 0);
        assert_eq!(acks(&fx), [0]);
        assert_eq!(c.first_size(), None);
        c.on_frame(&size(1, 120, 40), t0, 0);
        assert_eq!(c.first_size(), Some((120, 40)));
        assert_eq!(c.take_early_input(), b"ls");
        assert!(!c.wants_output(), "no shell yet");
        let t0 = Instant::now();
        let mut c = Channel::new("s-1", t0);
        assert_eq!(
            c.on_frame(&control(MessageType::ChannelClosed), t0, 0),
            [Effect::End(Ending::Terminated)]
        );
    }

    fn response(actions: &serde_json::Value) -> Vec<u8> {
        to_json(&json!({"ClientVersion": "t/1", "ProcessedClientActions": actions}))
    }

    #[test]
    fn the_kms_handshake_encrypts_the_session_and_refuses_what_fails() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let t0 = Instant::now();
        let mut c = Channel::new("s-1", t0);
        let fx = c.start_handshake(
            "9.9",
            "Standard_Stream",
            serde_json::Value::Null,
            Some(("k".into(), "Y2g=".into())),
            t0,
        );
        let request = sends(&fx).remove(0);
        assert_eq!(
            (request.payload_type, request.sequence_number, request.flags),
            (PayloadType::HandshakeRequest, 0, FLAG_SYN)
        );
        let v: serde_json::Value = serde_json::from_slice(&request.payload).unwrap();
        assert_eq!(
            v["RequestedClientActions"][1]["ActionParameters"]["KMSKeyId"],
            "k"
        );
        let ok = json!([
            {"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""},
            {"ActionType":"KMSEncryption","ActionStatus":1,"Error":"",
             "ActionResult":{"KMSCipherTextKey": b64.encode(b"blob"),"ChallengeAcknowledgement":true}}
        ]);
        let raw = frame(
            MessageType::InputStreamData,
            0,
            PayloadType::HandshakeResponse,
            &response(&ok),
        );
        let fx = c.on_frame(&raw, t0, ROOM);
        assert_eq!(acks(&fx), [0]);
        assert!(fx.contains(&Effect::Decrypt {
            blob: b"blob".to_vec(),
            challenge: Some("Y2g=".into())
        }));
        assert_eq!(c.next_deadline(), None, "KMS's own time, not the client's");
        let key: Vec<u8> = (0u8..64).collect();
        let fx = c.on_data_key(Ok(key.clone()), t0);
        let challenge = sends(&fx).remove(0);
        assert_eq!(
            (challenge.payload_type, challenge.sequence_number),
            (PayloadType::EncChallengeRequest, 1)
        );
        let mut client = SessionCipher::new(&key, Role::Client, [1; 12]).unwrap();
        let v: EncryptionChallenge = from_json(&challenge.payload, "c").unwrap();
        let secret = client.open(&b64.decode(v.challenge).unwrap()).unwrap();
        let answer = to_json(&json!({"Challenge": b64.encode(client.seal(&secret))}));
        let raw = frame(
            MessageType::InputStreamData,
            1,
            PayloadType::EncChallengeResponse,
            &answer,
        );
        let fx = c.on_frame(&raw, t0, ROOM);
        let complete = sends(&fx)
            .into_iter()
            .find(|m| m.payload_type == PayloadType::HandshakeComplete);
        assert_eq!(complete.map(|m| m.sequence_number), Some(2));
        assert_eq!(fx.last(), Some(&Effect::HandshakeDone));
        // Input is opened, output sealed.
        c.on_frame(&input(2, &client.seal(b"ls")), t0, ROOM);
        assert_eq!(c.take_early_input(), b"ls");
        c.start(Limits::default(), t0);
        let fx = c.on_output(b"out", t0);
        assert_eq!(
            fx[0],
            Effect::Record(Bytes::from_static(b"out")),
            "recorded in clear"
        );
        assert_eq!(client.open(&outputs(&fx)[0].1).unwrap(), b"out");

        // A client without KMS: refused with the hint.
        let mut c = Channel::new("s-1", t0);
        c.start_handshake(
            "9.9",
            "Standard_Stream",
            serde_json::Value::Null,
            Some(("k".into(), "Y2g=".into())),
            t0,
        );
        let failed = json!([{"ActionType":"KMSEncryption","ActionStatus":3,"ActionResult":null,"Error":"nope"}]);
        let raw = frame(
            MessageType::InputStreamData,
            0,
            PayloadType::HandshakeResponse,
            &response(&failed),
        );
        match c.on_frame(&raw, t0, ROOM).last() {
            Some(Effect::Refuse(why)) => assert!(why.contains("unsupported: nope"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(c.is_ended());
        // A client that says nothing: refused when the step's time is up.
        let mut c = Channel::new("s-1", t0);
        c.start_handshake(
            "9.9",
            "Standard_Stream",
            serde_json::Value::Null,
            Some(("k".into(), "Y2g=".into())),
            t0,
        );
        assert!(c.on_tick(t0 + HANDSHAKE_STEP - secs(1)).is_empty());
        match c.on_tick(t0 + HANDSHAKE_STEP).as_slice() {
            [Effect::Refuse(why)] => {
                assert!(why.contains("no HandshakeResponse within 15 s"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // KMS refused the key.
        let mut c = Channel::new("s-1", t0);
        c.start_handshake(
            "9.9",
            "Standard_Stream",
            serde_json::Value::Null,
            Some(("k".into(), "Y2g=".into())),
            t0,
        );
        let raw = frame(
            MessageType::InputStreamData,
            0,
            PayloadType::HandshakeResponse,
            &response(&ok),
        );
        c.on_frame(&raw, t0, ROOM);
        assert_eq!(
            c.on_data_key(Err("AccessDenied".into()), t0),
            [Effect::Refuse("AccessDenied".into())]
        );
    }

    #[test]
    fn idle_limit_warns_once_then_ends_and_activity_rearms_it() {
        let t0 = Instant::now();
        let l = Limits {
            idle: Some(Duration::from_secs(600)),
            max: None,
        };
        let idle = Limit::Idle(Duration::from_secs(600));
        assert_eq!(
            l.check(t0, t0, t0, None),
            LimitCheck::Quiet {
                next: Some(t0 + Duration::from_secs(540))
            }
        );
        let end = t0 + Duration::from_secs(600);
        assert_eq!(
            l.check(t0 + Duration::from_secs(545), t0, t0, None),
            LimitCheck::Warn {
                limit: idle,
                at: end
            }
        );
        assert_eq!(
            l.check(t0 + Duration::from_secs(546), t0, t0, Some(end)),
            LimitCheck::Quiet { next: Some(end) }
        );
        assert_eq!(l.check(end, t0, t0, Some(end)), LimitCheck::End(idle));
        // Typing after the warning moves the deadline; a new warning comes for it.
        let typed = t0 + Duration::from_secs(590);
        let new_end = typed + Duration::from_secs(600);
        assert_eq!(
            l.check(t0 + Duration::from_secs(595), t0, typed, Some(end)),
            LimitCheck::Quiet {
                next: Some(new_end - Duration::from_secs(60))
            }
        );
    }

    #[test]
    fn the_earlier_limit_wins_and_short_limits_warn_at_half() {
        let t0 = Instant::now();
        let l = Limits {
            idle: Some(Duration::from_secs(60)),
            max: Some(Duration::from_secs(3600)),
        };
        assert_eq!(
            l.check(t0, t0, t0, None),
            LimitCheck::Quiet {
                next: Some(t0 + Duration::from_secs(30))
            }
        );
        let l = Limits {
            idle: Some(Duration::from_secs(3600)),
            max: Some(Duration::from_secs(120)),
        };
        let max = Limit::MaxDuration(Duration::from_secs(120));
        assert_eq!(
            l.check(
                t0 + Duration::from_secs(61),
                t0,
                t0 + Duration::from_secs(61),
                None
            ),
            LimitCheck::Warn {
                limit: max,
                at: t0 + Duration::from_secs(120)
            }
        );
        assert_eq!(
            Limits::default().check(t0, t0, t0, None),
            LimitCheck::Quiet { next: None }
        );
    }

    #[test]
    fn limit_texts_say_what_happens() {
        let w = Limit::Idle(Duration::from_secs(600)).warning(Duration::from_secs(60));
        assert!(w.contains("ends in 60 seconds"), "{w}");
        let e = Limit::MaxDuration(Duration::from_secs(3600)).ended();
        assert!(e.contains("60 minute"), "{e}");
    }

    impl Channel {
        fn run(&self) -> &Run {
            match &self.phase {
                Phase::Running(run) => run,
                other => panic!("not running: {other:?}"),
            }
        }
    }
}
