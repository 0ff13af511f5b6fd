//! Every inbound Pulsar WebSocket frame decoder on arbitrary input: no panic, and what
//! decodes re-encodes consistently.
#![no_main]

use headwaters_pulsar_ws::{Command, ConsumerFrame, Receipt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(receipt) = Receipt::decode(text) {
        // A successful receipt always names a message id.
        if let Ok(id) = &receipt.result {
            let _ = Command::Ack(id.clone()).encode();
        }
    }
    if let Ok(ConsumerFrame::Message(m)) = ConsumerFrame::decode(text) {
        // Acking what arrived must produce a frame the server can parse.
        let ack = Command::Ack(m.message_id).encode();
        assert!(ack.starts_with("{\"messageId\":"));
    }
});
