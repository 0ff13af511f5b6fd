//! Split and merge while records flow: children start only after their parents were read to
//! the end and checkpointed, so every key stays in order across the reshard.

use std::collections::HashMap;
use std::time::Duration;

use headwaters_batch_flusher::MemoryCheckpoints;
use headwaters_kinesis::{KinesisWorker, SHARD_END};

use crate::support::{
    Recorder, client, create_stream, put, run_until, shards, source, stream_name, wait_active,
    worker_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kinesis-compatible server: cargo xtask integration (kinesalite) or KINESIS_ENDPOINT"]
async fn split_and_merge_mid_stream_lose_nothing_and_keep_each_key_in_order() {
    let stream = stream_name("reshard");
    create_stream(&stream, 1).await;
    let store = MemoryCheckpoints::new();
    let recorder = Recorder::default();
    let worker = KinesisWorker::new(
        source(&stream),
        recorder.clone(),
        store.clone(),
        worker_config(),
    );
    let produce = async {
        let mut next: HashMap<u32, u32> = HashMap::new();
        let mut put_some = |n: u32| {
            let batch: Vec<(String, String)> = (0..n)
                .map(|i| {
                    let key = (i * 7) % 20;
                    let seq = next.entry(key).or_insert(0);
                    let item = (format!("key{key}"), format!("key{key}:{seq}"));
                    *seq += 1;
                    item
                })
                .collect();
            batch
        };
        for (k, p) in put_some(100) {
            put(&stream, &k, &p).await;
        }
        // Split the one shard in two halves of the hash range.
        let parent = shards(&stream).await.remove(0);
        client()
            .split_shard()
            .stream_name(&stream)
            .shard_to_split(&parent)
            .new_starting_hash_key((1u128 << 127).to_string())
            .send()
            .await
            .unwrap();
        wait_active(&stream).await;
        for (k, p) in put_some(100) {
            put(&stream, &k, &p).await;
        }
        // Merge the two children back.
        let all = shards(&stream).await;
        let children: Vec<&String> = all.iter().filter(|s| **s != parent).collect();
        assert_eq!(children.len(), 2, "{all:?}");
        client()
            .merge_shards()
            .stream_name(&stream)
            .shard_to_merge(children[0])
            .adjacent_shard_to_merge(children[1])
            .send()
            .await
            .unwrap();
        wait_active(&stream).await;
        for (k, p) in put_some(100) {
            put(&stream, &k, &p).await;
        }
        // Everything processed (at least once), then stop.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while recorder.distinct() < 300 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of 300 records",
                recorder.distinct()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (parent, all)
    };
    let (_, (parent, all)) = run_until(&worker, produce).await;
    recorder.assert_in_order_per_key(0);
    assert_eq!(recorder.distinct(), 300);
    // The split parent and both children (merged since) were read to their end and marked so.
    let finished = worker.finished();
    assert_eq!(
        finished.len(),
        3,
        "parent and both children finished: {finished:?}"
    );
    assert!(finished.contains(&worker.key(&parent)));
    for shard in &finished {
        assert!(all.iter().any(|id| worker.key(id) == *shard), "{shard}");
        assert_eq!(store.get(shard).as_deref(), Some(SHARD_END), "{shard}");
    }
}
