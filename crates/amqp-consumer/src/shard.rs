//! Which queue a sharding key goes to: [`shard_index`] and [`queue_name`].

/// The shard of `key` among `total` queues: FNV-1a (64-bit) of the key's bytes, modulo
/// `total`. Stable across versions and platforms, so producers and consumers built from
/// different releases agree. (Mississippi hashes the key's Erlang term with `phash2`:
/// [`WireFormat::Mississippi`](crate::WireFormat::Mississippi) does that instead.)
pub fn shard_index(key: &[u8], total: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = key
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    (hash % u64::from(total.max(1))) as u32
}

/// The queue of shard `index`: `prefix` followed by the index (`mississippi_7`).
pub fn queue_name(prefix: &str, index: u32) -> String {
    format!("{prefix}{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_vectors() {
        // Published FNV-1a 64 test vectors.
        let fnv = |s: &[u8]| shard_index(s, u32::MAX) as u64;
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325 % u64::from(u32::MAX));
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c % u64::from(u32::MAX));
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8 % u64::from(u32::MAX));
    }

    #[test]
    fn indices_stay_in_range_and_spread() {
        let mut counts = [0_u32; 16];
        for k in 0..16_000 {
            counts[shard_index(format!("key-{k}").as_bytes(), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..1300).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(queue_name("mississippi_", 7), "mississippi_7");
    }
}
