//! The few facts about the host the rest of the crate asks for, one function each, with
//! a Unix and a Windows answer: whether the daemon is privileged (root /
//! LocalSystem), the free space under a path, the host name, and the
//! default state directory. Everything platform-specific beyond these lives in
//! `session::pty`, `session::user` (one file per platform) and `windows`.

use std::io;
use std::path::{Path, PathBuf};

/// Whether the daemon may switch users and provision ssm-user: effective uid 0 on Unix;
/// LocalSystem on Windows (as the service runs; an elevated administrator lacks the
/// privileges to start a process as another user).
pub fn is_privileged() -> bool {
    #[cfg(unix)]
    {
        nix::unistd::geteuid().is_root()
    }
    #[cfg(windows)]
    {
        crate::windows::is_local_system()
    }
}

/// Bytes available to this process on the file system holding `path`.
///
/// # Errors
/// The file system cannot be queried.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    #[cfg(unix)]
    {
        // The statvfs field types are u64 on 64-bit Linux but narrower elsewhere.
        #[allow(clippy::useless_conversion)]
        nix::sys::statvfs::statvfs(path)
            .map(|st| {
                u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()))
            })
            .map_err(io::Error::from)
    }
    #[cfg(windows)]
    {
        crate::windows::free_bytes(path)
    }
}

/// The host name, if the system reports one.
pub fn hostname() -> Option<String> {
    #[cfg(unix)]
    {
        nix::unistd::gethostname().ok()?.into_string().ok()
    }
    #[cfg(windows)]
    {
        std::env::var("COMPUTERNAME").ok()
    }
}

/// Where state goes by default: for a privileged daemon the system location
/// (`/var/lib/session-agent`, `%ProgramData%\session-agent`), else the user's state
/// directory (`$XDG_STATE_HOME` or `~/.local/state`, `%LOCALAPPDATA%`), each with
/// `session-agent` appended and then `sub` (empty for the agent itself).
pub fn default_state_dir(sub: &str) -> PathBuf {
    let dir = if is_privileged() {
        system_state_dir()
    } else if cfg!(windows) {
        std::env::var_os("LOCALAPPDATA")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join("session-agent")
    } else {
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir)
            .join("session-agent")
    };
    if sub.is_empty() {
        dir
    } else {
        dir.join(sub)
    }
}

/// The system's state directory for the agent, whoever asks: `/var/lib/session-agent`,
/// or `%ProgramData%\session-agent` (where `service install`, run by an administrator,
/// prepares what the LocalSystem service will use).
pub fn system_state_dir() -> PathBuf {
    if cfg!(windows) {
        std::env::var_os("ProgramData")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
            .join("session-agent")
    } else {
        PathBuf::from("/var/lib/session-agent")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_the_temp_dir_is_reported() {
        assert!(free_bytes(&std::env::temp_dir()).unwrap() > 0);
        assert!(free_bytes(Path::new("/no/such/dir")).is_err());
    }

    #[test]
    fn default_state_dirs() {
        let agent = default_state_dir("");
        assert!(agent.ends_with("session-agent"));
        assert_eq!(default_state_dir("dev"), agent.join("dev"));
        #[cfg(unix)]
        if is_privileged() {
            assert_eq!(agent, Path::new("/var/lib/session-agent"));
        }
    }
}
