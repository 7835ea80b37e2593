//! Issue 16, item 1: a document that is not a shell document never gets a shell.
//!
//! The attack: start a session with `AWS-StartInteractiveCommand`, `AWS-StartNonInteractiveCommand`,
//! `AWS-StartPortForwardingSession` or `AWS-StartSSHSession` (what an IAM policy may grant
//! someone who must not get a shell) and type into whatever answers. The defence: the agent
//! refuses each session with the reason, runs nothing (the command's marker file never
//! appears), and no byte of a shell reaches the client.

use crate::agent::RunningAgent;
use crate::support::*;
use serde_json::{json, Value};
use session_agent::gateway::GatewayConfig;
use std::path::Path;

/// The AWS documents, as AWS publishes them (abridged descriptions).
pub fn write_aws_documents(dir: &Path) {
    let docs: [(&str, Value); 4] = [
        (
            "AWS-StartInteractiveCommand",
            json!({
                "schemaVersion": "1.0",
                "description": "Document to run single interactive command on an instance",
                "sessionType": "InteractiveCommands",
                "parameters": {"command": {"type": "String", "description": "The command to run on the instance"}},
                "properties": {
                    "linux": {"commands": "{{command}}", "runAsElevated": false},
                    "windows": {"commands": "{{command}}", "runAsElevated": false}
                }
            }),
        ),
        (
            "AWS-StartNonInteractiveCommand",
            json!({
                "schemaVersion": "1.0",
                "description": "Document to run single non-interactive command on an instance",
                "sessionType": "NonInteractiveCommands",
                "parameters": {"command": {"type": "String", "description": "The command to run on the instance"}},
                "properties": {
                    "linux": {"commands": "{{command}}", "runAsElevated": false},
                    "windows": {"commands": "{{command}}", "runAsElevated": false}
                }
            }),
        ),
        (
            "AWS-StartPortForwardingSession",
            json!({
                "schemaVersion": "1.0",
                "description": "Document to start port forwarding session over Session Manager",
                "sessionType": "Port",
                "parameters": {
                    "portNumber": {"type": "String", "description": "Port number of the server on the instance", "default": "80"},
                    "localPortNumber": {"type": "String", "description": "Port number on local machine to forward traffic to", "default": "0"}
                },
                "properties": {"portNumber": "{{ portNumber }}", "type": "LocalPortForwarding", "localPortNumber": "{{ localPortNumber }}"}
            }),
        ),
        (
            "AWS-StartSSHSession",
            json!({
                "schemaVersion": "1.0",
                "description": "Document to start SSH session over Session Manager",
                "sessionType": "Port",
                "parameters": {"portNumber": {"type": "String", "description": "Port number of SSH server on the instance", "default": "22"}},
                "properties": {"portNumber": "{{ portNumber }}"}
            }),
        ),
    ];
    for (name, doc) in docs {
        std::fs::write(dir.join(format!("{name}.json")), doc.to_string()).unwrap();
    }
}

#[tokio::test]
async fn command_and_port_documents_are_refused_with_the_reason_and_run_nothing() {
    let docs = tempfile::tempdir().unwrap();
    write_aws_documents(docs.path());
    let gw = Gateway::start(GatewayConfig {
        documents_dir: Some(docs.path().to_owned()),
        ..GatewayConfig::default()
    })
    .await;
    let agent = RunningAgent::start(&gw, "node-docs").await;
    let marker_dir = tempfile::tempdir().unwrap();
    // World-writable, so the command could create its marker whoever it runs as.
    std::fs::set_permissions(
        marker_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let marker = marker_dir.path().join("ran");
    let command = format!("touch {}; exec sh", marker.display());
    for (document, session_type, params) in [
        (
            "AWS-StartInteractiveCommand",
            "InteractiveCommands",
            json!({"command": [command]}),
        ),
        (
            "AWS-StartNonInteractiveCommand",
            "NonInteractiveCommands",
            json!({"command": [command]}),
        ),
        (
            "AWS-StartPortForwardingSession",
            "Port",
            json!({"portNumber": ["22"], "localPortNumber": ["9999"]}),
        ),
        ("AWS-StartSSHSession", "Port", json!({"portNumber": ["22"]})),
    ] {
        let v = gw
            .api_ok(
                "StartSession",
                json!({"Target": "node-docs", "DocumentName": document, "Parameters": params}),
            )
            .await;
        let sid = v["SessionId"].as_str().unwrap().to_owned();
        let mut client = InteractiveClient::new(
            client_connect(
                &gw,
                v["StreamUrl"].as_str().unwrap(),
                v["TokenValue"].as_str().unwrap(),
            )
            .await,
        );
        // Type as if a prompt had answered: nothing may run it.
        client.resize(80, 24).await;
        client.type_text("echo typed-$((6*7))\r").await;
        client.until_closed().await;
        let closed = client.closed.as_ref().expect("no channel_closed");
        let want = format!("session type {session_type} is not supported by this agent");
        assert!(
            closed.output.contains(&want),
            "{document}: the client was not told why: {:?}",
            closed.output
        );
        let screen = String::from_utf8_lossy(&client.screen).into_owned();
        assert!(
            !screen.contains("typed-42") && !screen.contains('$') && !screen.contains('#'),
            "{document}: something answered like a shell: {screen:?}"
        );
        let s = wait_status(&gw, &sid, "History", "Failed").await;
        assert!(
            s["Details"].as_str().unwrap_or("").contains(&want),
            "{document}: {s}"
        );
    }
    assert!(!marker.exists(), "a refused document ran its command");
    // The shell document still works on the same agent.
    let (_sid, mut client) = open_shell(&gw, "node-docs").await;
    client.type_text("echo still-$((40+2))\r").await;
    client.expect("still-42").await;
    agent.stop().await;
    gw.stop().await;
}
