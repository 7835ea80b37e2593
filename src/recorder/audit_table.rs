//! The process audit of a recording as rows a reviewer reads (pure): what
//! `session-agent audit` prints, as a table or as JSON lines.
//!
//! [`AuditTable`] is fed a spool's events in order and hands back [`Entry`]s in the
//! order things happened: one [`ProcessRow`] per program executed, joined with its exit
//! (by pid) when the exit is read; an [`ExitRow`] for an exit whose exec was not recorded
//! (a fork that ran no program, a session's first process, or a process whose row had
//! to be printed before its exit came, see below); a [`GapRow`] where part of the session
//! was not recorded; and a [`CommandRow`] for a command line typed at a prompt, fed in
//! with [`AuditTable::push_command`] by whoever finds them (the "commands as typed"
//! finder; the table places them in time order with the rest).
//!
//! ## Memory
//!
//! A row waits for its exit before it is handed out (rows come out in exec order), but
//! the rows waiting are bounded: past [`WINDOW_BYTES`] (their argv, cwd and executable
//! counted, plus [`ROW_OVERHEAD`] each), the oldest is handed out as still running at
//! that point ([`End::Running`]) and its exit, when it comes, is an [`ExitRow`]. So a
//! long-lived shell in a session of a million processes costs the window, not the
//! session. Beyond the window, what is kept is a pid per process handed out before its
//! exit and still alive (at most [`EARLY_MAX`]).
//!
//! ## Output
//!
//! [`Entry::table_line`] renders a row for a terminal: every control character of
//! recorded text (argv, cwd, reasons) is shown escaped (`\x1b`, `\n`), so what a session
//! put in its arguments cannot move the reviewer's cursor, recolour or hide lines.
//! [`Entry::to_json_line`] is one JSON object (fields in the `session-agent audit --help`
//! text).

use super::event::{Event, EventKind, Process, ProcessPhase, StartInfo};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};

/// Bytes of rows waiting for their exit before the oldest is handed out without it.
pub const WINDOW_BYTES: usize = 8 * 1024 * 1024;
/// What a waiting row counts for beyond its text.
pub const ROW_OVERHEAD: usize = 256;
/// Processes remembered as handed out before their exit (for [`ExitRow::exec_recorded`]);
/// beyond it (more processes alive at once than any kernel's `pid_max` allows, so only
/// from a crafted spool) their exits say `execRecorded: false`.
pub const EARLY_MAX: usize = 1 << 22;

/// How a process's row ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum End {
    /// It exited with a status.
    Exited,
    /// A signal ended it.
    Signaled,
    /// It executed another program (the next row with its pid).
    Replaced,
    /// Its exit was not read yet when the row had to be handed out (see the module
    /// doc): an exit row follows when it comes.
    Running,
    /// No exit was recorded before the recording ended.
    Unknown,
}

/// A program a process of the session executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRow {
    /// When (RFC 3339 UTC, milliseconds).
    pub time: String,
    /// Session milliseconds of the exec.
    pub at_ms: u64,
    /// Unix milliseconds of the exec.
    pub time_unix_ms: u64,
    /// The process.
    pub pid: u32,
    /// Its parent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Real uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Effective uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub euid: Option<u32>,
    /// Working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// Arguments, secrets masked.
    pub argv: Vec<String>,
    /// The argument area was longer than the agent reads: `argv` is its beginning.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub argv_truncated: bool,
    /// Arguments masked.
    #[serde(skip_serializing_if = "is_zero")]
    pub redactions: usize,
    /// The audit login uid (auditd's `auid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    /// The kernel's audit session id (auditd's `ses`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_session: Option<u32>,
    /// Why the details are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_unavailable: Option<String>,
    /// How the row ends.
    pub end: End,
    /// Exit status (`end` exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal (`end` signaled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How long the process lived (exited or signaled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// An exit not joined to a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRow {
    /// When (RFC 3339 UTC, milliseconds).
    pub time: String,
    /// Session milliseconds of the exit.
    pub at_ms: u64,
    /// Unix milliseconds of the exit.
    pub time_unix_ms: u64,
    /// The process.
    pub pid: u32,
    /// Exit status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// How long it lived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Its exec row was handed out before (still running then); false: no exec of it
    /// was recorded.
    pub exec_recorded: bool,
}

/// Where part of the session was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GapRow {
    /// When (RFC 3339 UTC, milliseconds).
    pub time: String,
    /// Session milliseconds of the record.
    pub at_ms: u64,
    /// Unix milliseconds of the record.
    pub time_unix_ms: u64,
    /// The gap opened here (`to_ms` absent) or closed.
    pub from_ms: u64,
    /// When recording resumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    /// Bytes not recorded.
    pub bytes: u64,
    /// Events not recorded.
    pub events: u64,
    /// Why.
    pub reason: String,
}

/// A command line typed at a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandRow {
    /// When (RFC 3339 UTC, milliseconds).
    pub time: String,
    /// Session milliseconds of the Enter key.
    pub at_ms: u64,
    /// Unix milliseconds.
    pub time_unix_ms: u64,
    /// The command line as the screen showed it.
    pub command_line: String,
}

/// One line of the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Entry {
    /// A program executed.
    Process(ProcessRow),
    /// An exit not joined to a row.
    Exit(ExitRow),
    /// A gap.
    Gap(GapRow),
    /// A command typed.
    Command(CommandRow),
}

/// Totals of what an audit showed, for its last line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Process rows.
    pub processes: u64,
    /// Of them, without details.
    pub without_details: u64,
    /// Exit rows.
    pub exits: u64,
    /// Gap rows.
    pub gaps: u64,
    /// Command rows.
    pub commands: u64,
}

/// Joins a spool's process records into rows. See the module doc.
#[derive(Debug)]
pub struct AuditTable {
    started_unix_ms: u64,
    /// Rows not handed out yet, in order; `base` is the number handed out before them.
    pending: VecDeque<(Entry, usize)>,
    base: u64,
    pending_bytes: usize,
    /// A waiting process row by pid: its absolute index.
    open: HashMap<u32, u64>,
    /// Processes whose row was handed out before their exit (at most one per process
    /// alive at once).
    early: HashSet<u32>,
    window: usize,
    totals: Totals,
}

impl AuditTable {
    /// A table for the session `start` describes.
    pub fn new(start: &StartInfo) -> Self {
        Self::with_window(start, WINDOW_BYTES)
    }

    /// The same with another window (tests).
    pub fn with_window(start: &StartInfo, window: usize) -> Self {
        Self {
            started_unix_ms: start.started_unix_ms,
            pending: VecDeque::new(),
            base: 0,
            pending_bytes: 0,
            open: HashMap::new(),
            early: HashSet::new(),
            window,
            totals: Totals::default(),
        }
    }

    fn unix(&self, at_ms: u64) -> u64 {
        self.started_unix_ms.saturating_add(at_ms)
    }

    fn time(&self, at_ms: u64) -> String {
        crate::timefmt::rfc3339(self.unix(at_ms), true)
    }

    /// Takes one event; the rows ready.
    pub fn push(&mut self, event: &Event) -> Vec<Entry> {
        let at = event.at_ms;
        match &event.kind {
            EventKind::Process(p) => match p.phase {
                ProcessPhase::Exec => self.exec(at, p),
                ProcessPhase::Exit => self.exit(at, p),
            },
            EventKind::Gap {
                from_ms,
                to_ms,
                bytes,
                events,
                reason,
            } => self.add(Entry::Gap(GapRow {
                time: self.time(at),
                at_ms: at,
                time_unix_ms: self.unix(at),
                from_ms: *from_ms,
                to_ms: *to_ms,
                bytes: *bytes,
                events: *events,
                reason: reason.clone(),
            })),
            _ => {}
        }
        self.ready()
    }

    /// Takes a command line typed at `at_ms`; the rows ready.
    pub fn push_command(&mut self, at_ms: u64, command_line: String) -> Vec<Entry> {
        self.add(Entry::Command(CommandRow {
            time: self.time(at_ms),
            at_ms,
            time_unix_ms: self.unix(at_ms),
            command_line,
        }));
        self.ready()
    }

    /// The rows still waiting, at the end of the recording (processes without an exit
    /// say so).
    pub fn finish(&mut self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.pending.len());
        while let Some((mut entry, _)) = self.pending.pop_front() {
            if let Entry::Process(row) = &mut entry {
                if row.end == End::Running {
                    row.end = End::Unknown;
                }
            }
            out.push(entry);
        }
        self.open.clear();
        self.early.clear();
        self.base += out.len() as u64;
        self.pending_bytes = 0;
        for e in &out {
            self.count(e);
        }
        out
    }

    /// What was handed out so far, counted.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    fn exec(&mut self, at: u64, p: &Process) {
        self.early.remove(&p.pid);
        if let Some(index) = self.open.remove(&p.pid) {
            if let Some(Entry::Process(row)) = self.get_mut(index) {
                row.end = End::Replaced;
            }
        }
        let row = ProcessRow {
            time: self.time(at),
            at_ms: at,
            time_unix_ms: self.unix(at),
            pid: p.pid,
            ppid: p.ppid,
            uid: p.uid,
            euid: p.euid,
            cwd: p.cwd.clone(),
            executable: p.executable.clone(),
            argv: p.argv.clone(),
            argv_truncated: p.argv_truncated,
            redactions: p.redactions,
            login_uid: p.login_uid,
            audit_session: p.audit_session,
            details_unavailable: p.details_unavailable.clone(),
            // Until its exit is read.
            end: End::Running,
            exit_code: None,
            signal: None,
            duration_ms: None,
        };
        let index = self.base + self.pending.len() as u64;
        self.add(Entry::Process(row));
        self.open.insert(p.pid, index);
    }

    fn exit(&mut self, at: u64, p: &Process) {
        let joined = self
            .open
            .remove(&p.pid)
            .and_then(|index| match self.get_mut(index) {
                Some(Entry::Process(row)) => {
                    row.end = if p.signal.is_some() {
                        End::Signaled
                    } else {
                        End::Exited
                    };
                    row.exit_code = p.exit_code;
                    row.signal = p.signal;
                    row.duration_ms = p.duration_ms;
                    Some(())
                }
                _ => None,
            });
        if joined.is_none() {
            let exec_recorded = self.early.remove(&p.pid);
            self.add(Entry::Exit(ExitRow {
                time: self.time(at),
                at_ms: at,
                time_unix_ms: self.unix(at),
                pid: p.pid,
                exit_code: p.exit_code,
                signal: p.signal,
                duration_ms: p.duration_ms,
                exec_recorded,
            }));
        }
    }

    fn get_mut(&mut self, index: u64) -> Option<&mut Entry> {
        let i = usize::try_from(index.checked_sub(self.base)?).ok()?;
        self.pending.get_mut(i).map(|(e, _)| e)
    }

    fn add(&mut self, entry: Entry) {
        let cost = ROW_OVERHEAD
            + match &entry {
                Entry::Process(r) => {
                    r.argv.iter().map(String::len).sum::<usize>()
                        + r.cwd.as_ref().map_or(0, String::len)
                        + r.executable.as_ref().map_or(0, String::len)
                        + r.details_unavailable.as_ref().map_or(0, String::len)
                }
                Entry::Gap(g) => g.reason.len(),
                Entry::Command(c) => c.command_line.len(),
                Entry::Exit(_) => 0,
            };
        self.pending_bytes += cost;
        self.pending.push_back((entry, cost));
    }

    /// Hands out the rows at the front that are whole, and the oldest ones beyond the
    /// window.
    fn ready(&mut self) -> Vec<Entry> {
        let mut out = Vec::new();
        loop {
            let whole = match self.pending.front() {
                None => break,
                Some((Entry::Process(row), _)) => row.end != End::Running,
                Some(_) => true,
            };
            if !whole && self.pending_bytes <= self.window {
                break;
            }
            let Some((entry, cost)) = self.pending.pop_front() else {
                break;
            };
            self.base += 1;
            self.pending_bytes -= cost;
            if let Entry::Process(row) = &entry {
                if row.end == End::Running {
                    // Handed out before its exit: the exit will be a row of its own.
                    self.open.remove(&row.pid);
                    if self.early.len() < EARLY_MAX {
                        self.early.insert(row.pid);
                    }
                }
            }
            out.push(entry);
        }
        for e in &out {
            self.count(e);
        }
        out
    }

    fn count(&mut self, e: &Entry) {
        let t = &mut self.totals;
        match e {
            Entry::Process(r) => {
                t.processes += 1;
                if r.details_unavailable.is_some() {
                    t.without_details += 1;
                }
            }
            Entry::Exit(_) => t.exits += 1,
            Entry::Gap(_) => t.gaps += 1,
            Entry::Command(_) => t.commands += 1,
        }
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The table's column titles.
pub const TABLE_HEADER: &str = "TIME                      PID     PPID  USER              EXIT           DURATION  CWD                   COMMAND";

/// `name` for a uid, when the caller can tell it.
pub type Names<'a> = &'a mut dyn FnMut(u32) -> Option<String>;

impl Entry {
    /// When it happened (RFC 3339).
    pub fn time(&self) -> &str {
        match self {
            Entry::Process(r) => &r.time,
            Entry::Exit(r) => &r.time,
            Entry::Gap(r) => &r.time,
            Entry::Command(r) => &r.time,
        }
    }

    /// One JSON object (no newline), `type` and `time` first.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// One line of the table (see [`TABLE_HEADER`]); `names` turns uids into user names.
    pub fn table_line(&self, names: Names<'_>) -> String {
        let time = self.time();
        match self {
            Entry::Process(r) => {
                let user = user_column(r.uid, r.euid, names);
                let (exit, duration) = match r.end {
                    End::Exited | End::Signaled => (
                        status(r.exit_code, r.signal),
                        r.duration_ms.map(duration).unwrap_or_default(),
                    ),
                    End::Replaced => ("exec'd again".into(), String::new()),
                    End::Running => ("running".into(), String::new()),
                    End::Unknown => ("no exit seen".into(), String::new()),
                };
                let ppid = r.ppid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                let cwd = r.cwd.as_deref().map_or_else(|| "?".into(), escape);
                let mut command = if r.argv.is_empty() {
                    r.executable.as_deref().map_or_else(|| "?".into(), escape)
                } else {
                    r.argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
                };
                if let Some(why) = &r.details_unavailable {
                    command = format!("[details unavailable: {}] {command}", escape(why));
                }
                if r.argv_truncated {
                    command.push_str(" [arguments cut: longer than the agent reads]");
                }
                format!(
                    "{time:<25} {:>7} {ppid:>7}  {user:<16}  {exit:<13}  {duration:>8}  {cwd:<20}  {command}",
                    r.pid
                )
            }
            Entry::Exit(r) => {
                let what = if r.exec_recorded {
                    "[exit of the process above, still running when its row was printed]"
                } else {
                    "[exit; no program execution of this process was recorded]"
                };
                format!(
                    "{time:<25} {:>7} {:>7}  {:<16}  {:<13}  {:>8}  {:<20}  {what}",
                    r.pid,
                    "-",
                    "",
                    status(r.exit_code, r.signal),
                    r.duration_ms.map(duration).unwrap_or_default(),
                    "",
                )
            }
            Entry::Gap(g) => match g.to_ms {
                None => format!(
                    "{time:<25} --- recording gap begins: {}; what follows is not recorded until it ends ---",
                    escape(&g.reason)
                ),
                Some(to) => format!(
                    "{time:<25} --- recording gap ends: {} bytes in {} events not recorded over {}: {} ---",
                    g.bytes,
                    g.events,
                    duration(to.saturating_sub(g.from_ms)),
                    escape(&g.reason)
                ),
            },
            Entry::Command(c) => {
                format!("{time:<25} typed: {}", escape(&c.command_line))
            }
        }
    }
}

impl Totals {
    /// The table's last line.
    pub fn line(&self) -> String {
        let mut text = format!(
            "{} program(s) executed ({} without details), {} exit(s) without an exec row, {} gap record(s)",
            self.processes, self.without_details, self.exits, self.gaps
        );
        if self.commands > 0 {
            text.push_str(&format!(", {} command(s) typed", self.commands));
        }
        text
    }
}

fn user_column(uid: Option<u32>, euid: Option<u32>, names: Names<'_>) -> String {
    let mut name = |id: u32| names(id).map_or_else(|| id.to_string(), |n| escape(&n));
    match (uid, euid) {
        (Some(u), Some(e)) if u != e => format!("{}/{}", name(u), name(e)),
        (Some(u), _) => name(u),
        (None, Some(e)) => format!("?/{}", name(e)),
        (None, None) => "?".into(),
    }
}

/// `exit 0`, `signal 9 (KILL)`.
pub fn status(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (_, Some(sig)) => match signal_name(sig) {
            Some(name) => format!("signal {sig} ({name})"),
            None => format!("signal {sig}"),
        },
        (Some(code), None) => format!("exit {code}"),
        (None, None) => "?".into(),
    }
}

/// Linux's signal names (x86 and arm numbering).
fn signal_name(sig: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    usize::try_from(sig)
        .ok()
        .and_then(|s| s.checked_sub(1))
        .and_then(|i| NAMES.get(i).copied())
}

/// `850ms`, `3.4s`, `5m12s`, `2h03m`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// Recorded text made safe for a terminal: control characters (C0, DEL, C1) shown as
/// escapes (`\n`, `\x{1b}`), everything else as it is (the exact text is in the JSON).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// An argument as a shell would need it typed (quoted when it holds spaces or shell
/// characters: in double quotes when that needs no backslash, else in single quotes),
/// then [`escape`]d.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.chars().all(|c| {
            c.is_alphanumeric()
                || matches!(
                    c,
                    '-' | '_' | '.' | '/' | ':' | '=' | ',' | '+' | '@' | '%' | '[' | ']'
                )
        });
    if plain {
        escape(arg)
    } else if arg.contains('\'') && !arg.contains(['"', '$', '`', '\\', '!']) {
        escape(&format!("\"{arg}\""))
    } else {
        escape(&format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> StartInfo {
        StartInfo {
            session_id: "s-1".into(),
            user: "u".into(),
            run_as_user: "ssm-user".into(),
            owner: "o".into(),
            target: "t".into(),
            reason: None,
            cols: 80,
            rows: 24,
            started_unix_ms: 1_700_000_000_000,
            term: None,
            shell: None,
        }
    }

    fn exec(pid: u32, argv: &[&str]) -> Event {
        Event {
            seq: 0,
            at_ms: u64::from(pid),
            kind: EventKind::Process(Process {
                user: None,
                phase: ProcessPhase::Exec,
                pid,
                ppid: Some(1),
                uid: Some(1000),
                euid: Some(1000),
                cwd: Some("/home/u".into()),
                executable: Some(format!("/bin/{}", argv[0])),
                argv: argv.iter().map(|a| (*a).to_owned()).collect(),
                redactions: 0,
                details_unavailable: None,
                argv_truncated: false,
                login_uid: None,
                audit_session: None,
                exit_code: None,
                signal: None,
                duration_ms: None,
            }),
        }
    }

    fn exit(pid: u32, code: Option<i32>, signal: Option<i32>) -> Event {
        Event {
            seq: 0,
            at_ms: u64::from(pid) + 1000,
            kind: EventKind::Process(Process {
                user: None,
                phase: ProcessPhase::Exit,
                pid,
                ppid: None,
                uid: None,
                euid: None,
                cwd: None,
                executable: None,
                argv: Vec::new(),
                redactions: 0,
                details_unavailable: None,
                argv_truncated: false,
                login_uid: None,
                audit_session: None,
                exit_code: code,
                signal,
                duration_ms: Some(1000),
            }),
        }
    }

    fn pids(entries: &[Entry]) -> Vec<(u32, End)> {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Process(r) => Some((r.pid, r.end)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn exec_and_exit_are_joined_by_pid_and_rows_come_out_in_exec_order() {
        let mut t = AuditTable::new(&start());
        assert!(t.push(&exec(10, &["bash", "-c", "x"])).is_empty());
        assert!(t.push(&exec(11, &["curl", "--version"])).is_empty());
        // 11 ends first, but 10 was executed first: nothing yet.
        assert!(t.push(&exit(11, Some(0), None)).is_empty());
        let out = t.push(&exit(10, Some(7), None));
        assert_eq!(pids(&out), [(10, End::Exited), (11, End::Exited)]);
        let Entry::Process(r) = &out[0] else { panic!() };
        assert_eq!((r.exit_code, r.duration_ms), (Some(7), Some(1000)));
        // An exit of a process whose exec was not recorded (the session's shell).
        let out = t.push(&exit(5, None, Some(9)));
        assert!(matches!(
            &out[..],
            [Entry::Exit(ExitRow {
                pid: 5,
                signal: Some(9),
                exec_recorded: false,
                ..
            })]
        ));
        assert!(t.finish().is_empty());
        assert_eq!(
            t.totals(),
            Totals {
                processes: 2,
                exits: 1,
                ..Totals::default()
            }
        );
    }

    #[test]
    fn a_second_exec_of_a_pid_ends_the_first_row_and_gaps_and_commands_keep_their_place() {
        let mut t = AuditTable::new(&start());
        t.push(&exec(10, &["sh"]));
        let cmd = t.push_command(11, "exec /bin/sh".into());
        assert!(cmd.is_empty(), "behind the running sh");
        let out = t.push(&exec(10, &["dash"]));
        // The first row ended by the second exec; the command after it.
        assert_eq!(pids(&out), [(10, End::Replaced)]);
        assert!(matches!(out.last(), Some(Entry::Command(c)) if c.command_line == "exec /bin/sh"));
        let gap = Event {
            seq: 0,
            at_ms: 50,
            kind: EventKind::Gap {
                from_ms: 40,
                to_ms: None,
                bytes: 0,
                events: 0,
                reason: "disk full".into(),
            },
        };
        assert!(t.push(&gap).is_empty());
        let rest = t.finish();
        assert_eq!(pids(&rest), [(10, End::Unknown)]);
        assert!(matches!(&rest[1], Entry::Gap(g) if g.reason == "disk full"));
    }

    #[test]
    fn memory_is_bounded_by_the_window_and_a_late_exit_gets_its_own_row() {
        let mut t = AuditTable::with_window(&start(), 10 * ROW_OVERHEAD);
        let mut out = t.push(&exec(1, &["bash"]));
        // A storm behind a long-lived shell: the shell's row goes out as running.
        for pid in 2..5000u32 {
            out.extend(t.push(&exec(pid, &["true"])));
            out.extend(t.push(&exit(pid, Some(0), None)));
            assert!(t.pending.len() <= 12, "{}", t.pending.len());
        }
        out.extend(t.push(&exit(1, Some(0), None)));
        out.extend(t.finish());
        assert_eq!(pids(&out)[0], (1, End::Running));
        assert_eq!(pids(&out).len(), 4999);
        assert!(pids(&out)[1..].iter().all(|(_, end)| *end == End::Exited));
        assert!(matches!(
            out.last(),
            Some(Entry::Exit(ExitRow {
                pid: 1,
                exec_recorded: true,
                ..
            }))
        ));
    }

    #[test]
    fn the_table_escapes_what_a_session_controls_and_the_json_has_the_fields() {
        let mut t = AuditTable::new(&start());
        let mut e = exec(10, &["printf", "\x1b[2J\x1b]0;owned\x07", "two words"]);
        if let EventKind::Process(p) = &mut e.kind {
            p.euid = Some(0);
            p.redactions = 1;
            p.argv_truncated = true;
            p.audit_session = Some(12);
        }
        t.push(&e);
        let out = t.push(&exit(10, None, Some(9)));
        let mut names = |uid: u32| (uid == 0).then(|| "root".to_owned());
        let line = out[0].table_line(&mut names);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains(r"'\x{1b}[2J\x{1b}]0;owned\x{7}'"), "{line}");
        assert!(line.contains("'two words'"), "{line}");
        assert!(line.contains("1000/root"), "{line}");
        assert!(line.contains("signal 9 (KILL)"), "{line}");
        assert!(
            line.ends_with("[arguments cut: longer than the agent reads]"),
            "{line}"
        );
        assert!(line.starts_with("2023-11-14T22:13:20.010Z"), "{line}");
        let json: serde_json::Value = serde_json::from_str(&out[0].to_json_line()).unwrap();
        assert_eq!(json["type"], "process");
        assert_eq!(json["pid"], 10);
        assert_eq!(json["ppid"], 1);
        assert_eq!(json["euid"], 0);
        assert_eq!(json["argv"][1], "\x1b[2J\x1b]0;owned\x07");
        assert_eq!(json["end"], "signaled");
        assert_eq!(json["signal"], 9);
        assert_eq!(json["durationMs"], 1000);
        assert_eq!(json["redactions"], 1);
        assert_eq!(json["argvTruncated"], true);
        assert_eq!(json["auditSession"], 12);
        assert_eq!(json["time"], "2023-11-14T22:13:20.010Z");
        assert!(out[0]
            .to_json_line()
            .starts_with(r#"{"type":"process","time":"#));
        assert_eq!(json["timeUnixMs"], 1_700_000_000_010_u64);
    }

    #[test]
    fn a_process_without_details_is_marked_as_such() {
        let mut t = AuditTable::new(&start());
        let e = Event {
            seq: 0,
            at_ms: 3,
            kind: EventKind::Process(Process {
                user: None,
                phase: ProcessPhase::Exec,
                pid: 42,
                ppid: Some(7),
                uid: None,
                euid: None,
                cwd: None,
                executable: Some("true".into()),
                argv: Vec::new(),
                redactions: 0,
                details_unavailable: Some("exited-before-read".into()),
                argv_truncated: false,
                login_uid: None,
                audit_session: None,
                exit_code: None,
                signal: None,
                duration_ms: None,
            }),
        };
        t.push(&e);
        let out = t.push(&exit(42, Some(0), None));
        let line = out[0].table_line(&mut |_| None);
        assert!(
            line.contains("[details unavailable: exited-before-read] true"),
            "{line}"
        );
        assert!(line.contains("exit 0"), "{line}");
        let json: serde_json::Value = serde_json::from_str(&out[0].to_json_line()).unwrap();
        assert_eq!(json["detailsUnavailable"], "exited-before-read");
    }

    #[test]
    fn durations_statuses_and_escapes_read_well() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(3_450), "3.4s");
        assert_eq!(duration(312_000), "5m12s");
        assert_eq!(duration(7_380_000), "2h03m");
        assert_eq!(status(Some(7), None), "exit 7");
        assert_eq!(status(None, Some(15)), "signal 15 (TERM)");
        assert_eq!(status(None, Some(64)), "signal 64");
        assert_eq!(status(None, None), "?");
        assert_eq!(escape("a\\b\u{9b}c\n"), r"a\b\x{9b}c\n");
        assert_eq!(quote("it's"), r#""it's""#);
        assert_eq!(quote("it's $HOME"), r"'it'\''s $HOME'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("-p[redacted]"), "-p[redacted]");
    }
}
