//! The SQLite store: round trips, errors, and crash safety under kill -9.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use headwaters_process_status::{
    Error, ProcessStatus, SqliteStore, StatusStore, Timestamp, WriteBehind,
};

const ENTITIES: i64 = 50;

#[tokio::test]
async fn round_trip_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status.db");
    let status = ProcessStatus::open(
        SqliteStore::open(&path).await.unwrap(),
        WriteBehind::default(),
    )
    .await
    .unwrap();
    for i in 0..1_000 {
        status
            .item_processed(&format!("e{}", i % 10), Timestamp::from_micros(i))
            .await
            .unwrap();
    }
    status
        .item_processed("e0", Timestamp::from_micros(1))
        .await
        .unwrap();
    status.close().await.unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    let mut items = store.load().await.unwrap();
    items.sort();
    assert_eq!(items.len(), 10);
    assert_eq!(
        items[0],
        ("e0".to_owned(), Timestamp::from_micros(990)),
        "never backwards"
    );
}

#[tokio::test]
async fn reset_touches_only_its_own_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status.db");
    let a = SqliteStore::open_with(&path, "status_a", Default::default())
        .await
        .unwrap();
    let b = SqliteStore::open_with(&path, "status_b", Default::default())
        .await
        .unwrap();
    a.item_processed("x", Timestamp::from_micros(1))
        .await
        .unwrap();
    b.item_processed("x", Timestamp::from_micros(2))
        .await
        .unwrap();
    a.reset().await.unwrap();
    assert!(a.load().await.unwrap().is_empty());
    assert_eq!(b.load().await.unwrap().len(), 1);
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad_table =
        SqliteStore::open_with(dir.path().join("x.db"), "x; DROP", Default::default()).await;
    assert!(matches!(bad_table, Err(Error::InvalidTableName(_))));
    let missing_dir = SqliteStore::open(dir.path().join("no/such/dir/x.db")).await;
    let err = missing_dir.unwrap_err();
    assert!(matches!(err, Error::Sqlite(_)), "{err:?}");
    assert!(err.to_string().contains("SQLite"), "{err}");
}

/// The writer role of `crash_mid_write_leaves_only_written_values`, run in a child process
/// that the parent kills with SIGKILL. Run on its own, it checks a short write sequence.
#[tokio::test]
async fn child_writer() {
    let (path, rounds) = match std::env::var("HEADWATERS_CRASH_DB") {
        Ok(path) => (std::path::PathBuf::from(path), i64::MAX),
        Err(_) => (tempfile::tempdir().unwrap().keep().join("solo.db"), 3),
    };
    let config = WriteBehind::default().with_max_delay(Duration::from_millis(1));
    let status = ProcessStatus::open(SqliteStore::open(&path).await.unwrap(), config)
        .await
        .unwrap();
    for round in 0..rounds {
        for e in 0..ENTITIES {
            status
                .item_processed(&format!("e{e}"), Timestamp::from_micros(round * 1_000 + e))
                .await
                .unwrap();
        }
        status.flush().await.unwrap();
        // The parent trusts this line: round `round` is committed.
        println!("durable {round}");
    }
    let items = SqliteStore::open(&path)
        .await
        .unwrap()
        .load()
        .await
        .unwrap();
    assert_eq!(items.len() as i64, ENTITIES);
    assert!(
        items
            .iter()
            .all(|(_, t)| t.as_micros() / 1_000 == rounds - 1)
    );
}

#[test]
fn crash_mid_write_leaves_only_written_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sqlite::child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HEADWATERS_CRASH_DB", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    let mut last_durable = -1_i64;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("durable ") {
            last_durable = n.parse().unwrap();
            if last_durable >= 30 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "child too slow"
        );
    }
    assert!(last_durable >= 30, "the child never got going");
    // Let it get into the next writes, then SIGKILL it mid-stream.
    std::thread::sleep(Duration::from_millis(3));
    child.kill().unwrap();
    child.wait().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let items = rt.block_on(async {
        SqliteStore::open(&path)
            .await
            .unwrap()
            .load()
            .await
            .unwrap()
    });
    assert_eq!(items.len() as i64, ENTITIES, "every entity survived");
    for (entity, ts) in items {
        let e: i64 = entity[1..].parse().unwrap();
        let (round, tag) = (ts.as_micros() / 1_000, ts.as_micros() % 1_000);
        assert_eq!(
            tag, e,
            "{entity} holds a value written for another entity: torn write"
        );
        assert!(
            round >= last_durable,
            "{entity} lost a committed round ({round} < {last_durable})"
        );
    }
}
