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
use crate::spool::layout::{Paths, S3_ACK, SUMMARY_FILE, UPLOAD_ACK};

/// Uploads the transcript, the asciicast, the spool and the summary (`summary.json`, as
/// `<prefix>/<id>.summary.json`; skipped when the recording has none) to S3 at close.
/// Keys already uploaded (listed in `s3.ack`, from a run cut short by a crash) are not
/// uploaded again: each object is written once.
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
    let summary = paths.dir.join(SUMMARY_FILE);
    for (path, ext, content_type) in [
        (&paths.transcript, "log", "text/plain; charset=utf-8"),
        (&paths.cast, "cast", "application/x-asciicast"),
        // The spool itself: `session-agent verify s3://…` checks its hash chain.
        (&paths.events, "spool", "application/octet-stream"),
        (&summary, "summary.json", "application/json"),
    ] {
        let key = s3_key(&dest.prefix, session_id, ext);
        if done.contains(&key) || (path == &summary && !summary.exists()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::memory::{
        recording_dir, throttled, unreachable, wait_until, MemoryLogs, MemoryObjects,
    };
    use crate::delivery::retry::DELIVERY_PATIENCE;
    use std::path::Path;
    use std::time::Duration;
    use tokio::time::Instant;

    const SESSION: &str = "s-1";

    fn s3_dest(bucket: &str) -> S3Destination {
        S3Destination {
            bucket: bucket.into(),
            prefix: "logs/".into(),
            require_encryption: false,
        }
    }

    fn cwl_dest() -> CwlDestination {
        CwlDestination {
            group: "g".into(),
            streaming: false,
            require_encryption: false,
        }
    }

    /// A finished recording's files.
    fn recording(root: &Path, transcript: &str) -> Paths {
        let paths = recording_dir(root, SESSION);
        std::fs::write(&paths.transcript, transcript).unwrap();
        std::fs::write(&paths.cast, "{\"version\":2}\n").unwrap();
        std::fs::write(&paths.events, b"SPOOL\x00\x01").unwrap();
        paths
    }

    fn keys() -> [String; 3] {
        ["log", "cast", "spool"].map(|ext| s3_key("logs/", SESSION, ext))
    }

    fn s3_ack(paths: &Paths) -> Vec<String> {
        std::fs::read(paths.dir.join(S3_ACK))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn s3_gets_each_file_once_with_the_bucket_encryption() {
        let root = tempfile::tempdir().unwrap();
        let paths = recording(root.path(), "$ ls\n");
        let kms = BucketEncryption::Kms {
            algorithm: "aws:kms".into(),
            key_id: Some("k".into()),
        };
        let s3 = MemoryObjects::with_bucket("b", kms.clone());
        // Throttled, then unreachable for a while: retried through both.
        s3.fail_next(3, &throttled())
            .pass(1)
            .fail_next(5, &unreachable());
        let done = upload_to_s3(&s3, &s3_dest("b"), &kms, &paths, SESSION)
            .await
            .unwrap();
        assert_eq!(done, keys());
        assert_eq!(s3.writes(), keys());
        let log = s3.object("b", "logs/s-1.log").unwrap();
        assert_eq!(log.body, b"$ ls\n");
        assert_eq!(log.content_type, "text/plain; charset=utf-8");
        assert_eq!(log.encryption, kms);
        assert_eq!(
            s3.object("b", "logs/s-1.spool").unwrap().body,
            std::fs::read(&paths.events).unwrap()
        );
        assert_eq!(s3_ack(&paths), keys());
        assert_eq!(s3.failures(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn the_summary_goes_beside_the_transcript_when_there_is_one() {
        let root = tempfile::tempdir().unwrap();
        let paths = recording(root.path(), "$ ls\n");
        std::fs::write(paths.dir.join(SUMMARY_FILE), b"{\"sessionId\":\"s-1\"}").unwrap();
        let s3 = MemoryObjects::with_bucket("b", BucketEncryption::None);
        let done = upload_to_s3(&s3, &s3_dest("b"), &BucketEncryption::None, &paths, SESSION)
            .await
            .unwrap();
        let summary_key = s3_key("logs/", SESSION, "summary.json");
        assert_eq!(summary_key, "logs/s-1.summary.json");
        assert_eq!(done.last(), Some(&summary_key));
        let object = s3.object("b", &summary_key).unwrap();
        assert_eq!(object.body, b"{\"sessionId\":\"s-1\"}");
        assert_eq!(object.content_type, "application/json");
    }

    #[tokio::test(start_paused = true)]
    async fn an_s3_upload_cut_short_resumes_after_s3_ack() {
        let root = tempfile::tempdir().unwrap();
        let paths = recording(root.path(), "$ ls\n");
        let s3 = MemoryObjects::with_bucket("b", BucketEncryption::None);
        s3.pass(1)
            .outage(&SinkError::Denied("AccessDenied: Access Denied".into()));
        let err = upload_to_s3(&s3, &s3_dest("b"), &BucketEncryption::None, &paths, SESSION)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "S3 upload of s3://b/logs/s-1.cast failed: AccessDenied: Access Denied"
        );
        assert_eq!(s3_ack(&paths), keys()[..1]);
        // Denied is not retried.
        assert_eq!(s3.calls().len(), 2);
        // The next start: only what s3.ack lacks is uploaded.
        s3.outage_over();
        let done = upload_to_s3(&s3, &s3_dest("b"), &BucketEncryption::None, &paths, SESSION)
            .await
            .unwrap();
        assert_eq!(done, keys());
        assert_eq!(s3.writes(), keys());
        // And once everything is acknowledged, nothing more.
        let calls = s3.calls().len();
        upload_to_s3(&s3, &s3_dest("b"), &BucketEncryption::None, &paths, SESSION)
            .await
            .unwrap();
        assert_eq!(s3.calls().len(), calls);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_bucket_is_given_up_after_the_patience_and_reported() {
        let root = tempfile::tempdir().unwrap();
        let paths = recording(root.path(), "$ ls\n");
        let s3 = MemoryObjects::with_bucket("b", BucketEncryption::None);
        let started = Instant::now();
        let err = upload_to_s3(
            &s3,
            &s3_dest("gone"),
            &BucketEncryption::None,
            &paths,
            SESSION,
        )
        .await
        .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(
            err,
            "S3 upload of s3://gone/logs/s-1.log failed: NoSuchBucket: The specified bucket does not exist"
        );
        assert!(
            waited >= DELIVERY_PATIENCE && waited < DELIVERY_PATIENCE + Duration::from_secs(30),
            "{waited:?}"
        );
        assert_eq!(s3.calls().len(), 10);
        assert!(s3_ack(&paths).is_empty() && s3.writes().is_empty());
    }

    /// A transcript of `lines` lines of 1,000 bytes.
    fn long_transcript(lines: usize) -> String {
        (0..lines)
            .map(|i| format!("{i:06} {}\n", "x".repeat(993)))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_transcript_goes_to_cloudwatch_in_batches_within_the_limits() {
        let root = tempfile::tempdir().unwrap();
        let text = long_transcript(3000); // 3 MB: 15 events of ~200 KB, 4 batches
        let paths = recording(root.path(), &text);
        let logs = MemoryLogs::with_group("g");
        logs.fail_next(2, &throttled());
        let n = upload_to_cloudwatch(&logs, &cwl_dest(), &paths, SESSION)
            .await
            .unwrap();
        let stored = logs.events("g", SESSION);
        assert_eq!(n, stored.len() as u64);
        assert!(n >= 15);
        // Nothing lost, nothing doubled: the events put back together are the transcript.
        let joined: String = stored.iter().map(|e| format!("{}\n", e.message)).collect();
        assert_eq!(joined, text);
        for batch in logs.batches() {
            assert!(
                batch.iter().map(|e| e.cost()).sum::<usize>()
                    <= crate::delivery::cwl::MAX_BATCH_BYTES
            );
        }
        assert!(logs.batches().len() >= 3);
        assert_eq!(
            std::fs::read_to_string(paths.dir.join(UPLOAD_ACK)).unwrap(),
            n.to_string()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cloudwatch_upload_cut_short_resumes_after_upload_ack() {
        let root = tempfile::tempdir().unwrap();
        let text = long_transcript(3000);
        let paths = recording(root.path(), &text);
        let logs = MemoryLogs::with_group("g");
        // The stream created and one batch stored; then the agent is killed in an outage.
        logs.pass(2).outage(&unreachable());
        let task = {
            let (logs, paths) = (logs.clone(), paths.clone());
            tokio::spawn(
                async move { upload_to_cloudwatch(&logs, &cwl_dest(), &paths, SESSION).await },
            )
        };
        wait_until("the sink failed", || logs.failures() > 0).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let first = logs.events("g", SESSION).len() as u64;
        assert!(first > 0);
        assert_eq!(
            std::fs::read_to_string(paths.dir.join(UPLOAD_ACK)).unwrap(),
            first.to_string()
        );
        // The next start sends the rest only.
        logs.outage_over();
        let n = upload_to_cloudwatch(&logs, &cwl_dest(), &paths, SESSION)
            .await
            .unwrap();
        let stored = logs.events("g", SESSION);
        assert_eq!(first + n, stored.len() as u64);
        let joined: String = stored.iter().map(|e| format!("{}\n", e.message)).collect();
        assert_eq!(joined, text);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_log_group_at_close_is_given_up_after_the_patience() {
        let root = tempfile::tempdir().unwrap();
        let paths = recording(root.path(), "$ ls\n");
        let logs = MemoryLogs::default();
        let started = Instant::now();
        let err = upload_to_cloudwatch(&logs, &cwl_dest(), &paths, SESSION)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "CloudWatch Logs upload to \"g\" failed: ResourceNotFoundException: The specified log group does not exist."
        );
        assert!(started.elapsed() >= DELIVERY_PATIENCE);
        assert!(!paths.dir.join(UPLOAD_ACK).exists());
    }
}
