//! Security review of port sessions: tests that pinned bugs found in review (each fixed;
//! its doc says what it was) and properties worth keeping. Unit tests, for access to the
//! forwarders themselves.

use super::policy::{parse_networks, Denial, PortPolicy};
use super::*;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

fn req(host: &str, port: u16) -> PortRequest {
    PortRequest {
        host: Some(host.into()),
        port,
        local_port_forwarding: true,
    }
}

fn syn(sid: u32) -> [u8; 8] {
    let s = sid.to_le_bytes();
    [1, 0, 0, 0, s[0], s[1], s[2], s[3]]
}

fn fin(sid: u32) -> [u8; 8] {
    let s = sid.to_le_bytes();
    [1, 1, 0, 0, s[0], s[1], s[2], s[3]]
}

/// Found in review, fixed (policy bypass). An administrator who denies loopback
/// (`port_forwarding_denied_cidrs = 127.0.0.0/8, ::1`) still lets a document reach
/// loopback with `host: "0.0.0.0"`, `"0"` or `"::"`: the unspecified address passes the
/// check, and on Linux (and macOS) connecting to it reaches the local host.
#[tokio::test]
async fn unspecified_addresses_never_reach_a_denied_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let policy = PortPolicy {
        denied: [
            PortPolicy::default().denied,
            parse_networks(&["127.0.0.0/8", "::1/128"]).unwrap(),
        ]
        .concat(),
        ..PortPolicy::default()
    };
    // What holds: every spelling of loopback that resolves to it is denied.
    for host in [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "localhost",
        "::ffff:127.0.0.1",
    ] {
        let r = resolve(&req(host, port), &policy).await;
        assert!(matches!(r, Err(Denial::Denied(_))), "{host}: {r:?}");
    }
    let mut reached = Vec::new();
    for host in ["0.0.0.0", "0"] {
        if let Ok(dest) = resolve(&req(host, port), &policy).await {
            if let Ok(s) = dial(&dest).await {
                reached.push(format!("{host} -> {:?}", s.peer_addr()));
            }
        }
    }
    assert!(
        reached.is_empty(),
        "a denied loopback listener was reached through: {reached:?}"
    );
}

/// Found in review, fixed (unbounded memory). A multiplexed session's client that never acknowledges
/// output (so the pump stops reading the forwarder's pipe) and sends SYNs beyond the
/// connection cap: each refused SYN queues an 8-byte FIN in the Mux's output, and the
/// client's bytes keep being read (the read branch is gated only on the backlog, not on
/// `OUT_CAP`), so the agent holds as many bytes as the client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_syns_do_not_grow_the_mux_output_without_bound() {
    let dest = Destination {
        host: "127.0.0.1".into(),
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
        unresolved: None,
    };
    let (mut client_w, from_client) = tokio::io::duplex(PIPE_BYTES);
    // The pump's end: never read (the client never acknowledges).
    let (to_client, _pump_end) = tokio::io::duplex(PIPE_BYTES);
    let (flags_tx, _flags_rx) = mpsc::channel(16);
    let audit = Audit::new(None, &req("127.0.0.1", 9), "review");
    let task = tokio::spawn(mux::run(
        dest,
        false,
        1,
        from_client,
        to_client,
        flags_tx,
        audit,
    ));
    // 32 MiB of SYNs for fresh ids (beyond the cap of 1 after the first).
    let mut chunk = Vec::with_capacity(64 * 1024);
    let mut sid = 3u32;
    let mut taken = 0usize;
    let target = 32 * 1024 * 1024;
    while taken < target {
        chunk.clear();
        while chunk.len() < 64 * 1024 {
            chunk.extend_from_slice(&syn(sid));
            sid += 2;
        }
        match tokio::time::timeout(Duration::from_secs(3), client_w.write_all(&chunk)).await {
            Ok(Ok(())) => taken += chunk.len(),
            _ => break,
        }
    }
    task.abort();
    // Bounded: the pipes (2 x 256 KiB) and OUT_CAP, plus a little; the rest waits in
    // the client (back-pressure), not in the agent.
    assert!(
        taken < 4 * 1024 * 1024,
        "the forwarder took {taken} bytes of SYNs while nothing it wrote was read"
    );
}

/// Found in review, fixed (unbounded memory over a session's life). Every connection of a multiplexed
/// session is spawned into a `JoinSet` that is only joined when the session ends, so each
/// finished connection's task (its whole future's size) stays allocated until then: a
/// long session, or a client opening and closing streams in a loop, grows without bound
/// although never more than the cap is open at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_connections_are_let_go_during_the_session() {
    // A destination that accepts and closes at once (a short connection).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let dest = Destination {
        host: "127.0.0.1".into(),
        addrs: vec![addr],
        unresolved: None,
    };
    let (mut client_w, from_client) = tokio::io::duplex(PIPE_BYTES);
    let (to_client, mut pump_end) = tokio::io::duplex(PIPE_BYTES);
    // The client reads everything (well behaved); FINs from the agent are counted.
    let fins = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = fins.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut dec = crate::protocol::smux::Decoder::new();
        loop {
            let n = match pump_end.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut input = &buf[..n];
            while let Ok(Some(f)) = dec.decode(&mut input) {
                if f.cmd == crate::protocol::smux::Cmd::Fin {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let (flags_tx, mut flags_rx) = mpsc::channel(16);
    tokio::spawn(async move { while flags_rx.recv().await.is_some() {} });
    let audit = Audit::new(None, &req("127.0.0.1", addr.port()), "review");
    let task = tokio::spawn(mux::run(
        dest,
        false,
        64,
        from_client,
        to_client,
        flags_tx,
        audit,
    ));
    // Connections in batches of 50, each batch waited for: never more than 50 open.
    let mut sid = 3u32;
    // 20,000 short connections, never more than 50 open: every one is closed (FIN)
    // while the session goes on, and the session is still healthy at the end. (Each
    // finished connection's task is let go at once, by construction: the multiplexer's
    // loop joins finished tasks; this test exercises that path.)
    let mut done = 0;
    for _ in 0..400 {
        done += 50;
        open_and_wait(&mut client_w, &fins, frames(50, &mut sid), done).await;
    }
    assert!(!task.is_finished(), "the session ended");
    task.abort();
}

fn frames(n: usize, sid: &mut u32) -> Vec<u8> {
    let mut frames = Vec::new();
    for _ in 0..n {
        frames.extend_from_slice(&syn(*sid));
        frames.extend_from_slice(&fin(*sid));
        *sid += 2;
    }
    frames
}

async fn open_and_wait(
    client_w: &mut tokio::io::DuplexStream,
    fins: &std::sync::atomic::AtomicUsize,
    frames: Vec<u8>,
    want: usize,
) {
    client_w.write_all(&frames).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while fins.load(Ordering::Relaxed) < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections did not finish"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Found in review, fixed (hang). One-connection mode (`AWS-StartSSHSession`, old clients) moves one
/// direction at a time: while it waits to write the client's bytes to the destination it
/// does not read the destination. A destination that sends a lot before it reads (or any
/// that writes while the client is writing, once the kernel's buffers are full)
/// deadlocks the session: neither direction ever moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_mode_moves_both_directions_at_once() {
    const EACH_WAY: usize = 32 * 1024 * 1024;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The destination: sends EACH_WAY bytes, then reads EACH_WAY bytes.
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let block = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < EACH_WAY {
            s.write_all(&block).await.unwrap();
            sent += block.len();
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < EACH_WAY {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got += n;
        }
        got
    });
    let dest = Destination {
        host: "127.0.0.1".into(),
        addrs: vec![addr],
        unresolved: None,
    };
    let first = dial(&dest).await.unwrap();
    let (mut client_w, from_client) = tokio::io::duplex(PIPE_BYTES);
    let (to_client, mut client_r) = tokio::io::duplex(PIPE_BYTES);
    let (_flags_tx, flags_rx) = mpsc::channel(16);
    let audit = Audit::new(None, &req("127.0.0.1", addr.port()), "review");
    let fwd = tokio::spawn(basic::run(
        dest,
        first,
        false,
        from_client,
        to_client,
        flags_rx,
        audit,
    ));
    // The client: writes and reads at the same time, as a socket does.
    let writer = tokio::spawn(async move {
        let block = vec![9u8; 64 * 1024];
        let mut sent = 0;
        while sent < EACH_WAY {
            client_w.write_all(&block).await.unwrap();
            sent += block.len();
        }
        client_w
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < EACH_WAY {
            let n = client_r.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got += n;
        }
        got
    });
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        (reader.await.unwrap(), server.await.unwrap())
    })
    .await;
    fwd.abort();
    writer.abort();
    assert!(
        all.is_ok(),
        "deadlock: neither the client's {EACH_WAY} bytes nor the destination's arrived within 60 s"
    );
}

/// PASSES (pinned): the multiplexed mode does not have that deadlock (each connection's
/// two directions are separate futures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_mode_moves_both_directions_at_once() {
    const EACH_WAY: usize = 16 * 1024 * 1024;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let block = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < EACH_WAY {
            s.write_all(&block).await.unwrap();
            sent += block.len();
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < EACH_WAY {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got += n;
        }
        got
    });
    let dest = Destination {
        host: "127.0.0.1".into(),
        addrs: vec![addr],
        unresolved: None,
    };
    let (mut client_w, from_client) = tokio::io::duplex(PIPE_BYTES);
    let (to_client, mut client_r) = tokio::io::duplex(PIPE_BYTES);
    let (flags_tx, _flags_rx) = mpsc::channel(16);
    let audit = Audit::new(None, &req("127.0.0.1", addr.port()), "review");
    let fwd = tokio::spawn(mux::run(
        dest,
        false,
        8,
        from_client,
        to_client,
        flags_tx,
        audit,
    ));
    let writer = tokio::spawn(async move {
        client_w.write_all(&syn(3)).await.unwrap();
        let data = vec![9u8; 32 * 1024];
        let mut sent = 0;
        while sent < EACH_WAY {
            let mut frame = vec![1u8, 2, 0, 0x80, 3, 0, 0, 0];
            frame.extend_from_slice(&data);
            client_w.write_all(&frame).await.unwrap();
            sent += data.len();
        }
        client_w
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut dec = crate::protocol::smux::Decoder::new();
        let mut got = 0;
        while got < EACH_WAY {
            let n = client_r.read(&mut buf).await.unwrap();
            assert!(n > 0);
            let mut input = &buf[..n];
            while let Some(f) = dec.decode(&mut input).unwrap() {
                got += f.data.len();
            }
        }
        got
    });
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        (reader.await.unwrap(), server.await.unwrap())
    })
    .await;
    fwd.abort();
    writer.abort();
    assert!(all.is_ok(), "the multiplexed mode deadlocked too");
}
