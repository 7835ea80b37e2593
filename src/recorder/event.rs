//! The recorder's one timed event stream and its JSON-lines form.
//!
//! Every [`Event`] carries a sequence number (contiguous from 0 within a session) and a
//! millisecond offset from the session start. On disk (the raw stream in the state dir)
//! each event is one JSON object per line:
//!
//! ```text
//! {"seq":0,"at_ms":0,"type":"start","session_id":"s-1","user":"alice",...}
//! {"seq":1,"at_ms":12,"type":"output","data":"aGVsbG8NCg=="}
//! {"seq":2,"at_ms":40,"type":"input_redacted","bytes":7}
//! {"seq":3,"at_ms":55,"type":"resize","cols":120,"rows":40}
//! {"seq":4,"at_ms":900,"type":"end","exit_code":0,"how":"exited"}
//! ```
//!
//! Binary payloads (`output`, `input`) are **standard base64 with padding** (RFC 4648
//! section 4), encoded by the small local codec in this file: terminal output is
//! arbitrary bytes, base64 keeps it lossless and a third of the size of a JSON array.

use serde::{Deserialize, Serialize};

/// What the session is and who runs it; the payload of [`EventKind::Start`] and the
/// source of the asciicast header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartInfo {
    /// The Session Manager session id.
    pub session_id: String,
    /// The identity that started the session (e.g. an IAM ARN or a local name).
    pub user: String,
    /// The OS account the shell runs as.
    pub run_as_user: String,
    /// The owner of the session as the service reports it.
    pub owner: String,
    /// The target (instance id) the session runs on.
    pub target: String,
    /// The reason given when the session was started, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Initial terminal width in columns.
    pub cols: u16,
    /// Initial terminal height in rows.
    pub rows: u16,
    /// Wall-clock start of the session, Unix milliseconds; `at_ms` values count from here.
    pub started_unix_ms: u64,
    /// `TERM` of the shell, for the asciicast header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// The shell program, for the asciicast header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

/// One recorded event: its place in the stream, its time and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, contiguous from 0 (the start event) within a session.
    pub seq: u64,
    /// Milliseconds since the session start (never decreasing within a stream).
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The session started.
    Start(StartInfo),
    /// Bytes the shell wrote to the terminal.
    Output {
        /// The raw bytes (base64 in JSON).
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// Bytes the user typed, recorded while echo was on.
    Input {
        /// The raw bytes (base64 in JSON).
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// Redaction marker: this many bytes were typed while the PTY had ECHO off (a
    /// password, or a program that echoes for itself). The bytes themselves are never
    /// kept.
    InputRedacted {
        /// How many bytes were typed.
        bytes: usize,
        /// How many of them ended a line (CR or LF: Enter); absent in recordings made
        /// before it was counted.
        #[serde(default, skip_serializing_if = "is_zero")]
        lines: usize,
    },
    /// The terminal was resized.
    Resize {
        /// New width in columns.
        cols: u16,
        /// New height in rows.
        rows: u16,
    },
    /// Part of the session could not be recorded (the disk was full): written when the
    /// loss begins (`to_ms` absent: open) and again when recording resumes or the
    /// session ends (`to_ms` set, with what was lost). The chain stays intact across a
    /// gap, so `verify` reports the recording as incomplete, not as altered.
    Gap {
        /// When the loss began (session milliseconds).
        from_ms: u64,
        /// When recording resumed; absent in the record written as the loss began.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_ms: Option<u64>,
        /// Bytes of output and input not recorded.
        bytes: u64,
        /// Events not recorded.
        events: u64,
        /// Why, e.g. "no space left on the recordings' file system".
        reason: String,
    },
    /// The session ended.
    End {
        /// The shell's exit status, when it exited normally.
        #[serde(default)]
        exit_code: Option<i32>,
        /// How the session ended (e.g. `exited`, `terminated`, `signal 9`).
        how: String,
    },
    /// A connection through a port session (the tunnel audit): one event when it is
    /// opened (or refused), one when it closes. The bytes themselves are never recorded.
    Tunnel(Tunnel),
    /// A program a session's process executed, or a process of the session that ended
    /// (the command audit, from the kernel).
    Process(Process),
}

/// Exec or exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessPhase {
    /// A program was executed.
    Exec,
    /// The process ended.
    Exit,
}

/// One command-audit record (see [`EventKind::Process`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Exec or exit.
    pub phase: ProcessPhase,
    /// The process (initial pid namespace).
    pub pid: u32,
    /// Its parent when it was forked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// The name of the real uid at exec (as the host's user database said then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Real and effective uid at exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// See `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub euid: Option<u32>,
    /// Working directory at exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The executable at exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// The arguments at exec, secrets masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// The argument area was longer than the agent reads (64 KiB): `argv` holds its
    /// beginning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub argv_truncated: bool,
    /// Arguments masked by the redaction rules.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redactions: usize,
    /// Why the details are missing (the process ended before they could be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details_unavailable: Option<String>,
    /// At exec: the audit login uid the kernel keeps for it (the session user's, set
    /// before the session's first program ran; auditd records carry it as `auid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    /// At exec: the kernel's audit session id (auditd's `ses`), the same for every
    /// process of the session unless root changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_session: Option<u32>,
    /// At exit: its exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// At exit: the signal that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// At exit: how long it lived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl Process {
    /// The record as one line of text.
    pub fn note(&self) -> String {
        match self.phase {
            ProcessPhase::Exec => {
                let what = if self.argv.is_empty() {
                    self.executable.clone().unwrap_or_else(|| "?".into())
                } else {
                    self.argv.join(" ")
                };
                format!("[exec pid {}: {what}]", self.pid)
            }
            ProcessPhase::Exit => match (self.exit_code, self.signal) {
                (_, Some(sig)) => format!("[exit pid {}: signal {sig}]", self.pid),
                (code, None) => format!("[exit pid {}: status {}]", self.pid, code.unwrap_or(-1)),
            },
        }
    }
}

/// What happened to a connection through a port session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    /// Connected to the destination.
    Opened,
    /// Refused by the agent's port-forwarding policy (nothing was dialled).
    Denied,
    /// The destination could not be resolved or reached.
    Failed,
    /// The connection ended (with its byte counts).
    Closed,
}

/// One tunnel audit record (see [`EventKind::Tunnel`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// The connection's number in its session (the smux stream id when multiplexed).
    pub conn: u32,
    /// What happened.
    pub state: TunnelState,
    /// The destination host as requested (`localhost` when the document names none).
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The address dialled (`ip:port`), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Why it was denied or failed, or how it closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes from the client to the destination (on close).
    #[serde(default)]
    pub bytes_to_destination: u64,
    /// Bytes from the destination to the client (on close).
    #[serde(default)]
    pub bytes_from_destination: u64,
    /// Session milliseconds when it was opened (on close).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_ms: Option<u64>,
}

impl Tunnel {
    /// The record as one line of text, for the transcript, playback and the stream.
    pub fn note(&self) -> String {
        let to = match &self.address {
            Some(a) => format!("{}:{} ({a})", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        };
        let why = self
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        match self.state {
            TunnelState::Opened => format!("[tunnel #{}: connected to {to}]", self.conn),
            TunnelState::Denied => format!("[tunnel #{}: denied {to}{why}]", self.conn),
            TunnelState::Failed => {
                format!("[tunnel #{}: could not connect to {to}{why}]", self.conn)
            }
            TunnelState::Closed => format!(
                "[tunnel #{}: closed {to}, {} bytes to it, {} bytes from it{why}]",
                self.conn, self.bytes_to_destination, self.bytes_from_destination
            ),
        }
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Line ends (CR or LF, as Enter sends them) in typed bytes.
pub fn line_ends(data: &[u8]) -> usize {
    data.iter().filter(|b| matches!(b, b'\r' | b'\n')).count()
}

/// What the terminal shows at the end of a session cut short (an end event whose `how`
/// starts with `interrupted`): a line of its own, saying so. The recorder renders it into
/// the transcript and the asciicast, and playback shows it, so every copy of the
/// recording says the session was interrupted. `None` for a normal end.
pub fn end_note(how: &str) -> Option<String> {
    how.starts_with("interrupted")
        .then(|| format!("\r\n[session {how}]\r\n"))
}

/// What the terminal shows where part of a session could not be recorded: a line of its
/// own, in the transcript, the asciicast and playback. `started_unix_ms` dates it (0:
/// unknown, times are then offsets into the session).
pub fn gap_note(kind: &EventKind, started_unix_ms: u64) -> Option<String> {
    let EventKind::Gap {
        from_ms,
        to_ms,
        bytes,
        events,
        reason,
    } = kind
    else {
        return None;
    };
    // Dated when the session's start is known, else as an offset into it.
    #[allow(clippy::cast_precision_loss)] // milliseconds of a session
    let when = |ms: u64| {
        if started_unix_ms == 0 {
            format!("+{:.1} s", ms as f64 / 1000.0)
        } else {
            crate::timefmt::rfc3339(started_unix_ms.saturating_add(ms), false)
        }
    };
    Some(match to_ms {
        None => format!(
            "\r\n[recording gap begins at {}: {reason}; the session goes on unrecorded until the recording can continue]\r\n",
            when(*from_ms)
        ),
        Some(to) => format!(
            "\r\n[recording gap: {bytes} bytes in {events} events were not recorded from {} to {}: {reason}]\r\n",
            when(*from_ms),
            when(*to)
        ),
    })
}

impl Event {
    /// The event as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Serializing these plain structs cannot fail (no maps with non-string keys, no
        // failing `Serialize` impls); the fallback keeps this function total anyway.
        serde_json::to_string(self).unwrap_or_else(|e| {
            serde_json::json!({"seq": self.seq, "at_ms": self.at_ms, "error": e.to_string()})
                .to_string()
        })
    }

    /// Parses one line written by [`Event::to_json_line`].
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Serde adapter: `Vec<u8>` as a base64 string.
mod b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::base64_encode(data))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::base64_decode(&text)
            .ok_or_else(|| serde::de::Error::custom("invalid base64 payload"))
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 section 4) with `=` padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// Decodes what [`base64_encode`] writes; `None` on any malformed input.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (i, quad) in bytes.chunks(4).enumerate() {
        let last = i + 1 == quads;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * u32::try_from(pad).ok()?;
        let [_, b0, b1, b2] = n.to_be_bytes();
        out.push(b0);
        if pad < 2 {
            out.push(b1);
        }
        if pad < 1 {
            out.push(b2);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base64_known_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(plain.as_bytes()));
        }
        assert_eq!(base64_decode("Zg="), None);
        assert_eq!(base64_decode("Z===",), None);
        assert_eq!(base64_decode("Zg==Zg=="), None);
        assert_eq!(base64_decode("Zm9*"), None);
    }

    proptest! {
        #[test]
        fn base64_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(base64_decode(&base64_encode(&data)), Some(data));
        }

        #[test]
        fn base64_decode_never_panics(text in ".{0,40}") {
            let _ = base64_decode(&text);
        }
    }

    #[test]
    fn events_round_trip_through_json_lines() {
        let start = StartInfo {
            session_id: "s-1".into(),
            user: "arn:aws:iam::1:user/alice".into(),
            run_as_user: "ssm-user".into(),
            owner: "alice".into(),
            target: "i-0123".into(),
            reason: Some("debug".into()),
            cols: 80,
            rows: 24,
            started_unix_ms: 1_700_000_000_123,
            term: Some("xterm-256color".into()),
            shell: None,
        };
        let events = [
            Event {
                seq: 0,
                at_ms: 0,
                kind: EventKind::Start(start),
            },
            Event {
                seq: 1,
                at_ms: 3,
                kind: EventKind::Output {
                    data: b"hi\r\n\xff".to_vec(),
                },
            },
            Event {
                seq: 2,
                at_ms: 4,
                kind: EventKind::Input {
                    data: b"ls\r".to_vec(),
                },
            },
            Event {
                seq: 3,
                at_ms: 5,
                kind: EventKind::InputRedacted { bytes: 9, lines: 1 },
            },
            Event {
                seq: 4,
                at_ms: 6,
                kind: EventKind::Resize {
                    cols: 100,
                    rows: 30,
                },
            },
            Event {
                seq: 5,
                at_ms: 7,
                kind: EventKind::End {
                    exit_code: Some(0),
                    how: "exited".into(),
                },
            },
        ];
        for event in events {
            let line = event.to_json_line();
            assert!(!line.contains('\n'));
            assert_eq!(Event::from_json_line(&line).unwrap(), event, "{line}");
        }
        let line = Event {
            seq: 1,
            at_ms: 3,
            kind: EventKind::Output {
                data: b"hi".to_vec(),
            },
        }
        .to_json_line();
        assert_eq!(line, r#"{"seq":1,"at_ms":3,"type":"output","data":"aGk="}"#);
    }
}
