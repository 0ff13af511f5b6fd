//! ProcessStatus semantics over in-process stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use headwaters_process_status::{
    Error, Item, MemoryStore, NoopStore, ProcessStatus, StatusStore, Timestamp, WriteBehind,
};

fn ts(n: i64) -> Timestamp {
    Timestamp::from_micros(n)
}

/// Counts store calls and can be told to fail.
#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    calls: AtomicUsize,
    items: AtomicUsize,
    fail_next: AtomicUsize,
}

#[async_trait]
impl StatusStore for Counting {
    async fn store(&self, items: &[Item]) -> Result<(), Error> {
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::ConnectionLost("injected".into()));
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.items.fetch_add(items.len(), Ordering::SeqCst);
        self.inner.store(items).await
    }
    async fn load(&self) -> Result<Vec<Item>, Error> {
        self.inner.load().await
    }
    async fn reset(&self) -> Result<(), Error> {
        self.inner.reset().await
    }
}

#[tokio::test]
async fn view_answers_processed_and_never_goes_backwards() {
    let status = ProcessStatus::open(MemoryStore::new(), WriteBehind::default())
        .await
        .unwrap();
    assert_eq!(status.last_processed("posts"), None);
    status.item_processed("posts", ts(10)).await.unwrap();
    status.item_processed("posts", ts(5)).await.unwrap();
    assert_eq!(status.last_processed("posts"), Some(ts(10)));
    assert!(status.processed("posts", ts(10)));
    assert!(status.processed("posts", ts(9)));
    assert!(!status.processed("posts", ts(11)));
    assert!(!status.processed("comments", ts(0)));
}

#[tokio::test]
async fn writes_are_coalesced_per_entity_and_batched() {
    let store = Arc::new(Counting::default());
    let status = ProcessStatus::open(Arc::clone(&store), WriteBehind::default())
        .await
        .unwrap();
    for i in 0..10_000 {
        status
            .item_processed(&format!("e{}", i % 100), ts(i))
            .await
            .unwrap();
    }
    status.flush().await.unwrap();
    let calls = store.calls.load(Ordering::SeqCst);
    assert!(calls < 50, "10,000 items took {calls} store calls");
    assert!(store.items.load(Ordering::SeqCst) < 10_000);
    let mut stored = store.load().await.unwrap();
    stored.sort();
    assert_eq!(stored.len(), 100);
    for (entity, t) in stored {
        let i: i64 = entity[1..].parse().unwrap();
        assert_eq!(t, ts(9_900 + i), "{entity} holds its greatest timestamp");
    }
}

#[tokio::test]
async fn items_become_durable_within_the_delay_without_flush() {
    let store = Arc::new(Counting::default());
    let config = WriteBehind::default().with_max_delay(Duration::from_millis(5));
    let status = ProcessStatus::open(Arc::clone(&store), config)
        .await
        .unwrap();
    status.item_processed("a", ts(1)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.load().await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never written");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn failed_writes_are_reported_and_retried_without_loss() {
    let store = Arc::new(Counting::default());
    store.fail_next.store(2, Ordering::SeqCst);
    let config = WriteBehind::default().with_retry_backoff(Duration::from_millis(1));
    let status = ProcessStatus::open(Arc::clone(&store), config)
        .await
        .unwrap();
    status.item_processed("a", ts(7)).await.unwrap();
    let first = status.flush().await;
    assert!(matches!(first, Err(Error::ConnectionLost(_))), "{first:?}");
    // The item is kept and retried; a later flush sees it committed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while status.flush().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(store.load().await.unwrap(), vec![("a".to_owned(), ts(7))]);
}

#[tokio::test]
async fn backpressure_when_too_many_entities_wait() {
    /// A store that blocks until released.
    struct Gated(tokio::sync::Semaphore, MemoryStore);
    #[async_trait]
    impl StatusStore for Gated {
        async fn store(&self, items: &[Item]) -> Result<(), Error> {
            self.0.acquire().await.unwrap().forget();
            self.1.store(items).await
        }
        async fn load(&self) -> Result<Vec<Item>, Error> {
            self.1.load().await
        }
        async fn reset(&self) -> Result<(), Error> {
            self.1.reset().await
        }
    }
    let store = Arc::new(Gated(tokio::sync::Semaphore::new(0), MemoryStore::new()));
    let config = WriteBehind::default().with_max_pending(2).with_max_batch(2);
    let status = ProcessStatus::open(Arc::clone(&store), config)
        .await
        .unwrap();
    status.item_processed("a", ts(1)).await.unwrap();
    status.item_processed("b", ts(1)).await.unwrap();
    // The writer takes {a, b} and blocks in the store; two more fit in the buffer.
    tokio::time::sleep(Duration::from_millis(20)).await;
    status.item_processed("c", ts(1)).await.unwrap();
    status.item_processed("d", ts(1)).await.unwrap();
    status.item_processed("c", ts(2)).await.unwrap(); // coalesces: no room needed
    let blocked = tokio::spawn({
        let status = status.clone();
        async move { status.item_processed("e", ts(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!blocked.is_finished(), "a fifth entity must wait for room");
    store.0.add_permits(10);
    blocked.await.unwrap().unwrap();
    status.flush().await.unwrap();
    assert_eq!(store.load().await.unwrap().len(), 5);
}

#[tokio::test]
async fn reset_clears_view_and_store_and_close_stops_recording() {
    let store = Arc::new(MemoryStore::new());
    let status = ProcessStatus::open(Arc::clone(&store), WriteBehind::default())
        .await
        .unwrap();
    status.item_processed_durable("a", ts(1)).await.unwrap();
    assert_eq!(store.load().await.unwrap().len(), 1);
    status.reset().await.unwrap();
    assert_eq!(status.last_processed("a"), None);
    assert!(store.load().await.unwrap().is_empty());
    status.close().await.unwrap();
    assert!(matches!(
        status.item_processed("a", ts(2)).await,
        Err(Error::WriterStopped)
    ));
}

#[tokio::test]
async fn noop_store_forgets_everything_on_restart() {
    let status = ProcessStatus::open(NoopStore, WriteBehind::default())
        .await
        .unwrap();
    status.item_processed_durable("a", ts(1)).await.unwrap();
    assert!(status.processed("a", ts(1)), "the view still works");
    let again = ProcessStatus::open(NoopStore, WriteBehind::default())
        .await
        .unwrap();
    assert_eq!(again.last_processed("a"), None);
}

#[test]
fn open_outside_a_runtime_is_a_typed_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Build the future inside no runtime context: `open` checks for one before spawning.
    let fut = ProcessStatus::open(MemoryStore::new(), WriteBehind::default());
    let result = futures_lite_block_on(fut);
    assert!(matches!(result, Err(Error::NoRuntime)), "{result:?}");
    drop(rt);
}

/// Poll a future to completion on this thread without a tokio context.
fn futures_lite_block_on<F: Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
