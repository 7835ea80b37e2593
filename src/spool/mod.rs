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
//! * [`writer`] — the one writer, on a session's output path: each event appended whole
//!   into space reserved ahead ([`reserve`]), what cannot be written an explicit gap
//!   record, group commit, and the progress it publishes for the readers.
//!
//! Rebuilding after a crash is the writer continuing a cut spool
//! ([`writer::SpoolWriter::continuing`]: the torn tail cut off, the end appended) while
//! the consumers re-derive their files from it (`agent::recording::rebuild`, the same
//! code as a live session's).

pub mod format;
pub mod layout;
pub mod reader;
pub mod reserve;
pub mod verify;
pub mod writer;
