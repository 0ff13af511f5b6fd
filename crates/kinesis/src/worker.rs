//! [`KinesisWorker`]: the KCL's lease coordinator, for the batch processor — which shards
//! this process reads, when a child shard may start, and what happens at shard end.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_batch_flusher::{
    BatchProcessor, CheckpointError, Checkpointer, Flusher, FlusherFactory, ProcessorConfig,
    ShardEnd,
};

use crate::Error;
use crate::position::SHARD_END;
use crate::source::{KinesisRecord, KinesisSource};

/// Lease coordination settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// How often shards are listed and free leases taken. Default 10 s.
    pub lease_interval: Duration,
    /// Shards this worker reads at most at once. Default: no limit.
    pub max_leases: usize,
    /// The batch processor's settings (flush and checkpoint cadence, watchdog, restarts).
    pub processor: ProcessorConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease_interval: Duration::from_secs(10),
            max_leases: usize::MAX,
            processor: ProcessorConfig::default(),
        }
    }
}

impl WorkerConfig {
    /// Set [`lease_interval`](Self::lease_interval).
    pub fn with_lease_interval(mut self, interval: Duration) -> Self {
        self.lease_interval = interval;
        self
    }

    /// Set [`max_leases`](Self::max_leases).
    pub fn with_max_leases(mut self, n: usize) -> Self {
        self.max_leases = n.max(1);
        self
    }

    /// Set [`processor`](Self::processor).
    pub fn with_processor(mut self, processor: ProcessorConfig) -> Self {
        self.processor = processor;
        self
    }
}

/// A shard as the lease coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// Its id.
    pub id: String,
    /// The shard it was split from, or the first of the two it was merged from.
    pub parent: Option<String>,
    /// The second shard of a merge.
    pub adjacent_parent: Option<String>,
}

/// What one lease round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Round {
    /// Shards this worker started reading.
    pub started: Vec<String>,
    /// Shards that reached their end and were marked `SHARD_END` (their children may start).
    pub finished: Vec<String>,
    /// Shards whose lease another worker holds.
    pub held_elsewhere: Vec<String>,
    /// Shards waiting for a parent to finish.
    pub waiting: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Shards read to their end (their checkpoint is `SHARD_END`).
    finished: HashSet<String>,
}

/// One process's share of a stream: it lists the shards, takes the leases it can in the
/// checkpoint store (free or expired ones; the PostgreSQL store's owner lease and
/// compare-and-set make a lease one worker's at a time), and runs a batch processor per shard
/// it holds. A child shard starts only once its parents were read to their end, fully
/// flushed and checkpointed (`SHARD_END`), so records of one partition key stay in order
/// across a split or merge. A shard whose lease was lost stops as a zombie: no flush, no
/// checkpoint (erlmld's rule); its new owner resumes from the last checkpoint.
pub struct KinesisWorker<F> {
    source: KinesisSource,
    store: Arc<dyn Checkpointer>,
    processor: BatchProcessor<KinesisSource, F>,
    config: WorkerConfig,
    state: Mutex<State>,
}

impl<F> std::fmt::Debug for KinesisWorker<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisWorker")
            .field("stream", &self.source.stream())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F> KinesisWorker<F>
where
    F: FlusherFactory,
    F::Flusher: Flusher<Record = KinesisRecord>,
{
    /// A worker reading `source`'s stream into flushers from `factory`, with leases and
    /// checkpoints in `store`.
    pub fn new(
        source: KinesisSource,
        factory: F,
        store: impl Checkpointer,
        config: WorkerConfig,
    ) -> Self {
        let store: Arc<dyn Checkpointer> = Arc::new(store);
        let processor = BatchProcessor::new(
            source.clone(),
            factory,
            Arc::clone(&store),
            config.processor.clone(),
        );
        Self {
            source,
            store,
            processor,
            config,
            state: Mutex::default(),
        }
    }

    /// The batch processor (its stats, its shards).
    pub fn processor(&self) -> &BatchProcessor<KinesisSource, F> {
        &self.processor
    }

    /// The source (its metrics: `MillisBehindLatest`, throttling, expired iterators).
    pub fn source(&self) -> &KinesisSource {
        &self.source
    }

    /// The stream's shards, every page.
    pub async fn list_shards(&self) -> Result<Vec<ShardInfo>, Error> {
        let client = self.source.client();
        let stream = self.source.stream();
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // ListShards takes either the stream name or the next page's token.
            let call = match &token {
                Some(t) => client.list_shards().next_token(t),
                None => client.list_shards().stream_name(stream),
            };
            let out = call
                .send()
                .await
                .map_err(|e| Error::api("ListShards", stream, e))?;
            shards.extend(
                out.shards
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| ShardInfo {
                        id: s.shard_id,
                        parent: s.parent_shard_id,
                        adjacent_parent: s.adjacent_parent_shard_id,
                    }),
            );
            match out.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        // Shard ids grow with creation: parents before children.
        shards.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(shards)
    }

    /// One lease round: reap shards that ended (marking finished ones `SHARD_END`), then take
    /// the free leases of shards whose parents are finished, up to `max_leases`.
    pub async fn balance(&self) -> Result<Round, Error> {
        let mut round = Round::default();
        for (shard, end) in self.processor.take_ended().await {
            if let ShardEnd::Terminated { .. } = end {
                self.mark_finished(&shard).await?;
                round.finished.push(shard);
            }
        }
        let shards = self.list_shards().await?;
        let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        let mut running: HashSet<String> = self.processor.shards().into_iter().collect();
        for shard in &shards {
            if running.contains(&shard.id) || self.is_finished(&shard.id) {
                continue;
            }
            let parents_done = [&shard.parent, &shard.adjacent_parent]
                .into_iter()
                .flatten()
                // A parent no longer listed has aged out of the stream: nothing left to wait for.
                .all(|p| self.is_finished(p) || !listed.contains(p.as_str()));
            if !parents_done {
                round.waiting.push(shard.id.clone());
                continue;
            }
            if running.len() >= self.config.max_leases {
                continue;
            }
            match self.store.acquire(&shard.id).await {
                Ok(Some(checkpoint)) if checkpoint == SHARD_END => {
                    // Finished by another worker.
                    self.state_mut().finished.insert(shard.id.clone());
                    self.store.release(&shard.id).await?;
                }
                Ok(_) => {
                    // `run_shard` acquires again: the same owner, so it keeps the lease.
                    self.processor.start(shard.id.clone());
                    running.insert(shard.id.clone());
                    round.started.push(shard.id.clone());
                }
                Err(CheckpointError::LeaseHeld { .. }) => {
                    round.held_elsewhere.push(shard.id.clone())
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !round.started.is_empty() || !round.finished.is_empty() {
            tracing::info!(stream = self.source.stream(), ?round, "kinesis lease round");
        }
        Ok(round)
    }

    /// Run lease rounds every `lease_interval` until `stop` completes, then stop every shard
    /// gracefully (full flush, checkpoint, release). A failed round (Kinesis or the store
    /// unreachable) is logged and tried again at the next interval.
    pub async fn run(&self, stop: impl Future<Output = ()>) -> Vec<(String, ShardEnd)> {
        let mut stop = std::pin::pin!(stop);
        loop {
            if let Err(e) = self.balance().await {
                tracing::warn!(stream = self.source.stream(), error = %e, "kinesis lease round failed; trying again");
            }
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(self.config.lease_interval) => {}
            }
        }
        let mut ends = self.processor.stop().await;
        for (shard, end) in &ends {
            if matches!(end, ShardEnd::Terminated { .. })
                && let Err(e) = self.mark_finished(shard).await
            {
                tracing::warn!(%shard, error = %e, "could not mark the shard finished; the next owner will");
            }
        }
        ends.sort_by(|a, b| a.0.cmp(&b.0));
        ends
    }

    /// Shards read to their end (as far as this worker knows).
    pub fn finished(&self) -> Vec<String> {
        let mut v: Vec<String> = self.state_mut().finished.iter().cloned().collect();
        v.sort();
        v
    }

    fn is_finished(&self, shard: &str) -> bool {
        self.state_mut().finished.contains(shard)
    }

    fn state_mut(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store `SHARD_END` as the shard's checkpoint (its last record was checkpointed when it
    /// terminated) and give the lease up.
    async fn mark_finished(&self, shard: &str) -> Result<(), Error> {
        self.store.acquire(shard).await?;
        self.store.checkpoint(shard, SHARD_END).await?;
        self.store.release(shard).await?;
        self.state_mut().finished.insert(shard.to_owned());
        Ok(())
    }
}
