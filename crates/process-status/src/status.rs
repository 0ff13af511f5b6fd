//! [`ProcessStatus`]: the in-memory view of last-processed timestamps with a coalescing,
//! batching write-behind to a [`StatusStore`].

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use headwaters_ordering_core::Timestamp;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Error;
use crate::store::{Item, StatusStore};

/// Write-behind settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WriteBehind {
    /// The longest an accepted item waits before its batch is written. Default 10 ms.
    pub max_delay: Duration,
    /// A batch is written as soon as it holds this many entities. Default 1,000.
    pub max_batch: usize,
    /// Distinct entities waiting to be written at most; beyond it `item_processed` waits for
    /// the writer (backpressure). Default 100,000.
    pub max_pending: usize,
    /// First retry delay after a failed write; doubled up to 5 s. Default 100 ms.
    pub retry_backoff: Duration,
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self {
            max_delay: Duration::from_millis(10),
            max_batch: 1_000,
            max_pending: 100_000,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

impl WriteBehind {
    /// Set [`max_delay`](Self::max_delay).
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Set [`max_batch`](Self::max_batch).
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }

    /// Set [`max_pending`](Self::max_pending).
    pub fn with_max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// Set [`retry_backoff`](Self::retry_backoff).
    pub fn with_retry_backoff(mut self, retry_backoff: Duration) -> Self {
        self.retry_backoff = retry_backoff;
        self
    }
}

/// Last-processed timestamps per entity (EventStreamex's `ProcessStatus`), read from memory
/// and written behind to a [`StatusStore`].
///
/// # Durability
///
/// * When [`item_processed`](Self::item_processed) resolves, the item is in the in-memory view
///   ([`last_processed`](Self::last_processed) and [`processed`](Self::processed) see it) and
///   queued for writing. It is **not yet durable**: the writer commits it within
///   [`WriteBehind::max_delay`] while the store is healthy. Items of one entity are coalesced
///   (only the greatest timestamp is written), and a batch is one transaction / statement.
/// * When [`flush`](Self::flush) returns `Ok`, everything accepted before the call is
///   committed to the store. [`item_processed_durable`](Self::item_processed_durable) is
///   `item_processed` + `flush` (concurrent callers share one commit).
/// * A failed write is retried with backoff, forever, keeping the items (nothing is
///   dropped); `flush` reports the failure to its caller meanwhile.
/// * Timestamps never move backwards, in memory or in the store.
///
/// Cloning is cheap; the writer stops (after writing what is pending) when the last clone is
/// dropped or [`close`](Self::close) is called.
#[derive(Clone)]
pub struct ProcessStatus {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for ProcessStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessStatus")
            .field(
                "entities",
                &self.shared().view.read().map_or(0, |v| v.len()),
            )
            .field("config", &self.shared().config)
            .finish_non_exhaustive()
    }
}

struct Handle {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

struct Shared {
    store: Arc<dyn StatusStore>,
    view: RwLock<HashMap<String, Timestamp>>,
    pending: Mutex<Pending>,
    /// Wakes the writer (permit semantics).
    wake: Notify,
    /// Wakes producers waiting for room (`notify_waiters`).
    room: Notify,
    progress: watch::Sender<Progress>,
    closing: AtomicBool,
    config: WriteBehind,
}

#[derive(Default)]
struct Pending {
    items: HashMap<String, Timestamp>,
    /// Items accepted so far (a sequence number).
    accepted: u64,
    flush_requested: bool,
}

#[derive(Clone, Default)]
struct Progress {
    /// Every item accepted up to this sequence number is committed.
    durable: u64,
    /// The last write failure, cleared by the next success.
    error: Option<Error>,
    stopped: bool,
}

impl ProcessStatus {
    /// Load every item from `store` into memory and start the writer.
    pub async fn open(store: impl StatusStore, config: WriteBehind) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let store: Arc<dyn StatusStore> = Arc::new(store);
        let loaded = store.load().await?;
        let mut view = HashMap::with_capacity(loaded.len());
        for (entity, ts) in loaded {
            let slot = view.entry(entity).or_insert(ts);
            *slot = (*slot).max(ts);
        }
        let shared = Arc::new(Shared {
            store,
            view: RwLock::new(view),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            room: Notify::new(),
            progress: watch::Sender::new(Progress::default()),
            closing: AtomicBool::new(false),
            config: WriteBehind {
                max_batch: config.max_batch.max(1),
                max_pending: config.max_pending.max(1),
                ..config
            },
        });
        let writer = runtime.spawn(write_behind(Arc::clone(&shared)));
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The timestamp of the last event processed for `entity`.
    pub fn last_processed(&self, entity: &str) -> Option<Timestamp> {
        self.shared().view.read().ok()?.get(entity).copied()
    }

    /// Whether `entity` has been processed up to `timestamp` (last processed ≥ `timestamp`).
    pub fn processed(&self, entity: &str, timestamp: Timestamp) -> bool {
        self.last_processed(entity)
            .is_some_and(|last| last >= timestamp)
    }

    /// Every entity and its last-processed timestamp, from memory.
    pub fn items(&self) -> Vec<Item> {
        self.shared()
            .view
            .read()
            .map(|v| v.iter().map(|(e, t)| (e.clone(), *t)).collect())
            .unwrap_or_default()
    }

    /// Record that every event of `entity` up to `timestamp` was processed. Resolves once the
    /// item is visible in memory and queued for writing (see the type's durability notes);
    /// waits only when [`WriteBehind::max_pending`] entities are already waiting.
    pub async fn item_processed(&self, entity: &str, timestamp: Timestamp) -> Result<(), Error> {
        self.accept(entity, timestamp).await.map(drop)
    }

    /// [`item_processed`](Self::item_processed), then wait until the item is committed.
    pub async fn item_processed_durable(
        &self,
        entity: &str,
        timestamp: Timestamp,
    ) -> Result<(), Error> {
        let seq = self.accept(entity, timestamp).await?;
        self.wait_durable(seq).await
    }

    /// Wait until everything accepted so far is committed, or report why it is not.
    pub async fn flush(&self) -> Result<(), Error> {
        let target = {
            let mut p = lock(&self.shared().pending);
            p.flush_requested = true;
            p.accepted
        };
        self.shared().wake.notify_one();
        self.wait_durable(target).await
    }

    /// Forget every entity, in memory and in the store (only this store's table). Items
    /// queued but not yet written are dropped; a batch being written is waited for first, so
    /// that it cannot land after the reset.
    pub async fn reset(&self) -> Result<(), Error> {
        let shared = self.shared();
        let accepted = {
            let mut p = lock(&shared.pending);
            p.items.clear();
            p.accepted
        };
        shared.room.notify_waiters();
        shared.wake.notify_one();
        // With nothing pending, the writer reports everything accepted as done once the batch
        // in flight (if any) is written.
        let _ = self.wait_durable(accepted).await;
        shared.store.reset().await?;
        if let Ok(mut v) = shared.view.write() {
            v.clear();
        }
        Ok(())
    }

    /// Write what is pending and stop the writer. Later calls to `item_processed` fail with
    /// [`Error::WriterStopped`].
    pub async fn close(&self) -> Result<(), Error> {
        let flushed = self.flush().await;
        self.shared().closing.store(true, Ordering::SeqCst);
        self.shared().wake.notify_one();
        let writer = lock(&self.handle.writer).take();
        if let Some(writer) = writer {
            writer.await?;
        }
        flushed
    }

    async fn accept(&self, entity: &str, timestamp: Timestamp) -> Result<u64, Error> {
        let shared = self.shared();
        if shared.closing.load(Ordering::SeqCst) {
            return Err(Error::WriterStopped);
        }
        if let Ok(mut v) = shared.view.write() {
            match v.get_mut(entity) {
                Some(last) => *last = (*last).max(timestamp),
                None => {
                    v.insert(entity.to_owned(), timestamp);
                }
            }
        }
        loop {
            let room = shared.room.notified();
            {
                let mut p = lock(&shared.pending);
                let len = p.items.len();
                let fits = match p.items.get_mut(entity) {
                    Some(last) => {
                        *last = (*last).max(timestamp);
                        true
                    }
                    None if len < shared.config.max_pending => {
                        p.items.insert(entity.to_owned(), timestamp);
                        true
                    }
                    None => false,
                };
                if fits {
                    p.accepted += 1;
                    let len = p.items.len();
                    let seq = p.accepted;
                    drop(p);
                    if len == 1 || len >= shared.config.max_batch {
                        shared.wake.notify_one();
                    }
                    return Ok(seq);
                }
            }
            shared.wake.notify_one();
            room.await;
            if shared.closing.load(Ordering::SeqCst) {
                return Err(Error::WriterStopped);
            }
        }
    }

    async fn wait_durable(&self, seq: u64) -> Result<(), Error> {
        let mut rx = self.shared().progress.subscribe();
        loop {
            {
                let progress = rx.borrow_and_update();
                if progress.durable >= seq {
                    return Ok(());
                }
                if let Some(e) = &progress.error {
                    return Err(e.clone());
                }
                if progress.stopped {
                    return Err(Error::WriterStopped);
                }
            }
            rx.changed().await.map_err(|_| Error::WriterStopped)?;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer task: waits for items, lets a batch gather for up to `max_delay`, commits it,
/// and retries failures forever (keeping the batch).
async fn write_behind(shared: Arc<Shared>) {
    let config = shared.config.clone();
    loop {
        let closing = shared.closing.load(Ordering::SeqCst);
        let is_empty = lock(&shared.pending).items.is_empty();
        if is_empty {
            if closing {
                break;
            }
            let upto = lock(&shared.pending).accepted;
            shared.progress.send_if_modified(|p| {
                let changed = p.durable < upto;
                p.durable = p.durable.max(upto);
                changed
            });
            shared.wake.notified().await;
            continue;
        }
        // Let the batch gather unless it is full, flushed, or we are closing.
        let deadline = Instant::now() + config.max_delay;
        loop {
            {
                let p = lock(&shared.pending);
                if p.items.len() >= config.max_batch
                    || p.flush_requested
                    || shared.closing.load(Ordering::SeqCst)
                {
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = shared.wake.notified() => {}
            }
        }
        let (batch, upto) = {
            let mut p = lock(&shared.pending);
            p.flush_requested = false;
            (mem::take(&mut p.items), p.accepted)
        };
        shared.room.notify_waiters();
        let items: Vec<Item> = batch.into_iter().collect();
        let mut failures = 0_u32;
        loop {
            match shared.store.store(&items).await {
                Ok(()) => {
                    shared.progress.send_modify(|p| {
                        p.durable = p.durable.max(upto);
                        p.error = None;
                    });
                    break;
                }
                Err(e) if shared.closing.load(Ordering::SeqCst) && failures >= 2 => {
                    // Closing against a store that keeps failing: do not hang the shutdown.
                    tracing::error!(error = %e, entities = items.len(), "process-status closing: giving up on a batch that could not be stored");
                    shared.progress.send_modify(|p| {
                        p.error = Some(e);
                        p.stopped = true;
                    });
                    shared.room.notify_waiters();
                    return;
                }
                Err(e) => {
                    failures += 1;
                    let delay = config
                        .retry_backoff
                        .saturating_mul(1 << failures.min(16))
                        .min(Duration::from_secs(5));
                    tracing::warn!(error = %e, entities = items.len(), failures, ?delay, "process-status write failed; retrying");
                    shared.progress.send_modify(|p| p.error = Some(e));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    shared.progress.send_modify(|p| p.stopped = true);
    shared.room.notify_waiters();
}
