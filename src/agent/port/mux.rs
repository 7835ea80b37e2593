//! Many TCP connections in one port session, multiplexed with smux v1 as upstream does
//! (`LocalPortForwarding` with a client at or above 1.1.70; protocol-sessions.md §2.5,
//! §2.6). The client opens a stream per local connection; each stream is one connection
//! from here to the destination.
//!
//! ```text
//!  pipe from pump ─▶ Mux (protocol::smux, server) ─Data─▶ stream queue ─▶ connection task ─▶ TCP
//!  pipe to pump   ◀─ Mux ◀─Data/Eof/Failed── events (bounded) ◀────────── connection task ◀─ TCP
//! ```
//!
//! Differences from upstream, on purpose: each connection is dialled in its own task,
//! so a slow dial does not hold up the session's other connections (upstream dials inside
//! its accept loop); the connections of one session are capped (the administrator's
//! `port_forwarding_max_connections`): one beyond the cap is refused (FIN, the
//! ConnectToPortError flag, an audit record). As upstream, a connection is closed
//! entirely when either direction ends (the plugin does the same on its side).
//!
//! Back-pressure, bounded in bytes: data for a connection waits in its queue
//! ([`STREAM_QUEUE`] frames of at most 64 KiB); when the queue is full, no more of the
//! client's bytes are read (the pipe fills, the pump stops acknowledging, the client
//! slows down) until it has room — smux v1 has no per-stream window, so one slow
//! destination holds up the session, as upstream. Destination bytes travel through one
//! bounded event queue ([`EVENTS`] reads of at most [`READ_CHUNK`]) and the Mux's output,
//! which is not added to beyond [`OUT_CAP`] while the pump is not taking it.

use super::{dial, Audit, Destination};
use crate::protocol::payload::flag;
use crate::protocol::smux::{Mux, MuxEvent, Role};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// Frames queued for one connection's destination.
pub(super) const STREAM_QUEUE: usize = 4;
/// Reads from destinations waiting to be multiplexed (all connections together).
pub(super) const EVENTS: usize = 32;
/// Bytes per read from a destination.
pub(super) const READ_CHUNK: usize = 32 * 1024;
/// Multiplexed output not yet taken by the pump beyond which nothing more is added.
pub(super) const OUT_CAP: usize = 256 * 1024;
/// Bytes per read of the client's stream.
const IN_CHUNK: usize = 32 * 1024;
/// Connections refused over the cap that are each recorded; beyond, they are counted and
/// recorded as one summary at the end (a client opening streams in a loop must not fill
/// the recording with refusals).
pub(super) const REFUSALS_RECORDED: u64 = 16;
/// smux keepalive interval (smux's default), for clients that expect it.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// What a connection task tells the multiplexer.
enum ConnEvent {
    /// Bytes from the destination.
    Data(u32, Bytes),
    /// The connection is over (or never was: `failed`).
    Done { sid: u32, failed: bool },
}

/// The multiplexer's handle on one connection.
struct Stream {
    /// `None` once the client closed its side (FIN): the connection task then ends.
    to_destination: Option<mpsc::Sender<Bytes>>,
}

/// Runs until the client's side ends (the pump dropped its pipe) or its stream is not
/// smux (the error).
pub(super) async fn run(
    dest: Destination,
    keepalive: bool,
    max_connections: usize,
    mut from_client: DuplexStream,
    mut to_client: DuplexStream,
    flags: mpsc::Sender<u32>,
    audit: Audit,
) -> Result<(), String> {
    let mut conns = tokio::task::JoinSet::new();
    let mut refused = 0u64;
    // Cancelled when the session is over: a connection blocked writing to a destination
    // that stopped reading closes (and records its close) instead of waiting forever.
    let over = tokio_util::sync::CancellationToken::new();
    let result = multiplex(
        &dest,
        keepalive,
        max_connections,
        &mut from_client,
        &mut to_client,
        &flags,
        &audit,
        &mut conns,
        &mut refused,
        &over,
    )
    .await;
    over.cancel();
    if refused > REFUSALS_RECORDED {
        let why = format!(
            "{} more connections refused as too many (port_forwarding_max_connections = {max_connections}), not recorded one by one",
            refused - REFUSALS_RECORDED
        );
        audit.denied(0, &why).await;
    }
    // The session is over: the connections' queues are closed (the multiplexer's state
    // is gone), so each connection ends, records its close, and is waited for.
    while conns.join_next().await.is_some() {}
    result
}

#[allow(clippy::too_many_arguments)] // the one loop and its I/O, named
async fn multiplex(
    dest: &Destination,
    keepalive: bool,
    max_connections: usize,
    from_client: &mut DuplexStream,
    to_client: &mut DuplexStream,
    flags: &mpsc::Sender<u32>,
    audit: &Audit,
    conns: &mut tokio::task::JoinSet<()>,
    refused: &mut u64,
    over: &tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    let mut mux = Mux::new(Role::Server, max_connections);
    let mut streams: HashMap<u32, Stream> = HashMap::new();
    let (events_tx, mut events) = mpsc::channel::<ConnEvent>(EVENTS);
    // The client's frames not yet handed on (a connection's queue was full).
    let mut backlog: VecDeque<MuxEvent> = VecDeque::new();
    let mut out = Bytes::new();
    let mut inbuf = vec![0u8; IN_CHUNK];
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Hand on what can be handed on without waiting.
        while let Some(event) = backlog.pop_front() {
            let ctx = Ctx {
                dest,
                audit,
                events: &events_tx,
                flags,
                max_connections,
                over,
            };
            match handle(event, &mut streams, &ctx, conns, refused) {
                Handled::Done => {}
                Handled::Full(event) => {
                    backlog.push_front(event);
                    break;
                }
            }
        }
        if out.is_empty() {
            out = mux.take_output();
        }
        let head_full = backlog.front().and_then(|e| match e {
            MuxEvent::Data(sid, _) => streams.get(sid).and_then(|s| s.to_destination.clone()),
            _ => None,
        });
        tokio::select! {
            written = to_client.write(&out), if !out.is_empty() => match written {
                Ok(n) => {
                    let _ = out.split_to(n);
                }
                Err(_) => return Ok(()),
            },
            // Nothing more is read while the client is not taking what is already due to
            // it (refusals queue a FIN each): the Mux's output stays bounded.
            read = from_client.read(&mut inbuf), if backlog.is_empty() && mux.pending_output() + out.len() < OUT_CAP => match read {
                Ok(n) if n > 0 => {
                    let found = mux
                        .receive(&inbuf[..n])
                        .map_err(|e| format!("the client's multiplexed stream is broken: {e}"))?;
                    backlog.extend(found);
                }
                // The session is ending: the connection tasks end with their queues.
                _ => return Ok(()),
            },
            permit = async { head_full.as_ref().expect("guarded").reserve().await }, if head_full.is_some() => {
                if let (Ok(permit), Some(MuxEvent::Data(_, bytes))) = (permit, backlog.pop_front()) {
                    permit.send(bytes);
                }
            }
            event = events.recv(), if mux.pending_output() + out.len() < OUT_CAP => match event {
                Some(ConnEvent::Data(sid, bytes)) => {
                    mux.write(sid, &bytes);
                }
                Some(ConnEvent::Done { sid, failed }) => {
                    streams.remove(&sid);
                    mux.close(sid);
                    if failed {
                        let _ = flags.try_send(flag::CONNECT_TO_PORT_ERROR);
                    }
                }
                None => {}
            },
            _ = tick.tick(), if keepalive => mux.nop(),
            // Finished connections are let go at once, not kept until the session ends.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Whether a client event was handed on.
enum Handled {
    Done,
    /// Its connection's queue is full: try again when it has room.
    Full(MuxEvent),
}

/// What handing on a client event needs.
struct Ctx<'a> {
    dest: &'a Destination,
    audit: &'a Audit,
    events: &'a mpsc::Sender<ConnEvent>,
    flags: &'a mpsc::Sender<u32>,
    max_connections: usize,
    over: &'a tokio_util::sync::CancellationToken,
}

fn handle(
    event: MuxEvent,
    streams: &mut HashMap<u32, Stream>,
    ctx: &Ctx<'_>,
    conns: &mut tokio::task::JoinSet<()>,
    refused: &mut u64,
) -> Handled {
    match event {
        MuxEvent::Opened(sid) => {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            streams.insert(
                sid,
                Stream {
                    to_destination: Some(tx),
                },
            );
            conns.spawn(connection(
                sid,
                ctx.dest.clone(),
                ctx.audit.clone(),
                rx,
                ctx.events.clone(),
                ctx.over.clone(),
            ));
        }
        MuxEvent::Data(sid, bytes) => {
            if let Some(tx) = streams.get(&sid).and_then(|s| s.to_destination.as_ref()) {
                match tx.try_send(bytes) {
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                    Err(mpsc::error::TrySendError::Full(bytes)) => {
                        return Handled::Full(MuxEvent::Data(sid, bytes));
                    }
                }
            }
        }
        MuxEvent::Closed(sid) => {
            // The client's connection ended: what is queued is written, then the
            // connection closes (and reports Done).
            if let Some(s) = streams.get_mut(&sid) {
                s.to_destination = None;
            }
        }
        MuxEvent::Refused(sid) => {
            // The Mux has sent its FIN already.
            *refused += 1;
            if *refused > REFUSALS_RECORDED {
                return Handled::Done;
            }
            let audit = ctx.audit.clone();
            let why = format!(
                "too many connections: this session may hold {} at once (port_forwarding_max_connections)",
                ctx.max_connections
            );
            conns.spawn(async move { audit.denied(sid, &why).await });
            let _ = ctx.flags.try_send(flag::CONNECT_TO_PORT_ERROR);
        }
    }
    Handled::Done
}

/// One connection: dialled, then bytes both ways until either side ends; recorded.
async fn connection(
    sid: u32,
    dest: Destination,
    audit: Audit,
    mut to_destination: mpsc::Receiver<Bytes>,
    events: mpsc::Sender<ConnEvent>,
    over: tokio_util::sync::CancellationToken,
) {
    let dialled = tokio::select! {
        r = dial(&dest) => r,
        () = over.cancelled() => Err("the session ended while connecting".to_owned()),
    };
    let tcp = match dialled {
        Ok(t) => t,
        Err(e) => {
            audit.failed(sid, &e).await;
            let _ = events.send(ConnEvent::Done { sid, failed: true }).await;
            return;
        }
    };
    let address = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let opened_ms = audit.now_ms();
    audit.opened(sid, &address).await;
    let (mut rd, mut wr) = tcp.into_split();
    let (mut sent, mut received) = (0u64, 0u64);
    let reason = {
        let writer = async {
            while let Some(bytes) = to_destination.recv().await {
                if let Err(e) = wr.write_all(&bytes).await {
                    return Some(format!("writing to the destination failed: {e}"));
                }
                sent += bytes.len() as u64;
            }
            None
        };
        let reader = async {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return None,
                    Ok(n) => {
                        received += n as u64;
                        let data = Bytes::copy_from_slice(&buf[..n]);
                        if events.send(ConnEvent::Data(sid, data)).await.is_err() {
                            return None;
                        }
                    }
                    Err(e) => return Some(format!("reading from the destination failed: {e}")),
                }
            }
        };
        // Either direction ending closes the connection, as upstream; so does the end
        // of the session.
        tokio::select! {
            r = writer => r,
            r = reader => r,
            () = over.cancelled() => None,
        }
    };
    // Delivered, or refused at once when the multiplexer is gone (its receiver dropped).
    let _ = events.send(ConnEvent::Done { sid, failed: false }).await;
    audit
        .closed(sid, &address, opened_ms, (sent, received), reason)
        .await;
}
