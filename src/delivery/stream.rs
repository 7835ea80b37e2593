//! The CloudWatch streamer: follows a recording's `stream.jsonl` while the session runs,
//! sends its records as chained messages ([`super::cwl::stream_messages`]; unchained in
//! upstream mode) in batches within the service limits ([`super::cwl::Batcher`]), and
//! acknowledges each stored batch in `stream.ack`, so a streamer started again for the
//! same recording (after a crash) sends only the rest. Generic over its [`LogSink`]: the
//! agent streams through [`super::aws::Logs`], the unit tests below through the
//! in-memory twin.

use super::cwl::{self, Batcher, SessionFields, StreamRecord};
use super::files::{read_ack_number, read_lines_from, write_ack, READ_LIMIT};
use super::retry::Patience;
use super::sink::{LogSink, Rejected, SinkError};
use crate::spool::layout::{Paths, STREAM_ACK};
use std::time::Duration;
use tokio::sync::watch;

/// The streamer waits this long after new lines appear, so one call carries a burst.
const COALESCE: Duration = Duration::from_millis(150);

/// How a stream to CloudWatch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    /// Events stored (by this run of the streamer).
    pub events: u64,
    /// Why streaming stopped early, if it did (the rest is in the state dir).
    pub error: Option<String>,
}

/// Streams a recording's `stream.jsonl` to CloudWatch Logs (stream named by the session
/// id, created when missing) until the recording is complete and everything is sent.
/// `progress` is how many bytes of `stream.jsonl` are written; its sender is dropped
/// when the recording is complete.
///
/// After each stored batch the last complete record's number is written to `stream.ack`;
/// a streamer started again for the same recording (after a crash) re-derives the same
/// messages and chain, skips what the ack covers and sends the rest — a batch stored
/// just before a crash, before its ack, is sent again with the same sequence numbers and
/// chain values (identifiable duplicates). Failures are retried under [`Patience`]:
/// transient ones while the daemon runs, a missing group or stream for
/// [`super::retry::DELIVERY_PATIENCE`].
pub async fn stream_to_cloudwatch<L: LogSink>(
    logs: L,
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
            let read = tokio::task::spawn_blocking(move || read_lines_from(&p, offset, READ_LIMIT))
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
                            if rejected != Rejected::default() {
                                tracing::warn!(session = %stream, ?rejected, "CloudWatch Logs rejected some events (too old/new or expired)");
                            }
                            patience.reset();
                            break;
                        }
                        Err(e) => {
                            if matches!(e, SinkError::NotFound(_)) {
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

fn give_up(e: &SinkError, group: &str, stored: u64) -> StreamReport {
    let error = match e {
        SinkError::NotFound(_) => format!(
            "CloudWatch Logs log group \"{group}\" does not exist (the agent never creates log groups): {e}"
        ),
        SinkError::Denied(_) => format!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::cwl::{
        Checked, LogEvent, StreamChecker, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_BATCH_SPAN_MS,
    };
    use crate::delivery::memory::{
        fields, recording_dir, stream_lines, throttled, unreachable, wait_until, Fault, MemoryLogs,
    };
    use crate::delivery::retry::DELIVERY_PATIENCE;
    use std::path::Path;
    use tokio::time::Instant;

    const SESSION: &str = "alice-0a1b2c3d";
    const GROUP: &str = "g";

    /// A complete recording of `n` records (`step_ms` apart): its paths and a progress
    /// channel already closed at the file's length (as recovery hands it over).
    fn complete_recording(root: &Path, n: u64, step_ms: u64) -> (Paths, watch::Receiver<u64>) {
        let paths = recording_dir(root, SESSION);
        let text = stream_lines(0, n, step_ms);
        std::fs::write(&paths.stream, &text).unwrap();
        let (_, progress) = watch::channel(text.len() as u64);
        (paths, progress)
    }

    fn stream(
        logs: &MemoryLogs,
        paths: &Paths,
        progress: watch::Receiver<u64>,
    ) -> tokio::task::JoinHandle<StreamReport> {
        tokio::spawn(stream_to_cloudwatch(
            logs.clone(),
            GROUP.to_owned(),
            fields(SESSION),
            paths.clone(),
            progress,
        ))
    }

    /// Checks the stored stream's chain: (messages, duplicates), and the sequence numbers
    /// of the messages, duplicates left out.
    fn verify(messages: &[String]) -> (u64, u64, Vec<u64>) {
        let mut checker = StreamChecker::new();
        let mut seqs = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let checked = checker.check(i as u64, m).unwrap_or_else(|e| panic!("{e}"));
            if checked == Checked::Next {
                let v: serde_json::Value = serde_json::from_str(m).unwrap();
                seqs.push(v["sequence"].as_u64().unwrap());
            }
        }
        (checker.messages(), checker.duplicates(), seqs)
    }

    fn ack(paths: &Paths) -> Option<u64> {
        std::fs::read_to_string(paths.dir.join(STREAM_ACK))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits (in paused time) until the twin has failed `n` calls.
    async fn until_failures(logs: &MemoryLogs, n: usize) {
        wait_until("the sink failed", || logs.failures() >= n).await;
    }

    #[tokio::test(start_paused = true)]
    async fn batches_stay_within_the_service_limits_and_are_filled() {
        let root = tempfile::tempdir().unwrap();
        // 3,000 records a second apart (~1.2 MB of messages: the byte limit closes a
        // batch), then 3,000 a minute apart (50 hours: the 24-hour span closes them).
        let paths = recording_dir(root.path(), SESSION);
        let text = stream_lines(0, 3000, 1000) + &stream_lines(3000, 3000, 60_000);
        std::fs::write(&paths.stream, &text).unwrap();
        let (_, progress) = watch::channel(text.len() as u64);
        let logs = MemoryLogs::with_group(GROUP);
        let report = stream(&logs, &paths, progress).await.unwrap();
        assert_eq!(
            report,
            StreamReport {
                events: 6000,
                error: None
            }
        );
        let batches = logs.batches();
        let (mut by_size, mut by_span) = (0, 0);
        for (i, batch) in batches.iter().enumerate() {
            let bytes: usize = batch.iter().map(LogEvent::cost).sum();
            assert!(bytes <= MAX_BATCH_BYTES && batch.len() <= MAX_BATCH_EVENTS);
            let (first, last) = (batch[0].timestamp_ms, batch[batch.len() - 1].timestamp_ms);
            assert!(last - first <= MAX_BATCH_SPAN_MS);
            assert!(batch
                .windows(2)
                .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
            // Filled: each batch but the last was closed because the next event did not
            // fit (by size, count or span), not earlier.
            if let Some(next) = batches.get(i + 1).map(|b| &b[0]) {
                let size = bytes + next.cost() > MAX_BATCH_BYTES;
                let span = next.timestamp_ms - first > MAX_BATCH_SPAN_MS;
                assert!(
                    size || span || batch.len() == MAX_BATCH_EVENTS,
                    "batch {i} closed early ({} events, {bytes} bytes)",
                    batch.len()
                );
                by_size += usize::from(size);
                by_span += usize::from(span);
            }
        }
        assert!(by_size >= 1 && by_span >= 2, "{by_size} {by_span}");
        let (messages, duplicates, seqs) = verify(&logs.messages(GROUP, SESSION));
        assert_eq!((messages, duplicates), (6000, 0));
        assert!(seqs.iter().copied().eq(0..6000));
        assert_eq!(ack(&paths), Some(5999));
        // One stream created, then one call per batch: nothing retried.
        assert_eq!(logs.calls().len(), 1 + batches.len());
    }

    #[tokio::test(start_paused = true)]
    async fn follows_a_growing_stream_until_the_recording_is_complete() {
        let root = tempfile::tempdir().unwrap();
        let paths = recording_dir(root.path(), SESSION);
        std::fs::write(&paths.stream, "").unwrap();
        let (tx, progress) = watch::channel(0u64);
        let logs = MemoryLogs::with_group(GROUP);
        let handle = stream(&logs, &paths, progress);
        let mut written = String::new();
        for round in 0..3u64 {
            written.push_str(&stream_lines(round * 10, 10, 1000));
            // A record half written: not sent until its line is complete.
            let partial = "{\"seq\":99";
            std::fs::write(&paths.stream, format!("{written}{partial}")).unwrap();
            tx.send((written.len() + partial.len()) as u64).unwrap();
            let want = usize::try_from((round + 1) * 10).unwrap();
            wait_until("the burst was stored", || {
                logs.messages(GROUP, SESSION).len() >= want
            })
            .await;
            assert_eq!(logs.messages(GROUP, SESSION).len(), want);
            assert_eq!(ack(&paths), Some((round + 1) * 10 - 1));
        }
        std::fs::write(&paths.stream, &written).unwrap();
        tx.send(written.len() as u64).unwrap();
        drop(tx); // the recording is complete
        let report = handle.await.unwrap();
        assert_eq!(
            report,
            StreamReport {
                events: 30,
                error: None
            }
        );
        assert_eq!(verify(&logs.messages(GROUP, SESSION)).0, 30);
        // Each burst went as one call.
        assert_eq!(logs.batches().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_patience_is_ridden_out_with_nothing_lost_or_doubled() {
        let root = tempfile::tempdir().unwrap();
        let (paths, progress) = complete_recording(root.path(), 6000, 10);
        let logs = MemoryLogs::with_group(GROUP);
        // Throttled twice, the stream created, one batch stored, then the service is
        // unreachable for ten minutes (transient failures have no deadline).
        logs.fail_next(2, &throttled())
            .pass(2)
            .outage(&unreachable());
        let started = Instant::now();
        let handle = stream(&logs, &paths, progress);
        until_failures(&logs, 3).await;
        let first = logs.batches();
        assert_eq!(first.len(), 1);
        let acked = ack(&paths).unwrap();
        tokio::time::sleep(DELIVERY_PATIENCE * 5).await;
        assert!(!handle.is_finished(), "gave up during a transient outage");
        logs.outage_over();
        let report = handle.await.unwrap();
        assert_eq!(
            report,
            StreamReport {
                events: 6000,
                error: None
            }
        );
        assert!(started.elapsed() >= DELIVERY_PATIENCE * 5);
        // Retried all along, at most 30 s apart: ten minutes is at least 20 tries.
        assert!(logs.failures() >= 2 + 20, "{} failures", logs.failures());
        let (messages, duplicates, seqs) = verify(&logs.messages(GROUP, SESSION));
        assert_eq!((messages, duplicates), (6000, 0));
        assert!(seqs.iter().copied().eq(0..6000));
        assert!(acked < 5999);
        assert_eq!(ack(&paths), Some(5999));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_whose_answer_was_lost_is_sent_again_as_identifiable_duplicates() {
        let root = tempfile::tempdir().unwrap();
        let (paths, progress) = complete_recording(root.path(), 100, 10);
        let logs = MemoryLogs::with_group(GROUP);
        logs.pass(1).then(Fault::LostResponse);
        let report = stream(&logs, &paths, progress).await.unwrap();
        assert_eq!(
            report,
            StreamReport {
                events: 100,
                error: None
            }
        );
        let stored = logs.messages(GROUP, SESSION);
        assert_eq!(stored.len(), 200);
        // The chain tells the copy from the original: nothing lost, the copies known.
        let (messages, duplicates, _) = verify(&stored);
        assert_eq!((messages, duplicates), (100, 100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_resumes_after_stream_ack_and_sends_only_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let (paths, progress) = complete_recording(root.path(), 6000, 10);
        let logs = MemoryLogs::with_group(GROUP);
        // The first run stores one batch, then the agent is killed during an outage.
        logs.pass(2).outage(&unreachable());
        let handle = stream(&logs, &paths, progress);
        until_failures(&logs, 1).await;
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
        let first = logs.messages(GROUP, SESSION).len();
        let acked = ack(&paths).expect("the stored batch was acknowledged");
        assert_eq!(acked + 1, first as u64);
        // The next start: the same recording, the service back.
        logs.outage_over();
        let len = std::fs::metadata(&paths.stream).unwrap().len();
        let (_, progress) = watch::channel(len);
        let report = stream(&logs, &paths, progress).await.unwrap();
        assert_eq!(
            report,
            StreamReport {
                events: 6000 - first as u64,
                error: None
            }
        );
        let second: Vec<u64> = logs.batches()[1..]
            .iter()
            .flatten()
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.message).unwrap()["sequence"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(second.first(), Some(&(acked + 1)));
        // The two runs make one stream: every message once, the chain unbroken.
        let (messages, duplicates, seqs) = verify(&logs.messages(GROUP, SESSION));
        assert_eq!((messages, duplicates), (6000, 0));
        assert!(seqs.iter().copied().eq(0..6000));
        // A third run finds everything acknowledged and sends nothing.
        let (_, progress) = watch::channel(len);
        let calls = logs.calls().len();
        let report = stream(&logs, &paths, progress).await.unwrap();
        assert_eq!(
            report,
            StreamReport {
                events: 0,
                error: None
            }
        );
        assert_eq!(logs.calls().len(), calls);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_log_group_is_given_up_after_the_patience_and_reported() {
        let root = tempfile::tempdir().unwrap();
        let (paths, progress) = complete_recording(root.path(), 10, 10);
        let logs = MemoryLogs::default(); // no group
        let started = Instant::now();
        let report = stream(&logs, &paths, progress).await.unwrap();
        let waited = started.elapsed();
        assert_eq!(report.events, 0);
        let error = report.error.expect("reported");
        assert!(
            error.starts_with("CloudWatch Logs log group \"g\" does not exist (the agent never creates log groups): ResourceNotFoundException"),
            "{error}"
        );
        assert!(
            waited >= DELIVERY_PATIENCE && waited < DELIVERY_PATIENCE + Duration::from_secs(30),
            "{waited:?}"
        );
        assert_eq!(logs.calls().len(), 10);
        assert!(logs
            .calls()
            .iter()
            .all(|c| c.starts_with("ensure_stream g/alice-0a1b2c3d: ResourceNotFound")));
        assert_eq!(ack(&paths), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_recreated_within_the_patience_is_delivered_to() {
        let root = tempfile::tempdir().unwrap();
        let (paths, progress) = complete_recording(root.path(), 10, 10);
        let logs = MemoryLogs::default();
        let handle = stream(&logs, &paths, progress);
        tokio::time::sleep(Duration::from_secs(60)).await;
        logs.create_group(GROUP);
        let report = handle.await.unwrap();
        assert_eq!(
            report,
            StreamReport {
                events: 10,
                error: None
            }
        );
        assert_eq!(verify(&logs.messages(GROUP, SESSION)).0, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_deleted_midway_is_created_again() {
        let root = tempfile::tempdir().unwrap();
        let (paths, progress) = complete_recording(root.path(), 6000, 10);
        let logs = MemoryLogs::with_group(GROUP);
        // After the first batch a put finds the stream gone (deleted by someone).
        logs.pass(2).fail_next(
            1,
            &SinkError::NotFound(
                "ResourceNotFoundException: The specified log stream does not exist.".into(),
            ),
        );
        let report = stream(&logs, &paths, progress).await.unwrap();
        assert_eq!(
            report,
            StreamReport {
                events: 6000,
                error: None
            }
        );
        let calls = logs.calls();
        assert!(calls[3].starts_with("ensure_stream"), "{calls:?}");
        assert_eq!(verify(&logs.messages(GROUP, SESSION)).0, 6000);
    }

    #[tokio::test(start_paused = true)]
    async fn denied_is_given_up_at_once_and_says_which_permissions() {
        let root = tempfile::tempdir().unwrap();
        let (paths, progress) = complete_recording(root.path(), 10, 10);
        let logs = MemoryLogs::with_group(GROUP);
        logs.pass(1)
            .fail_next(1, &SinkError::Denied("AccessDeniedException: no".into()));
        let report = stream(&logs, &paths, progress).await.unwrap();
        assert_eq!(report.events, 0);
        assert!(report
            .error
            .unwrap()
            .contains("needs logs:CreateLogStream and logs:PutLogEvents"));
        assert_eq!(logs.calls().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn events_refused_as_too_old_are_not_retried_and_the_rest_is_acknowledged() {
        let root = tempfile::tempdir().unwrap();
        let (paths, progress) = complete_recording(root.path(), 100, 10);
        let logs = MemoryLogs::with_group(GROUP);
        logs.pass(1).then(Fault::RejectTooOld(5));
        let report = stream(&logs, &paths, progress).await.unwrap();
        // `events` counts what was sent in accepted calls, refused events included.
        assert_eq!(
            report,
            StreamReport {
                events: 100,
                error: None
            }
        );
        assert_eq!(logs.messages(GROUP, SESSION).len(), 95);
        assert_eq!(logs.calls().len(), 2);
        assert_eq!(ack(&paths), Some(99));
    }
}
