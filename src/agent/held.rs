//! `run` under a service manager with a configuration it cannot use: held, not exited.
//!
//! Why: on a host where this agent is the only way in, a unit that gives up is a
//! lock-out. Exiting with status 64 and letting systemd restart us would work, but every
//! restart would spam the journal, and a restart-rate limit or a `RestartPreventExitStatus`
//! ends the retries for good. So when `NOTIFY_SOCKET` is set (systemd's `Type=notify`;
//! see `packaging/systemd/session-agent.service`) and the configuration is invalid, the
//! process stays up instead:
//!
//! * the error goes to the journal once, at error level, with the file, line and column
//!   the configuration error names;
//! * `READY=1` with `STATUS=configuration invalid: …` (one line, at most
//!   [`STATUS_MAX`] characters), so `systemctl status session-agent` shows the reason and
//!   a package's `systemctl start` does not hang; watchdog pings continue;
//! * the configuration file (and its `.d` drop-in directory, if any) is looked at every
//!   [`POLL`]: when it changes, on SIGHUP, and anyway every [`RECHECK`], the process
//!   re-executes itself (same PID, same arguments, so systemd's MainPID, the notify
//!   socket and the watchdog stay valid) and reads everything again, logging the error
//!   again if it is still there. A valid configuration then starts the agent as usual,
//!   with that configuration's log level and format.
//!
//! Without `NOTIFY_SOCKET` (a person at a terminal, another supervisor) `run` exits with
//! status 64 at once as before: a typo at a prompt wants the message, not a wait.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the configuration files are looked at for a change.
pub const POLL: Duration = Duration::from_secs(2);
/// Re-read (and re-log the error) at least this often, even with no change seen (a file
/// the configuration refers to may have been fixed, or the environment).
pub const RECHECK: Duration = Duration::from_secs(300);
/// The longest `STATUS=` text, in characters (systemctl shows one line).
pub const STATUS_MAX: usize = 200;
/// Bytes of the configuration file read to notice a change; a longer file is
/// fingerprinted by its first bytes, its length and its modification time.
pub const FINGERPRINT_MAX: u64 = 1 << 20;

/// Whether a service manager that understands `READY=1`/`STATUS=` started us.
#[must_use]
pub fn under_service_manager() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// What to do after [`hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the configuration again (re-execute).
    Retry,
    /// A stop signal came: exit.
    Stop,
}

/// The configuration error as one `STATUS=` line: whitespace (line breaks of a
/// multi-line error) collapsed, at most [`STATUS_MAX`] characters (an ellipsis marks a
/// cut).
#[must_use]
pub fn status_line(error: &str) -> String {
    let mut out = String::from("configuration invalid: ");
    let words = error.split_whitespace().collect::<Vec<_>>().join(" ");
    out.push_str(&words);
    if out.chars().count() > STATUS_MAX {
        out = out.chars().take(STATUS_MAX - 1).collect();
        out.push('…');
    }
    out
}

/// Holds the process while the configuration is invalid (see the module docs). Returns
/// when it should be read again, or when `stop` resolves. `read_before` is the
/// [`fingerprint`] taken before the configuration was read, so that a fix made meanwhile
/// is not missed.
pub async fn hold(
    error: &str,
    config: Option<&Path>,
    read_before: u64,
    stop: impl Future<Output = ()>,
) -> Next {
    tracing::error!(
        "Configuration invalid; serving no sessions until it is fixed (re-read when it changes, on SIGHUP, and every {} min): {error}",
        RECHECK.as_secs() / 60
    );
    super::notify::ready(&status_line(error));
    super::notify::spawn_watchdog();
    let first = read_before;
    let started = Instant::now();
    tokio::pin!(stop);
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGHUP; the configuration is re-read when it changes");
            None
        }
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            () = &mut stop => return Next::Stop,
            () = hangup => {
                tracing::info!("SIGHUP: reading the configuration again");
                return Next::Retry;
            }
            _ = tick.tick() => {
                if fingerprint(config) != first {
                    tracing::info!("The configuration changed: reading it again");
                    return Next::Retry;
                }
                if started.elapsed() >= RECHECK {
                    return Next::Retry;
                }
            }
        }
    }
}

/// A hash of what the configuration is read from: the file's first [`FINGERPRINT_MAX`]
/// bytes, its length and modification time, and the name, length and modification time
/// of each entry of `FILE.d/` (drop-ins). Missing files hash as missing.
#[must_use]
pub fn fingerprint(config: Option<&Path>) -> u64 {
    use std::io::Read;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let Some(path) = config else {
        return h.finish();
    };
    let meta =
        |p: &Path, h: &mut std::collections::hash_map::DefaultHasher| match std::fs::metadata(p) {
            Ok(m) => {
                m.len().hash(h);
                m.modified().ok().hash(h);
            }
            Err(e) => e.kind().hash(h),
        };
    meta(path, &mut h);
    if let Ok(f) = std::fs::File::open(path) {
        let mut bytes = Vec::new();
        let _ = f.take(FINGERPRINT_MAX).read_to_end(&mut bytes);
        bytes.hash(&mut h);
    }
    let mut dropins = path.as_os_str().to_owned();
    dropins.push(".d");
    if let Ok(dir) = std::fs::read_dir(Path::new(&dropins)) {
        let mut entries: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            entry.hash(&mut h);
            meta(&entry, &mut h);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_is_one_bounded_line() {
        assert_eq!(
            status_line("/etc/x.toml:3:1: max_sessions: invalid"),
            "configuration invalid: /etc/x.toml:3:1: max_sessions: invalid"
        );
        let multi =
            "TOML parse error at line 2, column 7\n  |\n2 | max = \n  |      ^\nexpected a value\n";
        let line = status_line(multi);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.ends_with("expected a value"), "{line}");
        let long = status_line(&"é".repeat(1000));
        assert_eq!(long.chars().count(), STATUS_MAX);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn the_fingerprint_follows_the_file_and_its_dropins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.toml");
        let missing = fingerprint(Some(&file));
        assert_eq!(missing, fingerprint(Some(&file)));
        std::fs::write(&file, "max_sessions = \"lots\"\n").unwrap();
        let bad = fingerprint(Some(&file));
        assert_ne!(bad, missing);
        assert_eq!(bad, fingerprint(Some(&file)));
        // Same length, other content: still a change.
        std::fs::write(&file, "max_sessions = \"many\"\n").unwrap();
        let other = fingerprint(Some(&file));
        assert_ne!(other, bad);
        std::fs::create_dir(dir.path().join("a.toml.d")).unwrap();
        std::fs::write(dir.path().join("a.toml.d/10-x.toml"), "x = 1\n").unwrap();
        assert_ne!(fingerprint(Some(&file)), other);
    }
}
