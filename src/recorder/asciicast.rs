//! asciicast v2 (<https://docs.asciinema.org/manual/asciicast/v2>) for replay in
//! asciinema-player.
//!
//! A header line, then one `[seconds, code, data]` line per event: `"o"` output, `"i"`
//! input typed with echo on, `"r"` resize (`"COLSxROWS"`), and an `"m"` marker
//! `"input redacted: N bytes[, L Enter]"` where input typed with echo off was withheld
//! (the bytes are never written).
//! Start and end events produce no line. Times are exact decimal seconds with millisecond
//! precision (`at_ms` / 1000).
//!
//! The format carries text, not bytes. [`AsciicastEncoder`] carries an incomplete UTF-8
//! sequence at the end of a chunk over to the next chunk of the same direction, so a
//! character split by a read boundary is written whole; bytes that are not UTF-8 at all
//! become U+FFFD (one per invalid sequence, as `String::from_utf8_lossy` does), and so
//! does an incomplete sequence still pending at the end. The raw event stream keeps the
//! exact bytes. The pure [`asciicast_line`] decodes each event on its own (lossy, no
//! carry).

use serde::Serialize;

use super::event::{Event, EventKind, StartInfo};

#[derive(Serialize)]
struct Header<'a> {
    version: u8,
    width: u16,
    height: u16,
    timestamp: u64,
    env: Env<'a>,
    title: String,
}

#[derive(Serialize)]
struct Env<'a> {
    #[serde(rename = "TERM", skip_serializing_if = "Option::is_none")]
    term: Option<&'a str>,
    #[serde(rename = "SHELL", skip_serializing_if = "Option::is_none")]
    shell: Option<&'a str>,
}

/// The asciicast v2 header line for a session (no trailing newline).
pub fn asciicast_header(start: &StartInfo) -> String {
    let header = Header {
        version: 2,
        width: start.cols,
        height: start.rows,
        timestamp: start.started_unix_ms / 1000,
        env: Env {
            term: start.term.as_deref(),
            shell: start.shell.as_deref(),
        },
        title: format!(
            "{} as {} on {}",
            start.session_id, start.run_as_user, start.target
        ),
    };
    serde_json::to_string(&header).unwrap_or_else(|_| {
        format!(
            r#"{{"version": 2, "width": {}, "height": {}}}"#,
            start.cols, start.rows
        )
    })
}

/// The asciicast line for one event on its own (no trailing newline); `None` for events
/// that have no line (start, end, output that decodes to nothing).
pub fn asciicast_line(event: &Event) -> Option<String> {
    match &event.kind {
        EventKind::Output { data } => text_line(event.at_ms, "o", &String::from_utf8_lossy(data)),
        EventKind::Input { data } => text_line(event.at_ms, "i", &String::from_utf8_lossy(data)),
        EventKind::InputRedacted { bytes, lines } => text_line(
            event.at_ms,
            "m",
            &if *lines > 0 {
                format!("input redacted: {bytes} bytes, {lines} Enter")
            } else {
                format!("input redacted: {bytes} bytes")
            },
        ),
        EventKind::Resize { cols, rows } => text_line(event.at_ms, "r", &format!("{cols}x{rows}")),
        EventKind::Tunnel(t) => text_line(event.at_ms, "m", &t.note()),
        // Not part of what the terminal showed; the command audit is read with its own
        // tools.
        EventKind::Process(_) => None,
        EventKind::Start(_) | EventKind::End { .. } | EventKind::Gap { .. } => None,
    }
}

fn seconds(at_ms: u64) -> String {
    format!("{}.{:03}", at_ms / 1000, at_ms % 1000)
}

fn text_line(at_ms: u64, code: &str, text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let data = serde_json::Value::String(text.to_owned());
    Some(format!("[{}, \"{code}\", {data}]", seconds(at_ms)))
}

/// Holds back an incomplete UTF-8 sequence at the end of a chunk.
#[derive(Debug, Default, Clone)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// Decodes `bytes` after what was held back; invalid bytes become U+FFFD, an
    /// incomplete sequence at the end is held back for the next call.
    pub fn decode(&mut self, bytes: &[u8]) -> String {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(bytes);
        let mut out = String::with_capacity(buf.len());
        let mut rest = buf.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(len..).unwrap_or_default();
                        }
                        None => {
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// What is still held back, as U+FFFD (empty when nothing is).
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

/// Turns the event stream into asciicast lines, carrying split UTF-8 sequences.
#[derive(Debug, Default, Clone)]
pub struct AsciicastEncoder {
    output: Utf8Carry,
    input: Utf8Carry,
}

impl AsciicastEncoder {
    /// A fresh encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lines (no trailing newlines) for one event, in order. For the end event this
    /// flushes whatever incomplete UTF-8 was held back.
    pub fn lines(&mut self, event: &Event, started_unix_ms: u64) -> Vec<String> {
        let t = event.at_ms;
        let line = match &event.kind {
            gap @ EventKind::Gap { .. } => {
                let note = super::event::gap_note(gap, started_unix_ms).unwrap_or_default();
                return [("o", self.output.finish()), ("o", note)]
                    .into_iter()
                    .filter_map(|(code, text)| text_line(t, code, &text))
                    .collect();
            }
            EventKind::Output { data } => text_line(t, "o", &self.output.decode(data)),
            EventKind::Input { data } => text_line(t, "i", &self.input.decode(data)),
            EventKind::End { how, .. } => {
                let note = super::event::end_note(how).unwrap_or_default();
                return [
                    ("o", self.output.finish()),
                    ("i", self.input.finish()),
                    ("o", note),
                ]
                .into_iter()
                .filter_map(|(code, text)| text_line(t, code, &text))
                .collect();
            }
            _ => asciicast_line(event),
        };
        line.into_iter().collect()
    }
}

/// A whole `.cast` file for a recorded event stream (header from its start event; `None`
/// without one).
pub fn asciicast_from_events(events: &[Event]) -> Option<String> {
    let start = events.iter().find_map(|e| match &e.kind {
        EventKind::Start(info) => Some(info),
        _ => None,
    })?;
    let mut out = asciicast_header(start);
    out.push('\n');
    let mut encoder = AsciicastEncoder::new();
    for event in events {
        for line in encoder.lines(event, start.started_unix_ms) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> StartInfo {
        StartInfo {
            session_id: "s-1".into(),
            user: "alice".into(),
            run_as_user: "ssm-user".into(),
            owner: "alice".into(),
            target: "i-1".into(),
            reason: None,
            cols: 80,
            rows: 24,
            started_unix_ms: 1_700_000_000_999,
            term: Some("xterm-256color".into()),
            shell: Some("/bin/bash".into()),
        }
    }

    fn ev(at_ms: u64, kind: EventKind) -> Event {
        Event {
            seq: 0,
            at_ms,
            kind,
        }
    }

    #[test]
    fn header_has_the_required_fields() {
        let header: serde_json::Value = serde_json::from_str(&asciicast_header(&start())).unwrap();
        assert_eq!(header["version"], 2);
        assert_eq!(header["width"], 80);
        assert_eq!(header["height"], 24);
        assert_eq!(header["timestamp"], 1_700_000_000u64);
        assert_eq!(header["env"]["TERM"], "xterm-256color");
        assert_eq!(header["env"]["SHELL"], "/bin/bash");
        assert!(header["title"].as_str().unwrap().contains("s-1"));
        assert!(asciicast_header(&start()).starts_with(r#"{"version":2,"#));
    }

    #[test]
    fn event_lines() {
        let out = ev(
            1005,
            EventKind::Output {
                data: b"hi\x1b[0m\r\n".to_vec(),
            },
        );
        assert_eq!(
            asciicast_line(&out).unwrap(),
            r#"[1.005, "o", "hi\u001b[0m\r\n"]"#
        );
        let input = ev(
            20,
            EventKind::Input {
                data: b"ls\r".to_vec(),
            },
        );
        assert_eq!(asciicast_line(&input).unwrap(), r#"[0.020, "i", "ls\r"]"#);
        let redacted = ev(3000, EventKind::InputRedacted { bytes: 8, lines: 0 });
        assert_eq!(
            asciicast_line(&redacted).unwrap(),
            r#"[3.000, "m", "input redacted: 8 bytes"]"#
        );
        let resize = ev(
            4500,
            EventKind::Resize {
                cols: 120,
                rows: 40,
            },
        );
        assert_eq!(
            asciicast_line(&resize).unwrap(),
            r#"[4.500, "r", "120x40"]"#
        );
        assert_eq!(asciicast_line(&ev(0, EventKind::Start(start()))), None);
        let parsed: serde_json::Value =
            serde_json::from_str(&asciicast_line(&out).unwrap()).unwrap();
        assert_eq!(parsed[2], "hi\u{1b}[0m\r\n");
    }

    #[test]
    fn split_utf8_is_carried_and_invalid_bytes_replaced() {
        let mut carry = Utf8Carry::default();
        let euro = "€".as_bytes();
        assert_eq!(carry.decode(&[b'a', euro[0]]), "a");
        assert_eq!(carry.decode(&euro[1..2]), "");
        assert_eq!(carry.decode(&[euro[2], b'b']), "€b");
        assert_eq!(carry.decode(b"x\xffy\xc3"), "x\u{FFFD}y");
        assert_eq!(carry.finish(), "\u{FFFD}");
        assert_eq!(carry.finish(), "");
        // An incomplete sequence interrupted by a new one: the first becomes U+FFFD.
        assert_eq!(carry.decode(b"\xe2\x82"), "");
        assert_eq!(carry.decode(b"\xe2\x82\xac"), "\u{FFFD}€");
    }

    #[test]
    fn encoder_flushes_at_end() {
        let mut enc = AsciicastEncoder::new();
        assert!(
            enc.lines(
                &ev(
                    1,
                    EventKind::Output {
                        data: b"ok\xe2\x82".to_vec()
                    }
                ),
                0
            )
            .len()
                == 1
        );
        let end = enc.lines(
            &ev(
                2,
                EventKind::End {
                    exit_code: Some(0),
                    how: "exited".into(),
                },
            ),
            0,
        );
        assert_eq!(end, ["[0.002, \"o\", \"\u{FFFD}\"]".to_owned()]);
    }
}
