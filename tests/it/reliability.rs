//! The reliability state machine driving real frames through the gateway: the agent
//! "loses" some frames on first send, and retransmission plus the client's reorder
//! buffer still deliver every byte exactly once, in order; acks travel end to end.

use crate::support::*;
use bytes::Bytes;
use session_agent::gateway::GatewayConfig;
use session_agent::protocol::frame::{AgentMessage, MessageType, PayloadType, FLAG_SYN};
use session_agent::protocol::payload::{from_json, Acknowledge};
use session_agent::protocol::reliability::{
    ReceiveOutcome, Receiver, ReceiverConfig, Sender, SenderConfig,
};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[tokio::test]
async fn retransmission_and_reordering_deliver_every_chunk_once_in_order() {
    let gw = Gateway::start(GatewayConfig::default()).await;
    let agent = ScriptedAgent::connect(&gw, "host-rel").await.unwrap();
    let (sid, token, url) = start_session(&gw, "host-rel").await;
    let mut client = client_connect(&gw, &url, &token).await;
    let mut data = agent.open_data(&gw, &sid).await.unwrap();

    const N: i64 = 300;
    let mut sender = Sender::new(SenderConfig::default());
    let mut receiver: Receiver<Bytes> = Receiver::new(ReceiverConfig::default());
    let mut delivered: Vec<Bytes> = Vec::new();
    let mut dropped_first_time = 0;
    for _ in 0..N {
        let seq = sender.next_sequence();
        let msg = AgentMessage::new(
            MessageType::OutputStreamData,
            PayloadType::Output,
            format!("chunk {seq:04}\n"),
            now_ms(),
            Uuid::new_v4(),
        )
        .with_sequence(seq, if seq == 0 { FLAG_SYN } else { 0 });
        let frame = msg.encode().unwrap();
        sender.push(seq, msg.message_id, frame.clone(), Instant::now());
        // Every 7th frame is "lost" on its first transmission.
        if seq % 7 == 3 {
            dropped_first_time += 1;
        } else {
            data.send_raw(frame).await;
        }
    }
    assert!(dropped_first_time > 40);

    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered.len() < usize::try_from(N).unwrap() || !sender.is_empty() {
        assert!(
            Instant::now() < deadline,
            "stalled: delivered {} unacked {}",
            delivered.len(),
            sender.len()
        );
        // Client side: receive output, ack what the receiver accepts.
        if let Ok(Event::Frame(m, _)) =
            tokio::time::timeout(Duration::from_millis(20), client.next_event()).await
        {
            if m.message_type == MessageType::OutputStreamData {
                match receiver.on_frame(m.sequence_number, m.payload.clone()) {
                    ReceiveOutcome::Deliver { items } => {
                        delivered.extend(items);
                        client.send_raw(ack_for(&m)).await;
                    }
                    ReceiveOutcome::Buffered | ReceiveOutcome::Duplicate => {
                        client.send_raw(ack_for(&m)).await
                    }
                    ReceiveOutcome::Full => {}
                }
            }
        }
        // Agent side: apply acks that arrived, retransmit what is due.
        while let Ok(Event::Frame(m, _)) =
            tokio::time::timeout(Duration::from_millis(1), data.next_event()).await
        {
            if m.message_type == MessageType::Acknowledge {
                let ack: Acknowledge = from_json(&m.payload, "acknowledge").unwrap();
                sender.on_ack(ack.acknowledged_message_sequence_number, Instant::now());
            }
        }
        if let Some(frame) = sender.poll_retransmit(Instant::now()) {
            data.send_raw(frame).await;
        }
    }
    let expected: Vec<Bytes> = (0..N)
        .map(|i| Bytes::from(format!("chunk {i:04}\n")))
        .collect();
    assert_eq!(delivered, expected);
    assert!(sender.is_empty());
    gw.stop().await;
}
