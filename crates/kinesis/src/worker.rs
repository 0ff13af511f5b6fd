//! [`KinesisWorker`]: the KCL's lease coordinator, for the batch processor — which shards
//! this process reads, when a child shard may start, and what happens at shard end.

use std::collections::{BTreeMap, HashSet};
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
    /// Shards this worker reads at most at once. Default: no limit (with a shared store,
    /// an even share of the shards among the workers holding leases).
    pub max_leases: usize,
    /// Leases taken per round from the most loaded worker while this one holds less than
    /// its share (shared stores only). Default 1.
    pub max_steals_per_round: usize,
    /// The batch processor's settings (flush and checkpoint cadence, watchdog, restarts).
    pub processor: ProcessorConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease_interval: Duration::from_secs(10),
            max_leases: usize::MAX,
            max_steals_per_round: 1,
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

    /// Set [`max_steals_per_round`](Self::max_steals_per_round).
    pub fn with_max_steals_per_round(mut self, n: usize) -> Self {
        self.max_steals_per_round = n;
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
    /// Shards (by store key, `STREAM/SHARD_ID`) this worker started reading (free or expired
    /// leases).
    pub started: Vec<String>,
    /// Shards taken over from a worker holding more than its share.
    pub stolen: Vec<String>,
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
/// it holds. With a shared store it takes an even share — the eligible shards over the
/// workers holding leases — and, while short of it, takes over up to
/// `max_steals_per_round` leases per round from the most loaded worker above its share (that
/// worker's next checkpoint fails with `LeaseLost` and it stops the shard as a zombie). A child shard starts only once its parents were read to their end, fully
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
                // If this fails (another worker took the released shard meanwhile), that
                // worker finds the shard ended and marks it; the round goes on.
                match self.mark_finished(&shard).await {
                    Ok(()) => round.finished.push(shard),
                    Err(e) => {
                        tracing::warn!(%shard, error = %e, "could not mark the shard finished; its next owner will")
                    }
                }
            }
        }
        // From here on shards go by their store keys (`STREAM/SHARD_ID`).
        let shards: Vec<ShardInfo> = self
            .list_shards()
            .await?
            .into_iter()
            .map(|s| ShardInfo {
                id: self.key(&s.id),
                parent: s.parent.map(|p| self.key(&p)),
                adjacent_parent: s.adjacent_parent.map(|p| self.key(&p)),
            })
            .collect();
        let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        // A shared store shows every lease (of this stream): shards finished elsewhere, and
        // who holds what.
        let prefix = self.key("");
        let leases = self.store.leases().await?.map(|all| {
            all.into_iter()
                .filter(|l| l.shard.starts_with(&prefix))
                .collect::<Vec<_>>()
        });
        let me = self.store.owner_name().map(str::to_owned);
        if let Some(leases) = &leases {
            let mut state = self.state_mut();
            for lease in leases {
                if lease.checkpoint.as_deref() == Some(SHARD_END) {
                    state.finished.insert(lease.shard.clone());
                }
            }
        }
        let mut running: HashSet<String> = self.processor.shards().into_iter().collect();
        let mut eligible = Vec::new();
        for shard in &shards {
            if self.is_finished(&shard.id) {
                continue;
            }
            let parents_done = [&shard.parent, &shard.adjacent_parent]
                .into_iter()
                .flatten()
                // A parent no longer listed has aged out of the stream: nothing left to wait for.
                .all(|p| self.is_finished(p) || !listed.contains(p.as_str()));
            if parents_done {
                eligible.push(shard.id.as_str());
            } else {
                round.waiting.push(shard.id.clone());
            }
        }
        // Held by others (valid leases) among the eligible shards, per owner.
        let mut others: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for lease in leases.iter().flatten() {
            if let Some(owner) = lease.owner.as_deref()
                && Some(owner) != me.as_deref()
                && eligible.contains(&lease.shard.as_str())
            {
                others.entry(owner).or_default().push(lease.shard.as_str());
            }
        }
        // An even share: eligible shards over the workers holding leases, this one included.
        let target = if leases.is_some() {
            eligible.len().div_ceil(others.len() + 1)
        } else {
            eligible.len()
        }
        .min(self.config.max_leases);
        for shard in &eligible {
            if running.contains(*shard) || running.len() >= target {
                continue;
            }
            if others.values().flatten().any(|s| s == shard) {
                round.held_elsewhere.push((*shard).to_owned());
                continue;
            }
            match self.store.acquire(shard).await {
                Ok(Some(checkpoint)) if checkpoint == SHARD_END => {
                    // Finished by another worker.
                    self.state_mut().finished.insert((*shard).to_owned());
                    self.store.release(shard).await?;
                }
                Ok(_) => {
                    // `run_shard` acquires again: the same owner, so it keeps the lease.
                    self.processor.start(*shard);
                    running.insert((*shard).to_owned());
                    round.started.push((*shard).to_owned());
                }
                Err(CheckpointError::LeaseHeld { .. }) => {
                    round.held_elsewhere.push((*shard).to_owned());
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Still short of the share: take a few from the most loaded worker above it.
        let mut steals = self.config.max_steals_per_round;
        while running.len() < target && steals > 0 {
            let Some((owner, theirs)) = others
                .iter_mut()
                .filter(|(_, shards)| shards.len() > target)
                .max_by_key(|(_, shards)| shards.len())
            else {
                break;
            };
            let Some(shard) = theirs.pop() else { break };
            steals -= 1;
            match self.store.steal(shard, owner).await {
                Ok(_) => {
                    tracing::info!(%shard, from = %owner, "kinesis: lease taken over to balance the workers");
                    self.processor.start(shard);
                    running.insert(shard.to_owned());
                    round.stolen.push(shard.to_owned());
                }
                Err(CheckpointError::LeaseHeld { .. } | CheckpointError::LeaseLost { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !round.started.is_empty() || !round.finished.is_empty() || !round.stolen.is_empty() {
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

    /// A shard's name in the checkpoint store and the batch processor: `STREAM/SHARD_ID`, so
    /// that streams can share a store (shard ids repeat from stream to stream).
    pub fn key(&self, shard_id: &str) -> String {
        format!("{}/{shard_id}", self.source.stream())
    }

    /// Shards read to their end (as far as this worker knows), by store key.
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
