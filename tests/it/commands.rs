//! Command sessions end to end: `AWS-StartInteractiveCommand` runs its command on a PTY
//! as the session user, with nothing before or after it, recorded like a shell.

use crate::agent::RunningAgent;
use crate::support::*;
use serde_json::json;
use session_agent::gateway::GatewayConfig;

#[tokio::test]
async fn an_interactive_command_runs_alone_takes_input_and_reports_its_status() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "cmd-a").await;
    let v = gw
        .api_ok(
            "StartSession",
            json!({
                "Target": "cmd-a",
                "DocumentName": "AWS-StartInteractiveCommand",
                "Parameters": {"command": ["printf 'name? '; read x; echo got-$x-$((6*7)); exit 3"]}
            }),
        )
        .await;
    let sid = v["SessionId"].as_str().unwrap().to_owned();
    let peer = client_connect(
        &gw,
        v["StreamUrl"].as_str().unwrap(),
        v["TokenValue"].as_str().unwrap(),
    )
    .await;
    let mut client = InteractiveClient::new(peer);
    client.resize(90, 20).await;
    client.expect("name? ").await;
    client.type_text("abc\r").await;
    client.expect("got-abc-42").await;
    // The command's end is the session's: no shell prompt, no further input.
    client.until_closed().await;
    let s = wait_status(&gw, &sid, "History", "Terminated").await;
    assert_eq!(s["Details"], "command exited with status 3", "{s}");
    // Recorded like a shell: what was shown and typed (echo was on).
    let spool = agent
        .state_dir()
        .join("recordings")
        .join(&sid)
        .join("events.spool");
    let deadline = std::time::Instant::now() + WAIT;
    let run = |cmd: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
            .arg(cmd)
            .arg(&spool)
            .output()
    };
    // Complete (its end written) and intact.
    while !run("verify").await.unwrap().status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the recording never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let text = String::from_utf8_lossy(&run("transcript").await.unwrap().stdout).into_owned();
    assert!(text.contains("name? abc"), "{text}");
    assert!(text.contains("got-abc-42"), "{text}");
    assert!(!text.contains("$ "), "no shell prompt: {text}");
    agent.stop().await;
    gw.stop().await;
}
