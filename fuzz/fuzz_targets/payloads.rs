//! Feeds arbitrary bytes straight to the JSON payload decoders and the session document
//! resolver, past the frame digest that keeps most `decode_frame` inputs away from them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_agent::protocol::document;
use session_agent::protocol::payload::{self, AgentTaskPayload};

fuzz_target!(|data: &[u8]| {
    let _ = payload::from_json::<payload::Acknowledge>(data, "acknowledge");
    let _ = payload::from_json::<payload::AgentTaskComplete>(data, "agent_task_complete");
    let _ = payload::from_json::<payload::HandshakeResponse>(data, "handshake_response");
    let _ = payload::from_json::<payload::OpenDataChannel>(data, "open");
    if let Ok((_, task)) = AgentTaskPayload::from_interactive_shell(data) {
        let _ = document::resolve(&task.document_content, &task.parameters);
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let params = value.get("Parameters").and_then(|p| p.as_object()).cloned().unwrap_or_default();
        let _ = document::resolve(&value, &params);
    }
});
