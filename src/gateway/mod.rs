//! `session-agent gateway`: a local stand-in for the two AWS services a Session Manager
//! session crosses, on loopback or a LAN.
//!
//! * the **SSM API** subset (`POST /`, AWS JSON 1.1, `X-Amz-Target: AmazonSSM.<Op>`):
//!   StartSession, TerminateSession, ResumeSession, DescribeSessions,
//!   DescribeInstanceInformation, UpdateInstanceInformation — [`api`], with the built-in
//!   AWS session documents and the `allowedPattern` check in [`documents`];
//! * the **message gateway** (`ssmmessages`, "MGS"): channel-creation POSTs answering 201
//!   with an XML token, the agent's control-channel websocket, and the data-channel
//!   websocket shared by agent and client, relayed frame for frame — [`mgs`].
//!
//! ```text
//!   client ──StartSession──▶ api ──interactive_shell──▶ agent control socket
//!   client ══StreamUrl ws══▶ mgs relay ◀══data ws══ agent     (frames unchanged, acks end to end)
//! ```
//!
//! State lives in one `registry::Registry` behind a mutex that is never held across an
//! await; session history is persisted by [`store::Store`]. Each websocket gets a reader
//! task (decodes and routes inbound frames) and a writer task (drains its bounded outbound
//! queue, sends keepalive pings, detects a dead peer), so a slow peer back-pressures only
//! its own session. Forwarding waits at most [`FORWARD_TIMEOUT`] for the other side's
//! queue, then drops the frame: the protocol's retransmission makes that a delay, never a
//! loss, and it rules out reader/writer deadlocks between two peers.

pub(crate) mod access;
pub mod api;
pub mod args;
pub mod auth;
pub mod documents;
pub mod limits;
pub mod mgs;
pub(crate) mod registry;
pub mod reply;
pub mod store;

use crate::protocol::frame::{AgentMessage, MessageType, PayloadType};
use crate::protocol::payload::{to_json, ChannelClosed};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
pub use limits::read_body;
use rand::distributions::{Alphanumeric, DistString};
use registry::{Outbound, Peer, Registry, Side};
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{SessionRecord, SessionStatus, Store};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a reader waits for the other side's outbound queue before dropping a frame.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Relayed frames queued for one websocket, in bytes (plus the frame being written).
/// Deep enough to absorb a burst of output frames (128 of 16 KiB), shallow enough that a
/// stuck peer holds little.
pub const OUTBOUND_BYTES: usize = 2 * 1024 * 1024;
/// The gateway's own messages queued for one websocket (channel_closed, pause/start,
/// `interactive_shell` tasks for an agent), in bytes. They are small and few; a peer that
/// lets this fill is not reading, and is disconnected.
pub const CONTROL_BYTES: usize = 1024 * 1024;
/// The region of a gateway left at its default (`dev`'s): what its strict mode expects
/// signatures to be scoped to.
pub const DEV_REGION: &str = "us-east-1";
/// Largest websocket message accepted by default: the largest legitimate message is an
/// agent's control-channel reply of about 142,000 bytes (protocol.md §1.3), stream
/// frames are 1 to 16 KiB. Every socket may buffer one message this large while reading.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;
/// The console's default idle timeout, applied when the document sets none.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The agent enforces the idle timeout itself and warns the user first; the gateway's
/// own check trails it by this much, as a backstop for agents that do not.
pub const IDLE_BACKSTOP: Duration = Duration::from_secs(30);

/// Everything the gateway needs; built by the CLI, plain data.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where session history is kept; `None` keeps it in memory only.
    pub data_dir: Option<PathBuf>,
    /// The `SSM-SessionManagerRunShell` document sent with every shell session.
    pub preferences: serde_json::Value,
    /// Extra documents, `<dir>/<DocumentName>.json`, for StartSession `DocumentName`
    /// (`AWS-*` names excepted: those are [`documents`]' built-in ones).
    pub documents_dir: Option<PathBuf>,
    /// PEM certificate chain and key; with them the gateway speaks https/wss only.
    pub tls: Option<TlsFiles>,
    /// Base URL put into StreamUrl (e.g. `wss://gw.example:8443`); default: from the
    /// request's Host header.
    pub advertise_url: Option<String>,
    /// Region used in generated ARNs and console links.
    pub region: String,
    /// Account id used in generated ARNs.
    pub account_id: String,
    /// How often the gateway pings each websocket.
    pub ping_interval: Duration,
    /// A websocket silent (no frame, no pong) for this long is closed as dead.
    pub peer_timeout: Duration,
    /// An active session whose agent data channel stays away this long is marked Failed.
    pub orphan_timeout: Duration,
    /// How long a terminating session waits for the agent's agent_task_complete.
    pub terminate_grace: Duration,
    /// Largest websocket message accepted (and AgentMessage frame decoded).
    pub max_frame_bytes: usize,
    /// Largest HTTP request body accepted.
    pub max_body_bytes: usize,
    /// RunAs users by caller, standing in for the IAM principal's `SSMSessionRunAs` tag:
    /// (principal or access key id, or `*`; OS user). An exact match wins over `*`.
    pub run_as: Vec<(String, String)>,
    /// Strict mode: every signature verified against these keys (see
    /// [`auth::StrictSigV4`]); `None` accepts any.
    pub strict_sigv4: Option<Arc<auth::StrictSigV4>>,
    /// Principals that may see, resume and terminate every session (see `gateway::access`).
    pub admins: Vec<String>,
    /// Limits that keep one caller from exhausting the gateway for the others.
    pub limits: Limits,
}

/// What one caller, one client address, or everyone together may hold. Each bounds
/// memory in bytes (see the figures on each field and in the README's security model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections in all. A connection reading its request head holds at most
    /// [`limits::MAX_HEAD_BYTES`]; the excess is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Open connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Active sessions one principal may own.
    pub max_sessions_per_caller: usize,
    /// Managed nodes one principal may register.
    pub max_nodes_per_caller: usize,
    /// Unused channel tokens one principal may hold.
    pub max_tokens_per_caller: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 8192,
            max_connections_per_ip: 4096,
            max_sessions_per_caller: 1000,
            max_nodes_per_caller: 1000,
            max_tokens_per_caller: 1000,
        }
    }
}

/// Paths of a PEM certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (leaf first).
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            data_dir: None,
            preferences: crate::protocol::document::SessionDocument::default_shell().to_json(),
            documents_dir: None,
            tls: None,
            advertise_url: None,
            region: DEV_REGION.into(),
            account_id: "000000000000".into(),
            // Upstream agents ping every 54 s and expect an answer within 60 s; we ping
            // a little more often so our own detection fires before theirs.
            ping_interval: Duration::from_secs(30),
            peer_timeout: Duration::from_secs(90),
            orphan_timeout: Duration::from_secs(120),
            terminate_grace: Duration::from_secs(30),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_body_bytes: 1024 * 1024,
            run_as: Vec::new(),
            strict_sigv4: None,
            admins: Vec::new(),
            limits: Limits::default(),
        }
    }
}

/// Start-up failures, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// History file problems.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// TLS material could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// Accept loop failure.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// State shared by every handler.
#[derive(Debug)]
pub(crate) struct Shared {
    reg: Mutex<Registry>,
    pub(crate) config: GatewayConfig,
    /// Who may do what ([`access`]).
    pub(crate) access: access::Access,
    store: Store,
    pub(crate) cancel: CancellationToken,
    /// Websockets waiting for their open frame.
    pub(crate) preopen: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// Locks the registry. A poisoned lock (a panic while holding it) is recovered: the
    /// registry holds no invariants that a half-finished update could break badly enough
    /// to justify taking the whole gateway down.
    pub(crate) fn reg(&self) -> MutexGuard<'_, Registry> {
        self.reg
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn persist(&self, record: &SessionRecord) {
        self.store.save(record);
    }

    /// Saves the node registrations (after one changed).
    pub(crate) fn persist_nodes(&self, reg: &Registry) {
        let nodes = reg
            .agents
            .iter()
            .filter_map(|(t, a)| Some((t.clone(), a.registrant.clone()?)))
            .collect();
        self.store.save_nodes(nodes);
    }

    /// Builds a control frame from the gateway (sequence 0, payload type 0).
    pub(crate) fn frame<T: Serialize>(message_type: MessageType, payload: &T) -> Bytes {
        let msg = AgentMessage::new(
            message_type,
            PayloadType::Null,
            to_json(payload),
            now_millis(),
            Uuid::new_v4(),
        );
        // JSON payloads are never empty and our type names are valid.
        msg.encode().unwrap_or_default()
    }

    pub(crate) fn channel_closed(session_id: &str, target: &str, output: &str) -> Bytes {
        Self::frame(
            MessageType::ChannelClosed,
            &ChannelClosed {
                message_type: "channel_closed".into(),
                message_id: Uuid::new_v4().to_string(),
                destination_id: target.into(),
                session_id: session_id.into(),
                schema_version: 1,
                created_date: rfc3339(SystemTime::now()),
                output: output.into(),
            },
        )
    }

    /// Queues one of the gateway's own messages for `peer`, if connected.
    pub(crate) fn notify(peer: Option<&Peer>, out: Outbound) {
        if let Some(p) = peer {
            p.control(out);
        }
    }

    /// Ends a session from the service side: tells agent (data and control channel) and
    /// client, marks it Terminating, and lets the agent's agent_task_complete finish it.
    pub(crate) fn terminate(&self, session_id: &str, client_message: &str, details: &str) {
        let mut reg = self.reg();
        let Some(s) = reg.sessions.get(session_id) else {
            return;
        };
        if !s.record.status.is_active() || s.terminate_requested.is_some() {
            return;
        }
        let target = s.record.target.clone();
        let control = reg.agents.get(&target).and_then(|a| a.control.clone());
        let Some(s) = reg.sessions.get_mut(session_id) else {
            return;
        };
        let to_agent = Self::channel_closed(session_id, &target, "");
        Self::notify(s.agent.as_ref(), Outbound::Frame(to_agent.clone()));
        Self::notify(control.as_ref(), Outbound::Frame(to_agent));
        Self::notify(
            s.client.as_ref(),
            Outbound::Frame(Self::channel_closed(session_id, &target, client_message)),
        );
        s.terminate_requested = Some(Instant::now());
        s.record.status = SessionStatus::Terminating;
        if !details.is_empty() {
            s.record.details = details.into();
        }
        let rec = s.record.clone();
        drop(reg);
        self.persist(&rec);
    }

    /// Records the end of a session, tells the client (`channel_closed` with
    /// `client_message` as its Output) and closes whatever is still connected.
    pub(crate) fn finish(
        &self,
        session_id: &str,
        status: SessionStatus,
        details: &str,
        client_message: &str,
    ) {
        let mut reg = self.reg();
        let Some(s) = reg.sessions.get_mut(session_id) else {
            return;
        };
        if !s.record.status.is_active() {
            return;
        }
        s.record.status = status;
        s.record.end_date = Some(epoch_secs(SystemTime::now()));
        if !details.is_empty() {
            s.record.details = details.into();
        }
        let bye = Self::channel_closed(session_id, &s.record.target, client_message);
        Self::notify(s.client.as_ref(), Outbound::Frame(bye));
        for side in [Side::Agent, Side::Client] {
            if let Some(p) = s.slot(side).take() {
                p.control(Outbound::Close(1000, "session ended".into()));
            }
            s.pending(side).take();
        }
        let rec = s.record.clone();
        drop(reg);
        tracing::info!(
            session = session_id,
            status = status.as_str(),
            "Session ended"
        );
        self.persist(&rec);
    }

    /// Periodic housekeeping: tokens, timeouts, orphans.
    fn reap(&self) {
        let now = Instant::now();
        let cfg = &self.config;
        let mut to_terminate = Vec::new();
        let mut to_finish = Vec::new();
        {
            let mut reg = self.reg();
            reg.prune(now);
            for (id, s) in &reg.sessions {
                if !s.record.status.is_active() {
                    continue;
                }
                if let Some(at) = s.terminate_requested {
                    if now.duration_since(at) > cfg.terminate_grace {
                        to_finish.push((
                            id.clone(),
                            SessionStatus::Terminated,
                            "the agent did not confirm the end of the session",
                        ));
                    }
                } else if s.agent.is_none()
                    && now.duration_since(s.agent_changed) > cfg.orphan_timeout
                {
                    to_finish.push((
                        id.clone(),
                        SessionStatus::Failed,
                        "the agent's data channel did not come back",
                    ));
                } else if s
                    .max_duration
                    .is_some_and(|m| now.duration_since(s.started) > m)
                {
                    to_terminate.push((
                        id.clone(),
                        "Your session has reached its maximum duration.",
                        "maximum session duration reached",
                    ));
                } else if s
                    .idle_timeout
                    .is_some_and(|idle| now.duration_since(s.last_activity) > idle + IDLE_BACKSTOP)
                {
                    to_terminate.push((
                        id.clone(),
                        "Your session timed out due to inactivity.",
                        "idle session timeout",
                    ));
                }
            }
        }
        for (id, msg, details) in to_terminate {
            tracing::info!(session = %id, reason = details, "Terminating session");
            self.terminate(&id, msg, details);
        }
        for (id, status, details) in to_finish {
            self.finish(&id, status, details, details);
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves.
///
/// # Errors
/// Unreadable history or TLS files; the accept loop itself only logs per-connection errors.
pub async fn serve(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    if let Some(dir) = &config.documents_dir {
        for name in documents::ignored_files(dir) {
            tracing::warn!(
                file = %dir.join(&name).display(),
                "Ignored: document names starting with AWS- are reserved for the built-in AWS documents"
            );
        }
    }
    let (store, loaded) = match &config.data_dir {
        Some(dir) => Store::open(dir)?,
        None => (Store::memory(), store::Loaded::default()),
    };
    let mut reg = Registry::default();
    let now = Instant::now();
    for (target, principal) in loaded.nodes {
        reg.agents.entry(target).or_default().registrant = Some(principal);
    }
    for rec in loaded.sessions {
        if rec.status.is_active() {
            tracing::info!(session = %rec.session_id, "Session was active before restart; waiting for its agent to reconnect");
        }
        reg.sessions
            .insert(rec.session_id.clone(), registry::Session::new(rec, now));
    }
    let access = access::Access::new(&config.region, &config.account_id, &config.admins);
    let conns = limits::Connections::new(config.limits);
    let shared = Arc::new(Shared {
        reg: Mutex::new(reg),
        config,
        access,
        store,
        cancel: CancellationToken::new(),
        preopen: Arc::new(tokio::sync::Semaphore::new(limits::MAX_PREOPEN)),
    });
    let router = router(shared.clone());
    let reaper = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => shared.reap(),
                    () = shared.cancel.cancelled() => break,
                }
            }
        })
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %listener.local_addr()?, scheme, "Gateway listening");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over the limits: closed at once (the descriptor is freed before anything is
        // read), so a flood of connections cannot starve the process of descriptors.
        let Some(slot) = conns.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let tls = tls.clone();
        let cancel = shared.cancel.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let builder = limits::http_builder();
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(
                        limits::TLS_HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => serve_conn(&builder, TokioIo::new(s), service, cancel).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake not finished in time");
                            return;
                        }
                    }
                }
                None => serve_conn(&builder, TokioIo::new(stream), service, cancel).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "Connection ended with an error");
            }
        });
    }
    tracing::info!("Gateway shutting down");
    shared.cancel.cancel();
    let _ = reaper.await;
    shared.store.flush();
    Ok(())
}

async fn serve_conn<I>(
    builder: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    io: TokioIo<I>,
    service: TowerToHyperService<axum::Router>,
    cancel: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

fn router(shared: Arc<Shared>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", post(api::handle))
        .route(
            "/v1/control-channel/{target}",
            post(mgs::create_control_channel).get(mgs::open_control_channel),
        )
        .route(
            "/v1/data-channel/{session_id}",
            post(mgs::create_data_channel).get(mgs::open_data_channel),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            auth::verify_layer,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(shared)
}

fn load_tls(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, GatewayError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| GatewayError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| GatewayError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(GatewayError::Tls(format!(
            "{} holds no PEM certificate",
            files.cert.display()
        )));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| GatewayError::Tls(format!("{}: {e}", files.key.display())))?
        .ok_or_else(|| {
            GatewayError::Tls(format!("{} holds no PEM private key", files.key.display()))
        })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| GatewayError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| GatewayError::Tls(format!("certificate and key do not fit: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A fresh unguessable token (64 alphanumerics, ~380 bits).
pub fn random_token() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 64)
}

pub(crate) fn now_millis() -> u64 {
    crate::timefmt::unix_ms(SystemTime::now()).max(1)
}

pub(crate) fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    crate::timefmt::rfc3339(crate::timefmt::unix_ms(t), true)
}

/// Where the listener ended up, for callers that bind port 0.
pub fn local_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
