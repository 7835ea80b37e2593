//! `session-agent dev`: the whole system in one process, no AWS account needed.
//!
//! A gateway on a loopback port, an agent connected to it, and this terminal connected to a
//! new session through the same client as `connect` — a real Session Manager session end to
//! end (websockets, frames, acks, PTY), on one machine. Logs go to `<state>/dev.log` so they
//! do not garble the terminal; session history stays in `<state>/gateway/`.
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
    /// random key, which nothing outside this process knows: other terminals and other
    /// local users cannot use it.
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
        // As root, the same state directory as `run`: its record of having created ssm-user
        // keeps dev from re-creating an ssm-user an administrator deleted.
        state_dir: if crate::platform::is_privileged() {
            crate::platform::default_state_dir("")
        } else {
            state.join("agent")
        },
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
    let outcome = crate::client::connect(ConnectConfig {
        endpoint,
        region: "us-east-1".into(),
        ca_file: None,
        start: Start::Call(
            serde_json::json!({"Target": args.target_id, "Reason": "session-agent dev"}),
        ),
        credentials: Some((key, secret)),
        target: Some(args.target_id.clone()),
    })
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), agent).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), gateway).await;
    tell_where_recordings_are(&recordings);
    Ok(match outcome {
        Outcome::Ended => 0,
        other => other.exit_code(),
    })
}

#[allow(clippy::print_stderr)] // the one line dev prints after the session, on purpose
fn tell_where_recordings_are(dir: &std::path::Path) {
    eprintln!(
        "session-agent dev: sessions are recorded in {}; print one with `session-agent transcript {}/SESSION_ID/events.spool`",
        dir.display(),
        dir.display()
    );
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
