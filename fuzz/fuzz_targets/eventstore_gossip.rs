//! The EventStore gossip document parser and node selection on arbitrary bytes: no panic,
//! and a selected member is one of the parsed members with an endpoint.
#![no_main]

use headwaters_eventstore_tcp::gossip::{parse_gossip, select_node};
use headwaters_eventstore_tcp::NodePreference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(members) = parse_gossip(data) else {
        return;
    };
    for preference in [
        NodePreference::Leader,
        NodePreference::Follower,
        NodePreference::ReadOnlyReplica,
    ] {
        for tls in [false, true] {
            if let Some(node) = select_node(&members, preference, tls) {
                assert!(node.endpoint(tls).is_some());
                assert!(members.iter().any(|m| std::ptr::eq(m, node)));
            }
        }
    }
});
