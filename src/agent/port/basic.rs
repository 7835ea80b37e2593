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

/// One open connection and its counts.
struct Open {
    tcp: TcpStream,
    conn: u32,
    address: String,
    opened_ms: u64,
    to_destination: u64,
    from_destination: u64,
}

impl Open {
    async fn close(self, audit: &Audit, reason: Option<String>) {
        audit
            .closed(
                self.conn,
                &self.address,
                self.opened_ms,
                (self.to_destination, self.from_destination),
                reason,
            )
            .await;
    }
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
    let mut open = Some(Open {
        address: peer(&first),
        tcp: first,
        conn: conn_no,
        opened_ms: audit.now_ms(),
        to_destination: 0,
        from_destination: 0,
    });
    let (mut inbuf, mut outbuf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut flags_open = true;
    loop {
        let Some(conn) = open.as_mut() else {
            // Disconnected: the next bytes from the client dial again.
            tokio::select! {
                n = from_client.read(&mut inbuf) => {
                    let n = match n { Ok(0) | Err(_) => return Ok(()), Ok(n) => n };
                    conn_no += 1;
                    let tcp = match super::dial(&dest).await {
                        Ok(t) => t,
                        Err(e) => {
                            audit.failed(conn_no, &e).await;
                            return Err(format!("Unable to connect to specified port: {e}"));
                        }
                    };
                    let mut c = Open {
                        address: peer(&tcp),
                        tcp,
                        conn: conn_no,
                        opened_ms: audit.now_ms(),
                        to_destination: 0,
                        from_destination: 0,
                    };
                    audit.opened(c.conn, &c.address).await;
                    if let Err(e) = c.tcp.write_all(&inbuf[..n]).await {
                        c.close(&audit, Some(e.to_string())).await;
                        continue;
                    }
                    c.to_destination += n as u64;
                    open = Some(c);
                }
                f = flags.recv(), if flags_open => if f.is_none() { flags_open = false },
            }
            continue;
        };
        let step = {
            let (mut rd, mut wr) = conn.tcp.split();
            tokio::select! {
                n = from_client.read(&mut inbuf) => match n {
                    Ok(0) | Err(_) => {
                        let _ = wr.shutdown().await;
                        Step::ClientEnded
                    }
                    Ok(n) => match wr.write_all(&inbuf[..n]).await {
                        Ok(()) => {
                            conn.to_destination += n as u64;
                            Step::Went
                        }
                        Err(e) => Step::DestinationEnded(Some(format!(
                            "writing to the destination failed: {e}"
                        ))),
                    },
                },
                n = rd.read(&mut outbuf) => match n {
                    Ok(n) if n > 0 => {
                        if to_client.write_all(&outbuf[..n]).await.is_err() {
                            Step::ClientEnded
                        } else {
                            conn.from_destination += n as u64;
                            Step::Went
                        }
                    }
                    Ok(_) => Step::DestinationEnded(None),
                    Err(e) => Step::DestinationEnded(Some(format!(
                        "reading from the destination failed: {e}"
                    ))),
                },
                f = flags.recv(), if flags_open => match f {
                    Some(flag::DISCONNECT_TO_PORT) if reconnect => Step::Disconnect,
                    Some(_) => Step::Went,
                    None => {
                        flags_open = false;
                        Step::Went
                    }
                },
            }
        };
        match step {
            Step::Went => {}
            Step::ClientEnded => {
                if let Some(c) = open.take() {
                    c.close(&audit, None).await;
                }
                return Ok(());
            }
            Step::DestinationEnded(reason) => {
                if let Some(c) = open.take() {
                    c.close(&audit, reason).await;
                }
                if !reconnect {
                    // The destination ended the stream (sshd closed): the session ends.
                    return Ok(());
                }
            }
            Step::Disconnect => {
                if let Some(c) = open.take() {
                    c.close(&audit, Some("the client's local connection ended".into()))
                        .await;
                }
            }
        }
    }
}

/// What one turn of the connected loop did.
enum Step {
    /// Bytes moved (or nothing to do).
    Went,
    /// The client's side ended: the session is ending.
    ClientEnded,
    /// The destination closed or failed (why, when it failed).
    DestinationEnded(Option<String>),
    /// The client's DisconnectToPort flag.
    Disconnect,
}

fn peer(tcp: &TcpStream) -> String {
    tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default()
}
