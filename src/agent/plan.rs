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

use super::port::{self, PortRequest};
use crate::protocol::document::{SessionDocument, SessionType};

/// What a session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// An interactive shell on a PTY (`Standard_Stream`).
    Shell,
    /// Port forwarding (`Port`) to what the properties ask for.
    Port(PortRequest),
}

/// The refusal shown to the user for a session type this agent does not run.
pub(crate) fn unsupported(session_type: SessionType) -> String {
    format!(
        "session type {session_type} is not supported by this agent: it runs shell (Standard_Stream) and port (Port) sessions; no command, shell or port forward was started"
    )
}

/// Decides what runs for `doc`.
///
/// # Errors
/// The refusal for the user when the document asks for something this agent does not do.
pub(crate) fn plan_for(doc: &SessionDocument) -> Result<Plan, String> {
    match doc.session_type {
        SessionType::StandardStream => Ok(Plan::Shell),
        SessionType::Port => port::request(&doc.properties).map(Plan::Port),
        other @ (SessionType::InteractiveCommands | SessionType::NonInteractiveCommands) => {
            Err(unsupported(other))
        }
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
        assert!(matches!(
            plan_for(&doc(
                "Port",
                json!({"portNumber": "22", "type": "LocalPortForwarding"})
            )),
            Ok(Plan::Port(PortRequest { port: 22, .. }))
        ));
        // A Port document that does not say where is refused, never a shell.
        let refusal = plan_for(&doc("Port", json!({"type": "LocalPortForwarding"}))).unwrap_err();
        assert!(refusal.contains("Port number is empty"), "{refusal}");
        for (t, props) in [
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
