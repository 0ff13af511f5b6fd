use proptest::prelude::*;

use super::*;

fn creds() -> Credentials {
    Credentials::new("admin", "changeit").unwrap()
}

#[test]
fn layout_matches_the_wire_format() {
    let frame =
        Frame::new(Command::WriteEvents, [7; 16], &b"\x0a\x01s"[..]).with_credentials(creds());
    let bytes = frame.to_bytes().unwrap();
    let mut expected = Vec::new();
    let len = 18 + 1 + 5 + 1 + 8 + 3;
    expected.extend_from_slice(&(len as u32).to_le_bytes());
    expected.push(0x82);
    expected.push(0x01);
    expected.extend_from_slice(&[7; 16]);
    expected.push(5);
    expected.extend_from_slice(b"admin");
    expected.push(8);
    expected.extend_from_slice(b"changeit");
    expected.extend_from_slice(b"\x0a\x01s");
    assert_eq!(&bytes[..], &expected[..]);

    let heartbeat = Frame::new(Command::HeartbeatResponse, [1; 16], Bytes::new());
    let bytes = heartbeat.to_bytes().unwrap();
    assert_eq!(bytes.len(), 22);
    assert_eq!(&bytes[..6], &[18, 0, 0, 0, 0x02, 0x00]);
}

#[test]
fn the_decoder_handles_any_split_of_the_stream() {
    let frames = vec![
        Frame::new(Command::HeartbeatRequest, [1; 16], Bytes::new()),
        Frame::new(Command::ReadEvent, [2; 16], vec![1, 2, 3]).with_credentials(creds()),
        Frame::new(Command::Other(0x42), [3; 16], vec![0; 1000]),
    ];
    let mut stream = BytesMut::new();
    for f in &frames {
        f.encode(&mut stream).unwrap();
    }
    for chunk in [1, 2, 7, 22, 100, stream.len()] {
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.extend(piece);
            while let Some(f) = decoder.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames, "chunk size {chunk}");
        assert_eq!(decoder.pending(), 0);
    }
}

#[test]
fn bad_lengths_and_credentials_are_errors_not_panics() {
    let mut d = FrameDecoder::new();
    d.extend(&17u32.to_le_bytes());
    assert_eq!(d.next_frame(), Err(FrameError::TooShort(17)));

    let mut d = FrameDecoder::new();
    d.extend(&((MAX_FRAME + 1) as u32).to_le_bytes());
    assert_eq!(d.next_frame(), Err(FrameError::TooLarge(MAX_FRAME + 1)));

    // Authenticated flag, login length 9 but only 2 bytes left.
    let mut d = FrameDecoder::new();
    let mut body = vec![0xF2, 0x01];
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(&[9, b'a', b'b']);
    d.extend(&(body.len() as u32).to_le_bytes());
    d.extend(&body);
    assert_eq!(d.next_frame(), Err(FrameError::BadCredentials("login")));

    // A frame that would be too large is refused before it is written.
    let huge = Frame::new(Command::WriteEvents, [0; 16], vec![0; MAX_FRAME]);
    assert!(matches!(huge.to_bytes(), Err(FrameError::TooLarge(_))));
}

#[test]
fn credentials_are_checked_and_never_printed() {
    assert_eq!(
        Credentials::new("é-user", "x"),
        Err(CredentialsError::NonAsciiStart)
    );
    assert_eq!(
        Credentials::new("a".repeat(128), "x"),
        Err(CredentialsError::TooLong("login"))
    );
    assert_eq!(Credentials::new("", "x"), Err(CredentialsError::EmptyLogin));
    assert!(!format!("{:?}", creds()).contains("changeit"));
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        any::<u8>(),
        any::<[u8; 16]>(),
        proptest::option::of(("[a-z][a-z0-9]{0,20}", "[ -~]{0,30}")),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(code, correlation, creds, payload)| {
            let mut f = Frame::new(Command::from_code(code), correlation, payload);
            if let Some((l, p)) = creds {
                f = f.with_credentials(Credentials::new(l, p).unwrap());
            }
            f
        })
}

proptest! {
    #[test]
    fn frames_round_trip_through_any_chunking(
        frames in proptest::collection::vec(arb_frame(), 1..8),
        chunk in 1usize..64,
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            f.encode(&mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.extend(piece);
            while let Some(f) = decoder.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&bytes);
        while let Ok(Some(_)) = decoder.next_frame() {}
    }
}
