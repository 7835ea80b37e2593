//! `session-agent replay FILE` and `session-agent transcript FILE`: read a recording
//! (`events.jsonl` or an asciicast `.cast`) line by line and play it to the terminal with
//! its timing, or print the clean text. Memory stays bounded by the screen, whatever the
//! recording's size. The parsing and pacing are pure (`recorder::playback`); this module
//! is the file and terminal I/O.

use crate::recorder::playback::{detect, parse_line, Format, Frame, Pacer};
use crate::recorder::Transcript;
use clap::Args;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Duration;

/// `session-agent replay` options.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A recording: STATE_DIR/recordings/ID/events.jsonl, or ID.cast (local or
    /// downloaded from S3).
    pub file: PathBuf,
    /// Playback speed factor (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Pauses longer than this many seconds are shortened to it (skips idle time).
    #[arg(long, default_value_t = 2.0)]
    pub idle_limit: f64,
}

/// `session-agent transcript` options.
#[derive(Debug, Args)]
pub struct TranscriptArgs {
    /// A recording: STATE_DIR/recordings/ID/events.jsonl, or ID.cast.
    pub file: PathBuf,
}

/// A recording's lines, numbered from 1.
type Lines = Box<dyn Iterator<Item = Result<(usize, String), String>>>;

fn open(file: &PathBuf) -> Result<(Format, Lines), String> {
    let f =
        std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let mut lines = BufReader::new(f)
        .lines()
        .enumerate()
        .map(|(i, l)| {
            l.map(|l| (i + 1, l))
                .map_err(|e| format!("cannot read line {}: {e}", i + 1))
        })
        .peekable();
    let first = match lines.peek() {
        Some(Ok((_, l))) => l.clone(),
        Some(Err(e)) => return Err(e.clone()),
        None => return Err(format!("{} is empty", file.display())),
    };
    let format = detect(&first).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((format, Box::new(lines)))
}

/// Plays a recording to `out` with its timing.
///
/// # Errors
/// The file cannot be read or is not a recording (the line is named).
pub fn replay(args: &ReplayArgs, out: &mut impl Write) -> Result<(), String> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        return Err(format!("--speed {} must be a positive number", args.speed));
    }
    if !(args.idle_limit.is_finite() && args.idle_limit >= 0.0) {
        return Err(format!(
            "--idle-limit {} must be zero or more seconds",
            args.idle_limit
        ));
    }
    let (format, lines) = open(&args.file)?;
    // Checked finite and non-negative above; whole milliseconds are enough.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let idle_ms = (args.idle_limit * 1000.0) as u64;
    let mut pacer = Pacer::new(args.speed, idle_ms);
    for line in lines {
        let (n, text) = line?;
        if let Frame::Output { at_ms, data } =
            parse_line(format, n, &text).map_err(|e| format!("{}: {e}", args.file.display()))?
        {
            let wait = pacer.delay_ms(at_ms);
            if wait > 0 {
                std::thread::sleep(Duration::from_millis(wait));
            }
            out.write_all(&data)
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write: {e}"))?;
        }
    }
    Ok(())
}

/// Prints the clean transcript of a recording to `out`.
///
/// # Errors
/// The file cannot be read or is not a recording (the line is named).
pub fn transcript(args: &TranscriptArgs, out: &mut impl Write) -> Result<(), String> {
    let (format, lines) = open(&args.file)?;
    let mut t: Option<Transcript> = None;
    let write = |t: &mut Transcript, out: &mut dyn Write| -> Result<(), String> {
        for l in t.take_lines() {
            writeln!(out, "{l}").map_err(|e| format!("cannot write: {e}"))?;
        }
        Ok(())
    };
    for line in lines {
        let (n, text) = line?;
        let frame =
            parse_line(format, n, &text).map_err(|e| format!("{}: {e}", args.file.display()))?;
        if let (None, Frame::Size { cols, rows }) = (&t, &frame) {
            let mut tr = Transcript::new(*cols, *rows);
            tr.forget_taken_lines();
            t = Some(tr);
            continue;
        }
        let tr = t.get_or_insert_with(|| {
            let mut tr = Transcript::new(80, 24);
            tr.forget_taken_lines();
            tr
        });
        match frame {
            Frame::Size { cols, rows } => tr.resize(cols, rows),
            Frame::Output { data, .. } => {
                tr.process(&data);
                // After every output event, as the agent's recorder does: the same
                // commit points give the same transcript.
                write(tr, out)?;
            }
            Frame::Resize { cols, rows, .. } => tr.resize(cols, rows),
            Frame::Skip => {}
        }
    }
    if let Some(tr) = t.as_mut() {
        tr.finish();
        write(tr, out)?;
    }
    out.flush().map_err(|e| format!("cannot write: {e}"))
}
