//! In-process emulators for the servers Headwaters talks to but that cannot be installed on a
//! test machine, written to behave as the real servers' source says, so that clients — ours
//! and third-party ones — can be tested against them on `127.0.0.1`.
//!
//! * `pulsar` (feature `pulsar`, on by default): the Pulsar WebSocket API v2.
//! * `eventstore` (feature `eventstore`, on by default): EventStoreDB's legacy TCP API.
//! * `tls` (feature `tls`): `wss://` for the emulators and throwaway certificates for tests.
//! * [`proxy`]: a TCP proxy that freezes, slows, cuts and refuses connections, for fault tests.
//!
//! The `headwaters-emulator` binary runs them standalone:
//! `headwaters-emulator pulsar --listen 127.0.0.1:8080`,
//! `headwaters-emulator eventstore --listen 127.0.0.1:1113`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "pulsar")]
#[cfg_attr(docsrs, doc(cfg(feature = "pulsar")))]
pub mod pulsar;

#[cfg(feature = "eventstore")]
#[cfg_attr(docsrs, doc(cfg(feature = "eventstore")))]
pub mod eventstore;

#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

pub mod proxy;

/// Wait until `check` holds, polling every 10 ms for up to 5 s; panics naming `what`
/// otherwise. For tests that watch an emulator's state change.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
