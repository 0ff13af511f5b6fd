//! The protocol's protobuf messages, generated from `proto/eventstore/client_messages.proto`
//! by `cargo xtask codegen` (`bytes` fields as [`bytes::Bytes`], so event data is not
//! copied). With the [frame codec](crate::frame) and the [command codes](crate::command)
//! this is the whole wire, IO-free: the client and the testkit emulator both speak it.

#[allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    unnameable_types,
    clippy::all,
    clippy::use_self,
    clippy::enum_variant_names
)]
mod generated {
    include!("wire/event_store.client.messages.rs");
}

pub use generated::*;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn proto3_servers_omitting_defaults_still_decode() {
        // A 22.6+ server leaves out result = Success, event_number 0 and
        // is_end_of_stream = false: an empty body must decode to those defaults.
        let m = ReadStreamEventsCompleted::decode(&[][..]).unwrap();
        assert_eq!(
            m.result(),
            read_stream_events_completed::ReadStreamResult::Success
        );
        assert!(!m.is_end_of_stream);
        assert_eq!(m.next_event_number, 0);
        let e = EventRecord::decode(&[][..]).unwrap();
        assert_eq!(e.event_number, 0);
    }

    #[test]
    fn required_fields_are_written_even_when_default() {
        // v5 and older servers are proto2 and insist on required fields.
        let w = WriteEvents {
            event_stream_id: String::new(),
            expected_version: 0,
            events: Vec::new(),
            require_master: false,
        };
        let bytes = w.encode_to_vec();
        // field 1 (len 0), field 2 (varint 0), field 4 (varint 0)
        assert_eq!(bytes, [0x0a, 0x00, 0x10, 0x00, 0x20, 0x00]);
    }

    #[test]
    fn negative_int64_event_numbers_round_trip() {
        let r = ReadEvent {
            event_stream_id: "s".into(),
            event_number: -1,
            resolve_link_tos: true,
            require_master: false,
        };
        assert_eq!(ReadEvent::decode(&r.encode_to_vec()[..]).unwrap(), r);
    }
}
