//! The JSON frames of the WebSocket API, both directions, as serde types: what a client
//! writes and a server reads ([`ProducerMessage`], [`ConsumerCommand`]) and what a server
//! writes and a client reads ([`ProducerAck`], [`ConsumerMessage`]). Field names and their
//! presence follow the Java handlers (`ProducerMessage`, `ProducerAck`, `ConsumerMessage`,
//! `ConsumerCommand`); reading ignores unknown fields, as the server's `ObjectMapper` does.
//!
//! The client encodes and decodes through these, and so does the emulator in
//! `headwaters-testkit`: the shapes exist once. What each side does with a frame stays its
//! own, and clients we did not write (Python, in `cargo xtask emulators`) check the
//! emulator's side.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn no_properties(properties: &BTreeMap<String, String>) -> bool {
    properties.is_empty()
}

/// `ProducerMessage`: a publish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ProducerMessage<'a> {
    /// The body, base64.
    #[serde(default)]
    pub payload: Option<Cow<'a, str>>,
    /// Properties (omitted when empty).
    #[serde(default, skip_serializing_if = "no_properties")]
    pub properties: Cow<'a, BTreeMap<String, String>>,
    /// Correlates the receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Cow<'a, str>>,
    /// The message key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Cow<'a, str>>,
    /// Geo-replication clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_clusters: Option<Cow<'a, [String]>>,
    /// The event time, ISO-8601.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// Deliver at this Unix time (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<i64>,
    /// Deliver after this delay (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_after_ms: Option<i64>,
}

/// `ProducerAck`: a publish's receipt. The server always writes `result`, `errorCode` and
/// `schemaVersion`, the rest when set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ProducerAck<'a> {
    /// `ok` or `send-error:<n>`.
    pub result: Cow<'a, str>,
    /// The stored message's id (base64), on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Cow<'a, str>>,
    /// The publish's context; absent when the frame could not be parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Cow<'a, str>>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_msg: Option<Cow<'a, str>>,
    /// The failure's code (0 on success).
    #[serde(default)]
    pub error_code: i32,
    /// The schema version (0 without a schema).
    #[serde(default)]
    pub schema_version: i64,
}

impl<'a> ProducerAck<'a> {
    /// A receipt saying `result` for the publish with `context`.
    pub fn new(result: impl Into<Cow<'a, str>>) -> Self {
        Self {
            result: result.into(),
            ..Self::default()
        }
    }
}

/// `endOfTopic`: a JSON boolean from the server, a string in its docs; both are read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Flag {
    /// `true` / `false`.
    Bool(bool),
    /// `"true"` / `"false"`.
    Text(String),
}

/// `ConsumerMessage`: a delivery — or, read by a client, the answer to `isEndOfTopic`, the
/// only frame with `endOfTopic` (its own shape, `{"endOfTopic": bool}`, is never written
/// through this type).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ConsumerMessage<'a> {
    /// The message's id (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Cow<'a, str>>,
    /// The body, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Cow<'a, str>>,
    /// Properties (always written by the server, empty or not).
    #[serde(default)]
    pub properties: Cow<'a, BTreeMap<String, String>>,
    /// When it was published, ISO-8601 with the server's offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_time: Option<String>,
    /// How often it was redelivered.
    #[serde(default)]
    pub redelivery_count: u32,
    /// The event time, ISO-8601.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// The message key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Cow<'a, str>>,
    /// Read only: the answer to `isEndOfTopic`.
    #[serde(default, skip_serializing)]
    pub end_of_topic: Option<Flag>,
}

/// `ConsumerCommand`: an ack (no `type`), `negativeAcknowledge`, `permit`, `unsubscribe` or
/// `isEndOfTopic`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ConsumerCommand<'a> {
    /// The command; absent for an ack.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Cow<'a, str>>,
    /// The message acked or nacked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Cow<'a, str>>,
    /// How many more deliveries a `permit` allows (read as a signed number: the server
    /// refuses a non-positive one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit_messages: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_reads_back_what_it_writes() {
        let publish = ProducerMessage {
            payload: Some("aGk=".into()),
            context: Some("7".into()),
            key: Some("k".into()),
            ..ProducerMessage::default()
        };
        let text = serde_json::to_string(&publish).unwrap();
        assert_eq!(text, r#"{"payload":"aGk=","context":"7","key":"k"}"#);
        assert_eq!(
            serde_json::from_str::<ProducerMessage<'_>>(&text).unwrap(),
            publish
        );

        let ack = ProducerAck {
            message_id: Some("CAAQAw==".into()),
            context: Some("7".into()),
            ..ProducerAck::new("ok")
        };
        let text = serde_json::to_string(&ack).unwrap();
        assert_eq!(
            text,
            r#"{"result":"ok","messageId":"CAAQAw==","context":"7","errorCode":0,"schemaVersion":0}"#
        );
        assert_eq!(serde_json::from_str::<ProducerAck<'_>>(&text).unwrap(), ack);

        let command = ConsumerCommand {
            kind: Some("permit".into()),
            permit_messages: Some(10),
            ..ConsumerCommand::default()
        };
        let text = serde_json::to_string(&command).unwrap();
        assert_eq!(text, r#"{"type":"permit","permitMessages":10}"#);
        assert_eq!(
            serde_json::from_str::<ConsumerCommand<'_>>(&text).unwrap(),
            command
        );

        let eot: ConsumerMessage<'_> = serde_json::from_str(r#"{"endOfTopic":"true"}"#).unwrap();
        assert_eq!(eot.end_of_topic, Some(Flag::Text("true".into())));
        let unknown: ConsumerMessage<'_> =
            serde_json::from_str(r#"{"messageId":"x","somethingNew":1}"#).unwrap();
        assert_eq!(unknown.message_id.as_deref(), Some("x"));
    }
}
