//! The IO-free per-key ordering state machine (Mississippi's MessageTracker, without its
//! ordering hole): [`Tracker`], its inputs ([`Completion`]) and outputs ([`Output`], [`Job`]).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::mem;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;

use crate::handler::{Handler, Outcome, StopAction, TerminateReason};
use crate::message::{Key, Message};
use crate::settle::{Delivery, Epoch, Settlement};

/// What to do with a message whose handler failed `max_attempts` times in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonAction {
    /// Reject it without requeue (dead-letter it) and go on with the key's next message.
    Discard,
    /// Park the key: the message and everything behind it stay unsettled, in order, until
    /// [`Tracker::resume`] (or [`Dispatcher::resume_key`](crate::Dispatcher::resume_key)) or
    /// until their epoch is lost. Nothing of the key is processed out of order.
    StopKey,
}

/// Retry and poison policy for failing handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per message, the first included, before [`PoisonAction`] applies. At least 1.
    pub max_attempts: u32,
    /// What happens to a poison message.
    pub on_poison: PoisonAction,
    /// Backoff before the second attempt; doubled for each further one.
    pub backoff_base: Duration,
    /// Backoff cap (also for `init` retries, which go on forever).
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            on_poison: PoisonAction::Discard,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The backoff after the `failures`-th consecutive failure (1-based).
    pub fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.backoff_base
            .saturating_mul(1_u32 << shift)
            .min(self.backoff_max)
    }
}

/// Work the driver must run for one key, with the key's handler state.
///
/// `state` is `None` when the key has no live handler; the driver then calls
/// [`Handler::init`] first (for every kind of work but `Backoff` and `Terminate`).
pub struct Job<H: Handler, X> {
    /// The key.
    pub key: Key,
    /// The key's handler state, lent to the job; it comes back in the [`Completion`].
    pub state: Option<H::State>,
    /// What to run.
    pub work: Work<H, X>,
}

impl<H: Handler, X> fmt::Debug for Job<H, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("key", &self.key)
            .field("has_state", &self.state.is_some())
            .field("work", &self.work)
            .finish()
    }
}

/// The kinds of [`Job`].
pub enum Work<H: Handler, X> {
    /// Call `handle_message`; answer with [`Completion::Message`].
    Message {
        /// The key's head message.
        message: Message,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// Call `handle_continue`.
    Continue(H::Continue),
    /// Driver-defined work that needs the handler state (the dispatcher's signals).
    Extra(X),
    /// Wait this long, touching nothing.
    Backoff(Duration),
    /// Call `terminate`; `state` is always `Some`.
    Terminate(TerminateReason),
}

impl<H: Handler, X> fmt::Debug for Work<H, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Message { message, attempt } => f
                .debug_struct("Message")
                .field("message_id", &message.message_id)
                .field("attempt", attempt)
                .finish(),
            Self::Continue(_) => f.write_str("Continue"),
            Self::Extra(_) => f.write_str("Extra"),
            Self::Backoff(d) => f.debug_tuple("Backoff").field(d).finish(),
            Self::Terminate(r) => f.debug_tuple("Terminate").field(r).finish(),
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What failed.
    pub kind: FailureKind,
    /// The error's or panic's text.
    pub detail: String,
}

/// What failed in a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// `init` returned an error; the work was not attempted.
    Init,
    /// The handler returned an error (the driver already called `terminate`).
    Error,
    /// The handler panicked (its state is gone).
    Panic,
}

/// The result of a [`Job`], fed back with [`Tracker::complete`].
pub enum Completion<H: Handler> {
    /// For [`Work::Message`].
    Message {
        /// The state after the call; `None` after a failure.
        state: Option<H::State>,
        /// The message, handed back.
        message: Message,
        /// What the handler decided, or why it failed.
        result: Result<Outcome<H::Continue>, Failure>,
    },
    /// For every other kind of work.
    Other {
        /// The state after the call; `None` after a failure or a `Terminate`.
        state: Option<H::State>,
        /// Whether the work failed.
        result: Result<(), Failure>,
    },
}

impl<H: Handler> fmt::Debug for Completion<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Message { result, .. } => f
                .debug_struct("Message")
                .field("ok", &result.is_ok())
                .finish_non_exhaustive(),
            Self::Other { result, .. } => f
                .debug_struct("Other")
                .field("result", result)
                .finish_non_exhaustive(),
        }
    }
}

/// Something the driver must do, drained with [`Tracker::poll_output`] in order.
pub enum Output<H: Handler, S, X> {
    /// Run this job and feed its [`Completion`] back.
    Start(Job<H, X>),
    /// Settle a delivery at its source; it leaves the tracker.
    Settle {
        /// The source's handle.
        settle: S,
        /// Ack or reject.
        settlement: Settlement,
    },
    /// Drop a delivery's handle **without** settling it (its epoch was lost, or shutdown
    /// abandoned it); it leaves the tracker and the source will redeliver it.
    Drop {
        /// The stale handle.
        settle: S,
    },
    /// Something worth counting or logging.
    Event(Event),
}

impl<H: Handler, S, X> fmt::Debug for Output<H, S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Start(job) => f.debug_tuple("Start").field(job).finish(),
            Self::Settle { settlement, .. } => f.debug_tuple("Settle").field(settlement).finish(),
            Self::Drop { .. } => f.write_str("Drop"),
            Self::Event(e) => f.debug_tuple("Event").field(e).finish(),
        }
    }
}

/// Noteworthy moments, for logs and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A handler failed on a message; it is retried after `delay`.
    Retrying {
        /// The key.
        key: Key,
        /// The attempt that failed (1-based).
        attempt: u32,
        /// Backoff before the next attempt.
        delay: Duration,
        /// What went wrong.
        failure: Failure,
    },
    /// `init` failed; retried after `delay`.
    InitFailed {
        /// The key.
        key: Key,
        /// Consecutive init failures.
        failures: u32,
        /// Backoff before the next try.
        delay: Duration,
        /// The error's text.
        detail: String,
    },
    /// A message failed `max_attempts` times.
    Poisoned {
        /// The key.
        key: Key,
        /// The message's id.
        message_id: String,
        /// What was done about it.
        action: PoisonAction,
        /// The last failure.
        failure: Failure,
    },
    /// A handler discarded a message.
    Discarded {
        /// The key.
        key: Key,
        /// The message's id.
        message_id: String,
        /// The handler's reason.
        reason: String,
    },
    /// A handler stopped.
    Stopped {
        /// The key.
        key: Key,
        /// The handler's reason.
        reason: String,
    },
}

/// Per-key ordering for one group of keys, without IO, tasks or clocks.
///
/// Each key has a FIFO of deliveries and at most one [`Job`] running. Only the head of a FIFO
/// is ever handed to the handler, and only the head is settled; the next message starts after
/// the head left (settled, poisoned or dropped). Per key:
///
/// ```text
///              deliver / signal / resume
///   +------+ ---------------------------> +-------------------+
///   | Idle |                              | Busy(Message |    |  complete(ok)    settle head,
///   |      | <--------------------------- |  Continue | Extra |----------------> next work
///   +------+   nothing left to run        |  Backoff | Term.) |
///      |                                  +-------------------+
///      | evict_idle (state: Terminate)       | complete(err): head stays, Backoff job,
///      v                                     | same head again (fresh init) until the
///   removed                                  | poison policy settles or parks it
/// ```
///
/// Next work, in priority order: a pending continuation, a signal ([`Work::Extra`]), the
/// head message (unless the key is parked).
///
/// Epochs: [`epoch_lost`](Self::epoch_lost) drops every queued delivery of that epoch
/// ([`Output::Drop`]); a head that is running when its epoch is lost is dropped, not
/// settled, when its job completes. Deliveries arriving for a lost epoch are dropped at once.
/// A handler state fed by a lost epoch is terminated ([`TerminateReason::EpochLost`]) before
/// the key's next message: while the connection was down the broker may have given the
/// key's messages to another consumer, so the next message starts from `init`.
///
/// Inputs are `deliver`, `complete`, `signal`, `resume`, `epoch_lost`, `evict_idle`,
/// `abandon`, `terminate_all`; after each, drain [`poll_output`](Self::poll_output).
pub struct Tracker<H: Handler, S, X> {
    slots: HashMap<Key, Slot<H, S, X>, RandomState>,
    dead: HashSet<Epoch, RandomState>,
    out: VecDeque<Output<H, S, X>>,
    policy: RetryPolicy,
    /// Deliveries queued at parked keys (kept up to date by every input).
    parked: usize,
}

impl<H: Handler, S, X> fmt::Debug for Tracker<H, S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("keys", &self.slots.len())
            .field("dead_epochs", &self.dead.len())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    No,
    Message,
    Continue,
    Extra,
    Backoff,
    Terminate,
}

struct Slot<H: Handler, S, X> {
    queue: VecDeque<Entry<S>>,
    side: VecDeque<X>,
    cont: Option<H::Continue>,
    state: Option<H::State>,
    busy: Busy,
    /// Failed attempts of the current head.
    attempts: u32,
    /// Consecutive `init` failures.
    init_failures: u32,
    parked: bool,
    /// The epoch of the latest delivery (`None` for a slot opened by a signal).
    fed_by: Option<Epoch>,
    /// The state was fed by a lost epoch: terminate it before the next message.
    stale: bool,
    idle_since: Instant,
}

struct Entry<S> {
    /// `None` exactly while the entry is the head and its message job runs.
    message: Option<Message>,
    settle: S,
    epoch: Epoch,
}

impl<H: Handler, S, X> Slot<H, S, X> {
    fn new(fed_by: Option<Epoch>, now: Instant) -> Self {
        Self {
            queue: VecDeque::new(),
            side: VecDeque::new(),
            cont: None,
            state: None,
            busy: Busy::No,
            attempts: 0,
            init_failures: 0,
            parked: false,
            fed_by,
            stale: false,
            idle_since: now,
        }
    }

    fn has_work(&self) -> bool {
        !self.queue.is_empty() || !self.side.is_empty() || self.cont.is_some()
    }

    /// The deliveries this slot holds while parked (none when it is not).
    fn parked_len(&self) -> usize {
        if self.parked { self.queue.len() } else { 0 }
    }

    /// Remove the head: it was settled, poisoned or dropped.
    fn pop_head(&mut self) -> Option<Entry<S>> {
        self.attempts = 0;
        self.parked = false;
        let head = self.queue.pop_front();
        if self.queue.is_empty() && self.queue.capacity() > 8 {
            // Keep idle keys small: a burst must not pin its buffer forever.
            self.queue = VecDeque::new();
        }
        head
    }
}

impl<H: Handler, S, X> Tracker<H, S, X> {
    /// An empty tracker.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            slots: HashMap::default(),
            dead: HashSet::default(),
            out: VecDeque::new(),
            policy,
            parked: 0,
        }
    }

    /// Deliveries waiting at parked keys ([`PoisonAction::StopKey`]): their order is kept,
    /// and a driver need not count them against its in-flight bound, since none of them
    /// runs until the key is resumed.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// The next thing the driver must do.
    pub fn poll_output(&mut self) -> Option<Output<H, S, X>> {
        self.out.pop_front()
    }

    /// The number of keys with a slot (live handler, queued work or running job).
    pub fn live_keys(&self) -> usize {
        self.slots.len()
    }

    /// Whether no key has queued or running work.
    pub fn is_quiet(&self) -> bool {
        self.slots
            .values()
            .all(|s| s.busy == Busy::No && (s.parked || !s.has_work()))
    }

    /// Whether this epoch was declared lost.
    pub fn is_lost(&self, epoch: Epoch) -> bool {
        self.dead.contains(&epoch)
    }

    /// A message arrived.
    pub fn deliver(&mut self, delivery: Delivery<S>, now: Instant) {
        let Delivery {
            key,
            message,
            settle,
            epoch,
        } = delivery;
        if self.dead.contains(&epoch) {
            self.out.push_back(Output::Drop { settle });
            return;
        }
        let entry = Entry {
            message: Some(message),
            settle,
            epoch,
        };
        let (key, slot) = match self.slots.entry(key) {
            MapEntry::Occupied(o) if o.get().busy != Busy::No => {
                // The common case under load: the key is busy, just queue.
                let slot = o.into_mut();
                self.parked += usize::from(slot.parked);
                slot.fed_by = Some(epoch);
                slot.queue.push_back(entry);
                return;
            }
            MapEntry::Occupied(o) => (o.key().clone(), o.into_mut()),
            MapEntry::Vacant(v) => (v.key().clone(), v.insert(Slot::new(Some(epoch), now))),
        };
        self.parked += usize::from(slot.parked);
        slot.fed_by = Some(epoch);
        slot.queue.push_back(entry);
        advance(&key, slot, &mut self.out, now);
    }

    /// Queue driver-defined work (a signal) for `key`, starting a handler if needed.
    pub fn signal(&mut self, key: Key, extra: X, now: Instant) {
        let slot = self
            .slots
            .entry(key.clone())
            .or_insert_with(|| Slot::new(None, now));
        slot.side.push_back(extra);
        if slot.busy == Busy::No {
            advance(&key, slot, &mut self.out, now);
        }
    }

    /// Un-park a key parked by [`PoisonAction::StopKey`]: its head gets a fresh set of attempts.
    /// Returns whether the key was parked.
    pub fn resume(&mut self, key: &Key, now: Instant) -> bool {
        let Some(slot) = self.slots.get_mut(key) else {
            return false;
        };
        self.parked -= slot.parked_len();
        let was = mem::replace(&mut slot.parked, false);
        slot.attempts = 0;
        if slot.busy == Busy::No {
            advance(key, slot, &mut self.out, now);
        }
        was
    }

    /// The source connection of `epoch` is gone: drop its queued deliveries without settling
    /// them, never settle its running heads, and end the handler states it fed before their
    /// keys' next messages.
    pub fn epoch_lost(&mut self, epoch: Epoch, now: Instant) {
        if !self.dead.insert(epoch) {
            return;
        }
        for (key, slot) in &mut self.slots {
            let queued = slot.queue.iter().any(|e| e.epoch == epoch);
            // A slot a signal opened has no epoch: it may belong to any, so it is stale too.
            slot.stale |= queued || slot.fed_by.is_none_or(|f| f == epoch);
            if !queued {
                continue;
            }
            self.parked -= slot.parked_len();
            let running_head = slot.busy == Busy::Message;
            let old = mem::take(&mut slot.queue);
            let mut head_dropped = false;
            for (i, entry) in old.into_iter().enumerate() {
                if entry.epoch == epoch && !(i == 0 && running_head) {
                    head_dropped |= i == 0;
                    self.out.push_back(Output::Drop {
                        settle: entry.settle,
                    });
                } else {
                    slot.queue.push_back(entry);
                }
            }
            if head_dropped {
                slot.attempts = 0;
                slot.parked = false;
            }
            self.parked += slot.parked_len();
            if slot.busy == Busy::No {
                advance(key, slot, &mut self.out, now);
            }
        }
    }

    /// A job finished.
    pub fn complete(&mut self, key: &Key, completion: Completion<H>, now: Instant) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let busy = mem::replace(&mut slot.busy, Busy::No);
        match (busy, completion) {
            (
                Busy::Message,
                Completion::Message {
                    state,
                    message,
                    result,
                },
            ) => {
                slot.state = state;
                let policy = self.policy;
                // Only here can a key be parked, or its parked head leave.
                let parked_before = slot.parked_len();
                let next = finish_message(
                    key,
                    slot,
                    message,
                    result,
                    &self.dead,
                    &policy,
                    &mut self.out,
                );
                self.parked = self.parked + slot.parked_len() - parked_before;
                if let Some(next) = next {
                    slot.busy = next;
                    return;
                }
            }
            (Busy::Continue | Busy::Extra | Busy::Backoff, Completion::Other { state, result }) => {
                slot.state = state;
                if let Err(f) = result {
                    if f.kind == FailureKind::Init {
                        slot.init_failures += 1;
                        let delay = self.policy.backoff(slot.init_failures);
                        self.out.push_back(Output::Event(Event::InitFailed {
                            key: key.clone(),
                            failures: slot.init_failures,
                            delay,
                            detail: f.detail,
                        }));
                        start(
                            key,
                            slot,
                            Work::Backoff(delay),
                            Busy::Backoff,
                            &mut self.out,
                        );
                        return;
                    }
                    slot.state = None;
                }
            }
            (Busy::Terminate, _) => {
                slot.state = None;
                if !slot.has_work() {
                    self.slots.remove(key);
                    return;
                }
            }
            (busy, completion) => {
                // A completion that does not match the running job is a driver bug; keep the
                // slot consistent and say so.
                tracing::error!(?busy, ?completion, %key, "completion does not match the running job");
                slot.busy = busy;
                return;
            }
        }
        advance(key, slot, &mut self.out, now);
    }

    /// Terminate (or remove) keys idle for at least `timeout`. Returns how many were evicted.
    pub fn evict_idle(&mut self, now: Instant, timeout: Duration) -> usize {
        let mut evicted = 0;
        let out = &mut self.out;
        self.slots.retain(|key, slot| {
            let idle = slot.busy == Busy::No
                && !slot.has_work()
                && now.saturating_duration_since(slot.idle_since) >= timeout;
            if !idle {
                return true;
            }
            evicted += 1;
            match slot.state.take() {
                Some(state) => {
                    slot.busy = Busy::Terminate;
                    out.push_back(Output::Start(Job {
                        key: key.clone(),
                        state: Some(state),
                        work: Work::Terminate(TerminateReason::Idle),
                    }));
                    true
                }
                None => false,
            }
        });
        evicted
    }

    /// Give up on everything (a shutdown deadline passed and the driver dropped its running
    /// jobs): every delivery is dropped unsettled and every slot removed.
    pub fn abandon(&mut self) -> usize {
        self.parked = 0;
        let mut dropped = 0;
        for (_, slot) in self.slots.drain() {
            for entry in slot.queue {
                dropped += 1;
                self.out.push_back(Output::Drop {
                    settle: entry.settle,
                });
            }
        }
        dropped
    }

    /// Terminate every idle key that has a handler (shutdown, once quiet).
    pub fn terminate_all(&mut self) {
        for (key, slot) in &mut self.slots {
            if slot.busy != Busy::No {
                continue;
            }
            if let Some(state) = slot.state.take() {
                slot.busy = Busy::Terminate;
                self.out.push_back(Output::Start(Job {
                    key: key.clone(),
                    state: Some(state),
                    work: Work::Terminate(TerminateReason::Shutdown),
                }));
            }
        }
        self.slots.retain(|_, s| s.busy != Busy::No || s.has_work());
    }
}

/// Settle, retry or poison the head after its message job; returns the new busy state if a
/// job was started.
fn finish_message<H: Handler, S, X>(
    key: &Key,
    slot: &mut Slot<H, S, X>,
    message: Message,
    result: Result<Outcome<H::Continue>, Failure>,
    dead: &HashSet<Epoch, RandomState>,
    policy: &RetryPolicy,
    out: &mut VecDeque<Output<H, S, X>>,
) -> Option<Busy> {
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(failure) => {
            let head_epoch = slot.queue.front().map(|e| e.epoch);
            if head_epoch.is_some_and(|e| dead.contains(&e)) {
                // Its connection is gone: the source redelivers it; do not retry here.
                if let Some(head) = slot.pop_head() {
                    out.push_back(Output::Drop {
                        settle: head.settle,
                    });
                }
                if failure.kind == FailureKind::Init {
                    slot.init_failures += 1;
                }
                return None;
            }
            if let Some(head) = slot.queue.front_mut() {
                head.message = Some(message);
            }
            slot.state = None;
            if failure.kind == FailureKind::Init {
                slot.init_failures += 1;
                let delay = policy.backoff(slot.init_failures);
                out.push_back(Output::Event(Event::InitFailed {
                    key: key.clone(),
                    failures: slot.init_failures,
                    delay,
                    detail: failure.detail,
                }));
                return Some(start(key, slot, Work::Backoff(delay), Busy::Backoff, out));
            }
            slot.init_failures = 0;
            slot.attempts += 1;
            if slot.attempts >= policy.max_attempts.max(1) {
                let message_id = slot
                    .queue
                    .front()
                    .and_then(|e| e.message.as_ref())
                    .map(|m| m.message_id.clone())
                    .unwrap_or_default();
                out.push_back(Output::Event(Event::Poisoned {
                    key: key.clone(),
                    message_id,
                    action: policy.on_poison,
                    failure,
                }));
                match policy.on_poison {
                    PoisonAction::Discard => {
                        if let Some(head) = slot.pop_head() {
                            out.push_back(Output::Settle {
                                settle: head.settle,
                                settlement: Settlement::Reject { requeue: false },
                            });
                        }
                    }
                    PoisonAction::StopKey => slot.parked = true,
                }
                return None;
            }
            let delay = policy.backoff(slot.attempts);
            out.push_back(Output::Event(Event::Retrying {
                key: key.clone(),
                attempt: slot.attempts,
                delay,
                failure,
            }));
            return Some(start(key, slot, Work::Backoff(delay), Busy::Backoff, out));
        }
    };
    slot.init_failures = 0;
    let head = slot.pop_head()?;
    let stale = dead.contains(&head.epoch);
    let (settlement, stop) = match outcome {
        Outcome::Ack { continue_with } => {
            slot.cont = continue_with;
            (Settlement::Ack, None)
        }
        Outcome::Discard {
            reason,
            continue_with,
        } => {
            slot.cont = continue_with;
            out.push_back(Output::Event(Event::Discarded {
                key: key.clone(),
                message_id: message.message_id,
                reason,
            }));
            (Settlement::Reject { requeue: false }, None)
        }
        Outcome::Stop { reason, action } => {
            let settlement = match action {
                StopAction::Ack => Settlement::Ack,
                StopAction::Discard => Settlement::Reject { requeue: false },
            };
            (settlement, Some(reason))
        }
    };
    out.push_back(if stale {
        Output::Drop {
            settle: head.settle,
        }
    } else {
        Output::Settle {
            settle: head.settle,
            settlement,
        }
    });
    let reason = stop?;
    out.push_back(Output::Event(Event::Stopped {
        key: key.clone(),
        reason: reason.clone(),
    }));
    slot.cont = None;
    let state = slot.state.take()?;
    out.push_back(Output::Start(Job {
        key: key.clone(),
        state: Some(state),
        work: Work::Terminate(TerminateReason::Stopped(reason)),
    }));
    Some(Busy::Terminate)
}

fn start<H: Handler, S, X>(
    key: &Key,
    slot: &mut Slot<H, S, X>,
    work: Work<H, X>,
    busy: Busy,
    out: &mut VecDeque<Output<H, S, X>>,
) -> Busy {
    let state = match work {
        Work::Backoff(_) => None,
        _ => slot.state.take(),
    };
    out.push_back(Output::Start(Job {
        key: key.clone(),
        state,
        work,
    }));
    slot.busy = busy;
    busy
}

/// Start the key's next work, or mark it idle.
fn advance<H: Handler, S, X>(
    key: &Key,
    slot: &mut Slot<H, S, X>,
    out: &mut VecDeque<Output<H, S, X>>,
    now: Instant,
) {
    debug_assert_eq!(slot.busy, Busy::No);
    if let Some(arg) = slot.cont.take() {
        start(key, slot, Work::Continue(arg), Busy::Continue, out);
    } else if let Some(extra) = slot.side.pop_front() {
        start(key, slot, Work::Extra(extra), Busy::Extra, out);
    } else if !slot.parked && slot.queue.front().is_some_and(|e| e.message.is_some()) {
        if mem::take(&mut slot.stale) && slot.state.is_some() {
            start(
                key,
                slot,
                Work::Terminate(TerminateReason::EpochLost),
                Busy::Terminate,
                out,
            );
            return;
        }
        let message = slot.queue[0].message.take().expect("checked above");
        let attempt = slot.attempts + 1;
        start(
            key,
            slot,
            Work::Message { message, attempt },
            Busy::Message,
            out,
        );
    } else {
        slot.idle_since = now;
    }
}

#[cfg(test)]
mod tests;
