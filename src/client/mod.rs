//! `session-agent connect`: an interactive terminal client in the manner of
//! session-manager-plugin (protocol.md §2.3, §4, §5, §6.5, §13).
//!
//! ```text
//!  connect ─StartSession─▶ SSM API (AWS JSON 1.1, SigV4 when credentials are set)
//!          ─StreamUrl + open frame─▶ data channel ══ input_stream_data ══▶ agent
//!                                                ◀═ output_stream_data ══
//! ```
//!
//! # Usage
//!
//! ```text
//! session-agent connect --endpoint http://127.0.0.1:8080 --target node-1
//!     [--reason TEXT] [--document-name NAME] [--parameters '{"k":["v"]}']
//!     [--region REGION] [--ca-file PEM]
//! ```
//!
//! The endpoint defaults to `$AWS_ENDPOINT_URL_SSM`, then `$AWS_ENDPOINT_URL`, then
//! `https://ssm.<region>.amazonaws.com`; the region to `--region`, `$AWS_REGION`,
//! `$AWS_DEFAULT_REGION`, then `us-east-1`. Calls are SigV4-signed (service `ssm`) when
//! `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`)
//! are set, and unsigned otherwise, which the local gateway accepts. Profiles, SSO and
//! instance credentials are not read. `--ca-file` (default `$AWS_CA_BUNDLE`) adds PEM
//! CAs to the web roots for `https://` and `wss://`.
//!
//! # Standing in for session-manager-plugin
//!
//! The AWS CLI runs `session-manager-plugin --version`, then
//! `session-manager-plugin RESPONSE REGION StartSession PROFILE REQUEST ENDPOINT`, where
//! RESPONSE is the StartSession response JSON, or (for plugins newer than 1.2.497.0) the
//! name of an environment variable holding it (`AWS_SSM_START_SESSION_RESPONSE`), and
//! REQUEST is the StartSession request JSON. `connect` accepts exactly these positional
//! arguments (all but the first optional) and then does not call StartSession itself.
//! Installed or linked under the name `session-manager-plugin`, the binary treats its
//! whole command line as `connect` arguments ([`plugin_argv`]). `--version` then prints
//! this crate's version, which the AWS CLI finds unparsable or older than 1.2.497.0, so it
//! falls back to passing the JSON itself: both forms work. PROFILE is ignored (see
//! above for credentials).
//!
//! # Terminal
//!
//! The terminal is left alone until the session turns out to be a shell (the first
//! output without a handshake, or a handshake naming a type other than `Port`): a port
//! session's standard streams may be another program's pipes. For a shell on a terminal,
//! standard input is put into raw mode (restored on every way out, panics included),
//! every key — Ctrl-C as byte 0x03 — goes to the remote shell,
//! and the window size is sent at once and on every change (SIGWINCH, plus a 500 ms poll
//! like upstream's). Without a terminal the size is 80x24 (upstream says 300x100) and
//! input is sent as read; end of input terminates the session. Standard input is read
//! only from the first message on (as upstream starts its handler then).
//!
//! # Port sessions
//!
//! See [`port`]: the plugin's mode choice from the agent's version, standard-stream
//! forwarding (ssh `ProxyCommand`), one-connection and multiplexed local port forwarding.
//!
//! # Exit status
//!
//! See [`EXIT_CODES_HELP`] (also shown by `connect --help`).
//!
//! Modules: [`crate::ssm`] (the SSM API calls), [`channel`] (pure data-channel state machine),
//! [`terminal`] (raw mode, window size); the websocket and stdin pump is private.

pub mod channel;
mod interrupts;
pub mod port;
mod pump;
pub mod terminal;

use crate::config::ConfigError;
use crate::ssm::{SessionGrant, SsmApi};
use channel::Channel;
use clap::Args;
use pump::{ClientIdentity, Ending, Local, Pump};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// `ClientVersion` in the open frame (informational). The HandshakeResponse carries
/// [`crate::protocol::version::CLIENT_COMPAT_VERSION`] instead: the agent chooses its port
/// mode from it.
pub const CLIENT_VERSION: &str = concat!("session-agent/", env!("CARGO_PKG_VERSION"));
/// Exit status for invalid arguments (clap uses the same).
pub const EXIT_USAGE: u8 = 2;
/// The environment variable the AWS CLI puts the StartSession response in.
pub const START_SESSION_RESPONSE_VAR: &str = "AWS_SSM_START_SESSION_RESPONSE";

macro_rules! exit_codes {
    () => {
        "\
Exit status:
  0      the session ended normally: the shell exited, the session was terminated,
         or standard input ended (the session is then terminated); a port session
         ended by Ctrl-C or SIGTERM (TerminateSession is sent first)
  1      the session failed (its reason is printed as `SessionId: <id> : <reason>`),
         could not start (the API error is printed as `<ErrorType>: <message>`), or
         could not be terminated after the end of input
  2      invalid arguments
  128+N  a shell session ended by signal N (SIGHUP, SIGTERM); the session is
         terminated first
  255    the connection was lost for good: reconnecting failed, or the session ended
         while disconnected"
    };
}

/// The exit codes, as `connect --help` shows them.
pub const EXIT_CODES_HELP: &str = exit_codes!();

/// What `connect --help` shows after the options: examples, then [`EXIT_CODES_HELP`].
pub const CONNECT_AFTER_HELP: &str = concat!(
    "\
Port forwarding (a local port to port 80 of the node; localPortNumber 0 or absent: any
free port, printed). AWS-StartPortForwardingSessionToRemoteHost also takes \"host\".
Current agents: many connections at once (at most 64; more wait); agents 3.0.196.0 and
older: one at a time. Ctrl-C ends the session.
  session-agent connect --target ID --document-name AWS-StartPortForwardingSession \\
      --parameters '{\"portNumber\":[\"80\"],\"localPortNumber\":[\"8080\"]}'

ssh through a session (standard input and output are the tunnel; standard output carries
nothing else but the first line, `Starting session with SessionId: ...`):
  ssh -o ProxyCommand='session-agent connect --target %h \\
      --document-name AWS-StartSSHSession --parameters portNumber=%p' user@ID

--parameters takes JSON, {\"name\": [\"value\"]}, or the AWS CLI's shorthand,
name=value[,name=value].

",
    exit_codes!()
);

/// `session-agent connect` arguments.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// SSM API endpoint, e.g. http://127.0.0.1:8080 for a local gateway (`session-agent
    /// gateway`, whose default address `run` also uses). Default: $AWS_ENDPOINT_URL_SSM,
    /// $AWS_ENDPOINT_URL, else AWS Systems Manager itself,
    /// `https://ssm.REGION.amazonaws.com`, as the AWS tools do.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The managed node to open a shell on (StartSession Target).
    #[arg(long, value_name = "ID", conflicts_with = "plugin_args")]
    pub target: Option<String>,
    /// Reason recorded with the session.
    #[arg(long, value_name = "TEXT", conflicts_with = "plugin_args")]
    pub reason: Option<String>,
    /// Session document to use instead of the default shell document.
    #[arg(long, value_name = "NAME", conflicts_with = "plugin_args")]
    pub document_name: Option<String>,
    /// Document parameters as JSON, {"name": ["value", ...]}, or the AWS CLI's
    /// shorthand, name=value[,name=value] (e.g. portNumber=22).
    #[arg(long, value_name = "PARAMS", conflicts_with = "plugin_args")]
    pub parameters: Option<String>,
    /// Region for signing and the default endpoint. Default: $AWS_REGION,
    /// $AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long)]
    pub region: Option<String>,
    /// PEM file of CA certificates to trust (besides the web roots) for https:// and
    /// wss://. Default: $AWS_CA_BUNDLE.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// session-manager-plugin's arguments, as the AWS CLI passes them:
    /// `RESPONSE [REGION [OPERATION [PROFILE [REQUEST [ENDPOINT]]]]]`. RESPONSE is the StartSession response
    /// JSON or the name of an environment variable holding it; StartSession is then not
    /// called again.
    #[arg(value_name = "PLUGIN_ARGS")]
    pub plugin_args: Vec<String>,
}

/// How the session is obtained.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Call StartSession with this request body.
    Call(Value),
    /// Use a StartSession response obtained by someone else (the AWS CLI).
    Given(SessionGrant),
}

/// Validated `connect` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectConfig {
    /// SSM API endpoint (for StartSession, ResumeSession, TerminateSession).
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// Extra CAs.
    pub ca_file: Option<PathBuf>,
    /// StartSession to call, or its response.
    pub start: Start,
    /// Access key id and secret to sign with; `None` reads the environment.
    pub credentials: Option<(String, String)>,
    /// The target (for a KMS session's encryption context), when known.
    pub target: Option<String>,
}

fn config_error(key: &str, reason: impl Into<String>) -> ConfigError {
    crate::config::config_error(key, reason)
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|v| !v.is_empty())
}

impl ConnectArgs {
    /// Validates the arguments, reads the environment fallbacks, and decides between
    /// calling StartSession and the plugin convention.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the argument; `main` exits with [`EXIT_USAGE`].
    pub fn into_config(self) -> Result<ConnectConfig, ConfigError> {
        let ca_file = self
            .ca_file
            .or_else(|| env_nonempty("AWS_CA_BUNDLE").map(PathBuf::from));
        if let Some(path) = &ca_file {
            crate::tls::read_ca_file(path).map_err(|e| config_error("--ca-file", e))?;
        }
        let region_fallback = || {
            nonempty(self.region.clone())
                .or_else(|| env_nonempty("AWS_REGION"))
                .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into())
        };
        let endpoint_for = |endpoint: Option<String>, region: &str| {
            nonempty(endpoint)
                .or_else(|| nonempty(self.endpoint.clone()))
                .or_else(|| env_nonempty("AWS_ENDPOINT_URL_SSM"))
                .or_else(|| env_nonempty("AWS_ENDPOINT_URL"))
                .unwrap_or_else(|| {
                    crate::protocol::endpoint::for_region(
                        crate::protocol::endpoint::SSM,
                        region,
                        None,
                    )
                    .unwrap_or_else(|_| format!("https://ssm.{region}.amazonaws.com"))
                })
        };
        if self.plugin_args.is_empty() {
            let Some(target) = nonempty(self.target.clone()) else {
                return Err(config_error(
                    "--target",
                    "required (or pass session-manager-plugin's arguments)",
                ));
            };
            let region = region_fallback();
            let endpoint = endpoint_for(None, &region);
            check_endpoint(&endpoint)?;
            let mut request = json!({ "Target": target });
            if let Some(name) = nonempty(self.document_name.clone()) {
                request["DocumentName"] = json!(name);
            }
            if let Some(reason) = self.reason.clone() {
                request["Reason"] = json!(reason);
            }
            if let Some(text) = &self.parameters {
                request["Parameters"] =
                    parse_parameters(text).map_err(|e| config_error("--parameters", e))?;
            }
            return Ok(ConnectConfig {
                endpoint,
                region,
                ca_file,
                start: Start::Call(request),
                credentials: None,
                target: Some(target),
            });
        }

        // session-manager-plugin's convention.
        if self.plugin_args.len() > 6 {
            return Err(config_error(
                "PLUGIN_ARGS",
                "at most 6: RESPONSE REGION OPERATION PROFILE REQUEST ENDPOINT",
            ));
        }
        let mut args = self.plugin_args.clone().into_iter();
        let first = args.next().unwrap_or_default();
        let response = if first.trim_start().starts_with('{') {
            first
        } else if is_env_name(&first) {
            env_nonempty(&first).ok_or_else(|| {
                config_error(
                    "PLUGIN_ARGS",
                    format!("the environment variable {first} is not set"),
                )
            })?
        } else {
            return Err(config_error(
                "PLUGIN_ARGS",
                format!(
                    "the first argument must be the StartSession response JSON or the name of \
                     an environment variable holding it (such as {START_SESSION_RESPONSE_VAR})"
                ),
            ));
        };
        let grant = SessionGrant::from_start_response(&response)
            .map_err(|e| config_error("PLUGIN_ARGS", e))?;
        let region = nonempty(args.next()).unwrap_or_else(region_fallback);
        if let Some(op) = nonempty(args.next()) {
            if op != "StartSession" {
                return Err(config_error(
                    "PLUGIN_ARGS",
                    format!("operation {op:?} is not supported; only StartSession is"),
                ));
            }
        }
        let _profile = args.next();
        let mut target = None;
        if let Some(request) = nonempty(args.next()) {
            // Only its Target matters (the encryption context of KMS sessions).
            let request = serde_json::from_str::<Value>(&request)
                .map_err(|e| config_error("PLUGIN_ARGS", format!("REQUEST is not JSON: {e}")))?;
            target = request["Target"].as_str().map(str::to_owned);
        }
        let endpoint = endpoint_for(args.next(), &region);
        check_endpoint(&endpoint)?;
        Ok(ConnectConfig {
            endpoint,
            region,
            ca_file,
            start: Start::Given(grant),
            credentials: None,
            target,
        })
    }
}

/// `--parameters`: JSON (`{"portNumber":["22"]}`) or the AWS CLI's shorthand
/// (`portNumber=22`, `portNumber=80,localPortNumber=8080`, `commands=[a,b]`; a part
/// without `=` adds a value to the name before it).
fn parse_parameters(text: &str) -> Result<Value, String> {
    let text = text.trim();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if !v.is_object() {
            return Err(r#"must be a JSON object such as {"name": ["value"]}"#.into());
        }
        return Ok(v);
    }
    let mut map = serde_json::Map::new();
    let mut last: Option<String> = None;
    for part in text.split(',') {
        let (name, value) =
            match part.split_once('=') {
                Some((name, value)) => {
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(format!("{part:?} has no name before `=`"));
                    }
                    last = Some(name.to_owned());
                    (name.to_owned(), value)
                }
                None => match &last {
                    Some(name) => (name.clone(), part),
                    None => return Err(
                        r#"expected JSON such as {"name": ["value"]} or name=value[,name=value]"#
                            .into(),
                    ),
                },
            };
        let value = value.trim().trim_start_matches('[').trim_end_matches(']');
        let values = map.entry(name).or_insert_with(|| json!([]));
        if let Some(list) = values.as_array_mut() {
            list.push(json!(value));
        }
    }
    Ok(Value::Object(map))
}

fn check_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        Ok(())
    } else {
        Err(config_error(
            "--endpoint",
            format!("{endpoint:?} must start with http:// or https://"),
        ))
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Rewrites the command line of a binary invoked as `session-manager-plugin` (by a link
/// or copy of that name) into `… connect ARGS`, so the AWS CLI can run it as its plugin.
/// Any other command line is returned unchanged.
pub fn plugin_argv(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut argv: Vec<OsString> = args.into_iter().collect();
    let as_plugin = argv
        .first()
        .and_then(|a| Path::new(a).file_stem())
        .is_some_and(|n| n.to_string_lossy().ends_with("session-manager-plugin"));
    if as_plugin {
        argv.insert(1, "connect".into());
    }
    argv
}

/// How `connect` ended; [`Outcome::exit_code`] is the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The session ended normally (exit 0).
    Ended,
    /// The session failed or could not start (exit 1).
    Failed,
    /// The connection was lost for good (exit 255).
    Lost,
    /// Ended by this signal number (exit 128 + N).
    Signalled(i32),
}

impl Outcome {
    /// The documented exit status ([`EXIT_CODES_HELP`]).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ended => 0,
            Self::Failed => 1,
            Self::Lost => 255,
            Self::Signalled(n) => u8::try_from(128 + n).unwrap_or(255),
        }
    }
}

/// Writes to a standard stream, ignoring errors (there is nowhere else to report them).
fn say(mut w: impl Write, text: &str) {
    let _ = w.write_all(text.as_bytes());
    let _ = w.flush();
}

fn error_line(text: &str) {
    say(
        std::io::stderr(),
        &format!("session-agent: {}\n", crate::ssm::one_line(text)),
    );
}

/// Runs `connect`: StartSession (unless given), the data channel, the terminal, and the
/// final message. Never panics on I/O; every failure is a message and an [`Outcome`].
pub async fn connect(config: ConnectConfig) -> Outcome {
    let api = match SsmApi::new(
        &config.endpoint,
        &config.region,
        config.ca_file.as_deref(),
        config.credentials.clone(),
    ) {
        Ok(a) => a,
        Err(e) => {
            error_line(&e.to_string());
            return Outcome::Failed;
        }
    };
    let tls = match crate::tls::client_config(config.ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            error_line(&format!("tls: {e}"));
            return Outcome::Failed;
        }
    };
    let grant = match config.start {
        Start::Given(grant) => grant,
        Start::Call(request) => match api.start_session(&request).await {
            Ok(grant) => grant,
            Err(e) => {
                error_line(&start_failure_message(&config.endpoint, &e));
                return Outcome::Failed;
            }
        },
    };
    let who = ClientIdentity {
        client_id: Uuid::new_v4().to_string(),
        client_version: CLIENT_VERSION.into(),
    };
    let session_id = grant.session_id.clone();
    tracing::debug!(session = %session_id, signed = api.signs(), "Session started");
    let ws = match pump::dial(&grant.stream_url, &grant.token_value, &who, &tls).await {
        Ok(ws) => ws,
        Err(e) => {
            error_line(&format!("cannot open session {session_id}: {e}"));
            // Do not leave a session nobody can reach.
            let _ = api.terminate_session(&session_id).await;
            return Outcome::Failed;
        }
    };
    // As the official plugin does, so wrappers that look for these lines keep working.
    say(
        std::io::stdout(),
        &format!("\nStarting session with SessionId: {session_id}\n"),
    );
    let pump = Pump {
        api: &api,
        tls,
        who,
        session_id: session_id.clone(),
        stream_url: grant.stream_url,
        ws,
        channel: Channel::new(crate::protocol::version::CLIENT_COMPAT_VERSION),
        local: Local::Pending,
        raw: None,
        target: config.target.clone(),
        region: config.region.clone(),
    };
    let (ending, stdout_is_data) = pump.run().await;
    finish(&session_id, ending, stdout_is_data)
}

/// The line for a failed StartSession at `endpoint`, with what to do for the two
/// failures a new user meets first: nothing listening (no gateway started: the OS's
/// words are replaced), and the default endpoint being AWS itself when a local gateway
/// was meant (a hint is added).
fn start_failure_message(endpoint: &str, e: &crate::ssm::ApiError) -> String {
    match start_failure_hint(endpoint, e) {
        Some((true, hint)) => format!("StartSession failed: {hint}"),
        Some((false, hint)) => format!("StartSession failed: {e} ({hint})"),
        None => format!("StartSession failed: {e}"),
    }
}

/// The hint, and whether it says all the error said.
fn start_failure_hint(endpoint: &str, e: &crate::ssm::ApiError) -> Option<(bool, String)> {
    let url = reqwest::Url::parse(endpoint).ok()?;
    let host = url.host_str()?.to_owned();
    let aws = host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn");
    let refused = matches!(e, crate::ssm::ApiError::Transport(t) if t.to_ascii_lowercase().contains("refused"));
    if aws {
        return Some((
            false,
            format!(
                "{host} is AWS Systems Manager, where connect goes when neither --endpoint nor \
             AWS_ENDPOINT_URL_SSM / AWS_ENDPOINT_URL is set; for a local gateway or \
             `session-agent dev` pass --endpoint {}",
                crate::config::LOCAL_GATEWAY_URL
            ),
        ));
    }
    if !refused {
        return None;
    }
    let port = url.port_or_known_default().unwrap_or(80);
    Some((
        true,
        format!(
            "nothing is listening at {host}:{port} (connection refused): start a gateway there \
             (`session-agent gateway --listen {host}:{port}`) and an agent for it \
             (`session-agent run --endpoint {scheme}://{host}:{port}`), or try it all in one \
             terminal with `session-agent dev`",
            scheme = url.scheme()
        ),
    ))
}

/// Prints how the session ended and picks the exit status.
///
/// `stdout_is_data`: standard output carried the session's bytes (a port session over
/// standard streams, e.g. for ssh); the closing words then go to standard error.
fn finish(session_id: &str, ending: Ending, stdout_is_data: bool) -> Outcome {
    let exiting = format!("\n\nExiting session with sessionId: {session_id}.\n\n");
    let say_out = |text: &str| {
        if stdout_is_data {
            say(std::io::stderr(), text);
        } else {
            say(std::io::stdout(), text);
        }
    };
    match ending {
        Ending::Closed(closed) if closed.output.is_empty() => {
            say_out(&exiting);
            Outcome::Ended
        }
        Ending::Closed(closed) => {
            say(
                std::io::stderr(),
                &format!("\n\nSessionId: {session_id} : {}\n\n", closed.output),
            );
            Outcome::Failed
        }
        Ending::InputEnded {
            terminate_error: None,
        }
        | Ending::PortExit {
            terminate_error: None,
        } => {
            say_out(&exiting);
            Outcome::Ended
        }
        Ending::PortExit {
            terminate_error: Some(e),
        } => {
            error_line(&format!("TerminateSession {session_id} failed: {e}"));
            say_out(&exiting);
            Outcome::Ended
        }
        Ending::Failed(reason) => {
            error_line(&format!("session {session_id}: {reason}"));
            Outcome::Failed
        }
        Ending::InputEnded {
            terminate_error: Some(e),
        } => {
            error_line(&format!("TerminateSession {session_id} failed: {e}"));
            Outcome::Failed
        }
        Ending::TimedOut => {
            say(
                std::io::stderr(),
                &format!("\n\nSession: {session_id} timed out.\n"),
            );
            Outcome::Lost
        }
        Ending::Lost(reason) => {
            say(std::io::stderr(), "\n");
            error_line(&format!(
                "lost the connection to session {session_id}: {reason}"
            ));
            Outcome::Lost
        }
        Ending::Signalled {
            signal,
            terminate_error,
        } => {
            say(std::io::stderr(), "\n");
            match terminate_error {
                None => error_line(&format!("{signal}: session {session_id} terminated")),
                Some(e) => error_line(&format!(
                    "{signal}: TerminateSession {session_id} failed: {e}"
                )),
            }
            Outcome::Signalled(signal.number)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ConnectArgs,
    }

    fn parse(argv: &[&str]) -> Result<ConnectConfig, ConfigError> {
        let w = Wrap::try_parse_from(std::iter::once("connect").chain(argv.iter().copied()))
            .map_err(|e| config_error("clap", e.to_string()))?;
        w.args.into_config()
    }

    #[test]
    fn flags_build_a_start_session_request() {
        let c = parse(&[
            "--endpoint",
            "http://127.0.0.1:1",
            "--target",
            "node-1",
            "--reason",
            "why",
            "--document-name",
            "Doc",
            "--parameters",
            r#"{"a":["b"]}"#,
            "--region",
            "eu-west-1",
        ])
        .unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:1");
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(
            c.start,
            Start::Call(
                json!({"Target":"node-1","DocumentName":"Doc","Reason":"why","Parameters":{"a":["b"]}})
            )
        );
        assert_eq!(
            parse(&["--endpoint", "http://x"]).unwrap_err().key,
            "--target"
        );
        assert_eq!(
            parse(&["--target", "n", "--parameters", "[1]"])
                .unwrap_err()
                .key,
            "--parameters"
        );
        assert_eq!(
            parse_parameters("portNumber=22").unwrap(),
            json!({"portNumber":["22"]})
        );
        assert_eq!(
            parse_parameters("portNumber=80,localPortNumber=8080").unwrap(),
            json!({"portNumber":["80"],"localPortNumber":["8080"]})
        );
        assert_eq!(
            parse_parameters("commands=[ls,pwd]").unwrap(),
            json!({"commands":["ls","pwd"]})
        );
        assert!(parse_parameters("22").is_err());
        assert!(parse_parameters("=1").is_err());
        assert_eq!(
            parse(&["--target", "n", "--endpoint", "ftp://x"])
                .unwrap_err()
                .key,
            "--endpoint"
        );
    }

    #[test]
    fn plugin_arguments_are_accepted() {
        let response =
            r#"{"SessionId":"s-1","TokenValue":"tok","StreamUrl":"ws://h/v1/data-channel/s-1"}"#;
        let c = parse(&[
            response,
            "eu-central-1",
            "StartSession",
            "",
            r#"{"Target":"node-1"}"#,
            "http://127.0.0.1:9",
        ])
        .unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert_eq!(c.region, "eu-central-1");
        match c.start {
            Start::Given(g) => assert_eq!(
                (g.session_id.as_str(), g.token_value.as_str()),
                ("s-1", "tok")
            ),
            other => panic!("{other:?}"),
        }
        assert!(parse(&[response, "r", "SendCommand"]).is_err());
        assert!(parse(&["not json or a variable"]).is_err());
        assert!(parse(&["SESSION_AGENT_TEST_SURELY_UNSET_VARIABLE"]).is_err());
        assert!(
            parse(&[response, "--target", "x"]).is_err(),
            "modes conflict"
        );
    }

    #[test]
    fn the_plugin_name_selects_connect() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            plugin_argv(argv(&[
                "/usr/local/bin/session-manager-plugin",
                "--version"
            ])),
            argv(&[
                "/usr/local/bin/session-manager-plugin",
                "connect",
                "--version"
            ])
        );
        assert_eq!(
            plugin_argv(argv(&["session-agent", "run"])),
            argv(&["session-agent", "run"])
        );
    }

    #[test]
    fn a_failed_start_says_what_to_do() {
        use crate::ssm::ApiError;
        let refused = ApiError::Transport(
            "error sending request: tcp connect error: Connection refused (os error 111)".into(),
        );
        let line = start_failure_message("http://127.0.0.1:9", &refused);
        assert!(
            line.starts_with(
                "StartSession failed: nothing is listening at 127.0.0.1:9 (connection refused): "
            ),
            "{line}"
        );
        assert!(
            line.contains("session-agent gateway --listen 127.0.0.1:9"),
            "{line}"
        );
        assert!(line.contains("session-agent dev"), "{line}");
        assert!(!line.contains("os error"), "{line}");
        let line = start_failure_message("https://[::1]", &refused);
        assert!(line.contains("[::1]:443"), "{line}");
        // Another failure at a gateway of ours: its own words are enough.
        let denied = ApiError::Service {
            status: 400,
            kind: "AccessDeniedException".into(),
            message: "no".into(),
        };
        assert_eq!(start_failure_hint("http://127.0.0.1:9", &denied), None);
        // Any failure at AWS: say it was AWS, and how to reach a local gateway instead.
        let line = start_failure_message("https://ssm.eu-west-1.amazonaws.com", &denied);
        assert!(
            line.starts_with("StartSession failed: AccessDeniedException: no (ssm.eu-west-1.amazonaws.com is AWS Systems Manager"),
            "{line}"
        );
        assert!(line.contains("--endpoint http://127.0.0.1:8080"), "{line}");
        assert_eq!(start_failure_hint("not a url", &refused), None);
    }

    #[test]
    fn exit_codes_are_as_documented() {
        assert_eq!(Outcome::Ended.exit_code(), 0);
        assert_eq!(Outcome::Failed.exit_code(), 1);
        assert_eq!(Outcome::Lost.exit_code(), 255);
        assert_eq!(Outcome::Signalled(15).exit_code(), 143);
    }
}
