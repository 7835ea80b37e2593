//! Port sessions through `session-agent connect` (the real binary, as the plugin would be
//! run) against a gateway with its built-in AWS documents and an in-process agent:
//! standard-stream forwarding as an ssh `ProxyCommand`, and multiplexed local port
//! forwarding.

use crate::agent::RunningAgent;
use crate::support::*;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_session-agent");

/// A TCP echo server on loopback that sends `greeting` first (as sshd does).
async fn echo_server(greeting: &'static [u8]) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(greeting).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

fn connect(gw: &Gateway, target: &str, document: &str, parameters: &str) -> Child {
    Command::new(BIN)
        .args(["--log-level", "session_agent=debug", "connect"])
        .args(["--endpoint", &gw.http_url(), "--target", target])
        .args(["--document-name", document, "--parameters", parameters])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Reads until `buf` ends with `needle` (or panics after WAIT).
async fn read_until(r: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>, needle: &[u8]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut chunk = [0u8; 4096];
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout_at(deadline, r.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "never saw {:?} in {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(buf)
                )
            })
            .unwrap();
        assert!(n > 0, "end of output before {needle:?}: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..u32::try_from(len).unwrap())
        .map(|i| u8::try_from(i.wrapping_mul(31).wrapping_add(seed) % 251).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_proxy_command_carries_the_greeting_and_a_megabyte_intact() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "cport-ssh").await;
    let port = echo_server(b"SSH-2.0-test_server\r\n").await;
    // The AWS CLI's shorthand, as in an ssh_config ProxyCommand.
    let mut child = connect(
        &gw,
        "cport-ssh",
        "AWS-StartSSHSession",
        &format!("portNumber={port}"),
    );
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();

    // What the plugin prints, then the server's greeting: nothing else on stdout.
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, b"SSH-2.0-test_server\r\n").await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    let rest = text
        .strip_prefix("\nStarting session with SessionId: ")
        .unwrap_or_else(|| panic!("{text:?}"));
    let (sid, greeting) = rest.split_once('\n').unwrap();
    assert!(!sid.is_empty());
    assert_eq!(greeting, "SSH-2.0-test_server\r\n");

    // A megabyte out through stdin and back on stdout, intact and alone.
    let payload = pattern(1_000_000, 7);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&sent).await.unwrap();
        stdin
    });
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(60), stdout.read_exact(&mut back))
        .await
        .expect("the echo did not come back")
        .unwrap();
    assert!(back == payload, "the echoed bytes differ");
    let stdin = writer.await.unwrap();

    // End of input ends the session; stdout stays clean to the end.
    drop(stdin);
    let mut tail = Vec::new();
    let out = tokio::time::timeout(WAIT, async {
        stdout.read_to_end(&mut tail).await.unwrap();
        child.wait_with_output().await.unwrap()
    })
    .await
    .expect("the client did not exit at end of input");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        tail.is_empty(),
        "more on stdout: {:?}",
        String::from_utf8_lossy(&tail)
    );
    assert!(
        stderr.contains(&format!("Exiting session with sessionId: {sid}.")),
        "{stderr}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_port_forwarding_multiplexes_two_connections_and_ends_on_ctrl_c() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "cport-mux").await;
    let port = echo_server(b"hello\n").await;
    let mut child = connect(
        &gw,
        "cport-mux",
        "AWS-StartPortForwardingSession",
        &format!(r#"{{"portNumber":["{port}"],"localPortNumber":["0"]}}"#),
    );
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, b"Waiting for connections...\n").await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    let local: u16 = text
        .split("Port ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {text:?}"));
    let sid = text
        .split("opened for sessionId ")
        .nth(1)
        .and_then(|t| t.split(".\n").next())
        .unwrap()
        .to_owned();

    // Two connections at once, 4 MB each, each echoed back intact on its own stream.
    let one = move |seed: u32| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
            .await
            .unwrap();
        let mut hello = [0u8; 6];
        s.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello\n");
        let payload = pattern(4 << 20, seed);
        let (mut r, mut w) = s.into_split();
        let sent = payload.clone();
        let writer = tokio::spawn(async move { w.write_all(&sent).await.map(|()| w) });
        let mut back = vec![0u8; payload.len()];
        r.read_exact(&mut back).await.unwrap();
        let _w = writer.await.unwrap().unwrap();
        assert!(
            back == payload,
            "connection {seed}: the echoed bytes differ"
        );
    };
    let both = tokio::spawn(async move {
        futures_util::future::join(tokio::spawn(one(1)), tokio::spawn(one(2))).await
    });
    let echoed = tokio::time::timeout(Duration::from_secs(120), both).await;
    if !matches!(&echoed, Ok(Ok((Ok(()), Ok(()))))) {
        let _ = child.start_kill();
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "the echoes did not come back ({echoed:?}); client stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A later connection still works (the first ones are closed now).
    tokio::time::timeout(WAIT, async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
            .await
            .unwrap();
        let mut hello = [0u8; 6];
        s.read_exact(&mut hello).await.unwrap();
        s.write_all(b"again").await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"again");
    })
    .await
    .expect("a third connection did not work");

    // Ctrl-C: the TerminateSession flag, the plugin's last words on stdout, exit 0.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut tail = Vec::new();
    let out = tokio::time::timeout(WAIT, async {
        stdout.read_to_end(&mut tail).await.unwrap();
        child.wait_with_output().await.unwrap()
    })
    .await
    .expect("the client did not exit on SIGINT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = String::from_utf8_lossy(&tail);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        tail.contains(&format!("\n\nExiting session with sessionId: {sid}.\n\n")),
        "{tail:?}"
    );
    assert!(
        stderr.contains("Sending the TerminateSession flag"),
        "{stderr}"
    );
    // The agent ends the session on the flag: the gateway sees it terminate.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = gw
            .api_ok("DescribeSessions", serde_json::json!({"State": "History"}))
            .await;
        let done = v["Sessions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["SessionId"] == sid.as_str()));
        if done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_destination_is_reported_as_the_plugin_does() {
    let gw = Gateway::start(observed_config()).await;
    let agent = RunningAgent::start(&gw, "cport-refused").await;
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = connect(
        &gw,
        "cport-refused",
        "AWS-StartPortForwardingSession",
        &format!("portNumber={closed},localPortNumber=0"),
    );
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut stdout, &mut seen, b"Waiting for connections...\n").await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    let local: u16 = text
        .split("Port ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
        .await
        .unwrap();
    // The agent's FIN closes the local connection.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("the local connection stayed open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let mut err = Vec::new();
    read_until(
        &mut stderr,
        &mut err,
        b"Connection to destination port failed, check SSM Agent logs.",
    )
    .await;
    let _ = child.start_kill();
    agent.stop().await;
}

/// A real `sshd` on a loopback port, for root with one key (made here), run in the
/// foreground; killed on drop.
struct Sshd {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// `None` (with the reason) when sshd cannot be run here.
    fn start() -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root (sshd authenticates users)".into());
        }
        if !std::path::Path::new("/usr/sbin/sshd").exists() {
            return Err(
                "/usr/sbin/sshd is not installed (scripts/test.sh installs openssh-server)".into(),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (key, args) in [("host", "-q"), ("client", "-q")] {
            let ok = std::process::Command::new("ssh-keygen")
                .args(["-t", "ed25519", "-N", "", args, "-f"])
                .arg(d.join(key))
                .status()
                .map_err(|e| format!("ssh-keygen: {e}"))?;
            if !ok.success() {
                return Err("ssh-keygen failed".into());
            }
        }
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nPidFile {pid}\nSubsystem sftp internal-sftp\n",
            host = d.join("host").display(),
            keys = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        // sshd wants its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .map_err(|e| format!("sshd: {e}"))?;
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "sshd did not listen: {}",
                    std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, port, dir })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::print_stderr)]
fn skipped(why: &str) {
    eprintln!("SKIPPED ssh_and_scp_run_through_connect_as_their_proxy_command: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_and_scp_run_through_connect_as_their_proxy_command() {
    let sshd = match Sshd::start() {
        Ok(s) => s,
        Err(why) => {
            // Said loudly: this test did not run.
            skipped(&why);
            return;
        }
    };
    let gw = Gateway::start(session_agent::gateway::GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "ssh-node").await;
    let d = sshd.dir.path();
    // ssh's own ProxyCommand convention, with the AWS CLI's parameter shorthand.
    let proxy = format!(
        "{BIN} connect --endpoint {} --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p",
        gw.http_url()
    );
    let ssh_opts = |cmd: &mut Command| {
        cmd.arg("-o")
            .arg(format!("ProxyCommand={proxy}"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i"])
            .arg(d.join("client"));
    };
    let mut ssh = Command::new("ssh");
    ssh_opts(&mut ssh);
    let out = ssh
        .args([
            "-p",
            &sshd.port.to_string(),
            "root@ssh-node",
            "echo over-ssh-$((6*7)); hostname",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("over-ssh-42"),
        "ssh failed: {stdout} {} / sshd: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
    );
    // scp, 2 MB each way, intact.
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("up.bin"), &payload).unwrap();
    let mut scp = Command::new("scp");
    ssh_opts(&mut scp);
    let up = scp
        .args(["-q", "-P", &sshd.port.to_string()])
        .arg(d.join("up.bin"))
        .arg(format!("root@ssh-node:{}", d.join("there.bin").display()))
        .output()
        .await
        .unwrap();
    assert!(
        up.status.success(),
        "scp up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        std::fs::read(d.join("there.bin")).unwrap() == payload,
        "scp damaged the file"
    );
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_documents_run_through_connect_and_print_what_the_plugin_prints() {
    let gw = Gateway::start(session_agent::gateway::GatewayConfig::default()).await;
    let agent = RunningAgent::start(&gw, "cmd-node").await;
    // Non-interactive: output as it comes, then the session ends by itself.
    let child = connect(
        &gw,
        "cmd-node",
        "AWS-StartNonInteractiveCommand",
        r#"{"command":["sh -c 'echo from-the-command-$((6*7)); echo to-stderr >&2; exit 3'"]}"#,
    );
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("connect did not end with the command")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("from-the-command-42"),
        "{stdout} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("to-stderr"), "{stdout}");
    assert_eq!(out.status.code(), Some(0), "as the plugin: {stdout}");
    // Interactive: what is typed reaches the command; it ends the session. (Without a
    // handshake the client learns it is not a port session from the first output, as
    // the plugin does, so the command prints before it reads.)
    let mut child = connect(
        &gw,
        "cmd-node",
        "AWS-StartInteractiveCommand",
        r#"{"command":["printf 'name? '; read x; echo got-$x"]}"#,
    );
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    // The plugin's first line, then the command waits for input.
    read_until(&mut stdout, &mut seen, b"name? ").await;
    stdin.write_all(b"typed\r").await.unwrap();
    read_until(&mut stdout, &mut seen, b"got-typed").await;
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    agent.stop().await;
    gw.stop().await;
}
