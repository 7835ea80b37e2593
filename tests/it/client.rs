//! `session-agent connect` end to end: the real binary, on a real PTY (the crate's own
//! `session::pty`) where a person's terminal would be, against a gateway and an agent
//! running in-process on loopback.

use crate::agent::RunningAgent;
use crate::support::*;
use serde_json::json;
use session_agent::session::pty::{Shell, ShellSpec};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_session-agent");

/// A terminal with a program running on it: what it printed, and a keyboard.
pub struct Term {
    shell: Shell,
    keyboard: Box<dyn Write + Send>,
    screen: Arc<Mutex<Vec<u8>>>,
    /// Set when the terminal closed (everything on it exited).
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Where the next `expect` starts looking.
    seen: usize,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Term {
    /// Runs `sh -c SCRIPT` on a fresh 80x24 PTY with a minimal environment.
    pub fn sh(script: &str, extra_env: &[(&str, &str)]) -> Self {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
        let mut env: Vec<(String, String)> = vec![
            ("TERM".into(), "xterm".into()),
            (
                "PATH".into(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
            ),
            ("HOME".into(), home),
            ("SHELL".into(), "/bin/sh".into()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let spec = ShellSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env,
            cwd: "/".into(),
            run_as: None,
            size: None,
            contain: None,
        };
        let mut shell = Shell::spawn(&spec, Path::new(BIN)).expect("spawn on a pty");
        let mut reader = shell.take_reader().unwrap();
        let keyboard = shell.take_writer().unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, done) = (screen.clone(), closed.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Self {
            shell,
            keyboard,
            screen,
            closed,
            seen: 0,
        }
    }

    /// `connect ARGS; echo client-exit=$?; stty -a` on a terminal.
    pub fn client(args: &[&str], extra_env: &[(&str, &str)]) -> Self {
        let argv: Vec<String> = args.iter().map(|a| quote(a)).collect();
        Self::sh(
            &format!(
                "{} connect {}; echo client-exit=$?; stty -a",
                quote(BIN),
                argv.join(" ")
            ),
            extra_env,
        )
    }

    pub fn connect(gw: &Gateway, target: &str) -> Self {
        Self::client(&["--endpoint", &gw.http_url(), "--target", target], &[])
    }

    /// Sends `signal` to the terminal's foreground process group (as a terminal's
    /// driver does for Ctrl-C when its line discipline is on).
    pub fn signal_group(&self, signal: nix::sys::signal::Signal) {
        self.shell.signal_group(signal).unwrap();
    }

    /// Resizes the terminal (the client sends the new size on).
    pub fn resize(&self, cols: u16, rows: u16) {
        self.shell.resize(cols, rows).unwrap();
    }

    pub fn type_text(&mut self, text: &str) {
        self.keyboard.write_all(text.as_bytes()).unwrap();
        self.keyboard.flush().unwrap();
    }

    pub fn text_since(&self, from: usize) -> String {
        let screen = self.screen.lock().unwrap();
        String::from_utf8_lossy(&screen[from.min(screen.len())..]).into_owned()
    }

    /// Waits until `needle` appears after what earlier calls consumed; returns the text
    /// from there to the end of the match.
    pub async fn expect(&mut self, needle: &str) -> String {
        self.expect_within(needle, WAIT)
            .await
            .unwrap_or_else(|| panic!("never saw {needle:?}; screen: {:?}", self.text_since(0)))
    }

    pub async fn expect_within(&mut self, needle: &str, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Bytes, not text: a multi-byte character cut by a read must not shift offsets.
            let found = {
                let screen = self.screen.lock().unwrap();
                let tail = &screen[self.seen.min(screen.len())..];
                tail.windows(needle.len())
                    .position(|w| w == needle.as_bytes())
                    .map(|i| {
                        let end = self.seen + i + needle.len();
                        (
                            String::from_utf8_lossy(&screen[self.seen..end]).into_owned(),
                            end,
                        )
                    })
            };
            if let Some((text, end)) = found {
                self.seen = end;
                return Some(text);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After the client exits: its exit status and the terminal settings `stty -a`
    /// printed (everything up to the terminal's end).
    pub async fn client_exit(&mut self) -> (i32, String) {
        self.expect("client-exit=").await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the terminal never closed: {:?}",
                self.text_since(0)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rest = self.text_since(self.seen);
        let (code, stty) = rest.split_once('\n').unwrap_or((&rest, ""));
        let code = code
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no exit status in {rest:?}"));
        (code, stty.to_owned())
    }
}

/// The terminal is back in cooked mode: line editing and echo on.
fn assert_cooked(stty: &str) {
    let words: Vec<&str> = stty.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig", "opost"] {
        assert!(
            words.contains(&flag),
            "{flag} is off after the client exited: {stty}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_session_types_resizes_interrupts_and_restores_the_terminal() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "client-a").await;
    let mut term = Term::connect(&gw, "client-a");
    term.expect("$ ").await;
    term.type_text("echo hi-$((20+22))\r");
    term.expect("hi-42").await;

    // The first size went out at once: the shell started at the terminal's 80x24.
    term.type_text("stty size\r");
    term.expect("24 80").await;
    term.shell.resize(100, 30).unwrap();
    let mut seen = false;
    for _ in 0..20 {
        term.type_text("stty size\r");
        if term
            .expect_within("30 100", Duration::from_millis(500))
            .await
            .is_some()
        {
            seen = true;
            break;
        }
    }
    assert!(
        seen,
        "the resize never reached the session: {:?}",
        term.text_since(0)
    );

    // Ctrl-C arrives as a byte and interrupts the foreground job on the far side.
    term.type_text("sleep 100\r");
    tokio::time::sleep(Duration::from_millis(300)).await;
    term.type_text("\u{3}");
    term.type_text("echo after-$((1+1))\r");
    term.expect("after-2").await;

    term.type_text("exit 7\r");
    term.expect("Exiting session with sessionId: ").await;
    let (code, stty) = term.client_exit().await;
    assert_eq!(code, 0, "a shell that exits ends the session normally");
    assert_cooked(&stty);
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_manager_plugin_arguments_work_both_ways() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "client-b").await;
    let request = json!({"Target": "client-b"}).to_string();
    let endpoint = gw.http_url();

    // The response JSON itself as the first argument (older AWS CLIs, or a plugin
    // version the CLI cannot parse).
    let response = gw
        .api_ok("StartSession", json!({"Target": "client-b"}))
        .await;
    let sid = response["SessionId"].as_str().unwrap().to_owned();
    let response = response.to_string();
    let mut term = Term::client(
        &[
            &response,
            "us-east-1",
            "StartSession",
            "",
            &request,
            &endpoint,
        ],
        &[],
    );
    term.expect("$ ").await;
    term.type_text("echo plug-$((3*3))\r");
    term.expect("plug-9").await;
    term.type_text("exit\r");
    term.expect(&format!("Exiting session with sessionId: {sid}."))
        .await;
    let (code, stty) = term.client_exit().await;
    assert_eq!(code, 0);
    assert_cooked(&stty);
    wait_status(&gw, &sid, "History", "Terminated").await;

    // The name of an environment variable holding it (newer AWS CLIs).
    let response = gw
        .api_ok("StartSession", json!({"Target": "client-b"}))
        .await;
    let sid = response["SessionId"].as_str().unwrap().to_owned();
    let mut term = Term::client(
        &[
            "AWS_SSM_START_SESSION_RESPONSE",
            "us-east-1",
            "StartSession",
            "default",
            &request,
            &endpoint,
        ],
        &[("AWS_SSM_START_SESSION_RESPONSE", &response.to_string())],
    );
    term.expect("$ ").await;
    term.type_text("echo env-$((4*4))\r");
    term.expect("env-16").await;
    term.type_text("exit\r");
    term.expect(&format!("Exiting session with sessionId: {sid}."))
        .await;
    assert_eq!(term.client_exit().await.0, 0);
    agent.stop().await;
    gw.stop().await;
}

/// Runs `connect ARGS` without a terminal, stdin from /dev/null; (status, stdout, stderr).
async fn run_piped(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .arg("connect")
            .args(args)
            .stdin(std::process::Stdio::null())
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output(),
    )
    .await
    .expect("the client did not exit")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_start_session_error_is_one_line_and_exit_status_1() {
    let gw = Gateway::start(observed_config()).await;
    let (code, out, err) =
        run_piped(&["--endpoint", &gw.http_url(), "--target", "no-such-node"]).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(err.contains("InvalidTarget: "), "{err}");
    // Usage errors are 2, as clap's own.
    let (code, _, err) = run_piped(&["--endpoint", &gw.http_url()]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--target"), "{err}");
    gw.stop().await;
}

/// Nothing listening at the endpoint: one line naming the address and what to start.
#[tokio::test]
async fn connecting_to_nothing_says_to_start_a_gateway_or_dev() {
    // A loopback port that was free a moment ago and is closed now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let (code, out, err) = run_piped(&["--endpoint", &endpoint, "--target", "node-1"]).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    for words in [
        format!("nothing is listening at 127.0.0.1:{port}"),
        format!("`session-agent gateway --listen 127.0.0.1:{port}`"),
        "`session-agent dev`".to_owned(),
    ] {
        assert!(err.contains(&words), "{words}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_input_terminates_the_session_and_exits_0() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "client-c").await;
    let (code, out, err) = run_piped(&["--endpoint", &gw.http_url(), "--target", "client-c"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let sid = out
        .split("Exiting session with sessionId: ")
        .nth(1)
        .and_then(|rest| rest.split(".\n").next())
        .unwrap_or_else(|| panic!("no exit line in {out:?}"))
        .to_owned();
    let s = wait_status(&gw, &sid, "History", "Terminated").await;
    assert_eq!(s["Target"], "client-c");
    agent.stop().await;
    gw.stop().await;
}

/// A TCP relay in front of the gateway whose connections can be cut, and which can
/// refuse new ones, to break the client's websocket on purpose.
struct Relay {
    addr: std::net::SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    refuse: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, r) = (conns.clone(), refuse.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if r.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(h.abort_handle());
            }
        });
        Self {
            addr,
            conns,
            refuse,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every open connection.
    fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn refuse(&self, on: bool) {
        self.refuse.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_resumed_without_losing_input() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "client-d").await;
    let relay = Relay::start(gw.addr).await;
    // StreamUrl follows the Host of the StartSession call, so the websocket goes through
    // the relay too.
    let mut term = Term::client(&["--endpoint", &relay.url(), "--target", "client-d"], &[]);
    term.expect("$ ").await;
    term.type_text("echo one-$((1+1))\r");
    term.expect("one-2").await;
    relay.cut();
    // Typed while the connection is down: kept and sent again after ResumeSession.
    term.type_text("echo two-$((2+2))\r");
    term.expect("two-4").await;
    term.type_text("exit\r");
    term.expect("Exiting session with sessionId: ").await;
    let (code, stty) = term.client_exit().await;
    assert_eq!(code, 0);
    assert_cooked(&stty);
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ended_while_disconnected_exits_255() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "client-e").await;
    let relay = Relay::start(gw.addr).await;
    let mut term = Term::client(&["--endpoint", &relay.url(), "--target", "client-e"], &[]);
    term.expect("$ ").await;
    let sessions = gw
        .api_ok("DescribeSessions", json!({"State": "Active"}))
        .await;
    let sid = sessions["Sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Target"] == "client-e")
        .map(|s| s["SessionId"].as_str().unwrap().to_owned())
        .expect("the session is listed");
    relay.refuse(true);
    relay.cut();
    gw.api_ok("TerminateSession", json!({"SessionId": sid}))
        .await;
    relay.refuse(false);
    term.expect(&format!("Session: {sid} timed out.")).await;
    let (code, stty) = term.client_exit().await;
    assert_eq!(code, 255);
    assert_cooked(&stty);
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_runs_it_as_session_manager_plugin() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "client-f").await;
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(BIN, dir.path().join("session-manager-plugin")).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env = vec![
        ("PATH", path.as_str()),
        ("AWS_ACCESS_KEY_ID", "AKIDPLUGIN"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ];
    let pyenv = std::env::var("PYENV_ROOT").ok();
    if let Some(p) = &pyenv {
        env.push(("PYENV_ROOT", p));
    }
    let mut term = Term::sh(
        &format!(
            "aws ssm start-session --target client-f --endpoint-url {} --region us-east-1; \
             echo client-exit=$?; stty -a",
            gw.http_url()
        ),
        &env,
    );
    term.expect("$ ").await;
    term.type_text("echo cli-$((5*5))\r");
    term.expect("cli-25").await;
    term.type_text("exit\r");
    term.expect("Exiting session with sessionId: AKIDPLUGIN-")
        .await;
    let (code, stty) = term.client_exit().await;
    assert_eq!(code, 0);
    assert_cooked(&stty);
    agent.stop().await;
    gw.stop().await;
}

/// Next `input_stream_data` from the client, skipping acks and publication control.
async fn next_input(peer: &mut Peer) -> session_agent::protocol::frame::AgentMessage {
    peer.recv_type(session_agent::protocol::frame::MessageType::InputStreamData)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_signed_calls_a_kms_key_that_cannot_be_made_is_reported_and_a_failure_exits_1(
) {
    use session_agent::protocol::frame::{MessageType, PayloadType};
    use session_agent::protocol::payload::{AgentTaskComplete, AgentTaskPayload};
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_tls(observed_config(), dir.path()).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.tls.as_ref().unwrap().ca_pem).unwrap();
    let mut agent = ScriptedAgent::connect(&gw, "client-g").await.unwrap();
    let mut client = tokio::process::Command::new(BIN)
        .args([
            "connect",
            "--endpoint",
            &gw.http_url(),
            "--target",
            "client-g",
        ])
        .arg("--ca-file")
        .arg(&ca)
        .env("AWS_ACCESS_KEY_ID", "AKIDSIGNED")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_CA_BUNDLE")
        // No KMS there: GenerateDataKey fails at once.
        .env("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:9")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Kept open to the end: wait_with_output would close it, and the client ending its
    // input (terminate after a settle delay) would race the agent's failure report.
    let stdin_kept_open = client.stdin.take();
    let (shell, _) = agent.control.recv_type(MessageType::InteractiveShell).await;
    let (_, task) = AgentTaskPayload::from_interactive_shell(&shell.payload).unwrap();
    let sid = task.session_id;
    assert!(
        sid.starts_with("AKIDSIGNED-"),
        "StartSession was signed: {sid}"
    );
    let mut data = agent.open_data(&gw, &sid).await.unwrap();

    // Without a terminal the size is 80x24, sent first.
    let size = next_input(&mut data).await;
    assert_eq!((size.sequence_number, size.flags), (0, 0));
    assert_eq!(size.payload_type, PayloadType::Size);
    assert_eq!(&size.payload[..], br#"{"cols":80,"rows":24}"#);
    data.send_raw(ack_for(&size)).await;

    let request = json!({
        "AgentVersion": "3.3.0.0",
        "RequestedClientActions": [
            {"ActionType": "SessionType",
             "ActionParameters": {"SessionType": "Standard_Stream", "Properties": null}},
            {"ActionType": "KMSEncryption",
             "ActionParameters": {"KMSKeyId": "alias/k", "Challenge": "AAAA"}}
        ]
    });
    data.send_raw(frame(
        MessageType::OutputStreamData,
        PayloadType::HandshakeRequest,
        request.to_string(),
        0,
    ))
    .await;
    let response = next_input(&mut data).await;
    assert_eq!(response.sequence_number, 1);
    assert_eq!(response.payload_type, PayloadType::HandshakeResponse);
    let v: serde_json::Value = serde_json::from_slice(&response.payload).unwrap();
    // The compatibility level agents choose their port mode from, not our version.
    assert_eq!(
        v["ClientVersion"],
        session_agent::protocol::version::CLIENT_COMPAT_VERSION
    );
    assert_eq!(v["ProcessedClientActions"][0]["ActionType"], "SessionType");
    assert_eq!(v["ProcessedClientActions"][0]["ActionStatus"], 1);
    assert_eq!(
        v["ProcessedClientActions"][1]["ActionType"],
        "KMSEncryption"
    );
    // 2: tried and failed (the official client's "Failed"), with the reason.
    assert_eq!(v["ProcessedClientActions"][1]["ActionStatus"], 2, "{v}");
    assert!(
        v["ProcessedClientActions"][1]["Error"]
            .as_str()
            .unwrap()
            .contains("GenerateDataKey with key alias/k"),
        "{v}"
    );
    data.send_raw(ack_for(&response)).await;

    data.send_raw(frame(
        MessageType::OutputStreamData,
        PayloadType::Output,
        "hello-from-agent\r\n",
        1,
    ))
    .await;
    let (ack, _) = data.recv_type(MessageType::Acknowledge).await;
    let ack: serde_json::Value = serde_json::from_slice(&ack.payload).unwrap();
    assert_eq!(ack["AcknowledgedMessageSequenceNumber"], 1);

    // The agent reports the session failed: the client shows why and exits 1.
    let done = AgentTaskComplete {
        schema_version: 1,
        task_id: sid.clone(),
        topic: "agent_task_complete".into(),
        final_task_status: "Failed".into(),
        instance_id: "client-g".into(),
        output: "the handshake failed".into(),
        retry_number: 1,
        ..Default::default()
    };
    agent
        .control
        .send_raw(json_frame(MessageType::AgentTaskComplete, &done))
        .await;
    let out = tokio::time::timeout(WAIT, client.wait_with_output())
        .await
        .expect("the client did not exit")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("Starting session with SessionId: {sid}")));
    assert!(stdout.contains("hello-from-agent"), "{stdout}");
    assert!(
        stderr.contains("KMS encryption failed: KMS GenerateDataKey with key alias/k"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("SessionId: {sid} : the handshake failed")),
        "{stderr}"
    );
    wait_status(&gw, &sid, "History", "Failed").await;
    drop(stdin_kept_open);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_terminates_the_session_and_restores_the_terminal() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "client-h").await;
    let mut term = Term::connect(&gw, "client-h");
    let started = term.expect("Starting session with SessionId: ").await;
    let _ = started;
    let sid = term.expect("\n").await.trim().to_owned();
    term.expect("$ ").await;
    // The client is the only child of the `sh -c` on the terminal.
    let sh = term.shell.pid().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).unwrap();
    let client: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (code, stty) = term.client_exit().await;
    assert_eq!(code, 128 + 15);
    assert_cooked(&stty);
    wait_status(&gw, &sid, "History", "Terminated").await;
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn dev_runs_a_recorded_session_in_this_terminal() {
    let state = tempfile::tempdir().unwrap();
    let mut term = Term::sh(
        &format!(
            "{} dev --shell sh --state-dir {}; echo client-exit=$?; stty -a",
            quote(BIN),
            quote(&state.path().display().to_string())
        ),
        &[],
    );
    term.expect("$ ").await;
    term.type_text("echo dev-$((2+3))\r");
    term.expect("dev-5").await;
    term.type_text("exit\r");
    let said = term.expect("(replay, verify, audit the same way)").await;
    let (code, stty) = term.client_exit().await;
    assert_eq!(code, 0, "{said}");
    assert_cooked(&stty);
    // The goodbye line names the session's recording directory, under --state-dir.
    let dir = said
        .split("this session is recorded in ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no recording dir in {said:?}"));
    let dir = std::path::Path::new(dir.trim());
    assert!(dir.starts_with(state.path()), "{dir:?}");
    let out = std::process::Command::new(BIN)
        .arg("transcript")
        .arg(dir.join("events.spool"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("$ echo dev-$((2+3))\ndev-5\n"), "{text:?}");
}

/// A KMS session through `connect`: GenerateDataKey on the client, Decrypt on the agent
/// (both against the KMS emulator), the notice shown, and the shell usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_runs_kms_encrypted_sessions() {
    use crate::support::kms::{Kms, KEY_ALIAS};
    let kms = Kms::start("us-east-1", ("test", "test")).await;
    let gw = crate::recording::gateway(json!({"kmsKeyId": KEY_ALIAS})).await;
    let _agent = crate::recording::AgentProcess::start_with(
        &gw,
        "client-kms",
        &[("AWS_ENDPOINT_URL_KMS", &kms.url())],
    )
    .await;
    let url = kms.url();
    let mut term = Term::client(
        &[
            "--endpoint",
            &gw.http_url(),
            "--target",
            "client-kms",
            "--region",
            "us-east-1",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_ENDPOINT_URL_KMS", &url),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ],
    );
    term.expect(session_agent::protocol::crypto::ENCRYPTED_NOTICE)
        .await;
    term.expect("$ ").await;
    term.type_text("echo enc-$((6*7))\r");
    term.expect("enc-42").await;
    term.type_text("exit\r");
    term.expect("client-exit=0").await;
    let calls = kms.calls();
    assert!(
        calls.contains(&"GenerateDataKey ok".to_owned()),
        "{calls:?}"
    );
    assert!(calls.contains(&"Decrypt ok".to_owned()), "{calls:?}");
    gw.stop().await;
}
