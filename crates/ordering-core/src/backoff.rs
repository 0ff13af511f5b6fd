//! [`Backoff`]: exponential reconnection delays with jitter, shared by the transports.

use std::time::{Duration, SystemTime};

/// Exponential backoff with jitter: each step doubles the delay up to `max`, and every delay
/// is drawn from 50–100 % of the step, so many clients that lost the same server do not
/// return in lockstep. Counts the failures since the last [`reset`](Backoff::reset).
///
/// ```
/// use std::time::Duration;
/// use headwaters_ordering_core::Backoff;
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let first = b.step();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// for _ in 0..10 {
///     assert!(b.step() <= Duration::from_secs(1));
/// }
/// assert_eq!(b.failures(), 11);
/// b.reset();
/// assert_eq!(b.failures(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
    seed: u64,
    failures: u32,
    max_attempts: Option<u32>,
}

impl Backoff {
    /// Delays from `min` up to `max` (`max` is raised to `min` if below it).
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Self {
            next: min,
            min,
            max: max.max(min),
            seed,
            failures: 0,
            max_attempts: None,
        }
    }

    /// Give up after `max` failed attempts in a row (`None`: never): [`retry`](Self::retry)
    /// then answers `None`.
    pub fn with_max_attempts(mut self, max: Option<u32>) -> Self {
        self.max_attempts = max;
        self
    }

    /// An attempt failed: the delay before the next one, or `None` when the attempts allowed
    /// by [`with_max_attempts`](Self::with_max_attempts) are used up — the rule every
    /// transport's reconnect loop follows.
    pub fn retry(&mut self) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| self.failures >= max) {
            return None;
        }
        Some(self.step())
    }

    /// The delay before the next attempt; counts a failure.
    pub fn step(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.failures = self.failures.saturating_add(1);
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        // 50–100 % of the step; for steps too large to multiply, divide first (the error,
        // under a thousandth, does not matter there).
        let per_mille = (self.seed % 500) as u32 + 500;
        base.checked_mul(per_mille)
            .map_or_else(|| base / 1000 * per_mille, |d| d / 1000)
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the failure just counted deserves a warning: the first, then every 30th, so
    /// that a long outage says it is still going on without a line per attempt.
    pub fn worth_reporting(&self) -> bool {
        self.failures == 1 || self.failures.is_multiple_of(30)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
        self.failures = 0;
    }

    /// The one reconnect rule of every transport, after a failed attempt to connect `what`:
    /// log `error` (a warning for the first failure and every 30th, else at debug level),
    /// then wait the next delay — unless the attempts are used up ([`Pause::GiveUp`]) or
    /// `stop` resolves first ([`Pause::Stopped`]).
    #[cfg(feature = "dispatcher")]
    pub async fn pause(
        &mut self,
        what: &str,
        error: &impl std::fmt::Display,
        stop: impl Future<Output = ()>,
    ) -> Pause {
        let Some(wait) = self.retry() else {
            tracing::error!(%what, %error, attempts = self.failures, "giving up reconnecting");
            return Pause::GiveUp;
        };
        if self.worth_reporting() {
            tracing::warn!(%what, %error, ?wait, attempts = self.failures, "reconnecting");
        } else {
            tracing::debug!(%what, %error, ?wait, attempts = self.failures, "reconnecting");
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => Pause::Retry,
            () = stop => Pause::Stopped,
        }
    }
}

/// What [`Backoff::pause`] decided.
#[cfg(feature = "dispatcher")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The delay has passed: try again.
    Retry,
    /// The attempt limit is reached: stop trying.
    GiveUp,
    /// The stop signal came first.
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let mut b = Backoff::new(Duration::MAX / 3, Duration::MAX);
        for _ in 0..70 {
            let delay = b.step();
            assert!(delay >= Duration::MAX / 6 - Duration::from_secs(1));
        }
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert!(b.step() >= Duration::from_secs(u64::MAX / 4));
        assert!(b.step() <= Duration::MAX);
        assert_eq!(b.failures(), 2);
    }

    #[test]
    fn retries_stop_after_the_attempt_limit_until_a_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(1), ms(2)).with_max_attempts(Some(3));
        assert!((0..3).all(|_| b.retry().is_some()));
        assert_eq!(b.retry(), None);
        assert_eq!(b.retry(), None, "stays given up");
        b.reset();
        assert!(b.retry().is_some());
        let mut forever = Backoff::new(ms(1), ms(2));
        assert!((0..1000).all(|_| forever.retry().is_some()));
    }

    #[cfg(feature = "dispatcher")]
    #[tokio::test(start_paused = true)]
    async fn a_pause_waits_the_delay_gives_up_at_the_limit_and_yields_to_a_stop() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(100)).with_max_attempts(Some(2));
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<()>;
        assert_eq!(b.pause("test", &"refused", never()).await, Pause::Retry);
        let waited = started.elapsed();
        assert!(waited >= ms(50) && waited <= ms(100), "{waited:?}");
        assert_eq!(b.pause("test", &"refused", never()).await, Pause::Retry);
        assert_eq!(b.pause("test", &"refused", never()).await, Pause::GiveUp);
        b.reset();
        let at = tokio::time::Instant::now();
        assert_eq!(b.pause("test", &"refused", async {}).await, Pause::Stopped);
        assert_eq!(at.elapsed(), Duration::ZERO, "a stop does not wait");
    }

    #[test]
    fn a_long_outage_is_reported_now_and_then() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        let reported: Vec<u32> = (1..=100)
            .filter(|_| {
                b.step();
                b.worth_reporting()
            })
            .collect();
        assert_eq!(reported, [1, 30, 60, 90]);
    }

    #[test]
    fn steps_double_up_to_the_cap_with_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(800));
        let mut b = Backoff::new(min, max);
        let caps = [100, 200, 400, 800, 800, 800];
        for cap in caps {
            let cap = Duration::from_millis(cap);
            let delay = b.step();
            assert!(
                delay >= cap / 2 && delay <= cap,
                "{delay:?} for a {cap:?} step"
            );
        }
    }
}
