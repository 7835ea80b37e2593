//! The per-session host side: users and the shell on a PTY. Knows nothing of the
//! protocol, sockets or delivery; the agent drives it.
//!
//! `pty` and `user` are the platform edges, one file per platform with the same names
//! for what the agent uses (the Windows files are `pty_windows.rs` and
//! `user_windows.rs`: ConPTY, local accounts, logon). `spec` holds the types both
//! share; `password` (the Windows password rules) and `cmdline` (Windows command-line
//! quoting) are pure, so they are tested on every build.
pub mod cmdline;
pub mod password;
#[cfg(unix)]
pub mod pty;
#[cfg(windows)]
#[path = "pty_windows.rs"]
pub mod pty;
pub mod spec;
#[cfg(unix)]
pub mod user;
#[cfg(windows)]
#[path = "user_windows.rs"]
pub mod user;
