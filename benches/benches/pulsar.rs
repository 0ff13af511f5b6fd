//! Pulsar WebSocket throughput on loopback against the in-process emulator — and against a
//! real Apache Pulsar when `PULSAR_WS_URL` is set — side by side with a raw tokio-tungstenite
//! loop sending the same frames to the same server:
//!
//! * produce: `Producer::enqueue` with 1,000 in flight vs a raw socket writing publish
//!   frames with a 1,000-receipt window;
//! * consume: a pull-mode `Consumer` (queue 1,000) acking each message vs a raw socket
//!   granting permits in halves of 1,000 and acking each message, flushing every 64 frames.
//!
//! Both sides use TCP_NODELAY. Two set-ups: everything on one 2-worker runtime (clients
//! and emulator contend for the cores), and isolated (clients on a single-threaded runtime,
//! the emulator on a thread of its own). Prints msgs/s and the ratio (goal: ≥ 0.8× raw).
//! `cargo bench` runs 50,000 100-byte messages per case, five rounds alternating ours and
//! raw, and compares medians; `cargo test --benches` runs 2,000 once (a smoke run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use headwaters_pulsar_ws::{
    ClientConfig, Command, Consumer, ConsumerFrame, ConsumerOptions, ConsumerParams,
    InitialPosition, OutgoingMessage, Producer, ProducerOptions, Receipt, Topic,
};
use headwaters_testkit::pulsar::PulsarEmulator;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{Message as Frame, Utf8Bytes};

const WINDOW: usize = 1_000;

fn message(i: u64) -> OutgoingMessage {
    OutgoingMessage::new(vec![b'x'; 100]).with_key(format!("k{}", i % 100))
}

async fn ours_produce(config: &ClientConfig, topic: Topic, n: u64) -> Duration {
    let producer = Producer::connect(
        config,
        topic,
        ProducerOptions::default().with_max_in_flight(WINDOW),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut receipts = Vec::with_capacity(n as usize);
    for i in 0..n {
        receipts.push(producer.enqueue(message(i)).await.unwrap());
    }
    for r in receipts {
        r.await.unwrap();
    }
    let took = started.elapsed();
    producer.close().await;
    took
}

/// A WebSocket server to measure against: the emulator, or a real broker with its token.
struct Server {
    url: String,
    token: Option<String>,
}

impl Server {
    fn config(&self) -> ClientConfig {
        let config = ClientConfig::new(&self.url).unwrap();
        match &self.token {
            Some(token) => config.with_token(token.clone()),
            None => config,
        }
    }

    /// The upgrade request of a raw client for `path` (with the token as a bearer header).
    fn request(&self, path: &str) -> Request {
        let mut request = format!("{}{path}", self.url).into_client_request().unwrap();
        if let Some(token) = &self.token {
            request
                .headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }
}

async fn raw_produce(server: &Server, topic: &Topic, n: u64) -> Duration {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        server.request(&topic.producer_path()),
        None,
        true,
    )
    .await
    .unwrap();
    let (mut sink, mut stream) = ws.split();
    let window = Arc::new(Semaphore::new(WINDOW));
    let started = Instant::now();
    let reader = {
        let window = window.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                let Some(Ok(Frame::Text(t))) = stream.next().await else {
                    panic!("raw producer: connection lost")
                };
                assert!(Receipt::decode(&t).unwrap().result.is_ok());
                window.add_permits(1);
            }
        })
    };
    for i in 0..n {
        window.acquire().await.unwrap().forget();
        let frame = message(i).encode(&i.to_string());
        sink.feed(Frame::Text(Utf8Bytes::from(frame)))
            .await
            .unwrap();
        if window.available_permits() == 0 || i + 1 == n {
            sink.flush().await.unwrap();
        }
    }
    reader.await.unwrap();
    started.elapsed()
}

fn consumer_params() -> ConsumerParams {
    let mut p = ConsumerParams::default();
    p.initial_position = Some(InitialPosition::Earliest);
    p.receiver_queue_size = Some(WINDOW as u32);
    p.pull_mode = Some(true);
    p
}

async fn ours_consume(config: &ClientConfig, topic: Topic, n: u64) -> Duration {
    let started = Instant::now();
    let mut consumer = Consumer::subscribe(
        config,
        topic,
        "bench",
        ConsumerOptions::default().with_params(consumer_params()),
    )
    .await
    .unwrap();
    for _ in 0..n {
        consumer.next().await.unwrap().unwrap().ack();
    }
    let took = started.elapsed();
    consumer.close().await;
    took
}

async fn raw_consume(server: &Server, topic: &Topic, n: u64) -> Duration {
    let query = consumer_params().query().unwrap();
    let started = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
        server.request(&format!(
            "{}?{query}",
            topic.consumer_path("bench").unwrap()
        )),
        None,
        true,
    )
    .await
    .unwrap();
    let permit = |k: usize| Frame::Text(Utf8Bytes::from(Command::Permit(k as u32).encode()));
    ws.send(permit(WINDOW)).await.unwrap();
    let mut since_permit = 0;
    for _ in 0..n {
        let Some(Ok(Frame::Text(t))) = ws.next().await else {
            panic!("raw consumer: connection lost")
        };
        let ConsumerFrame::Message(m) = ConsumerFrame::decode(&t).unwrap() else {
            panic!("raw consumer: unexpected frame")
        };
        ws.feed(Frame::Text(Utf8Bytes::from(
            Command::Ack(m.message_id).encode(),
        )))
        .await
        .unwrap();
        since_permit += 1;
        if since_permit == WINDOW / 2 {
            ws.feed(permit(since_permit)).await.unwrap();
            since_permit = 0;
        }
        // Flush in batches, as a sensible hand-written loop would.
        if since_permit % 64 == 0 {
            ws.flush().await.unwrap();
        }
    }
    let took = started.elapsed();
    let _ = ws.close(None).await;
    took
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Run every case `rounds` times, alternating ours and raw, and print the medians.
async fn suite(label: &str, server: &Server, n: u64, rounds: usize) {
    let config = server.config();
    // A real broker keeps the topics of earlier runs: names of this run's own.
    let run = format!(
        "{}-{}",
        std::process::id(),
        label.split(' ').next().unwrap_or("")
    );
    let topic =
        |name: String| Topic::persistent("public", "default", &format!("{run}-{name}")).unwrap();
    // Warm up both paths once.
    ours_produce(&config, topic("warm".to_owned()), n / 10).await;
    raw_produce(server, &topic("warm".to_owned()), n / 10).await;
    let (mut ours_p, mut raw_p, mut ours_c, mut raw_c) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let ours = topic(format!("ours-{round}"));
        let raw = topic(format!("raw-{round}"));
        ours_p.push(ours_produce(&config, ours.clone(), n).await);
        raw_p.push(raw_produce(server, &raw, n).await);
        // Each topic now holds n messages; drain them.
        ours_c.push(ours_consume(&config, ours, n).await);
        raw_c.push(raw_consume(server, &raw, n).await);
    }
    println!("{label}, median of {rounds}:");
    for (what, ours, raw) in [
        ("produce", median(ours_p), median(raw_p)),
        ("consume", median(ours_c), median(raw_c)),
    ] {
        println!(
            "  {what}: headwaters {:>9.0} msgs/s   raw tokio-tungstenite {:>9.0} msgs/s   ratio {:.2}x",
            rate(n, ours),
            rate(n, raw),
            raw.as_secs_f64() / ours.as_secs_f64()
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // Single runs are noisy on a shared 2-core machine: each case runs `rounds` times,
    // alternating ours and raw, and the medians are compared.
    let (n, rounds): (u64, usize) = if full { (50_000, 5) } else { (2_000, 1) };
    println!("pulsar-ws on loopback, {n} x 100-byte messages, window {WINDOW}");

    // PULSAR_BENCH_ISOLATED_ONLY=1 skips the first set-up (for profiling the second).
    let only_isolated = std::env::var_os("PULSAR_BENCH_ISOLATED_ONLY").is_some();
    // 1. Everything on one multi-threaded runtime: the clients and the emulator contend for
    //    the two cores, so a client's extra thread hand-offs cost the emulator time too.
    let shared = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if !only_isolated {
        shared.block_on(async {
            let emulator = PulsarEmulator::start().await.unwrap();
            let server = Server {
                url: emulator.url(),
                token: None,
            };
            suite(
                "shared runtime (2 workers, emulator in it)",
                &server,
                n,
                rounds,
            )
            .await;
        });
    }
    drop(shared);

    // 2. The emulator on a thread and runtime of its own, the clients on a single-threaded
    //    runtime: one core each. The single-threaded emulator then limits both clients.
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let emulator_thread = std::thread::Builder::new().name("emulator".into());
    let _ = emulator_thread.spawn(move || {
        let emulator_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        emulator_runtime.block_on(async {
            let emulator = PulsarEmulator::start().await.unwrap();
            url_tx.send(emulator.url()).unwrap();
            emulator.serve_forever().await;
        });
    });
    let server = Server {
        url: url_rx.recv().unwrap(),
        token: None,
    };
    let isolated = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    isolated.block_on(suite(
        "isolated (clients on a 1-thread runtime, emulator on its own thread)",
        &server,
        n,
        rounds,
    ));

    // 3. A real Apache Pulsar (`PULSAR_WS_URL`, token from `PULSAR_TOKEN`; `cargo xtask bench
    //    pulsar` starts a standalone), the clients on a single-threaded runtime.
    if let Ok(url) = std::env::var("PULSAR_WS_URL") {
        let server = Server {
            url,
            token: std::env::var("PULSAR_TOKEN").ok(),
        };
        isolated.block_on(suite(
            "real broker (Pulsar standalone at PULSAR_WS_URL, clients on a 1-thread runtime)",
            &server,
            n,
            rounds,
        ));
    } else {
        println!(
            "no PULSAR_WS_URL: the real-broker set-up did not run (cargo xtask bench pulsar starts one)"
        );
    }
}
