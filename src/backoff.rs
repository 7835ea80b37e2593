//! The one retry schedule of the crate (pure: randomness is a parameter): exponential
//! backoff, each delay doubling up to a cap, with optional jitter.
//!
//! Every retry loop takes its schedule from here, by name:
//!
//! | schedule | first delay | cap | jitter | used by |
//! |---|---|---|---|---|
//! | [`Backoff::control_channel`] | 250 ms | 60 s | +0–50 % each | the agent's control channel |
//! | [`Backoff::reconnect`] | 100–200 ms (random) | 5 s | the first only | the agent reopening a data channel, the client reconnecting (upstream's schedule) |
//! | [`Backoff::delivery`] | 500 ms | 30 s | none | S3 and CloudWatch calls (`delivery::retry`, whose `Patience` decides what is retried and for how long) |
//!
//! How many attempts a loop makes, and what it does between them, stay with the loop.

use std::time::Duration;

/// An exponential backoff. See the module doc for the schedules.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    /// Each delay is stretched by up to this fraction (0.5: up to +50 %).
    jitter: f64,
    /// Only the first delay is random: drawn from `first ..= first * (1 + first_spread)`.
    first_spread: f64,
    started: bool,
}

impl Backoff {
    /// A schedule from `first`, doubling to `max`, without jitter.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
            jitter: 0.0,
            first_spread: 0.0,
            started: false,
        }
    }

    /// The agent's control channel: 250 ms doubling to 60 s, each delay up to +50 %
    /// (agents that lost the same gateway do not come back at once).
    pub fn control_channel() -> Self {
        Self {
            jitter: 0.5,
            ..Self::new(Duration::from_millis(250), Duration::from_secs(60))
        }
    }

    /// Reopening a data channel (agent) or reconnecting to one (client), as upstream
    /// does: a random first delay of 100–200 ms, then doubling to 5 s.
    pub fn reconnect() -> Self {
        Self {
            first_spread: 1.0,
            ..Self::new(Duration::from_millis(100), Duration::from_secs(5))
        }
    }

    /// Delivery calls (S3, CloudWatch Logs): 500 ms doubling to 30 s.
    pub fn delivery() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
        self.started = false;
    }

    /// The next delay, with `random` in `[0, 1)` choosing the jitter.
    pub fn next_delay_with(&mut self, random: f64) -> Duration {
        let random = random.clamp(0.0, 1.0);
        let base = if self.started {
            self.next
        } else {
            self.started = true;
            self.next = self.first.mul_f64(1.0 + self.first_spread * random);
            self.next
        };
        self.next = (base * 2).min(self.max);
        base + base.mul_f64(self.jitter * random)
    }

    /// The next delay, jittered at random.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_to_the_cap_and_start_again_after_a_reset() {
        let mut b = Backoff::delivery();
        let got: Vec<_> = (0..8).map(|_| b.next_delay_with(0.9)).collect();
        assert_eq!(
            got,
            [
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16000),
                ms(30000),
                ms(30000)
            ]
        );
        b.reset();
        assert_eq!(b.next_delay_with(0.0), ms(500));
    }

    #[test]
    fn control_channel_jitter_stays_within_half() {
        let mut lo = Backoff::control_channel();
        let mut hi = Backoff::control_channel();
        for _ in 0..20 {
            let (a, b) = (lo.next_delay_with(0.0), hi.next_delay_with(0.999));
            assert!(b >= a && b <= a.mul_f64(1.5), "{a:?} {b:?}");
            assert!(a <= Duration::from_secs(60));
        }
        assert_eq!(lo.next_delay_with(0.0), Duration::from_secs(60));
    }

    #[test]
    fn reconnect_draws_its_first_delay_then_doubles_it() {
        for r in [0.0, 0.5, 0.999] {
            let mut b = Backoff::reconnect();
            let first = b.next_delay_with(r);
            assert!(first >= ms(100) && first < ms(200), "{first:?}");
            assert_eq!(b.next_delay_with(0.3), first * 2);
            assert_eq!(b.next_delay_with(0.3), first * 4);
            for _ in 0..10 {
                assert!(b.next_delay_with(0.3) <= Duration::from_secs(5));
            }
        }
    }
}
