//! StartSession with the built-in AWS documents: what the agent is sent, and which
//! parameters the gateway refuses (`allowedPattern`), through the raw SSM API.

use crate::support::*;
use serde_json::{json, Value};
use session_agent::gateway::GatewayConfig;
use session_agent::protocol::document::{resolve, SessionType};
use session_agent::protocol::frame::MessageType;
use session_agent::protocol::payload::AgentTaskPayload;

/// StartSession with a document; the HTTP status and answer.
async fn start_with(gw: &Gateway, target: &str, document: &str, params: Value) -> (u16, Value) {
    gw.api(
        "StartSession",
        json!({"Target": target, "DocumentName": document, "Parameters": params}),
    )
    .await
}

/// The `interactive_shell` task the agent receives next.
async fn next_task(agent: &mut ScriptedAgent) -> AgentTaskPayload {
    let (shell, _) = agent.control.recv_type(MessageType::InteractiveShell).await;
    AgentTaskPayload::from_interactive_shell(&shell.payload)
        .unwrap()
        .1
}

/// `__type` and `message` of an error answer.
fn error(status: u16, v: &Value) -> (&str, &str) {
    assert_eq!(status, 400, "{v}");
    (
        v["__type"].as_str().unwrap_or(""),
        v["message"].as_str().unwrap_or(""),
    )
}

#[tokio::test]
async fn port_forwarding_document_is_sent_with_its_parameters_and_bad_ports_are_refused() {
    let preferences = json!({
        "schemaVersion": "1.0",
        "sessionType": "Standard_Stream",
        "inputs": {"idleSessionTimeout": "7", "cloudWatchLogGroupName": "/ssm/sessions"}
    });
    let gw = Gateway::start(GatewayConfig {
        preferences,
        ..GatewayConfig::default()
    })
    .await;
    let mut agent = ScriptedAgent::connect(&gw, "host-pf").await.unwrap();

    let (status, v) = start_with(
        &gw,
        "host-pf",
        "AWS-StartPortForwardingSession",
        json!({"portNumber": ["8080"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let sid = v["SessionId"].as_str().unwrap();
    let task = next_task(&mut agent).await;
    assert_eq!(task.session_id, sid);
    assert_eq!(task.document_name, "AWS-StartPortForwardingSession");
    assert_eq!(task.document_content["sessionType"], "Port");
    // The preferences' inputs travel with it.
    assert_eq!(task.document_content["inputs"]["idleSessionTimeout"], "7");
    // What the agent resolves: the supplied port, the default local port.
    let doc = resolve(&task.document_content, &task.parameters).unwrap();
    assert_eq!(doc.session_type, SessionType::Port);
    assert_eq!(
        doc.properties,
        json!({"portNumber": "8080", "type": "LocalPortForwarding", "localPortNumber": "0"})
    );
    let listed = gw
        .api_ok("DescribeSessions", json!({"State": "Active"}))
        .await;
    let row = &listed["Sessions"][0];
    assert_eq!(row["DocumentName"], "AWS-StartPortForwardingSession");

    for bad in ["99999", "80; rm -rf /", "0", "http"] {
        let (status, v) = start_with(
            &gw,
            "host-pf",
            "AWS-StartPortForwardingSession",
            json!({ "portNumber": [bad] }),
        )
        .await;
        let (kind, message) = error(status, &v);
        assert_eq!(kind, "InvalidParameters", "{bad}: {v}");
        assert!(
            message.contains("Parameters.portNumber")
                && message.contains("allowedPattern ^([1-9]|"),
            "{bad}: {message}"
        );
    }
    let (status, v) = start_with(
        &gw,
        "host-pf",
        "AWS-StartPortForwardingSessionToRemoteHost",
        json!({"host": ["db.internal; id"], "portNumber": ["5432"]}),
    )
    .await;
    let (kind, message) = error(status, &v);
    assert_eq!(kind, "InvalidParameters");
    assert!(message.contains("Parameters.host"), "{message}");
    // Refused sessions reached neither history nor the agent: still one session.
    let listed = gw
        .api_ok("DescribeSessions", json!({"State": "Active"}))
        .await;
    assert_eq!(listed["Sessions"].as_array().unwrap().len(), 1, "{listed}");

    // The other built-in documents, with typical parameters.
    for (document, params, session_type, properties) in [
        (
            "AWS-StartPortForwardingSessionToRemoteHost",
            json!({"host": ["10.1.2.3"], "portNumber": ["5432"], "localPortNumber": ["15432"]}),
            SessionType::Port,
            json!({"host": "10.1.2.3", "portNumber": "5432", "type": "LocalPortForwarding", "localPortNumber": "15432"}),
        ),
        (
            "AWS-StartSSHSession",
            json!({}),
            SessionType::Port,
            json!({"portNumber": "22"}),
        ),
        (
            "AWS-StartInteractiveCommand",
            json!({"command": ["top"]}),
            SessionType::InteractiveCommands,
            json!({"linux": {"commands": "top", "runAsElevated": false},
                   "windows": {"commands": "top", "runAsElevated": false},
                   "macos": {"commands": "top", "runAsElevated": false}}),
        ),
        (
            "AWS-StartNonInteractiveCommand",
            json!({"command": ["uptime"]}),
            SessionType::NonInteractiveCommands,
            json!({"linux": {"commands": "uptime", "runAsElevated": false},
                   "windows": {"commands": "uptime", "runAsElevated": false},
                   "macos": {"commands": "uptime", "runAsElevated": false}}),
        ),
    ] {
        let (status, v) = start_with(&gw, "host-pf", document, params).await;
        assert_eq!(status, 200, "{document}: {v}");
        let task = next_task(&mut agent).await;
        assert_eq!(task.document_name, document);
        let doc = resolve(&task.document_content, &task.parameters).unwrap();
        assert_eq!(doc.session_type, session_type, "{document}");
        assert_eq!(doc.properties, properties, "{document}");
        assert_eq!(doc.inputs.cloud_watch_log_group_name, "/ssm/sessions");
    }
    gw.stop().await;
}

#[tokio::test]
async fn unknown_reserved_and_broken_documents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A file may not replace a built-in document: this one would forward to 2222.
    std::fs::write(
        dir.path().join("AWS-StartSSHSession.json"),
        json!({
            "schemaVersion": "1.0", "sessionType": "Port",
            "properties": {"portNumber": "2222"}
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("AWS-Mine.json"),
        json!({"schemaVersion": "1.0", "sessionType": "Port", "properties": {"portNumber": "1"}})
            .to_string(),
    )
    .unwrap();
    // A document of ours whose pattern does not compile.
    std::fs::write(
        dir.path().join("Broken.json"),
        json!({
            "schemaVersion": "1.0", "sessionType": "Port",
            "parameters": {"portNumber": {"type": "String", "default": "80", "allowedPattern": "^(80|443$"}},
            "properties": {"portNumber": "{{ portNumber }}"}
        })
        .to_string(),
    )
    .unwrap();
    // And one whose pattern does, checked like the built-in ones.
    std::fs::write(
        dir.path().join("WebOnly.json"),
        json!({
            "schemaVersion": "1.0", "sessionType": "Port",
            "parameters": {"portNumber": {"type": "String", "default": "80", "allowedPattern": "^(80|443)$"}},
            "properties": {"portNumber": "{{ portNumber }}", "type": "LocalPortForwarding"}
        })
        .to_string(),
    )
    .unwrap();
    let gw = Gateway::start(GatewayConfig {
        documents_dir: Some(dir.path().to_owned()),
        ..GatewayConfig::default()
    })
    .await;
    let mut agent = ScriptedAgent::connect(&gw, "host-docs").await.unwrap();

    for (document, want) in [
        ("AWS-NoSuchDocument", "AWS-StartPortForwardingSession"),
        ("AWS-Mine", "AWS-StartSSHSession"),
        ("NoSuchDocument", "does not exist"),
        ("Broken", "parameters.portNumber.allowedPattern"),
    ] {
        let (status, v) = start_with(&gw, "host-docs", document, json!({})).await;
        let (kind, message) = error(status, &v);
        assert_eq!(kind, "InvalidDocument", "{document}: {v}");
        assert!(message.contains(want), "{document}: {message}");
    }

    let (status, v) = start_with(&gw, "host-docs", "AWS-StartSSHSession", json!({})).await;
    assert_eq!(status, 200, "{v}");
    let task = next_task(&mut agent).await;
    let doc = resolve(&task.document_content, &task.parameters).unwrap();
    assert_eq!(doc.properties, json!({"portNumber": "22"}), "built-in wins");

    let (status, v) = start_with(&gw, "host-docs", "WebOnly", json!({"portNumber": ["443"]})).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = start_with(&gw, "host-docs", "WebOnly", json!({"portNumber": ["22"]})).await;
    let (kind, message) = error(status, &v);
    assert_eq!(kind, "InvalidParameters");
    assert!(
        message.contains(r#"value "22" does not match the allowedPattern ^(80|443)$"#),
        "{message}"
    );
    gw.stop().await;
}
