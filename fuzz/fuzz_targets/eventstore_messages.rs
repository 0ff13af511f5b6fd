//! Every server message the EventStore client decodes, on arbitrary bytes: the protobuf
//! decoding and the conversion into domain types never panic.
#![no_main]

use headwaters_eventstore_tcp::Command;
use headwaters_eventstore_tcp::fuzzing::decode_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &[u8])| {
    let (code, payload) = input;
    decode_message(Command::from_code(code), payload);
});
