//! The agent daemon end to end: gateway and agent over loopback, real shells on real
//! PTYs, a client that behaves like the official one.

use crate::support::*;
use serde_json::json;
use session_agent::agent::{AgentConfig, ShellChoice};
use session_agent::gateway::GatewayConfig;
use session_agent::protocol::frame::PayloadType;
use std::time::Duration;
use tokio::sync::oneshot;

pub struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _state: tempfile::TempDir,
}

impl RunningAgent {
    pub async fn start(gw: &Gateway, target: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let config = AgentConfig {
            endpoint: gw.http_url(),
            target_id: target.into(),
            state_dir: state.path().to_owned(),
            max_sessions: 100,
            sudo_policy: session_agent::session::user::SudoPolicy::NoPasswd,
            shell: ShellChoice::Sh,
            ca_file: None,
            exec_shim: env!("CARGO_BIN_EXE_session-agent").into(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            session_agent::agent::run(config, async {
                let _ = stopped.await;
            })
            .await
            .expect("agent failed to start");
        });
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = gw
                .api_ok(
                    "DescribeInstanceInformation",
                    json!({"Filters":[{"Key":"InstanceIds","Values":[target]}]}),
                )
                .await;
            if v["InstanceInformationList"][0]["PingStatus"] == "Online" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent never came online"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            stop: Some(stop),
            task: Some(task),
            _state: state,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("agent did not stop")
                .unwrap();
        }
    }
}

async fn open_shell(gw: &Gateway, target: &str) -> (String, InteractiveClient) {
    let (sid, token, url) = start_session(gw, target).await;
    let mut client = InteractiveClient::new(client_connect(gw, &url, &token).await);
    // Like our own client, send the size first so the prompt is drawn at the right width.
    client.resize(100, 30).await;
    client.expect("$ ").await;
    (sid, client)
}

fn expected_user() -> String {
    if nix::unistd::geteuid().is_root() {
        "ssm-user".into()
    } else {
        session_agent::session::user::daemon_user().unwrap().name
    }
}

#[tokio::test]
async fn a_shell_runs_as_the_session_user_with_the_clients_size_and_keeps_its_exit_status() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "node-a").await;
    let (sid, mut client) = open_shell(&gw, "node-a").await;
    client
        .type_text("whoami; stty size; echo mark-$((40+2))\r")
        .await;
    let out = client.expect("mark-42").await;
    assert!(out.contains(&expected_user()), "{out:?}");
    assert!(out.contains("30 100"), "{out:?}");
    client.resize(120, 40).await;
    client.type_text("stty size\r").await;
    client.expect("40 120").await;
    client.type_text("exit 3\r").await;
    client.until_closed().await;
    assert_eq!(client.closed.as_ref().map(|c| c.output.as_str()), Some(""));
    let s = wait_status(&gw, &sid, "History", "Terminated").await;
    assert_eq!(s["Details"], "shell exited with status 3", "{s}");
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn ctrl_c_interrupts_and_terminate_kills_the_shell_and_its_children() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "node-b").await;
    let (sid, mut client) = open_shell(&gw, "node-b").await;
    client.type_text("sleep 100\r").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.type_text("\u{3}").await;
    client.type_text("echo after-$((1+1))\r").await;
    client.expect("after-2").await;
    // A background child that ignores SIGHUP, and a foreground one.
    client
        .type_text("(trap '' HUP; exec sleep 12345) & sleep 12346\r")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pgrep("sleep 1234"), "children did not start");
    gw.api_ok("TerminateSession", json!({"SessionId": sid}))
        .await;
    client.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while pgrep("sleep 1234") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session processes survived TerminateSession"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn many_sessions_at_once_each_see_their_own_output() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "node-c").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let gw_url = (gw.addr, gw.tls.clone());
        let _ = gw_url;
        let (sid, token, url) = start_session(&gw, "node-c").await;
        let peer = client_connect(&gw, &url, &token).await;
        tasks.push(tokio::spawn(async move {
            let mut c = InteractiveClient::new(peer);
            c.resize(80, 24).await;
            c.expect("$ ").await;
            c.type_text(&format!("echo marker-{}-{}\r", i, i * 7)).await;
            c.expect(&format!("marker-{}-{}", i, i * 7)).await;
            c.type_text("exit\r").await;
            c.until_closed().await;
            sid
        }));
    }
    for t in tasks {
        let sid = t.await.unwrap();
        wait_status(&gw, &sid, "History", "Terminated").await;
    }
    agent.stop().await;
    gw.stop().await;
}

fn pgrep(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn output_arrives_intact_in_bulk() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "node-d").await;
    let (_sid, mut client) = open_shell(&gw, "node-d").await;
    // 2 MB of numbered lines; the last line proves order and completeness.
    client
        .type_text("seq 1 300000 | tail -c 2000000 >/dev/null; seq 1 300000; echo done-$((2*21))\r")
        .await;
    let out = client.expect("done-42").await;
    let numbers: Vec<u64> = out
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').parse().ok())
        .collect();
    let expected: Vec<u64> = (1..=300_000).collect();
    assert_eq!(numbers.len(), expected.len(), "lines lost or duplicated");
    assert_eq!(numbers, expected);
    let _ = PayloadType::Output;
    agent.stop().await;
    gw.stop().await;
}
