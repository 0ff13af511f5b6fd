//! Access control and the server's edges, against the emulator as EventStoreDB enforces
//! them: stream `$acl`, the `$settings` defaults, `$all` and system streams for admins,
//! access checked before the expected version; `$$stream` gone with a hard delete; `$all`
//! positions that never start at 0/0.

use headwaters_eventstore_tcp::Links;
use headwaters_eventstore_tcp::{
    Connection, DeleteMode, DropReason, Error, ExpectedVersion, PersistentSettings, Position,
    ReadDirection, Settings, StreamAcl, StreamMetadata, SubscriptionEvent,
};
use headwaters_testkit::eventstore::{EventStoreConfig, EventStoreEmulator, User};

use crate::emulator::{events, settings};

fn acl(read: &[&str], write: &[&str], delete: &[&str]) -> StreamAcl {
    let names = |who: &[&str]| who.iter().map(|s| (*s).to_owned()).collect();
    StreamAcl {
        read: names(read),
        write: names(write),
        delete: names(delete),
        ..StreamAcl::default()
    }
}

fn denied<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(Error::AccessDenied(_)) => {}
        other => panic!("{what}: expected AccessDenied, got {other:?}"),
    }
}

async fn start() -> (EventStoreEmulator, Connection, Connection) {
    let config = EventStoreConfig::default()
        .with_user("reader", "r3ad")
        .with_user("stranger", "s7ranger")
        .with_account(User::new("auditor", "aud1t", ["auditors"]));
    let e = EventStoreEmulator::start_with(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin = Connection::connect(settings(&e)).await.unwrap();
    let anonymous = Connection::connect(Settings::new(e.addr().to_string()))
        .await
        .unwrap();
    (e, admin, anonymous)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_acl_refuses_anonymous_and_other_users_before_anything_else() {
    let (e, admin, anonymous) = start().await;
    admin
        .append_to_stream("ledger", ExpectedVersion::NoStream, &events(0..3))
        .await
        .unwrap();
    admin
        .set_stream_metadata(
            "ledger",
            ExpectedVersion::Any,
            &StreamMetadata::default().with_acl(acl(
                &["reader", "auditors"],
                &["reader"],
                &["$admins"],
            )),
        )
        .await
        .unwrap();
    let reader = anonymous.as_user("reader", "r3ad").unwrap();
    let auditor = anonymous.as_user("auditor", "aud1t").unwrap();
    let stranger = anonymous.as_user("stranger", "s7ranger").unwrap();

    for (who, c) in [("anonymous", &anonymous), ("another user", &stranger)] {
        denied(
            c.read_stream("ledger", 0, 10, ReadDirection::Forward, Links::AsStored)
                .await,
            &format!("{who} reads the stream"),
        );
        denied(
            c.read_event("ledger", 0, Links::AsStored).await,
            &format!("{who} reads an event"),
        );
        // Access comes first: a wrong expected version is not what they learn.
        denied(
            c.append_to_stream("ledger", ExpectedVersion::Exact(99), &events(9..10))
                .await,
            &format!("{who} writes"),
        );
        denied(
            c.delete_stream("ledger", ExpectedVersion::Any, DeleteMode::Soft)
                .await,
            &format!("{who} deletes"),
        );
        denied(
            c.start_transaction("ledger", ExpectedVersion::Any).await,
            &format!("{who} starts a transaction"),
        );
        let mut sub = c
            .subscribe_to_stream("ledger", Links::AsStored)
            .await
            .unwrap();
        let first = crate::emulator::next_event(&mut sub).await;
        assert!(
            matches!(
                first,
                Some(SubscriptionEvent::Dropped(DropReason::AccessDenied))
            ),
            "{who} subscribes: {first:?}"
        );
    }

    // The named user reads and writes; a group member reads; deleting is for admins.
    let slice = reader
        .read_stream("ledger", 0, 10, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    assert_eq!(slice.events.len(), 3);
    assert_eq!(
        auditor
            .read_stream("ledger", 0, 10, ReadDirection::Forward, Links::AsStored)
            .await
            .unwrap()
            .events
            .len(),
        3,
        "a member of a named group reads"
    );
    reader
        .append_to_stream("ledger", ExpectedVersion::Exact(2), &events(3..4))
        .await
        .unwrap();
    denied(
        auditor
            .append_to_stream("ledger", ExpectedVersion::Any, &events(4..5))
            .await,
        "the auditor writes",
    );
    denied(
        reader
            .delete_stream("ledger", ExpectedVersion::Any, DeleteMode::Soft)
            .await,
        "the reader deletes (only $admins may)",
    );
    assert_eq!(e.stream("ledger").len(), 4, "nothing denied was written");
    admin
        .delete_stream("ledger", ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permitted_user_runs_a_transaction() {
    let (e, admin, anonymous) = start().await;
    admin
        .set_stream_metadata(
            "tx",
            ExpectedVersion::Any,
            &StreamMetadata::default().with_acl(acl(&["reader"], &["reader"], &[])),
        )
        .await
        .unwrap();
    let reader = anonymous.as_user("reader", "r3ad").unwrap();
    let tx = reader
        .start_transaction("tx", ExpectedVersion::NoStream)
        .await
        .unwrap();
    tx.write(&events(0..2)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(e.stream("tx").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_and_system_streams_are_for_admins_and_settings_set_the_defaults() {
    let (e, admin, anonymous) = start().await;
    let reader = anonymous.as_user("reader", "r3ad").unwrap();
    admin
        .append_to_stream("open", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
    denied(
        reader
            .read_all(Position::START, 10, ReadDirection::Forward, Links::AsStored)
            .await,
        "a user reads $all",
    );
    denied(
        anonymous
            .read_all(Position::END, 10, ReadDirection::Backward, Links::AsStored)
            .await,
        "anonymous reads $all",
    );
    let mut all = reader.subscribe_to_all(Links::AsStored).await.unwrap();
    assert!(matches!(
        crate::emulator::next_event(&mut all).await,
        Some(SubscriptionEvent::Dropped(DropReason::AccessDenied))
    ));
    denied(
        reader
            .append_to_stream("$system-thing", ExpectedVersion::Any, &events(0..1))
            .await,
        "a user writes a system stream",
    );
    denied(
        reader
            .create_persistent_subscription("open", "g", &PersistentSettings::default())
            .await,
        "a user creates a persistent subscription group",
    );
    assert!(
        admin
            .read_all(Position::START, 10, ReadDirection::Forward, Links::AsStored)
            .await
            .is_ok()
    );
    // By default anyone may write a user stream; `$settings` changes that default.
    anonymous
        .append_to_stream("open", ExpectedVersion::Any, &events(1..2))
        .await
        .unwrap();
    let settings = headwaters_eventstore_tcp::EventData::json(
        "$settings",
        r#"{"$userStreamAcl": {"$r": "$all", "$w": ["reader"]}}"#,
    );
    denied(
        reader
            .append_to_stream(
                "$settings",
                ExpectedVersion::Any,
                std::slice::from_ref(&settings),
            )
            .await,
        "a user changes the settings",
    );
    admin
        .append_to_stream("$settings", ExpectedVersion::Any, &[settings])
        .await
        .unwrap();
    denied(
        anonymous
            .append_to_stream("open", ExpectedVersion::Any, &events(2..3))
            .await,
        "anonymous writes after $settings restricted writes",
    );
    reader
        .append_to_stream("fresh", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
    assert_eq!(e.stream("open").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_edges() {
    let (_e, admin, _) = start().await;
    admin
        .append_to_stream("edge", ExpectedVersion::NoStream, &events(0..3))
        .await
        .unwrap();
    admin
        .set_stream_metadata(
            "edge",
            ExpectedVersion::Any,
            &StreamMetadata::default().with_custom("owner", "edge"),
        )
        .await
        .unwrap();

    // No event at 0/0: from the start nothing is excluded, and every position is past it.
    let all = admin
        .read_all(
            Position::START,
            100,
            ReadDirection::Forward,
            Links::AsStored,
        )
        .await
        .unwrap();
    assert_eq!(all.events.len(), 4, "three events and one metadata event");
    assert!(
        all.events
            .iter()
            .all(|e| e.position.unwrap() > Position::START)
    );

    // From the end: forward is an empty page whose next position is the end.
    let tail = admin
        .read_all(Position::END, 10, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap();
    assert!(tail.events.is_empty());
    assert!(tail.next_position > all.events[3].position.unwrap());
    admin
        .append_to_stream("edge", ExpectedVersion::Exact(2), &events(3..4))
        .await
        .unwrap();
    let after = admin
        .read_all(
            tail.next_position,
            10,
            ReadDirection::Forward,
            Links::AsStored,
        )
        .await
        .unwrap();
    assert_eq!(after.events.len(), 1, "only what came after the end");

    // Backward from past the end: that range, empty, the next page from the last event.
    let far = admin
        .read_stream("edge", 50, 10, ReadDirection::Backward, Links::AsStored)
        .await
        .unwrap();
    assert!(far.events.is_empty());
    assert_eq!(far.next_event_number, 3);
    assert!(!far.is_end_of_stream);

    // A hard delete takes the metadata with it.
    admin
        .delete_stream("edge", ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
    let meta = admin.get_stream_metadata("edge").await.unwrap();
    assert!(meta.is_deleted, "{meta:?}");
    assert_eq!(meta.metadata, StreamMetadata::default());
}
