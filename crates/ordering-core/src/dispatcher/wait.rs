//! Waiting for the work to be done: until a number of messages were processed, or until the
//! dispatcher has been idle a while — what tests and batch jobs need, bounded by a timeout.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::{Dispatcher, Running};
use crate::handler::Handler;
use crate::settle::Settle;

/// How often a wait looks at the counters. Polling keeps the per-message path free of any
/// notification cost.
const POLL: Duration = Duration::from_millis(5);

/// A wait's timeout ran out first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitTimeout {
    /// What was waited for: `Some(n)` messages processed, or `None` for idleness.
    pub wanted: Option<u64>,
    /// Messages processed (acked or discarded) when the time ran out.
    pub processed: u64,
    /// Deliveries still in flight then.
    pub in_flight: u64,
    /// How long it waited.
    pub waited: Duration,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wanted {
            Some(n) => write!(
                f,
                "{} of {n} messages processed when the {:?} wait ran out ({} in flight)",
                self.processed, self.waited, self.in_flight
            ),
            None => write!(
                f,
                "not idle within {:?}: {} processed, {} in flight",
                self.waited, self.processed, self.in_flight
            ),
        }
    }
}

impl std::error::Error for WaitTimeout {}

impl<H: Handler, S: Settle> Dispatcher<H, S> {
    /// Messages processed so far: deliveries settled with ack or reject (a discard, or a
    /// poison message discarded). Retries, redeliveries skipped by the handler and dropped
    /// deliveries are not counted twice or at all.
    pub fn processed(&self) -> u64 {
        let m = self.metrics();
        m.acked + m.discarded
    }

    /// Wait until at least `n` messages were [processed](Self::processed) since the
    /// dispatcher started, or `timeout` passes. Returns the count reached.
    ///
    /// ```
    /// # use headwaters_ordering_core::{Config, Delivery, Dispatcher, Key, Message, NoSettle, Outcome, SimpleHandler, Timestamp};
    /// # use std::time::Duration;
    /// # struct Ack;
    /// # impl SimpleHandler for Ack {
    /// #     type Error = std::convert::Infallible;
    /// #     async fn handle(&self, _: &Key, _: &Message) -> Result<Outcome, Self::Error> { Ok(Outcome::ack()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let dispatcher = Dispatcher::new(Ack, Config::default()).unwrap();
    /// let epoch = dispatcher.new_epoch();
    /// for i in 0..100 {
    ///     let message = Message::new("body", i.to_string(), Timestamp::now());
    ///     let delivery = Delivery { key: Key::from(i % 7), message, settle: NoSettle, epoch };
    ///     dispatcher.dispatch(delivery).await.unwrap();
    /// }
    /// let done = dispatcher.wait_processed(100, Duration::from_secs(10)).await.unwrap();
    /// assert_eq!(done, 100);
    /// # }
    /// ```
    pub async fn wait_processed(&self, n: u64, timeout: Duration) -> Result<u64, WaitTimeout> {
        let started = Instant::now();
        loop {
            let processed = self.processed();
            if processed >= n {
                return Ok(processed);
            }
            if started.elapsed() >= timeout {
                return Err(self.timed_out(Some(n), timeout));
            }
            tokio::time::sleep(POLL.min(timeout.saturating_sub(started.elapsed()))).await;
        }
    }

    /// Wait until the dispatcher has been idle for `quiet` — nothing in flight, nothing
    /// parked and nothing processed in that time — or `timeout` passes. Returns the
    /// processed count. A dispatcher that never received anything is idle at once (after
    /// `quiet`): wait for the first messages another way when the source may be slow to
    /// deliver them.
    pub async fn wait_idle(&self, quiet: Duration, timeout: Duration) -> Result<u64, WaitTimeout> {
        let started = Instant::now();
        let mut last = self.processed();
        let mut idle_since = Instant::now();
        loop {
            let m = self.metrics();
            let processed = m.acked + m.discarded;
            if m.in_flight > 0 || m.parked > 0 || processed != last {
                last = processed;
                idle_since = Instant::now();
            } else if idle_since.elapsed() >= quiet {
                return Ok(processed);
            }
            if started.elapsed() >= timeout {
                return Err(self.timed_out(None, timeout));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn timed_out(&self, wanted: Option<u64>, waited: Duration) -> WaitTimeout {
        let m = self.metrics();
        WaitTimeout {
            wanted,
            processed: m.acked + m.discarded,
            in_flight: m.in_flight,
            waited,
        }
    }
}

impl<H: Handler, S: Settle, E> Running<H, S, E> {
    /// Messages processed so far (see [`Dispatcher::processed`]).
    pub fn processed(&self) -> u64 {
        self.dispatcher.processed()
    }

    /// Wait until `n` messages were processed, or `timeout` passes (see
    /// [`Dispatcher::wait_processed`]). The consumer keeps running either way.
    pub async fn wait_processed(&self, n: u64, timeout: Duration) -> Result<u64, WaitTimeout> {
        self.dispatcher.wait_processed(n, timeout).await
    }

    /// Wait until nothing was in flight or processed for `quiet`, or `timeout` passes (see
    /// [`Dispatcher::wait_idle`]). The consumer keeps running either way.
    pub async fn wait_idle(&self, quiet: Duration, timeout: Duration) -> Result<u64, WaitTimeout> {
        self.dispatcher.wait_idle(quiet, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{
        Config, Delivery, Dispatcher, Key, Message, NoSettle, Outcome, SimpleHandler, Timestamp,
    };

    /// Acks after `delay`, discards payloads saying "bad".
    struct Slow(Duration);

    impl SimpleHandler for Slow {
        type Error = std::convert::Infallible;

        async fn handle(&self, _: &Key, m: &Message) -> Result<Outcome, Self::Error> {
            tokio::time::sleep(self.0).await;
            Ok(if &m.payload[..] == b"bad" {
                Outcome::discard("bad")
            } else {
                Outcome::ack()
            })
        }
    }

    async fn feed(dispatcher: &Dispatcher<Slow, NoSettle>, n: u64) {
        let epoch = dispatcher.new_epoch();
        for i in 0..n {
            let body = if i % 10 == 0 { "bad" } else { "ok" };
            let message = Message::new(body, i.to_string(), Timestamp::from_micros(0));
            let delivery = Delivery {
                key: Key::from(i % 3),
                message,
                settle: NoSettle,
                epoch,
            };
            dispatcher.dispatch(delivery).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_until_n_processed_counting_discards() {
        let dispatcher =
            Dispatcher::new(Slow(Duration::from_millis(100)), Config::default()).unwrap();
        feed(&dispatcher, 30).await;
        // Three keys, ten messages each, 100 ms apiece: 1 s of virtual time.
        let err = dispatcher
            .wait_processed(30, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert_eq!(err.wanted, Some(30));
        assert!(err.processed < 30 && err.processed >= 12, "{err}");
        assert!(
            err.to_string().contains("of 30 messages processed"),
            "{err}"
        );
        let done = dispatcher
            .wait_processed(30, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(done, 30, "discards count as processed");
        assert_eq!(dispatcher.metrics().discarded, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_until_idle_for_the_quiet_period() {
        let dispatcher =
            Dispatcher::new(Slow(Duration::from_millis(100)), Config::default()).unwrap();
        feed(&dispatcher, 9).await;
        let started = tokio::time::Instant::now();
        let done = dispatcher
            .wait_idle(Duration::from_millis(200), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(done, 9);
        // Three messages per key at 100 ms each, then 200 ms of quiet.
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        let err = {
            feed(&dispatcher, 30).await;
            dispatcher
                .wait_idle(Duration::from_millis(200), Duration::from_millis(300))
                .await
                .unwrap_err()
        };
        assert_eq!(err.wanted, None);
        assert!(err.to_string().starts_with("not idle within"), "{err}");
    }
}
