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
        }
    }

    /// The delay before the next attempt; counts a failure.
    pub fn step(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.failures = self.failures.saturating_add(1);
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base * ((self.seed % 500) as u32 + 500) / 1000
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
        self.failures = 0;
    }
}
