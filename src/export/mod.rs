//! `session-agent export --html FILE`: one self-contained HTML page that plays a
//! recording in a browser (the vendored asciinema-player, inlined), with the timeline and
//! the transcript beside it. A page can be mailed, attached to a ticket or opened on a
//! machine without the agent, and needs no network when viewed.
//!
//! A subcommand of its own rather than a `replay` flag: `replay` plays to this terminal
//! (its options are about the terminal and the pace), `export` writes a file (its
//! options are where and how), and the two evolve apart.
//!
//! This module is the I/O: it finds the recording (a session id, a directory, a spool,
//! an `events.jsonl` or an asciicast, as `replay` does, through
//! [`crate::sessions::locate_spool`]), reads it record by record (lines bounded in
//! bytes), and writes the page (owner-only, never over an existing file without
//! `--force`). What goes into the page, how it is escaped and its bounds are
//! [`page`]'s (pure).

pub mod page;

use crate::recorder::{Event, EventKind};
use crate::sessions::{locate_spool, StateDirArg};
use crate::spool::format as spool;
use crate::spool::reader::{ReadError, Reader};
use clap::Args;
use page::{CastPage, EventPage, Limits};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Longest line read from an `events.jsonl` or `.cast` file: 16 MiB (a longer one is an
/// error, not a reason to hold the file in memory).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// What `export --help` adds.
pub const EXPORT_AFTER_HELP: &str = "The page plays the session with asciinema-player \
(vendored, inlined: no network when viewed; its licence is in the packages' doc \
directory; a Content-Security-Policy allows nothing \
else), with the player's controls (space: play/pause, arrows: seek, [ ]: markers, \
, . : step a frame, f: full screen), markers for typed commands, withheld input, gaps \
and the end; beside it the timeline (typed commands, programs run, notes; click to \
seek) and the clean transcript. Open FILE#t=end to start at the end, FILE#t=SECONDS \
elsewhere.

Everything the session printed or typed is shown as text, never run as markup. \
Bounds: 32 MiB of recording (as embedded) per page; past it the page ends there and \
says so at its top (`replay` and `transcript` read it all); the transcript 8 MiB, the \
timeline 2000 entries. The page holds what the session showed: it is written \
owner-only (0600), like the recording.

Examples:
  session-agent export --html session.html SESSION_ID
  session-agent export --html - /var/lib/session-agent/recordings/ID > session.html
  session-agent export --html session.html ID.cast      # downloaded from S3";

/// `session-agent export` options.
#[derive(Debug, Args)]
#[command(after_help = EXPORT_AFTER_HELP)]
pub struct ExportArgs {
    /// A recording: a session id (looked up as STATE_DIR/recordings/ID), a recording's
    /// directory or its events.spool, an events.jsonl, or ID.cast (local or downloaded
    /// from S3).
    #[arg(value_name = "ID|FILE")]
    pub recording: PathBuf,
    /// Write a self-contained HTML page that plays the recording in a browser to FILE
    /// (`-`: standard output). An existing FILE is not overwritten without --force.
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    /// Pauses longer than this many seconds are shortened to it in the player (the
    /// timeline still shows real times).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub idle_limit: f64,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub state: StateDirArg,
}

/// The file a recording argument names: an existing file as it is, a directory's
/// `events.spool`, or a session id's under the state directory.
fn resolve(file: &Path, state: &StateDirArg) -> Result<PathBuf, String> {
    if file.is_file() {
        return Ok(file.to_owned());
    }
    match file.to_str() {
        Some(arg) => locate_spool(arg, &state.recordings()),
        None if file.is_dir() => Ok(file.join(crate::spool::layout::EVENTS_FILE)),
        None => Err(format!(
            "cannot open {}: no such file or directory",
            file.display()
        )),
    }
}

/// Runs `export`: writes the page, and says where on `out` (nothing when the page
/// itself goes to `out`, with `--html -`).
///
/// # Errors
/// Bad options, the recording cannot be found or read (what was read before is not
/// written), the page cannot be written.
pub fn export(args: &ExportArgs, out: &mut impl Write) -> Result<(), String> {
    if !(args.idle_limit.is_finite() && args.idle_limit >= 0.0) {
        return Err(format!(
            "--idle-limit {} must be zero or more seconds",
            args.idle_limit
        ));
    }
    // Checked finite and non-negative; whole milliseconds, at most a year.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let idle_ms = (args.idle_limit.min(31_536_000.0) * 1000.0) as u64;
    let file = resolve(&args.recording, &args.state)?;
    let html = render_file(&file, idle_ms, Limits::default())?;
    if args.html.as_os_str() == "-" {
        return out
            .write_all(html.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write: {e}"));
    }
    write_page(&args.html, html.as_bytes(), args.force)?;
    writeln!(
        out,
        "wrote {} ({} KiB): open it in a browser (add #t=end to the address to start at the end)",
        args.html.display(),
        html.len().div_ceil(1024)
    )
    .map_err(|e| format!("cannot write: {e}"))
}

/// The page of the recording in `file` (a spool, an `events.jsonl` or an asciicast).
///
/// # Errors
/// It cannot be read or is not a recording.
pub fn render_file(file: &Path, idle_ms: u64, limits: Limits) -> Result<String, String> {
    let name = file.display().to_string();
    let f = std::fs::File::open(file).map_err(|e| format!("cannot open {name}: {e}"))?;
    let mut reader = BufReader::new(f);
    let head = reader
        .fill_buf()
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if head.starts_with(spool::MAGIC) {
        return render_spool(reader, &name, idle_ms, limits);
    }
    let mut lines = BoundedLines::new(reader);
    let first = match lines.next_line() {
        Ok(Some(l)) => l,
        Ok(None) => return Err(format!("{name} is empty")),
        Err(e) => return Err(format!("{name}: line 1: {e}")),
    };
    let format = crate::recorder::playback::detect(&first).map_err(|e| format!("{name}: {e}"))?;
    match format {
        crate::recorder::playback::Format::Asciicast => {
            let mut page =
                CastPage::new(&first, idle_ms, limits).map_err(|e| format!("{name}: {e}"))?;
            let mut n = 1;
            loop {
                n += 1;
                match lines.next_line() {
                    Ok(Some(line)) => {
                        if !page
                            .push_line(n, &line)
                            .map_err(|e| format!("{name}: {e}"))?
                        {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("{name}: line {n}: {e}")),
                }
            }
            Ok(page.render())
        }
        crate::recorder::playback::Format::Events => {
            let event = |n: usize, line: &str| {
                Event::from_json_line(line).map_err(|e| format!("{name}: line {n}: {e}"))
            };
            let start = match event(1, &first)?.kind {
                EventKind::Start(start) => start,
                _ => return Err(format!("{name}: its first line is not the session's start")),
            };
            let mut page = EventPage::new(&start, idle_ms, limits);
            let mut n = 1;
            loop {
                n += 1;
                match lines.next_line() {
                    Ok(Some(line)) if line.trim().is_empty() => {}
                    Ok(Some(line)) => {
                        if !page.push(&event(n, &line)?) {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("{name}: line {n}: {e}")),
                }
            }
            Ok(page.render())
        }
    }
}

/// A spool's page, its hash chain checked as it is read: a broken or cut spool gives
/// the page of what came before, which says where and why it stops.
fn render_spool(
    reader: BufReader<std::fs::File>,
    name: &str,
    idle_ms: u64,
    limits: Limits,
) -> Result<String, String> {
    let mut reader = Reader::new(reader)
        .map_err(|e| format!("{name}: {e}"))?
        .verifying();
    let start = match reader.next_event(None) {
        Ok(Some((event, _))) => match event.kind {
            EventKind::Start(start) => start,
            _ => {
                return Err(format!(
                    "{name}: its first record is not the session's start"
                ))
            }
        },
        Ok(None) => return Err(format!("{name} holds no events")),
        Err(e) => return Err(format!("{name}: {e}")),
    };
    let mut page = EventPage::new(&start, idle_ms, limits);
    loop {
        match reader.next_event(None) {
            Ok(Some((event, _))) => {
                if !page.push(&event) {
                    break;
                }
            }
            Ok(None) => break,
            // A record being written now, or cut by a crash: the page ends before it
            // (and says the recording has no end, when it has none).
            Err(ReadError::Torn(_)) => break,
            Err(e) => {
                page.note(format!(
                    "The recording breaks off here: {e}. What came before is shown; `session-agent verify` says more."
                ));
                break;
            }
        }
    }
    Ok(page.render())
}

/// Lines of a reader, each at most [`MAX_LINE_BYTES`].
struct BoundedLines<R> {
    inner: R,
}

impl<R: BufRead> BoundedLines<R> {
    fn new(inner: R) -> Self {
        Self { inner }
    }

    /// The next line without its line end; `None` at the end.
    fn next_line(&mut self) -> Result<Option<String>, String> {
        let mut buf = Vec::new();
        loop {
            let chunk = self
                .inner
                .fill_buf()
                .map_err(|e| format!("cannot read: {e}"))?;
            if chunk.is_empty() {
                break;
            }
            let (taken, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if buf.len() + taken > MAX_LINE_BYTES + 1 {
                return Err(format!(
                    "a line longer than {} MiB",
                    MAX_LINE_BYTES / (1024 * 1024)
                ));
            }
            buf.extend_from_slice(&chunk[..taken]);
            self.inner.consume(taken);
            if done {
                break;
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| "not UTF-8 text".to_owned())
    }
}

/// Writes the page to `path`: a new file, owner-only (it holds what the session
/// showed), or over an existing one with `force`.
fn write_page(path: &Path, html: &[u8], force: bool) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists: give another file, or --force to overwrite it",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        }
    })?;
    f.write_all(html)
        .and_then(|()| f.flush())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded() {
        let text = format!("a\r\nb\n\n{}", "x".repeat(10));
        let mut lines = BoundedLines::new(std::io::Cursor::new(text.into_bytes()));
        assert_eq!(lines.next_line().unwrap().as_deref(), Some("a"));
        assert_eq!(lines.next_line().unwrap().as_deref(), Some("b"));
        assert_eq!(lines.next_line().unwrap().as_deref(), Some(""));
        assert_eq!(lines.next_line().unwrap().as_deref(), Some("xxxxxxxxxx"));
        assert_eq!(lines.next_line().unwrap(), None);
        let long = vec![b'y'; MAX_LINE_BYTES + 10];
        let mut lines = BoundedLines::new(std::io::Cursor::new(long));
        assert!(lines
            .next_line()
            .unwrap_err()
            .contains("longer than 16 MiB"));
    }
}
