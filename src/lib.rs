//! session-agent
pub mod protocol;
