//! The layout of one recording's directory, `<state>/recordings/<id>/`: the file names,
//! the acknowledgement files of the sinks, and [`write_atomic`] (owner-only, atomic).
//!
//! Who writes what: the recorder (`agent::recording`) writes the spool, the derived files
//! and `session.json`; the sinks (`delivery`) write their acknowledged positions
//! (`stream.ack`, `s3.ack`, `upload.ack`); the agent writes `delivery.json` when delivery
//! is done. A recording without `delivery.json` is unsettled (`agent::recovery`).

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
}
