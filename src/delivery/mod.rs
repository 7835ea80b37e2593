//! # delivery — where recordings go: S3 and CloudWatch Logs
//!
//! Laid out like vector's sinks: each concern in its own file, the sinks generic over
//! their I/O service.
//!
//! * [`sink`] — the I/O edge as two small traits, [`sink::ObjectSink`] (S3) and
//!   [`sink::LogSink`] (CloudWatch Logs), with the error kinds the retry policy decides on
//!   ([`sink::SinkError`]: not found / denied / transient / other).
//! * [`retry`] — the retry policy of every call ([`retry::Patience`],
//!   [`retry::DELIVERY_PATIENCE`]): transient failures retried while the daemon runs, a
//!   missing destination for the patience, anything else given up at once. Its delays are
//!   [`crate::backoff::Backoff::delivery`].
//! * [`stream`] — the CloudWatch streamer: `stream.jsonl` → chained messages → batches,
//!   each stored batch acknowledged in `stream.ack`.
//! * [`upload`] — the uploads at close: the recording's files to S3 (`s3.ack`), the
//!   transcript to CloudWatch when not streaming (`upload.ack`).
//! * [`cwl`] — **pure**: the upstream CloudWatch message schema, record splitting, the
//!   hash chain, batching within the service limits, and the transcript split for the
//!   upload at close.
//! * [`aws`] — the AWS implementation of the sinks: S3 and CloudWatch Logs clients from
//!   `aws-config`, errors sorted into [`sink::SinkError`]. The only file here that uses
//!   the SDK.
//! * `memory` (test builds only) — the in-memory twin of both sinks, which can be told to
//!   fail (an outage, throttling, a missing destination, a lost response, a partial
//!   batch). It exists so that [`stream`]'s and [`upload`]'s batching, retries, acks,
//!   restarts and outages are unit-tested, under paused time, without LocalStack; the
//!   LocalStack integration tests (`tests/it`) still cover [`aws`].
//! * this file — **pure** decisions: which [`Destinations`] a session document asks for,
//!   the S3 object keys, and the encryption checks' verdicts ([`check_s3`],
//!   [`check_log_group`]) with the messages the user sees when a session is refused.
//!
//! The agent (`agent::recording`) drives these: it runs the checks before the shell
//! starts, starts the streamer while the session runs, and the uploads at close.
//! `delivery` never imports the agent: a recording's files are found through
//! [`crate::spool::layout`].

pub mod aws;
pub mod cwl;
mod files;
#[cfg(test)]
pub(crate) mod memory;
pub mod retry;
pub mod sink;
pub mod stream;
pub mod upload;

use crate::protocol::document::SessionInputs;
use sink::{BucketEncryption, LogGroup, SinkError};

/// Upstream's refusal text for an unencrypted bucket (§8.5), which we extend with the
/// bucket's name and the reason.
pub const S3_NOT_ENCRYPTED: &str = "We couldn't start the session because encryption is not set up on the selected Amazon S3 bucket.";
/// Upstream's refusal text for an unencrypted log group (§8.5).
pub const CWL_NOT_ENCRYPTED: &str = "We couldn't start the session because encryption is not set up on the selected CloudWatch Logs log group.";

/// S3 destination of a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct S3Destination {
    /// Bucket.
    pub bucket: String,
    /// Key prefix (may be empty).
    pub prefix: String,
    /// The document requires default encryption on the bucket.
    pub require_encryption: bool,
}

/// CloudWatch Logs destination of a session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CwlDestination {
    /// Log group (never created by the agent).
    pub group: String,
    /// Stream while the session runs (true) or upload the transcript at close (false).
    pub streaming: bool,
    /// The document requires a KMS key on the log group.
    pub require_encryption: bool,
}

/// Where a session's recording is delivered, from the document's inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    /// S3, when `s3BucketName` is set.
    pub s3: Option<S3Destination>,
    /// CloudWatch Logs, when `cloudWatchLogGroupName` is set.
    pub cwl: Option<CwlDestination>,
}

impl Destinations {
    /// Reads the document's logging inputs.
    pub fn from_inputs(inputs: &SessionInputs) -> Self {
        let bucket = inputs.s3_bucket_name.trim();
        let group = inputs.cloud_watch_log_group_name.trim();
        Self {
            s3: (!bucket.is_empty()).then(|| S3Destination {
                bucket: bucket.to_owned(),
                prefix: inputs.s3_key_prefix.trim().to_owned(),
                require_encryption: inputs.s3_encryption_enabled,
            }),
            cwl: (!group.is_empty()).then(|| CwlDestination {
                group: group.to_owned(),
                streaming: inputs.cloud_watch_streaming_enabled,
                require_encryption: inputs.cloud_watch_encryption_enabled,
            }),
        }
    }

    /// Whether any remote sink is configured.
    pub fn any(&self) -> bool {
        self.s3.is_some() || self.cwl.is_some()
    }
}

/// The object key for a session's file: `<prefix>/<sessionId>.<ext>` (upstream's
/// `path.Join`): empty and `.` segments of the prefix dropped, `..` segments dropped (a
/// prefix cannot climb), leading/trailing slashes removed; colons stripped from the file
/// name as upstream does.
pub fn s3_key(prefix: &str, session_id: &str, ext: &str) -> String {
    let mut parts: Vec<&str> = prefix
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .collect();
    // A session id never holds '/' (the agent refuses such ids); replaced all the same so
    // a name can never add a path segment.
    let name = format!("{}.{ext}", session_id.replace(':', "").replace('/', "_"));
    parts.push(&name);
    parts.join("/")
}

/// The verdict on the S3 bucket before a session starts: the encryption to ask for on
/// upload, or the refusal text. Only a required check can refuse; otherwise an error just
/// means "upload without asking for SSE" (the bucket's own default still applies).
///
/// # Errors
/// The refusal shown to the user.
pub fn check_s3(
    dest: &S3Destination,
    found: Result<BucketEncryption, SinkError>,
) -> Result<BucketEncryption, String> {
    let bucket = &dest.bucket;
    match (found, dest.require_encryption) {
        (Ok(BucketEncryption::None), true) => Err(format!(
            "{S3_NOT_ENCRYPTED} The bucket \"{bucket}\" has no default encryption rule. Either encrypt the bucket or choose an option to enable logging without encryption."
        )),
        (Ok(e), _) => Ok(e),
        (Err(SinkError::Denied(e)), true) => Err(format!(
            "We couldn't start the session because the agent is not allowed to check encryption on the Amazon S3 bucket \"{bucket}\" (access denied, which does not mean it is unencrypted): {e}. Allow s3:GetEncryptionConfiguration on the bucket for the agent's credentials."
        )),
        (Err(SinkError::NotFound(e)), true) => Err(format!(
            "We couldn't start the session because the Amazon S3 bucket \"{bucket}\" does not exist: {e}."
        )),
        (Err(e), true) => Err(format!(
            "We couldn't start the session because the agent was unable to validate encryption on the Amazon S3 bucket \"{bucket}\": {e}."
        )),
        (Err(_), false) => Ok(BucketEncryption::None),
    }
}

/// The one-line notice shown to the session's user (and logged) when a destination
/// could not be reached at the session's start and the policy lets the session go on:
/// delivery then retries behind the session, and without this the user would see only a
/// few seconds of unexplained delay. `None` for errors that are not an outage (those have
/// their own verdicts above).
pub fn unreachable_notice(destination: &str, err: &SinkError) -> Option<String> {
    match err {
        SinkError::Transient(e) => Some(format!(
            "{destination} cannot be reached now ({e}): this session is recorded on this instance and delivered when it can be (retried in the background)."
        )),
        _ => None,
    }
}

/// What the log-group check found, when the session may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupVerdict {
    /// The group exists: deliver to it.
    Deliver,
    /// The group could not be used; the text says why (shown to the user and logged).
    /// The recording is still kept locally.
    Skip(String),
}

/// The verdict on the log group before a session starts.
///
/// # Errors
/// The refusal shown to the user (encryption required and not verified).
pub fn check_log_group(
    dest: &CwlDestination,
    found: Result<Option<LogGroup>, SinkError>,
) -> Result<GroupVerdict, String> {
    let group = &dest.group;
    match (found, dest.require_encryption) {
        (Ok(Some(g)), true) if g.kms_key_id.is_none() => Err(format!(
            "{CWL_NOT_ENCRYPTED} The log group \"{group}\" has no KMS key. Either encrypt the log group or choose an option to enable logging without encryption."
        )),
        (Ok(Some(_)), _) => Ok(GroupVerdict::Deliver),
        (Ok(None), true) => Err(format!(
            "{CWL_NOT_ENCRYPTED} The log group \"{group}\" does not exist (the agent never creates log groups). Create it with a KMS key, or choose an option to enable logging without encryption."
        )),
        (Ok(None), false) => Ok(GroupVerdict::Skip(format!(
            "CloudWatch Logs log group \"{group}\" does not exist (the agent never creates log groups): this session is not sent to CloudWatch Logs; it is recorded locally. Create the log group to fix this."
        ))),
        (Err(SinkError::Denied(e)), true) => Err(format!(
            "We couldn't start the session because the agent is not allowed to check encryption on the CloudWatch Logs log group \"{group}\" (access denied, which does not mean it is unencrypted): {e}. Allow logs:DescribeLogGroups for the agent's credentials."
        )),
        (Err(e), true) => Err(format!(
            "We couldn't start the session because the agent was unable to validate encryption on the CloudWatch Logs log group \"{group}\": {e}."
        )),
        // Not required: try anyway; delivery reports its own errors.
        (Err(_), false) => Ok(GroupVerdict::Deliver),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_at_the_start_is_a_notice_and_other_errors_are_not() {
        let n = unreachable_notice(
            "Amazon S3 bucket \"b\"",
            &SinkError::Transient("dispatch failure: connection refused".into()),
        )
        .unwrap();
        assert!(n.starts_with("Amazon S3 bucket \"b\" cannot be reached now (dispatch failure: connection refused)"), "{n}");
        assert!(!n.contains('\n'));
        assert_eq!(
            unreachable_notice("x", &SinkError::Denied("AccessDenied".into())),
            None
        );
        assert_eq!(
            unreachable_notice("x", &SinkError::NotFound("NoSuchBucket".into())),
            None
        );
    }

    fn s3(require: bool) -> S3Destination {
        S3Destination {
            bucket: "logs".into(),
            prefix: String::new(),
            require_encryption: require,
        }
    }

    fn cwl(require: bool) -> CwlDestination {
        CwlDestination {
            group: "g".into(),
            streaming: true,
            require_encryption: require,
        }
    }

    #[test]
    fn destinations_follow_the_inputs() {
        let mut inputs = SessionInputs::default();
        assert_eq!(Destinations::from_inputs(&inputs), Destinations::default());
        assert!(!Destinations::default().any());
        inputs.s3_bucket_name = " b ".into();
        inputs.s3_key_prefix = "p/".into();
        inputs.cloud_watch_log_group_name = "g".into();
        inputs.cloud_watch_streaming_enabled = true;
        inputs.cloud_watch_encryption_enabled = true;
        let d = Destinations::from_inputs(&inputs);
        assert_eq!(d.s3.as_ref().unwrap().bucket, "b");
        assert!(d.cwl.as_ref().unwrap().streaming && d.cwl.as_ref().unwrap().require_encryption);
        assert!(d.any());
    }

    #[test]
    fn keys_join_like_path_join_and_cannot_climb() {
        assert_eq!(s3_key("", "s-1", "log"), "s-1.log");
        assert_eq!(s3_key("a/b/", "s-1", "cast"), "a/b/s-1.cast");
        assert_eq!(s3_key("/a//./b", "s:1", "log"), "a/b/s1.log");
        assert_eq!(s3_key("../../etc", "s", "log"), "etc/s.log");
        assert_eq!(s3_key("p", "../x", "log"), "p/.._x.log");
    }

    #[test]
    fn s3_verdicts() {
        assert_eq!(
            check_s3(&s3(true), Ok(BucketEncryption::Aes256)),
            Ok(BucketEncryption::Aes256)
        );
        let refused = check_s3(&s3(true), Ok(BucketEncryption::None)).unwrap_err();
        assert!(refused.starts_with(S3_NOT_ENCRYPTED) && refused.contains("\"logs\""));
        let denied =
            check_s3(&s3(true), Err(SinkError::Denied("AccessDenied".into()))).unwrap_err();
        assert!(
            denied.contains("not allowed") && !denied.contains(S3_NOT_ENCRYPTED),
            "{denied}"
        );
        assert!(check_s3(&s3(true), Err(SinkError::Transient("x".into())))
            .unwrap_err()
            .contains("unable to validate encryption"));
        // Not required: never refuses.
        assert_eq!(
            check_s3(&s3(false), Ok(BucketEncryption::None)),
            Ok(BucketEncryption::None)
        );
        assert_eq!(
            check_s3(&s3(false), Err(SinkError::Denied("x".into()))),
            Ok(BucketEncryption::None)
        );
    }

    #[test]
    fn log_group_verdicts() {
        let kms = LogGroup {
            kms_key_id: Some("arn:aws:kms:us-east-1:1:key/k".into()),
        };
        let plain = LogGroup { kms_key_id: None };
        assert_eq!(
            check_log_group(&cwl(true), Ok(Some(kms))),
            Ok(GroupVerdict::Deliver)
        );
        assert!(check_log_group(&cwl(true), Ok(Some(plain.clone())))
            .unwrap_err()
            .starts_with(CWL_NOT_ENCRYPTED));
        assert_eq!(
            check_log_group(&cwl(false), Ok(Some(plain))),
            Ok(GroupVerdict::Deliver)
        );
        assert!(check_log_group(&cwl(true), Ok(None))
            .unwrap_err()
            .contains("does not exist"));
        match check_log_group(&cwl(false), Ok(None)) {
            Ok(GroupVerdict::Skip(why)) => assert!(why.contains("\"g\" does not exist")),
            other => panic!("{other:?}"),
        }
        let denied = check_log_group(
            &cwl(true),
            Err(SinkError::Denied("AccessDeniedException".into())),
        )
        .unwrap_err();
        assert!(denied.contains("access denied, which does not mean"));
        assert_eq!(
            check_log_group(&cwl(false), Err(SinkError::Transient("x".into()))),
            Ok(GroupVerdict::Deliver)
        );
    }
}
