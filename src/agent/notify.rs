//! What the daemon tells its service manager. Under systemd (`Type=notify`, see
//! `packaging/systemd/session-agent.service`) that is the sd_notify protocol: `READY=1`
//! once the agent is set up and serving (before the first control channel is open: a
//! gateway that is down must not make `systemctl start` time out; the `STATUS=` line says
//! whether it is online), `STATUS=` as the control channel comes and goes, `STOPPING=1`
//! when a stop begins, and `WATCHDOG=1` pings at a third of `WatchdogSec=`.
//!
//! The pings come from their own task on the agent's runtime, so they prove the runtime
//! is scheduling work (not deadlocked, not every worker thread blocked). Without
//! `NOTIFY_SOCKET` (not started by systemd, or on Windows, where the service control
//! handler reports state instead) every call here does nothing.

use std::time::Duration;

#[cfg(unix)]
fn send(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "Cannot notify the service manager");
    }
}

/// The agent is serving.
pub(crate) fn ready(status: &str) {
    #[cfg(unix)]
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
    #[cfg(not(unix))]
    let _ = status;
}

/// A new one-line status (shown by `systemctl status`).
pub(crate) fn status(status: &str) {
    #[cfg(unix)]
    send(&[sd_notify::NotifyState::Status(status)]);
    #[cfg(not(unix))]
    let _ = status;
}

/// A stop has begun.
pub(crate) fn stopping(status: &str) {
    #[cfg(unix)]
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status(status),
    ]);
    #[cfg(not(unix))]
    let _ = status;
}

/// The watchdog interval the service manager asked for, if any: `WATCHDOG_USEC`, for this
/// process when `WATCHDOG_PID` is set (as sd_watchdog_enabled(3) reads them; the
/// sd-notify crate also insists on `WATCHDOG_PID`, which systemd always sets but other
/// supervisors need not).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Starts the watchdog pings when the service manager asked for them.
pub(crate) fn spawn_watchdog() {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let every = (interval / 3).max(Duration::from_millis(10));
    tracing::debug!(?interval, ?every, "Watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            #[cfg(unix)]
            send(&[sd_notify::NotifyState::Watchdog]);
        }
    });
}
