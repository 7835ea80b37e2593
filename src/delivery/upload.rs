//! The uploads at close: the recording's files to S3 (acknowledged key by key in
//! `s3.ack`) and, when the session was not streamed, the transcript to CloudWatch Logs
//! as plain-text events (acknowledged by count in `upload.ack`). A run cut short by a
//! crash is resumed by the next: what the acks cover is not sent again. Every call runs
//! under [`super::retry::Patience`]; generic over the sinks ([`ObjectSink`],
//! [`LogSink`]).

use super::cwl::{self, Batcher};
use super::files::{read_ack_number, read_lines_from, write_ack, READ_LIMIT};
use super::retry::with_retries;
use super::sink::{BucketEncryption, LogSink, ObjectSink, SinkError, Upload};
use super::{s3_key, CwlDestination, S3Destination};
use crate::spool::layout::{Paths, S3_ACK, UPLOAD_ACK};

/// Uploads the transcript, the asciicast and the spool to S3 at close. Keys already
/// uploaded (listed in `s3.ack`, from a run cut short by a crash) are not uploaded again:
/// each object is written once.
///
/// # Errors
/// The first failed upload, described.
pub async fn upload_to_s3<O: ObjectSink>(
    s3: &O,
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
pub async fn upload_to_cloudwatch<L: LogSink>(
    logs: &L,
    dest: &CwlDestination,
    paths: &Paths,
    session_id: &str,
) -> Result<u64, String> {
    let fail = |e: SinkError| format!("CloudWatch Logs upload to \"{}\" failed: {e}", dest.group);
    with_retries("create log stream", || {
        logs.ensure_stream(&dest.group, session_id)
    })
    .await
    .map_err(fail)?;
    let ack_path = paths.dir.join(UPLOAD_ACK);
    let skip = read_ack_number(&ack_path).unwrap_or(0);
    let now = crate::timefmt::unix_ms(std::time::SystemTime::now());
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let mut offset = 0u64;
    let mut index = 0u64;
    let mut stored = 0u64;
    loop {
        let p = paths.transcript.clone();
        let (lines, next) =
            tokio::task::spawn_blocking(move || read_lines_from(&p, offset, READ_LIMIT))
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
