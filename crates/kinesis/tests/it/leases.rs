//! Shards shared by workers through the PostgreSQL checkpoint store: balanced by taking
//! leases over, and taken over from a worker killed with SIGKILL.

use std::collections::HashMap;
use std::time::Duration;

use headwaters_batch_flusher::{Checkpointer, PostgresCheckpoints};
use headwaters_kinesis::KinesisWorker;

use crate::support::{
    Recorder, create_stream, put_numbered, run_until, source, stream_name, worker_config,
};

pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run `cargo xtask integration`, which starts PostgreSQL, or set DATABASE_URL",
    )
}

pub(crate) async fn store(owner: &str, table: &str, lease: Duration) -> PostgresCheckpoints {
    PostgresCheckpoints::connect_with(&database_url(), owner, lease, table)
        .await
        .unwrap()
}

async fn held(store: &PostgresCheckpoints) -> HashMap<String, usize> {
    let mut held = HashMap::new();
    for lease in store.leases().await.unwrap().unwrap() {
        if let Some(owner) = lease.owner {
            *held.entry(owner).or_default() += 1;
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and a Kinesis-compatible server: cargo xtask integration"]
async fn a_second_worker_takes_its_share_over_and_nothing_is_lost() {
    let stream = stream_name("balance");
    let table = format!("hw_kinesis_balance_{}", std::process::id());
    create_stream(&stream, 4).await;
    let lease = Duration::from_secs(10);
    let recorder = Recorder::default();
    let a = KinesisWorker::new(
        source(&stream),
        recorder.clone(),
        store("worker-a", &table, lease).await,
        worker_config(),
    );
    let b = KinesisWorker::new(
        source(&stream),
        recorder.clone(),
        store("worker-b", &table, lease).await,
        worker_config(),
    );
    let observer = store("observer", &table, lease).await;
    let scenario = async {
        put_numbered(&stream, 16, 0..160).await;
        // A alone takes all four shards.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while held(&observer).await.get("worker-a") != Some(&4) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a took {:?}",
                held(&observer).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // B joins: it takes leases over, one per round, until each has two.
        let balance = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let now = held(&observer).await;
                if now.get("worker-a") == Some(&2) && now.get("worker-b") == Some(&2) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "not balanced: {now:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            put_numbered(&stream, 16, 160..320).await;
            recorder
                .wait_for_distinct(320, Duration::from_secs(60))
                .await;
        };
        let (ends_b, ()) = run_until(&b, balance).await;
        assert_eq!(ends_b.len(), 2, "{ends_b:?}");
    };
    let (ends_a, ()) = run_until(&a, scenario).await;
    assert!(
        ends_a
            .iter()
            .filter(|(_, e)| *e == headwaters_batch_flusher::ShardEnd::Stopped)
            .count()
            == 2,
        "a stops the two it kept: {ends_a:?}"
    );
    assert_eq!(
        recorder.distinct(),
        320,
        "every record processed at least once"
    );
    assert!(b.source().metrics().records() > 0);
}

/// Flushes records as lines `payload` to a file (the child worker's sink).
#[derive(Clone)]
struct ToFile(std::sync::Arc<std::sync::Mutex<std::fs::File>>);

struct FileFlusher(ToFile, Vec<(String, headwaters_batch_flusher::Token)>);

impl headwaters_batch_flusher::Flusher for FileFlusher {
    type Record = headwaters_kinesis::KinesisRecord;
    type Error = std::io::Error;
    async fn add_record(
        &mut self,
        r: Self::Record,
        t: headwaters_batch_flusher::Token,
    ) -> Result<headwaters_batch_flusher::Added<Self::Record>, Self::Error> {
        self.1
            .push((String::from_utf8_lossy(&r.data).into_owned(), t));
        Ok(headwaters_batch_flusher::Added::Added)
    }
    async fn flush(
        &mut self,
        _: headwaters_batch_flusher::FlushKind,
    ) -> Result<Vec<headwaters_batch_flusher::Token>, Self::Error> {
        use std::io::Write;
        let mut file = (self.0).0.lock().unwrap();
        let mut tokens = Vec::new();
        for (payload, t) in self.1.drain(..) {
            writeln!(file, "{payload}")?;
            tokens.push(t);
        }
        file.flush()?;
        Ok(tokens)
    }
}

impl headwaters_batch_flusher::FlusherFactory for ToFile {
    type Flusher = FileFlusher;
    async fn init(&self, _: &str) -> Result<FileFlusher, std::io::Error> {
        Ok(FileFlusher(self.clone(), Vec::new()))
    }
}

const CHILD_LEASE: Duration = Duration::from_secs(2);

/// The first worker of `a_killed_workers_shards_are_taken_over_after_its_lease_expires`, run
/// in a child process that the parent kills with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_killed_workers_shards_are_taken_over_after_its_lease_expires in a child process"]
async fn kinesis_child_instance() {
    let stream = std::env::var("HEADWATERS_KINESIS_STREAM").expect("run by the parent test");
    let table = std::env::var("HEADWATERS_KINESIS_TABLE").expect("run by the parent test");
    let file = std::env::var("HEADWATERS_KINESIS_FILE").expect("run by the parent test");
    let sink = ToFile(std::sync::Arc::new(std::sync::Mutex::new(
        std::fs::File::create(file).unwrap(),
    )));
    let worker = KinesisWorker::new(
        source(&stream),
        sink,
        store("doomed", &table, CHILD_LEASE).await,
        worker_config(),
    );
    println!("working");
    worker.run(std::future::pending()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and a Kinesis-compatible server: cargo xtask integration"]
async fn a_killed_workers_shards_are_taken_over_after_its_lease_expires() {
    use std::io::BufRead;
    let stream = stream_name("sigkill");
    let table = format!("hw_kinesis_sigkill_{}", std::process::id());
    create_stream(&stream, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doomed.log");
    let observer = store("observer", &table, CHILD_LEASE).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "leases::kinesis_child_instance",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HEADWATERS_KINESIS_STREAM", &stream)
        .env("HEADWATERS_KINESIS_TABLE", &table)
        .env("HEADWATERS_KINESIS_FILE", &file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("working"))),
        "the child worker did not start"
    );
    put_numbered(&stream, 10, 0..100).await;
    let doomed_seen = || -> std::collections::HashSet<String> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while doomed_seen().len() < 100 || held(&observer).await.get("doomed") != Some(&2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child read {} records",
            doomed_seen().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL: no flush, no release
    child.wait().unwrap();
    let killed = tokio::time::Instant::now();
    put_numbered(&stream, 10, 100..200).await;
    // The survivor waits out the dead worker's leases, then resumes from its checkpoints.
    let recorder = Recorder::default();
    let survivor = KinesisWorker::new(
        source(&stream),
        recorder.clone(),
        store("survivor", &table, CHILD_LEASE).await,
        worker_config(),
    );
    let wait = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut all = doomed_seen();
            all.extend(recorder.payloads());
            if all.len() >= 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of 200 records",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        killed.elapsed()
    };
    let (ends, took_over) = run_until(&survivor, wait).await;
    assert_eq!(ends.len(), 2, "the survivor holds both shards: {ends:?}");
    assert!(
        took_over >= CHILD_LEASE,
        "the leases were taken only after they expired ({took_over:?})"
    );
    println!(
        "the survivor had every record {took_over:.2?} after the kill (lease {CHILD_LEASE:?})"
    );
    // It resumed from the checkpoints: not from the start of the shards.
    assert!(
        recorder.distinct() < 200,
        "the survivor re-read only what was not checkpointed"
    );
    recorder.assert_in_order_per_key_from_first();
}
