//! `session-agent sessions`: the local recordings, newest first, and finding one by its
//! session id (`transcript`, `replay`, `verify` and `audit` take an id as well as a path).
//!
//! A recording is `<state>/recordings/<id>/` ([`crate::spool::layout`]). What a row says
//! comes from its `summary.json` when it has one (the session ended and was derived);
//! otherwise from its `session.json` and the start record at the head of its spool — a
//! session still running, or one a crash left behind that the agent's next start will
//! recover, has no summary yet — and from the live mark ([`is_live`]) for which of the
//! two it is. Never more: at most [`SPOOL_HEAD_BYTES`] of each spool and
//! [`SMALL_FILE_BYTES`] of each small file are read, so listing costs the same whatever
//! the recordings' sizes (what is kept to sort them is a few hundred bytes a recording).
//! Quarantined recordings (`<state>/quarantine/`) are listed too.
//!
//! A directory that is not a recording, or cannot be read, is listed as unreadable with
//! the reason (whatever the filters: it cannot be ruled out); nothing in a recording
//! directory can make this panic, and every text shown is escaped for the terminal.
//!
//! The pure parts (times, filters, rows, the table) are functions of their arguments;
//! the file reads are in [`read_recording`] and [`list`].

use crate::recorder::audit_table::{duration, escape};
use crate::recorder::summary::SessionSummary;
use crate::recorder::{Event, EventKind};
use crate::spool::layout::{is_live, safe_name, EVENTS_FILE, META_FILE, STATUS_FILE, SUMMARY_FILE};
use crate::spool::reader::Reader;
use clap::Args;
use serde::Serialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Most bytes read of a spool to find its start record.
pub const SPOOL_HEAD_BYTES: u64 = 64 * 1024;
/// Most bytes read of a `summary.json`, `session.json` or `delivery.json`.
pub const SMALL_FILE_BYTES: u64 = 1024 * 1024;
/// The state directory's subdirectory of quarantined recordings (`agent::recovery`).
const QUARANTINE_DIR: &str = "quarantine";

/// `--state-dir`, as `run` takes it.
#[derive(Debug, Clone, Default, Args)]
pub struct StateDirArg {
    /// The agent's state directory, where session ids are looked up
    /// (STATE_DIR/recordings/ID) [default: as `run`: /var/lib/session-agent as root,
    /// else $XDG_STATE_HOME/session-agent; `dev` run by a user records under
    /// $XDG_STATE_HOME/session-agent/dev/agent: give that].
    #[arg(long, env = "SESSION_AGENT_STATE_DIR", value_name = "STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateDirArg {
    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| crate::platform::default_state_dir(""))
    }

    /// Where its recordings are.
    pub fn recordings(&self) -> PathBuf {
        self.state_dir().join("recordings")
    }
}

/// Whether `id` can name a recording directory: a session id, not a path (no separator,
/// not `.` or `..`, only the characters a recording directory's name keeps).
///
/// # Errors
/// Why it cannot.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an empty session id".into());
    }
    if id.contains(['/', '\\']) || id == "." || id == ".." {
        return Err(format!(
            "{:?} is not a session id (a session id has no path separator and is not . or ..)",
            escape(id)
        ));
    }
    if safe_name(id) != id {
        return Err(format!(
            "{:?} is not a session id (letters, digits, '.', '_' and '-' only, not starting with '.', at most 128)",
            escape(id)
        ));
    }
    Ok(())
}

/// What a recording argument names: an existing path as it is (a directory for the
/// recording in it), else a session id under `recordings`. Returns the directory or
/// file.
///
/// # Errors
/// Neither an existing path nor a valid id of an existing recording; the text says where
/// it looked and what to do.
pub fn locate(arg: &str, recordings: &Path) -> Result<PathBuf, String> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_owned());
    }
    if arg.contains(['/', '\\']) {
        return Err(format!("cannot open {arg}: no such file or directory"));
    }
    check_id(arg)?;
    let dir = recordings.join(arg);
    if dir.is_dir() {
        return Ok(dir);
    }
    Err(format!(
        "no recording of session {arg} in {} (nor a file of that name here); `session-agent sessions` lists the recordings there, --state-dir looks elsewhere",
        recordings.display()
    ))
}

/// The spool of what [`locate`] found: the file itself, or a directory's `events.spool`.
///
/// # Errors
/// See [`locate`].
pub fn locate_spool(arg: &str, recordings: &Path) -> Result<PathBuf, String> {
    let found = locate(arg, recordings)?;
    Ok(if found.is_dir() {
        found.join(EVENTS_FILE)
    } else {
        found
    })
}

/// A recording's state, as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The agent is recording it now.
    Live,
    /// The session ended and the recording is whole.
    Ended,
    /// The agent stopped before the session ended (recovered with an end saying so, or
    /// not recovered yet: no summary).
    Interrupted,
    /// The session ended, but parts of it were not recorded (a gap, a write that failed).
    Incomplete,
    /// Live or interrupted: no summary, and the live mark cannot be read here.
    Unknown,
}

impl Status {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Ended => "ended",
            Self::Interrupted => "interrupted",
            Self::Incomplete => "incomplete",
            Self::Unknown => "unknown",
        }
    }
}

/// What is known of one recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    /// The session.
    pub session_id: String,
    /// Its owner.
    pub owner: String,
    /// The identity that started it.
    pub user: String,
    /// The account it ran as.
    pub run_as_user: String,
    /// The node.
    pub target: String,
    /// Start (RFC 3339).
    pub start: String,
    /// Start (Unix ms).
    pub start_unix_ms: u64,
    /// End (Unix ms), when it ended.
    pub end_unix_ms: Option<u64>,
    /// How long it lasted, or has run so far (live).
    pub duration_ms: Option<u64>,
    /// Its state.
    pub status: Status,
    /// Where it went, in one line (`local only`, `s3 delivered, cloudwatch pending`).
    pub delivery: String,
    /// Read from `summary.json` (false: from `session.json` and the spool's start).
    pub summary: bool,
}

/// One directory of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The directory.
    pub dir: PathBuf,
    /// It is under `quarantine/` (not delivered, never retried).
    pub quarantined: bool,
    /// What it holds, or why it cannot be read.
    pub info: Result<Info, String>,
}

/// Reads a file of at most [`SMALL_FILE_BYTES`]; `Ok(None)` when it does not exist.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {name}: {e}")),
    };
    let mut bytes = Vec::new();
    file.take(SMALL_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if bytes.len() as u64 > SMALL_FILE_BYTES {
        return Err(format!("{name} is larger than {SMALL_FILE_BYTES} bytes"));
    }
    Ok(Some(bytes))
}

/// What the agent wrote of one recording, read within the bounds of the module doc;
/// `now_ms` dates a live session's duration.
///
/// # Errors
/// Not a recording, or unreadable: why.
pub fn read_recording(dir: &Path, now_ms: u64) -> Result<Info, String> {
    if let Some(bytes) = read_small(&dir.join(SUMMARY_FILE))? {
        let summary: SessionSummary = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{SUMMARY_FILE} is not valid: {e}"))?;
        return Ok(from_summary(&summary));
    }
    let spool = dir.join(EVENTS_FILE);
    let file = match std::fs::File::open(&spool) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "not a recording: no {EVENTS_FILE} and no {SUMMARY_FILE}"
            ))
        }
        Err(e) => return Err(format!("cannot read {EVENTS_FILE}: {e}")),
    };
    let start = {
        let mut reader =
            Reader::new(file.take(SPOOL_HEAD_BYTES)).map_err(|e| format!("{EVENTS_FILE}: {e}"))?;
        match reader.next_event(None) {
            Ok(Some((
                Event {
                    kind: EventKind::Start(start),
                    ..
                },
                _,
            ))) => start,
            Ok(Some(_)) => {
                return Err(format!(
                    "{EVENTS_FILE}: its first record is not the session's start"
                ))
            }
            Ok(None) => return Err(format!("{EVENTS_FILE} holds no events yet")),
            Err(e) => return Err(format!("{EVENTS_FILE}: {e}")),
        }
    };
    let meta: Option<serde_json::Value> = read_small(&dir.join(META_FILE))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let settled: Option<serde_json::Value> = read_small(&dir.join(STATUS_FILE))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let status = match (&settled, is_live(&spool)) {
        (_, Some(true)) => Status::Live,
        // Delivered before summaries were written.
        (Some(d), _) if d["recording_complete"] == true => Status::Ended,
        (Some(_), _) => Status::Incomplete,
        (None, Some(false)) => Status::Interrupted,
        (None, None) => Status::Unknown,
    };
    let delivery = match (&settled, &meta) {
        (Some(d), _) if d["complete"] == true => "delivered".to_owned(),
        (Some(_), _) => "failed".to_owned(),
        (None, Some(m)) if m["s3"].is_object() || m["cwl"].is_object() => "pending".to_owned(),
        (None, Some(_)) => "local only".to_owned(),
        (None, None) => "unknown".to_owned(),
    };
    Ok(Info {
        session_id: start.session_id,
        owner: start.owner,
        user: start.user,
        run_as_user: start.run_as_user,
        target: start.target,
        start: crate::timefmt::rfc3339(start.started_unix_ms, false),
        start_unix_ms: start.started_unix_ms,
        end_unix_ms: None,
        duration_ms: (status == Status::Live).then(|| now_ms.saturating_sub(start.started_unix_ms)),
        status,
        delivery,
        summary: false,
    })
}

/// A row from a recording's summary.
pub fn from_summary(s: &SessionSummary) -> Info {
    let status = if s.interrupted {
        Status::Interrupted
    } else if s.complete {
        Status::Ended
    } else {
        Status::Incomplete
    };
    Info {
        session_id: s.session_id.clone(),
        owner: s.owner.clone(),
        user: s.user.clone(),
        run_as_user: s.run_as_user.clone(),
        target: s.target.clone(),
        start: crate::timefmt::rfc3339(s.start_unix_ms, false),
        start_unix_ms: s.start_unix_ms,
        end_unix_ms: s.end_unix_ms,
        duration_ms: s.duration_ms,
        status,
        delivery: s.delivery.short(),
        summary: true,
    }
}

/// Every recording directory under `state_dir` (recordings, then quarantine), read.
///
/// # Errors
/// The recordings directory itself cannot be read (a missing one is an empty list).
pub fn list(state_dir: &Path, now_ms: u64) -> Result<Vec<Listed>, String> {
    let mut out = Vec::new();
    for (sub, quarantined) in [("recordings", false), (QUARANTINE_DIR, true)] {
        let root = state_dir.join(sub);
        let entries = match std::fs::read_dir(&root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", root.display())),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", root.display()))?;
            let dir = entry.path();
            let info = match entry.file_type() {
                Ok(t) if t.is_dir() => read_recording(&dir, now_ms),
                Ok(t) if t.is_symlink() => Err("a symbolic link (not followed)".into()),
                // Files beside the recordings (a temporary file) are not recordings.
                Ok(_) => continue,
                Err(e) => Err(e.to_string()),
            };
            out.push(Listed {
                dir,
                quarantined,
                info,
            });
        }
    }
    Ok(out)
}

/// The listing's filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Sessions active at or after (Unix ms).
    pub since: Option<u64>,
    /// Sessions started at or before (Unix ms).
    pub until: Option<u64>,
    /// Owner, identity or run-as user.
    pub user: Option<String>,
}

impl Filter {
    /// Whether a recording passes: it was active at some time in the window (started at
    /// or before `until`, and ended at or after `since` or not ended), and `user` names
    /// its owner (also as the last part of an ARN, `…/alice`), identity or run-as user.
    pub fn admits(&self, info: &Info) -> bool {
        let end = info
            .end_unix_ms
            .or_else(|| {
                info.duration_ms
                    .map(|d| info.start_unix_ms.saturating_add(d))
            })
            .unwrap_or(u64::MAX);
        let within = self.since.is_none_or(|since| end >= since)
            && self.until.is_none_or(|until| info.start_unix_ms <= until);
        let user = self.user.as_deref().is_none_or(|u| {
            [&info.owner, &info.user, &info.run_as_user]
                .iter()
                .any(|name| *name == u || name.rsplit('/').next() == Some(u))
        });
        within && user
    }
}

/// `--since`/`--until`: an RFC 3339 time (`2026-12-01T08:00:00Z`, `2026-12-01`) or a
/// time ago (`90s`, `30m`, `2h`, `7d`, `2w`) from `now_ms`.
///
/// # Errors
/// Neither, with what works.
pub fn parse_when(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Some(t) = crate::timefmt::parse_rfc3339(text) {
        return Ok(t);
    }
    let bad = || {
        format!(
            "{text:?} is not a time: give an RFC 3339 time (2026-12-01T08:00:00Z, a date 2026-12-01) or how long ago (30m, 2h, 7d, 2w)"
        )
    };
    let ago = if let Some(days) = text.strip_suffix('d').or_else(|| text.strip_suffix('w')) {
        let n: u64 = days.parse().map_err(|_| bad())?;
        let unit = if text.ends_with('w') { 7 } else { 1 };
        n.saturating_mul(unit).saturating_mul(86_400_000)
    } else {
        let d = crate::config::parse_duration(text).map_err(|_| bad())?;
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    };
    Ok(now_ms.saturating_sub(ago))
}

/// Newest first; unreadable ones last, by directory.
pub fn sort(listed: &mut [Listed]) {
    listed.sort_by(|a, b| match (&a.info, &b.info) {
        (Ok(x), Ok(y)) => y
            .start_unix_ms
            .cmp(&x.start_unix_ms)
            .then_with(|| x.session_id.cmp(&y.session_id)),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.dir.cmp(&b.dir),
    });
}

fn dir_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn status_text(l: &Listed, info: &Info) -> String {
    let mut status = info.status.as_str().to_owned();
    if l.quarantined {
        status.push_str(", quarantined");
    }
    if info.status == Status::Interrupted && !info.summary {
        status.push_str(" (not recovered yet)");
    }
    status
}

/// The listing as a table (every text escaped).
pub fn table(listed: &[Listed]) -> String {
    let header = [
        "SESSION", "OWNER", "RUN AS", "START", "DURATION", "STATUS", "DELIVERY",
    ];
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|l| match &l.info {
            Ok(i) => vec![
                escape(&i.session_id),
                escape(&i.owner),
                escape(&i.run_as_user),
                i.start.clone(),
                i.duration_ms.map(duration).unwrap_or_else(|| "-".into()),
                status_text(l, i),
                escape(&i.delivery),
            ],
            Err(e) => vec![
                escape(&dir_name(&l.dir)),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                if l.quarantined {
                    "unreadable, quarantined".into()
                } else {
                    "unreadable".into()
                },
                escape(e),
            ],
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header.map(str::to_owned));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// One JSON object per recording (see `sessions --help`).
pub fn json_line(l: &Listed) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Row<'a> {
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        info: Option<&'a Info>,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
        dir: String,
        quarantined: bool,
    }
    let row = Row {
        info: l.info.as_ref().ok(),
        status: l.info.is_err().then_some("unreadable"),
        error: l.info.as_ref().err().map(String::as_str),
        dir: l.dir.display().to_string(),
        quarantined: l.quarantined,
    };
    serde_json::to_string(&row).unwrap_or_default()
}

/// `session-agent sessions` options.
#[derive(Debug, Args)]
#[command(after_help = SESSIONS_AFTER_HELP)]
pub struct SessionsArgs {
    /// Only sessions active at or after this time: RFC 3339 (2026-12-01T08:00:00Z, or a
    /// date, 2026-12-01) or how long ago (30m, 2h, 7d, 2w).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only sessions started at or before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only sessions of this owner (the IAM ARN, or its last part: alice for
    /// arn:aws:iam::1:user/alice) or run as this OS user.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateDirArg,
}

/// What `sessions --help` adds.
pub const SESSIONS_AFTER_HELP: &str = "Status: live (being recorded now), ended (whole), \
incomplete (ended, but parts were not recorded: see `session-agent verify`), interrupted \
(the agent stopped before the session ended; \"not recovered yet\" until the agent's next \
start recovers it), unknown (no summary, and this platform cannot tell live from \
interrupted); quarantined recordings are listed as such; directories that are not \
recordings as unreadable, with why.

--json fields: sessionId, owner, user, runAsUser, target, start (RFC 3339), startUnixMs, \
endUnixMs, durationMs (so far, when live), status, delivery, summary (read from \
summary.json), dir, quarantined; an unreadable one has status \"unreadable\" and error.

Cost: reads each recording's summary.json, or its session.json and the first 64 KiB of \
its spool; never a whole spool.";

/// Runs `sessions`.
///
/// # Errors
/// A bad --since/--until, or the recordings directory cannot be read.
pub fn sessions(args: &SessionsArgs, now_ms: u64, out: &mut impl Write) -> Result<(), String> {
    let when = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|t| parse_when(t, now_ms).map_err(|e| format!("{flag}: {e}")))
            .transpose()
    };
    let filter = Filter {
        since: when("--since", &args.since)?,
        until: when("--until", &args.until)?,
        user: args.user.clone(),
    };
    let state = args.state.state_dir();
    let mut listed = list(&state, now_ms)?;
    listed.retain(|l| l.info.as_ref().is_err() || l.info.as_ref().is_ok_and(|i| filter.admits(i)));
    sort(&mut listed);
    let text = if args.json {
        listed.iter().map(|l| json_line(l) + "\n").collect()
    } else if listed.is_empty() {
        format!(
            "no recordings{} in {}\n",
            if filter == Filter::default() {
                ""
            } else {
                " match"
            },
            state.join("recordings").display()
        )
    } else {
        table(&listed)
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::summary::{DeliveryState, DestinationDelivery};

    fn info(id: &str, start: u64, end: Option<u64>) -> Info {
        Info {
            session_id: id.into(),
            owner: "arn:aws:iam::1:user/alice".into(),
            user: "arn:aws:iam::1:user/alice".into(),
            run_as_user: "ssm-user".into(),
            target: "t".into(),
            start: crate::timefmt::rfc3339(start, false),
            start_unix_ms: start,
            end_unix_ms: end,
            duration_ms: end.map(|e| e - start),
            status: if end.is_some() {
                Status::Ended
            } else {
                Status::Live
            },
            delivery: "local only".into(),
            summary: end.is_some(),
        }
    }

    #[test]
    fn ids_are_session_ids_never_paths() {
        for ok in ["alice-0123abcd", "s-1", "a..b", "x_y.z"] {
            assert_eq!(check_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a b", "a\0b",
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_id(&"x".repeat(129)).is_err());
        let root = tempfile::tempdir().unwrap();
        let recordings = root.path().join("recordings");
        std::fs::create_dir_all(recordings.join("s-1")).unwrap();
        assert_eq!(locate("s-1", &recordings).unwrap(), recordings.join("s-1"));
        assert_eq!(
            locate_spool("s-1", &recordings).unwrap(),
            recordings.join("s-1").join(EVENTS_FILE)
        );
        let e = locate("s-2", &recordings).unwrap_err();
        assert!(
            e.contains(&recordings.display().to_string()) && e.contains("session-agent sessions"),
            "{e}"
        );
        assert!(locate("../no/such-dir", &recordings)
            .unwrap_err()
            .contains("no such file"));
        assert!(locate("..x/..", &recordings).is_err());
        // An existing path is a path.
        let file = root.path().join("copy.spool");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(
            locate_spool(file.to_str().unwrap(), &recordings).unwrap(),
            file
        );
    }

    #[test]
    fn times_are_rfc3339_or_a_time_ago() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_when("2023-11-14T22:13:20Z", now), Ok(now));
        assert_eq!(parse_when("2023-11-14", now), Ok(1_699_920_000_000));
        assert_eq!(parse_when("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_when("30m", now), Ok(now - 1_800_000));
        assert_eq!(parse_when("90s", now), Ok(now - 90_000));
        assert_eq!(parse_when("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_when("2w", now), Ok(now - 14 * 86_400_000));
        assert_eq!(parse_when("999999999999d", now), Ok(0));
        for bad in ["", "yesterday", "d", "-2h", "2x", "2023-11-14T22:13:20"] {
            let e = parse_when(bad, now).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn filters_select_by_window_and_user() {
        let done = info("a", 1000, Some(2000));
        let live = info("b", 5000, None);
        let all = Filter::default();
        assert!(all.admits(&done) && all.admits(&live));
        let since = |t| Filter {
            since: Some(t),
            ..Filter::default()
        };
        let until = |t| Filter {
            until: Some(t),
            ..Filter::default()
        };
        // Active in the window: ended after --since, started before --until.
        assert!(since(1500).admits(&done));
        assert!(!since(2001).admits(&done));
        assert!(
            since(1_000_000).admits(&live),
            "a live session is active now"
        );
        assert!(until(1000).admits(&done));
        assert!(!until(999).admits(&done));
        let user = |u: &str| Filter {
            user: Some(u.into()),
            ..Filter::default()
        };
        assert!(user("alice").admits(&done));
        assert!(user("arn:aws:iam::1:user/alice").admits(&done));
        assert!(user("ssm-user").admits(&done));
        assert!(!user("ali").admits(&done));
        assert!(!user("bob").admits(&done));
    }

    #[test]
    fn summaries_give_status_and_delivery() {
        let mut s = SessionSummary {
            session_id: "s".into(),
            start_unix_ms: 10,
            complete: true,
            ..SessionSummary::default()
        };
        assert_eq!(from_summary(&s).status, Status::Ended);
        s.complete = false;
        assert_eq!(from_summary(&s).status, Status::Incomplete);
        s.interrupted = true;
        assert_eq!(from_summary(&s).status, Status::Interrupted);
        s.delivery.s3 = Some(DestinationDelivery {
            state: DeliveryState::Failed,
            ..DestinationDelivery::default()
        });
        assert_eq!(from_summary(&s).delivery, "s3 failed");
    }

    #[test]
    fn the_table_is_aligned_newest_first_and_escapes_what_it_shows() {
        let mut listed = vec![
            Listed {
                dir: "/r/a".into(),
                quarantined: false,
                info: Ok(info("a", 1000, Some(2000))),
            },
            Listed {
                dir: "/r/zz\x1b[31m".into(),
                quarantined: false,
                info: Err("not a recording: no events.spool".into()),
            },
            Listed {
                dir: "/r/b".into(),
                quarantined: false,
                info: Ok(Info {
                    owner: "evil\x1b]0;x\x07".into(),
                    ..info("b", 5000, None)
                }),
            },
        ];
        sort(&mut listed);
        let text = table(&listed);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SESSION "), "{text}");
        assert!(lines[1].starts_with("b "), "{text}");
        assert!(lines[2].starts_with("a "), "{text}");
        assert!(lines[3].contains("unreadable") && lines[3].contains("no events.spool"));
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        let status_at = lines[0].find("STATUS").unwrap();
        assert_eq!(&lines[2][status_at..status_at + 5], "ended", "{text}");
        let json: serde_json::Value = serde_json::from_str(&json_line(&listed[2])).unwrap();
        assert_eq!(json["status"], "unreadable");
        assert_eq!(json["dir"], "/r/zz\x1b[31m");
        let json: serde_json::Value = serde_json::from_str(&json_line(&listed[1])).unwrap();
        assert_eq!(json["sessionId"], "a");
        assert_eq!(json["status"], "ended");
        assert_eq!(json["durationMs"], 1000);
    }

    #[test]
    fn foreign_and_broken_directories_are_unreadable_with_the_reason() {
        let state = tempfile::tempdir().unwrap();
        let rec = state.path().join("recordings");
        for (name, file, bytes) in [
            ("empty", None, &b""[..]),
            ("not-a-spool", Some(EVENTS_FILE), &b"hello"[..]),
            ("bad-summary", Some(SUMMARY_FILE), &b"{"[..]),
            (
                "no-events",
                Some(EVENTS_FILE),
                &crate::spool::format::MAGIC[..],
            ),
        ] {
            std::fs::create_dir_all(rec.join(name)).unwrap();
            if let Some(f) = file {
                std::fs::write(rec.join(name).join(f), bytes).unwrap();
            }
        }
        std::fs::write(rec.join("stray.tmp"), b"x").unwrap();
        let big = rec.join("huge");
        std::fs::create_dir_all(&big).unwrap();
        std::fs::write(
            big.join(SUMMARY_FILE),
            vec![b' '; usize::try_from(SMALL_FILE_BYTES).unwrap() + 1],
        )
        .unwrap();
        let listed = list(state.path(), 0).unwrap();
        assert_eq!(listed.len(), 5, "{listed:?}");
        let why = |name: &str| {
            listed
                .iter()
                .find(|l| l.dir.ends_with(name))
                .unwrap()
                .info
                .clone()
                .unwrap_err()
        };
        assert!(why("empty").contains("not a recording"));
        assert!(why("not-a-spool").contains("not a spool"));
        assert!(why("bad-summary").contains("summary.json is not valid"));
        assert!(why("no-events").contains("no events"));
        assert!(why("huge").contains("larger than"));
        // No state directory at all: nothing to list.
        assert_eq!(list(&state.path().join("none"), 0).unwrap(), []);
    }
}
