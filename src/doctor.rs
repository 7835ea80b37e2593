//! `session-agent doctor`: checks that this machine can run the agent and record its
//! sessions, and says what to do about each problem. Every check is real: the gateway
//! is asked for a control-channel token, the recordings directory is written to, and
//! each S3 bucket and CloudWatch Logs log group a session document names gets a probe
//! object / log stream that is deleted again, after the same encryption verdicts the
//! agent applies before a session (so a bucket doctor passes is one sessions accept).
//!
//! The report ([`Report`]) is plain data with a `Display`; the checks are the I/O.

use crate::agent::{mgs::Mgs, retention, AgentConfig};
use crate::delivery::aws::{Logs, S3};
use crate::delivery::sink::BucketEncryption;
use crate::delivery::{self, Destinations, GroupVerdict};
use clap::Args;
use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

/// `session-agent doctor` options.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// A session document (the JSON given to `gateway --preferences`, or the content of
    /// an SSM-SessionManagerRunShell document) whose S3 bucket and CloudWatch Logs log
    /// group are checked: exist, writable, encrypted as the document requires.
    #[arg(long, value_name = "FILE")]
    pub document: Option<PathBuf>,
    /// Every `run` option: doctor checks the configuration `run` would use.
    #[command(flatten)]
    pub run: crate::agent::config::RunArgs,
}

/// A check's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but something deserves attention.
    Warn,
    /// Will not work.
    Fail,
    /// Not checked (an earlier failure makes it meaningless).
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// Result.
    pub status: Status,
    /// What was checked.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// What to do, for a warning or failure.
    pub fix: Option<String>,
}

/// Everything doctor found.
#[derive(Debug, Default)]
pub struct Report {
    /// In the order checked.
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, status: Status, what: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check {
            status,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        });
    }

    fn fix(
        &mut self,
        status: Status,
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.checks.push(Check {
            status,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }

    /// True when any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            writeln!(f, "{tag}  {}: {}", c.what, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "      -> {fix}")?;
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        writeln!(
            f,
            "{} checks: {} ok, {} warnings, {} failed, {} skipped",
            self.checks.len(),
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip),
        )
    }
}

/// Runs every check: `config` is the agent configuration `run` would use (or why there
/// is none), read from `config_file`.
pub async fn run(
    args: &DoctorArgs,
    config: Result<&AgentConfig, &str>,
    config_file: Option<&std::path::Path>,
) -> Report {
    let mut report = Report::default();
    report.add(
        Status::Ok,
        "version",
        format!(
            "session-agent {} ({}/{})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        ),
    );
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            report.fix(
                Status::Fail,
                "configuration",
                e,
                "fix the key named above (see config/session-agent.example.toml, or `session-agent config check FILE`)",
            );
            report.add(
                Status::Skip,
                "everything else",
                "needs a valid configuration",
            );
            return report;
        }
    };
    let source = match config_file {
        Some(p) => format!("{} and flags/environment", p.display()),
        None => "flags/environment and defaults (no --config)".into(),
    };
    report.add(Status::Ok, "configuration", format!("valid ({source})"));
    privileges(&mut report);
    #[cfg(target_os = "linux")]
    command_audit(&mut report, config);
    recordings(&mut report, config).await;
    let loaded = endpoint(&mut report, config).await;
    let destinations = match &args.document {
        None => None,
        Some(path) => match read_document(path) {
            Ok(d) => {
                report.add(
                    Status::Ok,
                    "session document",
                    format!("{} is valid", path.display()),
                );
                Some(d)
            }
            Err(e) => {
                report.fix(
                    Status::Fail,
                    "session document",
                    e,
                    "fix the document (see config/README.md for its inputs)",
                );
                None
            }
        },
    };
    aws(
        &mut report,
        loaded,
        config.region.clone(),
        destinations.as_ref(),
    )
    .await;
    report
}

fn read_document(path: &std::path::Path) -> Result<Destinations, String> {
    let (_, resolved) = crate::config::read_session_document(path)?;
    Ok(Destinations::from_inputs(&resolved.inputs))
}

fn privileges(report: &mut Report) {
    // Root on Linux, LocalSystem (as the service runs) on Windows.
    let (privileged, how, lookup_hint, run_privileged) = if cfg!(windows) {
        (
            "LocalSystem",
            "ssm-user or the RunAs user",
            "check the local account ssm-user (lusrmgr.msc)",
            "run the agent as the Windows service (session-agent service install)",
        )
    } else {
        (
            "root",
            "ssm-user or the RunAs user",
            "check /etc/passwd and NSS (getent passwd ssm-user)",
            "run the agent as root (the systemd unit does)",
        )
    };
    if crate::platform::is_privileged() {
        match crate::session::user::lookup(crate::session::user::SSM_USER) {
            Ok(Some(_)) => report.add(
                Status::Ok,
                "privileges",
                format!("running as {privileged}; ssm-user exists (sessions run as {how})"),
            ),
            Ok(None) => report.add(
                Status::Ok,
                "privileges",
                format!("running as {privileged}; ssm-user does not exist yet (the agent creates it at start)"),
            ),
            Err(e) => report.fix(
                Status::Warn,
                "privileges",
                format!("running as {privileged}; cannot look up ssm-user: {e}"),
                lookup_hint,
            ),
        }
    } else {
        report.fix(
            Status::Warn,
            "privileges",
            format!("not running as {privileged}: sessions would run as this user, RunAs and ssm-user are unavailable"),
            run_privileged,
        );
    }
}

/// The command audit's two kernel facilities: the process events connector, and a
/// cgroup v2 the agent can make its sessions' cgroups in. Nothing is created.
#[cfg(target_os = "linux")]
fn command_audit(report: &mut Report, config: &AgentConfig) {
    if !config.command_audit {
        report.add(Status::Ok, "command audit", "off (command_audit = \"off\")");
        return;
    }
    match crate::audit::cn_proc::Listener::subscribe(std::time::Duration::from_secs(1)) {
        Ok(_) => report.add(
            Status::Ok,
            "command audit",
            "the kernel's process events are readable: every program sessions run is recorded",
        ),
        Err(e) => report.fix(
            Status::Warn,
            "command audit",
            e.to_string(),
            "run the agent as root (before Linux 6.6 the process events need CAP_NET_ADMIN) on a kernel with CONFIG_PROC_EVENTS",
        ),
    }
    let mount = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| crate::audit::cgroup::cgroup2_mount(&m));
    let Some(mount) = mount else {
        report.fix(
            Status::Warn,
            "session cgroups",
            "no cgroup v2 file system is mounted: processes that call setsid can outlive their session",
            "mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy",
        );
        return;
    };
    if !crate::platform::is_privileged() {
        report.fix(
            Status::Warn,
            "session cgroups",
            "not root: sessions get no cgroup of their own",
            "run the agent as root (the systemd unit does)",
        );
        return;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let own = crate::audit::cgroup::v2_path(&own)
        .unwrap_or("/")
        .trim_start_matches('/');
    let parent = if own.is_empty() {
        mount.clone()
    } else {
        mount.join(own)
    };
    if rustix::fs::access(&parent, rustix::fs::Access::WRITE_OK).is_ok() {
        report.add(
            Status::Ok,
            "session cgroups",
            format!("each session gets a cgroup under {}", parent.display()),
        );
    } else {
        report.fix(
            Status::Warn,
            "session cgroups",
            format!("{} is not writable", parent.display()),
            "under systemd the unit needs Delegate=yes (the shipped unit has it)",
        );
    }
}

async fn recordings(report: &mut Report, config: &AgentConfig) {
    let root = config.recordings_dir();
    let policy = config.retention;
    let what = format!("recordings {}", root.display());
    let probe_root = root.clone();
    let problem =
        tokio::task::spawn_blocking(move || retention::durability_problem(&probe_root, policy))
            .await
            .unwrap_or_else(|e| Some(format!("the check failed: {e}")));
    match problem {
        None => report.add(
            Status::Ok,
            what,
            format!(
                "writable, at least {} MiB free, undelivered recordings within the {} MiB quota",
                policy.min_free_bytes / (1024 * 1024),
                policy.quota_bytes / (1024 * 1024)
            ),
        ),
        Some(p) => report.fix(
            if policy.fail_closed {
                Status::Fail
            } else {
                Status::Warn
            },
            what,
            if policy.fail_closed {
                format!("{p}; sessions would be refused (recording_policy = \"fail-closed\")")
            } else {
                format!("{p}; sessions would run unrecorded or partly recorded (recording_policy = \"fail-open\")")
            },
            "free space or raise the limits (recording_min_free_mb, recording_quota_mb), or fix the directory's owner and permissions",
        ),
    }
}

/// Checks the gateway (and, in AWS mode, the identity); returns the SDK configuration AWS
/// mode loaded, so the AWS checks do not load it (and ask instance metadata) again.
async fn endpoint(report: &mut Report, config: &AgentConfig) -> Option<aws_config::SdkConfig> {
    let sdk = crate::delivery::aws::load_config(config.region.clone());
    let identity = match crate::agent::identity::resolve(config, sdk).await {
        Ok(i) => i,
        Err(e) => {
            report.fix(
                Status::Fail,
                "AWS identity",
                e.to_string(),
                "set `region` and `target_id` in the configuration, or run on EC2 with instance metadata (IMDSv2) reachable",
            );
            return None;
        }
    };
    if let Some(aws) = &identity.aws {
        report.add(
            Status::Ok,
            "AWS identity",
            format!(
                "{} in {} (gateway {}, SSM API {})",
                identity.target_id, aws.region, identity.endpoint, aws.ssm_endpoint
            ),
        );
    }
    let what = format!("gateway {}", identity.endpoint);
    let fix = if identity.aws.is_some() {
        "check the network path to the endpoint (or set `endpoint`, e.g. a VPC endpoint), and that the credentials allow ssmmessages:CreateControlChannel; for a private CA set `ca_file`"
    } else {
        "start the gateway or fix `endpoint` (SESSION_AGENT_ENDPOINT); for a private CA set `ca_file`"
    };
    let signer = identity.signer.clone();
    let mgs = match Mgs::new(&identity.endpoint, config.ca_file.as_deref(), signer) {
        Ok(m) => m,
        Err(e) => {
            report.fix(Status::Fail, what, crate::error_chain(&e), fix);
            return identity.aws.map(|a| a.sdk);
        }
    };
    let started = Instant::now();
    match mgs
        .create_channel("control-channel", &identity.target_id, None)
        .await
    {
        Ok(_) => report.add(
            Status::Ok,
            what,
            format!(
                "reachable: a control-channel token for {} was issued in {} ms{}",
                identity.target_id,
                started.elapsed().as_millis(),
                if mgs.signs_with_credentials() {
                    " (SigV4-signed request accepted)"
                } else {
                    ""
                }
            ),
        ),
        Err(e) => report.fix(Status::Fail, what, crate::error_chain(&e), fix),
    }
    identity.aws.map(|a| a.sdk)
}

async fn aws(
    report: &mut Report,
    loaded: Option<aws_config::SdkConfig>,
    region: Option<String>,
    destinations: Option<&Destinations>,
) {
    use aws_credential_types::provider::ProvideCredentials;
    let needed = destinations.is_some_and(Destinations::any);
    let missing = if needed { Status::Fail } else { Status::Warn };
    let config = match loaded {
        Some(c) => c,
        None => crate::delivery::aws::load_config(region).await,
    };
    let region = config.region().map(ToString::to_string);
    match &region {
        Some(r) => report.add(Status::Ok, "AWS region", r.clone()),
        None => report.fix(
            missing,
            "AWS region",
            "none configured",
            "set AWS_REGION (or region in ~/.aws/config); needed to deliver recordings to S3 / CloudWatch Logs",
        ),
    }
    let credentials = match config.credentials_provider() {
        Some(p) => p
            .provide_credentials()
            .await
            .map_err(|e| crate::error_chain(&e)),
        None => Err("no credential provider is configured".into()),
    };
    match &credentials {
        Ok(c) => {
            let key = c.access_key_id();
            let shown = if key.len() > 8 {
                format!("{}…{}", &key[..4], &key[key.len() - 4..])
            } else {
                "****".into()
            };
            let expiry = match c.expiry() {
                Some(t) => format!(", expiring at {}", crate::timefmt::rfc3339(crate::timefmt::unix_ms(t), false)),
                None => String::new(),
            };
            report.add(
                Status::Ok,
                "AWS credentials",
                format!("found (access key {shown}{expiry})"),
            );
        }
        Err(e) => report.fix(
            missing,
            "AWS credentials",
            e.clone(),
            "give the agent credentials: an instance role on EC2, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a profile (AWS_PROFILE)",
        ),
    }
    let Some(dest) = destinations else {
        report.add(
            Status::Skip,
            "S3 / CloudWatch Logs",
            "no --document given: pass the session document to check its bucket and log group",
        );
        return;
    };
    if !dest.any() {
        report.add(
            Status::Ok,
            "S3 / CloudWatch Logs",
            "the document sends recordings nowhere (kept on the instance only)",
        );
        return;
    }
    if region.is_none() || credentials.is_err() {
        report.add(
            Status::Skip,
            "S3 / CloudWatch Logs",
            "need a region and credentials",
        );
        return;
    }
    if let Some(d) = &dest.s3 {
        s3(report, &S3::new(&config), d).await;
    }
    if let Some(d) = &dest.cwl {
        cloudwatch(report, &Logs::new(&config), d).await;
    }
}

fn probe_name() -> String {
    format!("session-agent-doctor-{}", uuid::Uuid::new_v4())
}

async fn s3(report: &mut Report, s3: &S3, dest: &delivery::S3Destination) {
    let what = format!("S3 bucket {}", dest.bucket);
    let found = s3.bucket_encryption(&dest.bucket).await;
    let detail = match &found {
        Ok(BucketEncryption::None) => "no default encryption".to_owned(),
        Ok(BucketEncryption::Aes256) => "default encryption SSE-S3 (AES256)".to_owned(),
        Ok(BucketEncryption::Kms { algorithm, key_id }) => format!(
            "default encryption {algorithm}{}",
            key_id
                .as_deref()
                .map(|k| format!(" with key {k}"))
                .unwrap_or_default()
        ),
        Err(e) => format!("encryption unknown: {e}"),
    };
    let encryption = match delivery::check_s3(dest, found) {
        Ok(e) => e,
        Err(refusal) => {
            report.fix(
                Status::Fail,
                what,
                format!("sessions would be refused: {refusal}"),
                "create the bucket with default encryption, or turn s3EncryptionEnabled off in the document",
            );
            return;
        }
    };
    let key = delivery::s3_key(&dest.prefix, &probe_name(), "txt");
    let probe = match tempfile::NamedTempFile::new() {
        Ok(f) => f,
        Err(e) => {
            report.add(
                Status::Fail,
                what,
                format!("cannot write a probe file: {e}"),
            );
            return;
        }
    };
    if let Err(e) = std::fs::write(probe.path(), b"session-agent doctor write check\n") {
        report.add(
            Status::Fail,
            what,
            format!("cannot write a probe file: {e}"),
        );
        return;
    }
    let upload = crate::delivery::sink::Upload {
        bucket: &dest.bucket,
        key: &key,
        content_type: "text/plain; charset=utf-8",
        encryption: &encryption,
    };
    if let Err(e) = s3.upload_file(&upload, probe.path()).await {
        report.fix(
            Status::Fail,
            what,
            format!("{detail}; cannot write: {e}"),
            "allow s3:PutObject (and s3:PutObjectAcl) on the bucket for the agent's credentials",
        );
        return;
    }
    match s3.delete_object(&dest.bucket, &key).await {
        Ok(()) => report.add(
            Status::Ok,
            what,
            format!("{detail}; writable (a probe object was written and deleted)"),
        ),
        Err(e) => report.fix(
            Status::Warn,
            what,
            format!(
                "{detail}; writable, but the probe object s3://{}/{key} could not be deleted: {e}",
                dest.bucket
            ),
            "delete the probe object by hand (the agent itself never deletes from the bucket)",
        ),
    }
}

async fn cloudwatch(report: &mut Report, logs: &Logs, dest: &delivery::CwlDestination) {
    let what = format!("CloudWatch Logs log group {}", dest.group);
    let found = logs.log_group(&dest.group).await;
    let detail = match &found {
        Ok(Some(g)) => match &g.kms_key_id {
            Some(k) => format!("exists, encrypted with KMS key {k}"),
            None => "exists, no KMS key".to_owned(),
        },
        Ok(None) => "does not exist".to_owned(),
        Err(e) => format!("cannot be described: {e}"),
    };
    match delivery::check_log_group(dest, found) {
        Err(refusal) => {
            report.fix(
                Status::Fail,
                what,
                format!("sessions would be refused: {refusal}"),
                "create the log group with a KMS key, or turn cloudWatchEncryptionEnabled off in the document",
            );
            return;
        }
        Ok(GroupVerdict::Skip(why)) => {
            report.fix(
                Status::Fail,
                what,
                why,
                "create the log group (the agent never creates log groups)",
            );
            return;
        }
        Ok(GroupVerdict::Deliver) => {}
    }
    let stream = probe_name();
    let event = crate::delivery::cwl::LogEvent {
        timestamp_ms: i64::try_from(crate::timefmt::unix_ms(std::time::SystemTime::now()))
            .unwrap_or(i64::MAX),
        message: "session-agent doctor write check".into(),
    };
    let written = match logs.ensure_stream(&dest.group, &stream).await {
        Ok(()) => logs
            .put(&dest.group, &stream, std::slice::from_ref(&event))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        report.fix(
            Status::Fail,
            what,
            format!("{detail}; cannot write: {e}"),
            "allow logs:CreateLogStream and logs:PutLogEvents on the log group for the agent's credentials",
        );
        return;
    }
    match logs.delete_stream(&dest.group, &stream).await {
        Ok(()) => report.add(
            Status::Ok,
            what,
            format!("{detail}; writable (a probe stream was written and deleted)"),
        ),
        Err(e) => report.fix(
            Status::Warn,
            what,
            format!("{detail}; writable, but the probe stream {stream} could not be deleted: {e}"),
            "delete the probe stream by hand (allow logs:DeleteLogStream to let doctor clean up)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_what_to_do_and_counts() {
        let mut r = Report::default();
        r.add(Status::Ok, "gateway", "reachable");
        r.fix(
            Status::Fail,
            "S3 bucket b",
            "no default encryption",
            "encrypt it",
        );
        r.add(Status::Skip, "x", "y");
        assert!(r.failed());
        let text = r.to_string();
        assert_eq!(
            text,
            "ok    gateway: reachable\n\
             FAIL  S3 bucket b: no default encryption\n      -> encrypt it\n\
             skip  x: y\n\
             3 checks: 1 ok, 0 warnings, 1 failed, 1 skipped\n"
        );
        let mut fine = Report::default();
        fine.fix(Status::Warn, "privileges", "not root", "run as root");
        assert!(!fine.failed());
    }
}
