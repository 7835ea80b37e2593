//! The client's end of one data channel as a state machine driven by method calls: no
//! sockets, no terminal, time passed in. The pump (`client::pump`) feeds it websocket
//! frames, keystrokes and window sizes, and carries out the [`Effect`]s it returns.
//!
//! ```text
//!  keystrokes / Size ─queue─▶ Channel ─flush─▶ input_stream_data (Sender: seq 0,1,2…, Flags 0)
//!  output_stream_data ─on_frame─▶ Channel ─▶ Effect::Send(ack), Effect::Stdout(bytes)
//!  acknowledge ─on_frame─▶ Sender::on_ack          channel_closed ─▶ Effect::Closed
//! ```
//!
//! Differences from session-manager-plugin, on purpose: duplicates of output already
//! delivered are acknowledged again (harmless, and it stops a retransmitting agent at
//! once); the head-of-line retransmission keeps its own timer (the plugin resends an
//! overdue frame every 100 ms and gives up after 3000 tries); input waits in a queue
//! instead of evicting the oldest unacknowledged frame when the buffer is full.

use crate::protocol::crypto::{Role, SessionCipher};
use crate::protocol::frame::{AgentMessage, MessageType, PayloadType, DEFAULT_MAX_FRAME_LEN};
use crate::protocol::payload::{
    from_json, to_json, Acknowledge, ChannelClosed, EncryptionChallenge, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, KmsEncryptionParameters, ProcessedClientAction,
    SessionTypeParameters, Size, ACTION_STATUS_SUCCESS,
};
use crate::protocol::reliability::{
    PushOutcome, ReceiveOutcome, Receiver, ReceiverConfig, Sender, SenderConfig,
};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Instant, SystemTime};
use uuid::Uuid;

/// Largest keystroke payload: one stdin read. Upstream reads 1 KiB at a time; a paste
/// goes out in fewer, larger frames here (the agent writes any size to the PTY).
pub const MAX_INPUT_CHUNK: usize = 16 * 1024;
/// Largest tunnel payload of a port session. The plugin sends at most 1 KiB
/// (`StreamDataPayloadSize`, protocol-sessions.md §2.3) with a 1 ms sleep each; agents
/// take any size (upstream's writes each payload whole to its socket), and 16 KiB, as
/// for keystrokes, keeps the per-frame cost (header, digest, ack) low.
pub const PORT_INPUT_CHUNK: usize = 16 * 1024;
/// `ActionStatus` 3: the client does not support the requested action (§5.3).
pub const ACTION_STATUS_UNSUPPORTED: i64 = 3;
/// `ActionStatus` 2: the client tried and failed (§5.3).
pub const ACTION_STATUS_FAILED: i64 = 2;

/// What the pump must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Put this encoded frame on the websocket.
    Send(Bytes),
    /// KMS GenerateDataKey (64 bytes, the session's encryption context) is needed for a
    /// KMS handshake; answer with [`Channel::on_data_key`].
    GenerateDataKey {
        /// The document's key.
        key_id: String,
    },
    /// Write these bytes to standard output (PayloadType 1).
    Stdout(Bytes),
    /// Write these bytes to standard error (PayloadType 11).
    Stderr(Bytes),
    /// Show the user this message on a line of its own.
    Notice(String),
    /// `channel_closed`: the session is over.
    Closed(ChannelClosed),
    /// The session's type is known (once per session, before any [`Effect::Stdout`]):
    /// from the HandshakeRequest's `SessionType` action, else, without a handshake, at
    /// the first output (a shell).
    Started(SessionType),
    /// A flag message from the agent (PayloadType 10; [`crate::protocol::payload::flag`]).
    Flag(u32),
}

/// What the agent told us about the session (protocol-sessions.md §1.4), or what the
/// absence of a handshake implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionType {
    /// `Standard_Stream`, `InteractiveCommands`, `NonInteractiveCommands`, `Port`; empty
    /// when there was no handshake (a shell).
    pub session_type: String,
    /// The document's properties after substitution (Port), else `null`.
    pub properties: serde_json::Value,
    /// The HandshakeRequest's `AgentVersion`; empty without a handshake.
    pub agent_version: String,
}

impl SessionType {
    /// The session a first output without handshake implies: a shell.
    pub fn shell() -> Self {
        Self {
            session_type: String::new(),
            properties: serde_json::Value::Null,
            agent_version: String::new(),
        }
    }

    /// A port-forwarding session (everything else goes to the terminal, as upstream maps
    /// every other type to its shell handler).
    pub fn is_port(&self) -> bool {
        self.session_type == "Port"
    }

    /// A property as text (numbers too), trimmed; `None` when absent or empty.
    pub fn property(&self, key: &str) -> Option<String> {
        match self.properties.get(key)? {
            serde_json::Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// An output frame held in the reorder buffer.
#[derive(Debug)]
struct Inbound {
    payload_type: PayloadType,
    payload: Bytes,
}

impl AsRef<[u8]> for Inbound {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

/// The client side of one session's data channel. See the [module docs](self).
#[derive(Debug)]
pub struct Channel {
    client_version: String,
    sender: Sender,
    receiver: Receiver<Inbound>,
    /// Input not yet given a sequence number (waits while the sender is full).
    queue: VecDeque<(PayloadType, Bytes)>,
    /// The last size queued, to send only changes and to repeat it after a handshake.
    size: Option<Size>,
    /// The KMS handshake's actions answered so far, while the data key is fetched.
    kms_pending: Option<Vec<ProcessedClientAction>>,
    /// A KMS handshake is under way: keystrokes and sizes wait until it is complete, so
    /// nothing typed goes out in clear.
    hold_input: bool,
    /// Set once the data key is known: output opened, keystrokes sealed.
    cipher: Option<SessionCipher>,
    /// The session type, once known ([`Effect::Started`]).
    session_type: Option<SessionType>,
    /// False while the consumer of the session's bytes cannot take more: new output is
    /// then dropped unacknowledged and the agent sends it again later (as the plugin does
    /// before its first local connection, protocol-sessions.md §2.3).
    output_ready: bool,
}

/// Message time; never 0 (a zero CreatedDate is refused by decoders).
fn now_ms() -> u64 {
    crate::timefmt::unix_ms(SystemTime::now()).max(1)
}

impl Channel {
    /// A fresh channel: input sequence numbers start at 0, output expected from 0.
    /// `client_version` goes into HandshakeResponse.
    pub fn new(client_version: &str) -> Self {
        Self {
            client_version: client_version.to_owned(),
            sender: Sender::new(SenderConfig::default()),
            receiver: Receiver::new(ReceiverConfig::default()),
            queue: VecDeque::new(),
            size: None,
            kms_pending: None,
            hold_input: false,
            cipher: None,
            session_type: None,
            output_ready: true,
        }
    }

    /// The session type, once known.
    pub fn session_type(&self) -> Option<&SessionType> {
        self.session_type.as_ref()
    }

    /// Whether new output may be delivered (see [`Channel::set_output_ready`]).
    pub fn output_ready(&self) -> bool {
        self.output_ready
    }

    /// Back-pressure from the consumer of the output: while `false`, output frames not yet
    /// delivered are dropped without an acknowledgement (the agent retransmits them);
    /// handshake frames and duplicates are handled as usual.
    pub fn set_output_ready(&mut self, ready: bool) {
        self.output_ready = ready;
    }

    /// Queues a flag message (PayloadType 10), e.g. TerminateSession, after any queued
    /// input.
    pub fn queue_flag(&mut self, value: u32) {
        self.queue.push_back((
            PayloadType::Flag,
            Bytes::copy_from_slice(&crate::protocol::payload::flag::encode(value)),
        ));
    }

    fn is_port(&self) -> bool {
        self.session_type.as_ref().is_some_and(SessionType::is_port)
    }

    /// The GenerateDataKey result for [`Effect::GenerateDataKey`]: (ciphertext,
    /// plaintext) or why it failed. Queues the HandshakeResponse.
    pub fn on_data_key(&mut self, result: Result<(Vec<u8>, Vec<u8>), String>) -> Vec<Effect> {
        use base64::Engine;
        let mut effects = Vec::new();
        let Some(mut actions) = self.kms_pending.take() else {
            return effects;
        };
        let cipher = result.and_then(|(blob, plain)| {
            SessionCipher::new(&plain, Role::Client, rand::random())
                .map(|c| (blob, c))
                .map_err(|e| e.to_string())
        });
        let action = match cipher {
            Ok((blob, cipher)) => {
                self.cipher = Some(cipher);
                ProcessedClientAction {
                    action_type: "KMSEncryption".into(),
                    action_status: ACTION_STATUS_SUCCESS,
                    action_result: serde_json::json!({
                        "KMSCipherTextKey": base64::engine::general_purpose::STANDARD.encode(blob),
                        "KMSCipherTextHash": null,
                    }),
                    error: String::new(),
                }
            }
            Err(e) => {
                effects.push(Effect::Notice(format!("KMS encryption failed: {e}")));
                self.hold_input = false;
                ProcessedClientAction {
                    action_type: "KMSEncryption".into(),
                    action_status: ACTION_STATUS_FAILED,
                    action_result: serde_json::Value::Null,
                    error: e,
                }
            }
        };
        actions.push(action);
        self.queue_handshake_response(actions);
        effects
    }

    fn queue_handshake_response(&mut self, actions: Vec<ProcessedClientAction>) {
        let response = HandshakeResponse {
            client_version: self.client_version.clone(),
            processed_client_actions: actions,
            errors: None,
        };
        // Ahead of any queued keystrokes: the agent discards those until it has this.
        self.queue.push_front((
            PayloadType::HandshakeResponse,
            Bytes::from(to_json(&response)),
        ));
    }

    /// Answers the encryption challenge (§5.5): opened with our decrypt key, sealed again
    /// with our encrypt key.
    fn on_challenge(&mut self, payload: &[u8]) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let Some(cipher) = &self.cipher else {
            tracing::debug!("Ignoring an encryption challenge without a key");
            return;
        };
        let answer = from_json::<EncryptionChallenge>(payload, "EncChallengeRequest")
            .map_err(|e| e.to_string())
            .and_then(|c| {
                b64.decode(c.challenge.as_bytes())
                    .map_err(|e| e.to_string())
            })
            .and_then(|sealed| cipher.open(&sealed).map_err(|e| e.to_string()));
        match answer {
            Ok(plain) => {
                let reply = EncryptionChallenge {
                    challenge: b64.encode(cipher.seal_with(rand::random(), &plain)),
                };
                self.queue.push_front((
                    PayloadType::EncChallengeResponse,
                    Bytes::from(to_json(&reply)),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "Cannot answer the encryption challenge"),
        }
    }

    /// Queues keystrokes (PayloadType 1), split into [`MAX_INPUT_CHUNK`] pieces.
    /// In a port session the pieces are [`PORT_INPUT_CHUNK`] bytes, as the plugin's.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        let size = if self.is_port() {
            PORT_INPUT_CHUNK
        } else {
            MAX_INPUT_CHUNK
        };
        for chunk in bytes.chunks(size) {
            self.queue
                .push_back((PayloadType::Output, Bytes::copy_from_slice(chunk)));
        }
    }

    /// Queues a Size message (PayloadType 3) if `size` differs from the last one queued
    /// (a still-queued older size is replaced). Returns true if something was queued.
    /// Port sessions have no window: nothing is queued there.
    pub fn queue_size(&mut self, size: Size) -> bool {
        if self.size == Some(size) || self.is_port() {
            return false;
        }
        self.force_size(size);
        true
    }

    fn force_size(&mut self, size: Size) {
        self.size = Some(size);
        self.queue.retain(|(pt, _)| *pt != PayloadType::Size);
        self.queue
            .push_back((PayloadType::Size, Bytes::from(to_json(&size))));
    }

    /// True when the pump may read more keystrokes: nothing waits in the queue and the
    /// sender has room (back-pressure towards stdin otherwise).
    pub fn wants_input(&self) -> bool {
        self.queue.is_empty() && self.sender.has_capacity()
    }

    /// True when every queued input has been sent and acknowledged.
    pub fn input_settled(&self) -> bool {
        self.queue.is_empty() && self.sender.is_empty()
    }

    /// Gives queued input sequence numbers while the sender has room; returns the frames
    /// to transmit now.
    pub fn flush(&mut self, now: Instant) -> Vec<Bytes> {
        let mut out = Vec::new();
        while self.sender.has_capacity() {
            if self.hold_input
                && self
                    .queue
                    .front()
                    .is_some_and(|(pt, _)| matches!(pt, PayloadType::Output | PayloadType::Size))
            {
                break;
            }
            let Some((payload_type, payload)) = self.queue.pop_front() else {
                break;
            };
            let payload = match (&self.cipher, payload_type) {
                (Some(c), PayloadType::Output) => {
                    Bytes::from(c.seal_with(rand::random(), &payload))
                }
                _ => payload,
            };
            let seq = self.sender.next_sequence();
            let msg = AgentMessage::new(
                MessageType::InputStreamData,
                payload_type,
                payload,
                now_ms(),
                Uuid::new_v4(),
            )
            // The client never sets flags on stream data (§3.6).
            .with_sequence(seq, 0);
            let Ok(frame) = msg.encode() else {
                // Only empty payloads fail, and none are queued; never skip a number.
                continue;
            };
            match self.sender.push(seq, msg.message_id, frame.clone(), now) {
                PushOutcome::Transmit => out.push(frame),
                // Not paused (the client ignores pause_publication) and checked for room.
                PushOutcome::Held | PushOutcome::Full | PushOutcome::DuplicateSequence => {}
            }
        }
        out
    }

    /// When the oldest unacknowledged input is due for retransmission.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sender.next_deadline()
    }

    /// The frame to retransmit now, if the head of line is overdue.
    pub fn poll_retransmit(&mut self, now: Instant) -> Option<Bytes> {
        self.sender.poll_retransmit(now)
    }

    /// After a reconnect: every unacknowledged frame again, then anything queued.
    pub fn reconnected(&mut self, now: Instant) -> Vec<Bytes> {
        let mut frames = self.sender.retransmit_all(now);
        frames.extend(self.flush(now));
        frames
    }

    /// Handles one binary websocket message.
    pub fn on_frame(&mut self, raw: &[u8], now: Instant) -> Vec<Effect> {
        let msg = match AgentMessage::decode(raw, DEFAULT_MAX_FRAME_LEN) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "Dropping a malformed frame");
                return Vec::new();
            }
        };
        match msg.message_type {
            MessageType::OutputStreamData => self.on_output(msg, now),
            MessageType::Acknowledge => {
                match from_json::<Acknowledge>(&msg.payload, "acknowledge") {
                    Ok(ack) => {
                        self.sender
                            .on_ack(ack.acknowledged_message_sequence_number, now);
                    }
                    Err(e) => tracing::debug!(error = %e, "Ignoring an unreadable acknowledge"),
                }
                // An ack may have made room for queued input.
                self.flush(now).into_iter().map(Effect::Send).collect()
            }
            MessageType::ChannelClosed => {
                let closed =
                    from_json::<ChannelClosed>(&msg.payload, "channel_closed").unwrap_or_default();
                vec![Effect::Closed(closed)]
            }
            // The official client ignores publication control; so do we (§4.8).
            other => {
                tracing::debug!(message_type = %other, "Ignoring data-channel message");
                Vec::new()
            }
        }
    }

    fn on_output(&mut self, msg: AgentMessage, now: Instant) -> Vec<Effect> {
        if !self.output_ready
            && msg.payload_type == PayloadType::Output
            && msg.sequence_number >= self.receiver.expected()
        {
            tracing::trace!(seq = msg.sequence_number, "Output not taken yet");
            return Vec::new();
        }
        let ack = ack_frame(&msg);
        let outcome = self.receiver.on_frame(
            msg.sequence_number,
            Inbound {
                payload_type: msg.payload_type,
                payload: msg.payload,
            },
        );
        let mut effects = Vec::new();
        match outcome {
            ReceiveOutcome::Deliver { items } => {
                effects.extend(ack.map(Effect::Send));
                for item in items {
                    self.deliver(item, &mut effects);
                }
            }
            // Stored ahead of a gap, or already delivered: ack either way.
            ReceiveOutcome::Buffered | ReceiveOutcome::Duplicate => {
                effects.extend(ack.map(Effect::Send));
            }
            // No room: no ack, the agent retransmits.
            ReceiveOutcome::Full => {}
        }
        // A handshake answer may have been queued.
        effects.extend(self.flush(now).into_iter().map(Effect::Send));
        effects
    }

    fn deliver(&mut self, item: Inbound, effects: &mut Vec<Effect>) {
        if self.session_type.is_none()
            && matches!(item.payload_type, PayloadType::Output | PayloadType::StdErr)
        {
            // No handshake came first: a shell (upstream's ProcessFirstMessage).
            self.session_type = Some(SessionType::shell());
            effects.push(Effect::Started(SessionType::shell()));
        }
        match item.payload_type {
            PayloadType::Output | PayloadType::StdErr | PayloadType::ExitCode
                if self.cipher.is_some() =>
            {
                match self.cipher.as_ref().map(|c| c.open(&item.payload)) {
                    Some(Ok(plain)) if item.payload_type == PayloadType::StdErr => {
                        effects.push(Effect::Stderr(Bytes::from(plain)));
                    }
                    Some(Ok(plain)) => effects.push(Effect::Stdout(Bytes::from(plain))),
                    _ => tracing::warn!("Dropping output that does not decrypt"),
                }
            }
            PayloadType::EncChallengeRequest => self.on_challenge(&item.payload),
            // A command's `EXIT_CODE: n` is printed as the plugin does, with its output.
            PayloadType::Output | PayloadType::ExitCode => {
                effects.push(Effect::Stdout(item.payload));
            }
            PayloadType::StdErr => effects.push(Effect::Stderr(item.payload)),
            PayloadType::HandshakeRequest => self.on_handshake_request(&item.payload, effects),
            PayloadType::Flag => match crate::protocol::payload::flag::decode(&item.payload) {
                Some(value) => effects.push(Effect::Flag(value)),
                None => tracing::debug!("Ignoring a flag message that is not four bytes"),
            },
            PayloadType::HandshakeComplete => {
                match from_json::<HandshakeComplete>(&item.payload, "HandshakeComplete") {
                    Ok(done) if !done.customer_message.is_empty() => {
                        effects.push(Effect::Notice(done.customer_message));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "Ignoring an unreadable HandshakeComplete")
                    }
                }
                self.hold_input = false;
                // An agent discards non-handshake input until the handshake is over, so
                // the size sent at start may be lost: send it again (not to a port).
                if let Some(size) = self.size.filter(|_| !self.is_port()) {
                    self.force_size(size);
                }
            }
            other => tracing::debug!(payload_type = ?other, "Ignoring output payload type"),
        }
    }

    /// Answers a HandshakeRequest: SessionType accepted; KMSEncryption asks the pump for
    /// a data key first ([`Effect::GenerateDataKey`]) and holds keystrokes until the
    /// handshake is complete; anything else is unsupported.
    fn on_handshake_request(&mut self, payload: &[u8], effects: &mut Vec<Effect>) {
        let request: HandshakeRequest = match from_json(payload, "HandshakeRequest") {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "Ignoring an unreadable HandshakeRequest");
                return;
            }
        };
        let mut actions = Vec::new();
        let mut kms_key = None;
        for action in request.requested_client_actions {
            let (status, error) = match action.action_type.as_str() {
                "SessionType" => match serde_json::from_value::<SessionTypeParameters>(
                    action.action_parameters.clone(),
                ) {
                    Ok(p) => {
                        let known = SessionType {
                            session_type: p.session_type,
                            properties: p.properties,
                            agent_version: request.agent_version.clone(),
                        };
                        if self.session_type.is_none() {
                            if known.is_port() {
                                // No window in a port session: drop a size not yet sent.
                                self.queue.retain(|(pt, _)| *pt != PayloadType::Size);
                            }
                            self.session_type = Some(known.clone());
                            effects.push(Effect::Started(known));
                        }
                        (ACTION_STATUS_SUCCESS, String::new())
                    }
                    Err(e) => (
                        ACTION_STATUS_FAILED,
                        format!("unreadable SessionType parameters: {e}"),
                    ),
                },
                "KMSEncryption" => {
                    match serde_json::from_value::<KmsEncryptionParameters>(
                        action.action_parameters.clone(),
                    ) {
                        Ok(p) if !p.kms_key_id.is_empty() => {
                            kms_key = Some(p.kms_key_id);
                            continue;
                        }
                        _ => (
                            ACTION_STATUS_FAILED,
                            "the KMSEncryption request names no key".to_owned(),
                        ),
                    }
                }
                other => (
                    ACTION_STATUS_UNSUPPORTED,
                    format!("{other} is not supported by this client"),
                ),
            };
            actions.push(ProcessedClientAction {
                action_type: action.action_type,
                action_status: status,
                action_result: serde_json::Value::Null,
                error,
            });
        }
        match kms_key {
            Some(key_id) => {
                self.kms_pending = Some(actions);
                self.hold_input = true;
                effects.push(Effect::GenerateDataKey { key_id });
            }
            None => self.queue_handshake_response(actions),
        }
    }
}

/// The `acknowledge` frame for a received stream frame (§4.3).
fn ack_frame(m: &AgentMessage) -> Option<Bytes> {
    Acknowledge::frame_for(m, now_ms(), Uuid::new_v4())
        .encode()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(seq: i64, pt: PayloadType, payload: &[u8]) -> Bytes {
        AgentMessage::new(
            MessageType::OutputStreamData,
            pt,
            payload.to_vec(),
            1,
            Uuid::new_v4(),
        )
        .with_sequence(seq, u64::from(seq == 0))
        .encode()
        .unwrap()
    }

    fn decode(b: &Bytes) -> AgentMessage {
        AgentMessage::decode(b, DEFAULT_MAX_FRAME_LEN).unwrap()
    }

    fn sends(effects: &[Effect]) -> Vec<AgentMessage> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(b) => Some(decode(b)),
                _ => None,
            })
            .collect()
    }

    fn stdout(effects: &[Effect]) -> Vec<u8> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Stdout(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn ack_seq(m: &AgentMessage) -> i64 {
        assert_eq!(m.message_type, MessageType::Acknowledge);
        assert_eq!((m.flags, m.sequence_number), (3, 0));
        from_json::<Acknowledge>(&m.payload, "ack")
            .unwrap()
            .acknowledged_message_sequence_number
    }

    #[test]
    fn output_is_reordered_acked_and_duplicates_are_acked_again() {
        let mut c = Channel::new("t/1");
        let now = Instant::now();
        let e = c.on_frame(&output(1, PayloadType::Output, b"world"), now);
        assert_eq!(sends(&e).iter().map(ack_seq).collect::<Vec<_>>(), [1]);
        assert!(stdout(&e).is_empty());
        let e = c.on_frame(&output(0, PayloadType::Output, b"hello "), now);
        assert_eq!(sends(&e).iter().map(ack_seq).collect::<Vec<_>>(), [0]);
        assert_eq!(stdout(&e), b"hello world");
        let e = c.on_frame(&output(0, PayloadType::Output, b"hello "), now);
        assert_eq!(sends(&e).iter().map(ack_seq).collect::<Vec<_>>(), [0]);
        assert!(stdout(&e).is_empty());
        let e = c.on_frame(&output(2, PayloadType::StdErr, b"oops"), now);
        assert!(e.contains(&Effect::Stderr(Bytes::from_static(b"oops"))));
        // A command's exit code message is printed with its output, as the plugin does.
        let e = c.on_frame(&output(3, PayloadType::ExitCode, b"EXIT_CODE: 3"), now);
        assert!(e.contains(&Effect::Stdout(Bytes::from_static(b"EXIT_CODE: 3"))));
    }

    #[test]
    fn input_is_sequenced_from_zero_with_no_flags_and_retransmitted_until_acked() {
        let mut c = Channel::new("t/1");
        let t0 = Instant::now();
        assert!(c.queue_size(Size { cols: 80, rows: 24 }));
        assert!(!c.queue_size(Size { cols: 80, rows: 24 }));
        c.queue_input(b"ls\r");
        let frames: Vec<_> = c.flush(t0).iter().map(decode).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload_type, PayloadType::Size);
        assert_eq!(&frames[0].payload[..], br#"{"cols":80,"rows":24}"#);
        assert_eq!(frames[1].payload_type, PayloadType::Output);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.message_type, MessageType::InputStreamData);
            assert_eq!((f.sequence_number, f.flags), (i64::try_from(i).unwrap(), 0));
        }
        assert!(!c.input_settled());
        let due = c.next_deadline().unwrap();
        assert!(c.poll_retransmit(t0).is_none());
        let again = decode(&c.poll_retransmit(due).unwrap());
        assert_eq!(again.message_id, frames[0].message_id);
        for f in &frames {
            let raw = Acknowledge::frame_for(f, 1, Uuid::new_v4())
                .encode()
                .unwrap();
            c.on_frame(&raw, due);
        }
        assert!(c.input_settled());
        assert!(c.next_deadline().is_none());
    }

    #[test]
    fn reconnect_resends_everything_unacked() {
        let mut c = Channel::new("t/1");
        let t0 = Instant::now();
        c.queue_input(b"a");
        c.queue_input(b"b");
        assert_eq!(c.flush(t0).len(), 2);
        let again: Vec<_> = c
            .reconnected(t0)
            .iter()
            .map(|f| decode(f).sequence_number)
            .collect();
        assert_eq!(again, [0, 1]);
    }

    #[test]
    fn channel_closed_carries_the_output() {
        let mut c = Channel::new("t/1");
        let raw = AgentMessage::new(
            MessageType::ChannelClosed,
            PayloadType::Null,
            to_json(&json!({"SessionId":"s-1","Output":"boom"})),
            1,
            Uuid::new_v4(),
        )
        .encode()
        .unwrap();
        match c.on_frame(&raw, Instant::now()).as_slice() {
            [Effect::Closed(cc)] => assert_eq!(
                (cc.session_id.as_str(), cc.output.as_str()),
                ("s-1", "boom")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handshake_accepts_the_session_type_and_does_kms() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut c = Channel::new("session-agent/9");
        c.queue_size(Size {
            cols: 100,
            rows: 30,
        });
        let t0 = Instant::now();
        let sent = c.flush(t0);
        assert_eq!(sent.len(), 1);
        let request = json!({
            "AgentVersion": "3.3.0.0",
            "RequestedClientActions": [
                {"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":null}},
                {"ActionType":"KMSEncryption","ActionParameters":{"KMSKeyId":"k","Challenge":"Yw=="}}
            ]
        });
        let e = c.on_frame(
            &output(0, PayloadType::HandshakeRequest, &to_json(&request)),
            t0,
        );
        assert!(e.contains(&Effect::GenerateDataKey { key_id: "k".into() }));
        // Only the ack: the answer waits for the data key; keystrokes wait for the end
        // of the handshake (nothing typed may go out in clear).
        assert_eq!(sends(&e).len(), 1);
        c.queue_input(b"secret typed early");
        assert!(c.flush(t0).is_empty());
        let key: Vec<u8> = (0u8..64).collect();
        let notices = c.on_data_key(Ok((b"blob".to_vec(), key.clone())));
        assert!(notices.is_empty());
        let frames: Vec<AgentMessage> = c
            .flush(t0)
            .iter()
            .map(|f| AgentMessage::decode(f, DEFAULT_MAX_FRAME_LEN).unwrap())
            .collect();
        assert_eq!(frames.len(), 1, "only the HandshakeResponse: {frames:?}");
        let resp = &frames[0];
        assert_eq!(resp.payload_type, PayloadType::HandshakeResponse);
        assert_eq!(resp.sequence_number, 1);
        let v: serde_json::Value = serde_json::from_slice(&resp.payload).unwrap();
        assert_eq!(v["ClientVersion"], "session-agent/9");
        assert_eq!(v["ProcessedClientActions"][0]["ActionStatus"], 1);
        assert_eq!(
            v["ProcessedClientActions"][1]["ActionType"],
            "KMSEncryption"
        );
        assert_eq!(v["ProcessedClientActions"][1]["ActionStatus"], 1);
        assert_eq!(
            v["ProcessedClientActions"][1]["ActionResult"]["KMSCipherTextKey"],
            b64.encode(b"blob")
        );
        // The challenge comes back opened and sealed again with the client's key.
        let mut agent = SessionCipher::new(&key, Role::Agent, [3; 12]).unwrap();
        let secret = [7u8; 64];
        let challenge = json!({"Challenge": b64.encode(agent.seal(&secret))});
        let e = c.on_frame(
            &output(1, PayloadType::EncChallengeRequest, &to_json(&challenge)),
            t0,
        );
        let answer = sends(&e)
            .into_iter()
            .find(|m| m.payload_type == PayloadType::EncChallengeResponse)
            .expect("no challenge answer");
        let v: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
        let sealed = b64.decode(v["Challenge"].as_str().unwrap()).unwrap();
        assert_eq!(agent.open(&sealed).unwrap(), secret);
        let e = c.on_frame(&output(2, PayloadType::Output, &agent.seal(b"hi")), t0);
        assert!(
            e.contains(&Effect::Stdout(Bytes::from_static(b"hi"))),
            "{e:?}"
        );
        // After HandshakeComplete the held keystrokes leave, sealed.
        let done = json!({"HandshakeTimeToComplete": 5, "CustomerMessage": "encrypted"});
        let e = c.on_frame(
            &output(3, PayloadType::HandshakeComplete, &to_json(&done)),
            t0,
        );
        let typed = sends(&e)
            .into_iter()
            .find(|m| m.payload_type == PayloadType::Output)
            .expect("keystrokes not sent");
        assert_eq!(agent.open(&typed.payload).unwrap(), b"secret typed early");

        // A failed GenerateDataKey is reported as a failed action, and shown.
        let mut c = Channel::new("session-agent/9");
        c.on_frame(
            &output(0, PayloadType::HandshakeRequest, &to_json(&request)),
            t0,
        );
        let notices = c.on_data_key(Err("AccessDeniedException: no".into()));
        assert!(matches!(&notices[..], [Effect::Notice(t)] if t.contains("AccessDenied")));
        let frames: Vec<AgentMessage> = c
            .flush(t0)
            .iter()
            .map(|f| AgentMessage::decode(f, DEFAULT_MAX_FRAME_LEN).unwrap())
            .collect();
        let v: serde_json::Value = serde_json::from_slice(&frames[0].payload).unwrap();
        assert_eq!(v["ProcessedClientActions"][1]["ActionStatus"], 2);
    }

    #[test]
    fn handshake_complete_shows_its_message_and_resends_the_size() {
        let mut c = Channel::new("session-agent/9");
        c.queue_size(Size {
            cols: 100,
            rows: 30,
        });
        let t0 = Instant::now();
        c.flush(t0);
        let request = json!({
            "AgentVersion": "3.3.0.0",
            "RequestedClientActions": [
                {"ActionType":"SessionType","ActionParameters":{"SessionType":"Standard_Stream","Properties":null}}
            ]
        });
        let e = c.on_frame(
            &output(0, PayloadType::HandshakeRequest, &to_json(&request)),
            t0,
        );
        let frames = sends(&e);
        assert_eq!(frames[1].payload_type, PayloadType::HandshakeResponse);
        // HandshakeComplete: its message is shown and the size is sent again.
        let done = json!({"HandshakeTimeToComplete": 5, "CustomerMessage": "hello there"});
        let e = c.on_frame(
            &output(1, PayloadType::HandshakeComplete, &to_json(&done)),
            t0,
        );
        assert!(e.contains(&Effect::Notice("hello there".into())));
        let size = sends(&e)
            .into_iter()
            .find(|m| m.message_type == MessageType::InputStreamData)
            .unwrap();
        assert_eq!(
            (size.payload_type, size.sequence_number),
            (PayloadType::Size, 2)
        );
    }

    #[test]
    fn a_full_sender_holds_input_back() {
        let mut c = Channel::new("t/1");
        c.sender = Sender::new(SenderConfig {
            max_entries: 1,
            max_bytes: 1 << 20,
        });
        let t0 = Instant::now();
        c.queue_input(b"a");
        let first = c.flush(t0);
        assert_eq!(first.len(), 1);
        assert!(!c.wants_input());
        c.queue_input(b"b");
        assert!(c.flush(t0).is_empty(), "no room until the first is acked");
        let raw = Acknowledge::frame_for(&decode(&first[0]), 1, Uuid::new_v4())
            .encode()
            .unwrap();
        let sent = sends(&c.on_frame(&raw, t0));
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].sequence_number, &sent[0].payload[..]),
            (1, &b"b"[..])
        );
    }

    fn started(effects: &[Effect]) -> Vec<SessionType> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Started(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_port_handshake_tells_the_type_properties_and_agent_version() {
        let mut c = Channel::new(crate::protocol::version::CLIENT_COMPAT_VERSION);
        let t0 = Instant::now();
        assert!(c.queue_size(Size { cols: 80, rows: 24 }));
        c.flush(t0);
        let props = json!({"localPortNumber":"0","portNumber":"80","type":"LocalPortForwarding"});
        let request = json!({
            "AgentVersion": "3.2.0.0",
            "RequestedClientActions": [
                {"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":props}}
            ]
        });
        let e = c.on_frame(
            &output(0, PayloadType::HandshakeRequest, &to_json(&request)),
            t0,
        );
        let expected = SessionType {
            session_type: "Port".into(),
            properties: props,
            agent_version: "3.2.0.0".into(),
        };
        assert_eq!(started(&e), std::slice::from_ref(&expected));
        assert!(expected.is_port());
        assert_eq!(c.session_type(), Some(&expected));
        let response = sends(&e)
            .into_iter()
            .find(|m| m.payload_type == PayloadType::HandshakeResponse)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&response.payload).unwrap();
        // The version the agent picks its port mode from (multiplexed for us).
        assert_eq!(v["ClientVersion"], "1.2.500.0");
        assert_eq!(v["ProcessedClientActions"][0]["ActionStatus"], 1);
        // No window in a port session: no size now, none after HandshakeComplete.
        assert!(!c.queue_size(Size {
            cols: 100,
            rows: 30
        }));
        let done = json!({"HandshakeTimeToComplete": 5, "CustomerMessage": ""});
        let e = c.on_frame(
            &output(1, PayloadType::HandshakeComplete, &to_json(&done)),
            t0,
        );
        assert!(sends(&e)
            .iter()
            .all(|m| m.payload_type != PayloadType::Size));
        // The agent's flags come out as such; tunnel bytes as output, with no second
        // Started.
        let e = c.on_frame(&output(2, PayloadType::Flag, &[0, 0, 0, 3]), t0);
        assert!(e.contains(&Effect::Flag(3)));
        let e = c.on_frame(&output(3, PayloadType::Output, b"SSH-2.0-x"), t0);
        assert!(started(&e).is_empty());
        assert_eq!(stdout(&e), b"SSH-2.0-x");
        // Ours go out as PayloadType 10, four bytes big-endian.
        c.queue_flag(crate::protocol::payload::flag::TERMINATE_SESSION);
        let f = decode(&c.flush(t0)[0]);
        assert_eq!(
            (f.payload_type, &f.payload[..]),
            (PayloadType::Flag, &[0u8, 0, 0, 2][..])
        );
    }

    #[test]
    fn output_without_a_handshake_is_a_shell() {
        let mut c = Channel::new("t/1");
        let e = c.on_frame(&output(0, PayloadType::Output, b"$ "), Instant::now());
        assert_eq!(started(&e), [SessionType::shell()]);
        assert!(!SessionType::shell().is_port());
        // Started comes before the bytes, so the terminal is set up first.
        assert!(matches!(
            e.iter().find(|e| !matches!(e, Effect::Send(_))),
            Some(Effect::Started(_))
        ));
        let e = c.on_frame(&output(1, PayloadType::Output, b"x"), Instant::now());
        assert!(started(&e).is_empty());
        // Standard_Stream by handshake (KMS) is a shell too.
        let mut c = Channel::new("t/1");
        let request = json!({"AgentVersion": "3.2.0.0", "RequestedClientActions": [
            {"ActionType":"SessionType","ActionParameters":{"SessionType":"NonInteractiveCommands","Properties":null}}
        ]});
        let e = c.on_frame(
            &output(0, PayloadType::HandshakeRequest, &to_json(&request)),
            Instant::now(),
        );
        assert!(!started(&e)[0].is_port());
    }

    #[test]
    fn output_not_ready_is_left_unacknowledged_for_the_agent_to_resend() {
        let mut c = Channel::new("t/1");
        let t0 = Instant::now();
        c.on_frame(&output(0, PayloadType::Output, b"a"), t0);
        c.set_output_ready(false);
        assert!(c
            .on_frame(&output(1, PayloadType::Output, b"b"), t0)
            .is_empty());
        // A duplicate of what was delivered is still acknowledged.
        let e = c.on_frame(&output(0, PayloadType::Output, b"a"), t0);
        assert_eq!(sends(&e).iter().map(ack_seq).collect::<Vec<_>>(), [0]);
        c.set_output_ready(true);
        let e = c.on_frame(&output(1, PayloadType::Output, b"b"), t0);
        assert_eq!(stdout(&e), b"b");
    }
}
