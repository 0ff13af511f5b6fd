//! A chaos soak: producers and ordered consumers on RabbitMQ (the real broker at
//! `AMQP_URL`), Pulsar (the real broker at `PULSAR_WS_URL`, token from `PULSAR_TOKEN`, else
//! the emulator) and the EventStore emulator run while a fault loop per transport injects, at
//! random: a broker restart (RabbitMQ and Pulsar: kill -9 and start again, when
//! `HEADWATERS_RABBITMQ_CTL` / `HEADWATERS_PULSAR_CTL` name the control scripts `cargo xtask`
//! writes; an emulator: every connection dropped and its port refusing), a TCP proxy that
//! freezes (no FIN, no RST) then thaws, cut sockets, slow replies, and bursts of handler
//! panics.
//!
//! Each key's producer sends its next sequence number only once the previous one was
//! confirmed, retrying a failed send, so every confirmed message must be processed, and first
//! processed in sequence. At the end it prints per transport: messages sent and confirmed,
//! processed, lost (confirmed, never processed), per-key order violations (a message first
//! processed before an earlier one of its key), duplicates, and the longest time from a
//! fault's end to the first message confirmed after it being processed. It exits non-zero on
//! a loss, a violation or a hang (a send, a recovery or the final drain taking longer than
//! `--hang-limit`).
//!
//! `cargo xtask chaos --minutes 30` (starts RabbitMQ), or
//! `cargo run --release -p headwaters --example chaos -- --minutes 1` with `AMQP_URL` set
//! (without it the AMQP part does not run, and says so).

#[path = "support/pulsar_server.rs"]
mod pulsar_server;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use headwaters::amqp::{
    AmqpConfig, Consumer as AmqpConsumer, Producer as AmqpProducer, PublishOptions,
};
use headwaters::eventstore::{
    Connection, EventData, ExpectedVersion, Settings, ordered::run_ordered_catch_up,
};
use headwaters::ordering::{Config, Key, Message, Outcome, SimpleHandler};
use headwaters::pulsar::{
    ClientConfig, Consumer as PulsarConsumer, ConsumerOptions, ConsumerParams, OnDiscard,
    Producer as PulsarProducer, ProducerOptions, SubscriptionType, Topic, run_ordered,
};
use headwaters_testkit::eventstore::EventStoreEmulator;
use headwaters_testkit::proxy::FaultProxy;
use headwaters_testkit::pulsar::PulsarEmulator;
use pulsar_server::PulsarServer;

struct Args {
    minutes: f64,
    keys: u32,
    /// Messages per second per transport (each key sends every `keys / rate` seconds).
    rate: u32,
    seed: u64,
    hang_limit: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        minutes: 1.0,
        keys: 32,
        rate: 200,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        hang_limit: Duration::from_secs(60),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--minutes" => args.minutes = value()?.parse().context("--minutes")?,
            "--keys" => args.keys = value()?.parse().context("--keys")?,
            "--rate" => args.rate = value()?.parse().context("--rate")?,
            "--seed" => args.seed = value()?.parse().context("--seed")?,
            "--hang-limit" => {
                args.hang_limit = Duration::from_secs(value()?.parse().context("--hang-limit")?)
            }
            "-h" | "--help" => {
                println!(
                    "chaos [--minutes 1] [--keys 32] [--rate 200] [--seed N] [--hang-limit 60]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; try --help"),
        }
    }
    if args.keys == 0 || args.rate == 0 {
        bail!("--keys and --rate must be at least 1");
    }
    Ok(args)
}

/// A small deterministic generator (xorshift64*), so a run can be repeated with `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_millis() as u64 + 1;
        low + Duration::from_millis(self.next() % span)
    }
}

// ---------------------------------------------------------------------------------------
// The ledger: what was confirmed and what was processed, per key.

#[derive(Default)]
struct KeyBook {
    /// Sequence numbers confirmed (the producer's next one to send).
    confirmed: u64,
    /// Times each sequence number was processed.
    counts: Vec<u32>,
    /// Every sequence number below this was processed.
    prefix: u64,
}

struct Ledger {
    name: &'static str,
    keys: Vec<Mutex<KeyBook>>,
    sent: AtomicU64,
    confirmed: AtomicU64,
    send_errors: AtomicU64,
    processed: AtomicU64,
    duplicates: AtomicU64,
    violations: AtomicU64,
    /// Per-mille of first attempts that panic (a panic burst sets it).
    panic_rate: AtomicU32,
    panicked: Mutex<HashSet<(u32, u64)>>,
    panics: AtomicU64,
    hangs: Mutex<Vec<String>>,
    /// Per fault kind: how many, and the longest recovery after one.
    faults: Mutex<BTreeMap<&'static str, (u32, Duration)>>,
}

impl Ledger {
    fn new(name: &'static str, keys: u32) -> Arc<Self> {
        Arc::new(Self {
            name,
            keys: (0..keys).map(|_| Mutex::default()).collect(),
            sent: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            panic_rate: AtomicU32::new(0),
            panicked: Mutex::default(),
            panics: AtomicU64::new(0),
            hangs: Mutex::default(),
            faults: Mutex::default(),
        })
    }

    fn book(&self, key: u32) -> std::sync::MutexGuard<'_, KeyBook> {
        self.keys[key as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn hang(&self, what: String) {
        eprintln!("chaos: {}: HANG: {what}", self.name);
        self.hangs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }

    /// A processing of `key`'s message `seq`.
    fn record(&self, key: u32, seq: u64) {
        self.processed.fetch_add(1, Relaxed);
        let mut book = self.book(key);
        let at = seq as usize;
        if book.counts.len() <= at {
            book.counts.resize(at + 1, 0);
        }
        if book.counts[at] == 0 {
            if seq != book.prefix {
                let n = self.violations.fetch_add(1, Relaxed);
                if n < 10 {
                    eprintln!(
                        "chaos: {}: ORDER: key {key} processed {seq} before {}",
                        self.name, book.prefix
                    );
                }
            }
        } else {
            self.duplicates.fetch_add(1, Relaxed);
        }
        book.counts[at] += 1;
        while book
            .counts
            .get(book.prefix as usize)
            .is_some_and(|&c| c > 0)
        {
            book.prefix += 1;
        }
    }

    /// Whether this first attempt should panic (each message panics at most once).
    fn should_panic(&self, key: u32, seq: u64) -> bool {
        let rate = self.panic_rate.load(Relaxed);
        if rate == 0 || (u64::from(key) * 7919 + seq * 104_729) % 1000 >= u64::from(rate) {
            return false;
        }
        let fresh = self
            .panicked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((key, seq));
        if fresh {
            self.panics.fetch_add(1, Relaxed);
        }
        fresh
    }

    fn confirmed_per_key(&self) -> Vec<u64> {
        (0..self.keys.len() as u32)
            .map(|k| self.book(k).confirmed)
            .collect()
    }

    /// Whether some key processed a message at or beyond its count in `snapshot`.
    fn progressed_beyond(&self, snapshot: &[u64]) -> bool {
        snapshot
            .iter()
            .enumerate()
            .any(|(k, &c)| self.book(k as u32).prefix > c)
    }

    /// Whether every confirmed message was processed.
    fn drained(&self) -> bool {
        (0..self.keys.len() as u32).all(|k| {
            let book = self.book(k);
            book.prefix >= book.confirmed
        })
    }

    /// Confirmed messages never processed.
    fn lost(&self) -> u64 {
        (0..self.keys.len() as u32)
            .map(|k| {
                let book = self.book(k);
                (0..book.confirmed)
                    .filter(|&s| book.counts.get(s as usize).is_none_or(|&c| c == 0))
                    .count() as u64
            })
            .sum()
    }
}

const PAYLOAD_PREFIX: &str = "chaos:";

fn payload(key: u32, seq: u64) -> String {
    format!("{PAYLOAD_PREFIX}{key}:{seq}")
}

fn parse(payload: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(payload)
        .ok()?
        .strip_prefix(PAYLOAD_PREFIX)?;
    let (k, s) = text.split_once(':')?;
    Some((k.parse().ok()?, s.parse().ok()?))
}

/// The one handler of every transport: records, and panics when a burst says so.
#[derive(Clone)]
struct Check(Arc<Ledger>);

const INJECTED: &str = "chaos: injected handler panic";

impl SimpleHandler for Check {
    type Error = std::convert::Infallible;

    async fn handle(&self, _: &Key, m: &Message) -> Result<Outcome, Self::Error> {
        // Anything else (EventStore's `$all` holds system events too) is not ours.
        let Some((key, seq)) = parse(&m.payload) else {
            return Ok(Outcome::ack());
        };
        if (key as usize) < self.0.keys.len() {
            if self.0.should_panic(key, seq) {
                panic!("{INJECTED}");
            }
            self.0.record(key, seq);
        }
        Ok(Outcome::ack())
    }
}

// ---------------------------------------------------------------------------------------
// Producers.

/// One key's producer: the next sequence number only after the previous one was confirmed;
/// a failed send is retried (the message may then arrive twice: a duplicate).
async fn produce<F, Fut>(
    ledger: Arc<Ledger>,
    key: u32,
    interval: Duration,
    hang_limit: Duration,
    stop: Arc<AtomicBool>,
    send: F,
) where
    F: Fn(u32, u64) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    // Spread the keys' first sends over one interval.
    tokio::time::sleep(interval.mul_f64(f64::from(key) / ledger.keys.len() as f64)).await;
    let mut failures = 0u32;
    while !stop.load(Relaxed) {
        let seq = ledger.book(key).confirmed;
        ledger.sent.fetch_add(1, Relaxed);
        let started = Instant::now();
        match tokio::time::timeout(hang_limit, send(key, seq)).await {
            Ok(Ok(())) => {
                ledger.book(key).confirmed += 1;
                ledger.confirmed.fetch_add(1, Relaxed);
                failures = 0;
                tokio::time::sleep(interval).await;
            }
            Ok(Err(e)) => {
                ledger.send_errors.fetch_add(1, Relaxed);
                failures += 1;
                if failures == 1 {
                    tracing::debug!(transport = ledger.name, key, seq, error = %e, "send failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(failures.min(20)))).await;
            }
            Err(_) => {
                ledger.hang(format!(
                    "key {key}: a send did not return within {:.0?}",
                    started.elapsed()
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Faults.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// RabbitMQ: kill -9, then start; an emulator: connections dropped, port refusing.
    Restart,
    /// The proxy holds every socket open and forwards nothing.
    Freeze,
    /// Every connection closed at once.
    Cut,
    /// Every chunk held 50–300 ms by the proxy (and, for the emulators, slow server replies).
    Slow,
    /// 5 % of first handler attempts panic.
    Panics,
}

impl Fault {
    const ALL: [Self; 5] = [
        Self::Restart,
        Self::Freeze,
        Self::Cut,
        Self::Slow,
        Self::Panics,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Freeze => "freeze",
            Self::Cut => "cut",
            Self::Slow => "slow",
            Self::Panics => "panics",
        }
    }
}

/// The server behind a transport's proxy.
enum Server {
    /// RabbitMQ, with its control script when this process may kill and start it.
    Rabbit {
        ctl: Option<String>,
    },
    Pulsar(PulsarEmulator),
    /// A real Pulsar (`PULSAR_WS_URL`), with its control script when this process may kill
    /// and start it (`HEADWATERS_PULSAR_CTL`, written by `cargo xtask`).
    PulsarBroker {
        ctl: Option<String>,
    },
    EventStore(EventStoreEmulator),
}

struct Target {
    ledger: Arc<Ledger>,
    proxy: FaultProxy,
    server: Server,
}

/// Run a broker's control script (`ctl.sh start|kill`, as `cargo xtask` writes them).
async fn server_ctl(ctl: &str, verb: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sh")
        .arg(ctl)
        .arg(verb)
        .status()
        .await
        .with_context(|| format!("cannot run {ctl}"))?;
    if !status.success() {
        bail!("`{ctl} {verb}` failed with {status}");
    }
    Ok(())
}

impl Target {
    async fn apply(&self, fault: Fault, rng: &mut Rng) -> anyhow::Result<()> {
        match fault {
            Fault::Restart => match &self.server {
                Server::Rabbit { ctl: Some(ctl) } | Server::PulsarBroker { ctl: Some(ctl) } => {
                    server_ctl(ctl, "kill").await?
                }
                Server::Rabbit { ctl: None } | Server::PulsarBroker { ctl: None } => {
                    self.proxy.set_down(true)
                }
                Server::Pulsar(e) => {
                    self.proxy.set_down(true);
                    e.drop_connections();
                }
                Server::EventStore(e) => {
                    self.proxy.set_down(true);
                    e.drop_connections();
                }
            },
            Fault::Freeze => self.proxy.freeze(true),
            Fault::Cut => self.proxy.cut(),
            Fault::Slow => {
                let delay = rng.between(Duration::from_millis(50), Duration::from_millis(300));
                self.proxy.set_delay(delay);
                match &self.server {
                    Server::Rabbit { .. } | Server::PulsarBroker { .. } => {}
                    Server::Pulsar(e) => e.delay_receipts(delay),
                    Server::EventStore(e) => e.delay_replies(delay),
                }
            }
            Fault::Panics => self.ledger.panic_rate.store(50, Relaxed),
        }
        Ok(())
    }

    async fn clear(&self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Restart => match &self.server {
                Server::Rabbit { ctl: Some(ctl) } | Server::PulsarBroker { ctl: Some(ctl) } => {
                    server_ctl(ctl, "start").await?
                }
                _ => self.proxy.set_down(false),
            },
            Fault::Freeze => self.proxy.freeze(false),
            Fault::Cut => {}
            Fault::Slow => {
                self.proxy.set_delay(Duration::ZERO);
                match &self.server {
                    Server::Rabbit { .. } | Server::PulsarBroker { .. } => {}
                    Server::Pulsar(e) => e.delay_receipts(Duration::ZERO),
                    Server::EventStore(e) => e.delay_replies(Duration::ZERO),
                }
            }
            Fault::Panics => self.ledger.panic_rate.store(0, Relaxed),
        }
        Ok(())
    }

    /// Until `stop`: healthy for 2–6 s, a fault for 1–4 s, then wait for the first message
    /// confirmed after the fault ended to be processed (the recovery time).
    async fn fault_loop(
        &self,
        mut rng: Rng,
        stop: Arc<AtomicBool>,
        hang_limit: Duration,
    ) -> anyhow::Result<()> {
        let ledger = &self.ledger;
        while !stop.load(Relaxed) {
            tokio::time::sleep(rng.between(Duration::from_secs(2), Duration::from_secs(6))).await;
            if stop.load(Relaxed) {
                break;
            }
            let fault = Fault::ALL[(rng.next() % Fault::ALL.len() as u64) as usize];
            let length = rng.between(Duration::from_secs(1), Duration::from_secs(4));
            tracing::info!(
                transport = ledger.name,
                fault = fault.name(),
                ?length,
                "fault"
            );
            self.apply(fault, &mut rng).await?;
            tokio::time::sleep(length).await;
            self.clear(fault).await?;
            let snapshot = ledger.confirmed_per_key();
            let cleared = Instant::now();
            while !ledger.progressed_beyond(&snapshot) {
                if cleared.elapsed() > hang_limit {
                    ledger.hang(format!(
                        "no message confirmed after a {} fault ended was processed within {hang_limit:?}",
                        fault.name()
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let recovery = cleared.elapsed();
            let mut faults = ledger.faults.lock().unwrap_or_else(|e| e.into_inner());
            let entry = faults.entry(fault.name()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(recovery);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The transports.

/// What a transport leaves running: how to send, and how to stop its consumers.
struct Running {
    target: Arc<Target>,
    producers: Vec<tokio::task::JoinHandle<()>>,
    close: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

fn spawn_producers<F, Fut>(
    ledger: &Arc<Ledger>,
    args: &Args,
    stop: &Arc<AtomicBool>,
    send: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(u32, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let interval = Duration::from_secs_f64(f64::from(args.keys) / f64::from(args.rate));
    (0..args.keys)
        .map(|key| {
            tokio::spawn(produce(
                Arc::clone(ledger),
                key,
                interval,
                args.hang_limit,
                Arc::clone(stop),
                send.clone(),
            ))
        })
        .collect()
}

fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or(rest);
    host_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host_port}"))?
        .next()
        .with_context(|| format!("{host_port} resolves to nothing"))
}

async fn amqp(url: &str, args: &Args, stop: &Arc<AtomicBool>) -> anyhow::Result<Running> {
    let ledger = Ledger::new("amqp", args.keys);
    let proxy = FaultProxy::start(socket_addr(url)?).await?;
    // The same URL, through the proxy.
    let (scheme, rest) = url.split_once("://").context("AMQP_URL has no scheme")?;
    let (auth, rest) = rest.rsplit_once('@').map_or(("", rest), |(a, r)| (a, r));
    let path = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
    let at = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    let via_proxy = format!("{scheme}://{at}{}{path}", proxy.addr());
    let config = AmqpConfig::new(via_proxy)
        .with_prefix(format!("hw_chaos_{}_", std::process::id()))
        .with_total_count(4)
        .with_backoff(Duration::from_millis(100), Duration::from_secs(1));
    let consumer = AmqpConsumer::start(
        config.clone(),
        Check(Arc::clone(&ledger)),
        Config::default(),
    )
    .await?;
    let producer = AmqpProducer::connect(config).await?;
    let producers = spawn_producers(&ledger, args, stop, {
        let producer = producer.clone();
        move |key, seq| {
            let producer = producer.clone();
            async move {
                producer
                    .publish(
                        payload(key, seq).as_bytes(),
                        PublishOptions::key(format!("k{key}")),
                    )
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    });
    let ctl = std::env::var("HEADWATERS_RABBITMQ_CTL").ok();
    if ctl.is_none() {
        println!(
            "chaos: HEADWATERS_RABBITMQ_CTL is not set: an AMQP restart is the proxy refusing connections, not a broker kill -9"
        );
    }
    Ok(Running {
        target: Arc::new(Target {
            ledger,
            proxy,
            server: Server::Rabbit { ctl },
        }),
        producers,
        close: Box::pin(async move {
            consumer.shutdown(Duration::from_secs(5)).await;
            producer.close().await;
        }),
    })
}

async fn pulsar(args: &Args, stop: &Arc<AtomicBool>) -> anyhow::Result<Running> {
    let ledger = Ledger::new("pulsar", args.keys);
    // The real broker at PULSAR_WS_URL, or the emulator.
    let found = PulsarServer::from_env().await?;
    let server = match found.emulator {
        Some(emulator) => Server::Pulsar(emulator),
        None => {
            let ctl = std::env::var("HEADWATERS_PULSAR_CTL").ok();
            println!(
                "chaos: pulsar: the broker at {}{}",
                found.url,
                if ctl.is_some() {
                    " (restarts: kill -9 and start again)"
                } else {
                    " (restarts: its port refused at the proxy)"
                }
            );
            Server::PulsarBroker { ctl }
        }
    };
    let proxy = FaultProxy::start(found.addr).await?;
    let mut config = ClientConfig::new(&format!("ws://{}", proxy.addr()))?;
    if let Some(token) = found.token {
        config = config.with_token(token);
    }
    let topic = Topic::persistent(
        "public",
        "default",
        &format!("chaos-{}", std::process::id()),
    )?;
    let mut params = ConsumerParams::default();
    params.subscription_type = Some(SubscriptionType::KeyShared);
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let consumer = PulsarConsumer::subscribe(
            &config,
            topic.clone(),
            "chaos",
            ConsumerOptions::default().with_params(params.clone()),
        )
        .await?;
        let handle = consumer.handle();
        let run = tokio::spawn(run_ordered(
            consumer,
            Check(Arc::clone(&ledger)),
            Config::default(),
            Duration::from_secs(5),
            // The handler never discards.
            OnDiscard::Acknowledge,
        ));
        consumers.push((handle, run));
    }
    let producer = PulsarProducer::connect(&config, topic, ProducerOptions::default()).await?;
    let producers = spawn_producers(&ledger, args, stop, {
        let producer = producer.clone();
        move |key, seq| {
            let producer = producer.clone();
            async move {
                producer
                    .send((format!("k{key}"), payload(key, seq)))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    });
    Ok(Running {
        target: Arc::new(Target {
            ledger,
            proxy,
            server,
        }),
        producers,
        close: Box::pin(async move {
            producer.close().await;
            for (handle, run) in consumers {
                handle.close().await;
                match tokio::time::timeout(Duration::from_secs(30), run).await {
                    Ok(Ok(Ok(_))) => {}
                    other => eprintln!("chaos: pulsar: a consumer ended badly: {other:?}"),
                }
            }
        }),
    })
}

async fn eventstore(args: &Args, stop: &Arc<AtomicBool>) -> anyhow::Result<Running> {
    let ledger = Ledger::new("eventstore", args.keys);
    let emulator = EventStoreEmulator::start().await?;
    let proxy = FaultProxy::start(emulator.addr()).await?;
    let settings = Settings::new(proxy.addr().to_string()).with_credentials("admin", "changeit")?;
    let reading = Connection::connect(settings.clone()).await?;
    let writing = Connection::connect(settings).await?;
    let consumer = tokio::spawn(run_ordered_catch_up(
        reading.subscribe_to_all_from(None, 500),
        Check(Arc::clone(&ledger)),
        Config::default(),
        Duration::from_secs(5),
    ));
    let run = std::process::id();
    let producers = spawn_producers(&ledger, args, stop, {
        let writing = writing.clone();
        move |key, seq| {
            let writing = writing.clone();
            async move {
                writing
                    .append_to_stream(
                        &format!("chaos{run}-k{key}"),
                        ExpectedVersion::Any,
                        &[EventData::binary("chaos", payload(key, seq))],
                    )
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    });
    Ok(Running {
        target: Arc::new(Target {
            ledger,
            proxy,
            server: Server::EventStore(emulator),
        }),
        producers,
        close: Box::pin(async move {
            // The catch-up subscription ends with its connection, and the dispatcher drains.
            reading.close().await;
            writing.close().await;
            match tokio::time::timeout(Duration::from_secs(30), consumer).await {
                Ok(Ok(Ok(_))) => {}
                other => eprintln!("chaos: eventstore: the consumer ended badly: {other:?}"),
            }
        }),
    })
}

// ---------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Reconnects and retried panics are the point here (RUST_LOG=warn shows
                // them), and lapin reports every connection the soak breaks at ERROR.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,lapin=off")),
        )
        .init();
    // Injected panics are expected: only the others are printed.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|s| s == INJECTED);
        if !injected {
            default_hook(info);
        }
    }));
    println!(
        "chaos: {:.1} min, {} keys, {} msgs/s per transport, seed {}",
        args.minutes, args.keys, args.rate, args.seed
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = Vec::new();
    match std::env::var("AMQP_URL") {
        Ok(url) => running.push(amqp(&url, &args, &stop).await.context("AMQP")?),
        Err(_) => println!(
            "chaos: AMQP_URL is not set: the AMQP part does not run (cargo xtask chaos starts RabbitMQ)"
        ),
    }
    running.push(pulsar(&args, &stop).await.context("Pulsar")?);
    running.push(eventstore(&args, &stop).await.context("EventStore")?);

    let soak = Duration::from_secs_f64(args.minutes * 60.0);
    let mut rng = Rng(args.seed | 1);
    let fault_stop = Arc::new(AtomicBool::new(false));
    let mut faults = Vec::new();
    for r in &running {
        let seed = rng.next() | 1;
        let fault_stop = Arc::clone(&fault_stop);
        let hang_limit = args.hang_limit;
        let target = Arc::clone(&r.target);
        faults.push(tokio::spawn(async move {
            target.fault_loop(Rng(seed), fault_stop, hang_limit).await
        }));
    }
    let started = Instant::now();
    let mut report = tokio::time::interval(Duration::from_secs(30));
    report.tick().await;
    while started.elapsed() < soak {
        tokio::select! {
            _ = report.tick() => {
                let line: Vec<String> = running.iter().map(|r| {
                    let l = &r.target.ledger;
                    format!("{} {}/{}", l.name, l.processed.load(Relaxed), l.confirmed.load(Relaxed))
                }).collect();
                println!("chaos: {:.0?}: processed/confirmed {}", started.elapsed(), line.join(", "));
            }
            () = tokio::time::sleep(soak.saturating_sub(started.elapsed())) => {}
        }
    }
    // The fault loops end their current fault (and its recovery), then the producers stop.
    fault_stop.store(true, Relaxed);
    for f in faults {
        f.await??;
    }
    stop.store(true, Relaxed);
    for r in &mut running {
        for p in r.producers.drain(..) {
            p.await?;
        }
    }
    // Every confirmed message must be processed.
    let drain_started = Instant::now();
    for r in &running {
        let l = &r.target.ledger;
        while !l.drained() {
            if drain_started.elapsed() > args.hang_limit {
                l.hang(format!(
                    "confirmed messages still unprocessed {:.0?} after the producers stopped",
                    drain_started.elapsed()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut failed = Vec::new();
    println!(
        "\n{:<11} {:>9} {:>9} {:>8} {:>9} {:>5} {:>10} {:>10} {:>7} {:>13}",
        "transport",
        "sent",
        "confirmed",
        "errors",
        "processed",
        "lost",
        "violations",
        "duplicates",
        "panics",
        "longest stall"
    );
    let mut fault_lines = Vec::new();
    let targets: Vec<Arc<Target>> = {
        let mut closes = Vec::new();
        let mut targets = Vec::new();
        for r in running {
            closes.push(r.close);
            targets.push(r.target);
        }
        for close in closes {
            if tokio::time::timeout(Duration::from_secs(60), close)
                .await
                .is_err()
            {
                failed.push("closing a transport took over 60 s".to_owned());
            }
        }
        targets
    };
    for t in &targets {
        let l = &t.ledger;
        let faults = l.faults.lock().unwrap_or_else(|e| e.into_inner());
        let longest = faults.values().map(|(_, d)| *d).max().unwrap_or_default();
        let lost = l.lost();
        let violations = l.violations.load(Relaxed);
        let hangs = l.hangs.lock().unwrap_or_else(|e| e.into_inner());
        println!(
            "{:<11} {:>9} {:>9} {:>8} {:>9} {:>5} {:>10} {:>10} {:>7} {:>11.2?}",
            l.name,
            l.sent.load(Relaxed),
            l.confirmed.load(Relaxed),
            l.send_errors.load(Relaxed),
            l.processed.load(Relaxed),
            lost,
            violations,
            l.duplicates.load(Relaxed),
            l.panics.load(Relaxed),
            longest,
        );
        fault_lines.push(format!(
            "{:<11} faults: {}",
            l.name,
            faults
                .iter()
                .map(|(name, (n, d))| format!("{name} ×{n} (recovered within {d:.2?})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if lost > 0 {
            failed.push(format!("{}: {lost} confirmed messages lost", l.name));
        }
        if violations > 0 {
            failed.push(format!("{}: {violations} order violations", l.name));
        }
        for h in hangs.iter() {
            failed.push(format!("{}: {h}", l.name));
        }
        if l.confirmed.load(Relaxed) == 0 {
            failed.push(format!("{}: nothing was confirmed", l.name));
        }
    }
    for line in fault_lines {
        println!("{line}");
    }
    if !failed.is_empty() {
        bail!("chaos found:\n  {}", failed.join("\n  "));
    }
    println!("chaos: no loss, no order violation, no hang");
    Ok(())
}
