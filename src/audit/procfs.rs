//! What a process is running, read from `/proc` right after the kernel reported its
//! exec (`audit-notes.md` §2.4).
//!
//! The exec event carries only the pid: argv, the executable, the working directory and
//! the user ids are read from `/proc/PID` while the process lives. Everything is read
//! through one directory descriptor opened first, so a pid recycled meanwhile cannot
//! answer for the old process (a new process would be a new `/proc/PID` directory). A
//! process gone (or a zombie) before its details were read is reported as such, with
//! what could be read: the caller records it with what the event stream knows and marks
//! it, never drops it. The argument area is read up to [`ARGV_MAX`] bytes (it can be
//! megabytes) and marked when cut.

use std::os::fd::OwnedFd;

/// Bytes of a process's argument area read at most.
pub const ARGV_MAX: usize = 64 * 1024;

/// A process's details.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// The arguments (lossy UTF-8), argv\[0\] first.
    pub argv: Vec<String>,
    /// The argument area was longer than [`ARGV_MAX`].
    pub argv_cut: bool,
    /// The executable's path.
    pub exe: Option<String>,
    /// The working directory.
    pub cwd: Option<String>,
    /// Real and effective uid.
    pub uids: Option<(u32, u32)>,
    /// The command name (kept by the kernel even for a zombie).
    pub comm: Option<String>,
    /// The parent process.
    pub ppid: Option<u32>,
    /// The audit login uid (`None`: unset, 4294967295, or unreadable).
    pub loginuid: Option<u32>,
    /// The audit session id (`None`: unset or unreadable).
    pub audit_session: Option<u32>,
}

impl Details {
    /// Whether the process was gone (or a zombie) before its arguments could be read.
    pub fn incomplete(&self) -> bool {
        self.argv.is_empty()
    }
}

/// The NUL-separated argument area as arguments (a trailing NUL ends the last one).
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Real and effective uid from `/proc/PID/status` (`Uid:\treal\teffective\tsaved\tfs`).
pub fn parse_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(str::parse::<u32>);
    Some((ids.next()?.ok()?, ids.next()?.ok()?))
}

/// The parent pid from `/proc/PID/status` (`PPid:\tN`).
pub fn parse_ppid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// An audit id file (`loginuid`, `sessionid`): a number, 4294967295 meaning unset.
pub fn parse_audit_id(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|&v| v != u32::MAX)
}

/// `pid`'s cgroup v2 path alone (one small read; for deciding membership at exec).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    super::cgroup::v2_path(&text).map(str::to_owned)
}

/// What [`read`] reads beyond the arguments, the executable and the working directory:
/// what a caller following the fork tree already knows (inherited at fork, updated by
/// the kernel's uid events) it need not read for every exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// Uids and parent (`status`, the costliest file to generate).
    pub status: bool,
    /// The audit login uid and session id.
    pub audit_ids: bool,
}

impl Want {
    /// Everything.
    pub const ALL: Self = Self {
        status: true,
        audit_ids: true,
    };
}

/// Reads `pid`'s details (see [`Want`]; the command name only when the arguments are
/// gone); `None` when its `/proc` directory is already gone.
pub fn read(pid: u32, want: Want) -> Option<Details> {
    use rustix::fs::{openat, readlinkat, Mode, OFlags, CWD};
    let dir: OwnedFd = openat(
        CWD,
        format!("/proc/{pid}"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let read_at = |name: &str, max: usize| -> Option<Vec<u8>> {
        let fd = openat(&dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
        let mut file = std::fs::File::from(fd);
        let mut buf = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(&mut file, u64::try_from(max).unwrap_or(u64::MAX) + 1),
            &mut buf,
        )
        .ok()?;
        Some(buf)
    };
    let link = |name: &str| -> Option<String> {
        readlinkat(&dir, name, Vec::new())
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    };
    let mut details = Details::default();
    if let Some(raw) = read_at("cmdline", ARGV_MAX) {
        details.argv_cut = raw.len() > ARGV_MAX;
        details.argv = parse_cmdline(&raw[..raw.len().min(ARGV_MAX)]);
    }
    details.exe = link("exe");
    details.cwd = link("cwd");
    if let Some(status) = want.status.then(|| read_at("status", 16 * 1024)).flatten() {
        let status = String::from_utf8_lossy(&status);
        details.uids = parse_uids(&status);
        details.ppid = parse_ppid(&status);
    }
    if want.audit_ids {
        let small =
            |name: &str| read_at(name, 64).map(|t| String::from_utf8_lossy(&t).into_owned());
        details.loginuid = small("loginuid").as_deref().and_then(parse_audit_id);
        details.audit_session = small("sessionid").as_deref().and_then(parse_audit_id);
    }
    if details.argv.is_empty() {
        details.comm =
            read_at("comm", 64).map(|c| String::from_utf8_lossy(&c).trim_end().to_owned());
    }
    Some(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_and_uids_parse_as_the_kernel_writes_them() {
        assert_eq!(
            parse_cmdline(b"curl\0-u\0user:pass\0https://x\0"),
            ["curl", "-u", "user:pass", "https://x"]
        );
        assert_eq!(parse_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
        assert!(parse_cmdline(b"").is_empty());
        assert_eq!(parse_cmdline(b"\xff\0"), ["\u{fffd}"]);
        assert_eq!(
            parse_uids("Name:\tid\nUid:\t65534\t0\t0\t0\nGid:\t1\t1\t1\t1\n"),
            Some((65534, 0))
        );
        assert_eq!(parse_uids("Name:\tx\n"), None);
        assert_eq!(parse_ppid("Name:\tx\nPPid:\t4242\nUid:\t0\n"), Some(4242));
        assert_eq!(parse_ppid("PPid:\tx\n"), None);
        assert_eq!(parse_audit_id("1000"), Some(1000));
        assert_eq!(parse_audit_id("4294967295"), None, "unset");
        assert_eq!(parse_audit_id("junk"), None);
    }

    #[test]
    fn a_live_process_is_read_and_a_gone_one_is_none() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 5; true", "an argument"])
            .current_dir("/tmp")
            .spawn()
            .unwrap();
        // Until its exec has happened, /proc shows the forked test binary.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let d = loop {
            let d = read(child.id(), Want::ALL).unwrap();
            if d.argv.first().is_some_and(|a| a == "/bin/sh")
                || std::time::Instant::now() > deadline
            {
                break d;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(
            d.argv,
            ["/bin/sh", "-c", "sleep 5; true", "an argument"],
            "{d:?}"
        );
        assert!(!d.argv_cut && !d.incomplete());
        assert!(d.exe.as_deref().is_some_and(|e| e.ends_with("sh")), "{d:?}");
        assert_eq!(d.cwd.as_deref(), Some("/tmp"));
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(d.uids, Some((me, nix::unistd::geteuid().as_raw())));
        assert_eq!(d.ppid, Some(std::process::id()));
        child.kill().unwrap();
        // Killed but not yet reaped: a zombie, whose arguments are gone but whose name
        // and ids are still there (the audit records it as incomplete, never drops it).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let zombie = loop {
            let d = read(child.id(), Want::ALL).unwrap();
            if d.incomplete() || std::time::Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(zombie.incomplete(), "{zombie:?}");
        assert_eq!(zombie.comm.as_deref(), Some("sh"));
        child.wait().unwrap();
        assert_eq!(read(child.id(), Want::ALL), None, "reaped: gone");
    }
}
