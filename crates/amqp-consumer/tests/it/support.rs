//! Test support: broker URL, per-test queue prefixes, a recording handler.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_amqp_consumer::AmqpConfig;
use headwaters_ordering_core::{Handler, Key, Message, Outcome, StopAction};

pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").expect("AMQP_URL is not set: run `cargo xtask integration`, which starts RabbitMQ, or set AMQP_URL")
}

/// A config whose queues belong to this test alone.
pub(crate) fn config(test: &str, total: u32) -> AmqpConfig {
    AmqpConfig::new(amqp_url())
        .with_prefix(format!("hw_{test}_{}_", std::process::id()))
        .with_total_count(total)
        .with_backoff(Duration::from_millis(100), Duration::from_secs(1))
}

/// Payload `key:seq`.
pub(crate) fn payload(key: u32, seq: u32) -> Vec<u8> {
    format!("{key}:{seq}").into_bytes()
}

fn parse(m: &Message) -> (u32, u32) {
    let text = std::str::from_utf8(&m.payload).expect("utf-8 payload");
    let (k, s) = text.split_once(':').expect("key:seq");
    (k.parse().expect("key"), s.parse().expect("seq"))
}

/// Records every processing; checks per-key order of first processing.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) seen_ids: Mutex<HashSet<String>>,
    /// Per key: the seqs processed for the first time, in order.
    pub(crate) firsts: Mutex<HashMap<u32, Vec<u32>>>,
    pub(crate) processed: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    /// Handle with a random-ish delay of up to this many microseconds.
    pub(crate) max_delay_us: u64,
    /// Payload seqs with these values are discarded / stop the handler.
    pub(crate) discard_seq: Option<u32>,
    pub(crate) stop_seq: Option<u32>,
}

impl Recorder {
    pub(crate) fn unique(&self) -> u64 {
        self.seen_ids.lock().unwrap().len() as u64
    }

    /// Keys whose first processings are not in increasing seq order.
    pub(crate) fn order_violations(&self) -> Vec<u32> {
        self.firsts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, seqs)| seqs.windows(2).any(|w| w[0] >= w[1]))
            .map(|(k, _)| *k)
            .collect()
    }
}

pub(crate) struct Recording(pub(crate) Arc<Recorder>);

impl Handler for Recording {
    type State = ();
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, _key: &Key) -> Result<(), String> {
        Ok(())
    }

    async fn handle_message(&self, m: &Message, _: &mut ()) -> Result<Outcome, String> {
        let r = &self.0;
        let (key, seq) = parse(m);
        if r.max_delay_us > 0 {
            let delay = (u64::from(key) * 7919 + u64::from(seq) * 104_729) % r.max_delay_us;
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        r.processed.fetch_add(1, SeqCst);
        if r.seen_ids.lock().unwrap().insert(m.message_id.clone()) {
            r.firsts.lock().unwrap().entry(key).or_default().push(seq);
        } else {
            r.duplicates.fetch_add(1, SeqCst);
        }
        if r.discard_seq == Some(seq) {
            return Ok(Outcome::discard("test discard"));
        }
        if r.stop_seq == Some(seq) {
            return Ok(Outcome::stop("test stop", StopAction::Ack));
        }
        Ok(Outcome::ack())
    }

    async fn handle_signal(&self, _: (), _: &mut ()) {}
}

pub(crate) async fn eventually(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `host:port` of an AMQP URL.
pub(crate) fn broker_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .unwrap()
        .next()
        .unwrap()
}
