//! KPL aggregates written by a third-party aggregator (`aws-kinesis-agg`, see
//! `ci/kpl_vectors.py`): each is split into exactly its user records, damaged ones are handed
//! on whole, and our own `aggregate` writes the same bytes for the same records.

use bytes::Bytes;
use headwaters_kinesis::kpl::{aggregate, deaggregate, is_aggregate};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn third_party_aggregates_split_as_the_kcl_splits_them() {
    let text = include_str!("../data/kpl_vectors.txt");
    let (mut aggregates, mut plain) = (0, 0);
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.split('\t');
        let kind = fields.next().expect("kind");
        let data = Bytes::from(unhex(fields.next().expect("data")));
        let expected: Vec<(String, Option<String>, Vec<u8>)> = fields
            .map(|f| {
                let mut parts = f.splitn(3, '|');
                let key = parts.next().expect("key").to_owned();
                let hash = parts.next().expect("hash");
                let hash = (hash != "-").then(|| hash.to_owned());
                (key, hash, unhex(parts.next().expect("data")))
            })
            .collect();
        let users = deaggregate("outer", data.clone());
        let got: Vec<_> = users
            .iter()
            .map(|u| {
                (
                    u.partition_key.clone(),
                    u.explicit_hash_key.clone(),
                    u.data.to_vec(),
                )
            })
            .collect();
        assert_eq!(got, expected, "line {}", n + 1);
        match kind {
            "aggregate" => {
                aggregates += 1;
                assert!(is_aggregate(&data), "line {}", n + 1);
                let total = expected.len() as u32;
                for (i, u) in users.iter().enumerate() {
                    let sub = u.sub.expect("a place in the aggregate");
                    assert_eq!((sub.index, sub.total), (i as u32, total));
                }
                let ours = aggregate(
                    expected
                        .iter()
                        .map(|(k, h, d)| (k.as_str(), h.as_deref(), d.as_slice())),
                );
                assert_eq!(ours, data, "line {}: our aggregate differs", n + 1);
            }
            "plain" => {
                plain += 1;
                assert!(!is_aggregate(&data));
                assert_eq!(users[0].sub, None);
            }
            other => panic!("line {}: unknown kind {other}", n + 1),
        }
    }
    assert!(
        aggregates >= 30 && plain >= 30,
        "{aggregates} aggregates, {plain} plain"
    );
}
