//! Bad input from the network gets an AWS-shaped error or a websocket close with a
//! reason; nothing panics, and one peer's bad frames never disturb another session.

use crate::support::*;
use bytes::Bytes;
use serde_json::json;
use session_agent::gateway::GatewayConfig;
use session_agent::protocol::frame::{MessageType, PayloadType};
use session_agent::protocol::payload::{
    to_json, OpenControlChannel, OpenDataChannel, TokenResponse,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

async fn raw_api(
    gw: &Gateway,
    target: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let mut req = gw
        .http()
        .post(format!("{}/", gw.http_url()))
        .header("content-type", "application/x-amz-json-1.1");
    if let Some(t) = target {
        req = req.header("x-amz-target", t);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).expect("error body is JSON"),
    )
}

fn error_type(v: &serde_json::Value) -> &str {
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without message: {v}"
    );
    v["__type"].as_str().unwrap()
}

#[tokio::test]
async fn api_errors_have_the_aws_shape() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let (s, v) = raw_api(&gw, Some("AmazonSSM.StartSession"), "{not json").await;
    assert_eq!((s, error_type(&v)), (400, "SerializationException"));
    let (s, v) = raw_api(&gw, Some("AmazonSSM.StartSession"), "[1,2]").await;
    assert_eq!((s, error_type(&v)), (400, "SerializationException"));
    let (s, v) = raw_api(&gw, Some("AmazonSSM.SendCommand"), "{}").await;
    assert_eq!((s, error_type(&v)), (400, "UnknownOperationException"));
    let (s, v) = raw_api(&gw, None, "{}").await;
    assert_eq!((s, error_type(&v)), (400, "UnknownOperationException"));
    let (s, v) = raw_api(
        &gw,
        Some("AmazonSSM.StartSession"),
        vec![b' '; 2 * 1024 * 1024],
    )
    .await;
    assert_eq!((s, error_type(&v)), (413, "SerializationException"));

    let cases = [
        ("StartSession", json!({}), "ValidationException"),
        (
            "StartSession",
            json!({"Target": 5}),
            "SerializationException",
        ),
        (
            "StartSession",
            json!({"Target": "../../etc/passwd"}),
            "ValidationException",
        ),
        (
            "StartSession",
            json!({"Target": "nobody-home"}),
            "InvalidTarget",
        ),
        (
            "StartSession",
            json!({"Target": "x", "Reason": "r".repeat(257)}),
            "ValidationException",
        ),
        (
            "StartSession",
            json!({"Target": "x", "Parameters": {"a": "not-a-list"}}),
            "SerializationException",
        ),
        (
            "TerminateSession",
            json!({"SessionId": "nope-0"}),
            "DoesNotExistException",
        ),
        (
            "ResumeSession",
            json!({"SessionId": "nope-0"}),
            "DoesNotExistException",
        ),
        ("DescribeSessions", json!({}), "ValidationException"),
        (
            "DescribeSessions",
            json!({"State": "Sideways"}),
            "ValidationException",
        ),
        (
            "DescribeSessions",
            json!({"State": "Active", "MaxResults": 0}),
            "ValidationException",
        ),
        (
            "DescribeSessions",
            json!({"State": "Active", "NextToken": "zzz"}),
            "InvalidNextToken",
        ),
        (
            "DescribeSessions",
            json!({"State": "Active", "Filters": [{"key": "Colour", "value": "x"}]}),
            "InvalidFilterKey",
        ),
        (
            "DescribeSessions",
            json!({"State": "Active", "Filters": [{"key": "InvokedAfter", "value": "soon"}]}),
            "InvalidFilterValue",
        ),
        (
            "DescribeInstanceInformation",
            json!({"MaxResults": 1000}),
            "ValidationException",
        ),
        (
            "UpdateInstanceInformation",
            json!({}),
            "ValidationException",
        ),
    ];
    for (op, input, want) in cases {
        let (s, v) = gw.api(op, input.clone()).await;
        assert_eq!((s, error_type(&v)), (400, want), "{op} {input}");
    }

    let (s, v) = raw_api(
        &gw,
        Some("AmazonSSM.UpdateInstanceInformation"),
        r#"{"InstanceId":"mi-1","AgentVersion":"3.3.0.0"}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = gw.api("StartSession", json!({"Target": "mi-1"})).await;
    assert_eq!((s, error_type(&v)), (400, "TargetNotConnected"));

    let _agent = ScriptedAgent::connect(&gw, "host-doc").await.unwrap();
    let (s, v) = gw
        .api(
            "StartSession",
            json!({"Target": "host-doc", "DocumentName": "AWS-NoSuchDocument"}),
        )
        .await;
    assert_eq!((s, error_type(&v)), (400, "InvalidDocument"));
    let (s, v) = gw
        .api(
            "StartSession",
            json!({"Target": "host-doc", "Parameters": {"undeclared": ["x"]}}),
        )
        .await;
    assert_eq!((s, error_type(&v)), (400, "InvalidParameters"));
    assert!(v["message"].as_str().unwrap().contains("undeclared"), "{v}");

    let resp = gw
        .http()
        .get(format!("{}/nowhere", gw.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    gw.stop().await;
}

#[tokio::test]
async fn channel_creation_rejects_bad_requests_with_xml_errors() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let (s, body) = gw
        .create_channel("/v1/control-channel/host-x", "{oops")
        .await;
    assert_eq!(s, 400);
    assert!(body.starts_with("<BadRequest"), "{body}");
    let (s, _) = gw
        .create_channel(
            "/v1/control-channel/host-x",
            r#"{"MessageSchemaVersion":"2.0","RequestId":"0123456789abcdef0"}"#,
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = gw
        .create_channel(
            "/v1/control-channel/host-x",
            r#"{"MessageSchemaVersion":"1.0","RequestId":"short"}"#,
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = gw
        .create_channel("/v1/control-channel/bad%20target", &create_body(None))
        .await;
    assert_eq!(s, 400);
    let (s, body) = gw
        .create_channel("/v1/data-channel/nobody-123", &create_body(Some("")))
        .await;
    assert_eq!(s, 400);
    assert!(body.contains("not found"), "{body}");

    // A terminated session answers with the phrase the official agent stops retrying on.
    let mut agent = ScriptedAgent::connect(&gw, "host-y").await.unwrap();
    let (sid, _, _) = start_session(&gw, "host-y").await;
    let done = session_agent::protocol::payload::AgentTaskComplete {
        task_id: sid.clone(),
        final_task_status: "Success".into(),
        ..Default::default()
    };
    agent
        .control
        .send_raw(json_frame(MessageType::AgentTaskComplete, &done))
        .await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let (s, body) = gw
        .create_channel(&format!("/v1/data-channel/{sid}"), &create_body(Some("")))
        .await;
    assert_eq!(s, 400);
    assert!(body.contains("Session is already terminated"), "{body}");
    gw.stop().await;
}

async fn open_control_with(gw: &Gateway, target: &str, token: &str) -> Peer {
    let ws = gw
        .ws_connect(&format!(
            "{}/v1/control-channel/{target}?role=subscribe&stream=input",
            gw.ws_url()
        ))
        .await;
    let mut p = Peer { ws };
    let open = OpenControlChannel {
        cookie: None,
        message_schema_version: "1.0".into(),
        request_id: Uuid::new_v4().to_string(),
        token_value: token.into(),
        agent_version: "1".into(),
        platform_type: "linux".into(),
    };
    p.send_text(String::from_utf8(to_json(&open)).unwrap())
        .await;
    p
}

#[tokio::test]
async fn bad_or_reused_tokens_close_the_socket_with_a_reason() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let mut p = open_control_with(&gw, "host-z", "made-up").await;
    let (code, reason) = p.expect_close().await.expect("close frame");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("token"), "{reason}");

    let (_, body) = gw
        .create_channel("/v1/control-channel/host-z", &create_body(None))
        .await;
    let token = TokenResponse::from_xml(&body).unwrap().token_value;
    // A token is bound to its target.
    let mut p = open_control_with(&gw, "host-other", &token).await;
    assert_eq!(p.expect_close().await.unwrap().0, CloseCode::Policy);
    // ...and single-use: it was consumed by the refused attempt above.
    let mut p = open_control_with(&gw, "host-z", &token).await;
    assert_eq!(p.expect_close().await.unwrap().0, CloseCode::Policy);

    // First message binary instead of the text open frame.
    let ws = gw
        .ws_connect(&format!("{}/v1/control-channel/host-z", gw.ws_url()))
        .await;
    let mut p = Peer { ws };
    p.send_raw(frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        &b"x"[..],
        0,
    ))
    .await;
    let (code, reason) = p.expect_close().await.unwrap();
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("open frame"), "{reason}");

    // Open frame that is not JSON.
    let ws = gw
        .ws_connect(&format!("{}/v1/control-channel/host-z", gw.ws_url()))
        .await;
    let mut p = Peer { ws };
    p.send_text("{{{".into()).await;
    assert_eq!(p.expect_close().await.unwrap().0, CloseCode::Policy);

    // A client token cannot be replayed for a second connection.
    let _agent = ScriptedAgent::connect(&gw, "host-q").await.unwrap();
    let (sid, token, url) = start_session(&gw, "host-q").await;
    let _c1 = client_connect(&gw, &url, &token).await;
    let mut c2 = client_connect(&gw, &url, &token).await;
    assert_eq!(c2.expect_close().await.unwrap().0, CloseCode::Policy);
    // A client token does not open another session's channel.
    let (_sid2, token2, _) = start_session(&gw, "host-q").await;
    let open = OpenDataChannel {
        message_schema_version: "1.0".into(),
        request_id: Uuid::new_v4().to_string(),
        token_value: token2,
        client_instance_id: None,
        client_id: "c".into(),
        client_version: Some("1".into()),
    };
    let mut q = Peer {
        ws: gw.ws_connect(&url).await,
    };
    q.send_text(String::from_utf8(to_json(&open)).unwrap())
        .await;
    assert_eq!(q.expect_close().await.unwrap().0, CloseCode::Policy);
    assert!(url.contains(&sid));
    gw.stop().await;
}

#[tokio::test]
async fn a_malformed_frame_closes_only_that_socket() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = ScriptedAgent::connect(&gw, "host-m").await.unwrap();
    let (sid_a, tok_a, url_a) = start_session(&gw, "host-m").await;
    let (sid_b, tok_b, url_b) = start_session(&gw, "host-m").await;
    let mut client_a = client_connect(&gw, &url_a, &tok_a).await;
    let mut client_b = client_connect(&gw, &url_b, &tok_b).await;
    let mut data_a = agent.open_data(&gw, &sid_a).await.unwrap();
    let mut data_b = agent.open_data(&gw, &sid_b).await.unwrap();

    // Client A sends a frame whose digest is wrong.
    let mut bad = frame(
        MessageType::InputStreamData,
        PayloadType::Output,
        &b"hi"[..],
        0,
    )
    .to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    client_a.send_raw(Bytes::from(bad)).await;
    let (code, reason) = client_a.expect_close().await.expect("close frame");
    assert_eq!(code, CloseCode::Invalid);
    assert!(reason.contains("digest"), "{reason}");

    // Garbage and a truncated frame from agent B's neighbour do not matter to session B.
    let out = frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        &b"still here"[..],
        0,
    );
    data_b.send_raw(out.clone()).await;
    assert_eq!(
        client_b
            .recv_type(MessageType::OutputStreamData)
            .await
            .0
            .payload,
        &b"still here"[..]
    );
    let keys = frame(
        MessageType::InputStreamData,
        PayloadType::Output,
        &b"k"[..],
        0,
    );
    client_b.send_raw(keys.clone()).await;
    let (m, _) = data_b.recv_type(MessageType::InputStreamData).await;
    assert_eq!(m.payload, &b"k"[..]);

    // Session A itself is intact: its agent side is still attached and a resumed client works.
    let v = gw
        .api_ok("ResumeSession", json!({"SessionId": sid_a}))
        .await;
    let mut client_a = client_connect(&gw, &url_a, v["TokenValue"].as_str().unwrap()).await;
    let out = frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        &b"a again"[..],
        0,
    );
    data_a.send_raw(out).await;
    assert_eq!(
        client_a
            .recv_type(MessageType::OutputStreamData)
            .await
            .0
            .payload,
        &b"a again"[..]
    );

    // A truncated frame from the agent closes the agent's socket with a reason.
    data_b
        .send_raw(Bytes::from_static(&[0, 0, 0, 116, b'x']))
        .await;
    let (code, reason) = data_b.expect_close().await.unwrap();
    assert_eq!(code, CloseCode::Invalid);
    assert!(reason.contains("truncated"), "{reason}");
    gw.stop().await;
}

#[tokio::test]
async fn oversized_websocket_messages_are_refused() {
    let cfg = GatewayConfig {
        max_frame_bytes: 64 * 1024,
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(cfg).await;
    let agent = ScriptedAgent::connect(&gw, "host-big").await.unwrap();
    let (sid, tok, url) = start_session(&gw, "host-big").await;
    let mut client = client_connect(&gw, &url, &tok).await;
    let _data = agent.open_data(&gw, &sid).await.unwrap();
    let huge = frame(
        MessageType::InputStreamData,
        PayloadType::Output,
        vec![b'a'; 128 * 1024],
        0,
    );
    // The send may itself fail once the server closes; either way the socket ends.
    let _ = futures_util::SinkExt::send(
        &mut client.ws,
        tokio_tungstenite::tungstenite::Message::Binary(huge),
    )
    .await;
    match client.next_event().await {
        Event::Closed(c) => {
            if let Some((code, _)) = c {
                assert_eq!(code, CloseCode::Size);
            }
        }
        Event::Frame(m, _) => {
            // Publication notices may precede the close; anything else is a failure.
            assert!(matches!(
                m.message_type,
                MessageType::StartPublication | MessageType::PausePublication
            ));
            assert!(matches!(client.next_event().await, Event::Closed(_)));
        }
    }
    gw.stop().await;
}
