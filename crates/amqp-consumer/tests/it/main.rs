//! Integration tests of headwaters-amqp-consumer against a real RabbitMQ (`AMQP_URL`, set by
//! `cargo xtask integration`).

mod batch_source;
mod broker_restart;
mod etf_vectors;
mod failures;
mod limits;
mod logs;
mod mississippi;
mod ordered;
mod sac;
mod stall;
mod support;
mod tls;
