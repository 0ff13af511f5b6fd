//! The JSON wire messages, as typed values: what a producer sends ([`OutgoingMessage`]) and
//! gets back ([`Receipt`]), what a consumer or reader receives ([`ReceivedMessage`],
//! [`ConsumerFrame`]) and the commands it sends ([`Command`]); [`json`] holds the frames'
//! serde shapes, both directions, which the emulator in `headwaters-testkit` uses too.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use headwaters_ordering_core::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::DecodeError;

/// A message id: base64 of the broker's `MessageIdData`. Opaque; compare and send it back.
/// Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(std::sync::Arc<str>);

impl MessageId {
    /// From the base64 text the server sent.
    pub fn new(base64: impl Into<String>) -> Self {
        Self(base64.into().into())
    }

    /// From raw `MessageIdData` bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(BASE64.encode(bytes).into())
    }

    /// The base64 text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Any text: ids are opaque (a bad one is refused by the server when used).
impl std::str::FromStr for MessageId {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// A time as the server writes it: an instant and the UTC offset it was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZonedTime {
    /// The instant.
    pub timestamp: Timestamp,
    /// The writer's UTC offset, in seconds.
    pub offset_seconds: i32,
}

fn parse_time(field: &'static str, text: &str) -> Result<ZonedTime, DecodeError> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| DecodeError::Field {
        field,
        reason: format!("{text:?} is not an ISO-8601 time with offset: {e}"),
    })?;
    let micros = t.unix_timestamp_nanos() / 1_000;
    Ok(ZonedTime {
        timestamp: Timestamp::from_micros(i64::try_from(micros).unwrap_or(i64::MAX)),
        offset_seconds: t.offset().whole_seconds(),
    })
}

fn format_time(t: Timestamp) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_micros()) * 1_000)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct OutgoingMessage {
    /// The body (sent base64-encoded).
    pub payload: Bytes,
    /// Routing and `Key_Shared` key.
    pub key: Option<String>,
    /// Message properties.
    pub properties: BTreeMap<String, String>,
    /// Limit geo-replication to these clusters.
    pub replication_clusters: Option<Vec<String>>,
    /// The event time.
    pub event_time: Option<Timestamp>,
    /// Deliver at this time (Shared and Key_Shared subscriptions).
    pub deliver_at: Option<Timestamp>,
    /// Deliver after this delay.
    pub deliver_after: Option<Duration>,
    /// The correlation id echoed in the receipt; the producer generates one when `None`.
    pub context: Option<String>,
}

impl From<Bytes> for OutgoingMessage {
    fn from(payload: Bytes) -> Self {
        Self::new(payload)
    }
}

impl From<Vec<u8>> for OutgoingMessage {
    fn from(payload: Vec<u8>) -> Self {
        Self::new(payload)
    }
}

impl From<&'static str> for OutgoingMessage {
    fn from(payload: &'static str) -> Self {
        Self::new(payload)
    }
}

impl From<String> for OutgoingMessage {
    fn from(payload: String) -> Self {
        Self::new(payload)
    }
}

/// `(key, payload)`, like Stargate's `{key, payload}` tuple.
impl<K: Into<String>, P: Into<Bytes>> From<(K, P)> for OutgoingMessage {
    fn from((key, payload): (K, P)) -> Self {
        Self::new(payload).with_key(key)
    }
}

impl OutgoingMessage {
    /// A message with just a payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    /// The same message with a key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same message with a property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// The same message with a context of your own (must be unique among pending sends).
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    /// The same message with an event time.
    pub fn with_event_time(mut self, at: Timestamp) -> Self {
        self.event_time = Some(at);
        self
    }

    /// The same message, delivered after `delay` (Shared and Key_Shared subscriptions).
    pub fn with_deliver_after(mut self, delay: Duration) -> Self {
        self.deliver_after = Some(delay);
        self
    }

    /// The same message, replicated only to these clusters.
    pub fn with_replication_clusters(mut self, clusters: Vec<String>) -> Self {
        self.replication_clusters = Some(clusters);
        self
    }

    /// The JSON publish frame, correlated by `context`.
    pub fn encode(&self, context: &str) -> String {
        let frame = json::ProducerMessage {
            payload: Some(BASE64.encode(&self.payload).into()),
            properties: Cow::Borrowed(&self.properties),
            context: Some(context.into()),
            key: self.key.as_deref().map(Cow::Borrowed),
            replication_clusters: self.replication_clusters.as_deref().map(Cow::Borrowed),
            event_time: self.event_time.and_then(format_time),
            deliver_at: self.deliver_at.map(|t| t.as_millis()).filter(|ms| *ms > 0),
            deliver_after_ms: self
                .deliver_after
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .filter(|ms| *ms > 0),
        };
        // Serialising strings, maps and integers cannot fail.
        serde_json::to_string(&frame).unwrap_or_default()
    }
}

/// A producer error code (`send-error:<n>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendErrorCode {
    /// 3: the frame was not valid JSON.
    BadJson,
    /// 7: invalid payload encoding, event time or compression fields.
    InvalidPayload,
    /// 8: the broker failed the send (timeout, queue full, topic terminated…).
    Broker,
    /// Any other code.
    Other(u32),
}

impl SendErrorCode {
    /// The number after `send-error:`.
    pub fn code(self) -> u32 {
        match self {
            Self::BadJson => 3,
            Self::InvalidPayload => 7,
            Self::Broker => 8,
            Self::Other(n) => n,
        }
    }

    fn from_code(n: u32) -> Self {
        match n {
            3 => Self::BadJson,
            7 => Self::InvalidPayload,
            8 => Self::Broker,
            n => Self::Other(n),
        }
    }
}

/// A producer receipt: the publish with this `context` was persisted (its id) or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The publish's context; absent when the server could not parse the frame.
    pub context: Option<String>,
    /// The message id, or why it failed.
    pub result: Result<MessageId, SendFailure>,
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// The code.
    pub code: SendErrorCode,
    /// The server's text.
    pub message: String,
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "send-error:{} {}", self.code.code(), self.message)
    }
}

impl Receipt {
    /// Parse a receipt frame.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let frame: json::ProducerAck<'_> = serde_json::from_str(text).map_err(DecodeError::json)?;
        let result = if frame.result == "ok" {
            let id = frame.message_id.ok_or_else(|| DecodeError::Field {
                field: "messageId",
                reason: "missing on a successful receipt".into(),
            })?;
            Ok(MessageId(id.as_ref().into()))
        } else if let Some(n) = frame.result.strip_prefix("send-error:") {
            let n = n.parse().map_err(|_| DecodeError::Field {
                field: "result",
                reason: format!("{:?} is not send-error:<number>", frame.result),
            })?;
            Err(SendFailure {
                code: SendErrorCode::from_code(n),
                message: frame.error_msg.map(Cow::into_owned).unwrap_or_default(),
            })
        } else {
            return Err(DecodeError::Field {
                field: "result",
                reason: format!("unknown result {:?}", frame.result),
            });
        };
        Ok(Self {
            context: frame.context.map(Cow::into_owned),
            result,
        })
    }
}

/// A message delivered to a consumer or reader.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReceivedMessage {
    /// Its id (ack it with this).
    pub message_id: MessageId,
    /// The body, decoded.
    pub payload: Bytes,
    /// Its properties.
    pub properties: BTreeMap<String, String>,
    /// When it was published, with the server's offset.
    pub publish_time: ZonedTime,
    /// Its event time, if it has one.
    pub event_time: Option<ZonedTime>,
    /// Its key, if it has one.
    pub key: Option<String>,
    /// How often it was redelivered.
    pub redelivery_count: u32,
}

fn required<T>(field: &'static str, value: Option<T>) -> Result<T, DecodeError> {
    value.ok_or_else(|| DecodeError::Field {
        field,
        reason: "missing".into(),
    })
}

/// What arrives on a consumer or reader socket.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsumerFrame {
    /// A message.
    Message(ReceivedMessage),
    /// The answer to [`Command::IsEndOfTopic`].
    EndOfTopic(bool),
}

impl ConsumerFrame {
    /// Parse a frame from a consumer or reader socket.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        // Every frame a consumer or reader socket carries, read in one pass: a message, or
        // the answer to `isEndOfTopic` (the only frame with `endOfTopic`).
        let frame: json::ConsumerMessage<'_> =
            serde_json::from_str(text).map_err(DecodeError::json)?;
        if let Some(flag) = frame.end_of_topic {
            // The server sends a JSON boolean; its docs show a string. Accept both.
            return match flag {
                json::Flag::Bool(b) => Ok(Self::EndOfTopic(b)),
                json::Flag::Text(t) => {
                    t.parse()
                        .map(Self::EndOfTopic)
                        .map_err(|_| DecodeError::Field {
                            field: "endOfTopic",
                            reason: format!("{t:?} is not a boolean"),
                        })
                }
            };
        }
        let payload = BASE64
            .decode(required("payload", frame.payload)?.as_bytes())
            .map_err(|e| DecodeError::Field {
                field: "payload",
                reason: format!("not base64: {e}"),
            })?;
        Ok(Self::Message(ReceivedMessage {
            message_id: MessageId(required("messageId", frame.message_id)?.as_ref().into()),
            payload: payload.into(),
            properties: frame.properties.into_owned(),
            publish_time: parse_time("publishTime", &required("publishTime", frame.publish_time)?)?,
            event_time: frame
                .event_time
                .map(|t| parse_time("eventTime", &t))
                .transpose()?,
            key: frame.key.map(Cow::into_owned),
            redelivery_count: frame.redelivery_count,
        }))
    }
}

/// A command from a consumer (or reader) to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Acknowledge a message (a reader sends this to free its in-flight slot).
    Ack(MessageId),
    /// Negatively acknowledge: redeliver after `negativeAckRedeliveryDelay`.
    Nack(MessageId),
    /// Pull mode: allow this many more deliveries.
    Permit(u32),
    /// Delete the subscription (no reply).
    Unsubscribe,
    /// Ask whether the topic was terminated and fully read.
    IsEndOfTopic,
}

impl Command {
    /// The JSON frame.
    pub fn encode(&self) -> String {
        let (kind, message_id, permit_messages) = match self {
            Self::Ack(id) => (None, Some(id.as_str()), None),
            Self::Nack(id) => (Some("negativeAcknowledge"), Some(id.as_str()), None),
            Self::Permit(n) => (Some("permit"), None, Some(*n)),
            Self::Unsubscribe => (Some("unsubscribe"), None, None),
            Self::IsEndOfTopic => (Some("isEndOfTopic"), None, None),
        };
        serde_json::to_string(&json::ConsumerCommand {
            kind: kind.map(Cow::Borrowed),
            message_id: message_id.map(Cow::Borrowed),
            permit_messages: permit_messages.map(i64::from),
        })
        .unwrap_or_default()
    }
}

pub mod json;

#[cfg(test)]
mod tests;
