//! The shell on a Windows pseudoconsole (ConPTY, through `portable-pty`): the same names
//! as the Unix `session::pty` for what the agent uses.
//!
//! * The shell is PowerShell (`sh` in the configuration means `cmd.exe`), on a
//!   pseudoconsole of the client's size.
//! * Running as ssm-user: the pseudoconsole's process is the agent binary itself, as
//!   `session-agent __exec-as --user ssm-user -- PROGRAM ARGS...`, with a one-time
//!   password from `crate::windows::account::lease` in its environment; it logs the
//!   user on and starts the shell as them on the same console, inside a job object
//!   (`crate::windows::logon`). Ending the session terminates the shim, and closing the
//!   job's last handle kills the shell and everything it started. The lease disables
//!   the account again after the last session.
//! * Not as LocalSystem, the shell runs as the daemon's user, directly, with the agent's
//!   environment (no job object: only the shell itself is ended).
//! * Windows has no SIGHUP: ending a session terminates the process (as upstream).
//! * The console's echo mode is not visible through ConPTY, so
//!   [`Shell::echo_off`] is `None`, which the recorder treats as echo off:
//!   on Windows typed input is never recorded (output, which includes what the console
//!   echoes, is).

use crate::windows::account::Lease;
use portable_pty::{Child, CommandBuilder, MasterPty};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::spec::{one_line, spawn_on_terminal, terminal_size, SpawnFailure};
pub use super::spec::{Credentials, ExitStatus, ShellSpec};
use super::user::SessionUser;

/// The hidden subcommand of the agent binary that runs [`exec_as_main`].
pub const EXEC_AS_SUBCOMMAND: &str = "__exec-as";
/// Unused on Windows (no OOM score); kept for the agent's start-up code.
pub const DAEMON_OOM_SCORE_ADJ: i32 = -900;
/// Terminal size when the spec gives none.
const DEFAULT_SIZE: (u16, u16) = (80, 24);
/// How often [`ShellProcess::wait`] looks at the process (no pid-reuse hazard on
/// Windows: `portable-pty` holds the process handle).
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Exit code of the shim when it cannot start the shell.
const EXIT_CANNOT_EXECUTE: u8 = 126;

/// Failures of the pseudoconsole edge; each message names the program.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// No pseudoconsole could be created.
    #[error("cannot open a console for {program}: {reason}")]
    Open {
        /// The program that was to run.
        program: String,
        /// Why.
        reason: String,
    },
    /// The working directory is missing.
    #[error("cannot start {program}: working directory {} is not a directory", cwd.display())]
    Cwd {
        /// The program that was to run.
        program: String,
        /// The directory asked for.
        cwd: PathBuf,
    },
    /// Another user was asked for, but the agent is not LocalSystem.
    #[error("cannot run {program} as {user}: switching users needs the agent to run as LocalSystem (as the service does)")]
    NotPrivileged {
        /// The program.
        program: String,
        /// The user asked for.
        user: String,
    },
    /// The process could not be started.
    #[error("cannot start {program}: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// The console size could not be set.
    #[error("cannot resize the console of {program}: {reason}")]
    Resize {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// Waiting for the shell failed.
    #[error("cannot wait for {program}: {reason}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
}

/// A command of an `InteractiveCommands` session for `who`: PowerShell running
/// COMMANDS (upstream runs `powershell.exe COMMANDS`), otherwise as [`session_spec`].
pub fn command_spec(who: &SessionUser, commands: &str, size: Option<(u16, u16)>) -> ShellSpec {
    let mut spec = session_spec(who, false, size);
    let system_root = std::env::var_os("SystemRoot")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\Windows"));
    spec.program = system_root.join(r"System32\WindowsPowerShell\v1.0\powershell.exe");
    spec.args = vec![
        "-NoLogo".to_owned(),
        "-NoProfile".to_owned(),
        "-Command".to_owned(),
        commands.to_owned(),
    ];
    spec
}

/// The session's shell for `who`: PowerShell (`cmd.exe` without `login_shell`), with the
/// agent's environment (replaced by the user's own in the logon shim when switching).
pub fn session_spec(who: &SessionUser, login_shell: bool, size: Option<(u16, u16)>) -> ShellSpec {
    let system_root = std::env::var_os("SystemRoot")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\Windows"));
    let (program, args) = if login_shell {
        (who.info.shell.clone(), vec!["-NoLogo".to_owned()])
    } else {
        (system_root.join(r"System32\cmd.exe"), Vec::new())
    };
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.retain(|(k, _)| !k.eq_ignore_ascii_case(crate::windows::logon::PASSWORD_ENV));
    env.push(("TERM".into(), "xterm-256color".into()));
    // The shim starts a switched shell in the user's profile; this is where the shim
    // itself starts.
    let cwd = if !who.switch && who.info.home.is_dir() {
        who.info.home.clone()
    } else {
        system_root.join("System32")
    };
    ShellSpec {
        program,
        args,
        env,
        cwd,
        run_as: who.switch.then(|| Credentials {
            user: who.info.name.clone(),
        }),
        size,
        contain: None,
    }
}

/// A cloneable handle on the shell process for other threads.
#[derive(Clone)]
pub struct ShellProcess {
    inner: Arc<ProcessInner>,
}

struct ProcessInner {
    program: String,
    pid: Option<u32>,
    child: Mutex<Box<dyn Child + Send + Sync>>,
    ended: Mutex<Option<ExitStatus>>,
}

impl fmt::Debug for ShellProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShellProcess")
            .field("program", &self.inner.program)
            .field("pid", &self.inner.pid)
            .finish_non_exhaustive()
    }
}

impl ShellProcess {
    fn ended(&self) -> MutexGuard<'_, Option<ExitStatus>> {
        self.inner
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The process id while the shell runs.
    pub fn pid(&self) -> Option<u32> {
        self.ended().is_none().then_some(self.inner.pid).flatten()
    }

    /// The exit status if the shell has exited.
    ///
    /// # Errors
    /// [`PtyError::Wait`].
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, PtyError> {
        let mut ended = self.ended();
        if let Some(status) = &*ended {
            return Ok(Some(status.clone()));
        }
        let child = self
            .inner
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Not portable-pty's try_wait, which takes exit code 259 (STILL_ACTIVE) for a
        // running process.
        match crate::windows::child_exit_code(child.as_ref()) {
            Ok(Some(code)) => {
                let status = ExitStatus {
                    // NTSTATUS-style codes (0xC000013A, …) keep their bits.
                    code: Some(i32::from_ne_bytes(code.to_ne_bytes())),
                    signal: None,
                };
                *ended = Some(status.clone());
                Ok(Some(status))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(PtyError::Wait {
                program: self.inner.program.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Blocks until the shell exits.
    ///
    /// # Errors
    /// [`PtyError::Wait`].
    pub fn wait(&self) -> Result<ExitStatus, PtyError> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn kill(&self) {
        let mut child = self
            .inner
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
    }
}

impl ShellProcess {
    /// Waits on the runtime until the shell exits: one blocking-pool wait (a process
    /// handle could be waited on without a thread, but not through portable-pty).
    ///
    /// # Errors
    /// [`PtyError::Wait`].
    pub async fn exited(&self) -> Result<ExitStatus, PtyError> {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.wait()).await {
            Ok(waited) => waited,
            Err(_) => self.wait(),
        }
    }
}

/// Stack of the two threads that carry a console's pipes (they only copy buffers).
const PIPE_THREAD_STACK: usize = 256 * 1024;
/// Chunks read ahead of the agent from the console's output pipe.
const READ_AHEAD: usize = 4;

/// The console's output on the runtime. ConPTY's pipes are anonymous pipes, which have no
/// overlapped I/O a reactor could wait on, so a thread reads them; on Unix the master is
/// on the reactor itself.
pub struct PtyReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    held: Vec<u8>,
    at: usize,
}

impl fmt::Debug for PtyReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PtyReader")
    }
}

impl PtyReader {
    fn give(&mut self, buf: &mut [u8]) -> usize {
        let n = (self.held.len() - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.held[self.at..self.at + n]);
        self.at += n;
        n
    }

    fn hold(&mut self, chunk: std::io::Result<Vec<u8>>, buf: &mut [u8]) -> std::io::Result<usize> {
        self.held = chunk?;
        self.at = 0;
        Ok(self.give(buf))
    }

    /// Reads what the console shows; `Ok(0)` at the end. Cancel-safe.
    ///
    /// # Errors
    /// The pipe failed.
    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at < self.held.len() {
            return Ok(self.give(buf));
        }
        match self.rx.recv().await {
            Some(chunk) => self.hold(chunk, buf),
            None => Ok(0),
        }
    }

    /// What the console has ready now: `None` when nothing is, `Some(0)` at the end.
    ///
    /// # Errors
    /// The pipe failed.
    pub fn try_read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        if self.at < self.held.len() {
            return Ok(Some(self.give(buf)));
        }
        match self.rx.try_recv() {
            Ok(chunk) => self.hold(chunk, buf).map(Some),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Ok(Some(0)),
        }
    }
}

/// The console's input on the runtime, written by a thread (see [`PtyReader`]).
pub struct PtyWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl fmt::Debug for PtyWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PtyWriter")
    }
}

impl PtyWriter {
    /// Types `bytes` into the console.
    ///
    /// # Errors
    /// The console is gone.
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tx
            .send(bytes.to_vec())
            .await
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
}

/// A shell running on a pseudoconsole; dropping it ends the shell.
pub struct Shell {
    process: ShellProcess,
    master: Box<dyn MasterPty + Send>,
    reader: Option<Box<dyn Read + Send>>,
    writer: Option<Box<dyn Write + Send>>,
    /// Keeps ssm-user enabled while this session runs.
    _lease: Option<Lease>,
}

impl fmt::Debug for Shell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shell")
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

impl Shell {
    /// Opens a pseudoconsole and starts `spec.program` on it; through `exec_shim` (the
    /// agent binary, see [`exec_as_main`]) when `spec.run_as` names an account.
    ///
    /// # Errors
    /// [`PtyError::Cwd`], [`PtyError::NotPrivileged`], [`PtyError::Open`],
    /// [`PtyError::Spawn`].
    pub fn spawn(spec: &ShellSpec, exec_shim: &Path) -> Result<Self, PtyError> {
        let program = spec.program.display().to_string();
        if !spec.cwd.is_dir() {
            return Err(PtyError::Cwd {
                program,
                cwd: spec.cwd.clone(),
            });
        }
        let spawn_error = |reason: String| PtyError::Spawn {
            program: program.clone(),
            reason,
        };
        let mut command;
        let mut lease = None;
        let mut password = None;
        match &spec.run_as {
            None => {
                command = CommandBuilder::new(&spec.program);
                command.args(&spec.args);
            }
            Some(creds) => {
                if !crate::platform::is_privileged() {
                    return Err(PtyError::NotPrivileged {
                        program,
                        user: creds.user.clone(),
                    });
                }
                let Some(target) = spec.program.to_str() else {
                    return Err(spawn_error(
                        "a program run as another user needs a UTF-8 path".into(),
                    ));
                };
                let (leased, secret) = crate::windows::account::lease(&creds.user)
                    .map_err(|e| spawn_error(format!("cannot enable {}: {e}", creds.user)))?;
                lease = Some(leased);
                password = Some(secret);
                command = CommandBuilder::new(exec_shim);
                command.args([EXEC_AS_SUBCOMMAND, "--user", &creds.user, "--", target]);
                command.args(&spec.args);
            }
        }
        command.env_clear();
        for (key, value) in &spec.env {
            command.env(key, value);
        }
        if let Some(secret) = &password {
            command.env(crate::windows::logon::PASSWORD_ENV, secret);
        }
        command.cwd(&spec.cwd);
        let spawned =
            spawn_on_terminal(command, spec.size.unwrap_or(DEFAULT_SIZE)).map_err(|failure| {
                match failure {
                    SpawnFailure::Open(reason) => PtyError::Open {
                        program: program.clone(),
                        reason,
                    },
                    SpawnFailure::Spawn(reason) => spawn_error(reason),
                }
            })?;
        let pid = spawned.child.process_id();
        let shell = Self {
            process: ShellProcess {
                inner: Arc::new(ProcessInner {
                    program: program.clone(),
                    pid,
                    child: Mutex::new(spawned.child),
                    ended: Mutex::new(None),
                }),
            },
            master: spawned.master,
            reader: Some(spawned.reader),
            writer: Some(spawned.writer),
            _lease: lease,
        };
        tracing::debug!(%program, ?pid, "shell started on a pseudoconsole");
        Ok(shell)
    }

    /// The console's output. `None` after the first call.
    pub fn take_reader(&mut self) -> Option<Box<dyn Read + Send>> {
        self.reader.take()
    }

    /// The console's input. `None` after the first call.
    pub fn take_writer(&mut self) -> Option<Box<dyn Write + Send>> {
        self.writer.take()
    }

    /// The console's output and input for async code (see [`PtyReader`]). `None` once
    /// the reader or the writer was taken.
    ///
    /// # Errors
    /// [`PtyError::Spawn`] when a thread for the pipes cannot start.
    pub fn take_io(&mut self) -> Result<Option<(PtyReader, PtyWriter)>, PtyError> {
        let (Some(mut reader), Some(mut writer)) = (self.reader.take(), self.writer.take()) else {
            return Ok(None);
        };
        let failed = |e: std::io::Error| PtyError::Spawn {
            program: self.process.inner.program.clone(),
            reason: format!("cannot start a thread for the console: {e}"),
        };
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        std::thread::Builder::new()
            .name("console-reader".into())
            .stack_size(PIPE_THREAD_STACK)
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let chunk = match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => Ok(buf[..n].to_vec()),
                        Err(e) => Err(e),
                    };
                    let failed = chunk.is_err();
                    if out_tx.blocking_send(chunk).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(failed)?;
        let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        std::thread::Builder::new()
            .name("console-writer".into())
            .stack_size(PIPE_THREAD_STACK)
            .spawn(move || {
                while let Some(bytes) = in_rx.blocking_recv() {
                    if writer
                        .write_all(&bytes)
                        .and_then(|()| writer.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            })
            .map_err(failed)?;
        Ok(Some((
            PtyReader {
                rx: out_rx,
                held: Vec::new(),
                at: 0,
            },
            PtyWriter { tx: in_tx },
        )))
    }

    /// Sets the console size.
    ///
    /// # Errors
    /// [`PtyError::Resize`].
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), PtyError> {
        self.master
            .resize(terminal_size((cols, rows)))
            .map_err(|e| PtyError::Resize {
                program: self.process.inner.program.clone(),
                reason: one_line(e),
            })
    }

    /// The shell's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// A handle for other threads.
    pub fn process(&self) -> ShellProcess {
        self.process.clone()
    }

    /// The exit status if the shell has exited.
    ///
    /// # Errors
    /// [`PtyError::Wait`].
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, PtyError> {
        self.process.try_wait()
    }

    /// Ends the session: terminates the shell (or the shim, whose job then kills the
    /// shell's whole tree) if it still runs, and waits up to `grace` for its status.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Ok(Some(status)) = self.process.try_wait() {
            return status;
        }
        self.process.kill();
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = self.process.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                return ExitStatus {
                    code: None,
                    signal: None,
                };
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Not observable through ConPTY: always `None` (see the module docs).
    pub fn echo_off(&self) -> Option<bool> {
        None
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if matches!(self.process.try_wait(), Ok(None)) {
            self.process.kill();
        }
    }
}

/// There is no OOM score on Windows.
///
/// # Errors
/// Always `Unsupported`.
pub fn set_oom_score_adj(_value: i32) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "Windows has no OOM score",
    ))
}

/// The Windows `__exec-as` shim: `--user NAME [--] PROGRAM [ARGS...]`, the password in
/// the environment; logs on and runs the program as the user on this console
/// (`crate::windows::logon`), then exits with its exit code. Failures print one line on
/// the console and exit 126.
pub fn exec_as_main(args: &[String]) -> ExitCode {
    let usage = "usage: __exec-as --user NAME -- PROGRAM [ARGS...]";
    let (user, rest) = match args {
        [flag, user, rest @ ..] if flag == "--user" => (user, rest),
        _ => return shim_failure(usage),
    };
    let rest = match rest {
        [dashes, tail @ ..] if dashes == "--" => tail,
        other => other,
    };
    let Some((program, program_args)) = rest.split_first() else {
        return shim_failure(usage);
    };
    let password = std::env::var(crate::windows::logon::PASSWORD_ENV).unwrap_or_default();
    std::env::remove_var(crate::windows::logon::PASSWORD_ENV);
    let Some(line) = super::cmdline::windows_command_line(program, program_args) else {
        return shim_failure("an argument contains NUL");
    };
    match crate::windows::logon::run_as(user, &password, &line) {
        Ok(code) => std::process::exit(i32::from_ne_bytes(code.to_ne_bytes())),
        Err(e) => shim_failure(&format!("cannot run {program} as {user}: {e}")),
    }
}

#[allow(clippy::print_stderr)]
fn shim_failure(message: &str) -> ExitCode {
    eprintln!("session-agent: {message}");
    ExitCode::from(EXIT_CANNOT_EXECUTE)
}
