//! What the agent runs for a session: exactly what the session document asks for, or
//! nothing (pure).
//!
//! Organisations grant people *only* port forwarding, or one fixed command, through IAM
//! conditions on the document name (`AWS-StartPortForwardingSession`,
//! `AWS-StartInteractiveCommand`, ...). An agent that answered those documents with a
//! shell would turn such a grant into a shell on the host. So the session type decides,
//! here and nowhere else, and every type the agent does not implement is refused with the
//! reason, which the client shows. Only `Standard_Stream` (the `SSM-SessionManagerRunShell`
//! document and its kin) ever gets a shell.

use crate::protocol::document::{SessionDocument, SessionType};

/// What a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// An interactive shell on a PTY (`Standard_Stream`).
    Shell,
}

/// The refusal shown to the user for a session type this agent does not run.
pub(crate) fn unsupported(session_type: SessionType) -> String {
    format!(
        "session type {session_type} is not supported by this agent: it runs only shell sessions (Standard_Stream, e.g. SSM-SessionManagerRunShell); no command, shell or port forward was started"
    )
}

/// Decides what runs for `doc`.
///
/// # Errors
/// The refusal for the user when the document asks for something this agent does not do.
pub(crate) fn plan_for(doc: &SessionDocument) -> Result<Plan, String> {
    match doc.session_type {
        SessionType::StandardStream => Ok(Plan::Shell),
        other @ (SessionType::InteractiveCommands
        | SessionType::NonInteractiveCommands
        | SessionType::Port) => Err(unsupported(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::document::resolve;
    use serde_json::{json, Map};

    fn doc(session_type: &str, properties: serde_json::Value) -> SessionDocument {
        resolve(
            &json!({"schemaVersion": "1.0", "sessionType": session_type, "properties": properties}),
            &Map::new(),
        )
        .unwrap()
    }

    #[test]
    fn only_standard_stream_gets_a_shell() {
        assert_eq!(
            plan_for(&doc("Standard_Stream", json!(null))),
            Ok(Plan::Shell)
        );
        for (t, props) in [
            (
                "Port",
                json!({"portNumber": "22", "type": "LocalPortForwarding"}),
            ),
            (
                "InteractiveCommands",
                json!({"linux": {"commands": "echo hi"}}),
            ),
            (
                "NonInteractiveCommands",
                json!({"linux": {"commands": "echo hi"}}),
            ),
        ] {
            let refusal = plan_for(&doc(t, props)).unwrap_err();
            assert!(
                refusal.starts_with(&format!("session type {t} is not supported by this agent")),
                "{refusal}"
            );
        }
    }
}
