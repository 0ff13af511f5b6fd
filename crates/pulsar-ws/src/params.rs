//! Typed query parameters for the producer, consumer and reader endpoints. Each builder emits
//! only what was set, with the server's exact spellings, and rejects what the server would
//! refuse (with 400) before connecting.

use std::fmt;
use std::time::Duration;

use crate::ParamError;
use crate::proto::MessageId;
use crate::topic::encode;

/// The most a `receiverQueueSize` can be (the server caps it there).
pub const MAX_RECEIVER_QUEUE_SIZE: u32 = 1000;

/// A secret that never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The server's spelling.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }
    };
}

wire_enum!(
    /// How a subscription hands messages to its consumers.
    SubscriptionType {
        /// One consumer; a second one is refused (409).
        Exclusive => "Exclusive",
        /// Round-robin over consumers.
        Shared => "Shared",
        /// One active consumer, the others stand by.
        Failover => "Failover",
        /// Messages of one key go to one consumer.
        KeyShared => "Key_Shared",
    }
);

wire_enum!(
    /// Whether the subscription outlives its consumers.
    SubscriptionMode {
        /// Kept on the broker.
        Durable => "Durable",
        /// Gone with the consumer.
        NonDurable => "NonDurable",
    }
);

wire_enum!(
    /// Where a new subscription starts (`subscriptionInitialPosition`).
    InitialPosition {
        /// At the next message published (the server's default).
        Latest => "Latest",
        /// At the oldest retained message.
        Earliest => "Earliest",
    }
);

wire_enum!(
    /// The key hash for partitioned topics.
    HashingScheme {
        /// Java `String.hashCode`.
        JavaStringHash => "JavaStringHash",
        /// Murmur3 32-bit.
        Murmur3Hash32 => "Murmur3_32Hash",
    }
);

wire_enum!(
    /// How unkeyed messages are spread over partitions.
    RoutingMode {
        /// One partition per producer.
        SinglePartition => "SinglePartition",
        /// Round-robin.
        RoundRobinPartition => "RoundRobinPartition",
    }
);

wire_enum!(
    /// Compression of the server's internal producer.
    CompressionType {
        /// None.
        None => "NONE",
        /// LZ4.
        Lz4 => "LZ4",
        /// zlib.
        Zlib => "ZLIB",
        /// Zstandard.
        Zstd => "ZSTD",
        /// Snappy.
        Snappy => "SNAPPY",
    }
);

wire_enum!(
    /// What to do with a message that cannot be decrypted.
    CryptoFailureAction {
        /// Fail the consumer.
        Fail => "FAIL",
        /// Drop the message.
        Discard => "DISCARD",
        /// Deliver it still encrypted.
        Consume => "CONSUME",
    }
);

/// Collects `name=value` pairs.
#[derive(Default)]
struct Query(Vec<(&'static str, String)>);

impl Query {
    fn put(&mut self, name: &'static str, value: Option<impl ToString>) {
        if let Some(v) = value {
            self.0.push((name, v.to_string()));
        }
    }

    fn finish(self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

fn queue_size(n: Option<u32>) -> Result<Option<u32>, ParamError> {
    match n {
        Some(0) => Err(ParamError::Invalid {
            name: "receiverQueueSize",
            reason: "must be at least 1".into(),
        }),
        Some(n) if n > MAX_RECEIVER_QUEUE_SIZE => Err(ParamError::Invalid {
            name: "receiverQueueSize",
            reason: format!("{n} is above the server's cap of {MAX_RECEIVER_QUEUE_SIZE}"),
        }),
        other => Ok(other),
    }
}

/// Producer endpoint parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerParams {
    /// `sendTimeoutMillis`.
    pub send_timeout: Option<Duration>,
    /// `batchingEnabled`.
    pub batching_enabled: Option<bool>,
    /// `batchingMaxMessages` (only with batching on).
    pub batching_max_messages: Option<u32>,
    /// `maxPendingMessages` (only with batching on).
    pub max_pending_messages: Option<u32>,
    /// `batchingMaxPublishDelay` (only with batching on).
    pub batching_max_publish_delay: Option<Duration>,
    /// `messageRoutingMode`.
    pub routing_mode: Option<RoutingMode>,
    /// `compressionType`.
    pub compression: Option<CompressionType>,
    /// `producerName` (unique per topic: a second one is refused with 409).
    pub producer_name: Option<String>,
    /// `initialSequenceId`.
    pub initial_sequence_id: Option<i64>,
    /// `hashingScheme`.
    pub hashing_scheme: Option<HashingScheme>,
    /// `token`, for clients that cannot send an `Authorization` header.
    pub token: Option<Secret>,
}

impl ProducerParams {
    /// The query string (without `?`).
    pub fn query(&self) -> Result<String, ParamError> {
        if self.batching_enabled != Some(true) {
            for (name, set) in [
                ("batchingMaxMessages", self.batching_max_messages.is_some()),
                ("maxPendingMessages", self.max_pending_messages.is_some()),
                (
                    "batchingMaxPublishDelay",
                    self.batching_max_publish_delay.is_some(),
                ),
            ] {
                if set {
                    return Err(ParamError::Invalid {
                        name,
                        reason: "applies only with batching_enabled = true (the server ignores it otherwise)".into(),
                    });
                }
            }
        }
        let mut q = Query::default();
        q.put("sendTimeoutMillis", self.send_timeout.map(millis));
        q.put("batchingEnabled", self.batching_enabled);
        q.put("batchingMaxMessages", self.batching_max_messages);
        q.put("maxPendingMessages", self.max_pending_messages);
        q.put(
            "batchingMaxPublishDelay",
            self.batching_max_publish_delay.map(millis),
        );
        q.put(
            "messageRoutingMode",
            self.routing_mode.map(RoutingMode::as_str),
        );
        q.put(
            "compressionType",
            self.compression.map(CompressionType::as_str),
        );
        q.put("producerName", self.producer_name.as_deref());
        q.put("initialSequenceId", self.initial_sequence_id);
        q.put(
            "hashingScheme",
            self.hashing_scheme.map(HashingScheme::as_str),
        );
        q.put("token", self.token.as_ref().map(Secret::expose));
        Ok(q.finish())
    }
}

/// Consumer endpoint parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerParams {
    /// `subscriptionType`.
    pub subscription_type: Option<SubscriptionType>,
    /// `subscriptionMode`.
    pub subscription_mode: Option<SubscriptionMode>,
    /// `subscriptionInitialPosition`: where a subscription that does not exist yet starts.
    /// `None` leaves it to the server, which starts at [`InitialPosition::Latest`]: messages
    /// published before the first subscribe are **not** delivered to it. Subscribe before
    /// producing, or ask for [`InitialPosition::Earliest`]. An existing subscription resumes
    /// where it was, whatever this says.
    pub initial_position: Option<InitialPosition>,
    /// `ackTimeoutMillis`: zero (off) or at least one second.
    pub ack_timeout: Option<Duration>,
    /// `receiverQueueSize`: 1 to 1000; also the push-mode in-flight window.
    pub receiver_queue_size: Option<u32>,
    /// `consumerName`.
    pub consumer_name: Option<String>,
    /// `priorityLevel`.
    pub priority_level: Option<i32>,
    /// `negativeAckRedeliveryDelay`.
    pub negative_ack_redelivery_delay: Option<Duration>,
    /// `maxRedeliverCount`: redeliveries before the dead-letter topic.
    pub max_redeliver_count: Option<u32>,
    /// `deadLetterTopic`.
    pub dead_letter_topic: Option<String>,
    /// `pullMode`: deliver only against permits.
    pub pull_mode: Option<bool>,
    /// `cryptoFailureAction`.
    pub crypto_failure_action: Option<CryptoFailureAction>,
    /// `token`.
    pub token: Option<Secret>,
}

impl ConsumerParams {
    /// The query string (without `?`).
    pub fn query(&self) -> Result<String, ParamError> {
        if let Some(t) = self.ack_timeout
            && !t.is_zero()
            && t < Duration::from_secs(1)
        {
            return Err(ParamError::Invalid {
                name: "ackTimeoutMillis",
                reason: format!("{t:?}: must be 0 (off) or at least 1 s"),
            });
        }
        let mut q = Query::default();
        q.put(
            "subscriptionType",
            self.subscription_type.map(SubscriptionType::as_str),
        );
        q.put(
            "subscriptionMode",
            self.subscription_mode.map(SubscriptionMode::as_str),
        );
        q.put(
            "subscriptionInitialPosition",
            self.initial_position.map(InitialPosition::as_str),
        );
        q.put("ackTimeoutMillis", self.ack_timeout.map(millis));
        q.put("receiverQueueSize", queue_size(self.receiver_queue_size)?);
        q.put("consumerName", self.consumer_name.as_deref());
        q.put("priorityLevel", self.priority_level);
        q.put(
            "negativeAckRedeliveryDelay",
            self.negative_ack_redelivery_delay.map(millis),
        );
        q.put("maxRedeliverCount", self.max_redeliver_count);
        q.put("deadLetterTopic", self.dead_letter_topic.as_deref());
        q.put("pullMode", self.pull_mode);
        q.put(
            "cryptoFailureAction",
            self.crypto_failure_action.map(CryptoFailureAction::as_str),
        );
        q.put("token", self.token.as_ref().map(Secret::expose));
        Ok(q.finish())
    }
}

/// Where a reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderStart {
    /// The oldest retained message.
    Earliest,
    /// The next message published.
    Latest,
    /// This message.
    At(MessageId),
}

/// Reader endpoint parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderParams {
    /// `messageId`: where to start (the server's default is `latest`).
    pub start: Option<ReaderStart>,
    /// `readerName`.
    pub reader_name: Option<String>,
    /// `receiverQueueSize`: 1 to 1000; also the in-flight window.
    pub receiver_queue_size: Option<u32>,
    /// `cryptoFailureAction`.
    pub crypto_failure_action: Option<CryptoFailureAction>,
    /// `token`.
    pub token: Option<Secret>,
}

impl ReaderParams {
    /// The query string (without `?`). A start message id is percent-encoded (base64 `+`
    /// would otherwise turn into a space).
    pub fn query(&self) -> Result<String, ParamError> {
        let mut q = Query::default();
        q.put(
            "messageId",
            self.start.as_ref().map(|s| match s {
                ReaderStart::Earliest => "earliest".to_owned(),
                ReaderStart::Latest => "latest".to_owned(),
                ReaderStart::At(id) => id.as_str().to_owned(),
            }),
        );
        q.put("readerName", self.reader_name.as_deref());
        q.put("receiverQueueSize", queue_size(self.receiver_queue_size)?);
        q.put(
            "cryptoFailureAction",
            self.crypto_failure_action.map(CryptoFailureAction::as_str),
        );
        q.put("token", self.token.as_ref().map(Secret::expose));
        Ok(q.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_was_set_is_emitted_with_exact_spellings() {
        assert_eq!(ConsumerParams::default().query().unwrap(), "");
        let p = ConsumerParams {
            subscription_type: Some(SubscriptionType::KeyShared),
            ack_timeout: Some(Duration::from_millis(1500)),
            receiver_queue_size: Some(1000),
            pull_mode: Some(true),
            consumer_name: Some("a b".into()),
            ..ConsumerParams::default()
        };
        assert_eq!(
            p.query().unwrap(),
            "subscriptionType=Key_Shared&ackTimeoutMillis=1500&receiverQueueSize=1000&consumerName=a%20b&pullMode=true"
        );
        let p = ProducerParams {
            hashing_scheme: Some(HashingScheme::Murmur3Hash32),
            compression: Some(CompressionType::Zstd),
            ..ProducerParams::default()
        };
        assert_eq!(
            p.query().unwrap(),
            "compressionType=ZSTD&hashingScheme=Murmur3_32Hash"
        );
    }

    #[test]
    fn what_the_server_refuses_is_refused_here() {
        let short = ConsumerParams {
            ack_timeout: Some(Duration::from_millis(100)),
            ..ConsumerParams::default()
        };
        assert!(
            short
                .query()
                .unwrap_err()
                .to_string()
                .contains("ackTimeoutMillis")
        );
        let off = ConsumerParams {
            ack_timeout: Some(Duration::ZERO),
            ..ConsumerParams::default()
        };
        assert_eq!(off.query().unwrap(), "ackTimeoutMillis=0");
        let big = ReaderParams {
            receiver_queue_size: Some(1001),
            ..ReaderParams::default()
        };
        assert!(big.query().unwrap_err().to_string().contains("1000"));
        let batching = ProducerParams {
            batching_max_messages: Some(10),
            ..ProducerParams::default()
        };
        assert!(
            batching
                .query()
                .unwrap_err()
                .to_string()
                .contains("batching_enabled")
        );
    }

    #[test]
    fn reader_ids_are_encoded_and_tokens_never_debug_printed() {
        let p = ReaderParams {
            start: Some(ReaderStart::At(MessageId::from_bytes(&[0xfb, 0xff]))),
            token: Some(Secret::new("jwt-secret")),
            ..ReaderParams::default()
        };
        assert_eq!(p.query().unwrap(), "messageId=%2B%2F8%3D&token=jwt-secret");
        assert!(!format!("{p:?}").contains("jwt-secret"));
    }
}
