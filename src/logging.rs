//! Log output: which format, and where it goes. `main` installs the subscriber with
//! [`init`]; nothing else in the crate touches the global subscriber.
//!
//! * `plain` (the default): one line per event. On a terminal with colour and timestamps;
//!   into a file or pipe with timestamps and no colour; and when stderr *is* the systemd
//!   journal (`JOURNAL_STREAM` names stderr's device and inode, as systemd sets it for a
//!   service), without timestamps (the journal stamps every line) and with the
//!   `<N>` syslog priority prefix, so `journalctl -p warning` and the colouring of
//!   `journalctl` work.
//! * `json`: one JSON object per line (`timestamp`, `level`, `target`, `message` and the
//!   event's fields at top level), for log shippers.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (journald-aware).
    #[default]
    Plain,
    /// JSON lines.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is not `plain` or `json`")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "plain",
            Self::Json => "json",
        })
    }
}

/// Parses a log filter: a level or tracing directives. A bare word that is not a level
/// would silently become a target filter and hide every other line, so it is refused.
///
/// # Errors
/// What is wrong, with the accepted forms.
pub fn parse_filter(text: &str) -> Result<EnvFilter, String> {
    let level_ok = text
        .parse::<tracing_subscriber::filter::LevelFilter>()
        .is_ok()
        || text.contains('=');
    match EnvFilter::try_new(text) {
        Ok(f) if level_ok => Ok(f),
        _ => Err(format!(
            "{text:?} is not a level (error, warn, info, debug, trace, off) or a directive such as session_agent=debug"
        )),
    }
}

/// The syslog priority the journal files a line under (sd-daemon(3) prefixes).
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// True when stderr is connected to the systemd journal: `JOURNAL_STREAM` holds
/// `DEVICE:INODE` of the stream systemd gave the service, and stderr is still that stream
/// (a child whose stderr was redirected inherits the variable, so both must match).
pub fn stderr_is_journal() -> bool {
    #[cfg(unix)]
    {
        let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        match nix::sys::stat::fstat(2) {
            // dev_t and ino_t are u64 on Linux, narrower on some other unixes.
            #[allow(clippy::useless_conversion)]
            Ok(st) => names_stream(
                &value.to_string_lossy(),
                u64::from(st.st_dev),
                u64::from(st.st_ino),
            ),
            Err(_) => false,
        }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Whether a `JOURNAL_STREAM` value (`DEVICE:INODE`) names this device and inode.
#[cfg_attr(not(unix), allow(dead_code))]
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    match value.split_once(':') {
        Some((d, i)) => d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino),
        None => false,
    }
}

/// The plain format for the journal: the priority prefix, then the usual line without a
/// timestamp.
#[derive(Debug)]
pub struct JournalFormat {
    inner: Format<Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> Self {
        Self {
            inner: Format::default().without_time().with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Where the lines go.
#[derive(Debug)]
pub enum Target {
    /// Standard error (a terminal, a pipe, or the journal).
    Stderr,
    /// A file (`dev`, which owns the terminal).
    File(std::fs::File),
}

/// The service's log (`STATE_DIR/session-agent.log`; a Windows service has no terminal
/// and no journal). At each start a log over [`SERVICE_LOG_MAX`] is renamed to
/// `session-agent.log.1` (replacing the one before), so the two files never hold much
/// more than twice that.
///
/// # Errors
/// The directory or file cannot be created, as one line naming the path.
pub fn service_log_file(state_dir: &std::path::Path) -> Result<std::fs::File, String> {
    let path = state_dir.join("session-agent.log");
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > SERVICE_LOG_MAX) {
        let _ = std::fs::rename(&path, path.with_extension("log.1"));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Size at which [`service_log_file`] starts a new file.
pub const SERVICE_LOG_MAX: u64 = 16 * 1024 * 1024;
/// Installs the global subscriber.
pub fn init(filter: EnvFilter, format: LogFormat, target: Target) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    // Colour only for a person at a terminal; files, pipes and the journal get plain text.
    let (writer, terminal, stderr) = match target {
        Target::Stderr => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            true,
        ),
        Target::File(f) => (BoxMakeWriter::new(std::sync::Mutex::new(f)), false, false),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // When stderr is gone (a closed pipe), tracing would report that with
        // `eprintln!`, which panics: losing a log line must not take the daemon down.
        .log_internal_errors(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Plain if stderr && !terminal && stderr_is_journal() => {
            builder.event_format(JournalFormat::default()).init()
        }
        LogFormat::Plain => builder.with_ansi(terminal).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_filters_parse_strictly() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("plain".parse::<LogFormat>(), Ok(LogFormat::Plain));
        assert!("JSON ".parse::<LogFormat>().is_err());
        assert!(parse_filter("debug").is_ok());
        assert!(parse_filter("session_agent=trace,info").is_ok());
        assert!(parse_filter("verbose").unwrap_err().contains("not a level"));
    }

    #[test]
    fn journal_lines_carry_the_syslog_priority_and_no_timestamp() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JournalFormat::default())
            .with_writer(move || out.clone())
            .with_max_level(Level::DEBUG)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(session = "s-1", "Broken");
            tracing::warn!("Careful");
            tracing::info!("Fine");
            tracing::debug!("Detail");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("<3>ERROR "), "{}", lines[0]);
        assert!(lines[0].ends_with("Broken session=\"s-1\""), "{}", lines[0]);
        assert!(lines[1].starts_with("<4> WARN "), "{}", lines[1]);
        assert!(lines[2].starts_with("<6> INFO "), "{}", lines[2]);
        assert!(lines[3].starts_with("<7>DEBUG "), "{}", lines[3]);
        assert!(
            !text.contains('\u{1b}'),
            "no colour in the journal: {text:?}"
        );
    }

    #[test]
    fn journal_stream_must_name_this_very_stream() {
        assert!(names_stream("64769:1234", 64769, 1234));
        assert!(!names_stream("64769:1234", 64769, 1235));
        assert!(!names_stream("64769", 64769, 1234));
        assert!(!names_stream("x:y", 0, 0));
        assert!(!names_stream("", 0, 0));
    }

    #[test]
    fn the_service_log_is_rotated_once_it_is_large() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut f = service_log_file(&state).unwrap();
        std::io::Write::write_all(&mut f, b"first run\n").unwrap();
        drop(f);
        drop(service_log_file(&state).unwrap());
        let log = state.join("session-agent.log");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "first run\n");
        std::fs::File::options()
            .append(true)
            .open(&log)
            .unwrap()
            .set_len(SERVICE_LOG_MAX + 1)
            .unwrap();
        drop(service_log_file(&state).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        let old = state.join("session-agent.log.1");
        assert_eq!(std::fs::metadata(old).unwrap().len(), SERVICE_LOG_MAX + 1);
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(service_log_file(&file)
            .unwrap_err()
            .contains("cannot create"));
    }
}
