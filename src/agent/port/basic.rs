//! One TCP connection carried over the data channel (protocol-sessions.md §2.7, §2.8):
//! older clients' `LocalPortForwarding`, and standard-stream forwarding (ssh's
//! ProxyCommand with `AWS-StartSSHSession`, whose properties have no `type`).
//!
//! The destination is dialled when the session starts. With `reconnect`
//! (`LocalPortForwarding`), the client's DisconnectToPort flag or the destination
//! closing ends only that connection, and the next bytes from the client dial again, as
//! upstream does (so a second local connection to a server-speaks-first service waits
//! for the client to speak, as it does with upstream). Without it, the destination
//! closing ends the session (`ssh` disconnected).
//!
//! The two directions of a connection run as two futures at once, so a destination
//! that writes before it reads (or a client that does) never holds up the other way;
//! the session's end (the pump dropping the flag channel it holds for the session's
//! life) ends both, so a destination that stops reading cannot keep the forwarder (and
//! the connection's audit record) from closing.
//!
//! Back-pressure: each side is read only after what was read from it was written to the
//! other, so a slow destination stops the client's bytes being taken (the pipe from the
//! pump fills, the pump stops acknowledging) and a slow client stops the destination's
//! (the pipe to the pump fills): memory is the two pipes and one buffer each way.

use super::{Audit, Destination};
use crate::protocol::payload::flag;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Bytes per read, each way.
const CHUNK: usize = 32 * 1024;

/// How one connection ended.
enum End {
    /// The client's side ended: the session is over.
    SessionOver,
    /// The destination closed or failed (why, when it failed).
    Destination(Option<String>),
    /// The client's DisconnectToPort flag.
    Disconnect,
}

/// Runs until the client's side ends (the pump dropped its pipe), the destination ends
/// a non-reconnecting session, or a re-dial fails (the error).
pub(super) async fn run(
    dest: Destination,
    first: TcpStream,
    reconnect: bool,
    mut from_client: DuplexStream,
    mut to_client: DuplexStream,
    mut flags: mpsc::Receiver<u32>,
    audit: Audit,
) -> Result<(), String> {
    let mut conn_no = 1;
    let mut tcp = Some(first);
    // Bytes from the client that open the next connection (after a disconnect).
    let mut pending: Vec<u8> = Vec::new();
    let mut inbuf = vec![0u8; CHUNK];
    let mut flags_open = true;
    loop {
        let Some(conn) = tcp.take() else {
            // Disconnected: the next bytes from the client dial again.
            tokio::select! {
                n = from_client.read(&mut inbuf) => {
                    let n = match n { Ok(0) | Err(_) => return Ok(()), Ok(n) => n };
                    conn_no += 1;
                    match super::dial(&dest).await {
                        Ok(t) => {
                            pending = inbuf[..n].to_vec();
                            tcp = Some(t);
                        }
                        Err(e) => {
                            audit.failed(conn_no, &e).await;
                            return Err(format!("Unable to connect to specified port: {e}"));
                        }
                    }
                }
                f = flags.recv(), if flags_open => if f.is_none() {
                    // The session is over (see `carry`).
                    return Ok(());
                },
            }
            continue;
        };
        let address = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let opened_ms = audit.now_ms();
        if conn_no > 1 {
            audit.opened(conn_no, &address).await;
        }
        let (end, counts) = carry(
            conn,
            std::mem::take(&mut pending),
            reconnect,
            &mut from_client,
            &mut to_client,
            &mut flags,
            &mut flags_open,
            &mut inbuf,
        )
        .await;
        let reason = match &end {
            End::SessionOver => None,
            End::Destination(why) => why.clone(),
            End::Disconnect => Some("the client's local connection ended".into()),
        };
        audit
            .closed(conn_no, &address, opened_ms, counts, reason)
            .await;
        match end {
            End::SessionOver => return Ok(()),
            // The destination ended the stream (sshd closed): the session ends.
            End::Destination(_) if !reconnect => return Ok(()),
            End::Destination(_) | End::Disconnect => {}
        }
    }
}

/// Carries one connection both ways at once until one side ends it; how, and the bytes
/// (to the destination, from it).
#[allow(clippy::too_many_arguments)] // one connection's whole world
async fn carry(
    conn: TcpStream,
    first: Vec<u8>,
    reconnect: bool,
    from_client: &mut DuplexStream,
    to_client: &mut DuplexStream,
    flags: &mut mpsc::Receiver<u32>,
    flags_open: &mut bool,
    inbuf: &mut [u8],
) -> (End, (u64, u64)) {
    let (mut rd, mut wr) = conn.into_split();
    let (mut sent, mut received) = (0u64, 0u64);
    let end = {
        let up = async {
            if !first.is_empty() {
                if let Err(e) = wr.write_all(&first).await {
                    return End::Destination(Some(format!(
                        "writing to the destination failed: {e}"
                    )));
                }
                sent += first.len() as u64;
            }
            loop {
                let n = match from_client.read(inbuf).await {
                    Ok(0) | Err(_) => {
                        let _ = wr.shutdown().await;
                        return End::SessionOver;
                    }
                    Ok(n) => n,
                };
                if let Err(e) = wr.write_all(&inbuf[..n]).await {
                    return End::Destination(Some(format!(
                        "writing to the destination failed: {e}"
                    )));
                }
                sent += n as u64;
            }
        };
        let down = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return End::Destination(None),
                    Ok(n) => {
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            return End::SessionOver;
                        }
                        received += n as u64;
                    }
                    Err(e) => {
                        return End::Destination(Some(format!(
                            "reading from the destination failed: {e}"
                        )))
                    }
                }
            }
        };
        let flagged = async {
            loop {
                if !*flags_open {
                    return std::future::pending().await;
                }
                match flags.recv().await {
                    Some(flag::DISCONNECT_TO_PORT) if reconnect => return End::Disconnect,
                    Some(_) => {}
                    // The pump holds the other end for the session's life: it is over,
                    // even if a write to a destination that stopped reading never returns.
                    None => {
                        *flags_open = false;
                        return End::SessionOver;
                    }
                }
            }
        };
        tokio::select! {
            e = up => e,
            e = down => e,
            e = flagged => e,
        }
    };
    (end, (sent, received))
}
