//! Commands as typed (issue 19, item 2) and the CloudWatch stream's compatibility
//! switches (item 6), end to end: the agent daemon streams to CloudWatch Logs in
//! LocalStack while a client types into a real bash and a real sh.

use crate::recording::{gateway, AgentProcess, LocalStack, REGION};
use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The events of a session's stream, parsed.
async fn parsed_events(ls: &LocalStack, group: &str, sid: &str) -> (Vec<String>, Vec<Value>) {
    let raw = ls.events(group, sid).await;
    let parsed = raw
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    (raw, parsed)
}

#[tokio::test]
async fn lines_typed_at_a_bash_prompt_are_command_events_without_their_prompt_and_no_password_is() {
    const SECRET: &str = "S3CR3T-typed-pw";
    let ls = LocalStack::get().await;
    let group = ls.log_group(false).await;
    let gw = gateway(json!({
        "cloudWatchLogGroupName": group,
        "cloudWatchStreamingEnabled": true,
    }))
    .await;
    let agent = AgentProcess::start(&gw, "typed-bash").await;
    // (`expect` looks at what arrives after it is called: each waits for the last thing
    // the step prints.)
    let (sid, mut client) = open_shell(&gw, "typed-bash").await;
    // bash with readline (which turns echo off and echoes for itself) and a real prompt.
    client
        .type_text("exec env PS1='[\\u@\\h \\W]\\$ ' bash --norc --noprofile -i\r")
        .await;
    client.expect("]$ ").await;
    client.type_text("echo hello\r").await;
    let out = client.expect("]$ ").await;
    assert_eq!(
        out.matches("hello").count(),
        2,
        "typed and printed: {out:?}"
    );
    client.type_text("ls /\r").await;
    client.expect("]$ ").await;
    // A password read with echo off, typed key by key as a person does (once the prompt
    // shows: the quotes keep the echoed command from looking like it).
    client
        .type_text("read -s -p 'Pass''word: ' pw; echo; echo got-${#pw}\r")
        .await;
    client.expect("Password: ").await;
    for c in SECRET.chars() {
        client.type_text(&c.to_string()).await;
    }
    client.type_text("\r").await;
    let out = client.expect("]$ ").await;
    assert!(out.contains(&format!("got-{}", SECRET.len())), "{out:?}");
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");

    let (raw, events) = parsed_events(&ls, &group, &sid).await;
    let commands: Vec<&Value> = events
        .iter()
        .filter(|v| v["eventType"] == "command")
        .collect();
    let lines: Vec<&str> = commands
        .iter()
        .map(|v| v["commandLine"].as_str().unwrap())
        .collect();
    // Exactly what was typed, no prompt, in order; the password line is no command.
    assert_eq!(
        lines,
        [
            "exec env PS1='[\\u@\\h \\W]\\$ ' bash --norc --noprofile -i",
            "echo hello",
            "ls /",
            "read -s -p 'Pass''word: ' pw; echo; echo got-${#pw}",
            "exit",
        ],
        "{raw:#?}"
    );
    let owner = commands[1]["userIdentity"]["arn"].clone();
    for v in &commands[1..] {
        // The upstream envelope, so existing queries select them.
        assert_eq!(v["eventVersion"], "1.0");
        assert_eq!(v["awsRegion"], REGION);
        assert_eq!(v["target"]["id"], "typed-bash");
        assert_eq!(v["userIdentity"]["arn"], owner);
        assert!(v["runAsUser"].as_str().is_some_and(|u| !u.is_empty()));
        assert_eq!(v["sessionId"], sid.as_str());
        assert_eq!(v["direction"], "command");
        assert_eq!(v["sessionData"], json!([]), "never counted again as text");
        let prompt = v["prompt"].as_str().unwrap();
        assert!(prompt.starts_with('[') && prompt.ends_with("]$"), "{v}");
        let time = v["time"].as_str().unwrap();
        assert!(time.len() == 24 && time.ends_with('Z'), "{time}");
    }
    // The password is nowhere: not in the stream, not in the recording.
    for e in &raw {
        assert!(!e.contains(SECRET), "{e}");
    }
    let mut files = Vec::new();
    crate::recording::all_files(&agent.recording_dir(&sid), &mut files);
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        assert!(!text.contains(SECRET), "{}", f.display());
    }
    // stream_input is off by default: no typed text as input events, only the markers
    // of echo-off typing (readline's and the password's).
    for v in events.iter().filter(|v| v["direction"] == "input") {
        for line in v["sessionData"].as_array().unwrap() {
            assert!(
                line.as_str().unwrap().starts_with("[input redacted:"),
                "{v}"
            );
        }
    }
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn the_upstream_mode_streams_output_lines_in_upstreams_schema_and_nothing_else() {
    let ls = LocalStack::get().await;
    let group = ls.log_group(false).await;
    let gw = gateway(json!({
        "cloudWatchLogGroupName": group,
        "cloudWatchStreamingEnabled": true,
    }))
    .await;
    let agent = AgentProcess::start_with(
        &gw,
        "typed-upstream",
        &[
            ("SESSION_AGENT_CLOUDWATCH_STREAM", "upstream"),
            ("SESSION_AGENT_STREAM_INPUT", "on"),
        ],
    )
    .await;
    let (sid, mut client) = open_shell(&gw, "typed-upstream").await;
    client.type_text("echo up-$((6*7))\r").await;
    client.expect("up-42\r\n$ ").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");
    let (raw, events) = parsed_events(&ls, &group, &sid).await;
    assert!(!events.is_empty());
    const KEYS: [&str; 8] = [
        "eventVersion",
        "eventTime",
        "awsRegion",
        "target",
        "userIdentity",
        "runAsUser",
        "sessionId",
        "sessionData",
    ];
    for (e, v) in raw.iter().zip(&events) {
        // Exactly upstream's fields, in its order (serde_json keeps the order only when
        // told to; check the text).
        let positions: Vec<usize> = KEYS
            .iter()
            .map(|k| {
                e.find(&format!("\"{k}\":"))
                    .unwrap_or_else(|| panic!("{k} in {e}"))
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{e}");
        assert_eq!(v.as_object().unwrap().len(), KEYS.len(), "{e}");
        assert_eq!(v["sessionId"], sid.as_str());
    }
    let lines: Vec<&str> = events
        .iter()
        .flat_map(|v| v["sessionData"].as_array().unwrap())
        .map(|l| l.as_str().unwrap())
        .collect();
    // The output (the echoed command and what it printed); no input although
    // stream_input is on, no command, no end record.
    assert!(lines.contains(&"up-42"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.ends_with("echo up-$((6*7))")),
        "{lines:?}"
    );
    assert!(!raw.iter().any(|e| e.contains("session ended")), "{raw:?}");
    // No chain: `verify` says it cannot check such a stream.
    let (code, out) =
        crate::recording::verify_with_localstack(&format!("cloudwatch://{group}/{sid}"));
    assert_ne!(code, Some(0), "{out}");
    drop(agent);
    gw.stop().await;
}

/// Every event of a session's spool, in order.
fn spool_events(spool: &std::path::Path) -> Vec<session_agent::recorder::Event> {
    let file = std::fs::File::open(spool).unwrap();
    session_agent::spool::reader::Reader::new(file)
        .unwrap()
        .map(|r| {
            let line = String::from_utf8(r.unwrap().payload).unwrap();
            session_agent::recorder::Event::from_json_line(&line).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn real_bash_lines_wrapped_interrupted_edited_or_typed_into_vi_give_the_right_commands() {
    use crate::agent::RunningAgent;
    use session_agent::gateway::GatewayConfig;
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "typed-real").await;
    let (sid, mut client) = open_shell(&gw, "typed-real").await;
    // 40 columns: the long line wraps over three rows.
    client.resize(40, 20).await;
    client
        .type_text("exec env PS1='[\\u@\\h \\W]\\$ ' bash --norc --noprofile -i\r")
        .await;
    client.expect("]$ ").await;
    let long = format!("echo {}", "x".repeat(90));
    client.type_text(&format!("{long}\r")).await;
    client.expect("]$ ").await;
    // Typed, then abandoned with Ctrl-C.
    client.type_text("echo never").await;
    client.expect("never").await;
    client.type_text("\x03").await;
    client.expect("]$ ").await;
    // Edited with backspaces.
    client.type_text("echo abcd\x7f\x7fX\r").await;
    let out = client.expect("]$ ").await;
    assert!(out.contains("abX\r\n"), "{out:?}");
    // Lines typed inside a full-screen program are not commands.
    client.type_text("vi -u NONE -n /tmp/typed-vi\r").await;
    client.expect("\x1b[?1049h").await;
    client.type_text("ihello\rworld\x1b").await;
    client.type_text(":q!\r").await;
    client.expect("]$ ").await;
    // A password typed key by key with echo off.
    client
        .type_text("read -s -p 'Pass''word: ' pw; echo; echo got-${#pw}\r")
        .await;
    client.expect("Password: ").await;
    for c in "hunter2-typed".chars() {
        client.type_text(&c.to_string()).await;
    }
    client.type_text("\r").await;
    let out = client.expect("]$ ").await;
    assert!(out.contains("got-13"), "{out:?}");
    client.type_text("exit\r").await;
    client.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let spool = agent.spool(&sid);
    ended_transcript(&spool).await;
    let commands = session_agent::recorder::typed_commands(spool_events(&spool));
    let lines: Vec<(&str, &str)> = commands
        .iter()
        .map(|c| (c.prompt.as_str(), c.command_line.as_str()))
        .collect();
    let prompt = lines[1].0;
    assert!(
        prompt.starts_with('[') && prompt.ends_with("]$"),
        "{lines:?}"
    );
    assert_eq!(
        lines,
        [
            (
                "$",
                "exec env PS1='[\\u@\\h \\W]\\$ ' bash --norc --noprofile -i"
            ),
            (prompt, long.as_str()),
            (prompt, "echo abX"),
            (prompt, "vi -u NONE -n /tmp/typed-vi"),
            (
                prompt,
                "read -s -p 'Pass''word: ' pw; echo; echo got-${#pw}"
            ),
            (prompt, "exit"),
        ]
    );
    // `session-agent audit` shows them among the programs, as JSON too.
    let table = agent_tool("audit", &spool).await;
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.status.success(), "{text}");
    assert!(text.contains("typed: echo abX"), "{text}");
    assert!(!text.contains("typed: echo never"), "{text}");
    let json = tokio::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .arg("audit")
        .arg("--json")
        .arg(&spool)
        .output()
        .await
        .unwrap();
    let typed: Vec<String> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "command")
        .map(|v| v["commandLine"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        typed,
        lines
            .iter()
            .map(|(_, c)| (*c).to_owned())
            .collect::<Vec<_>>()
    );
    agent.stop().await;
    gw.stop().await;
}
