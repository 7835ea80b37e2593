//! The agent daemon (`session-agent run`): one control channel to the gateway, one data
//! channel and one shell per session.
//!
//! ```text
//!  run ─▶ control loop ──interactive_shell──▶ session task (data channel + PTY)
//!            ▲   │                                    │
//!            │   └──channel_closed──▶ cancel ─────────┘
//!            └────── agent_task_complete ◀── outcome ─┘   (resent until acknowledged)
//! ```
//!
//! The control loop reconnects forever with exponential backoff and jitter (quick first
//! retries, capped), with a fresh token each time. Session tasks are independent tokio
//! tasks: a panic in one becomes a failed outcome for that session only. Completion
//! reports survive control-channel reconnects and are resent until acknowledged.
//!
//! Stopping (the `shutdown` future of [`run`]): `Ctx::stopping` is cancelled, so new
//! sessions are refused and each running one is told ([`STOPPING_NOTICE`]) and ended;
//! its recording closes with an `interrupted` end; reports are still sent while the
//! control channel stays up; sessions, deliveries and recoveries (all in `Ctx::tasks`)
//! get until `shutdown_timeout`. `agent::notify` keeps systemd informed throughout.

#[cfg(target_os = "linux")]
pub(crate) mod audit;
pub mod budget;
pub mod channel;
#[cfg(unix)]
pub(crate) mod command;
pub mod config;
pub mod control;
pub mod heartbeat;
pub mod held;
pub mod identity;
pub mod mgs;
mod notify;
pub(crate) mod plan;
pub mod port;
pub mod recording;
pub mod recovery;
pub mod retention;
pub mod session;

use crate::delivery::aws::{Logs, S3};
use crate::delivery::cwl::SessionFields;
use crate::delivery::sink::BucketEncryption;
use crate::delivery::{self, Destinations, GroupVerdict};
use crate::protocol::document;
use crate::protocol::payload::{task_status, AgentTaskPayload};
use crate::recorder::StartInfo;
use crate::session::pty::Shell;
use crate::session::user::{self, UserInfo};
use channel::Ending;
use recording::{Delivery, Recording};
use session::{DataChannel, SessionInput, SessionIo, SessionOutput};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Agent version reported in OpenControlChannel.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Idle timeout when the document sets none (the console's default).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(20 * 60);
/// Grace between SIGHUP and SIGKILL when a session is terminated.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Shown in a session the agent ends because it is stopping.
pub const STOPPING_NOTICE: &str = "[session-agent] The agent on this instance is stopping (service stop or restart). This session ends now; its recording is kept.";
/// How such a session ended, in its recording and its final report (an `interrupted`
/// end: the transcript, asciicast and CloudWatch stream show it as their last line).
pub const STOPPED_HOW: &str = "interrupted: the agent was stopped (service stop or restart)";

/// Which program a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellChoice {
    /// The user's login shell from the passwd database, as a login shell.
    Login,
    /// `sh`, as upstream does.
    Sh,
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Set with `gateway = "aws"`: requests are SigV4-signed, and what is not configured
    /// is found as on EC2 (see [`identity`]).
    pub aws: Option<AwsSettings>,
    /// Gateway base URL, `http(s)://host[:port]`; `None` (AWS only): from the region.
    pub endpoint: Option<String>,
    /// AWS region for the gateway, the SSM API and delivery; `None`: the SDK's chain
    /// (`AWS_REGION`, the config file, instance metadata).
    pub region: Option<String>,
    /// This node's id (`i-…`, `mi-…`, or any `[A-Za-z0-9._-]` name for the local gateway);
    /// `None` (AWS only): the EC2 instance id from instance metadata.
    pub target_id: Option<String>,
    /// Where the agent keeps its state.
    pub state_dir: PathBuf,
    /// Concurrent sessions allowed.
    pub max_sessions: usize,
    /// Sudo rule for a newly provisioned ssm-user.
    pub sudo_policy: user::SudoPolicy,
    /// Program sessions run.
    pub shell: ShellChoice,
    /// Extra CA certificate (PEM) for the gateway's TLS.
    pub ca_file: Option<PathBuf>,
    /// Our own executable, used as the privilege-dropping shim.
    pub exec_shim: PathBuf,
    /// Retention and quota of local recordings.
    pub retention: retention::Policy,
    /// How long a graceful stop may take.
    pub shutdown_timeout: Duration,
    /// Log filter (installed by `main`; kept here for `config check`).
    pub log_level: String,
    /// Log format (installed by `main`).
    pub log_format: crate::logging::LogFormat,
    /// Local mode only: an access key and secret that sign the agent's channel requests
    /// (`dev` gives its agent the per-run key its strict gateway knows). Not settable in
    /// the configuration file.
    pub local_key: Option<(String, String)>,
    /// Where port sessions may connect, and whether they run at all.
    pub port: port::policy::PortPolicy,
    /// Record every program sessions run, from the kernel (Linux).
    pub command_audit: bool,
    /// The redaction rules: the built-in ones and the administrator's `redact_flags` and
    /// `redact_patterns`, applied to audited argv and to typed and echoed text.
    pub redactor: Arc<crate::audit::redact::Redactor>,
    /// Stream plain typed input to CloudWatch (`stream_input`; off by default: the
    /// command events carry the lines typed at prompts).
    pub stream_input: bool,
    /// What the CloudWatch stream carries: ours, or exactly upstream's (`cloudwatch_stream`).
    pub cloudwatch_stream: crate::delivery::cwl::StreamMode,
}

/// Settings of the `aws` gateway mode.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Domain instead of the region's partition domain.
    pub service_domain: Option<String>,
    /// SSM API URL for the heartbeat; `None`: `https://ssm.<region>.<domain>`.
    pub ssm_endpoint: Option<String>,
}

impl AgentConfig {
    /// Where recordings are kept.
    pub fn recordings_dir(&self) -> PathBuf {
        self.state_dir.join("recordings")
    }
}

/// Facts fixed at start-up that every session needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) config: AgentConfig,
    /// The message gateway (its endpoint, and the signer in AWS mode).
    pub(crate) mgs: mgs::Mgs,
    /// This node's id, as configured or found in instance metadata.
    pub(crate) target_id: String,
    pub(crate) daemon_user: UserInfo,
    pub(crate) daemon_is_root: bool,
    /// AWS configuration, loaded on first need (most local sessions never need it).
    pub(crate) aws: tokio::sync::OnceCell<aws_config::SdkConfig>,
    /// Cancelled when a graceful stop begins.
    pub(crate) stopping: CancellationToken,
    /// Sessions, deliveries and recoveries: what a stop waits for (up to its deadline).
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// The command audit (`None`: off, said at start).
    #[cfg(target_os = "linux")]
    pub(crate) audit: Option<audit::Audit>,
    /// Where sessions' cgroups are made (`None`: not root or no cgroup v2, said at start).
    #[cfg(target_os = "linux")]
    pub(crate) cgroups: Option<crate::audit::cgroup::Sessions>,
}

impl Ctx {
    /// A cgroup for a session about to start, and what the shim is to do for it (join
    /// it; set the session user's audit login uid). Nothing without root.
    #[cfg(target_os = "linux")]
    fn contain(
        &self,
        session_id: &str,
        who: &user::SessionUser,
    ) -> (
        Option<audit::Contained>,
        Option<crate::session::spec::Containment>,
    ) {
        if !self.daemon_is_root {
            return (None, None);
        }
        let contained =
            audit::Contained::create(self.cgroups.as_ref(), self.audit.as_ref(), session_id);
        let containment = crate::session::spec::Containment {
            cgroup: contained.as_ref().and_then(audit::Contained::dir),
            loginuid: Some(who.info.uid),
        };
        (contained, Some(containment))
    }
}

impl Ctx {
    async fn aws(&self) -> &aws_config::SdkConfig {
        self.aws
            .get_or_init(|| delivery::aws::load_config(self.config.region.clone()))
            .await
    }
}

/// Output locations reported in `agent_task_complete` (§8: set when configured, whatever
/// the delivery's fate).
#[derive(Debug, Clone, Default)]
pub struct OutputLocations {
    /// Bucket.
    pub s3_bucket: String,
    /// Key of the transcript.
    pub s3_key: String,
    /// Log group.
    pub cwl_group: String,
    /// Log stream.
    pub cwl_stream: String,
}

/// What a session reports to the control channel when it ends.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The session.
    pub session_id: String,
    /// `FinalTaskStatus`.
    pub status: &'static str,
    /// Shown to the user on failure; a summary otherwise.
    pub output: String,
    /// Where the recording goes.
    pub locations: OutputLocations,
}

impl Outcome {
    /// A failure with this text for the user.
    pub fn failed(session_id: &str, output: String) -> Self {
        Self {
            session_id: session_id.to_owned(),
            status: task_status::FAILED,
            output,
            locations: OutputLocations::default(),
        }
    }
}

/// The remote destinations that passed their checks.
struct Checked {
    s3: Option<(S3, delivery::S3Destination, BucketEncryption)>,
    cwl: Option<(Logs, delivery::CwlDestination)>,
    region: String,
    /// Destinations skipped or unreachable at the start: each logged and shown to the
    /// session's user as one line.
    skipped: Vec<String>,
}

/// How long a destination check before the shell starts may take (the SDK's attempts
/// included) before it counts as unreachable.
const START_CHECK_WAIT: Duration = Duration::from_secs(3);

/// `call`, or a transient error once [`START_CHECK_WAIT`] has passed without an answer.
async fn within_start_wait<T>(
    call: impl std::future::Future<Output = Result<T, delivery::sink::SinkError>>,
) -> Result<T, delivery::sink::SinkError> {
    tokio::time::timeout(START_CHECK_WAIT, call)
        .await
        .unwrap_or_else(|_| {
            Err(delivery::sink::SinkError::Transient(format!(
                "no answer within {} s",
                START_CHECK_WAIT.as_secs()
            )))
        })
}

/// Checks the document's destinations before the shell starts (§8.5).
///
/// # Errors
/// The refusal text for the user.
async fn check_destinations(ctx: &Ctx, dest: &Destinations) -> Result<Checked, String> {
    let mut checked = Checked {
        s3: None,
        cwl: None,
        region: String::new(),
        skipped: Vec::new(),
    };
    if !dest.any() {
        return Ok(checked);
    }
    let config = ctx.aws().await;
    checked.region = config.region().map(ToString::to_string).unwrap_or_default();
    if checked.region.is_empty() {
        let why = "no AWS region is configured for the agent (set AWS_REGION, or region in the AWS config file)".to_owned();
        let required = dest.s3.as_ref().is_some_and(|d| d.require_encryption)
            || dest.cwl.as_ref().is_some_and(|d| d.require_encryption);
        if required {
            return Err(format!(
                "We couldn't start the session because the agent cannot check encryption of its log destinations: {why}."
            ));
        }
        checked.skipped.push(format!(
            "session logs not delivered: {why}; the session is recorded locally"
        ));
        return Ok(checked);
    }
    // Both destinations are asked at once, each within START_CHECK_WAIT: during an
    // outage the SDK's own retries would keep the user before a silent screen for many
    // seconds; an unanswered check is an outage (a notice, delivery retried behind the
    // session), or a refusal where encryption is required.
    let s3 = dest.s3.as_ref().map(|_| S3::new(config));
    let logs = dest.cwl.as_ref().map(|_| Logs::new(config));
    let (found_s3, found_cwl) = tokio::join!(
        async {
            match (&s3, &dest.s3) {
                (Some(s3), Some(d)) => {
                    Some(within_start_wait(s3.bucket_encryption(&d.bucket)).await)
                }
                _ => None,
            }
        },
        async {
            match (&logs, &dest.cwl) {
                (Some(logs), Some(d)) => Some(within_start_wait(logs.log_group(&d.group)).await),
                _ => None,
            }
        }
    );
    if let (Some(s3_dest), Some(s3), Some(found)) = (&dest.s3, s3, found_s3) {
        if let Err(e) = &found {
            tracing::warn!(bucket = %s3_dest.bucket, error = %e, "Cannot read the bucket's default encryption");
            if !s3_dest.require_encryption {
                let what = format!("Amazon S3 bucket \"{}\"", s3_dest.bucket);
                checked
                    .skipped
                    .extend(delivery::unreachable_notice(&what, e));
            }
        }
        let encryption = delivery::check_s3(s3_dest, found)?;
        checked.s3 = Some((s3, s3_dest.clone(), encryption));
    }
    if let (Some(cwl_dest), Some(logs), Some(found)) = (&dest.cwl, logs, found_cwl) {
        if let (Err(e), false) = (&found, cwl_dest.require_encryption) {
            let what = format!("CloudWatch Logs log group \"{}\"", cwl_dest.group);
            checked
                .skipped
                .extend(delivery::unreachable_notice(&what, e));
        }
        match delivery::check_log_group(cwl_dest, found)? {
            GroupVerdict::Deliver => checked.cwl = Some((logs, cwl_dest.clone())),
            GroupVerdict::Skip(why) => checked.skipped.push(why),
        }
    }
    Ok(checked)
}

/// Runs one session from its `interactive_shell` task to its outcome, and hands back what
/// is left to deliver of its recording (run after the outcome is reported).
///
/// The steps, each named: [`admit`] (the session id, the document, what it runs, as whom)
/// before anything is opened; [`DataChannel::open`]; then, with the channel open,
/// [`serve`]: [`handshake`] (KMS), [`prepare`] (the first size, the destinations and the
/// disk checked), [`spawn`] (the shell and its recording), [`pump`]; then the close. However
/// [`serve`] ends (refused, ended before the shell started, or after the pump), its
/// [`Served`] says how, and the channel is finished for it here, in one place, before the
/// outcome is made ([`Served::conclude`]).
pub(crate) async fn run_session(
    ctx: Arc<Ctx>,
    task: AgentTaskPayload,
    cancel: CancellationToken,
) -> (Outcome, Option<Delivery>) {
    let session_id = task.session_id.clone();
    let (doc, plan, who) = match admit(&ctx, &task) {
        Ok(admitted) => admitted,
        Err(refusal) => return (Outcome::failed(&session_id, refusal), None),
    };
    let mut channel = match DataChannel::open(&ctx.mgs, &session_id, &ctx.target_id).await {
        Ok(c) => c,
        Err(e) => {
            let output = format!("could not open the data channel: {e}");
            return (Outcome::failed(&session_id, output), None);
        }
    };
    let served = serve(&ctx, &task, doc, plan, who, &mut channel, &cancel).await;
    // The close: the one place the channel is finished, on every way out of serve.
    channel.finish(served.terminating()).await;
    served.conclude(&session_id).await
}

/// How [`serve`] ended; the channel is still open.
enum Served {
    /// Refused before the pump, with what the user is shown.
    Refused(String),
    /// The client went away before the shell started.
    EndedEarly(Outcome),
    /// The session ran: how, and what is left of it.
    Ran(Box<Ran>),
}

/// A session whose shell ran, after its pump and the shell's termination; what is left
/// to do once the channel is finished.
struct Ran {
    ending: Ending,
    /// Ended by a stop of the agent (not by the user or the service).
    agent_stopping: bool,
    exit: Option<crate::session::pty::ExitStatus>,
    /// Why the port forwarder failed, if it did (the session's outcome is then a failure).
    failure: Option<String>,
    /// A port session (a forwarder, not a shell).
    forwarded: bool,
    /// A command session (`InteractiveCommands`), not a shell.
    command: bool,
    /// The command audit, to record what is left of the session's processes first.
    #[cfg(target_os = "linux")]
    audit: Option<audit::Audit>,
    tap: Option<recording::Tap>,
    recording: Option<Recording>,
    checked: Checked,
    streamer: Option<tokio::task::JoinHandle<crate::delivery::stream::StreamReport>>,
    locations: OutputLocations,
}

impl Served {
    /// Whether the channel's finish says Terminating (§6.6): the shell exited, or the
    /// agent is stopping.
    fn terminating(&self) -> bool {
        match self {
            // Upstream sends no Terminating for a port session.
            Served::Ran(ran) if ran.forwarded => false,
            Served::Ran(ran) => ran.ending == Ending::ShellExited || ran.agent_stopping,
            Served::Refused(_) | Served::EndedEarly(_) => false,
        }
    }

    /// The outcome, after the close: the recording's end written and what is left to
    /// deliver.
    async fn conclude(self, session_id: &str) -> (Outcome, Option<Delivery>) {
        match self {
            Served::Refused(output) => (Outcome::failed(session_id, output), None),
            Served::EndedEarly(outcome) => (outcome, None),
            Served::Ran(ran) => ran.conclude(session_id).await,
        }
    }
}

/// Admission, before anything is opened: a valid session id, a document that resolves,
/// a session type this agent runs (never a shell for another type), and the user it runs
/// as. The refusal otherwise.
fn admit(
    ctx: &Ctx,
    task: &AgentTaskPayload,
) -> Result<(document::SessionDocument, plan::Plan, user::SessionUser), String> {
    let session_id = &task.session_id;
    if !crate::protocol::payload::valid_session_id(session_id) {
        tracing::warn!(session = ?session_id, "Refusing a session id that is not [A-Za-z0-9+=,.@_:-]");
        return Err("invalid session id: only letters, digits and +=,.@_:- are accepted".into());
    }
    let doc = match document::resolve(&task.document_content, &task.parameters) {
        Ok(d) => d,
        Err(e) => return Err(format!("invalid session document: {e}")),
    };
    // Exactly what the document asks for, or nothing: never a shell for another type.
    let plan = match plan::plan_for(&doc) {
        Ok(plan) => plan,
        Err(refusal) => {
            tracing::warn!(session = %session_id, document = %task.document_name, session_type = %doc.session_type, "Session refused: session type not supported");
            return Err(refusal);
        }
    };
    if matches!(plan, plan::Plan::Port(_)) {
        if let Err(denial) = ctx.config.port.check_enabled() {
            tracing::warn!(session = %session_id, document = %task.document_name, "Port session refused: port forwarding is off");
            return Err(denial.to_string());
        }
    }
    let who = match user::resolve_session_user(
        doc.inputs.run_as_enabled,
        &doc.inputs.run_as_default_user,
        &task.run_as_user,
        ctx.daemon_is_root,
        &ctx.daemon_user,
    ) {
        Ok(u) => u,
        Err(e) => return Err(e.to_string()),
    };
    Ok((doc, plan, who))
}

/// Everything while the data channel is open, step by step; see [`run_session`].
async fn serve(
    ctx: &Arc<Ctx>,
    task: &AgentTaskPayload,
    doc: document::SessionDocument,
    plan: plan::Plan,
    who: user::SessionUser,
    channel: &mut DataChannel,
    cancel: &CancellationToken,
) -> Served {
    let client_version = match handshake(ctx, &task.session_id, &doc, channel).await {
        Ok(v) => v,
        Err(refusal) => return Served::Refused(refusal),
    };
    let wait_for_size = !matches!(plan, plan::Plan::Port(_));
    if !wait_for_size {
        // From here on, nothing but the tunnel's bytes is sent as output: no notice (a
        // skipped log destination, a limit, the agent's stop) may reach the tunnel.
        channel.port_session();
    }
    let prepared = match prepare(ctx, &task.session_id, &doc, wait_for_size, channel).await {
        Ok(p) => p,
        Err(early) => return early,
    };
    let spawned = match &plan {
        plan::Plan::Shell => spawn(ctx, task, &doc, &who, None, prepared).await,
        plan::Plan::Command(commands) => {
            spawn(ctx, task, &doc, &who, Some(commands), prepared).await
        }
        #[cfg(unix)]
        plan::Plan::Exec(request) => spawn_exec(ctx, task, &who, request, prepared).await,
        plan::Plan::Port(request) => {
            let mode = port::mode(request, &client_version);
            tracing::info!(session = %task.session_id, host = %request.host(), port = request.port, ?mode, client_version = %client_version, "Port session");
            spawn_port(ctx, task, &who, request, mode, prepared).await
        }
    };
    let spawned = match spawned {
        Ok(s) => s,
        Err(refusal) => {
            // A session announced to the audit that never ran is forgotten there.
            #[cfg(target_os = "linux")]
            if let Some(audit) = &ctx.audit {
                audit.unregister(&task.session_id).await;
            }
            return Served::Refused(refusal);
        }
    };
    Served::Ran(Box::new(pump(ctx, &doc, spawned, channel, cancel).await))
}

/// A decrypt step for a handshake without KMS (never called).
type NoDecrypt = fn(Vec<u8>, Option<String>) -> std::future::Ready<Result<Vec<u8>, String>>;

/// The handshake when the session type requires it (Port, NonInteractiveCommands) or the
/// document asks for encryption (§5); the client's version (empty without a handshake),
/// or the refusal.
async fn handshake(
    ctx: &Ctx,
    session_id: &str,
    doc: &document::SessionDocument,
    channel: &mut DataChannel,
) -> Result<String, String> {
    if !doc.requires_handshake() {
        return Ok(String::new());
    }
    let session_type = doc.session_type.as_str();
    // The plugin chooses its port mode from these (protocol-sessions.md §1.2).
    let properties = if doc.session_type == document::SessionType::Port {
        doc.properties.clone()
    } else {
        serde_json::Value::Null
    };
    if !doc.encryption_enabled() {
        return channel
            .handshake(session_type, properties, None::<(&str, NoDecrypt)>)
            .await
            .map_err(|e| {
                tracing::warn!(session = %session_id, error = %e, "Handshake failed; session refused");
                format!("We couldn't start the session: {e}")
            });
    }
    let kms = delivery::aws::Kms::new(ctx.aws().await);
    let key_id = doc.inputs.kms_key_id.clone();
    let (sid, target) = (session_id.to_owned(), ctx.target_id.clone());
    let decrypt = |blob: Vec<u8>, challenge: Option<String>| async move {
        let context = crate::protocol::payload::kms_context(&sid, &target, challenge.as_deref());
        let key = kms
            .decrypt(&blob, &key_id, &context)
            .await
            .map_err(|e| format!("KMS Decrypt of the session key failed: {e}"))?;
        Ok(key)
    };
    match channel
        .handshake(
            session_type,
            properties,
            Some((doc.inputs.kms_key_id.as_str(), decrypt)),
        )
        .await
    {
        Ok(client_version) => {
            tracing::info!(session = %session_id, kms_key_id = %doc.inputs.kms_key_id, "Session encrypted with KMS");
            Ok(client_version)
        }
        Err(e) => {
            tracing::warn!(session = %session_id, error = %e, "KMS handshake failed; session refused");
            Err(format!("We couldn't start the encrypted session: {e}"))
        }
    }
}

/// What [`prepare`] found out before the shell is spawned.
struct Prepared {
    size: Option<(u16, u16)>,
    early_input: Vec<u8>,
    checked: Checked,
    policy: retention::Policy,
    locations: OutputLocations,
}

/// Before the shell: the client's first size (and early keystrokes), the destinations
/// checked (§8.5; what is skipped is told in the session), the disk's durability under
/// the recording policy. How the session ended otherwise ([`Served::EndedEarly`] or
/// [`Served::Refused`]).
async fn prepare(
    ctx: &Ctx,
    session_id: &str,
    doc: &document::SessionDocument,
    wait_for_size: bool,
    channel: &mut DataChannel,
) -> Result<Prepared, Served> {
    let mut early_input = Vec::new();
    let wait = if wait_for_size {
        session::FIRST_SIZE_WAIT
    } else {
        Duration::ZERO
    };
    let size = channel.first_size(wait, &mut early_input).await;
    if channel.closed_early {
        return Err(Served::EndedEarly(Outcome {
            session_id: session_id.to_owned(),
            status: task_status::SUCCESS,
            output: "terminated before the shell started".into(),
            locations: OutputLocations::default(),
        }));
    }
    let destinations = Destinations::from_inputs(&doc.inputs);
    let checked = match check_destinations(ctx, &destinations).await {
        Ok(c) => c,
        Err(refusal) => {
            tracing::warn!(session = %session_id, reason = %refusal, "Session refused");
            return Err(Served::Refused(refusal));
        }
    };
    for why in &checked.skipped {
        tracing::error!(session = %session_id, "{why}");
        let _ = channel.notice(&format!("[session-agent] {why}")).await;
    }
    let policy = ctx.config.retention;
    let root = ctx.config.recordings_dir();
    let problem = tokio::task::spawn_blocking(move || retention::durability_problem(&root, policy))
        .await
        .unwrap_or_else(|e| Some(format!("the check failed: {e}")));
    if let Some(problem) = problem {
        if policy.fail_closed {
            let refusal = refuse_unrecorded(&problem);
            tracing::warn!(session = %session_id, reason = %refusal, "Session refused");
            return Err(Served::Refused(refusal));
        }
        tracing::warn!(session = %session_id, %problem, "This session may not be recorded durably; it goes on (recording_policy = \"fail-open\")");
    }
    let mut locations = OutputLocations::default();
    if let Some((_, d, _)) = &checked.s3 {
        locations.s3_bucket.clone_from(&d.bucket);
        locations.s3_key = delivery::s3_key(&d.prefix, session_id, "log");
    }
    if let Some((_, d)) = &checked.cwl {
        locations.cwl_group.clone_from(&d.group);
        locations.cwl_stream = session_id.to_owned();
    }
    Ok(Prepared {
        size,
        early_input,
        checked,
        policy,
        locations,
    })
}

/// How long a port session's forwarder may take to close its connections (and record
/// them) once the session has ended.
const FORWARDER_CLOSE: Duration = Duration::from_secs(5);

/// What runs a session: a shell (or command) on a PTY, or a port forwarder.
enum Runner {
    /// `command`: an `InteractiveCommands` command rather than a shell.
    Shell {
        shell: Arc<std::sync::Mutex<Shell>>,
        command: bool,
    },
    /// A port forwarder (`port`), or a command without a terminal: its error ends the
    /// session as failed; its exit status, when it has one, is the session's.
    Task {
        task: tokio::task::JoinHandle<Result<Option<crate::session::pty::ExitStatus>, String>>,
        port: bool,
    },
}

/// A spawned shell (or forwarder) with its I/O and its recording, ready for the pump.
struct Spawned {
    runner: Runner,
    /// The session's cgroup, ended after the runner.
    #[cfg(target_os = "linux")]
    contained: Option<audit::Contained>,
    io: SessionIo,
    early_input: Vec<u8>,
    tap: Option<recording::Tap>,
    recording: Option<Recording>,
    streamer: Option<tokio::task::JoinHandle<crate::delivery::stream::StreamReport>>,
    checked: Checked,
    locations: OutputLocations,
}

/// The shell (as `who`, at the client's size, the document's profile as its first input)
/// and its recording (and CloudWatch streamer). The refusal otherwise; a shell that
/// started is terminated first.
async fn spawn(
    ctx: &Ctx,
    task: &AgentTaskPayload,
    doc: &document::SessionDocument,
    who: &user::SessionUser,
    command: Option<&str>,
    prepared: Prepared,
) -> Result<Spawned, String> {
    let Prepared {
        size,
        mut early_input,
        checked,
        policy,
        locations,
    } = prepared;
    let session_id = task.session_id.clone();
    let login_shell = ctx.config.shell == ShellChoice::Login;
    #[allow(unused_mut)]
    let mut spec = match command {
        Some(commands) => crate::session::pty::command_spec(who, commands, size),
        None => crate::session::pty::session_spec(who, login_shell, size),
    };
    #[cfg(target_os = "linux")]
    let (contained, containment) = ctx.contain(&session_id, who);
    #[cfg(target_os = "linux")]
    {
        spec.contain = containment;
    }
    let spec_program = spec.program.display().to_string();
    let shim = ctx.config.exec_shim.clone();
    let spawned = tokio::task::spawn_blocking(move || Shell::spawn(&spec, &shim)).await;
    let mut shell = match spawned {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("Unable to start command: {e}")),
        Err(e) => return Err(format!("Unable to start command: {e}")),
    };
    tracing::info!(session = %session_id, user = %who.info.name, pid = shell.pid(), "Shell started");
    // The document's shell profile for this platform, typed as the first line (Enter is
    // CR on a Windows console).
    let (profile, enter) = if cfg!(windows) {
        (&doc.inputs.shell_profile.windows, b'\r')
    } else {
        (&doc.inputs.shell_profile.linux, b'\n')
    };
    // Not for a command: it gets nothing typed but what the client sends.
    if command.is_none() && !profile.trim().is_empty() {
        early_input.extend_from_slice(profile.as_bytes());
        early_input.push(enter);
    }
    let (reader, writer) = match shell.take_io() {
        Ok(Some(io)) => io,
        failed => {
            let why = match failed {
                Err(e) => e.to_string(),
                Ok(_) => "the PTY could not be opened".into(),
            };
            let _ = tokio::task::spawn_blocking(move || shell.terminate(KILL_GRACE)).await;
            return Err(format!("Unable to start command: {why}"));
        }
    };
    // The shell's exit, observed without reaping it (terminate() reaps after cleaning up),
    // on the runtime (a pidfd), not on a thread.
    let (exit_tx, exited) = tokio::sync::oneshot::channel();
    let process = shell.process();
    tokio::spawn(async move {
        let _ = process.exited().await;
        let _ = exit_tx.send(());
    });
    let start = start_info(
        ctx,
        task,
        who,
        size.unwrap_or((80, 24)),
        Some("xterm-256color"),
        spec_program.clone(),
    );
    let recorded = match record(ctx, task, who, &checked, policy, start) {
        Ok(r) => r,
        Err(refusal) => {
            let _ = tokio::task::spawn_blocking(move || shell.terminate(KILL_GRACE)).await;
            return Err(refusal);
        }
    };
    // Every program the shell (or command) runs, from the kernel.
    #[cfg(target_os = "linux")]
    if let (Some(audit), Some(pid), Some(tap)) = (&ctx.audit, shell.pid(), &recorded.tap) {
        audit.register(pid, &session_id, tap.clone());
    }
    let shell = Arc::new(std::sync::Mutex::new(shell));
    let prober = shell.clone();
    let echo_probe = Box::new(move || prober.lock().ok().and_then(|s| s.echo_off()));
    let resizer = shell.clone();
    let resize = Box::new(move |cols: u16, rows: u16| {
        if let Ok(s) = resizer.lock() {
            if let Err(e) = s.resize(cols, rows) {
                tracing::debug!(error = %e, "Resize failed");
            }
        }
    });
    let io = SessionIo {
        output: SessionOutput::Pty(reader),
        input: SessionInput::Pty(writer),
        resize,
        exited,
        echo_probe,
        flags: None,
    };
    Ok(Spawned {
        runner: Runner::Shell {
            shell,
            command: command.is_some(),
        },
        #[cfg(target_os = "linux")]
        contained,
        io,
        early_input,
        tap: recorded.tap,
        recording: recorded.recording,
        streamer: recorded.streamer,
        checked,
        locations,
    })
}

/// The start record of a session's recording: who, where, now; its terminal's size
/// (`(0, 0)`: none), `TERM`, and what runs (the shell, the command, the port).
fn start_info(
    ctx: &Ctx,
    task: &AgentTaskPayload,
    who: &user::SessionUser,
    (cols, rows): (u16, u16),
    term: Option<&str>,
    runs: String,
) -> StartInfo {
    StartInfo {
        session_id: task.session_id.clone(),
        user: task.session_owner.clone(),
        run_as_user: who.info.name.clone(),
        owner: task.session_owner.clone(),
        target: ctx.target_id.clone(),
        reason: None,
        cols,
        rows,
        started_unix_ms: recording::unix_ms(),
        term: term.map(str::to_owned),
        shell: Some(runs),
    }
}

/// A session's recording and its CloudWatch streamer, once started.
struct Recorded {
    tap: Option<recording::Tap>,
    recording: Option<Recording>,
    streamer: Option<tokio::task::JoinHandle<crate::delivery::stream::StreamReport>>,
}

/// Starts the session's recording (and its CloudWatch streamer when the document streams).
///
/// # Errors
/// The refusal when the recording cannot be created under `fail-closed`.
fn record(
    ctx: &Ctx,
    task: &AgentTaskPayload,
    who: &user::SessionUser,
    checked: &Checked,
    policy: retention::Policy,
    start: StartInfo,
) -> Result<Recorded, String> {
    let session_id = task.session_id.clone();
    let streaming_to = checked.cwl.as_ref().filter(|(_, d)| d.streaming);
    let fields = SessionFields {
        region: checked.region.clone(),
        target_id: ctx.target_id.clone(),
        owner_arn: task.session_owner.clone(),
        run_as_user: who.info.name.clone(),
        session_id: session_id.clone(),
        mode: ctx.config.cloudwatch_stream,
    };
    let meta = recording::Meta {
        session_id: session_id.clone(),
        s3: checked.s3.as_ref().map(|(_, d, _)| d.clone()),
        cwl: checked.cwl.as_ref().map(|(_, d)| d.clone()),
        fields: Some(fields.clone()),
        skipped: checked.skipped.clone(),
        stream_input: ctx.config.stream_input,
        ..recording::Meta::default()
    };
    let options = recording::Options {
        headroom: policy.headroom_bytes,
        fail_closed: policy.fail_closed,
        redactor: ctx.config.redactor.clone(),
    };
    let started = Recording::start(&ctx.config.recordings_dir(), start, &meta, options);
    let (tap, recording) = match started {
        Ok((tap, rec)) => (Some(tap), Some(rec)),
        Err(e) if policy.fail_closed => {
            let refusal = refuse_unrecorded(&format!("cannot create the recording: {e}"));
            tracing::error!(session = %session_id, reason = %refusal, "Session refused");
            return Err(refusal);
        }
        Err(e) => {
            tracing::error!(session = %session_id, error = %e, dir = %ctx.config.recordings_dir().display(), "Cannot create the recording; this session is NOT recorded (recording_policy = \"fail-open\")");
            (None, None)
        }
    };
    let streamer = match (streaming_to, &recording) {
        (Some((logs, d)), Some(rec)) => rec.stream_progress.clone().map(|progress| {
            tokio::spawn(crate::delivery::stream::stream_to_cloudwatch(
                logs.clone(),
                d.group.clone(),
                fields,
                rec.paths.clone(),
                progress,
            ))
        }),
        _ => None,
    };
    Ok(Recorded {
        tap,
        recording,
        streamer,
    })
}

/// A `NonInteractiveCommands` program (no terminal) as the session user, and its
/// recording. A program that cannot start is the refusal (`Unable to start command`).
#[cfg(unix)]
async fn spawn_exec(
    ctx: &Ctx,
    task: &AgentTaskPayload,
    who: &user::SessionUser,
    request: &command::CommandRequest,
    prepared: Prepared,
) -> Result<Spawned, String> {
    let Prepared {
        size,
        checked,
        policy,
        locations,
        ..
    } = prepared;
    let mut spec = crate::session::pty::session_spec(who, false, None);
    let (program, args) = request.argv.split_first().ok_or("no program to run")?;
    spec.program = program.into();
    spec.args = args.to_vec();
    #[cfg(target_os = "linux")]
    let (contained, containment) = ctx.contain(&task.session_id, who);
    #[cfg(target_os = "linux")]
    {
        spec.contain = containment;
    }
    let shown = shlex::try_join(request.argv.iter().map(String::as_str))
        .unwrap_or_else(|_| request.argv.join(" "));
    let start = start_info(
        ctx,
        task,
        who,
        size.unwrap_or((80, 24)),
        None,
        shown.clone(),
    );
    // Recorded first: nothing runs unrecorded under fail-closed.
    let recorded = record(ctx, task, who, &checked, policy, start)?;
    let (io, task_handle) = match crate::session::pty::spawn_piped(&spec, &ctx.config.exec_shim) {
        Ok(child) => {
            tracing::info!(session = %task.session_id, user = %who.info.name, pid = child.id(), command = %shown, "Command started");
            #[cfg(target_os = "linux")]
            if let (Some(audit), Some(pid), Some(tap)) = (&ctx.audit, child.id(), &recorded.tap) {
                audit.register(pid, &task.session_id, tap.clone());
            }
            let started = command::start(child, request.separate.clone());
            (started.io, started.task)
        }
        // The session ends at once with the reason; its recording says so and is
        // delivered like any other.
        Err(e) => {
            let failed = port::Started::failed(format!("Unable to start command: {e}"));
            (failed.io, failed.task)
        }
    };
    Ok(Spawned {
        runner: Runner::Task {
            task: task_handle,
            port: false,
        },
        #[cfg(target_os = "linux")]
        contained,
        io,
        early_input: Vec::new(),
        tap: recorded.tap,
        recording: recorded.recording,
        streamer: recorded.streamer,
        checked,
        locations,
    })
}

/// A port session's forwarder (after the policy's checks, its first connection in the
/// one-connection modes) and its recording: each connection an audit record. A
/// destination the policy refuses is recorded, and the session then ends with the
/// refusal (the recording is delivered like any other).
async fn spawn_port(
    ctx: &Ctx,
    task: &AgentTaskPayload,
    who: &user::SessionUser,
    request: &port::PortRequest,
    mode: port::Mode,
    prepared: Prepared,
) -> Result<Spawned, String> {
    let Prepared {
        early_input,
        checked,
        policy,
        locations,
        ..
    } = prepared;
    let start = start_info(
        ctx,
        task,
        who,
        (0, 0),
        None,
        format!("port {}:{}", request.host(), request.port),
    );
    let recorded = record(ctx, task, who, &checked, policy, start)?;
    let audit = port::Audit::new(recorded.tap.clone(), request, &task.session_id);
    let started = match port::resolve(request, &ctx.config.port).await {
        Ok(dest) => port::start(mode, dest, audit, ctx.config.port.max_connections).await,
        Err(denial) => {
            let why = denial.to_string();
            audit.denied(1, &why).await;
            Err(why)
        }
    };
    let started = started.unwrap_or_else(port::Started::failed);
    Ok(Spawned {
        runner: Runner::Task {
            task: started.task,
            port: true,
        },
        #[cfg(target_os = "linux")]
        contained: None,
        io: started.io,
        // Bytes the client sent while the forwarder was being set up.
        early_input,
        tap: recorded.tap,
        recording: recorded.recording,
        streamer: recorded.streamer,
        checked,
        locations,
    })
}

/// The pump: the session runs until its shell exits, it is ended, or its channel is
/// lost; then the shell is terminated (and told first when the agent is stopping).
async fn pump(
    ctx: &Ctx,
    doc: &document::SessionDocument,
    spawned: Spawned,
    channel: &mut DataChannel,
    cancel: &CancellationToken,
) -> Ran {
    let Spawned {
        runner,
        #[cfg(target_os = "linux")]
        contained,
        io,
        early_input,
        tap,
        mut recording,
        streamer,
        checked,
        locations,
    } = spawned;
    let minutes = |m: Option<u32>| m.map(|m| Duration::from_secs(u64::from(m) * 60));
    let limits = channel::Limits {
        // The console's default idle timeout applies when the document sets none.
        idle: minutes(doc.inputs.idle_session_timeout).or(Some(DEFAULT_IDLE)),
        max: minutes(doc.inputs.max_session_duration),
    };
    let recording_failed = recording.as_mut().and_then(|r| r.failed.take());
    // A tunnel's bytes are never recorded (they may be TLS or SSH): its forwarder
    // records each connection instead.
    let keys_and_screen = match runner {
        Runner::Task { port: true, .. } => None,
        Runner::Shell { .. } | Runner::Task { .. } => tap.clone(),
    };
    let ending = channel
        .pump(
            io,
            early_input,
            limits,
            cancel,
            keys_and_screen,
            recording_failed,
        )
        .await;
    // Ended by a stop of the agent (not by the user or the service): say so first.
    let agent_stopping = ending == Ending::Terminated && ctx.stopping.is_cancelled();
    if agent_stopping {
        let _ = channel.notice(STOPPING_NOTICE).await;
    }
    let forwarded = matches!(runner, Runner::Task { port: true, .. });
    let command = matches!(
        runner,
        Runner::Shell { command: true, .. } | Runner::Task { port: false, .. }
    );
    let (exit, failure) = match runner {
        Runner::Shell { shell, .. } => {
            let exit = tokio::task::spawn_blocking(move || {
                let mut s = shell
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.terminate(KILL_GRACE)
            })
            .await
            .ok();
            (exit, None)
        }
        Runner::Task { mut task, .. } => {
            // Ended by the client, a limit or a stop: the pipes are gone, so the
            // forwarder closes its connections and records them; one that does not
            // finish soon is stopped.
            let finished = tokio::time::timeout(FORWARDER_CLOSE, &mut task).await;
            if finished.is_err() {
                task.abort();
            }
            let joined = match finished {
                Ok(r) => r,
                Err(_) => task.await,
            };
            match joined {
                Ok(Err(e)) => (None, Some(e)),
                Ok(Ok(status)) => (status, None),
                Err(_) => (None, None),
            }
        }
    };
    // What the session left running (a `setsid` job, a daemon it started) ends with it;
    // the audit records their exits before the recording's end (`Ran::conclude`).
    #[cfg(target_os = "linux")]
    if let Some(contained) = contained {
        contained.end().await;
    }
    Ran {
        ending,
        agent_stopping,
        exit,
        failure,
        forwarded,
        command,
        #[cfg(target_os = "linux")]
        audit: ctx.audit.clone(),
        tap,
        recording,
        checked,
        streamer,
        locations,
    }
}

impl Ran {
    /// After the close: the recording's end, what is left to deliver, the outcome.
    async fn conclude(self, session_id: &str) -> (Outcome, Option<Delivery>) {
        let Ran {
            ending,
            agent_stopping,
            exit,
            failure,
            forwarded: _,
            command,
            #[cfg(target_os = "linux")]
            audit,
            tap,
            recording,
            checked,
            streamer,
            locations,
        } = self;
        let session_id = session_id.to_owned();
        tracing::info!(session = %session_id, ?ending, exit = exit.as_ref().map(tracing::field::display), "Session ended");
        let code = exit.as_ref().and_then(|e| e.code);
        let how = match &ending {
            Ending::ShellExited if failure.is_some() => {
                format!("failed: {}", failure.as_deref().unwrap_or_default())
            }
            Ending::ShellExited => "exited".to_owned(),
            Ending::Terminated if agent_stopping => STOPPED_HOW.to_owned(),
            Ending::Terminated => "terminated".to_owned(),
            Ending::TimedOut(limit) => limit.ended(),
            Ending::ChannelLost(e) => format!("data channel lost: {e}"),
            Ending::Internal(e) => format!("agent error: {e}"),
            Ending::RecordingFailed(e) => format!("recording failed: {e}"),
        };
        // The processes' last exits go in before the end.
        #[cfg(target_os = "linux")]
        if let Some(audit) = &audit {
            audit.unregister(&session_id).await;
        }
        if let Some(tap) = tap {
            tap.end(code, &how).await;
        }
        let delivery = match recording {
            Some(rec) => {
                let (paths, summary) = rec.finish();
                Some(Delivery {
                    session_id: session_id.clone(),
                    paths,
                    summary,
                    s3: checked.s3,
                    cwl_upload: checked.cwl.filter(|(_, d)| !d.streaming),
                    streamer,
                    skipped: checked.skipped,
                })
            }
            None => None,
        };
        let outcome = match ending {
            Ending::ShellExited if failure.is_some() => {
                Outcome::failed(&session_id, failure.unwrap_or_default())
            }
            Ending::ChannelLost(e) => {
                Outcome::failed(&session_id, format!("the data channel was lost: {e}"))
            }
            Ending::Internal(e) => Outcome::failed(&session_id, e),
            Ending::RecordingFailed(reason) => {
                tracing::error!(session = %session_id, %reason, "Session ended: its recording cannot be written (recording_policy = \"fail-closed\")");
                Outcome::failed(&session_id, channel::recording_failed_notice(&reason))
            }
            Ending::Terminated if agent_stopping => {
                Outcome::failed(&session_id, STOPPED_HOW.into())
            }
            Ending::TimedOut(limit) => Outcome {
                session_id: session_id.clone(),
                status: task_status::TIMED_OUT,
                output: limit.ended(),
                locations: OutputLocations::default(),
            },
            Ending::ShellExited | Ending::Terminated => Outcome {
                session_id: session_id.clone(),
                status: task_status::SUCCESS,
                output: match code {
                    Some(code) if command => format!("command exited with status {code}"),
                    Some(code) => format!("shell exited with status {code}"),
                    None => String::new(),
                },
                locations: OutputLocations::default(),
            },
        };
        (
            Outcome {
                locations,
                ..outcome
            },
            delivery,
        )
    }
}

/// The refusal shown when `recording_policy = "fail-closed"` and a session cannot be
/// recorded durably.
fn refuse_unrecorded(problem: &str) -> String {
    format!(
        "We couldn't start the session because it cannot be recorded durably on the instance: {problem}. The agent is set to refuse sessions it cannot record (recording_policy = \"fail-closed\")."
    )
}

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// TLS or endpoint set-up.
    #[error(transparent)]
    Mgs(#[from] mgs::MgsError),
    /// The daemon's own user cannot be looked up.
    #[error("cannot find the daemon's own user: {0}")]
    NoSelf(user::UserError),
}

/// Runs the daemon until `shutdown` resolves: provisions ssm-user (as root), then keeps
/// the control channel up and serves sessions.
///
/// # Errors
/// Start-up failures only; everything after start is retried, not returned.
/// Why writing /proc/self/oom_score_adj failed, for the log: lowering the score needs
/// CAP_SYS_RESOURCE, which root in a container or a restricted unit may lack, so "needs
/// root" is only said to a process that is not root.
fn oom_failure(e: &std::io::Error, is_root: bool) -> String {
    const EROFS: i32 = 30;
    match (e.kind(), e.raw_os_error()) {
        (_, Some(EROFS)) => format!("/proc is read-only here, as in some containers: {e}"),
        (std::io::ErrorKind::PermissionDenied, _) if is_root => format!(
            "running as root but without CAP_SYS_RESOURCE, as in a container or a unit that drops it: {e}"
        ),
        (std::io::ErrorKind::PermissionDenied, _) => {
            format!("needs root or CAP_SYS_RESOURCE: {e}")
        }
        _ => e.to_string(),
    }
}

pub async fn run(
    mut config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let daemon_user = user::daemon_user().map_err(AgentError::NoSelf)?;
    let daemon_is_root = crate::platform::is_privileged();
    match crate::session::pty::set_oom_score_adj(crate::session::pty::DAEMON_OOM_SCORE_ADJ) {
        Ok(()) => tracing::debug!(
            oom_score_adj = crate::session::pty::DAEMON_OOM_SCORE_ADJ,
            "OOM score lowered (sessions get the default)"
        ),
        Err(e) => {
            tracing::info!(
                "Cannot lower the daemon's OOM score ({}); it stays at the default",
                oom_failure(&e, daemon_is_root)
            )
        }
    }
    if daemon_is_root {
        let provisioner = user::Provisioner::new(config.state_dir.clone(), config.sudo_policy);
        match provisioner.ensure_ssm_user() {
            Ok(outcome) => tracing::info!(?outcome, "ssm-user checked"),
            Err(e) => {
                tracing::error!(error = %e, "Could not provision ssm-user; sessions without RunAs will fail")
            }
        }
    } else {
        tracing::info!(user = %daemon_user.name, "Not running as root: sessions run as this user");
    }
    // Fused: polled again after it fired (a stop during start-up), it stays pending.
    let shutdown = futures_util::FutureExt::fuse(shutdown);
    tokio::pin!(shutdown);
    notify::spawn_watchdog();
    if config.aws.is_some() {
        // Settling the identity may take retries (no network or metadata yet): the
        // service manager hears from us, and gets watchdog pings, meanwhile.
        notify::ready("Starting: finding the region, instance id and credentials");
    }
    let Some(identity) = settle_identity(&config, &mut shutdown).await else {
        return Ok(());
    };
    let signer = identity.signer.clone();
    if identity.own_key {
        if let Some(s) = &signer {
            if let Ok(c) = s.credentials().await {
                tracing::info!(key = %identity::key_hint(c.access_key_id()), file = %config.state_dir.join(identity::LOCAL_KEY_FILE).display(), "Local mode: the agent signs its requests with its own key, by which an open gateway knows this node");
            }
        }
    }
    let mgs = mgs::Mgs::new(&identity.endpoint, config.ca_file.as_deref(), signer)?
        .with_own_key(identity.own_key);
    let aws = tokio::sync::OnceCell::new();
    // On EC2, the VPC's own reserved addresses (its DNS resolver at base + 2, ...) join
    // the port-forwarding deny list, as upstream.
    if identity.aws.is_some() && identity.target_id.starts_with("i-") {
        match tokio::time::timeout(VPC_LOOKUP, identity::vpc_cidrs()).await {
            Ok(Ok(cidrs)) if !cidrs.is_empty() => {
                let reserved = port::policy::vpc_reserved(&cidrs);
                tracing::info!(vpc = ?cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(), "Port forwarding also denies each VPC's reserved addresses (its DNS resolver, router, network and broadcast addresses)");
                config.port.denied.extend(reserved);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Cannot read the VPC's address ranges from instance metadata; port forwarding denies only the fixed list"),
            Err(_) => tracing::warn!("Instance metadata did not give the VPC's address ranges in time; port forwarding denies only the fixed list"),
        }
    }
    if let Some(found) = &identity.aws {
        let _ = aws.set(found.sdk.clone());
        tracing::info!(region = %found.region, endpoint = %identity.endpoint, target_id = %identity.target_id, "AWS mode: requests are signed (SigV4)");
    }
    let recordings = config.recordings_dir();
    if let Err(e) = recording::private_dir(&recordings) {
        tracing::error!(dir = %recordings.display(), error = %e, "Cannot create the recordings directory; sessions will not be recorded");
    }
    retention::sweep(&recordings, config.retention);
    #[cfg(target_os = "linux")]
    let audit = if config.command_audit {
        audit::Audit::start(crate::audit::redact::Redactor::clone(&config.redactor))
    } else {
        tracing::info!("The command audit is off (command_audit = \"off\")");
        None
    };
    #[cfg(target_os = "linux")]
    let cgroups = session_cgroups(&config.state_dir, daemon_is_root);
    let ctx = Arc::new(Ctx {
        config,
        mgs,
        target_id: identity.target_id.clone(),
        daemon_user,
        daemon_is_root,
        aws,
        stopping: CancellationToken::new(),
        tasks: tokio_util::task::TaskTracker::new(),
        #[cfg(target_os = "linux")]
        audit,
        #[cfg(target_os = "linux")]
        cgroups,
    });
    // Recordings an earlier run left undelivered (crash, kill, reboot, outage): rebuilt
    // and delivered in the background while sessions are served.
    ctx.tasks.spawn(recovery::recover_all(ctx.clone()));
    if let Some(found) = &identity.aws {
        heartbeat::start(&ctx, found).await;
    }
    notify::ready(&format!(
        "Connecting to {} as {}",
        ctx.mgs.endpoint(),
        ctx.target_id
    ));
    #[cfg(target_os = "linux")]
    let cgroups = ctx.cgroups.clone();
    control::run(ctx, shutdown).await;
    // Every session ended with its cgroup; the instance's directory goes too.
    #[cfg(target_os = "linux")]
    if let Some(cgroups) = cgroups {
        cgroups.close();
    }
    Ok(())
}

/// The cgroups for sessions (root only), said once either way; sessions an earlier run of
/// this agent left running (a crash, `kill -9`: the unit's `KillMode=process` leaves
/// them) are ended first, and said.
#[cfg(target_os = "linux")]
fn session_cgroups(
    state_dir: &std::path::Path,
    root: bool,
) -> Option<crate::audit::cgroup::Sessions> {
    if !root {
        tracing::warn!("Sessions get no cgroup of their own (the agent is not root): a process that calls setsid can outlive its session");
        return None;
    }
    match crate::audit::cgroup::Sessions::open(state_dir) {
        Ok(sessions) => {
            for (cgroup, pids) in sessions.leftovers() {
                tracing::warn!(%cgroup, ?pids, "Ended the processes an earlier run's session left running");
            }
            tracing::info!(dir = %sessions.dir().display(), "Each session runs in a cgroup of its own: everything it starts is ended with it");
            Some(sessions)
        }
        Err(e) => {
            tracing::warn!(error = %e, "Sessions get no cgroup of their own");
            None
        }
    }
}

/// How long reading the VPC's address ranges from instance metadata may take at start.
const VPC_LOOKUP: Duration = Duration::from_secs(5);

/// How long the agent waits before it tries again to settle its identity.
const IDENTITY_RETRY: Duration = Duration::from_secs(30);

/// Settles the identity, retrying (a region or instance metadata may come later, e.g.
/// once the network is up) until it succeeds or `shutdown` fires (`None`).
async fn settle_identity(
    config: &AgentConfig,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Option<identity::Identity> {
    loop {
        let sdk = delivery::aws::load_config(config.region.clone());
        let found = tokio::select! {
            r = identity::resolve(config, sdk) => r,
            () = &mut *shutdown => return None,
        };
        match found {
            Ok(identity) => return Some(identity),
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?IDENTITY_RETRY, "Cannot start in AWS mode");
                notify::status(&format!("Offline: {e}"));
                tokio::select! {
                    () = tokio::time::sleep(IDENTITY_RETRY) => {}
                    () = &mut *shutdown => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod oom_tests {
    use super::oom_failure;

    #[test]
    fn the_oom_message_does_not_claim_root_is_missing_as_root() {
        let denied = std::io::Error::from_raw_os_error(13);
        let as_root = oom_failure(&denied, true);
        assert!(!as_root.contains("needs root"), "{as_root}");
        assert!(as_root.contains("CAP_SYS_RESOURCE"), "{as_root}");
        assert!(oom_failure(&denied, false).contains("needs root"));
        let read_only = oom_failure(&std::io::Error::from_raw_os_error(30), true);
        assert!(read_only.contains("read-only"), "{read_only}");
    }
}
