//! Cluster discovery and leader redirects against the emulator's simulated three-node
//! cluster.

use std::time::Duration;

use headwaters_eventstore_tcp::Links;
use headwaters_eventstore_tcp::{
    Connection, ExpectedVersion, NodePreference, ReadDirection, Settings,
};
use headwaters_testkit::eventstore::{EventStoreCluster, EventStoreConfig, GossipFormat};
use headwaters_testkit::eventually;

use crate::emulator::events;

fn cluster_settings(cluster: &EventStoreCluster, seed: usize) -> Settings {
    Settings::cluster([cluster.gossip_addr(seed).to_string()])
        .with_credentials("admin", "changeit")
        .unwrap()
        .with_backoff(Duration::from_millis(10), Duration::from_millis(100))
}

async fn read_count(c: &Connection, stream: &str) -> usize {
    c.read_stream(stream, 0, 100, ReadDirection::Forward, Links::AsStored)
        .await
        .unwrap()
        .events
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_finds_the_leader_in_both_formats() {
    for format in [GossipFormat::V20, GossipFormat::V5] {
        let cluster = EventStoreCluster::start(EventStoreConfig::default(), format)
            .await
            .unwrap();
        // Seeded with a follower's gossip endpoint.
        let c = Connection::connect(cluster_settings(&cluster, 2))
            .await
            .unwrap();
        c.append_to_stream("s", ExpectedVersion::Any, &events(0..3))
            .await
            .unwrap();
        assert_eq!(read_count(&c, "s").await, 3);
        assert_eq!(
            (0..3)
                .map(|i| cluster.node(i).accepted())
                .collect::<Vec<_>>(),
            [1, 0, 0],
            "{format:?}: only the leader was connected to"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_not_leader_answer_is_followed_to_the_leader() {
    let cluster = EventStoreCluster::start(EventStoreConfig::default(), GossipFormat::V20)
        .await
        .unwrap();
    let follower = Settings::new(cluster.node(1).addr().to_string())
        .with_credentials("admin", "changeit")
        .unwrap();
    let c = Connection::connect(follower).await.unwrap();
    // Writes are forwarded by followers: served where we are.
    c.append_to_stream("s", ExpectedVersion::Any, &events(0..2))
        .await
        .unwrap();
    assert_eq!(cluster.node(0).accepted(), 0);
    // A read that requires the leader is refused with NotHandled(NotMaster) and the
    // leader's address: the client reconnects there and the read succeeds.
    assert_eq!(read_count(&c, "s").await, 2);
    assert_eq!(cluster.node(0).accepted(), 1, "redirected to the leader");
    eventually("the follower connection closes", || {
        cluster.node(1).open_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_preference_reads_from_a_follower_and_failover_regossips() {
    let cluster = EventStoreCluster::start(EventStoreConfig::default(), GossipFormat::V20)
        .await
        .unwrap();
    let reader = Connection::connect(
        cluster_settings(&cluster, 0).with_node_preference(NodePreference::Follower),
    )
    .await
    .unwrap();
    assert_eq!(read_count(&reader, "none").await, 0);
    assert_eq!(cluster.node(0).accepted(), 0, "reads stay on a follower");

    let writer = Connection::connect(cluster_settings(&cluster, 0))
        .await
        .unwrap();
    writer
        .append_to_stream("s", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
    assert_eq!(cluster.node(0).accepted(), 1);
    // An election: node 2 leads, node 0 drops its clients; the writer gossips again.
    cluster.set_leader(2);
    eventually("node 0 dropped its clients", || {
        cluster.node(0).open_connections() == 0
    })
    .await;
    writer
        .append_to_stream("s", ExpectedVersion::Any, &events(1..2))
        .await
        .unwrap();
    assert!(
        cluster.node(2).accepted() >= 1,
        "the writer followed the new leader"
    );
    assert_eq!(read_count(&writer, "s").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_seeds_resolve_to_gossip_endpoints() {
    let cluster = EventStoreCluster::start(EventStoreConfig::default(), GossipFormat::V5)
        .await
        .unwrap();
    // `localhost` resolves to the loopback address(es); the one serving gossip answers.
    let settings = Settings::cluster_dns("localhost", cluster.gossip_addr(1).port())
        .with_credentials("admin", "changeit")
        .unwrap();
    let c = Connection::connect(settings).await.unwrap();
    c.append_to_stream("s", ExpectedVersion::Any, &events(0..1))
        .await
        .unwrap();
    assert_eq!(
        cluster.node(0).accepted(),
        1,
        "the leader, found through DNS"
    );
    let err = Connection::connect(Settings::cluster_dns("no-such-host.invalid", 2113))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot resolve"), "{err}");
}
