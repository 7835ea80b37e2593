//! Issue 16, item 10: two agents with one target id are named as such, the gateway's
//! files are private, sessions cut off by a gateway crash keep their output locations,
//! and wrong methods get an AWS-shaped answer.

use crate::recording::AgentProcess;
use crate::support::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn conflict_listed(gw: &Gateway, target: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = gw
            .api_ok(
                "DescribeInstanceInformation",
                json!({"Filters":[{"Key":"InstanceIds","Values":[target]}]}),
            )
            .await;
        if let Some(c) = v["InstanceInformationList"][0]["SessionAgentConflict"].as_str() {
            return c.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no conflict listed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two agents that share a target id and a key (a cloned disk image): they replace each
/// other's control channel, and both logs and the node listing say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloned_agents_sharing_a_target_id_are_named_in_both_logs_and_the_listing() {
    let gp = GatewayProcess::start(&[]).await;
    let first = AgentProcess::start(&gp.gw, "web-twin").await;
    let clone = Arc::new(tempfile::tempdir().unwrap());
    std::fs::copy(
        first.state().path().join("agent-key.json"),
        clone.path().join("agent-key.json"),
    )
    .unwrap();
    let second = AgentProcess::start_in(&gp.gw, "web-twin", clone, &[]).await;
    let said = "uses the same target id";
    wait_for("both agents log the conflict", || {
        first.log().contains(said) && second.log().contains(said)
    })
    .await;
    let listed = conflict_listed(&gp.gw, "web-twin").await;
    assert!(
        listed.contains("two agents use the target id web-twin"),
        "{listed}"
    );
    wait_for("the gateway's log names the conflict", || {
        gp.log().contains("two agents use the target id web-twin")
    })
    .await;
}

/// A second host configured with the target id of another (its own key): refused, with
/// the reason in its log and in the listing; the first host keeps its node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_with_anothers_target_id_is_refused_and_named() {
    let gp = GatewayProcess::start(&[]).await;
    let first = AgentProcess::start(&gp.gw, "web-dup").await;
    // Started by hand: it never comes online as this node, so do not wait for that.
    let second_state = tempfile::tempdir().unwrap();
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .args([
            "run",
            "--endpoint",
            &gp.gw.http_url(),
            "--target-id",
            "web-dup",
        ])
        .arg("--state-dir")
        .arg(second_state.path())
        .args(["--shell", "sh"])
        .env("SESSION_AGENT_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(second_state.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(second_state.path().join("agent.log")).unwrap_or_default();
    wait_for("the second agent logs the refusal", || {
        log().contains("holds this target id for another identity")
    })
    .await;
    let listed = conflict_listed(&gp.gw, "web-dup").await;
    assert!(
        listed.contains("asked for this node's control channel"),
        "{listed}"
    );
    // The node is still the first agent's: a session reaches it.
    let (_sid, mut client) = open_shell(&gp.gw, "web-dup").await;
    client.type_text("echo first-$((6*7))\r").await;
    client.expect("first-42").await;
    assert!(!first
        .log()
        .contains("holds this target id for another identity"));
    let _ = second.kill();
    let _ = second.wait();
}

/// The gateway's data directory and history are private; a session cut off by a
/// gateway crash keeps its output locations in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_private_and_a_crash_keeps_output_locations() {
    let prefs = tempfile::tempdir().unwrap();
    let doc = crate::recording::preferences(json!({
        "s3BucketName": "trust-bucket",
        "s3KeyPrefix": "logs",
        "cloudWatchLogGroupName": "/trust/group",
    }));
    let prefs_file = prefs.path().join("prefs.json");
    std::fs::write(&prefs_file, doc.to_string()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("gw");
    let mut gp = GatewayProcess::start(&[
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--preferences",
        prefs_file.to_str().unwrap(),
        "--orphan-timeout",
        "2s",
    ])
    .await;
    let mut agent = AgentProcess::start(&gp.gw, "web-crash").await;
    let (sid, _token, _url) = start_session(&gp.gw, "web-crash").await;
    wait_status(&gp.gw, &sid, "Active", "Connected").await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&data_dir.join("sessions.jsonl")), 0o600);
    assert_eq!(mode(&data_dir.join("nodes.json")), 0o600);
    // kill -9 the gateway, and the agent with it (so no final report ever comes).
    agent.kill_hard();
    gp.kill_and_restart().await;
    let s = wait_status(&gp.gw, &sid, "History", "Failed").await;
    assert_eq!(
        s["OutputUrl"]["S3OutputUrl"],
        format!("s3://trust-bucket/logs/{sid}.log"),
        "{s}"
    );
    let cw = s["OutputUrl"]["CloudWatchOutputUrl"]
        .as_str()
        .unwrap_or_default();
    assert!(
        cw.contains("group=/trust/group") && cw.contains(&format!("stream={sid}")),
        "{s}"
    );
    assert_eq!(mode(&data_dir.join("sessions.jsonl")), 0o600);
}

#[tokio::test]
async fn wrong_methods_get_aws_shaped_answers() {
    let gw = Gateway::start(session_agent::gateway::GatewayConfig::default()).await;
    let http = gw.http();
    let resp = http
        .put(format!("{}/", gw.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["__type"], "UnknownOperationException", "{v}");
    assert!(v["message"].as_str().unwrap().contains("PUT"), "{v}");
    let resp = http
        .delete(format!("{}/v1/data-channel/s-1", gw.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let text = resp.text().await.unwrap();
    assert!(
        text.starts_with("<MethodNotAllowed>") && text.contains("DELETE"),
        "{text}"
    );
    gw.stop().await;
}
