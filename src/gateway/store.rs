//! Session history that survives a gateway restart: an append-only JSON-lines file,
//! `<data-dir>/sessions.jsonl`, one full [`SessionRecord`] per change; the last line for a
//! session id wins. On open the file is replayed and rewritten compactly (atomically:
//! temporary file, fsync, rename), so it never grows beyond the live records plus the
//! changes of one run.
//!
//! Writes go through a dedicated thread so a slow disk never stalls the async runtime;
//! [`Store::flush`] waits for everything queued so far. Durability: each line is written
//! with `write(2)` before the next is taken; a gateway crash loses nothing already
//! written, a power loss may lose the last few seconds (no fsync per line).
//! A torn or corrupt line (power loss mid-write) is skipped with a warning, not fatal.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// DescribeSessions `Status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionStatus {
    /// StartSession returned; the agent has not reported its data channel yet.
    Connecting,
    /// The agent sent `agent_session_state` Connected.
    Connected,
    /// The agent's data channel dropped; it may come back.
    Disconnected,
    /// The shell ended or TerminateSession was called; waiting for the agent's report.
    Terminating,
    /// Ended.
    Terminated,
    /// Could not start, or broke.
    Failed,
}

impl SessionStatus {
    /// `State: Active` in DescribeSessions; everything else is History.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Connecting | Self::Connected | Self::Disconnected | Self::Terminating
        )
    }

    /// The AWS spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "Connecting",
            Self::Connected => "Connected",
            Self::Disconnected => "Disconnected",
            Self::Terminating => "Terminating",
            Self::Terminated => "Terminated",
            Self::Failed => "Failed",
        }
    }
}

/// Where the agent said it delivered the session log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLocation {
    /// S3 bucket, or empty.
    pub s3_bucket: String,
    /// S3 object key, or empty.
    pub s3_key: String,
    /// CloudWatch Logs group, or empty.
    pub cwl_group: String,
    /// CloudWatch Logs stream, or empty.
    pub cwl_stream: String,
}

/// One session as DescribeSessions reports it. Times are Unix epoch seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session id.
    pub session_id: String,
    /// Target (instance) id.
    pub target: String,
    /// Current status.
    pub status: SessionStatus,
    /// StartSession time.
    pub start_date: f64,
    /// When it ended.
    pub end_date: Option<f64>,
    /// Document used.
    pub document_name: String,
    /// Caller ARN.
    pub owner: String,
    /// StartSession Reason.
    pub reason: String,
    /// Why it ended, when that is worth saying (failure text, timeout).
    pub details: String,
    /// `FinalTaskStatus` from the agent.
    pub final_task_status: String,
    /// Log locations from the agent.
    pub output: OutputLocation,
    /// `maxSessionDuration` in minutes, as the document said.
    pub max_session_duration: String,
    /// Idle timeout enforced by the gateway, seconds (kept so it survives a restart).
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
}

/// The history file and its writer thread.
#[derive(Debug)]
pub struct Store {
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Command {
    Write(Box<SessionRecord>),
    Flush(mpsc::Sender<()>),
}

/// The history file could not be opened or rewritten.
#[derive(Debug, thiserror::Error)]
#[error("session history {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

const FILE_NAME: &str = "sessions.jsonl";

impl Store {
    /// A store that keeps nothing (no `--data-dir`).
    pub fn memory() -> Self {
        Self {
            tx: None,
            thread: None,
        }
    }

    /// Opens (creating) `dir/sessions.jsonl`, returns the records it held, compacted.
    ///
    /// # Errors
    /// The directory or file cannot be created, read or rewritten.
    pub fn open(dir: &Path) -> Result<(Self, Vec<SessionRecord>), StoreError> {
        let path = dir.join(FILE_NAME);
        let err = |source| StoreError {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let records = load(&path).map_err(err)?;
        rewrite(&path, &records).map_err(err)?;
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(err)?;
        let (tx, rx) = mpsc::channel::<Command>();
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("gateway-store".into())
            .spawn(move || {
                for cmd in rx {
                    match cmd {
                        Command::Write(rec) => {
                            let mut line = serde_json::to_vec(&rec).unwrap_or_default();
                            line.push(b'\n');
                            if let Err(e) = file.write_all(&line) {
                                tracing::error!(path = %thread_path.display(), error = %e, "Could not append to session history; this change will be lost at restart");
                            }
                        }
                        Command::Flush(done) => {
                            let _ = file.flush();
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(err)?;
        Ok((
            Self {
                tx: Some(tx),
                thread: Some(thread),
            },
            records,
        ))
    }

    /// Queues a record for appending.
    pub fn save(&self, record: &SessionRecord) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Write(Box::new(record.clone())));
        }
    }

    /// Waits until everything queued so far has been written.
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = mpsc::channel();
            if tx.send(Command::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn load(path: &Path) -> io::Result<Vec<SessionRecord>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut by_id: HashMap<String, SessionRecord> = HashMap::new();
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<SessionRecord>(&line) {
            Ok(rec) => {
                by_id.insert(rec.session_id.clone(), rec);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), line = n + 1, error = %e, "Skipping unreadable session history line");
            }
        }
    }
    let mut records: Vec<_> = by_id.into_values().collect();
    records.sort_by(|a, b| a.start_date.total_cmp(&b.start_date));
    if records.len() > super::registry::HISTORY_LIMIT * 2 {
        records.drain(..records.len() - super::registry::HISTORY_LIMIT * 2);
    }
    Ok(records)
}

fn rewrite(path: &Path, records: &[SessionRecord]) -> io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = File::create(&tmp)?;
        for r in records {
            let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
            line.push(b'\n');
            f.write_all(&line)?;
        }
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, status: SessionStatus) -> SessionRecord {
        SessionRecord {
            session_id: id.into(),
            target: "t".into(),
            status,
            start_date: 1.0,
            end_date: None,
            document_name: "SSM-SessionManagerRunShell".into(),
            owner: "o".into(),
            reason: String::new(),
            details: String::new(),
            final_task_status: String::new(),
            output: OutputLocation::default(),
            max_session_duration: String::new(),
            idle_timeout_secs: None,
        }
    }

    #[test]
    fn last_line_wins_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, recs) = Store::open(dir.path()).unwrap();
            assert!(recs.is_empty());
            store.save(&rec("a", SessionStatus::Connected));
            store.save(&rec("a", SessionStatus::Terminated));
            store.save(&rec("b", SessionStatus::Failed));
            store.flush();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        f.write_all(b"{\"session_id\":\"c\",\"targ").unwrap();
        drop(f);
        let (_store, recs) = Store::open(dir.path()).unwrap();
        let mut got: Vec<_> = recs
            .iter()
            .map(|r| (r.session_id.as_str(), r.status))
            .collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(
            got,
            vec![
                ("a", SessionStatus::Terminated),
                ("b", SessionStatus::Failed)
            ]
        );
        let text = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 2, "compacted on open");
    }
}
