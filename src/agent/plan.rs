//! What the agent runs for a session: exactly what the session document asks for, or
//! nothing (pure).
//!
//! Organisations grant people *only* port forwarding, or one fixed command, through IAM
//! conditions on the document name (`AWS-StartPortForwardingSession`,
//! `AWS-StartInteractiveCommand`, ...). An agent that answered those documents with a
//! shell would turn such a grant into a shell on the host. So the session type decides,
//! here and nowhere else, and every type the agent does not implement is refused with the
//! reason, which the client shows. Only `Standard_Stream` (the `SSM-SessionManagerRunShell`
//! document and its kin) ever gets a shell; a command document gets its command and
//! nothing after it; a port document a forwarder and no process at all.
//!
//! `runAsElevated: true` (a command document asking to run as the agent's own user,
//! normally root, instead of the session user) is refused: upstream honours it, but
//! anyone allowed to start sessions with a custom document could then run commands as
//! root, which the session user and RunAs settings exist to prevent.

use super::port::{self, PortRequest};
use crate::protocol::document::{Platform, SessionDocument, SessionType};

/// What a session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// An interactive shell on a PTY (`Standard_Stream`).
    Shell,
    /// Port forwarding (`Port`) to what the properties ask for.
    Port(PortRequest),
    /// One command on a PTY (`InteractiveCommands`): this platform's `commands`, run by
    /// the shell, no interactive shell before or after.
    Command(String),
    /// One program without a terminal (`NonInteractiveCommands`).
    #[cfg(unix)]
    Exec(super::command::CommandRequest),
}

/// This platform's block of a command document's properties.
pub(crate) const PLATFORM: Platform = if cfg!(windows) {
    Platform::Windows
} else if cfg!(target_os = "macos") {
    Platform::MacOs
} else {
    Platform::Linux
};

/// This platform's `commands` of a command document (upstream's rules, §3.1): a string,
/// not blank; `runAsElevated` refused (see the module docs).
fn commands(doc: &SessionDocument) -> Result<String, String> {
    let session_type = doc.session_type;
    let block = doc.properties.get(PLATFORM.key());
    if let Some(v) = block.and_then(|b| b.get("runAsElevated")) {
        if v.as_bool() == Some(true) || v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("true")) {
            return Err(format!(
                "session properties: runAsElevated is not supported by this agent (the command would run as the agent's own user, normally root); no command was started ({session_type})"
            ));
        }
    }
    match doc.commands(PLATFORM) {
        Some(c) if !c.trim().is_empty() => Ok(c),
        _ => Err(format!(
            "Commands cannot be empty for session type {session_type} (properties.{}.commands)",
            PLATFORM.key()
        )),
    }
}

/// The refusal shown to the user for a session type this agent does not run.
#[cfg(not(unix))]
pub(crate) fn unsupported(session_type: SessionType) -> String {
    format!(
        "session type {session_type} is not supported by this agent on this platform; no command, shell or port forward was started"
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
        SessionType::InteractiveCommands => commands(doc).map(Plan::Command),
        #[cfg(unix)]
        SessionType::NonInteractiveCommands => {
            let commands = commands(doc)?;
            let block = doc
                .properties
                .get(PLATFORM.key())
                .cloned()
                .unwrap_or_default();
            super::command::request(&block, &commands).map(Plan::Exec)
        }
        #[cfg(not(unix))]
        other @ SessionType::NonInteractiveCommands => Err(unsupported(other)),
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
        assert_eq!(
            plan_for(&doc(
                "InteractiveCommands",
                json!({"linux": {"commands": "echo hi"}, "windows": {"commands": "echo hi"}, "macos": {"commands": "echo hi"}})
            )),
            Ok(Plan::Command("echo hi".into()))
        );
        for (props, says) in [
            (
                json!({"linux": {"commands": " "}}),
                "Commands cannot be empty",
            ),
            (json!({}), "Commands cannot be empty"),
            (
                json!({"linux": {"commands": "id", "runAsElevated": true}, "windows": {"commands": "id", "runAsElevated": true}, "macos": {"commands": "id", "runAsElevated": "true"}}),
                "runAsElevated is not supported",
            ),
        ] {
            let refusal = plan_for(&doc("InteractiveCommands", props)).unwrap_err();
            assert!(refusal.contains(says), "{refusal}");
        }
        assert!(matches!(
            plan_for(&doc(
                "NonInteractiveCommands",
                json!({"linux": {"commands": "echo 'hi there'"}, "macos": {"commands": "echo 'hi there'"}}),
            )),
            Ok(Plan::Exec(r)) if r.argv == ["echo", "hi there"]
        ));
    }
}
