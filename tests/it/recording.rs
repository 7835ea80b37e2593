//! Session recording and delivery end to end, against LocalStack (S3 and CloudWatch Logs
//! on 127.0.0.1:4566, started by scripts/test.sh): the agent binary runs as a real daemon
//! process configured only through the standard AWS environment variables, the gateway
//! hands it the session preferences, a client types into a real shell, and the results
//! are read back from LocalStack with the AWS SDK.

use crate::support::*;
use aws_sdk_cloudwatchlogs::Client as LogsClient;
use aws_sdk_s3::Client as S3Client;
use serde_json::{json, Value};
use session_agent::gateway::GatewayConfig;
use session_agent::protocol::document::SessionDocument;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const LOCALSTACK: &str = "http://127.0.0.1:4566";
pub const REGION: &str = "us-east-1";

/// Clients for LocalStack; panics with what to do when it is not running.
pub struct LocalStack {
    pub s3: S3Client,
    pub logs: LogsClient,
    config: aws_config::SdkConfig,
}

impl LocalStack {
    pub async fn get() -> Self {
        Self::at(LOCALSTACK).await
    }

    /// Clients for the LocalStack at `endpoint`.
    pub async fn at(endpoint: &str) -> Self {
        let health = reqwest::get(format!("{endpoint}/_localstack/health")).await;
        assert!(
            health.is_ok_and(|r| r.status().is_success()),
            "LocalStack is not running on {endpoint}: run the tests with scripts/test.sh, which starts it (or start it with scripts/localstack/start DIR)"
        );
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_credential_types::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .http_client(session_agent::delivery::aws::https_client())
            .load()
            .await;
        Self {
            s3: S3Client::new(&config),
            logs: LogsClient::new(&config),
            config,
        }
    }

    pub async fn bucket(&self, encrypted: bool) -> String {
        let name = unique("rec");
        self.create_bucket(&name, encrypted).await;
        name
    }

    pub async fn create_bucket(&self, name: &str, encrypted: bool) {
        self.s3.create_bucket().bucket(name).send().await.unwrap();
        if !encrypted {
            self.s3
                .delete_bucket_encryption()
                .bucket(name)
                .send()
                .await
                .unwrap();
        }
    }

    pub async fn log_group(&self, kms: bool) -> String {
        let name = unique("/sessions/");
        self.create_log_group(&name, kms).await;
        name
    }

    pub async fn create_log_group(&self, name: &str, kms: bool) {
        let mut req = self.logs.create_log_group().log_group_name(name);
        if kms {
            req = req.kms_key_id("arn:aws:kms:us-east-1:000000000000:key/test-key");
        }
        req.send().await.unwrap();
    }

    pub async fn object(&self, bucket: &str, key: &str, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        loop {
            match self.s3.get_object().bucket(bucket).key(key).send().await {
                Ok(o) => return o.body.collect().await.unwrap().into_bytes().to_vec(),
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "s3://{bucket}/{key} never appeared: {e:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until an event of the stream contains `needle`; panics with `what` after
    /// 20 s.
    pub async fn wait_for_event(&self, group: &str, stream: &str, needle: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .events(group, stream)
            .await
            .iter()
            .any(|e| e.contains(needle))
        {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every event of a stream, in the order the service returns them (the agent's own
    /// reader, as `verify cloudwatch://` uses it).
    pub async fn events(&self, group: &str, stream: &str) -> Vec<String> {
        let logs = session_agent::delivery::aws::Logs::new(&self.config);
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let Ok((page, next)) = logs.events_page(group, stream, token).await else {
                return out; // no stream yet
            };
            out.extend(page);
            match next {
                Some(n) => token = Some(n),
                None => return out,
            }
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// The agent binary as a daemon process, with the standard AWS variables pointing at
/// LocalStack. Stopped on drop; its log is kept for assertions.
pub struct AgentProcess {
    child: Child,
    state: Arc<tempfile::TempDir>,
}

impl AgentProcess {
    pub async fn start(gw: &Gateway, target: &str) -> Self {
        Self::start_with(gw, target, &[]).await
    }

    pub async fn start_with(gw: &Gateway, target: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::start_in(
            gw,
            target,
            Arc::new(tempfile::tempdir().unwrap()),
            extra_env,
        )
        .await
    }

    /// Starts the agent on an existing state dir (a restart).
    pub async fn start_in(
        gw: &Gateway,
        target: &str,
        state: Arc<tempfile::TempDir>,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.path().join("agent.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_session-agent"))
            .args(["run", "--endpoint", &gw.http_url(), "--target-id", target])
            .arg("--state-dir")
            .arg(state.path())
            .args(["--shell", "sh"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", state.path())
            .env("AWS_ENDPOINT_URL", LOCALSTACK)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("SESSION_AGENT_LOG", "info")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_online(gw, target, WAIT).await;
        Self { child, state }
    }

    /// The state dir (shared with a restarted agent).
    pub fn state(&self) -> Arc<tempfile::TempDir> {
        self.state.clone()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for the daemon to exit; panics with its log after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`, and wait for the process to be gone.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("agent.log")).unwrap_or_default()
    }

    pub fn recording_dir(&self, session_id: &str) -> PathBuf {
        self.state.path().join("recordings").join(session_id)
    }

    /// Waits for the recording's delivery report.
    pub async fn delivery(&self, session_id: &str, within: Duration) -> Value {
        let path = self.recording_dir(session_id).join("delivery.json");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(v) = serde_json::from_str(&text) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no delivery report for {session_id}; agent log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `session-agent verify SOURCE` with the AWS variables pointing at LocalStack: the exit
/// code and what it printed.
pub fn verify_with_localstack(source: &str) -> (Option<i32>, String) {
    verify_args_with_localstack(&[source])
}

/// `session-agent verify ARGS...` with the AWS variables pointing at LocalStack.
pub fn verify_args_with_localstack(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .arg("verify")
        .args(args)
        .env("AWS_ENDPOINT_URL", LOCALSTACK)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub fn preferences(inputs: Value) -> Value {
    let mut doc = SessionDocument::default_shell().to_json();
    for (k, v) in inputs.as_object().unwrap() {
        doc["inputs"][k] = v.clone();
    }
    doc
}

pub async fn gateway(inputs: Value) -> Gateway {
    Gateway::start(GatewayConfig {
        preferences: preferences(inputs),
        ..GatewayConfig::default()
    })
    .await
}

/// A gateway whose sessions upload to `bucket` and stream to `group`.
pub async fn streaming_gateway(bucket: &str, group: &str) -> Gateway {
    gateway(json!({
        "s3BucketName": bucket,
        "cloudWatchLogGroupName": group,
        "cloudWatchStreamingEnabled": true,
    }))
    .await
}

pub fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn streamed_events_arrive_within_two_seconds_in_the_upstream_schema() {
    let ls = LocalStack::get().await;
    let group = ls.log_group(false).await;
    let gw = gateway(json!({
        "cloudWatchLogGroupName": group,
        "cloudWatchStreamingEnabled": true,
    }))
    .await;
    let agent = AgentProcess::start(&gw, "rec-stream").await;
    let (sid, mut client) = open_shell(&gw, "rec-stream").await;
    client.type_text("echo marker-$((6*7))\r").await;
    client.expect("marker-42\r\n$ ").await;
    let seen = Instant::now();
    let (event, elapsed) = loop {
        let events = ls.events(&group, &sid).await;
        if let Some(e) = events.iter().find(|e| e.contains("\"marker-42\"")) {
            break (e.clone(), seen.elapsed());
        }
        assert!(
            seen.elapsed() < Duration::from_secs(10),
            "no event with the output; events: {events:?}; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        elapsed < Duration::from_secs(2),
        "the event took {elapsed:?} to appear"
    );
    let v: Value = serde_json::from_str(&event).unwrap();
    let owner = gw
        .api_ok("DescribeSessions", json!({"State": "Active"}))
        .await["Sessions"][0]["Owner"]
        .clone();
    assert_eq!(v["eventVersion"], "1.0");
    let time = v["eventTime"].as_str().unwrap();
    assert_eq!(time.len(), 20, "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    assert_eq!(v["awsRegion"], REGION);
    assert_eq!(v["target"]["id"], "rec-stream");
    assert_eq!(v["userIdentity"]["arn"], owner);
    assert!(v["runAsUser"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(v["sessionId"], sid.as_str());
    assert_eq!(v["direction"], "output");
    assert!(v["sequence"].is_u64());
    let data: Vec<&str> = v["sessionData"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(data.contains(&"marker-42"), "{data:?}");
    assert!(!event.contains("\\u001b"), "escape codes in {event}");
    // What was typed at the prompt is streamed as a command event (plain typed input
    // is not, by default: stream_input = "off").
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");
    let events = ls.events(&group, &sid).await;
    let parsed: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        parsed.iter().any(|v| v["eventType"] == "command"
            && v["commandLine"] == "echo marker-$((6*7))"
            && v["prompt"] == "$"),
        "{events:?}"
    );
    assert!(
        !parsed.iter().any(|v| v["direction"] == "input"),
        "{events:?}"
    );
    let mut seqs: Vec<u64> = parsed
        .iter()
        .map(|v| v["sequence"].as_u64().unwrap())
        .collect();
    seqs.dedup();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The gateway shows where the logs went.
    let s = wait_status(&gw, &sid, "History", "Terminated").await;
    let url = s["OutputUrl"]["CloudWatchOutputUrl"]
        .as_str()
        .unwrap_or_default();
    assert!(url.contains(&group) && url.contains(&sid), "{s}");
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn s3_and_cloudwatch_uploads_at_close_hold_the_clean_transcript() {
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(true).await;
    let gw = gateway(json!({
        "s3BucketName": bucket,
        "s3KeyPrefix": "team/a",
        "s3EncryptionEnabled": true,
        "cloudWatchLogGroupName": group,
        "cloudWatchEncryptionEnabled": true,
        "cloudWatchStreamingEnabled": false,
    }))
    .await;
    let agent = AgentProcess::start(&gw, "rec-close").await;
    let (sid, mut client) = open_shell(&gw, "rec-close").await;
    client
        .type_text("printf '\\033[1;31mred alert\\033[0m\\n'; printf 'abc\\bX\\rZ\\n'\r")
        .await;
    client.expect("red alert").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");
    let key = format!("team/a/{sid}.log");
    let log = String::from_utf8(ls.object(&bucket, &key, WAIT).await).unwrap();
    assert!(log.contains("\nred alert\n"), "{log:?}");
    // Backspace and carriage return applied: "abc", BS, "X" → "abX"; CR, "Z" → "ZbX".
    assert!(log.contains("\nZbX\n"), "{log:?}");
    assert!(!log.contains('\x1b') && !log.contains('\r') && !log.contains('\x08'));
    let head = ls
        .s3
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption().map(|s| s.as_str()),
        Some("AES256")
    );
    assert!(head
        .content_type()
        .unwrap_or_default()
        .starts_with("text/plain"));
    let cast = String::from_utf8(
        ls.object(&bucket, &format!("team/a/{sid}.cast"), WAIT)
            .await,
    )
    .unwrap();
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(
        cast.contains("\\u001b[1;31mred alert"),
        "the cast keeps the raw output"
    );
    let events = ls.events(&group, &sid).await;
    let text = events.join("\n");
    assert!(
        text.contains("red alert") && text.contains("ZbX"),
        "{events:?}"
    );
    assert!(!text.contains('\x1b'));
    assert!(
        !text.starts_with('{'),
        "the upload at close is plain text, not JSON: {text}"
    );
    // The spool went to S3 too; `verify` finds both copies intact with the same chain
    // head, and an edited copy broken at the edited record.
    let verify = |source: &str| verify_with_localstack(source);
    let local = agent.recording_dir(&sid).join("events.spool");
    let (code, local_said) = verify(local.to_str().unwrap());
    assert_eq!(code, Some(0), "{local_said}");
    assert!(
        local_said.starts_with("intact and complete: "),
        "{local_said}"
    );
    assert!(
        local_said.contains("matches its session.json"),
        "{local_said}"
    );
    let (code, s3_said) = verify(&format!("s3://{bucket}/team/a/{sid}.spool"));
    assert_eq!(code, Some(0), "{s3_said}");
    assert_eq!(s3_said.lines().next(), local_said.lines().next());
    let mut records: Vec<session_agent::spool::format::Record> =
        session_agent::spool::reader::Reader::new(std::fs::File::open(&local).unwrap())
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let text = String::from_utf8(records[2].payload.clone()).unwrap();
    records[2].payload = text.replacen("\"at_ms\":", "\"at_ms\":1", 1).into_bytes();
    let mut edited = session_agent::spool::format::MAGIC.to_vec();
    for r in &records {
        edited.extend(session_agent::spool::format::encode_record(
            &r.chain, &r.payload,
        ));
    }
    let copy = agent.state.path().join("edited.spool");
    std::fs::write(&copy, edited).unwrap();
    let (code, said) = verify(copy.to_str().unwrap());
    assert_eq!(code, Some(1), "{said}");
    assert!(said.starts_with("BROKEN: record 2:"), "{said}");

    // The summary beside them: written before the S3 upload finished (S3 pending in the
    // copy, CloudWatch settled), and rewritten locally once it did.
    let copy: Value = serde_json::from_slice(
        &ls.object(&bucket, &format!("team/a/{sid}.summary.json"), WAIT)
            .await,
    )
    .unwrap();
    assert_eq!(copy["sessionId"], sid.as_str(), "{copy}");
    assert_eq!(copy["complete"], true, "{copy}");
    assert_eq!(copy["delivery"]["s3"]["state"], "pending", "{copy}");
    assert_eq!(
        copy["delivery"]["s3"]["location"],
        format!("s3://{bucket}/team/a/{sid}.*")
    );
    assert_eq!(
        copy["delivery"]["cloudWatchLogs"]["state"], "delivered",
        "{copy}"
    );
    let local: Value = serde_json::from_slice(
        &std::fs::read(agent.recording_dir(&sid).join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(local["delivery"]["s3"]["state"], "delivered", "{local}");
    assert_eq!(local["spool"], copy["spool"]);
    assert!(report["s3_keys"]
        .as_array()
        .unwrap()
        .contains(&Value::from(format!("team/a/{sid}.summary.json"))));

    let s = wait_status(&gw, &sid, "History", "Terminated").await;
    assert_eq!(
        s["OutputUrl"]["S3OutputUrl"],
        format!("s3://{bucket}/{key}"),
        "{s}"
    );
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn full_screen_programs_render_as_readable_screens() {
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let gw = gateway(json!({"s3BucketName": bucket})).await;
    let agent = AgentProcess::start(&gw, "rec-tui").await;
    let (sid, mut client) = open_shell(&gw, "rec-tui").await;
    client.type_text("top -d 0.5\r").await;
    client.expect("load average").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.type_text("q").await;
    // Type on only at the prompt again (top would swallow type-ahead).
    client.expect("$ ").await;
    client.type_text("echo top-done\r").await;
    client.expect("top-done").await;
    client.type_text("vi /tmp/rec-tui-$$.txt\r").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    client.type_text("ihello from vi\x1b").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.type_text(":q!\r").await;
    // Type on only once vi has left the alternate screen (it would swallow type-ahead).
    client.expect("\x1b[?1049l").await;
    client.type_text("echo vi-done\r").await;
    client.expect("vi-done").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    agent.delivery(&sid, Duration::from_secs(30)).await;
    let log = String::from_utf8(ls.object(&bucket, &format!("{sid}.log"), WAIT).await).unwrap();
    assert!(!log.contains('\x1b'), "escape codes in {log:?}");
    assert!(log.contains("--- screen ---"), "{log}");
    let top_header = log
        .lines()
        .find(|l| l.contains("load average"))
        .unwrap_or_else(|| panic!("no top header in {log}"));
    assert!(top_header.starts_with("top - "), "{top_header:?}");
    assert!(
        log.lines()
            .any(|l| l.contains("PID") && l.contains("COMMAND")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.trim_end() == "hello from vi"),
        "{log}"
    );
    assert!(log.contains("top-done") && log.contains("vi-done"));

    // `transcript` renders the local raw stream and the S3 asciicast to the same text,
    // and `replay` plays back exactly the recorded output.
    let events = agent.recording_dir(&sid).join("events.spool");
    let cast = agent.state.path().join("downloaded.cast");
    std::fs::write(
        &cast,
        ls.object(&bucket, &format!("{sid}.cast"), WAIT).await,
    )
    .unwrap();
    let run = |args: &[&str], file: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_session-agent"))
            .args(args)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(
        String::from_utf8(run(&["transcript"], &events)).unwrap(),
        log
    );
    assert_eq!(String::from_utf8(run(&["transcript"], &cast)).unwrap(), log);
    let mut recorded = Vec::new();
    let spool = std::fs::File::open(&events).unwrap();
    for record in session_agent::spool::reader::Reader::new(spool).unwrap() {
        let line = String::from_utf8(record.unwrap().payload).unwrap();
        let e = session_agent::recorder::Event::from_json_line(&line).unwrap();
        if let session_agent::recorder::EventKind::Output { data } = e.kind {
            recorded.extend(data);
        }
    }
    let replayed = run(
        &["replay", "--speed", "1000", "--idle-limit", "0.01"],
        &events,
    );
    assert_eq!(replayed, recorded);
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn a_password_typed_with_echo_off_reaches_no_sink_and_no_file() {
    const SECRET: &str = "Tr0ub4dor-x7Q";
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let agent = AgentProcess::start(&gw, "rec-pw").await;
    let (sid, mut client) = open_shell(&gw, "rec-pw").await;
    client
        .type_text("stty -echo; printf 'Pass''word: '; read pw; stty echo; echo; echo got-${#pw}\r")
        .await;
    // The prompt, not the echo of the command line (which reads Pass''word).
    client.expect("Password: ").await;
    // Typed one key at a time, as a person would.
    for c in SECRET.chars() {
        client.type_text(&c.to_string()).await;
    }
    client.type_text("\r").await;
    client.expect(&format!("got-{}", SECRET.len())).await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");
    let mut sinks: Vec<(String, String)> = Vec::new();
    for ext in ["log", "cast", "spool"] {
        let body = ls.object(&bucket, &format!("{sid}.{ext}"), WAIT).await;
        sinks.push((
            format!("s3 {ext}"),
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    let events = ls.events(&group, &sid).await;
    assert!(
        events.iter().any(|e| e.contains("[input redacted: ")),
        "no redaction marker in {events:?}"
    );
    sinks.push(("cloudwatch".into(), events.join("\n")));
    let mut files = Vec::new();
    all_files(agent.state.path(), &mut files);
    assert!(files.len() > 4, "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        sinks.push((
            f.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    let b64 = session_agent::recorder::event::base64_encode(SECRET.as_bytes());
    for (name, text) in &sinks {
        assert!(!text.contains(SECRET), "{name} leaks the password");
        assert!(!text.contains(&b64), "{name} leaks the password (base64)");
        assert!(!text.contains("Tr0ub"), "{name} leaks part of the password");
    }
    drop(agent);
    gw.stop().await;
}

/// A spool's events read back: every input byte and every output byte, each stream
/// joined (a secret split across events shows), and the other events as JSON lines.
fn spool_streams(spool: &[u8]) -> (String, String, String) {
    use session_agent::recorder::EventKind;
    let mut reader =
        session_agent::spool::reader::Reader::new(std::io::Cursor::new(spool.to_vec())).unwrap();
    let (mut input, mut output, mut other) = (Vec::new(), Vec::new(), String::new());
    while let Some((event, _)) = reader.next_event(None).unwrap() {
        match event.kind {
            EventKind::Input { data } => input.extend_from_slice(&data),
            EventKind::Output { data } => output.extend_from_slice(&data),
            kind => other.push_str(&format!("{kind:?}\n")),
        }
    }
    (
        String::from_utf8_lossy(&input).into_owned(),
        String::from_utf8_lossy(&output).into_owned(),
        other,
    )
}

#[tokio::test]
async fn secrets_typed_on_command_lines_reach_no_sink_and_no_file() {
    // Each secret is typed once on a command line; one more comes from the
    // administrator's pattern, one is typed at bash's readline (which draws the line
    // itself while the keys are recorded as echo-off markers).
    const SECRETS: [&str; 6] = [
        "S3CR3T1", "S3CR3T2", "S3CR3T3", "S3CR3T4", "S3CR3T5", "S3CR3T6",
    ];
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let agent = AgentProcess::start_with(
        &gw,
        "rec-secrets",
        &[("SESSION_AGENT_REDACT_PATTERNS", "sk_live_([A-Za-z0-9]+)")],
    )
    .await;
    let (sid, mut client) = open_shell(&gw, "rec-secrets").await;
    // Typed one key at a time, with a typo inside the secret erased by Backspace.
    for c in "mysql -uroot -pS3CRX\x7f3T1 db\r".chars() {
        client.type_text(&c.to_string()).await;
    }
    client.expect("not found").await;
    // Pasted lines.
    client
        .type_text("curl -s -u u:S3CR3T2 http://127.0.0.1:1/; echo curl-$?\r")
        .await;
    client.expect("curl-7").await;
    client.type_text("export API_TOKEN=S3CR3T3\r").await;
    client
        .type_text("echo https://u:S3CR3T4@h/ key=sk_live_S3CR3T5\r")
        .await;
    // The client sees its session as it is: only the recording is scrubbed.
    client
        .expect("https://u:S3CR3T4@h/ key=sk_live_S3CR3T5")
        .await;
    // A learned secret printed back later.
    client.type_text("echo token-is-$API_TOKEN-end\r").await;
    client.expect("token-is-S3CR3T3-end").await;
    client.type_text("exec bash --norc --noprofile -i\r").await;
    client.expect("$ ").await;
    for c in "export DB_PASSWORD=S3CR3T6\r".chars() {
        client.type_text(&c.to_string()).await;
    }
    client.type_text("echo pw-${#DB_PASSWORD}-done\r").await;
    client.expect("pw-7-done").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");

    let mut sinks: Vec<(String, String)> = Vec::new();
    let mut spools: Vec<(String, Vec<u8>)> = Vec::new();
    for ext in ["log", "cast", "spool", "summary.json"] {
        let body = ls.object(&bucket, &format!("{sid}.{ext}"), WAIT).await;
        if ext == "spool" {
            spools.push(("s3 spool".into(), body.clone()));
        }
        sinks.push((
            format!("s3 {ext}"),
            String::from_utf8_lossy(&body).into_owned(),
        ));
    }
    let events = ls.events(&group, &sid).await;
    sinks.push(("cloudwatch".into(), events.join("\n")));
    let mut files = Vec::new();
    all_files(agent.state.path(), &mut files);
    assert!(files.len() > 4, "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        if f.extension().is_some_and(|e| e == "spool") {
            spools.push((f.display().to_string(), bytes.clone()));
        }
        sinks.push((
            f.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    assert_eq!(spools.len(), 2, "{spools:?}");
    for (name, spool) in &spools {
        let (input, output, other) = spool_streams(spool);
        // The keys typed with echo on, the echo and what the commands printed.
        assert!(input.contains("-p[redacted] db"), "{name}: {input:?}");
        assert!(output.contains("u:[redacted]"), "{name}: {output:?}");
        assert!(
            output.contains("token-is-[redacted]-end"),
            "{name}: {output:?}"
        );
        assert!(
            output.contains("DB_PASSWORD=[redacted]"),
            "{name}: {output:?}"
        );
        sinks.push((format!("{name} (input)"), input));
        sinks.push((format!("{name} (output)"), output));
        sinks.push((format!("{name} (other events)"), other));
    }
    let transcript = &sinks[0].1;
    assert!(
        transcript.contains("https://u:[redacted]@h/ key=sk_live_[redacted]"),
        "{transcript}"
    );
    assert!(
        events.iter().any(|e| e.contains("[redacted]")),
        "no mask in {events:?}"
    );
    for (name, text) in &sinks {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{name} leaks {secret}");
            let b64 = session_agent::recorder::event::base64_encode(secret.as_bytes());
            assert!(!text.contains(&b64), "{name} leaks {secret} (base64)");
        }
        assert!(!text.contains("S3CR3"), "{name} leaks part of a secret");
    }
    drop(agent);
    gw.stop().await;
}

pub async fn refused_with(gw: &Gateway, target: &str) -> String {
    let (sid, token, url) = start_session(gw, target).await;
    let mut client = InteractiveClient::new(client_connect(gw, &url, &token).await);
    client.resize(100, 30).await;
    client.until_closed().await;
    let output = client
        .closed
        .as_ref()
        .map(|c| c.output.clone())
        .unwrap_or_default();
    let s = wait_status(gw, &sid, "History", "Failed").await;
    assert_eq!(s["Details"], output.as_str(), "{s}");
    output
}

#[tokio::test]
async fn encryption_required_but_missing_refuses_the_session_and_says_which_resource() {
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(false).await;
    let gw = gateway(json!({"s3BucketName": bucket, "s3EncryptionEnabled": true})).await;
    let agent = AgentProcess::start(&gw, "rec-enc-s3").await;
    let out = refused_with(&gw, "rec-enc-s3").await;
    assert!(
        out.contains(session_agent::delivery::S3_NOT_ENCRYPTED) && out.contains(&bucket),
        "{out:?}"
    );
    assert!(
        !agent
            .state
            .path()
            .join("recordings")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "a refused session must not start a shell"
    );
    drop(agent);
    gw.stop().await;

    let group = ls.log_group(false).await;
    let gw = gateway(json!({
        "cloudWatchLogGroupName": group,
        "cloudWatchEncryptionEnabled": true,
        "cloudWatchStreamingEnabled": true,
    }))
    .await;
    let agent = AgentProcess::start(&gw, "rec-enc-cw").await;
    let out = refused_with(&gw, "rec-enc-cw").await;
    assert!(
        out.contains(session_agent::delivery::CWL_NOT_ENCRYPTED) && out.contains(&group),
        "{out:?}"
    );
    drop(agent);
    gw.stop().await;

    // A bucket that does not exist is not "not encrypted": the message says what it is.
    let missing = unique("missing");
    let gw = gateway(json!({"s3BucketName": missing, "s3EncryptionEnabled": true})).await;
    let agent = AgentProcess::start(&gw, "rec-enc-none").await;
    let out = refused_with(&gw, "rec-enc-none").await;
    assert!(
        out.contains("does not exist") && out.contains(&missing),
        "{out:?}"
    );
    assert!(
        !out.contains(session_agent::delivery::S3_NOT_ENCRYPTED),
        "{out:?}"
    );
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn a_missing_log_group_is_reported_and_the_session_still_works() {
    let _ls = LocalStack::get().await;
    let group = unique("/missing/");
    let gw = gateway(json!({
        "cloudWatchLogGroupName": group,
        "cloudWatchStreamingEnabled": true,
    }))
    .await;
    let agent = AgentProcess::start(&gw, "rec-nogroup").await;
    let (sid, token, url) = start_session(&gw, "rec-nogroup").await;
    let mut client = InteractiveClient::new(client_connect(&gw, &url, &token).await);
    client.resize(100, 30).await;
    let notice = client.expect("does not exist").await;
    assert!(notice.contains(&group), "{notice:?}");
    client.expect("$ ").await;
    client.type_text("echo still-$((1+1))\r").await;
    client.expect("still-2").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], false, "{report}");
    assert!(
        report["errors"][0].as_str().unwrap().contains(&group),
        "{report}"
    );
    let log = agent.log();
    assert!(
        log.contains("does not exist") && log.contains(&group),
        "{log}"
    );
    // The local recording is complete.
    let transcript =
        std::fs::read_to_string(agent.recording_dir(&sid).join(format!("{sid}.log"))).unwrap();
    assert!(transcript.contains("still-2"), "{transcript}");
    drop(agent);
    gw.stop().await;
}

/// Lines of `seq -f '%0100g' 1 N`, hashed in order.
fn expected_digest(n: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    for i in 1..=n {
        h.update(format!("{i:0100}\n").as_bytes());
    }
    h.finalize().into()
}

fn digest_of_digit_lines<'a>(lines: impl Iterator<Item = &'a str>) -> ([u8; 32], u64) {
    let mut h = Sha256::new();
    let mut n = 0;
    for l in lines.filter(|l| l.len() == 100 && l.bytes().all(|b| b.is_ascii_digit())) {
        h.update(l.as_bytes());
        h.update(b"\n");
        n += 1;
    }
    (h.finalize().into(), n)
}

#[tokio::test]
async fn fifty_megabytes_of_output_arrive_complete_in_s3_and_cloudwatch() {
    const LINES: u64 = 500_000; // 101 bytes each: 50.5 MB
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(false).await;
    let gw = gateway(json!({
        "s3BucketName": bucket,
        "cloudWatchLogGroupName": group,
        "cloudWatchStreamingEnabled": true,
        "idleSessionTimeout": "60",
    }))
    .await;
    let agent = AgentProcess::start(&gw, "rec-big").await;
    let (sid, mut client) = open_shell(&gw, "rec-big").await;
    client.resize(200, 30).await;
    client
        .type_text(&format!(
            "seq -f '%0100g' 1 {LINES}; echo big-$((1+1))-done\r"
        ))
        .await;
    // Read to the end marker without rescanning the whole screen each step.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let tail_from = client.screen.len().saturating_sub(64);
        if !client.step().await {
            panic!("session closed early");
        }
        if String::from_utf8_lossy(&client.screen[tail_from..]).contains("big-2-done") {
            break;
        }
        if client.screen.len() > 8 << 20 {
            client.screen.drain(..client.screen.len() - 4096);
        }
        assert!(Instant::now() < deadline, "output did not finish");
    }
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(600)).await;
    assert_eq!(report["complete"], true, "{report}");
    let want = expected_digest(LINES);

    let log = ls.object(&bucket, &format!("{sid}.log"), WAIT).await;
    assert!(log.len() > 50_000_000, "{} bytes", log.len());
    let log = String::from_utf8(log).unwrap();
    let (got, n) = digest_of_digit_lines(log.lines());
    assert_eq!(n, LINES);
    assert_eq!(got, want, "S3 transcript differs");

    let events = ls.events(&group, &sid).await;
    let mut parsed: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .filter(|v: &Value| v["direction"] == "output")
        .collect();
    // Parts of one record share its sequence number and stay in order (stable sort).
    parsed.sort_by_key(|v| v["sequence"].as_u64().unwrap());
    let lines: Vec<&str> = parsed
        .iter()
        .flat_map(|v| v["sessionData"].as_array().unwrap().iter())
        .map(|l| l.as_str().unwrap())
        .collect();
    let (got, n) = digest_of_digit_lines(lines.into_iter());
    assert_eq!(n, LINES);
    assert_eq!(got, want, "CloudWatch events differ");
    drop(agent);
    gw.stop().await;
}

/// An HTTP relay in front of LocalStack's CloudWatch Logs that answers the first
/// `throttle` PutLogEvents calls with a ThrottlingException, as the service does under
/// load, and forwards everything else unchanged.
struct ThrottlingLogs {
    addr: std::net::SocketAddr,
    throttled: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl ThrottlingLogs {
    async fn start(throttle: usize) -> Self {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        let throttled = Arc::new(AtomicUsize::new(0));
        let count = throttled.clone();
        let http = reqwest::Client::new();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (count, http) = (count.clone(), http.clone());
                async move {
                    let target = headers
                        .get("x-amz-target")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let reply = |status: StatusCode, ct: &str, body: Bytes| {
                        axum::response::Response::builder()
                            .status(status)
                            .header("content-type", ct)
                            .body(axum::body::Body::from(body))
                            .unwrap()
                    };
                    if target.ends_with(".PutLogEvents")
                        && count.fetch_add(1, Ordering::SeqCst) < throttle
                    {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            "application/x-amz-json-1.1",
                            Bytes::from_static(
                                br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                            ),
                        );
                    }
                    let mut req = http.request(method, format!("{LOCALSTACK}{uri}"));
                    for (k, v) in &headers {
                        if k != "host" && k != "content-length" {
                            req = req.header(k, v);
                        }
                    }
                    let resp = req.body(body).send().await.unwrap();
                    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                    let ct = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/x-amz-json-1.1")
                        .to_owned();
                    let bytes = resp.bytes().await.unwrap();
                    reply(status, &ct, bytes)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            throttled,
            _task: task,
        }
    }
}

#[tokio::test]
async fn throttled_puts_are_retried_until_everything_is_stored() {
    let ls = LocalStack::get().await;
    let group = ls.log_group(false).await;
    // More throttles in a row than the SDK's own attempts: our backoff has to carry on.
    let relay =
        ThrottlingLogs::start(2 * session_agent::delivery::aws::SDK_ATTEMPTS as usize).await;
    let gw = gateway(json!({
        "cloudWatchLogGroupName": group,
        "cloudWatchStreamingEnabled": true,
    }))
    .await;
    // The per-service endpoint variable sends only CloudWatch Logs through the relay.
    let agent = AgentProcess::start_with(
        &gw,
        "rec-throttle",
        &[(
            "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
            &format!("http://{}", relay.addr),
        )],
    )
    .await;
    let (sid, mut client) = open_shell(&gw, "rec-throttle").await;
    client.type_text("seq 1 300 | sed 's/^/row-/'\r").await;
    client.expect("row-300").await;
    client.type_text("exit\r").await;
    client.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(90)).await;
    assert_eq!(report["complete"], true, "{report}");
    assert!(
        relay.throttled.load(Ordering::SeqCst)
            > 2 * session_agent::delivery::aws::SDK_ATTEMPTS as usize,
        "the relay was not used"
    );
    let events = ls.events(&group, &sid).await;
    let text = events.join("\n");
    for i in 1..=300 {
        assert!(text.contains(&format!("\"row-{i}\"")), "row-{i} missing");
    }
    assert!(agent.log().contains("retrying"), "{}", agent.log());
    drop(agent);
    gw.stop().await;
}

#[tokio::test]
async fn a_port_sessions_tunnel_audit_is_streamed_and_uploaded_without_its_bytes() {
    use crate::port::PortClient;
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(false).await;
    let group = ls.log_group(false).await;
    let gw = streaming_gateway(&bucket, &group).await;
    let agent = AgentProcess::start(&gw, "rec-port").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let (sid, mut c) = PortClient::start_document(
        &gw,
        "rec-port",
        "AWS-StartSSHSession",
        json!({"portNumber": [port.to_string()]}),
        "1.2.650.0",
    )
    .await;
    c.until(WAIT, |c| c.complete).await;
    c.send(
        session_agent::protocol::frame::PayloadType::Output,
        b"tunnel-secret-payload",
    )
    .await;
    c.until(WAIT, |c| c.data == b"tunnel-secret-payload").await;
    gw.api_ok("TerminateSession", json!({"SessionId": sid}))
        .await;
    c.until_closed().await;
    let report = agent.delivery(&sid, Duration::from_secs(30)).await;
    assert_eq!(report["complete"], true, "{report}");
    let events = ls.events(&group, &sid).await;
    let tunnel: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter(|v| v["direction"] == "tunnel")
        .collect();
    assert_eq!(tunnel.len(), 2, "opened and closed: {events:?}");
    assert_eq!(tunnel[0]["tunnel"]["state"], "opened");
    assert_eq!(tunnel[0]["tunnel"]["host"], "localhost");
    assert_eq!(tunnel[0]["tunnel"]["port"], port);
    assert_eq!(tunnel[1]["tunnel"]["state"], "closed");
    assert_eq!(tunnel[1]["tunnel"]["bytes_to_destination"], 21);
    assert_eq!(tunnel[1]["tunnel"]["bytes_from_destination"], 21);
    assert_eq!(tunnel[1]["sessionId"], sid.as_str());
    let log = String::from_utf8(ls.object(&bucket, &format!("{sid}.log"), WAIT).await).unwrap();
    assert!(log.contains("[tunnel #1: connected to localhost:"), "{log}");
    for sink in [log.as_str(), &events.join("\n")] {
        assert!(
            !sink.contains("tunnel-secret-payload"),
            "the tunnel's bytes leaked: {sink}"
        );
    }
    drop(agent);
    gw.stop().await;
}
