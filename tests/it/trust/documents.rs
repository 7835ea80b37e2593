//! Issue 16, item 1 (and issue 18): a document that is not a shell document never gets
//! a shell.
//!
//! The attack: start a session with a document an IAM policy may grant someone who must
//! not get a shell — a port document, a command document — in a shape the agent might
//! answer wrongly (no port, a command asking to run elevated, a destination that does
//! not answer), and type into whatever answers. The defence: a port session forwards
//! bytes and never runs anything; a document that cannot be run as its type is refused
//! with the reason and runs nothing (the command's marker file never appears); no byte
//! of a shell reaches the client.

use crate::agent::RunningAgent;
use crate::port::PortClient;
use crate::support::*;
use serde_json::{json, Value};
use session_agent::gateway::GatewayConfig;
use std::path::Path;

/// Custom documents in the shapes that must be refused.
fn write_documents(dir: &Path, command: &str) {
    let docs: [(&str, Value); 3] = [
        (
            "Custom-Elevated",
            json!({
                "schemaVersion": "1.0",
                "sessionType": "InteractiveCommands",
                "properties": {
                    "linux": {"commands": command, "runAsElevated": true},
                    "macos": {"commands": command, "runAsElevated": true}
                }
            }),
        ),
        (
            "Custom-Elevated-NonInteractive",
            json!({
                "schemaVersion": "1.0",
                "sessionType": "NonInteractiveCommands",
                "properties": {
                    "linux": {"commands": command, "runAsElevated": "true"},
                    "macos": {"commands": command, "runAsElevated": "true"}
                }
            }),
        ),
        (
            "Custom-Port-Without-Port",
            json!({
                "schemaVersion": "1.0",
                "sessionType": "Port",
                "properties": {"type": "LocalPortForwarding"}
            }),
        ),
    ];
    for (name, doc) in docs {
        std::fs::write(dir.join(format!("{name}.json")), doc.to_string()).unwrap();
    }
}

#[tokio::test]
async fn documents_that_are_not_shells_never_answer_like_one() {
    let docs = tempfile::tempdir().unwrap();
    let marker_dir = tempfile::tempdir().unwrap();
    // World-writable, so the command could create its marker whoever it runs as.
    std::fs::set_permissions(
        marker_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let marker = marker_dir.path().join("ran");
    let command = format!("touch {}; exec sh", marker.display());
    write_documents(docs.path(), &command);
    let gw = Gateway::start(GatewayConfig {
        documents_dir: Some(docs.path().to_owned()),
        ..GatewayConfig::default()
    })
    .await;
    let agent = RunningAgent::start(&gw, "node-docs").await;
    // Refused before anything runs, with the reason.
    for (document, want) in [
        ("Custom-Elevated", "runAsElevated is not supported"),
        (
            "Custom-Elevated-NonInteractive",
            "runAsElevated is not supported",
        ),
        ("Custom-Port-Without-Port", "Port number is empty"),
    ] {
        let v = gw
            .api_ok(
                "StartSession",
                json!({"Target": "node-docs", "DocumentName": document}),
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
        assert!(
            closed.output.contains(want),
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
            s["Details"].as_str().unwrap_or("").contains(want),
            "{document}: {s}"
        );
    }
    assert!(!marker.exists(), "a refused document ran its command");
    // Port documents forward bytes and run nothing: what is typed reaches the
    // destination as data (here one that answers nothing and closes), never a shell.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !got.ends_with(b"\r") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let (sid, mut c) = PortClient::start_document(
        &gw,
        "node-docs",
        "AWS-StartSSHSession",
        json!({"portNumber": [port.to_string()]}),
        "1.2.650.0",
    )
    .await;
    c.until(WAIT, |c| c.complete).await;
    c.send(
        session_agent::protocol::frame::PayloadType::Output,
        format!("echo typed-$((6*7)); {command}\r").as_bytes(),
    )
    .await;
    let got = received.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("echo typed-$((6*7)); {command}\r"),
        "the destination gets the bytes as they were typed"
    );
    // The destination closed: the session ends, nothing was run, nothing answered.
    c.until_closed().await;
    assert!(c.data.is_empty(), "{:?}", String::from_utf8_lossy(&c.data));
    wait_status(&gw, &sid, "History", "Terminated").await;
    assert!(!marker.exists(), "a port session ran a command");
    // The shell document still works on the same agent.
    let (_sid, mut client) = open_shell(&gw, "node-docs").await;
    client.type_text("echo still-$((40+2))\r").await;
    client.expect("still-42").await;
    agent.stop().await;
    gw.stop().await;
}
