//! [`Producer`]: publish to the shard queue of a key, with publisher confirms and `mandatory`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use headwaters_ordering_core::{HeaderValue, Headers, Key, Pause, Timestamp};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{Mutex, watch};

use crate::Error;
use crate::config::{AmqpConfig, amqp_value};
use crate::etf::Term;
use crate::link::{bounded, connect, declare};
use crate::shard::queue_name;
use crate::wire::Routed;

/// The header that carries the sharding key, as a long string: its bytes, or in the
/// Mississippi wire format `term_to_binary` of its term.
pub const SHARDING_KEY_HEADER: &str = "sharding_key";

/// What to publish besides the payload (Mississippi's `publish_opts`).
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Selects the shard queue; consumers process messages of one key in order.
    pub sharding_key: Key,
    /// The key as an Erlang term (see [`PublishOptions::term`]); when set it is what is
    /// sent and hashed.
    pub sharding_term: Option<Term>,
    /// Extra headers.
    pub headers: Headers,
    /// Defaults to a fresh UUIDv4.
    pub message_id: Option<String>,
    /// Defaults to now. Sent as the AMQP `timestamp` (whole seconds).
    pub timestamp: Option<Timestamp>,
}

impl PublishOptions {
    /// Options with just a sharding key.
    pub fn key(sharding_key: impl Into<Key>) -> Self {
        Self {
            sharding_key: sharding_key.into(),
            sharding_term: None,
            headers: Headers::new(),
            message_id: None,
            timestamp: None,
        }
    }

    /// Options with an Erlang term as the sharding key — what Elixir Mississippi producers
    /// send: `(Term::atom("user"), 42)`, `"user-1"` (a binary), an integer… In the
    /// [`Mississippi`](crate::WireFormat::Mississippi) wire format the header is
    /// `term_to_binary(term)` and the queue `phash2(term, total_count)`; in the native
    /// format the header is the term's canonical encoding.
    pub fn term(term: impl Into<Term>) -> Self {
        let term = term.into();
        // The ordering key a consumer in either format derives (empty if the term cannot
        // be encoded: `publish` then fails with `Error::InvalidKey`).
        let key = term.to_canonical_etf().unwrap_or_default();
        Self {
            sharding_term: Some(term),
            ..Self::key(key)
        }
    }

    /// Set the message id.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Add a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// Publishes to the shard queues. Cheap to clone; clones share one connection and channel,
/// and concurrent `publish` calls are pipelined on it (many confirms in flight).
///
/// `publish` succeeds only once the broker confirmed the message; a message that no queue
/// takes is an [`Error::Unroutable`]; while the connection is being re-established,
/// `publish` fails with [`Error::Reconnecting`] (after waiting up to
/// [`AmqpConfig::publish_wait`]). The queues (and exchange) are declared once per connection.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: AmqpConfig,
    /// The live channel, or `None` while reconnecting.
    link: watch::Sender<Option<(Connection, Channel)>>,
    reconnect: Mutex<()>,
    /// Publishes failed by a lost link since the last reconnect (reported with it).
    failed_publishes: AtomicU64,
}

impl Producer {
    /// Connect, enable confirms and declare the topology.
    pub async fn connect(config: AmqpConfig) -> Result<Self, Error> {
        config.validate()?;
        let link = open(&config).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                link: watch::Sender::new(Some(link)),
                reconnect: Mutex::new(()),
                failed_publishes: AtomicU64::new(0),
            }),
        })
    }

    /// The queue a key's bytes go to (in the Mississippi wire format: as an Erlang binary).
    pub fn queue_for(&self, key: &Key) -> String {
        self.route(&PublishOptions::key(key.clone()))
            .map_or_else(|_| String::new(), |(_, queue)| queue)
    }

    /// The queue a term key goes to.
    pub fn queue_for_term(&self, term: &Term) -> Result<String, Error> {
        self.route(&PublishOptions::term(term.clone()))
            .map(|(_, queue)| queue)
    }

    /// The header bytes and queue of a publish, per the wire format.
    fn route(&self, options: &PublishOptions) -> Result<(Vec<u8>, String), Error> {
        let c = &self.inner.config;
        let Routed { header, index } = c
            .wire
            .route(
                &options.sharding_key,
                options.sharding_term.as_ref(),
                c.total_count,
            )
            .map_err(Error::InvalidKey)?;
        Ok((header, queue_name(&c.prefix, index)))
    }

    /// Publish and wait for the broker's confirm.
    pub async fn publish(&self, payload: &[u8], options: PublishOptions) -> Result<(), Error> {
        // The default exchange routes by queue name, and a named exchange has every queue
        // bound under its own name: either way the routing key is the shard queue's name.
        let (header, routing_key) = self.route(&options)?;
        let c = &self.inner.config;
        // What the broker would refuse by closing the channel — failing every publish in
        // flight on it — is refused here, for this publish alone.
        if payload.len() > c.max_message_size {
            return Err(Error::TooLarge {
                what: "message body",
                size: payload.len(),
                limit: c.max_message_size,
            });
        }
        let (properties, properties_size) = properties(options, header)?;
        let (channel, frame_max) = self.channel().await?;
        // The properties travel in one content-header frame (8 bytes of framing, 14 of
        // class, weight, body size and flags).
        let header_frame = properties_size + 22;
        if header_frame > frame_max {
            return Err(Error::TooLarge {
                what: "message's properties and headers (one frame)",
                size: header_frame,
                limit: frame_max,
            });
        }
        let confirm = channel
            .basic_publish(
                c.exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await;
        let confirmation = match confirm {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match confirmation {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => Err(Error::Unroutable {
                exchange: c.exchange.clone(),
                routing_key,
                reason: returned.reply_text.to_string(),
            }),
            Ok(Confirmation::Nack(_)) => Err(Error::Nacked),
            Ok(Confirmation::NotRequested) => Err(Error::Connection(
                "publisher confirms are not enabled on the channel".into(),
            )),
            Err(e) => {
                // Every publish in flight fails the same way when the connection goes: one
                // line says so (the reconnect's), the rest stay at debug level.
                tracing::debug!(error = %e, "publish failed");
                self.inner.failed_publishes.fetch_add(1, Relaxed);
                self.start_reconnect(Some(e.to_string()));
                // A broker-reported error (e.g. 404 for a missing exchange) is returned as
                // such; a lost connection or channel means "retry".
                match Error::from_lapin(&e, &crate::config::target(&c.url)) {
                    err @ (Error::Broker { .. }
                    | Error::AccessRefused { .. }
                    | Error::VhostNotAllowed { .. }) => Err(err),
                    _ => Err(Error::Reconnecting),
                }
            }
        }
    }

    /// The live channel, waiting up to `publish_wait` for a reconnect.
    /// The live channel and its connection's negotiated frame size.
    async fn channel(&self) -> Result<(Channel, usize), Error> {
        let mut rx = self.inner.link.subscribe();
        let wait = self.inner.config.publish_wait;
        let ready = tokio::time::timeout(wait, rx.wait_for(|l| l.as_ref().is_some_and(link_up)));
        match ready.await {
            Ok(Ok(link)) => link
                .as_ref()
                .map(|(conn, ch)| (ch.clone(), conn.configuration().frame_max() as usize))
                .ok_or(Error::Reconnecting),
            _ => {
                self.start_reconnect(None);
                Err(Error::Reconnecting)
            }
        }
    }

    /// Start reconnecting in the background unless that is already happening.
    /// `cause`: the publish error that showed the link is gone, logged once by the task
    /// that reconnects.
    fn start_reconnect(&self, cause: Option<String>) {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let Ok(_guard) = inner.reconnect.try_lock() else {
                return; // another task reconnects
            };
            if inner.link.borrow().as_ref().is_some_and(link_up) {
                return;
            }
            tracing::warn!(
                cause = cause.as_deref().unwrap_or("the link is down"),
                "producer lost its channel; re-establishing it"
            );
            inner.link.send_replace(None);
            let mut backoff = inner.config.backoff();
            loop {
                match open(&inner.config).await {
                    Ok(link) => {
                        let failed = inner.failed_publishes.swap(0, Relaxed);
                        tracing::info!(
                            failed_publishes = failed,
                            "producer reconnected (publishes failed meanwhile: {failed})"
                        );
                        inner.link.send_replace(Some(link));
                        return;
                    }
                    Err(e) => {
                        let never = std::future::pending();
                        if backoff.pause("amqp producer", &e, never).await == Pause::GiveUp {
                            // The next publish that finds no link starts again.
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Close the connection.
    pub async fn close(&self) {
        let link = self.inner.link.send_replace(None);
        if let Some((conn, channel)) = link {
            // The channel first (see the consumer's shutdown), then the connection.
            let _ = tokio::time::timeout(Duration::from_secs(5), channel.close(200, "bye".into()))
                .await;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
        }
    }
}

/// Whether both the connection and its channel are usable.
fn link_up((connection, channel): &(Connection, Channel)) -> bool {
    connection.status().connected() && channel.status().connected()
}

async fn open(config: &AmqpConfig) -> Result<(Connection, Channel), Error> {
    let conn = connect(config).await?;
    let err = |e: lapin::Error| Error::from_lapin(&e, &crate::config::target(&config.url));
    let setup = async {
        let channel = conn.create_channel().await.map_err(err)?;
        declare(config, &channel, 0..config.total_count).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err)?;
        Ok(channel)
    };
    let channel = bounded(config, "setting up the channel", setup).await?;
    Ok((conn, channel))
}

/// The message's properties — headers (the sharding key's `header` among them), message id,
/// timestamp in whole seconds (as Mississippi sends it), persistent — and their encoded size.
/// Short strings (header names, the message id) over 255 bytes cannot be sent.
fn properties(options: PublishOptions, header: Vec<u8>) -> Result<(BasicProperties, usize), Error> {
    let short = |what: &'static str, text: &str| {
        if text.len() > 255 {
            Err(Error::TooLarge {
                what,
                size: text.len(),
                limit: 255,
            })
        } else {
            Ok(1 + text.len())
        }
    };
    let mut headers = FieldTable::default();
    // The table's length, then per entry its name, a type byte and the value.
    let mut size = 4;
    for (name, value) in options.headers.iter() {
        if let Some(v) = amqp_value(value) {
            size += short("header name", name)? + 1 + encoded_len(&v);
            headers.insert(ShortString::from(name), v);
        }
    }
    size += 1 + SHARDING_KEY_HEADER.len() + 1 + 4 + header.len();
    headers.insert(
        ShortString::from(SHARDING_KEY_HEADER),
        AMQPValue::LongString(LongString::from(header)),
    );
    let id = options
        .message_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // Message id, timestamp, delivery mode.
    size += short("message id", &id)? + 8 + 1;
    let ts = options.timestamp.unwrap_or_else(Timestamp::now);
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_message_id(id.into())
        .with_timestamp(u64::try_from(ts.as_micros() / 1_000_000).unwrap_or(0))
        .with_delivery_mode(2);
    Ok((properties, size))
}

/// The encoded size of a header value of the kinds [`amqp_value`] makes.
fn encoded_len(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::Boolean(_) => 1,
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        _ => 8,
    }
}
