//! The tokio driver over [`Tracker`]: [`Dispatcher`], its [`Config`], [`Metrics`] and errors.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::handler::{Handler, TerminateReason};
use crate::message::Key;
use crate::settle::{Delivery, Epoch, Settle, Settlement};
use crate::tracker::{
    Completion, Event, Failure, FailureKind, Job, Output, RetryPolicy, Tracker, Work,
};

/// Dispatcher settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Worker lanes (tasks); each owns the keys that hash to it. Default: the number of CPUs.
    pub lanes: usize,
    /// Deliveries accepted but not yet settled or dropped, across all keys. When reached,
    /// [`Dispatcher::dispatch`] waits: backpressure to the source. Default 10,000.
    pub max_in_flight: usize,
    /// Deliveries waiting at keys parked by
    /// [`PoisonAction::StopKey`](crate::PoisonAction::StopKey) do not count against
    /// `max_in_flight` — none of them runs until the key is resumed, so one parked key must
    /// not stall the others — up to this many (beyond it they count again and backpressure
    /// returns, so parked keys never hold unbounded memory). They keep their order; the
    /// source's own window (AMQP prefetch, Pulsar receiver queue, EventStore allowed
    /// in-flight) bounds them too. Default: as many as `max_in_flight`.
    pub max_parked: usize,
    /// A key with no work for this long has its handler terminated and its slot freed.
    /// Default 10 minutes.
    pub idle_timeout: Duration,
    /// Retries and poison messages.
    pub retry: RetryPolicy,
    /// How long lanes drain when every [`Dispatcher`] handle is dropped without
    /// [`Dispatcher::shutdown`]. Default 30 s.
    pub drop_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lanes: std::thread::available_parallelism().map_or(1, usize::from),
            max_in_flight: 10_000,
            max_parked: 10_000,
            idle_timeout: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            drop_grace: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Set [`lanes`](Self::lanes).
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes;
        self
    }

    /// Set [`max_in_flight`](Self::max_in_flight) (and [`max_parked`](Self::max_parked)
    /// to the same).
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self.max_parked = max_in_flight;
        self
    }

    /// Set [`max_parked`](Self::max_parked).
    pub fn with_max_parked(mut self, max_parked: usize) -> Self {
        self.max_parked = max_parked;
        self
    }

    /// Set [`idle_timeout`](Self::idle_timeout).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Set [`retry`](Self::retry).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Set [`drop_grace`](Self::drop_grace).
    pub fn with_drop_grace(mut self, drop_grace: Duration) -> Self {
        self.drop_grace = drop_grace;
        self
    }
}

/// The dispatcher could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `lanes` is 0.
    NoLanes,
    /// `max_in_flight` is 0 or above the semaphore limit.
    InFlightLimit(usize),
    /// `idle_timeout` is zero.
    ZeroIdleTimeout,
    /// Not called from inside a tokio runtime.
    NoRuntime,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLanes => f.write_str("dispatcher config: `lanes` must be at least 1"),
            Self::InFlightLimit(n) => write!(
                f,
                "dispatcher config: `max_in_flight` = {n}; use a value from 1 to {}",
                Semaphore::MAX_PERMITS
            ),
            Self::ZeroIdleTimeout => f.write_str("dispatcher config: `idle_timeout` must be > 0"),
            Self::NoRuntime => f.write_str(
                "Dispatcher::new must be called from inside a tokio runtime (e.g. in #[tokio::main])",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A delivery was not accepted; it is handed back so that nothing is lost.
pub enum DispatchError<S> {
    /// The dispatcher is shutting down or gone.
    Closed(Delivery<S>),
}

/// A delivery was not accepted by [`Dispatcher::try_dispatch`]; it is handed back.
pub enum TryDispatchError<S> {
    /// `max_in_flight` deliveries are in flight.
    Full(Delivery<S>),
    /// The dispatcher is shutting down or gone.
    Closed(Delivery<S>),
}

impl<S> DispatchError<S> {
    /// The delivery that was not accepted.
    pub fn into_delivery(self) -> Delivery<S> {
        match self {
            Self::Closed(d) => d,
        }
    }
}

impl<S> TryDispatchError<S> {
    /// The delivery that was not accepted.
    pub fn into_delivery(self) -> Delivery<S> {
        match self {
            Self::Full(d) | Self::Closed(d) => d,
        }
    }
}

impl<S> fmt::Debug for DispatchError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self::Closed(d) = self;
        write!(f, "DispatchError::Closed(key {:?})", d.key)
    }
}

impl<S> fmt::Display for DispatchError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the dispatcher is shut down; the delivery was not accepted (settle or requeue it at the source)")
    }
}

impl<S> std::error::Error for DispatchError<S> {}

impl<S> fmt::Debug for TryDispatchError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(d) => write!(f, "TryDispatchError::Full(key {:?})", d.key),
            Self::Closed(d) => write!(f, "TryDispatchError::Closed(key {:?})", d.key),
        }
    }
}

impl<S> fmt::Display for TryDispatchError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => {
                f.write_str("max_in_flight deliveries are in flight; retry after some settle")
            }
            Self::Closed(_) => {
                f.write_str("the dispatcher is shut down; the delivery was not accepted")
            }
        }
    }
}

impl<S> std::error::Error for TryDispatchError<S> {}

/// A signal got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalError {
    /// The key's handler could not take it: `init` failed, the handler panicked, or the
    /// dispatcher shut down.
    Unavailable,
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the key's handler is unavailable (init failed, it panicked, or the dispatcher shut down)")
    }
}

impl std::error::Error for SignalError {}

/// Counters, summed over lanes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Deliveries accepted and not yet settled or dropped, except those waiting at parked
    /// keys.
    pub in_flight: u64,
    /// Deliveries waiting at parked keys (see [`Config::max_parked`]).
    pub parked: u64,
    /// Keys with a live handler or queued work.
    pub live_keys: u64,
    /// Deliveries settled with ack.
    pub acked: u64,
    /// Deliveries settled with reject (discards and discarded poison messages).
    pub discarded: u64,
    /// Handler failures that led to a retry.
    pub retried: u64,
    /// Deliveries dropped unsettled (lost epoch, shutdown deadline).
    pub dropped: u64,
    /// Messages that hit the poison policy.
    pub poisoned: u64,
    /// `init` failures.
    pub init_failures: u64,
}

/// What a source feeds [`Dispatcher::run`]: messages, and the loss of the connection
/// (epoch) they came on. A source numbers its connections itself (`Epoch::new(n)`): one
/// source feeds one dispatcher through `run`.
#[derive(Debug)]
pub enum SourceEvent<S> {
    /// A message to process, from the connection of its epoch.
    Delivery(Delivery<S>),
    /// The connection of this epoch is gone: see [`Dispatcher::epoch_lost`].
    EpochLost(Epoch),
}

/// What [`Dispatcher::shutdown`] achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Deliveries left unsettled because the deadline passed (the source redelivers them).
    pub abandoned: u64,
    /// Whether every lane drained before the deadline.
    pub drained: bool,
}

/// Runs a [`Handler`] over deliveries: per-key FIFO, one message in flight per key, many keys
/// in parallel, bounded, with retries, epochs, signals, idle eviction and graceful shutdown.
///
/// Cheap to clone; every clone drives the same lanes.
pub struct Dispatcher<H: Handler, S: Settle> {
    inner: Arc<Inner<H, S>>,
}

impl<H: Handler, S: Settle> Clone for Dispatcher<H, S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<H: Handler, S: Settle> fmt::Debug for Dispatcher<H, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("lanes", &self.inner.lanes.len())
            .field("metrics", &self.metrics())
            .finish()
    }
}

struct Inner<H: Handler, S> {
    lanes: Vec<mpsc::UnboundedSender<Cmd<H, S>>>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    router: foldhash::fast::FixedState,
    next_epoch: AtomicU64,
    counters: Vec<Arc<LaneCounters>>,
    tasks: Mutex<Vec<JoinHandle<LaneReport>>>,
}

type SignalCall<H> = (
    <H as Handler>::Signal,
    oneshot::Sender<<H as Handler>::Reply>,
);

enum Cmd<H: Handler, S> {
    Deliver(Delivery<S>),
    EpochLost(Epoch),
    Signal(Key, SignalCall<H>),
    Resume(Key),
    Shutdown(Instant),
}

#[derive(Default)]
struct LaneCounters {
    live_keys: AtomicU64,
    parked: AtomicU64,
    acked: AtomicU64,
    discarded: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    poisoned: AtomicU64,
    init_failures: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct LaneReport {
    abandoned: u64,
    drained: bool,
}

impl<H: Handler, S: Settle> Dispatcher<H, S> {
    /// Start the lanes on the current tokio runtime.
    pub fn new(handler: H, config: Config) -> Result<Self, ConfigError> {
        if config.lanes == 0 {
            return Err(ConfigError::NoLanes);
        }
        if config.max_in_flight == 0 || config.max_in_flight > Semaphore::MAX_PERMITS {
            return Err(ConfigError::InFlightLimit(config.max_in_flight));
        }
        if config.idle_timeout.is_zero() {
            return Err(ConfigError::ZeroIdleTimeout);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let handler = Arc::new(handler);
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let mut lanes = Vec::with_capacity(config.lanes);
        let mut counters = Vec::with_capacity(config.lanes);
        let mut tasks = Vec::with_capacity(config.lanes);
        for _ in 0..config.lanes {
            let (tx, rx) = mpsc::unbounded_channel();
            let lane_counters = Arc::new(LaneCounters::default());
            let lane = Lane {
                handler: Arc::clone(&handler),
                permits: Arc::clone(&permits),
                counters: Arc::clone(&lane_counters),
                config: config.clone(),
            };
            tasks.push(runtime.spawn(lane.run(rx)));
            lanes.push(tx);
            counters.push(lane_counters);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                lanes,
                permits,
                max_in_flight: config.max_in_flight,
                router: foldhash::fast::FixedState::with_seed(0x6865_6164_7761_7465),
                next_epoch: AtomicU64::new(1),
                counters,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// A fresh epoch for a new source connection.
    pub fn new_epoch(&self) -> Epoch {
        Epoch::new(self.inner.next_epoch.fetch_add(1, Relaxed))
    }

    /// The source connection of `epoch` is gone: its unstarted deliveries are dropped unsettled
    /// and none of its deliveries will be settled any more.
    pub fn epoch_lost(&self, epoch: Epoch) {
        for lane in &self.inner.lanes {
            let _ = lane.send(Cmd::EpochLost(epoch));
        }
    }

    /// Hand a delivery to its key's FIFO, waiting while `max_in_flight` deliveries are in
    /// flight.
    pub async fn dispatch(&self, delivery: Delivery<S>) -> Result<(), DispatchError<S>> {
        match self.inner.permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(DispatchError::Closed(delivery)),
        }
        self.send(delivery).map_err(DispatchError::Closed)
    }

    /// Like [`dispatch`](Self::dispatch), without waiting.
    #[allow(clippy::result_large_err)] // the delivery comes back by value so nothing is lost; boxing would cost the error path an allocation for no gain
    pub fn try_dispatch(&self, delivery: Delivery<S>) -> Result<(), TryDispatchError<S>> {
        match self.inner.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                return Err(TryDispatchError::Full(delivery));
            }
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(TryDispatchError::Closed(delivery));
            }
        }
        self.send(delivery).map_err(TryDispatchError::Closed)
    }

    #[allow(clippy::result_large_err)] // as in `try_dispatch`: the delivery comes back
    fn send(&self, delivery: Delivery<S>) -> Result<(), Delivery<S>> {
        let lane = self.lane(&delivery.key);
        lane.send(Cmd::Deliver(delivery)).map_err(|e| {
            self.inner.permits.add_permits(1);
            match e.0 {
                Cmd::Deliver(d) => d,
                _ => unreachable!("the command sent was a delivery"),
            }
        })
    }

    fn lane(&self, key: &Key) -> &mpsc::UnboundedSender<Cmd<H, S>> {
        let n = self.inner.lanes.len();
        let i = if n == 1 {
            0
        } else {
            (self.inner.router.hash_one(key) % n as u64) as usize
        };
        &self.inner.lanes[i]
    }

    /// Send `signal` to the handler of `key` (starting it if needed) and await its reply
    /// (Mississippi's `get_data_updater_process` + `handle_signal`). The signal runs between
    /// two messages of the key; there is no ordering guarantee relative to messages.
    pub async fn signal(
        &self,
        key: impl Into<Key>,
        signal: H::Signal,
    ) -> Result<H::Reply, SignalError> {
        let key = key.into();
        let (tx, rx) = oneshot::channel();
        self.lane(&key)
            .send(Cmd::Signal(key, (signal, tx)))
            .map_err(|_| SignalError::Unavailable)?;
        rx.await.map_err(|_| SignalError::Unavailable)
    }

    /// Resume a key parked by [`PoisonAction::StopKey`](crate::PoisonAction::StopKey).
    pub fn resume_key(&self, key: impl Into<Key>) {
        let key = key.into();
        let _ = self.lane(&key).send(Cmd::Resume(key));
    }

    /// Current counters.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics {
            in_flight: (self
                .inner
                .max_in_flight
                .saturating_sub(self.inner.permits.available_permits()))
                as u64,
            ..Metrics::default()
        };
        for c in &self.inner.counters {
            m.live_keys += c.live_keys.load(Relaxed);
            m.parked += c.parked.load(Relaxed);
            m.acked += c.acked.load(Relaxed);
            m.discarded += c.discarded.load(Relaxed);
            m.retried += c.retried.load(Relaxed);
            m.dropped += c.dropped.load(Relaxed);
            m.poisoned += c.poisoned.load(Relaxed);
            m.init_failures += c.init_failures.load(Relaxed);
        }
        m
    }

    /// The loop every ordered consumer runs: feed the dispatcher from `source` until it ends
    /// (or the dispatcher is shut down elsewhere), then [`shutdown`](Self::shutdown) with
    /// `grace`. A source error ends the feeding the same way and is returned after the
    /// shutdown; deliveries not settled by then come again from the broker.
    pub async fn run<St, E>(&self, source: St, grace: Duration) -> Result<ShutdownReport, E>
    where
        St: futures_util::Stream<Item = Result<SourceEvent<S>, E>>,
    {
        let mut source = pin!(source);
        let failed = self.feed_pinned(source.as_mut()).await;
        let report = self.shutdown(grace).await;
        failed.map_or(Ok(report), Err)
    }

    /// [`run`](Self::run) on a task of its own, until [`Running::shutdown`] (or the end of
    /// `source`: then with a grace of [`Running::END_GRACE`]). The source lives until the
    /// shutdown is over, so what handlers finish during the grace is still settled through it.
    pub fn start<St, E>(&self, source: St) -> Running<H, S, E>
    where
        St: futures_util::Stream<Item = Result<SourceEvent<S>, E>> + Send + 'static,
        E: Send + 'static,
    {
        let (stop, mut stopped) = tokio::sync::watch::channel(None::<Duration>);
        let dispatcher = self.clone();
        let task = tokio::spawn(async move {
            let mut source = pin!(source);
            let failed = tokio::select! {
                failed = dispatcher.feed_pinned(source.as_mut()) => failed,
                _ = stopped.wait_for(Option::is_some) => None,
            };
            let grace = (*stopped.borrow()).unwrap_or(Running::<H, S, E>::END_GRACE);
            let report = dispatcher.shutdown(grace).await;
            failed.map_or(Ok(report), Err)
        });
        Running {
            dispatcher: self.clone(),
            stop,
            task,
        }
    }

    /// Dispatch what `source` yields until it ends or the dispatcher is closed (`Ok`), or
    /// until it yields an error (returned) — without shutting the dispatcher down: for
    /// several sources that share one dispatcher, as the AMQP consumer's shard queues do.
    /// [`start`](Self::start) and [`run`](Self::run) are this loop followed by the shutdown.
    pub async fn feed<St, E>(&self, source: St) -> Result<(), E>
    where
        St: futures_util::Stream<Item = Result<SourceEvent<S>, E>>,
    {
        self.feed_pinned(pin!(source)).await.map_or(Ok(()), Err)
    }

    /// [`feed`](Self::feed) from a source the caller keeps.
    async fn feed_pinned<St, E>(&self, mut source: std::pin::Pin<&mut St>) -> Option<E>
    where
        St: futures_util::Stream<Item = Result<SourceEvent<S>, E>>,
    {
        while let Some(event) = source.next().await {
            match event {
                Ok(SourceEvent::Delivery(delivery)) => {
                    if self.dispatch(delivery).await.is_err() {
                        return None;
                    }
                }
                Ok(SourceEvent::EpochLost(epoch)) => self.epoch_lost(epoch),
                Err(e) => return Some(e),
            }
        }
        None
    }

    /// Stop accepting deliveries, finish the queued and running work until `grace` has passed,
    /// terminate every handler, and stop the lanes. What is still unsettled at the deadline is
    /// dropped without settling (the source redelivers it). Waiting `dispatch` calls fail with
    /// [`DispatchError::Closed`].
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let deadline = Instant::now() + grace;
        self.inner.permits.close();
        for lane in &self.inner.lanes {
            let _ = lane.send(Cmd::Shutdown(deadline));
        }
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let mut report = ShutdownReport {
            abandoned: 0,
            drained: true,
        };
        for task in tasks {
            match task.await {
                Ok(lane) => {
                    report.abandoned += lane.abandoned;
                    report.drained &= lane.drained;
                }
                Err(_) => report.drained = false,
            }
        }
        report
    }
}

/// An ordered consumer at work on its own task: what [`Dispatcher::start`] returns, and what
/// the transports' ordered consumers hand out (AMQP's `Consumer` has the same methods).
///
/// Keep it while the consumer should run: dropping it shuts the consumer down in the
/// background, with a grace of [`END_GRACE`](Self::END_GRACE).
#[must_use = "dropping the handle shuts the consumer down"]
pub struct Running<H: Handler, S: Settle, E> {
    dispatcher: Dispatcher<H, S>,
    stop: tokio::sync::watch::Sender<Option<Duration>>,
    task: JoinHandle<Result<ShutdownReport, E>>,
}

impl<H: Handler, S: Settle, E> fmt::Debug for Running<H, S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("finished", &self.task.is_finished())
            .finish_non_exhaustive()
    }
}

impl<H: Handler, S: Settle, E> Running<H, S, E> {
    /// The grace handlers get when the source ends by itself (its connection was given up,
    /// its subscription deleted): 5 s.
    pub const END_GRACE: Duration = Duration::from_secs(5);

    /// The dispatcher (signals to a key's handler, metrics).
    pub fn dispatcher(&self) -> &Dispatcher<H, S> {
        &self.dispatcher
    }

    /// Whether it has stopped (its source ended, or it was shut down).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Graceful shutdown: take no more deliveries, let the handlers finish what they hold
    /// for up to `grace` (settled through the still open source), then close the source.
    /// Returns the report, or the error that had ended the source.
    pub async fn shutdown(self, grace: Duration) -> Result<ShutdownReport, E> {
        self.stop.send_replace(Some(grace));
        self.wait().await
    }

    /// Wait until the source ends by itself (then the handlers get
    /// [`END_GRACE`](Self::END_GRACE)).
    pub async fn wait(self) -> Result<ShutdownReport, E> {
        match self.task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => Ok(ShutdownReport {
                abandoned: 0,
                drained: false,
            }),
        }
    }
}

/// One lane: a tracker and the jobs it started.
struct Lane<H: Handler> {
    handler: Arc<H>,
    permits: Arc<Semaphore>,
    counters: Arc<LaneCounters>,
    config: Config,
}

/// How many commands a lane takes from its channel at once.
const BATCH: usize = 512;

#[derive(Default)]
struct Tally {
    released: usize,
    acked: u64,
    discarded: u64,
    retried: u64,
    dropped: u64,
    poisoned: u64,
    init_failures: u64,
}

impl<H: Handler> Lane<H> {
    async fn run<S: Settle>(self, mut rx: mpsc::UnboundedReceiver<Cmd<H, S>>) -> LaneReport {
        let mut tracker: Tracker<H, S, SignalCall<H>> = Tracker::new(self.config.retry);
        let mut running = FuturesUnordered::new();
        let mut cmds = Vec::with_capacity(BATCH);
        let period = (self.config.idle_timeout / 4).max(Duration::from_millis(50));
        let mut sweep = tokio::time::interval_at(Instant::now() + period, period);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut deadline: Option<Instant> = None;
        let mut stop_timer = pin!(tokio::time::sleep(Duration::ZERO));
        let mut report = LaneReport::default();
        let mut timed_out = false;
        let mut budget = Budget {
            max_parked: (self.config.max_parked / self.config.lanes.max(1)).max(1),
            ..Budget::default()
        };
        loop {
            self.drain(&mut tracker, &mut running, &mut budget);
            if deadline.is_some() && running.is_empty() && tracker.is_quiet() {
                break;
            }
            tokio::select! {
                biased;
                Some((key, done)) = running.next(), if !running.is_empty() => {
                    let now = Instant::now().into_std();
                    tracker.complete(&key, done, now);
                    // Take every other completion that is already ready in one go.
                    while let Some(Some((key, done))) = running.next().now_or_never() {
                        tracker.complete(&key, done, now);
                    }
                }
                n = rx.recv_many(&mut cmds, BATCH), if deadline.is_none() => {
                    if n == 0 {
                        // Every handle was dropped: drain with the configured grace.
                        let at = Instant::now() + self.config.drop_grace;
                        deadline = Some(at);
                        stop_timer.as_mut().reset(at);
                        continue;
                    }
                    let now = Instant::now().into_std();
                    for cmd in cmds.drain(..) {
                        match cmd {
                            Cmd::Deliver(d) => tracker.deliver(d, now),
                            Cmd::EpochLost(e) => tracker.epoch_lost(e, now),
                            Cmd::Signal(key, call) => tracker.signal(key, call, now),
                            Cmd::Resume(key) => {
                                tracker.resume(&key, now);
                            }
                            Cmd::Shutdown(at) => {
                                let at = deadline.map_or(at, |d| d.min(at));
                                deadline = Some(at);
                                stop_timer.as_mut().reset(at);
                            }
                        }
                    }
                }
                _ = sweep.tick() => {
                    tracker.evict_idle(Instant::now().into_std(), self.config.idle_timeout);
                }
                () = &mut stop_timer, if deadline.is_some() => {
                    // Cancel what still runs; its deliveries are redelivered by the source.
                    running = FuturesUnordered::new();
                    report.abandoned += tracker.abandon() as u64;
                    self.drain(&mut tracker, &mut running, &mut budget);
                    timed_out = true;
                    break;
                }
            }
        }
        if !timed_out {
            report.drained = true;
            tracker.terminate_all();
            self.drain(&mut tracker, &mut running, &mut budget);
            while let Some((key, done)) = running.next().await {
                tracker.complete(&key, done, Instant::now().into_std());
            }
        }
        // Whatever is still in the channel was never accepted by a key: drop it unsettled.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Deliver(d) = cmd {
                report.abandoned += 1;
                drop(d);
                self.permits.add_permits(1);
            }
        }
        self.counters.live_keys.store(0, Relaxed);
        report
    }

    /// Carry out the tracker's outputs.
    fn drain<S: Settle>(
        &self,
        tracker: &mut Tracker<H, S, SignalCall<H>>,
        running: &mut FuturesUnordered<JobFuture<H>>,
        budget: &mut Budget,
    ) {
        let mut t = Tally::default();
        let mut now = None;
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(output) = tracker.poll_output() {
            match output {
                Output::Start(job) => {
                    // Poll a new job once right here: a handler that finishes without waiting
                    // never goes through `running`, and its key's next job starts at once.
                    // One that waits is moved to `running`, whose first poll re-registers
                    // the real waker.
                    let mut job = Box::pin(run_job(Arc::clone(&self.handler), job));
                    match job.as_mut().poll(&mut cx) {
                        Poll::Ready((key, done)) => {
                            let now = *now.get_or_insert_with(std::time::Instant::now);
                            tracker.complete(&key, done, now);
                        }
                        Poll::Pending => running.push(job),
                    }
                }
                Output::Settle { settle, settlement } => {
                    settle.settle(settlement);
                    t.released += 1;
                    match settlement {
                        Settlement::Ack => t.acked += 1,
                        Settlement::Reject { .. } => t.discarded += 1,
                    }
                }
                Output::Drop { settle } => {
                    drop(settle);
                    t.released += 1;
                    t.dropped += 1;
                }
                Output::Event(event) => record(event, &mut t),
            }
        }
        let parked = tracker.parked();
        budget.balance(&self.permits, t.released, parked);
        let c = &self.counters;
        c.parked.store(parked as u64, Relaxed);
        for (counter, n) in [
            (&c.acked, t.acked),
            (&c.discarded, t.discarded),
            (&c.retried, t.retried),
            (&c.dropped, t.dropped),
            (&c.poisoned, t.poisoned),
            (&c.init_failures, t.init_failures),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
        c.live_keys.store(tracker.live_keys() as u64, Relaxed);
    }
}

/// A lane's account with the in-flight semaphore beyond one permit per delivery: the
/// permits it gave back on behalf of deliveries waiting at parked keys, and those it owes
/// back since such deliveries count again (resumed, settled or dropped) while no permit was
/// free to take.
#[derive(Debug, Default)]
struct Budget {
    /// Permits given back for parked deliveries (at most `max_parked`).
    given: usize,
    /// Permits owed to the semaphore.
    owed: usize,
    /// This lane's share of [`Config::max_parked`].
    max_parked: usize,
}

impl Budget {
    /// `released` deliveries left the lane (settled or dropped) and `parked` now wait at
    /// parked keys: return and take permits so that every other delivery holds exactly one.
    fn balance(&mut self, permits: &Semaphore, mut released: usize, parked: usize) {
        let parked = parked.min(self.max_parked);
        if parked >= self.given {
            released += parked - self.given;
        } else {
            self.owed += self.given - parked;
        }
        self.given = parked;
        let paid = self.owed.min(released);
        self.owed -= paid;
        released -= paid;
        if released > 0 {
            permits.add_permits(released);
        } else if self.owed > 0 {
            let free = self.owed.min(permits.available_permits());
            if let Ok(taken) = permits.try_acquire_many(u32::try_from(free).unwrap_or(u32::MAX)) {
                self.owed -= taken.num_permits();
                taken.forget();
            }
        }
    }
}

/// A running job; boxed so that every kind of work shares one type.
type JobFuture<H> = std::pin::Pin<Box<dyn Future<Output = (Key, Completion<H>)> + Send>>;

fn record(event: Event, t: &mut Tally) {
    match event {
        Event::Retrying {
            key,
            attempt,
            delay,
            failure,
        } => {
            t.retried += 1;
            tracing::warn!(%key, attempt, ?delay, kind = ?failure.kind, error = %failure.detail, "handler failed; retrying the message with a fresh handler");
        }
        Event::InitFailed {
            key,
            failures,
            delay,
            detail,
        } => {
            t.init_failures += 1;
            tracing::warn!(%key, failures, ?delay, error = %detail, "handler init failed; retrying");
        }
        Event::Poisoned {
            key,
            message_id,
            action,
            failure,
        } => {
            t.poisoned += 1;
            tracing::error!(%key, %message_id, ?action, error = %failure.detail, "poison message");
        }
        Event::Discarded {
            key,
            message_id,
            reason,
        } => tracing::warn!(%key, %message_id, %reason, "message discarded"),
        Event::Stopped { key, reason } => tracing::info!(%key, %reason, "handler stopped"),
    }
}

async fn run_job<H: Handler>(handler: Arc<H>, job: Job<H, SignalCall<H>>) -> (Key, Completion<H>) {
    let Job { key, state, work } = job;
    let h = &*handler;
    let completion = match work {
        Work::Message { message, attempt } => {
            let span = tracing::debug_span!("message", key = %key, message_id = %message.message_id, attempt);
            let (state, result) = guarded(async {
                let mut state = match state_or_init(h, &key, state).await {
                    Ok(s) => s,
                    Err(f) => return (None, Err(f)),
                };
                match h.handle_message(&message, &mut state).await {
                    Ok(outcome) => (Some(state), Ok(outcome)),
                    Err(e) => ended(h, state, e).await,
                }
            })
            .instrument(span)
            .await;
            Completion::Message {
                state,
                message,
                result,
            }
        }
        Work::Continue(arg) => {
            let (state, result) = guarded(async {
                let mut state = match state_or_init(h, &key, state).await {
                    Ok(s) => s,
                    Err(f) => return (None, Err(f)),
                };
                match h.handle_continue(arg, &mut state).await {
                    Ok(()) => (Some(state), Ok(())),
                    Err(e) => ended(h, state, e).await,
                }
            })
            .await;
            Completion::Other { state, result }
        }
        Work::Extra((signal, reply)) => {
            let (state, result) = guarded(async {
                let mut state = match state_or_init(h, &key, state).await {
                    Ok(s) => s,
                    Err(f) => return (None, Err(f)),
                };
                let answer = h.handle_signal(signal, &mut state).await;
                let _ = reply.send(answer);
                (Some(state), Ok(()))
            })
            .await;
            Completion::Other { state, result }
        }
        Work::Backoff(delay) => {
            tokio::time::sleep(delay).await;
            Completion::Other {
                state,
                result: Ok(()),
            }
        }
        Work::Terminate(reason) => {
            if let Some(state) = state {
                let _ = AssertUnwindSafe(h.terminate(reason, state))
                    .catch_unwind()
                    .await;
            }
            Completion::Other {
                state: None,
                result: Ok(()),
            }
        }
    };
    (key, completion)
}

/// The key's handler state, from a fresh `init` if it has none.
async fn state_or_init<H: Handler>(
    handler: &H,
    key: &Key,
    state: Option<H::State>,
) -> Result<H::State, Failure> {
    match state {
        Some(state) => Ok(state),
        None => handler
            .init(key)
            .await
            .map_err(|e| failure(FailureKind::Init, e)),
    }
}

/// The handler failed: terminate it and report the failure (its state is gone).
async fn ended<H: Handler, T>(
    handler: &H,
    state: H::State,
    error: H::Error,
) -> (Option<H::State>, Result<T, Failure>) {
    let f = failure(FailureKind::Error, error);
    handler
        .terminate(TerminateReason::Error(f.detail.clone()), state)
        .await;
    (None, Err(f))
}

/// Run a job body, turning a panic into a failure that leaves no state.
async fn guarded<S, T>(
    body: impl Future<Output = (Option<S>, Result<T, Failure>)>,
) -> (Option<S>, Result<T, Failure>) {
    AssertUnwindSafe(body)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| (None, Err(panicked(&*panic))))
}

fn failure(kind: FailureKind, error: impl fmt::Display) -> Failure {
    Failure {
        kind,
        detail: error.to_string(),
    }
}

fn panicked(panic: &(dyn Any + Send)) -> Failure {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    Failure {
        kind: FailureKind::Panic,
        detail: format!("panicked: {detail}"),
    }
}

mod wait;

pub use wait::WaitTimeout;

#[cfg(test)]
mod tests;
