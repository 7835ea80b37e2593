//! Delivery of a recording: the CloudWatch streamer (a reader of `stream.jsonl` with an
//! acknowledged cursor) and the uploads at close (S3, CloudWatch), each retried under
//! one policy ([`Patience`]); `delivery.json` when everything asked for is done.

use super::{
    unix_ms, write_atomic, Paths, PendingSummary, DELIVERY_PATIENCE, S3_ACK, STATUS_FILE,
    STREAM_ACK, UPLOAD_ACK,
};
use crate::backoff::Backoff;
use crate::delivery::aws::{AwsError, BucketEncryption, Logs, Upload, S3};
use crate::delivery::cwl::{self, Batcher, SessionFields, StreamRecord};
use crate::delivery::{s3_key, CwlDestination, S3Destination};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The streamer waits this long after new lines appear, so one call carries a burst.
const COALESCE: Duration = Duration::from_millis(150);
/// Most bytes of `stream.jsonl` the streamer reads per round (bounds its memory).
const STREAM_READ: usize = 4 * 1024 * 1024;

/// Reads complete lines of `path` from `offset`, at most about `limit` bytes; returns
/// them and the offset after the last complete line.
fn read_lines_from(path: &Path, offset: u64, limit: usize) -> std::io::Result<(Vec<String>, u64)> {
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

/// How a stream to CloudWatch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    /// Events stored (by this run of the streamer).
    pub events: u64,
    /// Why streaming stopped early, if it did (the rest is in the state dir).
    pub error: Option<String>,
}

/// The retry policy of every delivery call: transient failures (network, throttling,
/// 5xx) are retried for as long as the daemon runs — an outage of any length costs
/// nothing but delay; a destination that is not found is retried for
/// [`DELIVERY_PATIENCE`] (it may be re-created, e.g. after a LocalStack restart or a
/// re-deployed stack), then given up; anything else (denied, bad request) is given up at
/// once. Giving up leaves the recording in the state dir.
#[derive(Debug)]
struct Patience {
    retry: Backoff,
    missing_since: Option<Instant>,
}

impl Patience {
    fn new() -> Self {
        Self {
            retry: Backoff::delivery(),
            missing_since: None,
        }
    }

    /// A success: the next failure starts the backoff again.
    fn reset(&mut self) {
        *self = Self::new();
    }

    /// After a failure: the delay before the next try, or `None` to give up.
    fn next_delay(&mut self, e: &AwsError) -> Option<Duration> {
        match e {
            AwsError::Transient(_) => Some(self.retry.next_delay()),
            AwsError::NotFound(_) => {
                let since = *self.missing_since.get_or_insert_with(Instant::now);
                (since.elapsed() < DELIVERY_PATIENCE).then(|| self.retry.next_delay())
            }
            AwsError::Denied(_) | AwsError::Other(_) => None,
        }
    }
}

/// A number a sink acknowledged in an earlier run (`stream.ack`: the last record stored;
/// `upload.ack`: events stored); `None` when nothing was acknowledged yet.
fn read_ack_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Records a sink's acknowledged position. A failure is logged, not fatal: it only means
/// a restart may send again what this position covers.
fn write_ack(path: &Path, bytes: &[u8]) {
    if let Err(e) = write_atomic(path, bytes) {
        tracing::warn!(path = %path.display(), error = %e, "Cannot record a delivery position; a restart may send some of it again");
    }
}

/// Streams a recording's `stream.jsonl` to CloudWatch Logs (stream named by the session
/// id, created when missing) until the recording is complete and everything is sent.
///
/// After each stored batch the last complete record's number is written to `stream.ack`;
/// a streamer started again for the same recording (after a crash) re-derives the same
/// messages and chain, skips what the ack covers and sends the rest — a batch stored
/// just before a crash, before its ack, is sent again with the same sequence numbers and
/// chain values (identifiable duplicates). Transient failures are retried while the daemon runs,
/// a missing group or stream for [`DELIVERY_PATIENCE`].
pub async fn stream_to_cloudwatch(
    logs: Logs,
    group: String,
    fields: SessionFields,
    paths: Paths,
    mut progress: watch::Receiver<u64>,
) -> StreamReport {
    let stream = fields.session_id.clone();
    let ack_path = paths.dir.join(STREAM_ACK);
    let mut acked = read_ack_number(&ack_path);
    let mut chain = crate::spool::format::CHAIN_START;
    let mut offset = 0u64;
    let mut stored = 0u64;
    let mut created = false;
    let mut complete = false;
    let mut patience = Patience::new();
    loop {
        if !complete {
            if progress.changed().await.is_err() {
                complete = true;
            } else {
                tokio::time::sleep(COALESCE).await;
            }
        }
        loop {
            let available = *progress.borrow();
            if offset >= available && !complete {
                break;
            }
            let p = paths.stream.clone();
            let read =
                tokio::task::spawn_blocking(move || read_lines_from(&p, offset, STREAM_READ))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r);
            let (lines, next) = match read {
                Ok(r) => r,
                Err(e) => {
                    return StreamReport {
                        events: stored,
                        error: Some(format!("cannot read {}: {e}", paths.stream.display())),
                    }
                }
            };
            if lines.is_empty() {
                if complete {
                    return StreamReport {
                        events: stored,
                        error: None,
                    };
                }
                break;
            }
            let mut batcher = Batcher::new();
            // (messages so far, record seq) at the end of each record, to acknowledge
            // whole records only.
            let mut ends: Vec<(usize, u64)> = Vec::new();
            let mut count = 0usize;
            for line in &lines {
                match serde_json::from_str::<StreamRecord>(line) {
                    Ok(record) => {
                        let messages = cwl::stream_messages(&fields, &record, &mut chain);
                        if acked.is_some_and(|a| record.seq <= a) {
                            continue; // stored by an earlier run (the chain still advances)
                        }
                        count += messages.len();
                        for e in messages {
                            batcher.push(e);
                        }
                        ends.push((count, record.seq));
                    }
                    Err(e) => {
                        tracing::warn!(session = %stream, error = %e, "Skipping an unreadable stream record")
                    }
                }
            }
            let mut sent = 0usize;
            for batch in batcher.into_batches() {
                loop {
                    let result = if created {
                        logs.put(&group, &stream, &batch).await
                    } else {
                        match logs.ensure_stream(&group, &stream).await {
                            Ok(()) => {
                                created = true;
                                continue;
                            }
                            Err(e) => Err(e),
                        }
                    };
                    match result {
                        Ok(rejected) => {
                            if rejected != crate::delivery::aws::Rejected::default() {
                                tracing::warn!(session = %stream, ?rejected, "CloudWatch Logs rejected some events (too old/new or expired)");
                            }
                            patience.reset();
                            break;
                        }
                        Err(e) => {
                            if matches!(e, AwsError::NotFound(_)) {
                                // The stream (or its group) vanished: create it again.
                                created = false;
                            }
                            let Some(delay) = patience.next_delay(&e) else {
                                return give_up(&e, &group, stored);
                            };
                            tracing::warn!(session = %stream, group = %group, error = %e, retry_in = ?delay, "CloudWatch Logs delivery failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
                sent += batch.len();
                stored += batch.len() as u64;
                let whole = ends.partition_point(|(c, _)| *c <= sent);
                if let Some(&(_, seq)) = whole.checked_sub(1).and_then(|i| ends.get(i)) {
                    acked = Some(seq);
                    write_ack(&ack_path, seq.to_string().as_bytes());
                }
            }
            offset = next;
        }
    }
}

fn give_up(e: &AwsError, group: &str, stored: u64) -> StreamReport {
    let error = match e {
        AwsError::NotFound(_) => format!(
            "CloudWatch Logs log group \"{group}\" does not exist (the agent never creates log groups): {e}"
        ),
        AwsError::Denied(_) => format!(
            "not allowed to write to CloudWatch Logs log group \"{group}\" (needs logs:CreateLogStream and logs:PutLogEvents): {e}"
        ),
        _ => format!("CloudWatch Logs log group \"{group}\": {e}"),
    };
    tracing::error!(group, %error, "Streaming to CloudWatch Logs stopped; the recording stays in the state dir");
    StreamReport {
        events: stored,
        error: Some(error),
    }
}

/// Runs one delivery call under [`Patience`].
pub(crate) async fn with_retries<F, Fut, T>(what: &str, mut f: F) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AwsError>>,
{
    let mut patience = Patience::new();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => match patience.next_delay(&e) {
                Some(delay) => {
                    tracing::warn!(what, error = %e, retry_in = ?delay, "Upload failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(e),
            },
        }
    }
}

/// Uploads the transcript, the asciicast and the spool to S3 at close. Keys already
/// uploaded (listed in `s3.ack`, from a run cut short by a crash) are not uploaded again:
/// each object is written once.
///
/// # Errors
/// The first failed upload, described.
pub async fn upload_to_s3(
    s3: &S3,
    dest: &S3Destination,
    encryption: &BucketEncryption,
    paths: &Paths,
    session_id: &str,
) -> Result<Vec<String>, String> {
    let ack_path = paths.dir.join(S3_ACK);
    let mut done: Vec<String> = std::fs::read(&ack_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (path, ext, content_type) in [
        (&paths.transcript, "log", "text/plain; charset=utf-8"),
        (&paths.cast, "cast", "application/x-asciicast"),
        // The spool itself: `session-agent verify s3://…` checks its hash chain.
        (&paths.events, "spool", "application/octet-stream"),
    ] {
        let key = s3_key(&dest.prefix, session_id, ext);
        if done.contains(&key) {
            continue;
        }
        let up = Upload {
            bucket: &dest.bucket,
            key: &key,
            content_type,
            encryption,
        };
        with_retries("s3 upload", || s3.upload_file(&up, path))
            .await
            .map_err(|e| format!("S3 upload of s3://{}/{key} failed: {e}", dest.bucket))?;
        done.push(key);
        let json = serde_json::to_vec(&done).unwrap_or_default();
        write_ack(&ack_path, &json);
    }
    Ok(done)
}

/// Uploads the clean transcript to the log group at close (streaming off), as plain-text
/// events split within the limits. The number of events stored is kept in `upload.ack`,
/// so an upload cut short by a crash resumes after them (plain-text events carry no
/// sequence number: only a batch stored in the instant before the crash can repeat).
///
/// # Errors
/// The upload failed, described.
pub async fn upload_to_cloudwatch(
    logs: &Logs,
    dest: &CwlDestination,
    paths: &Paths,
    session_id: &str,
) -> Result<u64, String> {
    let fail = |e: AwsError| format!("CloudWatch Logs upload to \"{}\" failed: {e}", dest.group);
    with_retries("create log stream", || {
        logs.ensure_stream(&dest.group, session_id)
    })
    .await
    .map_err(fail)?;
    let ack_path = paths.dir.join(UPLOAD_ACK);
    let skip = read_ack_number(&ack_path).unwrap_or(0);
    let now = i64::try_from(unix_ms()).unwrap_or(i64::MAX);
    let mut offset = 0u64;
    let mut index = 0u64;
    let mut stored = 0u64;
    loop {
        let p = paths.transcript.clone();
        let (lines, next) =
            tokio::task::spawn_blocking(move || read_lines_from(&p, offset, STREAM_READ))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot read the transcript: {e}"))?;
        if lines.is_empty() {
            return Ok(stored);
        }
        let mut text = lines.join("\n");
        text.push('\n');
        let mut batcher = Batcher::new();
        for e in cwl::transcript_events(&text, now) {
            index += 1;
            if index > skip {
                batcher.push(e);
            }
        }
        for batch in batcher.into_batches() {
            with_retries("put log events", || {
                logs.put(&dest.group, session_id, &batch)
            })
            .await
            .map_err(fail)?;
            stored += batch.len() as u64;
            write_ack(&ack_path, (skip + stored).to_string().as_bytes());
        }
        offset = next;
    }
}

/// Where a finished session's recording still has to go, run after the session's
/// completion has been reported.
#[derive(Debug)]
pub struct Delivery {
    /// The session.
    pub session_id: String,
    /// The recording's files.
    pub paths: Paths,
    /// What the recorder reported.
    pub summary: PendingSummary,
    /// S3 upload at close.
    pub s3: Option<(S3, S3Destination, BucketEncryption)>,
    /// CloudWatch upload at close (streaming off).
    pub cwl_upload: Option<(Logs, CwlDestination)>,
    /// The streamer, when streaming.
    pub streamer: Option<tokio::task::JoinHandle<StreamReport>>,
    /// A destination that was skipped before the session started (missing log group,
    /// AWS not configured), reported again in `delivery.json`.
    pub skipped: Vec<String>,
}

/// What `delivery.json` records.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DeliveryStatus {
    /// Everything asked for arrived (or nothing was asked): the local copy may be
    /// deleted by retention.
    pub complete: bool,
    /// S3 keys uploaded.
    #[serde(default)]
    pub s3_keys: Vec<String>,
    /// CloudWatch events stored.
    #[serde(default)]
    pub cloudwatch_events: u64,
    /// What went wrong.
    #[serde(default)]
    pub errors: Vec<String>,
    /// The recording holds the whole session: no gap, nothing failed to be written.
    #[serde(default)]
    pub recording_complete: bool,
    /// Records in the spool, and its chain head (hex): compare copies with them.
    #[serde(default)]
    pub spool_records: u64,
    /// See `spool_records`.
    #[serde(default)]
    pub spool_head: String,
}

impl Delivery {
    /// Delivers, then writes `delivery.json`.
    pub async fn run(self) -> DeliveryStatus {
        let mut status = DeliveryStatus {
            complete: true,
            ..DeliveryStatus::default()
        };
        let summary = self.summary.wait().await;
        status.recording_complete = summary.incomplete().is_none();
        status.spool_records = summary.spool_records;
        status.spool_head.clone_from(&summary.spool_head);
        if let Some(why) = summary.incomplete() {
            status.errors.push(format!("recording incomplete: {why}"));
        }
        status.errors.extend(self.skipped.iter().cloned());
        if let Some(handle) = self.streamer {
            match handle.await {
                Ok(report) => {
                    status.cloudwatch_events += report.events;
                    if let Some(e) = report.error {
                        status.complete = false;
                        status.errors.push(e);
                    }
                }
                Err(e) => {
                    status.complete = false;
                    status
                        .errors
                        .push(format!("the CloudWatch streamer failed: {e}"));
                }
            }
        }
        if let Some((logs, dest)) = &self.cwl_upload {
            match upload_to_cloudwatch(logs, dest, &self.paths, &self.session_id).await {
                Ok(n) => status.cloudwatch_events += n,
                Err(e) => {
                    tracing::error!(session = %self.session_id, error = %e, "CloudWatch Logs upload failed; the recording stays in the state dir");
                    status.complete = false;
                    status.errors.push(e);
                }
            }
        }
        if let Some((s3, dest, encryption)) = &self.s3 {
            match upload_to_s3(s3, dest, encryption, &self.paths, &self.session_id).await {
                Ok(keys) => status.s3_keys = keys,
                Err(e) => {
                    tracing::error!(session = %self.session_id, error = %e, "S3 upload failed; the recording stays in the state dir");
                    status.complete = false;
                    status.errors.push(e);
                }
            }
        }
        if !self.skipped.is_empty() {
            status.complete = false;
        }
        let json = serde_json::to_vec_pretty(&status).unwrap_or_default();
        let path = self.paths.dir.join(STATUS_FILE);
        if let Err(e) = write_atomic(&path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "Cannot write the delivery status");
        }
        let recording = summary
            .incomplete()
            .map_or_else(|| "complete".to_owned(), |why| format!("INCOMPLETE: {why}"));
        if status.recording_complete {
            tracing::info!(session = %self.session_id, complete = status.complete, %recording, s3 = ?status.s3_keys, cloudwatch_events = status.cloudwatch_events, "Recording delivered");
        } else {
            tracing::error!(session = %self.session_id, complete = status.complete, %recording, s3 = ?status.s3_keys, cloudwatch_events = status.cloudwatch_events, "Recording delivered, but it does not hold the whole session");
        }
        status
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
