//! Typed JSON payloads carried in AgentMessage frames and in the websocket "open" text
//! frames and REST bodies (protocol.md §1.2–§1.8, §2, §4.3, §4.7, §5, §6.5).
//!
//! Outbound JSON uses the exact key spelling and order upstream marshals (serde keeps
//! field order). Inbound JSON is decoded with [`from_json`], which matches top-level keys
//! case-insensitively as Go's `encoding/json` does: an exact match wins, otherwise the
//! first key equal ignoring ASCII case.

use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// `MessageSchemaVersion` in every REST body and open frame.
pub const MESSAGE_SCHEMA_VERSION: &str = "1.0";

/// A JSON payload could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not valid JSON for the expected shape.
    #[error("invalid {what} payload: {source}")]
    Json {
        /// Which payload.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The REST token response lacks a `<TokenValue>`.
    #[error("token response has no <TokenValue> element")]
    MissingToken,
}

/// Decodes `bytes` as `T`, matching `T`'s top-level field names case-insensitively.
///
/// # Errors
/// Invalid JSON or a shape that does not fit `T`; `what` names the payload in the message.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, PayloadError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|source| PayloadError::Json { what, source })?;
    from_value(value, what)
}

/// [`from_json`] for an already-parsed value.
///
/// # Errors
/// A shape that does not fit `T`.
pub fn from_value<T: DeserializeOwned>(
    value: Value,
    what: &'static str,
) -> Result<T, PayloadError> {
    T::deserialize(CaseInsensitive(value)).map_err(|source| PayloadError::Json { what, source })
}

/// Serializes a payload to compact JSON bytes.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs (string keys, no maps with non-string keys) cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// A `serde_json::Value` deserializer that renames the keys of a top-level object to the
/// field names the target struct declares, ignoring case.
struct CaseInsensitive(Value);

impl<'de> Deserializer<'de> for CaseInsensitive {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let Value::Object(map) = self.0 else {
            return self.0.deserialize_struct(name, fields, visitor);
        };
        let mut out = Map::with_capacity(map.len());
        let mut exact = std::collections::HashSet::new();
        for (key, value) in map {
            if fields.contains(&key.as_str()) {
                exact.insert(key.clone());
                out.insert(key, value);
            } else if let Some(field) = fields.iter().find(|f| f.eq_ignore_ascii_case(&key)) {
                // An exact-case key beats a case-folded one, whatever the order.
                if !exact.contains(*field) {
                    out.insert((*field).to_owned(), value);
                }
            } else {
                out.insert(key, value);
            }
        }
        Value::Object(out).deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_option(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map identifier ignored_any
    }
}

// === REST bodies and open frames ===

/// Body of CreateControlChannel / CreateDataChannel (§1.2, §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateChannelRequest {
    /// `"1.0"`.
    pub message_schema_version: String,
    /// A fresh UUID v4.
    pub request_id: String,
    /// Data channel only; upstream always sends `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// The token a channel-creation POST returns (as XML, §1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// Schema version, `"1.0"`.
    pub message_schema_version: String,
    /// The single-use token for the open frame.
    pub token_value: String,
}

impl TokenResponse {
    /// Renders the XML body MGS answers with; `root` names the root element.
    pub fn to_xml(&self, root: &str) -> String {
        format!(
            "<{root}><MessageSchemaVersion>{}</MessageSchemaVersion><TokenValue>{}</TokenValue></{root}>",
            xml_escape(&self.message_schema_version),
            xml_escape(&self.token_value)
        )
    }

    /// Extracts `<MessageSchemaVersion>` and `<TokenValue>` from an XML body, whatever the
    /// root element is called (the agent does not check it either).
    ///
    /// # Errors
    /// [`PayloadError::MissingToken`] when there is no `<TokenValue>` element.
    pub fn from_xml(body: &str) -> Result<Self, PayloadError> {
        let token_value = xml_child(body, "TokenValue").ok_or(PayloadError::MissingToken)?;
        let message_schema_version = xml_child(body, "MessageSchemaVersion").unwrap_or_default();
        Ok(Self {
            message_schema_version,
            token_value,
        })
    }
}

fn xml_child(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&close)?;
    Some(xml_unescape(&body[start..end]))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// First (text) frame on the control-channel websocket (§1.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenControlChannel {
    /// Always `null` upstream.
    pub cookie: Option<String>,
    /// `"1.0"`.
    pub message_schema_version: String,
    /// A fresh UUID v4.
    pub request_id: String,
    /// From CreateControlChannel.
    pub token_value: String,
    /// Agent version string.
    pub agent_version: String,
    /// `linux`, `windows` or `macos`.
    pub platform_type: String,
}

/// First (text) frame on a data-channel websocket, from the agent (§2.2) or from the
/// client (§2.3). The agent sends `ClientInstanceId`; the client sends `ClientVersion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenDataChannel {
    /// `"1.0"`.
    pub message_schema_version: String,
    /// A fresh UUID v4.
    pub request_id: String,
    /// From CreateDataChannel (agent) or StartSession/ResumeSession (client).
    pub token_value: String,
    /// Agent only: the instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_instance_id: Option<String>,
    /// Agent: `""` upstream; client: a UUID per plugin run.
    #[serde(default)]
    pub client_id: String,
    /// Client only: its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
}

// === data channel ===

/// Payload of `acknowledge` (§4.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Acknowledge {
    /// Type of the acknowledged frame.
    pub acknowledged_message_type: String,
    /// Its MessageId as a canonical UUID string.
    pub acknowledged_message_id: String,
    /// Its SequenceNumber: what the sender matches on.
    pub acknowledged_message_sequence_number: i64,
    /// Always `true`.
    #[serde(default = "yes")]
    pub is_sequential_message: bool,
}

impl Acknowledge {
    /// The acknowledgement of a received stream frame (§4.3).
    pub fn of(m: &crate::protocol::frame::AgentMessage) -> Self {
        Self {
            acknowledged_message_type: m.message_type.to_string(),
            acknowledged_message_id: m.message_id.to_string(),
            acknowledged_message_sequence_number: m.sequence_number,
            is_sequential_message: true,
        }
    }

    /// The `acknowledge` frame for `m`: sequence 0, Flags 3, payload type 0 (§3.6).
    /// Time and id are parameters, as everywhere in this module.
    pub fn frame_for(
        m: &crate::protocol::frame::AgentMessage,
        created_date: u64,
        message_id: uuid::Uuid,
    ) -> crate::protocol::frame::AgentMessage {
        use crate::protocol::frame::{AgentMessage, MessageType, PayloadType};
        AgentMessage::new(
            MessageType::Acknowledge,
            PayloadType::Null,
            to_json(&Self::of(m)),
            created_date,
            message_id,
        )
        .with_sequence(0, 3)
    }
}

fn yes() -> bool {
    true
}

/// Payload of `channel_closed` (§1.7.2, §4.6), on either channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ChannelClosed {
    /// `"channel_closed"`.
    pub message_type: String,
    /// A UUID.
    pub message_id: String,
    /// The target id.
    pub destination_id: String,
    /// The session being closed: the only key the agent reads.
    pub session_id: String,
    /// 1.
    pub schema_version: i64,
    /// Creation time as text.
    pub created_date: String,
    /// Text the client prints (`SessionId: <id> : <Output>`); empty prints the normal
    /// exit line.
    pub output: String,
}

/// `SessionState` values of `agent_session_state` (§4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    /// Sent right after the data channel opens.
    Connected,
    /// Sent when the shell ended by itself.
    Terminating,
}

/// Payload of `agent_session_state` (§4.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentSessionState {
    /// 1.
    pub schema_version: i64,
    /// The new state.
    pub session_state: SessionState,
    /// The session.
    pub session_id: String,
}

/// PayloadType 3: the client's terminal size (§6.5). Keys are lowercase on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

// === control channel ===

/// Outer payload of `interactive_shell` (and `agent_job`): `Content` is a JSON document
/// encoded as a string (§1.7.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MgsPayload {
    /// The string-encoded inner document.
    pub content: String,
    /// Task id (the session id for sessions).
    #[serde(default)]
    pub task_id: String,
    /// Not interpreted by the agent.
    #[serde(default)]
    pub topic: String,
    /// 1.
    #[serde(default)]
    pub schema_version: i64,
}

/// Whether a session id from the service is one the agent will use in URLs, file names
/// and object keys: 1 to 256 characters of `[A-Za-z0-9+=,.@_:-]` (AWS ids are
/// `<caller>-<hex>`, and IAM names use `+=,.@_-`), not starting with `.`. Anything else —
/// `/`, `..` segments, spaces, control characters, `?`, `%` — is refused: it could climb
/// out of a URL path or a directory.
pub fn valid_session_id(id: &str) -> bool {
    (1..=256).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_:-".contains(&b))
}

/// The inner `Content` of `interactive_shell` (§1.7.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentTaskPayload {
    /// Session id; also the data-channel id.
    pub session_id: String,
    /// e.g. `SSM-SessionManagerRunShell`.
    #[serde(default)]
    pub document_name: String,
    /// The session document (see [`super::document`]).
    #[serde(default)]
    pub document_content: Value,
    /// Values for `{{ name }}` placeholders.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// User from the caller's `SSMSessionRunAs` tag; wins over `runAsDefaultUser`.
    #[serde(default)]
    pub run_as_user: String,
    /// IAM ARN of the caller.
    #[serde(default)]
    pub session_owner: String,
}

impl AgentTaskPayload {
    /// Wraps this task in the outer `interactive_shell` payload.
    pub fn to_mgs_payload(&self, topic: &str) -> MgsPayload {
        MgsPayload {
            content: String::from_utf8(to_json(self)).unwrap_or_default(),
            task_id: self.session_id.clone(),
            topic: topic.to_owned(),
            schema_version: 1,
        }
    }

    /// Decodes the two-level `interactive_shell` payload, matching keys case-insensitively
    /// at both levels.
    ///
    /// # Errors
    /// Invalid JSON at either level or a missing `SessionId`.
    pub fn from_interactive_shell(payload: &[u8]) -> Result<(MgsPayload, Self), PayloadError> {
        let outer: MgsPayload = from_json(payload, "interactive_shell")?;
        let inner: Self = from_json(outer.content.as_bytes(), "interactive_shell Content")?;
        Ok((outer, inner))
    }
}

/// `FinalTaskStatus` values used by sessions.
pub mod task_status {
    /// The session ran and ended normally (or was terminated).
    pub const SUCCESS: &str = "Success";
    /// The session could not start or broke.
    pub const FAILED: &str = "Failed";
    /// The session was cancelled.
    pub const CANCELLED: &str = "Cancelled";
    /// The session hit a time limit.
    pub const TIMED_OUT: &str = "TimedOut";
}

/// Payload of `agent_task_complete` (§1.8.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentTaskComplete {
    /// 1.
    pub schema_version: i64,
    /// The session id.
    pub task_id: String,
    /// `"agent_task_complete"`.
    pub topic: String,
    /// See [`task_status`].
    pub final_task_status: String,
    /// false.
    pub is_routing_failure: bool,
    /// `""`.
    pub aws_account_id: String,
    /// The instance id.
    pub instance_id: String,
    /// Error text or output; shown to the user on failure.
    pub output: String,
    /// Log bucket, or `""`.
    pub s3_bucket: String,
    /// Log object key, or `""`.
    pub s3_url_suffix: String,
    /// Log group, or `""`.
    pub cwl_group: String,
    /// Log stream, or `""`.
    pub cwl_stream: String,
    /// 1-based send attempt.
    pub retry_number: i64,
}

/// Payload of `agent_task_acknowledge` (§1.8.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentTaskAcknowledge {
    /// 1.
    pub schema_version: i64,
    /// MessageId of the acknowledged `agent_task_complete`.
    pub message_id: String,
    /// The session id.
    pub task_id: String,
    /// Free text.
    pub topic: String,
}

// === handshake (§5) ===

/// PayloadType 5, agent → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeRequest {
    /// Agent version.
    pub agent_version: String,
    /// What the client must do.
    pub requested_client_actions: Vec<RequestedClientAction>,
}

/// One requested action; `ActionParameters` depends on the type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestedClientAction {
    /// `SessionType` or `KMSEncryption`.
    pub action_type: String,
    /// [`SessionTypeParameters`] or [`KmsEncryptionParameters`] as JSON.
    pub action_parameters: Value,
}

/// `ActionParameters` of a `SessionType` action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionTypeParameters {
    /// e.g. `Standard_Stream`.
    pub session_type: String,
    /// `null` for shells; the document properties for Port.
    pub properties: Value,
}

/// `ActionParameters` of a `KMSEncryption` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsEncryptionParameters {
    /// The document's kmsKeyId.
    #[serde(rename = "KMSKeyId")]
    pub kms_key_id: String,
    /// Base64 of 16 random bytes.
    #[serde(rename = "Challenge", default)]
    pub challenge: String,
}

/// PayloadType 6, client → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeResponse {
    /// Client version.
    pub client_version: String,
    /// One entry per requested action.
    pub processed_client_actions: Vec<ProcessedClientAction>,
    /// Client-side errors, usually `null`.
    #[serde(default)]
    pub errors: Option<Vec<String>>,
}

/// `ActionStatus` 1: the client did it.
pub const ACTION_STATUS_SUCCESS: i64 = 1;

/// Flag messages (PayloadType 10): one u32, big-endian (protocol-sessions.md §2.4).
pub mod flag {
    /// Client → agent, one-connection `LocalPortForwarding`: its local connection ended;
    /// the agent closes its own and dials again on the next data.
    pub const DISCONNECT_TO_PORT: u32 = 1;
    /// Client → agent: end the session (Ctrl-C in a port session).
    pub const TERMINATE_SESSION: u32 = 2;
    /// Agent → client, multiplexed mode only: a connection to the destination failed.
    pub const CONNECT_TO_PORT_ERROR: u32 = 3;

    /// The payload of a flag message.
    pub fn encode(value: u32) -> [u8; 4] {
        value.to_be_bytes()
    }

    /// A flag message's value; `None` unless the payload is exactly four bytes.
    pub fn decode(payload: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(payload.try_into().ok()?))
    }
}

/// Result of one requested action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessedClientAction {
    /// Echo of the requested type.
    pub action_type: String,
    /// 1 success, 2 failed, 3 unsupported.
    #[serde(default)]
    pub action_status: i64,
    /// For KMS: `{"KMSCipherTextKey": base64, "KMSCipherTextHash": ...}`.
    #[serde(default)]
    pub action_result: Value,
    /// Error text.
    #[serde(default)]
    pub error: String,
}

/// `ActionResult` of a successful `KMSEncryption` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsEncryptionResult {
    /// Base64 of the KMS ciphertext of the 64-byte data key.
    #[serde(rename = "KMSCipherTextKey")]
    pub kms_cipher_text_key: String,
    /// Unused by the official client (`null`).
    #[serde(rename = "KMSCipherTextHash", default)]
    pub kms_cipher_text_hash: Option<String>,
    /// Newer clients: the request's Challenge was put into the encryption context as
    /// `aws:ssm:RandomChallenge`.
    #[serde(rename = "ChallengeAcknowledgement", default)]
    pub challenge_acknowledgement: bool,
}

/// The encryption context of the session's data key (§5.4).
pub fn kms_context<'a>(
    session_id: &'a str,
    target_id: &'a str,
    challenge: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let mut c = vec![
        ("aws:ssm:SessionId", session_id),
        ("aws:ssm:TargetId", target_id),
    ];
    if let Some(ch) = challenge {
        c.push(("aws:ssm:RandomChallenge", ch));
    }
    c
}

/// PayloadType 7, agent → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeComplete {
    /// Integer nanoseconds.
    pub handshake_time_to_complete: i64,
    /// Printed by the client when non-empty.
    pub customer_message: String,
}

/// PayloadTypes 8 and 9: the encryption challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptionChallenge {
    /// Base64 of the AES-GCM sealed challenge.
    pub challenge: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_that_could_climb_are_refused() {
        for good in [
            "alice-0a1b2c3d4e5f",
            "bob@example.com-1",
            "role:x+y=z,w-2",
            "a",
        ] {
            assert!(valid_session_id(good), "{good}");
        }
        let long = "x".repeat(257);
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            "a/b",
            ".hidden",
            "a b",
            "a\nb",
            "a?b",
            "a%2Fb",
            "a\\b",
            "ü",
            &long,
        ] {
            assert!(!valid_session_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn acknowledge_matches_the_spec_bytes() {
        let ack = Acknowledge {
            acknowledged_message_type: "output_stream_data".into(),
            acknowledged_message_id: "3fa85f64-5717-4562-b3fc-2c963f66afa6".into(),
            acknowledged_message_sequence_number: 0,
            is_sequential_message: true,
        };
        let json = to_json(&ack);
        assert_eq!(json.len(), 176);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"AcknowledgedMessageType":"output_stream_data","AcknowledgedMessageId":"3fa85f64-5717-4562-b3fc-2c963f66afa6","AcknowledgedMessageSequenceNumber":0,"IsSequentialMessage":true}"#
        );
    }

    #[test]
    fn interactive_shell_keys_match_case_insensitively() {
        let inner = r#"{"sessionId":"s-1","documentContent":{"schemaVersion":"1.0"},"runAsUser":"bob","SESSIONOWNER":"arn:x","DataChannelId":"ignored"}"#;
        let outer = serde_json::json!({"content": inner, "taskid": "s-1", "SchemaVersion": 1});
        let (o, i) =
            AgentTaskPayload::from_interactive_shell(outer.to_string().as_bytes()).unwrap();
        assert_eq!(o.task_id, "s-1");
        assert_eq!(i.session_id, "s-1");
        assert_eq!(i.run_as_user, "bob");
        assert_eq!(i.session_owner, "arn:x");
        assert_eq!(i.document_content["schemaVersion"], "1.0");
    }

    #[test]
    fn interactive_shell_round_trips() {
        let task = AgentTaskPayload {
            session_id: "u-0123".into(),
            document_name: "SSM-SessionManagerRunShell".into(),
            document_content: serde_json::json!({"schemaVersion": "1.0"}),
            parameters: Map::new(),
            run_as_user: String::new(),
            session_owner: "arn:aws:iam::000000000000:user/u".into(),
        };
        let bytes = to_json(&task.to_mgs_payload("aws.ssm.startSession"));
        let (outer, inner) = AgentTaskPayload::from_interactive_shell(&bytes).unwrap();
        assert_eq!(outer.schema_version, 1);
        assert_eq!(inner, task);
    }

    #[test]
    fn exact_case_key_wins_over_folded_one() {
        let a: Size = from_json(br#"{"COLS":1,"cols":2,"rows":3}"#, "size").unwrap();
        let b: Size = from_json(br#"{"cols":2,"COLS":1,"rows":3}"#, "size").unwrap();
        assert_eq!((a.cols, b.cols), (2, 2));
    }

    #[test]
    fn wrong_shapes_are_errors_not_panics() {
        assert!(from_json::<Acknowledge>(b"[1,2]", "acknowledge").is_err());
        assert!(
            from_json::<Acknowledge>(b"{\"AcknowledgedMessageType\":5}", "acknowledge").is_err()
        );
        assert!(from_json::<Size>(b"{\"cols\":-1,\"rows\":2}", "size").is_err());
        assert!(from_json::<Size>(b"\xff", "size").is_err());
        let deep = "[".repeat(10_000);
        assert!(from_json::<Size>(deep.as_bytes(), "size").is_err());
    }

    #[test]
    fn open_frames_keep_upstream_key_order() {
        let agent = OpenDataChannel {
            message_schema_version: "1.0".into(),
            request_id: "r".into(),
            token_value: "t".into(),
            client_instance_id: Some("i-1".into()),
            client_id: String::new(),
            client_version: None,
        };
        assert_eq!(
            String::from_utf8(to_json(&agent)).unwrap(),
            r#"{"MessageSchemaVersion":"1.0","RequestId":"r","TokenValue":"t","ClientInstanceId":"i-1","ClientId":""}"#
        );
        let ctl = OpenControlChannel {
            cookie: None,
            message_schema_version: "1.0".into(),
            request_id: "r".into(),
            token_value: "t".into(),
            agent_version: "3.3.987.0".into(),
            platform_type: "linux".into(),
        };
        assert!(String::from_utf8(to_json(&ctl))
            .unwrap()
            .starts_with(r#"{"Cookie":null,"#));
    }

    #[test]
    fn token_xml_round_trips_and_escapes() {
        let t = TokenResponse {
            message_schema_version: "1.0".into(),
            token_value: "a<b&c".into(),
        };
        let xml = t.to_xml("CreateControlChannelResponse");
        assert!(xml.contains("a&lt;b&amp;c"));
        assert_eq!(TokenResponse::from_xml(&xml).unwrap(), t);
        assert!(matches!(
            TokenResponse::from_xml("<x></x>"),
            Err(PayloadError::MissingToken)
        ));
    }
}
