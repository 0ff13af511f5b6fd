//! Crash safety: kill a shard mid-stream, restart from the stored checkpoint.

use std::time::Duration;

use headwaters_batch_flusher::{BatchProcessor, Checkpointer, SqliteCheckpoints, run_shard};

use crate::fakes::{End, LogSource, Script, SinkFactory};
use crate::processor::config;

#[tokio::test]
async fn killed_mid_stream_then_restarted_flushes_every_record_and_skips_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoints.sqlite");
    let source = LogSource::default();
    source.push("s", 1..=2_000);
    let factory = SinkFactory {
        script: Script {
            capacity: 64,
            reverse: true,
            ..Script::default()
        },
        ..SinkFactory::default()
    };
    // First life: abort the task (like kill -9) while it is mid-stream.
    let store = SqliteCheckpoints::open(&path).await.unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let cfg = config(5).with_batch_records(8);
    let first = tokio::spawn({
        let (source, factory, cfg) = (source.clone(), factory.clone(), cfg.clone());
        async move { run_shard("s", &source, &factory, &store, &cfg, rx).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = SqliteCheckpoints::open(&path)
            .await
            .unwrap()
            .acquire("s")
            .await
            .unwrap();
        if stored.is_some_and(|p| p.parse::<u64>().unwrap() > 200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint stored"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.abort();
    let _ = first.await;
    let checkpoint: u64 = SqliteCheckpoints::open(&path)
        .await
        .unwrap()
        .acquire("s")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    let flushed_before = factory.sinks.lock().unwrap()["s"].clone();
    assert!(
        (1..=checkpoint).all(|r| flushed_before.contains(&r)),
        "the checkpoint never passes an unflushed record"
    );

    // Second life: a new processor on the same file resumes after the checkpoint.
    source.end("s", End::ShardEnded);
    let store = SqliteCheckpoints::open(&path).await.unwrap();
    let p = BatchProcessor::new(source.clone(), factory.clone(), store, cfg);
    p.start("s");
    p.wait().await;
    assert_eq!(
        source.opened_from.lock().unwrap()["s"],
        [None, Some(checkpoint)]
    );
    let mut all = factory.sinks.lock().unwrap()["s"].clone();
    all.sort();
    all.dedup();
    assert_eq!(
        all,
        (1..=2_000).collect::<Vec<_>>(),
        "every record flushed at least once"
    );
    let stored = SqliteCheckpoints::open(&path)
        .await
        .unwrap()
        .acquire("s")
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some("2000"));
}

#[tokio::test]
async fn bad_table_names_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteCheckpoints::open_with(dir.path().join("x"), "a b")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid table name"), "{err}");
}
