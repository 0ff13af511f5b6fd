//! EventStoreDB's legacy TCP client protocol for Rust.
//!
//! The TCP API is the one EventStoreDB 3.x–23.10 serve natively (and 24.x+ through the TCP
//! plugin), and the one Elixir's Extreme speaks. This crate holds what every part of a client
//! (and the emulator in `headwaters-testkit`) needs before any socket is opened:
//!
//! * [`frame`] — the frame codec: little-endian length prefix (18 bytes to 64 MiB), command,
//!   flags, 16-byte correlation id, optional credentials, payload; a streaming
//!   [`FrameDecoder`] that returns typed errors instead of panicking on any input.
//! * [`command`] — the one-byte command codes.
//! * [`guid`] — .NET GUID byte order for event ids.
//! * [`types`] — what applications write and read: [`EventData`], [`ExpectedVersion`],
//!   [`ResolvedEvent`], [`Position`], slices.
//! * The protobuf messages of `EventStore.Client.Messages`, transcribed in `proto/` and
//!   generated with `cargo xtask codegen` (checked in; no `protoc` needed to build). They stay
//!   crate-private: decoding is tolerant of proto3 servers omitting default values, and the
//!   public API will be hand-written domain types.
//!
//! The async client (feature `client`, on by default): [`Connection`] with the handshake
//! (`Authenticate` with default credentials, `IdentifyClient` version 1), heartbeats both
//! ways (750 ms / 1500 ms by default), pipelined operations matched by correlation id,
//! retries after a timeout and on `NotHandled(NotReady | TooBusy)`, typed errors for the
//! rest, reconnection with backoff (optionally limited, Extreme's `max_attempts`) that
//! resends what was in flight, TLS via rustls ([`Settings::with_tls`]), per-operation
//! credentials ([`Connection::as_user`]) and clusters ([`Settings::cluster`]: gossip in the
//! v5 and v20 shapes, [`NodePreference`], `NotLeader` followed to the leader).
//!
//! Operations: append with an expected version, read one event, read a stream or `$all`
//! forward and backward, soft and hard delete, transactions ([`Transaction`]), typed stream
//! metadata ([`StreamMetadata`]). Subscriptions: volatile ([`Connection::subscribe_to_stream`] / [`Connection::subscribe_to_all`], a
//! stream or `$all`, re-subscribed after a reconnect with an explicit
//! `Dropped(ConnectionLost)`, [`Subscription::resubscribe`] for fanout), catch-up
//! ([`Connection::subscribe_to_stream_from`], [`Connection::subscribe_to_all_from`]: history
//! in pages, then live, with no gap and no duplicate at the switch, after a reconnect or after
//! falling behind — a bounded live queue falls back to paging, see [`CatchUpSettings`]) and
//! persistent ([`Connection::connect_to_persistent_subscription`], with group CRUD, ack and
//! nak). [`ordered`] runs events through ordering-core keyed by stream id.
//!
//! With feature `batch`, [`EventStoreSource`] (streams), [`EventStoreAllSource`] (`$all`)
//! and [`EventStorePersistentSource`] (a persistent subscription group) feed
//! `headwaters-batch-flusher`.
//!
//! # Example
//!
//! ```
//! # mod headwaters { pub use headwaters_eventstore_tcp as eventstore; }
//! use bytes::BytesMut;
//! // Paths through the `headwaters` facade; with the crates alone: `headwaters::eventstore` → `headwaters_eventstore_tcp`.
//! use headwaters::eventstore::{Command, Credentials, Frame, FrameDecoder};
//!
//! let frame = Frame::new(Command::Ping, [0; 16], Vec::new())
//!     .with_credentials(Credentials::new("admin", "changeit").unwrap());
//! let mut wire = BytesMut::new();
//! frame.encode(&mut wire).unwrap();
//!
//! let mut decoder = FrameDecoder::new();
//! decoder.extend(&wire[..10]);
//! assert_eq!(decoder.next_frame().unwrap(), None); // needs more bytes
//! decoder.extend(&wire[10..]);
//! assert_eq!(decoder.next_frame().unwrap(), Some(frame));
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod command;
pub mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod guid;
pub mod types;
pub mod wire;

#[cfg(feature = "batch")]
mod batch;
#[cfg(feature = "client")]
mod connection;
#[cfg(feature = "client")]
mod error;
#[cfg(feature = "client")]
pub mod gossip;
#[cfg(feature = "client")]
mod metadata;
#[cfg(feature = "client")]
mod ops;
#[cfg(feature = "client")]
pub mod ordered;
#[cfg(feature = "client")]
mod persistent;
#[cfg(feature = "client")]
mod session;
#[cfg(feature = "client")]
mod subscription;
#[cfg(feature = "client")]
mod transaction;

#[cfg(feature = "batch")]
#[cfg_attr(docsrs, doc(cfg(feature = "batch")))]
pub use batch::{EventStoreAllSource, EventStorePersistentSource, EventStoreSource};
pub use command::Command;
#[cfg(feature = "client")]
pub use connection::{Connection, Settings};
#[cfg(feature = "client")]
pub use error::{Busy, ConnectError, Error};
pub use frame::{Credentials, CredentialsError, Flags, Frame, FrameDecoder, FrameError};
#[cfg(feature = "client")]
pub use gossip::{NodePreference, NodeState};
#[cfg(feature = "client")]
pub use metadata::{StreamAcl, StreamMetadata, StreamMetadataResult, metadata_stream};
#[cfg(feature = "client")]
pub use ops::{EventRead, MAX_READ_COUNT};
#[cfg(feature = "client")]
pub use persistent::{
    Acker, ConsumerStrategy, NakAction, PersistentAck, PersistentEvent, PersistentMessage,
    PersistentSettings, PersistentSubscription, StartFrom,
};
#[cfg(feature = "client")]
pub use subscription::{
    CatchUp, CatchUpEvent, CatchUpSettings, DropReason, Subscription, SubscriptionEvent,
};
#[cfg(feature = "client")]
pub use transaction::Transaction;
pub use types::{
    AllSlice, DeleteMode, EventData, ExpectedVersion, Links, ParsePositionError, Position,
    ReadDirection, RecordedEvent, ResolvedEvent, StreamPosition, StreamSlice, WriteResult,
};
