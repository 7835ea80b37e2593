//! Benchmarks of the data-channel wire path: the AgentMessage frame codec
//! (`protocol::frame`), the JSON payloads sent with every stream frame
//! (`protocol::payload`), and the reliability layer's bookkeeping
//! (`protocol::reliability`).
//!
//! Why these sizes: upstream's agent and client send stream data in frames of at most
//! 1 KiB of payload; our agent reads the PTY in 16 KiB chunks (`agent::session::CHUNK`)
//! and sends each as one frame, and 64 KiB stands for a client with bigger chunks (any
//! size up to `DEFAULT_MAX_FRAME_LEN` is accepted). Both directions hash every non-empty
//! payload with SHA-256, so the `sha256` group shows how much of a frame's cost is the
//! digest alone.
//!
//! Throughput is in wire bytes (the 120-byte header plus the payload). Encoding refuses
//! an empty payload, so its smallest case is a 1-byte payload (a keystroke); decoding is
//! measured on a header-only frame too. Every stream frame is answered by an
//! `acknowledge` frame, so the `payload` group measures building and reading one.
//!
//! Run with `cargo bench --bench codec`; `cargo test --benches` runs each case once.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use session_agent::protocol::frame::{
    AgentMessage, MessageType, PayloadType, DEFAULT_MAX_FRAME_LEN, PREFIX_LEN,
};
use session_agent::protocol::payload::{from_json, to_json, Acknowledge, AgentTaskPayload, Size};
use session_agent::protocol::reliability::{
    ReceiveOutcome, Receiver, ReceiverConfig, Sender, SenderConfig,
};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::time::{Duration, Instant};
use uuid::Uuid;

const KIB: usize = 1024;
/// Payload sizes decoded: header only, upstream's frame, our chunk, a large client chunk.
const DECODE_SIZES: [usize; 4] = [0, KIB, 16 * KIB, 64 * KIB];
/// Payload sizes encoded: as above, but encoding refuses an empty payload.
const ENCODE_SIZES: [usize; 4] = [1, KIB, 16 * KIB, 64 * KIB];
const CREATED: u64 = 1_763_000_000_000;
/// Frames in flight (reliability group).
const WINDOW: i64 = 64;

/// Terminal-like payload bytes (the content does not change the cost; SHA-256 and the
/// copies are data-independent).
fn payload(len: usize) -> Vec<u8> {
    const TEXT: &[u8] = b"drwxr-xr-x  2 ssm-user ssm-user 4096 Nov 21 07:09 session-agent\r\n";
    TEXT.iter().copied().cycle().take(len).collect()
}

fn message(len: usize, seq: i64) -> AgentMessage {
    AgentMessage::new(
        MessageType::OutputStreamData,
        PayloadType::Output,
        payload(len),
        CREATED,
        Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
    )
    .with_sequence(seq, 0)
}

/// An encoded frame with `len` payload bytes. A header-only frame cannot be encoded, so
/// for 0 it is a 1-byte frame cut to its header with PayloadLength set to 0 (the digest
/// is not checked for an empty payload).
fn frame(len: usize) -> Bytes {
    let Ok(encoded) = message(len.max(1), 7).encode() else {
        unreachable!("a non-empty stream frame encodes");
    };
    if len > 0 {
        return encoded;
    }
    let mut header = encoded[..PREFIX_LEN].to_vec();
    header[116..120].copy_from_slice(&0u32.to_be_bytes());
    Bytes::from(header)
}

fn wire_bytes(len: usize) -> Throughput {
    Throughput::Bytes((PREFIX_LEN + len) as u64)
}

fn frame_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame/encode");
    for len in ENCODE_SIZES {
        let msg = message(len, 7);
        group.throughput(wire_bytes(len));
        group.bench_with_input(BenchmarkId::from_parameter(len), &msg, |b, msg| {
            b.iter(|| black_box(msg).encode());
        });
    }
    group.finish();

    let mut group = c.benchmark_group("frame/decode");
    for len in DECODE_SIZES {
        let bytes = frame(len);
        assert!(AgentMessage::decode(&bytes, DEFAULT_MAX_FRAME_LEN).is_ok());
        group.throughput(wire_bytes(len));
        group.bench_with_input(BenchmarkId::from_parameter(len), &bytes, |b, bytes| {
            b.iter(|| AgentMessage::decode(black_box(bytes), DEFAULT_MAX_FRAME_LEN));
        });
    }
    group.finish();

    // What the sender does per chunk: build the message around the PTY bytes and encode.
    let mut group = c.benchmark_group("frame/new_and_encode");
    for len in ENCODE_SIZES {
        let data = Bytes::from(payload(len));
        group.throughput(wire_bytes(len));
        group.bench_with_input(BenchmarkId::from_parameter(len), &data, |b, data| {
            let mut seq = 0i64;
            b.iter(|| {
                seq += 1;
                AgentMessage::new(
                    MessageType::OutputStreamData,
                    PayloadType::Output,
                    data.clone(),
                    CREATED,
                    Uuid::from_u128(u128::from(seq.unsigned_abs())),
                )
                .with_sequence(seq, 0)
                .encode()
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("sha256");
    for len in ENCODE_SIZES {
        let data = payload(len);
        group.throughput(wire_bytes(len));
        group.bench_with_input(BenchmarkId::from_parameter(len), &data, |b, data| {
            b.iter(|| Sha256::digest(black_box(data)));
        });
    }
    group.finish();
}

fn payloads(c: &mut Criterion) {
    let mut group = c.benchmark_group("payload");
    let received = message(16 * KIB, 42);
    let ack = Acknowledge::of(&received);
    let ack_json = to_json(&ack);
    group.bench_function("acknowledge/to_json", |b| {
        b.iter(|| to_json(&Acknowledge::of(black_box(&received))));
    });
    group.bench_function("acknowledge/from_json", |b| {
        b.iter(|| from_json::<Acknowledge>(black_box(&ack_json), "acknowledge"));
    });
    // The receiver's whole answer to a stream frame: payload, frame, encoding.
    group.bench_function("acknowledge/frame_encode", |b| {
        b.iter(|| Acknowledge::frame_for(black_box(&received), CREATED, Uuid::nil()).encode());
    });
    let size_json = to_json(&Size {
        cols: 120,
        rows: 40,
    });
    group.bench_function("size/from_json", |b| {
        b.iter(|| from_json::<Size>(black_box(&size_json), "size"));
    });
    // Once per session, but the nested, case-insensitive decode is the costliest shape.
    let task = AgentTaskPayload {
        session_id: "alice-0123456789abcdef0".into(),
        document_name: "SSM-SessionManagerRunShell".into(),
        document_content: serde_json::json!({
            "schemaVersion": "1.0",
            "description": "Document to hold regional settings for Session Manager",
            "sessionType": "Standard_Stream",
            "inputs": {
                "s3BucketName": "", "s3KeyPrefix": "", "s3EncryptionEnabled": true,
                "cloudWatchLogGroupName": "", "cloudWatchEncryptionEnabled": true,
                "cloudWatchStreamingEnabled": false, "kmsKeyId": "", "runAsEnabled": false,
                "runAsDefaultUser": "", "idleSessionTimeout": "20",
                "shellProfile": { "windows": "", "linux": "" }
            }
        }),
        parameters: serde_json::Map::new(),
        run_as_user: String::new(),
        session_owner: "arn:aws:iam::123456789012:user/alice".into(),
    };
    let shell_json = to_json(&task.to_mgs_payload("aws.ssm.alice-0123456789abcdef0"));
    group.throughput(Throughput::Bytes(shell_json.len() as u64));
    group.bench_function("interactive_shell/decode", |b| {
        b.iter(|| AgentTaskPayload::from_interactive_shell(black_box(&shell_json)));
    });
    group.finish();
}

fn reliability(c: &mut Criterion) {
    let frame = frame(16 * KIB);
    let mut group = c.benchmark_group("reliability");
    group.throughput(Throughput::Elements(1));
    // The common case: every frame arrives in order and is delivered at once.
    group.bench_function("receiver/in_order", |b| {
        let mut rx = Receiver::<Bytes>::new(ReceiverConfig::default());
        let mut seq = 0i64;
        b.iter(|| {
            let out = rx.on_frame(seq, frame.clone());
            seq += 1;
            out
        });
    });
    // A lost frame: the next 63 are buffered, then its retransmission drains them all.
    group.throughput(Throughput::Elements(WINDOW.unsigned_abs()));
    group.bench_function("receiver/gap_of_64", |b| {
        let mut rx = Receiver::<Bytes>::new(ReceiverConfig::default());
        let mut base = 0i64;
        b.iter(|| {
            for seq in base + 1..base + WINDOW {
                black_box(rx.on_frame(seq, frame.clone()));
            }
            let out = rx.on_frame(base, frame.clone());
            assert!(matches!(&out, ReceiveOutcome::Deliver { items } if items.len() == 64));
            base += WINDOW;
            out
        });
    });
    // The sender with 64 frames in flight: push one, ack the oldest.
    group.throughput(Throughput::Elements(1));
    group.bench_function("sender/push_and_ack_64_in_flight", |b| {
        let mut tx = Sender::new(SenderConfig::default());
        let start = Instant::now();
        for _ in 0..WINDOW {
            let seq = tx.next_sequence();
            tx.push(seq, Uuid::nil(), frame.clone(), start);
        }
        let mut oldest = 0i64;
        let mut tick = 0u64;
        b.iter(|| {
            tick += 1;
            let now = start + Duration::from_micros(tick);
            let seq = tx.next_sequence();
            black_box(tx.push(seq, Uuid::nil(), frame.clone(), now));
            let acked = tx.on_ack(oldest, now);
            oldest += 1;
            black_box(tx.poll_retransmit(now));
            acked
        });
    });
    group.finish();
}

criterion_group!(benches, frame_codec, payloads, reliability);
criterion_main!(benches);
