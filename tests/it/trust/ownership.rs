//! Issue 16, items 2 and 3: no signed caller owns another's session, node or data
//! channel, and `dev`'s gateway answers nobody but its own process.
//!
//! The attacks, as the review performed them: a second user with a correctly signed key
//! lists the first user's session, resumes it (taking over the live shell), terminates
//! it, asks for the agent side of its data channel and takes over the node's control
//! channel; then the same against a running `session-agent dev` from a process that does
//! not hold its key.

use crate::agent::RunningAgent;
use crate::client::Term;
use crate::support::*;
use serde_json::json;
use session_agent::gateway::auth::StrictSigV4;
use session_agent::gateway::GatewayConfig;
use std::sync::Arc;

const ALICE: (&str, &str) = ("AKIDALICE", "alice-secret");
const BOB: (&str, &str) = ("AKIDBOB", "bob-secret");
const OPS: (&str, &str) = ("AKIDOPS", "ops-secret");
const AGENT: (&str, &str) = ("AKIDAGENTWEB", "agent-secret");

fn strict_gateway_config(dir: &std::path::Path) -> GatewayConfig {
    let path = dir.join("credentials");
    std::fs::write(
        &path,
        format!(
            "[alice]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [bob]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [ops]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [web-agent]\naws_access_key_id = {}\naws_secret_access_key = {}\nprincipal = web-role\n\n\
             [harness]\naws_access_key_id = {AKID}\naws_secret_access_key = secret\n",
            ALICE.0, ALICE.1, BOB.0, BOB.1, OPS.0, OPS.1, AGENT.0, AGENT.1
        ),
    )
    .unwrap();
    GatewayConfig {
        strict_sigv4: Some(Arc::new(StrictSigV4::load(&path, "us-east-1").unwrap())),
        admins: vec!["ops".into()],
        ..GatewayConfig::default()
    }
}

fn error_type(v: &serde_json::Value) -> &str {
    v["__type"].as_str().unwrap_or("")
}

/// A session started by `creds` on `target`, connected, at its shell prompt.
async fn shell_as(gw: &Gateway, creds: (&str, &str), target: &str) -> (String, InteractiveClient) {
    let (status, v) = gw
        .api_as(creds, "StartSession", json!({"Target": target}))
        .await;
    assert_eq!(status, 200, "{v}");
    let sid = v["SessionId"].as_str().unwrap().to_owned();
    let mut client = InteractiveClient::new(
        client_connect(
            gw,
            v["StreamUrl"].as_str().unwrap(),
            v["TokenValue"].as_str().unwrap(),
        )
        .await,
    );
    client.resize(80, 24).await;
    client.expect("$ ").await;
    (sid, client)
}

#[tokio::test]
async fn a_second_signed_user_cannot_see_resume_end_or_tap_anothers_session() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(strict_gateway_config(dir.path())).await;
    let agent = RunningAgent::start_signed(&gw, "web-1", AGENT).await;

    // Alice's session, with a shell that answers.
    let (sid, mut alice) = shell_as(&gw, ALICE, "web-1").await;
    assert!(sid.starts_with("alice-"), "{sid}");

    // Bob lists sessions: not Alice's, not even by its id.
    for filters in [json!([]), json!([{"key": "SessionId", "value": sid}])] {
        let (s, v) = gw
            .api_as(
                BOB,
                "DescribeSessions",
                json!({"State": "Active", "Filters": filters}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["Sessions"], json!([]), "Bob sees Alice's session: {v}");
    }
    // Bob resumes and terminates it: refused, AWS-shaped.
    for op in ["ResumeSession", "TerminateSession"] {
        let (s, v) = gw.api_as(BOB, op, json!({"SessionId": sid})).await;
        assert_eq!(
            (s, error_type(&v)),
            (400, "AccessDeniedException"),
            "{op}: {v}"
        );
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains("arn:aws:iam::000000000000:user/bob")
                && msg.contains(&format!("ssm:{op}"))
                && msg.contains(&sid),
            "{msg}"
        );
    }
    // Bob asks for the agent side of Alice's data channel, and for the node's control
    // channel: refused, no token.
    let (s, body) = gw
        .create_channel_as(
            BOB,
            &format!("/v1/data-channel/{sid}"),
            &create_body(Some("")),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body.contains("AccessDeniedException") && !body.contains("TokenValue"),
        "{body}"
    );
    let (s, body) = gw
        .create_channel_as(BOB, "/v1/control-channel/web-1", &create_body(None))
        .await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("registered to another identity"), "{body}");
    // Bob rewrites the node's instance information, or deregisters it: refused.
    let (s, v) = gw
        .api_as(
            BOB,
            "UpdateInstanceInformation",
            json!({"InstanceId": "web-1", "ComputerName": "evil", "IPAddress": "6.6.6.6"}),
        )
        .await;
    assert_eq!((s, error_type(&v)), (400, "AccessDeniedException"), "{v}");
    let (s, v) = gw
        .api_as(
            BOB,
            "DeregisterManagedInstance",
            json!({"InstanceId": "web-1"}),
        )
        .await;
    assert_eq!((s, error_type(&v)), (400, "AccessDeniedException"), "{v}");
    let nodes = gw
        .api_as(BOB, "DescribeInstanceInformation", json!({}))
        .await
        .1;
    let node = &nodes["InstanceInformationList"][0];
    assert_eq!(node["PingStatus"], "Online", "{nodes}");
    assert_ne!(node["ComputerName"], "evil", "{nodes}");
    // Even an admin cannot be the agent side.
    let (s, _) = gw
        .create_channel_as(
            OPS,
            &format!("/v1/data-channel/{sid}"),
            &create_body(Some("")),
        )
        .await;
    assert_eq!(s, 403);

    // Through all of it, Alice's shell is hers and still answers.
    alice.type_text("echo still-alice-$((6*7))\r").await;
    alice.expect("still-alice-42").await;

    // Alice may resume her own session; the admin sees it and may end it.
    let (s, v) = gw
        .api_as(ALICE, "ResumeSession", json!({"SessionId": sid}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(!v["TokenValue"].as_str().unwrap().is_empty());
    let v = gw
        .api_as(OPS, "DescribeSessions", json!({"State": "Active"}))
        .await
        .1;
    assert_eq!(v["Sessions"][0]["SessionId"], sid.as_str(), "{v}");
    assert_eq!(
        v["Sessions"][0]["Owner"],
        "arn:aws:iam::000000000000:user/alice"
    );
    let (s, v) = gw
        .api_as(OPS, "TerminateSession", json!({"SessionId": sid}))
        .await;
    assert_eq!(s, 200, "{v}");
    alice.until_closed().await;
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_node_is_held_by_the_identity_that_registered_it_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = || GatewayConfig {
        data_dir: Some(data.path().to_owned()),
        ..strict_gateway_config(dir.path())
    };
    let gw = Gateway::start(config()).await;
    let agent = RunningAgent::start_signed(&gw, "web-2", AGENT).await;
    agent.stop().await;
    let addr = gw.addr;
    gw.stop().await;
    // Restarted, with the node's agent away: the id is still not free for Bob.
    let gw = Gateway::start_at(config(), addr).await;
    let (s, body) = gw
        .create_channel_as(BOB, "/v1/control-channel/web-2", &create_body(None))
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, v) = gw
        .api_as(
            BOB,
            "UpdateInstanceInformation",
            json!({"InstanceId": "web-2"}),
        )
        .await;
    assert_eq!((s, error_type(&v)), (400, "AccessDeniedException"), "{v}");
    // Its own identity comes back to it (any of the role's keys).
    let agent = RunningAgent::start_signed(&gw, "web-2", AGENT).await;
    agent.stop().await;
    // An admin deregisters it; then another identity may take the id.
    let (s, v) = gw
        .api_as(
            OPS,
            "DeregisterManagedInstance",
            json!({"InstanceId": "web-2"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = gw
        .api_as(
            BOB,
            "UpdateInstanceInformation",
            json!({"InstanceId": "web-2"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_answers_only_its_own_process_on_every_endpoint() {
    let state = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut term = Term::sh(
        &format!(
            "{} dev --shell sh --listen 127.0.0.1:{port} --state-dir '{}'; echo client-exit=$?",
            env!("CARGO_BIN_EXE_session-agent"),
            state.path().display()
        ),
        &[],
    );
    term.expect("$ ").await;
    term.type_text("echo dev-$((2+3))\r");
    term.expect("dev-5").await;

    // Another local process (any user: the gateway knows callers only by signature)
    // holding no key, or a made-up one, or the harness's.
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let api = |op: &str, body: &str, signed: Option<(&str, &str)>| {
        let url = format!("{base}/");
        let target = format!("AmazonSSM.{op}");
        let mut req = http
            .post(&url)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", &target)
            .body(body.to_owned());
        if let Some(creds) = signed {
            for (k, v) in sign_headers_as(
                creds,
                "POST",
                &url,
                body,
                "ssm",
                &[
                    ("content-type", "application/x-amz-json-1.1"),
                    ("x-amz-target", &target),
                ],
            ) {
                req = req.header(k, v);
            }
        }
        req.send()
    };
    for signed in [None, Some(("AKIDGUESSED", "x")), Some((AKID, "secret"))] {
        for (op, body) in [
            ("DescribeSessions", r#"{"State":"Active"}"#),
            ("DescribeInstanceInformation", "{}"),
            ("StartSession", r#"{"Target":"dev"}"#),
            (
                "UpdateInstanceInformation",
                r#"{"InstanceId":"dev","ComputerName":"x"}"#,
            ),
        ] {
            let resp = api(op, body, signed).await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert_eq!(
                status, 403,
                "{op} signed by {signed:?} was answered: {text}"
            );
            assert!(
                text.contains("MissingAuthenticationToken") || text.contains("UnrecognizedClient"),
                "{op}: {text}"
            );
        }
    }
    // The message gateway: tokens for the agent side of any session, or for the node's
    // control channel, and the control-channel upgrade itself.
    for path in [
        "/v1/data-channel/dev-0123456789abcdef0",
        "/v1/control-channel/dev",
    ] {
        let resp = http
            .post(format!("{base}{path}"))
            .body(create_body(Some("")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{path}");
    }
    let upgrade = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{port}/v1/control-channel/dev?role=subscribe&stream=input"
    ))
    .await;
    assert!(
        upgrade.is_err(),
        "an unsigned control-channel upgrade was accepted"
    );
    // Liveness stays public.
    let ok = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);

    // The session was never disturbed.
    term.type_text("echo after-$((3+4))\r");
    term.expect("after-7").await;
    term.type_text("exit\r");
    let (code, _) = term.client_exit().await;
    assert_eq!(code, 0);
}

/// A node released (DeregisterManagedInstance) takes its sessions with it: whoever
/// registers the id next finds nothing live to take the agent side of.
#[tokio::test]
async fn a_deregistered_node_takes_its_sessions_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(strict_gateway_config(dir.path())).await;
    let agent = RunningAgent::start_signed(&gw, "web-4", AGENT).await;
    let (sid, mut alice) = shell_as(&gw, ALICE, "web-4").await;
    let (s, v) = gw
        .api_as(
            OPS,
            "DeregisterManagedInstance",
            json!({"InstanceId": "web-4"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    alice.until_closed().await;
    let ended = wait_status_as(&gw, ALICE, &sid, "History", "Failed").await;
    assert_eq!(
        ended["Details"], "the managed node was deregistered",
        "{ended}"
    );
    // Bob takes the id; Alice's session is not his to serve.
    let (s, v) = gw
        .api_as(
            BOB,
            "UpdateInstanceInformation",
            json!({"InstanceId": "web-4"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, body) = gw
        .create_channel_as(
            BOB,
            &format!("/v1/data-channel/{sid}"),
            &create_body(Some("")),
        )
        .await;
    assert_ne!(s, 201, "{body}");
    assert!(!body.contains("TokenValue"), "{body}");
    agent.stop().await;
    gw.stop().await;
}
