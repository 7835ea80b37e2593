//! The layout of one recording's directory, `<state>/recordings/<id>/`: the file names,
//! the acknowledgement files of the sinks, and [`write_atomic`] (owner-only, atomic).
//!
//! Who writes what: the recorder (`agent::recording`) writes the spool, the derived files,
//! `session.json` and, once the session's end is derived, `summary.json` (rewritten when
//! delivery settles); the sinks (`delivery`) write their acknowledged positions
//! (`stream.ack`, `s3.ack`, `upload.ack`); the agent writes `delivery.json` when delivery
//! is done. A recording without `delivery.json` is unsettled (`agent::recovery`).
//!
//! While the agent records a session it holds a [`LiveMark`] on its spool (a shared
//! `flock`, released by the kernel when the agent dies, `kill -9` included), so a reader
//! can tell a live recording from one a crash left behind ([`is_live`]).

use std::fs::OpenOptions;
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the raw timed stream in a recording directory.
pub const EVENTS_FILE: &str = "events.spool";
/// Name of the streamer's queue in a recording directory.
pub const STREAM_FILE: &str = "stream.jsonl";
/// Name of the delivery report written when delivery finishes.
pub const STATUS_FILE: &str = "delivery.json";
/// Name of the recording's delivery instructions (`agent::recording::Meta`).
pub const META_FILE: &str = "session.json";
/// The streamer's acknowledged position: the last stream record stored in CloudWatch.
pub const STREAM_ACK: &str = "stream.ack";
/// Events of the upload at close already stored in CloudWatch.
pub const UPLOAD_ACK: &str = "upload.ack";
/// S3 keys already uploaded.
pub const S3_ACK: &str = "s3.ack";
/// The recording's summary (`recorder::summary`), written when the session's end is
/// derived and rewritten when delivery settles.
pub const SUMMARY_FILE: &str = "summary.json";

/// A file or directory name for a session id: `[A-Za-z0-9._-]` kept, anything else
/// (including `/`) replaced by `_`, a leading `.` too, at most 128 bytes; never empty.
pub fn safe_name(session_id: &str) -> String {
    let mut name: String = session_id
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with('.') {
        name.replace_range(0..1, "_");
    }
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// Owner-only (0600) files where the platform has modes. On Windows there are no modes:
/// files inherit the state directory's ACL (SYSTEM and Administrators only, set by
/// `session-agent service install`).
pub(crate) fn owner_only(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    options.mode(0o600);
    options
}

/// Replaces `path` with `bytes` (owner-only), atomically: a reader sees the old or the new
/// content, never a mix, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        owner_only(OpenOptions::new().create(true).write(true).truncate(true)).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// The paths of one recording.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The recording's directory.
    pub dir: PathBuf,
    /// The raw timed stream.
    pub events: PathBuf,
    /// The clean transcript.
    pub transcript: PathBuf,
    /// The asciicast.
    pub cast: PathBuf,
    /// The streamer's queue.
    pub stream: PathBuf,
}

impl Paths {
    /// The layout under `recordings_root` for a session.
    pub fn new(recordings_root: &Path, session_id: &str) -> Self {
        let name = safe_name(session_id);
        let dir = recordings_root.join(&name);
        Self {
            events: dir.join(EVENTS_FILE),
            transcript: dir.join(format!("{name}.log")),
            cast: dir.join(format!("{name}.cast")),
            stream: dir.join(STREAM_FILE),
            dir,
        }
    }
}

/// Held while a recording is being made (see the module doc): a shared lock on its
/// spool through a descriptor of its own. Dropped, or the process gone, it is released.
#[derive(Debug)]
pub struct LiveMark {
    #[cfg(unix)]
    _file: std::fs::File,
}

impl LiveMark {
    /// Marks the spool at `path` live. A reader probing at the same instant holds the
    /// lock for microseconds: tried a few times over a few milliseconds.
    ///
    /// # Errors
    /// The spool cannot be opened, or the lock not taken (the recording is then not
    /// shown as live; it is recorded all the same).
    pub fn take(path: &Path) -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use rustix::fs::{flock, FlockOperation};
            let file = std::fs::File::open(path)?;
            let mut tries = 0;
            loop {
                match flock(&file, FlockOperation::NonBlockingLockShared) {
                    Ok(()) => return Ok(Self { _file: file }),
                    Err(e) if e == rustix::io::Errno::WOULDBLOCK && tries < 10 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            Ok(Self {})
        }
    }
}

/// Whether the agent is recording into the spool at `path` now (a [`LiveMark`] is held
/// on it); `None` when it cannot be told (the file cannot be opened, or not on Unix).
pub fn is_live(path: &Path) -> Option<bool> {
    #[cfg(unix)]
    {
        use rustix::fs::{flock, FlockOperation};
        let file = std::fs::File::open(path).ok()?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let _ = flock(&file, FlockOperation::Unlock);
                Some(false)
            }
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Some(true),
            Err(_) => None,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_cannot_escape_the_recordings_dir() {
        assert_eq!(safe_name("alice-0123abcd"), "alice-0123abcd");
        assert_eq!(safe_name("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(safe_name(".hidden"), "_hidden");
        assert_eq!(safe_name(""), "_");
        assert_eq!(safe_name("a/b\0c"), "a_b_c");
        assert_eq!(safe_name(&"x".repeat(500)).len(), 128);
    }

    #[cfg(unix)]
    #[test]
    fn a_live_mark_shows_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join(EVENTS_FILE);
        std::fs::write(&spool, b"SASPOOL1").unwrap();
        assert_eq!(is_live(&spool), Some(false));
        let mark = LiveMark::take(&spool).unwrap();
        assert_eq!(is_live(&spool), Some(true));
        // Probing does not take it away.
        assert_eq!(is_live(&spool), Some(true));
        drop(mark);
        assert_eq!(is_live(&spool), Some(false));
        assert_eq!(is_live(&dir.path().join("missing")), None);
    }
}
