//! One session: its data channel and its shell (protocol.md §2.2, §4, §6).
//!
//! ```text
//!  PTY master (reactor) ──read──────────▶ pump task ──output_stream_data──▶ data websocket
//!  PTY master (reactor) ◀─keyboard task◀─ pump task ◀──input_stream_data──── data websocket
//! ```
//!
//! No thread of its own: the PTY master is on tokio's reactor (`session::pty`), read by
//! the pump itself and written by a small keyboard task, so a shell that does not read its
//! input blocks only that task.
//!
//! The pump owns the reliability state ([`Sender`] for output, [`Receiver`] for input).
//! It reads the PTY only while the sender has room and is not paused, so a peer that does
//! not acknowledge (or a gateway that paused us) stops the reading, which blocks the
//! shell: back-pressure all the way, memory bounded by the sender's budget. No fixed
//! sleeps: output leaves as soon as it is read; retransmission wakes exactly at the
//! sender's next deadline.
//!
//! A dropped data channel is reopened (fresh token) with upstream's schedule, and every
//! unacknowledged frame is sent again; the client's receiver discards duplicates, so no
//! byte is lost or doubled.

use super::budget::{MAX_DATA_MESSAGE, OUTPUT_IN_FLIGHT};
use super::mgs::{Mgs, MgsError, Socket};
use super::recording::Tap;
use crate::bounded::{self, ByteSender};
use crate::protocol::crypto::{Role, SessionCipher, CHALLENGE_LEN, ENCRYPTED_NOTICE};
use crate::protocol::frame::{AgentMessage, MessageType, PayloadType, FLAG_SYN};
use crate::protocol::payload::{
    from_json, to_json, Acknowledge, AgentSessionState, EncryptionChallenge, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, KmsEncryptionParameters, KmsEncryptionResult,
    OpenDataChannel, RequestedClientAction, SessionState, SessionTypeParameters, Size,
    ACTION_STATUS_SUCCESS, MESSAGE_SCHEMA_VERSION,
};
use crate::protocol::reliability::{
    PushOutcome, ReceiveOutcome, Receiver, ReceiverConfig, Sender, SenderConfig,
};
use crate::session::pty::{PtyReader, PtyWriter};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant, SystemTime};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Bytes per PTY read and per output frame. Upstream uses 1 KiB with a 1 ms sleep per
/// read (about 1 MB/s at best); the official client accepts larger payloads (§13).
/// Measured on a 2-core VM, release build, `cat` of 141 MB through gateway, agent and
/// `connect` on loopback (MB/s, two runs each): 1 KiB 36/35, 4 KiB 76/63, 16 KiB 70/84,
/// 64 KiB 96/73. Beyond 4 KiB the differences are within run-to-run noise (a PTY read
/// seldom returns more than a few KiB); 16 KiB keeps per-frame overhead (header, SHA-256,
/// one ack each) low without making each retransmission large.
pub const CHUNK: usize = 16 * 1024;
/// Out-of-order input kept while waiting for a gap to fill (keystrokes are small).
pub const INPUT_REORDER: usize = 1024 * 1024;
/// How long to wait for the client's first Size before starting the shell, so the prompt
/// is drawn at the right width when the client sends it early.
pub const FIRST_SIZE_WAIT: Duration = Duration::from_millis(300);
/// After the shell exits, how long unacknowledged output may take to drain (§6.6).
pub const DRAIN: Duration = Duration::from_secs(2);
/// Data-channel reopen schedule (§1.6): 6 attempts, random 100–200 ms ×2 each, capped.
const REOPEN_ATTEMPTS: u32 = 6;
/// After the shell exits, output keeps flowing until the PTY reports end of file; a
/// background job still holding the terminal must not keep the session open, so this is
/// how long we wait for that end of file.
const EOF_AFTER_EXIT: Duration = Duration::from_millis(500);
/// Longest a send may take before the channel is treated as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A data channel silent this long (no frame, no pong) is reopened (§1.5: 60 s pong wait).
const DEAD_AFTER: Duration = Duration::from_secs(90);
/// Upper bound on waiting for output to be acknowledged after the shell exited, however
/// steadily acks keep coming.
const MAX_DRAIN: Duration = Duration::from_secs(30);
/// Input queued for the PTY writer, in bytes (plus the chunk being written). Beyond it,
/// input frames are not accepted or acknowledged: the client sends them again later.
pub const INPUT_QUEUE_BYTES: usize = 1024 * 1024;
/// Keystrokes kept from before the shell started.
const EARLY_INPUT_MAX: usize = 64 * 1024;
/// Keepalive ping on the data channel.
const PING_EVERY: Duration = Duration::from_secs(30);

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

/// I/O handles of a running shell, as the pump needs them.
pub struct ShellIo {
    /// PTY output.
    pub reader: PtyReader,
    /// PTY input.
    pub writer: PtyWriter,
    /// Applies a window size (cols, rows).
    pub resize: Box<dyn FnMut(u16, u16) + Send>,
    /// Fires when the shell process exits.
    pub exited: tokio::sync::oneshot::Receiver<()>,
    /// Reads the terminal's ECHO-off state (`None`: unreadable), sampled for every input
    /// chunk as it is written, for the recorder's redaction rule.
    pub echo_probe: Box<dyn Fn() -> Option<bool> + Send>,
}

impl std::fmt::Debug for ShellIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShellIo")
    }
}

/// A data channel for one session.
#[derive(Debug)]
pub struct DataChannel {
    mgs: Mgs,
    session_id: String,
    target_id: String,
    ws: Socket,
    sender: Sender,
    receiver: Receiver<Inbound>,
    last_rx: Instant,
    /// channel_closed arrived before the shell started.
    pub closed_early: bool,
    /// Set by the KMS handshake: output is sealed, input opened.
    cipher: Option<SessionCipher>,
}

/// How long each handshake step waits for the client (§5.7).
pub const HANDSHAKE_STEP: Duration = Duration::from_secs(15);
/// Told to the user when the client cannot do KMS encryption.
pub const KMS_CLIENT_HINT: &str = "the client did not complete the KMS encryption handshake; use a session-manager-plugin or session-agent connect that supports KMS encryption, and allow it kms:GenerateDataKey on the key";

/// An inbound stream frame kept in the reorder buffer.
#[derive(Debug)]
struct Inbound(AgentMessage);

impl AsRef<[u8]> for Inbound {
    fn as_ref(&self) -> &[u8] {
        &self.0.payload
    }
}

/// Message time; never 0 (a zero CreatedDate is refused by decoders).
fn now_ms() -> u64 {
    crate::timefmt::unix_ms(SystemTime::now()).max(1)
}

fn control_frame(t: MessageType, payload: &impl serde::Serialize) -> Bytes {
    AgentMessage::new(
        t,
        PayloadType::Null,
        to_json(payload),
        now_ms(),
        Uuid::new_v4(),
    )
    .with_sequence(0, 3)
    .encode()
    .unwrap_or_default()
}

impl DataChannel {
    /// CreateDataChannel, dial, OpenDataChannel, `agent_session_state` Connected (§2.2).
    ///
    /// # Errors
    /// The gateway refused or could not be reached.
    pub async fn open(mgs: &Mgs, session_id: &str, target_id: &str) -> Result<Self, MgsError> {
        let ws = Self::dial(mgs, session_id, target_id).await?;
        Ok(Self {
            mgs: mgs.clone(),
            session_id: session_id.to_owned(),
            target_id: target_id.to_owned(),
            ws,
            sender: Sender::new(SenderConfig {
                max_entries: 100_000,
                max_bytes: OUTPUT_IN_FLIGHT,
            }),
            receiver: Receiver::new(ReceiverConfig {
                max_entries: 10_000,
                max_bytes: INPUT_REORDER,
            }),
            last_rx: Instant::now(),
            closed_early: false,
            cipher: None,
        })
    }

    /// Runs the KMS handshake (§5.2–§5.6): HandshakeRequest with SessionType and
    /// KMSEncryption, the client's HandshakeResponse with the data key's ciphertext,
    /// `decrypt` (KMS Decrypt; given the ciphertext and, when the client acknowledged it,
    /// the challenge for the encryption context), the encryption challenge, and
    /// HandshakeComplete. From then on output is sealed and input opened.
    ///
    /// # Errors
    /// What failed, for the user.
    pub async fn handshake_kms<F, Fut>(
        &mut self,
        session_type: &str,
        kms_key_id: &str,
        decrypt: F,
    ) -> Result<(), String>
    where
        F: FnOnce(Vec<u8>, Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, String>>,
    {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let started = Instant::now();
        let challenge = b64.encode(rand::random::<[u8; 16]>());
        let request = HandshakeRequest {
            agent_version: super::AGENT_VERSION.into(),
            requested_client_actions: vec![
                RequestedClientAction {
                    action_type: "SessionType".into(),
                    action_parameters: serde_json::to_value(SessionTypeParameters {
                        session_type: session_type.into(),
                        properties: serde_json::Value::Null,
                    })
                    .unwrap_or_default(),
                },
                RequestedClientAction {
                    action_type: "KMSEncryption".into(),
                    action_parameters: serde_json::to_value(KmsEncryptionParameters {
                        kms_key_id: kms_key_id.into(),
                        challenge: challenge.clone(),
                    })
                    .unwrap_or_default(),
                },
            ],
        };
        self.send_stream(PayloadType::HandshakeRequest, to_json(&request))
            .await?;
        let raw = self.wait_for(PayloadType::HandshakeResponse).await?;
        let response: HandshakeResponse =
            from_json(&raw, "HandshakeResponse").map_err(|e| e.to_string())?;
        let mut result = None;
        for action in &response.processed_client_actions {
            if action.action_status != ACTION_STATUS_SUCCESS {
                return Err(format!(
                    "{KMS_CLIENT_HINT} ({} {}: {})",
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
        let result = result.ok_or_else(|| KMS_CLIENT_HINT.to_owned())?;
        let blob = b64
            .decode(result.kms_cipher_text_key.as_bytes())
            .map_err(|e| format!("the client's KMSCipherTextKey is not base64: {e}"))?;
        let acknowledged = result.challenge_acknowledgement.then_some(challenge);
        let data_key = decrypt(blob, acknowledged).await?;
        let mut cipher = SessionCipher::new(&data_key, Role::Agent, rand::random())
            .map_err(|e| e.to_string())?;
        let secret: [u8; CHALLENGE_LEN] = std::array::from_fn(|_| rand::random());
        let sealed = EncryptionChallenge {
            challenge: b64.encode(cipher.seal(&secret)),
        };
        self.send_stream(PayloadType::EncChallengeRequest, to_json(&sealed))
            .await?;
        let raw = self.wait_for(PayloadType::EncChallengeResponse).await?;
        let answer: EncryptionChallenge =
            from_json(&raw, "EncChallengeResponse").map_err(|e| e.to_string())?;
        let opened = b64
            .decode(answer.challenge.as_bytes())
            .map_err(|e| format!("the encryption challenge answer is not base64: {e}"))
            .and_then(|sealed| cipher.open(&sealed).map_err(|e| e.to_string()))?;
        if opened != secret {
            return Err("the client answered the encryption challenge wrongly".into());
        }
        let complete = HandshakeComplete {
            handshake_time_to_complete: i64::try_from(started.elapsed().as_nanos())
                .unwrap_or(i64::MAX),
            customer_message: ENCRYPTED_NOTICE.into(),
        };
        self.send_stream(PayloadType::HandshakeComplete, to_json(&complete))
            .await?;
        self.cipher = Some(cipher);
        Ok(())
    }

    /// Waits up to [`HANDSHAKE_STEP`] for the client's input payload of type `want`,
    /// acknowledging what arrives; other input before the handshake is done is dropped
    /// (as upstream does).
    async fn wait_for(&mut self, want: PayloadType) -> Result<Bytes, String> {
        let deadline = tokio::time::Instant::now() + HANDSHAKE_STEP;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => {
                    return Err(format!(
                        "{KMS_CLIENT_HINT} (no {want:?} within {} s)",
                        HANDSHAKE_STEP.as_secs()
                    ))
                }
                Ok(None | Some(Err(_))) => {
                    return Err("the data channel closed during the handshake".into())
                }
                Ok(Some(Ok(m))) => m,
            };
            let Message::Binary(raw) = msg else { continue };
            let Ok(m) = AgentMessage::decode(&raw, MAX_DATA_MESSAGE) else {
                continue;
            };
            match m.message_type {
                MessageType::InputStreamData => {
                    for Inbound(item) in self.accept(m).await.unwrap_or_default() {
                        if item.payload_type == want {
                            return Ok(item.payload);
                        }
                    }
                }
                MessageType::Acknowledge => {
                    if let Ok(ack) = from_json::<Acknowledge>(&m.payload, "acknowledge") {
                        self.sender
                            .on_ack(ack.acknowledged_message_sequence_number, Instant::now());
                    }
                }
                MessageType::PausePublication => self.sender.pause(),
                MessageType::StartPublication => self.resume().await,
                MessageType::ChannelClosed => {
                    self.closed_early = true;
                    return Err("the client closed the session during the handshake".into());
                }
                _ => {}
            }
        }
    }

    /// Opens an input payload when the session is encrypted (`None`: not decryptable,
    /// dropped with a warning).
    fn open_input(&self, payload: Bytes) -> Option<Vec<u8>> {
        match &self.cipher {
            None => Some(payload.to_vec()),
            Some(c) => match c.open(&payload) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(session = %self.session_id, error = %e, "Dropping input that does not decrypt");
                    None
                }
            },
        }
    }

    async fn dial(mgs: &Mgs, session_id: &str, target_id: &str) -> Result<Socket, MgsError> {
        let token = mgs
            .create_channel("data-channel", session_id, Some(""))
            .await?;
        let open = OpenDataChannel {
            message_schema_version: MESSAGE_SCHEMA_VERSION.into(),
            request_id: Uuid::new_v4().to_string(),
            token_value: token,
            client_instance_id: Some(target_id.to_owned()),
            client_id: String::new(),
            client_version: None,
        };
        let mut ws = mgs
            .dial("data-channel", session_id, "role=publish_subscribe", &open)
            .await?;
        let state = AgentSessionState {
            schema_version: 1,
            session_state: SessionState::Connected,
            session_id: session_id.to_owned(),
        };
        let frame = control_frame(MessageType::AgentSessionState, &state);
        ws.send(Message::Binary(frame))
            .await
            .map_err(|e| MgsError::Websocket {
                what: "sending Connected".into(),
                source: Box::new(e),
            })?;
        Ok(ws)
    }

    /// Reopens after a drop, then resends everything unacknowledged.
    async fn reopen(&mut self) -> Result<(), String> {
        let mut backoff = crate::backoff::Backoff::reconnect();
        let mut last = String::new();
        for attempt in 0..REOPEN_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            match Self::dial(&self.mgs, &self.session_id, &self.target_id).await {
                Ok(ws) => {
                    self.ws = ws;
                    let frames = self.sender.retransmit_all(Instant::now());
                    tracing::info!(session = %self.session_id, resent = frames.len(), "Data channel reopened");
                    let mut resent = Ok(());
                    for f in frames {
                        resent = self.send_ws(Message::Binary(f)).await;
                        if resent.is_err() {
                            break;
                        }
                    }
                    match resent {
                        Ok(()) => return Ok(()),
                        // The new socket failed at once: try the next attempt.
                        Err(e) => last = e,
                    }
                }
                Err(e) if e.session_terminated() => return Err(e.to_string()),
                Err(e) => {
                    tracing::warn!(session = %self.session_id, attempt, error = %e, "Reopening the data channel failed");
                    last = e.to_string();
                }
            }
        }
        Err(last)
    }

    /// Waits up to `wait` for the client's first Size message, handling anything else
    /// that arrives meanwhile (keystrokes are kept for the shell).
    pub async fn first_size(
        &mut self,
        wait: Duration,
        early_input: &mut Vec<u8>,
    ) -> Option<(u16, u16)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            let Ok(Message::Binary(raw)) = msg else {
                continue;
            };
            let Ok(m) = AgentMessage::decode(&raw, MAX_DATA_MESSAGE) else {
                continue;
            };
            match m.message_type {
                MessageType::InputStreamData => {}
                MessageType::PausePublication => {
                    self.sender.pause();
                    continue;
                }
                MessageType::StartPublication => {
                    let _ = self.sender.resume(Instant::now());
                    continue;
                }
                MessageType::ChannelClosed => {
                    self.closed_early = true;
                    return None;
                }
                _ => continue,
            }
            if early_input.len() >= EARLY_INPUT_MAX {
                continue; // not accepted, not acknowledged: the client sends it again later
            }
            let mut size = None;
            if let Some(items) = self.accept(m).await {
                for Inbound(item) in items {
                    match item.payload_type {
                        PayloadType::Size => size = parse_size(&item.payload),
                        PayloadType::Output => {
                            if let Some(plain) = self.open_input(item.payload) {
                                early_input.extend_from_slice(&plain);
                            }
                        }
                        _ => {}
                    }
                }
            }
            if size.is_some() {
                return size;
            }
        }
    }

    /// Runs the session until the shell exits, `cancel` fires, or the channel is lost;
    /// how it ended.
    pub async fn pump(
        &mut self,
        shell: ShellIo,
        early_input: Vec<u8>,
        limits: Limits,
        cancel: &CancellationToken,
        tap: Option<Tap>,
        recording_failed: Option<tokio::sync::oneshot::Receiver<String>>,
    ) -> Ending {
        let ShellIo {
            mut reader,
            writer,
            mut resize,
            mut exited,
            echo_probe,
        } = shell;
        let (in_tx, in_rx) = bounded::channel::<Vec<u8>>(INPUT_QUEUE_BYTES);
        let keyboard = tokio::spawn(keyboard(in_rx, writer, tap.clone(), echo_probe));
        if !early_input.is_empty() {
            let len = early_input.len();
            let _ = in_tx.try_send(early_input, len);
        }
        let ending = self
            .run_loop(
                &in_tx,
                &mut reader,
                &mut resize,
                &mut exited,
                limits,
                cancel,
                tap.as_ref(),
                recording_failed,
            )
            .await;
        // Input still queued is not typed into a session that has ended.
        keyboard.abort();
        ending
    }

    // One select loop over every source of the session; its inputs are the pump's parts.
    #[allow(clippy::too_many_lines, clippy::too_many_arguments)]
    async fn run_loop(
        &mut self,
        in_tx: &ByteSender<Vec<u8>>,
        reader: &mut PtyReader,
        resize: &mut Box<dyn FnMut(u16, u16) + Send>,
        exited: &mut tokio::sync::oneshot::Receiver<()>,
        limits: Limits,
        cancel: &CancellationToken,
        tap: Option<&Tap>,
        recording_failed: Option<tokio::sync::oneshot::Receiver<String>>,
    ) -> Ending {
        let started = Instant::now();
        let mut recording_failed = recording_failed;
        let mut last_activity = started;
        let mut warned_for: Option<Instant> = None;
        let mut exit_seen = false;
        let mut eof_deadline: Option<tokio::time::Instant> = None;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut shell_done = false;
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut drain_limit: Option<tokio::time::Instant> = None;
        let mut buf = vec![0u8; CHUNK];
        // Output read while we could not send it (the shell had exited and the peer was
        // not taking more): sent first once it can be.
        let mut held: Option<Vec<u8>> = None;
        loop {
            if shell_done && held.is_none() && self.sender.is_empty() {
                return Ending::ShellExited;
            }
            let can_read = !self.sender.is_paused() && self.sender.has_capacity();
            if can_read {
                if let Some(bytes) = held.take() {
                    self.on_output(bytes, tap).await;
                    continue;
                }
            }
            let can_read = can_read && !shell_done;
            let retransmit_at = self
                .sender
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            let limit_at = match limits.check(Instant::now(), started, last_activity, warned_for) {
                LimitCheck::End(limit) => {
                    let _ = self
                        .notice(&format!("[session-agent] {}.", limit.ended()))
                        .await;
                    return Ending::TimedOut(limit);
                }
                LimitCheck::Warn { limit, at } => {
                    warned_for = Some(at);
                    let _ = self
                        .notice(&limit.warning(at.saturating_duration_since(Instant::now())))
                        .await;
                    continue;
                }
                LimitCheck::Quiet { next } => next.map(tokio::time::Instant::from_std),
            };
            let unacked_before = self.sender.len();
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ending::Terminated,
                Ok(reason) = async { recording_failed.as_mut().expect("guarded").await }, if recording_failed.is_some() => {
                    let _ = self.notice(&recording_failed_notice(&reason)).await;
                    return Ending::RecordingFailed(reason);
                }
                () = sleep_opt(drain_deadline) => return Ending::ShellExited,
                _ = &mut *exited, if !exit_seen => {
                    exit_seen = true;
                    eof_deadline = Some(tokio::time::Instant::now() + EOF_AFTER_EXIT);
                }
                () = sleep_opt(eof_deadline), if !shell_done => {
                    // The shell is gone; is more output waiting in the terminal?
                    let more = if held.is_some() {
                        true
                    } else {
                        match reader.try_read(&mut buf) {
                            Ok(Some(n)) if n > 0 => {
                                held = Some(buf[..n].to_vec());
                                true
                            }
                            _ => false,
                        }
                    };
                    if more {
                        // Yes (we are paused or full, or it just came): wait for it.
                        eof_deadline = Some(tokio::time::Instant::now() + EOF_AFTER_EXIT);
                    } else {
                        // Nothing more is coming (a background job may still hold the
                        // terminal; it is killed on terminate).
                        shell_done = true;
                        let now = tokio::time::Instant::now();
                        drain_deadline = Some(now + DRAIN);
                        drain_limit = Some(now + MAX_DRAIN);
                    }
                }
                msg = self.ws.next() => {
                    self.last_rx = Instant::now();
                    let raw = match msg {
                        Some(Ok(Message::Binary(raw))) => raw,
                        Some(Ok(Message::Close(_)) | Err(_)) | None => {
                            let reopened = tokio::select! {
                                r = self.reopen() => r,
                                () = cancel.cancelled() => return Ending::Terminated,
                            };
                            if let Err(e) = reopened {
                                return Ending::ChannelLost(e);
                            }
                            if shell_done {
                                drain_deadline = Some(tokio::time::Instant::now() + DRAIN);
                            }
                            continue;
                        }
                        Some(Ok(_)) => continue,
                    };
                    let m = match AgentMessage::decode(&raw, MAX_DATA_MESSAGE) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(session = %self.session_id, error = %e, "Dropping a malformed frame");
                            continue;
                        }
                    };
                    if m.message_type == MessageType::InputStreamData {
                        last_activity = Instant::now();
                    }
                    if self.on_inbound(m, in_tx, resize, tap).await {
                        return Ending::Terminated;
                    }
                    // While draining, every acknowledged frame buys more time (up to a cap).
                    if shell_done && self.sender.len() < unacked_before {
                        let extended = tokio::time::Instant::now() + DRAIN;
                        drain_deadline = Some(drain_limit.map_or(extended, |cap| extended.min(cap)));
                    }
                }
                read = reader.read(&mut buf), if can_read => match read {
                    Ok(n) if n > 0 => {
                        last_activity = Instant::now();
                        self.on_output(buf[..n].to_vec(), tap).await;
                    }
                    // EOF (no process holds the terminal) or a failed read: the end.
                    _ => {
                        shell_done = true;
                        let now = tokio::time::Instant::now();
                        drain_deadline = Some(now + DRAIN);
                        drain_limit = Some(now + MAX_DRAIN);
                    }
                },
                () = sleep_opt(limit_at) => {}
                () = sleep_opt(retransmit_at) => {
                    if let Some(frame) = self.sender.poll_retransmit(Instant::now()) {
                        let _ = self.send_ws(Message::Binary(frame)).await;
                    }
                }
                _ = ping.tick() => {
                    if self.last_rx.elapsed() > DEAD_AFTER {
                        tracing::warn!(session = %self.session_id, "Data channel silent; reopening");
                        let reopened = tokio::select! {
                            r = self.reopen() => r,
                            () = cancel.cancelled() => return Ending::Terminated,
                        };
                        if let Err(e) = reopened {
                            return Ending::ChannelLost(e);
                        }
                        continue;
                    }
                    let _ = self.send_ws(Message::Ping(Bytes::from_static(b"keepalive"))).await;
                }
            }
        }
    }

    /// Sends on the websocket, giving up after [`SEND_TIMEOUT`]: a peer that stops reading
    /// must not freeze the session (cancel, limits, acks); the liveness check reopens.
    async fn send_ws(&mut self, m: Message) -> Result<(), String> {
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(m)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("send timed out".into()),
        }
    }

    /// Output read from the terminal: to the recording, then to the peer.
    async fn on_output(&mut self, bytes: Vec<u8>, tap: Option<&Tap>) {
        if let Some(tap) = tap {
            tap.output(&bytes).await;
        }
        if let Err(e) = self.send_output(bytes).await {
            tracing::debug!(session = %self.session_id, error = %e, "Output send failed; will retransmit after reopening");
        }
    }

    async fn send_output(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        let bytes = match &mut self.cipher {
            Some(c) => c.seal(&bytes),
            None => bytes,
        };
        self.send_stream(PayloadType::Output, bytes).await
    }

    /// Sends one sequenced `output_stream_data` payload as is.
    async fn send_stream(
        &mut self,
        payload_type: PayloadType,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        let seq = self.sender.next_sequence();
        let msg = AgentMessage::new(
            MessageType::OutputStreamData,
            payload_type,
            bytes,
            now_ms(),
            Uuid::new_v4(),
        )
        .with_sequence(seq, if seq == 0 { FLAG_SYN } else { 0 });
        let frame = msg.encode().map_err(|e| e.to_string())?;
        match self
            .sender
            .push(seq, msg.message_id, frame.clone(), Instant::now())
        {
            PushOutcome::Transmit => self.send_ws(Message::Binary(frame)).await,
            // Paused: kept, sent on resume. Full cannot happen (we read only with room).
            _ => Ok(()),
        }
    }

    /// Feeds one input frame to the reorder buffer and acknowledges it when accepted.
    async fn accept(&mut self, m: AgentMessage) -> Option<Vec<Inbound>> {
        let ack = Acknowledge::frame_for(&m, now_ms(), Uuid::new_v4()).encode();
        let outcome = self.receiver.on_frame(m.sequence_number, Inbound(m));
        if let (false, Ok(ack)) = (matches!(outcome, ReceiveOutcome::Full), ack) {
            let _ = self.send_ws(Message::Binary(ack)).await;
        }
        match outcome {
            ReceiveOutcome::Deliver { items } => Some(items),
            _ => None,
        }
    }

    /// Handles one inbound frame; returns true when the session must end.
    async fn on_inbound(
        &mut self,
        m: AgentMessage,
        input: &ByteSender<Vec<u8>>,
        resize: &mut Box<dyn FnMut(u16, u16) + Send>,
        tap: Option<&Tap>,
    ) -> bool {
        match m.message_type {
            MessageType::InputStreamData => {
                // Any input also lifts a pause (§4.8).
                self.resume().await;
                // The shell is not reading (say, a paste into `sleep`): do not accept or
                // acknowledge more than the queue holds, in bytes; the client retransmits
                // later (the "not ready" rule, §4.2). Room for everything a delivery can
                // release: this frame and the out-of-order input buffered behind it.
                let need = m.payload.len() + self.receiver.buffered_bytes();
                if !input.has_room(need) {
                    return false;
                }
                if let Some(items) = self.accept(m).await {
                    for Inbound(item) in items {
                        match item.payload_type {
                            PayloadType::Output => {
                                let Some(plain) = self.open_input(item.payload) else {
                                    continue;
                                };
                                let len = plain.len();
                                if input.try_send(plain, len).is_err() {
                                    tracing::warn!(session = %self.session_id, "Input queue full; keystrokes dropped");
                                }
                            }
                            PayloadType::Size => {
                                if let Some((cols, rows)) = parse_size(&item.payload) {
                                    resize(cols, rows);
                                    if let Some(tap) = tap {
                                        tap.resize(cols, rows).await;
                                    }
                                }
                            }
                            other => {
                                tracing::debug!(session = %self.session_id, ?other, "Ignoring input payload type")
                            }
                        }
                    }
                }
            }
            MessageType::Acknowledge => {
                if let Ok(ack) = from_json::<Acknowledge>(&m.payload, "acknowledge") {
                    self.sender
                        .on_ack(ack.acknowledged_message_sequence_number, Instant::now());
                }
                self.resume().await;
            }
            MessageType::PausePublication => self.sender.pause(),
            MessageType::StartPublication => self.resume().await,
            MessageType::ChannelClosed => return true,
            other => {
                tracing::debug!(session = %self.session_id, message_type = %other, "Ignoring data-channel message")
            }
        }
        false
    }

    async fn resume(&mut self) {
        for f in self.sender.resume(Instant::now()) {
            let _ = self.send_ws(Message::Binary(f)).await;
        }
    }

    /// Sends `agent_session_state` Terminating and closes the socket (§6.6).
    pub async fn finish(mut self, shell_exited: bool) {
        if shell_exited {
            let state = AgentSessionState {
                schema_version: 1,
                session_state: SessionState::Terminating,
                session_id: self.session_id.clone(),
            };
            let _ = self
                .send_ws(Message::Binary(control_frame(
                    MessageType::AgentSessionState,
                    &state,
                )))
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// Writes a line into the session as output (notices such as timeout warnings).
    ///
    /// # Errors
    /// The frame could not be sent.
    pub async fn notice(&mut self, text: &str) -> Result<(), String> {
        if !self.sender.has_capacity() {
            // A sequence number taken without room would be lost and stall the client.
            return Err("no room for a notice while output is backed up".into());
        }
        self.send_output(format!("\r\n{text}\r\n").into_bytes())
            .await
    }
}

/// The keyboard: types queued input into the terminal, the recording first (the
/// terminal's echo state as the bytes reach it decides redaction; under fail-closed,
/// nothing the recording did not take is typed). A task, so a shell that does not read
/// its input holds up only this.
async fn keyboard(
    mut queue: bounded::ByteReceiver<Vec<u8>>,
    mut writer: PtyWriter,
    tap: Option<Tap>,
    echo_probe: Box<dyn Fn() -> Option<bool> + Send>,
) {
    while let Some(bytes) = queue.recv().await {
        if let Some(tap) = &tap {
            if !tap.input(&bytes, echo_probe()).await {
                continue;
            }
        }
        if writer.write_all(&bytes).await.is_err() {
            break;
        }
    }
}

fn parse_size(payload: &[u8]) -> Option<(u16, u16)> {
    let s: Size = from_json(payload, "size").ok()?;
    // TIOCSWINSZ takes u16; upstream truncates, we clamp.
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX).max(1);
    Some((clamp(s.cols), clamp(s.rows)))
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
