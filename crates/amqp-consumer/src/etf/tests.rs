use super::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Terms and their full 32-bit hashes, from `erl` (OTP 25): `phash2(T, 1 bsl 32)`.
#[test]
fn hashes_match_the_vm() {
    let cases: Vec<(Term, u32)> = vec![
        (Term::List(vec![]), 3_468_870_702),
        (Term::from(vec![1, 2, 3]), 4_186_538_188),
        (Term::from(vec![97, 98, 99, 100, 101]), 2_487_089_008),
        (Term::List(vec![Term::atom("a")]), 1_634_476_877),
        (
            Term::ImproperList(vec![Term::Int(1)], Box::new(Term::Int(2))),
            3_844_221_178,
        ),
        (Term::Binary(vec![]), 147_926_629),
        (Term::Binary(vec![1, 2, 3]), 4_167_228_639),
        (Term::Float(0.0), 423_528_920),
        (Term::Float(-0.0), 423_528_920),
        (Term::Float(1.0), 3_029_937_084),
        (Term::Tuple(vec![]), 221_703_996),
        (Term::Map(vec![]), 844_985_373),
        (Term::map([(Term::atom("a"), Term::Int(1))]), 1_401_795_262),
        (Term::Int(1 << 27), 2_562_491_755),
        (Term::Int(-(1 << 27)), 874_979_335),
        (Term::Int((1 << 27) - 1), 4_273_352_567),
        (Term::from(1_i128 << 64), 2_519_041_713),
        (Term::from(-(1_i128 << 64)), 2_563_594_619),
        (
            Term::Bits {
                bytes: vec![0b0010_0000],
                tail_bits: 3,
            },
            3_965_351_140,
        ),
    ];
    for (term, expected) in cases {
        assert_eq!(hash32(&term), expected, "{term:?}");
    }
}

/// The table of `reference/mississippi-erlmld-eventstreamex.md` §1.4: phash2/1, /2 and the
/// bytes of `term_to_binary` (OTP 25 writes atoms as ATOM_EXT).
#[test]
fn mississippi_reference_vectors() {
    let cases: Vec<(Term, u32, u32, u32, &[u8])> = vec![
        (
            "user_1".into(),
            108_147_463,
            7,
            7,
            &[131, 109, 0, 0, 0, 6, 117, 115, 101, 114, 95, 49],
        ),
        (
            "aaa".into(),
            60_334_311,
            103,
            7,
            &[131, 109, 0, 0, 0, 3, 97, 97, 97],
        ),
        ("".into(), 13_708_901, 101, 5, &[131, 109, 0, 0, 0, 0]),
        (0.into(), 88_723_725, 13, 13, &[131, 97, 0]),
        (1.into(), 2_614_250, 106, 10, &[131, 97, 1]),
        (42.into(), 30_328_728, 24, 8, &[131, 97, 42]),
        (
            (-1).into(),
            44_071_773,
            93,
            13,
            &[131, 98, 255, 255, 255, 255],
        ),
        (
            1_000_000.into(),
            109_607_396,
            100,
            4,
            &[131, 98, 0, 15, 66, 64],
        ),
        (
            Term::atom("atom"),
            428_893,
            93,
            13,
            &[131, 100, 0, 4, 97, 116, 111, 109],
        ),
        (
            (Term::atom("a"), 1).into(),
            72_425_156,
            68,
            4,
            &[131, 104, 2, 100, 0, 1, 97, 97, 1],
        ),
        (
            vec![1, 2, 3].into(),
            25_788_620,
            76,
            12,
            &[131, 107, 0, 3, 1, 2, 3],
        ),
        ("sharding_key_1".into(), 83_675_061, 53, 5, &[]),
    ];
    for (term, h, h128, h16, bytes) in cases {
        assert_eq!(phash2(&term), h, "{term:?}");
        assert_eq!(phash2_range(&term, 128), h128, "{term:?}");
        assert_eq!(phash2_range(&term, 16), h16, "{term:?}");
        if !bytes.is_empty() {
            assert_eq!(decode(bytes).unwrap(), term, "{}", hex(bytes));
        }
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn leaf() -> impl Strategy<Value = Term> {
        prop_oneof![
            any::<i64>().prop_map(Term::Int),
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(neg, mag)| Term::integer(neg, &mag)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Term::Float),
            "[a-zA-Z0-9_ éλ日]{0,20}".prop_map(Term::Atom),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Term::Binary),
            (proptest::collection::vec(any::<u8>(), 1..8), 1..8u8).prop_map(|(mut bytes, bits)| {
                if let Some(last) = bytes.last_mut() {
                    *last &= 0xff << (8 - bits);
                }
                Term::Bits {
                    bytes,
                    tail_bits: bits,
                }
            }),
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(id, serial, creation)| {
                Term::Pid {
                    node: "n@h".into(),
                    id,
                    serial,
                    creation,
                }
            }),
            proptest::collection::vec(any::<u32>(), 1..=5).prop_map(|ids| Term::Reference {
                node: "n@h".into(),
                creation: 7,
                ids,
            }),
        ]
    }

    fn term() -> impl Strategy<Value = Term> {
        leaf().prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Term::List),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Term::Tuple),
                (proptest::collection::vec(inner.clone(), 1..4), leaf()).prop_filter_map(
                    "a non-list tail",
                    |(items, tail)| {
                        (!matches!(tail, Term::List(_)))
                            .then(|| Term::ImproperList(items, Box::new(tail)))
                    }
                ),
                proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Term::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_the_same_term(t in term()) {
            let bytes = t.to_etf().unwrap();
            prop_assert_eq!(decode(&bytes).unwrap(), t.clone());
            // Canonical encoding: map order and -0.0 do not change it, decoding keeps it.
            let canonical = t.to_canonical_etf().unwrap();
            prop_assert_eq!(decode(&canonical).unwrap().to_canonical_etf().unwrap(), canonical);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut input = vec![131];
            input.extend(bytes);
            let _ = decode(&input);
        }
    }
}

#[test]
fn bounds_and_bad_input_are_typed_errors() {
    assert_eq!(decode(&[]), Err(EtfError::Truncated { at: 0 }));
    assert_eq!(decode(&[130, 97, 1]), Err(EtfError::Version(130)));
    assert_eq!(decode(&[131, 97]), Err(EtfError::Truncated { at: 2 }));
    assert_eq!(decode(&[131, 97, 1, 0]), Err(EtfError::Trailing(1)));
    assert!(matches!(
        decode(&[131, 80, 0, 0, 0, 1]),
        Err(EtfError::Tag { tag: 80, .. })
    ));
    // A forged length cannot make the decoder allocate.
    assert!(matches!(
        decode(&[131, 108, 0xff, 0xff, 0xff, 0xff, 106]),
        Err(EtfError::Truncated { .. })
    ));
    // Deep nesting is refused before it can exhaust the stack.
    let mut deep = vec![131];
    deep.extend(std::iter::repeat_n([104, 1], 10_000).flatten());
    deep.push(106);
    assert_eq!(decode(&deep), Err(EtfError::TooDeep(64)));
    let big = vec![0; Limits::default().max_bytes + 1];
    assert!(matches!(decode(&big), Err(EtfError::TooLarge { .. })));
    // NaN cannot come from the VM.
    let mut nan = vec![131, 70];
    nan.extend(f64::NAN.to_be_bytes());
    assert!(matches!(decode(&nan), Err(EtfError::Invalid { .. })));
    assert!(Term::atom("x".repeat(256)).to_etf().is_err());
    assert!(Term::Float(f64::INFINITY).to_etf().is_err());
    // What we write we can read back: no deeper than the decoder accepts.
    let nest = |levels: usize| (0..levels).fold(Term::Int(1), |t, _| Term::Tuple(vec![t]));
    assert_eq!(decode(&nest(64).to_etf().unwrap()).unwrap(), nest(64));
    assert!(matches!(nest(65).to_etf(), Err(EtfError::Unencodable(_))));
}

#[test]
fn keys_from_rust_values() {
    assert_eq!(Term::from("user-1"), Term::Binary(b"user-1".to_vec()));
    assert_eq!(
        Term::from((Term::atom("user"), 42, "x")),
        Term::Tuple(vec![
            Term::atom("user"),
            Term::Int(42),
            Term::Binary(b"x".to_vec())
        ])
    );
    assert_eq!(
        Term::from(u64::MAX),
        Term::integer(false, &u64::MAX.to_le_bytes())
    );
    assert!(matches!(Term::from(u64::MAX), Term::Big(_)));
    assert_eq!(Term::from(i64::MIN as i128), Term::Int(i64::MIN));
    assert_eq!(Term::from(true), Term::atom("true"));
    // One key, whatever the encoding: a Latin-1 atom and a UTF-8 atom are the same term.
    let latin1 = decode(&[131, 100, 0, 1, 0xe9]).unwrap();
    let utf8 = decode(&[131, 119, 2, 0xc3, 0xa9]).unwrap();
    assert_eq!(latin1.to_canonical_etf(), utf8.to_canonical_etf());
    // Map order does not matter to the canonical key.
    let ab = Term::map([(Term::atom("a"), 1.into()), (Term::atom("b"), 2.into())]);
    let ba = Term::map([(Term::atom("b"), 2.into()), (Term::atom("a"), 1.into())]);
    assert_ne!(ab.to_etf(), ba.to_etf());
    assert_eq!(ab.to_canonical_etf(), ba.to_canonical_etf());
    assert_eq!(hash32(&ab), hash32(&ba));
}
