//! What the streamer and the uploads read and write in a recording's directory: complete
//! lines from an offset, and the sinks' acknowledged positions (`stream.ack`,
//! `upload.ack`, `s3.ack`; names in [`crate::spool::layout`]).

use crate::spool::layout::write_atomic;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Most bytes of `stream.jsonl` (or the transcript) read per round (bounds memory).
pub(super) const READ_LIMIT: usize = 4 * 1024 * 1024;

/// Reads complete lines of `path` from `offset`, at most about `limit` bytes; returns
/// them and the offset after the last complete line.
pub(super) fn read_lines_from(
    path: &Path,
    offset: u64,
    limit: usize,
) -> std::io::Result<(Vec<String>, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file.take(limit as u64));
    let mut lines = Vec::new();
    let mut pos = offset;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf)?;
        if n == 0 || !buf.ends_with('\n') {
            break; // end, or a partial line (still being written, or past the limit)
        }
        pos += n as u64;
        lines.push(buf.trim_end_matches('\n').to_owned());
    }
    if lines.is_empty() && pos == offset {
        // One line longer than the limit: read it whole rather than stall.
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::new(file);
        buf.clear();
        let n = reader.read_line(&mut buf)?;
        if buf.ends_with('\n') {
            pos += n as u64;
            lines.push(buf.trim_end_matches('\n').to_owned());
        }
    }
    Ok((lines, pos))
}

/// A number a sink acknowledged in an earlier run (`stream.ack`: the last record stored;
/// `upload.ack`: events stored); `None` when nothing was acknowledged yet.
pub(super) fn read_ack_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Records a sink's acknowledged position. A failure is logged, not fatal: it only means
/// a restart may send again what this position covers.
pub(super) fn write_ack(path: &Path, bytes: &[u8]) {
    if let Err(e) = write_atomic(path, bytes) {
        tracing::warn!(path = %path.display(), error = %e, "Cannot record a delivery position; a restart may send some of it again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_whole_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "one\ntwo\nthr").unwrap();
        let (lines, next) = read_lines_from(&p, 0, 1024).unwrap();
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(next, 8);
        let (lines, next2) = read_lines_from(&p, next, 1024).unwrap();
        assert!(lines.is_empty());
        assert_eq!(next2, 8);
        // A limit smaller than one line still makes progress.
        let (lines, _) = read_lines_from(&p, 0, 2).unwrap();
        assert_eq!(lines, ["one"]);
    }
}
