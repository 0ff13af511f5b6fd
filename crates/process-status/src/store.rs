//! The storage contract ([`StatusStore`]) and the in-process adapters ([`MemoryStore`],
//! [`NoopStore`]).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use headwaters_ordering_core::Timestamp;

use crate::Error;

/// One entity's status: its name and the timestamp of the last event processed for it.
pub type Item = (String, Timestamp);

/// Where process status is kept (EventStreamex's `ProcessStatusStorageAdapter`).
///
/// Contract for every adapter:
/// * a stored timestamp never moves backwards: storing an older one keeps the newer;
/// * [`store`](Self::store) is atomic: after a crash, each entity holds a value that was
///   really stored, never a torn one;
/// * [`reset`](Self::reset) touches only this store's own table.
///
/// Use it through [`ProcessStatus`](crate::ProcessStatus), which coalesces and batches.
#[async_trait]
pub trait StatusStore: Send + Sync + 'static {
    /// Store a batch; each entity appears at most once.
    async fn store(&self, items: &[Item]) -> Result<(), Error>;

    /// Store one item (EventStreamex's `item_processed`).
    async fn item_processed(&self, entity: &str, timestamp: Timestamp) -> Result<(), Error> {
        self.store(&[(entity.to_owned(), timestamp)]).await
    }

    /// Every stored item.
    async fn load(&self) -> Result<Vec<Item>, Error>;

    /// Remove every item of this store.
    async fn reset(&self) -> Result<(), Error>;
}

/// Keeps status in memory: lost with the process. For tests and as a reference.
#[derive(Debug, Default)]
pub struct MemoryStore {
    items: Mutex<HashMap<String, Timestamp>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl StatusStore for MemoryStore {
    async fn store(&self, items: &[Item]) -> Result<(), Error> {
        let mut map = self.items.lock().unwrap_or_else(|p| p.into_inner());
        for (entity, ts) in items {
            let slot = map.entry(entity.clone()).or_insert(*ts);
            *slot = (*slot).max(*ts);
        }
        Ok(())
    }

    async fn load(&self) -> Result<Vec<Item>, Error> {
        let map = self.items.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.iter().map(|(e, t)| (e.clone(), *t)).collect())
    }

    async fn reset(&self) -> Result<(), Error> {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }
}

/// Stores nothing; `load` is always empty. **Development only**: after a restart every
/// entity reads as never processed (EventStreamex's `NoAdapter`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopStore;

#[async_trait]
impl StatusStore for NoopStore {
    async fn store(&self, _items: &[Item]) -> Result<(), Error> {
        Ok(())
    }

    async fn load(&self) -> Result<Vec<Item>, Error> {
        Ok(Vec::new())
    }

    async fn reset(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[async_trait]
impl<S: StatusStore + ?Sized> StatusStore for std::sync::Arc<S> {
    async fn store(&self, items: &[Item]) -> Result<(), Error> {
        (**self).store(items).await
    }

    async fn load(&self) -> Result<Vec<Item>, Error> {
        (**self).load().await
    }

    async fn reset(&self) -> Result<(), Error> {
        (**self).reset().await
    }
}
