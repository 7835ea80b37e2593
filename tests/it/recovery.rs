//! Nothing lost: a daemon killed with `kill -9` mid-session delivers everything at its
//! next start; a LocalStack stopped and restarted mid-session costs only delay; corrupt
//! recordings are quarantined without blocking the others.

use crate::recording::{
    streaming_gateway, unique, verify_with_localstack, AgentProcess, LocalStack, REGION,
};
use crate::support::*;
use serde_json::{json, Value};
use session_agent::delivery::cwl::{Checked, StreamChecker};
use session_agent::recorder::{Event, EventKind};
use session_agent::spool::reader::Reader as SpoolReader;
use std::path::Path;
use std::time::{Duration, Instant};

/// Output bytes recorded in a spool so far (a torn last record ends the read).
fn spool_output(spool: &Path) -> String {
    let Ok(f) = std::fs::File::open(spool) else {
        return String::new();
    };
    let Ok(reader) = SpoolReader::new(std::io::BufReader::new(f)) else {
        return String::new();
    };
    let mut out = Vec::new();
    for record in reader.map_while(Result::ok) {
        if let Ok(Event {
            kind: EventKind::Output { data },
            ..
        }) = Event::from_json_line(&String::from_utf8_lossy(&record.payload))
        {
            out.extend_from_slice(&data);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every event of the stream passes the chain check; returns (messages, duplicates) and
/// the parsed messages with duplicates left out.
fn check_stream(events: &[String]) -> (u64, u64, Vec<Value>) {
    let mut checker = StreamChecker::new();
    let mut kept = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match checker.check(i as u64, e) {
            Ok(Checked::Next) => kept.push(serde_json::from_str(e).unwrap()),
            Ok(Checked::Duplicate) => {}
            Err(why) => panic!("the stream does not verify: {why}\n{events:#?}"),
        }
    }
    (checker.messages(), checker.duplicates(), kept)
}

fn session_data(messages: &[Value]) -> String {
    messages
        .iter()
        .flat_map(|v| v["sessionData"].as_array().unwrap().clone())
        .map(|l| l.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The spool verifies whole: its chain intact, no torn tail.
fn assert_intact(spool: &[u8]) {
    let verdict = session_agent::spool::verify::verify_spool(spool).unwrap();
    assert!(
        matches!(
            verdict,
            session_agent::spool::verify::Verdict::Intact {
                torn_tail: false,
                ..
            }
        ),
        "{verdict:?}"
    );
}

async fn versions(ls: &LocalStack, bucket: &str, key: &str) -> usize {
    ls.s3
        .list_object_versions()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .unwrap()
        .versions()
        .iter()
        .filter(|v| v.key() == Some(key))
        .count()
}

#[tokio::test]
async fn a_daemon_killed_mid_session_delivers_everything_at_its_next_start() {
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    // Versioning shows whether an object was written more than once.
    ls.s3
        .put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let group = ls.log_group(false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let mut agent = AgentProcess::start(&gw, "rec-kill").await;
    let (sid, mut client) = open_shell(&gw, "rec-kill").await;
    client
        .type_text("echo before-kill-$((1+1)); seq 1 500\r")
        .await;
    client.expect("500\r\n$ ").await;
    // Part of the session reaches CloudWatch before the kill (the resume skips it).
    ls.wait_for_event(&group, &sid, "\"500\"", "nothing streamed before the kill")
        .await;
    client.type_text("echo last-words-$((3*3))\r").await;
    client.expect("last-words-9\r\n").await;
    let spool = agent.recording_dir(&sid).join("events.spool");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !spool_output(&spool).contains("last-words-9") {
        assert!(
            Instant::now() < deadline,
            "the output never reached the spool"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill_hard();
    drop(client);
    assert!(!agent.recording_dir(&sid).join("delivery.json").exists());

    // A recording whose spool was damaged: quarantined, and it blocks nothing.
    let broken = agent.state().path().join("recordings").join("broken-1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("session.json"),
        json!({"session_id": "broken-1"}).to_string(),
    )
    .unwrap();
    std::fs::write(broken.join("events.spool"), b"SASPOOL1\xff\xff\xff\xffjunk").unwrap();

    let agent = AgentProcess::start_in(&gw, "rec-kill", agent.state(), &[]).await;
    let report = agent.delivery(&sid, Duration::from_secs(60)).await;
    assert_eq!(report["complete"], true, "{report}\n{}", agent.log());

    // S3: every object once, holding everything up to the kill, saying it was cut short.
    for ext in ["log", "cast", "spool"] {
        let key = format!("{sid}.{ext}");
        assert_eq!(versions(&ls, &bucket, &key).await, 1, "{key}");
    }
    let log = String::from_utf8(ls.object(&bucket, &format!("{sid}.log"), WAIT).await).unwrap();
    for needle in [
        "before-kill-2",
        "\n500\n",
        "last-words-9",
        "session interrupted",
    ] {
        assert!(
            log.contains(needle),
            "{needle:?} missing from the transcript:\n{log}"
        );
    }
    let s3_spool = ls.object(&bucket, &format!("{sid}.spool"), WAIT).await;
    assert_intact(&s3_spool);
    let last = SpoolReader::new(&s3_spool[..])
        .unwrap()
        .last()
        .unwrap()
        .unwrap();
    let last = String::from_utf8(last.payload).unwrap();
    assert!(
        last.contains(r#""type":"end""#) && last.contains("interrupted"),
        "{last}"
    );

    // CloudWatch: the whole session, in order, the chain intact; anything sent twice is
    // an identical copy with the same sequence number.
    let events = ls.events(&group, &sid).await;
    let (_, _, kept) = check_stream(&events);
    let text = session_data(&kept);
    for needle in [
        "before-kill-2",
        "\n500\n",
        "last-words-9",
        "session interrupted",
    ] {
        assert!(
            text.contains(needle),
            "{needle:?} missing from CloudWatch:\n{text}"
        );
    }
    let mut seqs: Vec<u64> = kept
        .iter()
        .map(|v| v["sequence"].as_u64().unwrap())
        .collect();
    seqs.dedup();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    assert!(kept.iter().all(|v| v["awsRegion"] == REGION));
    // `verify` checks the stream in CloudWatch itself...
    let source = format!("cloudwatch://{group}/{sid}");
    let (code, said) = verify_with_localstack(&source);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.starts_with("intact and complete: "), "{said}");
    // ...and finds an event slipped in afterwards.
    let forged = events[events.len() - 1].replace("interrupted", "completed!!");
    ls.logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(&sid)
        .log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(
                    i64::try_from(session_agent::timefmt::unix_ms(std::time::SystemTime::now()))
                        .unwrap(),
                )
                .message(forged)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let (code, said) = verify_with_localstack(&source);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.starts_with("BROKEN: event "), "{said}");

    // The damaged recording went to quarantine, with the reason, and was logged.
    let quarantined = agent.state().path().join("quarantine").join("broken-1");
    assert!(
        quarantined.join("QUARANTINED.txt").exists(),
        "{}",
        agent.log()
    );
    assert!(!broken.exists());
    assert!(
        agent.log().contains("Recording quarantined"),
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("Recording recovered"),
        "{}",
        agent.log()
    );
    drop(agent);
    gw.stop().await;
}

/// A LocalStack of the test's own (another port), which it may stop and restart while
/// the shared one keeps serving the other tests.
struct PrivateLocalStack {
    port: u16,
    pid: Option<i32>,
}

impl PrivateLocalStack {
    /// The LocalStack virtualenv: `SESSION_AGENT_LOCALSTACK_VENV` (scripts/test.sh sets
    /// it), else the one scripts/test.sh keeps in ~/.cache/session-agent.
    fn venv() -> String {
        if let Ok(v) = std::env::var("SESSION_AGENT_LOCALSTACK_VENV") {
            return v;
        }
        let cached = format!(
            "{}/.cache/session-agent/localstack-venv",
            std::env::var("HOME").unwrap_or_default()
        );
        assert!(
            Path::new(&cached).join("bin/python").exists(),
            "no LocalStack virtualenv: run the tests with scripts/test.sh (it creates one and sets SESSION_AGENT_LOCALSTACK_VENV)"
        );
        cached
    }

    fn start(port: u16) -> Self {
        let mut me = Self { port, pid: None };
        me.up();
        me
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let out = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/localstack/start"
        ))
        .arg(Self::venv())
        .env("LOCALSTACK_PORT", self.port.to_string())
        .output()
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = text
            .trim()
            .strip_prefix("running ")
            .and_then(|p| p.parse().ok());
        assert!(
            pid.is_some(),
            "LocalStack on port {} did not start: {text} {}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
        self.pid = pid;
    }

    fn down(&mut self) {
        if let Some(pid) = self.pid.take() {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                assert!(Instant::now() < deadline, "LocalStack did not stop");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for PrivateLocalStack {
    fn drop(&mut self) {
        self.down();
    }
}

#[tokio::test]
async fn delivery_resumes_after_localstack_stops_and_restarts_mid_session() {
    let mut private = PrivateLocalStack::start(4576);
    let endpoint = private.endpoint();
    let ls = LocalStack::at(&endpoint).await;
    let bucket = unique("outage");
    let group = unique("/outage/");
    ls.create_bucket(&bucket, true).await;
    ls.create_log_group(&group, false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let agent =
        AgentProcess::start_with(&gw, "rec-outage", &[("AWS_ENDPOINT_URL", &endpoint)]).await;
    let (sid, mut client) = open_shell(&gw, "rec-outage").await;
    client.type_text("echo before-outage-$((2+2))\r").await;
    client.expect("before-outage-4\r\n$ ").await;
    ls.wait_for_event(
        &group,
        &sid,
        "before-outage-4",
        "nothing streamed before the outage",
    )
    .await;

    // The service goes away: the session carries on (fail-open) and ends.
    private.down();
    for i in 0..5 {
        client
            .type_text(&format!("echo during-outage-{i}-$((7*{i}))\r"))
            .await;
        client
            .expect(&format!("during-outage-{i}-{}\r\n$ ", 7 * i))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    client.type_text("exit\r").await;
    client.until_closed().await;
    // A session started during the outage says so at its start, in one line, and works.
    let (_, mut second) = open_shell(&gw, "rec-outage").await;
    // (open_shell returns at the first prompt: the notices come before it.)
    let screen = String::from_utf8_lossy(&second.screen).into_owned();
    assert!(
        screen.contains("cannot be reached now (") && screen.contains("delivered when it can be"),
        "no notice of the outage at the start:\n{screen}"
    );
    second.type_text("echo still-$((6*7))\r").await;
    second.expect("still-42\r\n$ ").await;
    second.type_text("exit\r").await;
    second.until_closed().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !agent.recording_dir(&sid).join("delivery.json").exists(),
        "delivery finished during the outage: {}",
        agent.log()
    );

    // It comes back empty (LocalStack keeps no state): the operator re-creates the bucket
    // and the group, and delivery resumes on its own.
    private.up();
    let ls = LocalStack::at(&endpoint).await;
    ls.create_bucket(&bucket, true).await;
    ls.create_log_group(&group, false).await;
    let report = agent.delivery(&sid, Duration::from_secs(90)).await;
    assert_eq!(report["complete"], true, "{report}\n{}", agent.log());
    let log = String::from_utf8(ls.object(&bucket, &format!("{sid}.log"), WAIT).await).unwrap();
    for needle in ["before-outage-4", "during-outage-0-0", "during-outage-4-28"] {
        assert!(log.contains(needle), "{needle:?} missing from S3:\n{log}");
    }
    // What was streamed before the outage was stored in the instance that went away;
    // everything after it arrives, in order, numbered where the first part stopped.
    let events = ls.events(&group, &sid).await;
    let parsed: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text = session_data(&parsed);
    for i in 0..5 {
        let needle = format!("during-outage-{i}-{}", 7 * i);
        assert!(
            text.contains(&needle),
            "{needle:?} missing from CloudWatch:\n{text}"
        );
    }
    assert!(!text.lines().any(|l| l == "before-outage-4"), "{text}");
    let seqs: Vec<u64> = parsed
        .iter()
        .map(|v| v["sequence"].as_u64().unwrap())
        .collect();
    assert!(seqs.first().is_some_and(|s| *s > 0), "{seqs:?}");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
        "{seqs:?}"
    );
    assert!(
        agent.log().contains("retrying"),
        "no retry logged:\n{}",
        agent.log()
    );
    drop(agent);
    gw.stop().await;
}

/// The agent is killed (-9) just after a flood, while the transcript, the asciicast and
/// the CloudWatch stream still lag behind the spool: after the restart, every artefact
/// holds the whole flood, once, and `verify` agrees with each copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_flood_while_the_derived_files_lag_loses_nothing() {
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let mut agent = AgentProcess::start(&gw, "rec-lag").await;
    let (sid, mut client) = open_shell(&gw, "rec-lag").await;
    const LINES: u64 = 2_000_000;
    client
        .type_text(&format!("seq 1 {LINES}; echo flood-$((4+5))-done\r"))
        .await;
    let bytes = client
        .drain_until("flood-9-done", Duration::from_secs(180), || {})
        .await;
    assert!(bytes > 14_000_000, "{bytes}");
    // The spool has it all once its size settles (the writer is ahead of the client).
    let dir = agent.recording_dir(&sid);
    let spool = dir.join("events.spool");
    let size = || std::fs::metadata(&spool).map_or(0, |m| m.len());
    let mut last = size();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = size();
        if now == last {
            break;
        }
        last = now;
    }
    let transcript_then = std::fs::metadata(dir.join(format!("{sid}.log"))).map_or(0, |m| m.len());
    agent.kill_hard();
    drop(client);
    // The derived files were behind the spool when the agent died (else this test did not
    // test a lag): the transcript holds about as many bytes as the output.
    assert!(
        transcript_then < bytes as u64 / 2,
        "the transcript had caught up before the kill ({transcript_then} of {bytes} bytes)"
    );
    assert!(spool_output(&spool).contains("flood-9-done"));
    assert!(!dir.join("delivery.json").exists());

    let agent = AgentProcess::start_in(&gw, "rec-lag", agent.state(), &[]).await;
    let report = agent.delivery(&sid, Duration::from_secs(300)).await;
    assert_eq!(report["complete"], true, "{report}\n{}", agent.log());

    // The transcript in S3: every line of the flood, in order, then the interruption.
    let log = String::from_utf8(ls.object(&bucket, &format!("{sid}.log"), WAIT).await).unwrap();
    let numbers: Vec<&str> = log
        .lines()
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(
        numbers.len() as u64,
        LINES,
        "lines of the flood in the transcript"
    );
    assert!(numbers
        .iter()
        .enumerate()
        .all(|(i, n)| *n == (i + 1).to_string()));
    assert!(log.contains("flood-9-done") && log.contains("session interrupted"));
    // The spool in S3 verifies whole, and so does the CloudWatch stream, which holds the
    // same lines.
    let s3_spool = ls.object(&bucket, &format!("{sid}.spool"), WAIT).await;
    assert_intact(&s3_spool);
    let source = format!("cloudwatch://{group}/{sid}");
    let (code, said) = verify_with_localstack(&source);
    assert_eq!(code, Some(0), "{said}");
    let events = ls.events(&group, &sid).await;
    let (_, _, kept) = check_stream(&events);
    let text = session_data(&kept);
    let streamed = text
        .lines()
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .count();
    assert_eq!(streamed as u64, LINES, "lines of the flood in CloudWatch");
    assert!(text.contains("flood-9-done"));
    // The local spool, against its session.json.
    let (code, said) = verify_with_localstack(spool.to_str().unwrap());
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("matches its session.json"), "{said}");
    drop(agent);
    gw.stop().await;
}
