//! [`AmqpConfig`]: connection, shard queues, prefetch and topology, shared by producer and
//! consumer so that both declare the queues identically.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use headwaters_ordering_core::{Backoff, HeaderValue, Headers};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::{Error, WireFormat};

/// Where the broker is and how the shard queues look.
#[derive(Clone)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` (`%2f` is `/`), or `amqps://…` for TLS (rustls,
    /// system roots). Never logged: `Debug` hides the password.
    pub url: String,
    /// Number of shard queues. Producers and consumers must agree. Default 128.
    pub total_count: u32,
    /// Queue name prefix; queue `i` is `prefix` + `i`. Default `mississippi_`.
    pub prefix: String,
    /// Exchange to publish to: `""` (the default exchange, routing key = queue name), or a
    /// name, declared as a durable direct exchange with each queue bound under its own name.
    pub exchange: String,
    /// Shard queues this consumer instance consumes (static split, as Mississippi's
    /// `range_start..=range_end`). Default: all.
    pub range: Range<u32>,
    /// Unacknowledged deliveries per shard queue. Default 300.
    pub prefetch: u16,
    /// Shard queues (one channel each) per connection: a consumer spreads its range over
    /// `ceil(queues / channels_per_connection)` connections, as Mississippi's `channels`
    /// setting does (10 there) — more connections, more broker parallelism. Default: all
    /// on one connection.
    pub channels_per_connection: Option<u16>,
    /// Declare the queues with `x-single-active-consumer`: every instance consumes every
    /// queue, the broker keeps one active consumer per queue and fails over when it dies.
    pub single_active_consumer: bool,
    /// Where discarded messages and deliveries without a usable key go (see [`DeadLetter`];
    /// default: a dead-letter exchange and queue this client declares).
    pub dead_letter: DeadLetter,
    /// More arguments for every shard queue's declaration (`x-queue-type` = `quorum`,
    /// `x-max-length`, `x-overflow`, `x-message-ttl`…). Producers and consumers must agree:
    /// the broker refuses a declaration whose arguments differ from the queue's.
    pub queue_arguments: Headers,
    /// Reconnect backoff: first delay (with jitter), doubled up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Reconnect backoff cap. Default 1 s: during a long outage attempts stay cheap (one a
    /// second), and once the broker is back the consumer resumes within about a second.
    pub reconnect_max: Duration,
    /// Give up after this many failed connection attempts in a row (`None`, the default:
    /// never). A consumer that gave up stops ([`Consumer::failure`](crate::Consumer::failure)
    /// says why); a producer fails its waiting publishes and tries again on the next one.
    pub max_reconnect_attempts: Option<u32>,
    /// The longest a connection attempt may take — TCP, TLS and the AMQP handshake, then
    /// opening the channels and declaring the queues — before it counts as failed and the
    /// next attempt follows the backoff. Default 10 s. An endpoint that accepts and then says
    /// nothing (a stalled proxy or load balancer) is a failed attempt, never a hang.
    pub connect_timeout: Duration,
    /// The largest message body the broker takes (its `max_message_size`; RabbitMQ's default
    /// since 3.8 is 128 MiB). Larger publishes fail with [`Error::TooLarge`] before they are
    /// sent, instead of making the broker close the channel under every publish in flight.
    pub max_message_size: usize,
    /// While reconnecting, `publish` waits up to this long for the link before failing with
    /// [`Error::Reconnecting`]. Default: zero (fail at once, like Mississippi).
    pub publish_wait: Duration,
    /// How often coalesced acks are sent. Default 5 ms.
    pub ack_interval: Duration,
    /// TLS settings for `amqps://` URLs.
    pub tls: TlsConfig,
    /// How keys are written and routed: Headwaters' own format (default) or Elixir
    /// Mississippi's, to share queues with its producers and consumers.
    pub wire: WireFormat,
}

/// TLS for `amqps://` (rustls): the server is verified against the system roots, plus
/// `ca_pem` if given; `client_cert_pem` + `client_key_pem` authenticate this client (mutual
/// TLS, e.g. with `auth_mechanism=external`). The key never appears in `Debug`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Extra trusted CA certificate(s), PEM.
    pub ca_pem: Option<String>,
    /// Client certificate chain, PEM.
    pub client_cert_pem: Option<String>,
    /// Client private key (PKCS#8), PEM.
    pub client_key_pem: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field(
                "client_cert_pem",
                &self.client_cert_pem.as_ref().map(|_| "<pem>"),
            )
            .field(
                "client_key_pem",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            total_count: 128,
            prefix: "mississippi_".into(),
            exchange: String::new(),
            range: 0..128,
            prefetch: 300,
            channels_per_connection: None,
            single_active_consumer: false,
            dead_letter: DeadLetter::Declared,
            queue_arguments: Headers::new(),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(1),
            max_reconnect_attempts: None,
            connect_timeout: Duration::from_secs(10),
            publish_wait: Duration::ZERO,
            max_message_size: 128 * 1024 * 1024,
            ack_interval: Duration::from_millis(5),
            tls: TlsConfig::default(),
            wire: WireFormat::Native,
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact(&self.url))
            .field("total_count", &self.total_count)
            .field("prefix", &self.prefix)
            .field("exchange", &self.exchange)
            .field("range", &self.range)
            .field("prefetch", &self.prefetch)
            .field("single_active_consumer", &self.single_active_consumer)
            .field("dead_letter", &self.dead_letter)
            .field("queue_arguments", &self.queue_arguments)
            .field("tls", &self.tls)
            .field("wire", &self.wire)
            .finish_non_exhaustive()
    }
}

/// The URL without its password.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// `host:port` of the URL, for error messages.
pub(crate) fn target(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

impl AmqpConfig {
    /// The default settings for the broker at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Set the number of shard queues (and consume all of them).
    pub fn with_total_count(mut self, total_count: u32) -> Self {
        self.total_count = total_count;
        self.range = 0..total_count;
        self
    }

    /// Set the queue name prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Set the exchange.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Consume only these shard queues.
    pub fn with_range(mut self, range: Range<u32>) -> Self {
        self.range = range;
        self
    }

    /// Set the prefetch per queue.
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Put at most `channels` shard queues on one connection (see
    /// [`AmqpConfig::channels_per_connection`]).
    pub fn with_channels_per_connection(mut self, channels: u16) -> Self {
        self.channels_per_connection = Some(channels.max(1));
        self
    }

    /// How many of the range's queues share a connection.
    pub(crate) fn queues_per_connection(&self) -> usize {
        self.channels_per_connection
            .map_or_else(|| self.range.len(), usize::from)
            .max(1)
    }

    /// Use single-active-consumer queues.
    pub fn with_single_active_consumer(mut self, on: bool) -> Self {
        self.single_active_consumer = on;
        self
    }

    /// Dead-letter discarded messages to `exchange`, which you declare and bind.
    pub fn with_dead_letter_exchange(self, exchange: impl Into<String>) -> Self {
        self.with_dead_letter(DeadLetter::Exchange(exchange.into()))
    }

    /// Choose where discarded and key-less messages go.
    pub fn with_dead_letter(mut self, dead_letter: DeadLetter) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// The dead-letter exchange the shard queues point at, if this client sets one.
    pub(crate) fn dead_letter_exchange(&self) -> Option<String> {
        match &self.dead_letter {
            DeadLetter::Declared => Some(self.declared_dead_letter()),
            DeadLetter::Exchange(name) => Some(name.clone()),
            DeadLetter::Policy | DeadLetter::Drop => None,
        }
    }

    /// The name of the exchange and queue of [`DeadLetter::Declared`]: `{prefix}dead_letter`.
    pub fn declared_dead_letter(&self) -> String {
        format!("{}dead_letter", self.prefix)
    }

    /// Declare every shard queue with this argument too (see
    /// [`AmqpConfig::queue_arguments`]).
    pub fn with_queue_argument(
        mut self,
        name: impl Into<String>,
        value: impl Into<HeaderValue>,
    ) -> Self {
        self.queue_arguments.insert(name, value);
        self
    }

    /// Set the reconnect backoff: the first delay (with jitter), doubled up to `max` — the
    /// same name and meaning as in the Pulsar and EventStore clients.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// The old name of [`with_backoff`](Self::with_backoff).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `with_backoff`, as in the other transports"
    )]
    pub fn with_reconnect(self, min: Duration, max: Duration) -> Self {
        self.with_backoff(min, max)
    }

    /// Give up after this many failed reconnection attempts in a row (see
    /// [`AmqpConfig::max_reconnect_attempts`]); the same call as the Pulsar and EventStore
    /// clients'.
    pub fn with_max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.max_reconnect_attempts = Some(attempts);
        self
    }

    /// The reconnection backoff these settings describe.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.reconnect_min, self.reconnect_max)
            .with_max_attempts(self.max_reconnect_attempts)
    }

    /// Bound every connection attempt (see [`AmqpConfig::connect_timeout`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Set [`AmqpConfig::max_message_size`] (as the broker's `max_message_size` says).
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Let `publish` wait this long for a reconnect.
    pub fn with_publish_wait(mut self, wait: Duration) -> Self {
        self.publish_wait = wait;
        self
    }

    /// Trust this CA (PEM) for `amqps://`, besides the system roots. A PEM without a
    /// usable certificate is refused here, with [`Error::Tls`] — the same call as the Pulsar
    /// and EventStore clients'.
    pub fn with_ca_pem(mut self, pem: impl Into<String>) -> Result<Self, Error> {
        self.tls.ca_pem = Some(pem.into());
        self.check_tls()?;
        Ok(self)
    }

    /// Present this client certificate (PEM chain) and PKCS#8 key (PEM): mutual TLS. A
    /// certificate and key that do not parse or do not match are refused here, with
    /// [`Error::Tls`].
    pub fn with_client_identity(
        mut self,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Result<Self, Error> {
        self.tls.client_cert_pem = Some(cert_pem.into());
        self.tls.client_key_pem = Some(key_pem.into());
        self.check_tls()?;
        Ok(self)
    }

    /// Build the rustls configuration the PEMs describe, to refuse bad ones at once.
    fn check_tls(&self) -> Result<(), Error> {
        let identity = match (&self.tls.client_cert_pem, &self.tls.client_key_pem) {
            (Some(cert), Some(key)) => Some((cert.as_bytes(), key.as_bytes())),
            _ => None,
        };
        let ca = self.tls.ca_pem.as_deref().map(str::as_bytes);
        headwaters_ordering_core::tls::client_config(ca, identity).map_err(Error::Tls)?;
        Ok(())
    }

    /// Write and route keys as `wire` says (see [`WireFormat`]).
    pub fn with_wire(mut self, wire: WireFormat) -> Self {
        self.wire = wire;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.wire == WireFormat::Mississippi && !self.declare_arguments().inner().is_empty() {
            return Err(Error::Config(
                "the Mississippi wire format declares plain durable queues, as Elixir Mississippi does: \
                 queue arguments (x-single-active-consumer, x-dead-letter-exchange, …) would make queue.declare fail on \
                 queues Mississippi created (PRECONDITION_FAILED). Give the queues a dead-letter exchange with a \
                 broker policy (rabbitmqctl set_policy) and say so with with_dead_letter(DeadLetter::Policy), \
                 and split queues with `range`"
                    .into(),
            ));
        }
        if self.tls.client_cert_pem.is_some() != self.tls.client_key_pem.is_some() {
            return Err(Error::Config(
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
        if self.total_count == 0 {
            return Err(Error::Config("total_count must be at least 1".into()));
        }
        if self.range.end > self.total_count || self.range.is_empty() {
            return Err(Error::Config(format!(
                "range {:?} must be a non-empty part of 0..{}",
                self.range, self.total_count
            )));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::Config(
                "connect_timeout must be above zero (it bounds every connection attempt)".into(),
            ));
        }
        if self.prefetch == 0 {
            return Err(Error::Config(
                "prefetch must be at least 1 (0 means unbounded)".into(),
            ));
        }
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return Err(Error::Config(format!(
                "URL {} must start with amqp:// or amqps://",
                redact(&self.url)
            )));
        }
        Ok(())
    }

    /// Arguments every declaration of a shard queue carries (they must match everywhere).
    pub(crate) fn declare_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.single_active_consumer {
            args.insert(
                ShortString::from("x-single-active-consumer"),
                AMQPValue::Boolean(true),
            );
        }
        if let Some(dlx) = &self.dead_letter_exchange() {
            args.insert(
                ShortString::from("x-dead-letter-exchange"),
                AMQPValue::LongString(LongString::from(dlx.as_bytes())),
            );
        }
        for (name, value) in self.queue_arguments.iter() {
            if let Some(value) = amqp_value(value) {
                args.insert(ShortString::from(name), value);
            }
        }
        args
    }
}

/// Where a consumer's discarded messages (`basic.reject` without requeue) and deliveries
/// without a usable sharding key go. RabbitMQ drops a rejected message unless its queue has a
/// dead-letter exchange, so dropping is never the default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetter {
    /// Declare a durable fanout exchange and a durable queue both named
    /// `{prefix}dead_letter`, bound together, and point every shard queue at the exchange
    /// (`x-dead-letter-exchange`). The default.
    Declared,
    /// Point the shard queues at this exchange, which you declare and bind.
    Exchange(String),
    /// The queues get their dead-letter exchange from a broker policy (`rabbitmqctl
    /// set_policy … '{"dead-letter-exchange": …}' --apply-to queues`), as queues declared
    /// elsewhere — such as Elixir Mississippi's, which carry no arguments — must: the client
    /// declares nothing for it.
    Policy,
    /// No dead-lettering: the broker drops what is rejected. Only on explicit request.
    Drop,
}

/// A header value as AMQP writes it (`None` for kinds AMQP tables do not carry).
pub(crate) fn amqp_value(value: &HeaderValue) -> Option<AMQPValue> {
    Some(match value {
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::Float(f) => AMQPValue::Double(*f),
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        HeaderValue::Bytes(b) => AMQPValue::LongString(LongString::from(&b[..])),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let c = AmqpConfig::new("amqp://user:s3cret@host:5672/%2f");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("amqp://user:***@host:5672/%2f"), "{shown}");
        assert_eq!(target(&c.url), "host:5672");
    }

    #[test]
    fn a_pem_without_a_certificate_is_refused_at_once() {
        let err = AmqpConfig::default().with_ca_pem("not a pem").unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err}");
        assert!(!err.is_transient());
        let err = AmqpConfig::default()
            .with_client_identity("no cert", "no key")
            .unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err}");
    }

    #[test]
    fn bad_config_is_rejected_with_a_reason() {
        let bad = AmqpConfig::default().with_total_count(4).with_range(2..9);
        assert!(matches!(bad.validate(), Err(Error::Config(r)) if r.contains("range")));
        let bad = AmqpConfig::default().with_wire(WireFormat::Mississippi);
        assert!(
            matches!(bad.validate(), Err(Error::Config(r)) if r.contains("DeadLetter::Policy")),
            "the declared default would clash with Mississippi's queues"
        );
        assert!(
            AmqpConfig::default()
                .with_wire(WireFormat::Mississippi)
                .with_dead_letter(DeadLetter::Policy)
                .validate()
                .is_ok()
        );
        let bad = AmqpConfig::default()
            .with_wire(WireFormat::Mississippi)
            .with_dead_letter_exchange("dlx");
        assert!(matches!(bad.validate(), Err(Error::Config(r)) if r.contains("policy")));
        let bad = AmqpConfig::default()
            .with_wire(WireFormat::Mississippi)
            .with_dead_letter(DeadLetter::Drop)
            .with_queue_argument("x-queue-type", "quorum");
        assert!(matches!(bad.validate(), Err(Error::Config(r)) if r.contains("plain durable")));
        let args = AmqpConfig::default()
            .with_queue_argument("x-max-length", 10_i64)
            .declare_arguments();
        assert_eq!(
            args.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(10))
        );
        let bad = AmqpConfig::new("http://x");
        assert!(matches!(bad.validate(), Err(Error::Config(r)) if r.contains("amqp://")));
    }
}
