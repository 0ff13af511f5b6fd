//! Unit tests and the model-based property test of the tracker.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::message::Timestamp;

/// A handler type for the tracker's associated types; the tracker never calls it.
struct Types;

impl Handler for Types {
    type State = u64;
    type Continue = u8;
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, _key: &Key) -> Result<u64, String> {
        Ok(0)
    }
    async fn handle_message(&self, _m: &Message, _s: &mut u64) -> Result<Outcome<u8>, String> {
        Ok(Outcome::ack())
    }
    async fn handle_signal(&self, _signal: (), _s: &mut u64) {}
}

/// Settle handle of the tests: the delivery's global number.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Probe(usize);

type T = Tracker<Types, Probe, u32>;

fn delivery(key: u8, n: usize, epoch: u64) -> Delivery<Probe> {
    Delivery {
        key: Key::from(u64::from(key)),
        message: Message::new(vec![key], n.to_string(), Timestamp::from_micros(n as i64)),
        settle: Probe(n),
        epoch: Epoch::new(epoch),
    }
}

fn outputs(t: &mut T) -> Vec<Output<Types, Probe, u32>> {
    std::iter::from_fn(|| t.poll_output()).collect()
}

fn jobs(outs: Vec<Output<Types, Probe, u32>>) -> Vec<Job<Types, u32>> {
    outs.into_iter()
        .filter_map(|o| match o {
            Output::Start(j) => Some(j),
            _ => None,
        })
        .collect()
}

fn message_id(job: &Job<Types, u32>) -> Option<&str> {
    match &job.work {
        Work::Message { message, .. } => Some(&message.message_id),
        _ => None,
    }
}

fn ok(job: Job<Types, u32>, outcome: Outcome<u8>) -> Completion<Types> {
    let Work::Message { message, .. } = job.work else {
        panic!("not a message job: {job:?}")
    };
    Completion::Message {
        state: Some(job.state.unwrap_or(1)),
        message,
        result: Ok(outcome),
    }
}

fn failed(job: Job<Types, u32>, kind: FailureKind) -> Completion<Types> {
    let Work::Message { message, .. } = job.work else {
        panic!("not a message job: {job:?}")
    };
    Completion::Message {
        state: None,
        message,
        result: Err(Failure {
            kind,
            detail: "boom".into(),
        }),
    }
}

/// A successful completion of a non-message job.
fn done(state: Option<u64>) -> Completion<Types> {
    Completion::Other {
        state,
        result: Ok(()),
    }
}

fn settled(outs: &[Output<Types, Probe, u32>]) -> Vec<(usize, Settlement)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Settle { settle, settlement } => Some((settle.0, *settlement)),
            _ => None,
        })
        .collect()
}

#[test]
fn one_in_flight_per_key_and_fifo_order() {
    let now = Instant::now();
    let mut t = T::new(RetryPolicy::default());
    t.deliver(delivery(1, 0, 1), now);
    t.deliver(delivery(1, 1, 1), now);
    t.deliver(delivery(2, 2, 1), now);
    let started = jobs(outputs(&mut t));
    let ids: Vec<_> = started.iter().filter_map(message_id).collect();
    assert_eq!(ids, ["0", "2"], "one job per key, heads only");
    let mut started = started.into_iter();
    let first = started.next().unwrap();
    t.complete(&Key::from(1_u64), ok(first, Outcome::ack()), now);
    let outs = outputs(&mut t);
    assert_eq!(settled(&outs), [(0, Settlement::Ack)]);
    let next = jobs(outs);
    assert_eq!(
        next.iter().filter_map(message_id).collect::<Vec<_>>(),
        ["1"]
    );
    assert_eq!(next[0].state, Some(1), "the state is handed on");
}

#[test]
fn stop_settles_terminates_and_a_fresh_handler_takes_the_queue_in_order() {
    let now = Instant::now();
    let mut t = T::new(RetryPolicy::default());
    for n in 0..3 {
        t.deliver(delivery(1, n, 1), now);
    }
    let job = jobs(outputs(&mut t)).remove(0);
    t.complete(
        &Key::from(1_u64),
        ok(job, Outcome::stop("done", StopAction::Discard)),
        now,
    );
    let outs = outputs(&mut t);
    assert_eq!(settled(&outs), [(0, Settlement::Reject { requeue: false })]);
    let term = jobs(outs).remove(0);
    assert!(matches!(term.work, Work::Terminate(TerminateReason::Stopped(ref r)) if r == "done"));
    t.complete(&Key::from(1_u64), done(None), now);
    let next = jobs(outputs(&mut t)).remove(0);
    assert_eq!(
        message_id(&next),
        Some("1"),
        "the queued message is not orphaned"
    );
    assert_eq!(next.state, None, "a fresh handler (init again)");
}

#[test]
fn failure_retries_same_message_then_poison_discards() {
    let now = Instant::now();
    let policy = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    let mut t = T::new(policy);
    t.deliver(delivery(1, 0, 1), now);
    t.deliver(delivery(1, 1, 1), now);
    let key = Key::from(1_u64);
    let job = jobs(outputs(&mut t)).remove(0);
    t.complete(&key, failed(job, FailureKind::Panic), now);
    let outs = outputs(&mut t);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Event(Event::Retrying { attempt: 1, .. })))
    );
    let backoff = jobs(outs).remove(0);
    assert!(matches!(backoff.work, Work::Backoff(d) if d == policy.backoff_base));
    t.complete(&key, done(None), now);
    let retry = jobs(outputs(&mut t)).remove(0);
    assert!(
        matches!(&retry.work, Work::Message { message, attempt: 2 } if message.message_id == "0")
    );
    assert_eq!(retry.state, None);
    t.complete(&key, failed(retry, FailureKind::Error), now);
    let outs = outputs(&mut t);
    assert_eq!(settled(&outs), [(0, Settlement::Reject { requeue: false })]);
    assert_eq!(
        jobs(outs).iter().filter_map(message_id).collect::<Vec<_>>(),
        ["1"]
    );
}

#[test]
fn stop_key_parks_until_resumed() {
    let now = Instant::now();
    let policy = RetryPolicy {
        max_attempts: 1,
        on_poison: PoisonAction::StopKey,
        ..RetryPolicy::default()
    };
    let mut t = T::new(policy);
    let key = Key::from(1_u64);
    t.deliver(delivery(1, 0, 1), now);
    t.deliver(delivery(1, 1, 1), now);
    let job = jobs(outputs(&mut t)).remove(0);
    t.complete(&key, failed(job, FailureKind::Error), now);
    let outs = outputs(&mut t);
    assert!(settled(&outs).is_empty());
    assert!(jobs(outs).is_empty(), "parked: nothing runs");
    t.deliver(delivery(1, 2, 1), now);
    assert!(jobs(outputs(&mut t)).is_empty());
    assert!(t.resume(&key, now));
    let again = jobs(outputs(&mut t)).remove(0);
    assert!(
        matches!(&again.work, Work::Message { message, attempt: 1 } if message.message_id == "0")
    );
}

#[test]
fn init_failure_keeps_the_message_and_backs_off() {
    let now = Instant::now();
    let mut t = T::new(RetryPolicy::default());
    let key = Key::from(1_u64);
    t.deliver(delivery(1, 0, 1), now);
    let job = jobs(outputs(&mut t)).remove(0);
    t.complete(&key, failed(job, FailureKind::Init), now);
    let outs = outputs(&mut t);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Event(Event::InitFailed { failures: 1, .. })))
    );
    let backoff = jobs(outs).remove(0);
    assert!(matches!(backoff.work, Work::Backoff(_)));
    t.complete(&key, done(None), now);
    let retry = jobs(outputs(&mut t)).remove(0);
    assert!(
        matches!(&retry.work, Work::Message { attempt: 1, .. }),
        "init failures are not attempts"
    );
}

#[test]
fn lost_epoch_drops_queued_and_never_settles_the_running_head() {
    let now = Instant::now();
    let mut t = T::new(RetryPolicy::default());
    let key = Key::from(1_u64);
    t.deliver(delivery(1, 0, 1), now);
    t.deliver(delivery(1, 1, 1), now);
    t.deliver(delivery(1, 2, 2), now);
    let head = jobs(outputs(&mut t)).remove(0);
    t.epoch_lost(Epoch::new(1), now);
    let outs = outputs(&mut t);
    assert!(matches!(
        outs.as_slice(),
        [Output::Drop { settle: Probe(1) }]
    ));
    t.complete(&key, ok(head, Outcome::ack()), now);
    let outs = outputs(&mut t);
    assert!(settled(&outs).is_empty());
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Drop { settle: Probe(0) }))
    );
    // The state that handled message 0 came from the lost epoch: it ends before the next
    // message, which a fresh handler takes.
    let term = jobs(outs).remove(0);
    assert!(matches!(
        term.work,
        Work::Terminate(TerminateReason::EpochLost)
    ));
    assert_eq!(term.state, Some(1));
    t.complete(&key, done(None), now);
    let next = jobs(outputs(&mut t)).remove(0);
    assert_eq!(message_id(&next), Some("2"));
    assert_eq!(next.state, None, "a fresh handler");
    t.deliver(delivery(1, 3, 1), now);
    assert!(matches!(
        outputs(&mut t).as_slice(),
        [Output::Drop { settle: Probe(3) }]
    ));
}

#[test]
fn a_state_fed_by_a_lost_epoch_ends_before_the_next_message_and_others_keep_theirs() {
    let now = Instant::now();
    let mut t = T::new(RetryPolicy::default());
    // Key 1 fed by epoch 1, key 2 by epoch 2; both idle with a state.
    for (key, n, epoch) in [(1, 0, 1), (2, 1, 2)] {
        t.deliver(delivery(key, n, epoch), now);
        let job = jobs(outputs(&mut t)).remove(0);
        t.complete(&Key::from(u64::from(key)), ok(job, Outcome::ack()), now);
        assert_eq!(settled(&outputs(&mut t)), [(n, Settlement::Ack)]);
    }
    t.epoch_lost(Epoch::new(1), now);
    assert!(
        outputs(&mut t).is_empty(),
        "nothing runs until a message comes"
    );
    // The key comes back on a new connection: its old state ends first.
    t.deliver(delivery(1, 2, 3), now);
    let term = jobs(outputs(&mut t)).remove(0);
    assert!(matches!(
        term.work,
        Work::Terminate(TerminateReason::EpochLost)
    ));
    t.complete(&Key::from(1_u64), done(None), now);
    let next = jobs(outputs(&mut t)).remove(0);
    assert_eq!((message_id(&next), next.state), (Some("2"), None));
    // Key 2's epoch lives on: its state carries on.
    t.deliver(delivery(2, 3, 2), now);
    let next = jobs(outputs(&mut t)).remove(0);
    assert_eq!((message_id(&next), next.state), (Some("3"), Some(1)));
}

#[test]
fn idle_keys_are_terminated_then_removed() {
    let now = Instant::now();
    let mut t = T::new(RetryPolicy::default());
    let key = Key::from(1_u64);
    t.deliver(delivery(1, 0, 1), now);
    let job = jobs(outputs(&mut t)).remove(0);
    t.complete(&key, ok(job, Outcome::ack()), now);
    outputs(&mut t);
    assert_eq!(
        t.evict_idle(now + Duration::from_secs(1), Duration::from_secs(5)),
        0
    );
    assert_eq!(
        t.evict_idle(now + Duration::from_secs(5), Duration::from_secs(5)),
        1
    );
    let term = jobs(outputs(&mut t)).remove(0);
    assert!(matches!(term.work, Work::Terminate(TerminateReason::Idle)));
    t.complete(&key, done(None), now);
    assert_eq!(t.live_keys(), 0);
}

#[test]
fn continuation_and_signals_run_before_the_next_message() {
    let now = Instant::now();
    let mut t = T::new(RetryPolicy::default());
    let key = Key::from(1_u64);
    t.deliver(delivery(1, 0, 1), now);
    t.deliver(delivery(1, 1, 1), now);
    let job = jobs(outputs(&mut t)).remove(0);
    t.signal(key.clone(), 9, now);
    t.complete(&key, ok(job, Outcome::ack().and_continue(7)), now);
    let cont = jobs(outputs(&mut t)).remove(0);
    assert!(matches!(cont.work, Work::Continue(7)));
    t.complete(&key, done(cont.state), now);
    let sig = jobs(outputs(&mut t)).remove(0);
    assert!(matches!(sig.work, Work::Extra(9)));
    t.complete(&key, done(sig.state), now);
    let next = jobs(outputs(&mut t)).remove(0);
    assert_eq!(message_id(&next), Some("1"));
}

// ---- The model-based property test ----------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Deliver a message for key `.0` on the current epoch (or, with `.1`, on a lost one).
    Deliver(u8, bool),
    /// Complete the `.0 % running`-th running job this way.
    Complete(usize, Fate),
    /// The current epoch is lost; a new one starts.
    LoseEpoch,
    Signal(u8),
    Resume(u8),
    /// Advance the clock by `.0` seconds and evict idle keys.
    Evict(u8),
}

#[derive(Debug, Clone, Copy)]
enum Fate {
    Ack,
    AckContinue,
    Discard,
    StopAck,
    StopDiscard,
    Error,
    Panic,
    InitFail,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Ack),
        1 => Just(Fate::AckContinue),
        1 => Just(Fate::Discard),
        1 => Just(Fate::StopAck),
        1 => Just(Fate::StopDiscard),
        1 => Just(Fate::Error),
        1 => Just(Fate::Panic),
        1 => Just(Fate::InitFail),
    ]
}

fn op(keys: u8) -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..keys, prop::bool::weighted(0.05)).prop_map(|(k, stale)| Op::Deliver(k, stale)),
        8 => (any::<usize>(), fate()).prop_map(|(i, f)| Op::Complete(i, f)),
        1 => Just(Op::LoseEpoch),
        1 => (0..keys).prop_map(Op::Signal),
        1 => (0..keys).prop_map(Op::Resume),
        1 => (0..20_u8).prop_map(Op::Evict),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Settled(Settlement),
    Dropped,
}

/// The reference model: per key, the delivered messages in order with their status.
struct Model {
    key_of: Vec<u8>,
    epoch_of: Vec<u64>,
    status: Vec<Status>,
    per_key: HashMap<u8, Vec<usize>>,
    lost: Vec<u64>,
    /// A stop or a failure ended the key's handler: its next job must start fresh.
    fresh_next: HashMap<u8, bool>,
    /// The epoch of each key's latest live delivery.
    fed: HashMap<u8, u64>,
    /// Keys whose feeding epoch was lost: no message may run on their old state.
    stale: HashSet<u8>,
}

impl Model {
    fn head(&self, key: u8) -> Option<usize> {
        self.per_key
            .get(&key)?
            .iter()
            .copied()
            .find(|&n| self.status[n] == Status::Pending)
    }

    fn check_output(&mut self, o: &Output<Types, Probe, u32>, running: &[Job<Types, u32>]) {
        match o {
            Output::Start(job) => {
                let k = key_u8(&job.key);
                assert!(
                    running.iter().all(|r| r.key != job.key),
                    "two jobs at once for key {k}"
                );
                if let Work::Message { message, .. } = &job.work {
                    let n: usize = message.message_id.parse().unwrap();
                    assert_eq!(
                        self.head(k),
                        Some(n),
                        "key {k}: only the head may be processed"
                    );
                    assert!(
                        job.state.is_none() || !self.stale.contains(&k),
                        "key {k}: a state fed by a lost epoch handled a message"
                    );
                }
                if job.state.is_none() || matches!(job.work, Work::Terminate(_)) {
                    self.stale.remove(&k);
                }
                if !matches!(job.work, Work::Backoff(_) | Work::Terminate(_))
                    && self.fresh_next.remove(&k).unwrap_or(false)
                {
                    assert!(
                        job.state.is_none(),
                        "key {k}: a fresh handler must init again"
                    );
                }
            }
            Output::Settle { settle, settlement } => {
                let n = settle.0;
                let k = self.key_of[n];
                assert_eq!(self.status[n], Status::Pending, "message {n} settled twice");
                assert_eq!(
                    self.head(k),
                    Some(n),
                    "message {n} settled but not the head"
                );
                assert!(
                    !self.lost.contains(&self.epoch_of[n]),
                    "message {n} settled with a stale epoch"
                );
                self.status[n] = Status::Settled(*settlement);
            }
            Output::Drop { settle } => {
                let n = settle.0;
                assert_eq!(self.status[n], Status::Pending, "message {n} dropped twice");
                assert!(
                    self.lost.contains(&self.epoch_of[n]),
                    "message {n} dropped with a live epoch"
                );
                self.status[n] = Status::Dropped;
            }
            Output::Event(_) => {}
        }
    }
}

fn key_u8(key: &Key) -> u8 {
    std::str::from_utf8(key.as_bytes())
        .unwrap()
        .parse()
        .unwrap()
}

fn complete_as(job: Job<Types, u32>, fate: Fate) -> (Completion<Types>, bool) {
    let fresh = job.state.is_none();
    let fail = |kind| Failure {
        kind,
        detail: "x".into(),
    };
    match job.work {
        Work::Message { message, .. } => {
            let (state, result, ends) = match fate {
                Fate::InitFail if fresh => (None, Err(fail(FailureKind::Init)), false),
                Fate::Error | Fate::InitFail => (None, Err(fail(FailureKind::Error)), true),
                Fate::Panic => (None, Err(fail(FailureKind::Panic)), true),
                Fate::Ack => (Some(7), Ok(Outcome::ack()), false),
                Fate::AckContinue => (Some(7), Ok(Outcome::ack().and_continue(1)), false),
                Fate::Discard => (Some(7), Ok(Outcome::discard("no")), false),
                Fate::StopAck => (Some(7), Ok(Outcome::stop("s", StopAction::Ack)), true),
                Fate::StopDiscard => (Some(7), Ok(Outcome::stop("s", StopAction::Discard)), true),
            };
            (
                Completion::Message {
                    state,
                    message,
                    result,
                },
                ends,
            )
        }
        Work::Terminate(_) => (done(None), false),
        Work::Backoff(_) => (
            Completion::Other {
                state: job.state,
                result: Ok(()),
            },
            false,
        ),
        Work::Continue(_) | Work::Extra(_) => match fate {
            Fate::InitFail if fresh => (
                Completion::Other {
                    state: None,
                    result: Err(fail(FailureKind::Init)),
                },
                false,
            ),
            Fate::Panic => (
                Completion::Other {
                    state: None,
                    result: Err(fail(FailureKind::Panic)),
                },
                true,
            ),
            _ => (
                Completion::Other {
                    state: Some(7),
                    result: Ok(()),
                },
                false,
            ),
        },
    }
}

fn run_model(ops: Vec<Op>, policy: RetryPolicy) {
    let base = Instant::now();
    let mut now = base;
    let mut t = T::new(policy);
    let mut model = Model {
        key_of: vec![],
        epoch_of: vec![],
        status: vec![],
        per_key: HashMap::new(),
        lost: vec![],
        fresh_next: HashMap::new(),
        fed: HashMap::new(),
        stale: HashSet::new(),
    };
    let mut epoch = 1_u64;
    let mut running: Vec<Job<Types, u32>> = vec![];
    let pump = |t: &mut T, model: &mut Model, running: &mut Vec<Job<Types, u32>>| {
        while let Some(o) = t.poll_output() {
            model.check_output(&o, running);
            if let Output::Start(job) = o {
                running.push(job);
            }
        }
    };
    let apply = |op: Op,
                 t: &mut T,
                 model: &mut Model,
                 running: &mut Vec<Job<Types, u32>>,
                 epoch: &mut u64,
                 now: &mut Instant| {
        match op {
            Op::Deliver(k, stale) => {
                let e = if stale && *epoch > 1 {
                    *epoch - 1
                } else {
                    *epoch
                };
                let n = model.status.len();
                model.key_of.push(k);
                model.epoch_of.push(e);
                model.status.push(Status::Pending);
                if !model.lost.contains(&e) {
                    model.per_key.entry(k).or_default().push(n);
                    model.fed.insert(k, e);
                }
                t.deliver(delivery(k, n, e), *now);
            }
            Op::Complete(i, fate) => {
                if running.is_empty() {
                    return;
                }
                let job = running.remove(i % running.len());
                let key = job.key.clone();
                let (completion, ends) = complete_as(job, fate);
                if ends {
                    model.fresh_next.insert(key_u8(&key), true);
                }
                t.complete(&key, completion, *now);
            }
            Op::LoseEpoch => {
                model.lost.push(*epoch);
                let fed: Vec<u8> = model
                    .fed
                    .iter()
                    .filter(|(_, e)| **e == *epoch)
                    .map(|(k, _)| *k)
                    .collect();
                model.stale.extend(fed);
                t.epoch_lost(Epoch::new(*epoch), *now);
                *epoch += 1;
            }
            Op::Signal(k) => t.signal(Key::from(u64::from(k)), 0, *now),
            Op::Resume(k) => {
                t.resume(&Key::from(u64::from(k)), *now);
            }
            Op::Evict(secs) => {
                *now += Duration::from_secs(u64::from(secs));
                t.evict_idle(*now, Duration::from_secs(10));
            }
        }
    };
    // The parked count is kept incrementally; it must always equal a recount.
    let recount = |t: &T| t.slots.values().map(Slot::parked_len).sum::<usize>();
    for op in ops {
        let shown = format!("{op:?}");
        apply(op, &mut t, &mut model, &mut running, &mut epoch, &mut now);
        pump(&mut t, &mut model, &mut running);
        assert_eq!(t.parked(), recount(&t), "after {shown}");
    }
    // Drain: everything succeeds from now on; parked keys are resumed.
    for _ in 0..100_000 {
        if running.is_empty() {
            let parked: Vec<u8> = model
                .per_key
                .keys()
                .copied()
                .filter(|&k| model.head(k).is_some())
                .collect();
            if parked.is_empty() {
                break;
            }
            for k in parked {
                t.resume(&Key::from(u64::from(k)), now);
            }
            pump(&mut t, &mut model, &mut running);
            assert!(
                !running.is_empty(),
                "pending messages but nothing can run: {:?}",
                t
            );
            continue;
        }
        apply(
            Op::Complete(0, Fate::Ack),
            &mut t,
            &mut model,
            &mut running,
            &mut epoch,
            &mut now,
        );
        pump(&mut t, &mut model, &mut running);
    }
    for (n, s) in model.status.iter().enumerate() {
        assert_ne!(
            *s,
            Status::Pending,
            "message {n} was neither settled nor dropped"
        );
    }
    assert!(t.is_quiet());
    assert_eq!(t.parked(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn per_key_order_and_settle_rules_hold(
        ops in prop::collection::vec(op(6), 1..300),
        max_attempts in 1_u32..4,
        park in any::<bool>(),
    ) {
        let policy = RetryPolicy {
            max_attempts,
            on_poison: if park { PoisonAction::StopKey } else { PoisonAction::Discard },
            ..RetryPolicy::default()
        };
        run_model(ops, policy);
    }
}
