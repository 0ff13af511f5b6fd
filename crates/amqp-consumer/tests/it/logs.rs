//! Logs on clean paths are clean: a run that starts, publishes, consumes and shuts down
//! without a fault logs no warning and no error.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_amqp_consumer::{Consumer, Producer, PublishOptions};
use headwaters_ordering_core::Config;

use crate::support::{Recorder, Recording, config, eventually, payload};

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

// One thread: every task of the run logs under this test's subscriber.
#[tokio::test(flavor = "current_thread")]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn a_clean_run_logs_no_warning_or_error() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let cfg = config("clean_logs", 4);
    let recorder = Arc::new(Recorder::default());
    let consumer = Consumer::start(
        cfg.clone(),
        Recording(Arc::clone(&recorder)),
        Config::default(),
    )
    .await
    .unwrap();
    let producer = Producer::connect(cfg).await.unwrap();
    for seq in 0..20 {
        for key in 0..5 {
            producer
                .publish(&payload(key, seq), PublishOptions::key(key.to_string()))
                .await
                .unwrap();
        }
    }
    eventually("every message", Duration::from_secs(20), || {
        recorder.unique() == 100
    })
    .await;
    consumer.shutdown(Duration::from_secs(5)).await;
    producer.close().await;
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logged.is_empty(), "a clean run logged:\n{logged}");
}
