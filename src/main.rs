//! The `session-agent` binary: parse arguments, set up logging, run one subcommand.
//! Exit codes: 0 success, 1 runtime failure, 2 bad command line (clap), 64 invalid
//! configuration (EX_USAGE), 130 a second stop signal cut a graceful stop short;
//! `connect` has its own (see `session_agent::client::EXIT_CODES_HELP`), `doctor` exits 1
//! when a check failed.

use clap::Parser;
use session_agent::cli::{Cli, Command, ConfigCommand, ServiceCommand};
use session_agent::logging::{self, LogFormat, Target};
use std::process::ExitCode;
use std::time::Duration;

const EX_USAGE: u8 = 64;
/// A second SIGTERM/SIGINT during a graceful stop (128 + SIGINT, as shells report it).
const EXIT_FORCED: i32 = 130;
/// What the runtime's leftover blocking work (a shell being reaped, a file being
/// written) gets once a subcommand has returned.
const RUNTIME_LINGER: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    // Before any DLL is loaded by name (portable-pty's conpty.dll): see the function.
    #[cfg(windows)]
    if let Err(e) = session_agent::windows::restrict_dll_search() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("session-agent: cannot restrict the DLL search path: {e}");
        }
    }
    // Invoked as `session-manager-plugin` (by the AWS CLI), run `connect`.
    let mut cli = Cli::parse_from(session_agent::client::plugin_argv(std::env::args_os()));
    // RUST_LOG, the Rust convention, when neither --log-level nor SESSION_AGENT_LOG is set
    // (over the file's log_level, as every variable is).
    if cli.log_level.is_none() {
        cli.log_level = std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty());
    }
    // The privilege-dropping shim runs on the user's terminal, before any logging setup.
    if let Command::ExecAs { args } = &cli.command {
        return session_agent::session::pty::exec_as_main(args);
    }
    // Generated from the clap definitions; nothing else to set up.
    match &cli.command {
        Command::Completions(args) => return completions(args),
        Command::Man => return print_bytes(&session_agent::cli::man_page()),
        _ => {}
    }
    // Installing, removing, starting and stopping the Windows service talk to the service
    // control manager and need neither configuration nor runtime.
    match &cli.command {
        #[cfg(not(windows))]
        Command::Service(_) => return usage(session_agent::cli::SERVICE_NOT_HERE),
        #[cfg(windows)]
        Command::Service(command) if !matches!(command, ServiceCommand::Run(_)) => {
            return session_agent::windows::service::manage(command);
        }
        _ => {}
    }
    // `run`, `config check` and `doctor` validate the agent configuration first: its file
    // may set the log level and format.
    let run_args = match &mut cli.command {
        Command::Run(args)
        | Command::Service(ServiceCommand::Run(args))
        | Command::Doctor(session_agent::doctor::DoctorArgs { run: args, .. }) => {
            Some(std::mem::take(args))
        }
        Command::Config(ConfigCommand::Check(check)) => {
            let mut args = std::mem::take(&mut check.run);
            if let Some(file) = check.file.take() {
                args.config = Some(file);
            }
            Some(args)
        }
        _ => None,
    };
    // No --config: the default file (/etc/session-agent/session-agent.toml) if it exists.
    let mut run_args = run_args;
    if let Some(args) = &mut run_args {
        if args.config.is_none() {
            args.config = session_agent::agent::config::default_config_file();
        }
    }
    let config_file = run_args.as_ref().and_then(|a| a.config.clone());
    // What the configuration looked like before it was read: a change made while it is
    // being read and found invalid is still seen by a held agent.
    let read_before = matches!(cli.command, Command::Run(_))
        .then(|| session_agent::agent::held::fingerprint(config_file.as_deref()));
    let checked = run_args.map(|mut args| {
        args.log_level.clone_from(&cli.log_level);
        args.log_format.clone_from(&cli.log_format);
        args.into_config()
    });
    let agent_config = match (&cli.command, checked) {
        (Command::Config(_), Some(Ok(config))) => {
            let read = session_agent::agent::config::files_read_comment(config_file.as_deref());
            return print_stdout(&format!("{read}{}", config.to_toml()));
        }
        // `doctor` reports a bad configuration as one of its checks.
        (Command::Doctor(_), checked) => checked.map(|r| r.map_err(|e| e.to_string())),
        // Under systemd a bad configuration holds the agent up, loudly, instead of exiting
        // (`agent::held`): a unit that gives up is a lock-out.
        (Command::Run(_), Some(Err(e))) if session_agent::agent::held::under_service_manager() => {
            return held(
                &cli,
                &e.to_string(),
                config_file.as_deref(),
                read_before.unwrap_or_default(),
            );
        }
        (_, Some(Err(e))) => return usage_error(&e),
        (_, checked) => checked.map(|r| r.map_err(|e| e.to_string())),
    };
    let (log_level, log_format) = match &agent_config {
        Some(Ok(c)) => (c.log_level.clone(), c.log_format),
        _ => {
            let format = match cli.log_format.as_deref().map(str::parse::<LogFormat>) {
                None => LogFormat::default(),
                Some(Ok(f)) => f,
                Some(Err(e)) => return usage_error(&format!("--log-format: {e}")),
            };
            (
                cli.log_level.clone().unwrap_or_else(|| "info".into()),
                format,
            )
        }
    };
    // doctor's report says everything; the AWS SDK's own warnings would only repeat it.
    let log_level = match (&cli.command, &cli.log_level) {
        (Command::Doctor(_), None) => "error".to_owned(),
        _ => log_level,
    };
    let filter = match logging::parse_filter(&log_level) {
        Ok(f) => f,
        Err(e) => return usage_error(&format!("--log-level: {e}")),
    };
    // `dev` owns the terminal for the session: its logs go to a file instead.
    let target = match &cli.command {
        Command::Dev(args) => {
            let dir = args.state_dir();
            let _ = std::fs::create_dir_all(&dir);
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("dev.log"))
            {
                Ok(f) => Target::File(f),
                Err(e) => {
                    return failure(&format!(
                        "cannot open {}: {e}",
                        dir.join("dev.log").display()
                    ))
                }
            }
        }
        // A service has no terminal: its log goes to a file in its state directory.
        Command::Service(ServiceCommand::Run(_)) => match &agent_config {
            Some(Ok(config)) => match logging::service_log_file(&config.state_dir) {
                Ok(f) => Target::File(f),
                Err(e) => return failure(&e),
            },
            _ => return ExitCode::from(EX_USAGE),
        },
        _ => Target::Stderr,
    };
    logging::init(filter, log_format, target);
    // The service control manager's dispatcher takes this thread and builds its own
    // runtime for the agent.
    #[cfg(windows)]
    if let (Command::Service(ServiceCommand::Run(_)), Some(Ok(config))) =
        (&cli.command, agent_config.clone())
    {
        return session_agent::windows::service::run(config);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return failure(&format!("cannot start the async runtime: {e}")),
    };
    let code = runtime
        .block_on(async move { dispatch(cli.command, agent_config, config_file.as_deref()).await });
    // Blocking work still running (a shell being reaped) gets a moment, not forever.
    runtime.shutdown_timeout(RUNTIME_LINGER);
    code
}

/// `agent_config` is the validated configuration of `run` and `doctor` (an error only
/// for `doctor`, which reports it); `config_file` the file it was read from.
async fn dispatch(
    command: Command,
    agent_config: Option<Result<session_agent::agent::AgentConfig, String>>,
    config_file: Option<&std::path::Path>,
) -> ExitCode {
    match command {
        Command::Gateway(args) => {
            let listen = args.listen;
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => return usage_error(&e),
            };
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => return usage_error(&format!("--listen: cannot bind {listen}: {e}")),
            };
            match session_agent::gateway::serve(config, listener, stop_signals()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e.to_string()),
            }
        }
        Command::Run(_) => {
            let Some(Ok(config)) = agent_config else {
                return ExitCode::from(EX_USAGE);
            };
            ignore_hangups();
            match session_agent::agent::run(config, stop_signals()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e.to_string()),
            }
        }
        Command::Doctor(args) => {
            let config = match &agent_config {
                Some(Ok(c)) => Ok(c),
                Some(Err(e)) => Err(e.as_str()),
                None => Err("no configuration"),
            };
            let report = session_agent::doctor::run(&args, config, config_file).await;
            let code = if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
            print_stdout(&report.to_string());
            code
        }
        Command::Connect(args) => {
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => return connect_usage_error(&e),
            };
            ExitCode::from(session_agent::client::connect(config).await.exit_code())
        }
        Command::Dev(args) => match session_agent::dev::run(args).await {
            Ok(code) => ExitCode::from(code),
            Err(e) => usage_error(&e),
        },
        Command::Replay(args) => {
            match tokio::task::block_in_place(|| {
                session_agent::replay::replay(&args, &mut std::io::stdout().lock())
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e),
            }
        }
        Command::Export(args) => {
            match tokio::task::block_in_place(|| {
                session_agent::export::export(&args, &mut std::io::stdout().lock())
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e),
            }
        }
        Command::Transcript(args) => {
            match tokio::task::block_in_place(|| {
                session_agent::replay::transcript(&args, &mut std::io::stdout().lock())
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e),
            }
        }
        Command::Verify(args) => ExitCode::from(
            session_agent::replay::verify(&args, &mut std::io::stdout().lock()).await,
        ),
        Command::Sessions(args) => {
            let now = session_agent::timefmt::unix_ms(std::time::SystemTime::now());
            match tokio::task::block_in_place(|| {
                session_agent::sessions::sessions(&args, now, &mut std::io::stdout().lock())
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e),
            }
        }
        Command::Audit(args) => {
            match tokio::task::block_in_place(|| {
                session_agent::replay::audit(&args, &mut std::io::stdout().lock())
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failure(&e),
            }
        }
        Command::Config(_)
        | Command::ExecAs { .. }
        | Command::Service(_)
        | Command::Completions(_)
        | Command::Man => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// `run` with an invalid configuration under a service manager: logs and reports it,
/// waits for a fix (`agent::held`), then executes itself again to read everything anew.
fn held(
    cli: &Cli,
    error: &str,
    config_file: Option<&std::path::Path>,
    read_before: u64,
) -> ExitCode {
    let format = cli
        .log_format
        .as_deref()
        .and_then(|f| f.parse::<LogFormat>().ok())
        .unwrap_or_default();
    let filter = logging::parse_filter(cli.log_level.as_deref().unwrap_or("info"))
        .or_else(|_| logging::parse_filter("info"));
    match filter {
        Ok(filter) => logging::init(filter, format, Target::Stderr),
        Err(_) => return usage_error(&error),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return failure(&format!("cannot start the async runtime: {e}")),
    };
    // stop_signals() spawns its task: inside the runtime.
    let next = runtime.block_on(async {
        session_agent::agent::held::hold(error, config_file, read_before, stop_signals()).await
    });
    runtime.shutdown_timeout(RUNTIME_LINGER);
    match next {
        session_agent::agent::held::Next::Stop => ExitCode::SUCCESS,
        session_agent::agent::held::Next::Retry => reexec(),
    }
}

/// Replaces this process with a fresh run of the same binary and arguments (same PID).
#[cfg(unix)]
fn reexec() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next();
    // The running binary itself, even if a package upgrade replaced the file meanwhile.
    let exe = if cfg!(target_os = "linux") {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => return failure(&format!("cannot find this program to restart it: {e}")),
        }
    };
    let mut command = std::process::Command::new(&exe);
    if let Some(arg0) = arg0 {
        command.arg0(arg0);
    }
    let e = command.args(args).exec();
    failure(&format!("cannot restart {}: {e}", exe.display()))
}

#[cfg(not(unix))]
fn reexec() -> ExitCode {
    ExitCode::from(EX_USAGE)
}

/// `session-agent completions`: one script to stdout, or the packaged set into a directory.
fn completions(args: &session_agent::cli::CompletionsArgs) -> ExitCode {
    if let Some(shell) = args.shell {
        return print_bytes(&session_agent::cli::completions(shell));
    }
    let Some(dir) = &args.out_dir else {
        return usage("completions: name a shell or --out-dir");
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return failure(&format!("cannot create {}: {e}", dir.display()));
    }
    for (shell, name) in session_agent::cli::PACKAGED_COMPLETIONS {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, session_agent::cli::completions(shell)) {
            return failure(&format!("cannot write {}: {e}", path.display()));
        }
    }
    ExitCode::SUCCESS
}

fn print_bytes(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

#[allow(clippy::print_stdout)]
fn print_stdout(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

#[allow(clippy::print_stderr)]
fn usage_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("session-agent: invalid configuration: {e}");
    ExitCode::from(EX_USAGE)
}

/// A command that cannot run here: the message and exit status 2 (as clap's own).
#[allow(clippy::print_stderr)]
fn usage(e: &str) -> ExitCode {
    eprintln!("session-agent: {e}");
    ExitCode::from(2)
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

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C; on Windows, Ctrl-C or Ctrl-Break),
/// which starts a graceful stop. A second one exits the process at once with status 130:
/// whatever the stop had not finished (recordings being delivered) is picked up at the
/// next start, as after a crash.
fn stop_signals() -> impl std::future::Future<Output = ()> {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut signals = match StopSignals::new() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for stop signals; stop the agent with SIGKILL");
                return;
            }
        };
        signals.next().await;
        let _ = first_tx.send(());
        signals.next().await;
        tracing::warn!("Second stop signal: exiting now; recordings not yet delivered are delivered at the next start");
        std::process::exit(EXIT_FORCED);
    });
    async move {
        let _ = first_rx.await;
    }
}

/// A running agent takes SIGHUP (`systemctl reload`) as a no-op with a log line instead of
/// dying by it: only a held agent (invalid configuration) reads its configuration again.
fn ignore_hangups() {
    #[cfg(unix)]
    tokio::spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP ignored: the configuration is read at start; restart the agent (ending its sessions) to apply a change");
        }
    });
}

/// SIGTERM and SIGINT, registered once so that no signal between two waits is missed.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {},
                _ = self.int.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
