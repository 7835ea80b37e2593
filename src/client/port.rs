//! The client's side of port sessions (protocol-sessions.md §2): the mode, chosen as
//! session-manager-plugin chooses it, and the local listener with its connections.
//!
//! ```text
//!  accept task ──Accepted(conn, permit)──▶ ┐
//!  connection reader ──Data / Eof──────────▶ │ pump (Up queue, bounded) ─▶ Channel ─▶ agent
//!  connection writer ◀──unbounded, but the pump stops taking output at OUT_LIMIT bytes── pump
//! ```
//!
//! * **Standard streams** (`type` absent or other, e.g. `AWS-StartSSHSession` as an ssh
//!   `ProxyCommand`): standard input and output are the tunnel; the pump does it (no
//!   listener).
//! * **Basic** (`LocalPortForwarding`, agent not above 3.0.196.0): one local connection at
//!   a time; its end sends DisconnectToPort and the next one is accepted.
//! * **Multiplexed** (`LocalPortForwarding`, newer agents): an smux v1 client
//!   ([`crate::protocol::smux`]) over the tunnel's bytes, one stream per local connection,
//!   at most [`MAX_CONNECTIONS`] at a time (later ones wait in the listen backlog).
//!
//! As upstream, a connection ends entirely when either direction ends (no half-close).
//!
//! Memory is bounded in bytes: towards the agent, one [`READ_CHUNK`] buffer per connection
//! plus [`UP_QUEUE`] reads waiting for the pump (which takes them only while the data
//! channel's sender has room); towards local connections, output waiting to be written
//! is at most [`OUT_LIMIT`] plus what one data-channel frame releases from the reorder
//! buffer: at the limit the pump stops acknowledging output and the agent sends it again
//! later (the session-wide budget of smux v1: one slow connection holds up the others,
//! as upstream).

use crate::protocol::payload::flag;
use crate::protocol::smux::{Mux, MuxEvent, Role};
use crate::protocol::version;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::channel::SessionType;

/// Local connections open at once in a multiplexed session.
pub const MAX_CONNECTIONS: usize = 64;
/// Bytes per read of a local connection.
pub const READ_CHUNK: usize = 16 * 1024;
/// Reads (and accepts) waiting for the pump.
pub const UP_QUEUE: usize = 16;
/// Output waiting to be written to local connections beyond which the pump stops
/// taking output from the data channel.
pub const OUT_LIMIT: usize = 1024 * 1024;
/// smux keepalive interval, for agents that expect it (smux's default).
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// What the plugin prints when the agent could not reach the destination (mux only).
pub const CONNECT_FAILED: &str = "Connection to destination port failed, check SSM Agent logs.";

/// How a port session's bytes are carried (protocol-sessions.md §2.2, client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMode {
    /// Standard input and output are the tunnel.
    Streams,
    /// A local listener, one connection at a time.
    Basic,
    /// A local listener, smux v1; `keepalive`: send smux NOPs.
    Mux {
        /// The agent expects keepalives (it is not above 3.1.1511.0).
        keepalive: bool,
    },
}

/// The plugin's rule: `LocalPortForwarding` is multiplexed iff the agent's version is
/// greater than 3.0.196.0 by the plugin's comparison, else one connection; any other
/// `type` forwards standard input and output.
pub fn mode(session: &SessionType) -> PortMode {
    if session.property("type").as_deref() != Some("LocalPortForwarding") {
        return PortMode::Streams;
    }
    let agent = &session.agent_version;
    if version::plugin_greater(agent, version::MUX_AFTER_AGENT) {
        PortMode::Mux {
            keepalive: !version::plugin_greater(agent, version::MUX_NO_KEEPALIVE_AFTER_AGENT),
        }
    } else {
        PortMode::Basic
    }
}

/// Whether Ctrl-C ends the session with the TerminateSession flag (else the API).
pub fn terminate_by_flag(session: &SessionType) -> bool {
    version::plugin_greater(&session.agent_version, version::TERMINATE_FLAG_AFTER_AGENT)
}

/// The local port to listen on: `localPortNumber`, `"0"` or empty for one the system
/// chooses.
///
/// # Errors
/// The property is not a port number.
pub fn local_port(session: &SessionType) -> Result<u16, String> {
    match session.property("localPortNumber") {
        None => Ok(0),
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("localPortNumber {p:?} is not a port number")),
    }
}

/// What connections tell the pump.
#[derive(Debug)]
pub(crate) enum Up {
    /// A local connection was accepted; the permit is its place under the cap.
    Accepted(TcpStream, OwnedSemaphorePermit),
    /// Bytes read from connection `key`.
    Data(u32, Bytes),
    /// Connection `key` ended (either direction); it is closed.
    Eof(u32),
}

/// What the pump must do after handing the forwarder something.
#[derive(Debug, Default)]
pub(crate) struct Todo {
    /// Tunnel bytes for the agent (PayloadType 1).
    pub(crate) input: Vec<Bytes>,
    /// Flags for the agent.
    pub(crate) flags: Vec<u32>,
    /// Lines for standard output (the plugin's messages).
    pub(crate) stdout: Vec<String>,
    /// The session cannot go on (smux error).
    pub(crate) fatal: Option<String>,
}

/// The local listener and its connections. Dropping it stops accepting; open
/// connections end when their writers are dropped.
#[derive(Debug)]
pub(crate) struct Forwarder {
    session_id: String,
    mux: Option<Mux>,
    keepalive: bool,
    up_tx: mpsc::Sender<Up>,
    pub(crate) up: mpsc::Receiver<Up>,
    writers: HashMap<u32, mpsc::UnboundedSender<Bytes>>,
    /// Basic mode: the one connection.
    current: Option<u32>,
    next_key: u32,
    queued: Arc<AtomicUsize>,
    accepted_once: bool,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Forwarder {
    /// Listens on 127.0.0.1:`port` and prints the plugin's lines (returned for stdout).
    ///
    /// # Errors
    /// The port cannot be listened on.
    pub(crate) async fn start(
        session_id: &str,
        mode: PortMode,
        port: u16,
    ) -> Result<(Self, Vec<String>), String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
        let (mux, keepalive, cap) = match mode {
            PortMode::Mux { keepalive } => (
                Some(Mux::new(Role::Client, MAX_CONNECTIONS)),
                keepalive,
                MAX_CONNECTIONS,
            ),
            _ => (None, false, 1),
        };
        let (up_tx, up) = mpsc::channel(UP_QUEUE);
        let permits = Arc::new(Semaphore::new(cap));
        let accept_task = tokio::spawn(accept_loop(listener, permits, up_tx.clone()));
        let lines = vec![
            format!("Port {port} opened for sessionId {session_id}."),
            "Waiting for connections...\n".to_owned(),
        ];
        Ok((
            Self {
                session_id: session_id.to_owned(),
                mux,
                keepalive,
                up_tx,
                up,
                writers: HashMap::new(),
                current: None,
                next_key: 1,
                queued: Arc::new(AtomicUsize::new(0)),
                accepted_once: false,
                accept_task,
            },
            lines,
        ))
    }

    /// Whether smux keepalives are to be sent every [`KEEPALIVE`].
    pub(crate) fn keepalive(&self) -> bool {
        self.keepalive
    }

    /// Whether output from the agent can be taken now: a connection exists (basic mode)
    /// and less than [`OUT_LIMIT`] bytes wait to be written.
    pub(crate) fn ready(&self) -> bool {
        (self.mux.is_some() || self.current.is_some())
            && self.queued.load(Ordering::Acquire) < OUT_LIMIT
    }

    /// One event from the connections.
    pub(crate) fn on_up(&mut self, up: Up) -> Todo {
        let mut todo = Todo::default();
        match up {
            Up::Accepted(stream, permit) => {
                if !self.accepted_once {
                    self.accepted_once = true;
                    todo.stdout.push(format!(
                        "Connection accepted for session [{}]",
                        self.session_id
                    ));
                }
                let key = match &mut self.mux {
                    Some(mux) => match mux.open() {
                        Ok(sid) => sid,
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot open a stream; connection closed");
                            return todo;
                        }
                    },
                    None => {
                        let key = self.next_key;
                        self.next_key = self.next_key.wrapping_add(1);
                        self.current = Some(key);
                        key
                    }
                };
                tracing::debug!(key, "Local connection accepted");
                let writer =
                    spawn_connection(key, stream, permit, self.up_tx.clone(), self.queued.clone());
                self.writers.insert(key, writer);
            }
            Up::Data(key, bytes) => match &mut self.mux {
                Some(mux) => {
                    mux.write(key, &bytes);
                }
                None if self.current == Some(key) => todo.input.push(bytes),
                None => {}
            },
            Up::Eof(key) => {
                tracing::debug!(key, "Local connection ended");
                self.writers.remove(&key);
                match &mut self.mux {
                    Some(mux) => {
                        mux.close(key);
                    }
                    None if self.current == Some(key) => {
                        self.current = None;
                        todo.flags.push(flag::DISCONNECT_TO_PORT);
                    }
                    None => {}
                }
            }
        }
        self.take_mux_output(&mut todo);
        todo
    }

    /// Tunnel bytes from the agent.
    pub(crate) fn on_output(&mut self, bytes: Bytes) -> Todo {
        let mut todo = Todo::default();
        let Some(mux) = &mut self.mux else {
            if let Some(key) = self.current {
                self.send_to_connection(key, bytes);
            }
            return todo;
        };
        let events = match mux.receive(&bytes) {
            Ok(events) => events,
            Err(e) => {
                todo.fatal = Some(e.to_string());
                return todo;
            }
        };
        for event in events {
            match event {
                MuxEvent::Data(sid, data) => self.send_to_connection(sid, data),
                MuxEvent::Closed(sid) => {
                    // The agent's side ended: what is queued is written, then the local
                    // connection closes (its writer ends with the queue).
                    self.writers.remove(&sid);
                    if let Some(mux) = &mut self.mux {
                        mux.close(sid);
                    }
                }
                MuxEvent::Opened(sid) => {
                    // Servers do not open streams here; refuse it.
                    if let Some(mux) = &mut self.mux {
                        mux.close(sid);
                    }
                }
                MuxEvent::Refused(_) => {}
            }
        }
        self.take_mux_output(&mut todo);
        todo
    }

    /// A keepalive NOP (mux mode).
    pub(crate) fn nop(&mut self) -> Todo {
        let mut todo = Todo::default();
        if let Some(mux) = &mut self.mux {
            mux.nop();
        }
        self.take_mux_output(&mut todo);
        todo
    }

    fn send_to_connection(&mut self, key: u32, bytes: Bytes) {
        let Some(writer) = self.writers.get(&key) else {
            return;
        };
        let n = bytes.len();
        self.queued.fetch_add(n, Ordering::AcqRel);
        if writer.send(bytes).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn take_mux_output(&mut self, todo: &mut Todo) {
        if let Some(mux) = &mut self.mux {
            let out = mux.take_output();
            if !out.is_empty() {
                todo.input.push(out);
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, permits: Arc<Semaphore>, up: mpsc::Sender<Up>) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "Accepted a local connection");
                let _ = stream.set_nodelay(true);
                if up.send(Up::Accepted(stream, permit)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "Accepting a local connection failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs one local connection; returns the queue of bytes to write to it. Dropping the
/// queue's sender lets the queued bytes be written, then closes the connection. When
/// either direction ends, the connection is closed and [`Up::Eof`] sent (before its
/// place under the cap is given back, so the pump hears of it before the next accept).
fn spawn_connection(
    key: u32,
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    up: mpsc::Sender<Up>,
    queued: Arc<AtomicUsize>,
) -> mpsc::UnboundedSender<Bytes> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let (mut r, mut w) = stream.into_split();
        let reader = {
            let up = up.clone();
            async move {
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let data = Bytes::copy_from_slice(&buf[..n]);
                            if up.send(Up::Data(key, data)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        };
        let writer = async {
            while let Some(bytes) = rx.recv().await {
                let n = bytes.len();
                let written = w.write_all(&bytes).await;
                queued.fetch_sub(n, Ordering::AcqRel);
                if written.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = reader => {}
            () = writer => {}
        }
        rx.close();
        while let Ok(bytes) = rx.try_recv() {
            queued.fetch_sub(bytes.len(), Ordering::AcqRel);
        }
        let _ = w.shutdown().await;
        let _ = up.send(Up::Eof(key)).await;
        drop(permit);
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn port(props: serde_json::Value, agent: &str) -> SessionType {
        SessionType {
            session_type: "Port".into(),
            properties: props,
            agent_version: agent.into(),
        }
    }

    #[test]
    fn the_mode_is_chosen_as_the_plugin_does() {
        let lpf = json!({"portNumber":"80","type":"LocalPortForwarding","localPortNumber":"8080"});
        assert_eq!(
            mode(&port(lpf.clone(), version::AGENT_COMPAT_VERSION)),
            PortMode::Mux { keepalive: false }
        );
        assert_eq!(
            mode(&port(lpf.clone(), "3.1.1511.0")),
            PortMode::Mux { keepalive: true }
        );
        assert_eq!(
            mode(&port(lpf.clone(), "3.0.196.1")),
            PortMode::Mux { keepalive: true }
        );
        // Not strictly greater, a different number of parts, or not numeric: basic.
        assert_eq!(mode(&port(lpf.clone(), "3.0.196.0")), PortMode::Basic);
        assert_eq!(mode(&port(lpf.clone(), "3.3.0")), PortMode::Basic);
        assert_eq!(mode(&port(lpf.clone(), "")), PortMode::Basic);
        assert_eq!(mode(&port(lpf.clone(), "4.0.0.beta")), PortMode::Basic);
        // Any other type, or none (AWS-StartSSHSession): standard streams.
        assert_eq!(
            mode(&port(json!({"portNumber":"22"}), "3.2.0.0")),
            PortMode::Streams
        );
        assert_eq!(
            mode(&port(json!({"portNumber":"22","type":"Other"}), "3.2.0.0")),
            PortMode::Streams
        );
        assert_eq!(mode(&port(json!(null), "3.2.0.0")), PortMode::Streams);
    }

    #[test]
    fn terminate_flag_and_local_port() {
        assert!(terminate_by_flag(&port(json!({}), "2.3.722.1")));
        assert!(!terminate_by_flag(&port(json!({}), "2.3.722.0")));
        assert!(!terminate_by_flag(&port(json!({}), "")));
        assert_eq!(
            local_port(&port(json!({"localPortNumber":"8080"}), "")),
            Ok(8080)
        );
        assert_eq!(local_port(&port(json!({"localPortNumber":"0"}), "")), Ok(0));
        assert_eq!(local_port(&port(json!({"localPortNumber":""}), "")), Ok(0));
        assert_eq!(local_port(&port(json!({}), "")), Ok(0));
        assert!(local_port(&port(json!({"localPortNumber":"http"}), "")).is_err());
    }
}
