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

/// A `NonInteractiveCommands` document with separate streams and prefixes.
const SEPARATE_DOC: &str = r#"{
  "schemaVersion": "1.0",
  "sessionType": "NonInteractiveCommands",
  "parameters": {"command": {"type": "String"}},
  "properties": {
    "linux": {"commands": "{{ command }}", "separateOutputStream": true,
              "stdOutSeparatorPrefix": "OUT:", "stdErrSeparatorPrefix": "ERR:"},
    "macos": {"commands": "{{ command }}", "separateOutputStream": true,
              "stdOutSeparatorPrefix": "OUT:", "stdErrSeparatorPrefix": "ERR:"}
  }
}"#;

#[tokio::test]
async fn a_non_interactive_command_runs_without_a_shell_or_terminal_and_says_how_it_ended() {
    use crate::port::PortClient;
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(docs.path().join("Test-Separate.json"), SEPARATE_DOC).unwrap();
    let gw = Gateway::start(GatewayConfig {
        documents_dir: Some(docs.path().to_owned()),
        ..GatewayConfig::default()
    })
    .await;
    let agent = RunningAgent::start(&gw, "cmd-b").await;
    // No shell: `&&`, `;` and `$(...)` are arguments; no terminal: `tty` says so.
    let (sid, mut c) = PortClient::start_document(
        &gw,
        "cmd-b",
        "AWS-StartNonInteractiveCommand",
        json!({"command": ["sh -c 'tty; echo to-err >&2; echo \"args:$*\"; exit 4' zero a && $(id)"]}),
        "1.2.650.0",
    )
    .await;
    c.until_closed().await;
    let out = String::from_utf8_lossy(&c.data).into_owned();
    assert!(out.contains("not a tty"), "{out}");
    assert!(out.contains("args:a && $(id)"), "{out}");
    assert!(out.contains("to-err"), "stderr joins the output: {out}");
    assert!(
        c.exit_codes.is_empty(),
        "upstream sends EXIT_CODE only with separate streams"
    );
    let s = wait_status(&gw, &sid, "History", "Terminated").await;
    assert_eq!(s["Details"], "command exited with status 4", "{s}");
    // Separate streams: stderr as StdErr, prefixes, then the exit code message.
    let (sid, mut c) = PortClient::start_document(
        &gw,
        "cmd-b",
        "Test-Separate",
        json!({"command": ["sh -c 'echo one; echo bad >&2; exit 3'"]}),
        "1.2.650.0",
    )
    .await;
    c.until_closed().await;
    assert_eq!(String::from_utf8_lossy(&c.data), "OUT:one\n");
    assert_eq!(String::from_utf8_lossy(&c.stderr), "ERR:bad\n");
    assert_eq!(c.exit_codes, ["EXIT_CODE: 3"]);
    wait_status(&gw, &sid, "History", "Terminated").await;
    // Recorded: what was shown, stdout and stderr.
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
    while !run("verify").await.unwrap().status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the recording never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let text = String::from_utf8_lossy(&run("transcript").await.unwrap().stdout).into_owned();
    for shown in ["OUT:one", "ERR:bad", "EXIT_CODE: 3"] {
        assert!(text.contains(shown), "{shown} not in {text}");
    }
    // A program that does not exist: a clear error, not a hang.
    let (sid, mut c) = PortClient::start_document(
        &gw,
        "cmd-b",
        "AWS-StartNonInteractiveCommand",
        json!({"command": ["/no/such/program --x"]}),
        "1.2.650.0",
    )
    .await;
    c.until_closed().await;
    if nix::unistd::geteuid().is_root() {
        // Through the privilege-dropping shim, which says why on the program's stderr.
        let s = wait_status(&gw, &sid, "History", "Terminated").await;
        assert_eq!(s["Details"], "command exited with status 127", "{s}");
        let shown = String::from_utf8_lossy(&c.data).into_owned();
        assert!(shown.contains("cannot run /no/such/program"), "{shown}");
    } else {
        let s = wait_status(&gw, &sid, "History", "Failed").await;
        let why = c.closed.clone().map(|c| c.output).unwrap_or_default();
        assert!(why.starts_with("Unable to start command"), "{why} / {s}");
    }
    agent.stop().await;
    gw.stop().await;
}
