//! Persistent subscriptions against the emulator: group CRUD, competing consumers, ack,
//! nak (retry, park, skip), reconnection.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use headwaters_eventstore_tcp::Links;
use headwaters_eventstore_tcp::{
    Connection, DropReason, Error, ExpectedVersion, NakAction, PersistentEvent, PersistentMessage,
    PersistentSettings, PersistentSubscription, ReadDirection, StartFrom,
};

use crate::emulator::{events, settings, setup};

async fn next(s: &mut PersistentSubscription) -> PersistentEvent {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an event in time")
        .expect("the subscription goes on")
}

async fn next_message(s: &mut PersistentSubscription) -> PersistentMessage {
    match next(s).await {
        PersistentEvent::Event(m) => *m,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn n(m: &PersistentMessage) -> u64 {
    m.event.original_event_number().unwrap()
}

fn from_start() -> PersistentSettings {
    PersistentSettings::default().with_start_from(StartFrom::Beginning)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_created_updated_and_deleted_with_typed_errors() {
    let (_e, c) = setup().await;
    c.create_persistent_subscription("orders", "billing", &from_start())
        .await
        .unwrap();
    let err = c
        .create_persistent_subscription("orders", "billing", &from_start())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GroupExists { .. }), "{err}");
    let err = c
        .connect_to_persistent_subscription("orders", "nobody", 10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GroupNotFound { .. }), "{err}");
    let err = c
        .update_persistent_subscription("orders", "nobody", &from_start())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GroupNotFound { .. }), "{err}");
    let err = c
        .create_persistent_subscription("$all", "g", &from_start())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server(_)), "not over TCP: {err}");

    let single = from_start().with_max_subscriber_count(1);
    c.update_persistent_subscription("orders", "billing", &single)
        .await
        .unwrap();
    let mut first = c
        .connect_to_persistent_subscription("orders", "billing", 10)
        .await
        .unwrap();
    assert_eq!(first.subscription_id(), "orders::billing");
    let err = c
        .connect_to_persistent_subscription("orders", "billing", 10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SubscriberMaxCountReached(_)), "{err}");

    c.delete_persistent_subscription("orders", "billing")
        .await
        .unwrap();
    assert_eq!(
        next(&mut first).await,
        PersistentEvent::Dropped(DropReason::PersistentSubscriptionDeleted)
    );
    assert!(first.next().await.is_none());
    let err = c
        .delete_persistent_subscription("orders", "billing")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::GroupNotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_share_the_stream_and_acks_release_more() {
    let (_e, c) = setup().await;
    c.append_to_stream("jobs", ExpectedVersion::Any, &events(0..5))
        .await
        .unwrap();
    c.create_persistent_subscription("jobs", "workers", &from_start())
        .await
        .unwrap();
    let mut a = c
        .connect_to_persistent_subscription("jobs", "workers", 2)
        .await
        .unwrap();
    let mut b = c
        .connect_to_persistent_subscription("jobs", "workers", 2)
        .await
        .unwrap();
    // Written after the consumers joined: live events go to them too.
    c.append_to_stream("jobs", ExpectedVersion::Any, &events(5..20))
        .await
        .unwrap();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let (mut from_a, mut from_b) = (0, 0);
    while seen.len() < 20 {
        tokio::select! {
            e = next(&mut a) => {
                let PersistentEvent::Event(m) = e else { panic!("{e:?}") };
                *seen.entry(n(&m)).or_default() += 1;
                from_a += 1;
                a.ack(&m).unwrap();
            }
            e = next(&mut b) => {
                let PersistentEvent::Event(m) = e else { panic!("{e:?}") };
                *seen.entry(n(&m)).or_default() += 1;
                from_b += 1;
                b.acker().ack([m.as_ref()]).unwrap();
            }
        }
    }
    assert!(seen.values().all(|times| *times == 1), "{seen:?}");
    assert!(
        from_a > 0 && from_b > 0,
        "both consumers got work ({from_a}/{from_b})"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a.next())
            .await
            .is_err(),
        "nothing more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naks_retry_park_and_skip() {
    let (_e, c) = setup().await;
    c.append_to_stream("mail", ExpectedVersion::Any, &events(0..3))
        .await
        .unwrap();
    c.create_persistent_subscription("mail", "senders", &from_start().with_max_retry_count(1))
        .await
        .unwrap();
    let mut s = c
        .connect_to_persistent_subscription("mail", "senders", 1)
        .await
        .unwrap();
    let m = next_message(&mut s).await;
    assert_eq!((n(&m), m.retry_count), (0, 0));
    s.nak(&m, NakAction::Retry, "smtp down").unwrap();
    let m = next_message(&mut s).await;
    assert_eq!((n(&m), m.retry_count), (0, 1), "retried, counted");
    let ordered = headwaters_eventstore_tcp::ordered::to_ordering_message(&m.event, m.retry_count);
    assert_eq!(
        ordered.map(|o| o.redeliveries),
        Some(1),
        "the dispatcher sees it"
    );
    s.nak(&m, NakAction::Retry, "still down").unwrap();
    // Out of retries: parked; the next event comes.
    let m = next_message(&mut s).await;
    assert_eq!((n(&m), m.retry_count), (1, 0));
    s.nak(&m, NakAction::Skip, "not for us").unwrap();
    let m = next_message(&mut s).await;
    assert_eq!(n(&m), 2);
    s.nak(&m, NakAction::Park, "poison").unwrap();

    // The parked-messages stream links to events 0 and 2.
    let parked = "$persistentsubscription-mail::senders-parked";
    let slice = c
        .read_stream(parked, 0, 10, ReadDirection::Forward, Links::Resolve)
        .await
        .unwrap();
    let targets: Vec<u64> = slice
        .events
        .iter()
        .map(|e| e.event.as_ref().unwrap().event_number)
        .collect();
    assert_eq!(targets, [0, 2]);
    assert!(slice.events.iter().all(|e| e.link.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_events_come_again_after_a_timeout_or_a_reconnect() {
    let (e, c) = setup().await;
    c.append_to_stream("t", ExpectedVersion::Any, &events(0..2))
        .await
        .unwrap();
    let quick = from_start().with_message_timeout(Duration::from_millis(300));
    c.create_persistent_subscription("t", "g", &quick)
        .await
        .unwrap();
    let mut s = c
        .connect_to_persistent_subscription("t", "g", 1)
        .await
        .unwrap();
    let m = next_message(&mut s).await;
    assert_eq!((n(&m), m.retry_count), (0, 0));
    // Not acknowledged: the server gives it again after the message timeout.
    let m = next_message(&mut s).await;
    assert_eq!((n(&m), m.retry_count), (0, 1));

    e.drop_connections();
    assert_eq!(
        next(&mut s).await,
        PersistentEvent::Dropped(DropReason::ConnectionLost)
    );
    assert_eq!(next(&mut s).await, PersistentEvent::Reconnected);
    let m = next_message(&mut s).await;
    assert_eq!(n(&m), 0, "still not acknowledged");
    s.ack(&m).unwrap();
    let m = next_message(&mut s).await;
    assert_eq!(n(&m), 1);
    s.ack(&m).unwrap();

    // Stop: leave the group; the event stays with the server for others.
    c.append_to_stream("t", ExpectedVersion::Any, &events(2..3))
        .await
        .unwrap();
    let m = next_message(&mut s).await;
    s.nak(&m, NakAction::Stop, "shutting down").unwrap();
    assert_eq!(
        next(&mut s).await,
        PersistentEvent::Dropped(DropReason::Unsubscribed)
    );
    let other = Connection::connect(settings(&e)).await.unwrap();
    let mut s2 = other
        .connect_to_persistent_subscription("t", "g", 1)
        .await
        .unwrap();
    assert_eq!(n(&next_message(&mut s2).await), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nak_with_an_unknown_action_is_retried_as_the_server_does() {
    let (_e, c) = setup().await;
    c.append_to_stream("u", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
    c.create_persistent_subscription("u", "g", &from_start())
        .await
        .unwrap();
    let mut s = c
        .connect_to_persistent_subscription("u", "g", 1)
        .await
        .unwrap();
    let m = next_message(&mut s).await;
    assert_eq!((n(&m), m.retry_count), (0, 0));
    s.nak(&m, NakAction::Unknown, "no idea").unwrap();
    let m = next_message(&mut s).await;
    assert_eq!((n(&m), m.retry_count), (0, 1), "Unknown is a retry");
    s.ack(&m).unwrap();
}
