//! A cgroup v2 per session: membership the session user cannot leave, and an end that
//! reaches every process, `setsid` or not (`audit-notes.md` §3).
//!
//! The agent (root) creates one directory per session under its own part of the cgroup
//! v2 tree; the `__exec-as` shim, still root, moves itself into it before it drops
//! privileges and executes the shell (`session::pty`), so everything the session starts
//! is born inside. A process leaves a cgroup only by a write to another cgroup's
//! `cgroup.procs`, which needs write access to the common ancestor's: the session user
//! cannot leave (root can, and is recorded by the fork tree all the same). At the end the
//! agent writes `cgroup.kill` (Linux 5.14; before it, every listed process is killed in
//! a loop until none is left), waits until `cgroup.events` says `populated 0` and removes
//! the directory.
//!
//! Where the directories live: under the cgroup the agent itself runs in — with systemd,
//! the service's own cgroup, which the unit delegates to it (`Delegate=yes`, the
//! "island" of systemd's `CGROUP_DELEGATION.md`) — or, when the agent runs in the root
//! cgroup (no systemd, as on the test VM), under `session-agent` at the top of the
//! cgroup v2 mount, found in `/proc/self/mountinfo` (hybrid hosts mount it at
//! `/sys/fs/cgroup/unified`, so it is never assumed). Each agent instance keeps its
//! sessions in a directory named after its state directory, so agents with different
//! state directories (tests run many) never touch each other's, and a restarted agent
//! finds what its crashed predecessor left ([`Sessions::leftovers`]).
//!
//! No controller is enabled: nothing is limited, only grouped (a per-session `pids.max`
//! needs the pids controller in the v2 tree, which hybrid and cgroup v1 hosts bind to
//! v1; noted in the README). Plain files through `std::fs`: the crate-sized alternatives
//! (`cgroups-rs`) are built around resource controllers for container runtimes, and the
//! four files used here need nothing of them.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup v2 mount point from `/proc/self/mountinfo`'s text (the first `cgroup2`
/// file system), with the kernel's octal escapes (`\040` for a space) undone.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional...] - fstype source ...`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape(left.split_whitespace().nth(4)?)))
    })
}

/// A process's cgroup v2 path (relative to the mount, starting with `/`) from its
/// `/proc/PID/cgroup` text: the `0::` line (also right on hybrid hosts).
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A session id as a directory name: letters, digits, `-`, `_` and `.` kept, anything
/// else `_`, at most 100 bytes (session ids come from the service; a name is never a
/// path).
pub fn dir_name(session_id: &str) -> String {
    let mut name: String = session_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if name.chars().all(|c| c == '.') {
        name = format!("_{name}");
    }
    format!("session-{name}")
}

/// A short stable name for an agent instance, from its state directory (FNV-1a, which is
/// enough to tell directories apart; nothing depends on it being secret).
pub fn instance_name(state_dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("agent-{h:016x}")
}

/// Why sessions cannot have a cgroup here (said once at start).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// No cgroup v2 file system is mounted.
    #[error(
        "no cgroup v2 file system is mounted; processes that call setsid can outlive their session"
    )]
    NoCgroup2,
    /// The agent's own cgroup could not be read.
    #[error("the agent's own cgroup could not be read ({0})")]
    OwnCgroup(String),
    /// The directory for the sessions could not be made (not root, not delegated).
    #[error("cannot create the sessions' cgroup {} ({source}); with systemd, the unit needs Delegate=yes", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The agent's cgroup directory for its sessions.
#[derive(Debug, Clone)]
pub struct Sessions {
    /// The cgroup v2 mount point.
    mount: PathBuf,
    /// `mount` + the instance's directory.
    dir: PathBuf,
}

impl Sessions {
    /// Finds the cgroup v2 mount and the agent's own cgroup, and creates the instance's
    /// directory for `state_dir`.
    ///
    /// # Errors
    /// See [`Unavailable`].
    pub fn open(state_dir: &Path) -> Result<Self, Unavailable> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Unavailable::OwnCgroup(e.to_string()))?;
        let mount = cgroup2_mount(&mountinfo).ok_or(Unavailable::NoCgroup2)?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| Unavailable::OwnCgroup(e.to_string()))?;
        let own = v2_path(&own)
            .ok_or_else(|| Unavailable::OwnCgroup("no cgroup v2 line".into()))?
            .trim_start_matches('/')
            .to_owned();
        let parent = if own.is_empty() {
            mount.join("session-agent")
        } else {
            mount.join(own)
        };
        Self::at(&mount, &parent.join(instance_name(state_dir)))
    }

    /// The sessions' directory `dir` inside the cgroup v2 file system mounted at `mount`
    /// (created when missing).
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn at(mount: &Path, dir: &Path) -> Result<Self, Unavailable> {
        std::fs::create_dir_all(dir).map_err(|source| Unavailable::Create {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            mount: mount.to_owned(),
            dir: dir.to_owned(),
        })
    }

    /// The directory holding the sessions' cgroups.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new (empty) cgroup for `session_id`. An existing one of the same name (a
    /// session id seen again) is emptied first.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn create(&self, session_id: &str) -> std::io::Result<SessionCgroup> {
        let dir = self.dir.join(dir_name(session_id));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let old = SessionCgroup {
                    dir: dir.clone(),
                    relative: String::new(),
                };
                old.kill_all(Duration::from_secs(2));
                std::fs::create_dir(&dir)?;
            }
            Err(e) => return Err(e),
        }
        let relative = format!(
            "/{}",
            dir.strip_prefix(&self.mount)
                .unwrap_or(&dir)
                .to_string_lossy()
                .trim_start_matches('/')
        );
        Ok(SessionCgroup { dir, relative })
    }

    /// The session cgroups left populated by an earlier run of this agent (it was killed
    /// or crashed; the unit's `KillMode=process` leaves sessions running): each one's
    /// processes are killed, its directory removed; what was found is returned as
    /// (cgroup name, pids that were alive) for the log.
    pub fn leftovers(&self) -> Vec<(String, Vec<u32>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let cg = SessionCgroup {
                dir: path,
                relative: String::new(),
            };
            let alive = cg.pids();
            cg.kill_all(Duration::from_secs(5));
            if !alive.is_empty() {
                found.push((entry.file_name().to_string_lossy().into_owned(), alive));
            }
        }
        found
    }

    /// Removes the instance's directory when no session is left in it (at shutdown).
    pub fn close(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The processes in the cgroup directory `dir` now (none when it cannot be read).
pub fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// One session's cgroup.
#[derive(Debug, Clone)]
pub struct SessionCgroup {
    dir: PathBuf,
    /// The path as `/proc/PID/cgroup` shows it.
    relative: String,
}

/// What [`SessionCgroup::kill_all`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Killed {
    /// Processes that were alive in the cgroup when the kill began.
    pub pids: Vec<u32>,
    /// Processes still there when the wait ended (stuck in the kernel, D state).
    pub left: Vec<u32>,
    /// The directory was removed.
    pub removed: bool,
}

impl SessionCgroup {
    /// The directory (its `cgroup.procs` is what the shim writes itself into).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup as `/proc/PID/cgroup` names it (`/session-agent/agent-…/session-…`).
    pub fn relative(&self) -> &str {
        &self.relative
    }

    /// The processes in it now.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.dir)
    }

    fn populated(&self) -> Option<bool> {
        let events = std::fs::read_to_string(self.dir.join("cgroup.events")).ok()?;
        events
            .lines()
            .find_map(|l| l.strip_prefix("populated "))
            .map(|v| v.trim() == "1")
    }

    /// Ends every process in the cgroup — also those that called `setsid` or were
    /// re-parented to init — waits up to `wait` for them to be gone, and removes the
    /// directory.
    pub fn kill_all(&self, wait: Duration) -> Killed {
        let pids = self.pids();
        let kill_file = self.dir.join("cgroup.kill");
        let by_kernel = kill_file.exists() && std::fs::write(&kill_file, "1").is_ok();
        let deadline = Instant::now() + wait;
        loop {
            if !by_kernel {
                // Before Linux 5.14: kill what is listed, again until nothing is (a
                // process forked meanwhile is listed on the next round).
                for pid in self.pids() {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let empty = match self.populated() {
                Some(p) => !p,
                None => self.pids().is_empty(),
            };
            if empty || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let removed = std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists();
        Killed {
            pids,
            left: if removed { Vec::new() } else { self.pids() },
            removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_wherever_it_is() {
        let hybrid = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let spaced = "41 31 0:38 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(
            cgroup2_mount("41 31 0:38 / /sys/fs/cgroup rw - cgroup cgroup rw\n"),
            None
        );
        assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
    }

    #[test]
    fn a_processs_v2_cgroup_is_its_zero_line() {
        assert_eq!(
            v2_path("9:name=systemd:/\n4:memory:/x\n0::/a/b\n"),
            Some("/a/b")
        );
        assert_eq!(v2_path("0::/\n"), Some("/"));
        assert_eq!(v2_path("4:memory:/x\n"), None);
    }

    #[test]
    fn a_session_id_is_never_a_path() {
        assert_eq!(dir_name("alice-0123abc"), "session-alice-0123abc");
        assert_eq!(dir_name("../../etc"), "session-.._.._etc");
        assert_eq!(dir_name(".."), "session-_..");
        assert_eq!(dir_name("a/b\0c"), "session-a_b_c");
        assert!(dir_name(&"x".repeat(1000)).len() <= 108);
        assert!(!dir_name("é/").contains('/'));
    }

    #[test]
    fn instances_are_told_apart_by_state_dir() {
        let a = instance_name(Path::new("/var/lib/session-agent"));
        assert_eq!(a, instance_name(Path::new("/var/lib/session-agent")));
        assert_ne!(a, instance_name(Path::new("/tmp/other")));
        assert!(a.starts_with("agent-") && a.len() == 22);
    }

    /// A session cgroup on a directory that is not a cgroup (no `cgroup.kill`, no
    /// `cgroup.events`): the kill loop finds nothing and the directory is removed.
    #[test]
    fn killing_an_empty_group_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let sessions = Sessions::at(tmp.path(), &tmp.path().join("agent-x")).unwrap();
        let cg = sessions.create("s-1").unwrap();
        assert_eq!(cg.relative(), "/agent-x/session-s-1");
        assert!(cg.dir().is_dir());
        let killed = cg.kill_all(Duration::from_millis(50));
        assert_eq!(
            killed,
            Killed {
                pids: vec![],
                left: vec![],
                removed: true
            }
        );
        assert!(sessions.leftovers().is_empty());
        sessions.close();
        assert!(!tmp.path().join("agent-x").exists());
    }
}
