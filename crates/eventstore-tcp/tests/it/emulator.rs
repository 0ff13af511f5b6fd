//! The client against the in-process EventStore emulator (headwaters-testkit).

use std::time::Duration;

use headwaters_eventstore_tcp::Links;
use headwaters_eventstore_tcp::{
    ConnectError, Connection, DeleteMode, Error, EventData, EventRead, ExpectedVersion, Position,
    ReadDirection, Settings, StreamPosition,
};
use headwaters_testkit::eventstore::{EventStoreConfig, EventStoreEmulator, NotHandledReason};
use headwaters_testkit::eventually;

pub(crate) async fn setup() -> (EventStoreEmulator, Connection) {
    let e = EventStoreEmulator::start().await.unwrap();
    let c = Connection::connect(settings(&e)).await.unwrap();
    (e, c)
}

pub(crate) fn settings(e: &EventStoreEmulator) -> Settings {
    Settings::new(e.addr().to_string())
        .with_credentials("admin", "changeit")
        .unwrap()
        .with_backoff(Duration::from_millis(10), Duration::from_millis(100))
}

pub(crate) fn events(range: std::ops::Range<u32>) -> Vec<EventData> {
    range
        .map(|i| EventData::json("counted", format!("{{\"n\":{i}}}")))
        .collect()
}

fn numbers(events: &[headwaters_eventstore_tcp::ResolvedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.original_event_number().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_and_delete_follow_the_servers_rules() {
    let (e, c) = setup().await;
    let w = c
        .append_to_stream("orders", ExpectedVersion::NoStream, &events(0..3))
        .await
        .unwrap();
    assert_eq!(w.next_expected_version, 2);
    assert!(w.position.is_some());
    let err = c
        .append_to_stream("orders", ExpectedVersion::NoStream, &events(3..4))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongExpectedVersion { current: Some(2) }),
        "{err}"
    );
    c.append_to_stream("orders", ExpectedVersion::Exact(2), &events(3..5))
        .await
        .unwrap();
    c.append_to_stream("orders", ExpectedVersion::StreamExists, &events(5..6))
        .await
        .unwrap();

    let forward = c
        .read_stream("orders", 0, 4, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    assert_eq!(numbers(&forward.events), [0, 1, 2, 3]);
    assert_eq!(
        (forward.next_event_number, forward.is_end_of_stream),
        (4, false)
    );
    let first = forward.events[0].event.as_ref().unwrap();
    assert_eq!(&first.data[..], b"{\"n\":0}");
    assert!(first.is_json);
    let sent = events(0..1);
    let backward = c
        .read_stream(
            "orders",
            StreamPosition::End,
            2,
            ReadDirection::Backward,
            Links::AsStored,
        )
        .await
        .unwrap();
    assert_eq!(numbers(&backward.events), [5, 4]);
    assert_eq!(forward.next_position(), Some(StreamPosition::Event(4)));
    let to_start = c
        .read_stream("orders", 1, 10, ReadDirection::Backward, Links::AsStored)
        .await
        .unwrap();
    assert_eq!(numbers(&to_start.events), [1, 0]);
    assert_eq!(
        (to_start.next_position(), to_start.is_end_of_stream),
        (None, true),
        "a backward read that passed the first event has no next page"
    );

    // Event ids go out in .NET order and come back as the same UUID.
    let marked = sent[0].clone();
    c.append_to_stream("ids", ExpectedVersion::Any, std::slice::from_ref(&marked))
        .await
        .unwrap();
    let EventRead::Found(read) = c.read_event("ids", 0, Links::AsStored).await.unwrap() else {
        panic!("event 0 of ids");
    };
    assert_eq!(read.event.unwrap().id, marked.id);
    assert_eq!(
        c.read_event("ids", 7, Links::AsStored).await.unwrap(),
        EventRead::NotFound
    );
    assert_eq!(
        c.read_event("nope", 0, Links::AsStored).await.unwrap(),
        EventRead::NoStream
    );

    let all = c
        .read_all(
            Position::START,
            100,
            ReadDirection::Forward,
            Links::AsStored,
        )
        .await
        .unwrap();
    assert_eq!(all.events.len(), 7);
    assert!(all.is_end);
    let page = c
        .read_all(Position::START, 3, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    let rest = c
        .read_all(
            page.next_position,
            100,
            ReadDirection::Forward,
            Links::AsStored,
        )
        .await
        .unwrap();
    assert_eq!(
        page.events.len() + rest.events.len(),
        7,
        "pages neither overlap nor skip"
    );
    let last = c
        .read_all(Position::END, 1, ReadDirection::Backward, Links::AsStored)
        .await
        .unwrap();
    assert_eq!(last.events[0].original().unwrap().stream_id, "ids");

    let missing = c
        .read_stream("nope", 0, 10, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    assert!(missing.events.is_empty() && missing.is_end_of_stream);
    assert!(matches!(
        c.read_stream("orders", 0, 5000, ReadDirection::Forward, Links::AsStored)
            .await,
        Err(Error::Config(_))
    ));

    c.delete_stream("orders", ExpectedVersion::Exact(5), DeleteMode::Hard)
        .await
        .unwrap();
    assert!(matches!(
        c.read_stream("orders", 0, 10, ReadDirection::Forward, Links::AsStored)
            .await,
        Err(Error::StreamDeleted(_))
    ));
    assert!(matches!(
        c.append_to_stream("orders", ExpectedVersion::Any, &events(0..1))
            .await,
        Err(Error::StreamDeleted(_))
    ));
    assert_eq!(e.stream("orders").len(), 6);
    assert!(c.ping().await.unwrap() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_a_typed_error_at_connect() {
    let e = EventStoreEmulator::start().await.unwrap();
    let wrong = Settings::new(e.addr().to_string())
        .with_credentials("admin", "wrong")
        .unwrap();
    let err = Connection::connect(wrong).await.unwrap_err();
    assert!(matches!(err, Error::NotAuthenticated(_)), "{err}");
    assert!(
        !format!("{err:?}").contains("wrong"),
        "no password in errors"
    );
    let unreachable = Settings::new("127.0.0.1:1");
    assert!(matches!(
        Connection::connect(unreachable).await,
        Err(Error::Connect { .. })
    ));
}

/// An emulator asking for heartbeats after `interval` of silence and closing `interval`
/// later without an answer.
async fn heartbeating(interval: Duration) -> EventStoreEmulator {
    EventStoreEmulator::start_with(
        EventStoreConfig::default().with_heartbeats(interval, interval),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_connection_and_a_stall_is_detected() {
    let (fast, slow) = (Duration::from_millis(100), Duration::from_secs(30));
    // The client asks; the emulator stays quiet.
    let e = heartbeating(slow).await;
    let c = Connection::connect(settings(&e).with_keepalive(fast, Duration::from_millis(200)))
        .await
        .unwrap();
    eventually("five heartbeats asked and answered", || {
        e.heartbeats().0 >= 5
    })
    .await;
    assert_eq!(e.accepted(), 1, "answered heartbeats: no reconnect");
    c.append_to_stream("hb", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
    // The server stops answering: the client notices and connects again.
    e.stop_heartbeats(true);
    eventually(
        "the client noticed the silent server and reconnected",
        || e.accepted() >= 2,
    )
    .await;
    e.stop_heartbeats(false);
    c.append_to_stream("hb", ExpectedVersion::Any, &events(1..2))
        .await
        .unwrap();

    // The emulator asks; the client answers (and, quiet itself, asks nothing).
    let e = heartbeating(fast).await;
    let c = Connection::connect(settings(&e).with_keepalive(slow, slow))
        .await
        .unwrap();
    eventually("five heartbeats answered by the client", || {
        e.heartbeats().1 >= 5
    })
    .await;
    assert_eq!(e.accepted(), 1, "the client answered: the server kept it");
    assert_eq!(e.heartbeats().0, 0, "the client asked nothing");
    c.append_to_stream("hb", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_handled_is_retried_or_reported() {
    let (e, c) = setup().await;
    e.not_handled(2, NotHandledReason::TooBusy);
    c.append_to_stream("busy", ExpectedVersion::Any, &events(0..1))
        .await
        .expect("retried through TooBusy");
    assert_eq!(e.stream("busy").len(), 1);
    e.not_handled(1, NotHandledReason::IsReadOnly);
    let err = c
        .append_to_stream("busy", ExpectedVersion::Any, &events(1..2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly), "{err}");
    // Busy through every retry: a typed error that says which.
    e.not_handled(1_000, NotHandledReason::TooBusy);
    let err = c
        .append_to_stream("busy", ExpectedVersion::Any, &events(2..3))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotHandled(headwaters_eventstore_tcp::Busy::TooBusy)
        ),
        "{err}"
    );
    e.not_handled(0, NotHandledReason::TooBusy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_survive_a_dropped_connection() {
    let (e, c) = setup().await;
    let mut writes = Vec::new();
    for i in 0..200 {
        let c = c.clone();
        writes.push(tokio::spawn(async move {
            c.append_to_stream("pipelined", ExpectedVersion::Any, &events(i..i + 1))
                .await
        }));
        if i == 100 {
            e.drop_connections();
        }
    }
    for w in writes {
        w.await
            .unwrap()
            .expect("every append succeeds after the reconnect");
    }
    let stored: std::collections::BTreeSet<Vec<u8>> = e
        .stream("pipelined")
        .into_iter()
        .map(|(_, _, d)| d)
        .collect();
    assert_eq!(
        stored.len(),
        200,
        "every event stored (a resend may store one twice)"
    );
    assert!(e.accepted() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_time_out_after_the_retries() {
    let (e, _) = setup().await;
    let c = Connection::connect(settings(&e).with_operation_timeout(Duration::from_millis(100), 1))
        .await
        .unwrap();
    e.delay_replies(Duration::from_millis(1000));
    let err = c
        .read_stream("slow", 0, 1, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
}

pub(crate) async fn next_event(
    s: &mut headwaters_eventstore_tcp::Subscription,
) -> Option<headwaters_eventstore_tcp::SubscriptionEvent> {
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_subscriptions_see_live_events_and_unsubscribe() {
    use headwaters_eventstore_tcp::{DropReason, SubscriptionEvent};

    let (_e, c) = setup().await;
    c.append_to_stream("live", ExpectedVersion::Any, &events(0..2))
        .await
        .unwrap();
    let mut sub = c
        .subscribe_to_stream("live", Links::AsStored)
        .await
        .unwrap();
    let mut all = c.subscribe_to_all(Links::AsStored).await.unwrap();
    assert!(matches!(
        next_event(&mut sub).await,
        Some(SubscriptionEvent::Confirmed {
            last_event_number: Some(1),
            ..
        })
    ));
    assert!(matches!(
        next_event(&mut all).await,
        Some(SubscriptionEvent::Confirmed {
            last_event_number: None,
            ..
        })
    ));
    c.append_to_stream("live", ExpectedVersion::Any, &events(2..4))
        .await
        .unwrap();
    c.append_to_stream("other", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
    for expected in [2, 3] {
        let Some(SubscriptionEvent::Event(e)) = next_event(&mut sub).await else {
            panic!("a live event");
        };
        assert_eq!(e.original_event_number(), Some(expected));
        assert!(e.position.is_some());
    }
    let mut streams = Vec::new();
    for _ in 0..3 {
        let Some(SubscriptionEvent::Event(e)) = next_event(&mut all).await else {
            panic!("a live $all event");
        };
        streams.push(e.original().unwrap().stream_id.clone());
    }
    assert_eq!(streams, ["live", "live", "other"]);
    sub.unsubscribe().unwrap();
    assert_eq!(
        next_event(&mut sub).await,
        Some(SubscriptionEvent::Dropped(DropReason::Unsubscribed))
    );
    assert_eq!(next_event(&mut sub).await, None);

    // Fanout: subscribe again after unsubscribing; only what is written from then on.
    c.append_to_stream("live", ExpectedVersion::Any, &events(4..5))
        .await
        .unwrap();
    sub.resubscribe().unwrap();
    assert!(matches!(
        next_event(&mut sub).await,
        Some(SubscriptionEvent::Confirmed { .. })
    ));
    c.append_to_stream("live", ExpectedVersion::Any, &events(5..6))
        .await
        .unwrap();
    let Some(SubscriptionEvent::Event(e)) = next_event(&mut sub).await else {
        panic!("a live event after resubscribing");
    };
    assert_eq!(e.original_event_number(), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_switches_to_live_without_gap_or_duplicate_even_across_reconnects() {
    use futures_util::StreamExt;
    use headwaters_eventstore_tcp::{CatchUpEvent, DropReason};

    let (e, c) = setup().await;
    c.append_to_stream("cu", ExpectedVersion::Any, &events(0..10))
        .await
        .unwrap();
    let mut catch_up = c.subscribe_to_stream_from("cu", None, 3);
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 10..200 {
                c.append_to_stream("cu", ExpectedVersion::Any, &events(i..i + 1))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut caught_up = 0;
    let mut lost = 0;
    let mut dropped_once = false;
    while seen.len() < 200 {
        let item = tokio::time::timeout(Duration::from_secs(10), catch_up.next())
            .await
            .expect("progress")
            .expect("open");
        match item {
            CatchUpEvent::Event(ev) => seen.push(ev.original_event_number().unwrap()),
            CatchUpEvent::CaughtUp => caught_up += 1,
            CatchUpEvent::Dropped(DropReason::ConnectionLost) => lost += 1,
            other => panic!("unexpected: {other:?}"),
        }
        if seen.len() == 60 && !dropped_once {
            dropped_once = true;
            e.drop_connections();
        }
    }
    writer.await.unwrap();
    assert_eq!(
        seen,
        (0..200).collect::<Vec<u64>>(),
        "every event once, in order"
    );
    assert!(caught_up >= 2, "caught up before and after the reconnect");
    assert!(lost >= 1, "the drop was reported");

    // From a checkpoint: the events after it.
    let mut from_five = c.subscribe_to_stream_from("cu", Some(194), 100);
    let mut rest = Vec::new();
    while let Some(CatchUpEvent::Event(ev)) = from_five.next().await {
        rest.push(ev.original_event_number().unwrap());
    }
    assert_eq!(rest, [195, 196, 197, 198, 199]);

    // A hard delete ends a catch-up subscription explicitly.
    c.delete_stream("cu", ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), from_five.next())
        .await
        .expect("the drop in time");
    assert_eq!(end, Some(CatchUpEvent::Dropped(DropReason::StreamDeleted)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_catch_up_delivers_every_event_once_by_position_across_reconnects() {
    use futures_util::StreamExt;
    use headwaters_eventstore_tcp::{CatchUpEvent, DropReason};

    let (e, c) = setup().await;
    for s in ["x", "y"] {
        c.append_to_stream(s, ExpectedVersion::Any, &events(0..20))
            .await
            .unwrap();
    }
    let mut catch_up = c.subscribe_to_all_from(None, 7);
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let stream = if i % 2 == 0 { "x" } else { "y" };
                c.append_to_stream(stream, ExpectedVersion::Any, &events(i..i + 1))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut positions = Vec::new();
    let mut dropped = false;
    while positions.len() < 100 {
        let item = tokio::time::timeout(Duration::from_secs(10), catch_up.next())
            .await
            .expect("progress")
            .expect("open");
        match item {
            CatchUpEvent::Event(ev) => positions.push(ev.position.unwrap()),
            CatchUpEvent::CaughtUp | CatchUpEvent::Dropped(DropReason::ConnectionLost) => {}
            other => panic!("unexpected: {other:?}"),
        }
        if positions.len() == 50 && !dropped {
            dropped = true;
            e.drop_connections();
        }
    }
    writer.await.unwrap();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing positions: no duplicate, in order"
    );
    assert_eq!(positions.len(), e.all_len(), "no gap: every event of $all");

    // From a checkpoint position: only what comes after it.
    let mut after = c.subscribe_to_all_from(Some(positions[94]), 50);
    let mut rest = Vec::new();
    while let Some(CatchUpEvent::Event(ev)) = after.next().await {
        rest.push(ev.position.unwrap());
    }
    assert_eq!(rest, positions[95..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_become_visible_at_the_commit() {
    let (_e, c) = setup().await;
    let tx = c
        .start_transaction("ledger", ExpectedVersion::NoStream)
        .await
        .unwrap();
    tx.write(&events(0..2)).await.unwrap();
    tx.write(&events(2..3)).await.unwrap();
    let before = c
        .read_stream("ledger", 0, 10, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    assert!(before.events.is_empty(), "nothing before the commit");
    let done = tx.commit().await.unwrap();
    assert_eq!(done.next_expected_version, 2);
    let after = c
        .read_stream("ledger", 0, 10, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    assert_eq!(numbers(&after.events), [0, 1, 2]);

    // The expected version is checked at the commit.
    let late = c
        .start_transaction("ledger", ExpectedVersion::NoStream)
        .await
        .unwrap();
    late.write(&events(3..4)).await.unwrap();
    let err = late.commit().await.unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_metadata_round_trips_and_limits_reads() {
    use headwaters_eventstore_tcp::{StreamAcl, StreamMetadata};
    let (_e, c) = setup().await;
    let none = c.get_stream_metadata("audit").await.unwrap();
    assert_eq!(none.meta_version, None);
    assert_eq!(none.metadata, StreamMetadata::default());
    c.append_to_stream("audit", ExpectedVersion::Any, &events(0..5))
        .await
        .unwrap();
    let meta = StreamMetadata::default()
        .with_max_count(2)
        .with_cache_control(Duration::from_secs(30))
        .with_acl(StreamAcl {
            read: vec!["$all".into()],
            ..StreamAcl::default()
        })
        .with_custom("team", "risk");
    c.set_stream_metadata("audit", ExpectedVersion::NoStream, &meta)
        .await
        .unwrap();
    let got = c.get_stream_metadata("audit").await.unwrap();
    assert_eq!((got.meta_version, &got.metadata), (Some(0), &meta));
    let slice = c
        .read_stream("audit", 0, 10, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    assert_eq!(
        numbers(&slice.events),
        [3, 4],
        "$maxCount keeps the newest two"
    );
    // Optimistic concurrency on the metadata stream.
    let err = c
        .set_stream_metadata("audit", ExpectedVersion::NoStream, &meta)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion { .. }), "{err}");
    c.set_stream_metadata(
        "audit",
        ExpectedVersion::Exact(0),
        &StreamMetadata::default().with_truncate_before(1),
    )
    .await
    .unwrap();
    let slice = c
        .read_stream("audit", 0, 10, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    assert_eq!(numbers(&slice.events), [1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_operation_credentials_override_the_defaults() {
    let config = EventStoreConfig::default().with_user("ops", "s3cret");
    let e = EventStoreEmulator::start_with(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // No default credentials on this connection.
    let anonymous = Connection::connect(Settings::new(e.addr().to_string()))
        .await
        .unwrap();
    let ops = anonymous.as_user("ops", "s3cret").unwrap();
    ops.append_to_stream("s", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
    let wrong = anonymous.as_user("ops", "guess").unwrap();
    let err = wrong
        .append_to_stream("s", ExpectedVersion::Any, &events(1..2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotAuthenticated(_)), "{err}");
    assert!(
        anonymous.as_user("", "x").is_err(),
        "an empty login cannot be sent"
    );
    assert_eq!(e.stream("s").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_trusted_ca_and_clear_errors_without() {
    use headwaters_testkit::tls::TestCerts;
    let certs = TestCerts::generate().unwrap();
    let config = EventStoreConfig::default().with_tls(certs.server_config(false).unwrap());
    let e = EventStoreEmulator::start_with(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let secure = settings(&e)
        .with_tls(Some(certs.ca_pem.as_bytes()))
        .unwrap();
    let c = Connection::connect(secure).await.unwrap();
    c.append_to_stream("secret", ExpectedVersion::Any, &events(0..2))
        .await
        .unwrap();
    let slice = c
        .read_stream("secret", 0, 10, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    assert_eq!(numbers(&slice.events), [0, 1]);

    // The system roots do not know the test CA.
    let untrusted = settings(&e).with_tls(None).unwrap();
    let err = Connection::connect(untrusted).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Connect {
                reason: ConnectError::TlsHandshake(_),
                ..
            }
        ),
        "{err}"
    );
    // Plain TCP to a TLS port fails at the handshake instead of hanging.
    let err = Connection::connect(settings(&e).with_operation_timeout(Duration::from_secs(2), 0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Connect {
                reason: ConnectError::ClosedByServer | ConnectError::HandshakeTimeout(_),
                ..
            }
        ),
        "{err}"
    );
    let bad = settings(&e).with_tls(Some(b"not a pem")).unwrap_err();
    assert!(matches!(bad, Error::Tls(_)), "{bad}");
    assert!(!bad.is_transient());

    // A server that wants client certificates takes ours and refuses a connection without.
    let config = EventStoreConfig::default().with_tls(certs.server_config(true).unwrap());
    let e = EventStoreEmulator::start_with(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Configured as the AMQP and Pulsar clients are.
    let mutual = settings(&e)
        .with_ca_pem(certs.ca_pem.clone())
        .unwrap()
        .with_client_identity(certs.client.cert_pem.clone(), certs.client.key_pem.clone())
        .unwrap();
    Connection::connect(mutual)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    let anonymous = settings(&e)
        .with_tls(Some(certs.ca_pem.as_bytes()))
        .unwrap()
        .with_operation_timeout(Duration::from_secs(2), 0);
    assert!(Connection::connect(anonymous).await.is_err());
}

async fn next_catch_up(
    s: &mut headwaters_eventstore_tcp::CatchUp,
) -> headwaters_eventstore_tcp::CatchUpEvent {
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("in time")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_catch_up_consumer_falls_back_to_paging_without_loss() {
    use headwaters_eventstore_tcp::{CatchUpEvent, CatchUpSettings};
    let (_e, c) = setup().await;
    c.append_to_stream("bp", ExpectedVersion::Any, &events(0..10))
        .await
        .unwrap();
    let settings = CatchUpSettings::default()
        .with_page_size(8)
        .with_max_live_queue(5);
    let mut catch_up = c.subscribe_to_stream_from("bp", None, settings);
    let mut seen = Vec::new();
    let mut marks = Vec::new();
    while marks.is_empty() {
        match next_catch_up(&mut catch_up).await {
            CatchUpEvent::Event(e) => seen.push(e.original_event_number().unwrap()),
            other => marks.push(other),
        }
    }
    assert_eq!(marks, [CatchUpEvent::CaughtUp]);
    // The consumer stalls while 300 live events arrive: far more than 5 wait.
    for chunk in 0..3 {
        let from = 10 + chunk * 100;
        c.append_to_stream("bp", ExpectedVersion::Any, &events(from..from + 100))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    while seen.len() < 310 {
        match next_catch_up(&mut catch_up).await {
            CatchUpEvent::Event(e) => seen.push(e.original_event_number().unwrap()),
            other => marks.push(other),
        }
    }
    assert_eq!(seen, (0..310).collect::<Vec<u64>>(), "in order, once each");
    assert!(
        marks.contains(&CatchUpEvent::FellBehind),
        "fell back to paging: {marks:?}"
    );
    // Live again afterwards.
    c.append_to_stream("bp", ExpectedVersion::Any, &events(310..311))
        .await
        .unwrap();
    loop {
        match next_catch_up(&mut catch_up).await {
            CatchUpEvent::Event(e) => {
                assert_eq!(e.original_event_number(), Some(310));
                break;
            }
            CatchUpEvent::CaughtUp => {}
            other => panic!("{other:?}"),
        }
    }
}

/// A group on `stream` from its beginning with links resolved, joined with 50 in flight.
async fn resolving_group(
    c: &Connection,
    stream: &str,
    group: &str,
) -> headwaters_eventstore_tcp::PersistentSubscription {
    use headwaters_eventstore_tcp::{PersistentSettings, StartFrom};
    let settings = PersistentSettings::default()
        .with_start_from(StartFrom::Beginning)
        .with_resolve_link_tos(true);
    c.create_persistent_subscription(stream, group, &settings)
        .await
        .unwrap();
    c.connect_to_persistent_subscription(stream, group, 50)
        .await
        .unwrap()
}

#[derive(Clone)]
struct PerStream(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u32>>>>);

impl headwaters_ordering_core::Handler for PerStream {
    type State = String;
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, key: &headwaters_ordering_core::Key) -> Result<String, String> {
        Ok(String::from_utf8_lossy(key.as_bytes()).into_owned())
    }

    async fn handle_message(
        &self,
        m: &headwaters_ordering_core::Message,
        stream: &mut String,
    ) -> Result<headwaters_ordering_core::Outcome, String> {
        let text = String::from_utf8_lossy(&m.payload).into_owned();
        let n: u32 = text
            .trim_start_matches("{\"n\":")
            .trim_end_matches('}')
            .parse()
            .map_err(|_| format!("bad payload {text}"))?;
        tokio::time::sleep(Duration::from_micros(u64::from(n % 5) * 100)).await;
        self.0
            .lock()
            .unwrap()
            .entry(stream.clone())
            .or_default()
            .push(n);
        if n == 13 {
            // Discarded: in a persistent subscription that is a nak with Park.
            return Ok(headwaters_ordering_core::Outcome::discard("unlucky"));
        }
        Ok(headwaters_ordering_core::Outcome::ack())
    }

    async fn handle_signal(&self, (): (), _: &mut String) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_processing_keeps_each_streams_order_and_acks() {
    let (_e, c) = setup().await;
    // Ten streams, interleaved, all linked into one stream a group reads with links resolved.
    for i in 0..200u32 {
        let stream = format!("account-{}", i % 10);
        c.append_to_stream(&stream, ExpectedVersion::Any, &events(i..i + 1))
            .await
            .unwrap();
    }
    let all = c
        .read_all(
            Position::START,
            4096,
            ReadDirection::Forward,
            Links::AsStored,
        )
        .await
        .unwrap();
    let links: Vec<EventData> = all
        .events
        .iter()
        .filter_map(|e| e.event.as_ref())
        .filter(|r| r.stream_id.starts_with("account-"))
        .map(|r| EventData::binary("$>", format!("{}@{}", r.event_number, r.stream_id)))
        .collect();
    c.append_to_stream("$ce-account", ExpectedVersion::Any, &links)
        .await
        .unwrap();
    let sub = resolving_group(&c, "$ce-account", "ordered").await;
    let seen = PerStream(std::sync::Arc::default());
    let run = tokio::spawn(headwaters_eventstore_tcp::ordered::run_ordered(
        sub,
        seen.clone(),
        headwaters_ordering_core::Config::default(),
        Duration::from_secs(5),
    ));
    eventually("all handled", || {
        seen.0.lock().unwrap().values().map(Vec::len).sum::<usize>() == 200
    })
    .await;
    {
        let seen = seen.0.lock().unwrap();
        assert_eq!(seen.len(), 10, "keyed by the linked stream");
        for (stream, ns) in seen.iter() {
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "{stream}: {ns:?}");
        }
    }
    // The discarded event was parked: the group's parked stream links to it.
    let parked = c
        .read_stream(
            "$persistentsubscription-$ce-account::ordered-parked",
            0,
            10,
            ReadDirection::Forward,
            Links::Resolve,
        )
        .await
        .unwrap();
    let targets: Vec<u64> = parked
        .events
        .iter()
        .map(|e| e.event.as_ref().unwrap().event_number)
        .collect();
    assert_eq!(targets, [13], "the discarded event, parked");
    // Everything else was acknowledged: another consumer of the group gets nothing.
    let mut other = c
        .connect_to_persistent_subscription("$ce-account", "ordered", 10)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(
            Duration::from_millis(300),
            futures_util::StreamExt::next(&mut other)
        )
        .await
        .is_err(),
        "nothing left unacknowledged"
    );
    c.delete_persistent_subscription("$ce-account", "ordered")
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("ends when the group is deleted")
        .unwrap()
        .unwrap();
    assert_eq!(report.abandoned, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volatile_subscription_is_restored_after_a_reconnect() {
    use headwaters_eventstore_tcp::{DropReason, SubscriptionEvent};

    let (e, c) = setup().await;
    let mut sub = c.subscribe_to_stream("vol", Links::AsStored).await.unwrap();
    assert!(matches!(
        next_event(&mut sub).await,
        Some(SubscriptionEvent::Confirmed { .. })
    ));
    e.drop_connections();
    assert_eq!(
        next_event(&mut sub).await,
        Some(SubscriptionEvent::Dropped(DropReason::ConnectionLost))
    );
    assert!(
        matches!(
            next_event(&mut sub).await,
            Some(SubscriptionEvent::Confirmed { .. })
        ),
        "subscribed again on the new connection"
    );
    c.append_to_stream("vol", ExpectedVersion::Any, &events(0..2))
        .await
        .unwrap();
    for expected in [0, 1] {
        let Some(SubscriptionEvent::Event(ev)) = next_event(&mut sub).await else {
            panic!("a live event after the reconnect");
        };
        assert_eq!(ev.original_event_number(), Some(expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_resolves_links_for_category_streams() {
    use headwaters_eventstore_tcp::{CatchUpEvent, CatchUpSettings, EventData};

    let (_e, c) = setup().await;
    // A category stream as the $by_category projection writes it: links to the events.
    let link = |n: u32, stream: &str| EventData::binary("$>", format!("{n}@{stream}").into_bytes());
    for (stream, n) in [("order-1", 0), ("order-2", 0), ("order-1", 1)] {
        c.append_to_stream(stream, ExpectedVersion::Any, &events(n..n + 1))
            .await
            .unwrap();
        c.append_to_stream("$ce-order", ExpectedVersion::Any, &[link(n, stream)])
            .await
            .unwrap();
    }
    let settings = CatchUpSettings::default().with_resolve_link_tos(true);
    let mut sub = c.subscribe_to_stream_from("$ce-order", None, settings);
    let mut seen = Vec::new();
    loop {
        match next_catch_up(&mut sub).await {
            CatchUpEvent::Event(ev) => {
                let target = ev.event.as_ref().expect("the linked event, resolved");
                assert!(ev.link.is_some(), "the link beside it");
                seen.push((target.stream_id.clone(), ev.original_event_number()));
            }
            CatchUpEvent::CaughtUp => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("order-1".to_owned(), Some(0)),
            ("order-2".to_owned(), Some(1)),
            ("order-1".to_owned(), Some(2))
        ],
        "each linked event once, ordered by the category stream's numbers"
    );
    // Live, resolved too.
    c.append_to_stream("order-3", ExpectedVersion::Any, &events(7..8))
        .await
        .unwrap();
    c.append_to_stream("$ce-order", ExpectedVersion::Any, &[link(0, "order-3")])
        .await
        .unwrap();
    let CatchUpEvent::Event(ev) = next_catch_up(&mut sub).await else {
        panic!("a live event");
    };
    assert_eq!(ev.event.as_ref().unwrap().stream_id, "order-3");
    assert_eq!(ev.original_event_number(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_every_handle_its_subscriptions_and_the_socket() {
    use futures_util::StreamExt;
    let (e, c) = setup().await;
    let other = c.clone();
    c.append_to_stream("closing", ExpectedVersion::Any, &events(0..3))
        .await
        .unwrap();
    let mut catch_up = c.subscribe_to_stream_from("closing", None, 10);
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), catch_up.next())
            .await
            .expect("the catch-up delivers")
            .expect("open");
    }
    assert_eq!(e.open_connections(), 1);
    tokio::time::timeout(Duration::from_secs(6), c.close())
        .await
        .expect("close returns");
    assert!(other.is_closed(), "a clone sees the close");
    assert!(matches!(other.ping().await, Err(Error::Closed)));
    eventually("the socket closed", || e.open_connections() == 0).await;
    // The subscription ends rather than waiting forever.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while catch_up.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the catch-up subscription ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_a_reconnect_in_progress() {
    let (e, c) = setup().await;
    c.ping().await.unwrap();
    assert!(c.is_connected());
    drop(e); // the server is gone: the connection retries with backoff
    eventually("the connection is lost", || !c.is_connected()).await;
    let started = std::time::Instant::now();
    c.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(c.ping().await, Err(Error::Closed)));
}

/// Records, per stream, each event number it handles and whether its handler state was
/// fresh; the first event 0 of `acct` waits for the gate.
#[derive(Clone, Default)]
struct Gated {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, u32, bool)>>>,
    gate: std::sync::Arc<tokio::sync::Notify>,
}

impl headwaters_ordering_core::Handler for Gated {
    /// The stream, and whether this state handled nothing yet.
    type State = (String, bool);
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, key: &headwaters_ordering_core::Key) -> Result<(String, bool), String> {
        Ok((String::from_utf8_lossy(key.as_bytes()).into_owned(), true))
    }

    async fn handle_message(
        &self,
        m: &headwaters_ordering_core::Message,
        (stream, fresh): &mut (String, bool),
    ) -> Result<headwaters_ordering_core::Outcome, String> {
        let text = String::from_utf8_lossy(&m.payload).into_owned();
        let n: u32 = text
            .trim_start_matches("{\"n\":")
            .trim_end_matches('}')
            .parse()
            .map_err(|_| format!("bad payload {text}"))?;
        let first = self.seen.lock().unwrap().is_empty();
        self.seen
            .lock()
            .unwrap()
            .push((stream.clone(), n, std::mem::take(fresh)));
        if first {
            self.gate.notified().await;
        }
        Ok(headwaters_ordering_core::Outcome::ack())
    }

    async fn handle_signal(&self, (): (), _: &mut (String, bool)) {}
}

/// Links to `numbers` of `stream`, appended to `into`.
async fn link(c: &Connection, into: &str, stream: &str, numbers: std::ops::Range<u32>) {
    let links: Vec<EventData> = numbers
        .map(|n| EventData::binary("$>", format!("{n}@{stream}")))
        .collect();
    c.append_to_stream(into, ExpectedVersion::Any, &links)
        .await
        .unwrap();
}

/// A connection lost while a stream's first event runs: the events that connection
/// delivered and the handler had not started are dropped (the group gives them out again)
/// and the handler state they fed ends, so the stream is handled 0, then again from 0 by a
/// fresh handler — not 0, 1, 2, 3, 4 from the lost connection and then everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_drops_what_a_lost_connection_delivered_and_the_group_redelivers() {
    let (e, c) = setup().await;
    c.append_to_stream("acct", ExpectedVersion::Any, &events(0..5))
        .await
        .unwrap();
    link(&c, "mix", "acct", 0..5).await;
    let sub = resolving_group(&c, "mix", "g").await;
    let handler = Gated::default();
    let run = tokio::spawn(headwaters_eventstore_tcp::ordered::run_ordered(
        sub,
        handler.clone(),
        headwaters_ordering_core::Config::default(),
        Duration::from_secs(5),
    ));
    eventually("event 0 running", || {
        handler.seen.lock().unwrap().len() == 1
    })
    .await;
    e.drop_connections();
    // An event on another stream, delivered after the reconnect: once it was handled, the
    // loss of the first connection has reached the dispatcher.
    c.append_to_stream("marker", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
    link(&c, "mix", "marker", 0..1).await;
    eventually("the marker handled", || {
        handler
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|(s, ..)| s == "marker")
    })
    .await;
    handler.gate.notify_one();
    eventually("acct handled to its end again", || {
        let seen = handler.seen.lock().unwrap();
        seen.iter().filter(|(s, ..)| s == "acct").count() >= 6
    })
    .await;
    let acct: Vec<(u32, bool)> = handler
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, ..)| s == "acct")
        .map(|(_, n, fresh)| (*n, *fresh))
        .collect();
    assert_eq!(
        acct,
        [
            (0, true),
            (0, true),
            (1, false),
            (2, false),
            (3, false),
            (4, false)
        ],
        "0 from the lost connection, then everything again from a fresh handler"
    );
    c.delete_persistent_subscription("mix", "g").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("ends when the group is deleted")
        .unwrap()
        .unwrap();
}

/// Takes its time over each event, counting the ones it started.
struct SlowEvents(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl headwaters_ordering_core::SimpleHandler for SlowEvents {
    type Error = std::convert::Infallible;

    async fn handle(
        &self,
        _: &headwaters_ordering_core::Key,
        _: &headwaters_ordering_core::Message,
    ) -> Result<headwaters_ordering_core::Outcome, Self::Error> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(headwaters_ordering_core::Outcome::ack())
    }
}

/// Three events of one stream to a `start_ordered` member of a group, shut down with
/// `grace` while the first is being handled; returns how many another member gets then.
async fn redelivered_after_shutdown(grace: Duration) -> usize {
    use headwaters_eventstore_tcp::{PersistentSettings, StartFrom};
    let (_e, c) = setup().await;
    c.append_to_stream("jobs", ExpectedVersion::Any, &events(0..3))
        .await
        .unwrap();
    let settings = PersistentSettings::default().with_start_from(StartFrom::Beginning);
    c.create_persistent_subscription("jobs", "g", &settings)
        .await
        .unwrap();
    let sub = c
        .connect_to_persistent_subscription("jobs", "g", 10)
        .await
        .unwrap();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let running = headwaters_eventstore_tcp::ordered::start_ordered(
        sub,
        SlowEvents(std::sync::Arc::clone(&started)),
        headwaters_ordering_core::Config::default(),
    )
    .unwrap();
    eventually("the first event started", || {
        started.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let report = running.shutdown(grace).await.unwrap();
    assert_eq!(report.drained, grace > Duration::ZERO, "{report:?}");
    // What the first member did not acknowledge goes to the next one.
    let mut other = c
        .connect_to_persistent_subscription("jobs", "g", 10)
        .await
        .unwrap();
    let mut got = 0;
    while let Ok(Some(event)) = tokio::time::timeout(
        Duration::from_millis(500),
        futures_util::StreamExt::next(&mut other),
    )
    .await
    {
        if let headwaters_eventstore_tcp::PersistentEvent::Event(m) = event {
            got += 1;
            other.ack(&m).unwrap();
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_ordered_subscription_acks_what_finishes_within_the_grace() {
    assert_eq!(redelivered_after_shutdown(Duration::from_secs(5)).await, 0);
    assert_eq!(
        redelivered_after_shutdown(Duration::ZERO).await,
        3,
        "without a grace nothing is acknowledged"
    );
}
