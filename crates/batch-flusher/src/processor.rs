//! The driver: [`run_shard`] runs one shard once; [`BatchProcessor`] supervises shards and
//! restarts a failed one from its last checkpoint while the others go on.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use headwaters_ordering_core::{Settle, Settlement};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::batch::{Batch, Leftover, Schedule, Token, TokenError};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::flusher::{Added, FlushKind, Flusher, FlusherFactory};
use crate::source::{Source, SourceEvent};

/// Driver settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProcessorConfig {
    /// Flush and checkpoint cadence.
    pub schedule: Schedule,
    /// A flusher call (init, add, flush, heartbeat) taking longer than this is reported as
    /// stuck and its shard restarted. `None` disables the watchdog. Default 60 s.
    pub watchdog: Option<Duration>,
    /// Records taken from the stream per batch when they are ready at once; the flusher's
    /// heartbeat runs once per batch. Default 500.
    pub batch_records: usize,
    /// First restart delay after a shard failed; doubled per consecutive failure. Default 1 s.
    pub restart_backoff: Duration,
    /// Restart delay cap. Default 30 s.
    pub max_restart_backoff: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            schedule: Schedule::default(),
            watchdog: Some(Duration::from_secs(60)),
            batch_records: 500,
            restart_backoff: Duration::from_secs(1),
            max_restart_backoff: Duration::from_secs(30),
        }
    }
}

impl ProcessorConfig {
    /// Set [`schedule`](Self::schedule).
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Set [`watchdog`](Self::watchdog).
    pub fn with_watchdog(mut self, watchdog: Option<Duration>) -> Self {
        self.watchdog = watchdog;
        self
    }

    /// Set [`batch_records`](Self::batch_records).
    pub fn with_batch_records(mut self, n: usize) -> Self {
        self.batch_records = n.max(1);
        self
    }

    /// Set [`restart_backoff`](Self::restart_backoff) and
    /// [`max_restart_backoff`](Self::max_restart_backoff).
    pub fn with_restart_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.restart_backoff = first;
        self.max_restart_backoff = max.max(first);
        self
    }
}

/// How a shard run ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardEnd {
    /// The shard ended: everything was flushed and the last checkpoint stored.
    Terminated {
        /// The final checkpoint, if a new one was stored at the end.
        checkpoint: Option<String>,
    },
    /// The shard belongs to another consumer now; nothing was flushed or checkpointed.
    LeaseLost,
    /// Stopped on request after a full flush and a checkpoint.
    Stopped,
}

/// Why a shard run failed; the processor restarts the shard from its last checkpoint.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// The source failed.
    #[error("source error: {0}")]
    Source(String),
    /// The source's stream ended without a shard end.
    #[error("the source stream closed without ending the shard")]
    SourceClosed,
    /// The flusher failed.
    #[error("flusher error in {call}: {message}")]
    Flusher {
        /// The call that failed.
        call: &'static str,
        /// The flusher's error.
        message: String,
    },
    /// A flusher call exceeded the watchdog timeout.
    #[error("the flusher is stuck: {call} took longer than {after:?}")]
    Stuck {
        /// The call.
        call: &'static str,
        /// The watchdog timeout.
        after: Duration,
    },
    /// The flusher said `Full` right after a flush.
    #[error("the flusher was still full right after a flush (record {0})")]
    FullTwice(Token),
    /// The flusher returned a bad token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A full flush at shard end did not return every record.
    #[error(transparent)]
    Leftover(#[from] Leftover),
    /// The checkpoint store failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The stored checkpoint does not parse as a position of this source.
    #[error("stored checkpoint {value:?} does not parse as a position: {reason}")]
    BadCheckpoint {
        /// The stored text.
        value: String,
        /// The parser's error.
        reason: String,
    },
}

/// Run `shard` once: acquire it, open the source after its checkpoint, feed the flusher,
/// flush and checkpoint on schedule, until the shard ends, the lease is lost, `stop` turns
/// true, or something fails.
pub async fn run_shard<S, F>(
    shard: &str,
    source: &S,
    factory: &F,
    store: &dyn Checkpointer,
    config: &ProcessorConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<ShardEnd, ShardError>
where
    S: Source,
    F: FlusherFactory,
    F::Flusher: Flusher<Record = S::Record>,
{
    let from = match store.acquire(shard).await? {
        Some(text) => Some(
            text.parse::<S::Position>()
                .map_err(|e| ShardError::BadCheckpoint {
                    reason: e.to_string(),
                    value: text,
                })?,
        ),
        None => None,
    };
    tracing::info!(shard, from = ?from, "shard starting");
    let mut stream = source
        .open(shard, from)
        .await
        .map_err(|e| ShardError::Source(e.to_string()))?;
    let watchdog = config.watchdog;
    let mut flusher = guard(watchdog, "init", factory.init(shard)).await?;
    let mut run = Run {
        shard,
        store,
        watchdog,
        batch: Batch::new(config.schedule.clone(), Instant::now().into_std()),
        renew_at: Instant::now() + config.schedule.checkpoint_interval,
        renew_every: config.schedule.checkpoint_interval,
    };
    loop {
        let deadline = Instant::from_std(run.batch.next_deadline());
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return run.stop(&mut flusher).await;
                }
            }
            event = stream.next() => {
                let mut next = Some(event.ok_or(ShardError::SourceClosed)?);
                let mut taken = 0;
                while let Some(event) = next.take() {
                    match event.map_err(|e| ShardError::Source(e.to_string()))? {
                        SourceEvent::Record(record) => {
                            // The per-record hot path: poll `add_record` in place, and take
                            // the async slow path only if it waits or the batch is full.
                            let token = run.batch.token(record.position, record.sub, record.ack);
                            let added = {
                                let mut call = pin!(flusher.add_record(record.record, token));
                                let first = call.as_mut().poll(&mut Context::from_waker(Waker::noop()));
                                match first {
                                    Poll::Ready(result) => result.map_err(|e| flusher_error("add_record", e))?,
                                    Poll::Pending => guard(watchdog, "add_record", call).await?,
                                }
                            };
                            match added {
                                Added::Added => {}
                                Added::Ignored => run.batch.ignored(token)?,
                                Added::Full(record) => run.add_after_full(&mut flusher, record, token).await?,
                            }
                        }
                        SourceEvent::ShardEnded => return run.terminate(&mut flusher).await,
                        SourceEvent::LeaseLost => {
                            tracing::warn!(shard, "lease lost: stopping without flush or checkpoint");
                            return Ok(ShardEnd::LeaseLost);
                        }
                    }
                    taken += 1;
                    if taken < config.batch_records {
                        next = stream.next().now_or_never().flatten();
                    }
                }
                run.tick(&mut flusher).await?;
            }
            () = tokio::time::sleep_until(deadline) => run.tick(&mut flusher).await?,
        }
        if let Some(end) = run.maybe_checkpoint().await? {
            return Ok(end);
        }
    }
}

/// The state of one shard run.
struct Run<'a, P, A> {
    shard: &'a str,
    store: &'a dyn Checkpointer,
    watchdog: Option<Duration>,
    batch: Batch<P, A>,
    renew_at: Instant,
    renew_every: Duration,
}

impl<P: crate::Position, A: Settle> Run<'_, P, A> {
    /// The flusher was full: flush, then add the record again (a second `Full` is an error).
    async fn add_after_full<F: Flusher>(
        &mut self,
        flusher: &mut F,
        record: F::Record,
        token: Token,
    ) -> Result<(), ShardError> {
        self.flush(flusher, FlushKind::Partial).await?;
        match guard(
            self.watchdog,
            "add_record",
            flusher.add_record(record, token),
        )
        .await?
        {
            Added::Added => Ok(()),
            Added::Ignored => Ok(self.batch.ignored(token)?),
            Added::Full(_) => Err(ShardError::FullTwice(token)),
        }
    }

    async fn flush<F: Flusher>(
        &mut self,
        flusher: &mut F,
        kind: FlushKind,
    ) -> Result<(), ShardError> {
        let tokens = guard(self.watchdog, "flush", flusher.flush(kind)).await?;
        self.batch.flushed(&tokens, Instant::now().into_std())?;
        Ok(())
    }

    /// Once per batch and per timer tick: heartbeat, and a partial flush when one is due.
    async fn tick<F: Flusher>(&mut self, flusher: &mut F) -> Result<(), ShardError> {
        let tokens = guard(self.watchdog, "heartbeat", flusher.heartbeat()).await?;
        let now = Instant::now().into_std();
        if !tokens.is_empty() {
            self.batch.flushed(&tokens, now)?;
        }
        if self.batch.flush_due(now) {
            self.flush(flusher, FlushKind::Partial).await?;
        }
        Ok(())
    }

    /// Ack what is done, store a due checkpoint, renew the lease.
    async fn maybe_checkpoint(&mut self) -> Result<Option<ShardEnd>, ShardError> {
        for ack in self.batch.take_done() {
            ack.settle(Settlement::Ack);
        }
        let now = Instant::now();
        if let Some(position) = self.batch.checkpoint_due(now.into_std()) {
            match self
                .store
                .checkpoint(self.shard, &position.to_string())
                .await
            {
                Ok(()) => {
                    tracing::debug!(shard = self.shard, %position, "checkpoint");
                    self.renew_at = now + self.renew_every;
                }
                Err(CheckpointError::LeaseLost { .. }) => return Ok(Some(ShardEnd::LeaseLost)),
                Err(e) => {
                    tracing::warn!(shard = self.shard, error = %e, "checkpoint failed; will retry");
                    self.batch.checkpoint_failed(position);
                }
            }
        } else if now >= self.renew_at {
            match self.store.renew(self.shard).await {
                Ok(()) => self.renew_at = now + self.renew_every,
                Err(CheckpointError::LeaseLost { .. }) => return Ok(Some(ShardEnd::LeaseLost)),
                Err(e) => {
                    tracing::warn!(shard = self.shard, error = %e, "lease renewal failed; will retry")
                }
            }
        }
        Ok(None)
    }

    /// Shard end: full flush, every record must be back, final checkpoint, release.
    async fn terminate<F: Flusher>(mut self, flusher: &mut F) -> Result<ShardEnd, ShardError> {
        self.flush(flusher, FlushKind::Full).await?;
        for ack in self.batch.take_done() {
            ack.settle(Settlement::Ack);
        }
        let checkpoint = self.batch.finish()?.map(|p| p.to_string());
        if let Some(position) = &checkpoint {
            self.store.checkpoint(self.shard, position).await?;
        }
        self.store.release(self.shard).await?;
        tracing::info!(shard = self.shard, ?checkpoint, "shard ended");
        Ok(ShardEnd::Terminated { checkpoint })
    }

    /// Graceful stop: full flush, checkpoint what is contiguous, release.
    async fn stop<F: Flusher>(mut self, flusher: &mut F) -> Result<ShardEnd, ShardError> {
        self.flush(flusher, FlushKind::Full).await?;
        for ack in self.batch.take_done() {
            ack.settle(Settlement::Ack);
        }
        if let Some(position) = self.batch.checkpoint_now(Instant::now().into_std()) {
            self.store
                .checkpoint(self.shard, &position.to_string())
                .await?;
        }
        self.store.release(self.shard).await?;
        Ok(ShardEnd::Stopped)
    }
}

/// Await a flusher call under the watchdog. A call that completes on its first poll never
/// arms a timer.
async fn guard<T, E: fmt::Display>(
    limit: Option<Duration>,
    call: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, ShardError> {
    let mut fut = pin!(fut);
    let first = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    let result = match first {
        Poll::Ready(result) => result,
        Poll::Pending => match limit {
            // The pending future is polled again with the real waker by `timeout`.
            Some(after) => tokio::time::timeout(after, fut)
                .await
                .map_err(|_| ShardError::Stuck { call, after })?,
            None => fut.await,
        },
    };
    result.map_err(|e| flusher_error(call, e))
}

fn flusher_error(call: &'static str, error: impl fmt::Display) -> ShardError {
    ShardError::Flusher {
        call,
        message: error.to_string(),
    }
}

/// Counters of a [`BatchProcessor`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessorStats {
    /// Shard runs that failed and were restarted.
    pub restarts: u64,
    /// Shard runs started.
    pub runs: u64,
}

/// Runs shards, each in its own task, and restarts a failed shard from its last checkpoint
/// with backoff; the other shards are not touched (erlmld takes the whole daemon down).
pub struct BatchProcessor<S, F> {
    source: Arc<S>,
    factory: Arc<F>,
    store: Arc<dyn Checkpointer>,
    config: ProcessorConfig,
    stop: watch::Sender<bool>,
    shards: Mutex<Vec<(String, JoinHandle<ShardEnd>)>>,
    restarts: Arc<AtomicU64>,
    runs: Arc<AtomicU64>,
}

impl<S, F> fmt::Debug for BatchProcessor<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchProcessor")
            .field("config", &self.config)
            .field("restarts", &self.restarts.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl<S, F> BatchProcessor<S, F>
where
    S: Source,
    F: FlusherFactory,
    F::Flusher: Flusher<Record = S::Record>,
{
    /// A processor over `source`, writing through flushers from `factory`, checkpointing in
    /// `store`.
    pub fn new(source: S, factory: F, store: impl Checkpointer, config: ProcessorConfig) -> Self {
        Self {
            source: Arc::new(source),
            factory: Arc::new(factory),
            store: Arc::new(store),
            config,
            stop: watch::Sender::new(false),
            shards: Mutex::new(Vec::new()),
            restarts: Arc::default(),
            runs: Arc::default(),
        }
    }

    /// Start processing `shard` in a task of the current runtime.
    pub fn start(&self, shard: impl Into<String>) {
        let shard = shard.into();
        let (source, factory, store) = (
            Arc::clone(&self.source),
            Arc::clone(&self.factory),
            Arc::clone(&self.store),
        );
        let (config, stop) = (self.config.clone(), self.stop.subscribe());
        let (restarts, runs) = (Arc::clone(&self.restarts), Arc::clone(&self.runs));
        let name = shard.clone();
        let task = tokio::spawn(async move {
            let mut backoff = config.restart_backoff;
            loop {
                runs.fetch_add(1, Relaxed);
                let result =
                    run_shard(&name, &*source, &*factory, &*store, &config, stop.clone()).await;
                match result {
                    Ok(end) => return end,
                    Err(error) => {
                        restarts.fetch_add(1, Relaxed);
                        tracing::error!(shard = %name, %error, ?backoff, "shard failed; restarting it from its last checkpoint");
                        let mut stop = stop.clone();
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = stop.wait_for(|s| *s) => return ShardEnd::Stopped,
                        }
                        backoff = (backoff * 2).min(config.max_restart_backoff);
                    }
                }
            }
        });
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((shard, task));
    }

    /// Counters.
    pub fn stats(&self) -> ProcessorStats {
        ProcessorStats {
            restarts: self.restarts.load(Relaxed),
            runs: self.runs.load(Relaxed),
        }
    }

    /// The shards started and not yet reaped by [`wait`](Self::wait) or
    /// [`take_ended`](Self::take_ended).
    pub fn shards(&self) -> Vec<String> {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(shard, _)| shard.clone())
            .collect()
    }

    /// The shards whose runs have ended by themselves (shard end or lease lost) since the
    /// last call, without waiting for the others: what a lease coordinator polls.
    pub async fn take_ended(&self) -> Vec<(String, ShardEnd)> {
        let ended: Vec<(String, JoinHandle<ShardEnd>)> = {
            let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
            let (done, running) = std::mem::take(&mut *shards)
                .into_iter()
                .partition(|(_, task)| task.is_finished());
            *shards = running;
            done
        };
        let mut ends = Vec::with_capacity(ended.len());
        for (shard, task) in ended {
            ends.push((shard, task.await.unwrap_or(ShardEnd::Stopped)));
        }
        ends
    }

    /// Wait until every started shard has ended by itself (shard end or lease lost).
    pub async fn wait(&self) -> Vec<(String, ShardEnd)> {
        let shards = std::mem::take(&mut *self.shards.lock().unwrap_or_else(|p| p.into_inner()));
        let mut ends = Vec::with_capacity(shards.len());
        for (shard, task) in shards {
            let end = task.await.unwrap_or(ShardEnd::Stopped);
            ends.push((shard, end));
        }
        ends
    }

    /// Stop every shard gracefully (full flush, checkpoint, release) and wait for them.
    pub async fn stop(&self) -> Vec<(String, ShardEnd)> {
        self.stop.send_replace(true);
        self.wait().await
    }
}
