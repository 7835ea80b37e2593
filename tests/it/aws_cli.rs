//! The real AWS CLI (`aws`, installed from PyPI by `.ci/run`) against the gateway: the
//! calls it makes must work unchanged with `--endpoint-url`.

use crate::support::*;
use serde_json::Value;
use session_agent::protocol::frame::MessageType;
use std::path::Path;

/// Runs `aws ssm <args>` against the gateway; returns (exit code, stdout, stderr).
async fn aws(gw: &Gateway, path_prefix: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut path = std::env::var("PATH").unwrap_or_default();
    if let Some(p) = path_prefix {
        path = format!("{}:{path}", p.display());
    }
    let out = tokio::process::Command::new("aws")
        .arg("ssm")
        .args(args)
        .args(["--endpoint-url", &gw.http_url(), "--region", "us-east-1", "--output", "json"])
        .env("PATH", path)
        .env("AWS_ACCESS_KEY_ID", "AKIDAWSCLI")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .output()
        .await
        .expect("the AWS CLI is needed for this test: `pip install awscli` (the README test command installs it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test]
async fn aws_cli_lists_instances_and_sessions() {
    let gw = Gateway::start(observed_config()).await;
    let _agent = ScriptedAgent::connect(&gw, "i-0aaaaaaaaaaaaaaaa")
        .await
        .unwrap();
    let (code, out, err) = aws(&gw, None, &["describe-instance-information"]).await;
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(
        v["InstanceInformationList"][0]["InstanceId"],
        "i-0aaaaaaaaaaaaaaaa"
    );
    assert_eq!(v["InstanceInformationList"][0]["PingStatus"], "Online");
    let (code, out, err) = aws(&gw, None, &["describe-sessions", "--state", "History"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["Sessions"], serde_json::json!([]));
    // An error from the gateway comes out as the CLI's usual typed error.
    let (code, _, err) = aws(&gw, None, &["terminate-session", "--session-id", "nope-1"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("DoesNotExistException"), "{err}");
    gw.stop().await;
}

#[tokio::test]
async fn aws_cli_start_session_hands_the_plugin_what_it_needs() {
    let gw = Gateway::start(observed_config()).await;
    let mut agent = ScriptedAgent::connect(&gw, "i-0bbbbbbbbbbbbbbbb")
        .await
        .unwrap();
    // A stand-in plugin that records how the CLI calls it.
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("args.json");
    let plugin = dir.path().join("session-manager-plugin");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 1.2.677.0; exit 0; fi\n\
             python3 -c 'import json,os,sys; a=sys.argv[1:]; a[0]=os.environ.get(a[0],a[0]); json.dump(a, open(\"{}\",\"w\"))' \"$@\"\n",
            record.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&plugin).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let (code, _, err) = aws(
        &gw,
        Some(dir.path()),
        &[
            "start-session",
            "--target",
            "i-0bbbbbbbbbbbbbbbb",
            "--reason",
            "cli test",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let args: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let response = json(&args[0]);
    let session_id = response["SessionId"].as_str().unwrap();
    assert!(session_id.starts_with("AKIDAWSCLI-"), "{session_id}");
    assert!(response["StreamUrl"]
        .as_str()
        .unwrap()
        .starts_with(&format!("ws://{}/v1/data-channel/{session_id}", gw.addr)));
    assert!(!response["TokenValue"].as_str().unwrap().is_empty());
    assert_eq!(args[1], "us-east-1");
    assert_eq!(args[2], "StartSession");
    assert_eq!(json(&args[4])["Target"], "i-0bbbbbbbbbbbbbbbb");
    assert_eq!(args[5], gw.http_url());
    agent.control.recv_type(MessageType::InteractiveShell).await;
    let s = wait_status(&gw, session_id, "Active", "Connecting").await;
    assert_eq!(s["Reason"], "cli test");
    assert_eq!(s["Owner"], "arn:aws:iam::000000000000:user/AKIDAWSCLI");

    // The plugin's token opens the StreamUrl exactly once.
    let mut client = client_connect(
        &gw,
        response["StreamUrl"].as_str().unwrap(),
        response["TokenValue"].as_str().unwrap(),
    )
    .await;
    let (code, _, err) = aws(
        &gw,
        None,
        &["terminate-session", "--session-id", session_id],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    client.recv_type(MessageType::ChannelClosed).await;
    gw.stop().await;
}

#[tokio::test]
async fn aws_cli_without_the_plugin_terminates_the_session_it_started() {
    let gw = Gateway::start(observed_config()).await;
    let mut agent = ScriptedAgent::connect(&gw, "i-0cccccccccccccccc")
        .await
        .unwrap();
    let empty = tempfile::tempdir().unwrap();
    // PATH still needs python for the `aws` script itself, so only make sure no plugin is found.
    let (code, _, err) = aws(
        &gw,
        Some(empty.path()),
        &["start-session", "--target", "i-0cccccccccccccccc"],
    )
    .await;
    if which_plugin().is_none() {
        assert_ne!(code, 0);
        assert!(err.contains("SessionManagerPlugin is not found"), "{err}");
        let (m, _) = agent.control.recv_type(MessageType::ChannelClosed).await;
        let closed: session_agent::protocol::payload::ChannelClosed =
            session_agent::protocol::payload::from_json(&m.payload, "channel_closed").unwrap();
        wait_status(&gw, &closed.session_id, "Active", "Terminating").await;
    }
    gw.stop().await;
}

fn which_plugin() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("session-manager-plugin"))
            .find(|f| f.exists())
    })
}
