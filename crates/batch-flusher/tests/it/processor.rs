//! The driver: flush triggers, checkpoints, shard end, lease loss, restarts, watchdog, acks.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use headwaters_batch_flusher::{
    BatchProcessor, MemoryCheckpoints, ProcessorConfig, Schedule, ShardEnd, ShardError, run_shard,
};

use crate::fakes::{End, LogSource, Script, SinkFactory};

pub(crate) fn config(flush_ms: u64) -> ProcessorConfig {
    ProcessorConfig::default()
        .with_schedule(
            Schedule::default()
                .with_flush_interval(Duration::from_millis(flush_ms))
                .with_checkpoint_interval(Duration::from_millis(5)),
        )
        .with_watchdog(Some(Duration::from_millis(300)))
        .with_restart_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn sink(factory: &SinkFactory, shard: &str) -> Vec<u64> {
    factory
        .sinks
        .lock()
        .unwrap()
        .get(shard)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn the_timer_flushes_even_when_no_records_arrive() {
    let source = LogSource::default();
    source.push("s", [1, 2, 3]);
    let factory = SinkFactory::default();
    let store = MemoryCheckpoints::new();
    let p = BatchProcessor::new(source.clone(), factory.clone(), store.clone(), config(20));
    p.start("s");
    // No record arrives after the third: only the timer can flush them.
    eventually("timer flush", || sink(&factory, "s") == [1, 2, 3]).await;
    eventually("checkpoint", || store.get("s").as_deref() == Some("3")).await;
    eventually("acks after flush", || {
        source.acked.lock().unwrap().get("s").map(Vec::len) == Some(3)
    })
    .await;
    assert_eq!(p.stop().await, [("s".to_owned(), ShardEnd::Stopped)]);
}

#[tokio::test]
async fn full_flushes_then_adds_again_and_shard_end_checkpoints_the_last_record() {
    let source = LogSource::default();
    source.push("s", 1..=10);
    source.end("s", End::ShardEnded);
    let factory = SinkFactory {
        script: Script {
            capacity: 3,
            reverse: true,
            ..Script::default()
        },
        ..SinkFactory::default()
    };
    let store = MemoryCheckpoints::new();
    let p = BatchProcessor::new(
        source.clone(),
        factory.clone(),
        store.clone(),
        config(10_000),
    );
    p.start("s");
    let ends = p.wait().await;
    assert!(
        matches!(&ends[0].1, ShardEnd::Terminated { .. }),
        "{ends:?}"
    );
    let mut flushed = sink(&factory, "s");
    flushed.sort();
    assert_eq!(flushed, (1..=10).collect::<Vec<_>>());
    assert!(
        factory.flushes.load(SeqCst) >= 4,
        "3 full flushes and the final one"
    );
    assert_eq!(store.get("s").as_deref(), Some("10"));
    assert_eq!(source.acked.lock().unwrap()["s"].len(), 10);
}

#[tokio::test]
async fn ignored_records_are_acked_and_do_not_block_the_checkpoint() {
    let source = LogSource::default();
    source.push("s", 1..=6);
    source.end("s", End::ShardEnded);
    let factory = SinkFactory {
        script: Script {
            ignore_odd: true,
            ..Script::default()
        },
        ..SinkFactory::default()
    };
    let store = MemoryCheckpoints::new();
    let p = BatchProcessor::new(
        source.clone(),
        factory.clone(),
        store.clone(),
        config(10_000),
    );
    p.start("s");
    p.wait().await;
    assert_eq!(sink(&factory, "s"), [2, 4, 6]);
    assert_eq!(store.get("s").as_deref(), Some("6"));
    assert_eq!(source.acked.lock().unwrap()["s"].len(), 6);
}

#[tokio::test]
async fn a_flusher_error_restarts_only_its_shard_from_the_checkpoint() {
    let source = LogSource::default();
    let factory = SinkFactory {
        script: Script {
            capacity: 2,
            fail_flush: vec![3],
            ..Script::default()
        },
        ..SinkFactory::default()
    };
    let store = MemoryCheckpoints::new();
    let cfg = config(10_000).with_batch_records(1);
    let p = BatchProcessor::new(source.clone(), factory.clone(), store.clone(), cfg);
    p.start("a");
    source.push("a", 1..=8);
    eventually("a progresses", || p.stats().restarts == 1).await;
    p.start("b");
    source.push("b", 1..=4);
    source.end("a", End::ShardEnded);
    source.end("b", End::ShardEnded);
    let ends = p.wait().await;
    assert!(
        ends.iter()
            .all(|(_, e)| matches!(e, ShardEnd::Terminated { .. })),
        "{ends:?}"
    );
    assert_eq!(p.stats().restarts, 1, "only shard a restarted");
    let mut a = sink(&factory, "a");
    a.sort();
    a.dedup();
    assert_eq!(
        a,
        (1..=8).collect::<Vec<_>>(),
        "every record of a flushed at least once"
    );
    assert_eq!(sink(&factory, "b"), [1, 2, 3, 4], "b flushed exactly once");
    // The restart resumed from the stored checkpoint, which never passes an unflushed
    // record: only records 1..=4 were flushed before the third flush failed.
    let from = source.opened_from.lock().unwrap()["a"].clone();
    assert_eq!(from.len(), 2, "one restart: {from:?}");
    assert_eq!(from[0], None);
    assert!(from[1].is_none_or(|p| p <= 4), "resumed after {from:?}");
}

#[tokio::test]
async fn a_stuck_flusher_is_caught_by_the_watchdog_and_restarted() {
    let source = LogSource::default();
    source.push("s", 1..=4);
    let factory = SinkFactory {
        script: Script {
            hang_flush: vec![1],
            ..Script::default()
        },
        ..SinkFactory::default()
    };
    let store = MemoryCheckpoints::new();
    let p = BatchProcessor::new(source.clone(), factory.clone(), store.clone(), config(10));
    p.start("s");
    eventually("restart", || p.stats().restarts == 1).await;
    eventually("flushed after the restart", || {
        sink(&factory, "s") == [1, 2, 3, 4]
    })
    .await;
    assert_eq!(
        factory.inits.load(SeqCst),
        2,
        "a fresh flusher after the restart"
    );
    p.stop().await;
}

#[tokio::test]
async fn run_shard_reports_the_stuck_call() {
    let source = LogSource::default();
    source.push("s", [1]);
    let factory = SinkFactory {
        script: Script {
            hang_flush: vec![1],
            ..Script::default()
        },
        ..SinkFactory::default()
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = run_shard(
        "s",
        &source,
        &factory,
        &MemoryCheckpoints::new(),
        &config(5),
        rx,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ShardError::Stuck { call: "flush", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("stuck"));
}

#[tokio::test]
async fn lease_loss_stops_without_flush_checkpoint_or_acks() {
    let source = LogSource::default();
    source.push("s", 1..=3);
    source.end("s", End::LeaseLost);
    let factory = SinkFactory::default();
    let store = MemoryCheckpoints::new();
    let p = BatchProcessor::new(
        source.clone(),
        factory.clone(),
        store.clone(),
        config(10_000),
    );
    p.start("s");
    assert_eq!(p.wait().await, [("s".to_owned(), ShardEnd::LeaseLost)]);
    assert!(sink(&factory, "s").is_empty());
    assert_eq!(store.get("s"), None);
    assert!(
        source.acked.lock().unwrap().get("s").is_none(),
        "unflushed records are not acked"
    );
}

#[tokio::test]
async fn a_full_flush_that_keeps_records_is_an_error_at_shard_end() {
    let source = LogSource::default();
    source.push("s", 1..=3);
    source.end("s", End::ShardEnded);
    let factory = SinkFactory {
        script: Script {
            lose_one_on_full: true,
            ..Script::default()
        },
        ..SinkFactory::default()
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = run_shard(
        "s",
        &source,
        &factory,
        &MemoryCheckpoints::new(),
        &config(10_000),
        rx,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ShardError::Leftover(_)), "{err}");
}

#[tokio::test]
async fn tokens_from_heartbeat_count_as_a_partial_flush() {
    let source = LogSource::default();
    source.push("s", [1, 2, 3, 4, 5]);
    let factory = SinkFactory {
        script: Script {
            flush_in_heartbeat: true,
            ..Script::default()
        },
        ..SinkFactory::default()
    };
    let store = MemoryCheckpoints::new();
    // The timer would flush only after a minute: what is written comes from heartbeats.
    let p = BatchProcessor::new(
        source.clone(),
        factory.clone(),
        store.clone(),
        config(60_000),
    );
    p.start("s");
    eventually("heartbeat writes", || {
        sink(&factory, "s") == [1, 2, 3, 4, 5]
    })
    .await;
    eventually("checkpoint from heartbeat tokens", || {
        store.get("s").as_deref() == Some("5")
    })
    .await;
    eventually("acks from heartbeat tokens", || {
        source.acked.lock().unwrap().get("s").map(Vec::len) == Some(5)
    })
    .await;
    assert_eq!(p.stop().await, [("s".to_owned(), ShardEnd::Stopped)]);
}
