//! The message-gateway half (`ssmmessages`, protocol.md §1–§2): channel-creation POSTs
//! answering **201** with an XML token, and the websockets.
//!
//! * `POST /v1/control-channel/{target}` → token for the agent's control channel;
//! * `GET  /v1/control-channel/{target}?role=subscribe&stream=input` → control websocket;
//! * `POST /v1/data-channel/{sessionId}` → token for the agent's end of a data channel;
//! * `GET  /v1/data-channel/{sessionId}?role=publish_subscribe` → data websocket, for the
//!   agent *and* the client (the StreamUrl): the token in the first text frame says which.
//!
//! Every socket's first message must be the text open frame with a valid, unexpired,
//! unused token for that very path; anything else closes it with 1008 and a reason.
//! A frame that does not decode closes that socket with 1007 and the decoder's reason;
//! the session's other peer is untouched.

use super::access::Denied;
use super::auth::Caller;
use super::registry::{Grant, Outbound, Peer, Side, TokenRefusal, MAX_NODE_FIELD};
use super::reply::xml_response;
use super::store::SessionStatus;
use super::{Shared, CONTROL_BYTES, FORWARD_TIMEOUT, OUTBOUND_BYTES};
use crate::bounded::{self, ByteReceiver, ByteSender};
use crate::protocol::frame::{AgentMessage, MessageType};
use crate::protocol::payload::{
    from_json, task_status, AgentSessionState, AgentTaskAcknowledge, AgentTaskComplete,
    CreateChannelRequest, OpenControlChannel, OpenDataChannel, SessionState, TokenResponse,
    MESSAGE_SCHEMA_VERSION,
};
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a socket being closed may take to write what it still has queued.
const CLOSING_WRITES: Duration = Duration::from_secs(2);
/// Bytes tungstenite gathers before writing to the socket.
const WRITE_BUFFER: usize = 128 * 1024;
/// A new socket must send its open frame within this time.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Websocket close codes used.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_INVALID_DATA: u16 = 1007;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;

fn xml_error(status: StatusCode, message: &str) -> Response {
    xml_response(status, "BadRequest", " xmlns=\"\"", "message", message)
}

fn token_created(root: &str, token: String) -> Response {
    let body = TokenResponse {
        message_schema_version: MESSAGE_SCHEMA_VERSION.into(),
        token_value: token,
    }
    .to_xml(root);
    (
        StatusCode::CREATED,
        [("content-type", "application/xml")],
        body,
    )
        .into_response()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn read_create_request(
    shared: &Shared,
    path: &str,
    body: Body,
) -> Result<CreateChannelRequest, Response> {
    let bytes = super::read_body(body, shared.config.max_body_bytes)
        .await
        .map_err(|e| e.into_response_for(path))?;
    let req: CreateChannelRequest = from_json(&bytes, "create channel")
        .map_err(|e| xml_error(StatusCode::BAD_REQUEST, &e.to_string()))?;
    if req.message_schema_version != MESSAGE_SCHEMA_VERSION {
        return Err(xml_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unsupported MessageSchemaVersion {:?}; expected \"1.0\"",
                req.message_schema_version
            ),
        ));
    }
    if req.request_id.len() < 16 {
        return Err(xml_error(
            StatusCode::BAD_REQUEST,
            "RequestId must be at least 16 characters",
        ));
    }
    Ok(req)
}

/// A refusal of the ownership model, as the message gateway answers (XML, 403).
fn denied(d: &Denied) -> Response {
    tracing::info!(who = %d.who, action = d.action, resource = %d.resource, "Access denied");
    xml_response(
        StatusCode::FORBIDDEN,
        "AccessDeniedException",
        "",
        "Message",
        &d.message(),
    )
}

fn throttled(why: TokenRefusal) -> Response {
    xml_response(
        StatusCode::TOO_MANY_REQUESTS,
        "ThrottlingException",
        "",
        "Message",
        &why.message(),
    )
}

/// `POST /v1/control-channel/{target}`: only for the principal the node is registered
/// to (or, for a new node, for whoever asks: opening the channel registers it).
pub(crate) async fn create_control_channel(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(target): Path<String>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    if !valid_id(&target) {
        return xml_error(
            StatusCode::BAD_REQUEST,
            "target id must match [A-Za-z0-9._-]{1,128}",
        );
    }
    if let Err(resp) = read_create_request(&shared, uri.path(), body).await {
        return resp;
    }
    let mut reg = shared.reg();
    let registrant = reg.registrant_of(&target).map(str::to_owned);
    if let Err(d) = shared.access.act_as_node(
        &caller,
        "ssmmessages:CreateControlChannel",
        &target,
        registrant.as_deref(),
    ) {
        // Most often a second host configured with the same target id: say so where
        // the node is listed too (the refused agent logs it as well).
        let text = format!(
            "another identity ({}) asked for this node's control channel from {from} at {}; the node stays with the identity that registered it. Two hosts with one target id? Give each its own target_id",
            caller.principal,
            super::rfc3339(SystemTime::now())
        );
        tracing::warn!(%target, %from, caller = %caller.principal, "Control channel refused: the node is registered to another identity");
        if let Some(a) = reg.agents.get_mut(&target) {
            a.conflict = Some(text);
        }
        return denied(&d);
    }
    // The node is registered only once its control channel opens (attach_control), so
    // token requests alone cannot fill the node list; they count against the caller's
    // token quota.
    let token = reg.issue_token(
        Grant::Control {
            target: target.clone(),
        },
        &caller.principal,
        shared.config.limits.max_tokens_per_caller,
        Instant::now(),
    );
    drop(reg);
    match token {
        Ok(token) => {
            tracing::debug!(%target, caller = %caller.principal, "Control channel token issued");
            token_created("CreateControlChannelResponse", token)
        }
        Err(why) => throttled(why),
    }
}

/// `POST /v1/data-channel/{sessionId}`: the agent's end of a session's data channel, only
/// for the principal holding the session's node.
pub(crate) async fn create_data_channel(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(session_id): Path<String>,
    uri: axum::http::Uri,
    body: Body,
) -> Response {
    if let Err(resp) = read_create_request(&shared, uri.path(), body).await {
        return resp;
    }
    let mut reg = shared.reg();
    let (active, target) = match reg.sessions.get(&session_id) {
        None => {
            return xml_error(
                StatusCode::BAD_REQUEST,
                &format!("Session {session_id} not found"),
            )
        }
        Some(s) => (s.record.status.is_active(), s.record.target.clone()),
    };
    if let Err(d) = shared
        .access
        .agent_side(&caller, &session_id, reg.registrant_of(&target))
    {
        return denied(&d);
    }
    if !active {
        // The official agent stops retrying on exactly this phrase (§1.6).
        return xml_error(StatusCode::BAD_REQUEST, "Session is already terminated");
    }
    let token = reg.issue_token(
        Grant::AgentData { session_id },
        &caller.principal,
        shared.config.limits.max_tokens_per_caller,
        Instant::now(),
    );
    drop(reg);
    match token {
        Ok(token) => token_created("CreateDataChannelResponse", token),
        Err(why) => throttled(why),
    }
}

/// `GET /v1/control-channel/{target}` (websocket).
pub(crate) async fn open_control_channel(
    State(shared): State<Arc<Shared>>,
    Path(target): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(shared, ws, Channel::Control(target), peer)
}

/// `GET /v1/data-channel/{sessionId}` (websocket).
pub(crate) async fn open_data_channel(
    State(shared): State<Arc<Shared>>,
    Path(session_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(shared, ws, Channel::Data(session_id), peer)
}

#[derive(Debug)]
enum Channel {
    Control(String),
    Data(String),
}

/// Who is on the other end of an attached socket.
#[derive(Debug, Clone)]
enum Role {
    Control { target: String },
    Data { session_id: String, side: Side },
}

fn upgrade(
    shared: Arc<Shared>,
    ws: WebSocketUpgrade,
    channel: Channel,
    peer: SocketAddr,
) -> Response {
    // Until its open frame shows a token, a socket is nobody's: only so many at once.
    let Ok(preopen) = shared.preopen.clone().try_acquire_owned() else {
        tracing::warn!(%peer, "Websocket upgrade refused: too many sockets waiting for their open frame");
        return xml_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ThrottlingException",
            "",
            "Message",
            "too many websockets are waiting for their open frame; retry shortly",
        );
    };
    let max = shared.config.max_frame_bytes;
    // tungstenite keeps what it could not write yet in a buffer that is unbounded by
    // default, and a send that times out leaves its frame there: a peer that stops reading
    // would grow it without end. Bounded at one frame beyond the usual 128 KiB, a full
    // buffer fails the send and closes that socket.
    ws.max_message_size(max)
        .max_frame_size(max)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max)
        .on_upgrade(move |socket| run_socket(shared, socket, channel, peer, preopen))
}

fn close_message(code: u16, reason: &str) -> Message {
    // A close reason may carry at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

async fn run_socket(
    shared: Arc<Shared>,
    socket: WebSocket,
    channel: Channel,
    peer: SocketAddr,
    preopen: tokio::sync::OwnedSemaphorePermit,
) {
    let (mut sink, mut stream) = socket.split();
    let open = match tokio::time::timeout(OPEN_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(_))) => {
            let _ = sink
                .send(close_message(
                    CLOSE_POLICY,
                    "the first message must be the text open frame with a token",
                ))
                .await;
            return;
        }
        Err(_) => {
            let _ = sink
                .send(close_message(
                    CLOSE_POLICY,
                    "no open frame within 10 seconds",
                ))
                .await;
            return;
        }
        Ok(None | Some(Err(_))) => return,
    };
    drop(preopen);
    let (tx, rx) = bounded::channel(OUTBOUND_BYTES);
    let (ctl, ctl_rx) = bounded::channel(CONTROL_BYTES);
    let cancel = shared.cancel.child_token();
    let ends = Ends {
        tx,
        ctl,
        kill: cancel.clone(),
        addr: peer,
    };
    let attached = match &channel {
        Channel::Control(target) => attach_control(&shared, target, open.as_bytes(), ends),
        Channel::Data(session_id) => attach_data(&shared, session_id, open.as_bytes(), ends),
    };
    let (role, me) = match attached {
        Ok(r) => r,
        Err(reason) => {
            tracing::info!(?channel, reason = %reason, "Websocket refused");
            let _ = sink.send(close_message(CLOSE_POLICY, &reason)).await;
            return;
        }
    };
    let conn_id = me.conn_id;
    let base = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_loop(
        sink,
        rx,
        ctl_rx,
        cancel.clone(),
        shared.cancel.clone(),
        base,
        last_seen.clone(),
        shared.config.ping_interval,
        shared.config.peer_timeout,
    ));
    let max = shared.config.max_frame_bytes;
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            () = cancel.cancelled() => break,
        };
        let msg = match next {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => {
                let text = e.to_string();
                // Upstream agents and clients just drop the connection (§1.5): no close
                // frame, often no TLS close_notify. That is a normal goodbye.
                if text.contains("without closing handshake") || text.contains("close_notify") {
                    tracing::debug!(?role, "Peer left without a close frame");
                    break;
                }
                // tungstenite reports an over-long message as a capacity error.
                let code = if text.contains("too long") {
                    CLOSE_TOO_BIG
                } else {
                    CLOSE_PROTOCOL
                };
                tracing::info!(?role, error = %text, "Closing websocket after a read error");
                me.control(Outbound::Close(code, text));
                break;
            }
            Some(Ok(m)) => m,
        };
        let elapsed = u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX);
        last_seen.store(elapsed, Ordering::Relaxed);
        if let Role::Control { target } = &role {
            // The agent's own keepalive pings (every 54 s upstream) count as a sign of life.
            if matches!(msg, Message::Ping(_) | Message::Pong(_)) {
                touch_agent(&shared, target);
            }
        }
        let Message::Binary(raw) = msg else { continue };
        match AgentMessage::decode(&raw, max) {
            // A socket closed meanwhile (replaced, killed) stops at once, even while it
            // waits to forward: it must not linger holding its buffers.
            Ok(m) => tokio::select! {
                () = on_frame(&shared, &role, &me, m, raw) => {}
                () = cancel.cancelled() => break,
            },
            Err(e) => {
                tracing::warn!(?role, error = %e, "Closing websocket after a malformed frame");
                me.control(Outbound::Close(
                    CLOSE_INVALID_DATA,
                    format!("malformed frame: {e}"),
                ));
                break;
            }
        }
    }
    // The writer drains what is queued (a close with a reason, say) and stops.
    drop(me);
    cancel.cancel();
    let _ = writer.await;
    detach(&shared, &role, conn_id);
}

/// Sends one message, giving up after `limit`: a peer that stops reading must not hold
/// the writer (and with it the dead-peer check) hostage until TCP gives up.
async fn send_within(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    m: Message,
    limit: Duration,
) -> bool {
    match tokio::time::timeout(limit, sink.send(m)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false, // the connection is already gone; the reader reports why
        Err(_) => {
            tracing::warn!(waited = ?limit, "Closing websocket: peer is not reading");
            false
        }
    }
}

fn to_message(out: Outbound) -> (Message, bool) {
    match out {
        Outbound::Frame(b) => (Message::Binary(b), false),
        Outbound::Close(code, reason) => (close_message(code, &reason), true),
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: ByteReceiver<Outbound>,
    mut ctl_rx: ByteReceiver<Outbound>,
    cancel: CancellationToken,
    shutdown: CancellationToken,
    base: Instant,
    last_seen: Arc<AtomicU64>,
    ping_interval: Duration,
    peer_timeout: Duration,
) {
    let mut ping = tokio::time::interval_at(base + ping_interval, ping_interval);
    loop {
        let next = tokio::select! {
            biased;
            Some(out) = ctl_rx.recv() => out,
            Some(out) = rx.recv() => out,
            _ = ping.tick() => {
                let seen = Duration::from_millis(last_seen.load(Ordering::Relaxed));
                let silent = base.elapsed().saturating_sub(seen);
                if silent > peer_timeout {
                    tracing::warn!(silent_for = ?silent, "Closing websocket: peer stopped answering");
                    let _ = send_within(&mut sink, close_message(CLOSE_GOING_AWAY, "peer timed out"), peer_timeout).await;
                    break;
                }
                if !send_within(&mut sink, Message::Ping(Bytes::from_static(b"keepalive")), peer_timeout).await {
                    break;
                }
                continue;
            }
            () = cancel.cancelled() => {
                // Deliver what is already queued (a channel_closed, a close with its
                // reason) before going, and say why if nothing did; within
                // CLOSING_WRITES in all, so a closed socket whose peer does not read
                // does not linger holding its buffers.
                // Relayed frames still queued are dropped: the peer is leaving, and their
                // senders retransmit to whatever connects next.
                let deadline = Instant::now() + CLOSING_WRITES;
                let mut closed = false;
                drop(rx);
                while let Some(out) = ctl_rx.try_recv() {
                    let (m, is_close) = to_message(out);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !send_within(&mut sink, m, left).await || is_close {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    let (code, reason) = if shutdown.is_cancelled() {
                        (CLOSE_GOING_AWAY, "gateway shutting down")
                    } else {
                        (CLOSE_NORMAL, "")
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = send_within(&mut sink, close_message(code, reason), left).await;
                }
                break;
            }
        };
        let (m, is_close) = to_message(next);
        if !send_within(&mut sink, m, peer_timeout).await {
            break;
        }
        if is_close {
            break;
        }
    }
    cancel.cancel();
}

fn touch_agent(shared: &Shared, target: &str) {
    if let Some(a) = shared.reg().agents.get_mut(target) {
        a.last_ping = Some(SystemTime::now());
    }
}

/// The two queues and the kill switch of a socket being attached, and where it comes
/// from.
struct Ends {
    tx: ByteSender<Outbound>,
    ctl: ByteSender<Outbound>,
    kill: CancellationToken,
    addr: SocketAddr,
}

fn attach_control(
    shared: &Shared,
    target: &str,
    open: &[u8],
    ends: Ends,
) -> Result<(Role, Peer), String> {
    let frame: OpenControlChannel =
        from_json(open, "OpenControlChannel").map_err(|e| e.to_string())?;
    let mut reg = shared.reg();
    let principal = match reg.redeem_token(&frame.token_value, Instant::now()) {
        Some((Grant::Control { target: t }, principal)) if t == target => principal,
        _ => return Err("invalid, expired or already used token".into()),
    };
    // Checked again at open: two principals may have raced for a new node's tokens; the
    // first to open registers it.
    let registrant = reg.registrant_of(target).map(str::to_owned);
    let caller = Caller {
        access_key_id: String::new(),
        principal: principal.clone(),
        verified: false,
    };
    if let Err(d) = shared.access.act_as_node(
        &caller,
        "ssmmessages:OpenControlChannel",
        target,
        registrant.as_deref(),
    ) {
        return Err(d.message());
    }
    let new_registration = registrant.is_none();
    if new_registration {
        reg.room_for_node(
            &caller.principal,
            target,
            shared.config.limits.max_nodes_per_caller,
        )?;
    }
    let conn_id = reg.next_conn_id();
    let me = Peer {
        conn_id,
        tx: ends.tx,
        ctl: ends.ctl,
        kill: ends.kill,
    };
    let agent = reg.agents.entry(target.to_owned()).or_default();
    agent.registrant = Some(principal);
    if !frame.agent_version.is_empty() {
        agent.agent_version = frame.agent_version.chars().take(MAX_NODE_FIELD).collect();
    }
    if !frame.platform_type.is_empty() {
        agent.platform_type = frame.platform_type.chars().take(MAX_NODE_FIELD).collect();
    }
    agent.last_ping = Some(SystemTime::now());
    let old_addr = agent.control_addr.replace(ends.addr);
    if let Some(old) = agent.control.replace(me.clone()) {
        let conflict = agent.note_takeover(target, old_addr, Some(ends.addr), Instant::now());
        let reason = match &conflict {
            Some(text) => {
                tracing::warn!(%target, "{text}");
                format!("replaced by a newer control channel: {text}")
            }
            None => "replaced by a newer control channel".into(),
        };
        // Each agent is told when the other replaces it (the close reason), so both
        // logs say so within one round of the flapping.
        old.control(Outbound::Close(CLOSE_NORMAL, reason));
    }
    tracing::info!(%target, version = %agent.agent_version, from = %ends.addr, "Agent connected");
    if new_registration {
        tracing::info!(node = %target, principal = %caller.principal, "Managed node registered");
        shared.persist_nodes(&reg);
    }
    Ok((
        Role::Control {
            target: target.to_owned(),
        },
        me,
    ))
}

fn publication(start: bool, session_id: &str) -> Outbound {
    let t = if start {
        MessageType::StartPublication
    } else {
        MessageType::PausePublication
    };
    Outbound::Frame(Shared::frame(
        t,
        &serde_json::json!({ "SessionId": session_id }),
    ))
}

fn attach_data(
    shared: &Shared,
    session_id: &str,
    open: &[u8],
    ends: Ends,
) -> Result<(Role, Peer), String> {
    let frame: OpenDataChannel = from_json(open, "OpenDataChannel").map_err(|e| e.to_string())?;
    let mut reg = shared.reg();
    let side = match reg.redeem_token(&frame.token_value, Instant::now()) {
        // The agent side only for whoever holds the session's node now (a token issued
        // before the node changed hands is worth nothing).
        Some((Grant::AgentData { session_id: s }, holder))
            if s == session_id
                && reg
                    .sessions
                    .get(session_id)
                    .and_then(|sess| reg.registrant_of(&sess.record.target))
                    == Some(holder.as_str()) =>
        {
            Side::Agent
        }
        Some((Grant::ClientData { session_id: s }, _)) if s == session_id => Side::Client,
        _ => return Err("invalid, expired or already used token".into()),
    };
    let conn_id = reg.next_conn_id();
    let me = Peer {
        conn_id,
        tx: ends.tx,
        ctl: ends.ctl,
        kill: ends.kill,
    };
    let Some(s) = reg.sessions.get_mut(session_id) else {
        return Err("session not found".into());
    };
    if !s.record.status.is_active() {
        if side == Side::Agent {
            return Err("Session is already terminated".into());
        }
        // A client that arrives after the session already ended (say, the agent refused
        // it at once) still learns why, as it would have had it been connected.
        let reason = if s.record.status == SessionStatus::Failed {
            s.record.details.clone()
        } else {
            String::new()
        };
        me.control(Outbound::Frame(Shared::channel_closed(
            session_id,
            &s.record.target,
            &reason,
        )));
        me.control(Outbound::Close(CLOSE_NORMAL, "session ended".into()));
        return Ok((
            Role::Data {
                session_id: session_id.to_owned(),
                side,
            },
            me,
        ));
    }
    if let Some(old) = s.slot(side).replace(me.clone()) {
        // Told why, then closed at once: what it still had queued is retransmitted by
        // its sender to the new connection.
        old.control(Outbound::Close(
            CLOSE_NORMAL,
            "replaced by a newer connection".into(),
        ));
        old.kill.cancel();
    }
    for f in s.pending(side).take() {
        let len = f.len();
        let _ = me.tx.try_send(Outbound::Frame(f), len);
    }
    match side {
        Side::Agent => {
            s.agent_changed = Instant::now();
            if s.client.is_none() {
                me.control(publication(false, session_id));
            }
        }
        Side::Client => {
            Shared::notify(s.agent.as_ref(), publication(true, session_id));
        }
    }
    tracing::info!(session = %session_id, ?side, "Data channel attached");
    Ok((
        Role::Data {
            session_id: session_id.to_owned(),
            side,
        },
        me,
    ))
}

fn detach(shared: &Shared, role: &Role, conn_id: u64) {
    let mut reg = shared.reg();
    match role {
        Role::Control { target } => {
            // Only the socket that is still registered may unregister itself.
            if let Some(a) = reg.agents.get_mut(target) {
                if a.control.as_ref().is_some_and(|p| p.conn_id == conn_id) {
                    a.control = None;
                    tracing::info!(%target, "Agent disconnected");
                }
            }
        }
        Role::Data { session_id, side } => {
            let Some(s) = reg.sessions.get_mut(session_id) else {
                return;
            };
            if s.peer(*side).is_none_or(|p| p.conn_id != conn_id) {
                return;
            }
            *s.slot(*side) = None;
            tracing::info!(session = %session_id, ?side, "Data channel detached");
            match side {
                Side::Agent => {
                    s.agent_changed = Instant::now();
                    if matches!(
                        s.record.status,
                        SessionStatus::Connected | SessionStatus::Connecting
                    ) {
                        s.record.status = SessionStatus::Disconnected;
                        let rec = s.record.clone();
                        drop(reg);
                        shared.persist(&rec);
                    }
                }
                Side::Client => Shared::notify(s.agent.as_ref(), publication(false, session_id)),
            }
        }
    }
}

async fn on_frame(shared: &Shared, role: &Role, me: &Peer, msg: AgentMessage, raw: Bytes) {
    match role {
        Role::Control { target } => on_control_frame(shared, target, me, &msg),
        Role::Data { session_id, side } => {
            let t = &msg.message_type;
            let relay = match side {
                Side::Agent => {
                    matches!(t, MessageType::OutputStreamData | MessageType::Acknowledge)
                }
                Side::Client => {
                    matches!(t, MessageType::InputStreamData | MessageType::Acknowledge)
                }
            };
            if relay {
                let to = match side {
                    Side::Agent => Side::Client,
                    Side::Client => Side::Agent,
                };
                forward(shared, session_id, to, t.is_stream_data(), raw).await;
            } else if *side == Side::Agent && *t == MessageType::AgentSessionState {
                on_session_state(shared, session_id, &msg);
            } else {
                tracing::debug!(session = %session_id, ?side, message_type = %t, "Ignoring frame not meant for relay");
            }
        }
    }
}

async fn forward(shared: &Shared, session_id: &str, to: Side, activity: bool, raw: Bytes) {
    // A copy of its own: the websocket hands out frames as views into its read buffer,
    // and a queued view would keep that whole buffer (megabytes) alive, beyond what the
    // queues count.
    let raw = Bytes::copy_from_slice(&raw);
    let tx = {
        let mut reg = shared.reg();
        let Some(s) = reg.sessions.get_mut(session_id) else {
            return;
        };
        if !s.record.status.is_active() {
            return;
        }
        if activity {
            s.last_activity = Instant::now();
        }
        match s.peer(to) {
            Some(p) => p.tx.clone(),
            None => {
                let dropped = s.pending(to).push(raw);
                if dropped > 0 {
                    tracing::debug!(session = %session_id, dropped, "Pending queue full; oldest frames dropped (the sender retransmits)");
                }
                return;
            }
        }
    };
    let len = raw.len();
    match tokio::time::timeout(FORWARD_TIMEOUT, tx.send(Outbound::Frame(raw), len)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            tracing::debug!(session = %session_id, "Peer left while forwarding; the sender retransmits")
        }
        Err(_) => {
            tracing::debug!(session = %session_id, ?to, "Peer not draining; frame dropped (the sender retransmits)")
        }
    }
}

fn on_session_state(shared: &Shared, session_id: &str, msg: &AgentMessage) {
    let state: AgentSessionState = match from_json(&msg.payload, "agent_session_state") {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(session = %session_id, error = %e, "Ignoring unreadable agent_session_state");
            return;
        }
    };
    let mut reg = shared.reg();
    let Some(s) = reg.sessions.get_mut(session_id) else {
        return;
    };
    let new = match state.session_state {
        SessionState::Connected if s.terminate_requested.is_none() => SessionStatus::Connected,
        SessionState::Connected => return,
        SessionState::Terminating => {
            s.terminate_requested.get_or_insert_with(Instant::now);
            SessionStatus::Terminating
        }
    };
    if s.record.status.is_active() && s.record.status != new {
        s.record.status = new;
        let rec = s.record.clone();
        drop(reg);
        shared.persist(&rec);
    }
}

fn on_control_frame(shared: &Shared, target: &str, me: &Peer, msg: &AgentMessage) {
    touch_agent(shared, target);
    match &msg.message_type {
        MessageType::AgentTaskComplete => {
            let done: AgentTaskComplete = match from_json(&msg.payload, "agent_task_complete") {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%target, error = %e, "Ignoring unreadable agent_task_complete");
                    return;
                }
            };
            let ack = AgentTaskAcknowledge {
                schema_version: 1,
                message_id: msg.message_id.to_string(),
                task_id: done.task_id.clone(),
                topic: "agent_task_acknowledge".into(),
            };
            me.control(Outbound::Frame(Shared::frame(
                MessageType::AgentTaskAcknowledge,
                &ack,
            )));
            complete_session(shared, target, &done);
        }
        other => {
            tracing::debug!(%target, message_type = %other, "Ignoring control-channel message")
        }
    }
}

fn complete_session(shared: &Shared, target: &str, done: &AgentTaskComplete) {
    {
        let mut reg = shared.reg();
        let Some(s) = reg.sessions.get_mut(&done.task_id) else {
            tracing::warn!(%target, session = %done.task_id, "agent_task_complete for an unknown session");
            return;
        };
        if s.record.target != target {
            tracing::warn!(%target, session = %done.task_id, "agent_task_complete from the wrong target ignored");
            return;
        }
        if s.completed {
            return; // a retry of a report already applied
        }
        s.completed = true;
        // What an agent reports is kept in history: bounded, whatever it sends.
        s.record.final_task_status = cap(&done.final_task_status, 64);
        s.record.output.s3_bucket = cap(&done.s3_bucket, MAX_REPORT_FIELD);
        s.record.output.s3_key = cap(&done.s3_url_suffix, MAX_REPORT_FIELD);
        s.record.output.cwl_group = cap(&done.cwl_group, MAX_REPORT_FIELD);
        s.record.output.cwl_stream = cap(&done.cwl_stream, MAX_REPORT_FIELD);
        if !s.record.status.is_active() {
            // Ended already (timeout, orphan): keep the late report's locations.
            let rec = s.record.clone();
            drop(reg);
            shared.persist(&rec);
            return;
        }
    }
    let failed = done.final_task_status == task_status::FAILED;
    // The agent's Output becomes Details either way (a failure reason, or e.g. the
    // shell's exit status); only a failure is shown to the client.
    let status = if failed {
        SessionStatus::Failed
    } else {
        SessionStatus::Terminated
    };
    let details = cap(&done.output, MAX_REPORT_OUTPUT);
    shared.finish(
        &done.task_id,
        status,
        &details,
        if failed { &details } else { "" },
    );
}

/// Longest location field of an agent's report kept (S3 bucket and key, log group and
/// stream: AWS's own limits are lower).
const MAX_REPORT_FIELD: usize = 1024;
/// Longest output of an agent's report kept (a failure reason, an exit status).
const MAX_REPORT_OUTPUT: usize = 4096;

/// `text` cut to at most `max` characters.
fn cap(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}
