//! The agent's delivery of a finished recording: waits for the deriver, collects the
//! streamer's report, runs the uploads at close ([`crate::delivery::upload`], through
//! the AWS sinks) and writes `delivery.json` when everything asked for is done. How
//! calls are retried is [`crate::delivery::retry`]'s; the streamer is
//! [`crate::delivery::stream`].
//!
//! `summary.json` follows the delivery: written by the deriver with every destination
//! pending, rewritten once CloudWatch Logs has settled (just before the S3 upload, so the
//! copy in S3 says how CloudWatch went, and that S3 itself was pending), and once more
//! with every destination's final state before `delivery.json` is written.

use super::{write_summary, PendingSummary};
use crate::delivery::aws::{Logs, S3};
use crate::delivery::sink::BucketEncryption;
use crate::delivery::stream::StreamReport;
use crate::delivery::upload::{upload_to_cloudwatch, upload_to_s3};
use crate::delivery::{CwlDestination, S3Destination};
use crate::recorder::summary::{DeliveryState, DestinationDelivery};
use crate::spool::layout::{write_atomic, Paths, STATUS_FILE};

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
        let mut session = summary.session.clone();
        status.recording_complete = summary.incomplete().is_none();
        status.spool_records = summary.spool_records;
        status.spool_head.clone_from(&summary.spool_head);
        if let Some(why) = summary.incomplete() {
            status.errors.push(format!("recording incomplete: {why}"));
        }
        status.errors.extend(self.skipped.iter().cloned());
        // CloudWatch's outcome, for the summary: `None` while not tried.
        let mut cwl: Option<Result<(), String>> = None;
        if let Some(handle) = self.streamer {
            match handle.await {
                Ok(report) => {
                    status.cloudwatch_events += report.events;
                    if let Some(e) = report.error {
                        status.complete = false;
                        status.errors.push(e.clone());
                        cwl = Some(Err(e));
                    } else {
                        cwl = Some(Ok(()));
                    }
                }
                Err(e) => {
                    let e = format!("the CloudWatch streamer failed: {e}");
                    status.complete = false;
                    status.errors.push(e.clone());
                    cwl = Some(Err(e));
                }
            }
        }
        if let Some((logs, dest)) = &self.cwl_upload {
            match upload_to_cloudwatch(logs, dest, &self.paths, &self.session_id).await {
                Ok(n) => {
                    status.cloudwatch_events += n;
                    cwl = Some(Ok(()));
                }
                Err(e) => {
                    tracing::error!(session = %self.session_id, error = %e, "CloudWatch Logs upload failed; the recording stays in the state dir");
                    status.complete = false;
                    status.errors.push(e.clone());
                    cwl = Some(Err(e));
                }
            }
        }
        let mut s3_result: Option<Result<(), String>> = None;
        if let Some((s3, dest, encryption)) = &self.s3 {
            // The copy in S3 says how CloudWatch went; S3 itself is pending in it.
            if let Some(session) = &mut session {
                settle(
                    &mut session.delivery.cloud_watch_logs,
                    cwl.as_ref(),
                    &self.skipped,
                );
                let paths = self.paths.clone();
                let copy = session.clone();
                let _ = tokio::task::spawn_blocking(move || write_summary(&paths, &copy)).await;
            }
            match upload_to_s3(s3, dest, encryption, &self.paths, &self.session_id).await {
                Ok(keys) => {
                    status.s3_keys = keys;
                    s3_result = Some(Ok(()));
                }
                Err(e) => {
                    tracing::error!(session = %self.session_id, error = %e, "S3 upload failed; the recording stays in the state dir");
                    status.complete = false;
                    status.errors.push(e.clone());
                    s3_result = Some(Err(e));
                }
            }
        }
        if !self.skipped.is_empty() {
            status.complete = false;
        }
        if let Some(mut session) = session {
            let d = &mut session.delivery;
            settle(&mut d.cloud_watch_logs, cwl.as_ref(), &self.skipped);
            settle(&mut d.s3, s3_result.as_ref(), &self.skipped);
            for why in &self.skipped {
                if !d.skipped.contains(why) {
                    d.skipped.push(why.clone());
                }
            }
            let paths = self.paths.clone();
            let _ = tokio::task::spawn_blocking(move || write_summary(&paths, &session)).await;
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

/// A destination's final state in the summary: delivered or failed as `outcome` says;
/// a destination not tried (its client could not be made: `skipped` says why) failed.
fn settle(
    dest: &mut Option<DestinationDelivery>,
    outcome: Option<&Result<(), String>>,
    skipped: &[String],
) {
    let Some(d) = dest else { return };
    match outcome {
        Some(Ok(())) => {
            d.state = DeliveryState::Delivered;
            d.error = None;
        }
        Some(Err(e)) => {
            d.state = DeliveryState::Failed;
            d.error = Some(e.clone());
        }
        None => {
            d.state = DeliveryState::Failed;
            d.error = Some(if skipped.is_empty() {
                "not attempted".to_owned()
            } else {
                format!("not attempted: {}", skipped.join("; "))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_settles_delivered_failed_or_not_attempted() {
        let pending = || Some(DestinationDelivery::default());
        let mut d = pending();
        settle(&mut d, Some(&Ok(())), &[]);
        assert_eq!(d.as_ref().map(|d| d.state), Some(DeliveryState::Delivered));
        let mut d = pending();
        settle(&mut d, Some(&Err("denied".into())), &[]);
        let d = d.unwrap();
        assert_eq!(
            (d.state, d.error.as_deref()),
            (DeliveryState::Failed, Some("denied"))
        );
        let mut d = pending();
        settle(&mut d, None, &["no AWS region".into()]);
        let d = d.unwrap();
        assert_eq!(d.state, DeliveryState::Failed);
        assert_eq!(d.error.as_deref(), Some("not attempted: no AWS region"));
        // A destination not configured stays absent.
        let mut none = None;
        settle(&mut none, Some(&Ok(())), &[]);
        assert!(none.is_none());
    }
}
