//! The spool: a session's recording as it happens, and the one source every derived
//! artefact and every copy is checked against.
//!
//! Like a disk buffer with its own documented format, reader and writer (vector's disk
//! buffer is the model), everything that touches the bytes of a spool is here:
//!
//! * [`format`](mod@format) — the on-disk format (pure): length-prefixed, CRC-checked, hash-chained
//!   records after an 8-byte header, with the format drawn out in its doc.
//! * [`reader`] — the one reader, for a file still being written (never past what the
//!   writer published), a file after a crash (a torn tail said as such), and any stream
//!   (an S3 body): the agent's deriver, its rebuild, `verify`, `replay` and `transcript`
//!   all read through it.
//! * [`verify`] — the judgement: intact or broken, complete or not (gaps, a missing end).
//! * [`layout`] — the recording directory: its file names ([`layout::Paths`]), the
//!   acknowledgement files the sinks keep beside the recording (`stream.ack`, `s3.ack`,
//!   `upload.ack`), the delivery report's name, and the atomic, owner-only write they all
//!   use; it imports nothing else of the crate, so the recorder side (`agent::recording`)
//!   and the delivery side (`delivery`) share it without importing each other.
//!
//! The agent's writer (`agent::recording::writer`: space reserved ahead, gap records,
//! group commit) appends with [`format::encode_record`]; the consumers that derive the
//! transcript, the asciicast and the CloudWatch records read with [`reader::Reader`].

pub mod format;
pub mod layout;
pub mod reader;
pub mod verify;
