//! The user's terminal: raw mode with guaranteed restoration, and the window size.
//!
//! Raw mode (`cfmakeraw`: no echo, no line editing, no signal keys, no output
//! post-processing) makes every key, Ctrl-C included, reach the remote shell as a byte.
//! [`RawMode`] restores the saved settings when dropped, so every way out of the client —
//! normal return, error, panic unwinding — leaves the terminal as it was; the pump also
//! restores explicitly before printing its final message.

use crate::protocol::payload::Size;
#[cfg(unix)]
use nix::sys::termios::{self, SetArg, Termios};
use std::io::IsTerminal;

/// The size reported when standard input and output are not terminals. Upstream falls
/// back to 300x100, which makes full-screen programs draw far past any real window;
/// 80x24 is what a terminal without a size (and the agent's own PTY default) uses.
pub const DEFAULT_SIZE: Size = Size { cols: 80, rows: 24 };

/// True when standard input is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// The window size of the terminal on standard input, else on standard output, else
/// `None`.
pub fn window_size() -> Option<Size> {
    let (w, h) = terminal_size::terminal_size_of(std::io::stdin())
        .or_else(|| terminal_size::terminal_size_of(std::io::stdout()))?;
    Some(Size {
        cols: u32::from(w.0),
        rows: u32::from(h.0),
    })
}

/// The terminal's settings before raw mode: termios on Unix, the console input and
/// output modes on Windows.
#[cfg(unix)]
type Saved = Termios;
#[cfg(windows)]
type Saved = crate::windows::console::Modes;

/// Standard input in raw mode until dropped (or [`RawMode::restore`]d).
#[derive(Debug)]
pub struct RawMode {
    saved: Option<Saved>,
}

impl RawMode {
    /// Puts standard input into raw mode. `Ok(None)` when it is not a terminal. On
    /// Windows: no line input, echo or Ctrl-C processing, and virtual-terminal sequences
    /// both ways, so keys arrive as the bytes a Unix terminal would send.
    ///
    /// # Errors
    /// The terminal's settings could not be read or changed.
    pub fn enter() -> std::io::Result<Option<Self>> {
        if !stdin_is_tty() {
            return Ok(None);
        }
        #[cfg(unix)]
        let saved = {
            let stdin = std::io::stdin();
            let saved = termios::tcgetattr(&stdin)?;
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
            saved
        };
        #[cfg(windows)]
        let saved = crate::windows::console::enter_raw()?;
        Ok(Some(Self { saved: Some(saved) }))
    }

    /// Puts the saved settings back (once; later calls do nothing).
    pub fn restore(&mut self) {
        if let Some(saved) = self.saved.take() {
            // Let pending output drain first, so nothing written in raw mode is
            // post-processed under the restored settings.
            #[cfg(unix)]
            let restored = termios::tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &saved)
                .map_err(std::io::Error::from);
            #[cfg(windows)]
            let restored = crate::windows::console::restore(saved);
            if let Err(e) = restored {
                tracing::debug!(error = %e, "Cannot restore the terminal");
            }
        }
    }

    /// True until restored.
    pub fn is_active(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}
