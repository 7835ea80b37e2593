//! The agent as a service (the real binary): systemd notifications (READY, STATUS,
//! STOPPING, WATCHDOG) over a real notify socket, the graceful stop on SIGTERM (clients
//! told, new sessions refused, recordings flushed and delivered before the exit), the
//! forced exit on a second signal (and the recovery of what it cut short), and the log
//! formats (journal priorities when stderr is the journal, JSON lines).

use crate::recording::{gateway, refused_with, AgentProcess, LocalStack};
use crate::support::*;
use nix::sys::signal::Signal;
use serde_json::json;
use session_agent::agent::{control::STOPPING_REFUSAL, STOPPED_HOW, STOPPING_NOTICE};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A notify socket as systemd provides one, collecting what the service sends.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    seen: Vec<String>,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            socket,
            path,
            _dir: dir,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until one holds `line` (a `KEY=VALUE` line); panics after `within`.
    fn wait_for(&mut self, line: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(m) = self.seen.iter().find(|m| m.lines().any(|l| l == line)) {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} notification; got {:?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// Reads whatever arrives for `d`.
    fn collect_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    fn count(&self, line: &str) -> usize {
        self.seen
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }
}

#[tokio::test]
async fn sigterm_tells_clients_refuses_new_sessions_and_delivers_before_exiting() {
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let gw = gateway(json!({"s3BucketName": bucket})).await;
    let mut notify = NotifySocket::new();
    let socket = notify.path.to_string_lossy().into_owned();
    let mut agent = AgentProcess::start_with(
        &gw,
        "svc-stop",
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "300000")],
    )
    .await;
    let ready = notify.wait_for("READY=1", WAIT);
    assert!(ready.contains("STATUS="), "{ready}");
    notify.wait_for(
        &format!(
            "STATUS=Online: control channel open to {} as svc-stop; 0 session(s)",
            gw.http_url()
        ),
        WAIT,
    );
    // Pinged at a third of the 300 ms interval: about ten in a second.
    notify.collect_for(Duration::from_secs(1));
    let pings = notify.count("WATCHDOG=1");
    assert!(
        pings >= 4,
        "{pings} watchdog pings in a second: {:?}",
        notify.seen
    );

    let (sid, mut client) = open_shell(&gw, "svc-stop").await;
    // The shell ignores SIGHUP, so ending it takes the agent's kill grace (3 s): the
    // window in which a new session must be refused.
    client
        .type_text("trap '' HUP; echo before-$((40+2))\r")
        .await;
    client.expect("before-42").await;
    agent.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1", WAIT);
    let screen = client.expect(STOPPING_NOTICE).await;
    assert!(screen.contains("stopping"), "{screen}");
    let refusal = refused_with(&gw, "svc-stop").await;
    assert_eq!(refusal, STOPPING_REFUSAL);
    client.until_closed().await;

    let status = agent.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    // Delivered before the exit: the report and the object exist now, without waiting.
    let report = std::fs::read_to_string(agent.recording_dir(&sid).join("delivery.json"))
        .unwrap_or_else(|e| panic!("no delivery.json at exit ({e}); log:\n{}", agent.log()));
    assert!(report.contains("\"complete\""), "{report}");
    let log = ls
        .object(&bucket, &format!("{sid}.log"), Duration::from_secs(1))
        .await;
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("before-42"), "{log}");
    assert!(
        log.contains(&format!("[session {STOPPED_HOW}]")),
        "the transcript says how it ended: {log}"
    );
    let text = agent.log();
    for line in [
        "Stopping: refusing new sessions",
        "Refusing session: the agent is stopping",
        "Stopped: every session ended",
    ] {
        assert!(text.contains(line), "{line:?} not in the log:\n{text}");
    }
    let session = wait_status(&gw, &sid, "History", "Failed").await;
    assert_eq!(session["Details"], STOPPED_HOW, "{session}");
}

#[tokio::test]
async fn a_second_signal_exits_at_once_and_the_next_start_recovers_the_recording() {
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let gw = gateway(json!({"s3BucketName": bucket})).await;
    let state = Arc::new(tempfile::tempdir().unwrap());
    let mut agent = AgentProcess::start_in(&gw, "svc-force", state.clone(), &[]).await;
    let (sid, mut client) = open_shell(&gw, "svc-force").await;
    client.type_text("trap '' HUP; echo kept-$((6*7))\r").await;
    client.expect("kept-42").await;
    tokio::time::sleep(Duration::from_millis(500)).await; // spool synced (200 ms)
    agent.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130), "log:\n{}", agent.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the second signal must not wait for the 3 s kill grace"
    );
    assert!(
        agent.log().contains("Second stop signal"),
        "{}",
        agent.log()
    );
    drop(client);

    // The next start delivers what the forced exit left.
    let agent = AgentProcess::start_in(&gw, "svc-force", state, &[]).await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");
    let log = ls
        .object(&bucket, &format!("{sid}.log"), Duration::from_secs(5))
        .await;
    assert!(String::from_utf8_lossy(&log).contains("kept-42"));
}

#[tokio::test]
async fn logs_carry_journal_priorities_when_stderr_is_the_journal_and_json_on_request() {
    use std::os::unix::fs::MetadataExt;
    let gw = gateway(json!({})).await;
    // The journal case: JOURNAL_STREAM names the very file stderr is.
    let state = Arc::new(tempfile::tempdir().unwrap());
    let log_path = state.path().join("agent.log");
    std::fs::write(&log_path, b"").unwrap();
    let meta = std::fs::metadata(&log_path).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let agent =
        AgentProcess::start_in(&gw, "svc-journal", state, &[("JOURNAL_STREAM", &stream)]).await;
    let text = agent.log();
    let online = text
        .lines()
        .find(|l| l.contains("Control channel open"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(online.starts_with("<6> INFO "), "{online}");
    assert!(
        !online.contains("Z "),
        "the journal stamps lines itself: {online}"
    );
    drop(agent);

    // Another stream in JOURNAL_STREAM (inherited, say): ordinary timestamped lines.
    let agent = AgentProcess::start_with(&gw, "svc-plain", &[("JOURNAL_STREAM", "1:1")]).await;
    let text = agent.log();
    let online = text
        .lines()
        .find(|l| l.contains("Control channel open"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!online.starts_with('<'), "{online}");
    assert!(online.contains("Z  INFO "), "{online}");
    drop(agent);

    let agent =
        AgentProcess::start_with(&gw, "svc-json", &[("SESSION_AGENT_LOG_FORMAT", "json")]).await;
    let text = agent.log();
    let mut found = false;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
        if v["message"] == "Control channel open" {
            assert_eq!(v["level"], "INFO");
            assert_eq!(v["target_id"], "svc-json", "{v}");
            found = true;
        }
    }
    assert!(found, "{text}");
}

/// Under systemd (NOTIFY_SOCKET) an invalid configuration does not end `run`: it says so
/// (journal error, READY with STATUS=configuration invalid: …), waits, and once the file
/// is fixed starts the agent in the same process (re-executed: same PID).
#[tokio::test]
async fn an_invalid_configuration_holds_the_service_until_it_is_fixed() {
    let gw = gateway(json!({})).await;
    let mut notify = NotifySocket::new();
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("session-agent.toml");
    std::fs::write(&config, "max_sessions = \"lots\"\n").unwrap();
    let log_path = state.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--endpoint", &gw.http_url(), "--target-id", "svc-held"])
        .arg("--state-dir")
        .arg(state.path())
        .args(["--shell", "sh"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", state.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("SESSION_AGENT_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);

    let ready = notify.wait_for("READY=1", WAIT);
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("{ready}"));
    assert!(
        status.starts_with("configuration invalid: ")
            && status.contains(&*config.to_string_lossy()),
        "{status}"
    );
    assert!(child.try_wait().unwrap().is_none(), "it keeps running");
    let text = std::fs::read_to_string(&log_path).unwrap();
    let error = text
        .lines()
        .find(|l| l.contains("Configuration invalid"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(error.contains("ERROR"), "{error}");
    assert!(error.contains("\"lots\""), "the error itself: {error}");

    // Fixed: the same process starts the agent, which goes online (the gateway runs on
    // this test's runtime: wait without blocking it).
    std::fs::write(&config, "max_sessions = 5\n").unwrap();
    let online = format!(
        "STATUS=Online: control channel open to {} as svc-held; 0 session(s)",
        gw.http_url()
    );
    let deadline = Instant::now() + WAIT;
    while notify.count(&online) == 0 {
        assert!(
            Instant::now() < deadline,
            "not online; got {:?}\n{}",
            notify.seen,
            std::fs::read_to_string(&log_path).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        notify.collect_for(Duration::from_millis(1));
    }
    assert!(child.try_wait().unwrap().is_none(), "same process");
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "{code}");
}

/// Without a service manager a bad configuration still exits at once with status 64.
#[test]
fn an_invalid_configuration_exits_64_outside_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "max_sessions = \"lots\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid configuration"));
}
