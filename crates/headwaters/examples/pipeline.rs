//! The Headwaters main job: messages over many keys through the ordered dispatcher, with
//! process status recorded in SQLite, a progress bar, and a summary that checks per-key order.
//!
//! A second stage sends the same kind of stream through Pulsar's WebSocket API — the embedded
//! emulator from headwaters-testkit, with every connection dropped midway — into two ordered
//! Key_Shared consumers, and checks it the same way. A third stage moves Pulsar messages into
//! EventStore (both embedded emulators) through the batch processor, in appends of up to
//! 1,000 events, acked at Pulsar only once written, and checks every event arrived. With
//! `AMQP_URL` set, a last stage sends the stream through RabbitMQ (the Headwaters producer
//! and ordered consumer); `--wire mississippi` runs it in Elixir Mississippi's wire format
//! (keys as Erlang terms, queues by `phash2`).
//!
//! Run it with `cargo xtask demo` (or `cargo run --release -p headwaters --example pipeline --
//! --messages 1000000 --keys 10000`). Exits non-zero if any per-key order violation or lost
//! message was seen.
//!
//! Source: a synthetic broker that delivers `messages` messages round-robin over `keys` keys
//! (sequence numbers per key) and — to show at-least-once recovery — loses its connection
//! once midway: it refuses acks on the dead connection and redelivers exactly the unacked
//! messages on a new one, flagged `redelivered`, as RabbitMQ does; the dispatcher drops the
//! dead epoch's unstarted deliveries and never settles its running ones. One message in 997
//! makes the handler fail once, so the dispatcher retries it with a fresh handler. The handler
//! skips redelivered messages it already processed and counts any other out-of-order message
//! as a violation.

#[path = "support/pulsar_server.rs"]
mod pulsar_server;
#[path = "support/pulsar_to_eventstore.rs"]
mod pulsar_to_eventstore;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use headwaters::amqp::WireFormat;
use headwaters::ordering::{
    Config, Delivery, Dispatcher, Epoch, Handler, Key, Message, Outcome, RetryPolicy, Settle,
    Settlement, Timestamp,
};
use headwaters::status::{ProcessStatus, SqliteStore, WriteBehind};
use indicatif::{ProgressBar, ProgressStyle};
use pulsar_server::PulsarServer;

struct Args {
    messages: u64,
    keys: u64,
    db: Option<PathBuf>,
    /// The AMQP stage's wire format.
    wire: WireFormat,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        messages: 1_000_000,
        keys: 10_000,
        db: None,
        wire: WireFormat::Native,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--messages" => args.messages = value()?.parse().context("--messages")?,
            "--keys" => args.keys = value()?.parse().context("--keys")?,
            "--db" => args.db = Some(value()?.into()),
            "--wire" => {
                args.wire = match value()?.as_str() {
                    "native" => WireFormat::Native,
                    "mississippi" => WireFormat::Mississippi,
                    other => bail!("--wire {other:?}: native or mississippi"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "pipeline [--messages N] [--keys K] [--db status.sqlite] [--wire native|mississippi]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; try --help"),
        }
    }
    if args.keys == 0 || args.messages < args.keys {
        bail!("need --keys >= 1 and --messages >= --keys");
    }
    Ok(args)
}

/// Checks that each key's sequence numbers arrive as 1, 2, 3, … and records process status.
struct OrderChecker {
    status: ProcessStatus,
    violations: Arc<AtomicU64>,
    failed_once: Mutex<HashSet<u64>>,
    /// Counted, not violations, when the producer may resend (at-least-once): a message
    /// already processed arriving again without a redelivery flag.
    duplicates: Option<Arc<AtomicU64>>,
    /// The process-status entity of a key.
    entity: fn(&Key) -> String,
}

/// A key's bytes as its entity name.
fn key_text(key: &Key) -> String {
    key.to_string()
}

/// A Mississippi key (an Erlang term): a binary's text, else the term.
fn term_text(key: &Key) -> String {
    use headwaters::amqp::etf::{self, Term};
    match etf::decode(key.as_bytes()) {
        Ok(Term::Binary(text)) => String::from_utf8_lossy(&text).into_owned(),
        Ok(term) => format!("{term:?}"),
        Err(_) => key.to_string(),
    }
}

#[derive(Debug)]
struct InjectedFailure(u64);

impl std::fmt::Display for InjectedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "injected failure on message {}", self.0)
    }
}

fn decode(m: &Message) -> (u64, u64) {
    let mut b = [0; 8];
    b.copy_from_slice(&m.payload[..8]);
    let global = u64::from_le_bytes(b);
    b.copy_from_slice(&m.payload[8..16]);
    (global, u64::from_le_bytes(b))
}

impl Handler for OrderChecker {
    /// The last sequence number processed for the key.
    type State = (String, u64);
    type Continue = ();
    type Signal = ();
    type Reply = u64;
    type Error = InjectedFailure;

    async fn init(&self, key: &Key) -> Result<Self::State, InjectedFailure> {
        // A fresh handler resumes from the process status: it is the key's checkpoint.
        let entity = (self.entity)(key);
        let last = self.status.last_processed(&entity).map_or(0, seq_at);
        Ok((entity, last))
    }

    async fn handle_message(
        &self,
        m: &Message,
        (entity, last): &mut Self::State,
    ) -> Result<Outcome, InjectedFailure> {
        let (global, seq) = decode(m);
        if global % 997 == 0 && self.failed_once.lock().unwrap().insert(global) {
            return Err(InjectedFailure(global));
        }
        if seq <= *last && m.is_redelivery() {
            // A redelivery of something already processed (at-least-once): skip it.
            return Ok(Outcome::ack());
        }
        if let (true, Some(duplicates)) = (seq <= *last, &self.duplicates) {
            // A producer resend of something already processed: skip it.
            duplicates.fetch_add(1, Relaxed);
            return Ok(Outcome::ack());
        }
        if seq != *last + 1 {
            self.violations.fetch_add(1, Relaxed);
        }
        *last = seq;
        self.status
            .item_processed(entity, event_time(seq))
            .await
            .expect("the status writer runs until the end of the demo");
        Ok(Outcome::ack())
    }

    async fn handle_signal(&self, _: (), (_, last): &mut Self::State) -> u64 {
        *last
    }
}

/// A synthetic broker: remembers which messages were acked on which connection, refuses acks
/// on a closed connection, and redelivers exactly the unacked messages, as RabbitMQ does.
struct Broker {
    acked: Vec<AtomicBool>,
    /// Connections (epochs) that are closed; an ack on one of them is refused.
    closed: RwLock<HashSet<Epoch>>,
    acks: AtomicU64,
    refused: AtomicU64,
}

impl Broker {
    fn new(messages: u64) -> Arc<Self> {
        Arc::new(Self {
            acked: (0..messages).map(|_| AtomicBool::new(false)).collect(),
            closed: RwLock::new(HashSet::new()),
            acks: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Close a connection and return what it must redeliver, in order.
    fn close(&self, epoch: Epoch, sent: std::ops::Range<u64>) -> Vec<u64> {
        let mut closed = self.closed.write().unwrap();
        closed.insert(epoch);
        sent.filter(|&g| !self.acked[g as usize].load(Relaxed))
            .collect()
    }
}

/// The broker's settle handle for one delivery.
struct Ack {
    broker: Arc<Broker>,
    global: u64,
    epoch: Epoch,
}

impl Settle for Ack {
    fn settle(self, settlement: Settlement) {
        let closed = self.broker.closed.read().unwrap();
        if closed.contains(&self.epoch) {
            self.broker.refused.fetch_add(1, Relaxed);
        } else if settlement == Settlement::Ack {
            self.broker.acked[self.global as usize].store(true, Relaxed);
            self.broker.acks.fetch_add(1, Relaxed);
        }
    }
}

/// When the demo's events happen: a key's event `seq` at 2026-01-01T00:00:00Z plus `seq` µs.
/// The process status records, per key, the event time of the last one processed — so it
/// also tells how far the key got.
fn event_time(seq: u64) -> Timestamp {
    const START: i64 = 1_767_225_600_000_000;
    Timestamp::from_micros(START + seq as i64)
}

/// The sequence number of the event that happened at `t` (the inverse of [`event_time`];
/// 0 for a time before the first event).
fn seq_at(t: Timestamp) -> u64 {
    u64::try_from(t.as_micros() - event_time(0).as_micros()).unwrap_or(0)
}

fn message(global: u64, keys: u64, redelivered: bool) -> (Key, Message) {
    let key_no = global % keys;
    let seq = global / keys + 1;
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(&global.to_le_bytes());
    payload.extend_from_slice(&seq.to_le_bytes());
    let key = Key::from(format!("key-{key_no}"));
    let message = Message::new(payload, global.to_string(), event_time(seq))
        .with_redeliveries(u32::from(redelivered));
    (key, message)
}

/// Dispatch messages `(number, redelivered)` on one connection epoch.
async fn deliver(
    dispatcher: &Dispatcher<OrderChecker, Ack>,
    broker: &Arc<Broker>,
    keys: u64,
    epoch: Epoch,
    messages: impl Iterator<Item = (u64, bool)>,
) -> anyhow::Result<()> {
    for (global, redelivered) in messages {
        let (key, message) = message(global, keys, redelivered);
        let settle = Ack {
            broker: Arc::clone(broker),
            global,
            epoch,
        };
        dispatcher
            .dispatch(Delivery {
                key,
                message,
                settle,
                epoch,
            })
            .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| dir.path().join("status.sqlite"));
    let store = SqliteStore::open(&db)
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let status = ProcessStatus::open(store, WriteBehind::default()).await?;
    let violations = Arc::new(AtomicU64::new(0));
    let checker = OrderChecker {
        status: status.clone(),
        violations: Arc::clone(&violations),
        failed_once: Mutex::new(HashSet::new()),
        duplicates: None,
        entity: key_text,
    };
    let config = Config::default().with_retry(RetryPolicy {
        backoff_base: Duration::from_millis(1),
        ..RetryPolicy::default()
    });
    let dispatcher = Dispatcher::new(checker, config)?;
    let broker = Broker::new(args.messages);

    println!(
        "pipeline: {} messages over {} keys -> ordered dispatcher -> process status in {}",
        args.messages,
        args.keys,
        db.display()
    );
    let bar = ProgressBar::new(args.messages);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} acked  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ticker = tokio::spawn({
        let (bar, broker) = (bar.clone(), Arc::clone(&broker));
        async move {
            loop {
                bar.set_position(broker.acks.load(Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    let started = Instant::now();
    // First connection: deliver up to the middle, then the connection dies.
    let middle = args.messages / 2;
    let first = dispatcher.new_epoch();
    let fresh = |range: std::ops::Range<u64>| range.map(|g| (g, false));
    deliver(&dispatcher, &broker, args.keys, first, fresh(0..middle)).await?;
    let redeliver = broker.close(first, 0..middle);
    dispatcher.epoch_lost(first);
    // Second connection: the unacked messages come again, in order, flagged as redelivered,
    // then the rest of the stream.
    let second = dispatcher.new_epoch();
    let redelivered = redeliver.len() as u64;
    let again = redeliver.into_iter().map(|g| (g, true));
    deliver(
        &dispatcher,
        &broker,
        args.keys,
        second,
        again.chain(fresh(middle..args.messages)),
    )
    .await?;
    let report = dispatcher.shutdown(Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    ticker.abort();
    bar.set_position(broker.acks.load(Relaxed));
    bar.finish();
    status.close().await?;

    // Verify against the status store on disk: every key reached its last sequence number.
    let stored = ProcessStatus::open(SqliteStore::open(&db).await?, WriteBehind::default()).await?;
    let mut incomplete = 0;
    for key_no in 0..args.keys {
        let expected = (args.messages - 1 - key_no) / args.keys + 1;
        let last = stored.last_processed(&format!("key-{key_no}")).map(seq_at);
        if last != Some(expected) {
            incomplete += 1;
        }
    }
    let unacked = broker.acked.iter().filter(|a| !a.load(Relaxed)).count();
    let m = dispatcher.metrics();
    let violations = violations.load(Relaxed);
    println!("messages:          {}", args.messages);
    println!("keys:              {}", args.keys);
    println!("redelivered:       {redelivered} (unacked when the first connection was lost)");
    println!("acked:             {}", m.acked);
    println!(
        "acks refused:      {} (settled on the closed connection before the dispatcher heard)",
        broker.refused.load(Relaxed)
    );
    println!(
        "retried:           {} (injected handler failures)",
        m.retried
    );
    println!("dropped (epoch):   {}", m.dropped);
    println!("elapsed:           {:.2?}", elapsed);
    println!(
        "throughput:        {:.0} msgs/s",
        (args.messages + redelivered) as f64 / elapsed.as_secs_f64()
    );
    println!("order violations:  {violations}");
    println!("keys incomplete:   {incomplete} (status on disk vs expected)");
    println!("unacked at broker: {unacked}");
    println!("drained:           {}", report.drained);
    if violations > 0 || incomplete > 0 || unacked > 0 || !report.drained {
        bail!(
            "FAILED: {violations} order violations, {incomplete} incomplete keys, {unacked} unacked"
        );
    }
    pulsar_stage(args.messages.min(50_000), args.keys.min(1_000), &db).await?;
    flusher_stage(args.messages.min(40_000)).await?;
    match std::env::var("AMQP_URL") {
        Ok(url) => {
            amqp_stage(
                &url,
                args.messages.min(50_000),
                args.keys.min(1_000),
                &db,
                args.wire,
            )
            .await?
        }
        Err(_) => println!(
            "amqp stage:        skipped (set AMQP_URL to run the same check through RabbitMQ)"
        ),
    }
    println!("OK");
    Ok(())
}

/// The same ordered, checked processing, fed from RabbitMQ shard queues by the Headwaters
/// producer (publisher confirms) and consumer (coalesced acks).
async fn amqp_stage(
    url: &str,
    messages: u64,
    keys: u64,
    db: &std::path::Path,
    wire: WireFormat,
) -> anyhow::Result<()> {
    use headwaters::amqp::{AmqpConfig, Consumer, DeadLetter, Producer, PublishOptions};
    let mut config = AmqpConfig::new(url)
        .with_prefix(format!("hw_demo_{}_", std::process::id()))
        .with_total_count(16)
        .with_wire(wire);
    if wire == WireFormat::Mississippi {
        // Mississippi's queues carry no arguments; in production a broker policy gives them
        // a dead-letter exchange. The demo discards nothing.
        config = config.with_dead_letter(DeadLetter::Policy);
    }
    let status = ProcessStatus::open(SqliteStore::open(db).await?, WriteBehind::default()).await?;
    let violations = Arc::new(AtomicU64::new(0));
    let checker = OrderChecker {
        status: status.clone(),
        violations: Arc::clone(&violations),
        failed_once: Mutex::new(HashSet::new()),
        duplicates: None,
        entity: if wire == WireFormat::Mississippi {
            term_text
        } else {
            key_text
        },
    };
    let consumer = Consumer::start(config.clone(), checker, Config::default()).await?;
    let producer = Producer::connect(config).await?;
    let started = Instant::now();
    let per_key = messages / keys;
    let total = per_key * keys;
    for round in 0..per_key {
        let sends = (0..keys).map(|k| {
            let (key, message) = message(round * keys + k, keys, false);
            let producer = producer.clone();
            let key = Key::from(format!("amqp-{key}"));
            async move {
                let options = PublishOptions::key(key).with_message_id(message.message_id);
                producer.publish(&message.payload, options).await
            }
        });
        for sent in futures_util::future::join_all(sends).await {
            sent?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(0..keys).all(|k| {
        status
            .last_processed(&format!("amqp-key-{k}"))
            .is_some_and(|t| t == event_time(per_key))
    }) {
        if Instant::now() > deadline {
            bail!("amqp stage: not every message was processed within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    consumer.shutdown(Duration::from_secs(10)).await;
    producer.close().await;
    status.close().await?;
    let violations = violations.load(Relaxed);
    println!(
        "amqp stage:        {total} messages over {keys} keys through RabbitMQ ({wire:?} wire format) in {elapsed:.2?} ({:.0} msgs/s published, confirmed and consumed); order violations: {violations}",
        total as f64 / elapsed.as_secs_f64()
    );
    if violations > 0 {
        bail!("FAILED: {violations} order violations in the AMQP stage");
    }
    Ok(())
}

/// The same ordered, checked processing, fed from Pulsar's WebSocket API: the Pulsar at
/// `PULSAR_WS_URL` (token from `PULSAR_TOKEN`) or the embedded emulator, a pipelined
/// producer, and two Key_Shared consumers each dispatching through the ordered dispatcher.
/// The clients reach the server through a fault proxy that cuts every connection midway; they
/// reconnect, pending sends are resent and unacked messages redelivered.
async fn pulsar_stage(messages: u64, keys: u64, db: &std::path::Path) -> anyhow::Result<()> {
    use headwaters::pulsar::{
        ClientConfig, Consumer, ConsumerOptions, ConsumerParams, OnDiscard, OutgoingMessage,
        Producer, ProducerOptions, SubscriptionType, Topic, run_ordered,
    };
    use headwaters_testkit::proxy::FaultProxy;

    let server = PulsarServer::from_env().await?;
    let where_ = if server.emulator.is_some() {
        "the Pulsar WebSocket emulator".to_owned()
    } else {
        format!("the Pulsar at {}", server.url)
    };
    let proxy = FaultProxy::start(server.addr).await?;
    let mut config = ClientConfig::new(&format!("ws://{}", proxy.addr()))?
        .with_backoff(Duration::from_millis(10), Duration::from_millis(200));
    if let Some(token) = &server.token {
        config = config.with_token(token.clone());
    }
    // A topic of this run's own: a real broker keeps what earlier runs left.
    let topic = Topic::persistent("public", "default", &format!("demo-{}", std::process::id()))?;
    let status = ProcessStatus::open(SqliteStore::open(db).await?, WriteBehind::default()).await?;
    let violations = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let mut params = ConsumerParams::default();
    params.subscription_type = Some(SubscriptionType::KeyShared);
    let mut handles = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let consumer = Consumer::subscribe(
            &config,
            topic.clone(),
            "demo",
            ConsumerOptions::default().with_params(params.clone()),
        )
        .await?;
        handles.push(consumer.handle());
        let checker = OrderChecker {
            status: status.clone(),
            violations: Arc::clone(&violations),
            failed_once: Mutex::new(HashSet::new()),
            duplicates: Some(Arc::clone(&duplicates)),
            entity: key_text,
        };
        runs.push(tokio::spawn(run_ordered(
            consumer,
            checker,
            Config::default(),
            Duration::from_secs(10),
            // The checker never discards; were it to, the message would be acknowledged.
            OnDiscard::Acknowledge,
        )));
    }
    let producer = Producer::connect(&config, topic.clone(), ProducerOptions::default()).await?;
    let per_key = messages / keys;
    let total = per_key * keys;
    let started = Instant::now();
    let mut receipts = Vec::with_capacity(total as usize);
    for global in 0..total {
        if global == total / 2 {
            proxy.cut();
        }
        let (key, message) = message(global, keys, false);
        let outgoing = OutgoingMessage::new(message.payload).with_key(format!("pulsar-{key}"));
        receipts.push(producer.enqueue(outgoing).await?);
    }
    for receipt in receipts {
        receipt.await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(0..keys).all(|k| {
        status
            .last_processed(&format!("pulsar-key-{k}"))
            .is_some_and(|t| t == event_time(per_key))
    }) {
        if Instant::now() > deadline {
            bail!("pulsar stage: not every message was processed within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let reconnects: u64 = handles.iter().map(|h| h.reconnects()).sum();
    producer.close().await;
    for h in &handles {
        h.close().await;
    }
    for run in runs {
        run.await??;
    }
    status.close().await?;
    // What the server stored, where it can be asked (the emulator).
    let resent = server
        .emulator
        .map(|e| {
            let stored = e.messages(&topic.to_string()).len() as u64;
            format!(
                ", stored {stored} (resent after the drop: {})",
                stored - total
            )
        })
        .unwrap_or_default();
    let violations = violations.load(Relaxed);
    let duplicates = duplicates.load(Relaxed);
    println!(
        "pulsar stage:      {total} messages over {keys} keys through {where_} in {elapsed:.2?} ({:.0} msgs/s); connections cut once: consumer reconnects {reconnects}{resent}, duplicates skipped {duplicates}; order violations: {violations}",
        total as f64 / elapsed.as_secs_f64(),
    );
    if violations > 0 || reconnects == 0 {
        bail!(
            "FAILED: {violations} order violations in the Pulsar stage ({reconnects} reconnects)"
        );
    }
    Ok(())
}

/// Pulsar → batch processor → EventStore, on the embedded emulators.
async fn flusher_stage(messages: u64) -> anyhow::Result<()> {
    use headwaters::eventstore::{Connection, Settings};
    use headwaters::pulsar::ClientConfig;
    use headwaters_testkit::eventstore::EventStoreEmulator;
    use headwaters_testkit::pulsar::PulsarEmulator;

    let pulsar = PulsarEmulator::start().await?;
    let eventstore = EventStoreEmulator::start().await?;
    let connection = Connection::connect(
        Settings::new(eventstore.addr().to_string()).with_credentials("admin", "changeit")?,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let topics = ["flush-a".to_owned(), "flush-b".to_owned()];
    let per_topic = (messages / 2).max(1);
    let elapsed = pulsar_to_eventstore::run(
        &ClientConfig::new(&pulsar.url())?,
        connection,
        &topics,
        per_topic,
        &dir.path().join("checkpoints.sqlite"),
    )
    .await?;
    let total = per_topic * 2;
    let written: usize = topics
        .iter()
        .map(|t| eventstore.stream(&format!("pulsar-{t}")).len())
        .sum();
    println!(
        "flusher stage:     {total} Pulsar messages batched into EventStore appends of up to {} in {elapsed:.2?} ({:.0} msgs/s); events written: {written}",
        pulsar_to_eventstore::BATCH,
        total as f64 / elapsed.as_secs_f64()
    );
    if (written as u64) < total {
        bail!("FAILED: only {written} of {total} events reached EventStore");
    }
    Ok(())
}
