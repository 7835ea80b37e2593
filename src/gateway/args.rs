//! `session-agent gateway`'s flags and their turn into a validated [`GatewayConfig`].
//!
//! Here rather than in `cli` so that `cli` (which lists the commands) and `dev` (which
//! runs a gateway of its own) both take them from the gateway, as `agent::config` holds
//! `run`'s: the command layer imports the domains, never the other way round.

use super::{GatewayConfig, TlsFiles};
use crate::config::{config_error, parse_duration, read_session_document, ConfigError};
use crate::session::user::valid_user_name;
use clap::{Args, Parser};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// StartSession's DocumentName. Names starting with AWS- are reserved for the built-in
    /// AWS documents; such files are ignored.
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

impl GatewayArgs {
    /// The gateway `dev` runs: defaults, plus its address, history and preferences.
    pub fn for_dev(listen: SocketAddr, data_dir: PathBuf, preferences: Option<PathBuf>) -> Self {
        /// The gateway's flags alone, to take their defaults.
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: GatewayArgs,
        }
        let mut args = match Defaults::try_parse_from(["gateway"]) {
            Ok(d) => d.args,
            Err(e) => unreachable!("the gateway's flags parse without arguments: {e}"),
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
