//! The `session-agent` binary itself: help, configuration errors (exit 64), and a real
//! gateway process that serves and stops on SIGTERM.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_session-agent");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_answers_the_first_questions() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("gateway"), "{out}");
    let (code, out, _) = run(&["gateway", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--listen",
        "--data-dir",
        "--preferences",
        "--tls-cert",
        "--tls-key",
        "--advertise-url",
        "--ping-interval",
    ] {
        assert!(out.contains(flag), "gateway --help lacks {flag}");
    }
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("session-agent "), "{out}");
}

#[test]
fn the_windows_service_commands_point_linux_users_to_systemd() {
    let (code, out, _) = run(&["service", "--help"]);
    assert_eq!(code, 0);
    for sub in ["install", "uninstall", "start", "stop"] {
        assert!(out.contains(sub), "service --help lacks {sub}:\n{out}");
    }
    assert!(
        !out.contains("\n  run "),
        "the SCM's entry point is hidden:\n{out}"
    );
    for args in [
        &["service", "install"][..],
        &["service", "uninstall", "--purge"],
        &["service", "start"],
        &["service", "stop"],
        &["service", "run"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("Windows service") && err.contains("systemctl enable --now session-agent"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn invalid_configuration_exits_64_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let prefs = dir.path().join("prefs.json");
    std::fs::write(&prefs, r#"{"schemaVersion":"1.0","sessionType":"Standard_Stream","inputs":{"cloudWatchStreamingEnabled":"true"}}"#).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--preferences".into(), prefs.display().to_string()],
            "cloudWatchStreamingEnabled",
        ),
        (
            vec!["--preferences".into(), "/nonexistent/prefs.json".into()],
            "--preferences",
        ),
        (
            vec![
                "--ping-interval".into(),
                "5s".into(),
                "--peer-timeout".into(),
                "2s".into(),
            ],
            "--peer-timeout",
        ),
        (
            vec!["--advertise-url".into(), "http://x".into()],
            "--advertise-url",
        ),
        (vec!["--account-id".into(), "12".into()], "--account-id"),
    ];
    for (args, key) in cases {
        let mut all = vec![
            "gateway".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (code, _, err) = run(&all);
        assert_eq!(code, 64, "{all:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(key), "{all:?}: {err}");
    }
    // A log level that is not one would silently hide all logs: refused.
    let (code, _, err) = run(&[
        "--log-level",
        "verbose",
        "gateway",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--log-level"), "{err}");
    // clap's own usage errors (a malformed duration) also exit non-zero with a hint.
    let (code, _, err) = run(&["gateway", "--ping-interval", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("duration"), "{err}");
}

#[tokio::test]
async fn the_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["gateway", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let addr = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || {
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap();
                if let Some(rest) = line.split("addr=").nth(1) {
                    return rest.split_whitespace().next().unwrap().to_owned();
                }
            }
            panic!("gateway never logged its address");
        }),
    )
    .await
    .expect("gateway did not log its address in time")
    .unwrap();
    let resp = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/"))
        .header("x-amz-target", "AmazonSSM.DescribeSessions")
        .body(r#"{"State":"History"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pid = i32::try_from(child.id()).unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("gateway did not exit after SIGTERM")
    .unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(dir.path().join("sessions.jsonl").exists());
}

/// The shipped example preferences must stay valid for `--preferences`.
#[test]
fn the_example_preferences_file_is_accepted() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/session-preferences.example.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let resolved =
        session_agent::protocol::document::resolve(&doc, &serde_json::Map::new()).unwrap();
    assert_eq!(resolved.inputs.idle_session_timeout, Some(20));
    assert!(resolved.inputs.s3_encryption_enabled);
    // And the binary accepts it: preferences are checked before the timeouts, so with a
    // good file the complaint is about the (deliberately invalid) --peer-timeout.
    let (code, _, err) = run(&[
        "gateway",
        "--preferences",
        path,
        "--ping-interval",
        "5s",
        "--peer-timeout",
        "2s",
    ]);
    assert_eq!(code, 64);
    assert!(
        err.contains("--peer-timeout") && !err.contains("--preferences"),
        "{err}"
    );
}

/// The redaction rules from the environment and flags as `run` takes them: flags
/// comma-separated, patterns one per line (a pattern may hold a comma) or a repeated
/// flag; a pattern that does not compile exits 64 naming the key and the pattern.
#[test]
fn config_check_takes_redaction_rules_and_names_a_bad_pattern() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .args(["config", "check"])
        .env("SESSION_AGENT_REDACT_FLAGS", "--vault-password,--db-pass")
        .env(
            "SESSION_AGENT_REDACT_PATTERNS",
            "tok_[0-9]{4,8}\nvault:(\\S+)",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(r#"redact_flags = ["--vault-password", "--db-pass"]"#),
        "{text}"
    );
    assert!(
        text.contains(r#"redact_patterns = ["tok_[0-9]{4,8}", 'vault:(\S+)']"#),
        "{text}"
    );
    let (code, out, _) = run(&[
        "config",
        "check",
        "--redact-patterns",
        "a,b",
        "--redact-patterns",
        "c",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains(r#"redact_patterns = ["a,b", "c"]"#), "{out}");
    let (code, _, err) = run(&["config", "check", "--redact-patterns", "tok(en"]);
    assert_eq!(code, 64);
    assert!(
        err.contains("redact_patterns") && err.contains("\"tok(en\""),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `config check` on the shipped example (what packages install as
/// /etc/session-agent/session-agent.toml), with flags and environment over it as `run`
/// would see them; `--version`; and `run` refusing bad files with exit 64.
#[test]
fn config_check_prints_the_effective_configuration_and_bad_files_exit_64() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/session-agent.example.toml"
    );
    let (code, out, err) = run(&["config", "check", example, "--max-sessions", "7"]);
    assert_eq!(code, 0, "{err}");
    let printed = session_agent::agent::config::parse_file(&out, std::path::Path::new("out"))
        .unwrap_or_else(|e| panic!("config check printed an invalid file ({e}):\n{out}"));
    assert_eq!(printed.max_sessions, Some(7), "{out}");
    assert_eq!(printed.endpoint.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(printed.shutdown_timeout.as_deref(), Some("30s"));
    assert_eq!(printed.log_format.as_deref(), Some("plain"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .args(["config", "check", example])
        .env("SESSION_AGENT_RECORDING_POLICY", "fail-closed")
        .env("SESSION_AGENT_LOG_FORMAT", "json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("recording_policy = \"fail-closed\"")
            && text.contains("log_format = \"json\""),
        "{text}"
    );
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("session-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "max_sesions = 5\n").unwrap();
    let (code, out, err) = run(&["config", "check", typo.to_str().unwrap()]);
    assert_eq!(code, 64, "{out}");
    assert!(err.contains("max_sesions"), "{err}");
    let (code, _, err) = run(&["config", "check", "/nonexistent/agent.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("cannot read /nonexistent/agent.toml"), "{err}");
    // And `run` rejects a config with a typo in a key, exit 64 naming it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "endpiont = \"http://x\"\n").unwrap();
    let (code, _, err) = run(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("endpiont"), "{err}");
    let (code, _, err) = run(&["run", "--endpoint", "ftp://nowhere"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("endpoint"), "{err}");
    // log_level in the file is used, and checked like the flag.
    let loud = dir.path().join("loud.toml");
    std::fs::write(&loud, "log_level = \"chatty\"\n").unwrap();
    let (code, _, err) = run(&["run", "--config", loud.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("log_level") && err.contains("chatty"), "{err}");
}

#[test]
fn transcript_and_replay_refuse_files_that_are_not_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.txt");
    std::fs::write(&bad, "hello\n").unwrap();
    for cmd in ["transcript", "replay"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
            .arg(cmd)
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not a recording") && err.contains("notes.txt"),
            "{err}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .arg("replay")
        .arg(dir.path().join("missing.cast"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
    // A broken line is named.
    let cast = dir.path().join("x.cast");
    std::fs::write(
        &cast,
        "{\"version\":2,\"width\":80,\"height\":24}\n[0.1, \"o\", \"hi\"]\n[oops\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .arg("transcript")
        .arg(&cast)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3"),
        "{out:?}"
    );
}

/// A bad value in a drop-in: `config check`, `run` and `doctor` all name the file,
/// line, column and key, on one line; the default file is read when no `--config` is
/// given (moved here by SESSION_AGENT_DEFAULT_CONFIG), with its drop-ins over it, and
/// `config check` says which files it read.
#[test]
fn config_errors_point_at_the_file_line_and_key_and_the_default_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("session-agent.toml");
    std::fs::write(&main, "max_sessions = 3\nshell = \"sh\"\n").unwrap();
    let drop_ins = dir.path().join("session-agent.toml.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(drop_ins.join("50-size.toml"), "max_sessions = 5\n").unwrap();
    let bin = || {
        let mut c = Command::new(BIN);
        c.env("SESSION_AGENT_DEFAULT_CONFIG", &main)
            .env_remove("SESSION_AGENT_CONFIG");
        c
    };
    let out = bin().args(["config", "check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let read: Vec<&str> = text.lines().filter(|l| l.starts_with("# Read ")).collect();
    assert_eq!(
        read,
        [
            format!("# Read {}", main.display()),
            format!("# Read {}", drop_ins.join("50-size.toml").display())
        ],
        "{text}"
    );
    assert!(text.contains("\nmax_sessions = 5\n") && text.contains("\nshell = \"sh\"\n"));
    // A bad value: the same line from each command that reads the configuration.
    let bad = drop_ins.join("60-bad.toml");
    std::fs::write(&bad, "# more sessions\n  max_sessions = \"lots\"\n").unwrap();
    let expected = format!(
        "{}:2:18: max_sessions: invalid type: string \"lots\", expected a whole number",
        bad.display()
    );
    for args in [&["config", "check"][..], &["run"]] {
        let out = bin().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(
            err.trim(),
            format!("session-agent: invalid configuration: {expected}"),
            "{args:?}"
        );
    }
    let out = bin().args(["doctor"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains(&expected), "{report}");
    // An explicit file that does not exist is an error, not the defaults.
    let (code, _, err) = run(&["config", "check", "/nonexistent/session-agent.toml"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("cannot read /nonexistent/session-agent.toml"),
        "{err}"
    );
}
