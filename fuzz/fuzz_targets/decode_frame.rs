//! Feeds arbitrary bytes to the AgentMessage decoder and, when a frame decodes, to the
//! JSON payload decoders its type implies. Nothing may panic; a decoded frame must
//! re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_agent::protocol::frame::{AgentMessage, MessageType, DEFAULT_MAX_FRAME_LEN};
use session_agent::protocol::payload::{self, AgentTaskPayload};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = AgentMessage::decode(data, DEFAULT_MAX_FRAME_LEN) else { return };
    if let Ok(re) = m.encode() {
        // Space padding is canonical; NUL padding decodes too, so compare decoded forms.
        assert_eq!(AgentMessage::decode(&re, DEFAULT_MAX_FRAME_LEN).as_ref(), Ok(&m));
    }
    match m.message_type {
        MessageType::InteractiveShell => {
            if let Ok((_, task)) = AgentTaskPayload::from_interactive_shell(&m.payload) {
                let _ = session_agent::protocol::document::resolve(&task.document_content, &task.parameters);
            }
        }
        MessageType::Acknowledge => {
            let _ = payload::from_json::<payload::Acknowledge>(&m.payload, "acknowledge");
        }
        MessageType::AgentTaskComplete => {
            let _ = payload::from_json::<payload::AgentTaskComplete>(&m.payload, "agent_task_complete");
        }
        _ => {
            let _ = payload::from_json::<payload::ChannelClosed>(&m.payload, "channel_closed");
            let _ = payload::from_json::<payload::HandshakeResponse>(&m.payload, "handshake");
        }
    }
});
