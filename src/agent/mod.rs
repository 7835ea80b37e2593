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

pub mod config;
pub mod control;
pub mod mgs;
pub mod session;

use crate::protocol::document;
use crate::protocol::payload::{task_status, AgentTaskPayload};
use crate::session::pty::{Shell, ShellSpec};
use crate::session::user::{self, SessionUser, UserInfo};
use session::{DataChannel, Ending, ShellIo, SESSION_THREAD_STACK};
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
    /// Gateway base URL, `http(s)://host:port`.
    pub endpoint: String,
    /// This node's id (`i-…`, `mi-…`, or any `[A-Za-z0-9._-]` name for the local gateway).
    pub target_id: String,
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
}

/// Facts fixed at start-up that every session needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) config: AgentConfig,
    pub(crate) mgs: mgs::Mgs,
    pub(crate) daemon_user: UserInfo,
    pub(crate) daemon_is_root: bool,
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
}

/// Runs one session from its `interactive_shell` task to its outcome.
pub(crate) async fn run_session(
    ctx: Arc<Ctx>,
    task: AgentTaskPayload,
    cancel: CancellationToken,
) -> Outcome {
    let session_id = task.session_id.clone();
    let fail = |output: String| Outcome {
        session_id: session_id.clone(),
        status: task_status::FAILED,
        output,
    };
    let doc = match document::resolve(&task.document_content, &task.parameters) {
        Ok(d) => d,
        Err(e) => return fail(format!("invalid session document: {e}")),
    };
    let who = match user::resolve_session_user(
        doc.inputs.run_as_enabled,
        &doc.inputs.run_as_default_user,
        &task.run_as_user,
        ctx.daemon_is_root,
        &ctx.daemon_user,
    ) {
        Ok(u) => u,
        Err(e) => return fail(e.to_string()),
    };
    let mut channel = match DataChannel::open(&ctx.mgs, &session_id, &ctx.config.target_id).await {
        Ok(c) => c,
        Err(e) => return fail(format!("could not open the data channel: {e}")),
    };
    let mut early_input = Vec::new();
    let size = channel
        .first_size(session::FIRST_SIZE_WAIT, &mut early_input)
        .await;
    if channel.closed_early {
        channel.finish(false).await;
        return Outcome {
            session_id: session_id.clone(),
            status: task_status::SUCCESS,
            output: "terminated before the shell started".into(),
        };
    }
    let spec = shell_spec(&ctx, &who, size);
    let shim = ctx.config.exec_shim.clone();
    let spawned = tokio::task::spawn_blocking(move || Shell::spawn(&spec, &shim)).await;
    let mut shell = match spawned {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            channel.finish(false).await;
            return fail(format!("Unable to start command: {e}"));
        }
        Err(e) => {
            channel.finish(false).await;
            return fail(format!("Unable to start command: {e}"));
        }
    };
    tracing::info!(session = %session_id, user = %who.info.name, pid = ?shell.pid(), "Shell started");
    if !doc.inputs.shell_profile.linux.trim().is_empty() {
        early_input.extend_from_slice(doc.inputs.shell_profile.linux.as_bytes());
        early_input.push(b'\n');
    }
    let (Some(reader), Some(writer)) = (shell.take_reader(), shell.take_writer()) else {
        let _ = tokio::task::spawn_blocking(move || shell.terminate(KILL_GRACE)).await;
        channel.finish(false).await;
        return fail("Unable to start command: the PTY could not be opened".into());
    };
    // The shell's exit, observed without reaping it (terminate() reaps after cleaning up).
    let (exit_tx, exited) = tokio::sync::oneshot::channel();
    let process = shell.process();
    let watcher = std::thread::Builder::new()
        .stack_size(SESSION_THREAD_STACK)
        .name("shell-wait".into())
        .spawn(move || {
            let _ = process.wait();
            let _ = exit_tx.send(());
        });
    if let Err(e) = watcher {
        let _ = tokio::task::spawn_blocking(move || shell.terminate(KILL_GRACE)).await;
        channel.finish(false).await;
        return fail(format!(
            "Unable to start command: cannot start a thread: {e}"
        ));
    }
    let shell = Arc::new(std::sync::Mutex::new(shell));
    let resizer = shell.clone();
    let resize = Box::new(move |cols: u16, rows: u16| {
        if let Ok(s) = resizer.lock() {
            if let Err(e) = s.resize(cols, rows) {
                tracing::debug!(error = %e, "Resize failed");
            }
        }
    });
    let io = ShellIo {
        reader,
        writer,
        resize,
        exited,
    };
    let minutes = |m: Option<u32>| m.map(|m| Duration::from_secs(u64::from(m) * 60));
    let limits = session::Limits {
        // The console's default idle timeout applies when the document sets none.
        idle: minutes(doc.inputs.idle_session_timeout).or(Some(DEFAULT_IDLE)),
        max: minutes(doc.inputs.max_session_duration),
    };
    let (ending, writer) = channel.pump(io, early_input, limits, &cancel).await;
    let exit = tokio::task::spawn_blocking(move || {
        // The writer lives until the shell is gone (its drop would type into the terminal).
        let _writer = writer;
        let mut s = shell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.terminate(KILL_GRACE)
    })
    .await
    .ok();
    channel.finish(ending == Ending::ShellExited).await;
    tracing::info!(session = %session_id, ?ending, ?exit, "Session ended");
    match ending {
        Ending::ChannelLost(e) => fail(format!("the data channel was lost: {e}")),
        Ending::Internal(e) => fail(e),
        Ending::TimedOut(limit) => Outcome {
            session_id: session_id.clone(),
            status: task_status::TIMED_OUT,
            output: limit.ended(),
        },
        Ending::ShellExited | Ending::Terminated => Outcome {
            session_id: session_id.clone(),
            status: task_status::SUCCESS,
            output: match exit.and_then(|e| e.code) {
                Some(code) => format!("shell exited with status {code}"),
                None => String::new(),
            },
        },
    }
}

fn shell_spec(ctx: &Ctx, who: &SessionUser, size: Option<(u16, u16)>) -> ShellSpec {
    let u = &who.info;
    let (program, args) = match ctx.config.shell {
        ShellChoice::Login if !u.shell.as_os_str().is_empty() => {
            (u.shell.clone(), vec!["-l".to_owned()])
        }
        _ => (PathBuf::from("/bin/sh"), Vec::new()),
    };
    let lang = std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into());
    let env = vec![
        ("TERM".to_owned(), "xterm-256color".to_owned()),
        ("LANG".to_owned(), lang),
        ("HOME".to_owned(), u.home.display().to_string()),
        ("USER".to_owned(), u.name.clone()),
        ("LOGNAME".to_owned(), u.name.clone()),
        ("SHELL".to_owned(), program.display().to_string()),
        (
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
    ];
    let cwd = if u.home.is_dir() {
        u.home.clone()
    } else {
        PathBuf::from("/")
    };
    ShellSpec {
        program,
        args,
        env,
        cwd,
        run_as: who.switch.then(|| crate::session::pty::Credentials {
            uid: u.uid,
            gid: u.gid,
            user: u.name.clone(),
        }),
        size,
    }
}

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// TLS or endpoint set-up.
    #[error(transparent)]
    Mgs(#[from] mgs::MgsError),
    /// The daemon's own user is not in the passwd database.
    #[error("cannot find the daemon's own user (uid {0}) in the passwd database")]
    NoSelf(u32),
}

/// Runs the daemon until `shutdown` resolves: provisions ssm-user (as root), then keeps
/// the control channel up and serves sessions.
///
/// # Errors
/// Start-up failures only; everything after start is retried, not returned.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let euid = nix::unistd::geteuid();
    let daemon_user = user::lookup_uid(euid.as_raw())
        .ok()
        .flatten()
        .ok_or(AgentError::NoSelf(euid.as_raw()))?;
    let daemon_is_root = euid.is_root();
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
    let mgs = mgs::Mgs::new(&config.endpoint, config.ca_file.as_deref())?;
    let ctx = Arc::new(Ctx {
        config,
        mgs,
        daemon_user,
        daemon_is_root,
    });
    control::run(ctx, shutdown).await;
    Ok(())
}
