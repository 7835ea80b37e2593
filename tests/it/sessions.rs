//! Finding and reading recordings with the real binary, against recordings a real
//! in-process agent made of a real shell session: `summary.json` and its figures,
//! `session-agent sessions` (live, ended, interrupted, unreadable; filters, JSON),
//! `session-agent audit` (the process table and its JSON lines), and the session id
//! accepted by `transcript` and `verify` as well as a path.

use crate::agent::RunningAgent;
use crate::support::*;
use serde_json::Value;
use session_agent::gateway::GatewayConfig;
use std::path::Path;
use std::time::Duration;

/// `session-agent ARGS... --state-dir STATE`, off the runtime (the agent shares it): exit
/// code, stdout, stderr.
async fn tool(state: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("SESSION_AGENT_STATE_DIR")
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits for a recording's summary.json; returns it.
async fn summary(dir: &Path) -> Value {
    let path = dir.join("summary.json");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let read = std::fs::read(&path).map(|b| serde_json::from_slice::<Value>(&b));
        if let Ok(Ok(v)) = read {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no summary.json in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[allow(clippy::print_stderr)]
fn skipped(name: &str, why: &str) {
    eprintln!("SKIPPED {name}: {why}");
}

#[tokio::test]
async fn a_real_sessions_summary_listing_audit_and_id_lookup() {
    let root = nix::unistd::geteuid().is_root();
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "read-node").await;
    let state = agent.state_dir().to_owned();
    let (sid, mut client) = open_shell(&gw, "read-node").await;
    // The programs whose rows are checked live long enough for their details to be read
    // (one that ends within microseconds may be recorded without them, by design).
    client
        .type_text("sh -c \"sleep 0.1; sh -c 'sleep 0.2; exit 7'\"; echo seven-$?\r")
        .await;
    client.expect("seven-7").await;
    // Typed with echo off: withheld, counted.
    client.type_text("stty -echo; echo off-$((1+1))\r").await;
    client.expect("off-2").await;
    client
        .type_text("printf 'hidden-%s\\n' $((6*7)); stty echo\r")
        .await;
    client.expect("hidden-42").await;

    // While the session runs: listed live, with no summary yet.
    let (code, out, err) = tool(&state, &["sessions"]).await;
    assert_eq!(code, Some(0), "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&sid))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains(" live "), "{out}");
    let (_, out, _) = tool(&state, &["sessions", "--json"]).await;
    let live = json_lines(&out);
    assert_eq!(live[0]["sessionId"], sid.as_str());
    assert_eq!(live[0]["status"], "live");
    assert_eq!(live[0]["summary"], false);

    client.type_text("exit 3\r").await;
    client.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let dir = agent.state_dir().join("recordings").join(&sid);
    let s = summary(&dir).await;

    // summary.json: private, and the figures of this session.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("summary.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(s["summaryVersion"], 1);
    assert_eq!(s["sessionId"], sid.as_str());
    assert_eq!(s["target"], "read-node");
    assert!(s["owner"].as_str().is_some_and(|o| !o.is_empty()), "{s}");
    let run_as = s["runAsUser"].as_str().unwrap().to_owned();
    if root {
        assert_eq!(run_as, "ssm-user");
    }
    assert_eq!(s["exitCode"], 3, "{s}");
    assert_eq!(s["endedHow"], "exited");
    assert_eq!(s["complete"], true, "{s}");
    assert_eq!(s["interrupted"], false);
    let (start, end) = (
        s["startUnixMs"].as_u64().unwrap(),
        s["endUnixMs"].as_u64().unwrap(),
    );
    assert_eq!(s["durationMs"].as_u64().unwrap(), end - start);
    assert!(s["start"].as_str().unwrap().ends_with('Z'));
    assert!(s["bytes"]["output"].as_u64().unwrap() > 20, "{s}");
    // What was typed with echo on: the first command and `exit 3`.
    assert!(s["bytes"]["input"].as_u64().unwrap() >= 40, "{s}");
    assert!(s["bytes"]["inputWithheld"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["bytes"]["inputWithheld"], s["redactions"]["echoOffBytes"]);
    // Typed at the prompt and shown: the first two lines and `exit 3`; the line typed
    // with echo off showed only its output, which is no command.
    assert_eq!(s["commands"], 3, "{s}");
    assert_eq!(s["gaps"]["count"], 0);
    assert_eq!(
        s["delivery"],
        serde_json::json!({}),
        "no destination: local only"
    );
    // The spool as verify counts it.
    let (code, said, _) = tool(&state, &["verify", &sid]).await;
    assert_eq!(code, Some(0), "{said}");
    let head = s["spool"]["chainHead"].as_str().unwrap();
    assert!(said.contains(head), "{said} / {s}");
    assert!(
        said.contains(&format!("{} records", s["spool"]["records"])),
        "{said} / {s}"
    );
    if root {
        // sleep twice, sh (exit 7), stty twice (printf is a builtin).
        assert!(s["processes"]["executed"].as_u64().unwrap() >= 4, "{s}");
        assert!(s["processes"]["exited"].as_u64().unwrap() >= 4, "{s}");
        assert!(
            s["processes"]["exitedNonZero"].as_u64().unwrap() >= 1,
            "{s}"
        );
    } else {
        skipped(
            "a_real_sessions_summary_listing_audit_and_id_lookup (processes)",
            "the command audit needs root before Linux 6.6; not root",
        );
    }

    // sessions: ended, local only; filters.
    let (code, out, err) = tool(&state, &["sessions"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("SESSION"), "{out}");
    let row = out.lines().find(|l| l.starts_with(&sid)).unwrap();
    assert!(
        row.contains(" ended ") && row.ends_with("local only"),
        "{out}"
    );
    assert!(row.contains(&run_as), "{row}");
    let (_, out, _) = tool(
        &state,
        &["sessions", "--json", "--since", "1h", "--user", &run_as],
    )
    .await;
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["status"], "ended");
    assert_eq!(rows[0]["summary"], true);
    assert_eq!(rows[0]["durationMs"], s["durationMs"]);
    assert_eq!(rows[0]["delivery"], "local only");
    for (flag, value) in [
        ("--user", "nobody-else"),
        ("--until", "2001-01-01"),
        ("--since", "2099-01-01T00:00:00Z"),
    ] {
        let (code, out, _) = tool(&state, &["sessions", flag, value]).await;
        assert_eq!(code, Some(0));
        assert!(
            out.starts_with("no recordings match"),
            "{flag} {value}: {out}"
        );
    }
    let (code, _, err) = tool(&state, &["sessions", "--since", "yesterday"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");

    // audit: the table, and JSON lines.
    let (code, out, err) = tool(&state, &["audit", &sid]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.lines().nth(1).unwrap().starts_with("TIME"), "{out}");
    assert!(out.contains("session ended: exited"), "{out}");
    if root {
        let row = out
            .lines()
            .find(|l| l.ends_with("sh -c 'sleep 0.2; exit 7'"))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(row.contains("exit 7"), "{row}");
        assert!(row.contains("ssm-user"), "{row}");
        let (code, out, _) = tool(&state, &["audit", "--json", dir.to_str().unwrap()]).await;
        assert_eq!(code, Some(0));
        let entries = json_lines(&out);
        let seven = entries
            .iter()
            .find(|e| {
                e["type"] == "process"
                    && e["argv"] == serde_json::json!(["sh", "-c", "sleep 0.2; exit 7"])
            })
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(seven["exitCode"], 7);
        assert_eq!(seven["end"], "exited");
        assert!(seven["pid"].as_u64().is_some() && seven["ppid"].as_u64().is_some());
        assert!(seven["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        let outer = entries
            .iter()
            .find(|e| e["argv"][2] == "sleep 0.1; sh -c 'sleep 0.2; exit 7'")
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(seven["ppid"], outer["pid"], "joined by pid: {out}");
        assert!(entries.iter().all(|e| e["type"] != "gap"));
    }

    // The id works where a path did, and bad ids are refused with where it looked.
    let (code, out, _) = tool(&state, &["transcript", &sid]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("seven-7"), "{out}");
    for bad in ["../recordings", "no-such-session", "a/b"] {
        let (code, _, err) = tool(&state, &["audit", bad]).await;
        assert_eq!(code, Some(1), "{bad}");
        assert!(!err.is_empty(), "{bad}");
    }
    let (_, _, err) = tool(&state, &["audit", "no-such-session"]).await;
    assert!(
        err.contains(&state.join("recordings").display().to_string())
            && err.contains("session-agent sessions"),
        "{err}"
    );
    let (code, out, _) = tool(&state, &["verify", "no-such-session"]).await;
    assert_eq!(code, Some(2), "{out}");

    // A spool altered in its middle: what comes before is printed, then the error.
    let broken = state.join("broken.spool");
    let mut bytes = std::fs::read(dir.join("events.spool")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&broken, bytes).unwrap();
    let (code, out, err) = tool(&state, &["audit", broken.to_str().unwrap()]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("session "), "{out}");
    assert!(err.contains("session-agent verify"), "{err}");
    std::fs::remove_file(&broken).unwrap();

    // A crash left a recording behind (no summary, no live mark): interrupted, not
    // recovered yet. A foreign directory: unreadable, with why.
    let copy = state.join("recordings").join("copy-of-it");
    std::fs::create_dir(&copy).unwrap();
    for f in ["events.spool", "session.json"] {
        std::fs::copy(dir.join(f), copy.join(f)).unwrap();
    }
    std::fs::create_dir(state.join("recordings").join("not-a-recording")).unwrap();
    let (code, out, err) = tool(&state, &["sessions"]).await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[3].starts_with("not-a-recording") && lines[3].contains("unreadable"),
        "{out}"
    );
    assert!(
        lines[1..3]
            .iter()
            .any(|l| l.contains("interrupted (not recovered yet)")),
        "{out}"
    );
    agent.stop().await;
    gw.stop().await;
}
