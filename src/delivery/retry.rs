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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_without_end_on_the_delivery_schedule() {
        let mut p = Patience::new();
        let e = SinkError::Transient("ThrottlingException".into());
        let mut delays = Vec::new();
        for _ in 0..40 {
            let d = p
                .next_delay(&e)
                .expect("transient errors are never given up");
            delays.push(d);
            tokio::time::advance(d).await;
        }
        assert_eq!(
            &delays[..7],
            &[
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16000),
                ms(30000)
            ]
        );
        assert!(delays[7..].iter().all(|d| *d == ms(30_000)));
        // A success starts the schedule again.
        p.reset();
        assert_eq!(p.next_delay(&e), Some(ms(500)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_destination_is_given_up_after_the_patience() {
        let mut p = Patience::new();
        let e = SinkError::NotFound("ResourceNotFoundException".into());
        let start = Instant::now();
        let mut tries = 1;
        while let Some(d) = p.next_delay(&e) {
            tokio::time::advance(d).await;
            tries += 1;
        }
        let waited = start.elapsed();
        // 0.5 + 1 + 2 + 4 + 8 + 16 + 30 + 30 + 30 s: the ninth delay crosses the 120 s,
        // and the tenth failure is given up.
        assert!(waited >= DELIVERY_PATIENCE);
        assert_eq!(waited, ms(121_500));
        assert_eq!(tries, 10);
        // A success in between forgets how long it was missing.
        p.reset();
        assert!(p.next_delay(&e).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn denied_and_bad_requests_are_given_up_at_once() {
        let mut p = Patience::new();
        assert_eq!(
            p.next_delay(&SinkError::Denied("AccessDenied".into())),
            None
        );
        assert_eq!(
            p.next_delay(&SinkError::Other("InvalidParameter".into())),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_retries_returns_the_first_success_or_the_error_it_gave_up_on() {
        let mut calls = 0;
        let got = with_retries("test", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 4 {
                    Err(SinkError::Transient(format!("try {n}")))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Ok(4));
        let mut calls = 0;
        let got: Result<(), _> = with_retries("test", || {
            calls += 1;
            async { Err(SinkError::Denied("no".into())) }
        })
        .await;
        assert_eq!(got, Err(SinkError::Denied("no".into())));
        assert_eq!(calls, 1);
    }
}
