//! Files written with their disk space reserved ahead: a recording's files.
//!
//! A session user who fills the recordings' file system (a shared `/var`, say) must not
//! be able to blind the recorder of the very session they are in. So before a session
//! starts, each of its recording's files gets space reserved past its end: on Linux,
//! `fallocate(FALLOC_FL_KEEP_SIZE)` allocates blocks without changing the file's size,
//! and writes into those blocks cannot fail for want of space. A file keeps its
//! reservation ahead of what it writes, in chunks; when a chunk cannot be had (the disk is
//! full), the caller decides what to do with what does not fit (the recorder records a
//! gap, or ends the session), and asks again at most once a second. What is reserved and
//! not used is handed back ([`ReservedFile::release`]) when the file is closed.
//!
//! Where `fallocate` is not available (other systems, file systems without it), nothing
//! is reserved and writes are plain; a write that fails is cut back to the last whole
//! record, so the file never holds a partial one in its middle.
//!
//! Written by hand over `nix::fcntl::fallocate`: the crate has no file type that keeps a
//! reservation ahead of an appending writer.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// After a reservation failed, it is not asked for again sooner than this.
pub const RETRY_RESERVE: Duration = Duration::from_secs(1);

/// An append-only file with disk space reserved past its end.
#[derive(Debug)]
pub struct ReservedFile {
    file: File,
    /// Bytes written (the file's size).
    len: u64,
    /// Space is allocated up to here (≥ `len` while reservations work).
    reserved_to: u64,
    /// Highest offset ever asked for (a failed request may leave blocks allocated).
    asked_to: u64,
    /// Reservation step.
    chunk: u64,
    /// The file system can reserve.
    reservable: bool,
    /// No new reservation before this (after a failure).
    quiet_until: Option<Instant>,
}

impl ReservedFile {
    /// Opens `path` for appending (created 0600 where the platform has modes); nothing is
    /// reserved yet.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(path: &Path, chunk: u64) -> io::Result<Self> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            reserved_to: len,
            asked_to: len,
            chunk: chunk.max(4096),
            reservable: cfg!(target_os = "linux"),
            quiet_until: None,
        })
    }

    /// Bytes written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reserved bytes past what was written.
    pub fn room(&self) -> u64 {
        self.reserved_to.saturating_sub(self.len)
    }

    /// Reserves space up to `len + bytes` now (in whole chunks).
    ///
    /// # Errors
    /// The space cannot be had (typically ENOSPC); nothing changes then.
    pub fn reserve(&mut self, bytes: u64) -> io::Result<()> {
        let want = self.len.saturating_add(bytes);
        if !self.reservable || want <= self.reserved_to {
            return Ok(());
        }
        let missing = want - self.reserved_to;
        let ask = missing.div_ceil(self.chunk) * self.chunk;
        self.asked_to = self.asked_to.max(self.reserved_to + ask);
        match allocate(&self.file, self.reserved_to, ask) {
            Ok(()) => {
                self.reserved_to += ask;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                tracing::info!(error = %e, "The recordings' file system cannot reserve space; recordings are written without a reservation");
                self.reservable = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `bytes` can be written now with `keep` bytes still reserved after them:
    /// reserves more when needed, at most once per [`RETRY_RESERVE`] after a failure.
    /// Always true where nothing can be reserved (the write itself then decides).
    pub fn has_room(&mut self, bytes: u64, keep: u64, now: Instant) -> bool {
        if !self.reservable {
            return true;
        }
        let need = bytes.saturating_add(keep);
        if self.room() >= need {
            return true;
        }
        if self.quiet_until.is_some_and(|t| now < t) {
            return false;
        }
        // A chunk beyond what is needed, so the disk is not asked every event; when the
        // disk has less than that, just what is needed.
        let reserved = self
            .reserve(need.saturating_add(self.chunk))
            .or_else(|_| self.reserve(need));
        match reserved {
            Ok(()) => {
                self.quiet_until = None;
                !self.reservable || self.room() >= need
            }
            Err(_) => {
                self.quiet_until = Some(now + RETRY_RESERVE);
                false
            }
        }
    }

    /// Appends `bytes` whole, or not at all: a failed write is cut back to the size
    /// before it.
    ///
    /// # Errors
    /// The write failed (the file is as it was).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cutting back frees any blocks past the new end on most file systems:
                // the reservation is asked for again.
                let _ = self.file.set_len(self.len);
                self.reserved_to = self.len;
                Err(e)
            }
        }
    }

    /// `fdatasync`.
    ///
    /// # Errors
    /// The sync failed.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Hands back what is reserved and unused: truncating a file to its own size frees
    /// the blocks allocated past its end (ext4, xfs, tmpfs; punching a hole there does
    /// nothing on ext4).
    pub fn release(&mut self) {
        if self.reservable && self.asked_to > self.len {
            let _ = self.file.set_len(self.len);
        }
        self.reserved_to = self.len;
        self.asked_to = self.len;
    }
}

impl Drop for ReservedFile {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(target_os = "linux")]
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::other("reservation out of range"));
    };
    fallocate(
        file.as_raw_fd(),
        FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
    .map_err(|e| match e {
        nix::errno::Errno::EOPNOTSUPP => io::Error::new(io::ErrorKind::Unsupported, e),
        other => io::Error::from(other),
    })
}

#[cfg(not(target_os = "linux"))]
fn allocate(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no space reservation on this platform",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn space_is_reserved_ahead_kept_while_writing_and_handed_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = ReservedFile::open(&path, 1 << 20).unwrap();
        f.reserve(10).unwrap();
        assert_eq!(f.len(), 0, "a reservation does not change the size");
        assert!(allocated(&path) >= 1 << 20, "{}", allocated(&path));
        let now = Instant::now();
        assert!(f.has_room(1000, 4096, now));
        f.append(&[7u8; 1000]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1000);
        // Needing more than is left reserves more.
        assert!(f.has_room(3 << 20, 0, now));
        assert!(f.room() >= 3 << 20);
        f.release();
        assert!(allocated(&path) < 64 * 1024, "{}", allocated(&path));
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 1000]);
    }
}
