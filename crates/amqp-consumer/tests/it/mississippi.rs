//! The Mississippi wire format against a real Erlang peer (`ci/mississippi_peer.erl`, on
//! the Erlang AMQP client inside RabbitMQ): Erlang publishes as Elixir Mississippi does and
//! Headwaters consumes in per-key order; Headwaters publishes and Erlang checks that every
//! message sits on queue `phash2(binary_to_term(header), N)`, in per-key order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_amqp_consumer::etf::{self, Term};
use headwaters_amqp_consumer::{
    AmqpConfig, Consumer, DeadLetter, Producer, PublishOptions, WireFormat,
};
use headwaters_ordering_core::{Config, Handler, Key, Message, Outcome};

use crate::support::{amqp_url, config, eventually};

const KEYS: u32 = 300;
const PER_KEY: u32 = 10;

/// The Erlang peer, with `ERL_LIBS` at RabbitMQ's plugins (amqp_client, rabbit_common).
fn peer(args: &[&str]) -> Command {
    let plugins = std::env::var_os("MISSISSIPPI_ERL_LIBS")
        .map(PathBuf::from)
        .or_else(|| {
            std::fs::read_dir("/usr/lib/rabbitmq/lib").ok()?.find_map(|e| {
                let dir = e.ok()?.path().join("plugins");
                dir.is_dir().then_some(dir)
            })
        })
        .expect("RabbitMQ's plugins directory (amqp_client) was not found: install rabbitmq-server (cargo xtask integration does), or set MISSISSIPPI_ERL_LIBS");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ci/mississippi_peer.erl");
    let mut cmd = Command::new("escript");
    cmd.arg(script).args(args).env("ERL_LIBS", plugins);
    cmd
}

fn run_peer(args: &[&str]) {
    let status = peer(args).status().expect(
        "escript (Erlang) is needed: installed with rabbitmq-server by cargo xtask integration",
    );
    assert!(
        status.success(),
        "the Erlang peer failed ({status}): {args:?}"
    );
}

/// Per ordering key: the payload's key index and last sequence; counts what went wrong.
#[derive(Default)]
struct Seen {
    keys: Mutex<HashMap<Key, (u32, u32)>>,
    processed: AtomicU64,
    wrong_key: AtomicU64,
    out_of_order: AtomicU64,
}

struct Check(Arc<Seen>);

impl Handler for Check {
    type State = Key;
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, key: &Key) -> Result<Key, String> {
        etf::decode(key.as_bytes()).map_err(|e| format!("the key is not a term: {e}"))?;
        Ok(key.clone())
    }

    async fn handle_message(&self, m: &Message, key: &mut Key) -> Result<Outcome, String> {
        let text = std::str::from_utf8(&m.payload).map_err(|e| e.to_string())?;
        let (index, seq) = text.split_once(':').ok_or("payload is not I:SEQ")?;
        let (index, seq): (u32, u32) = (
            index.parse().map_err(|_| "index")?,
            seq.parse().map_err(|_| "seq")?,
        );
        let seen = &self.0;
        let mut keys = seen.keys.lock().unwrap();
        let entry = keys.entry(key.clone()).or_insert((index, 0));
        if entry.0 != index {
            seen.wrong_key.fetch_add(1, SeqCst);
        }
        if seq <= entry.1 {
            seen.out_of_order.fetch_add(1, SeqCst);
        }
        entry.1 = seq;
        seen.processed.fetch_add(1, SeqCst);
        Ok(Outcome::ack())
    }

    async fn handle_signal(&self, (): (), _: &mut Key) {}
}

/// Mississippi's queues carry no arguments, so no dead-letter exchange either: nothing is
/// discarded in these tests (in production, a broker policy gives them one).
fn mississippi_config(test: &str, total: u32) -> AmqpConfig {
    config(test, total)
        .with_wire(WireFormat::Mississippi)
        .with_dead_letter(DeadLetter::Drop)
}

async fn erlang_to_headwaters(total: u32) {
    let config = mississippi_config(&format!("miss_in{total}"), total);
    // Erlang declares the queues first (plain durable, as Mississippi does); our consumer's
    // declarations must not clash with them.
    run_peer(&[
        "publish",
        &amqp_url(),
        &config.prefix,
        &total.to_string(),
        &KEYS.to_string(),
        &PER_KEY.to_string(),
    ]);
    let seen = Arc::new(Seen::default());
    let consumer = Consumer::start(config, Check(Arc::clone(&seen)), Config::default())
        .await
        .unwrap();
    let expected = u64::from(KEYS * PER_KEY);
    eventually(
        "every Erlang message processed",
        Duration::from_secs(60),
        || seen.processed.load(SeqCst) >= expected,
    )
    .await;
    consumer.shutdown(Duration::from_secs(5)).await;
    let keys = seen.keys.lock().unwrap();
    assert_eq!(seen.processed.load(SeqCst), expected);
    assert_eq!(
        keys.len(),
        KEYS as usize,
        "one ordering key per term, whichever encoding the peer used"
    );
    assert_eq!(seen.wrong_key.load(SeqCst), 0, "a key held two terms");
    assert_eq!(seen.out_of_order.load(SeqCst), 0, "per-key order broken");
    assert!(keys.values().all(|(_, last)| *last == PER_KEY));
    println!(
        "Erlang → Headwaters over {total} queues: {expected} messages, {} keys, in order",
        keys.len()
    );
}

/// Keys of every kind, built from Rust values.
fn key(i: u32) -> Term {
    match i % 8 {
        0 => format!("user_{i}").into(),
        1 => i.into(),
        2 => Term::from(-i128::from(i) * 1_000_000_007 * 1_000_000_007 * 1_000),
        3 => Term::atom(format!("device_{i}")),
        4 => (Term::atom("user"), i, "eu").into(),
        5 => vec![Term::from(i), Term::from("x")].into(),
        6 => Term::map([
            (Term::atom("id"), i.into()),
            (Term::atom("kind"), "order".into()),
        ]),
        _ => (Term::atom(format!("λ{}", i % 5)), f64::from(i) / 4.0).into(),
    }
}

async fn headwaters_to_erlang(total: u32) {
    let config = mississippi_config(&format!("miss_out{total}"), total);
    let producer = Producer::connect(config.clone()).await.unwrap();
    for seq in 1..=PER_KEY {
        // One round per sequence number: keys in parallel, each key's messages in order.
        let round = (0..KEYS).map(|i| {
            let producer = producer.clone();
            async move {
                producer
                    .publish(
                        format!("{i}:{seq}").as_bytes(),
                        PublishOptions::term(key(i)),
                    )
                    .await
            }
        });
        for result in futures_util::future::join_all(round).await {
            result.unwrap();
        }
    }
    producer.close().await;
    run_peer(&[
        "consume",
        &amqp_url(),
        &config.prefix,
        &total.to_string(),
        &(KEYS * PER_KEY).to_string(),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Erlang: cargo xtask integration"]
async fn mississippi_erlang_producer_headwaters_consumer() {
    erlang_to_headwaters(16).await;
    erlang_to_headwaters(128).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Erlang: cargo xtask integration"]
async fn mississippi_headwaters_producer_erlang_consumer() {
    headwaters_to_erlang(16).await;
    headwaters_to_erlang(128).await;
}

#[test]
fn rust_keys_route_as_phash2_says() {
    // The producer's queue choice is the port's phash2 (checked against erl elsewhere).
    for i in 0..KEYS {
        let t = key(i);
        assert!(etf::phash2_range(&t, 128) < 128);
        assert_eq!(etf::decode(&t.to_etf().unwrap()).unwrap(), t);
    }
}
