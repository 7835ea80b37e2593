//! Full sessions through the gateway between a scripted agent and a scripted client,
//! over real loopback sockets.

use crate::support::*;
use serde_json::{json, Value};
use session_agent::gateway::GatewayConfig;
use session_agent::protocol::frame::{MessageType, PayloadType};
use session_agent::protocol::payload::{
    from_json, AgentTaskAcknowledge, AgentTaskComplete, AgentTaskPayload, ChannelClosed,
};
use std::time::Duration;

fn task_complete(session_id: &str, status: &str, output: &str) -> AgentTaskComplete {
    AgentTaskComplete {
        schema_version: 1,
        task_id: session_id.into(),
        topic: "agent_task_complete".into(),
        final_task_status: status.into(),
        instance_id: "i-0123456789abcdef0".into(),
        output: output.into(),
        s3_bucket: "logs".into(),
        s3_url_suffix: format!("sessions/{session_id}.log"),
        cwl_group: "/ssm/sessions".into(),
        cwl_stream: session_id.into(),
        retry_number: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn full_session_relays_frames_unchanged_and_records_history() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let target = "i-0123456789abcdef0";
    let mut agent = ScriptedAgent::connect(&gw, target).await.unwrap();

    let info = gw.api_ok("DescribeInstanceInformation", json!({})).await;
    let row = &info["InstanceInformationList"][0];
    assert_eq!(row["InstanceId"], target);
    assert_eq!(row["PingStatus"], "Online");
    assert_eq!(row["AgentVersion"], "9.9.9.9");
    assert_eq!(row["PlatformType"], "Linux");
    assert_eq!(row["ResourceType"], "EC2Instance");

    let (session_id, token, stream_url) = start_session(&gw, target).await;
    assert!(session_id.starts_with(&format!("{AKID}-")), "{session_id}");
    assert_eq!(
        stream_url,
        format!(
            "ws://{}/v1/data-channel/{session_id}?role=publish_subscribe",
            gw.addr
        )
    );

    // The agent is told on its control channel, with the document and the owner.
    let (shell, _) = agent.control.recv_type(MessageType::InteractiveShell).await;
    let (outer, task) = AgentTaskPayload::from_interactive_shell(&shell.payload).unwrap();
    assert_eq!(outer.task_id, session_id);
    assert_eq!(task.session_id, session_id);
    assert_eq!(task.document_name, "SSM-SessionManagerRunShell");
    assert_eq!(task.document_content["schemaVersion"], "1.0");
    assert_eq!(task.document_content["sessionType"], "Standard_Stream");
    assert_eq!(
        task.session_owner,
        format!("arn:aws:iam::000000000000:user/{AKID}")
    );

    let mut client = client_connect(&gw, &stream_url, &token).await;
    let mut data = agent.open_data(&gw, &session_id).await.unwrap();
    let s = wait_status(&gw, &session_id, "Active", "Connected").await;
    assert_eq!(s["Target"], target);
    assert_eq!(s["Reason"], "testing");
    assert_eq!(s["Owner"], format!("arn:aws:iam::000000000000:user/{AKID}"));

    // Output: agent → client, bytes unchanged.
    let out = frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        &b"$ "[..],
        0,
    );
    data.send_raw(out.clone()).await;
    let (got, _) = client.recv_type(MessageType::OutputStreamData).await;
    assert_eq!(got.encode().unwrap(), out);
    assert_eq!(&got.payload[..], b"$ ");

    // Ack: client → agent, end to end.
    let ack = ack_for(&got);
    client.send_raw(ack.clone()).await;
    let (agent_ack, skipped) = data.recv_type(MessageType::Acknowledge).await;
    assert!(skipped
        .iter()
        .all(|t| *t == MessageType::StartPublication || *t == MessageType::PausePublication));
    assert_eq!(agent_ack.encode().unwrap(), ack);

    // Keystrokes and a Size message: client → agent.
    let keys = frame(
        MessageType::InputStreamData,
        PayloadType::Output,
        &b"ls\r"[..],
        0,
    );
    let size = frame(
        MessageType::InputStreamData,
        PayloadType::Size,
        &br#"{"cols":120,"rows":40}"#[..],
        1,
    );
    client.send_raw(keys.clone()).await;
    client.send_raw(size.clone()).await;
    let (_, raw1) = data.recv().await;
    let (_, raw2) = data.recv().await;
    assert_eq!((raw1, raw2), (keys, size));

    // TerminateSession: channel_closed to both sides.
    let v = gw
        .api_ok("TerminateSession", json!({"SessionId": session_id}))
        .await;
    assert_eq!(v["SessionId"], session_id);
    let (closed, _) = client.recv_type(MessageType::ChannelClosed).await;
    let closed: ChannelClosed = from_json(&closed.payload, "channel_closed").unwrap();
    assert_eq!(closed.session_id, session_id);
    assert_eq!(closed.output, "");
    let (closed, _) = data.recv_type(MessageType::ChannelClosed).await;
    assert_eq!(
        from_json::<ChannelClosed>(&closed.payload, "cc")
            .unwrap()
            .session_id,
        session_id
    );
    wait_status(&gw, &session_id, "Active", "Terminating").await;

    // The agent reports completion; the gateway acknowledges every retry, applies it once.
    let done = task_complete(&session_id, "Success", "");
    let done_frame = json_frame(MessageType::AgentTaskComplete, &done);
    let done_id = session_agent::protocol::frame::AgentMessage::decode(&done_frame, usize::MAX)
        .unwrap()
        .message_id;
    for _ in 0..2 {
        agent.control.send_raw(done_frame.clone()).await;
        let (ack, _) = agent
            .control
            .recv_type(MessageType::AgentTaskAcknowledge)
            .await;
        let ack: AgentTaskAcknowledge = from_json(&ack.payload, "ack").unwrap();
        assert_eq!(ack.message_id, done_id.to_string());
        assert_eq!(ack.task_id, session_id);
    }
    let s = wait_status(&gw, &session_id, "History", "Terminated").await;
    assert_eq!(
        s["OutputUrl"]["S3OutputUrl"],
        format!("s3://logs/sessions/{session_id}.log")
    );
    let cw = s["OutputUrl"]["CloudWatchOutputUrl"].as_str().unwrap();
    assert!(
        cw.contains("group=/ssm/sessions") && cw.contains(&format!("stream={session_id}")),
        "{cw}"
    );
    assert!(s["EndDate"].as_f64().unwrap() >= s["StartDate"].as_f64().unwrap());
    let active = gw
        .api_ok("DescribeSessions", json!({"State": "Active"}))
        .await;
    assert_eq!(active["Sessions"].as_array().unwrap().len(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn shell_exit_closes_the_client_with_the_normal_message() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let mut agent = ScriptedAgent::connect(&gw, "mi-00000000000000001")
        .await
        .unwrap();
    let (sid, token, url) = start_session(&gw, &agent.target).await;
    let mut client = client_connect(&gw, &url, &token).await;
    let mut data = agent.open_data(&gw, &sid).await.unwrap();
    wait_status(&gw, &sid, "Active", "Connected").await;
    data.send_raw(json_frame(
        MessageType::AgentSessionState,
        &json!({"SchemaVersion":1,"SessionState":"Terminating","SessionId":sid}),
    ))
    .await;
    wait_status(&gw, &sid, "Active", "Terminating").await;
    agent
        .control
        .send_raw(json_frame(
            MessageType::AgentTaskComplete,
            &task_complete(&sid, "Success", ""),
        ))
        .await;
    let (closed, _) = client.recv_type(MessageType::ChannelClosed).await;
    assert_eq!(
        from_json::<ChannelClosed>(&closed.payload, "cc")
            .unwrap()
            .output,
        ""
    );
    client.expect_close().await;
    let s = wait_status(&gw, &sid, "History", "Terminated").await;
    assert_eq!(s["Target"], "mi-00000000000000001");
    let info = gw.api_ok("DescribeInstanceInformation", json!({})).await;
    assert_eq!(
        info["InstanceInformationList"][0]["ResourceType"],
        "ManagedInstance"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_failed_session_shows_the_agents_reason_to_the_client_and_in_history() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let mut agent = ScriptedAgent::connect(&gw, "host-a").await.unwrap();
    let (sid, token, url) = start_session(&gw, &agent.target).await;
    let mut client = client_connect(&gw, &url, &token).await;
    let reason = "We couldn't start the session because encryption is not set up on the selected Amazon S3 bucket.";
    agent
        .control
        .send_raw(json_frame(
            MessageType::AgentTaskComplete,
            &task_complete(&sid, "Failed", reason),
        ))
        .await;
    let (closed, _) = client.recv_type(MessageType::ChannelClosed).await;
    assert_eq!(
        from_json::<ChannelClosed>(&closed.payload, "cc")
            .unwrap()
            .output,
        reason
    );
    let s = wait_status(&gw, &sid, "History", "Failed").await;
    assert_eq!(s["Details"], reason);
    gw.stop().await;
}

#[tokio::test]
async fn output_sent_before_the_client_arrives_is_delivered_and_publication_follows_the_client() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = ScriptedAgent::connect(&gw, "host-b").await.unwrap();
    let (sid, token, url) = start_session(&gw, &agent.target).await;
    let mut data = agent.open_data(&gw, &sid).await.unwrap();
    // No client yet: the agent is asked to pause.
    let (m, _) = data.recv().await;
    assert_eq!(m.message_type, MessageType::PausePublication);
    let early = frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        &b"motd\r\n"[..],
        0,
    );
    data.send_raw(early.clone()).await;
    wait_status(&gw, &sid, "Active", "Connected").await;

    let mut client = client_connect(&gw, &url, &token).await;
    let (_, raw) = client.recv().await;
    assert_eq!(raw, early, "queued output delivered on connect");
    let (m, _) = data.recv().await;
    assert_eq!(m.message_type, MessageType::StartPublication);

    // The client drops; the agent is paused; ResumeSession brings it back with a new token.
    drop(client);
    let (m, _) = data.recv().await;
    assert_eq!(m.message_type, MessageType::PausePublication);
    let v = gw.api_ok("ResumeSession", json!({"SessionId": sid})).await;
    let token2 = v["TokenValue"].as_str().unwrap();
    assert!(!token2.is_empty() && token2 != token);
    assert_eq!(v["StreamUrl"], url);
    let mut client = client_connect(&gw, &url, token2).await;
    let (m, _) = data.recv().await;
    assert_eq!(m.message_type, MessageType::StartPublication);
    let out = frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        &b"back"[..],
        1,
    );
    data.send_raw(out.clone()).await;
    assert_eq!(client.recv().await.1, out);
    gw.stop().await;
}

#[tokio::test]
async fn a_dropped_agent_data_channel_reconnects_to_the_same_session() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = ScriptedAgent::connect(&gw, "host-c").await.unwrap();
    let (sid, token, url) = start_session(&gw, &agent.target).await;
    let mut client = client_connect(&gw, &url, &token).await;
    let data = agent.open_data(&gw, &sid).await.unwrap();
    wait_status(&gw, &sid, "Active", "Connected").await;
    drop(data);
    wait_status(&gw, &sid, "Active", "Disconnected").await;
    // Input typed meanwhile waits at the gateway (the client would also retransmit).
    let keys = frame(
        MessageType::InputStreamData,
        PayloadType::Output,
        &b"x"[..],
        0,
    );
    client.send_raw(keys.clone()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut data = agent.open_data(&gw, &sid).await.unwrap();
    let (m, raw) = data.recv().await;
    assert_eq!(raw, keys, "got {:?} instead", m.message_type);
    wait_status(&gw, &sid, "Active", "Connected").await;
    gw.stop().await;
}

#[tokio::test]
async fn history_survives_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GatewayConfig {
        data_dir: Some(dir.path().to_owned()),
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(cfg.clone()).await;
    let mut agent = ScriptedAgent::connect(&gw, "host-d").await.unwrap();
    let (sid, _, _) = start_session(&gw, &agent.target).await;
    agent
        .control
        .send_raw(json_frame(
            MessageType::AgentTaskComplete,
            &task_complete(&sid, "Success", ""),
        ))
        .await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let (sid2, _, _) = start_session(&gw, &agent.target).await;
    gw.stop().await;

    let gw = Gateway::start(cfg).await;
    let s = wait_status(&gw, &sid, "History", "Terminated").await;
    assert_eq!(
        s["OutputUrl"]["S3OutputUrl"],
        format!("s3://logs/sessions/{sid}.log")
    );
    assert_eq!(s["Reason"], "testing");
    // The session that was still active stays resumable for its agent.
    wait_status(&gw, &sid2, "Active", "Connecting").await;
    let (status, _) = gw
        .create_channel(&format!("/v1/data-channel/{sid2}"), &create_body(Some("")))
        .await;
    assert_eq!(status, 201);
    gw.stop().await;
}

#[tokio::test]
async fn an_agent_that_never_opens_its_data_channel_fails_the_session() {
    let cfg = GatewayConfig {
        orphan_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(cfg).await;
    let agent = ScriptedAgent::connect(&gw, "host-e").await.unwrap();
    let (sid, token, url) = start_session(&gw, &agent.target).await;
    let mut client = client_connect(&gw, &url, &token).await;
    let s = wait_status(&gw, &sid, "History", "Failed").await;
    assert!(
        s["Details"].as_str().unwrap().contains("data channel"),
        "{s}"
    );
    let (closed, _) = client.recv_type(MessageType::ChannelClosed).await;
    assert!(from_json::<ChannelClosed>(&closed.payload, "cc")
        .unwrap()
        .output
        .contains("data channel"));
    gw.stop().await;
}

#[tokio::test]
async fn a_silent_agent_is_detected_as_dead() {
    let cfg = GatewayConfig {
        ping_interval: Duration::from_millis(100),
        peer_timeout: Duration::from_millis(400),
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(cfg).await;
    // Never read from the socket: no pongs go back.
    let _agent = ScriptedAgent::connect(&gw, "host-f").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = gw.api_ok("DescribeInstanceInformation", json!({})).await;
        if v["InstanceInformationList"][0]["PingStatus"] == "ConnectionLost" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never marked ConnectionLost: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, v) = gw.api("StartSession", json!({"Target": "host-f"})).await;
    assert_eq!(
        (status, v["__type"].as_str()),
        (400, Some("TargetNotConnected"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_answering_agent_stays_online_across_many_pings() {
    let cfg = GatewayConfig {
        ping_interval: Duration::from_millis(100),
        peer_timeout: Duration::from_millis(1000),
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(cfg).await;
    let mut agent = ScriptedAgent::connect(&gw, "host-g").await.unwrap();
    // Reading lets tungstenite answer pings; 10 ping intervals pass.
    let reader = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_millis(1500), agent.control.next_event()).await;
        agent
    });
    let _agent = reader.await.unwrap();
    let v = gw.api_ok("DescribeInstanceInformation", json!({})).await;
    assert_eq!(
        v["InstanceInformationList"][0]["PingStatus"], "Online",
        "{v}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn tls_gateway_serves_https_api_and_wss_channels() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_tls(GatewayConfig::default(), dir.path()).await;
    let mut agent = ScriptedAgent::connect(&gw, "host-tls").await.unwrap();
    let (sid, token, url) = start_session(&gw, &agent.target).await;
    assert!(url.starts_with("wss://"), "{url}");
    agent.control.recv_type(MessageType::InteractiveShell).await;
    let mut client = client_connect(&gw, &url, &token).await;
    let mut data = agent.open_data(&gw, &sid).await.unwrap();
    let out = frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        &b"secure"[..],
        0,
    );
    data.send_raw(out.clone()).await;
    assert_eq!(
        client
            .recv_type(MessageType::OutputStreamData)
            .await
            .0
            .payload,
        &b"secure"[..]
    );
    // Plain http to the TLS port fails.
    let plain = reqwest::Client::new()
        .post(format!("http://{}/", gw.addr))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status().as_u16() >= 400);
    gw.stop().await;
}

#[tokio::test]
async fn describe_sessions_pages_and_filters() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let _a = ScriptedAgent::connect(&gw, "host-h").await.unwrap();
    let _b = ScriptedAgent::connect(&gw, "host-i").await.unwrap();
    let mut ids = Vec::new();
    for t in ["host-h", "host-h", "host-h", "host-i"] {
        ids.push(start_session(&gw, t).await.0);
    }
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut input = json!({"State": "Active", "MaxResults": 2, "Filters": [{"key": "Target", "value": "host-h"}]});
        if let Some(n) = &next {
            input["NextToken"] = json!(n);
        }
        let v = gw.api_ok("DescribeSessions", input).await;
        for s in v["Sessions"].as_array().unwrap() {
            assert_eq!(s["Target"], "host-h");
            seen.push(s["SessionId"].as_str().unwrap().to_owned());
        }
        match v.get("NextToken").and_then(Value::as_str) {
            Some(n) => next = Some(n.to_owned()),
            None => break,
        }
    }
    seen.sort();
    let mut want: Vec<_> = ids[..3].to_vec();
    want.sort();
    assert_eq!(seen, want);
    let v = gw
        .api_ok("DescribeSessions", json!({"State": "Active", "Filters": [{"key": "InvokedAfter", "value": "2999-01-01T00:00:00Z"}]}))
        .await;
    assert_eq!(v["Sessions"].as_array().unwrap().len(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn run_as_rules_stand_in_for_the_iam_tag() {
    let cfg = GatewayConfig {
        run_as: vec![("*".into(), "deploy".into()), (AKID.into(), "alice".into())],
        ..GatewayConfig::default()
    };
    let gw = Gateway::start(cfg).await;
    let mut agent = ScriptedAgent::connect(&gw, "host-ra").await.unwrap();
    start_session(&gw, "host-ra").await;
    let (shell, _) = agent.control.recv_type(MessageType::InteractiveShell).await;
    let (_, task) = AgentTaskPayload::from_interactive_shell(&shell.payload).unwrap();
    assert_eq!(task.run_as_user, "alice");
    gw.stop().await;
}

#[tokio::test]
async fn the_gateway_answers_the_agents_keepalive_pings() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let gw = Gateway::start(GatewayConfig::default()).await;
    let mut agent = ScriptedAgent::connect(&gw, "host-pp").await.unwrap();
    let before = gw.api_ok("DescribeInstanceInformation", json!({})).await
        ["InstanceInformationList"][0]["LastPingDateTime"]
        .as_f64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    agent
        .control
        .ws
        .send(Message::Ping(b"keepalive".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match agent.control.ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => {}
                other => panic!("socket ended before the pong: {other:?}"),
            }
        }
    })
    .await
    .expect("no pong");
    assert_eq!(&pong[..], b"keepalive");
    let after = gw.api_ok("DescribeInstanceInformation", json!({})).await
        ["InstanceInformationList"][0]["LastPingDateTime"]
        .as_f64()
        .unwrap();
    assert!(
        after > before,
        "LastPingDateTime not refreshed by the agent's ping"
    );
    gw.stop().await;
}

#[tokio::test]
async fn terminating_before_the_data_channel_opens_reaches_the_agent_on_its_control_channel() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let mut agent = ScriptedAgent::connect(&gw, "host-tc").await.unwrap();
    let (sid, _, _) = start_session(&gw, "host-tc").await;
    agent.control.recv_type(MessageType::InteractiveShell).await;
    gw.api_ok("TerminateSession", json!({"SessionId": sid}))
        .await;
    let (m, _) = agent.control.recv_type(MessageType::ChannelClosed).await;
    assert_eq!(
        from_json::<ChannelClosed>(&m.payload, "cc")
            .unwrap()
            .session_id,
        sid
    );
    // A second TerminateSession is harmless, and ResumeSession now says the session is gone.
    gw.api_ok("TerminateSession", json!({"SessionId": sid}))
        .await;
    let v = gw.api_ok("ResumeSession", json!({"SessionId": sid})).await;
    assert_eq!(v["TokenValue"], "");
    gw.stop().await;
}
