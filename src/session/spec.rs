//! What the agent asks of the host to run a session, the same on every platform: the
//! [`ShellSpec`] handed to `session::pty`, the [`ExitStatus`] it reports, and the
//! [`SudoPolicy`] `session::user` applies to ssm-user (passwordless sudo on Linux,
//! membership of the local Administrators group on Windows). The platform modules
//! re-export these, so callers name them `session::pty::ShellSpec` and so on.

use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

/// Credentials to run the shell under: the uid, primary gid and the name whose
/// supplementary groups are applied (`initgroups`).
#[cfg(unix)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// User name, for the supplementary groups and for messages.
    pub user: String,
}

/// The account to run the shell as.
#[cfg(windows)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Local account name.
    pub user: String,
}

/// Everything needed to start a shell; nothing is taken from the agent's own process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellSpec {
    /// The program: an absolute path, or a name looked up in the `PATH` of [`Self::env`].
    pub program: PathBuf,
    /// Arguments after argv\[0\] (argv\[0\] is the program as given).
    pub args: Vec<String>,
    /// The complete environment: the shell inherits nothing from the agent. One exception
    /// comes from `portable-pty`, which always sets `SHELL`: without a `SHELL` entry here
    /// the shell sees the agent user's login shell, so always give one. With a user
    /// switch this environment also reaches the shim while it is still root, so it must
    /// be built by the agent, never copied from a request.
    pub env: Vec<(String, String)>,
    /// Working directory; must exist (checked before spawning, as the agent's user).
    pub cwd: PathBuf,
    /// Credentials to switch to; `None`, or the agent's own, means no switch.
    pub run_as: Option<Credentials>,
    /// Initial size as (columns, rows); 80x24 when `None`.
    pub size: Option<(u16, u16)>,
    /// Where the session's processes are kept and how the kernel's audit names them
    /// (Linux, an agent running as root); nothing when `None`.
    pub contain: Option<Containment>,
}

/// What the `__exec-as` shim does, still root, before anything of the session runs
/// (see `audit::cgroup` and `session::pty`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Containment {
    /// The session's cgroup directory: the shim moves itself into it, so every process
    /// of the session is born inside.
    pub cgroup: Option<PathBuf>,
    /// The session user's uid, written as the audit login uid: the kernel gives the
    /// session a new audit session id, which every process inherits and auditd records.
    pub loginuid: Option<u32>,
}

/// How the shell ended: its exit code, or the signal that killed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code when the shell exited by itself.
    pub code: Option<i32>,
    /// The signal name (`SIGHUP`, `SIGKILL`, ...) when a signal killed it.
    pub signal: Option<String>,
}

impl ExitStatus {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.signal, self.code) {
            (Some(signal), _) => write!(f, "killed by {signal}"),
            (None, Some(code)) => write!(f, "exit code {code}"),
            (None, None) => f.write_str("unknown exit status"),
        }
    }
}

/// A terminal (PTY pair / pseudoconsole) with a command started on it, as portable-pty
/// gives them on every platform; the platform's `Shell` takes it from here.
pub(crate) struct Spawned {
    pub(crate) child: Box<dyn Child + Send + Sync>,
    pub(crate) master: Box<dyn MasterPty + Send>,
    pub(crate) reader: Box<dyn Read + Send>,
    pub(crate) writer: Box<dyn Write + Send>,
}

/// Why [`spawn_on_terminal`] failed: no terminal, or the command did not start.
#[derive(Debug)]
pub(crate) enum SpawnFailure {
    /// The terminal could not be opened (or its reader / writer taken).
    Open(String),
    /// The command could not be started.
    Spawn(String),
}

/// portable-pty's size for (columns, rows).
pub(crate) fn terminal_size((cols, rows): (u16, u16)) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

/// Opens a terminal of `size`, starts `command` on it, and takes the master's reader and
/// writer. Our copy of the slave side is closed at once: the master reports end of file
/// only when no slave handle is left, i.e. when the command and its children are gone.
/// If the reader or writer cannot be had, the started command is killed and reaped.
pub(crate) fn spawn_on_terminal(
    command: CommandBuilder,
    size: (u16, u16),
) -> Result<Spawned, SpawnFailure> {
    let pair = native_pty_system()
        .openpty(terminal_size(size))
        .map_err(|e| SpawnFailure::Open(one_line(e)))?;
    let spawned = pair.slave.spawn_command(command);
    drop(pair.slave);
    let mut child = spawned.map_err(|e| SpawnFailure::Spawn(one_line(e)))?;
    let master = pair.master;
    let ends = master
        .try_clone_reader()
        .and_then(|reader| Ok((reader, master.take_writer()?)));
    match ends {
        Ok((reader, writer)) => Ok(Spawned {
            child,
            master,
            reader,
            writer,
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(SpawnFailure::Open(one_line(e)))
        }
    }
}

/// One line of text from an error chain (`portable-pty` reports over several lines).
pub(crate) fn one_line(e: impl fmt::Display) -> String {
    format!("{e:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Longest user name accepted (useradd's own limit on Linux; Windows allows 20, and
/// `session::user` there checks that too).
pub const MAX_USER_NAME_LEN: usize = 32;

/// Whether `name` is an acceptable user name: `[a-z_][a-z0-9_-]{0,31}`, nothing else
/// (no uppercase, dots, `$`, spaces or shell metacharacters). This is the crate's
/// canonical check; every place that accepts a user name uses it.
pub fn valid_user_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_USER_NAME_LEN
                && matches!(first, b'a'..=b'z' | b'_')
                && rest
                    .iter()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        }
        None => false,
    }
}

/// Whether `ssm-user` gets administrative rights when the daemon creates it: on Linux a
/// `NOPASSWD:ALL` sudoers drop-in, on Windows membership of the local Administrators
/// group (upstream does both by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SudoPolicy {
    /// No administrative rights; a stale sudoers drop-in written by an earlier run is
    /// removed.
    None,
    /// `ssm-user ALL=(ALL) NOPASSWD:ALL` (Linux) / Administrators (Windows), as upstream
    /// (the default).
    #[default]
    NoPasswd,
}

impl SudoPolicy {
    /// The configuration spelling: `none` or `nopasswd`.
    pub fn as_str(self) -> &'static str {
        match self {
            SudoPolicy::None => "none",
            SudoPolicy::NoPasswd => "nopasswd",
        }
    }
}

impl fmt::Display for SudoPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sudo policy that is neither `none` nor `nopasswd`.
#[derive(Debug, thiserror::Error)]
#[error("invalid sudo policy {value:?}: use none or nopasswd")]
pub struct InvalidSudoPolicy {
    /// The rejected value.
    pub value: String,
}

impl FromStr for SudoPolicy {
    type Err = InvalidSudoPolicy;

    /// Accepts `none` and `nopasswd` (ASCII case ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("none") {
            Ok(SudoPolicy::None)
        } else if s.eq_ignore_ascii_case("nopasswd") {
            Ok(SudoPolicy::NoPasswd)
        } else {
            Err(InvalidSudoPolicy {
                value: s.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_policy_parse() {
        assert_eq!(SudoPolicy::default(), SudoPolicy::NoPasswd);
        assert_eq!("none".parse::<SudoPolicy>().unwrap(), SudoPolicy::None);
        assert_eq!(
            "nopasswd".parse::<SudoPolicy>().unwrap(),
            SudoPolicy::NoPasswd
        );
        assert_eq!(
            "NOPASSWD".parse::<SudoPolicy>().unwrap(),
            SudoPolicy::NoPasswd
        );
        for policy in [SudoPolicy::None, SudoPolicy::NoPasswd] {
            assert_eq!(policy.to_string().parse::<SudoPolicy>().unwrap(), policy);
        }
        let err = "all".parse::<SudoPolicy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid sudo policy \"all\": use none or nopasswd"
        );
    }

    #[test]
    fn exit_status_text() {
        let code = ExitStatus {
            code: Some(3),
            signal: None,
        };
        assert_eq!(code.to_string(), "exit code 3");
        assert!(!code.success());
        let killed = ExitStatus {
            code: None,
            signal: Some("SIGKILL".into()),
        };
        assert_eq!(killed.to_string(), "killed by SIGKILL");
        assert!(ExitStatus {
            code: Some(0),
            signal: None
        }
        .success());
    }
}
