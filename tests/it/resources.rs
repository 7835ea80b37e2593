//! Bounded resources and process hygiene of the agent daemon (the real binary): output
//! floods do not grow its memory, it protects itself from the OOM killer while its
//! sessions do not, and its log never shows credentials or tokens.

use crate::recording::{gateway, streaming_gateway, AgentProcess};
use crate::support::*;
use serde_json::json;
use std::time::Duration;

/// A `/proc/PID/status` field in KiB.
#[tokio::test]
async fn output_floods_slow_the_shell_instead_of_growing_the_agent_s_memory() {
    let gw = gateway(json!({})).await;
    let agent = AgentProcess::start(&gw, "flood").await;
    let pid = agent.pid();
    let (_sid, mut client) = open_shell(&gw, "flood").await;
    client.type_text("echo ready-$((1+1))\r").await;
    client.expect("ready-2\r\n$ ").await;
    let baseline = status_kib(pid, "VmRSS:");

    // `yes` with a client that stops reading: back-pressure must stop the shell, not
    // queue its output in the agent.
    client
        .type_text("yes | head -c 20000000; echo; echo flood-$((2+3))-done\r")
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stalled = status_kib(pid, "VmRSS:");
    let mut peak_seen = stalled;
    let mut sample = || peak_seen = peak_seen.max(status_kib(pid, "VmRSS:"));
    let yes_bytes = client
        .drain_until("flood-5-done", Duration::from_secs(120), &mut sample)
        .await;
    assert!(yes_bytes >= 20_000_000, "{yes_bytes}");

    // Random bytes: escape sequences and invalid UTF-8 through the terminal emulator.
    client
        .type_text("head -c 8000000 /dev/urandom; echo; echo random-$((3+4))-done\r")
        .await;
    let random_bytes = client
        .drain_until("random-7-done", Duration::from_secs(120), &mut sample)
        .await;
    assert!(random_bytes >= 8_000_000, "{random_bytes}");
    client.type_text("exit\r").await;
    client.until_closed().await;
    let peak = status_kib(pid, "VmHWM:").max(peak_seen);
    // About 50 MB went through; the per-session buffers are bounded at a few MiB (4 MiB of
    // output in flight, a 16-chunk recorder queue, one terminal screen).
    let figures = format!(
        "agent RSS: idle {baseline} KiB, client not reading {stalled} KiB, peak {peak} KiB, after {} MB of output",
        (yes_bytes + random_bytes) / 1_000_000
    );
    assert!(stalled < baseline + 16 * 1024, "{figures}");
    assert!(peak < baseline + 48 * 1024, "{figures}");
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn the_daemon_protects_itself_from_the_oom_killer_and_its_sessions_do_not() {
    let gw = gateway(json!({})).await;
    let agent = AgentProcess::start(&gw, "oom").await;
    let daemon: i32 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", agent.pid()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (_sid, mut client) = open_shell(&gw, "oom").await;
    client
        .type_text("echo \"shell-oom=[$(cat /proc/self/oom_score_adj)]\"\r")
        .await;
    let screen = client.expect("]\r\n$ ").await;
    assert!(screen.contains("shell-oom=[0]"), "{screen}");
    // Whether this machine lets a process lower its score (root in a container often may
    // not): asked of a child shell, so the test's own score stays as it is.
    let may_lower = std::process::Command::new("sh")
        .args(["-c", "echo -1 > /proc/self/oom_score_adj"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    if may_lower {
        assert_eq!(daemon, session_agent::session::pty::DAEMON_OOM_SCORE_ADJ);
    } else {
        // Lowering needs CAP_SYS_RESOURCE (in the initial user namespace): the daemon
        // says so and stays at 0.
        assert_eq!(daemon, 0);
        assert!(agent.log().contains("Cannot lower the daemon's OOM score"));
    }
    client.type_text("exit\r").await;
    client.until_closed().await;
    drop(agent);
    gw.stop().await;
}

/// Runs of 64 letters and digits with an upper-case letter: the shape of the gateway's
/// tokens (hex digests, also 64 long, are lower-case).
fn token_shaped(log: &str) -> Vec<&str> {
    log.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() >= 64 && w.chars().any(|c| c.is_ascii_uppercase()))
        .collect()
}

#[tokio::test]
async fn credentials_and_tokens_never_reach_the_log_even_at_debug() {
    use crate::recording::LocalStack;
    const SECRET: &str = "SecretKeyNeverLogged0123456789abcdefghijk";
    const SESSION_TOKEN: &str = "SessionTokenNeverLogged-0123456789ABCDEFGHIJ";
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let agent = AgentProcess::start_with(
        &gw,
        "no-secrets",
        &[
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN),
            ("SESSION_AGENT_LOG", "debug,session_agent=trace"),
        ],
    )
    .await;
    let (sid, mut client) = open_shell(&gw, "no-secrets").await;
    client.type_text("echo hello-$((5*5))\r").await;
    client.expect("hello-25\r\n$ ").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");
    let log = agent.log();
    // The log is detailed (this is not an empty log passing by accident)...
    assert!(log.contains("DEBUG"), "{log}");
    assert!(log.contains(&sid));
    // ...and holds no secret.
    assert!(!log.contains(SECRET), "the secret key is in the log");
    assert!(
        !log.contains(SESSION_TOKEN),
        "the session token is in the log"
    );
    assert_eq!(
        token_shaped(&log),
        Vec::<&str>::new(),
        "token-like strings in the log"
    );
    drop(agent);
    gw.stop().await;
}

/// A recording that cannot be delivered yet (its bucket does not exist) holding `bytes`.
fn seed_undelivered_recording(state: &std::path::Path, bytes: usize) {
    use session_agent::recorder::{Event, EventKind, StartInfo};
    use session_agent::spool::format as spool;
    let dir = state.join("recordings").join("stuck-1");
    std::fs::create_dir_all(&dir).unwrap();
    let start = Event {
        seq: 0,
        at_ms: 0,
        kind: EventKind::Start(StartInfo {
            session_id: "stuck-1".into(),
            user: "u".into(),
            run_as_user: "u".into(),
            owner: "u".into(),
            target: "t".into(),
            reason: None,
            cols: 80,
            rows: 24,
            started_unix_ms: 1,
            term: None,
            shell: None,
        }),
    }
    .to_json_line();
    let chain = spool::chain_next(&spool::CHAIN_START, start.as_bytes());
    let mut file = spool::MAGIC.to_vec();
    file.extend(spool::encode_record(&chain, start.as_bytes()));
    std::fs::write(dir.join("events.spool"), file).unwrap();
    let meta = json!({
        "session_id": "stuck-1",
        "s3": {"bucket": crate::recording::unique("missing"), "prefix": "", "require_encryption": false},
    });
    std::fs::write(dir.join("session.json"), meta.to_string()).unwrap();
    std::fs::write(dir.join("padding.bin"), vec![0u8; bytes]).unwrap();
}

#[tokio::test]
async fn fail_closed_refuses_sessions_that_cannot_be_recorded_durably_and_says_why() {
    use crate::recording::refused_with;
    let gw = gateway(json!({})).await;
    // Too little free space (no file system here has 16 TiB free).
    let too_full = [
        ("SESSION_AGENT_RECORDING_POLICY", "fail-closed"),
        ("SESSION_AGENT_RECORDING_MIN_FREE_MB", "16777216"),
    ];
    let agent = AgentProcess::start_with(&gw, "closed-full", &too_full).await;
    let why = refused_with(&gw, "closed-full").await;
    assert!(
        why.contains("cannot be recorded durably") && why.contains("MiB are free"),
        "{why}"
    );
    assert!(why.contains("fail-closed"), "{why}");
    let recordings = agent.state().path().join("recordings");
    assert_eq!(std::fs::read_dir(&recordings).unwrap().count(), 0);
    drop(agent);

    // The quota filled by a recording that cannot be delivered yet.
    let state = std::sync::Arc::new(tempfile::tempdir().unwrap());
    seed_undelivered_recording(state.path(), 2 * 1024 * 1024);
    let quota = [
        ("SESSION_AGENT_RECORDING_POLICY", "fail-closed"),
        ("SESSION_AGENT_RECORDING_QUOTA_MB", "1"),
    ];
    let agent = AgentProcess::start_in(&gw, "closed-quota", state, &quota).await;
    let why = refused_with(&gw, "closed-quota").await;
    assert!(why.contains("recording quota (2 MiB of 1 MiB"), "{why}");
    // It is kept (undelivered), not swept to make room.
    assert!(agent
        .state()
        .path()
        .join("recordings/stuck-1/padding.bin")
        .exists());
    drop(agent);

    // Fail-open (the default) with the same problem: the session runs, the log says why.
    let agent = AgentProcess::start_with(
        &gw,
        "open-full",
        &[("SESSION_AGENT_RECORDING_MIN_FREE_MB", "16777216")],
    )
    .await;
    let (_sid, mut client) = open_shell(&gw, "open-full").await;
    client.type_text("echo still-$((4+4))\r").await;
    client.expect("still-8\r\n$ ").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    assert!(
        agent.log().contains("may not be recorded durably"),
        "{}",
        agent.log()
    );
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn session_users_cannot_read_recordings_or_state() {
    let gw = gateway(json!({})).await;
    let agent = AgentProcess::start(&gw, "private").await;
    let (sid, mut client) = open_shell(&gw, "private").await;
    let spool = agent.recording_dir(&sid).join("events.spool");
    client
        .type_text(&format!(
            "id -u; cat {} >/dev/null 2>&1 && echo READ-$((1+1)) || echo DENIED-$((1+1))\r",
            spool.display()
        ))
        .await;
    let screen = client.expect("-2\r\n$ ").await;
    if screen.contains("\r\n0\r\n") {
        // A root shell (the daemon is not root, so sessions run as its own user) may read
        // everything; nothing to check here.
        assert!(!nix::unistd::geteuid().is_root(), "{screen}");
    } else {
        assert!(screen.contains("DENIED-2"), "{screen}");
    }
    client.type_text("exit\r").await;
    client.until_closed().await;
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn the_agent_verifies_the_gateway_s_certificate_unless_told_to_trust_its_ca() {
    use session_agent::gateway::GatewayConfig;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_tls(GatewayConfig::default(), dir.path()).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.tls.as_ref().unwrap().ca_pem).unwrap();
    // No CA configured: a self-signed gateway is not trusted, the agent says why and
    // keeps retrying (never online).
    let state = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(state.path().join("agent.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .args([
            "run",
            "--endpoint",
            &gw.http_url(),
            "--target-id",
            "tls-untrusted",
        ])
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("SESSION_AGENT_CA_FILE")
        .env_remove("SSL_CERT_FILE")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(state.path().join("agent.log")).unwrap_or_default();
    let deadline = std::time::Instant::now() + WAIT;
    while !read_log().to_lowercase().contains("certificate") {
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate error logged:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = gw
        .api_ok(
            "DescribeInstanceInformation",
            json!({"Filters":[{"Key":"InstanceIds","Values":["tls-untrusted"]}]}),
        )
        .await;
    assert_ne!(
        v["InstanceInformationList"][0]["PingStatus"], "Online",
        "{v}"
    );
    let _ = child.kill();
    let _ = child.wait();
    // With the CA: online.
    let ca = ca.display().to_string();
    let agent =
        AgentProcess::start_with(&gw, "tls-trusted", &[("SESSION_AGENT_CA_FILE", &ca)]).await;
    drop(agent);
    gw.stop().await;
}
