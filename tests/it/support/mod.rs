//! Test harness: a gateway on a loopback port, SigV4-signed SSM API calls, and scripted
//! agent and client peers written on the crate's protocol module, over real sockets.

#![allow(dead_code)]

pub mod imds;
pub mod kms;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use session_agent::gateway::{serve, GatewayConfig};
use session_agent::protocol::frame::{
    AgentMessage, MessageType, PayloadType, DEFAULT_MAX_FRAME_LEN,
};
use session_agent::protocol::payload::{
    to_json, Acknowledge, OpenControlChannel, OpenDataChannel, TokenResponse,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub const AKID: &str = "AKIDTESTOWNER";

/// A gateway configuration whose admin is the harness's own key: for tests whose
/// sessions are started by other identities (the AWS CLI, `connect`) and watched or
/// ended by the harness, as an operator with an IAM policy on `*` would.
pub fn observed_config() -> GatewayConfig {
    GatewayConfig {
        admins: vec![AKID.into()],
        ..GatewayConfig::default()
    }
}

/// A running gateway on 127.0.0.1:<random port>.
pub struct Gateway {
    pub addr: SocketAddr,
    pub tls: Option<TlsClient>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Trust material for a TLS gateway.
#[derive(Clone)]
pub struct TlsClient {
    pub ca_pem: String,
    pub rustls: Arc<rustls::ClientConfig>,
}

impl Gateway {
    pub async fn start(config: GatewayConfig) -> Self {
        Self::start_at(config, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to restart a gateway where its agents expect it).
    pub async fn start_at(config: GatewayConfig, addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("gateway failed");
        });
        Self {
            addr,
            tls: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A gateway already running elsewhere (a `session-agent gateway` process), driven
    /// through the same harness calls.
    pub fn external(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            stop: None,
            task: None,
        }
    }

    /// Starts a gateway with a fresh self-signed certificate for 127.0.0.1/localhost.
    pub async fn start_tls(mut config: GatewayConfig, dir: &std::path::Path) -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let cert_pem = cert.cert.pem();
        std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
        config.tls = Some(session_agent::gateway::TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let rustls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut gw = Self::start(config).await;
        gw.tls = Some(TlsClient {
            ca_pem: cert_pem,
            rustls: Arc::new(rustls),
        });
        gw
    }

    pub fn http_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn http(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().timeout(WAIT);
        if let Some(tls) = &self.tls {
            b = b
                .add_root_certificate(
                    reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap(),
                )
                .tls_built_in_root_certs(false);
        }
        b.build().unwrap()
    }

    /// Calls an SSM API operation the way the AWS CLI does: AWS JSON 1.1, SigV4-signed.
    /// Returns (HTTP status, parsed body).
    pub async fn api(&self, op: &str, input: Value) -> (u16, Value) {
        self.api_as((AKID, "secret"), op, input).await
    }

    /// [`Self::api`] signed with another key and secret.
    pub async fn api_as(&self, creds: (&str, &str), op: &str, input: Value) -> (u16, Value) {
        let body = input.to_string();
        let url = format!("{}/", self.http_url());
        let headers = sign_headers_as(
            creds,
            "POST",
            &url,
            &body,
            "ssm",
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", &format!("AmazonSSM.{op}")),
            ],
        );
        let mut req = self.http().post(&url).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("API request failed");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Like [`Self::api`] but expects success.
    pub async fn api_ok(&self, op: &str, input: Value) -> Value {
        let (status, v) = self.api(op, input).await;
        assert_eq!(status, 200, "{op} failed: {v}");
        v
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("gateway did not stop")
                .unwrap();
        }
    }

    pub async fn ws_connect(&self, url: &str) -> Ws {
        let connector = self
            .tls
            .as_ref()
            .map(|t| tokio_tungstenite::Connector::Rustls(t.rustls.clone()));
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, true, connector)
            .await
            .unwrap_or_else(|e| panic!("websocket connect to {url} failed: {e}"));
        ws
    }

    /// POSTs a channel-creation request; returns (status, body text).
    pub async fn create_channel(&self, path: &str, body: &str) -> (u16, String) {
        self.create_channel_as((AKID, "secret"), path, body).await
    }

    /// [`Self::create_channel`] signed with another key and secret.
    pub async fn create_channel_as(
        &self,
        creds: (&str, &str),
        path: &str,
        body: &str,
    ) -> (u16, String) {
        let url = format!("{}{path}", self.http_url());
        let headers = sign_headers_as(
            creds,
            "POST",
            &url,
            body,
            "ssmmessages",
            &[("content-type", "application/json")],
        );
        let mut req = self.http().post(&url).body(body.to_owned());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("channel request failed");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

/// SigV4 headers for a request (any credentials are accepted by the gateway): `extra`
/// and what signing adds, signed with the harness's own key for us-east-1.
pub fn sign_headers(
    method: &str,
    url: &str,
    body: &str,
    service: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    sign_headers_as((AKID, "secret"), method, url, body, service, extra)
}

/// [`sign_headers`] with another key and secret.
pub fn sign_headers_as(
    (key, secret): (&str, &str),
    method: &str,
    url: &str,
    body: &str,
    service: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let creds = aws_credential_types::Credentials::new(key, secret, None, None, "test");
    let signed = session_agent::sign::sign_with(
        &creds,
        "us-east-1",
        service,
        SystemTime::now(),
        method,
        url,
        extra,
        body.as_bytes(),
    )
    .unwrap();
    extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain(signed)
        .collect()
}

/// Serves `app` on 127.0.0.1 at a free port (the emulators); dropping the returned
/// sender stops it.
pub async fn serve_loopback(app: axum::Router) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop)
}

pub fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

pub fn create_body(client_id: Option<&str>) -> String {
    let mut v = json!({"MessageSchemaVersion": "1.0", "RequestId": Uuid::new_v4().to_string()});
    if let Some(c) = client_id {
        v["ClientId"] = json!(c);
    }
    v.to_string()
}

/// Builds an encoded frame.
pub fn frame(t: MessageType, pt: PayloadType, payload: impl Into<Bytes>, seq: i64) -> Bytes {
    AgentMessage::new(t, pt, payload, now_ms(), Uuid::new_v4())
        .with_sequence(seq, u64::from(seq == 0))
        .encode()
        .unwrap()
}

pub fn json_frame(t: MessageType, payload: &impl serde::Serialize) -> Bytes {
    frame(t, PayloadType::Null, to_json(payload), 0)
}

pub fn ack_for(m: &AgentMessage) -> Bytes {
    Acknowledge::frame_for(m, now_ms(), Uuid::new_v4())
        .encode()
        .unwrap()
}

/// One websocket end speaking AgentMessage frames.
pub struct Peer {
    pub ws: Ws,
}

/// What arrived on a socket.
#[derive(Debug)]
pub enum Event {
    Frame(AgentMessage, Bytes),
    Closed(Option<(CloseCode, String)>),
}

impl Peer {
    pub async fn send_raw(&mut self, b: Bytes) {
        self.ws.send(Message::Binary(b)).await.expect("send failed");
    }

    pub async fn send_text(&mut self, t: String) {
        self.ws.send(Message::text(t)).await.expect("send failed");
    }

    /// Next frame or close, skipping pings/pongs; fails the test after [`WAIT`].
    pub async fn next_event(&mut self) -> Event {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a websocket message");
            match m {
                None => return Event::Closed(None),
                Some(Err(_)) => return Event::Closed(None),
                Some(Ok(Message::Binary(b))) => {
                    let msg = AgentMessage::decode(&b, DEFAULT_MAX_FRAME_LEN)
                        .expect("gateway sent a bad frame");
                    return Event::Frame(msg, b);
                }
                Some(Ok(Message::Close(c))) => {
                    return Event::Closed(c.map(|c| (c.code, c.reason.to_string())));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> (AgentMessage, Bytes) {
        match self.next_event().await {
            Event::Frame(m, b) => (m, b),
            Event::Closed(c) => panic!("socket closed while a frame was expected: {c:?}"),
        }
    }

    /// Receives frames until one of type `t` arrives; returns it and the skipped types.
    pub async fn recv_type(&mut self, t: MessageType) -> (AgentMessage, Vec<MessageType>) {
        let mut skipped = Vec::new();
        loop {
            let (m, _) = self.recv().await;
            if m.message_type == t {
                return (m, skipped);
            }
            skipped.push(m.message_type);
        }
    }

    /// Expects the socket to be closed; returns the close code and reason.
    pub async fn expect_close(&mut self) -> Option<(CloseCode, String)> {
        loop {
            match self.next_event().await {
                Event::Closed(c) => return c,
                Event::Frame(m, _) => {
                    if m.message_type == MessageType::ChannelClosed {
                        continue;
                    }
                    panic!("expected close, got frame {:?}", m.message_type)
                }
            }
        }
    }
}

/// A scripted agent: control channel up, answers nothing by itself.
pub struct ScriptedAgent {
    pub target: String,
    pub control: Peer,
}

impl ScriptedAgent {
    pub async fn connect(gw: &Gateway, target: &str) -> Result<Self> {
        let (status, body) = gw
            .create_channel(&format!("/v1/control-channel/{target}"), &create_body(None))
            .await;
        if status != 201 {
            bail!("CreateControlChannel answered {status}: {body}");
        }
        let token = TokenResponse::from_xml(&body)?.token_value;
        let ws = gw
            .ws_connect(&format!(
                "{}/v1/control-channel/{target}?role=subscribe&stream=input",
                gw.ws_url()
            ))
            .await;
        let mut control = Peer { ws };
        let open = OpenControlChannel {
            cookie: None,
            message_schema_version: "1.0".into(),
            request_id: Uuid::new_v4().to_string(),
            token_value: token,
            agent_version: "9.9.9.9".into(),
            platform_type: "linux".into(),
        };
        control.send_text(String::from_utf8(to_json(&open))?).await;
        // 200 polls 20 ms apart, as before.
        wait_online(gw, target, Duration::from_secs(4)).await;
        Ok(Self {
            target: target.into(),
            control,
        })
    }

    /// Opens the agent's end of a session's data channel and sends `Connected`.
    pub async fn open_data(&self, gw: &Gateway, session_id: &str) -> Result<Peer> {
        let (status, body) = gw
            .create_channel(
                &format!("/v1/data-channel/{session_id}"),
                &create_body(Some("")),
            )
            .await;
        if status != 201 {
            bail!("CreateDataChannel answered {status}: {body}");
        }
        let token = TokenResponse::from_xml(&body)
            .context("token xml")?
            .token_value;
        let ws = gw
            .ws_connect(&format!(
                "{}/v1/data-channel/{session_id}?role=publish_subscribe",
                gw.ws_url()
            ))
            .await;
        let mut peer = Peer { ws };
        let open = OpenDataChannel {
            message_schema_version: "1.0".into(),
            request_id: Uuid::new_v4().to_string(),
            token_value: token,
            client_instance_id: Some(self.target.clone()),
            client_id: String::new(),
            client_version: None,
        };
        peer.send_text(String::from_utf8(to_json(&open))?).await;
        peer.send_raw(json_frame(
            MessageType::AgentSessionState,
            &json!({"SchemaVersion":1,"SessionState":"Connected","SessionId":session_id}),
        ))
        .await;
        Ok(peer)
    }
}

/// Waits until `target` shows as Online (agents connect asynchronously, and reconnect
/// with backoff); fails the test after `within`.
pub async fn wait_online(gw: &Gateway, target: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = gw
            .api_ok(
                "DescribeInstanceInformation",
                json!({"Filters":[{"Key":"InstanceIds","Values":[target]}]}),
            )
            .await;
        if v["InstanceInformationList"][0]["PingStatus"] == "Online" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{target} never came online: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects as the official client does: StreamUrl, then the text open frame.
pub async fn client_connect(gw: &Gateway, stream_url: &str, token: &str) -> Peer {
    let ws = gw.ws_connect(stream_url).await;
    let mut peer = Peer { ws };
    let open = OpenDataChannel {
        message_schema_version: "1.0".into(),
        request_id: Uuid::new_v4().to_string(),
        token_value: token.into(),
        client_instance_id: None,
        client_id: Uuid::new_v4().to_string(),
        client_version: Some("1.2.677.0".into()),
    };
    peer.send_text(String::from_utf8(to_json(&open)).unwrap())
        .await;
    peer
}

/// Polls DescribeSessions until the session shows `status` in `state`; returns its entry.
pub async fn wait_status(gw: &Gateway, session_id: &str, state: &str, status: &str) -> Value {
    wait_status_as(gw, (AKID, "secret"), session_id, state, status).await
}

/// [`wait_status`] asked by another key (one that may see the session).
pub async fn wait_status_as(
    gw: &Gateway,
    creds: (&str, &str),
    session_id: &str,
    state: &str,
    status: &str,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, v) = gw
            .api_as(
                creds,
                "DescribeSessions",
                json!({"State": state, "Filters":[{"key":"SessionId","value":session_id}]}),
            )
            .await;
        assert_eq!(code, 200, "DescribeSessions failed: {v}");
        if let Some(s) = v["Sessions"].as_array().and_then(|a| a.first()) {
            if s["Status"] == status {
                return s.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {session_id} never reached {state}/{status}; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// StartSession → (SessionId, TokenValue, StreamUrl).
pub async fn start_session(gw: &Gateway, target: &str) -> (String, String, String) {
    let v = gw
        .api_ok(
            "StartSession",
            json!({"Target": target, "Reason": "testing"}),
        )
        .await;
    (
        v["SessionId"].as_str().unwrap().to_owned(),
        v["TokenValue"].as_str().unwrap().to_owned(),
        v["StreamUrl"].as_str().unwrap().to_owned(),
    )
}

/// StartSession and attach a client that sends its size first (as our own client does, so
/// the prompt is drawn at the right width), then waits for the `sh` prompt.
pub async fn open_shell(gw: &Gateway, target: &str) -> (String, InteractiveClient) {
    let (sid, token, url) = start_session(gw, target).await;
    let mut client = InteractiveClient::new(client_connect(gw, &url, &token).await);
    client.resize(100, 30).await;
    client.expect("$ ").await;
    (sid, client)
}

/// A client that behaves like the official one: acknowledges output, reorders it by
/// sequence number, and collects what it would print.
pub struct InteractiveClient {
    pub peer: Peer,
    receiver: session_agent::protocol::reliability::Receiver<Bytes>,
    next_seq: i64,
    pub screen: Vec<u8>,
    pub closed: Option<session_agent::protocol::payload::ChannelClosed>,
}

impl InteractiveClient {
    pub fn new(peer: Peer) -> Self {
        Self {
            peer,
            receiver: session_agent::protocol::reliability::Receiver::new(Default::default()),
            next_seq: 0,
            screen: Vec::new(),
            closed: None,
        }
    }

    /// Sends keystrokes (PayloadType 1) or a Size (PayloadType 3) as input_stream_data.
    pub async fn send_input(&mut self, pt: PayloadType, bytes: &[u8]) {
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

    pub async fn type_text(&mut self, text: &str) {
        self.send_input(PayloadType::Output, text.as_bytes()).await;
    }

    pub async fn resize(&mut self, cols: u32, rows: u32) {
        self.send_input(
            PayloadType::Size,
            format!(r#"{{"cols":{cols},"rows":{rows}}}"#).as_bytes(),
        )
        .await;
    }

    /// Processes one event; returns false once the session is closed.
    pub async fn step(&mut self) -> bool {
        use session_agent::protocol::reliability::ReceiveOutcome;
        match self.peer.next_event().await {
            Event::Closed(_) => false,
            Event::Frame(m, _) => {
                match m.message_type {
                    MessageType::OutputStreamData => {
                        let ack = ack_for(&m);
                        match self.receiver.on_frame(m.sequence_number, m.payload.clone()) {
                            ReceiveOutcome::Deliver { items } => {
                                for i in items {
                                    self.screen.extend_from_slice(&i);
                                }
                                self.peer.send_raw(ack).await;
                            }
                            ReceiveOutcome::Buffered => self.peer.send_raw(ack).await,
                            _ => {}
                        }
                    }
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

    /// Reads until the screen contains `needle` (after the current length); panics after WAIT.
    pub async fn expect(&mut self, needle: &str) -> String {
        let start = self.screen.len();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = String::from_utf8_lossy(&self.screen[start..]).into_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw {needle:?}; screen so far: {text:?}"
            );
            if !tokio::time::timeout_at(deadline, self.step())
                .await
                .unwrap_or(true)
            {
                let text = String::from_utf8_lossy(&self.screen[start..]).into_owned();
                assert!(
                    text.contains(needle),
                    "session closed before {needle:?}; screen: {text:?}"
                );
                return text;
            }
        }
    }

    /// Reads (and forgets) output until `needle` has gone by, keeping only a short tail
    /// in memory; calls `each` about every 100 ms while reading. Returns the bytes read.
    pub async fn drain_until(
        &mut self,
        needle: &str,
        within: Duration,
        mut each: impl FnMut(),
    ) -> u64 {
        let deadline = tokio::time::Instant::now() + within;
        let mut total = 0u64;
        let mut last = tokio::time::Instant::now();
        self.screen.clear();
        loop {
            let before = self.screen.len();
            assert!(
                tokio::time::timeout_at(deadline, self.step())
                    .await
                    .expect("the output never ended"),
                "session closed during the flood"
            );
            total += (self.screen.len() - before) as u64;
            if self
                .screen
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                return total;
            }
            let keep = needle.len().min(self.screen.len());
            self.screen.drain(..self.screen.len() - keep);
            if last.elapsed() >= Duration::from_millis(100) {
                each();
                last = tokio::time::Instant::now();
            }
        }
    }

    /// Reads until channel_closed or the socket closes.
    pub async fn until_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::timeout_at(deadline, self.step())
            .await
            .expect("session did not close")
        {}
    }
}

/// A TCP relay on loopback that can cut every connection through it on demand, to
/// simulate a network drop between agent and gateway.
pub struct CutProxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    _task: JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let cut_tx = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut_rx = cut_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            _task: task,
        }
    }

    /// Drops every connection currently open through the proxy.
    pub fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A `session-agent gateway` process on a free loopback port, with its log.
pub struct GatewayProcess {
    child: std::process::Child,
    pub gw: Gateway,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
}

impl GatewayProcess {
    /// Starts `session-agent gateway --listen 127.0.0.1:PORT ARGS...`; waits for /healthz.
    pub async fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let child = Self::spawn(addr, &args, dir.path());
        let me = Self {
            child,
            gw: Gateway::external(addr),
            dir,
            args,
        };
        me.wait_healthy().await;
        me
    }

    fn spawn(addr: SocketAddr, args: &[String], dir: &std::path::Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("gateway.log"))
            .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
            .args(["gateway", "--listen", &addr.to_string()])
            .args(args)
            .env("SESSION_AGENT_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    async fn wait_healthy(&self) {
        let url = format!("{}/healthz", self.gw.http_url());
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never answered: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`, then a new process with the same arguments on the same port.
    pub async fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.gw.addr, &self.args, self.dir.path());
        self.wait_healthy().await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `session-agent SUBCOMMAND FILE` (`verify`, `transcript`), run without blocking the
/// runtime: in-process agents share the test's.
pub async fn agent_tool(subcommand: &str, file: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .arg(subcommand)
        .arg(file)
        .output()
        .await
        .unwrap()
}

/// Waits (up to [`WAIT`]) until the recording at `spool` has its end and verifies, then
/// returns its transcript.
pub async fn ended_transcript(spool: &std::path::Path) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let verify = agent_tool("verify", spool).await;
        if verify.status.success() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recording has no end: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    String::from_utf8_lossy(&agent_tool("transcript", spool).await.stdout).into_owned()
}
