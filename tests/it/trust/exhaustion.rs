//! Issue 16, items 8 and 9: memory is bounded in bytes, and no caller, authenticated or
//! not, can exhaust the gateway for the others.
//!
//! The gateway and the agent run as their own processes here, so their memory and file
//! descriptors are theirs alone to measure.

use crate::recording::AgentProcess;
use crate::support::*;
use serde_json::json;
use session_agent::protocol::frame::PayloadType;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// 10,000 connections from one address, each sending half a request head and then
/// nothing, held: the gateway takes at most its per-address share, closes the rest at
/// once, cuts the ones it took after the head timeout, and meanwhile answers everyone
/// else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_cut_and_do_not_starve_other_callers() {
    let gp = GatewayProcess::start(&[]).await;
    let pid = gp.pid();
    let before = fds(pid);
    let mut held = Vec::new();
    for _ in 0..10_000 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let Ok(mut stream) = sock.connect(gp.gw.addr).await else {
            continue;
        };
        let _ = stream
            .write_all(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nX-Amz-Target: Amaz")
            .await;
        held.push(stream);
    }
    assert!(
        held.len() >= 9_000,
        "only {} connects went through",
        held.len()
    );
    // Everyone else is still served, at once.
    let started = tokio::time::Instant::now();
    let ok = gp
        .gw
        .http()
        .get(format!("{}/healthz", gp.gw.http_url()))
        .send()
        .await;
    assert_eq!(ok.unwrap().status().as_u16(), 200);
    gp.gw.api_ok("DescribeInstanceInformation", json!({})).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let during = fds(pid);
    assert!(
        during < before + 4_200,
        "the gateway holds {during} descriptors (from {before}): more than its per-address share"
    );
    // Past the head timeout every half-sent request has been cut.
    tokio::time::sleep(session_agent::gateway::limits::HEADER_TIMEOUT + Duration::from_secs(3))
        .await;
    let mut open = 0;
    for s in &mut held {
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(_)) => {} // an error answer, then the close
            Err(_) => open += 1,
        }
    }
    assert_eq!(open, 0, "{open} half-sent requests are still held open");
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        fds(pid) < before + 50,
        "descriptors not released: {}",
        fds(pid)
    );
}

/// 300 UpdateInstanceInformation calls with megabyte-sized strings, unsigned, for an
/// existing node and for new ones: refused, nothing stored, nothing overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_or_foreign_instance_information_is_refused() {
    let gp = GatewayProcess::start(&[]).await;
    let agent = AgentProcess::start(&gp.gw, "web-info").await;
    let pid = gp.pid();
    let base = status_kib(pid, "VmRSS:");
    let big = "x".repeat(1000 * 1000);
    let http = gp.gw.http();
    let url = format!("{}/", gp.gw.http_url());
    for i in 0..300 {
        let id = if i % 2 == 0 {
            "web-info".to_owned()
        } else {
            format!("flood-{i}")
        };
        let body =
            json!({"InstanceId": id, "ComputerName": big, "IPAddress": "6.6.6.6"}).to_string();
        let resp = http
            .post(&url)
            .header("x-amz-target", "AmazonSSM.UpdateInstanceInformation")
            .header("content-type", "application/x-amz-json-1.1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("ValidationException"),
            "{}",
            &text[..text.len().min(300)]
        );
    }
    // Small, well-formed, but not the node's own identity: refused too.
    let (s, v) = gp
        .gw
        .api(
            "UpdateInstanceInformation",
            json!({"InstanceId": "web-info", "ComputerName": "evil", "IPAddress": "6.6.6.6"}),
        )
        .await;
    assert_eq!(
        (s, v["__type"].as_str()),
        (400, Some("AccessDeniedException")),
        "{v}"
    );
    let nodes = gp.gw.api_ok("DescribeInstanceInformation", json!({})).await;
    let list = nodes["InstanceInformationList"].as_array().unwrap();
    assert_eq!(list.len(), 1, "flood nodes were registered: {nodes}");
    assert_ne!(list[0]["ComputerName"], "evil");
    assert_ne!(list[0]["IPAddress"], "6.6.6.6");
    let grown = status_kib(pid, "VmHWM:").saturating_sub(base);
    assert!(grown < 48 * MIB, "the gateway grew by {grown} KiB");
    drop(agent);
}

/// One caller asks for channel tokens as fast as it can (three times the per-caller
/// quota; beyond the quota every request is refused the same way, so 3,000 shows what
/// 100,000 would); another caller's node and session still get theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_flood_by_one_caller_does_not_starve_another() {
    let gp = GatewayProcess::start(&[]).await;
    let agent = AgentProcess::start(&gp.gw, "web-tok").await;
    let flood = ("AKIDFLOODER", "x");
    let mut throttled = 0;
    let mut issued = 0;
    for chunk in (0..3000).collect::<Vec<_>>().chunks(50) {
        let calls = chunk.iter().map(|i| {
            let gw = &gp.gw;
            async move {
                let (path, body) = (format!("/v1/control-channel/flood-{i}"), create_body(None));
                gw.create_channel_as(flood, &path, &body).await
            }
        });
        for (status, body) in futures_util::future::join_all(calls).await {
            match status {
                201 => issued += 1,
                429 => {
                    assert!(body.contains("ThrottlingException"), "{body}");
                    throttled += 1;
                }
                other => panic!("{other}: {body}"),
            }
        }
    }
    assert_eq!(issued, 1000, "the per-caller quota");
    assert_eq!(throttled, 2000);
    // Another caller: a session on a node whose agent needs fresh tokens to serve it.
    let (_sid, mut client) = open_shell(&gp.gw, "web-tok").await;
    client.type_text("echo served-$((6*7))\r").await;
    client.expect("served-42").await;
    drop(agent);
}

/// Megabyte input frames into a shell that is not reading (`sleep`), in three sessions:
/// the agent and the gateway hold a bounded number of bytes, not frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_floods_cost_bytes_within_the_documented_bounds() {
    // A gateway that lets 4 MiB frames through (as a gateway we do not control may):
    // the agent must bound them itself.
    let gp = GatewayProcess::start(&["--max-frame-bytes", "4194304"]).await;
    let agent = AgentProcess::start(&gp.gw, "web-mem").await;
    let (apid, gpid) = (agent.pid(), gp.pid());
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (_sid, mut client) = open_shell(&gp.gw, "web-mem").await;
        client.type_text("sleep 60\r").await;
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a0, g0) = (status_kib(apid, "VmRSS:"), status_kib(gpid, "VmRSS:"));
    let chunk = vec![b'x'; 250 * 1024];
    let junk = vec![b'x'; 4 * 1024 * 1024 - 200];
    for client in &mut clients {
        // In sequence, as a paste would come: the agent takes what its input queue holds
        // (1 MiB) and leaves the rest unacknowledged...
        for _ in 0..200 {
            client.send_input(PayloadType::Output, &chunk).await;
        }
        // ...and a frame larger than a data channel carries (256 KiB) closes the
        // agent's socket rather than being buffered (the agent reopens it).
        for _ in 0..96 {
            client.send_input(PayloadType::Output, &junk).await;
        }
    }
    // Let both daemons take it all in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agent_grew = status_kib(apid, "VmHWM:").saturating_sub(a0);
    let gateway_grew = status_kib(gpid, "VmHWM:").saturating_sub(g0);
    // Per session the agent holds at most its 1 MiB input queue, the chunk being
    // written, 1 MiB of out-of-order input and one 256 KiB message being read (about
    // 3 MiB); the gateway per session 2 MiB queued per socket, 1 MiB pending per side,
    // and per socket a message being read and one being written (4 MiB each here), in
    // all about 20 MiB (the README's security model has the formula).
    assert!(
        agent_grew < 24 * MIB,
        "the agent grew by {agent_grew} KiB for 1.3 GB sent"
    );
    assert!(
        gateway_grew < 72 * MIB,
        "the gateway grew by {gateway_grew} KiB for 1.3 GB sent"
    );
    // And the agent still serves.
    let (_sid, mut client) = open_shell(&gp.gw, "web-mem").await;
    client.type_text("echo alive-$((6*7))\r").await;
    client.expect("alive-42").await;
    drop(agent);
}
