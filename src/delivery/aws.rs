//! The AWS edge: S3 and CloudWatch Logs clients from `aws-config`, wrapped in the few calls
//! delivery needs, with errors sorted into what the caller can act on ([`SinkError`]).
//!
//! Configuration is the SDK's standard chain: region from `AWS_REGION` / profile /
//! instance metadata, credentials from the environment / profile / `credential_process`
//! / instance role, endpoints from `AWS_ENDPOINT_URL` and the per-service variables
//! (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`), so LocalStack needs no code
//! path of its own. (An IP-address endpoint makes S3 use path-style addressing.) The
//! HTTPS client is the SDK's own on rustls with the *ring* provider, the crypto the rest
//! of the tree already uses. SSO profiles are not supported (the `sso` feature is off to
//! keep the build small).
//!
//! The SDK retries throttling and transient errors itself (standard mode, here with
//! [`SDK_ATTEMPTS`] attempts); callers add their own longer backoff on top where a
//! delivery must survive an outage.

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectCannedAcl, ServerSideEncryption,
};
use std::path::Path;
use tokio::io::AsyncReadExt;

use super::cwl::LogEvent;
use super::sink::{BucketEncryption, LogGroup, LogSink, ObjectSink, Rejected, SinkError, Upload};

/// Attempts per call, including the first, before an error reaches our code.
pub const SDK_ATTEMPTS: u32 = 4;
/// Objects larger than this are uploaded in parts of this size.
pub const MULTIPART_PART: usize = 8 * 1024 * 1024;

/// At most this many characters of an SDK error in a log line or a notice.
pub const ONE_LINE_MAX: usize = 200;

/// `err` and its sources as one line of at most `max` characters: each cause's own
/// message joined with ": ", a cause whose text an outer one already holds left out,
/// whitespace collapsed, cut with "…". The SDK's `DisplayErrorContext` repeats causes and
/// ends with a multi-line `Debug` rendering of the whole error: fine at debug level, not
/// in a journal line or a notice to a user.
pub fn one_line(err: &(dyn std::error::Error + 'static), max: usize) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    let line = parts.join(": ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Sorts an SDK error into what the caller can act on (the sinks' [`SinkError`]; KMS
/// errors are sorted the same way).
fn classify<E>(
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> SinkError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_s3::error::SdkError;
    // The full chain (with the SDK's Debug renderings) at debug level; the error itself
    // carries one readable line.
    tracing::debug!(error = %aws_sdk_s3::error::DisplayErrorContext(err), "AWS SDK error");
    let text = one_line(err, ONE_LINE_MAX);
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            return SinkError::Transient(text)
        }
        SdkError::ResponseError(_) => return SinkError::Transient(text),
        _ => {}
    }
    let code = err.code().unwrap_or_default();
    let described = match err.message() {
        Some(m) if !code.is_empty() => format!("{code}: {m}"),
        _ if !code.is_empty() => code.to_owned(),
        _ => text.clone(),
    };
    match code {
        "ResourceNotFoundException" | "NoSuchBucket" | "NotFound" | "NotFoundException" => {
            SinkError::NotFound(described)
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "AllAccessDisabled" => SinkError::Denied(described),
        "ThrottlingException"
        | "Throttling"
        | "SlowDown"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "InternalError"
        | "InternalFailure"
        | "RequestTimeout"
        | "RequestTimeoutException" => SinkError::Transient(described),
        "" => match err.raw_response().map(|r| r.status().as_u16()) {
            Some(s) if s >= 500 || s == 429 => SinkError::Transient(text),
            Some(403) => SinkError::Denied(text),
            Some(404) => SinkError::NotFound(text),
            _ => SinkError::Other(text),
        },
        _ => SinkError::Other(described),
    }
}

/// The SDK's HTTPS client on rustls with the *ring* provider.
pub fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Loads the SDK configuration from the standard chain (once per daemon); `region`, when
/// given, wins over the chain's (the agent's `region` setting).
pub async fn load_config(region: Option<String>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https_client())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(SDK_ATTEMPTS));
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    loader.load().await
}

/// KMS, for encrypted sessions (protocol.md §5.4): the agent's Decrypt of the client's
/// data key, the client's GenerateDataKey. Both bind the session through the
/// encryption context, so a data key from one session does not open another.
#[derive(Debug, Clone)]
pub struct Kms {
    client: aws_sdk_kms::Client,
}

impl Kms {
    /// A client from the SDK configuration (`AWS_ENDPOINT_URL_KMS` works as for any
    /// service).
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_kms::Client::new(config),
        }
    }

    /// Decrypt of `ciphertext` under `key_id` with `context`.
    ///
    /// # Errors
    /// KMS refused (unknown key, wrong context, no permission) or was unreachable.
    pub async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_id: &str,
        context: &[(&str, &str)],
    ) -> Result<Vec<u8>, SinkError> {
        let mut call = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(ciphertext));
        for (k, v) in context {
            call = call.encryption_context(*k, *v);
        }
        let out = call.send().await.map_err(|e| classify(&e))?;
        out.plaintext
            .map(aws_sdk_kms::primitives::Blob::into_inner)
            .ok_or_else(|| SinkError::Other("KMS Decrypt returned no plaintext".into()))
    }

    /// GenerateDataKey of `bytes` bytes under `key_id` with `context`: (ciphertext,
    /// plaintext).
    ///
    /// # Errors
    /// KMS refused or was unreachable.
    pub async fn generate_data_key(
        &self,
        key_id: &str,
        bytes: i32,
        context: &[(&str, &str)],
    ) -> Result<(Vec<u8>, Vec<u8>), SinkError> {
        let mut call = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .number_of_bytes(bytes);
        for (k, v) in context {
            call = call.encryption_context(*k, *v);
        }
        let out = call.send().await.map_err(|e| classify(&e))?;
        match (out.ciphertext_blob, out.plaintext) {
            (Some(c), Some(p)) => Ok((c.into_inner(), p.into_inner())),
            _ => Err(SinkError::Other(
                "KMS GenerateDataKey returned no key".into(),
            )),
        }
    }
}

/// CloudWatch Logs, as delivery uses it.
#[derive(Debug, Clone)]
pub struct Logs {
    client: aws_sdk_cloudwatchlogs::Client,
}

impl Logs {
    /// A client from the loaded configuration.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_cloudwatchlogs::Client::new(config),
        }
    }

    /// The group with exactly this name, if it exists (`DescribeLogGroups` by prefix,
    /// all pages).
    ///
    /// # Errors
    /// The call failed.
    pub async fn log_group(&self, name: &str) -> Result<Option<LogGroup>, SinkError> {
        let mut pages = self
            .client
            .describe_log_groups()
            .log_group_name_prefix(name)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&e))?;
            if let Some(g) = page
                .log_groups()
                .iter()
                .find(|g| g.log_group_name() == Some(name))
            {
                return Ok(Some(LogGroup {
                    kms_key_id: g.kms_key_id().filter(|k| !k.is_empty()).map(str::to_owned),
                }));
            }
        }
        Ok(None)
    }

    /// Creates the stream; one that exists already is fine.
    ///
    /// # Errors
    /// The call failed (a missing group is [`SinkError::NotFound`]).
    pub async fn ensure_stream(&self, group: &str, stream: &str) -> Result<(), SinkError> {
        match self
            .client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceAlreadyExistsException") => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }

    /// Deletes a stream (`doctor` cleans up its write probe).
    ///
    /// # Errors
    /// The call failed.
    pub async fn delete_stream(&self, group: &str, stream: &str) -> Result<(), SinkError> {
        self.client
            .delete_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }

    /// One page of a stream's events from the start (`GetLogEvents`, oldest first):
    /// the messages and the token of the next page (`None` at the end).
    ///
    /// # Errors
    /// The call failed (a missing group or stream is [`SinkError::NotFound`]).
    pub async fn events_page(
        &self,
        group: &str,
        stream: &str,
        token: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), SinkError> {
        let out = self
            .client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let messages: Vec<String> = out
            .events()
            .iter()
            .filter_map(|e| e.message().map(str::to_owned))
            .collect();
        // The service repeats the token at the end of the stream.
        let next = out
            .next_forward_token()
            .map(str::to_owned)
            .filter(|n| !messages.is_empty() && Some(n) != token.as_ref());
        Ok((messages, next))
    }

    /// Puts one batch (chronological, within the limits).
    ///
    /// # Errors
    /// The call failed (a missing group or stream is [`SinkError::NotFound`]).
    pub async fn put(
        &self,
        group: &str,
        stream: &str,
        events: &[LogEvent],
    ) -> Result<Rejected, SinkError> {
        let events = events
            .iter()
            .map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.timestamp_ms)
                    .message(e.message.clone())
                    .build()
                    .map_err(|e| SinkError::Other(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .set_log_events(Some(events))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(out
            .rejected_log_events_info()
            .map(|r| Rejected {
                too_old_end: r.too_old_log_event_end_index(),
                too_new_start: r.too_new_log_event_start_index(),
                expired_end: r.expired_log_event_end_index(),
            })
            .unwrap_or_default())
    }
}

/// S3, as delivery uses it.
#[derive(Debug, Clone)]
pub struct S3 {
    client: aws_sdk_s3::Client,
}

impl S3 {
    /// A client from the loaded configuration.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_s3::Client::new(config),
        }
    }

    /// The bucket's default encryption rule (the first rule counts, as upstream).
    ///
    /// # Errors
    /// The call failed (a missing bucket is [`SinkError::NotFound`], no permission
    /// [`SinkError::Denied`]).
    pub async fn bucket_encryption(&self, bucket: &str) -> Result<BucketEncryption, SinkError> {
        let out = match self
            .client
            .get_bucket_encryption()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Some("ServerSideEncryptionConfigurationNotFoundError") => {
                return Ok(BucketEncryption::None)
            }
            Err(e) => return Err(classify(&e)),
        };
        let rule = out
            .server_side_encryption_configuration()
            .and_then(|c| c.rules().first())
            .and_then(|r| r.apply_server_side_encryption_by_default());
        Ok(match rule {
            None => BucketEncryption::None,
            Some(r) => match r.sse_algorithm() {
                ServerSideEncryption::Aes256 => BucketEncryption::Aes256,
                other => {
                    let algorithm = other.as_str().to_owned();
                    if algorithm.starts_with("aws:kms") {
                        BucketEncryption::Kms {
                            algorithm,
                            key_id: r.kms_master_key_id().map(str::to_owned),
                        }
                    } else {
                        BucketEncryption::None
                    }
                }
            },
        })
    }

    /// Deletes an object (`doctor` cleans up its write probe).
    ///
    /// # Errors
    /// The call failed.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), SinkError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }

    /// Uploads a file: one `PutObject` up to [`MULTIPART_PART`], a multipart upload above
    /// (aborted on failure). ACL `bucket-owner-full-control`, SSE as the bucket's rule.
    ///
    /// # Errors
    /// The file could not be read or a call failed.
    pub async fn upload_file(&self, up: &Upload<'_>, path: &Path) -> Result<(), SinkError> {
        let io = |e: std::io::Error| SinkError::Other(format!("{}: {e}", path.display()));
        let len = tokio::fs::metadata(path).await.map_err(io)?.len();
        let (sse, kms_key) = match up.encryption {
            BucketEncryption::None => (None, None),
            BucketEncryption::Aes256 => (Some(ServerSideEncryption::Aes256), None),
            BucketEncryption::Kms { algorithm, key_id } => (
                Some(ServerSideEncryption::from(algorithm.as_str())),
                key_id.clone(),
            ),
        };
        if len <= MULTIPART_PART as u64 {
            let body = tokio::fs::read(path).await.map_err(io)?;
            self.client
                .put_object()
                .bucket(up.bucket)
                .key(up.key)
                .content_type(up.content_type)
                .acl(ObjectCannedAcl::BucketOwnerFullControl)
                .set_server_side_encryption(sse)
                .set_ssekms_key_id(kms_key)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| classify(&e))?;
            return Ok(());
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(up.bucket)
            .key(up.key)
            .content_type(up.content_type)
            .acl(ObjectCannedAcl::BucketOwnerFullControl)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| SinkError::Other("CreateMultipartUpload returned no upload id".into()))?
            .to_owned();
        let result = self.upload_parts(up, &upload_id, path).await;
        match result {
            Ok(parts) => {
                let done = self
                    .client
                    .complete_multipart_upload()
                    .bucket(up.bucket)
                    .key(up.key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await;
                if let Err(e) = done {
                    self.abort(up, &upload_id).await;
                    return Err(classify(&e));
                }
                Ok(())
            }
            Err(e) => {
                self.abort(up, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        up: &Upload<'_>,
        upload_id: &str,
        path: &Path,
    ) -> Result<Vec<CompletedPart>, SinkError> {
        let io = |e: std::io::Error| SinkError::Other(format!("{}: {e}", path.display()));
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let mut parts = Vec::new();
        for number in 1..=10_000 {
            let mut buf = Vec::with_capacity(MULTIPART_PART);
            (&mut file)
                .take(MULTIPART_PART as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(io)?;
            if buf.is_empty() {
                break;
            }
            let out = self
                .client
                .upload_part()
                .bucket(up.bucket)
                .key(up.key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| classify(&e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        Ok(parts)
    }

    async fn abort(&self, up: &Upload<'_>, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(up.bucket)
            .key(up.key)
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::warn!(bucket = up.bucket, key = up.key, error = %classify(&e), "Could not abort a failed multipart upload (a lifecycle rule for incomplete uploads cleans it up)");
        }
    }
}

impl ObjectSink for S3 {
    async fn bucket_encryption(&self, bucket: &str) -> Result<BucketEncryption, SinkError> {
        S3::bucket_encryption(self, bucket).await
    }

    async fn upload_file(&self, up: &Upload<'_>, path: &Path) -> Result<(), SinkError> {
        S3::upload_file(self, up, path).await
    }
}

impl LogSink for Logs {
    async fn log_group(&self, name: &str) -> Result<Option<LogGroup>, SinkError> {
        Logs::log_group(self, name).await
    }

    async fn ensure_stream(&self, group: &str, stream: &str) -> Result<(), SinkError> {
        Logs::ensure_stream(self, group, stream).await
    }

    async fn put(
        &self,
        group: &str,
        stream: &str,
        events: &[LogEvent],
    ) -> Result<Rejected, SinkError> {
        Logs::put(self, group, stream, events).await
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn sdk_errors_are_one_short_line() {
        let err = Layer(
            "dispatch failure",
            Some(Box::new(Layer(
                "io error",
                Some(Box::new(Layer(
                    "tcp connect error:\n  Connection refused (os error 111)",
                    Some(Box::new(Layer("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            super::one_line(&err, 200),
            "dispatch failure: io error: tcp connect error: Connection refused (os error 111)"
        );
        let cut = super::one_line(&err, 20);
        assert_eq!(cut.chars().count(), 20);
        assert!(cut.ends_with('…') && !cut.contains('\n'), "{cut}");
    }
}
