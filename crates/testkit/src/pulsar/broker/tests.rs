use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;

const T: &str = "persistent://public/default/t";

fn broker() -> Broker {
    Broker::new(true, UtcOffset::UTC)
}

fn spec(kind: SubKind) -> ConsumerSpec {
    ConsumerSpec {
        topic: T.into(),
        subscription: "s".into(),
        kind,
        durable: true,
        earliest: false,
        pull: false,
        queue: 1000,
        ack_timeout: None,
        nack_delay: Duration::ZERO,
        max_redeliver: 0,
        dead_letter_topic: None,
    }
}

fn publish(b: &mut Broker, producer: ConnId, key: &str, body: &str) -> String {
    let frame = serde_json::json!({
        "payload": BASE64.encode(body),
        "key": key,
        "context": body,
    });
    b.publish(producer, &frame.to_string())
}

fn producer(b: &mut Broker) -> ConnId {
    let (tx, _rx) = unbounded_channel();
    b.add_producer(99, tx, T, None).unwrap();
    99
}

fn consumer(b: &mut Broker, conn: ConnId, spec: ConsumerSpec) -> UnboundedReceiver<Out> {
    let (tx, rx) = unbounded_channel();
    b.add_consumer(conn, tx, spec).unwrap();
    rx
}

/// (message id, payload text, redelivery count) of everything queued for a socket.
fn drain(rx: &mut UnboundedReceiver<Out>) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    while let Ok(text) = rx.try_recv() {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let payload = BASE64.decode(v["payload"].as_str().unwrap()).unwrap();
        out.push((
            v["messageId"].as_str().unwrap().to_owned(),
            String::from_utf8(payload).unwrap(),
            v["redeliveryCount"].as_u64().unwrap(),
        ));
    }
    out
}

fn bodies(msgs: &[(String, String, u64)]) -> Vec<&str> {
    msgs.iter().map(|m| m.1.as_str()).collect()
}

fn ack(b: &mut Broker, conn: ConnId, id: &str) -> bool {
    b.consumer_frame(conn, &format!(r#"{{"messageId":"{id}"}}"#))
}

#[test]
fn receipts_have_every_field_and_errors_keep_the_context() {
    let mut b = broker();
    let p = producer(&mut b);
    let ok: serde_json::Value = serde_json::from_str(&publish(&mut b, p, "k", "a")).unwrap();
    assert_eq!(ok["result"], "ok");
    assert_eq!(ok["context"], "a");
    assert_eq!(ok["errorCode"], 0);
    assert_eq!(ok["schemaVersion"], 0);
    assert!(Position::decode(ok["messageId"].as_str().unwrap()).is_some());

    let bad: serde_json::Value =
        serde_json::from_str(&b.publish(p, r#"{"payload":"%%%","context":"c1"}"#)).unwrap();
    assert_eq!(bad["result"], "send-error:7");
    assert_eq!(bad["context"], "c1");
    assert!(bad.get("messageId").is_none());

    let unparsable: serde_json::Value = serde_json::from_str(&b.publish(p, "{nope")).unwrap();
    assert_eq!(unparsable["result"], "send-error:3");
    assert!(unparsable.get("context").is_none());

    let time: serde_json::Value = serde_json::from_str(&b.publish(
        p,
        r#"{"payload":"YQ==","context":"c2","eventTime":"yesterday"}"#,
    ))
    .unwrap();
    assert_eq!(time["result"], "send-error:7");

    b.fail_next_sends(1);
    let failed: serde_json::Value = serde_json::from_str(&publish(&mut b, p, "k", "b")).unwrap();
    assert_eq!(failed["result"], "send-error:8");
    assert_eq!(b.messages(T).len(), 1, "failed sends are not stored");
}

#[test]
fn exclusive_refuses_a_second_consumer_and_other_types_must_match() {
    let mut b = broker();
    let _a = consumer(&mut b, 1, spec(SubKind::Exclusive));
    let (tx, _rx) = unbounded_channel();
    assert_eq!(
        b.add_consumer(2, tx.clone(), spec(SubKind::Exclusive))
            .unwrap_err()
            .status,
        409
    );
    assert_eq!(
        b.add_consumer(2, tx.clone(), spec(SubKind::Shared))
            .unwrap_err()
            .status,
        409
    );
    b.disconnect(1);
    assert!(b.add_consumer(2, tx, spec(SubKind::Exclusive)).is_ok());
}

#[test]
fn shared_round_robins_and_key_shared_keeps_a_key_on_one_consumer() {
    let mut b = broker();
    let p = producer(&mut b);
    let mut a = consumer(&mut b, 1, spec(SubKind::Shared));
    let mut c = consumer(&mut b, 2, spec(SubKind::Shared));
    for i in 0..10 {
        publish(&mut b, p, "k", &i.to_string());
    }
    assert_eq!(drain(&mut a).len(), 5);
    assert_eq!(drain(&mut c).len(), 5);

    let mut b = broker();
    let p = producer(&mut b);
    let mut ks = spec(SubKind::KeyShared);
    ks.subscription = "ks".into();
    let mut a = consumer(&mut b, 1, ks.clone());
    let mut c = consumer(&mut b, 2, ks);
    for i in 0..200 {
        publish(
            &mut b,
            p,
            &format!("key-{}", i % 20),
            &format!("{}:{i}", i % 20),
        );
    }
    let (a, c) = (drain(&mut a), drain(&mut c));
    assert_eq!(a.len() + c.len(), 200);
    assert!(!a.is_empty() && !c.is_empty(), "keys spread over both");
    for side in [&a, &c] {
        let keys: BTreeSet<&str> = side
            .iter()
            .map(|m| m.1.split(':').next().unwrap())
            .collect();
        let other = if std::ptr::eq(side, &a) { &c } else { &a };
        assert!(
            other
                .iter()
                .all(|m| !keys.contains(m.1.split(':').next().unwrap())),
            "a key reached both consumers"
        );
    }
}

#[test]
fn key_shared_holds_a_moved_key_until_its_old_consumer_acked_it() {
    let mut b = broker();
    let p = producer(&mut b);
    let mut a = consumer(&mut b, 1, spec(SubKind::KeyShared));
    // A key that moves to the second consumer (slot 1 of 2) when it joins.
    let key = (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| key_hash(k) % 2 == 1)
        .unwrap();
    publish(&mut b, p, &key, "1");
    publish(&mut b, p, &key, "2");
    let held = drain(&mut a);
    assert_eq!(bodies(&held), ["1", "2"]);
    let mut c = consumer(&mut b, 2, spec(SubKind::KeyShared));
    publish(&mut b, p, &key, "3");
    assert!(
        drain(&mut c).is_empty() && drain(&mut a).is_empty(),
        "3 waits while the first consumer holds 1 and 2"
    );
    assert!(ack(&mut b, 1, &held[0].0));
    assert!(drain(&mut c).is_empty(), "2 is still held");
    assert!(ack(&mut b, 1, &held[1].0));
    assert_eq!(bodies(&drain(&mut c)), ["3"], "the key moved once drained");
    // A consumer leaving hands its held messages over in order, ahead of newer ones.
    publish(&mut b, p, &key, "4");
    assert_eq!(bodies(&drain(&mut c)), ["4"]);
    b.disconnect(2);
    publish(&mut b, p, &key, "5");
    assert_eq!(bodies(&drain(&mut a)), ["3", "4", "5"]);
}

#[test]
fn push_window_stops_at_receiver_queue_size_until_acks_free_slots() {
    let mut b = broker();
    let p = producer(&mut b);
    let mut s = spec(SubKind::Exclusive);
    s.queue = 3;
    let mut rx = consumer(&mut b, 1, s);
    for i in 0..5 {
        publish(&mut b, p, "k", &i.to_string());
    }
    let first = drain(&mut rx);
    assert_eq!(bodies(&first), ["0", "1", "2"]);
    assert!(ack(&mut b, 1, &first[0].0));
    assert_eq!(bodies(&drain(&mut rx)), ["3"]);
    // An ack for an unknown id still frees a slot, as the server's counter does.
    assert!(ack(&mut b, 1, "CAAQAw=="));
    assert_eq!(bodies(&drain(&mut rx)), ["4"]);
}

#[test]
fn pull_mode_delivers_only_against_permits() {
    let mut b = broker();
    let p = producer(&mut b);
    let mut s = spec(SubKind::Exclusive);
    s.pull = true;
    let mut rx = consumer(&mut b, 1, s);
    for i in 0..5 {
        publish(&mut b, p, "k", &i.to_string());
    }
    assert!(drain(&mut rx).is_empty());
    assert!(b.consumer_frame(1, r#"{"type":"permit","permitMessages":2}"#));
    assert_eq!(bodies(&drain(&mut rx)), ["0", "1"]);
    // Acks do not gate delivery in pull mode.
    assert!(ack(&mut b, 1, "CAAQAw=="));
    assert!(drain(&mut rx).is_empty());
    assert!(b.consumer_frame(1, r#"{"type":"permit","permitMessages":10}"#));
    assert_eq!(bodies(&drain(&mut rx)), ["2", "3", "4"]);
    // A permit without a count closes the socket; so does bad JSON.
    assert!(!b.consumer_frame(1, r#"{"type":"permit"}"#));
    assert!(!b.consumer_frame(1, "not json"));
}

#[test]
fn nack_redelivers_with_a_count_then_dead_letters() {
    let mut b = broker();
    let p = producer(&mut b);
    let mut s = spec(SubKind::Shared);
    s.max_redeliver = 2;
    let mut rx = consumer(&mut b, 1, s);
    let mut dlq = {
        let (tx, rx) = unbounded_channel();
        let mut d = spec(SubKind::Shared);
        d.topic = format!("{T}-s-DLQ");
        d.subscription = "dlq-reader".into();
        b.add_consumer(2, tx, d).unwrap();
        rx
    };
    publish(&mut b, p, "k", "poison");
    let mut counts = Vec::new();
    for _ in 0..3 {
        b.tick(Instant::now());
        let got = drain(&mut rx);
        assert_eq!(got.len(), 1);
        counts.push(got[0].2);
        let nack = format!(
            r#"{{"type":"negativeAcknowledge","messageId":"{}"}}"#,
            got[0].0
        );
        assert!(b.consumer_frame(1, &nack));
    }
    assert_eq!(counts, [0, 1, 2]);
    b.tick(Instant::now());
    assert!(drain(&mut rx).is_empty(), "no fourth delivery");
    assert_eq!(bodies(&drain(&mut dlq)), ["poison"]);
    let moved = &b.messages(&format!("{T}-s-DLQ"))[0];
    assert_eq!(moved.properties["REAL_TOPIC"], T);
    assert_eq!(b.backlog(T, "s"), Some(0));
}

#[test]
fn ack_timeout_redelivers_without_freeing_the_slot() {
    let mut b = broker();
    let p = producer(&mut b);
    let mut s = spec(SubKind::Shared);
    s.ack_timeout = Some(Duration::from_secs(1));
    s.queue = 1;
    let mut rx = consumer(&mut b, 1, s);
    publish(&mut b, p, "k", "a");
    let first = drain(&mut rx);
    assert_eq!(bodies(&first), ["a"]);
    b.tick(Instant::now() + Duration::from_secs(2));
    assert!(
        drain(&mut rx).is_empty(),
        "the expired message still holds the slot"
    );
    assert!(ack(&mut b, 1, "CAAQAw=="));
    let again = drain(&mut rx);
    assert_eq!((again[0].1.as_str(), again[0].2), ("a", 1));
}

#[test]
fn a_closed_consumers_unacked_messages_go_to_the_others() {
    let mut b = broker();
    let p = producer(&mut b);
    let mut a = consumer(&mut b, 1, spec(SubKind::Failover));
    let mut c = consumer(&mut b, 2, spec(SubKind::Failover));
    publish(&mut b, p, "k", "x");
    assert_eq!(bodies(&drain(&mut a)), ["x"]);
    assert!(
        drain(&mut c).is_empty(),
        "failover: only the active consumer"
    );
    b.disconnect(1);
    let got = drain(&mut c);
    // Redelivered, but uncounted: only shared subscriptions count redeliveries.
    assert_eq!((got[0].1.as_str(), got[0].2), ("x", 0));
}

#[test]
fn readers_start_where_asked_and_free_a_slot_per_frame() {
    let mut b = broker();
    let p = producer(&mut b);
    let ids: Vec<String> = (0..4)
        .map(|i| {
            let r: serde_json::Value =
                serde_json::from_str(&publish(&mut b, p, "k", &i.to_string())).unwrap();
            r["messageId"].as_str().unwrap().to_owned()
        })
        .collect();
    let (tx, mut rx) = unbounded_channel();
    b.add_reader(
        10,
        tx,
        T,
        ReaderStart::After(Position::decode(&ids[1]).unwrap()),
        1,
    )
    .unwrap();
    assert_eq!(
        bodies(&drain(&mut rx)),
        ["2"],
        "exclusive start, window of one"
    );
    assert!(b.reader_frame(10, "anything at all"));
    assert_eq!(bodies(&drain(&mut rx)), ["3"]);
    assert!(b.reader_frame(10, r#"{"type":"isEndOfTopic"}"#));
    assert_eq!(rx.try_recv().unwrap(), r#"{"endOfTopic":false}"#);
    b.terminate(T);
    assert!(b.reader_frame(10, r#"{"type":"isEndOfTopic"}"#));
    assert_eq!(rx.try_recv().unwrap(), r#"{"endOfTopic":true}"#);

    let (tx, mut rx) = unbounded_channel();
    b.add_reader(11, tx, T, ReaderStart::Earliest, 10).unwrap();
    assert_eq!(bodies(&drain(&mut rx)), ["0", "1", "2", "3"]);
    let (tx, mut rx) = unbounded_channel();
    b.add_reader(12, tx, T, ReaderStart::Latest, 10).unwrap();
    assert!(drain(&mut rx).is_empty());
}

#[test]
fn unsubscribe_deletes_the_subscription_unless_others_are_attached() {
    let mut b = broker();
    let _a = consumer(&mut b, 1, spec(SubKind::Shared));
    let _c = consumer(&mut b, 2, spec(SubKind::Shared));
    assert!(!b.consumer_frame(1, r#"{"type":"unsubscribe"}"#));
    b.disconnect(1);
    assert!(b.consumer_frame(2, r#"{"type":"unsubscribe"}"#));
    assert_eq!(b.backlog(T, "s"), None);
}

#[test]
fn murmur3_matches_known_vectors() {
    // Reference values of MurmurHash3_x86_32 with seed 0.
    assert_eq!(key_hash(""), 0);
    assert_eq!(key_hash("hello"), 0x248b_fa47);
    assert_eq!(
        key_hash("The quick brown fox jumps over the lazy dog"),
        0x2e4f_f723
    );
}
