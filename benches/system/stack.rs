//! The system under test, as a user runs it: `session-agent gateway` and
//! `session-agent run` as separate processes on loopback (the agent as root, so sessions
//! run as ssm-user as in production), recording to its local spool and streaming to
//! CloudWatch Logs in LocalStack. Plus what the measurements read from `/proc`.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use session_agent::ssm::SsmApi;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const LOCALSTACK: &str = "http://127.0.0.1:4566";
pub const REGION: &str = "us-east-1";
pub const BIN: &str = env!("CARGO_BIN_EXE_session-agent");

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Gateway, LocalStack clients and a log group; agents come and go.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub api: SsmApi,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub log_group: String,
    _gateway: Proc,
}

/// One agent daemon.
pub struct Agent {
    pub target: String,
    pub state: PathBuf,
    proc: Proc,
}

impl Stack {
    /// Checks LocalStack, creates a log group, starts the gateway with preferences that
    /// turn CloudWatch streaming on (`streaming = false`: local spool only).
    pub async fn start(streaming: bool) -> Result<Self> {
        let health = reqwest::get(format!("{LOCALSTACK}/_localstack/health")).await;
        if !health.is_ok_and(|r| r.status().is_success()) {
            bail!(
                "LocalStack is not running on {LOCALSTACK}: run the benchmark with \
                 `bash scripts/bench.sh`, which starts it"
            );
        }
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(LOCALSTACK)
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_credential_types::Credentials::new(
                "test", "test", None, None, "bench",
            ))
            .http_client(session_agent::delivery::aws::https_client())
            .load()
            .await;
        let logs = aws_sdk_cloudwatchlogs::Client::new(&config);
        let log_group = format!("/bench/{}", uuid::Uuid::new_v4().simple());
        logs.create_log_group()
            .log_group_name(&log_group)
            .send()
            .await
            .context("creating the log group in LocalStack")?;

        let dir = tempfile::tempdir()?;
        let mut prefs =
            session_agent::protocol::document::SessionDocument::default_shell().to_json();
        prefs["inputs"]["cloudWatchLogGroupName"] = json!(log_group);
        prefs["inputs"]["cloudWatchEncryptionEnabled"] = json!(false);
        prefs["inputs"]["cloudWatchStreamingEnabled"] = json!(streaming);
        prefs["inputs"]["idleSessionTimeout"] = json!("60");
        let prefs_path = dir.path().join("preferences.json");
        std::fs::write(&prefs_path, serde_json::to_vec_pretty(&prefs)?)?;

        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("gateway.log"))?;
        let gateway = Command::new(BIN)
            .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--preferences")
            .arg(&prefs_path)
            .args(["--log-level", &log_level("warn")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the gateway")?;
        let gateway = Proc(gateway);
        let url = format!("http://127.0.0.1:{port}");
        let api = SsmApi::new(&url, REGION, None, Some(("bench".into(), "bench".into())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the gateway did not listen on {port}: see {}",
                    dir.path().join("gateway.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            dir,
            url,
            api,
            logs,
            log_group,
            _gateway: gateway,
        })
    }

    /// Deletes and re-creates the log group: LocalStack keeps every event in memory and
    /// slows down under hundreds of MB of them, which would then be measured as our
    /// session start time.
    pub async fn empty_log_group(&self) -> Result<()> {
        self.logs
            .delete_log_group()
            .log_group_name(&self.log_group)
            .send()
            .await
            .context("deleting the log group in LocalStack")?;
        self.logs
            .create_log_group()
            .log_group_name(&self.log_group)
            .send()
            .await
            .context("creating the log group in LocalStack")?;
        Ok(())
    }

    /// Starts an agent daemon with a fresh state directory and waits until it is Online.
    pub async fn agent(&self, target: &str) -> Result<Agent> {
        self.agent_with(target, &[]).await
    }

    /// [`Self::agent`] with more options for `run`.
    pub async fn agent_with(&self, target: &str, extra: &[&str]) -> Result<Agent> {
        let state = self.dir.path().join(target);
        std::fs::create_dir_all(&state)?;
        let log = std::fs::File::create(state.join("agent.log"))?;
        let child = Command::new(BIN)
            .args(["run", "--endpoint", &self.url, "--target-id", target])
            .args(extra)
            .arg("--state-dir")
            .arg(&state)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &state)
            .env("AWS_ENDPOINT_URL", LOCALSTACK)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // Room for the 1000-session step plus sessions still closing.
            .env("SESSION_AGENT_MAX_SESSIONS", "1100")
            .env("SESSION_AGENT_LOG", log_level("info"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        let agent = Agent {
            target: target.into(),
            state,
            proc: Proc(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: Value = self
                .api_call(
                    "DescribeInstanceInformation",
                    json!({"Filters":[{"Key":"InstanceIds","Values":[target]}]}),
                )
                .await?;
            if v["InstanceInformationList"][0]["PingStatus"] == "Online" {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {target} never came online; its log: {}",
                    agent.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A gateway API call (AWS JSON 1.1).
    pub async fn api_call(&self, op: &str, body: Value) -> Result<Value> {
        let r = reqwest::Client::new()
            .post(&self.url)
            .header("X-Amz-Target", format!("AmazonSSM.{op}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await?;
        let status = r.status();
        let v: Value = serde_json::from_slice(&r.bytes().await?)?;
        if !status.is_success() {
            bail!("{op}: {status} {v}");
        }
        Ok(v)
    }
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    pub fn log_path(&self) -> PathBuf {
        self.state.join("agent.log")
    }

    /// Waits until every session recorded so far reports complete delivery (so the next
    /// measurement does not share the CPU with uploads still running).
    pub async fn wait_delivered(&self, within: Duration) -> Result<()> {
        let root = self.state.join("recordings");
        let deadline = Instant::now() + within;
        loop {
            let mut pending = 0;
            if let Ok(dirs) = std::fs::read_dir(&root) {
                for d in dirs.flatten() {
                    let status = std::fs::read_to_string(d.path().join("delivery.json"))
                        .ok()
                        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
                    if !status.is_some_and(|s| s["complete"] == true) {
                        pending += 1;
                    }
                }
            }
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{pending} recordings still not delivered after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `BENCH_LOG` (e.g. `debug`) overrides the daemons' log levels, to look into a failure.
fn log_level(default: &str) -> String {
    std::env::var("BENCH_LOG").unwrap_or_else(|_| default.into())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM, ...).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|l| l.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// CPU time (user + system) a process has used, exited threads included.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name in parentheses; utime and stime are fields 14, 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .context("short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Number of threads of a process.
pub fn threads(pid: u32) -> Result<u64> {
    status_kib(pid, "Threads")
}

/// A scratch directory any user may write (the sessions run as ssm-user).
pub fn world_writable_dir(parent: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let d = parent.join(format!("scratch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d)?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777))?;
    // The parents must be traversable.
    let mut p = d.parent();
    while let Some(dir) = p {
        if dir == Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))?;
        }
        p = dir.parent();
    }
    Ok(d)
}
