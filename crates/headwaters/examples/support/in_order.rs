//! The handler the three `*_ordered` examples share: it counts the messages of each key
//! that arrive out of order (payloads are sequence numbers) and which ones it has seen.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headwaters::ordering::{Key, Message, Outcome, SimpleHandler};

#[derive(Default)]
struct Seen {
    last: HashMap<Key, u64>,
    distinct: HashSet<(Key, u64)>,
    violations: u64,
}

/// Checks per-key order; clones share what they saw.
#[derive(Clone, Default)]
pub(crate) struct InOrder(Arc<Mutex<Seen>>);

impl InOrder {
    /// Wait until `total` distinct messages were handled, or fail after `within`.
    pub(crate) async fn wait_for(&self, total: u64, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.distinct() < total {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} of {total} messages handled within {within:?}",
                self.distinct()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Distinct messages handled.
    pub(crate) fn distinct(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .distinct
            .len() as u64
    }

    /// Messages that came after a later one of their key (redeliveries excepted).
    pub(crate) fn violations(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).violations
    }

    /// Print `what` happened to `total` messages in `elapsed`, and fail on a violation.
    pub(crate) fn report(&self, what: &str, total: u64, elapsed: Duration) -> anyhow::Result<()> {
        let violations = self.violations();
        println!(
            "{total} {what} in {elapsed:.2?} ({:.0} msgs/s); order violations: {violations}",
            total as f64 / elapsed.as_secs_f64()
        );
        anyhow::ensure!(violations == 0, "{violations} order violations");
        Ok(())
    }
}

impl SimpleHandler for InOrder {
    type Error = std::convert::Infallible;

    async fn handle(&self, key: &Key, m: &Message) -> Result<Outcome, Self::Error> {
        let seq: u64 = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let previous = seen.last.insert(key.clone(), seq);
        if previous.is_some_and(|p| seq <= p) && !m.is_redelivery() {
            seen.violations += 1;
        }
        seen.distinct.insert((key.clone(), seq));
        Ok(Outcome::ack())
    }
}
