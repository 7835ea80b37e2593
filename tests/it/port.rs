//! Port sessions end to end: gateway and agent over loopback, real TCP destinations, a
//! client that speaks the protocol as session-manager-plugin does (handshake, acks,
//! flags), and the tunnel audit read back from the recording.

use crate::agent::RunningAgent;
use crate::support::*;
use bytes::Bytes;
use serde_json::{json, Value};
use session_agent::gateway::GatewayConfig;
use session_agent::protocol::frame::{AgentMessage, MessageType, PayloadType};
use session_agent::protocol::payload::flag;
use session_agent::protocol::reliability::{ReceiveOutcome, Receiver};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// A Port document whose every property is a parameter.
const TEST_PORT_DOC: &str = r#"{
  "schemaVersion": "1.0",
  "description": "Port forwarding for tests",
  "sessionType": "Port",
  "parameters": {
    "portNumber": {"type": "String"},
    "host": {"type": "String", "default": ""},
    "type": {"type": "String", "default": ""}
  },
  "properties": {"portNumber": "{{ portNumber }}", "host": "{{ host }}", "type": "{{ type }}"}
}"#;

/// A gateway that knows the test document.
async fn gateway(docs: &Path) -> Gateway {
    std::fs::write(docs.join("Test-Port.json"), TEST_PORT_DOC).unwrap();
    Gateway::start(GatewayConfig {
        documents_dir: Some(docs.to_owned()),
        ..GatewayConfig::default()
    })
    .await
}

/// A TCP echo server on loopback: each connection gets back what it sends until it
/// closes its side; `greeting` is sent first when given (a server that speaks first).
async fn echo_server(greeting: Option<&'static [u8]>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Some(g) = greeting {
                    let _ = s.write_all(g).await;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// An output payload with its type, kept in the reorder buffer.
struct Item(PayloadType, Bytes);

impl AsRef<[u8]> for Item {
    fn as_ref(&self) -> &[u8] {
        &self.1
    }
}

/// The client's end of a port session, as the plugin's: acknowledges output, answers
/// the handshake with `client_version`, collects the tunnel's bytes and flags.
pub struct PortClient {
    peer: Peer,
    client_version: String,
    receiver: Receiver<Item>,
    next_seq: i64,
    handshake: Option<Value>,
    pub complete: bool,
    pub data: Vec<u8>,
    /// StdErr (11) payloads, in order.
    pub stderr: Vec<u8>,
    /// ExitCode (12) payloads.
    pub exit_codes: Vec<String>,
    flags: Vec<u32>,
    pub closed: Option<session_agent::protocol::payload::ChannelClosed>,
    /// Input frames the agent acknowledged.
    acked: i64,
}

impl PortClient {
    async fn start(
        gw: &Gateway,
        target: &str,
        params: Value,
        client_version: &str,
    ) -> (String, Self) {
        Self::start_document(gw, target, "Test-Port", params, client_version).await
    }

    /// StartSession with `document` and attach.
    pub async fn start_document(
        gw: &Gateway,
        target: &str,
        document: &str,
        params: Value,
        client_version: &str,
    ) -> (String, Self) {
        let v = gw
            .api_ok(
                "StartSession",
                json!({"Target": target, "DocumentName": document, "Parameters": params}),
            )
            .await;
        let (sid, token, url) = (
            v["SessionId"].as_str().unwrap().to_owned(),
            v["TokenValue"].as_str().unwrap(),
            v["StreamUrl"].as_str().unwrap(),
        );
        let peer = client_connect(gw, url, token).await;
        let client = Self {
            peer,
            client_version: client_version.into(),
            receiver: Receiver::new(Default::default()),
            next_seq: 0,
            handshake: None,
            complete: false,
            data: Vec::new(),
            stderr: Vec::new(),
            exit_codes: Vec::new(),
            flags: Vec::new(),
            closed: None,
            acked: 0,
        };
        (sid, client)
    }

    pub async fn send(&mut self, pt: PayloadType, bytes: &[u8]) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let f = AgentMessage::new(
            MessageType::InputStreamData,
            pt,
            bytes.to_vec(),
            now_ms(),
            Uuid::new_v4(),
        )
        .with_sequence(seq, 0)
        .encode()
        .unwrap();
        self.peer.send_raw(f).await;
    }

    /// Sends tunnel bytes in 1 KiB messages, as the plugin does.
    async fn send_data(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(1024) {
            self.send(PayloadType::Output, chunk).await;
        }
    }

    /// One event; false once the session is closed.
    async fn step(&mut self) -> bool {
        match self.peer.next_event().await {
            Event::Closed(_) => false,
            Event::Frame(m, _) => {
                match m.message_type {
                    MessageType::OutputStreamData => {
                        let ack = ack_for(&m);
                        let item = Item(m.payload_type, m.payload.clone());
                        match self.receiver.on_frame(m.sequence_number, item) {
                            ReceiveOutcome::Deliver { items } => {
                                self.peer.send_raw(ack).await;
                                for Item(pt, payload) in items {
                                    self.deliver(pt, &payload).await;
                                }
                            }
                            ReceiveOutcome::Buffered => self.peer.send_raw(ack).await,
                            _ => {}
                        }
                    }
                    MessageType::Acknowledge => self.acked += 1,
                    MessageType::ChannelClosed => {
                        self.closed = session_agent::protocol::payload::from_json(
                            &m.payload,
                            "channel_closed",
                        )
                        .ok();
                        return false;
                    }
                    _ => {}
                }
                true
            }
        }
    }

    async fn deliver(&mut self, pt: PayloadType, payload: &[u8]) {
        match pt {
            PayloadType::HandshakeRequest => {
                let v: Value = serde_json::from_slice(payload).unwrap();
                let response = json!({
                    "ClientVersion": self.client_version,
                    "ProcessedClientActions": [
                        {"ActionType": "SessionType", "ActionStatus": 1, "ActionResult": null, "Error": ""}
                    ],
                    "Errors": null
                });
                self.handshake = Some(v);
                self.send(
                    PayloadType::HandshakeResponse,
                    response.to_string().as_bytes(),
                )
                .await;
            }
            PayloadType::HandshakeComplete => self.complete = true,
            PayloadType::Flag => self.flags.push(flag::decode(payload).unwrap()),
            PayloadType::Output => self.data.extend_from_slice(payload),
            PayloadType::StdErr => self.stderr.extend_from_slice(payload),
            PayloadType::ExitCode => self
                .exit_codes
                .push(String::from_utf8_lossy(payload).into_owned()),
            other => panic!("unexpected payload type {other:?}"),
        }
    }

    /// Steps until `done` holds; panics after `within`.
    pub async fn until(&mut self, within: Duration, mut done: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(self) {
            let more = tokio::time::timeout_at(deadline, self.step())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out; handshake {:?}, {} bytes, flags {:?}, closed {:?}",
                        self.handshake,
                        self.data.len(),
                        self.flags,
                        self.closed
                    )
                });
            if !more {
                assert!(done(self), "the session closed first: {:?}", self.closed);
                return;
            }
        }
    }

    pub async fn until_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::timeout_at(deadline, self.step())
            .await
            .expect("the session did not close")
        {}
    }
}

/// The tunnel lines of a session's recording once it has ended, as `session-agent
/// transcript` prints them.
async fn tunnel_lines(agent: &RunningAgent, sid: &str) -> Vec<String> {
    ended_transcript(&agent.spool(sid))
        .await
        .lines()
        .filter(|l| l.starts_with("[tunnel"))
        .map(str::to_owned)
        .collect()
}

/// Waits until the recording has a tunnel line starting with `prefix` (the session goes
/// on meanwhile).
async fn wait_tunnel_line(agent: &RunningAgent, sid: &str, prefix: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = agent_tool("transcript", &agent.spool(sid)).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.lines().any(|l| l.starts_with(prefix)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {prefix:?} in {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_ssh_style_session_carries_one_connection_intact_and_ends_with_it() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let agent = RunningAgent::start(&gw, "port-a").await;
    let port = echo_server(None).await;
    let (sid, mut c) = PortClient::start(
        &gw,
        "port-a",
        json!({"portNumber": [port.to_string()]}),
        "1.2.650.0",
    )
    .await;
    c.until(WAIT, |c| c.complete).await;
    let hs = c.handshake.clone().unwrap();
    // The plugin chooses its mode from these: no type, so standard streams.
    assert_eq!(hs["AgentVersion"], "3.2.0.0", "{hs}");
    let action = &hs["RequestedClientActions"][0];
    assert_eq!(action["ActionType"], "SessionType");
    assert_eq!(action["ActionParameters"]["SessionType"], "Port");
    assert_eq!(
        action["ActionParameters"]["Properties"]["portNumber"],
        port.to_string()
    );
    assert_eq!(hs["RequestedClientActions"].as_array().unwrap().len(), 1);
    // 1 MB through the tunnel and back, intact (shell commands are just bytes here).
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    c.send_data(b"echo not-a-shell\n").await;
    c.send_data(&payload).await;
    let want = 17 + payload.len();
    c.until(Duration::from_secs(60), |c| c.data.len() >= want)
        .await;
    assert_eq!(&c.data[..17], b"echo not-a-shell\n");
    assert!(c.data[17..] == payload[..], "the echo came back damaged");
    assert!(c.flags.is_empty(), "no flag outside multiplexed mode");
    // Ended by the service: the connection is closed and recorded with its counts.
    gw.api_ok("TerminateSession", json!({"SessionId": sid}))
        .await;
    c.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let lines = tunnel_lines(&agent, &sid).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[tunnel #1: connected to localhost:")),
        "{lines:?}"
    );
    // The tunnel's bytes are in no file of the recording, either way.
    let dir = agent.spool(&sid).parent().unwrap().to_owned();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["not-a-shell", "ZWNobyBub3QtYS1zaGVsbAo="] {
            assert!(
                !text.contains(secret),
                "{} holds tunnel bytes",
                path.display()
            );
        }
    }
    let closed = lines
        .iter()
        .find(|l| l.starts_with("[tunnel #1: closed"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        closed.contains(&format!("{want} bytes to it, {want} bytes from it")),
        "{closed}"
    );
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn the_destination_closing_ends_a_stream_session_successfully() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let agent = RunningAgent::start(&gw, "port-b").await;
    // A server that greets, then closes when told.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"SSH-2.0-test\r\n").await.unwrap();
        let mut buf = [0u8; 4];
        let _ = s.read_exact(&mut buf).await;
        // Closing: the session ends.
    });
    let (sid, mut c) = PortClient::start(
        &gw,
        "port-b",
        json!({"portNumber": [port.to_string()]}),
        "1.2.650.0",
    )
    .await;
    c.until(WAIT, |c| c.data.starts_with(b"SSH-2.0-test\r\n"))
        .await;
    c.send_data(b"bye!").await;
    c.until_closed().await;
    let s = wait_status(&gw, &sid, "History", "Terminated").await;
    assert_eq!(s["Status"], "Terminated", "{s}");
    let lines = tunnel_lines(&agent, &sid).await;
    assert!(
        lines.iter().any(|l| l.starts_with("[tunnel #1: closed")
            && l.contains("4 bytes to it, 14 bytes from it")),
        "{lines:?}"
    );
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn denied_destinations_are_refused_recorded_and_never_dialled() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let port = echo_server(None).await;
    let agent = RunningAgent::start_configured(&gw, "port-c", gw.http_url(), None, |c| {
        c.port.ports = Some(vec![1..=1023]);
    })
    .await;
    // Instance metadata: denied whatever the configuration.
    let (sid, mut c) = PortClient::start(
        &gw,
        "port-c",
        json!({"portNumber": ["80"], "host": ["169.254.169.254"], "type": ["LocalPortForwarding"]}),
        "1.2.650.0",
    )
    .await;
    c.until_closed().await;
    let why = c.closed.clone().unwrap().output;
    assert!(
        why.contains("forwarding to 169.254.169.254 is forbidden"),
        "{why}"
    );
    let s = wait_status(&gw, &sid, "History", "Failed").await;
    assert!(s["Details"].as_str().unwrap().contains("forbidden"), "{s}");
    let lines = tunnel_lines(&agent, &sid).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[tunnel #1: denied 169.254.169.254:80")
                && l.contains("forbidden")),
        "{lines:?}"
    );
    // A port outside the administrator's list.
    let (sid, mut c) = PortClient::start(
        &gw,
        "port-c",
        json!({"portNumber": [port.to_string()]}),
        "1.2.650.0",
    )
    .await;
    c.until_closed().await;
    let why = c.closed.clone().unwrap().output;
    assert!(
        why.contains(&format!("port {port} is not allowed")),
        "{why}"
    );
    wait_status(&gw, &sid, "History", "Failed").await;
    // A port that refuses: a clear error, recorded as failed.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let agent2 = RunningAgent::start(&gw, "port-d").await;
    let (sid, mut c) = PortClient::start(
        &gw,
        "port-d",
        json!({"portNumber": [closed_port.to_string()]}),
        "1.2.650.0",
    )
    .await;
    c.until_closed().await;
    let why = c.closed.clone().unwrap().output;
    assert!(
        why.starts_with("Unable to connect to specified port: "),
        "{why}"
    );
    let lines = tunnel_lines(&agent2, &sid).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[tunnel #1: could not connect to localhost:")),
        "{lines:?}"
    );
    agent.stop().await;
    agent2.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn an_old_clients_local_port_forwarding_reconnects_after_disconnect_to_port() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let agent = RunningAgent::start(&gw, "port-e").await;
    let port = echo_server(None).await;
    // Below 1.1.70: one connection at a time, no multiplexing.
    let (sid, mut c) = PortClient::start(
        &gw,
        "port-e",
        json!({"portNumber": [port.to_string()], "type": ["LocalPortForwarding"]}),
        "1.1.61.0",
    )
    .await;
    c.until(WAIT, |c| c.complete).await;
    c.send_data(b"first").await;
    c.until(WAIT, |c| c.data == b"first").await;
    // The local connection ended: the agent closes its own, and dials again on the
    // next bytes.
    c.send(PayloadType::Flag, &flag::encode(flag::DISCONNECT_TO_PORT))
        .await;
    c.send_data(b"second").await;
    c.until(WAIT, |c| c.data == b"firstsecond").await;
    // Ctrl-C in the plugin: the TerminateSession flag ends the session as a success.
    c.send(PayloadType::Flag, &flag::encode(flag::TERMINATE_SESSION))
        .await;
    c.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let lines = tunnel_lines(&agent, &sid).await;
    let closed: Vec<_> = lines.iter().filter(|l| l.contains(": closed ")).collect();
    assert_eq!(closed.len(), 2, "{lines:?}");
    assert!(
        closed[0].contains("5 bytes to it, 5 bytes from it"),
        "{lines:?}"
    );
    assert!(
        closed[0].contains("the client's local connection ended"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("[tunnel #2: connected")),
        "{lines:?}"
    );
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn port_forwarding_turned_off_refuses_port_sessions_before_anything_opens() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let agent = RunningAgent::start_configured(&gw, "port-f", gw.http_url(), None, |c| {
        c.port.enabled = false;
    })
    .await;
    let port = echo_server(None).await;
    let (sid, mut c) = PortClient::start(
        &gw,
        "port-f",
        json!({"portNumber": [port.to_string()]}),
        "1.2.650.0",
    )
    .await;
    c.until_closed().await;
    assert!(c.handshake.is_none(), "nothing was opened");
    let why = c.closed.clone().unwrap().output;
    assert!(why.contains("port forwarding is turned off"), "{why}");
    wait_status(&gw, &sid, "History", "Failed").await;
    agent.stop().await;
    gw.stop().await;
}

/// A multiplexed client over [`PortClient`]: smux frames in the tunnel's bytes, sent
/// with a window of unacknowledged input (as a real client's sender has), so a flood
/// both ways makes progress.
struct MuxClient {
    c: PortClient,
    mux: session_agent::protocol::smux::Mux,
    /// Bytes of the agent's output fed to the Mux so far.
    fed: usize,
    received: std::collections::HashMap<u32, Vec<u8>>,
    finished: std::collections::HashSet<u32>,
}

impl MuxClient {
    fn new(c: PortClient) -> Self {
        use session_agent::protocol::smux::{Mux, Role};
        Self {
            c,
            mux: Mux::new(Role::Client, 1000),
            fed: 0,
            received: Default::default(),
            finished: Default::default(),
        }
    }

    /// Feeds new output to the Mux.
    fn absorb(&mut self) {
        use session_agent::protocol::smux::MuxEvent;
        let new = self.c.data[self.fed..].to_vec();
        self.fed = self.c.data.len();
        for e in self
            .mux
            .receive(&new)
            .expect("the agent's smux stream is broken")
        {
            match e {
                MuxEvent::Data(sid, b) => {
                    self.received.entry(sid).or_default().extend_from_slice(&b)
                }
                MuxEvent::Closed(sid) => {
                    self.finished.insert(sid);
                }
                other => panic!("the agent opened or refused a stream: {other:?}"),
            }
        }
        // Keep the tunnel's bytes from piling up in the test.
        if self.fed > (1 << 20) {
            self.c.data.drain(..self.fed);
            self.fed = 0;
        }
    }

    /// Sends what the Mux queued, 16 KiB per message, keeping at most 256 KiB
    /// unacknowledged, taking output meanwhile.
    async fn flush(&mut self) {
        let out = self.mux.take_output();
        for chunk in out.chunks(16 * 1024) {
            while (self.c.next_seq - self.c.acked) * 16 * 1024 > 256 * 1024 {
                assert!(self.c.step().await, "closed: {:?}", self.c.closed);
                self.absorb();
            }
            self.c.send(PayloadType::Output, chunk).await;
        }
    }

    /// Steps until `done`.
    async fn until(&mut self, within: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(self) {
            let more = tokio::time::timeout_at(deadline, self.c.step())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out; received {:?}, finished {:?}, flags {:?}",
                        self.received
                            .iter()
                            .map(|(k, v)| (k, v.len()))
                            .collect::<Vec<_>>(),
                        self.finished,
                        self.c.flags
                    )
                });
            assert!(more, "the session closed: {:?}", self.c.closed);
            self.absorb();
        }
    }
}

#[tokio::test]
async fn a_multiplexed_session_carries_concurrent_connections_intact() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let agent = RunningAgent::start_configured(&gw, "port-m", gw.http_url(), None, |c| {
        c.port.max_connections = 3;
    })
    .await;
    let port = echo_server(None).await;
    let (sid, c) = PortClient::start(
        &gw,
        "port-m",
        json!({"portNumber": [port.to_string()], "type": ["LocalPortForwarding"]}),
        "1.2.650.0",
    )
    .await;
    let mut m = MuxClient::new(c);
    m.c.until(WAIT, |c| c.complete).await;
    // Two connections at once, 4 MB each way.
    let (a, b) = (m.mux.open().unwrap(), m.mux.open().unwrap());
    assert_eq!((a, b), (3, 5));
    let pa: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
    let pb: Vec<u8> = (0..4_000_000u32).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    for (i, (ca, cb)) in pa.chunks(64 * 1024).zip(pb.chunks(64 * 1024)).enumerate() {
        m.mux.write(a, ca);
        m.mux.write(b, cb);
        if i % 4 == 3 {
            m.flush().await;
        }
    }
    m.flush().await;
    let n = pa.len();
    m.until(Duration::from_secs(120), |m| {
        m.received.get(&a).map_or(0, Vec::len) >= n && m.received.get(&b).map_or(0, Vec::len) >= n
    })
    .await;
    assert!(m.received[&a] == pa, "connection a came back damaged");
    assert!(m.received[&b] == pb, "connection b came back damaged");
    // The client closes a: the agent closes its connection (recorded) and frees its
    // place under the cap.
    m.mux.close(a);
    m.flush().await;
    wait_tunnel_line(&agent, &sid, "[tunnel #3: closed").await;
    // Beyond the cap (3 open: b, c, d; e refused): FIN and the ConnectToPortError flag.
    let c3 = m.mux.open().unwrap();
    let d = m.mux.open().unwrap();
    let e = m.mux.open().unwrap();
    m.flush().await;
    m.until(WAIT, |m| m.finished.contains(&e) && !m.c.flags.is_empty())
        .await;
    assert_eq!(m.c.flags, [flag::CONNECT_TO_PORT_ERROR]);
    m.mux.write(d, b"still-works");
    m.flush().await;
    m.until(WAIT, |m| {
        m.received.get(&d).is_some_and(|r| r == b"still-works")
    })
    .await;
    let _ = c3;
    // Ctrl-C: TerminateSession.
    m.c.send(PayloadType::Flag, &flag::encode(flag::TERMINATE_SESSION))
        .await;
    m.c.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let lines = tunnel_lines(&agent, &sid).await;
    let closed_a = lines
        .iter()
        .find(|l| l.starts_with("[tunnel #3: closed"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        closed_a.contains(&format!("{n} bytes to it, {n} bytes from it")),
        "{closed_a}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("[tunnel #{e}: denied"))
                && l.contains("too many connections")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("[tunnel #5: closed")),
        "{lines:?}"
    );
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_multiplexed_connection_that_fails_is_flagged_and_the_session_goes_on() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let agent = RunningAgent::start(&gw, "port-n").await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (sid, c) = PortClient::start(
        &gw,
        "port-n",
        json!({"portNumber": [closed_port.to_string()], "type": ["LocalPortForwarding"]}),
        "1.2.650.0",
    )
    .await;
    let mut m = MuxClient::new(c);
    m.c.until(WAIT, |c| c.complete).await;
    let a = m.mux.open().unwrap();
    m.mux.write(a, b"hello");
    m.flush().await;
    m.until(WAIT, |m| m.finished.contains(&a) && !m.c.flags.is_empty())
        .await;
    assert_eq!(m.c.flags, [flag::CONNECT_TO_PORT_ERROR]);
    // Garbage where smux frames belong ends the session with a clear error.
    m.c.send_data(b"\x07garbage!").await;
    m.c.until_closed().await;
    let why = m.c.closed.clone().unwrap().output;
    assert!(why.contains("multiplexed stream is broken"), "{why}");
    wait_status(&gw, &sid, "History", "Failed").await;
    let lines = tunnel_lines(&agent, &sid).await;
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[tunnel #3: could not connect to localhost:")),
        "{lines:?}"
    );
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_remote_host_is_resolved_and_dialled_from_the_instance_and_a_bad_name_is_a_clear_error() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let agent = RunningAgent::start(&gw, "port-r").await;
    let port = echo_server(None).await;
    // AWS-StartPortForwardingSessionToRemoteHost, built into the gateway.
    let (sid, c) = PortClient::start_document(
        &gw,
        "port-r",
        "AWS-StartPortForwardingSessionToRemoteHost",
        json!({"host": ["127.0.0.1"], "portNumber": [port.to_string()]}),
        "1.2.650.0",
    )
    .await;
    let mut m = MuxClient::new(c);
    m.c.until(WAIT, |c| c.complete).await;
    let props = &m.c.handshake.as_ref().unwrap()["RequestedClientActions"][0]["ActionParameters"]
        ["Properties"];
    assert_eq!(props["host"], "127.0.0.1", "{props}");
    assert_eq!(props["type"], "LocalPortForwarding", "{props}");
    let a = m.mux.open().unwrap();
    m.mux.write(a, b"remote");
    m.flush().await;
    m.until(WAIT, |m| m.received.get(&a).is_some_and(|r| r == b"remote"))
        .await;
    m.c.send(PayloadType::Flag, &flag::encode(flag::TERMINATE_SESSION))
        .await;
    m.c.until_closed().await;
    let lines = tunnel_lines(&agent, &sid).await;
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "[tunnel #3: connected to 127.0.0.1:{port} (127.0.0.1:{port})]"
        ))),
        "{lines:?}"
    );
    // A name that does not resolve: the session fails saying so, and it is recorded.
    let (sid, mut c) = PortClient::start(
        &gw,
        "port-r",
        json!({"portNumber": ["80"], "host": ["no-such-host.invalid"]}),
        "1.2.650.0",
    )
    .await;
    c.until_closed().await;
    let why = c.closed.clone().unwrap().output;
    assert!(
        why.starts_with("Unable to connect to specified port: cannot resolve no-such-host.invalid"),
        "{why}"
    );
    let lines = tunnel_lines(&agent, &sid).await;
    assert!(
        lines.iter().any(|l| l.starts_with(
            "[tunnel #1: could not connect to no-such-host.invalid:80: cannot resolve"
        )),
        "{lines:?}"
    );
    agent.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_flood_of_connection_opens_is_refused_beyond_the_cap_and_summarised() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let agent = RunningAgent::start_configured(&gw, "port-flood", gw.http_url(), None, |c| {
        c.port.max_connections = 2;
    })
    .await;
    let port = echo_server(None).await;
    let (sid, c) = PortClient::start(
        &gw,
        "port-flood",
        json!({"portNumber": [port.to_string()], "type": ["LocalPortForwarding"]}),
        "1.2.650.0",
    )
    .await;
    let mut m = MuxClient::new(c);
    m.c.until(WAIT, |c| c.complete).await;
    let first = m.mux.open().unwrap();
    let opened: Vec<u32> = (0..500).map(|_| m.mux.open().unwrap()).collect();
    m.flush().await;
    // All but one are refused (FIN each), and the session still works.
    m.until(Duration::from_secs(30), |m| m.finished.len() >= 499)
        .await;
    m.mux.write(first, b"alive");
    m.flush().await;
    m.until(WAIT, |m| {
        m.received.get(&first).is_some_and(|r| r == b"alive")
    })
    .await;
    let _ = opened;
    m.c.send(PayloadType::Flag, &flag::encode(flag::TERMINATE_SESSION))
        .await;
    m.c.until_closed().await;
    let lines = tunnel_lines(&agent, &sid).await;
    let denied = lines.iter().filter(|l| l.contains(": denied ")).count();
    assert_eq!(denied, 17, "16 one by one, then one summary: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("483 more connections refused as too many")),
        "{lines:?}"
    );
    agent.stop().await;
    gw.stop().await;
}

/// Found in review, fixed (the tunnel audit misses a connection's close). A destination that stops
/// reading leaves the one-connection forwarder blocked in `write_all` to it; when the
/// session then ends (TerminateSession), the forwarder never sees its pipes close, so
/// after `FORWARDER_CLOSE` (5 s) the pump aborts it and the connection's `closed` record
/// (with its byte counts) is never written: the recording shows a connection that was
/// opened and never closed. The multiplexed mode's `connection` tasks are aborted the
/// same way (its writer also awaits `write_all` with nothing else watching).
#[tokio::test]
async fn a_destination_that_stops_reading_still_gets_its_close_recorded() {
    let docs = tempfile::tempdir().unwrap();
    let gw = gateway(docs.path()).await;
    let agent = RunningAgent::start(&gw, "port-review-a").await;
    // Accepts, never reads, keeps the socket open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let _ = held_tx.send(s);
    });
    let (sid, mut c) = PortClient::start(
        &gw,
        "port-review-a",
        json!({"portNumber": [port.to_string()]}),
        "1.2.650.0",
    )
    .await;
    c.until(WAIT, |c| c.complete).await;
    let _held = held_rx.await.unwrap();
    // More than the kernel's buffers, the pipe and the keyboard queue together.
    let block = vec![b'x'; 16 * 1024];
    // Paced (this client does not retransmit): frames are refused only once the
    // destination's buffers are full and the forwarder is blocked writing to it.
    for _ in 0..1024 {
        c.send(PayloadType::Output, &block).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // Time for all of it to reach the agent (the agent sends nothing but acks here).
    tokio::time::sleep(Duration::from_secs(10)).await;
    gw.api_ok("TerminateSession", json!({"SessionId": sid}))
        .await;
    c.until_closed().await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    let lines = tunnel_lines(&agent, &sid).await;
    assert!(
        lines.iter().any(|l| l.starts_with("[tunnel #1: connected")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("[tunnel #1: closed")),
        "the connection's close (and its byte counts) is not in the recording: {lines:?}"
    );
    agent.stop().await;
    gw.stop().await;
}
