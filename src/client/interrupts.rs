//! Signals (Unix) and console control events (Windows), turned into what they ask of the
//! pump: send the window size again, type a control character, or end the session.
//!
//! Each source is registered once, when [`Interrupts::listen`] runs, so none delivered
//! between two waits is lost; a source that cannot be registered is simply never
//! reported.

/// What an interrupt asks of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// The window may have changed size (SIGWINCH; Windows has no such event).
    #[cfg_attr(windows, allow(dead_code))]
    WindowChanged,
    /// Type this control character into the remote terminal (SIGINT → Ctrl-C, SIGQUIT →
    /// Ctrl-\, SIGTSTP → Ctrl-Z; on Windows Ctrl-C and Ctrl-Break).
    Key(u8),
    /// End the session: the named signal or event, and its number for the exit status
    /// (128 + number, as shells report a signal).
    End(Stop),
}

/// A request to end the client, by name and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stop {
    /// `SIGTERM`, `SIGHUP`, or the Windows console event (`CTRL_CLOSE_EVENT`, …).
    pub(crate) name: &'static str,
    /// The signal number (SIGTERM 15, SIGHUP 1); Windows events count as SIGHUP (the
    /// console went away) or SIGTERM (shutdown).
    pub(crate) number: i32,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(unix)]
mod imp {
    use super::{recv, Interrupt, Stop};
    use tokio::signal::unix::{signal, Signal, SignalKind};

    const SIGTSTP: i32 = nix::sys::signal::Signal::SIGTSTP as i32;

    /// The signals the client listens to.
    #[derive(Debug)]
    pub(crate) struct Interrupts {
        winch: Option<Signal>,
        int: Option<Signal>,
        quit: Option<Signal>,
        tstp: Option<Signal>,
        term: Option<Signal>,
        hup: Option<Signal>,
    }

    impl Interrupts {
        pub(crate) fn listen() -> Self {
            let listen = |kind| signal(kind).ok();
            Self {
                winch: listen(SignalKind::window_change()),
                int: listen(SignalKind::interrupt()),
                quit: listen(SignalKind::quit()),
                tstp: listen(SignalKind::from_raw(SIGTSTP)),
                term: listen(SignalKind::terminate()),
                hup: listen(SignalKind::hangup()),
            }
        }

        /// The next interrupt; never resolves when none can arrive.
        pub(crate) async fn next(&mut self) -> Interrupt {
            let end = |name, number| Interrupt::End(Stop { name, number });
            tokio::select! {
                Some(()) = recv(self.winch.as_mut().map(Signal::recv)) => Interrupt::WindowChanged,
                // Upstream turns these into the terminal's control characters (§6.5); in
                // raw mode the keys arrive as bytes anyway.
                Some(()) = recv(self.int.as_mut().map(Signal::recv)) => Interrupt::Key(0x03),
                Some(()) = recv(self.quit.as_mut().map(Signal::recv)) => Interrupt::Key(0x1c),
                Some(()) = recv(self.tstp.as_mut().map(Signal::recv)) => Interrupt::Key(0x1a),
                Some(()) = recv(self.term.as_mut().map(Signal::recv)) => end("SIGTERM", 15),
                Some(()) = recv(self.hup.as_mut().map(Signal::recv)) => end("SIGHUP", 1),
                else => std::future::pending().await,
            }
        }
    }
}

#[cfg(windows)]
mod imp {
    use super::{recv, Interrupt, Stop};
    use tokio::signal::windows;

    /// The console control events the client listens to.
    #[derive(Debug)]
    pub(crate) struct Interrupts {
        ctrl_c: Option<windows::CtrlC>,
        ctrl_break: Option<windows::CtrlBreak>,
        close: Option<windows::CtrlClose>,
        logoff: Option<windows::CtrlLogoff>,
        shutdown: Option<windows::CtrlShutdown>,
    }

    impl Interrupts {
        pub(crate) fn listen() -> Self {
            Self {
                ctrl_c: windows::ctrl_c().ok(),
                ctrl_break: windows::ctrl_break().ok(),
                close: windows::ctrl_close().ok(),
                logoff: windows::ctrl_logoff().ok(),
                shutdown: windows::ctrl_shutdown().ok(),
            }
        }

        /// The next interrupt; never resolves when none can arrive. Window-size changes
        /// have no event on Windows consoles: the pump's poll finds them.
        pub(crate) async fn next(&mut self) -> Interrupt {
            let hangup = |name| Interrupt::End(Stop { name, number: 1 });
            tokio::select! {
                Some(()) = recv(self.ctrl_c.as_mut().map(|s| s.recv())) => Interrupt::Key(0x03),
                Some(()) = recv(self.ctrl_break.as_mut().map(|s| s.recv())) => Interrupt::Key(0x1c),
                Some(()) = recv(self.close.as_mut().map(|s| s.recv())) => hangup("CTRL_CLOSE_EVENT"),
                Some(()) = recv(self.logoff.as_mut().map(|s| s.recv())) => hangup("CTRL_LOGOFF_EVENT"),
                Some(()) = recv(self.shutdown.as_mut().map(|s| s.recv())) => Interrupt::End(Stop {
                    name: "CTRL_SHUTDOWN_EVENT",
                    number: 15,
                }),
                else => std::future::pending().await,
            }
        }
    }
}

pub(crate) use imp::Interrupts;

/// The next delivery of a source; never resolves for a source that is not registered or
/// has closed (so a `select!` branch on it simply stays silent).
async fn recv(wait: Option<impl std::future::Future<Output = Option<()>>>) -> Option<()> {
    match wait {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}
