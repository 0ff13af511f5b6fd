//! One list of scenarios, run twice: against the in-process emulator (`emulator_…`, plain
//! `cargo test`) and against a real Apache Pulsar (`live_…`, ignored unless asked for:
//! `cargo xtask integration` starts a standalone broker and sets `PULSAR_WS_URL`). A scenario
//! sees the server only through the client and what both servers can answer — a
//! subscription's backlog, terminating a topic, a proxy that cuts connections — so a
//! difference between the emulator and the broker shows up as one of the pair failing.
//! Differences that are known and kept are written down in `crates/testkit/README.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use headwaters_pulsar_ws::{
    ClientConfig, Consumer, ConsumerOptions, ConsumerParams, Error, Message, MessageId,
    OutgoingMessage, Producer, ProducerOptions, ProducerParams, Reader, ReaderOptions,
    ReaderParams, ReaderStart, SendErrorCode, SubscriptionType, Topic,
};
use headwaters_testkit::proxy::FaultProxy;
use headwaters_testkit::pulsar::admin::{PulsarAdmin, SubscriptionStats};
use headwaters_testkit::pulsar::{EmulatorConfig, PulsarEmulator};
use tokio::time::timeout;

/// Long enough for a real broker on a loaded two-core machine.
const WAIT: Duration = Duration::from_secs(20);

/// The server a scenario runs against.
enum Server {
    Emulator(PulsarEmulator),
    Broker { admin: PulsarAdmin },
}

struct Target {
    server: Server,
    /// The server's WebSocket URL.
    url: String,
    /// The token the server wants (both servers here want one: the emulator is started
    /// with one, and `cargo xtask integration` starts the broker with JWT authentication).
    token: Option<String>,
    config: ClientConfig,
    /// Makes topic names unique: a real broker keeps the topics of earlier runs.
    run: String,
}

impl Target {
    async fn emulator() -> Self {
        const TOKEN: &str = "differential-token";
        let e = PulsarEmulator::start_with(
            EmulatorConfig::default().with_token(TOKEN),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let url = e.url();
        Self::new(Server::Emulator(e), url, Some(TOKEN.to_owned()))
    }

    /// The broker at `PULSAR_WS_URL` (admin API at `PULSAR_ADMIN_URL`, else beside it; a
    /// token from `PULSAR_TOKEN`).
    fn broker() -> Self {
        let url = std::env::var("PULSAR_WS_URL")
            .expect("PULSAR_WS_URL must name a real Pulsar (cargo xtask integration starts one)");
        let token = std::env::var("PULSAR_TOKEN").ok();
        let admin = match std::env::var("PULSAR_ADMIN_URL") {
            Ok(admin) => PulsarAdmin::new(&admin, token.clone()),
            Err(_) => PulsarAdmin::beside(&url, token.clone()),
        }
        .unwrap();
        Self::new(Server::Broker { admin }, url, token)
    }

    fn new(server: Server, url: String, token: Option<String>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let mut target = Self {
            server,
            config: ClientConfig::new(&url).unwrap(),
            url,
            token,
            run: format!("{}-{nanos}", std::process::id()),
        };
        target.config = target.config_for(&target.url);
        target
    }

    /// A client configuration for `url` (the server, or a proxy in front of it) with the
    /// server's token and a short backoff.
    fn config_for(&self, url: &str) -> ClientConfig {
        let config = ClientConfig::new(url)
            .unwrap()
            .with_backoff(Duration::from_millis(20), Duration::from_millis(500));
        match &self.token {
            Some(token) => config.with_token(token.clone()),
            None => config,
        }
    }

    fn topic(&self, name: &str) -> Topic {
        Topic::persistent("public", "default", &format!("{name}-{}", self.run)).unwrap()
    }

    async fn producer(&self, topic: &Topic) -> Producer {
        Producer::connect(&self.config, topic.clone(), ProducerOptions::default())
            .await
            .unwrap()
    }

    async fn subscribe(&self, topic: &Topic, sub: &str, params: ConsumerParams) -> Consumer {
        Consumer::subscribe(
            &self.config,
            topic.clone(),
            sub,
            ConsumerOptions::default().with_params(params),
        )
        .await
        .unwrap()
    }

    /// The subscription as the server sees it; `None` when it does not exist.
    async fn stats(&self, topic: &Topic, sub: &str) -> Option<SubscriptionStats> {
        match &self.server {
            Server::Emulator(e) => e.subscription(&topic.to_string(), sub),
            Server::Broker { admin, .. } => {
                admin.subscription(&topic.to_string(), sub).await.unwrap()
            }
        }
    }

    /// Poll the subscription's stats until `check` holds (the broker's stats lag a little).
    async fn until(
        &self,
        what: &str,
        topic: &Topic,
        sub: &str,
        check: impl Fn(Option<SubscriptionStats>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.stats(topic, sub).await;
            if check(now) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what} (last seen {now:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn terminate(&self, topic: &Topic) {
        match &self.server {
            Server::Emulator(e) => e.terminate_topic(&topic.to_string()),
            Server::Broker { admin, .. } => admin.terminate(&topic.to_string()).await.unwrap(),
        }
    }

    /// Where the server listens, for a proxy in front of it.
    async fn addr(&self) -> SocketAddr {
        match &self.server {
            Server::Emulator(e) => e.addr(),
            Server::Broker { .. } => {
                let host_port = self.url.trim_start_matches("ws://").trim_end_matches('/');
                tokio::net::lookup_host(host_port)
                    .await
                    .unwrap()
                    .next()
                    .unwrap()
            }
        }
    }
}

fn params(kind: SubscriptionType) -> ConsumerParams {
    let mut p = ConsumerParams::default();
    p.subscription_type = Some(kind);
    p
}

async fn next(
    stream: &mut (impl futures_util::Stream<Item = Result<Message, Error>> + Unpin),
) -> Message {
    timeout(WAIT, stream.next())
        .await
        .expect("a message in time")
        .expect("open stream")
        .expect("a good message")
}

/// Nothing arrives within `quiet` (an absence check, not a timer wait).
async fn nothing_more(
    stream: &mut (impl futures_util::Stream<Item = Result<Message, Error>> + Unpin),
    quiet: Duration,
) -> bool {
    timeout(quiet, stream.next()).await.is_err()
}

fn text(m: &Message) -> String {
    String::from_utf8(m.payload.to_vec()).unwrap()
}

/// `emulator_NAME` and `live_NAME` for each scenario.
macro_rules! differential {
    ($($name:ident),* $(,)?) => {
        mod emulator {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Target::emulator().await).await;
                }
            )*
        }
        mod live {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs a real Pulsar: cargo xtask integration (or set PULSAR_WS_URL)"]
                async fn $name() {
                    super::$name(&super::Target::broker()).await;
                }
            )*
        }
    };
}

differential!(
    round_trip_keeps_key_properties_event_time_and_id,
    pipelined_receipts_are_distinct_and_arrive_in_order,
    exclusive_refuses_a_second_consumer_and_failover_takes_over,
    key_shared_keeps_each_key_on_one_consumer_in_order,
    nacks_redeliver_with_counts_then_the_dead_letter_topic,
    pull_permits_bound_what_arrives_and_push_stalls_without_acks,
    readers_start_where_asked,
    terminated_topic_is_the_end_and_refuses_sends,
    unsubscribe_deletes_the_subscription,
    a_dropped_connection_mid_stream_loses_nothing,
    tokens_are_checked_on_every_endpoint,
    refusals_carry_the_servers_statuses,
);

async fn round_trip_keeps_key_properties_event_time_and_id(t: &Target) {
    let topic = t.topic("rt");
    let mut consumer = t.subscribe(&topic, "s", ConsumerParams::default()).await;
    let producer = t.producer(&topic).await;
    let event_time = headwaters_ordering_core::Timestamp::from_millis(1_700_000_000_123);
    let id = producer
        .send(
            OutgoingMessage::new(vec![0u8, 159, 146, 150])
                .with_key("user-1")
                .with_property("origin", "test")
                .with_property(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .with_event_time(event_time),
        )
        .await
        .unwrap();
    let m = next(&mut consumer).await;
    assert_eq!(m.message_id, id, "the receipt's id is the delivered id");
    assert_eq!(&m.payload[..], &[0u8, 159, 146, 150]);
    assert_eq!(m.key.as_deref(), Some("user-1"));
    assert_eq!(m.properties["origin"], "test");
    assert_eq!(
        m.properties["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(m.event_time.unwrap().timestamp, event_time);
    assert_eq!(m.redelivery_count, 0);
    assert_eq!(m.topic.name(), topic.name());
    m.ack();
    t.until("the ack is stored", &topic, "s", |s| {
        s.is_some_and(|s| s.backlog == 0)
    })
    .await;
}

async fn pipelined_receipts_are_distinct_and_arrive_in_order(t: &Target) {
    let topic = t.topic("pipe");
    let mut consumer = t.subscribe(&topic, "s", ConsumerParams::default()).await;
    let producer = Producer::connect(
        &t.config,
        topic.clone(),
        ProducerOptions::default().with_max_in_flight(50),
    )
    .await
    .unwrap();
    let mut receipts = Vec::new();
    for i in 0..500 {
        receipts.push(producer.enqueue(format!("{i}")).await.unwrap());
        assert!(producer.in_flight() <= 50);
    }
    let mut ids = Vec::new();
    for r in receipts {
        ids.push(timeout(WAIT, r).await.expect("receipt in time").unwrap());
    }
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        500,
        "distinct ids"
    );
    for (i, id) in ids.iter().enumerate() {
        let m = next(&mut consumer).await;
        assert_eq!(text(&m), i.to_string(), "publish order");
        assert_eq!(&m.message_id, id, "the receipt of message {i}");
        m.ack();
    }
    t.until("all acked", &topic, "s", |s| {
        s.is_some_and(|s| s.backlog == 0)
    })
    .await;
}

async fn exclusive_refuses_a_second_consumer_and_failover_takes_over(t: &Target) {
    let ex = t.topic("ex");
    let _first = t.subscribe(&ex, "s", ConsumerParams::default()).await;
    let err = Consumer::subscribe(&t.config, ex.clone(), "s", ConsumerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Rejected { status: 409, .. }), "{err}");

    let fo = t.topic("fo");
    let a = t
        .subscribe(&fo, "s", params(SubscriptionType::Failover))
        .await;
    let mut b = t
        .subscribe(&fo, "s", params(SubscriptionType::Failover))
        .await;
    a.close().await;
    let producer = t.producer(&fo).await;
    producer.send("after failover").await.unwrap();
    let m = next(&mut b).await;
    assert_eq!(text(&m), "after failover");
    m.ack();
}

async fn key_shared_keeps_each_key_on_one_consumer_in_order(t: &Target) {
    let topic = t.topic("ks");
    let mut a = t
        .subscribe(&topic, "s", params(SubscriptionType::KeyShared))
        .await;
    let mut b = t
        .subscribe(&topic, "s", params(SubscriptionType::KeyShared))
        .await;
    let producer = t.producer(&topic).await;
    let mut receipts = Vec::new();
    for i in 0..400 {
        receipts.push(
            producer
                .enqueue((format!("k{}", i % 20), format!("{i}")))
                .await
                .unwrap(),
        );
    }
    for r in receipts {
        r.await.unwrap();
    }
    let mut seen: [Vec<Message>; 2] = [Vec::new(), Vec::new()];
    while seen[0].len() + seen[1].len() < 400 {
        tokio::select! {
            Some(Ok(m)) = a.next() => { m.ack(); seen[0].push(m) }
            Some(Ok(m)) = b.next() => { m.ack(); seen[1].push(m) }
            () = tokio::time::sleep(WAIT) => panic!("stalled at {}", seen[0].len() + seen[1].len()),
        }
    }
    let keys = |v: &Vec<Message>| {
        v.iter()
            .map(|m| m.key.clone().unwrap())
            .collect::<BTreeSet<_>>()
    };
    assert!(
        !seen[0].is_empty() && !seen[1].is_empty(),
        "both consumers got keys"
    );
    assert!(
        keys(&seen[0]).is_disjoint(&keys(&seen[1])),
        "a key on both consumers"
    );
    for side in &seen {
        let mut last: HashMap<String, u32> = HashMap::new();
        for m in side {
            let n: u32 = text(m).parse().unwrap();
            let prev = last.insert(m.key.clone().unwrap(), n);
            assert!(prev.is_none_or(|p| p < n), "per-key order broken");
        }
    }
}

async fn nacks_redeliver_with_counts_then_the_dead_letter_topic(t: &Target) {
    let topic = t.topic("nack");
    let mut p = params(SubscriptionType::Shared);
    p.negative_ack_redelivery_delay = Some(Duration::from_millis(100));
    p.max_redeliver_count = Some(2);
    let mut consumer = t.subscribe(&topic, "s", p).await;
    let dlq = topic.dead_letter_topic("s");
    let mut dead = t
        .subscribe(&dlq, "dlq", params(SubscriptionType::Shared))
        .await;
    let producer = t.producer(&topic).await;
    producer.send("poison").await.unwrap();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let m = next(&mut consumer).await;
        assert_eq!(text(&m), "poison");
        counts.push(m.redelivery_count);
        m.nack();
    }
    assert_eq!(
        counts,
        [0, 1, 2],
        "redelivery counts up to maxRedeliverCount"
    );
    let d = next(&mut dead).await;
    assert_eq!(text(&d), "poison");
    assert_eq!(d.properties["REAL_TOPIC"], topic.to_string());
    d.ack();
    assert!(
        nothing_more(&mut consumer, Duration::from_millis(500)).await,
        "no fourth delivery after the dead-letter topic took it"
    );
    t.until("nothing left", &topic, "s", |s| {
        s.is_some_and(|s| s.backlog == 0)
    })
    .await;

    // Exclusive (and Failover): the message comes back, but only the shared subscriptions
    // count redeliveries, so the count stays 0 and nothing is dead-lettered.
    let topic = t.topic("nack-ex");
    let mut p = ConsumerParams::default();
    p.negative_ack_redelivery_delay = Some(Duration::from_millis(100));
    p.max_redeliver_count = Some(1);
    let mut consumer = t.subscribe(&topic, "s", p).await;
    t.producer(&topic).await.send("again").await.unwrap();
    for _ in 0..3 {
        let m = next(&mut consumer).await;
        assert_eq!(text(&m), "again");
        assert_eq!(
            m.redelivery_count, 0,
            "Exclusive redeliveries are not counted"
        );
        m.nack();
    }
    next(&mut consumer).await.ack();
}

async fn pull_permits_bound_what_arrives_and_push_stalls_without_acks(t: &Target) {
    let topic = t.topic("pull");
    let mut p = ConsumerParams::default();
    p.receiver_queue_size = Some(10);
    let mut pull = t.subscribe(&topic, "pull", p.clone()).await;
    let producer = t.producer(&topic).await;
    for i in 0..100 {
        let _receipt = producer.enqueue(format!("{i}")).await.unwrap();
    }
    producer.send("100").await.unwrap();
    for i in 0..101 {
        let m = next(&mut pull).await;
        assert_eq!(text(&m), i.to_string());
        m.ack();
        assert!(
            pull.handle().in_flight() <= 10,
            "more than receiverQueueSize permits outstanding"
        );
    }
    t.until("all acked", &topic, "pull", |s| {
        s.is_some_and(|s| s.backlog == 0)
    })
    .await;

    p.pull_mode = Some(false);
    p.receiver_queue_size = Some(5);
    let topic = t.topic("push");
    let mut push = t.subscribe(&topic, "push", p).await;
    let producer = t.producer(&topic).await;
    for i in 0..10 {
        producer.send(format!("{i}")).await.unwrap();
    }
    let mut held = Vec::new();
    for i in 0..5 {
        let m = next(&mut push).await;
        assert_eq!(text(&m), i.to_string());
        held.push(m);
    }
    assert!(
        nothing_more(&mut push, Duration::from_millis(500)).await,
        "push mode must stall at receiverQueueSize without acks"
    );
    held.remove(0).ack();
    assert_eq!(text(&next(&mut push).await), "5");
}

async fn readers_start_where_asked(t: &Target) {
    let topic = t.topic("rd");
    let producer = t.producer(&topic).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(producer.send(format!("{i}")).await.unwrap());
    }
    let open = |start| {
        let mut p = ReaderParams::default();
        p.start = Some(start);
        p.receiver_queue_size = Some(2);
        Reader::open(
            &t.config,
            topic.clone(),
            ReaderOptions::default().with_params(p),
        )
    };
    let mut earliest = open(ReaderStart::Earliest).await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let m = next(&mut earliest).await;
        assert_eq!(text(&m), i.to_string());
        assert_eq!(&m.message_id, id);
    }
    let mut after = open(ReaderStart::At(ids[2].clone())).await.unwrap();
    assert_eq!(
        text(&next(&mut after).await),
        "3",
        "the start id is exclusive"
    );
    let mut latest = open(ReaderStart::Latest).await.unwrap();
    assert!(
        nothing_more(&mut latest, Duration::from_millis(300)).await,
        "a reader from latest sees nothing already stored"
    );
    producer.send("5").await.unwrap();
    assert_eq!(text(&next(&mut latest).await), "5");
}

async fn terminated_topic_is_the_end_and_refuses_sends(t: &Target) {
    let topic = t.topic("end");
    let producer = t.producer(&topic).await;
    producer.send("only").await.unwrap();
    let mut p = ReaderParams::default();
    p.start = Some(ReaderStart::Earliest);
    let mut reader = Reader::open(
        &t.config,
        topic.clone(),
        ReaderOptions::default().with_params(p),
    )
    .await
    .unwrap();
    assert_eq!(text(&next(&mut reader).await), "only");
    assert!(!reader.is_end_of_topic().await.unwrap());
    t.terminate(&topic).await;
    // The broker tells the reader's consumer that it reached the end a moment after the
    // termination (`CommandReachedEndOfTopic`); the emulator knows it at once.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !reader.is_end_of_topic().await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never at the end of the terminated topic"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = producer.send("too late").await.unwrap_err();
    assert!(
        matches!(&err, Error::Send(f) if f.code == SendErrorCode::Broker),
        "{err}"
    );
}

async fn unsubscribe_deletes_the_subscription(t: &Target) {
    let topic = t.topic("un");
    let c = t.subscribe(&topic, "gone", ConsumerParams::default()).await;
    t.until("the subscription exists", &topic, "gone", |s| {
        s.is_some_and(|s| s.backlog == 0)
    })
    .await;
    c.unsubscribe().await.unwrap();
    t.until("the subscription is deleted", &topic, "gone", |s| {
        s.is_none()
    })
    .await;
}

async fn a_dropped_connection_mid_stream_loses_nothing(t: &Target) {
    let proxy = FaultProxy::start(t.addr().await).await.unwrap();
    let config = t.config_for(&format!("ws://{}", proxy.addr()));
    let topic = t.topic("drop");
    let mut consumer = Consumer::subscribe(&config, topic.clone(), "s", ConsumerOptions::default())
        .await
        .unwrap();
    let producer = Producer::connect(&config, topic.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let mut receipts = Vec::new();
    let mut got = BTreeMap::new();
    for i in 0..1000u32 {
        if i == 500 {
            proxy.cut();
        }
        receipts.push(producer.enqueue(format!("{i}")).await.unwrap());
        // Read as we go, so the cut finds messages on the way to the consumer too.
        if i % 4 == 0 {
            let m = next(&mut consumer).await;
            *got.entry(text(&m).parse::<u32>().unwrap()).or_insert(0) += 1;
            m.ack();
        }
    }
    for r in receipts {
        timeout(WAIT, r).await.expect("receipt in time").unwrap();
    }
    while got.len() < 1000 {
        let m = next(&mut consumer).await;
        *got.entry(text(&m).parse::<u32>().unwrap()).or_insert(0) += 1;
        m.ack();
    }
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (0..1000).collect::<Vec<_>>()
    );
    assert!(
        consumer.handle().reconnects() >= 1,
        "the consumer reconnected"
    );
    assert!(
        proxy.accepted() >= 4,
        "both clients connected again through the proxy"
    );
}

async fn tokens_are_checked_on_every_endpoint(t: &Target) {
    let token = t.token.clone().expect(
        "this scenario needs a server that wants a token: set PULSAR_TOKEN for the broker at PULSAR_WS_URL",
    );
    let topic = t.topic("auth");
    let anonymous = ClientConfig::new(&t.url).unwrap();
    // A signature that does not match: what a token of another key, or a tampered one, is.
    let forged = ClientConfig::new(&t.url)
        .unwrap()
        .with_token(format!("{token}x"));
    for (who, config) in [("no token", &anonymous), ("a forged token", &forged)] {
        let producer = Producer::connect(config, topic.clone(), ProducerOptions::default()).await;
        let consumer =
            Consumer::subscribe(config, topic.clone(), "s", ConsumerOptions::default()).await;
        let mut p = ReaderParams::default();
        p.start = Some(ReaderStart::Earliest);
        let reader = Reader::open(
            config,
            topic.clone(),
            ReaderOptions::default().with_params(p),
        )
        .await;
        for (endpoint, err) in [
            ("producer", producer.err()),
            ("consumer", consumer.err()),
            ("reader", reader.err()),
        ] {
            let err = err.unwrap_or_else(|| panic!("the {endpoint} was let in with {who}"));
            assert!(
                matches!(err, Error::Rejected { status: 401, .. }) && err.is_auth(),
                "the {endpoint} with {who}: {err}"
            );
            assert!(!err.is_transient(), "a refused token is not retried: {err}");
        }
    }
    let producer = t.producer(&topic).await;
    producer.send("with the token").await.unwrap();
}

async fn refusals_carry_the_servers_statuses(t: &Target) {
    let topic = t.topic("refused");
    // A parameter the server does not know how to read: 400.
    let err = headwaters_pulsar_ws::produce_with(
        &t.config,
        topic.clone(),
        "messageRoutingMode=Bogus".to_owned(),
        ["x"],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Rejected { status: 400, .. }), "{err}");
    assert!(!err.is_transient(), "{err}");
    // A producer name already connected: 409.
    let mut params = ProducerParams::default();
    params.producer_name = Some("only-one".to_owned());
    let named = || {
        Producer::connect(
            &t.config,
            topic.clone(),
            ProducerOptions::default().with_params(params.clone()),
        )
    };
    let first = named().await.unwrap();
    let err = named().await.unwrap_err();
    assert!(matches!(err, Error::Rejected { status: 409, .. }), "{err}");
    first.close().await;
    // A reader start that is no message id: 400 from Pulsar 4's query check (older brokers
    // answered 500 from the reader handler).
    let mut p = ReaderParams::default();
    p.start = Some(ReaderStart::At(MessageId::from_bytes(&[0xfb, 0xff])));
    let err = Reader::open(
        &t.config,
        topic.clone(),
        ReaderOptions::default().with_params(p),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Rejected { status: 400, .. }), "{err}");
}
