//! The AgentMessage binary frame (protocol.md §3): every websocket message after the
//! text "open" frame is one of these.
//!
//! ```text
//! offset len field           encoding
//!      0   4 HeaderLength    u32 BE, always 116 (= offset of PayloadLength)
//!      4  32 MessageType     ASCII, left-aligned, space padded
//!     36   4 SchemaVersion   u32 BE, 1
//!     40   8 CreatedDate     u64 BE, Unix epoch milliseconds
//!     48   8 SequenceNumber  i64 BE
//!     56   8 Flags           u64 BE, bit0 SYN, bit1 FIN
//!     64  16 MessageId       UUID with its two 8-byte halves swapped
//!     80  32 PayloadDigest   SHA-256 of Payload
//!    112   4 PayloadType     u32 BE
//!    116   4 PayloadLength   u32 BE
//!    120   n Payload
//! ```
//!
//! Decoding is stricter than upstream on purpose: upstream takes the payload from
//! `HeaderLength + 4` to the end and never checks `PayloadLength`; we require
//! `HeaderLength == 116` and `PayloadLength` to match the bytes present, so a truncated or
//! padded frame is reported instead of silently accepted. The SHA-256 digest is verified
//! for every non-empty payload (the official client does the same; the official agent
//! does not verify at all). Encoding refuses an empty payload, which old agents cannot
//! handle (§3.3).

use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::fmt;
use uuid::Uuid;

/// Value of the HeaderLength field: the offset of PayloadLength.
pub const HEADER_LENGTH: u32 = 116;
/// Bytes before the payload.
pub const PREFIX_LEN: usize = 120;
/// Width of the space-padded MessageType field.
pub const MESSAGE_TYPE_LEN: usize = 32;
/// Flags bit 0: first message of a stream.
pub const FLAG_SYN: u64 = 1;
/// Flags bit 1: last message of a stream (never set upstream).
pub const FLAG_FIN: u64 = 2;
/// Default upper bound for one decoded frame. The largest legitimate message is a
/// control-channel reply of about 142 000 bytes (§1.3); stream payloads we send are far
/// smaller. 4 MiB leaves room for clients with bigger chunks while keeping a hostile peer
/// from making us hash and buffer arbitrary amounts.
pub const DEFAULT_MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// The message types named in upstream code (§3.4), plus whatever else a peer sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum MessageType {
    InteractiveShell,
    ChannelClosed,
    AgentJob,
    AgentJobAck,
    AgentJobReply,
    AgentJobReplyAck,
    AgentTaskComplete,
    AgentTaskAcknowledge,
    AgentTaskReply,
    AgentTelemetry,
    AgentUpdateResult,
    OutputStreamData,
    InputStreamData,
    Acknowledge,
    AgentSessionState,
    PausePublication,
    StartPublication,
    /// A syntactically valid type this crate does not know. Receivers log and drop it,
    /// as upstream does.
    Other(String),
}

impl MessageType {
    const KNOWN: [(MessageType, &'static str); 17] = [
        (Self::InteractiveShell, "interactive_shell"),
        (Self::ChannelClosed, "channel_closed"),
        (Self::AgentJob, "agent_job"),
        (Self::AgentJobAck, "agent_job_ack"),
        (Self::AgentJobReply, "agent_job_reply"),
        (Self::AgentJobReplyAck, "agent_job_reply_ack"),
        (Self::AgentTaskComplete, "agent_task_complete"),
        (Self::AgentTaskAcknowledge, "agent_task_acknowledge"),
        (Self::AgentTaskReply, "agent_task_reply"),
        (Self::AgentTelemetry, "agent_telemetry"),
        (Self::AgentUpdateResult, "agent_update_result"),
        (Self::OutputStreamData, "output_stream_data"),
        (Self::InputStreamData, "input_stream_data"),
        (Self::Acknowledge, "acknowledge"),
        (Self::AgentSessionState, "agent_session_state"),
        (Self::PausePublication, "pause_publication"),
        (Self::StartPublication, "start_publication"),
    ];

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(s) => s,
            known => Self::KNOWN
                .iter()
                .find(|(t, _)| t == known)
                .map_or("", |(_, s)| s),
        }
    }

    /// Parses the wire spelling; unknown names become [`MessageType::Other`].
    pub fn parse(s: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|(_, name)| *name == s)
            .map_or_else(|| Self::Other(s.to_owned()), |(t, _)| t.clone())
    }

    /// Stream data is sequenced and acknowledged; everything else carries sequence 0.
    pub fn is_stream_data(&self) -> bool {
        matches!(self, Self::OutputStreamData | Self::InputStreamData)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PayloadType values (§3.5). `Output` (1) is used for keystrokes as well as output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum PayloadType {
    Null,
    Output,
    Error,
    Size,
    Parameter,
    HandshakeRequest,
    HandshakeResponse,
    HandshakeComplete,
    EncChallengeRequest,
    EncChallengeResponse,
    Flag,
    StdErr,
    ExitCode,
    Other(u32),
}

impl From<u32> for PayloadType {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::Null,
            1 => Self::Output,
            2 => Self::Error,
            3 => Self::Size,
            4 => Self::Parameter,
            5 => Self::HandshakeRequest,
            6 => Self::HandshakeResponse,
            7 => Self::HandshakeComplete,
            8 => Self::EncChallengeRequest,
            9 => Self::EncChallengeResponse,
            10 => Self::Flag,
            11 => Self::StdErr,
            12 => Self::ExitCode,
            other => Self::Other(other),
        }
    }
}

impl From<PayloadType> for u32 {
    fn from(p: PayloadType) -> u32 {
        match p {
            PayloadType::Null => 0,
            PayloadType::Output => 1,
            PayloadType::Error => 2,
            PayloadType::Size => 3,
            PayloadType::Parameter => 4,
            PayloadType::HandshakeRequest => 5,
            PayloadType::HandshakeResponse => 6,
            PayloadType::HandshakeComplete => 7,
            PayloadType::EncChallengeRequest => 8,
            PayloadType::EncChallengeResponse => 9,
            PayloadType::Flag => 10,
            PayloadType::StdErr => 11,
            PayloadType::ExitCode => 12,
            PayloadType::Other(v) => v,
        }
    }
}

/// One AgentMessage, decoded. Header fields that are recomputed on encode (HeaderLength,
/// PayloadLength, PayloadDigest) are not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMessage {
    /// What the message is.
    pub message_type: MessageType,
    /// Always 1 in current peers.
    pub schema_version: u32,
    /// Creation time, Unix epoch milliseconds.
    pub created_date: u64,
    /// Per-direction stream counter for stream data; 0 otherwise.
    pub sequence_number: i64,
    /// [`FLAG_SYN`] / [`FLAG_FIN`]; informational only.
    pub flags: u64,
    /// Random per message; retries of a control reply reuse it.
    pub message_id: Uuid,
    /// How to read the payload.
    pub payload_type: PayloadType,
    /// The payload bytes.
    pub payload: Bytes,
}

/// Why a frame could not be decoded. Every variant is a property of the input bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the fixed header.
    #[error("frame truncated: {len} bytes is shorter than the {PREFIX_LEN}-byte header")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// More bytes than the configured maximum.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// HeaderLength is not 116.
    #[error("header length {0} is not {HEADER_LENGTH}")]
    HeaderLength(u32),
    /// PayloadLength disagrees with the bytes present.
    #[error("payload length field says {declared} bytes but {actual} follow the header")]
    PayloadLength {
        /// PayloadLength field.
        declared: u32,
        /// Bytes after the header.
        actual: usize,
    },
    /// MessageType is empty, not ASCII, or contains control characters.
    #[error("message type field is malformed: {0}")]
    MessageType(String),
    /// CreatedDate is zero (both upstream peers reject this).
    #[error("created date is zero")]
    CreatedDate,
    /// The SHA-256 of the payload does not match PayloadDigest.
    #[error("payload digest does not match its SHA-256")]
    Digest,
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Old agents cannot handle empty payloads, so we never send one (§3.3).
    #[error("refusing to encode an empty payload ({0})")]
    EmptyPayload(MessageType),
    /// The type name does not fit the 32-byte field or is not printable ASCII.
    #[error("message type {0:?} is not printable ASCII of at most 32 bytes")]
    MessageType(String),
    /// The payload length does not fit the u32 PayloadLength field.
    #[error("payload of {0} bytes is too large for a frame")]
    PayloadTooLarge(usize),
}

impl AgentMessage {
    /// A message with schema version 1, sequence 0 and no flags.
    pub fn new(
        message_type: MessageType,
        payload_type: PayloadType,
        payload: impl Into<Bytes>,
        created_date: u64,
        message_id: Uuid,
    ) -> Self {
        Self {
            message_type,
            schema_version: 1,
            created_date,
            sequence_number: 0,
            flags: 0,
            message_id,
            payload_type,
            payload: payload.into(),
        }
    }

    /// Sets the sequence number and flags (builder style).
    #[must_use]
    pub fn with_sequence(mut self, sequence_number: i64, flags: u64) -> Self {
        self.sequence_number = sequence_number;
        self.flags = flags;
        self
    }

    /// Serializes the frame, computing HeaderLength, PayloadLength and the digest.
    ///
    /// # Errors
    /// Empty payload, an unencodable message type, or a payload over 4 GiB.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        if self.payload.is_empty() {
            return Err(EncodeError::EmptyPayload(self.message_type.clone()));
        }
        let name = self.message_type.as_str();
        if name.is_empty() || name.len() > MESSAGE_TYPE_LEN || !is_printable_ascii(name) {
            return Err(EncodeError::MessageType(name.to_owned()));
        }
        let len = u32::try_from(self.payload.len())
            .map_err(|_| EncodeError::PayloadTooLarge(self.payload.len()))?;
        let mut out = Vec::with_capacity(PREFIX_LEN + self.payload.len());
        out.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        let mut type_field = [b' '; MESSAGE_TYPE_LEN];
        type_field[..name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&type_field);
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        out.extend_from_slice(&self.created_date.to_be_bytes());
        out.extend_from_slice(&self.sequence_number.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        let id = self.message_id.as_bytes();
        out.extend_from_slice(&id[8..16]);
        out.extend_from_slice(&id[0..8]);
        out.extend_from_slice(&Sha256::digest(&self.payload));
        out.extend_from_slice(&u32::from(self.payload_type).to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload);
        Ok(Bytes::from(out))
    }

    /// Decodes one complete frame (one websocket binary message), refusing frames longer
    /// than `max_len`.
    ///
    /// # Errors
    /// See [`DecodeError`]; never panics on any input.
    pub fn decode(frame: &[u8], max_len: usize) -> Result<Self, DecodeError> {
        if frame.len() > max_len {
            return Err(DecodeError::TooLarge {
                len: frame.len(),
                max: max_len,
            });
        }
        let Some((header, payload)) = frame.split_at_checked(PREFIX_LEN) else {
            return Err(DecodeError::Truncated { len: frame.len() });
        };
        let header_length = be_u32(header, 0);
        if header_length != HEADER_LENGTH {
            return Err(DecodeError::HeaderLength(header_length));
        }
        let declared = be_u32(header, 116);
        if usize::try_from(declared).ok() != Some(payload.len()) {
            return Err(DecodeError::PayloadLength {
                declared,
                actual: payload.len(),
            });
        }
        let message_type = parse_type_field(&header[4..36])?;
        let created_date = be_u64(header, 40);
        let exempt = matches!(
            message_type,
            MessageType::PausePublication | MessageType::StartPublication
        );
        if created_date == 0 && !exempt {
            return Err(DecodeError::CreatedDate);
        }
        if !payload.is_empty() && Sha256::digest(payload).as_slice() != &header[80..112] {
            return Err(DecodeError::Digest);
        }
        let mut id = [0u8; 16];
        id[0..8].copy_from_slice(&header[72..80]);
        id[8..16].copy_from_slice(&header[64..72]);
        Ok(Self {
            message_type,
            schema_version: be_u32(header, 36),
            created_date,
            sequence_number: i64::from_be_bytes(array8(header, 48)),
            flags: be_u64(header, 56),
            message_id: Uuid::from_bytes(id),
            payload_type: PayloadType::from(be_u32(header, 112)),
            payload: Bytes::copy_from_slice(payload),
        })
    }
}

fn parse_type_field(field: &[u8]) -> Result<MessageType, DecodeError> {
    let trimmed = field
        .iter()
        .position(|b| !matches!(b, 0 | b' '))
        .map_or(&[][..], |start| {
            let end = field
                .iter()
                .rposition(|b| !matches!(b, 0 | b' '))
                .unwrap_or(start);
            &field[start..=end]
        });
    let name = std::str::from_utf8(trimmed)
        .ok()
        .filter(|s| !s.is_empty() && is_printable_ascii(s))
        .ok_or_else(|| DecodeError::MessageType(format!("{:?}", String::from_utf8_lossy(field))))?;
    Ok(MessageType::parse(name))
}

fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn array8(buf: &[u8], at: usize) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[at..at + 8]);
    a
}

fn be_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(array8(buf, at))
}

fn be_u32(buf: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentMessage {
        AgentMessage::new(
            MessageType::OutputStreamData,
            PayloadType::Output,
            &b"hello\r\n"[..],
            1_700_000_000_000,
            Uuid::parse_str("3fa85f64-5717-4562-b3fc-2c963f66afa6").unwrap(),
        )
        .with_sequence(0, FLAG_SYN)
    }

    #[test]
    fn message_type_names_round_trip() {
        for (t, name) in MessageType::KNOWN {
            assert_eq!(t.as_str(), name);
            assert_eq!(MessageType::parse(name), t);
        }
        assert_eq!(
            MessageType::parse("weird"),
            MessageType::Other("weird".into())
        );
    }

    #[test]
    fn payload_types_round_trip() {
        for v in 0..20u32 {
            assert_eq!(u32::from(PayloadType::from(v)), v);
        }
    }

    #[test]
    fn rejects_empty_payload_on_encode() {
        let mut m = sample();
        m.payload = Bytes::new();
        assert!(matches!(m.encode(), Err(EncodeError::EmptyPayload(_))));
    }

    #[test]
    fn rejects_long_or_odd_type_names_on_encode() {
        let mut m = sample();
        m.message_type = MessageType::Other("x".repeat(33));
        assert!(matches!(m.encode(), Err(EncodeError::MessageType(_))));
        m.message_type = MessageType::Other("has space".into());
        assert!(matches!(m.encode(), Err(EncodeError::MessageType(_))));
    }

    #[test]
    fn accepts_nul_padding_like_upstream() {
        let mut f = sample().encode().unwrap().to_vec();
        for b in &mut f[4 + 18..36] {
            *b = 0;
        }
        let m = AgentMessage::decode(&f, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(m.message_type, MessageType::OutputStreamData);
    }

    #[test]
    fn decode_errors_are_typed() {
        let good = sample().encode().unwrap().to_vec();
        let max = DEFAULT_MAX_FRAME_LEN;
        assert_eq!(
            AgentMessage::decode(&good[..100], max),
            Err(DecodeError::Truncated { len: 100 })
        );
        assert_eq!(
            AgentMessage::decode(&good, 126),
            Err(DecodeError::TooLarge { len: 127, max: 126 })
        );
        assert!(matches!(
            AgentMessage::decode(&good[..125], max),
            Err(DecodeError::PayloadLength {
                declared: 7,
                actual: 5
            })
        ));
        let mut f = good.clone();
        f[3] = 117;
        assert_eq!(
            AgentMessage::decode(&f, max),
            Err(DecodeError::HeaderLength(117))
        );
        let mut f = good.clone();
        f[126] ^= 1;
        assert_eq!(AgentMessage::decode(&f, max), Err(DecodeError::Digest));
        let mut f = good.clone();
        f[4..36].fill(b' ');
        assert!(matches!(
            AgentMessage::decode(&f, max),
            Err(DecodeError::MessageType(_))
        ));
        let mut f = good.clone();
        f[5] = 0xff;
        assert!(matches!(
            AgentMessage::decode(&f, max),
            Err(DecodeError::MessageType(_))
        ));
        let mut f = good;
        f[40..48].fill(0);
        assert_eq!(AgentMessage::decode(&f, max), Err(DecodeError::CreatedDate));
    }
}
