//! [`WireFormat`]: how a key travels in the `sharding_key` header and which shard queue it
//! picks — Headwaters' own format, or Elixir Mississippi's, so that both can share queues.

use headwaters_ordering_core::Key;

use crate::etf::{self, EtfError, Term};
use crate::shard::shard_index;

/// How keys are written and routed. Producers and consumers of a queue set must agree.
///
/// | | `Native` (default) | `Mississippi` |
/// |---|---|---|
/// | `sharding_key` header | the key's bytes | `term_to_binary(key)` ([`etf`]) |
/// | queue index | FNV-1a of the bytes mod `total_count` | `phash2(key, total_count)` |
/// | ordering key (consumer) | the header's bytes | the canonical encoding of the decoded term |
/// | queue arguments | SAC / dead-letter exchange if configured | none (as Mississippi declares them) |
///
/// In `Mississippi` mode a key given as bytes ([`PublishOptions::key`](crate::PublishOptions::key))
/// is the Erlang binary of those bytes — what an Elixir string key is; other keys are given
/// as terms ([`PublishOptions::term`](crate::PublishOptions::term)). A consumer decodes each
/// header as a term, so the same term is one key whichever encoding its producer chose
/// (Latin-1 or UTF-8 atoms, old or new floats); [`etf::decode`] on
/// [`Key::as_bytes`] gives the term back to a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WireFormat {
    /// Headwaters' own format, for Rust-only fleets.
    #[default]
    Native,
    /// Elixir Mississippi's format: run beside its producers and consumers on the same queues.
    Mississippi,
}

/// A key as published: the header's bytes, the shard index and the ordering key.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) header: Vec<u8>,
    pub(crate) index: u32,
}

impl WireFormat {
    /// Route a key: `term` when the publisher gave one, else the key's bytes.
    pub(crate) fn route(
        self,
        key: &Key,
        term: Option<&Term>,
        total: u32,
    ) -> Result<Routed, EtfError> {
        match (self, term) {
            (Self::Native, None) => Ok(Routed {
                header: key.as_bytes().to_vec(),
                index: shard_index(key.as_bytes(), total),
            }),
            (Self::Native, Some(term)) => {
                let header = term.to_canonical_etf()?;
                let index = shard_index(&header, total);
                Ok(Routed { header, index })
            }
            (Self::Mississippi, term) => {
                let bytes;
                let term = match term {
                    Some(term) => term,
                    None => {
                        bytes = Term::Binary(key.as_bytes().to_vec());
                        &bytes
                    }
                };
                Ok(Routed {
                    header: term.to_etf()?,
                    index: etf::phash2_range(term, u64::from(total)),
                })
            }
        }
    }

    /// The ordering key of a received `sharding_key` header.
    pub(crate) fn key_of(self, header: &[u8]) -> Result<Key, EtfError> {
        match self {
            Self::Native => Ok(Key::new(header.to_vec())),
            Self::Mississippi => Ok(Key::new(etf::decode(header)?.to_canonical_etf()?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mississippi_routes_by_the_term() {
        let total = 128;
        // An Elixir string key: the binary "user_1" (reference §1.4: queue 7 of 128).
        let routed = WireFormat::Mississippi
            .route(&Key::from("user_1"), None, total)
            .unwrap();
        assert_eq!(routed.index, 7);
        assert_eq!(
            routed.header,
            [131, 109, 0, 0, 0, 6, 117, 115, 101, 114, 95, 49]
        );
        let tuple = Term::from((Term::atom("a"), 1));
        let routed = WireFormat::Mississippi
            .route(&Key::from(""), Some(&tuple), total)
            .unwrap();
        assert_eq!(routed.index, 68);
        // The consumer's key is the same for every encoding of the term.
        let latin1_atom = [131, 104, 2, 100, 0, 1, 97, 97, 1];
        assert_eq!(
            WireFormat::Mississippi.key_of(&latin1_atom).unwrap(),
            WireFormat::Mississippi.key_of(&routed.header).unwrap()
        );
        assert!(
            WireFormat::Mississippi.key_of(b"user_1").is_err(),
            "raw bytes are no term"
        );
    }

    #[test]
    fn native_keeps_the_bytes() {
        let routed = WireFormat::Native.route(&Key::from("k"), None, 16).unwrap();
        assert_eq!(routed.header, b"k");
        assert_eq!(routed.index, shard_index(b"k", 16));
        assert_eq!(WireFormat::Native.key_of(b"k").unwrap(), Key::from("k"));
    }
}
