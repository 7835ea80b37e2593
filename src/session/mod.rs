//! The per-session host side: users and the shell on a PTY. Knows nothing of the
//! protocol, sockets or delivery; the agent drives it.
pub mod password;
pub mod pty;
pub mod user;
