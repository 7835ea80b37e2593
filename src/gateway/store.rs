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
//!
//! Beside it, `<data-dir>/nodes.json` maps each registered target id to the principal it
//! belongs to (`gateway::access`), so a restart does not free every node for whoever
//! connects first. It changes rarely (a node registers once) and is rewritten whole,
//! atomically.
//!
//! Both hold session ids and identities: the directory is made 0700 and the files 0600.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Finished sessions kept for DescribeSessions History, oldest forgotten first.
pub(crate) const HISTORY_LIMIT: usize = 10_000;

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
    /// The principal that owns the session (see `gateway::access`). Records written
    /// before it existed take it from the owner ARN's last part.
    #[serde(default)]
    pub principal: String,
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
    Nodes(BTreeMap<String, String>),
    Flush(mpsc::Sender<()>),
}

/// What the data directory held at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Session records, compacted.
    pub sessions: Vec<SessionRecord>,
    /// Registered nodes: target id → principal.
    pub nodes: BTreeMap<String, String>,
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
const NODES_FILE: &str = "nodes.json";

/// Creates `dir` (and parents) and makes it owner-only.
fn private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)?;
    #[cfg(unix)]
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(())
}

/// Owner-only (0600) files where the platform has modes.
fn private_options(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

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
    pub fn open(dir: &Path) -> Result<(Self, Loaded), StoreError> {
        let path = dir.join(FILE_NAME);
        let err = |source| StoreError {
            path: path.clone(),
            source,
        };
        private_dir(dir).map_err(err)?;
        let records = load(&path).map_err(err)?;
        rewrite(&path, &records).map_err(err)?;
        let mut file = private_options(OpenOptions::new().append(true).create(true))
            .open(&path)
            .map_err(err)?;
        let nodes_path = dir.join(NODES_FILE);
        let nodes = load_nodes(&nodes_path).map_err(|source| StoreError {
            path: nodes_path.clone(),
            source,
        })?;
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
                        Command::Nodes(nodes) => {
                            if let Err(e) = write_nodes(&nodes_path, &nodes) {
                                tracing::error!(path = %nodes_path.display(), error = %e, "Could not save the registered nodes; registrations since the last save will be lost at restart");
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
            Loaded {
                sessions: records,
                nodes,
            },
        ))
    }

    /// Queues the registered nodes (target id → principal) for saving.
    pub fn save_nodes(&self, nodes: BTreeMap<String, String>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Nodes(nodes));
        }
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
            Ok(mut rec) => {
                if rec.principal.is_empty() {
                    rec.principal = rec.owner.rsplit('/').next().unwrap_or_default().to_owned();
                }
                by_id.insert(rec.session_id.clone(), rec);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), line = n + 1, error = %e, "Skipping unreadable session history line");
            }
        }
    }
    let mut records: Vec<_> = by_id.into_values().collect();
    records.sort_by(|a, b| a.start_date.total_cmp(&b.start_date));
    if records.len() > HISTORY_LIMIT * 2 {
        records.drain(..records.len() - HISTORY_LIMIT * 2);
    }
    Ok(records)
}

fn load_nodes(path: &Path) -> io::Result<BTreeMap<String, String>> {
    match fs::read(path) {
        // Unreadable registrations are not taken as none (every node would be free for
        // the first identity to connect): the gateway does not start until they are
        // fixed or deliberately removed.
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not valid ({e}); fix it, or remove it to let every node register again, first come first served"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

fn write_nodes(path: &Path, nodes: &BTreeMap<String, String>) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = private_options(OpenOptions::new().create(true).write(true).truncate(true))
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(nodes).map_err(io::Error::other)?)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

fn rewrite(path: &Path, records: &[SessionRecord]) -> io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = private_options(OpenOptions::new().create(true).write(true).truncate(true))
            .open(&tmp)?;
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
            principal: "o".into(),
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
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert!(loaded.sessions.is_empty() && loaded.nodes.is_empty());
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
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        let mut got: Vec<_> = loaded
            .sessions
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

    #[test]
    fn history_and_nodes_are_private_and_nodes_survive_a_restart() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("gw");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        {
            let (store, _) = Store::open(&dir).unwrap();
            store.save(&rec("a", SessionStatus::Connected));
            store.save_nodes(BTreeMap::from([("web-1".into(), "alice".into())]));
            store.flush();
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
        assert_eq!(mode(&dir.join(NODES_FILE)), 0o600);
        let (_store, loaded) = Store::open(&dir).unwrap();
        assert_eq!(loaded.nodes["web-1"], "alice");
        assert_eq!(
            mode(&dir.join(FILE_NAME)),
            0o600,
            "still private after the rewrite"
        );
    }

    #[test]
    fn unreadable_registrations_stop_the_start_instead_of_freeing_every_node() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NODES_FILE), b"{\"web-1\": ").unwrap();
        let e = Store::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("nodes.json") && e.contains("remove it"), "{e}");
    }

    #[test]
    fn records_from_before_principals_take_the_owner_arns_name() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"session_id":"x","target":"t","status":"Terminated","start_date":1.0,"end_date":null,"document_name":"d","owner":"arn:aws:iam::1:user/AKIDOLD","reason":"","details":"","final_task_status":"","output":{"s3_bucket":"","s3_key":"","cwl_group":"","cwl_stream":""},"max_session_duration":""}"#;
        std::fs::write(dir.path().join(FILE_NAME), format!("{old}\n")).unwrap();
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.sessions[0].principal, "AKIDOLD");
    }
}
