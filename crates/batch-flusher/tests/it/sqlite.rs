//! Crash safety: a shard's process is killed with SIGKILL mid-stream, and a new processor
//! restarts it from the checkpoint stored in SQLite.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use headwaters_batch_flusher::{BatchProcessor, Checkpointer, SqliteCheckpoints, run_shard};

use crate::fakes::{End, LogSource, Script, SinkFactory};
use crate::processor::config;

const RECORDS: u64 = 2_000;

fn factory(file: Option<std::path::PathBuf>) -> SinkFactory {
    SinkFactory {
        script: Script {
            capacity: 64,
            reverse: true,
            ..Script::default()
        },
        file,
        ..SinkFactory::default()
    }
}

/// The first life of `killed_mid_stream_then_restarted_flushes_every_record_and_skips_none`,
/// run in a child process that the parent kills with SIGKILL. Run on its own, it processes a
/// short shard to its end.
#[tokio::test]
async fn child_first_life() {
    let (dir, records, ends) = match std::env::var("HEADWATERS_FLUSHER_CRASH_DIR") {
        Ok(dir) => (std::path::PathBuf::from(dir), RECORDS, false),
        Err(_) => (tempfile::tempdir().unwrap().keep(), 50, true),
    };
    let source = LogSource::default();
    source.push("s", 1..=records);
    if ends {
        source.end("s", End::ShardEnded);
    }
    let factory = factory(Some(dir.join("sink")));
    let store = SqliteCheckpoints::open(dir.join("checkpoints.sqlite"))
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let cfg = config(5).with_batch_records(8);
    println!("started");
    // Never returns while the shard is open: the parent kills this process.
    let end = run_shard("s", &source, &factory, &store, &cfg, rx).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(factory.sinks.lock().unwrap()["s"].len() as u64, records);
}

#[test]
fn killed_mid_stream_then_restarted_flushes_every_record_and_skips_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("checkpoints.sqlite");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sqlite::child_first_life",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HEADWATERS_FLUSHER_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("started"))),
        "the child did not start"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let store = SqliteCheckpoints::open(&db).await.ok()?;
            store.acquire("s").await.ok().flatten()
        })
        .map(|p| p.parse::<u64>().unwrap())
    };
    // Kill it once it has checkpointed past the first tenth, mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stored(&rt).is_none_or(|p| p <= RECORDS / 10) {
        assert!(
            std::time::Instant::now() < deadline,
            "the child stored no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let checkpoint = stored(&rt).expect("a checkpoint survives the kill");
    let written_before: Vec<u64> = std::fs::read_to_string(dir.path().join("sink"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        (1..=checkpoint).all(|r| written_before.contains(&r)),
        "the checkpoint {checkpoint} passes a record that was never written"
    );
    assert!(checkpoint < RECORDS, "killed mid-stream, not at the end");

    // Second life: a new processor on the same file resumes after the checkpoint.
    let source = LogSource::default();
    source.push("s", 1..=RECORDS);
    source.end("s", End::ShardEnded);
    let factory = factory(None);
    rt.block_on(async {
        let store = SqliteCheckpoints::open(&db).await.unwrap();
        let p = BatchProcessor::new(source.clone(), factory.clone(), store, config(5));
        p.start("s");
        p.wait().await;
    });
    assert_eq!(source.opened_from.lock().unwrap()["s"], [Some(checkpoint)]);
    let mut all = written_before;
    all.extend(&factory.sinks.lock().unwrap()["s"]);
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all,
        (1..=RECORDS).collect::<Vec<_>>(),
        "every record written at least once across the two lives"
    );
    assert_eq!(stored(&rt), Some(RECORDS));
}

#[tokio::test]
async fn bad_table_names_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteCheckpoints::open_with(dir.path().join("x"), "a b")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid table name"), "{err}");
}
