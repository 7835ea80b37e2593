//! Command-line interface: argument parsing and the turn from arguments into validated
//! configuration. Reads the files named by flags (preferences) but starts nothing; `main`
//! runs what this returns. Invalid configuration is a [`ConfigError`], which `main` prints
//! as one line and turns into exit code 64 (`EX_USAGE`).

pub use crate::config::{parse_duration, ConfigError};
pub use crate::gateway::args::GatewayArgs;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// session-agent: a Session Manager compatible agent, client and local gateway.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// `session_agent=debug` [default: RUST_LOG, else `log_level` in the configuration
    /// file of `run`, else info].
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
    /// Open a session on a managed node, like session-manager-plugin: StartSession, then
    /// a shell (the terminal in raw mode until the session ends) or, for Port documents,
    /// port forwarding.
    ///
    /// `--help` shows examples for port forwarding and ssh.
    ///
    /// Also accepts session-manager-plugin's own arguments (the StartSession response
    /// JSON first), and runs as `connect` when invoked under the name
    /// `session-manager-plugin`, so the AWS CLI can use it as its plugin.
    #[command(after_long_help = crate::client::CONNECT_AFTER_HELP, after_help = crate::client::EXIT_CODES_HELP)]
    Connect(crate::client::ConnectArgs),
    /// List the recordings on this machine, newest first: session, owner, run-as user,
    /// start, duration, status (live, ended, interrupted, incomplete) and delivery.
    ///
    /// Filter with --since/--until (RFC 3339 or 2h, 7d) and --user; --json for one
    /// object per line. The IDs it shows are what `audit`, `transcript`, `replay` and
    /// `verify` take.
    Sessions(crate::sessions::SessionsArgs),
    /// Print what a recorded session ran, from the kernel's process events: every
    /// program with its arguments (secrets masked), user, working directory, exit
    /// status or signal and duration, and the recording's gaps; --json for one object
    /// per line.
    ///
    /// ID is a session id (as `session-agent sessions` lists them), or DIR a
    /// recording's directory or events.spool.
    Audit(crate::replay::AuditArgs),
    /// Play a session recording in this terminal with its original timing.
    ///
    /// FILE is a session id (as `session-agent sessions` lists them), a recording's
    /// directory or raw stream (STATE_DIR/recordings/ID/events.spool), or its asciicast
    /// (ID.cast, also what S3 holds). The recorded output is written to the terminal as
    /// it was (escape sequences included): replay only recordings you trust.
    Replay(crate::replay::ReplayArgs),
    /// Write a session recording as one self-contained HTML page that plays it in a
    /// browser (asciinema-player, inlined: no network when viewed), with the timeline
    /// (typed commands, programs run, gaps) and the transcript beside it.
    ///
    /// ID|FILE is a session id, a recording's directory or events.spool, an
    /// events.jsonl or a .cast, as for `replay`. What the session printed is shown as
    /// text, never run.
    Export(crate::export::ExportArgs),
    /// Print the clean text of a session recording (what the user saw: no escape codes,
    /// full-screen programs as `--- screen ---` blocks).
    ///
    /// FILE is a session id, a recording's directory, events.spool or a .cast, as for
    /// `replay`.
    Transcript(crate::replay::TranscriptArgs),
    /// Check a recording's spool: every record's checksum, the hash chain (each record's
    /// digest covers the one before), and the event sequence (no gaps).
    ///
    /// SOURCE is a session id, a recording's directory or spool, or a copy in S3 or
    /// CloudWatch Logs. Prints the chain head, to compare with a copy kept elsewhere.
    /// Exit status: 0 intact, 1 altered / corrupt / gap (the first one is named), 2
    /// unreadable.
    Verify(crate::replay::VerifyArgs),
    /// Install, remove, start or stop the agent as a Windows service (LocalSystem,
    /// automatic start, restarted on failure; state and configuration under
    /// %ProgramData%\session-agent). Windows only: on Linux the .deb and .rpm install a
    /// systemd unit (`systemctl enable --now session-agent`).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), or write
    /// the bash, zsh and fish ones into a directory.
    ///
    /// The .deb and .rpm install them; by hand, e.g. for bash:
    /// `session-agent completions bash > ~/.local/share/bash-completion/completions/session-agent`.
    Completions(CompletionsArgs),
    /// Print the man page (roff), generated from this program's own help: e.g.
    /// `session-agent man | man -l -`. The .deb and .rpm install it as session-agent(1).
    Man,
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

/// `session-agent completions` options.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print the script for.
    #[arg(required_unless_present = "out_dir", conflicts_with = "out_dir")]
    pub shell: Option<clap_complete::Shell>,
    /// Write the bash, zsh and fish scripts into DIR under the names the packages install
    /// them as (session-agent.bash, _session-agent, session-agent.fish).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// The shells whose completions the packages install, each with its file name.
pub const PACKAGED_COMPLETIONS: [(clap_complete::Shell, &str); 3] = [
    (clap_complete::Shell::Bash, "session-agent.bash"),
    (clap_complete::Shell::Zsh, "_session-agent"),
    (clap_complete::Shell::Fish, "session-agent.fish"),
];

/// The completion script for `shell`, generated from [`Cli`]'s definitions.
#[must_use]
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "session-agent", &mut out);
    out
}

/// The man page (roff), generated from [`Cli`]'s definitions: the top-level help, then
/// each visible subcommand's.
#[must_use]
pub fn man_page() -> Vec<u8> {
    use clap::CommandFactory;
    let command = Cli::command();
    let man = clap_mangen::Man::new(command.clone());
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let _ = man.render_options_section(&mut out);
    // One page holds every subcommand: "session-agent-run(1)" references become
    // "session-agent run", whose options follow below.
    let mut subcommands = Vec::new();
    let _ = man.render_subcommands_section(&mut subcommands);
    let mut subcommands = String::from_utf8_lossy(&subcommands).into_owned();
    let mut names: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    // clap's generated `help` subcommand is listed too.
    names.push("help".into());
    for name in names {
        let name = name.replace('-', "\\-");
        subcommands = subcommands.replace(
            &format!("session\\-agent\\-{name}(1)"),
            &format!("\\fBsession\\-agent {name}\\fR"),
        );
    }
    out.extend_from_slice(subcommands.as_bytes());
    for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
        let mut text = Vec::new();
        let _ = clap_mangen::Man::new(sub.clone()).render_options_section(&mut text);
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            let heading = format!(".SH \"OPTIONS OF {}\"\n", sub.get_name().to_uppercase());
            out.extend_from_slice(heading.as_bytes());
            // The section's own heading line is replaced by the one naming the command.
            let text = String::from_utf8_lossy(&text);
            for line in text.lines().filter(|l| !l.starts_with(".SH")) {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
    }
    let _ = man.render_version_section(&mut out);
    out
}

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
    /// The configuration file, with the `*.toml` files of FILE.d/ laid over it in name
    /// order [default: --config / SESSION_AGENT_CONFIG, else
    /// /etc/session-agent/session-agent.toml when it exists (SESSION_AGENT_DEFAULT_CONFIG
    /// moves it)].
    pub file: Option<PathBuf>,
    /// Every `run` option, so the check sees what `run` would.
    #[command(flatten)]
    pub run: crate::agent::config::RunArgs,
}

pub use crate::session::user::valid_user_name;

#[cfg(test)]
mod tests {
    use super::*;

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
    fn completions_name_the_subcommands_in_every_packaged_shell() {
        for (shell, _) in PACKAGED_COMPLETIONS {
            let text = String::from_utf8(completions(shell)).unwrap();
            for word in ["session-agent", "run", "connect", "transcript", "log-level"] {
                assert!(text.contains(word), "{shell}: {word} missing");
            }
        }
    }

    #[test]
    fn the_man_page_has_a_title_and_each_subcommand() {
        let page = String::from_utf8(man_page()).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH session-agent 1"),
            "{page}"
        );
        for section in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH SUBCOMMANDS",
            "OPTIONS OF RUN",
        ] {
            assert!(page.contains(section), "{section} missing");
        }
        assert!(page.contains("\\-\\-endpoint"), "run's options are listed");
        assert!(!page.contains("__exec"), "internal commands stay out");
        assert!(
            !page.contains("agent\\-help(1)") && !page.contains("agent\\-run(1)"),
            "no references to pages that do not exist"
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
