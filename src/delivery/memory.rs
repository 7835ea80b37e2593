//! The in-memory twin of the sinks (test builds only): [`MemoryLogs`] (a [`LogSink`])
//! and [`MemoryObjects`] (an [`ObjectSink`]) keep what they are sent in memory and check
//! it as the services do (a missing group, stream or bucket is not found; a batch
//! outside CloudWatch's limits is refused), and can be told to fail: an outage (every
//! call fails until it is over), throttling or any error for the next calls, a lost
//! response (stored, but the caller hears a failure), a partial batch (the first events
//! refused as too old).
//!
//! What it is for: the streamer's and the uploads' unit tests (`stream`,
//! `upload`) drive batching, retries, acknowledgements, restarts and outages
//! with it, under tokio's paused time, without LocalStack. The AWS implementations are
//! still exercised against LocalStack by the integration tests (`tests/it`).

use super::cwl::{
    LogEvent, SessionFields, StreamMode, StreamRecord, MAX_BATCH_BYTES, MAX_BATCH_EVENTS,
    MAX_BATCH_SPAN_MS,
};
use super::sink::{BucketEncryption, LogGroup, LogSink, ObjectSink, Rejected, SinkError, Upload};
use crate::spool::layout::Paths;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// What the twin does to one call instead of carrying it out normally.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// The call fails with this error; nothing is stored.
    Fail(SinkError),
    /// The call is carried out (stored), but its answer is lost: the caller sees a
    /// transient error (a timeout after the service acted).
    LostResponse,
    /// `put` only: the first this many events are refused as too old (reported in
    /// [`Rejected`]), the rest stored.
    RejectTooOld(usize),
}

/// The error CloudWatch and S3 give when throttling.
pub(crate) fn throttled() -> SinkError {
    SinkError::Transient("ThrottlingException: Rate exceeded".into())
}

/// A connection failure (the network or the service is down).
pub(crate) fn unreachable() -> SinkError {
    SinkError::Transient("dispatch failure: connection refused".into())
}

#[derive(Debug, Default)]
struct Inner<S> {
    state: S,
    /// One entry per coming call (`None`: carried out normally), then `steady`.
    script: VecDeque<Option<Fault>>,
    /// Applies to every call once the script is used up: an outage, until cleared.
    steady: Option<Fault>,
    /// Every call, with what came of it: `"put g/s 12: ok"`.
    calls: Vec<String>,
}

impl<S> Inner<S> {
    fn next_fault(&mut self) -> Option<Fault> {
        match self.script.pop_front() {
            Some(f) => f,
            None => self.steady.clone(),
        }
    }
}

/// A twin: its state behind a lock, shared by every clone (the test keeps one, the code
/// under test owns another).
#[derive(Debug, Default)]
pub(crate) struct Twin<S> {
    inner: Arc<Mutex<Inner<S>>>,
}

impl<S> Clone for Twin<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> Twin<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next `n` calls are carried out normally (whatever comes after).
    pub(crate) fn pass(&self, n: usize) -> &Self {
        self.lock().script.extend(std::iter::repeat_n(None, n));
        self
    }

    /// The next `n` calls fail with `e`.
    pub(crate) fn fail_next(&self, n: usize, e: &SinkError) -> &Self {
        self.lock()
            .script
            .extend(std::iter::repeat_n(Some(Fault::Fail(e.clone())), n));
        self
    }

    /// The next call meets `fault`.
    pub(crate) fn then(&self, fault: Fault) -> &Self {
        self.lock().script.push_back(Some(fault));
        self
    }

    /// From now on (after the scripted calls) every call fails with `e`, until
    /// [`Twin::outage_over`].
    pub(crate) fn outage(&self, e: &SinkError) -> &Self {
        self.lock().steady = Some(Fault::Fail(e.clone()));
        self
    }

    /// Ends an outage and drops what is still scripted.
    pub(crate) fn outage_over(&self) {
        let mut inner = self.lock();
        inner.steady = None;
        inner.script.clear();
    }

    /// Every call so far, with its outcome.
    pub(crate) fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Calls that failed so far.
    pub(crate) fn failures(&self) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| !c.ends_with(": ok"))
            .count()
    }

    /// Runs one call: the scripted fault, or `op` on the state. `op` returns the result
    /// and a description for the call log.
    fn call<T>(
        &self,
        what: String,
        op: impl FnOnce(&mut S, Option<&Fault>) -> Result<T, SinkError>,
    ) -> Result<T, SinkError> {
        let mut inner = self.lock();
        let fault = inner.next_fault();
        let result = match &fault {
            Some(Fault::Fail(e)) => Err(e.clone()),
            Some(Fault::LostResponse) => op(&mut inner.state, None).and_then(|_| {
                Err(SinkError::Transient(
                    "timeout: the response was lost".into(),
                ))
            }),
            other => op(&mut inner.state, other.as_ref()),
        };
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("{e}"),
        };
        inner.calls.push(format!("{what}: {outcome}"));
        result
    }
}

/// CloudWatch Logs' state: groups, their streams and events, and every batch stored.
#[derive(Debug, Default)]
pub(crate) struct LogsState {
    groups: BTreeMap<String, (LogGroup, BTreeMap<String, Vec<LogEvent>>)>,
    batches: Vec<Vec<LogEvent>>,
}

/// The in-memory CloudWatch Logs.
pub(crate) type MemoryLogs = Twin<LogsState>;

impl MemoryLogs {
    /// A service with one (unencrypted) log group.
    pub(crate) fn with_group(group: &str) -> Self {
        let logs = Self::default();
        logs.create_group(group);
        logs
    }

    /// Creates a log group (an operator's doing; the agent never creates groups).
    pub(crate) fn create_group(&self, group: &str) {
        self.lock()
            .state
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| (LogGroup { kms_key_id: None }, BTreeMap::new()));
    }

    /// The events stored in a stream, in order.
    pub(crate) fn events(&self, group: &str, stream: &str) -> Vec<LogEvent> {
        self.lock()
            .state
            .groups
            .get(group)
            .and_then(|(_, streams)| streams.get(stream))
            .cloned()
            .unwrap_or_default()
    }

    /// The messages stored in a stream, in order.
    pub(crate) fn messages(&self, group: &str, stream: &str) -> Vec<String> {
        self.events(group, stream)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    /// Every batch the service accepted, in order (whatever it then refused of it).
    pub(crate) fn batches(&self) -> Vec<Vec<LogEvent>> {
        self.lock().state.batches.clone()
    }
}

/// Checks a batch as `PutLogEvents` does.
fn check_batch(events: &[LogEvent]) -> Result<(), SinkError> {
    let invalid = |why: &str| {
        Err(SinkError::Other(format!(
            "InvalidParameterException: {why}"
        )))
    };
    let bytes: usize = events.iter().map(LogEvent::cost).sum();
    if events.is_empty() {
        return invalid("no events");
    }
    if events.len() > MAX_BATCH_EVENTS {
        return invalid("too many events in the batch");
    }
    if bytes > MAX_BATCH_BYTES {
        return invalid("the batch is too large");
    }
    if events
        .windows(2)
        .any(|w| w[0].timestamp_ms > w[1].timestamp_ms)
    {
        return invalid(
            "log events in a single PutLogEvents request must be in chronological order",
        );
    }
    let first = events.first().map_or(0, |e| e.timestamp_ms);
    let last = events.last().map_or(0, |e| e.timestamp_ms);
    if last - first > MAX_BATCH_SPAN_MS {
        return invalid("the batch spans more than 24 hours");
    }
    Ok(())
}

impl LogSink for MemoryLogs {
    async fn log_group(&self, name: &str) -> Result<Option<LogGroup>, SinkError> {
        self.call(format!("log_group {name}"), |s, _| {
            Ok(s.groups.get(name).map(|(g, _)| g.clone()))
        })
    }

    async fn ensure_stream(&self, group: &str, stream: &str) -> Result<(), SinkError> {
        self.call(format!("ensure_stream {group}/{stream}"), |s, _| {
            let (_, streams) = s.groups.get_mut(group).ok_or_else(|| {
                SinkError::NotFound(
                    "ResourceNotFoundException: The specified log group does not exist.".into(),
                )
            })?;
            streams.entry(stream.to_owned()).or_default();
            Ok(())
        })
    }

    async fn put(
        &self,
        group: &str,
        stream: &str,
        events: &[LogEvent],
    ) -> Result<Rejected, SinkError> {
        self.call(
            format!("put {group}/{stream} {}", events.len()),
            |s, fault| {
                let (_, streams) = s.groups.get_mut(group).ok_or_else(|| {
                    SinkError::NotFound(
                        "ResourceNotFoundException: The specified log group does not exist.".into(),
                    )
                })?;
                let stored = streams.get_mut(stream).ok_or_else(|| {
                    SinkError::NotFound(
                        "ResourceNotFoundException: The specified log stream does not exist."
                            .into(),
                    )
                })?;
                check_batch(events)?;
                let refused = match fault {
                    Some(Fault::RejectTooOld(n)) => (*n).min(events.len()),
                    _ => 0,
                };
                stored.extend_from_slice(&events[refused..]);
                s.batches.push(events.to_vec());
                Ok(Rejected {
                    too_old_end: (refused > 0).then(|| i32::try_from(refused).unwrap_or(i32::MAX)),
                    ..Rejected::default()
                })
            },
        )
    }
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) encryption: BucketEncryption,
}

/// S3's state: buckets and their objects, and every write in order.
#[derive(Debug, Default)]
pub(crate) struct ObjectsState {
    buckets: BTreeMap<String, (BucketEncryption, BTreeMap<String, Object>)>,
    writes: Vec<String>,
}

/// The in-memory S3.
pub(crate) type MemoryObjects = Twin<ObjectsState>;

impl MemoryObjects {
    /// A service with one bucket with this default encryption.
    pub(crate) fn with_bucket(bucket: &str, encryption: BucketEncryption) -> Self {
        let s3 = Self::default();
        s3.lock()
            .state
            .buckets
            .insert(bucket.to_owned(), (encryption, BTreeMap::new()));
        s3
    }

    /// An object, if stored.
    pub(crate) fn object(&self, bucket: &str, key: &str) -> Option<Object> {
        let inner = self.lock();
        inner.state.buckets.get(bucket)?.1.get(key).cloned()
    }

    /// Every object written, by key, in order (a key written twice appears twice).
    pub(crate) fn writes(&self) -> Vec<String> {
        self.lock().state.writes.clone()
    }
}

fn no_such_bucket() -> SinkError {
    SinkError::NotFound("NoSuchBucket: The specified bucket does not exist".into())
}

impl ObjectSink for MemoryObjects {
    async fn bucket_encryption(&self, bucket: &str) -> Result<BucketEncryption, SinkError> {
        self.call(format!("bucket_encryption {bucket}"), |s, _| {
            s.buckets
                .get(bucket)
                .map(|(e, _)| e.clone())
                .ok_or_else(no_such_bucket)
        })
    }

    async fn upload_file(&self, up: &Upload<'_>, path: &Path) -> Result<(), SinkError> {
        // Read first, as the SDK does: the lock is never held across an await.
        let body = tokio::fs::read(path)
            .await
            .map_err(|e| SinkError::Other(format!("{}: {e}", path.display())));
        self.call(format!("upload {}/{}", up.bucket, up.key), |s, _| {
            let body = body?;
            let (_, objects) = s.buckets.get_mut(up.bucket).ok_or_else(no_such_bucket)?;
            objects.insert(
                up.key.to_owned(),
                Object {
                    body,
                    content_type: up.content_type.to_owned(),
                    encryption: up.encryption.clone(),
                },
            );
            s.writes.push(up.key.to_owned());
            Ok(())
        })
    }
}

/// Waits in (paused) tokio time until `done` holds; panics after an hour of it, so a
/// test whose code under test stopped early fails instead of waiting forever.
pub(crate) async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The fixed fields of the test sessions' messages.
pub(crate) fn fields(session_id: &str) -> SessionFields {
    SessionFields {
        region: "us-east-1".into(),
        target_id: "i-0123456789abcdef0".into(),
        owner_arn: "arn:aws:iam::123456789012:user/alice".into(),
        run_as_user: "ssm-user".into(),
        session_id: session_id.into(),
        mode: StreamMode::Full,
    }
}

/// A recording directory under `root` for `session_id`, created.
pub(crate) fn recording_dir(root: &Path, session_id: &str) -> Paths {
    let paths = Paths::new(root, session_id);
    std::fs::create_dir_all(&paths.dir).unwrap();
    paths
}

/// `n` one-line output records from `first`, `step_ms` apart, as `stream.jsonl` lines.
pub(crate) fn stream_lines(first: u64, n: u64, step_ms: u64) -> String {
    (first..first + n)
        .map(|seq| {
            let record = StreamRecord {
                seq,
                unix_ms: 1_700_000_000_000 + seq * step_ms,
                direction: super::cwl::Direction::Output,
                lines: vec![format!(
                    "line {seq}: the quick brown fox jumps over the lazy dog"
                )],
                end: None,
                tunnel: None,
                process: None,
                command: None,
            };
            let mut line = serde_json::to_string(&record).unwrap();
            line.push('\n');
            line
        })
        .collect()
}
