//! The per-session summary (`summary.json`, pure): who, when, how long, how much, what
//! ran, what was withheld or lost, whether the recording is whole, and where it went.
//!
//! A [`SummaryBuilder`] is fed the spool's events one by one, in order, and keeps only
//! counters (its memory does not grow with the session: the gap reasons it keeps are
//! bounded, [`MAX_GAP_REASONS`] distinct texts of at most [`MAX_REASON_BYTES`] bytes). The
//! agent's deriver drives it (`agent::recording::derive`), for a live session and for the
//! rebuild after a crash alike, so both produce the same summary from the same spool;
//! the agent then fills in [`SessionSummary::delivery`] as it knows it, and rewrites the
//! file once delivery settles. `session-agent sessions` reads it back.
//!
//! ## `summary.json` (camelCase JSON, one object; `summaryVersion` 1)
//!
//! | field | meaning |
//! |---|---|
//! | `summaryVersion` | 1 |
//! | `sessionId`, `owner`, `user`, `runAsUser`, `target`, `reason` | from the session's start record (`reason` absent when none was given) |
//! | `start`, `startUnixMs` | when the session started (RFC 3339 UTC with milliseconds, and Unix ms) |
//! | `end`, `endUnixMs`, `durationMs` | when it ended and how long it lasted; `null` without an end record |
//! | `exitCode`, `endedHow` | the shell's (or command's) exit status, `null` when it did not exit normally, and how the session ended (`exited`, `terminated`, `interrupted: …`, …) |
//! | `interrupted` | the agent stopped before the session ended (the end was added at recovery) |
//! | `bytes` | `output` (terminal output recorded), `input` (typed bytes recorded, echo on), `inputWithheld` (typed with echo off: counted, never kept) |
//! | `processes` | from the command audit: `executed` (exec records), `exited`, `detailsUnavailable` (exec records whose details could not be read), `exitedNonZero`, `killedBySignal` |
//! | `commands` | command lines typed at a prompt, as the screen showed them (`recorder::commands`, for sessions with a terminal) |
//! | `redactions` | `argumentsMasked` (arguments masked by the redaction rules, from the exec records), `echoOffBytes` and `echoOffLines` (typed with echo off: bytes and Enter keys) |
//! | `tunnels` | port sessions' connections: `opened`, `denied`, `failed`, `closed`, and the bytes of the closed ones `bytesToDestinations` / `bytesFromDestinations` |
//! | `gaps` | parts of the session not recorded: `count`, `bytes`, `events`, `reasons` (distinct, at most 16) and `reasonsOmitted` |
//! | `complete`, `incompleteReasons` | the recording holds the whole session: an end record, not interrupted, no gap, nothing failed to be written or read back (the chain intact) |
//! | `spool` | `records` and `chainHead` (hex): where the spool ended, to compare copies with (`session-agent verify`) |
//! | `delivery` | per destination configured (`s3`, `cloudWatchLogs`): `state` (`pending`, `delivered`, `failed`), `location`, `error`; `skipped`: destinations not used, with why. No destination: local only |

use super::event::{Event, EventKind, ProcessPhase, StartInfo, TunnelState};
use serde::{Deserialize, Serialize};

/// `summaryVersion` of what this module writes.
pub const SUMMARY_VERSION: u32 = 1;
/// Distinct gap reasons kept (the rest are counted in `reasonsOmitted`).
pub const MAX_GAP_REASONS: usize = 16;
/// Longest gap reason kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_REASON_BYTES: usize = 512;

/// What `summary.json` holds. See the module doc for each field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SessionSummary {
    /// Format version ([`SUMMARY_VERSION`]).
    pub summary_version: u32,
    /// The Session Manager session id.
    pub session_id: String,
    /// The owner of the session as the service reports it.
    pub owner: String,
    /// The identity that started the session.
    pub user: String,
    /// The OS account the session ran as.
    pub run_as_user: String,
    /// The target (instance id) it ran on.
    pub target: String,
    /// The reason given when it was started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Start, RFC 3339 UTC with milliseconds.
    pub start: String,
    /// Start, Unix milliseconds.
    pub start_unix_ms: u64,
    /// End, RFC 3339 UTC with milliseconds (`None`: no end record).
    pub end: Option<String>,
    /// End, Unix milliseconds.
    pub end_unix_ms: Option<u64>,
    /// How long the session lasted.
    pub duration_ms: Option<u64>,
    /// The exit status of the session's program, when it exited normally.
    pub exit_code: Option<i32>,
    /// How the session ended, from its end record.
    pub ended_how: Option<String>,
    /// The agent stopped before the session ended.
    pub interrupted: bool,
    /// Bytes each way.
    pub bytes: ByteCounts,
    /// The command audit's processes.
    pub processes: ProcessCounts,
    /// Commands typed at a shell prompt.
    pub commands: u64,
    /// What was masked or withheld.
    pub redactions: RedactionCounts,
    /// Port sessions' connections.
    pub tunnels: TunnelCounts,
    /// Parts not recorded.
    pub gaps: GapSummary,
    /// The recording holds the whole session.
    pub complete: bool,
    /// Why it does not, when it does not.
    pub incomplete_reasons: Vec<String>,
    /// Where the spool ended.
    pub spool: SpoolSummary,
    /// Where the recording went, as the agent knew it when it wrote this.
    pub delivery: DeliverySummary,
}

/// Bytes each way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ByteCounts {
    /// Terminal output recorded.
    pub output: u64,
    /// Typed input recorded (echo on).
    pub input: u64,
    /// Typed input withheld because echo was off (counted, never kept).
    pub input_withheld: u64,
}

/// The command audit's processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessCounts {
    /// Programs executed (exec records).
    pub executed: u64,
    /// Processes that ended (exit records).
    pub exited: u64,
    /// Exec records whose details (argv, cwd, …) could not be read.
    pub details_unavailable: u64,
    /// Exits with a status other than 0.
    pub exited_non_zero: u64,
    /// Exits by a signal.
    pub killed_by_signal: u64,
}

/// What was masked or withheld.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RedactionCounts {
    /// Arguments masked by the redaction rules.
    pub arguments_masked: u64,
    /// Bytes typed with echo off.
    pub echo_off_bytes: u64,
    /// Enter keys typed with echo off.
    pub echo_off_lines: u64,
}

/// Port sessions' connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TunnelCounts {
    /// Connected to their destination.
    pub opened: u64,
    /// Refused by the port-forwarding policy.
    pub denied: u64,
    /// The destination could not be reached.
    pub failed: u64,
    /// Ended.
    pub closed: u64,
    /// Bytes of the closed connections, client to destination.
    pub bytes_to_destinations: u64,
    /// Bytes of the closed connections, destination to client.
    pub bytes_from_destinations: u64,
}

/// Parts of the session not recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GapSummary {
    /// Gaps (a gap still open at the end counts).
    pub count: u64,
    /// Bytes of session data not recorded.
    pub bytes: u64,
    /// Events not recorded.
    pub events: u64,
    /// Their reasons, distinct, at most [`MAX_GAP_REASONS`].
    pub reasons: Vec<String>,
    /// Distinct reasons not kept.
    pub reasons_omitted: u64,
}

/// Where the spool ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SpoolSummary {
    /// Records in the spool.
    pub records: u64,
    /// The hash chain's value after the last one (hex).
    pub chain_head: String,
}

/// Where the recording went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeliverySummary {
    /// The upload at close to S3, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<DestinationDelivery>,
    /// CloudWatch Logs (streamed, or uploaded at close), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_watch_logs: Option<DestinationDelivery>,
    /// Destinations asked for but not used, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl DeliverySummary {
    /// One line: `local only`, or each destination and its state (`s3 delivered,
    /// cloudwatch pending`), `skipped` when one was skipped.
    pub fn short(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = &self.s3 {
            parts.push(format!("s3 {}", d.state.as_str()));
        }
        if let Some(d) = &self.cloud_watch_logs {
            parts.push(format!("cloudwatch {}", d.state.as_str()));
        }
        if !self.skipped.is_empty() {
            parts.push("skipped".to_owned());
        }
        if parts.is_empty() {
            "local only".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// One destination's delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DestinationDelivery {
    /// Pending, delivered or failed.
    pub state: DeliveryState,
    /// Where: `s3://BUCKET/PREFIX`, or the log group.
    pub location: String,
    /// What went wrong, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A destination's delivery state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not finished yet (or not tried yet).
    #[default]
    Pending,
    /// Everything arrived.
    Delivered,
    /// Given up; the recording stays in the state directory.
    Failed,
}

impl DeliveryState {
    /// Its name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// Builds a [`SessionSummary`] from a spool's events. See the module doc.
#[derive(Debug, Clone)]
pub struct SummaryBuilder {
    s: SessionSummary,
    /// The end record's time (session ms), once read.
    end_at: Option<u64>,
    /// A gap record said a gap opened; its close has not come yet.
    gap_open: Option<String>,
}

impl SummaryBuilder {
    /// A builder for the session `start` describes (the spool's record 0).
    pub fn new(start: &StartInfo) -> Self {
        Self {
            s: SessionSummary {
                summary_version: SUMMARY_VERSION,
                session_id: start.session_id.clone(),
                owner: start.owner.clone(),
                user: start.user.clone(),
                run_as_user: start.run_as_user.clone(),
                target: start.target.clone(),
                reason: start.reason.clone(),
                start: crate::timefmt::rfc3339(start.started_unix_ms, true),
                start_unix_ms: start.started_unix_ms,
                ..SessionSummary::default()
            },
            end_at: None,
            gap_open: None,
        }
    }

    /// Counts one event (in spool order).
    pub fn push(&mut self, event: &Event) {
        let s = &mut self.s;
        match &event.kind {
            EventKind::Start(_) | EventKind::Resize { .. } => {}
            EventKind::Output { data } => s.bytes.output += data.len() as u64,
            EventKind::Input { data } => s.bytes.input += data.len() as u64,
            EventKind::InputRedacted { bytes, lines } => {
                s.bytes.input_withheld += *bytes as u64;
                s.redactions.echo_off_bytes += *bytes as u64;
                s.redactions.echo_off_lines += *lines as u64;
            }
            EventKind::Gap {
                to_ms,
                bytes,
                events,
                reason,
                ..
            } => {
                if to_ms.is_none() {
                    self.gap_open = Some(reason.clone());
                } else {
                    self.gap_open = None;
                    s.gaps.count += 1;
                    s.gaps.bytes += bytes;
                    s.gaps.events += events;
                    self.note_gap_reason(reason);
                }
            }
            EventKind::End { exit_code, how } => {
                self.end_at = Some(event.at_ms);
                s.exit_code = *exit_code;
                s.ended_how = Some(how.clone());
                s.interrupted = how.starts_with("interrupted");
            }
            EventKind::Tunnel(t) => match t.state {
                TunnelState::Opened => s.tunnels.opened += 1,
                TunnelState::Denied => s.tunnels.denied += 1,
                TunnelState::Failed => s.tunnels.failed += 1,
                TunnelState::Closed => {
                    s.tunnels.closed += 1;
                    s.tunnels.bytes_to_destinations += t.bytes_to_destination;
                    s.tunnels.bytes_from_destinations += t.bytes_from_destination;
                }
            },
            EventKind::Process(p) => match p.phase {
                ProcessPhase::Exec => {
                    s.processes.executed += 1;
                    if p.details_unavailable.is_some() {
                        s.processes.details_unavailable += 1;
                    }
                    s.redactions.arguments_masked += p.redactions as u64;
                }
                ProcessPhase::Exit => {
                    s.processes.exited += 1;
                    if p.signal.is_some() {
                        s.processes.killed_by_signal += 1;
                    } else if p.exit_code.is_some_and(|c| c != 0) {
                        s.processes.exited_non_zero += 1;
                    }
                }
            },
        }
    }

    /// Counts one command typed at a shell prompt (the "commands as typed" finder calls
    /// this for each command line it takes).
    pub fn count_command(&mut self) {
        self.s.commands += 1;
    }

    fn note_gap_reason(&mut self, reason: &str) {
        let reasons = &mut self.s.gaps.reasons;
        let reason = cut(reason.trim(), MAX_REASON_BYTES);
        if reasons.contains(&reason) {
            return;
        }
        if reasons.len() < MAX_GAP_REASONS {
            reasons.push(reason);
        } else {
            self.s.gaps.reasons_omitted += 1;
        }
    }

    /// The summary so far, with where the spool ended and what went wrong writing or
    /// reading the recording back (`problems`, each a reason it is incomplete). Its
    /// delivery is left empty: the agent fills it in.
    pub fn finish(&self, spool: SpoolSummary, problems: &[String]) -> SessionSummary {
        let mut me = self.clone();
        if let Some(reason) = me.gap_open.take() {
            // A gap still open at the end: its close was never written.
            me.s.gaps.count += 1;
            me.note_gap_reason(&format!("{reason} (still open at the end)"));
        }
        let mut s = me.s;
        if let Some(at) = me.end_at {
            let end = s.start_unix_ms.saturating_add(at);
            s.end = Some(crate::timefmt::rfc3339(end, true));
            s.end_unix_ms = Some(end);
            s.duration_ms = Some(at);
        }
        let mut why = Vec::new();
        match &s.ended_how {
            None => {
                why.push("the recording has no end (cut short, or still being recorded)".into())
            }
            Some(how) if s.interrupted => why.push(format!("the session was {how}")),
            Some(_) => {}
        }
        if s.gaps.count > 0 {
            why.push(format!(
                "{} part(s) of the session were not recorded ({} bytes in {} events): {}",
                s.gaps.count,
                s.gaps.bytes,
                s.gaps.events,
                s.gaps.reasons.join("; ")
            ));
        }
        why.extend(problems.iter().cloned());
        s.complete = why.is_empty();
        s.incomplete_reasons = why;
        s.spool = spool;
        s
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::event::{Process, Tunnel};

    fn start() -> StartInfo {
        StartInfo {
            session_id: "s-1".into(),
            user: "arn:aws:iam::1:user/alice".into(),
            run_as_user: "ssm-user".into(),
            owner: "alice".into(),
            target: "i-1".into(),
            reason: Some("debug".into()),
            cols: 80,
            rows: 24,
            started_unix_ms: 1_700_000_000_000,
            term: None,
            shell: None,
        }
    }

    fn ev(at_ms: u64, kind: EventKind) -> Event {
        Event {
            seq: 0,
            at_ms,
            kind,
        }
    }

    fn process(phase: ProcessPhase, pid: u32) -> Process {
        Process {
            user: None,
            phase,
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
            exit_code: None,
            signal: None,
            duration_ms: None,
        }
    }

    fn spool() -> SpoolSummary {
        SpoolSummary {
            records: 9,
            chain_head: "ab".into(),
        }
    }

    #[test]
    fn counts_every_kind_of_event_and_ends_complete() {
        let mut b = SummaryBuilder::new(&start());
        let exec = Process {
            argv: vec!["mysql".into(), "-p[redacted]".into()],
            redactions: 1,
            ..process(ProcessPhase::Exec, 10)
        };
        let blind = Process {
            details_unavailable: Some("exited-before-read".into()),
            ..process(ProcessPhase::Exec, 11)
        };
        let tunnel = |state, up, down| Tunnel {
            conn: 1,
            state,
            host: "localhost".into(),
            port: 80,
            address: None,
            reason: None,
            bytes_to_destination: up,
            bytes_from_destination: down,
            opened_ms: None,
        };
        for e in [
            ev(0, EventKind::Start(start())),
            ev(
                1,
                EventKind::Output {
                    data: b"$ ".to_vec(),
                },
            ),
            ev(
                2,
                EventKind::Input {
                    data: b"ls\r".to_vec(),
                },
            ),
            ev(3, EventKind::InputRedacted { bytes: 8, lines: 1 }),
            ev(4, EventKind::Resize { cols: 1, rows: 1 }),
            ev(5, EventKind::Process(exec)),
            ev(6, EventKind::Process(blind)),
            ev(
                7,
                EventKind::Process(Process {
                    exit_code: Some(7),
                    ..process(ProcessPhase::Exit, 10)
                }),
            ),
            ev(
                8,
                EventKind::Process(Process {
                    signal: Some(9),
                    ..process(ProcessPhase::Exit, 11)
                }),
            ),
            ev(
                9,
                EventKind::Process(Process {
                    exit_code: Some(0),
                    ..process(ProcessPhase::Exit, 12)
                }),
            ),
            ev(10, EventKind::Tunnel(tunnel(TunnelState::Opened, 0, 0))),
            ev(11, EventKind::Tunnel(tunnel(TunnelState::Denied, 0, 0))),
            ev(12, EventKind::Tunnel(tunnel(TunnelState::Closed, 5, 7))),
            ev(
                2500,
                EventKind::End {
                    exit_code: Some(3),
                    how: "exited".into(),
                },
            ),
        ] {
            b.push(&e);
        }
        b.count_command();
        b.count_command();
        let s = b.finish(spool(), &[]);
        assert_eq!(s.summary_version, 1);
        assert_eq!(
            (
                s.session_id.as_str(),
                s.owner.as_str(),
                s.run_as_user.as_str()
            ),
            ("s-1", "alice", "ssm-user")
        );
        assert_eq!(s.reason.as_deref(), Some("debug"));
        assert_eq!(s.start, "2023-11-14T22:13:20.000Z");
        assert_eq!(s.end.as_deref(), Some("2023-11-14T22:13:22.500Z"));
        assert_eq!(s.end_unix_ms, Some(1_700_000_002_500));
        assert_eq!(s.duration_ms, Some(2500));
        assert_eq!(
            (s.exit_code, s.ended_how.as_deref()),
            (Some(3), Some("exited"))
        );
        assert_eq!(
            s.bytes,
            ByteCounts {
                output: 2,
                input: 3,
                input_withheld: 8
            }
        );
        assert_eq!(
            s.processes,
            ProcessCounts {
                executed: 2,
                exited: 3,
                details_unavailable: 1,
                exited_non_zero: 1,
                killed_by_signal: 1,
            }
        );
        assert_eq!(s.commands, 2);
        assert_eq!(
            s.redactions,
            RedactionCounts {
                arguments_masked: 1,
                echo_off_bytes: 8,
                echo_off_lines: 1
            }
        );
        assert_eq!(
            (s.tunnels.opened, s.tunnels.denied, s.tunnels.closed),
            (1, 1, 1)
        );
        assert_eq!(
            (
                s.tunnels.bytes_to_destinations,
                s.tunnels.bytes_from_destinations
            ),
            (5, 7)
        );
        assert!(s.complete, "{:?}", s.incomplete_reasons);
        assert!(s.incomplete_reasons.is_empty() && !s.interrupted);
        assert_eq!(s.spool, spool());
        // camelCase on the wire, and back.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["runAsUser"], "ssm-user");
        assert_eq!(json["bytes"]["inputWithheld"], 8);
        assert_eq!(json["processes"]["detailsUnavailable"], 1);
        assert_eq!(json["redactions"]["argumentsMasked"], 1);
        assert_eq!(json["spool"]["chainHead"], "ab");
        assert_eq!(json["delivery"], serde_json::json!({}));
        let back: SessionSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn gaps_interruptions_and_problems_make_it_incomplete_with_the_reasons() {
        let mut b = SummaryBuilder::new(&start());
        let gap = |to_ms: Option<u64>, reason: &str| {
            ev(
                10,
                EventKind::Gap {
                    from_ms: 5,
                    to_ms,
                    bytes: if to_ms.is_some() { 100 } else { 0 },
                    events: if to_ms.is_some() { 2 } else { 0 },
                    reason: reason.into(),
                },
            )
        };
        b.push(&gap(None, "disk full"));
        b.push(&gap(Some(20), "disk full"));
        b.push(&gap(None, "disk full"));
        b.push(&gap(Some(30), "disk full"));
        b.push(&gap(None, "kernel events lost"));
        // Still open, no end: both said.
        let s = b.finish(spool(), &[]);
        assert!(!s.complete);
        assert_eq!(s.gaps.count, 3);
        assert_eq!((s.gaps.bytes, s.gaps.events), (200, 4));
        assert_eq!(
            s.gaps.reasons,
            ["disk full", "kernel events lost (still open at the end)"]
        );
        assert!(s.incomplete_reasons[0].contains("no end"), "{s:?}");
        assert!(s.incomplete_reasons[1].contains("3 part(s)"), "{s:?}");
        assert_eq!(s.end, None);
        // Finishing is repeatable (a live summary, then the final one).
        assert_eq!(b.finish(spool(), &[]), s);

        let mut b = SummaryBuilder::new(&start());
        b.push(&ev(
            70,
            EventKind::End {
                exit_code: None,
                how: "interrupted: the agent stopped".into(),
            },
        ));
        let s = b.finish(spool(), &["cannot write transcript: full".into()]);
        assert!(s.interrupted && !s.complete);
        assert_eq!(
            s.incomplete_reasons,
            [
                "the session was interrupted: the agent stopped",
                "cannot write transcript: full"
            ]
        );
    }

    #[test]
    fn gap_reasons_are_bounded_in_number_and_length() {
        let mut b = SummaryBuilder::new(&start());
        for i in 0..100 {
            b.push(&ev(
                1,
                EventKind::Gap {
                    from_ms: 0,
                    to_ms: Some(1),
                    bytes: 1,
                    events: 1,
                    reason: format!("{i}: {}", "é".repeat(1000)),
                },
            ));
        }
        let s = b.finish(spool(), &[]);
        assert_eq!(s.gaps.count, 100);
        assert_eq!(s.gaps.reasons.len(), MAX_GAP_REASONS);
        assert_eq!(s.gaps.reasons_omitted, 100 - MAX_GAP_REASONS as u64);
        assert!(s
            .gaps
            .reasons
            .iter()
            .all(|r| r.len() <= MAX_REASON_BYTES + '…'.len_utf8()));
    }

    #[test]
    fn delivery_reads_as_one_line() {
        let mut d = DeliverySummary::default();
        assert_eq!(d.short(), "local only");
        d.s3 = Some(DestinationDelivery {
            state: DeliveryState::Delivered,
            location: "s3://b/p".into(),
            error: None,
        });
        d.cloud_watch_logs = Some(DestinationDelivery::default());
        assert_eq!(d.short(), "s3 delivered, cloudwatch pending");
        d.skipped.push("no region".into());
        assert_eq!(d.short(), "s3 delivered, cloudwatch pending, skipped");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["cloudWatchLogs"]["state"], "pending");
        assert_eq!(json["s3"]["state"], "delivered");
    }

    #[test]
    fn a_summary_from_a_newer_or_older_agent_still_reads() {
        let s: SessionSummary =
            serde_json::from_str(r#"{"sessionId":"x","someFutureField":1,"bytes":{"output":3}}"#)
                .unwrap();
        assert_eq!(s.session_id, "x");
        assert_eq!(s.bytes.output, 3);
    }
}
