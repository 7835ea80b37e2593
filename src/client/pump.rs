//! The I/O edge of a client session: the data-channel websocket, standard input on a
//! blocking thread, standard output, window-size changes and signals, all funnelled
//! into one [`Channel`] by one task.
//!
//! ```text
//!  stdin thread ──bounded mpsc──▶ ┐
//!  SIGWINCH / 500 ms poll ───────▶ │ pump ──frames──▶ websocket (StreamUrl)
//!  signals / console events ────▶ │  ▲  ◀─frames─── websocket
//!  retransmit deadline ──────────▶ ┘  └──▶ stdout / stderr
//! ```
//!
//! A dropped websocket is replaced with upstream's schedule (ResumeSession for a fresh
//! token, same StreamUrl, random 100–200 ms doubling to at most 5 s, 5 attempts), and
//! every unacknowledged keystroke is sent again.

use super::channel::{Channel, Effect, SessionType, MAX_INPUT_CHUNK};
use super::interrupts::{Interrupt, Interrupts, Stop};
use super::port::{self, Forwarder, PortMode, Todo};
use super::terminal::{self, RawMode, DEFAULT_SIZE};
use crate::protocol::payload::{
    flag, to_json, ChannelClosed, OpenDataChannel, MESSAGE_SCHEMA_VERSION,
};
use crate::ssm::{ApiError, SsmApi, HTTP_TIMEOUT};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// The data-channel websocket.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reconnect attempts after a drop (upstream: 5).
const RECONNECT_ATTEMPTS: u32 = 5;
/// Window-size poll, the fallback for a missed SIGWINCH (upstream polls only).
const SIZE_POLL: Duration = Duration::from_millis(500);
/// Keepalive ping; also surfaces a dead connection as a write error.
const PING_EVERY: Duration = Duration::from_secs(30);
/// After end of input, how long typed-ahead input may take to be acknowledged before
/// the session is terminated anyway.
const SETTLE: Duration = Duration::from_secs(2);
/// After TerminateSession, how long to wait for `channel_closed` (and the last output).
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// stdin reads buffered ahead of the pump; small, so a stalled agent stops the reads.
const READ_AHEAD: usize = 4;

/// How a session ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// `channel_closed` arrived.
    Closed(ChannelClosed),
    /// Standard input ended (or standard output went away); the session was terminated.
    InputEnded {
        /// Why TerminateSession failed, if it did.
        terminate_error: Option<String>,
    },
    /// ResumeSession returned no token: the session is gone.
    TimedOut,
    /// Reconnecting failed.
    Lost(String),
    /// A port session ended by Ctrl-C or a signal: the TerminateSession flag was sent
    /// (or the API called), as the plugin does; exit 0.
    PortExit {
        /// Why TerminateSession failed, if it did.
        terminate_error: Option<String>,
    },
    /// The session could not go on (a port session's listener or smux stream broke);
    /// it was terminated.
    Failed(String),
    /// SIGTERM or SIGHUP (on Windows the console closing); the session was terminated.
    Signalled {
        /// Which signal or event.
        signal: Stop,
        /// Why TerminateSession failed, if it did.
        terminate_error: Option<String>,
    },
}

/// Identity of this client on the data channel.
#[derive(Debug, Clone)]
pub(crate) struct ClientIdentity {
    /// Fresh UUID per run.
    pub(crate) client_id: String,
    /// `session-agent/<version>`.
    pub(crate) client_version: String,
}

/// Dials `url` and sends the client's open frame (§2.3).
pub(crate) async fn dial(
    url: &str,
    token: &str,
    who: &ClientIdentity,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Socket, String> {
    let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
    let dial = tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector));
    let (mut ws, _) = tokio::time::timeout(HTTP_TIMEOUT, dial)
        .await
        .map_err(|_| format!("connecting to {url} timed out"))?
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let open = OpenDataChannel {
        message_schema_version: MESSAGE_SCHEMA_VERSION.into(),
        request_id: Uuid::new_v4().to_string(),
        token_value: token.to_owned(),
        client_instance_id: None,
        client_id: who.client_id.clone(),
        client_version: Some(who.client_version.clone()),
    };
    let text = String::from_utf8(to_json(&open)).unwrap_or_default();
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("sending the open frame to {url}: {e}"))?;
    Ok(ws)
}

/// One running session.
#[derive(Debug)]
pub(crate) struct Pump<'a> {
    pub(crate) api: &'a SsmApi,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) who: ClientIdentity,
    pub(crate) session_id: String,
    pub(crate) stream_url: String,
    pub(crate) ws: Socket,
    pub(crate) channel: Channel,
    /// Where the session's bytes go; decided by the first message.
    pub(crate) local: Local,
    /// The terminal in raw mode (shell sessions on a terminal only).
    pub(crate) raw: Option<RawMode>,
    /// The session's target (KMS encryption context); `None` when not known.
    pub(crate) target: Option<String>,
    /// Region for KMS.
    pub(crate) region: String,
}

/// Where the session's bytes come from and go to.
#[derive(Debug)]
pub(crate) enum Local {
    /// The session type is not known yet: standard input is not read (upstream starts
    /// its handler at the first message), the terminal is left alone.
    Pending,
    /// A shell or commands: the terminal (raw mode), standard input and output.
    /// `ends_by_itself`: a `NonInteractiveCommands` program, which reads no input and
    /// ends the session when it exits, so the end of standard input (a script's
    /// `< /dev/null`) does not terminate it.
    Shell { ends_by_itself: bool },
    /// A port session over standard input and output (ssh's `ProxyCommand`): raw bytes,
    /// the terminal left alone, nothing else on standard output.
    Streams(SessionType),
    /// A port session with a local listener.
    Listener(SessionType, Box<Forwarder>),
}

impl Local {
    fn port_session(&self) -> Option<&SessionType> {
        match self {
            Local::Streams(s) | Local::Listener(s, _) => Some(s),
            Local::Pending | Local::Shell { .. } => None,
        }
    }

    fn has_window(&self) -> bool {
        matches!(self, Local::Pending | Local::Shell { .. })
    }

    fn forwarder(&mut self) -> Option<&mut Forwarder> {
        match self {
            Local::Listener(_, f) => Some(f),
            _ => None,
        }
    }
}

/// How long after sending the TerminateSession flag its acknowledgement is waited for
/// (the plugin exits at once; a moment's wait makes sure the flag left).
const FLAG_WAIT: Duration = Duration::from_secs(1);

/// How long GenerateDataKey may take (the agent waits 15 s for the whole answer).
const KMS_TIMEOUT: Duration = Duration::from_secs(12);

/// What applying effects asks of the loop.
enum Flow {
    Continue,
    End(Ending),
    OutputGone,
}

impl Pump<'_> {
    /// Runs the session to its end; returns how, and whether standard output carried
    /// the session's bytes (then nothing more may be printed there).
    pub(crate) async fn run(mut self) -> (Ending, bool) {
        let ending = self.run_inner().await;
        // The terminal first, so the last words are printed in the user's own mode.
        if let Some(r) = self.raw.as_mut() {
            r.restore();
        }
        (ending, matches!(self.local, Local::Streams(_)))
    }

    fn raw_active(&self) -> bool {
        self.raw.as_ref().is_some_and(RawMode::is_active)
    }

    async fn run_inner(&mut self) -> Ending {
        let mut stdin: Option<mpsc::Receiver<Vec<u8>>> = None;
        let mut stdin_open = true;
        let mut interrupts = Interrupts::listen();
        let mut size_poll = tokio::time::interval(SIZE_POLL);
        size_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut keepalive = tokio::time::interval(port::KEEPALIVE);
        keepalive.tick().await;
        let mut settle_at: Option<tokio::time::Instant> = None;
        let mut terminated: Option<Option<String>> = None;
        let mut close_at: Option<tokio::time::Instant> = None;

        // The Size goes first: the agent waits briefly for it before starting the shell,
        // so the prompt is drawn at the right width. (A port agent discards it.)
        self.send_size().await;
        loop {
            if stdin.is_none() && matches!(self.local, Local::Shell { .. } | Local::Streams(_)) {
                stdin = Some(spawn_stdin_reader());
            }
            let waits_for_its_end = matches!(
                self.local,
                Local::Shell {
                    ends_by_itself: true
                }
            );
            if terminated.is_none() && !stdin_open && !waits_for_its_end {
                let due = settle_at.is_some_and(|t| tokio::time::Instant::now() >= t);
                if due || self.channel.input_settled() {
                    let error = self.terminate().await;
                    terminated = Some(error);
                    close_at = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                }
            }
            let retransmit_at = self
                .channel
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            let wants_input = self.channel.wants_input();
            let has_window = self.local.has_window();
            let mux_keepalive = self.local.forwarder().is_some_and(|f| f.keepalive());
            let flow = tokio::select! {
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Binary(raw))) => {
                        let ready = self.local.forwarder().is_none_or(|f| f.ready());
                        self.channel.set_output_ready(ready);
                        let effects = self.channel.on_frame(&raw, Instant::now());
                        self.apply(effects).await
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => {
                        if let Some(terminate_error) = terminated.take() {
                            return Ending::InputEnded { terminate_error };
                        }
                        match self.reconnect().await {
                            Ok(()) => Flow::Continue,
                            Err(end) => Flow::End(end),
                        }
                    }
                    Some(Ok(_)) => Flow::Continue,
                },
                chunk = recv_opt(stdin.as_mut()), if stdin_open && wants_input => {
                    match chunk {
                        Some(bytes) => {
                            self.channel.queue_input(&bytes);
                            self.flush().await;
                        }
                        None => {
                            tracing::debug!("Standard input ended");
                            stdin_open = false;
                            settle_at = Some(tokio::time::Instant::now() + SETTLE);
                        }
                    }
                    Flow::Continue
                }
                up = recv_up(&mut self.local), if wants_input => match up {
                    Some(up) => {
                        let todo = match self.local.forwarder() {
                            Some(f) => f.on_up(up),
                            None => Todo::default(),
                        };
                        self.carry_out(todo).await
                    }
                    None => Flow::End(Ending::Failed("the local listener stopped".into())),
                },
                _ = keepalive.tick(), if mux_keepalive => {
                    let todo = match self.local.forwarder() {
                        Some(f) => f.nop(),
                        None => Todo::default(),
                    };
                    self.carry_out(todo).await
                }
                _ = size_poll.tick(), if has_window => { self.send_size().await; Flow::Continue }
                interrupt = interrupts.next() => match (interrupt, self.local.port_session().is_some()) {
                    (Interrupt::WindowChanged, _) => { self.send_size().await; Flow::Continue }
                    (Interrupt::Key(_) | Interrupt::End(_), true) => Flow::End(self.port_exit().await),
                    (Interrupt::Key(key), false) => { self.keystroke(key).await; Flow::Continue }
                    (Interrupt::End(stop), false) => Flow::End(self.signalled(stop).await),
                },
                () = sleep_opt(retransmit_at) => {
                    if let Some(frame) = self.channel.poll_retransmit(Instant::now()) {
                        self.send(frame).await;
                    }
                    Flow::Continue
                }
                () = sleep_opt(settle_at), if terminated.is_none() => Flow::Continue,
                () = sleep_opt(close_at) => {
                    return Ending::InputEnded { terminate_error: terminated.take().flatten() };
                }
                _ = ping.tick() => {
                    let _ = self.ws.send(Message::Ping(Bytes::from_static(b"keepalive"))).await;
                    Flow::Continue
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::End(Ending::Failed(reason)) => {
                    let _ = self.terminate().await;
                    return Ending::Failed(reason);
                }
                Flow::End(end) => return end,
                Flow::OutputGone => {
                    // Nobody sees the session any more: end it as at end of input.
                    if stdin_open {
                        stdin_open = false;
                        settle_at = Some(tokio::time::Instant::now());
                    }
                }
            }
        }
    }

    /// The session type is known: set up its local side.
    async fn started(&mut self, session: SessionType) -> Flow {
        if !session.is_port() {
            tracing::debug!(session_type = %session.session_type, "Shell session");
            // Only now is the terminal touched: a port session's standard streams may be
            // another program's pipes.
            self.raw = match RawMode::enter() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot put the terminal into raw mode");
                    None
                }
            };
            self.local = Local::Shell {
                ends_by_itself: session.session_type == "NonInteractiveCommands",
            };
            return Flow::Continue;
        }
        let mode = port::mode(&session);
        tracing::debug!(?mode, agent = %session.agent_version, "Port session");
        if mode == PortMode::Streams {
            self.local = Local::Streams(session);
            return Flow::Continue;
        }
        let listening = match port::local_port(&session) {
            Ok(p) => Forwarder::start(&self.session_id, mode, p).await,
            Err(e) => Err(e),
        };
        match listening {
            Ok((forwarder, lines)) => {
                for line in lines {
                    let _ =
                        write_out(&mut tokio::io::stdout(), format!("{line}\n").as_bytes()).await;
                }
                self.local = Local::Listener(session, Box::new(forwarder));
                Flow::Continue
            }
            Err(e) => Flow::End(Ending::Failed(e)),
        }
    }

    /// Sends what the forwarder asks for.
    async fn carry_out(&mut self, todo: Todo) -> Flow {
        for line in &todo.stdout {
            let _ = write_out(&mut tokio::io::stdout(), format!("\n{line}\n").as_bytes()).await;
        }
        for bytes in &todo.input {
            self.channel.queue_input(bytes);
        }
        for value in todo.flags {
            self.channel.queue_flag(value);
        }
        self.flush().await;
        match todo.fatal {
            Some(reason) => Flow::End(Ending::Failed(format!("port forwarding: {reason}"))),
            None => Flow::Continue,
        }
    }

    /// Ctrl-C or a signal in a port session: the TerminateSession flag to agents that
    /// know it, else the API (protocol-sessions.md §2.4).
    async fn port_exit(&mut self) -> Ending {
        let by_flag = self
            .local
            .port_session()
            .is_some_and(port::terminate_by_flag);
        if !by_flag {
            return Ending::PortExit {
                terminate_error: self.terminate().await,
            };
        }
        tracing::debug!(session = %self.session_id, "Sending the TerminateSession flag");
        self.channel.queue_flag(flag::TERMINATE_SESSION);
        self.flush().await;
        let deadline = tokio::time::Instant::now() + FLAG_WAIT;
        while !self.channel.input_settled() {
            let msg = tokio::select! {
                msg = self.ws.next() => msg,
                () = tokio::time::sleep_until(deadline) => break,
            };
            match msg {
                Some(Ok(Message::Binary(raw))) => {
                    // Only the acknowledgements matter now; output is not taken.
                    self.channel.set_output_ready(false);
                    for effect in self.channel.on_frame(&raw, Instant::now()) {
                        if let Effect::Send(frame) = effect {
                            self.send(frame).await;
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        Ending::PortExit {
            terminate_error: None,
        }
    }

    async fn apply(&mut self, effects: Vec<Effect>) -> Flow {
        let mut flow = Flow::Continue;
        for effect in effects {
            match effect {
                Effect::Send(frame) => self.send(frame).await,
                Effect::GenerateDataKey { key_id } => {
                    let result = self.generate_data_key(&key_id).await;
                    for effect in self.channel.on_data_key(result) {
                        if let Effect::Notice(text) = effect {
                            self.notice(&text).await;
                        }
                    }
                    self.flush().await;
                }
                Effect::Stdout(bytes) => {
                    if let Some(f) = self.local.forwarder() {
                        let todo = f.on_output(bytes);
                        if let Flow::End(end) = self.carry_out(todo).await {
                            return Flow::End(end);
                        }
                    } else if write_out(&mut tokio::io::stdout(), &bytes).await.is_err() {
                        flow = Flow::OutputGone;
                    }
                }
                Effect::Started(session) => {
                    if let Flow::End(end) = self.started(session).await {
                        return Flow::End(end);
                    }
                }
                Effect::Flag(value) => {
                    if value == flag::CONNECT_TO_PORT_ERROR && self.local.forwarder().is_some() {
                        self.notice(port::CONNECT_FAILED).await;
                    } else {
                        tracing::debug!(value, "Ignoring a flag");
                    }
                }
                Effect::Stderr(bytes) => {
                    let _ = write_out(&mut tokio::io::stderr(), &bytes).await;
                }
                Effect::Notice(text) => self.notice(&text).await,
                Effect::Closed(closed) => return Flow::End(Ending::Closed(closed)),
            }
        }
        flow
    }

    /// KMS GenerateDataKey of the session's 64-byte key (§5.4), with the SDK's credential
    /// chain and `AWS_ENDPOINT_URL_KMS` as for any AWS tool.
    async fn generate_data_key(&self, key_id: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
        let Some(target) = &self.target else {
            return Err("the session's target is not known (pass the StartSession request as the plugin's fifth argument)".into());
        };
        let config = crate::delivery::aws::load_config(Some(self.region.clone())).await;
        let kms = crate::delivery::aws::Kms::new(&config);
        let context = crate::protocol::payload::kms_context(&self.session_id, target, None);
        let call = kms.generate_data_key(key_id, 64, &context);
        match tokio::time::timeout(KMS_TIMEOUT, call).await {
            Ok(Ok(key)) => Ok(key),
            Ok(Err(e)) => Err(format!("KMS GenerateDataKey with key {key_id}: {e}")),
            Err(_) => Err(format!("KMS GenerateDataKey with key {key_id} timed out")),
        }
    }

    async fn send(&mut self, frame: Bytes) {
        // A failed send shows up as a failed read next, which reconnects; the frame is
        // still in the sender's buffer if it needs to be retransmitted.
        if let Err(e) = self.ws.send(Message::Binary(frame)).await {
            tracing::debug!(error = %e, "Send failed");
        }
    }

    async fn flush(&mut self) {
        for frame in self.channel.flush(Instant::now()) {
            self.send(frame).await;
        }
    }

    async fn keystroke(&mut self, byte: u8) {
        self.channel.queue_input(&[byte]);
        self.flush().await;
    }

    /// Sends the window size if it changed (80x24 without a terminal); nothing in a port
    /// session.
    async fn send_size(&mut self) {
        if !self.local.has_window() {
            return;
        }
        let size = terminal::window_size().unwrap_or(DEFAULT_SIZE);
        if self.channel.queue_size(size) {
            tracing::debug!(cols = size.cols, rows = size.rows, "Window size");
            self.flush().await;
        }
    }

    /// A line for the user on stderr, on a line of its own.
    async fn notice(&mut self, text: &str) {
        let raw = self.raw_active();
        let nl = if raw { "\r\n" } else { "\n" };
        let text = if raw {
            text.replace("\r\n", "\n").replace('\n', "\r\n")
        } else {
            text.to_owned()
        };
        let _ = write_out(
            &mut tokio::io::stderr(),
            format!("{nl}{text}{nl}").as_bytes(),
        )
        .await;
    }

    /// TerminateSession; returns the error text if it failed.
    async fn terminate(&mut self) -> Option<String> {
        tracing::debug!(session = %self.session_id, "Terminating the session");
        self.api
            .terminate_session(&self.session_id)
            .await
            .err()
            .map(|e| e.to_string())
    }

    async fn signalled(&mut self, signal: Stop) -> Ending {
        let terminate_error = self.terminate().await;
        Ending::Signalled {
            signal,
            terminate_error,
        }
    }

    /// ResumeSession + dial, upstream's schedule; then everything unacknowledged again.
    async fn reconnect(&mut self) -> Result<(), Ending> {
        tracing::debug!(session = %self.session_id, "Data channel dropped; reconnecting");
        let mut backoff = crate::backoff::Backoff::reconnect();
        let mut last = String::from("the connection closed");
        for attempt in 1..=RECONNECT_ATTEMPTS {
            tokio::time::sleep(backoff.next_delay()).await;
            let grant = match self.api.resume_session(&self.session_id).await {
                Ok(g) => g,
                Err(ApiError::Service { kind, .. }) if kind == "DoesNotExistException" => {
                    return Err(Ending::TimedOut)
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "ResumeSession failed");
                    last = format!("ResumeSession: {e}");
                    continue;
                }
            };
            if grant.token_value.is_empty() {
                return Err(Ending::TimedOut);
            }
            match dial(&self.stream_url, &grant.token_value, &self.who, &self.tls).await {
                Ok(ws) => {
                    self.ws = ws;
                    let frames = self.channel.reconnected(Instant::now());
                    tracing::debug!(attempt, resent = frames.len(), "Data channel reopened");
                    for frame in frames {
                        self.send(frame).await;
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "Reconnecting failed");
                    last = e;
                }
            }
        }
        Err(Ending::Lost(last))
    }
}

async fn write_out(w: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Reads standard input on a thread of its own (reads cannot be cancelled; the thread
/// simply ends with the process). The channel closes at end of input.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; MAX_INPUT_CHUNK];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "Reading standard input failed");
                        break;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Cannot start the input thread; input is ignored");
    }
    rx
}

async fn recv_opt(rx: Option<&mut mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_up(local: &mut Local) -> Option<port::Up> {
    match local {
        Local::Listener(_, f) => f.up.recv().await,
        _ => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
