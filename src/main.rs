//! The `session-agent` binary: parse arguments, set up logging, run one subcommand.
//! Exit codes: 0 success, 1 runtime failure, 64 invalid configuration (EX_USAGE);
//! `connect` has its own (see `session_agent::client::EXIT_CODES_HELP`).

use clap::Parser;
use session_agent::cli::{Cli, Command};
use std::process::ExitCode;

const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    // Invoked as `session-manager-plugin` (by the AWS CLI), run `connect`.
    let cli = Cli::parse_from(session_agent::client::plugin_argv(std::env::args_os()));
    // The privilege-dropping shim runs on the user's terminal, before any logging setup.
    if let Command::ExecAs { args } = &cli.command {
        return session_agent::session::pty::exec_as_main(args);
    }
    // Flag or environment first, then `log_level` in the agent's config file.
    let (log_level, log_key) = match (&cli.log_level, &cli.command) {
        (Some(l), _) => (l.clone(), "--log-level"),
        (None, Command::Run(args)) => match session_agent::agent::config::file_log_level(args) {
            Some(l) => (l, "log_level"),
            None => ("info".to_owned(), "--log-level"),
        },
        (None, _) => ("info".to_owned(), "--log-level"),
    };
    // A bare word that is not a level would silently become a target filter and hide
    // every other log line: refuse it.
    let level_ok = log_level
        .parse::<tracing_subscriber::filter::LevelFilter>()
        .is_ok()
        || log_level.contains('=');
    let filter = match tracing_subscriber::EnvFilter::try_new(&log_level) {
        Ok(f) if level_ok => f,
        _ => {
            return usage_error(&format!(
                "{log_key}: {log_level:?} is not a level (error, warn, info, debug, trace, off) or a directive such as session_agent=debug"
            ))
        }
    };
    // `dev` owns the terminal for the session: its logs go to a file instead.
    let log_file = match &cli.command {
        Command::Dev(args) => {
            let dir = args.state_dir();
            let _ = std::fs::create_dir_all(&dir);
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("dev.log"))
            {
                Ok(f) => Some(f),
                Err(e) => {
                    return failure(&format!(
                        "cannot open {}: {e}",
                        dir.join("dev.log").display()
                    ))
                }
            }
        }
        _ => None,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // When stderr is gone (a closed pipe), tracing would report that with
        // `eprintln!`, which panics: losing a log line must not take the daemon down.
        .log_internal_errors(false);
    match log_file {
        Some(f) => builder
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .init(),
        // Colour only for a person at a terminal; journald and files get plain text.
        None => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match cli.command {
        Command::Gateway(args) => {
            let listen = args.listen;
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => return usage_error(&e),
            };
            let runtime = match runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => return usage_error(&format!("--listen: cannot bind {listen}: {e}")),
                };
                match session_agent::gateway::serve(config, listener, shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => failure(&e.to_string()),
                }
            })
        }
        Command::Run(args) => {
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => return usage_error(&e),
            };
            let runtime = match runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            match runtime.block_on(session_agent::agent::run(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e.to_string()),
            }
        }
        Command::Connect(args) => {
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => return connect_usage_error(&e),
            };
            let runtime = match runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            ExitCode::from(
                runtime
                    .block_on(session_agent::client::connect(config))
                    .exit_code(),
            )
        }
        Command::Dev(args) => {
            let runtime = match runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            match runtime.block_on(session_agent::dev::run(args)) {
                Ok(code) => ExitCode::from(code),
                Err(e) => usage_error(&e),
            }
        }
        Command::Replay(args) => {
            match session_agent::replay::replay(&args, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e),
            }
        }
        Command::Transcript(args) => {
            match session_agent::replay::transcript(&args, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e),
            }
        }
        Command::Verify(args) => {
            let runtime = match runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            ExitCode::from(runtime.block_on(session_agent::replay::verify(
                &args,
                &mut std::io::stdout().lock(),
            )))
        }
        Command::ExecAs { .. } => unreachable!("dispatched before logging is set up"),
    }
}

/// The multi-threaded runtime every long-running subcommand uses, built only after the
/// configuration was validated.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new()
        .map_err(|e| failure(&format!("cannot start the async runtime: {e}")))
}

#[allow(clippy::print_stderr)]
fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("session-agent: invalid configuration: {e}");
    ExitCode::from(EX_USAGE)
}

#[allow(clippy::print_stderr)]
fn connect_usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("session-agent connect: {e}");
    ExitCode::from(session_agent::client::EXIT_USAGE)
}

#[allow(clippy::print_stderr)]
fn failure(e: &str) -> ExitCode {
    eprintln!("session-agent: {e}");
    ExitCode::FAILURE
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
