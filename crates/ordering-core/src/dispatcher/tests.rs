//! Driver tests: the dispatcher with real handler futures on a tokio runtime.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::handler::{Outcome, StopAction};
use crate::message::Message;
use crate::message::Timestamp;
use crate::settle::NoSettle;
use crate::tracker::PoisonAction;

/// Records, per key, the message ids it processed; fails as the payload says.
#[derive(Default)]
struct Recorder {
    seen: Mutex<HashMap<Key, Vec<u64>>>,
    inits: AtomicUsize,
    terminated: Mutex<Vec<(Key, TerminateReason)>>,
}

impl Handler for Arc<Recorder> {
    type State = Key;
    type Continue = ();
    type Signal = &'static str;
    type Reply = usize;
    type Error = String;

    async fn init(&self, key: &Key) -> Result<Key, String> {
        self.inits.fetch_add(1, Relaxed);
        if key.as_bytes() == b"bad-init" {
            return Err("cannot init".into());
        }
        Ok(key.clone())
    }

    async fn handle_message(&self, m: &Message, key: &mut Key) -> Result<Outcome, String> {
        let id: u64 = m.message_id.parse().map_err(|e| format!("{e}"))?;
        let delay = m.payload.first().copied().unwrap_or(0);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(u64::from(delay) * 10)).await;
        }
        self.seen
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .push(id);
        match m.headers.get("fate").and_then(|v| v.as_str()) {
            Some("panic") => panic!("handler panic on {id}"),
            Some("error") => Err(format!("error on {id}")),
            Some("discard") => Ok(Outcome::discard("unwanted")),
            Some("stop") => Ok(Outcome::stop("enough", StopAction::Ack)),
            _ => Ok(Outcome::ack()),
        }
    }

    async fn handle_signal(&self, signal: &'static str, key: &mut Key) -> usize {
        if signal == "panic" {
            panic!("signal panic");
        }
        self.seen.lock().unwrap().get(key).map_or(0, Vec::len)
    }

    async fn terminate(&self, reason: TerminateReason, key: Key) {
        self.terminated.lock().unwrap().push((key, reason));
    }
}

type Settled = Arc<Mutex<Vec<(u64, Settlement)>>>;

fn msg(id: u64, delay: u8, fate: Option<&str>) -> Message {
    let mut m = Message::new(
        vec![delay],
        id.to_string(),
        Timestamp::from_micros(id as i64),
    );
    if let Some(f) = fate {
        m.headers.insert("fate", f);
    }
    m
}

fn recording(id: u64, log: &Settled) -> impl Settle + use<> {
    let log = Arc::clone(log);
    move |s: Settlement| log.lock().unwrap().push((id, s))
}

fn config() -> Config {
    Config {
        lanes: 2,
        max_in_flight: 64,
        retry: RetryPolicy {
            max_attempts: 3,
            on_poison: PoisonAction::Discard,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
        },
        ..Config::default()
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_in_order_with_failures() {
    let rec = Arc::new(Recorder::default());
    let d = Dispatcher::new(Arc::clone(&rec), config()).unwrap();
    let settled: Settled = Arc::default();
    let epoch = d.new_epoch();
    let mut expected: HashMap<Key, Vec<u64>> = HashMap::new();
    let total = 3_000_u64;
    for id in 0..total {
        let key = Key::from(id * 7919 % 50);
        // One message in 100 panics once... as a fresh handler retries it, it panics again
        // and is poisoned after three attempts: it must be discarded, in place.
        let fate = match id % 100 {
            13 => Some("panic"),
            42 => Some("discard"),
            77 => Some("stop"),
            _ => None,
        };
        let attempts = if fate == Some("panic") { 3 } else { 1 };
        for _ in 0..attempts {
            expected.entry(key.clone()).or_default().push(id);
        }
        let delivery = Delivery {
            key,
            message: msg(id, (id % 5) as u8, fate),
            settle: recording(id, &settled),
            epoch,
        };
        d.dispatch(delivery).await.unwrap();
    }
    wait_for("all settled", || {
        settled.lock().unwrap().len() == total as usize
    })
    .await;
    assert_eq!(
        *rec.seen.lock().unwrap(),
        expected,
        "per-key order, retries in place"
    );
    let settled = settled.lock().unwrap().clone();
    let mut by_id: HashMap<u64, Settlement> = HashMap::new();
    for (id, s) in settled {
        assert!(by_id.insert(id, s).is_none(), "message {id} settled twice");
    }
    for id in 0..total {
        let want = match id % 100 {
            13 | 42 => Settlement::Reject { requeue: false },
            _ => Settlement::Ack,
        };
        assert_eq!(by_id[&id], want, "settlement of {id}");
    }
    let m = d.metrics();
    assert_eq!(m.in_flight, 0);
    assert_eq!(m.poisoned, 30);
    assert_eq!(m.retried, 60);
    assert_eq!(m.acked + m.discarded, total);
    let report = d.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    assert_eq!(report.abandoned, 0);
    let terminated = rec.terminated.lock().unwrap();
    assert!(
        terminated
            .iter()
            .any(|(_, r)| matches!(r, TerminateReason::Stopped(s) if s == "enough"))
    );
    assert!(
        terminated
            .iter()
            .any(|(_, r)| *r == TerminateReason::Shutdown)
    );
}

#[tokio::test]
async fn in_flight_limit_applies_backpressure() {
    struct Blocked(Arc<tokio::sync::Notify>);
    impl Handler for Blocked {
        type State = ();
        type Continue = ();
        type Signal = ();
        type Reply = ();
        type Error = String;
        async fn init(&self, _: &Key) -> Result<(), String> {
            Ok(())
        }
        async fn handle_message(&self, _: &Message, _: &mut ()) -> Result<Outcome, String> {
            self.0.notified().await;
            Ok(Outcome::ack())
        }
        async fn handle_signal(&self, _: (), _: &mut ()) {}
    }
    let gate = Arc::new(tokio::sync::Notify::new());
    let cfg = Config {
        max_in_flight: 2,
        ..config()
    };
    let d = Dispatcher::new(Blocked(Arc::clone(&gate)), cfg).unwrap();
    let epoch = d.new_epoch();
    let delivery = move |id: u64| Delivery {
        key: Key::from(id),
        message: msg(id, 0, None),
        settle: NoSettle,
        epoch,
    };
    d.try_dispatch(delivery(1)).unwrap();
    d.try_dispatch(delivery(2)).unwrap();
    let full = d.try_dispatch(delivery(3)).unwrap_err();
    assert!(matches!(full, TryDispatchError::Full(_)));
    assert_eq!(
        full.into_delivery().message.message_id,
        "3",
        "nothing is lost"
    );
    assert_eq!(d.metrics().in_flight, 2);
    let waiting = tokio::spawn({
        let d = d.clone();
        async move { d.dispatch(delivery(3)).await.is_ok() }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !waiting.is_finished(),
        "dispatch waits while the limit is reached"
    );
    gate.notify_waiters();
    assert!(waiting.await.unwrap());
    gate.notify_waiters();
    wait_for("acks", || d.metrics().acked >= 2).await;
    gate.notify_one();
    wait_for("all acked", || d.metrics().acked == 3).await;
}

#[tokio::test]
async fn lost_epoch_is_never_settled_and_its_queue_is_dropped() {
    let rec = Arc::new(Recorder::default());
    let d = Dispatcher::new(Arc::clone(&rec), config()).unwrap();
    let settled: Settled = Arc::default();
    let old = d.new_epoch();
    let new = d.new_epoch();
    // The head sleeps long enough for the epoch to be lost while it runs.
    for (id, delay, epoch) in [(1, 255, old), (2, 0, old), (3, 0, new)] {
        let delivery = Delivery {
            key: Key::from("k"),
            message: msg(id, delay, None),
            settle: recording(id, &settled),
            epoch,
        };
        d.dispatch(delivery).await.unwrap();
    }
    d.epoch_lost(old);
    wait_for("new epoch's message", || {
        !settled.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*settled.lock().unwrap(), [(3, Settlement::Ack)]);
    assert_eq!(
        rec.seen.lock().unwrap()[&Key::from("k")],
        [1, 3],
        "2 was dropped unstarted"
    );
    let m = d.metrics();
    assert_eq!((m.dropped, m.in_flight), (2, 0));
    // Late deliveries of the lost epoch are dropped too.
    let late = Delivery {
        key: Key::from("k"),
        message: msg(4, 0, None),
        settle: recording(4, &settled),
        epoch: old,
    };
    d.dispatch(late).await.unwrap();
    wait_for("drop", || d.metrics().dropped == 3).await;
    assert_eq!(settled.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn run_feeds_a_source_then_shuts_down_and_returns_its_error() {
    let rec = Arc::new(Recorder::default());
    let d = Dispatcher::new(Arc::clone(&rec), config()).unwrap();
    let settled: Settled = Arc::default();
    let (one, two) = (Epoch::new(1), Epoch::new(2));
    let delivery = |id, delay, epoch| {
        Ok(SourceEvent::Delivery(Delivery {
            key: Key::from("k"),
            message: msg(id, delay, None),
            settle: recording(id, &settled),
            epoch,
        }))
    };
    // 1 runs while its connection is lost; 2 never starts; 3 comes on the next connection.
    let source = futures_util::stream::iter([
        delivery(1, 255, one),
        delivery(2, 0, one),
        Ok(SourceEvent::EpochLost(one)),
        delivery(3, 0, two),
        Err("the source gave up"),
        delivery(4, 0, two),
    ]);
    let result = d.run(source, Duration::from_secs(5)).await;
    assert_eq!(result, Err("the source gave up"));
    assert_eq!(*settled.lock().unwrap(), [(3, Settlement::Ack)]);
    assert_eq!(rec.seen.lock().unwrap()[&Key::from("k")], [1, 3]);
    let report = d
        .run(
            futures_util::stream::empty::<Result<_, ()>>(),
            Duration::ZERO,
        )
        .await;
    assert_eq!(
        report.map(|r| r.abandoned),
        Ok(0),
        "a second run finds it shut down"
    );
}

/// A source that records when it is dropped.
struct Guarded<St> {
    inner: St,
    dropped: Arc<Mutex<Vec<&'static str>>>,
}

impl<St> Drop for Guarded<St> {
    fn drop(&mut self) {
        self.dropped.lock().unwrap().push("source dropped");
    }
}

impl<St: futures_util::Stream + Unpin> futures_util::Stream for Guarded<St> {
    type Item = St::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<St::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

#[tokio::test]
async fn a_started_dispatcher_shuts_down_with_its_source_open_until_the_handlers_are_done() {
    let rec = Arc::new(Recorder::default());
    let d = Dispatcher::new(Arc::clone(&rec), config()).unwrap();
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let settled: Settled = Arc::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let source = Guarded {
        inner: tokio_stream_from(rx),
        dropped: Arc::clone(&log),
    };
    let running = d.start::<_, ()>(source);
    let settle_log = Arc::clone(&log);
    let settle = {
        let settled = Arc::clone(&settled);
        move |s: Settlement| {
            settle_log.lock().unwrap().push("settled");
            settled.lock().unwrap().push((1, s));
        }
    };
    // A slow message (2.55 ms): the shutdown comes while it runs.
    tx.send(Ok(SourceEvent::Delivery(Delivery {
        key: Key::from("k"),
        message: msg(1, 255, None),
        settle,
        epoch: Epoch::new(1),
    })))
    .unwrap();
    wait_for("the message started", || {
        running.dispatcher().metrics().in_flight == 1
    })
    .await;
    assert!(!running.is_finished());
    let report = running.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!((report.abandoned, report.drained), (0, true));
    assert_eq!(*settled.lock().unwrap(), [(1, Settlement::Ack)]);
    assert_eq!(*log.lock().unwrap(), ["settled", "source dropped"]);
    assert!(tx.is_closed(), "the source is closed after the shutdown");
}

#[tokio::test]
async fn dropping_the_handle_of_a_started_dispatcher_shuts_it_down() {
    let rec = Arc::new(Recorder::default());
    let d = Dispatcher::new(Arc::clone(&rec), config()).unwrap();
    let (tx, rx) = mpsc::unbounded_channel::<Result<SourceEvent<NoSettle>, ()>>();
    drop(d.start(tokio_stream_from(rx)));
    wait_for("the source closed", || tx.is_closed()).await;
    assert!(
        d.dispatch(keyed("k", 1, Epoch::new(1))).await.is_err(),
        "the dispatcher is shut down"
    );
}

#[tokio::test]
async fn a_started_dispatcher_ends_with_its_source_and_returns_its_error() {
    let rec = Arc::new(Recorder::default());
    let d = Dispatcher::new(Arc::clone(&rec), config()).unwrap();
    let source = futures_util::stream::iter([Err::<SourceEvent<NoSettle>, _>("gave up")]);
    assert_eq!(d.start(source).wait().await, Err("gave up"));
}

fn tokio_stream_from<T>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Unpin {
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[tokio::test]
async fn signals_reach_the_key_handler_and_report_unavailable() {
    let rec = Arc::new(Recorder::default());
    let d: Dispatcher<_, NoSettle> = Dispatcher::new(Arc::clone(&rec), config()).unwrap();
    assert_eq!(
        d.signal("fresh", "count").await,
        Ok(0),
        "starts the handler if needed"
    );
    assert_eq!(rec.inits.load(Relaxed), 1);
    assert_eq!(
        d.signal("bad-init", "count").await,
        Err(SignalError::Unavailable)
    );
    assert_eq!(
        d.signal("fresh", "panic").await,
        Err(SignalError::Unavailable)
    );
    assert_eq!(
        d.signal("fresh", "count").await,
        Ok(0),
        "a fresh handler after the panic"
    );
    d.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        d.signal("fresh", "count").await,
        Err(SignalError::Unavailable)
    );
}

#[tokio::test]
async fn shutdown_deadline_abandons_and_rejects_new_work() {
    let rec = Arc::new(Recorder::default());
    let d = Dispatcher::new(Arc::clone(&rec), config()).unwrap();
    let epoch = d.new_epoch();
    let settled: Settled = Arc::default();
    for id in 0..3 {
        let delivery = Delivery {
            key: Key::from("slow"),
            message: msg(id, 255, None),
            settle: recording(id, &settled),
            epoch,
        };
        d.dispatch(delivery).await.unwrap();
    }
    let report = d.shutdown(Duration::from_millis(1)).await;
    assert!(!report.drained);
    assert_eq!(report.abandoned as usize + settled.lock().unwrap().len(), 3);
    let again = Delivery {
        key: Key::from("slow"),
        message: msg(9, 0, None),
        settle: recording(9, &settled),
        epoch,
    };
    assert!(matches!(
        d.dispatch(again).await,
        Err(DispatchError::Closed(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted() {
    let rec = Arc::new(Recorder::default());
    let cfg = Config {
        idle_timeout: Duration::from_secs(60),
        ..config()
    };
    let d = Dispatcher::new(Arc::clone(&rec), cfg).unwrap();
    let epoch = d.new_epoch();
    let delivery = Delivery {
        key: Key::from("k"),
        message: msg(1, 0, None),
        settle: NoSettle,
        epoch,
    };
    d.dispatch(delivery).await.unwrap();
    wait_for("ack", || d.metrics().acked == 1).await;
    assert_eq!(d.metrics().live_keys, 1);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(d.metrics().live_keys, 0);
    assert_eq!(
        *rec.terminated.lock().unwrap(),
        [(Key::from("k"), TerminateReason::Idle)]
    );
}

#[tokio::test]
async fn config_is_validated() {
    let bad =
        |c: Config| Dispatcher::<Arc<Recorder>, NoSettle>::new(Arc::default(), c).unwrap_err();
    assert_eq!(
        bad(Config {
            lanes: 0,
            ..Config::default()
        }),
        ConfigError::NoLanes
    );
    assert_eq!(
        bad(Config {
            max_in_flight: 0,
            ..Config::default()
        }),
        ConfigError::InFlightLimit(0)
    );
    assert_eq!(
        bad(Config {
            idle_timeout: Duration::ZERO,
            ..Config::default()
        }),
        ConfigError::ZeroIdleTimeout
    );
}

#[test]
fn outside_a_runtime_is_an_error_not_a_panic() {
    let err =
        Dispatcher::<Arc<Recorder>, NoSettle>::new(Arc::default(), Config::default()).unwrap_err();
    assert_eq!(err, ConfigError::NoRuntime);
    assert!(err.to_string().contains("tokio runtime"));
}

/// Fails on key `poison` until healed; holds key `block` until the gate opens.
struct Flaky {
    healed: std::sync::atomic::AtomicBool,
    gate: Semaphore,
    seen: Mutex<HashMap<Key, Vec<u64>>>,
}

impl Default for Flaky {
    fn default() -> Self {
        Self {
            healed: std::sync::atomic::AtomicBool::new(false),
            gate: Semaphore::new(0),
            seen: Mutex::default(),
        }
    }
}

impl Handler for Arc<Flaky> {
    type State = ();
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, _: &Key) -> Result<(), String> {
        Ok(())
    }

    async fn handle_message(&self, m: &Message, (): &mut ()) -> Result<Outcome, String> {
        let key = Key::new(
            m.headers
                .get("key")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned(),
        );
        if key.as_bytes() == b"poison" && !self.healed.load(Relaxed) {
            return Err("poison".into());
        }
        if key.as_bytes() == b"block" {
            let _open = self.gate.acquire().await;
        }
        let id = m.message_id.parse().map_err(|e| format!("{e}"))?;
        self.seen.lock().unwrap().entry(key).or_default().push(id);
        Ok(Outcome::ack())
    }

    async fn handle_signal(&self, (): (), (): &mut ()) {}
}

fn keyed(key: &str, id: u64, epoch: Epoch) -> Delivery<NoSettle> {
    let mut message = msg(id, 0, None);
    message.headers.insert("key", key.to_owned());
    Delivery {
        key: Key::new(key.to_owned()),
        message,
        settle: NoSettle,
        epoch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_key_does_not_stall_the_others_and_resumes_in_order() {
    let flaky = Arc::new(Flaky::default());
    let max = 16;
    let config = Config {
        lanes: 2,
        retry: RetryPolicy {
            max_attempts: 1,
            on_poison: PoisonAction::StopKey,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
        },
        ..Config::default()
    }
    .with_max_in_flight(max);
    let d = Dispatcher::new(Arc::clone(&flaky), config).unwrap();
    let epoch = d.new_epoch();
    // A whole window of messages for the poison key: the first fails and parks the key.
    for id in 0..max as u64 {
        tokio::time::timeout(
            Duration::from_secs(5),
            d.dispatch(keyed("poison", id, epoch)),
        )
        .await
        .expect("dispatch blocked while filling the window")
        .unwrap();
    }
    wait_for("the key to park with its window", || {
        d.metrics().parked == max as u64
    })
    .await;
    // Ten windows' worth of other keys go through while it is parked.
    for id in 1_000..1_000 + 10 * max as u64 {
        tokio::time::timeout(
            Duration::from_secs(5),
            d.dispatch(keyed(&format!("k{}", id % 7), id, epoch)),
        )
        .await
        .expect("dispatch blocked: the parked key stalled every key")
        .unwrap();
    }
    wait_for("the other keys", || d.metrics().acked == 10 * max as u64).await;
    assert!(
        !flaky
            .seen
            .lock()
            .unwrap()
            .contains_key(&Key::from("poison"))
    );

    // Resumed through the dispatcher, the key runs its messages in order.
    flaky.healed.store(true, Relaxed);
    d.resume_key("poison");
    wait_for("the parked key's messages", || {
        flaky
            .seen
            .lock()
            .unwrap()
            .get(&Key::from("poison"))
            .is_some_and(|ids| ids.len() == max)
    })
    .await;
    assert_eq!(
        flaky.seen.lock().unwrap()[&Key::from("poison")],
        (0..max as u64).collect::<Vec<_>>()
    );
    wait_for("nothing left in flight", || {
        let m = d.metrics();
        m.parked == 0 && m.in_flight == 0
    })
    .await;

    // The budget is whole again, not larger: a window of held deliveries fills it exactly.
    for id in 0..max as u64 {
        d.try_dispatch(keyed("block", 5_000 + id, epoch))
            .unwrap_or_else(|_| panic!("permit {id} of {max} is missing"));
    }
    assert!(
        matches!(
            d.try_dispatch(keyed("block", 9_999, epoch)),
            Err(TryDispatchError::Full(_))
        ),
        "more permits than max_in_flight"
    );
    flaky.gate.add_permits(1_000);
    d.shutdown(Duration::from_secs(5)).await;
}
