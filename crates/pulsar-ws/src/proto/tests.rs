//! Wire-format tests: the reference's examples, and property round trips.

use proptest::prelude::*;

use super::*;

#[test]
fn receipts_from_the_reference() {
    let ok = Receipt::decode(
        r#"{"result":"ok","messageId":"CAAQAw==","context":"1","errorCode":0,"schemaVersion":0}"#,
    )
    .unwrap();
    assert_eq!(ok.context.as_deref(), Some("1"));
    assert_eq!(ok.result, Ok(MessageId::new("CAAQAw==")));
    let full = Receipt::decode(
        r#"{"result":"send-error:8","errorMsg":"ProducerQueueIsFullError","context":"9","errorCode":0,"schemaVersion":0}"#,
    )
    .unwrap();
    assert_eq!(full.result.unwrap_err().code, SendErrorCode::Broker);
    let unparsable = Receipt::decode(
        r#"{"result":"send-error:3","errorMsg":"bad json","errorCode":0,"schemaVersion":0}"#,
    )
    .unwrap();
    assert_eq!(unparsable.context, None);
    assert!(Receipt::decode(r#"{"result":"maybe"}"#).is_err());
    assert!(Receipt::decode("not json").is_err());
}

#[test]
fn consumer_frames_with_offsets_and_end_of_topic() {
    let text = r#"{"messageId":"CAAQAw==","payload":"aGVsbG8=","properties":{"a":"1"},"publishTime":"2021-10-29T16:01:38.967-07:00","redeliveryCount":2,"key":"k"}"#;
    let ConsumerFrame::Message(m) = ConsumerFrame::decode(text).unwrap() else {
        panic!("not a message")
    };
    assert_eq!(&m.payload[..], b"hello");
    assert_eq!(m.publish_time.offset_seconds, -7 * 3600);
    assert_eq!(m.publish_time.timestamp.as_millis(), 1_635_548_498_967);
    assert_eq!((m.redelivery_count, m.key.as_deref()), (2, Some("k")));
    assert_eq!(
        ConsumerFrame::decode(r#"{"endOfTopic":true}"#).unwrap(),
        ConsumerFrame::EndOfTopic(true)
    );
    assert_eq!(
        ConsumerFrame::decode(r#"{"endOfTopic":"false"}"#).unwrap(),
        ConsumerFrame::EndOfTopic(false)
    );
    let bad = ConsumerFrame::decode(
        r#"{"messageId":"x","payload":"***","publishTime":"2021-10-29T16:01:38Z"}"#,
    );
    assert!(bad.unwrap_err().to_string().contains("payload"));
}

#[test]
fn commands_match_the_server_spelling() {
    let id = MessageId::new("CAAQAw==");
    assert_eq!(
        Command::Ack(id.clone()).encode(),
        r#"{"messageId":"CAAQAw=="}"#
    );
    assert_eq!(
        Command::Nack(id).encode(),
        r#"{"type":"negativeAcknowledge","messageId":"CAAQAw=="}"#
    );
    assert_eq!(
        Command::Permit(5).encode(),
        r#"{"type":"permit","permitMessages":5}"#
    );
    assert_eq!(Command::IsEndOfTopic.encode(), r#"{"type":"isEndOfTopic"}"#);
    assert_eq!(Command::Unsubscribe.encode(), r#"{"type":"unsubscribe"}"#);
}

proptest! {
    /// A publish frame carries exactly the message: decode it as the server would.
    #[test]
    fn publish_frames_round_trip(
        payload in prop::collection::vec(any::<u8>(), 0..256),
        key in prop::option::of("[a-z0-9 ]{0,12}"),
        props in prop::collection::btree_map("[a-z]{1,6}", "[ -~]{0,10}", 0..4),
        event_ms in prop::option::of(1_i64..4_000_000_000_000),
        context in "[a-z0-9-]{1,12}",
    ) {
        let mut m = OutgoingMessage::new(payload.clone());
        m.key = key.clone();
        m.properties = props.clone();
        m.event_time = event_ms.map(Timestamp::from_millis);
        let v: serde_json::Value = serde_json::from_str(&m.encode(&context)).unwrap();
        prop_assert_eq!(BASE64.decode(v["payload"].as_str().unwrap()).unwrap(), payload);
        prop_assert_eq!(v["context"].as_str(), Some(context.as_str()));
        prop_assert_eq!(v.get("key").and_then(|k| k.as_str()).map(str::to_owned), key);
        let got: BTreeMap<String, String> = v.get("properties").map(|p| serde_json::from_value(p.clone()).unwrap()).unwrap_or_default();
        prop_assert_eq!(got, props);
        let event = v.get("eventTime").map(|t| parse_time("eventTime", t.as_str().unwrap()).unwrap().timestamp);
        prop_assert_eq!(event, event_ms.map(Timestamp::from_millis));
    }

    /// Server message frames decode to what was put in them.
    #[test]
    fn message_frames_decode(
        payload in prop::collection::vec(any::<u8>(), 0..256),
        redeliveries in 0_u32..100,
        offset_h in -12_i32..14,
        ms in 0_i64..4_000_000_000_000,
    ) {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap()
            .to_offset(time::UtcOffset::from_whole_seconds(offset_h * 3600).unwrap());
        let frame = serde_json::json!({
            "messageId": "CAAQAw==",
            "payload": BASE64.encode(&payload),
            "properties": {},
            "publishTime": t.format(&Rfc3339).unwrap(),
            "redeliveryCount": redeliveries,
        });
        let ConsumerFrame::Message(m) = ConsumerFrame::decode(&frame.to_string()).unwrap() else { panic!() };
        prop_assert_eq!(&m.payload[..], &payload[..]);
        prop_assert_eq!(m.redelivery_count, redeliveries);
        prop_assert_eq!(m.publish_time.timestamp.as_millis(), ms);
        prop_assert_eq!(m.publish_time.offset_seconds, offset_h * 3600);
    }

    /// Garbage never panics the decoders.
    #[test]
    fn decoders_never_panic(text in ".{0,200}") {
        let _ = Receipt::decode(&text);
        let _ = ConsumerFrame::decode(&text);
    }
}
