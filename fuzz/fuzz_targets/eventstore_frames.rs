//! The EventStore TCP frame decoder on arbitrary bytes, fed in arbitrary pieces: no panic,
//! and every decoded frame encodes back to the bytes it came from.
#![no_main]

use bytes::BytesMut;
use headwaters_eventstore_tcp::FrameDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &[u8])| {
    let (chunk, data) = input;
    let chunk = usize::from(chunk).max(1);
    let mut decoder = FrameDecoder::new();
    let mut consumed = 0;
    for piece in data.chunks(chunk) {
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let mut out = BytesMut::new();
                    frame.encode(&mut out).expect("a decoded frame re-encodes");
                    assert_eq!(&out[..], &data[consumed..consumed + out.len()]);
                    consumed += out.len();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
