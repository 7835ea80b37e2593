//! Port sessions (`sessionType: Port`): TCP connections from the client to a port on
//! this instance or, with `host`, a host it can reach (protocol-sessions.md §2).
//!
//! ```text
//!  data channel ─▶ pump ─keyboard─▶ pipe ─▶ forwarder ─▶ TCP destination(s)
//!  data channel ◀─ pump ◀──read──── pipe ◀─ forwarder ◀─ TCP destination(s)
//! ```
//!
//! To the pump (`agent::session`) a port session looks like a shell: bytes out, bytes
//! in, an end. The forwarder behind the pipes is one of two:
//! * `basic` — one TCP connection: older clients' `LocalPortForwarding`, and
//!   standard-stream forwarding (`AWS-StartSSHSession`, no `type`);
//! * `mux` — many connections multiplexed with smux v1 (`protocol::smux`), for
//!   `LocalPortForwarding` with a client at or above 1.1.70.
//!
//! The mode is chosen as upstream's agent does (`mode`), so that it agrees with the
//! choice the client makes from our `AgentVersion` (`protocol::version`). Where the
//! connections may go is the administrator's [`policy`]; every connection, allowed or
//! not, is an audit record in the session's recording (the tunnel's bytes are never
//! recorded: they may be TLS or SSH). Memory is bounded in bytes: the two pipes
//! ([`PIPE_BYTES`] each) and, per connection, one read buffer and a bounded queue.

mod basic;
mod mux;
pub mod policy;
#[cfg(test)]
mod review_tests;

use super::recording::Tap;
use super::session::{FlagLink, SessionInput, SessionIo, SessionOutput};
use crate::protocol::version;
use crate::recorder::event::{Tunnel, TunnelState};
use policy::PortPolicy;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Bytes each pipe between the pump and the forwarder holds.
pub const PIPE_BYTES: usize = 256 * 1024;
/// How long resolving the destination may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What a port session's properties ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortRequest {
    /// `host`; `None`: this instance (`localhost`).
    pub host: Option<String>,
    /// `portNumber`.
    pub port: u16,
    /// `type` is `LocalPortForwarding`.
    pub local_port_forwarding: bool,
}

impl PortRequest {
    /// The host as dialled and recorded.
    pub(crate) fn host(&self) -> &str {
        self.host.as_deref().unwrap_or("localhost")
    }
}

/// Reads the session properties (after parameter substitution).
///
/// # Errors
/// What is wrong with them, for the user.
pub(crate) fn request(properties: &Value) -> Result<PortRequest, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match properties.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(format!(
                "session properties: {key} must be a string, not {other}"
            )),
        }
    };
    if !properties.is_object() {
        return Err("session properties: a Port session needs properties with portNumber".into());
    }
    let port =
        text("portNumber")?.ok_or("Port number is empty in session properties (portNumber)")?;
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(format!(
                "session properties: portNumber {port:?} is not a port number (1-65535)"
            ))
        }
    };
    let host = text("host")?;
    if let Some(h) = &host {
        if h.len() > 253 || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "session properties: host {h:?} is not a host name or address"
            ));
        }
    }
    Ok(PortRequest {
        host,
        port,
        local_port_forwarding: text("type")?.as_deref() == Some("LocalPortForwarding"),
    })
}

/// How the session's bytes are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Many connections, multiplexed (smux v1); `keepalive`: smux NOPs expected and sent.
    Mux { keepalive: bool },
    /// One connection; `reconnect` after it ends (LocalPortForwarding).
    Single { reconnect: bool },
}

/// Upstream agent's rule (protocol-sessions.md §2.2): multiplexed for
/// `LocalPortForwarding` with a client at or above 1.1.70, else one connection.
pub(crate) fn mode(request: &PortRequest, client_version: &str) -> Mode {
    use std::cmp::Ordering;
    let mux = request.local_port_forwarding
        && version::agent_compare(client_version, version::MUX_MIN_CLIENT) != Ordering::Less;
    if mux {
        Mode::Mux {
            keepalive: version::agent_compare(client_version, version::MUX_KEEPALIVE_MAX_CLIENT)
                != Ordering::Greater,
        }
    } else {
        Mode::Single {
            reconnect: request.local_port_forwarding,
        }
    }
}

/// A destination resolved once and checked against the policy: every dial goes to one
/// of `addrs`.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub(crate) host: String,
    pub(crate) addrs: Vec<SocketAddr>,
    /// Why there are no addresses (the name did not resolve).
    pub(crate) unresolved: Option<String>,
}

/// Checks the request against the policy, resolves the host once and checks every
/// address (a name with any denied address is denied, as upstream).
///
/// # Errors
/// The denial, for the user (the caller records it).
pub(crate) async fn resolve(
    request: &PortRequest,
    policy: &PortPolicy,
) -> Result<Destination, policy::Denial> {
    policy.check_enabled()?;
    policy.check_port(request.port)?;
    let host = request.host().to_owned();
    let found = tokio::time::timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((host.clone(), request.port)),
    )
    .await;
    let (addrs, unresolved) = match found {
        Ok(Ok(a)) => (a.collect::<Vec<_>>(), None),
        Ok(Err(e)) => (Vec::new(), Some(format!("cannot resolve {host}: {e}"))),
        Err(_) => (
            Vec::new(),
            Some(format!(
                "cannot resolve {host}: no answer within {} s",
                RESOLVE_TIMEOUT.as_secs()
            )),
        ),
    };
    for a in &addrs {
        policy.check_address(a.ip())?;
    }
    Ok(Destination {
        host,
        addrs,
        unresolved,
    })
}

/// Connects to the first of the destination's addresses that answers.
///
/// # Errors
/// Why none did (the first error, as upstream).
pub(crate) async fn dial(dest: &Destination) -> Result<TcpStream, String> {
    if dest.addrs.is_empty() {
        return Err(dest
            .unresolved
            .clone()
            .unwrap_or_else(|| format!("{} has no address", dest.host)));
    }
    let mut first_error = None;
    for a in &dest.addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(format!("dial tcp {a}: {e}"));
            }
            Err(_) => {
                first_error.get_or_insert(format!(
                    "dial tcp {a}: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ));
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// The tunnel audit of one session: records connections into its recording.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    tap: Option<Tap>,
    host: String,
    port: u16,
    session_id: String,
}

impl Audit {
    pub(crate) fn new(tap: Option<Tap>, request: &PortRequest, session_id: &str) -> Self {
        Self {
            tap,
            host: request.host().to_owned(),
            port: request.port,
            session_id: session_id.to_owned(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.tap.as_ref().map_or(0, Tap::now_ms)
    }

    fn record(&self, conn: u32, state: TunnelState) -> Tunnel {
        Tunnel {
            conn,
            state,
            host: self.host.clone(),
            port: self.port,
            address: None,
            reason: None,
            bytes_to_destination: 0,
            bytes_from_destination: 0,
            opened_ms: None,
        }
    }

    async fn put(&self, t: Tunnel) {
        tracing::info!(session = %self.session_id, conn = t.conn, state = ?t.state, host = %t.host, port = t.port, address = ?t.address, reason = ?t.reason, to_destination = t.bytes_to_destination, from_destination = t.bytes_from_destination, "Tunnel");
        if let Some(tap) = &self.tap {
            tap.tunnel(t).await;
        }
    }

    pub(crate) async fn opened(&self, conn: u32, address: &str) {
        let mut t = self.record(conn, TunnelState::Opened);
        t.address = Some(address.to_owned());
        self.put(t).await;
    }

    pub(crate) async fn denied(&self, conn: u32, why: &str) {
        let mut t = self.record(conn, TunnelState::Denied);
        t.reason = Some(why.to_owned());
        self.put(t).await;
    }

    pub(crate) async fn failed(&self, conn: u32, why: &str) {
        let mut t = self.record(conn, TunnelState::Failed);
        t.reason = Some(why.to_owned());
        self.put(t).await;
    }

    pub(crate) async fn closed(
        &self,
        conn: u32,
        address: &str,
        opened_ms: u64,
        (to, from): (u64, u64),
        reason: Option<String>,
    ) {
        let mut t = self.record(conn, TunnelState::Closed);
        t.address = Some(address.to_owned());
        t.opened_ms = Some(opened_ms);
        t.bytes_to_destination = to;
        t.bytes_from_destination = from;
        t.reason = reason;
        self.put(t).await;
    }
}

/// A started forwarder: the pump's handles, and the task (its error ends the session
/// as failed).
pub(crate) struct Started {
    pub io: SessionIo,
    pub task: tokio::task::JoinHandle<Result<Option<crate::session::pty::ExitStatus>, String>>,
}

impl Started {
    /// A session that ends at once with `why` (a refused destination, a failed first
    /// connection): the pipes are closed, the task's error is the outcome.
    pub(crate) fn failed(why: String) -> Self {
        let (out_rx, _) = tokio::io::duplex(1);
        let (in_tx, _) = tokio::io::duplex(1);
        let (to_forwarder, _) = tokio::sync::mpsc::channel(1);
        let (_, from_forwarder) = tokio::sync::mpsc::channel(1);
        let (exit_tx, exited) = tokio::sync::oneshot::channel();
        let _ = exit_tx.send(());
        Self {
            io: SessionIo {
                output: SessionOutput::Pipe(out_rx),
                input: SessionInput::Pipe(in_tx),
                resize: Box::new(|_, _| {}),
                exited,
                echo_probe: Box::new(|| Some(false)),
                flags: Some(FlagLink {
                    to_forwarder,
                    from_forwarder,
                }),
            },
            task: tokio::spawn(async move { Err(why) }),
        }
    }
}

/// Starts the forwarder for `mode`. One-connection modes dial first, as upstream.
///
/// # Errors
/// The first connection failed (recorded), for the user.
pub(crate) async fn start(
    mode: Mode,
    dest: Destination,
    audit: Audit,
    max_connections: usize,
) -> Result<Started, String> {
    let first = match mode {
        Mode::Single { .. } => match dial(&dest).await {
            Ok(s) => {
                audit
                    .opened(1, &s.peer_addr().map(|a| a.to_string()).unwrap_or_default())
                    .await;
                Some(s)
            }
            Err(e) => {
                audit.failed(1, &e).await;
                return Err(format!("Unable to connect to specified port: {e}"));
            }
        },
        Mode::Mux { .. } => None,
    };
    // One duplex pair per direction, each end used one way: dropping an end is the
    // other's end of file (or broken pipe), which split halves of one pair would not be.
    let (out_rx, out_tx) = tokio::io::duplex(PIPE_BYTES);
    let (in_tx, in_rx) = tokio::io::duplex(PIPE_BYTES);
    let (to_forwarder, flags_in) = tokio::sync::mpsc::channel(16);
    let (flags_out, from_forwarder) = tokio::sync::mpsc::channel(16);
    let (exit_tx, exited) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let result = match (mode, first) {
            (Mode::Single { reconnect }, Some(first)) => {
                basic::run(dest, first, reconnect, in_rx, out_tx, flags_in, audit).await
            }
            (Mode::Mux { keepalive }, _) => {
                drop(flags_in);
                mux::run(
                    dest,
                    keepalive,
                    max_connections,
                    in_rx,
                    out_tx,
                    flags_out,
                    audit,
                )
                .await
            }
            (Mode::Single { .. }, None) => Err("no connection".to_owned()),
        };
        let _ = exit_tx.send(());
        result.map(|()| None)
    });
    let io = SessionIo {
        output: SessionOutput::Pipe(out_rx),
        input: SessionInput::Pipe(in_tx),
        resize: Box::new(|_, _| {}),
        exited,
        echo_probe: Box::new(|| Some(false)),
        flags: Some(FlagLink {
            to_forwarder,
            from_forwarder,
        }),
    };
    Ok(Started { io, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn properties_are_read_strictly_with_clear_errors() {
        let r = request(
            &json!({"portNumber":"5432","host":"db.internal","type":"LocalPortForwarding"}),
        )
        .unwrap();
        assert_eq!(r.port, 5432);
        assert_eq!(r.host(), "db.internal");
        assert!(r.local_port_forwarding);
        let ssh = request(&json!({"portNumber":"22"})).unwrap();
        assert_eq!(
            (ssh.host(), ssh.local_port_forwarding),
            ("localhost", false)
        );
        assert_eq!(request(&json!({"portNumber": 80})).unwrap().port, 80);
        for (bad, says) in [
            (json!({}), "Port number is empty"),
            (json!({"portNumber":""}), "Port number is empty"),
            (json!({"portNumber":"0"}), "not a port number"),
            (json!({"portNumber":"70000"}), "not a port number"),
            (json!({"portNumber":"ssh"}), "not a port number"),
            (json!({"portNumber":["22"]}), "must be a string"),
            (json!({"portNumber":"22","host":"a b"}), "not a host name"),
            (json!(null), "needs properties"),
        ] {
            let e = request(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_mode_is_upstream_agents_choice() {
        let lpf = request(&json!({"portNumber":"80","type":"LocalPortForwarding"})).unwrap();
        let ssh = request(&json!({"portNumber":"22"})).unwrap();
        assert_eq!(mode(&lpf, "1.2.650.0"), Mode::Mux { keepalive: false });
        assert_eq!(mode(&lpf, "1.2.331.0"), Mode::Mux { keepalive: true });
        assert_eq!(mode(&lpf, "1.1.70"), Mode::Mux { keepalive: true });
        assert_eq!(mode(&lpf, "1.1.61.0"), Mode::Single { reconnect: true });
        assert_eq!(mode(&lpf, ""), Mode::Single { reconnect: true });
        assert_eq!(
            mode(&lpf, version::CLIENT_COMPAT_VERSION),
            Mode::Mux { keepalive: false }
        );
        assert_eq!(mode(&ssh, "1.2.650.0"), Mode::Single { reconnect: false });
    }

    #[tokio::test]
    async fn denied_addresses_are_refused_after_resolution() {
        let policy = PortPolicy::default();
        let req = |host: &str| PortRequest {
            host: Some(host.into()),
            port: 80,
            local_port_forwarding: true,
        };
        let e = resolve(&req("169.254.169.254"), &policy).await.unwrap_err();
        assert!(matches!(e, policy::Denial::Denied(_)), "{e}");
        let e = resolve(&req("::ffff:169.254.169.254"), &policy)
            .await
            .unwrap_err();
        assert!(matches!(e, policy::Denial::Denied(_)), "{e}");
        let ok = resolve(&req("127.0.0.1"), &policy).await.unwrap();
        assert_eq!(ok.addrs, vec!["127.0.0.1:80".parse().unwrap()]);
        let none = resolve(&req("no-such-host.invalid"), &policy)
            .await
            .unwrap();
        assert!(none.addrs.is_empty());
        let e = dial(&none).await.unwrap_err();
        assert!(e.contains("cannot resolve no-such-host.invalid"), "{e}");
        let off = PortPolicy {
            enabled: false,
            ..PortPolicy::default()
        };
        assert_eq!(
            resolve(&req("127.0.0.1"), &off).await.unwrap_err(),
            policy::Denial::Disabled
        );
    }
}
