//! KPL aggregation: many user records in one Kinesis record, as the Kinesis Producer Library
//! writes them and the KCL reads them.
//!
//! An aggregated record's data is the magic `F3 89 9A C2`, a protobuf `AggregatedRecord`
//! (`proto/kinesis/kpl_aggregation.proto`) and the MD5 digest of that message. [`deaggregate`]
//! turns a record into its user records, each with its place in the aggregate (a
//! [`SubSequence`]) so that checkpoints can fall inside an aggregate. Like the KCL, it hands a
//! record on whole when it is not an aggregate — or claims to be one but its digest, message
//! or key indexes do not check out: a damaged aggregate is delivered, not dropped.
//! [`aggregate`] writes the format (for producers and tests).

use bytes::{BufMut, Bytes, BytesMut};
use headwaters_batch_flusher::SubSequence;
use md5::{Digest, Md5};
use prost::Message as _;

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    unused_qualifications,
    missing_debug_implementations
)]
mod wire {
    include!("kpl/kpl.rs");
}

/// The first four bytes of an aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// One user record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Its partition key (for a record that is not an aggregate: the record's own).
    pub partition_key: String,
    /// Its explicit hash key, if the producer set one.
    pub explicit_hash_key: Option<String>,
    /// Its data (sharing the Kinesis record's buffer).
    pub data: Bytes,
    /// Its place in the aggregate; `None` for a record that is not an aggregate.
    pub sub: Option<SubSequence>,
}

/// The user records in a Kinesis record's `data` (see the module docs): the aggregate's
/// records in order, or the record itself.
pub fn deaggregate(partition_key: &str, data: Bytes) -> Vec<UserRecord> {
    match parse(&data) {
        Some(records) => records,
        None => vec![UserRecord {
            partition_key: partition_key.to_owned(),
            explicit_hash_key: None,
            data,
            sub: None,
        }],
    }
}

/// Whether `data` is a well-formed aggregate (magic, digest, message) — what [`deaggregate`]
/// would split.
pub fn is_aggregate(data: &Bytes) -> bool {
    parse(data).is_some()
}

fn parse(data: &Bytes) -> Option<Vec<UserRecord>> {
    if data.len() < MAGIC.len() + DIGEST_LEN || data[..MAGIC.len()] != MAGIC {
        return None;
    }
    let body = data.slice(MAGIC.len()..data.len() - DIGEST_LEN);
    if Md5::digest(&body)[..] != data[data.len() - DIGEST_LEN..] {
        return None;
    }
    let aggregate = wire::AggregatedRecord::decode(body).ok()?;
    let total = u32::try_from(aggregate.records.len()).ok()?;
    if total == 0 {
        return None;
    }
    let keys = &aggregate.partition_key_table;
    let hashes = &aggregate.explicit_hash_key_table;
    aggregate
        .records
        .into_iter()
        .zip(0..)
        .map(|(r, index)| {
            let partition_key = keys.get(usize::try_from(r.partition_key_index).ok()?)?;
            let explicit_hash_key = match r.explicit_hash_key_index {
                Some(i) => Some(hashes.get(usize::try_from(i).ok()?)?.clone()),
                None => None,
            };
            Some(UserRecord {
                partition_key: partition_key.clone(),
                explicit_hash_key,
                data: r.data,
                sub: Some(SubSequence { index, total }),
            })
        })
        .collect()
}

/// One aggregated record holding `records` (partition key, explicit hash key, data), in the
/// KPL format; put it with the first record's partition key. Keys are stored once each.
pub fn aggregate<'a>(
    records: impl IntoIterator<Item = (&'a str, Option<&'a str>, &'a [u8])>,
) -> Bytes {
    let mut message = wire::AggregatedRecord::default();
    for (key, hash, data) in records {
        let partition_key_index = index_of(&mut message.partition_key_table, key);
        let explicit_hash_key_index =
            hash.map(|h| index_of(&mut message.explicit_hash_key_table, h));
        message.records.push(wire::Record {
            partition_key_index,
            explicit_hash_key_index,
            data: Bytes::copy_from_slice(data),
            tags: Vec::new(),
        });
    }
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.put_slice(&MAGIC);
    out.put_slice(&body);
    out.put_slice(&Md5::digest(&body));
    out.freeze()
}

fn index_of(table: &mut Vec<String>, key: &str) -> u64 {
    let at = table.iter().position(|k| k == key).unwrap_or_else(|| {
        table.push(key.to_owned());
        table.len() - 1
    });
    at as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_keys_hashes_data_and_places() {
        let data = aggregate([
            ("a", None, &b"one"[..]),
            ("b", Some("42"), &b""[..]),
            ("a", Some("42"), &b"three"[..]),
        ]);
        assert!(is_aggregate(&data));
        let users = deaggregate("outer", data);
        let seen: Vec<_> = users
            .iter()
            .map(|u| {
                (
                    u.partition_key.as_str(),
                    u.explicit_hash_key.as_deref(),
                    &u.data[..],
                    u.sub.map(|s| (s.index, s.total)),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("a", None, &b"one"[..], Some((0, 3))),
                ("b", Some("42"), &b""[..], Some((1, 3))),
                ("a", Some("42"), &b"three"[..], Some((2, 3))),
            ]
        );
    }

    #[test]
    fn damaged_or_foreign_records_are_handed_on_whole() {
        let good = aggregate([("a", None, &b"x"[..])]);
        let mut cases: Vec<Bytes> = vec![
            Bytes::new(),
            Bytes::from_static(b"plain"),
            good.slice(..good.len() - 1),
        ];
        let mut flipped = good.to_vec();
        flipped[6] ^= 0x55;
        cases.push(flipped.into());
        // A valid digest over a message whose key index points nowhere.
        let body = wire::AggregatedRecord {
            partition_key_table: vec![],
            explicit_hash_key_table: vec![],
            records: vec![wire::Record {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"d"),
                tags: vec![],
            }],
        }
        .encode_to_vec();
        let mut bad_index = MAGIC.to_vec();
        bad_index.extend_from_slice(&body);
        bad_index.extend_from_slice(&Md5::digest(&body));
        cases.push(bad_index.into());
        // An aggregate of nothing.
        let mut empty = MAGIC.to_vec();
        empty.extend_from_slice(&Md5::digest(b""));
        cases.push(empty.into());
        for data in cases {
            let users = deaggregate("outer", data.clone());
            assert_eq!(users.len(), 1, "{data:?}");
            assert_eq!(users[0].data, data);
            assert_eq!(users[0].partition_key, "outer");
            assert_eq!(users[0].sub, None);
        }
    }
}
