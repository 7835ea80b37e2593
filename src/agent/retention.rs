//! Retention and quota for local recordings (`<state>/recordings/`).
//!
//! A recording is deleted only once it is *settled*: its delivery finished and wrote
//! `delivery.json` saying everything it was asked to deliver arrived (a session without
//! remote destinations is settled when it ends). Settled recordings older than the
//! retention period (default 14 days, upstream's 336 h) are deleted; if the directory is
//! then still above its quota, the oldest settled recordings go first. Unsettled ones
//! (running, or delivery failed) are never deleted here: they are the only copy. A sweep
//! runs at start-up and after every session.
//!
//! [`plan`] is pure; [`sweep`] does the I/O.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// Retention settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Settled recordings older than this are deleted.
    pub retention: Duration,
    /// Total bytes the recordings directory should stay under (the spool quota: only
    /// recordings not yet delivered may keep it exceeded).
    pub quota_bytes: u64,
    /// Free space the recordings' file system must keep for a new session to be recorded
    /// durably.
    pub min_free_bytes: u64,
    /// Disk space reserved ahead of each running session's recording
    /// (`spool::reserve`), renewed as it grows and released at its end.
    pub headroom_bytes: u64,
    /// Refuse new sessions that cannot be recorded durably (fail-closed) instead of
    /// running them with a warning (fail-open, the default).
    pub fail_closed: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(14 * 24 * 3600),
            quota_bytes: 2 * 1024 * 1024 * 1024,
            min_free_bytes: 256 * 1024 * 1024,
            headroom_bytes: 4 * 1024 * 1024,
            fail_closed: false,
        }
    }
}

/// One recording directory as the sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Directory name.
    pub name: String,
    /// Age since last modification.
    pub age: Duration,
    /// Bytes on disk.
    pub bytes: u64,
    /// Delivery finished and everything arrived.
    pub settled: bool,
}

/// What a sweep should delete, and whether the quota is still exceeded afterwards (only
/// unsettled recordings left to blame).
pub fn plan(mut entries: Vec<Entry>, policy: Policy) -> (Vec<String>, bool) {
    let mut delete = Vec::new();
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    entries.retain(|e| {
        if e.settled && e.age >= policy.retention {
            total -= e.bytes;
            delete.push(e.name.clone());
            false
        } else {
            true
        }
    });
    // Oldest first.
    entries.sort_by_key(|e| std::cmp::Reverse(e.age));
    for e in entries.iter().filter(|e| e.settled) {
        if total <= policy.quota_bytes {
            break;
        }
        total -= e.bytes;
        delete.push(e.name.clone());
    }
    (delete, total > policy.quota_bytes)
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Whether `delivery.json` in `dir` says delivery finished completely.
pub fn is_settled(dir: &Path) -> bool {
    std::fs::read(dir.join(crate::spool::layout::STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("complete").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

const MIB: u64 = 1024 * 1024;

/// Why a new recording would not be durable (pure): the file system nearly full, or the
/// quota filled by recordings not yet delivered. `None` when all is well.
pub fn durability_verdict(free_bytes: u64, used_bytes: u64, policy: Policy) -> Option<String> {
    if free_bytes < policy.min_free_bytes {
        return Some(format!(
            "only {} MiB are free for recordings (at least {} MiB required: recording_min_free_mb)",
            free_bytes / MIB,
            policy.min_free_bytes / MIB
        ));
    }
    if used_bytes > policy.quota_bytes {
        return Some(format!(
            "recordings not yet delivered fill the recording quota ({} MiB of {} MiB: recording_quota_mb); they are kept until delivered",
            used_bytes / MIB,
            policy.quota_bytes / MIB
        ));
    }
    None
}

/// Checks, before a session starts, that its recording can be made durable under `root`:
/// the directory is writable, enough space is free, and the quota is not filled by
/// undelivered recordings (delivered ones are swept first). Blocking.
pub fn durability_problem(root: &Path, policy: Policy) -> Option<String> {
    let dir = root.display();
    if let Err(e) = super::recording::private_dir(root) {
        return Some(format!("cannot create the recordings directory {dir}: {e}"));
    }
    let probe = root.join(".write-probe");
    let written = std::fs::write(&probe, b"probe");
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = written {
        return Some(format!(
            "cannot write to the recordings directory {dir}: {e}"
        ));
    }
    let free = match crate::platform::free_bytes(root) {
        Ok(free) => free,
        Err(e) => return Some(format!("cannot tell the free space of {dir}: {e}")),
    };
    let used = |root: &Path| -> u64 {
        std::fs::read_dir(root)
            .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0)
    };
    if used(root) > policy.quota_bytes {
        sweep(root, policy);
    }
    durability_verdict(free, used(root), policy)
}

/// Applies [`plan`] to `root`; logs what it deleted and a quota still exceeded.
pub fn sweep(root: &Path, policy: Policy) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let now = SystemTime::now();
    let entries: Vec<Entry> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let path = e.path();
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            Entry {
                name: e.file_name().to_string_lossy().into_owned(),
                age,
                bytes: dir_size(&path),
                settled: is_settled(&path),
            }
        })
        .collect();
    let (delete, over) = plan(entries, policy);
    for name in delete {
        match std::fs::remove_dir_all(root.join(&name)) {
            Ok(()) => {
                tracing::info!(recording = %name, "Deleted a delivered recording (retention/quota)")
            }
            Err(e) => {
                tracing::warn!(recording = %name, error = %e, "Could not delete an old recording")
            }
        }
    }
    if over {
        tracing::warn!(dir = %root.display(), quota_bytes = policy.quota_bytes, "Recordings exceed their quota, and what remains is not yet delivered; nothing more is deleted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str, days: u64, bytes: u64, settled: bool) -> Entry {
        Entry {
            name: name.into(),
            age: Duration::from_secs(days * 24 * 3600),
            bytes,
            settled,
        }
    }

    #[test]
    fn durability_needs_free_space_and_room_in_the_quota() {
        let policy = Policy {
            quota_bytes: 100 * MIB,
            min_free_bytes: 10 * MIB,
            ..Policy::default()
        };
        assert_eq!(durability_verdict(10 * MIB, 100 * MIB, policy), None);
        let full = durability_verdict(9 * MIB, 0, policy).unwrap();
        assert!(full.starts_with("only 9 MiB are free"), "{full}");
        let over = durability_verdict(u64::MAX, 100 * MIB + 1, policy).unwrap();
        assert!(over.contains("100 MiB of 100 MiB"), "{over}");
    }

    #[test]
    fn the_durability_check_reads_the_real_directory() {
        let root = tempfile::tempdir().unwrap();
        let fine = Policy {
            min_free_bytes: 0,
            ..Policy::default()
        };
        assert_eq!(durability_problem(root.path(), fine), None);
        let impossible = Policy {
            min_free_bytes: u64::MAX,
            ..Policy::default()
        };
        let why = durability_problem(root.path(), impossible).unwrap();
        assert!(why.contains("MiB are free"), "{why}");
        // An undelivered recording over the quota is not swept away.
        let stuck = root.path().join("stuck");
        std::fs::create_dir(&stuck).unwrap();
        std::fs::write(stuck.join("events.spool"), vec![0u8; 2 * 1024 * 1024]).unwrap();
        let tight = Policy {
            quota_bytes: MIB,
            ..fine
        };
        let why = durability_problem(root.path(), tight).unwrap();
        assert!(why.contains("quota"), "{why}");
        assert!(stuck.exists());
    }

    #[test]
    fn old_settled_recordings_go_and_unsettled_ones_stay() {
        let policy = Policy {
            retention: Duration::from_secs(14 * 24 * 3600),
            quota_bytes: 1000,
            ..Policy::default()
        };
        let (delete, over) = plan(
            vec![
                e("old", 20, 10, true),
                e("old-undelivered", 30, 10, false),
                e("new", 1, 10, true),
            ],
            policy,
        );
        assert_eq!(delete, ["old"]);
        assert!(!over);
    }

    #[test]
    fn retention_zero_deletes_what_every_sink_has() {
        let policy = Policy {
            retention: Duration::ZERO,
            ..Policy::default()
        };
        let (delete, _) = plan(
            vec![e("now", 0, 10, true), e("pending", 0, 10, false)],
            policy,
        );
        assert_eq!(delete, ["now"]);
    }

    #[test]
    fn quota_deletes_oldest_settled_first() {
        let policy = Policy {
            retention: Duration::from_secs(14 * 24 * 3600),
            quota_bytes: 100,
            ..Policy::default()
        };
        let (delete, over) = plan(
            vec![
                e("a", 3, 60, true),
                e("b", 5, 60, true),
                e("c", 1, 60, true),
            ],
            policy,
        );
        assert_eq!(delete, ["b", "a"]);
        assert!(!over);
        let (delete, over) = plan(vec![e("x", 3, 500, false), e("y", 5, 60, true)], policy);
        assert_eq!(delete, ["y"]);
        assert!(over);
    }

    #[test]
    fn sweep_deletes_on_disk() {
        let root = tempfile::tempdir().unwrap();
        for (name, settled) in [("done", true), ("pending", false)] {
            let d = root.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("x.log"), vec![b'x'; 100]).unwrap();
            if settled {
                std::fs::write(
                    d.join(crate::spool::layout::STATUS_FILE),
                    r#"{"complete":true}"#,
                )
                .unwrap();
            }
        }
        sweep(
            root.path(),
            Policy {
                retention: Duration::from_secs(3600),
                quota_bytes: 10,
                ..Policy::default()
            },
        );
        assert!(!root.path().join("done").exists());
        assert!(root.path().join("pending").exists());
    }
}
