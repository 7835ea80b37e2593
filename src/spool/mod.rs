//! # spool — a recording's files on disk
//!
//! * [`layout`] — the recording directory: its file names ([`layout::Paths`]), the
//!   acknowledgement files the sinks keep beside the recording (`stream.ack`, `s3.ack`,
//!   `upload.ack`), the delivery report's name, and the atomic, owner-only write they all
//!   use.
//!
//! A low module: it imports nothing else of the crate, so the recorder side
//! (`agent::recording`) and the delivery side (`delivery`) share the layout
//! without importing each other.

pub mod layout;
