//! Against a Kinesis-compatible server (kinesalite, started by `cargo xtask integration`, or
//! any endpoint in `KINESIS_ENDPOINT`): reading, checkpoints, resharding, KPL aggregates.

mod faults;
mod kpl_vectors;
mod leases;
mod reshard;
mod support;

use std::time::Duration;

use headwaters_batch_flusher::{MemoryCheckpoints, Source, SourceEvent, SourceRecord};
use headwaters_kinesis::{KinesisPosition, KinesisRecord, KinesisWorker, ShardStream, kpl};
use headwaters_ordering_core::NoSettle;

use support::{
    Recorder, create_stream, put_numbered, put_raw, run_until, source, stream_name, worker_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kinesis-compatible server: cargo xtask integration (kinesalite) or KINESIS_ENDPOINT"]
async fn every_record_in_key_order_then_a_restart_resumes_after_the_checkpoint() {
    let stream = stream_name("resume");
    create_stream(&stream, 2).await;
    put_numbered(&stream, 8, 0..200).await;
    let store = MemoryCheckpoints::new();
    let recorder = Recorder::default();
    let worker = KinesisWorker::new(
        source(&stream),
        recorder.clone(),
        store.clone(),
        worker_config(),
    );
    let (ends, ()) = run_until(&worker, async {
        recorder.wait_for(200, Duration::from_secs(60)).await;
    })
    .await;
    assert_eq!(ends.len(), 2, "both shards read: {ends:?}");
    recorder.assert_in_order_per_key(0);
    assert_eq!(recorder.total(), 200, "no duplicates within one run");
    let shards = worker.list_shards().await.unwrap();
    for s in &shards {
        let checkpoint = store
            .get(&worker.key(&s.id))
            .expect("a checkpoint per shard");
        checkpoint.parse::<KinesisPosition>().expect("a position");
    }
    assert!(
        worker
            .source()
            .metrics()
            .max_millis_behind_latest()
            .is_some()
    );

    // 50 more; a new worker on the same store reads only those.
    put_numbered(&stream, 8, 200..250).await;
    let again = Recorder::default();
    let worker = KinesisWorker::new(
        source(&stream),
        again.clone(),
        store.clone(),
        worker_config(),
    );
    run_until(&worker, async {
        again.wait_for(50, Duration::from_secs(60)).await;
        // Nothing older comes late.
        tokio::time::sleep(Duration::from_millis(500)).await;
    })
    .await;
    assert_eq!(again.total(), 50, "only the records after the checkpoints");
    again.assert_in_order_per_key(25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kinesis-compatible server: cargo xtask integration (kinesalite) or KINESIS_ENDPOINT"]
async fn kpl_aggregates_are_split_and_a_checkpoint_inside_one_skips_what_was_done() {
    let stream = stream_name("kpl");
    create_stream(&stream, 1).await;
    let users: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("user{i}"), format!("payload {i}").into_bytes()))
        .collect();
    let aggregate = kpl::aggregate(users.iter().map(|(k, d)| (k.as_str(), None, d.as_slice())));
    let first = put_raw(&stream, "user0", aggregate.to_vec()).await;
    let plain = put_raw(&stream, "plain", b"not an aggregate".to_vec()).await;

    let src = source(&stream);
    let shard = support::shards(&stream).await.remove(0);
    // From the start: ten user records with their places, then the plain one.
    let seen: Vec<(String, String, Vec<u8>)> = records(src.open(&shard, None).await.unwrap(), 11)
        .await
        .into_iter()
        .map(|r| {
            (
                r.position.to_string(),
                r.record.partition_key,
                r.record.data.to_vec(),
            )
        })
        .collect();
    for (i, (position, key, data)) in seen[..10].iter().enumerate() {
        assert_eq!(position, &format!("{first}:{i}"));
        assert_eq!((key, data), (&users[i].0, &users[i].1));
    }
    assert_eq!(
        seen[10],
        (
            plain.clone(),
            "plain".to_owned(),
            b"not an aggregate".to_vec()
        )
    );

    // From a checkpoint inside the aggregate: the user records after it, then the plain one.
    let inside: KinesisPosition = format!("{first}:6").parse().unwrap();
    let keys: Vec<String> = records(src.open(&shard, Some(inside)).await.unwrap(), 4)
        .await
        .into_iter()
        .map(|r| r.record.partition_key)
        .collect();
    assert_eq!(keys, ["user7", "user8", "user9", "plain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kinesis-compatible server: cargo xtask integration (kinesalite) or KINESIS_ENDPOINT"]
async fn two_streams_share_a_checkpoint_store_without_mixing_their_shards() {
    // Shard ids repeat from stream to stream (`shardId-000000000000`): checkpoints are kept
    // per stream, so the second stream does not start after the first one's position.
    let store = MemoryCheckpoints::new();
    for name in ["first", "second"] {
        let stream = stream_name(&format!("shared-{name}"));
        create_stream(&stream, 1).await;
        put_numbered(&stream, 1, 0..30).await;
        let recorder = Recorder::default();
        let worker = KinesisWorker::new(
            source(&stream),
            recorder.clone(),
            store.clone(),
            worker_config(),
        );
        run_until(&worker, recorder.wait_for(30, Duration::from_secs(30))).await;
        recorder.assert_in_order_per_key(0);
        let shard = support::shards(&stream).await.remove(0);
        assert!(
            store.get(&format!("{stream}/{shard}")).is_some(),
            "checkpoint under the stream's name"
        );
    }
}

type Record = SourceRecord<KinesisPosition, KinesisRecord, NoSettle>;

/// The next `n` records of a shard's stream (other events skipped), 20 s at most for each.
async fn records(mut events: ShardStream, n: usize) -> Vec<Record> {
    let mut records = Vec::new();
    while records.len() < n {
        let event = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::StreamExt::next(&mut events),
        )
        .await
        .expect("records in time")
        .expect("open stream")
        .expect("no error");
        if let SourceEvent::Record(r) = event {
            records.push(r);
        }
    }
    records
}
