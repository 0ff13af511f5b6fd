//! [`KinesisPosition`]: where a shard's reading stands, in the form checkpoint stores keep.

use std::fmt;
use std::str::FromStr;

/// The checkpoint text of a shard read to its end (KCL's `SHARD_END`): its children may start.
pub const SHARD_END: &str = "SHARD_END";

/// A position in a shard: a record's sequence number, and for a user record inside a KPL
/// aggregate its index there. Text form: `SEQ`, `SEQ:INDEX`, or `SHARD_END`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KinesisPosition {
    /// At (after, once checkpointed) this record.
    Sequence {
        /// The Kinesis record's sequence number.
        sequence: String,
        /// The user record's index in the aggregate (sub-sequence number), if it is one.
        sub: Option<u32>,
    },
    /// The shard was read to its end and everything in it flushed.
    ShardEnd,
}

impl KinesisPosition {
    /// A whole record's position.
    pub fn record(sequence: impl Into<String>) -> Self {
        Self::Sequence {
            sequence: sequence.into(),
            sub: None,
        }
    }
}

impl fmt::Display for KinesisPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sequence {
                sequence,
                sub: None,
            } => f.write_str(sequence),
            Self::Sequence {
                sequence,
                sub: Some(i),
            } => write!(f, "{sequence}:{i}"),
            Self::ShardEnd => f.write_str(SHARD_END),
        }
    }
}

/// A checkpoint text that is not a [`KinesisPosition`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kinesis position (SEQUENCE, SEQUENCE:INDEX or SHARD_END)")]
pub struct BadPosition(String);

impl FromStr for KinesisPosition {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == SHARD_END {
            return Ok(Self::ShardEnd);
        }
        let bad = || BadPosition(s.to_owned());
        let (sequence, sub) = match s.split_once(':') {
            Some((seq, i)) => (seq, Some(i.parse().map_err(|_| bad())?)),
            None => (s, None),
        };
        // Sequence numbers are decimal, up to 128 digits.
        if sequence.is_empty()
            || sequence.len() > 128
            || !sequence.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        Ok(Self::Sequence {
            sequence: sequence.to_owned(),
            sub,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_refuses_garbage() {
        for text in [
            "49590338271490256608559692538361571095921575989136588898",
            "1:0",
            "7:12",
            SHARD_END,
        ] {
            let p: KinesisPosition = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        for bad in ["", ":1", "12:", "12:x", "abc", "1.5", "SHARD_END:1", "-3"] {
            assert!(bad.parse::<KinesisPosition>().is_err(), "{bad}");
        }
    }
}
