//! Two instances on single-active-consumer queues; the active one's process is killed with
//! SIGKILL, the other takes over every queue and nothing is lost.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_amqp_consumer::{AmqpConfig, Consumer, Producer, PublishOptions};
use headwaters_ordering_core::{Config, Handler, Key, Message, Outcome};

use crate::support::{Recorder, Recording, config, eventually, payload};

fn sac_config(prefix: &str) -> AmqpConfig {
    config("sac", 4)
        .with_prefix(prefix)
        .with_single_active_consumer(true)
}

/// Appends each payload it processes to a file, synced before the ack.
struct ToFile(Mutex<std::fs::File>);

impl Handler for ToFile {
    type State = ();
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, _: &Key) -> Result<(), String> {
        Ok(())
    }

    async fn handle_message(&self, m: &Message, (): &mut ()) -> Result<Outcome, String> {
        let mut file = self.0.lock().unwrap();
        file.write_all(&m.payload).map_err(|e| e.to_string())?;
        file.write_all(b"\n").map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
        Ok(Outcome::ack())
    }

    async fn handle_signal(&self, (): (), (): &mut ()) {}
}

/// The active instance of `the_survivor_takes_over_every_queue_and_nothing_is_lost`, run in
/// a child process that the parent kills with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the_survivor_takes_over_every_queue_and_nothing_is_lost in a child process"]
async fn sac_child_instance() {
    let prefix = std::env::var("HEADWATERS_SAC_PREFIX").expect("run by the parent test");
    let file = std::env::var("HEADWATERS_SAC_FILE").expect("run by the parent test");
    let out = std::fs::File::create(file).unwrap();
    let _consumer = Consumer::start(
        sac_config(&prefix),
        ToFile(Mutex::new(out)),
        Config::default(),
    )
    .await
    .unwrap();
    println!("consuming");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn the_survivor_takes_over_every_queue_and_nothing_is_lost() {
    let prefix = format!("hw_sac_{}_", std::process::id());
    let cfg = sac_config(&prefix);
    let producer = Producer::connect(cfg.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("first.log");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sac::sac_child_instance",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HEADWATERS_SAC_PREFIX", &prefix)
        .env("HEADWATERS_SAC_FILE", &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("consuming"))),
        "the first instance did not start"
    );
    let first_seen = || -> HashSet<String> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    // The second instance stands by: the first holds every queue.
    let shared = Arc::new(Recorder::default());
    let second = Consumer::start(
        cfg.clone(),
        Recording(Arc::clone(&shared)),
        Config::default(),
    )
    .await
    .unwrap();
    for seq in 0..50 {
        for key in 0..20 {
            producer
                .publish(&payload(key, seq), PublishOptions::key(key.to_string()))
                .await
                .unwrap();
        }
    }
    eventually(
        "the first half, by the first instance",
        Duration::from_secs(30),
        || first_seen().len() == 1_000,
    )
    .await;
    assert_eq!(
        second.stats().deliveries,
        0,
        "the second instance stands by while the first is active"
    );

    child.kill().unwrap(); // SIGKILL: no goodbye to the broker
    child.wait().unwrap();
    for seq in 50..100 {
        for key in 0..20 {
            producer
                .publish(&payload(key, seq), PublishOptions::key(key.to_string()))
                .await
                .unwrap();
        }
    }
    let all = || {
        let mut all = first_seen();
        all.extend(
            shared
                .firsts
                .lock()
                .unwrap()
                .iter()
                .flat_map(|(k, seqs)| seqs.iter().map(move |s| format!("{k}:{s}"))),
        );
        all
    };
    eventually(
        "every message, the second half by the survivor",
        Duration::from_secs(60),
        || all().len() == 2_000,
    )
    .await;
    assert!(
        second.stats().deliveries >= 1_000,
        "the survivor consumed every queue"
    );
    assert!(shared.order_violations().is_empty());
    second.shutdown(Duration::from_secs(5)).await;
    producer.close().await;
}
