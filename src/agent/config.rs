//! `session-agent run` configuration: a TOML file (`--config`), overridden by flags and
//! environment variables, validated into [`AgentConfig`]. Invalid configuration is a
//! [`ConfigError`] naming the key; `main` prints it as one line and exits 64.
//!
//! Precedence: flag or environment variable > file > built-in default. The file is
//! `--config` (or `SESSION_AGENT_CONFIG`), else [`DEFAULT_CONFIG_FILE`] when it exists;
//! the `*.toml` files of its drop-in directory (`FILE.d/`) are laid over it in name
//! order, key by key (a list replaces the list before it rather than adding to it, so
//! that a drop-in can narrow `port_forwarding_allowed_ports` as well as widen it).
//! Errors in a file name the file, line and column (`FILE:LINE:COLUMN: key: what`):
//! type errors carry their key path through serde_path_to_error, and a bad value found
//! at validation is located through the position of the key that set it.

use super::port::policy::PortPolicy;
use super::{AgentConfig, ShellChoice};
use crate::config::ConfigError;
use crate::config::Location;
use crate::logging::LogFormat;
use crate::session::user::SudoPolicy;
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default gateway: the local one on its default port.
pub const DEFAULT_ENDPOINT: &str = crate::config::LOCAL_GATEWAY_URL;
/// Default `shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest `shutdown_timeout`.
pub const MAX_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// `session-agent run` options. Each may also come from the config file (same name with
/// `_` instead of `-`) or the environment variable shown.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// TOML configuration file; see config/session-agent.example.toml. The `*.toml`
    /// files of FILE.d/ are laid over it in name order (later wins, key by key; a list
    /// replaces a list) [default: /etc/session-agent/session-agent.toml when it exists;
    /// SESSION_AGENT_DEFAULT_CONFIG moves it].
    #[arg(long, env = "SESSION_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Which service the agent talks to: `local` (a `session-agent gateway` in open mode;
    /// requests signed with the agent's own key, STATE_DIR/agent-key.json) or `aws` (AWS Systems Manager: every request SigV4-signed with the
    /// instance role or other AWS credentials; endpoint, region and instance id found
    /// as on EC2) [default: local].
    #[arg(long, env = "SESSION_AGENT_GATEWAY")]
    pub gateway: Option<String>,
    /// Message gateway URL (http(s)://host or http(s)://host:port) or bare host name (https)
    /// [default: http://127.0.0.1:8080 with --gateway local;
    /// ssmmessages.REGION.amazonaws.com over https (or the partition's domain) with aws].
    #[arg(long, env = "SESSION_AGENT_ENDPOINT")]
    pub endpoint: Option<String>,
    /// AWS region for the gateway, the SSM API and log delivery [default: AWS_REGION,
    /// the AWS config file, or instance metadata (IMDSv2) on EC2].
    #[arg(long, env = "SESSION_AGENT_REGION")]
    pub region: Option<String>,
    /// DNS domain for the regional endpoints instead of the partition's own
    /// (amazonaws.com, amazonaws.com.cn, ...) [default: by region].
    #[arg(long, env = "SESSION_AGENT_SERVICE_DOMAIN")]
    pub service_domain: Option<String>,
    /// SSM API URL for the UpdateInstanceInformation heartbeat (--gateway aws)
    /// [default: ssm.REGION.DOMAIN over https].
    #[arg(long, env = "SESSION_AGENT_SSM_ENDPOINT")]
    pub ssm_endpoint: Option<String>,
    /// This node's id as the gateway knows it [default: the host name with --gateway
    /// local; the EC2 instance id from instance metadata with aws; on premises set the
    /// managed-instance id, mi-...].
    #[arg(long, env = "SESSION_AGENT_TARGET_ID")]
    pub target_id: Option<String>,
    /// State directory [default: /var/lib/session-agent as root, else
    /// $XDG_STATE_HOME/session-agent].
    #[arg(long, env = "SESSION_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Maximum concurrent sessions [default: 1000].
    #[arg(long, env = "SESSION_AGENT_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Sudo rule given to a newly created ssm-user: `nopasswd` (as upstream) or `none`
    /// [default: nopasswd].
    #[arg(long, env = "SESSION_AGENT_SUDO_POLICY")]
    pub sudo_policy: Option<String>,
    /// What sessions run: `login` (the user's login shell from passwd) or `sh` (as
    /// upstream) [default: login].
    #[arg(long, env = "SESSION_AGENT_SHELL")]
    pub shell: Option<String>,
    /// Extra CA certificate (PEM) trusted for the gateway's TLS.
    #[arg(long, env = "SESSION_AGENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Days a delivered recording stays in STATE_DIR/recordings [default: 14].
    /// Recordings not yet delivered are never deleted.
    #[arg(long, env = "SESSION_AGENT_RECORDING_RETENTION_DAYS")]
    pub recording_retention_days: Option<u64>,
    /// Size (MiB) above which the oldest delivered recordings are deleted early
    /// [default: 2048].
    #[arg(long, env = "SESSION_AGENT_RECORDING_QUOTA_MB")]
    pub recording_quota_mb: Option<u64>,
    /// Free space (MiB) the recordings' file system must have for a new session to be
    /// recorded durably [default: 256].
    #[arg(long, env = "SESSION_AGENT_RECORDING_MIN_FREE_MB")]
    pub recording_min_free_mb: Option<u64>,
    /// Disk space (MiB) reserved ahead of each running session's recording, renewed as
    /// it grows, so that filling the disk does not stop the recording of a session
    /// already running [default: 4; 0 reserves nothing].
    #[arg(long, env = "SESSION_AGENT_RECORDING_HEADROOM_MB")]
    pub recording_headroom_mb: Option<u64>,
    /// When a new session cannot be recorded durably (disk full, quota filled by
    /// undelivered recordings, directory not writable): `fail-open` runs it anyway and
    /// logs a warning; `fail-closed` refuses it and tells the user why
    /// [default: fail-open].
    #[arg(long, env = "SESSION_AGENT_RECORDING_POLICY")]
    pub recording_policy: Option<String>,
    /// On SIGTERM (systemctl stop), how long the agent may take to end its sessions and
    /// deliver their recordings before it exits anyway (e.g. 30s, 2m); what is not
    /// delivered by then is delivered at the next start [default: 30s].
    #[arg(long, env = "SESSION_AGENT_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// Port sessions (port forwarding, SSH through Session Manager): `on` or `off`
    /// [default: on].
    #[arg(long, env = "SESSION_AGENT_PORT_FORWARDING")]
    pub port_forwarding: Option<String>,
    /// Networks port sessions may reach, comma-separated CIDRs or addresses (e.g.
    /// 127.0.0.1,10.0.0.0/8); in the file a list [default: any not denied].
    #[arg(long, env = "SESSION_AGENT_PORT_FORWARDING_ALLOWED_CIDRS")]
    pub port_forwarding_allowed_cidrs: Option<String>,
    /// Networks port sessions may never reach, besides the built-in list (instance
    /// metadata, the VPC resolver, time sync, KMS activation; IPv4 and IPv6);
    /// comma-separated, in the file a list.
    #[arg(long, env = "SESSION_AGENT_PORT_FORWARDING_DENIED_CIDRS")]
    pub port_forwarding_denied_cidrs: Option<String>,
    /// Ports port sessions may reach, comma-separated numbers and ranges (e.g.
    /// 22,443,8000-8999); in the file a list [default: any].
    #[arg(long, env = "SESSION_AGENT_PORT_FORWARDING_ALLOWED_PORTS")]
    pub port_forwarding_allowed_ports: Option<String>,
    /// Connections one port session may hold open at once [default: 64].
    #[arg(long, env = "SESSION_AGENT_PORT_FORWARDING_MAX_CONNECTIONS")]
    pub port_forwarding_max_connections: Option<usize>,
    /// Record every program a shell or command session runs, from the kernel (exec with
    /// its arguments, secrets masked, and exit): `on` or `off` [default: on; it needs root
    /// before Linux 6.6, and says so once when it cannot run].
    #[arg(long, env = "SESSION_AGENT_COMMAND_AUDIT")]
    pub command_audit: Option<String>,
    /// More flags whose value is a secret, masked in audited arguments and in typed and
    /// echoed text, besides the built-in ones (--password, --token, --secret, ...; always
    /// on): comma-separated, e.g. --vault-password,--db-pass; in the file a list.
    #[arg(long, env = "SESSION_AGENT_REDACT_FLAGS")]
    pub redact_flags: Option<String>,
    /// A regular expression for secrets the built-in rules do not know (its first group,
    /// or the whole match, is masked), e.g. 'sk_live_[A-Za-z0-9]+'; repeat the flag for
    /// more; in the environment one per line; in the file a list.
    #[arg(long, env = "SESSION_AGENT_REDACT_PATTERNS", value_delimiter = '\n')]
    pub redact_patterns: Option<Vec<String>>,
    /// Stream plain typed input to CloudWatch as `"direction": "input"` events: `on` or
    /// `off`. Off, the command events (`"eventType": "command"`) carry each line typed
    /// at a prompt, and filters on `sessionData` do not match a command twice (once
    /// typed, once echoed); echo-off markers are streamed either way, and the local
    /// recording keeps all input [default: off].
    #[arg(long, env = "SESSION_AGENT_STREAM_INPUT")]
    pub stream_input: Option<String>,
    /// What streamed CloudWatch events carry: `full` (upstream's schema plus sequence,
    /// direction and hash chain, and input, command, exec/exit, tunnel, gap and end
    /// events) or `upstream` (exactly what amazon-ssm-agent streams: output lines in its
    /// eight fields, nothing else; no chain for `verify`) [default: full].
    #[arg(long, env = "SESSION_AGENT_CLOUDWATCH_STREAM")]
    pub cloudwatch_stream: Option<String>,
    /// The file's lists (`port_forwarding_*` arrays), handed from the file form.
    #[arg(skip)]
    pub port_lists: PortLists,
    /// `--log-format` (a global flag), handed over by `main`.
    #[arg(skip)]
    pub log_format: Option<String>,
    /// `--log-level` (a global flag), handed over by `main`.
    #[arg(skip)]
    pub log_level: Option<String>,
    /// For a configuration read from files: which, and where each key was set.
    #[arg(skip)]
    pub sources: FileSources,
}

/// The file form, its key list, and the two things done with every key: laid over an
/// earlier file (drop-ins), and asked whether a flag or variable set it.
macro_rules! file_config {
    ($($key:ident: $ty:ty,)*) => {
        /// The file form: every key optional, unknown keys rejected (typos must not pass
        /// silently).
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $($key: Option<$ty>,)*
        }

        /// Every key the file takes.
        pub const KEYS: &[&str] = &[$(stringify!($key)),*];

        impl FileConfig {
            /// `over`'s keys over these, key by key (a list replaces a list whole).
            fn overlay(self, over: FileConfig) -> FileConfig {
                FileConfig { $($key: over.$key.or(self.$key),)* }
            }
        }

        impl RunArgs {
            /// Whether a flag or environment variable set `key` (so that a bad value is
            /// not blamed on the file).
            fn sets(&self, key: &str) -> bool {
                match key {
                    $(stringify!($key) => self.$key.is_some(),)*
                    _ => false,
                }
            }
        }
    };
}

file_config! {
    gateway: String,
    endpoint: String,
    region: String,
    service_domain: String,
    ssm_endpoint: String,
    target_id: String,
    state_dir: PathBuf,
    max_sessions: usize,
    sudo_policy: String,
    shell: String,
    ca_file: PathBuf,
    recording_retention_days: u64,
    recording_quota_mb: u64,
    recording_min_free_mb: u64,
    recording_headroom_mb: u64,
    recording_policy: String,
    shutdown_timeout: String,
    log_format: String,
    log_level: String,
    port_forwarding: String,
    port_forwarding_allowed_cidrs: Vec<String>,
    port_forwarding_denied_cidrs: Vec<String>,
    port_forwarding_allowed_ports: Vec<String>,
    port_forwarding_max_connections: usize,
    command_audit: String,
    redact_flags: Vec<String>,
    redact_patterns: Vec<String>,
    stream_input: String,
    cloudwatch_stream: String,
}

/// The files a configuration was read from, and where each key's value was written
/// (the last file that set it).
#[derive(Debug, Default, Clone)]
pub struct FileSources {
    /// The files read, in the order they were laid over each other.
    pub files: Vec<PathBuf>,
    keys: BTreeMap<String, Location>,
}

impl FileSources {
    /// Where `key`'s value was written.
    pub fn location(&self, key: &str) -> Option<&Location> {
        self.keys.get(key)
    }
}

/// The file's lists (arrays of strings): port forwarding's and the redaction flags.
#[derive(Debug, Default, Clone)]
pub struct PortLists {
    allowed_cidrs: Option<Vec<String>>,
    denied_cidrs: Option<Vec<String>>,
    allowed_ports: Option<Vec<String>>,
    redact_flags: Option<Vec<String>>,
}

/// Most extra redaction flags, and patterns.
pub const MAX_REDACT_RULES: usize = 64;
/// Longest redaction flag or pattern (bytes).
pub const MAX_REDACT_RULE_BYTES: usize = 1024;

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    crate::config::config_error(key, reason)
}

/// Largest configuration file (the main one or a drop-in) read, in bytes.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;
/// Most drop-in files read from one `.d` directory.
pub const MAX_DROP_INS: usize = 256;
/// Where `run`, `doctor` and `config check` look for their configuration when neither
/// `--config` nor `SESSION_AGENT_CONFIG` names one (Linux and other Unixes; on Windows
/// `%ProgramData%\session-agent\session-agent.toml`).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/session-agent/session-agent.toml";
/// Environment variable that moves [`DEFAULT_CONFIG_FILE`] (for tests, and installations
/// under another prefix). Unlike `SESSION_AGENT_CONFIG`, the file it names may be absent.
pub const DEFAULT_CONFIG_VAR: &str = "SESSION_AGENT_DEFAULT_CONFIG";

/// The default configuration file when it (or its drop-in directory) exists.
pub fn default_config_file() -> Option<PathBuf> {
    let path = match std::env::var_os(DEFAULT_CONFIG_VAR).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        #[cfg(windows)]
        None => crate::platform::system_state_dir().join("session-agent.toml"),
        #[cfg(not(windows))]
        None => PathBuf::from(DEFAULT_CONFIG_FILE),
    };
    (path.exists() || drop_in_dir(&path).is_dir()).then_some(path)
}

/// A configuration file's drop-in directory: its path with `.d` added
/// (`session-agent.toml.d/`).
pub fn drop_in_dir(config: &Path) -> PathBuf {
    let mut dir = config.as_os_str().to_owned();
    dir.push(".d");
    PathBuf::from(dir)
}

/// The files a configuration is read from, in order: `config` itself when it exists,
/// then the `*.toml` files of its drop-in directory (not those whose name starts with a
/// dot), sorted by name, each laid over the ones before.
///
/// # Errors
/// Neither the file nor the directory exists, the directory cannot be read, or it holds
/// more than [`MAX_DROP_INS`] files.
pub fn config_files(config: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = drop_in_dir(config);
    let mut files = Vec::new();
    if config.exists() || !dir.exists() {
        // (An absent file is reported by the read, with the OS's own words.)
        files.push(config.to_owned());
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => {
            return Err(err(
                "--config",
                format!("cannot read the drop-in directory {}: {e}", dir.display()),
            ))
        }
    };
    let mut drop_ins = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            err(
                "--config",
                format!("cannot read the drop-in directory {}: {e}", dir.display()),
            )
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        if drop_ins.len() == MAX_DROP_INS {
            return Err(err(
                "--config",
                format!(
                    "{} holds more than {MAX_DROP_INS} .toml files",
                    dir.display()
                ),
            ));
        }
        drop_ins.push(entry.path());
    }
    drop_ins.sort();
    files.extend(drop_ins);
    Ok(files)
}

/// What `config check` prints above the settings: the files read, as TOML comments
/// (so that its output stays a configuration file).
pub fn files_read_comment(config: Option<&Path>) -> String {
    match config.map(config_files) {
        None => "# No configuration file: flags, environment and defaults.\n".into(),
        Some(Ok(files)) => files
            .iter()
            .map(|f| format!("# Read {}\n", f.display()))
            .collect(),
        Some(Err(e)) => format!("# {e}\n"),
    }
}

/// Reads a configuration: `config` and its drop-ins ([`config_files`]), each parsed
/// with [`parse_file`], later files' keys over earlier ones'.
///
/// # Errors
/// A file that cannot be read, is larger than [`MAX_CONFIG_FILE_BYTES`], or is not a
/// valid configuration; the message names the file, and the line, column and key.
pub fn read_config(config: &Path) -> Result<RunArgs, ConfigError> {
    let mut merged = FileConfig::default();
    let mut sources = FileSources::default();
    for path in config_files(config)? {
        let text = read_bounded(&path)?;
        let (file, keys) = parse_one(&text, &path)?;
        merged = merged.overlay(file);
        sources.keys.extend(keys);
        sources.files.push(path);
    }
    Ok(merged.into_run_args(sources))
}

fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let cannot =
        |e: &dyn std::fmt::Display| err("--config", format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| cannot(&e))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(cannot(&format_args!(
            "larger than {MAX_CONFIG_FILE_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        let text = String::from_utf8_lossy(e.as_bytes());
        let at = Location::at(path, &text, e.utf8_error().valid_up_to());
        ConfigError {
            location: Some(at),
            ..err("--config", "not UTF-8 text")
        }
    })
}

/// Parses one file's text (no I/O): its keys, and where each value starts.
fn parse_one(
    text: &str,
    path: &Path,
) -> Result<(FileConfig, BTreeMap<String, Location>), ConfigError> {
    let file: FileConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| {
            let key_path = e.path().to_string();
            toml_error(text, path, &key_path, &e.into_inner())
        })?;
    // Parsed twice, the second time for the positions: a few microseconds for a file
    // that is read once at start.
    let spans: BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| toml_error(text, path, "", &e))?;
    let keys = spans
        .into_iter()
        .map(|(k, v)| (k, Location::at(path, text, v.span().start)))
        .collect();
    Ok((file, keys))
}

/// A TOML or type error as `FILE:LINE:COLUMN: key: what`, in words a person reads (not
/// Rust's type names).
fn toml_error(text: &str, path: &Path, key_path: &str, inner: &toml::de::Error) -> ConfigError {
    let location = inner.span().map(|s| Location::at(path, text, s.start));
    // One line (toml's messages may take several).
    let message = inner
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    let (key, reason) = if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default().to_owned();
        let hint = match closest_key(&name) {
            Some(k) => format!("did you mean `{k}`? "),
            None => String::new(),
        };
        (
            name,
            format!("unknown key ({hint}every key is in config/session-agent.example.toml)"),
        )
    } else if key_path.is_empty() || key_path == "." {
        ("TOML syntax".to_owned(), message)
    } else {
        (key_path.to_owned(), readable_types(&message))
    };
    ConfigError {
        key,
        reason,
        location,
    }
}

/// serde's `expected usize` as `expected a whole number`, and the like.
fn readable_types(message: &str) -> String {
    let mut out = message.to_owned();
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected a sequence", "expected a list like [\"a\", \"b\"]"),
        ("expected path string", "expected a path in quotes"),
    ] {
        out = out.replace(rust, words);
    }
    out
}

/// The known key nearest to a misspelt one (at most two edits away).
fn closest_key(name: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Parses a config file's text (no I/O), for `run` and for tests of the example.
///
/// # Errors
/// Invalid TOML, a value of the wrong type, or an unknown key: `FILE:LINE:COLUMN: key:
/// what`.
pub fn parse_file(text: &str, path: &Path) -> Result<RunArgs, ConfigError> {
    let (file, keys) = parse_one(text, path)?;
    Ok(file.into_run_args(FileSources {
        files: vec![path.to_owned()],
        keys,
    }))
}

impl FileConfig {
    fn into_run_args(self, sources: FileSources) -> RunArgs {
        let f = self;
        RunArgs {
            config: None,
            gateway: f.gateway,
            endpoint: f.endpoint,
            region: f.region,
            service_domain: f.service_domain,
            ssm_endpoint: f.ssm_endpoint,
            target_id: f.target_id,
            state_dir: f.state_dir,
            max_sessions: f.max_sessions,
            sudo_policy: f.sudo_policy,
            shell: f.shell,
            ca_file: f.ca_file,
            recording_retention_days: f.recording_retention_days,
            recording_quota_mb: f.recording_quota_mb,
            recording_min_free_mb: f.recording_min_free_mb,
            recording_headroom_mb: f.recording_headroom_mb,
            recording_policy: f.recording_policy,
            shutdown_timeout: f.shutdown_timeout,
            port_forwarding: f.port_forwarding,
            port_forwarding_allowed_cidrs: None,
            port_forwarding_denied_cidrs: None,
            port_forwarding_allowed_ports: None,
            port_forwarding_max_connections: f.port_forwarding_max_connections,
            command_audit: f.command_audit,
            redact_flags: None,
            redact_patterns: f.redact_patterns,
            stream_input: f.stream_input,
            cloudwatch_stream: f.cloudwatch_stream,
            port_lists: PortLists {
                allowed_cidrs: f.port_forwarding_allowed_cidrs,
                denied_cidrs: f.port_forwarding_denied_cidrs,
                allowed_ports: f.port_forwarding_allowed_ports,
                redact_flags: f.redact_flags,
            },
            log_format: f.log_format,
            log_level: f.log_level,
            sources,
        }
    }
}

fn default_target_id() -> String {
    let host = crate::platform::hostname().unwrap_or_default();
    let clean: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(128)
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// `[A-Za-z0-9._-]{1,128}`: EC2 (`i-…`) and managed-instance (`mi-…`) ids, and any
/// such name on the local gateway.
pub fn valid_target_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn default_state_dir() -> PathBuf {
    crate::platform::default_state_dir("")
}

impl RunArgs {
    /// Merges flags over the file, applies defaults, validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key.
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => read_config(path)?,
            None => RunArgs::default(),
        };
        // (Arguments from `parse_file` carry their file's sources themselves.)
        let (sources, flags): (FileSources, Vec<&str>) = match &self.config {
            Some(_) => (
                file.sources.clone(),
                KEYS.iter().copied().filter(|k| self.sets(k)).collect(),
            ),
            None => (self.sources.clone(), Vec::new()),
        };
        self.merge(file).map_err(|mut e| {
            // A bad value that came from a file: say where it is.
            if e.location.is_none() && !flags.contains(&e.key.as_str()) {
                e.location = sources.location(&e.key).cloned();
            }
            e
        })
    }

    fn merge(self, file: RunArgs) -> Result<AgentConfig, ConfigError> {
        let port = port_policy(&self, &file)?;
        let redactor = std::sync::Arc::new(redaction(&self, &file)?);
        let command_audit = match self
            .command_audit
            .as_deref()
            .or(file.command_audit.as_deref())
            .unwrap_or("on")
        {
            "on" => true,
            "off" => false,
            other => {
                return Err(err(
                    "command_audit",
                    format!("{other:?} is not `on` or `off`"),
                ))
            }
        };
        let stream_input = match self
            .stream_input
            .as_deref()
            .or(file.stream_input.as_deref())
            .unwrap_or("off")
        {
            "on" => true,
            "off" => false,
            other => {
                return Err(err(
                    "stream_input",
                    format!("{other:?} is not `on` or `off`"),
                ))
            }
        };
        let cloudwatch_stream: crate::delivery::cwl::StreamMode = self
            .cloudwatch_stream
            .as_deref()
            .or(file.cloudwatch_stream.as_deref())
            .unwrap_or("full")
            .parse()
            .map_err(|e: String| err("cloudwatch_stream", e))?;
        use crate::protocol::endpoint;
        let aws = match self.gateway.or(file.gateway).as_deref().unwrap_or("local") {
            "local" => false,
            "aws" => true,
            other => return Err(err("gateway", format!("{other:?} is not `local` or `aws`"))),
        };
        let endpoint = match self.endpoint.or(file.endpoint) {
            Some(raw) => Some(endpoint::normalize(&raw).map_err(|e| err("endpoint", e))?),
            None if aws => None,
            None => Some(DEFAULT_ENDPOINT.into()),
        };
        let region = self.region.or(file.region);
        if let Some(r) = &region {
            endpoint::check_region(r).map_err(|e| err("region", e))?;
        }
        let service_domain = self.service_domain.or(file.service_domain);
        if let Some(d) = &service_domain {
            endpoint::for_region(endpoint::SSM, "us-east-1", Some(d))
                .map_err(|e| err("service_domain", e))?;
        }
        let ssm_endpoint = match self.ssm_endpoint.or(file.ssm_endpoint) {
            Some(raw) => Some(endpoint::normalize(&raw).map_err(|e| err("ssm_endpoint", e))?),
            None => None,
        };
        for (key, set) in [
            ("service_domain", service_domain.is_some()),
            ("ssm_endpoint", ssm_endpoint.is_some()),
        ] {
            if set && !aws {
                return Err(err(
                    key,
                    "applies only with gateway = \"aws\" (the local gateway has no regional endpoints)",
                ));
            }
        }
        let target_id = match self.target_id.or(file.target_id) {
            Some(id) => Some(id),
            None if aws => None,
            None => Some(default_target_id()),
        };
        if let Some(id) = &target_id {
            if !valid_target_id(id) {
                return Err(err(
                    "target_id",
                    format!("{id:?} must match [A-Za-z0-9._-]{{1,128}}"),
                ));
            }
        }
        let max_sessions = self.max_sessions.or(file.max_sessions).unwrap_or(1000);
        if !(1..=10_000).contains(&max_sessions) {
            return Err(err("max_sessions", "must be between 1 and 10000"));
        }
        let sudo_policy: SudoPolicy = self
            .sudo_policy
            .or(file.sudo_policy)
            .unwrap_or_else(|| "nopasswd".into())
            .parse()
            .map_err(|e: crate::session::spec::InvalidSudoPolicy| {
                err("sudo_policy", e.to_string())
            })?;
        let shell = match self.shell.or(file.shell).as_deref().unwrap_or("login") {
            "login" => ShellChoice::Login,
            "sh" => ShellChoice::Sh,
            other => return Err(err("shell", format!("{other:?} is not `login` or `sh`"))),
        };
        let ca_file = self.ca_file.or(file.ca_file);
        if let Some(ca) = &ca_file {
            if !ca.is_file() {
                return Err(err("ca_file", format!("{} does not exist", ca.display())));
            }
        }
        let retention_days = self
            .recording_retention_days
            .or(file.recording_retention_days)
            .unwrap_or(14);
        if retention_days > 3650 {
            return Err(err(
                "recording_retention_days",
                "must be between 0 (delete once delivered) and 3650",
            ));
        }
        let quota_mb = self
            .recording_quota_mb
            .or(file.recording_quota_mb)
            .unwrap_or(2048);
        if !(1..=16 * 1024 * 1024).contains(&quota_mb) {
            return Err(err(
                "recording_quota_mb",
                "must be between 1 and 16777216 (16 TiB)",
            ));
        }
        let min_free_mb = self
            .recording_min_free_mb
            .or(file.recording_min_free_mb)
            .unwrap_or(256);
        if min_free_mb > 16 * 1024 * 1024 {
            return Err(err(
                "recording_min_free_mb",
                "must be between 0 and 16777216 (16 TiB)",
            ));
        }
        let headroom_mb = self
            .recording_headroom_mb
            .or(file.recording_headroom_mb)
            .unwrap_or(4);
        if headroom_mb > 1024 {
            return Err(err("recording_headroom_mb", "must be between 0 and 1024"));
        }
        let fail_closed = match self
            .recording_policy
            .or(file.recording_policy)
            .as_deref()
            .unwrap_or("fail-open")
        {
            "fail-open" => false,
            "fail-closed" => true,
            other => {
                return Err(err(
                    "recording_policy",
                    format!("{other:?} is not `fail-open` or `fail-closed`"),
                ))
            }
        };
        let shutdown_timeout = match self.shutdown_timeout.or(file.shutdown_timeout) {
            Some(text) => {
                crate::config::parse_duration(&text).map_err(|e| err("shutdown_timeout", e))?
            }
            None => DEFAULT_SHUTDOWN_TIMEOUT,
        };
        if shutdown_timeout > MAX_SHUTDOWN_TIMEOUT {
            return Err(err(
                "shutdown_timeout",
                "must be at most 10m (the systemd unit's TimeoutStopSec must stay above it)",
            ));
        }
        let log_format: LogFormat = self
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("plain")
            .parse()
            .map_err(|e: String| err("log_format", e))?;
        let log_level = self
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        crate::logging::parse_filter(&log_level).map_err(|e| err("log_level", e))?;
        let exec_shim = std::env::current_exe().map_err(|e| {
            err(
                "executable",
                format!("cannot find this program's own path: {e}"),
            )
        })?;
        Ok(AgentConfig {
            aws: aws.then_some(super::AwsSettings {
                service_domain,
                ssm_endpoint,
            }),
            endpoint,
            region,
            target_id,
            state_dir: self
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(default_state_dir),
            max_sessions,
            sudo_policy,
            shell,
            ca_file,
            exec_shim,
            retention: super::retention::Policy {
                retention: std::time::Duration::from_secs(retention_days * 24 * 3600),
                quota_bytes: quota_mb * 1024 * 1024,
                min_free_bytes: min_free_mb * 1024 * 1024,
                headroom_bytes: headroom_mb * 1024 * 1024,
                fail_closed,
            },
            shutdown_timeout,
            log_level,
            log_format,
            local_key: None,
            port,
            command_audit,
            redactor,
            stream_input,
            cloudwatch_stream,
        })
    }
}

/// The redaction rules: the built-in ones, and the flags and patterns of the flags (or
/// environment) over the file's.
fn redaction(
    flags: &RunArgs,
    file: &RunArgs,
) -> Result<crate::audit::redact::Redactor, ConfigError> {
    let extra: Vec<String> = match &flags.redact_flags {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect(),
        // (`flags` itself is a file's when parsed with `parse_file` alone.)
        None => flags
            .port_lists
            .redact_flags
            .clone()
            .or_else(|| file.port_lists.redact_flags.clone())
            .unwrap_or_default(),
    };
    if extra.len() > MAX_REDACT_RULES {
        return Err(err(
            "redact_flags",
            format!("at most {MAX_REDACT_RULES} flags"),
        ));
    }
    for f in &extra {
        let valid = f.starts_with('-')
            && f.len() > 1
            && f.len() <= MAX_REDACT_RULE_BYTES
            && !f.contains('=')
            && !f.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            return Err(err(
                "redact_flags",
                format!(
                    "{f:?} is not a flag (like --vault-password: a dash first, no spaces, no `=`)"
                ),
            ));
        }
    }
    let patterns: Vec<String> = flags
        .redact_patterns
        .clone()
        .or_else(|| file.redact_patterns.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .collect();
    if patterns.len() > MAX_REDACT_RULES {
        return Err(err(
            "redact_patterns",
            format!("at most {MAX_REDACT_RULES} patterns"),
        ));
    }
    for p in &patterns {
        if p.len() > MAX_REDACT_RULE_BYTES {
            return Err(err(
                "redact_patterns",
                format!("{p:?} is longer than {MAX_REDACT_RULE_BYTES} bytes"),
            ));
        }
        // One at a time, so that the error names the pattern that does not compile.
        crate::audit::redact::Redactor::new::<String>(&[], std::slice::from_ref(p))
            .map_err(|e| err("redact_patterns", one_line(&e)))?;
    }
    crate::audit::redact::Redactor::new(&extra, &patterns)
        .map_err(|e| err("redact_patterns", one_line(&e)))
}

/// A multi-line message (the regex crate's, with its caret diagram) as one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The port-forwarding policy from flags over the file.
fn port_policy(flags: &RunArgs, file: &RunArgs) -> Result<PortPolicy, ConfigError> {
    use super::port::policy::{self, split_list};
    let list = |flag: &Option<String>, file: &Option<Vec<String>>| -> Option<Vec<String>> {
        flag.as_deref().map(split_list).or_else(|| file.clone())
    };
    let enabled = match flags
        .port_forwarding
        .as_deref()
        .or(file.port_forwarding.as_deref())
        .unwrap_or("on")
    {
        "on" => true,
        "off" => false,
        other => {
            return Err(err(
                "port_forwarding",
                format!("{other:?} is not `on` or `off`"),
            ))
        }
    };
    let allowed = list(
        &flags.port_forwarding_allowed_cidrs,
        &file.port_lists.allowed_cidrs,
    )
    .map(|l| policy::parse_networks(&l))
    .transpose()
    .map_err(|e| err("port_forwarding_allowed_cidrs", e))?
    .unwrap_or_default();
    let mut denied = PortPolicy::default().denied;
    denied.extend(
        list(
            &flags.port_forwarding_denied_cidrs,
            &file.port_lists.denied_cidrs,
        )
        .map(|l| policy::parse_networks(&l))
        .transpose()
        .map_err(|e| err("port_forwarding_denied_cidrs", e))?
        .unwrap_or_default(),
    );
    let ports = list(
        &flags.port_forwarding_allowed_ports,
        &file.port_lists.allowed_ports,
    )
    .map(|l| policy::parse_ports(&l))
    .transpose()
    .map_err(|e| err("port_forwarding_allowed_ports", e))?;
    let max_connections = flags
        .port_forwarding_max_connections
        .or(file.port_forwarding_max_connections)
        .unwrap_or(policy::DEFAULT_MAX_CONNECTIONS);
    if !(1..=policy::MAX_MAX_CONNECTIONS).contains(&max_connections) {
        return Err(err(
            "port_forwarding_max_connections",
            format!("must be between 1 and {}", policy::MAX_MAX_CONNECTIONS),
        ));
    }
    Ok(PortPolicy {
        enabled,
        allowed,
        denied,
        ports,
        max_connections,
    })
}

/// A duration the way the configuration spells it (`500ms`, `30s`, `2m`, `1h`).
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

impl AgentConfig {
    /// The effective configuration as a configuration file (`config check` prints it; fed
    /// back to `run --config`, it gives the same configuration).
    pub fn to_toml(&self) -> String {
        use std::fmt::Write;
        let text = |v: &str| toml::Value::String(v.to_owned()).to_string();
        let path = |p: &Path| text(&p.to_string_lossy());
        let mib = |b: u64| b / (1024 * 1024);
        let mut out = String::new();
        let mut line = |key: &str, value: String| {
            let _ = writeln!(out, "{key} = {value}");
        };
        line(
            "gateway",
            text(if self.aws.is_some() { "aws" } else { "local" }),
        );
        if let Some(endpoint) = &self.endpoint {
            line("endpoint", text(endpoint));
        }
        if let Some(region) = &self.region {
            line("region", text(region));
        }
        if let Some(aws) = &self.aws {
            if let Some(domain) = &aws.service_domain {
                line("service_domain", text(domain));
            }
            if let Some(ssm) = &aws.ssm_endpoint {
                line("ssm_endpoint", text(ssm));
            }
        }
        if let Some(id) = &self.target_id {
            line("target_id", text(id));
        }
        line("state_dir", path(&self.state_dir));
        line("max_sessions", self.max_sessions.to_string());
        line("sudo_policy", text(self.sudo_policy.as_str()));
        line(
            "shell",
            text(match self.shell {
                ShellChoice::Login => "login",
                ShellChoice::Sh => "sh",
            }),
        );
        if let Some(ca) = &self.ca_file {
            line("ca_file", path(ca));
        }
        line(
            "recording_retention_days",
            (self.retention.retention.as_secs() / (24 * 3600)).to_string(),
        );
        line(
            "recording_quota_mb",
            mib(self.retention.quota_bytes).to_string(),
        );
        line(
            "recording_min_free_mb",
            mib(self.retention.min_free_bytes).to_string(),
        );
        line(
            "recording_headroom_mb",
            mib(self.retention.headroom_bytes).to_string(),
        );
        line(
            "recording_policy",
            text(if self.retention.fail_closed {
                "fail-closed"
            } else {
                "fail-open"
            }),
        );
        line(
            "shutdown_timeout",
            text(&format_duration(self.shutdown_timeout)),
        );
        line("log_level", text(&self.log_level));
        line("log_format", text(&self.log_format.to_string()));
        let port = &self.port;
        line(
            "port_forwarding",
            text(if port.enabled { "on" } else { "off" }),
        );
        let array = |items: Vec<String>| {
            toml::Value::Array(items.into_iter().map(toml::Value::String).collect()).to_string()
        };
        if !port.allowed.is_empty() {
            line(
                "port_forwarding_allowed_cidrs",
                array(port.allowed.iter().map(ToString::to_string).collect()),
            );
        }
        let built_in = super::port::policy::PortPolicy::default().denied;
        let extra: Vec<String> = port
            .denied
            .iter()
            .filter(|n| !built_in.contains(n))
            .map(ToString::to_string)
            .collect();
        if !extra.is_empty() {
            line("port_forwarding_denied_cidrs", array(extra));
        }
        if let Some(ports) = &port.ports {
            line(
                "port_forwarding_allowed_ports",
                array(
                    ports
                        .iter()
                        .map(|r| {
                            if r.start() == r.end() {
                                r.start().to_string()
                            } else {
                                format!("{}-{}", r.start(), r.end())
                            }
                        })
                        .collect(),
                ),
            );
        }
        line(
            "port_forwarding_max_connections",
            port.max_connections.to_string(),
        );
        line(
            "command_audit",
            text(if self.command_audit { "on" } else { "off" }),
        );
        let extra = self.redactor.extra_flags();
        if !extra.is_empty() {
            line("redact_flags", array(extra.to_vec()));
        }
        let patterns = self.redactor.patterns();
        if !patterns.is_empty() {
            line(
                "redact_patterns",
                array(patterns.into_iter().map(str::to_owned).collect()),
            );
        }
        line(
            "stream_input",
            text(if self.stream_input { "on" } else { "off" }),
        );
        line("cloudwatch_stream", text(self.cloudwatch_stream.as_str()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file = parse_file(
            "endpoint = \"https://gw:8443\"\nmax_sessions = 5\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(file.endpoint.as_deref(), Some("https://gw:8443"));
        let args = RunArgs {
            target_id: Some("node-1".into()),
            max_sessions: Some(7),
            ..RunArgs::default()
        };
        let cfg = args.into_config().unwrap();
        assert_eq!(cfg.target_id.as_deref(), Some("node-1"));
        assert_eq!(cfg.max_sessions, 7);
        assert_eq!(cfg.endpoint.as_deref(), Some(DEFAULT_ENDPOINT));
        assert!(cfg.aws.is_none());
        assert_eq!(cfg.shell, ShellChoice::Login);
    }

    #[test]
    fn aws_mode_leaves_endpoint_and_target_to_the_identity() {
        let cfg = RunArgs {
            gateway: Some("aws".into()),
            ..RunArgs::default()
        }
        .into_config()
        .unwrap();
        assert!(cfg.aws.is_some());
        assert_eq!(cfg.endpoint, None);
        assert_eq!(cfg.target_id, None);
        let cfg = parse_file(
            "gateway = \"aws\"\nendpoint = \"vpce-1.ssmmessages.example\"\nregion = \"eu-west-1\"\ntarget_id = \"mi-0123456789abcdef0\"\nssm_endpoint = \"http://127.0.0.1:9/\"\n",
            Path::new("c.toml"),
        )
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(
            cfg.endpoint.as_deref(),
            Some("https://vpce-1.ssmmessages.example")
        );
        assert_eq!(cfg.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            cfg.aws.unwrap().ssm_endpoint.as_deref(),
            Some("http://127.0.0.1:9")
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                RunArgs {
                    endpoint: Some("ftp://x".into()),
                    ..RunArgs::default()
                },
                "endpoint",
            ),
            (
                RunArgs {
                    target_id: Some("a b".into()),
                    ..RunArgs::default()
                },
                "target_id",
            ),
            (
                RunArgs {
                    max_sessions: Some(0),
                    ..RunArgs::default()
                },
                "max_sessions",
            ),
            (
                RunArgs {
                    sudo_policy: Some("all".into()),
                    ..RunArgs::default()
                },
                "sudo_policy",
            ),
            (
                RunArgs {
                    shell: Some("zsh".into()),
                    ..RunArgs::default()
                },
                "shell",
            ),
            (
                RunArgs {
                    ca_file: Some("/nonexistent.pem".into()),
                    ..RunArgs::default()
                },
                "ca_file",
            ),
            (
                RunArgs {
                    gateway: Some("ssm".into()),
                    ..RunArgs::default()
                },
                "gateway",
            ),
            (
                RunArgs {
                    endpoint: Some("https://gw/v1".into()),
                    ..RunArgs::default()
                },
                "endpoint",
            ),
            (
                RunArgs {
                    region: Some("us east".into()),
                    ..RunArgs::default()
                },
                "region",
            ),
            (
                RunArgs {
                    gateway: Some("aws".into()),
                    service_domain: Some("a/b".into()),
                    ..RunArgs::default()
                },
                "service_domain",
            ),
            (
                RunArgs {
                    service_domain: Some("example.internal".into()),
                    ..RunArgs::default()
                },
                "service_domain",
            ),
            (
                RunArgs {
                    gateway: Some("aws".into()),
                    ssm_endpoint: Some("ftp://x".into()),
                    ..RunArgs::default()
                },
                "ssm_endpoint",
            ),
        ];
        for (args, key) in cases {
            let e = args.into_config().unwrap_err();
            assert_eq!(e.key, key);
        }
        let e = parse_file("endpont = \"x\"", Path::new("c.toml")).unwrap_err();
        assert_eq!(e.key, "endpont", "{e}");
        for (key, text) in [
            ("shutdown_timeout", "shutdown_timeout = \"forever\""),
            ("shutdown_timeout", "shutdown_timeout = \"11m\""),
            ("log_format", "log_format = \"xml\""),
            ("log_level", "log_level = \"loud\""),
            ("stream_input", "stream_input = \"yes\""),
            ("cloudwatch_stream", "cloudwatch_stream = \"ssm\""),
        ] {
            let e = parse_file(text, Path::new("c.toml"))
                .unwrap()
                .into_config()
                .unwrap_err();
            assert_eq!(e.key, key, "{text}");
        }
    }

    /// The shipped example (installed as /etc/session-agent/session-agent.toml): as
    /// shipped it is valid and means the defaults; with every documented `# key = value`
    /// uncommented it is valid too; every key the file form accepts is documented in it;
    /// and `config check`'s output is a configuration that gives the same settings back.
    #[test]
    fn the_example_parses_documents_every_key_and_round_trips() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/session-agent.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let shipped = parse_file(&text, &path).unwrap().into_config().unwrap();
        let defaults = RunArgs::default().into_config().unwrap();
        assert_eq!(shipped.to_toml(), defaults.to_toml());
        // ca_file must name an existing file; its example path does not exist here.
        // (gateway = "aws" there, so that the AWS-only keys apply.)
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some("gateway = \"local\"") => "gateway = \"aws\"",
                Some(kv) if kv.contains(" = ") && !kv.starts_with("ca_file") => kv,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let every = parse_file(&uncommented, &path)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(every.target_id.as_deref(), Some("my-host"));
        assert!(every.aws.is_some());
        assert_eq!(every.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        let printed = every.to_toml();
        let documented = |key: &str| text.lines().any(|l| l.starts_with(&format!("# {key} = ")));
        for line in printed.lines() {
            let key = line.split(" = ").next().unwrap();
            assert!(documented(key), "{key} is not in the example");
        }
        assert!(documented("ca_file"));
        let again = parse_file(&printed, Path::new("printed.toml"))
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(again.to_toml(), printed);
    }

    #[test]
    fn redaction_rules_come_from_flags_over_the_file_and_bad_ones_are_named() {
        let file = parse_file(
            "redact_flags = [\"--vault-password\"]\nredact_patterns = ['sk_live_[A-Za-z0-9]+', 'vault:(\\S+)']\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let cfg = file.into_config().unwrap();
        assert_eq!(cfg.redactor.extra_flags(), ["--vault-password"]);
        assert_eq!(
            cfg.redactor.patterns(),
            ["sk_live_[A-Za-z0-9]+", "vault:(\\S+)"]
        );
        let printed = cfg.to_toml();
        assert!(
            printed.contains("redact_flags = [\"--vault-password\"]"),
            "{printed}"
        );
        // The built-in rules stay on beside the administrator's.
        let (argv, n) = cfg.redactor.redact(&[
            "x".to_owned(),
            "--vault-password=a".to_owned(),
            "--password=b".to_owned(),
            "vault:c".to_owned(),
        ]);
        assert_eq!(
            argv,
            [
                "x",
                "--vault-password=[redacted]",
                "--password=[redacted]",
                "vault:[redacted]"
            ]
        );
        assert_eq!(n, 3);
        // Flags (or the environment) replace the file's lists.
        let cfg = RunArgs {
            redact_flags: Some("--a-pass, --b-key".into()),
            redact_patterns: Some(vec!["k-[0-9]+".into()]),
            ..RunArgs::default()
        }
        .into_config()
        .unwrap();
        assert_eq!(cfg.redactor.extra_flags(), ["--a-pass", "--b-key"]);
        assert_eq!(cfg.redactor.patterns(), ["k-[0-9]+"]);
        // A bad pattern names the key and the pattern, on one line.
        let e = RunArgs {
            redact_patterns: Some(vec!["fine".into(), "tok(en".into()]),
            ..RunArgs::default()
        }
        .into_config()
        .unwrap_err();
        assert_eq!(e.key, "redact_patterns");
        assert!(e.reason.contains("\"tok(en\""), "{e}");
        assert!(!e.reason.contains('\n'), "{e}");
        for bad in ["password", "--pass word", "--a=b", "-"] {
            let e = RunArgs {
                redact_flags: Some(bad.into()),
                ..RunArgs::default()
            }
            .into_config()
            .unwrap_err();
            assert_eq!(e.key, "redact_flags", "{bad}");
        }
        let many = vec!["x".to_owned(); MAX_REDACT_RULES + 1];
        let e = RunArgs {
            redact_patterns: Some(many),
            ..RunArgs::default()
        }
        .into_config()
        .unwrap_err();
        assert_eq!(e.key, "redact_patterns");
    }

    #[test]
    fn file_errors_name_the_file_line_column_and_key() {
        let path = Path::new("/etc/session-agent/session-agent.toml");
        let text = "# comment\nendpoint = \"http://gw:1\"\n\nmax_sessions = \"lots\"\n";
        let e = parse_file(text, path).unwrap_err();
        assert_eq!(e.key, "max_sessions");
        assert_eq!(
            e.to_string(),
            "/etc/session-agent/session-agent.toml:4:16: max_sessions: invalid type: string \"lots\", expected a whole number"
        );
        // A syntax error: its position, and no key to name.
        let e = parse_file("max_sessions = 5\nfoo bar\n", path).unwrap_err();
        let at = e.location.clone().unwrap();
        assert_eq!((at.line, at.column), (2, 5), "{e}");
        assert_eq!(e.key, "TOML syntax");
        // An unknown key: named, where it is, with the nearest known key.
        let e = parse_file("region = \"eu-west-1\"\n  endpont = \"x\"\n", path).unwrap_err();
        assert_eq!(e.key, "endpont");
        assert_eq!(
            e.location.as_ref().map(|l| (l.line, l.column)),
            Some((2, 3))
        );
        assert!(e.reason.contains("did you mean `endpoint`?"), "{e}");
        let e = parse_file("zzz = 1\n", path).unwrap_err();
        assert!(!e.reason.contains("did you mean"), "{e}");
        // An element of a list: its index.
        let e = parse_file("redact_flags = [\"--a\", 5]\n", path).unwrap_err();
        assert_eq!(e.key, "redact_flags[1]");
        assert_eq!(e.location.as_ref().map(|l| l.column), Some(24));
        // Columns count characters, not bytes.
        let e = parse_file("target_id = \"é\" max_sessions = 1\n", path).unwrap_err();
        assert_eq!(e.location.as_ref().map(|l| l.column), Some(17), "{e}");
        // A value of the right type but wrong: found at validation, blamed on its line...
        let e = parse_file("\n\nshell = \"zsh\"\n", path)
            .unwrap()
            .into_config()
            .unwrap_err();
        assert_eq!(e.key, "shell");
        assert_eq!(
            e.location.as_ref().map(|l| (l.line, l.column)),
            Some((3, 9))
        );
        // ...but not when a flag gave it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "shell = \"zsh\"\n").unwrap();
        let e = RunArgs {
            config: Some(file.clone()),
            ..RunArgs::default()
        }
        .into_config()
        .unwrap_err();
        assert_eq!(e.location.map(|l| l.path), Some(file.clone()));
        std::fs::write(&file, "shell = \"sh\"\n").unwrap();
        let e = RunArgs {
            config: Some(file.clone()),
            shell: Some("zsh".into()),
            ..RunArgs::default()
        }
        .into_config()
        .unwrap_err();
        assert_eq!(e.to_string(), "shell: \"zsh\" is not `login` or `sh`");
    }

    #[test]
    fn file_errors_never_panic_on_odd_input() {
        let path = Path::new("x.toml");
        for text in [
            "",
            "=",
            "\"",
            "a = [",
            "max_sessions = 99999999999999999999999",
            "max_sessions = -1",
            "[[a]]\n[a]",
            "é = 1",
            "state_dir = 5",
            "max_sessions = 1\r\nfoo",
        ] {
            if let Err(e) = parse_file(text, path) {
                assert!(!e.to_string().contains('\n'), "{text:?}: {e}");
            }
        }
        assert_eq!(
            Location::at(path, "ab\ncd", 99),
            Location {
                path: path.into(),
                line: 2,
                column: 3
            }
        );
    }

    #[test]
    fn drop_ins_are_laid_over_the_file_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("session-agent.toml");
        std::fs::write(
            &main,
            "max_sessions = 3\nshell = \"sh\"\nport_forwarding_allowed_ports = [\"22\", \"443\"]\n",
        )
        .unwrap();
        let d = drop_in_dir(&main);
        assert_eq!(d, dir.path().join("session-agent.toml.d"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("20-b.toml"), "max_sessions = 4\n").unwrap();
        std::fs::write(
            d.join("10-a.toml"),
            "max_sessions = 9\nport_forwarding_allowed_ports = [\"80\"]\n",
        )
        .unwrap();
        // Not read: other names, hidden files (editors' backups and the like).
        std::fs::write(d.join("README"), "not toml").unwrap();
        std::fs::write(d.join(".20-b.toml"), "not toml").unwrap();
        std::fs::write(d.join("30.toml.dpkg-old"), "not toml").unwrap();
        let files = config_files(&main).unwrap();
        assert_eq!(
            files,
            [main.clone(), d.join("10-a.toml"), d.join("20-b.toml")]
        );
        let args = read_config(&main).unwrap();
        assert_eq!(args.sources.files, files);
        // Later wins per key; a list replaces a list; keys no drop-in sets stay.
        assert_eq!(args.max_sessions, Some(4));
        assert_eq!(args.shell.as_deref(), Some("sh"));
        assert_eq!(args.port_lists.allowed_ports, Some(vec!["80".to_owned()]));
        assert_eq!(
            args.sources
                .location("max_sessions")
                .map(|l| l.path.clone()),
            Some(d.join("20-b.toml"))
        );
        let comment = files_read_comment(Some(&main));
        assert_eq!(comment.lines().count(), 3, "{comment}");
        assert!(comment.lines().all(|l| l.starts_with("# Read ")));
        // An error in a drop-in names the drop-in.
        std::fs::write(d.join("40-c.toml"), "\nmax_sessions = 0\n").unwrap();
        let e = RunArgs {
            config: Some(main.clone()),
            ..RunArgs::default()
        }
        .into_config()
        .unwrap_err();
        let at = e.location.unwrap();
        assert_eq!((at.path, at.line), (d.join("40-c.toml"), 2));
        // The drop-ins alone, without the main file, are a configuration too.
        std::fs::remove_file(&main).unwrap();
        std::fs::remove_file(d.join("40-c.toml")).unwrap();
        assert_eq!(read_config(&main).unwrap().max_sessions, Some(4));
        // Neither: the read names the file.
        let none = dir.path().join("none.toml");
        let e = read_config(&none).unwrap_err();
        assert!(
            e.reason.contains("cannot read") && e.reason.contains("none.toml"),
            "{e}"
        );
        // Too large: refused before parsing.
        std::fs::write(
            &none,
            vec![b'#'; usize::try_from(MAX_CONFIG_FILE_BYTES).unwrap() + 1],
        )
        .unwrap();
        let e = read_config(&none).unwrap_err();
        assert!(e.reason.contains("larger than"), "{e}");
        std::fs::write(&none, b"shell = \"\xff\"\n").unwrap();
        let e = read_config(&none).unwrap_err();
        assert!(
            e.to_string()
                .contains("none.toml:1:10: --config: not UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn every_key_is_one_the_file_takes() {
        // KEYS is generated from the file form; the example documents each.
        let example = include_str!("../../config/session-agent.example.toml");
        for key in KEYS {
            assert!(
                example.contains(&format!("# {key} = ")),
                "{key} is not in the example"
            );
            let e = parse_file(&format!("{key} = {{}}\n"), Path::new("x")).unwrap_err();
            assert_eq!(e.key, *key, "{e}");
        }
        assert_eq!(closest_key("max_session"), Some("max_sessions"));
        assert_eq!(closest_key("log-level"), Some("log_level"));
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        use std::time::Duration;
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    }
}
