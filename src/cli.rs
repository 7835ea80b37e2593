//! Command-line interface: argument parsing and the turn from arguments into validated
//! configuration. Reads the files named by flags (preferences) but starts nothing; `main`
//! runs what this returns. Invalid configuration is a [`ConfigError`], which `main` prints
//! as one line and turns into exit code 64 (`EX_USAGE`).

use crate::gateway::{GatewayConfig, TlsFiles};
use crate::protocol::document;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// session-agent: a Session Manager compatible agent, client and local gateway.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// `session_agent=debug` [default: info, or `log_level` in `run --config FILE`].
    #[arg(long, global = true, env = "SESSION_AGENT_LOG")]
    pub log_level: Option<String>,
    /// Log format: `plain` (lines; under systemd without timestamps and with journal
    /// priorities) or `json` (one object per line) [default: plain, or `log_format` in
    /// `run --config FILE`].
    #[arg(long, global = true, env = "SESSION_AGENT_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once at start-up, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a local gateway that plays AWS's part (SSM API + message gateway).
    ///
    /// Point the AWS CLI at it with `--endpoint-url http://ADDR`, and agents at it as
    /// their message gateway endpoint. Any credentials are accepted; the access key id
    /// names the session owner.
    Gateway(GatewayArgs),
    /// Run the agent daemon: keep a control channel to the gateway and serve sessions,
    /// each a shell on a PTY as ssm-user (or the RunAs user; as this user when not root).
    ///
    /// SIGTERM or SIGINT stops it gracefully (new sessions refused, running ones told and
    /// ended, recordings flushed and delivered for up to shutdown_timeout); a second
    /// signal exits at once.
    #[command(after_help = RUN_EXIT_CODES)]
    Run(crate::agent::config::RunArgs),
    /// Validate the agent's configuration and print the effective settings (file, then
    /// flags and SESSION_AGENT_* variables over it, then defaults), as `run` would use them.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check that this machine can run the agent and record sessions: configuration,
    /// state directory and free space, the gateway endpoint, AWS credentials, and each
    /// S3 bucket / CloudWatch log group named by --document (exists, writable, encrypted
    /// as the document requires). Prints one line per check with what to do; exit status
    /// 0 when nothing failed, 1 otherwise.
    Doctor(crate::doctor::DoctorArgs),
    /// Try it all on this machine: a gateway and an agent on loopback, and this terminal
    /// connected to a new session (no AWS account needed). Logs go to `<state>/dev.log`.
    Dev(crate::dev::DevArgs),
    /// Open an interactive shell on a managed node, like session-manager-plugin:
    /// StartSession, then the terminal in raw mode until the session ends.
    ///
    /// Also accepts session-manager-plugin's own arguments (the StartSession response
    /// JSON first), and runs as `connect` when invoked under the name
    /// `session-manager-plugin`, so the AWS CLI can use it as its plugin.
    #[command(after_help = crate::client::EXIT_CODES_HELP)]
    Connect(crate::client::ConnectArgs),
    /// Play a session recording in this terminal with its original timing.
    ///
    /// FILE is a recording's raw stream (STATE_DIR/recordings/ID/events.spool) or its
    /// asciicast (ID.cast, also what S3 holds). The recorded output is written to the
    /// terminal as it was (escape sequences included): replay only recordings you trust.
    Replay(crate::replay::ReplayArgs),
    /// Print the clean text of a session recording (what the user saw: no escape codes,
    /// full-screen programs as `--- screen ---` blocks).
    ///
    /// FILE is events.spool or a .cast, as for `replay`.
    Transcript(crate::replay::TranscriptArgs),
    /// Check a recording's spool: every record's checksum, the hash chain (each record's
    /// digest covers the one before), and the event sequence (no gaps).
    ///
    /// Prints the chain head, to compare with a copy kept elsewhere. Exit status: 0
    /// intact, 1 altered / corrupt / gap (the first one is named), 2 unreadable.
    Verify(crate::replay::VerifyArgs),
    /// Install, remove, start or stop the agent as a Windows service (LocalSystem,
    /// automatic start, restarted on failure; state and configuration under
    /// %ProgramData%\session-agent). Windows only: on Linux the .deb and .rpm install a
    /// systemd unit (`systemctl enable --now session-agent`).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Internal: the privilege-dropping shim a shell for another user starts through
    /// (`__exec-as --uid U --gid G --user NAME -- PROGRAM ARGS...`); see
    /// `session::pty::exec_as_main`.
    #[command(hide = true, name = "__exec-as")]
    ExecAs {
        /// Everything after the subcommand, passed on verbatim.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Exit statuses of `run`, shown by `run --help`.
pub const RUN_EXIT_CODES: &str = "Exit status:
  0    stopped by SIGTERM/SIGINT after the graceful stop (recordings not delivered by
       the deadline are delivered at the next start)
  1    could not run (e.g. cannot find its own user, cannot start the runtime)
  2    bad command line
  64   invalid configuration (the message names the key)
  130  a second SIGTERM/SIGINT ended the graceful stop early";

/// `session-agent service …` (Windows).
// Parsed once at start-up, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Register the service with the service control manager (as LocalSystem, started
    /// automatically, restarted on failure), create the state directory readable by
    /// SYSTEM and Administrators only, and write the example configuration there unless
    /// one exists. Does not start it.
    Install(ServiceInstallArgs),
    /// Stop the service if it runs and remove it. Configuration and recordings stay
    /// unless --purge.
    Uninstall {
        /// Also delete the state directory: configuration, recordings, quarantine.
        #[arg(long)]
        purge: bool,
    },
    /// Start the service and wait until it runs.
    Start,
    /// Stop the service gracefully (as SIGTERM does on Linux) and wait until it stopped.
    Stop,
    /// Internal: what the service control manager starts (`service run --config FILE`).
    #[command(hide = true)]
    Run(crate::agent::config::RunArgs),
}

/// `session-agent service install` options.
#[derive(Debug, Args)]
pub struct ServiceInstallArgs {
    /// The configuration file the service runs with [default:
    /// %ProgramData%\session-agent\session-agent.toml].
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// What `service` says on a platform without Windows services.
pub const SERVICE_NOT_HERE: &str = "`session-agent service` manages the Windows service; on Linux the .deb and .rpm packages install the systemd unit session-agent.service: run `systemctl enable --now session-agent` (see packaging/systemd/)";

/// `session-agent config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration as TOML.
    ///
    /// Flags and SESSION_AGENT_* variables given here apply as they would to `run`.
    /// Exit status 0 valid, 64 invalid (the message names the key).
    Check(ConfigCheckArgs),
}

/// `session-agent config check` options.
#[derive(Debug, Args)]
pub struct ConfigCheckArgs {
    /// The configuration file [default: --config / SESSION_AGENT_CONFIG].
    pub file: Option<PathBuf>,
    /// Every `run` option, so the check sees what `run` would.
    #[command(flatten)]
    pub run: crate::agent::config::RunArgs,
}

/// `session-agent gateway` options.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on. Use 0.0.0.0:PORT to serve a LAN.
    #[arg(
        long,
        env = "SESSION_AGENT_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// Directory for session history (kept across restarts). Without it, history is
    /// kept in memory only.
    #[arg(long, env = "SESSION_AGENT_GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Session preferences: a JSON document in the SSM-SessionManagerRunShell format
    /// (`{"schemaVersion":"1.0","sessionType":"Standard_Stream","inputs":{...}}`) sent with
    /// every shell session. Default: all logging off, no RunAs, 20-minute idle timeout.
    #[arg(long, env = "SESSION_AGENT_GATEWAY_PREFERENCES")]
    pub preferences: Option<PathBuf>,
    /// Directory of further session documents, `<DocumentName>.json`, selectable with
    /// StartSession's DocumentName.
    #[arg(long)]
    pub documents_dir: Option<PathBuf>,
    /// PEM certificate chain; with --tls-key the gateway serves https/wss only (the
    /// official agent dials nothing else).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Base URL written into StreamUrl, e.g. wss://gateway.example:8443. Default: the
    /// scheme and Host header of the StartSession request.
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Region used in ARNs and console links.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Account id used in owner ARNs.
    #[arg(long, default_value = "000000000000")]
    pub account_id: String,
    /// Interval between keepalive pings on every websocket (e.g. 30s, 500ms, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// A websocket silent for this long (no frame, no pong) is closed as dead.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub peer_timeout: Duration,
    /// An active session whose agent data channel stays away this long is marked Failed.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub orphan_timeout: Duration,
    /// How long a terminating session waits for the agent's final report.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub terminate_grace: Duration,
    /// Largest websocket message / AgentMessage frame accepted, in bytes (every socket may
    /// buffer one while reading it).
    #[arg(long, default_value_t = crate::gateway::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Largest HTTP request body accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// RunAs user for a caller, as the `SSMSessionRunAs` tag on an IAM principal would
    /// give it: `PRINCIPAL=USER` (the principal, or the access key id), or `*=USER` for
    /// every caller. Repeatable. Sent to the agent as RunAsUser (used when the document
    /// has runAsEnabled).
    #[arg(long = "run-as", value_name = "PRINCIPAL=USER")]
    pub run_as: Vec<String>,
    /// A principal that may see, resume and terminate every session and deregister any
    /// node (as an IAM policy on `*` would allow); everyone else sees and controls only
    /// their own sessions. Repeatable. In open mode principals are claimed access key ids
    /// (unverified): use --strict-sigv4 to make this mean anything.
    #[arg(long = "admin", value_name = "PRINCIPAL")]
    pub admins: Vec<String>,
    /// Open connections in all; beyond it new connections are closed at once.
    #[arg(long, default_value_t = crate::gateway::Limits::default().max_connections)]
    pub max_connections: usize,
    /// Open connections from one client IP address.
    #[arg(long, default_value_t = crate::gateway::Limits::default().max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Active sessions one principal may own at once.
    #[arg(long, default_value_t = crate::gateway::Limits::default().max_sessions_per_caller)]
    pub max_sessions_per_caller: usize,
    /// Managed nodes one principal may register.
    #[arg(long, default_value_t = crate::gateway::Limits::default().max_nodes_per_caller)]
    pub max_nodes_per_caller: usize,
    /// Unused channel tokens one principal may hold (each lives 60 s).
    #[arg(long, default_value_t = crate::gateway::Limits::default().max_tokens_per_caller)]
    pub max_tokens_per_caller: usize,
    /// Verify every SigV4 signature as AWS does, against the keys in --credentials:
    /// the SSM API (service ssm), channel POSTs and control-channel upgrades
    /// (ssmmessages) must be signed for --region and within 5 minutes of this clock;
    /// unsigned data-channel upgrades are accepted on their single-use token (the
    /// official client signs none). Agents then need `gateway = "aws"` with this
    /// gateway as `endpoint`.
    #[arg(long, requires = "credentials")]
    pub strict_sigv4: bool,
    /// AWS credentials file (`[name]` sections with aws_access_key_id,
    /// aws_secret_access_key, optional aws_session_token, and optional `principal = NAME`,
    /// the identity that signs with the key, default the section name) holding the keys
    /// --strict-sigv4 accepts; re-read when an unknown key signs.
    #[arg(long, requires = "strict_sigv4")]
    pub credentials: Option<PathBuf>,
}

pub use crate::session::user::valid_user_name;

/// Invalid configuration: names the key (flag) and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The offending flag or key.
    pub key: String,
    /// What is wrong and what to do.
    pub reason: String,
}

fn config_error(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
///
/// # Errors
/// Anything else, with an example of what works.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 2m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?} has an unknown unit; use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Reads a session document file (SSM-SessionManagerRunShell JSON) and resolves it with
/// its parameters' defaults, as `gateway --preferences` and `doctor --document` take it:
/// the JSON as written, and what it resolves to.
///
/// # Errors
/// Unreadable, not JSON, or not a valid document; the message names the file.
pub fn read_session_document(
    path: &std::path::Path,
) -> Result<(serde_json::Value, document::SessionDocument), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let resolved = document::resolve(&doc, &serde_json::Map::new())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((doc, resolved))
}

impl GatewayArgs {
    /// The gateway `dev` runs: defaults, plus its address, history and preferences.
    pub fn for_dev(listen: SocketAddr, data_dir: PathBuf, preferences: Option<PathBuf>) -> Self {
        use clap::Parser;
        let mut args = match Cli::try_parse_from(["session-agent", "gateway"]).map(|c| c.command) {
            Ok(Command::Gateway(g)) => g,
            _ => unreachable!("the gateway subcommand parses without arguments"),
        };
        args.listen = listen;
        args.data_dir = Some(data_dir);
        args.preferences = preferences;
        args
    }

    /// Validates the arguments and loads the preferences document.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the flag.
    pub fn into_config(self) -> Result<GatewayConfig, ConfigError> {
        let mut cfg = GatewayConfig::default();
        if let Some(path) = &self.preferences {
            let (doc, _) =
                read_session_document(path).map_err(|e| config_error("--preferences", e))?;
            cfg.preferences = doc;
        }
        if let Some(dir) = &self.documents_dir {
            if !dir.is_dir() {
                return Err(config_error(
                    "--documents-dir",
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        if let Some(url) = &self.advertise_url {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(config_error(
                    "--advertise-url",
                    "must start with ws:// or wss://",
                ));
            }
        }
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(config_error("--account-id", "must be 12 digits"));
        }
        if self.peer_timeout <= self.ping_interval {
            return Err(config_error(
                "--peer-timeout",
                "must be longer than --ping-interval, or every peer looks dead",
            ));
        }
        if self.max_frame_bytes < 64 * 1024 {
            return Err(config_error(
                "--max-frame-bytes",
                "must be at least 65536: control messages reach 142000 bytes",
            ));
        }
        for rule in &self.run_as {
            let Some((who, user)) = rule.split_once('=') else {
                return Err(config_error(
                    "--run-as",
                    format!("{rule:?} is not PRINCIPAL=USER"),
                ));
            };
            if !valid_user_name(user) {
                return Err(config_error(
                    "--run-as",
                    format!("{user:?} is not a valid user name ([a-z_][a-z0-9_-]{{0,31}})"),
                ));
            }
            cfg.run_as.push((who.to_owned(), user.to_owned()));
        }
        if let Some(path) = &self.credentials {
            let strict = crate::gateway::auth::StrictSigV4::load(path, &self.region)
                .map_err(|e| config_error("--credentials", e))?;
            cfg.strict_sigv4 = Some(std::sync::Arc::new(strict));
        }
        cfg.data_dir = self.data_dir;
        cfg.documents_dir = self.documents_dir;
        cfg.tls = self
            .tls_cert
            .zip(self.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key });
        cfg.advertise_url = self.advertise_url;
        cfg.region = self.region;
        cfg.account_id = self.account_id;
        cfg.ping_interval = self.ping_interval;
        cfg.peer_timeout = self.peer_timeout;
        cfg.orphan_timeout = self.orphan_timeout;
        cfg.terminate_grace = self.terminate_grace;
        cfg.max_frame_bytes = self.max_frame_bytes;
        cfg.max_body_bytes = self.max_body_bytes;
        for admin in &self.admins {
            if !crate::gateway::auth::valid_principal(admin) {
                return Err(config_error(
                    "--admin",
                    format!(
                        "{admin:?} is not a principal name (1-64 of A-Z a-z 0-9 + = , . @ _ -)"
                    ),
                ));
            }
        }
        cfg.admins = self.admins;
        let limits = [
            ("--max-connections", self.max_connections),
            ("--max-connections-per-ip", self.max_connections_per_ip),
            ("--max-sessions-per-caller", self.max_sessions_per_caller),
            ("--max-nodes-per-caller", self.max_nodes_per_caller),
            ("--max-tokens-per-caller", self.max_tokens_per_caller),
        ];
        if let Some((flag, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err(config_error(flag, "must be at least 1"));
        }
        cfg.limits = crate::gateway::Limits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_sessions_per_caller: self.max_sessions_per_caller,
            max_nodes_per_caller: self.max_nodes_per_caller,
            max_tokens_per_caller: self.max_tokens_per_caller,
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn user_names_are_checked_strictly() {
        for ok in ["ssm-user", "_svc", "a", "deploy_2"] {
            assert!(valid_user_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Root",
            "1abc",
            "a b",
            "a;rm -rf /",
            "$(id)",
            &"a".repeat(33),
        ] {
            assert!(!valid_user_name(bad), "{bad}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
