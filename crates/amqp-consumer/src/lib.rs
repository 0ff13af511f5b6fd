//! Mississippi on lapin: a sharded AMQP producer and a consumer that processes messages in
//! order per key.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod acks;
mod config;
mod consumer;
mod error;
mod link;
mod producer;
pub mod shard;

pub use config::AmqpConfig;
pub use consumer::{AmqpSettle, Consumer, ConsumerStats};
pub use error::Error;
pub use producer::{Producer, PublishOptions, SHARDING_KEY_HEADER};
