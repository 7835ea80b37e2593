//! The retry policy of every delivery call ([`Patience`]): what is retried, how often
//! and for how long. The delays come from the crate's one schedule,
//! [`crate::backoff::Backoff::delivery`]; this file decides per error kind
//! ([`SinkError`]).
//!
//! To change how S3 or CloudWatch Logs calls are retried, change this file: the streamer
//! (`stream`), the uploads (`upload`) and the agent's checks before a
//! session (through [`with_retries`]) all go through it. (The SDK also retries each call
//! a few times itself: [`super::aws::SDK_ATTEMPTS`].)

use super::sink::SinkError;
use crate::backoff::Backoff;
use std::time::Duration;
use tokio::time::Instant;

/// A destination that is not found (deleted, or not re-created yet) is retried this long
/// before delivery gives up; transient failures are retried while the daemon runs.
pub const DELIVERY_PATIENCE: Duration = Duration::from_secs(120);

/// The retry policy of every delivery call: transient failures (network, throttling,
/// 5xx) are retried for as long as the daemon runs — an outage of any length costs
/// nothing but delay; a destination that is not found is retried for
/// [`DELIVERY_PATIENCE`] (it may be re-created, e.g. after a LocalStack restart or a
/// re-deployed stack), then given up; anything else (denied, bad request) is given up at
/// once. Giving up leaves the recording in the state dir.
///
/// Time is tokio's (`tokio::time::Instant`), so tests with paused time run an outage of
/// hours in milliseconds.
#[derive(Debug)]
pub struct Patience {
    retry: Backoff,
    missing_since: Option<Instant>,
}

impl Default for Patience {
    fn default() -> Self {
        Self::new()
    }
}

impl Patience {
    /// A policy with nothing failed yet.
    pub fn new() -> Self {
        Self {
            retry: Backoff::delivery(),
            missing_since: None,
        }
    }

    /// A success: the next failure starts the backoff again.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// After a failure: the delay before the next try, or `None` to give up.
    pub fn next_delay(&mut self, e: &SinkError) -> Option<Duration> {
        match e {
            SinkError::Transient(_) => Some(self.retry.next_delay()),
            SinkError::NotFound(_) => {
                let since = *self.missing_since.get_or_insert_with(Instant::now);
                (since.elapsed() < DELIVERY_PATIENCE).then(|| self.retry.next_delay())
            }
            SinkError::Denied(_) | SinkError::Other(_) => None,
        }
    }
}

/// Runs one delivery call under [`Patience`], logging each retry with `what`.
///
/// # Errors
/// The call's last error, once [`Patience`] gives up.
pub async fn with_retries<F, Fut, T>(what: &str, mut f: F) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
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
