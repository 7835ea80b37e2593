//! pty (in progress)
