//! In-process emulators for the servers Headwaters talks to but that cannot be installed on a
//! test machine, written to behave as the real servers' source says, so that clients — ours
//! and third-party ones — can be tested against them on `127.0.0.1`.
//!
//! * `pulsar` (feature `pulsar`, on by default): the Pulsar WebSocket API v2.
//! * `tls` (feature `tls`): `wss://` for the emulators and throwaway certificates for tests.
//!
//! The `headwaters-emulator` binary runs them standalone:
//! `headwaters-emulator pulsar --listen 127.0.0.1:8080`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "pulsar")]
#[cfg_attr(docsrs, doc(cfg(feature = "pulsar")))]
pub mod pulsar;

#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
