//! The CloudWatch streamer: follows a recording's `stream.jsonl` while the session runs,
//! sends its records as chained messages ([`super::cwl::stream_messages`]) in batches
//! within the service limits ([`super::cwl::Batcher`]), and acknowledges each stored
//! batch in `stream.ack`, so a streamer started again for the same recording (after a
//! crash) sends only the rest. Generic over its [`LogSink`]: the agent streams through
//! [`super::aws::Logs`], the unit tests below through the in-memory twin.

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
    let mut chain = crate::recorder::spool::CHAIN_START;
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
