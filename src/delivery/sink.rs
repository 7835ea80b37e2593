//! The I/O edge of delivery, as two small traits: [`ObjectSink`] (S3: what the upload at
//! close needs) and [`LogSink`] (CloudWatch Logs: what the streamer and the upload at
//! close need), with the vocabulary they share — [`SinkError`], sorted the way the retry
//! policy (`retry::Patience`) decides on it.
//!
//! Why traits: the streamer (`stream`) and the uploads (`upload`) are
//! generic over them, so their batching, retries, acknowledgements and restarts run in
//! unit tests against an in-memory twin (`delivery::memory`, test builds only) that can
//! be told to fail — an outage, throttling, a missing destination, a partial batch —
//! without LocalStack. The AWS implementations are `aws::S3` and
//! `aws::Logs`; the LocalStack integration tests keep exercising those.
//!
//! The futures are `Send` so a streamer can run on its own task (`tokio::spawn`).

use super::cwl::LogEvent;
use std::future::Future;
use std::path::Path;

/// A sink call failed, sorted into what the caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The named resource (bucket, log group, log stream) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The credentials are missing, invalid, or not allowed to do this.
    #[error("{0}")]
    Denied(String),
    /// Throttling, a 5xx, a timeout or a connection failure: worth retrying later.
    #[error("{0}")]
    Transient(String),
    /// Anything else (a bad parameter, a malformed response).
    #[error("{0}")]
    Other(String),
}

impl SinkError {
    /// Whether a later retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

/// A bucket's default encryption, as `GetBucketEncryption` reports its first rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketEncryption {
    /// No default encryption rule.
    None,
    /// SSE-S3.
    Aes256,
    /// SSE-KMS (or DSSE-KMS), with the key if the rule names one.
    Kms {
        /// The algorithm as S3 names it (`aws:kms` or `aws:kms:dsse`).
        algorithm: String,
        /// The key id or ARN.
        key_id: Option<String>,
    },
}

/// One upload's settings.
#[derive(Debug, Clone)]
pub struct Upload<'a> {
    /// Bucket.
    pub bucket: &'a str,
    /// Object key.
    pub key: &'a str,
    /// `Content-Type`.
    pub content_type: &'a str,
    /// Server-side encryption to ask for (the bucket's default rule).
    pub encryption: &'a BucketEncryption,
}

/// A log group as `DescribeLogGroups` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogGroup {
    /// Its KMS key, if it is encrypted with one.
    pub kms_key_id: Option<String>,
}

/// What `PutLogEvents` refused (the rest was stored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejected {
    /// Index below which events were too old.
    pub too_old_end: Option<i32>,
    /// Index from which events were too new.
    pub too_new_start: Option<i32>,
    /// Index below which events were past the group's retention.
    pub expired_end: Option<i32>,
}

/// Where objects go (S3).
pub trait ObjectSink: Send + Sync {
    /// The bucket's default encryption (checked before a session starts).
    ///
    /// # Errors
    /// The call failed (a missing bucket is [`SinkError::NotFound`]).
    fn bucket_encryption(
        &self,
        bucket: &str,
    ) -> impl Future<Output = Result<BucketEncryption, SinkError>> + Send;

    /// Stores the file at `path` as one object, whole (a failed upload leaves no partial
    /// object behind).
    ///
    /// # Errors
    /// The file could not be read or the call failed.
    fn upload_file(
        &self,
        up: &Upload<'_>,
        path: &Path,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Where log events go (CloudWatch Logs). The agent never creates log groups.
pub trait LogSink: Send + Sync {
    /// The group with exactly this name, if it exists (checked before a session starts).
    ///
    /// # Errors
    /// The call failed.
    fn log_group(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LogGroup>, SinkError>> + Send;

    /// Creates the stream in `group`; one that exists already is fine.
    ///
    /// # Errors
    /// The call failed (a missing group is [`SinkError::NotFound`]).
    fn ensure_stream(
        &self,
        group: &str,
        stream: &str,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Puts one batch: chronological and within the limits `cwl::Batcher` keeps
    /// ([`super::cwl::MAX_BATCH_EVENTS`], [`super::cwl::MAX_BATCH_BYTES`], 24 hours).
    /// Events the service refuses (too old, too new, expired) are reported, the rest
    /// stored.
    ///
    /// # Errors
    /// The call failed (a missing group or stream is [`SinkError::NotFound`]).
    fn put(
        &self,
        group: &str,
        stream: &str,
        events: &[LogEvent],
    ) -> impl Future<Output = Result<Rejected, SinkError>> + Send;
}
