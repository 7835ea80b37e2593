//! Benchmarks of the flight recorder (`recorder`, pure): how fast a session's output can
//! be recorded, for the kinds of output a shell produces, and the spool record codec
//! every event goes through.
//!
//! The agent reads the PTY in 16 KiB chunks (`agent::session::CHUNK`; upstream's frames
//! carry at most 1 KiB) and hands each to the recording worker, which calls
//! [`Recorder::output`] (the vt100 transcript renderer and the asciicast encoder), takes
//! the committed transcript lines, and appends the event as a hash-chained spool record.
//! If that is slower than the shell writes, the recorder falls behind, so each case is
//! one 16 KiB chunk (cycling through 1 MiB of generated output, so the terminal state is
//! a long session's) with `Throughput::Bytes`:
//!
//! * `yes`: `y\r\n` lines (the most lines per byte);
//! * `text`: log-like plain lines of 60–100 columns;
//! * `ansi`: colour-heavy `ls --color`-like output (SGR sequences, 256 and true colour);
//! * `fullscreen`: a `top`-like program on the alternate screen, redrawing with cursor
//!   moves and erases (entered and left once per MiB);
//! * `random`: random bytes (`cat /dev/urandom`), the worst case for the parser.
//!
//! `recorder/output` is the recorder alone (output, `take_lines`,
//! `take_asciicast_lines`); `recorder/pipeline` adds what the worker does with the event
//! (JSON line, chain value, spool record), minus the file writes. `recorder/input` is
//! typed input, recorded or redacted (`echo_off_canonical`). `spool` measures
//! `encode_record`, `decode_record` and `ChainChecker` on a keystroke's event and a
//! 16 KiB chunk's.
//!
//! Run with `cargo bench --bench recorder`; `cargo test --benches` runs each case once.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use session_agent::recorder::{Event, Recorder, StartInfo};
use session_agent::spool::format::{
    chain_next, decode_record, encode_record, ChainChecker, Record, CHAIN_START,
};
use std::fmt::Write as _;
use std::hint::black_box;

const KIB: usize = 1024;
/// The agent's PTY read size.
const CHUNK: usize = 16 * KIB;
/// Generated output per workload, cycled through chunk by chunk.
const WORKLOAD: usize = 1024 * KIB;
const COLS: u16 = 80;
const ROWS: u16 = 24;

fn start_info() -> StartInfo {
    StartInfo {
        session_id: "alice-0123456789abcdef0".into(),
        user: "arn:aws:iam::123456789012:user/alice".into(),
        run_as_user: "ssm-user".into(),
        owner: "arn:aws:iam::123456789012:user/alice".into(),
        target: "i-0123456789abcdef0".into(),
        reason: None,
        cols: COLS,
        rows: ROWS,
        started_unix_ms: 1_763_000_000_000,
        term: Some("xterm-256color".into()),
        shell: Some("/bin/bash".into()),
    }
}

/// xorshift64*: deterministic, dependency-free pseudo-random numbers.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Appends generated lines until `WORKLOAD` bytes, then cuts there (chunks split escape
/// sequences and UTF-8 anywhere, as PTY reads do).
fn generate(mut line: impl FnMut(&mut String, usize)) -> Vec<u8> {
    let mut out = String::with_capacity(WORKLOAD + 4 * KIB);
    let mut i = 0;
    while out.len() < WORKLOAD {
        line(&mut out, i);
        i += 1;
    }
    let mut bytes = out.into_bytes();
    bytes.truncate(WORKLOAD);
    bytes
}

fn yes() -> Vec<u8> {
    generate(|out, _| out.push_str("y\r\n"))
}

fn text() -> Vec<u8> {
    let mut rng = Rng(0x5eed_0001);
    generate(|out, i| {
        let _ = write!(
            out,
            "2026-11-21T07:{:02}:{:02}.{:03}Z  INFO session_agent::agent::session: ",
            i / 60_000 % 60,
            i / 1000 % 60,
            i % 1000
        );
        let words = 2 + rng.below(8);
        for _ in 0..words {
            out.push_str(
                ["chunk ", "sent ", "seq=42 ", "ack ", "bytes=16384 ", "ok "]
                    [usize::try_from(rng.below(6)).unwrap_or(0)],
            );
        }
        out.push_str("\r\n");
    })
}

fn ansi() -> Vec<u8> {
    let mut rng = Rng(0x5eed_0002);
    const KINDS: [(&str, &str); 5] = [
        ("01;34", "src"),
        ("01;32", "session-agent"),
        ("01;36", "libfoo.so.1"),
        ("00", "Cargo.toml"),
        ("01;31", "release.tar.gz"),
    ];
    generate(|out, i| {
        if i % 8 == 7 {
            // A 256-colour / true-colour line (a prompt, `git log --color`, `bat`).
            let _ = write!(
                out,
                "\x1b[38;5;{}m\u{276f}\x1b[0m \x1b[1;38;2;{};{};{}m{:07x}\x1b[0m \x1b[33m(HEAD -> main)\x1b[0m fix {i}\x1b[K\r\n",
                rng.below(256),
                rng.below(256),
                rng.below(256),
                rng.below(256),
                rng.next() >> 36,
            );
            return;
        }
        for _ in 0..4 {
            let (sgr, name) = KINDS[usize::try_from(rng.below(5)).unwrap_or(0)];
            let _ = write!(out, "\x1b[0m\x1b[{sgr}m{name}{}\x1b[0m  ", rng.below(100));
        }
        out.push_str("\r\n");
    })
}

/// `top` on an 80x24 terminal: enter the alternate screen, redraw frames, leave.
fn fullscreen() -> Vec<u8> {
    let mut rng = Rng(0x5eed_0003);
    let mut frame = 0usize;
    let mut bytes = generate(|out, i| {
        if i == 0 {
            out.push_str(
                "\x1b[?1049h\x1b[22;0;0t\x1b[1;24r\x1b(B\x1b[m\x1b[4l\x1b[?7h\x1b[H\x1b[2J",
            );
        }
        frame += 1;
        let _ = write!(
            out,
            "\x1b[H\x1b(B\x1b[mtop - 07:{:02}:{:02} up 3 days,  2 users,  load average: 0.{:02}, 0.{:02}, 0.{:02}\x1b(B\x1b[m\x1b[39;49m\x1b[K\r\n",
            frame / 60 % 60,
            frame % 60,
            rng.below(100),
            rng.below(100),
            rng.below(100)
        );
        let _ = write!(
            out,
            "Tasks:\x1b(B\x1b[m\x1b[39;49m\x1b[1m {} \x1b(B\x1b[m\x1b[39;49mtotal,\x1b(B\x1b[m\x1b[39;49m\x1b[1m   1 \x1b(B\x1b[m\x1b[39;49mrunning\x1b(B\x1b[m\x1b[39;49m\x1b[K\r\n",
            180 + rng.below(20)
        );
        let _ = write!(
            out,
            "%Cpu(s):\x1b(B\x1b[m\x1b[39;49m\x1b[1m  {}.{} \x1b(B\x1b[m\x1b[39;49mus,\x1b(B\x1b[m\x1b[39;49m\x1b[1m  1.0 \x1b(B\x1b[m\x1b[39;49msy\x1b(B\x1b[m\x1b[39;49m\x1b[K\r\n",
            rng.below(100),
            rng.below(10)
        );
        out.push_str("\x1b[K\r\n\x1b[7m    PID USER      PR  NI    VIRT    RES  %CPU  %MEM     TIME+ COMMAND       \x1b(B\x1b[m\x1b[39;49m\x1b[K\r\n");
        for row in 6..=ROWS {
            let _ = write!(
                out,
                "\x1b[{row};1H{}{:>7} ssm-user  20   0 {:>7} {:>6} {:>5.1} {:>5.1} {:>3}:{:02}.{:02} {:<13}\x1b(B\x1b[m\x1b[39;49m\x1b[K",
                if row == 6 { "\x1b[1m" } else { "" },
                1000 + rng.below(50_000),
                rng.below(9_999_999),
                rng.below(999_999),
                f64::from(u32::try_from(rng.below(1000)).unwrap_or(0)) / 10.0,
                f64::from(u32::try_from(rng.below(1000)).unwrap_or(0)) / 10.0,
                rng.below(100),
                rng.below(60),
                rng.below(100),
                ["bash", "session-agent", "sshd", "systemd", "top"]
                    [usize::try_from(rng.below(5)).unwrap_or(0)],
            );
        }
        out.push_str("\x1b[J\x1b[?25h\x1b[?12l\x1b[?25l");
    });
    let leave = b"\x1b[?1049l\x1b[23;0;0t\r\x1b[?1l\x1b>";
    bytes.truncate(WORKLOAD - leave.len());
    bytes.extend_from_slice(leave);
    bytes
}

fn random() -> Vec<u8> {
    let mut rng = Rng(0x5eed_0004);
    (0..WORKLOAD / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect()
}

fn workloads() -> [(&'static str, Vec<u8>); 5] {
    [
        ("yes", yes()),
        ("text", text()),
        ("ansi", ansi()),
        ("fullscreen", fullscreen()),
        ("random", random()),
    ]
}

/// Feeds one chunk per iteration, cycling, to a recorder that lives as long as the case
/// (a long session, streaming: taken lines are forgotten, as in the agent).
fn output(c: &mut Criterion) {
    let workloads = workloads();
    for pipeline in [false, true] {
        let mut group = c.benchmark_group(if pipeline {
            "recorder/pipeline"
        } else {
            "recorder/output"
        });
        group.throughput(Throughput::Bytes(CHUNK as u64));
        for (name, data) in &workloads {
            group.bench_with_input(BenchmarkId::from_parameter(name), data, |b, data| {
                let mut rec = Recorder::new(start_info()).forget_taken_lines();
                let mut chain = CHAIN_START;
                let mut chunks = data.chunks(CHUNK).cycle();
                let mut at_ms = 0u64;
                b.iter(|| {
                    at_ms += 1;
                    let chunk = chunks.next().unwrap_or_default();
                    let event = rec.output(at_ms, chunk);
                    let record = pipeline.then(|| {
                        let line = event.to_json_line();
                        chain = chain_next(&chain, line.as_bytes());
                        encode_record(&chain, line.as_bytes())
                    });
                    (record, rec.take_lines(), rec.take_asciicast_lines())
                });
            });
        }
        group.finish();
    }
}

fn input(c: &mut Criterion) {
    let mut group = c.benchmark_group("recorder/input");
    let keystroke = b"l".to_vec();
    let paste = text()[..KIB].to_vec();
    for (name, data) in [("1", &keystroke), ("1024", &paste)] {
        group.throughput(Throughput::Bytes(data.len() as u64));
        for echo_off_canonical in [false, true] {
            let id = if echo_off_canonical {
                "redacted"
            } else {
                "recorded"
            };
            group.bench_with_input(BenchmarkId::new(id, name), data, |b, data| {
                let mut rec = Recorder::new(start_info()).forget_taken_lines();
                let mut at_ms = 0u64;
                b.iter(|| {
                    at_ms += 1;
                    let event = rec.input(at_ms, data, echo_off_canonical);
                    (event, rec.take_asciicast_lines())
                });
            });
        }
    }
    group.finish();
}

/// Spool payloads as the agent writes them: event JSON lines, seq 1..=n, chained.
fn spool_records(events: &[Event]) -> (Vec<Vec<u8>>, Vec<Record>) {
    let mut chain = CHAIN_START;
    let mut encoded = Vec::new();
    let mut records = Vec::new();
    for event in events {
        let line = event.to_json_line();
        chain = chain_next(&chain, line.as_bytes());
        encoded.push(encode_record(&chain, line.as_bytes()));
        records.push(Record {
            chain,
            payload: line.into_bytes(),
        });
    }
    (encoded, records)
}

fn spool(c: &mut Criterion) {
    const RECORDS: usize = 64;
    let text = text();
    let mut rec = Recorder::new(start_info()).forget_taken_lines();
    let mut at_ms = 0;
    let keystrokes: Vec<Event> = (0..RECORDS)
        .map(|_| {
            at_ms += 1;
            rec.input(at_ms, b"l", false)
        })
        .collect();
    let chunks: Vec<Event> = text
        .chunks(CHUNK)
        .cycle()
        .take(RECORDS)
        .map(|chunk| {
            at_ms += 1;
            rec.output(at_ms, chunk)
        })
        .collect();

    let mut group = c.benchmark_group("spool");
    for (name, events) in [("keystroke", &keystrokes), ("16KiB_output", &chunks)] {
        let (encoded, records) = spool_records(events);
        let line = events[0].to_json_line();
        let payload_bytes = line.len() as u64;
        group.throughput(Throughput::Bytes(payload_bytes));
        group.bench_with_input(
            BenchmarkId::new("event_to_json_line", name),
            &events[0],
            |b, e| {
                b.iter(|| black_box(e).to_json_line());
            },
        );
        group.bench_with_input(BenchmarkId::new("encode_record", name), &line, |b, line| {
            b.iter(|| encode_record(&CHAIN_START, black_box(line.as_bytes())));
        });
        // What the worker does per event: chain value (SHA-256) and record.
        group.bench_with_input(BenchmarkId::new("append", name), &line, |b, line| {
            b.iter(|| {
                let chain = chain_next(&CHAIN_START, black_box(line.as_bytes()));
                encode_record(&chain, line.as_bytes())
            });
        });
        group.bench_with_input(
            BenchmarkId::new("decode_record", name),
            &encoded[0],
            |b, r| {
                b.iter(|| decode_record(black_box(r), 8));
            },
        );
        let total: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
        group.throughput(Throughput::Bytes(total));
        group.bench_with_input(
            BenchmarkId::new(format!("chain_check_{RECORDS}"), name),
            &records,
            |b, records| {
                b.iter(|| {
                    let mut checker = ChainChecker::new();
                    for r in records {
                        assert!(checker.check(r).is_ok());
                    }
                    checker.head()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, output, input, spool);
criterion_main!(benches);
