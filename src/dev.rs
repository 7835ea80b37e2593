//! `session-agent dev`: the whole system in one process, no AWS account needed.
//!
//! A gateway on a loopback port, an agent connected to it, and this terminal connected to a
//! new session through the same client as `connect` — a real Session Manager session end to
//! end (websockets, frames, acks, PTY), on one machine. Logs go to `<state>/dev.log` so they
//! do not garble the terminal; session history stays in `<state>/gateway/`.
//!
//! The gateway takes only this run's random key. So that a second terminal of the same
//! user can join (`connect`, or the AWS CLI with session-manager-plugin), dev writes the
//! endpoint and key as shell `export`s to `<state>/dev.env`, mode 0600 (the key is
//! never printed: scrollback and screen sharing are not the place for it), prints the
//! one command that sources it, and removes it at the end. With `--state-dir`, the
//! agent's state and recordings go under it (`<state>/agent`) as root too; the goodbye
//! line names the session's recording directory and the `transcript` command for it.
//!
//! This is a composition root like `main`: it wires the gateway, agent and client modules
//! and owns their shutdown.

use crate::agent::{AgentConfig, ShellChoice};
use crate::client::{ConnectConfig, Outcome, Start};
use crate::gateway::GatewayConfig;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `session-agent dev` options.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where history, agent state and dev.log go [default: $XDG_STATE_HOME/session-agent/dev,
    /// or /var/lib/session-agent/dev as root].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Gateway address (loopback by default). The gateway answers only this run's own
    /// random key: other local users cannot use it. Another terminal of yours can open
    /// more sessions with the command dev prints at start (it sources STATE_DIR/dev.env,
    /// readable by you alone and removed when dev ends).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Session preferences document (see config/session-preferences.example.json).
    #[arg(long)]
    pub preferences: Option<PathBuf>,
    /// What the session runs: `login` (your login shell) or `sh`.
    #[arg(long, default_value = "login")]
    pub shell: String,
    /// Node name the agent registers as.
    #[arg(long, default_value = "dev")]
    pub target_id: String,
}

impl DevArgs {
    /// The state directory `dev` will use (also where `main` sends the log).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| crate::platform::default_state_dir("dev"))
    }
}

/// Runs gateway, agent and client; returns the client's exit status.
///
/// # Errors
/// Configuration or start-up failures, as one line for the user.
pub async fn run(args: DevArgs) -> Result<u8, String> {
    let state = args.state_dir();
    std::fs::create_dir_all(&state)
        .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
    let gateway_args = crate::gateway::args::GatewayArgs::for_dev(
        args.listen,
        state.join("gateway"),
        args.preferences.clone(),
    );
    let mut gateway_config: GatewayConfig =
        gateway_args.into_config().map_err(|e| e.to_string())?;
    // Only this process may use its gateway: a random key and secret per run, known to
    // this process alone, and the gateway in strict mode, so every endpoint (the API,
    // channel tokens, control channels) checks the signature, not a claimed key id.
    let key = format!(
        "DEV{}",
        crate::gateway::random_token()
            .get(..17)
            .unwrap_or_default()
            .to_ascii_uppercase()
    );
    let secret = crate::gateway::random_token();
    let keys = std::collections::HashMap::from([(
        key.clone(),
        crate::gateway::auth::Key {
            secret: crate::protocol::sigv4::Secret {
                secret_access_key: secret.clone(),
                session_token: None,
            },
            principal: "dev".into(),
        },
    )]);
    gateway_config.strict_sigv4 = Some(std::sync::Arc::new(
        crate::gateway::auth::StrictSigV4::with_keys(keys, &gateway_config.region),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen: cannot bind {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let endpoint = format!("http://{addr}");
    let stop = CancellationToken::new();

    let gateway = {
        let stop = stop.clone();
        tokio::spawn(async move {
            crate::gateway::serve(gateway_config, listener, stop.cancelled_owned()).await
        })
    };
    let shell = match args.shell.as_str() {
        "login" => ShellChoice::Login,
        "sh" => ShellChoice::Sh,
        other => return Err(format!("--shell: {other:?} is not `login` or `sh`")),
    };
    let agent_config = AgentConfig {
        aws: None,
        endpoint: Some(endpoint.clone()),
        region: None,
        target_id: Some(args.target_id.clone()),
        state_dir: agent_state_dir(args.state_dir.as_deref(), &state),
        max_sessions: 100,
        // dev never grants sudo to an ssm-user it creates.
        sudo_policy: crate::session::user::SudoPolicy::None,
        shell,
        ca_file: None,
        exec_shim: std::env::current_exe()
            .map_err(|e| format!("cannot find this program's path: {e}"))?,
        retention: crate::agent::retention::Policy::default(),
        shutdown_timeout: std::time::Duration::from_secs(5),
        log_level: "info".into(),
        log_format: crate::logging::LogFormat::Plain,
        local_key: Some((key.clone(), secret.clone())),
        port: crate::agent::port::policy::PortPolicy::default(),
        command_audit: true,
        redactor: Default::default(),
        stream_input: false,
        cloudwatch_stream: crate::delivery::cwl::StreamMode::Full,
    };
    let recordings = agent_config.recordings_dir();
    let agent = {
        let stop = stop.clone();
        tokio::spawn(async move { crate::agent::run(agent_config, stop.cancelled_owned()).await })
    };
    let api = crate::ssm::SsmApi::new(
        &endpoint,
        crate::gateway::DEV_REGION,
        None,
        Some((key.clone(), secret.clone())),
    )
    .map_err(|e| e.to_string())?;
    wait_for_agent(&api, &args.target_id).await?;
    tracing::info!(%endpoint, "dev: gateway and agent up; connecting this terminal");
    let env_file = state.join(ENV_FILE);
    let second = write_env_file(&env_file, &endpoint, &key, &secret)
        .map(|()| second_terminal_hint(&env_file, &args.target_id))
        .unwrap_or_else(|e| {
            tracing::warn!(file = %env_file.display(), error = %e, "cannot write the second terminal's credentials");
            format!("no second terminal this run: cannot write {}: {e}", env_file.display())
        });
    say(&second);
    let request = serde_json::json!({"Target": args.target_id, "Reason": "session-agent dev"});
    let started = api.start_session(&request).await;
    let outcome = match started {
        Ok(grant) => {
            let id = grant.session_id.clone();
            let outcome = crate::client::connect(ConnectConfig {
                endpoint,
                region: crate::gateway::DEV_REGION.into(),
                ca_file: None,
                start: Start::Given(grant),
                credentials: Some((key, secret)),
                target: Some(args.target_id.clone()),
            })
            .await;
            Ok((id, outcome))
        }
        Err(e) => Err(format!("StartSession failed: {e}")),
    };
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), agent).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), gateway).await;
    let _ = std::fs::remove_file(&env_file);
    let (id, outcome) = outcome?;
    say(&goodbye(&recordings, &id, state_arg_for(&recordings)));
    Ok(match outcome {
        Outcome::Ended => 0,
        other => other.exit_code(),
    })
}

/// The agent's state directory: `STATE/agent` under the dev state directory; as root
/// without `--state-dir`, the same as `run`'s (its record of having created ssm-user keeps
/// dev from re-creating an ssm-user an administrator deleted). An explicit `--state-dir`
/// is honoured as root too: everything of the run, recordings included, goes under it.
fn agent_state_dir(explicit: Option<&std::path::Path>, state: &std::path::Path) -> PathBuf {
    if explicit.is_none() && crate::platform::is_privileged() {
        crate::platform::default_state_dir("")
    } else {
        state.join("agent")
    }
}

/// The file, in the dev state directory, that holds this run's key for a second terminal
/// (mode 0600, removed when `dev` ends).
pub const ENV_FILE: &str = "dev.env";

/// Writes the shell lines a second terminal sources to reach this run's gateway: the
/// endpoint, the region and this run's key (AWS_* variables `connect` and the AWS CLI
/// read). Created afresh, readable by this user alone: the key is the only thing that
/// keeps other local users out of the gateway, so it is never printed.
fn write_env_file(
    path: &std::path::Path,
    endpoint: &str,
    key: &str,
    secret: &str,
) -> std::io::Result<()> {
    let text = format!(
        "# session-agent dev: this run's gateway and key (removed when dev ends)\n\
         export AWS_ENDPOINT_URL_SSM={endpoint}\n\
         export AWS_REGION={region}\n\
         export AWS_DEFAULT_REGION={region}\n\
         export AWS_ACCESS_KEY_ID={key}\n\
         export AWS_SECRET_ACCESS_KEY={secret}\n\
         unset AWS_SESSION_TOKEN AWS_PROFILE\n",
        region = crate::gateway::DEV_REGION,
    );
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())
}

/// The line that tells how to open a second session from another terminal.
fn second_terminal_hint(env_file: &std::path::Path, target: &str) -> String {
    format!(
        "session-agent dev: another terminal of yours can join this run while it lasts: \
         `. {env} && session-agent connect --target {target}` \
         (or `aws ssm start-session --target {target}` with session-manager-plugin)",
        env = env_file.display(),
    )
}

/// `--state-dir DIR` for the lookup commands when `recordings` is not where they look by
/// default.
fn state_arg_for(recordings: &std::path::Path) -> Option<PathBuf> {
    let state = recordings.parent()?.to_owned();
    let default = crate::sessions::StateDirArg::default().state_dir();
    (state != default).then_some(state)
}

/// The goodbye line: where this session's recording is, and how to print it.
fn goodbye(recordings: &std::path::Path, id: &str, state_arg: Option<PathBuf>) -> String {
    let dir = recordings.join(id);
    let state = state_arg
        .map(|s| format!(" --state-dir {}", s.display()))
        .unwrap_or_default();
    format!(
        "session-agent dev: this session is recorded in {}; print it with `session-agent transcript{state} {id}` (replay, verify, audit the same way)",
        dir.display()
    )
}

#[allow(clippy::print_stderr)] // the lines dev prints around the session, on purpose
fn say(line: &str) {
    eprintln!("{line}");
}

async fn wait_for_agent(api: &crate::ssm::SsmApi, target: &str) -> Result<(), String> {
    let request = serde_json::json!({"Filters": [{"Key": "InstanceIds", "Values": [target]}]});
    for _ in 0..200 {
        if let Ok(v) = api.describe_instance_information(&request).await {
            if v["InstanceInformationList"][0]["PingStatus"] == "Online" {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the agent did not connect to the gateway within 10 seconds; see dev.log".into())
}
