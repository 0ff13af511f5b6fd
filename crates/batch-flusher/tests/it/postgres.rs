//! The shared PostgreSQL store: leases and compare-and-set against a real server.

use std::time::Duration;

use headwaters_batch_flusher::{CheckpointError, Checkpointer, PostgresCheckpoints};

fn database_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run `cargo xtask integration`, which starts PostgreSQL, or set DATABASE_URL",
    )
}

#[tokio::test]
#[ignore = "needs PostgreSQL: cargo xtask integration"]
async fn two_instances_never_checkpoint_the_same_shard() {
    let table = "hw_it_checkpoints";
    let lease = Duration::from_millis(300);
    let a = PostgresCheckpoints::connect_with(&database_url(), "instance-a", lease, table)
        .await
        .unwrap();
    let b = PostgresCheckpoints::connect_with(&database_url(), "instance-b", lease, table)
        .await
        .unwrap();
    let shard = format!("shard-{}", std::process::id());

    assert_eq!(a.acquire(&shard).await.unwrap(), None);
    let held = b.acquire(&shard).await.unwrap_err();
    assert!(
        matches!(&held, CheckpointError::LeaseHeld { owner, .. } if owner == "instance-a"),
        "{held}"
    );
    a.checkpoint(&shard, "10").await.unwrap();
    a.renew(&shard).await.unwrap();

    // a stops renewing; its lease runs out and b takes over, from a's checkpoint.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    assert_eq!(b.acquire(&shard).await.unwrap().as_deref(), Some("10"));
    let lost = a.checkpoint(&shard, "11").await.unwrap_err();
    assert!(
        matches!(&lost, CheckpointError::LeaseLost { owner: Some(o), .. } if o == "instance-b"),
        "{lost}"
    );
    assert!(matches!(
        a.renew(&shard).await,
        Err(CheckpointError::LeaseLost { .. })
    ));
    b.checkpoint(&shard, "12").await.unwrap();

    // Release hands the shard over at once.
    b.release(&shard).await.unwrap();
    assert_eq!(a.acquire(&shard).await.unwrap().as_deref(), Some("12"));
}

#[tokio::test]
#[ignore = "needs PostgreSQL: cargo xtask integration"]
async fn bad_urls_and_unreachable_servers_are_typed_errors() {
    let err = PostgresCheckpoints::connect(
        "postgres://u:secret@127.0.0.1:x/db",
        "o",
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CheckpointError::InvalidUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PostgresCheckpoints::connect(
        &format!("postgres://u:secret@127.0.0.1:{port}/db"),
        "o",
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CheckpointError::Connect { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret"));
}

#[tokio::test]
#[ignore = "needs PostgreSQL: cargo xtask integration"]
async fn leases_are_listed_and_a_valid_one_can_be_stolen_once() {
    let table = "hw_it_steal";
    let lease = Duration::from_secs(30);
    let a = PostgresCheckpoints::connect_with(&database_url(), "steal-a", lease, table)
        .await
        .unwrap();
    let b = PostgresCheckpoints::connect_with(&database_url(), "steal-b", lease, table)
        .await
        .unwrap();
    let shard = format!("stolen-{}", std::process::id());
    a.acquire(&shard).await.unwrap();
    a.checkpoint(&shard, "7").await.unwrap();
    let leases = b
        .leases()
        .await
        .unwrap()
        .expect("a shared store lists leases");
    let mine = leases.iter().find(|l| l.shard == shard).expect("listed");
    assert_eq!(mine.owner.as_deref(), Some("steal-a"));
    assert_eq!(mine.checkpoint.as_deref(), Some("7"));
    assert_eq!(b.owner_name(), Some("steal-b"));

    // b takes it over while a's lease is valid: a learns at its next checkpoint.
    assert_eq!(
        b.steal(&shard, "steal-a").await.unwrap().as_deref(),
        Some("7")
    );
    let lost = a.checkpoint(&shard, "8").await.unwrap_err();
    assert!(
        matches!(&lost, CheckpointError::LeaseLost { owner: Some(o), .. } if o == "steal-b"),
        "{lost}"
    );
    // Stealing from someone who no longer holds it fails.
    assert!(matches!(
        a.steal(&shard, "steal-a").await,
        Err(CheckpointError::LeaseHeld { .. })
    ));
    b.checkpoint(&shard, "8").await.unwrap();
    b.release(&shard).await.unwrap();
    let leases = a.leases().await.unwrap().unwrap();
    assert_eq!(
        leases.iter().find(|l| l.shard == shard).unwrap().owner,
        None
    );
}
