//! Reading recordings back (pure): the raw stream (events as JSON lines, from the spool or an `events.jsonl`) or an asciicast v2 file
//! (`<id>.cast`), one line at a time, as [`Frame`]s; and the replay timing
//! ([`Pacer`]: speed factor, idle pauses capped). `session-agent replay` and
//! `session-agent transcript` do the I/O.

use super::event::{Event, EventKind};

/// What a recording line means for playback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The terminal size at the start.
    Size {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Output at a time (ms since the start).
    Output {
        /// Milliseconds since the start.
        at_ms: u64,
        /// The bytes the terminal showed.
        data: Vec<u8>,
    },
    /// A resize at a time.
    Resize {
        /// Milliseconds since the start.
        at_ms: u64,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// A line with nothing to play (input, markers, end).
    Skip,
}

/// Which file format a recording is in, decided by its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `events.jsonl`.
    Events,
    /// asciicast v2.
    Asciicast,
}

/// A line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ReadError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Recognises the format from the first line.
///
/// # Errors
/// Neither a recorder start event nor an asciicast v2 header.
pub fn detect(first_line: &str) -> Result<Format, ReadError> {
    let bad = |reason: String| ReadError { line: 1, reason };
    let v: serde_json::Value = serde_json::from_str(first_line)
        .map_err(|e| bad(format!("not a recording (not JSON: {e})")))?;
    if v.get("version").and_then(serde_json::Value::as_u64) == Some(2) {
        return Ok(Format::Asciicast);
    }
    if v.get("seq").is_some() && v.get("type").is_some() {
        return Ok(Format::Events);
    }
    Err(bad(
        "not a recording: expected a spool (SASPOOL1), an events.jsonl start event or an asciicast v2 header".into(),
    ))
}

fn clamp(v: u64) -> u16 {
    u16::try_from(v.clamp(1, 10_000)).unwrap_or(80)
}

/// Parses line `n` (1-based) of a recording in `format`. Blank lines are skipped.
///
/// # Errors
/// The line is not valid for the format.
pub fn parse_line(format: Format, n: usize, line: &str) -> Result<Frame, ReadError> {
    let bad = |reason: String| ReadError { line: n, reason };
    if line.trim().is_empty() {
        return Ok(Frame::Skip);
    }
    match format {
        Format::Events => {
            let e = Event::from_json_line(line).map_err(|e| bad(e.to_string()))?;
            Ok(match e.kind {
                EventKind::Start(info) => Frame::Size {
                    cols: info.cols,
                    rows: info.rows,
                },
                EventKind::Output { data } => Frame::Output {
                    at_ms: e.at_ms,
                    data,
                },
                EventKind::Resize { cols, rows } => Frame::Resize {
                    at_ms: e.at_ms,
                    cols,
                    rows,
                },
                // So does a part that could not be recorded.
                gap @ EventKind::Gap { .. } => match super::event::gap_note(&gap, 0) {
                    Some(note) => Frame::Output {
                        at_ms: e.at_ms,
                        data: note.into_bytes(),
                    },
                    None => Frame::Skip,
                },
                // A port session's connections, as lines.
                EventKind::Tunnel(t) => Frame::Output {
                    at_ms: e.at_ms,
                    data: format!("{}\r\n", t.note()).into_bytes(),
                },
                // A session cut short says so where it ends.
                EventKind::End { how, .. } => match super::event::end_note(&how) {
                    Some(note) => Frame::Output {
                        at_ms: e.at_ms,
                        data: note.into_bytes(),
                    },
                    None => Frame::Skip,
                },
                _ => Frame::Skip,
            })
        }
        Format::Asciicast => {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
            if n == 1 {
                let size = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                return Ok(Frame::Size {
                    cols: clamp(size("width")),
                    rows: clamp(size("height")),
                });
            }
            let arr = v
                .as_array()
                .filter(|a| a.len() == 3)
                .ok_or_else(|| bad("expected [time, code, data]".into()))?;
            let secs = arr[0]
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| bad("bad time".into()))?;
            // Truncation is the intent: milliseconds of a non-negative, finite time,
            // saturating at u64::MAX.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let at_ms = (secs * 1000.0).round() as u64;
            let data = arr[2]
                .as_str()
                .ok_or_else(|| bad("data is not a string".into()))?;
            Ok(match arr[1].as_str() {
                Some("o") => Frame::Output {
                    at_ms,
                    data: data.as_bytes().to_vec(),
                },
                Some("r") => {
                    let (c, r) = data
                        .split_once('x')
                        .ok_or_else(|| bad("resize is not COLSxROWS".into()))?;
                    let num = |s: &str| s.trim().parse::<u64>().map_err(|e| bad(e.to_string()));
                    Frame::Resize {
                        at_ms,
                        cols: clamp(num(c)?),
                        rows: clamp(num(r)?),
                    }
                }
                _ => Frame::Skip,
            })
        }
    }
}

/// Replay timing: how long to wait before each frame.
#[derive(Debug, Clone)]
pub struct Pacer {
    speed: f64,
    idle_limit_ms: u64,
    last_ms: Option<u64>,
}

impl Pacer {
    /// `speed` > 0 (2.0 plays twice as fast); pauses in the recording longer than
    /// `idle_limit_ms` are shortened to it (before the speed applies).
    pub fn new(speed: f64, idle_limit_ms: u64) -> Self {
        Self {
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
            idle_limit_ms,
            last_ms: None,
        }
    }

    /// The wait (ms) before a frame recorded at `at_ms`; the first frame plays at once.
    pub fn delay_ms(&mut self, at_ms: u64) -> u64 {
        let gap = self
            .last_ms
            .map_or(0, |last| at_ms.saturating_sub(last))
            .min(self.idle_limit_ms);
        self.last_ms = Some(at_ms.max(self.last_ms.unwrap_or(0)));
        // A gap of at most a few days in ms is exact in f64; the result is rounded.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let scaled = (gap as f64 / self.speed).round() as u64;
        scaled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{Recorder, StartInfo};

    fn info() -> StartInfo {
        StartInfo {
            session_id: "s".into(),
            user: "u".into(),
            run_as_user: "u".into(),
            owner: "u".into(),
            target: "t".into(),
            reason: None,
            cols: 90,
            rows: 20,
            started_unix_ms: 0,
            term: None,
            shell: None,
        }
    }

    #[test]
    fn both_formats_read_back_the_same_frames() {
        let mut rec = Recorder::new(info());
        let mut events = vec![rec.start_event().to_json_line()];
        events.push(rec.output(10, b"hi\r\n").to_json_line());
        events.push(rec.input(20, b"secret", true).to_json_line());
        events.push(rec.resize(30, 100, 40).to_json_line());
        events.push(rec.output(1500, "é\r\n".as_bytes()).to_json_line());
        events.push(rec.end(1600, Some(0), "exited").to_json_line());
        let cast = rec.take_asciicast_lines();
        for lines in [&events, &cast] {
            let format = detect(&lines[0]).unwrap();
            let frames: Vec<Frame> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| parse_line(format, i + 1, l).unwrap())
                .filter(|f| *f != Frame::Skip)
                .collect();
            assert_eq!(
                frames,
                [
                    Frame::Size { cols: 90, rows: 20 },
                    Frame::Output {
                        at_ms: 10,
                        data: b"hi\r\n".to_vec()
                    },
                    Frame::Resize {
                        at_ms: 30,
                        cols: 100,
                        rows: 40
                    },
                    Frame::Output {
                        at_ms: 1500,
                        data: "é\r\n".as_bytes().to_vec()
                    },
                ],
                "{format:?}"
            );
        }
    }

    #[test]
    fn bad_input_is_an_error_naming_the_line() {
        assert!(detect("hello").is_err());
        assert!(detect("{\"foo\":1}").is_err());
        let e = parse_line(Format::Asciicast, 3, "[1.0, \"o\"]").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(parse_line(Format::Asciicast, 2, "[-1, \"o\", \"x\"]").is_err());
        assert!(parse_line(Format::Asciicast, 2, "[1, \"r\", \"axb\"]").is_err());
        assert!(parse_line(Format::Events, 2, "{\"seq\":1}").is_err());
        assert_eq!(parse_line(Format::Events, 2, "  ").unwrap(), Frame::Skip);
    }

    #[test]
    fn pacing_applies_speed_and_caps_idle() {
        let mut p = Pacer::new(2.0, 1000);
        assert_eq!(p.delay_ms(500), 0);
        assert_eq!(p.delay_ms(700), 100);
        assert_eq!(p.delay_ms(60_700), 500); // a minute idle: capped to 1 s, at 2x
        assert_eq!(p.delay_ms(60_000), 0); // out of order: no wait
        let mut p = Pacer::new(f64::NAN, 10);
        p.delay_ms(0);
        assert_eq!(p.delay_ms(4), 4);
    }
}
