//! The shell on a pseudo-terminal: spawn it, move bytes, resize, signal, reap.
//!
//! # What this module owns
//!
//! One process tree per session: a PTY pair from `portable-pty`, the shell started on its
//! slave side as a session leader with the PTY as its controlling terminal, and the
//! master side, which the agent reads and writes on the tokio runtime through
//! [`Shell::take_io`] (blocking callers, such as tests, use [`Shell::take_reader`] and
//! [`Shell::take_writer`] instead). This module knows nothing of the
//! protocol, sockets, sequence numbers, users' policy or recordings: it receives a
//! complete [`ShellSpec`] (program, argv, the whole environment, working directory,
//! credentials, size) and reports bytes and an [`ExitStatus`].
//!
//! # Dropping privileges through a shim
//!
//! `portable-pty` builds the child with `std::process::Command` but offers no `pre_exec`
//! hook, and writing one ourselves would need `unsafe` (which the crate denies). So when
//! [`ShellSpec::run_as`] names other credentials than the agent's own, the PTY child is
//! not the shell but the agent binary itself, run as
//! `session-agent __exec-as --uid U --gid G --user NAME -- PROGRAM ARGS...`.
//! [`exec_as_main`] is that hidden subcommand: still root, it gives the terminal to the
//! user, then calls `initgroups`, `setgid`, `setuid`, checks that real and effective ids
//! are the requested ones and that `setuid(0)` now fails, and only then replaces itself
//! with the program (argv verbatim, no shell in between). Any failure prints one line
//! on the PTY, which the user sees, and exits 126 (127 when the program does not exist);
//! the shell never starts with the agent's privileges. The shim keeps the process id,
//! so the shell is still the session leader `portable-pty` created.
//!
//! Before it drops privileges the shim can also join the session's cgroup (`--cgroup
//! DIR`: fatal when it fails, the session must not run outside) and set the session
//! user's audit login uid (`--loginuid UID`: best effort; the kernel then gives the
//! session a new audit session id), both for the command audit (`agent::audit`).
//!
//! # Processes, groups and ending a session
//!
//! The shell calls `setsid` before exec, so its process-group id and session id equal
//! its pid (a session leader cannot change its group). [`Shell::signal_group`] signals
//! `-pid` and so reaches everything in the shell's group — all children of a shell
//! without job control. A job-control shell puts each job in its own group: those do not
//! get the group signal. What the kernel does on its own is narrower than often assumed:
//! when the shell (the controlling process) exits, SIGHUP goes to the terminal's
//! *foreground* group (and SIGHUP + SIGCONT to orphaned groups with stopped members);
//! when the master side closes, the terminal is hung up — SIGHUP to the session leader
//! only, and reads and writes on the terminal fail from then on. A background job that
//! ignores SIGHUP or never touches the terminal survives all of that. So ending a
//! session ([`Shell::terminate`], and `Drop`) SIGKILLs every process still in the
//! shell's *session* (found through `/proc`), not only its group. Only a process that
//! called `setsid` itself leaves the session and escapes here; when the agent runs as
//! root, the shim first moves the session into a cgroup of its own (`--cgroup`, see
//! `audit::cgroup`), whose end reaches those too. Killed children of the shell are
//! reparented to init (or a subreaper), which reaps them.
//!
//! The shell's pid is only a safe name while the shell is unreaped (a zombie pins its pid,
//! group id and session id). So [`Shell::try_wait`] and [`Shell::wait`] observe the exit
//! *without* reaping (`waitid(WNOWAIT)`), and reaping happens in one place, after the
//! leftovers are killed: [`Shell::terminate`] (or `Drop`, which does the same with no
//! grace period). Call `terminate` to end every session, also one whose shell already
//! exited: nothing is left behind and no zombie remains. Nothing else in the process may
//! reap with `waitpid(-1)` (tokio's process support waits for its own children only).
//!
//! # On the runtime: no thread per session
//!
//! A session costs no thread of its own. [`Shell::take_io`] puts the master in
//! non-blocking mode and registers it with tokio's reactor ([`AsyncFd`]): [`PtyReader`]
//! and [`PtyWriter`] wait for readiness there and move bytes through `portable-pty`'s own
//! handles (duplicates of the master, sharing its non-blocking mode). The registration
//! holds the master open, so it is always removed from the reactor before the descriptor
//! can be closed and its number reused. The exit is observed the same way:
//! [`ShellProcess::exited`] waits on a pidfd (Linux 5.3+; on older kernels, and other
//! Unixes, one blocking-pool wait), opened while the shell is known to be unreaped, so it
//! cannot name a recycled pid. Keep the [`Shell`] itself (which is `Send`) for `resize`
//! and the final `terminate`; an `exited` still waiting then returns the recorded status.

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::termios::LocalFlags;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use portable_pty::{Child, CommandBuilder, MasterPty};
use std::ffi::CString;
use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub use super::spec::Credentials;
use super::spec::{one_line, spawn_on_terminal, terminal_size, SpawnFailure, Spawned};
pub use super::spec::{Containment, ExitStatus, ShellSpec};
use super::user::SessionUser;

/// The hidden subcommand of the agent binary that runs [`exec_as_main`].
pub const EXEC_AS_SUBCOMMAND: &str = "__exec-as";
/// [`exec_as_main`]'s first option: make the program a session leader first.
const SETSID_FLAG: &str = "--setsid";
/// [`exec_as_main`]'s option: move into this cgroup (its directory) first.
const CGROUP_FLAG: &str = "--cgroup";
/// [`exec_as_main`]'s option: set this audit login uid first.
const LOGINUID_FLAG: &str = "--loginuid";

/// Terminal size when the spec gives none: the VT100 default most programs assume.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// How often [`Shell::terminate`] checks whether the shell has gone during its grace
/// period: short enough that ending a session costs no visible delay, long enough that
/// polling costs nothing measurable.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Sweeps of the session when killing leftovers: a process may fork between the scan and
/// the signal, so sweep again until a scan finds nothing alive (bounded, because a process
/// stuck in uninterruptible sleep cannot be hurried).
const KILL_SWEEPS: usize = 5;

/// Exit codes of the shim, as shells use them: the program could not be run (126) or
/// does not exist (127).
const EXIT_CANNOT_EXECUTE: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

/// The exit status `waitid` observed; `None` for stops and continues.
fn status_from_wait(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus {
            code: Some(code),
            signal: None,
        }),
        WaitStatus::Signaled(_, signal, _) => Some(ExitStatus {
            code: None,
            signal: Some(signal.as_str().to_owned()),
        }),
        _ => None,
    }
}

/// The exit status as `portable-pty` reports it (when `waitid` could not observe it).
fn status_from_portable(status: &portable_pty::ExitStatus) -> ExitStatus {
    match status.signal() {
        Some(signal) => ExitStatus {
            code: None,
            signal: Some(signal.to_owned()),
        },
        None => ExitStatus {
            code: i32::try_from(status.exit_code()).ok(),
            signal: None,
        },
    }
}

/// The session's shell for `who`: with `login_shell` their login shell as a login shell
/// (`-l`), else `/bin/sh`; a fixed, minimal environment (nothing from the agent's own
/// but `LANG`), their home as the working directory (`/` when it is missing), and a
/// switch to their credentials when [`SessionUser::switch`] says so.
pub fn session_spec(who: &SessionUser, login_shell: bool, size: Option<(u16, u16)>) -> ShellSpec {
    let u = &who.info;
    let (program, args) = if login_shell && !u.shell.as_os_str().is_empty() {
        (u.shell.clone(), vec!["-l".to_owned()])
    } else {
        (PathBuf::from("/bin/sh"), Vec::new())
    };
    let lang = std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into());
    let env = vec![
        ("TERM".to_owned(), "xterm-256color".to_owned()),
        ("LANG".to_owned(), lang),
        ("HOME".to_owned(), u.home.display().to_string()),
        ("USER".to_owned(), u.name.clone()),
        ("LOGNAME".to_owned(), u.name.clone()),
        ("SHELL".to_owned(), program.display().to_string()),
        (
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
    ];
    let cwd = if u.home.is_dir() {
        u.home.clone()
    } else {
        PathBuf::from("/")
    };
    ShellSpec {
        program,
        args,
        env,
        cwd,
        run_as: who.switch.then(|| Credentials {
            uid: u.uid,
            gid: u.gid,
            user: u.name.clone(),
        }),
        size,
        contain: None,
    }
}

/// A command of an `InteractiveCommands` session for `who`: `/bin/sh -c COMMANDS` on the
/// PTY (upstream's way: the shell's own syntax, no login shell, no profile), with the
/// environment, working directory and credentials of [`session_spec`].
pub fn command_spec(who: &SessionUser, commands: &str, size: Option<(u16, u16)>) -> ShellSpec {
    let mut spec = session_spec(who, false, size);
    spec.args = vec!["-c".to_owned(), commands.to_owned()];
    spec
}

/// Failures of the PTY edge; each message names the program (and user where relevant).
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// No PTY could be allocated.
    #[error("cannot open a pty for {program}: {reason}")]
    Open {
        /// The program that was to run.
        program: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The working directory is missing (`portable-pty` would silently use `$HOME`).
    #[error("cannot start {program}: working directory {} is not a directory", cwd.display())]
    Cwd {
        /// The program that was to run.
        program: String,
        /// The directory asked for.
        cwd: PathBuf,
    },
    /// Another user was asked for, but this process cannot switch users.
    #[error(
        "cannot run {program} as {user}: switching users needs root privileges, \
         and this agent runs as uid {euid}"
    )]
    NotPrivileged {
        /// The program that was to run.
        program: String,
        /// The user asked for.
        user: String,
        /// The agent's effective uid.
        euid: u32,
    },
    /// A user switch to uid 0 was asked for: the shim only ever drops privileges.
    #[error("refusing to run {program} as {user}: uid 0 is not a user to drop privileges to")]
    RunAsRoot {
        /// The program that was to run.
        program: String,
        /// The user asked for.
        user: String,
    },
    /// The process could not be started.
    #[error("cannot start {program}: {reason}")]
    Spawn {
        /// The program that was to run.
        program: String,
        /// Why.
        reason: String,
    },
    /// The window size could not be set.
    #[error("cannot resize the terminal of {program}: {reason}")]
    Resize {
        /// The program running on the PTY.
        program: String,
        /// Why.
        reason: String,
    },
    /// A signal could not be delivered.
    #[error("cannot send {signal} to the process group of {program} (pid {pid}): {source}")]
    Signal {
        /// The program running on the PTY.
        program: String,
        /// Its pid (and process-group id).
        pid: u32,
        /// The signal.
        signal: Signal,
        /// The operating system's reason.
        source: Errno,
    },
    /// Waiting for the shell failed.
    #[error("cannot wait for {program} (pid {pid}): {source}")]
    Wait {
        /// The program running on the PTY.
        program: String,
        /// Its pid.
        pid: u32,
        /// The operating system's reason.
        source: Errno,
    },
}

/// A cloneable, thread-safe handle on the shell process: observe its exit and signal its
/// group from any thread while the [`Shell`] stays with its owner (who resizes and, in
/// the end, terminates it). It never reaps, and once the shell has been reaped it signals
/// nothing, because the pid may then name an unrelated process.
#[derive(Debug, Clone)]
pub struct ShellProcess {
    inner: Arc<ProcessInner>,
}

#[derive(Debug)]
struct ProcessInner {
    pid: Pid,
    program: String,
    /// `Some` once the shell has been reaped. Held while signalling and while reaping,
    /// so a signal never races the release of the pid.
    reaped: Mutex<Option<ExitStatus>>,
}

impl ShellProcess {
    fn reaped(&self) -> MutexGuard<'_, Option<ExitStatus>> {
        self.inner
            .reaped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pid_u32(&self) -> u32 {
        u32::try_from(self.inner.pid.as_raw()).unwrap_or_default()
    }

    /// The shell's pid (also its process-group and session id) while it is unreaped;
    /// `None` once reaped, when the number may already belong to another process.
    pub fn pid(&self) -> Option<u32> {
        self.reaped().is_none().then(|| self.pid_u32())
    }

    /// Sends `signal` to the shell's process group (`kill(-pid, signal)`). After the
    /// shell has been reaped this does nothing and succeeds.
    ///
    /// # Errors
    /// [`PtyError::Signal`] when the kernel refuses (an empty group is not an error).
    pub fn signal_group(&self, signal: Signal) -> Result<(), PtyError> {
        let reaped = self.reaped();
        if reaped.is_some() {
            return Ok(());
        }
        match killpg(self.inner.pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(PtyError::Signal {
                program: self.inner.program.clone(),
                pid: self.pid_u32(),
                signal,
                source,
            }),
        }
    }

    /// The exit status if the shell has exited, without reaping it.
    ///
    /// # Errors
    /// [`PtyError::Wait`] when the kernel no longer knows the child.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, PtyError> {
        // Holding the lock keeps the reaper out, so ECHILD cannot come from our own reap.
        let reaped = self.reaped();
        if let Some(status) = &*reaped {
            return Ok(Some(status.clone()));
        }
        self.peek(WaitPidFlag::WNOHANG)
    }

    /// Blocks until the shell exits and returns its status, without reaping it.
    ///
    /// # Errors
    /// [`PtyError::Wait`] when the kernel no longer knows the child.
    pub fn wait(&self) -> Result<ExitStatus, PtyError> {
        if let Some(status) = &*self.reaped() {
            return Ok(status.clone());
        }
        // Not under the lock: this may block for the whole session.
        loop {
            match self.peek(WaitPidFlag::empty()) {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {} // a blocking waitid reports an exit; never seen
                // Reaped by `Shell::terminate` or `Drop` meanwhile: they recorded it.
                Err(e) => return self.reaped().clone().ok_or(e),
            }
        }
    }

    /// Waits on the runtime until the shell exits and returns its status, without
    /// reaping it and without a thread of its own: through a pidfd the reactor watches,
    /// opened under the reaping lock (so it names the shell, never a recycled pid). Where
    /// pidfds are missing (Linux before 5.3, other Unixes), one blocking-pool wait.
    ///
    /// # Errors
    /// [`PtyError::Wait`] when the kernel no longer knows the child.
    pub async fn exited(&self) -> Result<ExitStatus, PtyError> {
        #[cfg(target_os = "linux")]
        {
            let pidfd = {
                let reaped = self.reaped();
                if let Some(status) = &*reaped {
                    return Ok(status.clone());
                }
                rustix::process::Pid::from_raw(self.inner.pid.as_raw()).and_then(|pid| {
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK).ok()
                })
            };
            if let Some(watch) = pidfd.and_then(|fd| watch(fd, Interest::READABLE).ok()) {
                loop {
                    if let Some(status) = self.try_wait()? {
                        return Ok(status);
                    }
                    match watch.readable().await {
                        Ok(mut ready) => ready.clear_ready(),
                        Err(_) => break, // the reactor is going away: wait the old way
                    }
                }
            }
        }
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.wait()).await {
            Ok(waited) => waited,
            Err(_) => self.wait(),
        }
    }

    /// `waitid(WEXITED | WNOWAIT | extra)` on the shell: observes, never reaps.
    fn peek(&self, extra: WaitPidFlag) -> Result<Option<ExitStatus>, PtyError> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | extra;
        loop {
            match waitid(Id::Pid(self.inner.pid), flags) {
                Ok(WaitStatus::StillAlive) => return Ok(None),
                Ok(status) => {
                    if let Some(status) = status_from_wait(status) {
                        return Ok(Some(status));
                    }
                }
                Err(Errno::EINTR) => {}
                Err(source) => {
                    return Err(PtyError::Wait {
                        program: self.inner.program.clone(),
                        pid: self.pid_u32(),
                        source,
                    })
                }
            }
        }
    }
}

/// A shell running on a PTY. Dropping it kills whatever is left of the session and reaps
/// the shell (see the module docs); prefer [`Shell::terminate`], which gives a grace
/// period first.
pub struct Shell {
    process: ShellProcess,
    child: Box<dyn Child + Send + Sync>,
    master: Master,
    reader: Option<Box<dyn Read + Send>>,
    writer: Option<Box<dyn Write + Send>>,
    /// The writer behind a [`PtyWriter`], kept here too: it may be dropped only after the
    /// shell is reaped (see [`Shell::take_writer`]), which `Drop` does before fields go.
    kept_writer: Option<SharedWriter>,
}

/// The PTY's master, shared by the [`Shell`] (resize, terminal settings) and the reactor
/// registration of [`Shell::take_io`] (which keeps it open while registered).
#[derive(Clone)]
struct Master(Arc<Mutex<Box<dyn MasterPty + Send>>>);

impl Master {
    fn lock(&self) -> MutexGuard<'_, Box<dyn MasterPty + Send>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// What the reactor watches: the master's descriptor, held open by the master itself.
struct MasterFd {
    fd: RawFd,
    _master: Master,
}

impl AsRawFd for MasterFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// A descriptor whose owner keeps it open, and the same, for the owner's whole life:
/// what tokio's reactor requires of a registration (see [`watch`]).
trait KeptOpen: AsRawFd {}

/// A pidfd, owned.
impl KeptOpen for std::os::fd::OwnedFd {}
/// The master, held open through its `Master` for as long as the registration lives.
impl KeptOpen for MasterFd {}

/// Registers `owner`'s descriptor with tokio's reactor.
///
/// The crate's one `unsafe` block. Tokio's registration is `unsafe` because the reactor
/// cannot see who owns the descriptor: it must stay open, and name the same open file,
/// until the registration is dropped (else the reactor could watch, or deregister, an
/// unrelated file that reused the number). Only the two [`KeptOpen`] owners can be
/// registered here, and each upholds that by construction: an `OwnedFd` closes its
/// descriptor only when it is dropped, which is after the registration (the `AsyncFd`
/// deregisters before dropping what it holds); a [`MasterFd`] holds the `Master` whose
/// descriptor it names, so that descriptor cannot close while the registration exists.
/// The deprecated safe constructors do the same without the promise written down; this
/// keeps it in one place, with the reason.
#[allow(unsafe_code)]
fn watch<T: KeptOpen>(owner: T, interest: Interest) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: see above; `T: KeptOpen` keeps its descriptor open and unchanged for its
    // lifetime, which outlasts the registration.
    unsafe { AsyncFd::register_with_interest(owner, interest) }.map_err(std::io::Error::from)
}

/// The terminal's output on the runtime (see [`Shell::take_io`]).
pub struct PtyReader {
    ready: Arc<AsyncFd<MasterFd>>,
    inner: Box<dyn Read + Send>,
}

impl fmt::Debug for PtyReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PtyReader")
    }
}

/// EIO from the master: no process holds the terminal any more (Linux's end of file).
fn is_hangup(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(Errno::EIO as i32)
}

impl PtyReader {
    /// Reads what the terminal shows into `buf`, waiting on the reactor until there is
    /// some, then taking whatever else is ready at once, up to `buf`'s size (the terminal
    /// hands out at most 4 KiB per read; a flood fills `buf` in a few reads, so it leaves
    /// in fewer, larger frames); `Ok(0)` once no process holds the terminal. Cancel-safe:
    /// a read abandoned while waiting loses nothing.
    ///
    /// # Errors
    /// The read failed for another reason than the hang-up.
    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (ready, inner) = (&self.ready, &mut self.inner);
        loop {
            let mut guard = ready.readable().await?;
            match guard.try_io(|_| inner.read(buf)) {
                Ok(Err(e)) if is_hangup(&e) => return Ok(0),
                Ok(Ok(mut n)) => {
                    // What else is ready now (a would-block or the hang-up ends it; the
                    // next read meets either again).
                    while n > 0 && n < buf.len() {
                        match inner.read(&mut buf[n..]) {
                            Ok(more) if more > 0 => n += more,
                            _ => break,
                        }
                    }
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// What the terminal has ready now, without waiting: `None` when nothing is ready,
    /// `Some(0)` at the end.
    ///
    /// # Errors
    /// The read failed for another reason than the hang-up.
    pub fn try_read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self.inner.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if is_hangup(&e) => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }
}

/// The terminal's input on the runtime (see [`Shell::take_io`]). Dropping it types
/// nothing: the writer underneath stays with the [`Shell`] until the shell is reaped.
pub struct PtyWriter {
    ready: Arc<AsyncFd<MasterFd>>,
    inner: SharedWriter,
}

impl fmt::Debug for PtyWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PtyWriter")
    }
}

impl PtyWriter {
    /// Types all of `bytes` into the terminal, waiting on the reactor while its input
    /// queue is full (a shell that does not read blocks only this future).
    ///
    /// # Errors
    /// The terminal is gone or the write failed.
    pub async fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let mut guard = self.ready.writable().await?;
            let wrote = guard.try_io(|_| {
                self.inner
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(bytes)
            });
            match wrote {
                Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Shell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shell")
            .field("program", &self.process.inner.program)
            .field("pid", &self.process.inner.pid)
            .field("reaped", &*self.process.reaped())
            .finish_non_exhaustive()
    }
}

impl Shell {
    /// Opens a PTY and starts `spec.program` on it; through `exec_shim` (the agent binary,
    /// see [`exec_as_main`]) when `spec.run_as` names other credentials than the agent's.
    ///
    /// # Errors
    /// [`PtyError::Cwd`], [`PtyError::NotPrivileged`] (a user switch without root),
    /// [`PtyError::RunAsRoot`], [`PtyError::Open`], [`PtyError::Spawn`].
    pub fn spawn(spec: &ShellSpec, exec_shim: &Path) -> Result<Self, PtyError> {
        let program = spec.program.display().to_string();
        if !spec.cwd.is_dir() {
            return Err(PtyError::Cwd {
                program,
                cwd: spec.cwd.clone(),
            });
        }
        let command = command_for(spec, exec_shim, &program)?;
        let spawned =
            spawn_on_terminal(command, spec.size.unwrap_or(DEFAULT_SIZE)).map_err(|failure| {
                match failure {
                    SpawnFailure::Open(reason) => PtyError::Open {
                        program: program.clone(),
                        reason,
                    },
                    SpawnFailure::Spawn(reason) => PtyError::Spawn {
                        program: program.clone(),
                        reason,
                    },
                }
            })?;
        let Spawned {
            mut child,
            master,
            reader,
            writer,
        } = spawned;
        let Some(pid) = child.process_id().and_then(|p| i32::try_from(p).ok()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PtyError::Spawn {
                program,
                reason: "the child has no process id".into(),
            });
        };
        let shell = Self {
            process: ShellProcess {
                inner: Arc::new(ProcessInner {
                    pid: Pid::from_raw(pid),
                    program: program.clone(),
                    reaped: Mutex::new(None),
                }),
            },
            child,
            master: Master(Arc::new(Mutex::new(master))),
            reader: Some(reader),
            writer: Some(writer),
            kept_writer: None,
        };
        tracing::debug!(%program, pid, "shell started on a pty");
        Ok(shell)
    }

    /// The master's output: everything the shell and its children write to the terminal.
    /// `read` returns 0 (EOF) once no process holds the terminal any more. `None` after
    /// the first call.
    pub fn take_reader(&mut self) -> Option<Box<dyn Read + Send>> {
        self.reader.take()
    }

    /// The master's input: bytes written here are typed into the terminal. `None` after
    /// the first call. Dropping it types a newline and the EOF character (`portable-pty`
    /// does that), so keep it until the session ends.
    pub fn take_writer(&mut self) -> Option<Box<dyn Write + Send>> {
        self.writer.take()
    }

    /// The terminal's output and input on the tokio runtime (call it from within one):
    /// the master is made non-blocking and registered with the reactor. `None` once the
    /// reader or the writer was taken.
    ///
    /// # Errors
    /// The master could not be made non-blocking or registered.
    pub fn take_io(&mut self) -> Result<Option<(PtyReader, PtyWriter)>, PtyError> {
        let (Some(reader), Some(writer)) = (self.reader.take(), self.writer.take()) else {
            return Ok(None);
        };
        let program = self.process.inner.program.clone();
        let failed = |reason: String| PtyError::Open {
            program: program.clone(),
            reason,
        };
        let fd = self
            .master
            .lock()
            .as_raw_fd()
            .ok_or_else(|| failed("the pty has no descriptor".into()))?;
        // The reader and writer are duplicates of the master: one open file, one mode.
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| failed(format!("cannot read the pty's mode: {e}")))?;
        let nonblocking =
            nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nonblocking))
            .map_err(|e| failed(format!("cannot make the pty non-blocking: {e}")))?;
        let registered = watch(
            MasterFd {
                fd,
                _master: self.master.clone(),
            },
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(|e| failed(format!("cannot watch the pty: {e}")))?;
        let ready = Arc::new(registered);
        let writer: SharedWriter = Arc::new(Mutex::new(writer));
        self.kept_writer = Some(writer.clone());
        Ok(Some((
            PtyReader {
                ready: ready.clone(),
                inner: reader,
            },
            PtyWriter {
                ready,
                inner: writer,
            },
        )))
    }

    /// Sets the window size; the kernel sends SIGWINCH to the foreground process group.
    ///
    /// # Errors
    /// [`PtyError::Resize`] when the ioctl fails.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), PtyError> {
        self.master
            .lock()
            .resize(terminal_size((cols, rows)))
            .map_err(|e| PtyError::Resize {
                program: self.process.inner.program.clone(),
                reason: one_line(e),
            })
    }

    /// The shell's pid (= its process-group and session id) until it is reaped.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// A handle for other threads: wait for the exit and signal the group.
    pub fn process(&self) -> ShellProcess {
        self.process.clone()
    }

    /// Sends `signal` to the shell's process group (see [`ShellProcess::signal_group`]).
    ///
    /// # Errors
    /// [`PtyError::Signal`].
    pub fn signal_group(&self, signal: Signal) -> Result<(), PtyError> {
        self.process.signal_group(signal)
    }

    /// The exit status if the shell has exited; observes without reaping.
    ///
    /// # Errors
    /// [`PtyError::Wait`].
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, PtyError> {
        self.process.try_wait()
    }

    /// Blocks until the shell exits; observes without reaping.
    ///
    /// # Errors
    /// [`PtyError::Wait`].
    pub fn wait(&self) -> Result<ExitStatus, PtyError> {
        self.process.wait()
    }

    /// Ends the session: SIGHUP (and SIGCONT, so a stopped shell can act on it) to the
    /// shell's group, up to `grace` for the shell to exit, then SIGKILL to its group and
    /// to everything left in its session, then reaps it. Returns at once with the known
    /// status if the shell was already reaped. Safe to call after the shell has exited by
    /// itself: that is how its leftovers are cleaned up.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(status) = &*self.process.reaped() {
            return status.clone();
        }
        if matches!(self.try_wait(), Ok(None)) {
            for signal in [Signal::SIGHUP, Signal::SIGCONT] {
                if let Err(e) = self.signal_group(signal) {
                    tracing::warn!(error = %e, "cannot hang up the shell");
                }
            }
            let deadline = Instant::now() + grace;
            loop {
                let now = Instant::now();
                if now >= deadline || !matches!(self.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(POLL_INTERVAL.min(deadline - now));
            }
        }
        self.reap()
    }

    /// True when the terminal has ECHO off, whatever ICANON says: what is typed is not
    /// shown, so it may be a secret (`read -s`, `sudo`, and also `sudo` with
    /// `pwfeedback` or any program reading a password byte by byte in non-canonical
    /// mode). Programs that echo for themselves (readline, editors, pagers) also turn
    /// ECHO off; what they show is recorded as output. `None` when the terminal's
    /// settings cannot be read.
    pub fn echo_off(&self) -> Option<bool> {
        let termios = self.master.lock().get_termios()?;
        Some(!termios.local_flags.contains(LocalFlags::ECHO))
    }

    /// SIGKILLs the group and the rest of the session, then reaps the shell. The lock is
    /// held throughout, so no [`ShellProcess`] signals a pid that is being released.
    fn reap(&mut self) -> ExitStatus {
        let mut reaped = self.process.reaped();
        if let Some(status) = &*reaped {
            return status.clone();
        }
        let pid = self.process.inner.pid;
        kill_session(pid);
        // The shell is dead or dying: observe its status (with the signal's real name),
        // then release it.
        let observed = self.process.peek(WaitPidFlag::empty());
        let status = match (self.child.wait(), observed) {
            (_, Ok(Some(status))) => status,
            (Ok(status), _) => status_from_portable(&status),
            (Err(e), _) => {
                tracing::warn!(%pid, error = %e, "cannot reap the shell");
                ExitStatus {
                    code: None,
                    signal: None,
                }
            }
        };
        tracing::debug!(%pid, %status, "shell reaped");
        *reaped = Some(status.clone());
        status
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if self.process.reaped().is_none() {
            self.reap();
        }
    }
}

/// SIGKILL to the process group `sid` and to every live process whose session is `sid`.
/// Only called while the leader is unreaped, so `sid` cannot name anything else.
fn kill_session(sid: Pid) {
    let _ = kill(sid, Signal::SIGKILL);
    let _ = killpg(sid, Signal::SIGKILL);
    for sweep in 0..KILL_SWEEPS {
        let members = live_session_members(sid);
        if members.is_empty() {
            return;
        }
        if sweep > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        for pid in members {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// SIGKILLs what is left of the session `sid` (its group and every live process whose
/// session is `sid`, found through `/proc`), for callers outside this module: a
/// `NonInteractiveCommands` program, which the shim made a session leader, after it
/// exited. Its leader is reaped by then; the kernel does not hand out the number again
/// while a process of the session or group still holds it.
pub fn kill_session_of(sid: u32) {
    let Ok(raw) = i32::try_from(sid) else { return };
    let sid = Pid::from_raw(raw);
    let _ = killpg(sid, Signal::SIGKILL);
    for sweep in 0..KILL_SWEEPS {
        let members = live_session_members(sid);
        if members.is_empty() {
            return;
        }
        if sweep > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        for pid in members {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// Processes other than `sid` itself, not yet zombies, whose session id is `sid`.
fn live_session_members(sid: Pid) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != sid.as_raw())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // `pid (comm) state ppid pgrp session ...`; comm may contain spaces and ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let session = fields.nth(2).and_then(|s| s.parse::<i32>().ok());
            state != Some("Z") && session == Some(sid.as_raw())
        })
        .map(Pid::from_raw)
        .collect()
}

/// A command without a terminal (`NonInteractiveCommands`): `spec`'s program and
/// arguments as its user, always through the `__exec-as` shim, which first makes it the
/// leader of a session of its own (`--setsid`, so everything it starts can be found and
/// killed at the end, as a shell's session is, whatever process groups it makes), then
/// drops privileges when `spec` names another user; standard input at end of file,
/// standard output and error piped. Killed when the handle is dropped.
///
/// # Errors
/// The credentials cannot be switched to, or the program cannot start.
pub fn spawn_piped(spec: &ShellSpec, exec_shim: &Path) -> Result<tokio::process::Child, PtyError> {
    let program = spec.program.display().to_string();
    let (exe, mut args) = argv_for(spec, exec_shim, &program)?;
    if exe.as_os_str() == exec_shim.as_os_str() {
        args.insert(1, SETSID_FLAG.to_owned());
    } else {
        let mut shimmed = vec![
            EXEC_AS_SUBCOMMAND.to_owned(),
            SETSID_FLAG.to_owned(),
            "--".to_owned(),
            exe.to_string_lossy().into_owned(),
        ];
        shimmed.extend(args);
        args = shimmed;
    }
    let mut command = tokio::process::Command::new(exec_shim);
    command
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command.spawn().map_err(|e| PtyError::Spawn {
        program,
        reason: e.to_string(),
    })
}

/// What runs: the program itself with its arguments, or the shim in front of it when
/// `spec` names other credentials than the agent's.
fn argv_for(
    spec: &ShellSpec,
    exec_shim: &Path,
    program: &str,
) -> Result<(std::ffi::OsString, Vec<String>), PtyError> {
    let euid = nix::unistd::geteuid();
    let egid = nix::unistd::getegid();
    let switch = spec
        .run_as
        .as_ref()
        .filter(|c| c.uid != euid.as_raw() || c.gid != egid.as_raw());
    // Joining the session's cgroup and setting the audit login uid need root: only an
    // agent running as root is given them (see `audit::cgroup`).
    let mut contain: Vec<String> = Vec::new();
    if let Some(c) = spec.contain.as_ref().filter(|_| euid.is_root()) {
        if let Some(dir) = c.cgroup.as_ref().and_then(|d| d.to_str()) {
            contain.extend([CGROUP_FLAG.to_owned(), dir.to_owned()]);
        }
        if let Some(uid) = c.loginuid {
            contain.extend([LOGINUID_FLAG.to_owned(), uid.to_string()]);
        }
    }
    let Some(creds) = switch else {
        if contain.is_empty() {
            return Ok((spec.program.clone().into_os_string(), spec.args.clone()));
        }
        let Some(target) = spec.program.to_str() else {
            return Err(PtyError::Spawn {
                program: program.into(),
                reason: "a contained program needs a UTF-8 path".into(),
            });
        };
        let mut args = vec![EXEC_AS_SUBCOMMAND.to_owned()];
        args.extend(contain);
        args.extend(["--".to_owned(), target.to_owned()]);
        args.extend(spec.args.iter().cloned());
        return Ok((exec_shim.as_os_str().to_owned(), args));
    };
    if !euid.is_root() {
        return Err(PtyError::NotPrivileged {
            program: program.into(),
            user: creds.user.clone(),
            euid: euid.as_raw(),
        });
    }
    if creds.uid == 0 {
        return Err(PtyError::RunAsRoot {
            program: program.into(),
            user: creds.user.clone(),
        });
    }
    let Some(target) = spec.program.to_str() else {
        return Err(PtyError::Spawn {
            program: program.into(),
            reason: "a program run as another user needs a UTF-8 path".into(),
        });
    };
    let mut args: Vec<String> = vec![EXEC_AS_SUBCOMMAND.to_owned()];
    args.extend(contain);
    args.extend(
        [
            "--uid",
            &creds.uid.to_string(),
            "--gid",
            &creds.gid.to_string(),
            "--user",
            &creds.user,
            "--",
            target,
        ]
        .into_iter()
        .map(str::to_owned),
    );
    args.extend(spec.args.iter().cloned());
    Ok((exec_shim.as_os_str().to_owned(), args))
}

/// The command `portable-pty` runs: the program itself, or the shim in front of it.
fn command_for(
    spec: &ShellSpec,
    exec_shim: &Path,
    program: &str,
) -> Result<CommandBuilder, PtyError> {
    let (exe, args) = argv_for(spec, exec_shim, program)?;
    let mut command = CommandBuilder::new(exe);
    command.args(&args);
    command.env_clear();
    for (key, value) in &spec.env {
        command.env(key, value);
    }
    command.cwd(&spec.cwd);
    Ok(command)
}

/// What the shim was asked to do.
#[derive(Debug, Clone)]
struct ExecAs {
    /// `--setsid`: become a session leader first.
    setsid: bool,
    /// The user to become; `None`: stay as is (`--setsid`, `--cgroup`, `--loginuid`).
    switch: Option<(Uid, Gid, String)>,
    /// `--cgroup DIR`: the session's cgroup to join.
    cgroup: Option<String>,
    /// `--loginuid UID`: the audit login uid to set.
    loginuid: Option<u32>,
    program: String,
    args: Vec<String>,
}

impl ExecAs {
    /// Parses `--uid U --gid G --user NAME [--] PROGRAM [ARGS...]` (the options in any
    /// order, each exactly once; everything from PROGRAM on is passed verbatim).
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut uid, mut gid, mut user) = (None, None, None);
        let (mut cgroup, mut loginuid) = (None, None);
        let mut rest = args;
        let mut setsid = false;
        if let [flag, tail @ ..] = rest {
            if flag == SETSID_FLAG {
                setsid = true;
                rest = tail;
            }
        }
        while let [flag, value, tail @ ..] = rest {
            let slot = match flag.as_str() {
                "--uid" => &mut uid,
                "--gid" => &mut gid,
                "--user" => &mut user,
                CGROUP_FLAG => &mut cgroup,
                LOGINUID_FLAG => &mut loginuid,
                _ => break,
            };
            if slot.replace(value.clone()).is_some() {
                return Err(format!("{flag} given twice"));
            }
            rest = tail;
        }
        if let [dashes, tail @ ..] = rest {
            if dashes == "--" {
                rest = tail;
            }
        }
        let id = |flag: &str, value: Option<String>| -> Result<Option<u32>, String> {
            value
                .map(|v| v.parse().map_err(|_| format!("bad {flag} {v:?}")))
                .transpose()
        };
        let (uid, gid) = (id("--uid", uid)?, id("--gid", gid)?);
        let loginuid = id(LOGINUID_FLAG, loginuid)?;
        let usage = "usage: __exec-as [--setsid] [--cgroup DIR] [--loginuid UID] --uid U --gid G --user NAME -- PROGRAM [ARGS...], or without the user options with at least one of the others";
        let switch = match (uid, gid, user) {
            (Some(uid), Some(gid), Some(user)) => {
                Some((Uid::from_raw(uid), Gid::from_raw(gid), user))
            }
            // Without a user: only a new session, a cgroup or a login uid is asked for.
            (None, None, None) if setsid || cgroup.is_some() || loginuid.is_some() => None,
            _ => return Err(usage.into()),
        };
        match rest {
            [program, args @ ..] => Ok(Self {
                setsid,
                switch,
                cgroup,
                loginuid,
                program: program.clone(),
                args: args.to_vec(),
            }),
            [] => Err(usage.into()),
        }
    }
}

/// The `__exec-as` shim: drop from root to the given user and exec the program. Run
/// by the agent binary as the PTY child when a shell must run as another user (see the
/// module docs). Never returns on success. On failure it prints one line to stderr —
/// the PTY, so the user reads it — and returns 126 (cannot run) or 127 (no such program).
pub fn exec_as_main(args: &[String]) -> ExitCode {
    let request = match ExecAs::parse(args) {
        Ok(r) => r,
        Err(usage) => return shim_failure(&usage, EXIT_CANNOT_EXECUTE),
    };
    let what = match &request.switch {
        Some((_, _, user)) => format!("cannot run {} as {user}", request.program),
        None => format!("cannot run {}", request.program),
    };
    // The daemon protects itself from the OOM killer; its sessions must not inherit that
    // (a runaway program in a shell is what the OOM killer should pick). Raising the
    // score is always allowed, so this cannot fail short of a missing /proc.
    let _ = set_oom_score_adj(0);
    // Into the session's cgroup before anything else, so nothing of the session is ever
    // outside it. The agent asks only when it made the cgroup: failing is not an option
    // the session gets to run without.
    if let Some(dir) = &request.cgroup {
        let procs = Path::new(dir).join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
            return shim_failure(
                &format!("{what}: cannot join the session's cgroup {dir}: {e}"),
                EXIT_CANNOT_EXECUTE,
            );
        }
    }
    // The audit login uid: the kernel starts a new audit session (a new
    // /proc/self/sessionid) that every process of the session inherits and that su and
    // sudo keep. Best effort: where the login uid is immutable and already set, the
    // session keeps the agent's, and the cgroup and the fork tree still say which
    // processes are the session's.
    if let Some(uid) = request.loginuid {
        let _ = std::fs::write("/proc/self/loginuid", uid.to_string());
    }
    if request.setsid {
        if let Err(e) = nix::unistd::setsid() {
            return shim_failure(&format!("{what}: setsid: {e}"), EXIT_CANNOT_EXECUTE);
        }
    }
    if let Some(switch) = &request.switch {
        if let Err(reason) = drop_privileges(switch) {
            return shim_failure(&format!("{what}: {reason}"), EXIT_CANNOT_EXECUTE);
        }
    }
    // std's exec is execvp plus a clean signal state: the Rust runtime ignores SIGPIPE,
    // and an ignored signal survives exec, which would break `yes | head` in the shell.
    let error = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(&request.program).args(&request.args),
    );
    let code = if error.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_EXECUTE
    };
    shim_failure(&format!("{what}: {error}"), code)
}

/// The daemon's own OOM score adjustment: far less likely than a session's programs to be
/// chosen by the kernel's OOM killer (the recorder must outlive a runaway shell), but not
/// -1000 (exempt), so a leak in the daemon itself can still be stopped.
pub const DAEMON_OOM_SCORE_ADJ: i32 = -900;

/// Sets this process's `/proc/self/oom_score_adj` (-1000..=1000; lowering needs root or
/// CAP_SYS_RESOURCE). Children inherit it.
///
/// # Errors
/// Not permitted, or no `/proc`.
pub fn set_oom_score_adj(value: i32) -> std::io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", value.to_string())
}

/// Gives up root for `request`'s user; an error is the reason, for one line.
fn drop_privileges((uid, gid, user): &(Uid, Gid, String)) -> Result<(), String> {
    use nix::unistd::{getegid, geteuid, getgid, getuid, initgroups, setgid, setuid};
    if uid.is_root() {
        return Err("uid 0 is not a user to drop privileges to".into());
    }
    let name = CString::new(user.as_str()).map_err(|_| "the user name contains NUL")?;
    // Give the user their terminal, as login does (programs such as screen insist),
    // while we still may. Best effort: the shell works without it.
    let stdin = std::io::stdin();
    if std::io::IsTerminal::is_terminal(&stdin) {
        let _ = std::os::unix::fs::fchown(&stdin, Some(uid.as_raw()), None);
    }
    initgroups(&name, *gid).map_err(|e| format!("initgroups: {e}"))?;
    setgid(*gid).map_err(|e| format!("setgid({gid}): {e}"))?;
    setuid(*uid).map_err(|e| format!("setuid({uid}): {e}"))?;
    if getuid() != *uid || geteuid() != *uid || getgid() != *gid || getegid() != *gid {
        return Err("the process ids did not change as asked".into());
    }
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err("privileges were not dropped: setuid(0) still succeeds".into());
    }
    if gid.as_raw() != 0 && setgid(Gid::from_raw(0)).is_ok() {
        return Err("privileges were not dropped: setgid(0) still succeeds".into());
    }
    Ok(())
}

#[allow(clippy::print_stderr)]
fn shim_failure(message: &str, code: u8) -> ExitCode {
    eprintln!("session-agent: {message}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::mpsc;

    const NO_SHIM: &str = "/nonexistent/session-agent";
    const TIMEOUT: Duration = Duration::from_secs(10);

    fn spec(script: &str) -> ShellSpec {
        ShellSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("SHELL".into(), "/bin/sh".into()),
            ],
            cwd: "/".into(),
            run_as: None,
            size: None,
            contain: None,
        }
    }

    /// Collects the reader's output on a thread; `finish` returns it after EOF.
    fn collect(shell: &mut Shell) -> mpsc::Receiver<String> {
        let mut reader = shell.take_reader().expect("reader");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = reader.read_to_end(&mut out);
            let _ = tx.send(String::from_utf8_lossy(&out).into_owned());
        });
        rx
    }

    fn run(spec: &ShellSpec) -> (String, ExitStatus) {
        let mut shell = Shell::spawn(spec, Path::new(NO_SHIM)).expect("spawn");
        let output = collect(&mut shell);
        let out = output.recv_timeout(TIMEOUT).expect("output ends");
        let status = shell.wait().expect("wait");
        assert_eq!(shell.terminate(Duration::ZERO), status);
        assert_eq!(shell.pid(), None, "reaped");
        (out, status)
    }

    #[test]
    fn runs_with_the_given_size_and_reports_the_exit_code() {
        let mut s = spec("echo hi; stty size");
        s.size = Some((100, 30));
        let (out, status) = run(&s);
        assert!(out.contains("hi"), "{out:?}");
        assert!(out.contains("30 100"), "{out:?}");
        assert_eq!(status.code, Some(0));
        assert!(status.success());

        let (out, status) = run(&spec("stty size; exit 3"));
        assert!(out.contains("24 80"), "default size: {out:?}");
        assert_eq!(
            status,
            ExitStatus {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(status.to_string(), "exit code 3");
    }

    /// Reads everything until the terminal's end, on the runtime.
    async fn read_to_end(reader: &mut PtyReader) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(TIMEOUT, reader.read(&mut buf))
                .await
                .expect("output ends")
                .expect("read");
            if n == 0 {
                return String::from_utf8_lossy(&out).into_owned();
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn on_the_runtime_input_is_typed_output_read_and_the_exit_seen() {
        let mut shell =
            Shell::spawn(&spec("read x; echo got:$x; exit 7"), Path::new(NO_SHIM)).expect("spawn");
        let (mut reader, mut writer) = shell.take_io().expect("io").expect("first take");
        assert!(shell.take_io().expect("io").is_none(), "taken once");
        let process = shell.process();
        let exit = tokio::spawn(async move { process.exited().await });
        writer.write_all(b"hello\n").await.expect("typed");
        let out = read_to_end(&mut reader).await;
        assert!(out.contains("got:hello"), "{out:?}");
        let status = tokio::time::timeout(TIMEOUT, exit)
            .await
            .expect("exit seen")
            .expect("task")
            .expect("status");
        assert_eq!(status.code, Some(7));
        assert!(shell.pid().is_some(), "seen, not reaped");
        assert_eq!(shell.terminate(Duration::ZERO), status);
        // After the reap, the recorded status (no pid is looked at any more).
        assert_eq!(shell.process().exited().await.expect("status"), status);
    }

    #[tokio::test]
    async fn a_shell_that_does_not_read_blocks_only_the_writer_and_dropping_it_types_nothing() {
        let mut shell = Shell::spawn(
            &spec("stty raw -echo; echo ready; sleep 2"),
            Path::new(NO_SHIM),
        )
        .expect("spawn");
        let (mut reader, mut writer) = shell.take_io().expect("io").expect("first take");
        // Far more than a terminal's input queue holds while nobody reads it (raw mode:
        // the line discipline keeps what it cannot pass on): the write waits on the
        // reactor (it does not fail, and it does not block the runtime).
        let flood = vec![b'a'; 1024 * 1024];
        let typing = tokio::spawn(async move {
            let r =
                tokio::time::timeout(Duration::from_millis(300), writer.write_all(&flood)).await;
            (r.is_err(), writer)
        });
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while !String::from_utf8_lossy(&seen).contains("ready") {
            let n = tokio::time::timeout(TIMEOUT, reader.read(&mut buf))
                .await
                .expect("output while the writer waits")
                .expect("read");
            assert!(n > 0, "output ended early: {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
        let (still_waiting, writer) = typing.await.expect("task");
        assert!(still_waiting, "a full input queue makes the writer wait");
        // Dropping the async writer does not type a newline and end-of-file (which
        // portable-pty's writer does when it is dropped): `read` goes on waiting.
        drop(writer);
        let mut shell2 =
            Shell::spawn(&spec("read x; echo \"got:[$x]\""), Path::new(NO_SHIM)).expect("spawn");
        let (mut reader2, writer2) = shell2.take_io().expect("io").expect("first take");
        drop(writer2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(shell2.try_wait(), Ok(None)), "nothing was typed");
        shell2.terminate(Duration::ZERO);
        let out = read_to_end(&mut reader2).await;
        assert!(!out.contains("got:"), "{out:?}");
        shell.terminate(Duration::ZERO);
    }

    #[test]
    fn resize_reaches_the_running_program() {
        let mut shell = Shell::spawn(&spec("read x; stty size"), Path::new(NO_SHIM)).unwrap();
        let output = collect(&mut shell);
        let mut writer = shell.take_writer().expect("writer");
        assert!(shell.take_writer().is_none(), "taken once");
        shell.resize(120, 40).unwrap();
        writer.write_all(b"\n").unwrap();
        let out = output.recv_timeout(TIMEOUT).unwrap();
        assert!(out.contains("40 120"), "{out:?}");
        assert_eq!(shell.wait().unwrap().code, Some(0));
    }

    fn session_processes(sid: u32) -> Vec<Pid> {
        live_session_members(Pid::from_raw(i32::try_from(sid).unwrap()))
    }

    /// `pgrep -g` lists zombies too: killed children of the shell were reparented to
    /// init, which reaps them shortly after, so give it a moment.
    fn pgrep_finds_nothing(pgid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let st = std::process::Command::new("pgrep")
                .args(["-g", &pgid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            if st.code() == Some(1) || Instant::now() >= deadline {
                return st.code() == Some(1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn terminate_hangs_up_the_group_and_leaves_nothing() {
        let mut shell =
            Shell::spawn(&spec("sleep 100 & sleep 100; wait"), Path::new(NO_SHIM)).unwrap();
        let pid = shell.pid().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while session_processes(pid).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(session_processes(pid).len(), 2, "two sleeps started");
        let started = Instant::now();
        let status = shell.terminate(Duration::from_secs(2));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "SIGHUP was enough"
        );
        assert_eq!(status.signal.as_deref(), Some("SIGHUP"), "{status}");
        assert!(pgrep_finds_nothing(pid));
        assert!(session_processes(pid).is_empty());
        assert_eq!(shell.terminate(Duration::ZERO), status, "idempotent");
        shell.signal_group(Signal::SIGTERM).unwrap(); // a no-op once reaped
    }

    #[test]
    fn terminate_escalates_to_sigkill_and_sweeps_other_groups() {
        // Everything ignores SIGHUP; one sleep runs in a process group of its own (job
        // control), where the group signal cannot reach it.
        let script = "trap '' HUP; set -m; sleep 100 & set +m; sleep 100";
        let mut shell = Shell::spawn(&spec(script), Path::new(NO_SHIM)).unwrap();
        let pid = shell.pid().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while session_processes(pid).len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(session_processes(pid).len(), 2, "two sleeps started");
        let pgrp_of = |p: Pid| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
            let rest = &stat[stat.rfind(')').unwrap() + 1..];
            rest.split_whitespace()
                .nth(2)
                .unwrap()
                .parse::<u32>()
                .unwrap()
        };
        let groups: Vec<u32> = session_processes(pid).into_iter().map(pgrp_of).collect();
        assert!(groups.contains(&pid), "{groups:?}");
        assert!(
            groups.iter().any(|&g| g != pid),
            "one job in its own group: {groups:?}"
        );
        let started = Instant::now();
        let status = shell.terminate(Duration::from_millis(300));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!(status.signal.as_deref(), Some("SIGKILL"), "{status}");
        assert!(session_processes(pid).is_empty());
    }

    #[test]
    fn exit_is_observed_without_reaping_and_leftovers_are_killed() {
        let mut shell =
            Shell::spawn(&spec("trap '' HUP; sleep 100 & exit 5"), Path::new(NO_SHIM)).unwrap();
        let pid = shell.pid().unwrap();
        let process = shell.process();
        let waiter = std::thread::spawn(move || process.wait());
        let status = waiter.join().unwrap().unwrap();
        assert_eq!(status.code, Some(5));
        assert_eq!(shell.try_wait().unwrap(), Some(status.clone()));
        assert_eq!(shell.pid(), Some(pid), "still unreaped, its pid still ours");
        assert_eq!(
            session_processes(pid).len(),
            1,
            "the sleep survived the exit"
        );
        assert_eq!(shell.terminate(Duration::from_secs(5)), status);
        assert!(session_processes(pid).is_empty());
    }

    #[test]
    fn a_waiting_thread_is_released_when_the_owner_terminates() {
        fn assert_send<T: Send>() {}
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send::<Shell>();
        assert_send_sync::<ShellProcess>();

        let mut shell = Shell::spawn(&spec("sleep 100"), Path::new(NO_SHIM)).unwrap();
        let process = shell.process();
        let waiter = std::thread::spawn(move || process.wait());
        std::thread::sleep(Duration::from_millis(50));
        let status = shell.terminate(Duration::from_secs(2));
        assert_eq!(status.signal.as_deref(), Some("SIGHUP"), "{status}");
        assert_eq!(waiter.join().unwrap().unwrap(), status);
        assert_eq!(shell.process().try_wait().unwrap(), Some(status));
        assert_eq!(shell.process().pid(), None);
    }

    #[test]
    fn dropping_a_running_shell_kills_and_reaps_it() {
        let shell = Shell::spawn(&spec("sleep 100"), Path::new(NO_SHIM)).unwrap();
        let pid = shell.pid().unwrap();
        drop(shell);
        let pid = Pid::from_raw(i32::try_from(pid).unwrap());
        // Reaped: no zombie is left (the pid is gone, or reused by someone else).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.contains(") Z "), "{stat}");
    }

    #[test]
    fn echo_off_follows_the_terminal_whatever_icanon_says() {
        for script in ["stty -echo; sleep 1", "stty -echo -icanon min 1; sleep 1"] {
            let mut shell = Shell::spawn(&spec(script), Path::new(NO_SHIM)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(1);
            while shell.echo_off() != Some(true) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(shell.echo_off(), Some(true), "{script}");
            shell.terminate(Duration::ZERO);
        }
        let mut shell = Shell::spawn(&spec("sleep 1"), Path::new(NO_SHIM)).unwrap();
        assert_eq!(shell.echo_off(), Some(false));
        shell.terminate(Duration::ZERO);
    }

    fn env_of(out: &str) -> BTreeMap<String, String> {
        out.lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn the_environment_is_exactly_the_given_one() {
        let mut s = spec("env");
        s.env.push(("HOME".into(), "/tmp".into()));
        s.env.push(("FOO".into(), "bar baz=qux".into()));
        let (out, _) = run(&s);
        let env = env_of(&out);
        assert_eq!(env["FOO"], "bar baz=qux");
        assert_eq!(env["SHELL"], "/bin/sh");
        let extra: Vec<_> = env
            .keys()
            .filter(|k| !s.env.iter().any(|(given, _)| given == *k))
            .collect();
        assert!(
            extra
                .iter()
                .all(|k| ["PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str())),
            "only what sh adds: {extra:?}"
        );

        // portable-pty's one addition, documented on `ShellSpec::env`.
        let mut s = spec("env");
        s.env.retain(|(k, _)| k != "SHELL");
        let (out, _) = run(&s);
        assert!(env_of(&out).contains_key("SHELL"));
    }

    #[test]
    fn the_working_directory_is_used_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec("pwd");
        s.cwd = dir.path().to_owned();
        let (out, _) = run(&s);
        assert!(out.contains(&dir.path().display().to_string()), "{out:?}");

        s.cwd = dir.path().join("missing");
        let err = Shell::spawn(&s, Path::new(NO_SHIM)).unwrap_err();
        assert!(matches!(err, PtyError::Cwd { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn run_as_self_needs_no_shim_and_root_is_refused() {
        let mut s = spec("id -u");
        let me = nix::unistd::geteuid().as_raw();
        s.run_as = Some(Credentials {
            uid: me,
            gid: nix::unistd::getegid().as_raw(),
            user: "me".into(),
        });
        let (out, status) = run(&s);
        assert!(out.contains(&me.to_string()), "{out:?}");
        assert!(status.success());

        if nix::unistd::geteuid().is_root() {
            s.run_as = Some(Credentials {
                uid: 0,
                gid: 12345,
                user: "root".into(),
            });
            let err = Shell::spawn(&s, Path::new(NO_SHIM)).unwrap_err();
            assert!(matches!(err, PtyError::RunAsRoot { .. }), "{err}");
        }
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let mut s = spec("");
        s.program = "/nonexistent/shell".into();
        let err = Shell::spawn(&s, Path::new(NO_SHIM)).unwrap_err();
        assert!(matches!(err, PtyError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/shell"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn shim_arguments_parse_strictly() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let ok = ExecAs::parse(&args("--uid 7 --gid 8 --user bob -- /bin/sh -c --uid")).unwrap();
        let (uid, gid, user) = ok.switch.clone().unwrap();
        assert_eq!((uid.as_raw(), gid.as_raw(), user.as_str()), (7, 8, "bob"));
        assert!(!ok.setsid);
        assert_eq!(ok.program, "/bin/sh");
        assert_eq!(ok.args, ["-c", "--uid"]);
        let ok = ExecAs::parse(&args("--user bob --gid 8 --uid 7 sh")).unwrap();
        assert_eq!(ok.program, "sh");
        // A new session, with or without a user switch.
        let ok = ExecAs::parse(&args("--setsid --uid 7 --gid 8 --user bob -- id")).unwrap();
        assert!(ok.setsid && ok.switch.is_some());
        let ok = ExecAs::parse(&args("--setsid -- id -u")).unwrap();
        assert!(ok.setsid && ok.switch.is_none());
        assert_eq!(
            (ok.program.as_str(), ok.args.as_slice()),
            ("id", &["-u".to_owned()][..])
        );
        for bad in [
            "--uid 7 --gid 8 -- sh",
            "--uid x --gid 8 --user bob -- sh",
            "--uid 7 --gid 8 --user bob --",
            "--uid 7 --uid 7 --gid 8 --user bob -- sh",
            // No switch without --setsid: the shim would do nothing.
            "-- sh",
            "--setsid --",
            "--setsid --uid 7 -- sh",
        ] {
            assert!(ExecAs::parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
