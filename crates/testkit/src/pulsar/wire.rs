//! The JSON frames: their shapes are `headwaters-pulsar-ws`'s IO-free `proto::json` (one
//! definition, both directions); what the emulator does with them is its own, and the
//! Python websocket check in `cargo xtask emulators` reads them as a client we did not
//! write. Also here: message ids and times as the server writes them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

pub(crate) use headwaters_pulsar_ws::proto::json::{
    ConsumerCommand, ConsumerMessage, ProducerAck, ProducerMessage,
};

/// `{"endOfTopic": bool}` — a JSON boolean, as the server writes it.
pub(crate) fn end_of_topic(flag: bool) -> String {
    format!("{{\"endOfTopic\":{flag}}}")
}

/// A frame as JSON (strings, maps and numbers always serialise).
pub(crate) fn to_json(frame: &impl serde::Serialize) -> String {
    serde_json::to_string(frame).unwrap_or_default()
}

/// A position in a topic: what `MessageIdData` carries for a non-batched message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Position {
    pub(crate) ledger: u64,
    pub(crate) entry: u64,
}

impl Position {
    /// Base64 of the protobuf `MessageIdData {ledgerId = 1, entryId = 2}`.
    pub(crate) fn encode(self) -> String {
        let mut out = Vec::with_capacity(12);
        out.push(0x08);
        varint(&mut out, self.ledger);
        out.push(0x10);
        varint(&mut out, self.entry);
        BASE64.encode(out)
    }

    /// Parse base64 `MessageIdData`; other fields (partition, batch index…) are skipped.
    pub(crate) fn decode(text: &str) -> Option<Self> {
        let bytes = BASE64.decode(text.as_bytes()).ok()?;
        let (mut ledger, mut entry) = (None, None);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let tag = read_varint(&mut rest)?;
            match (tag >> 3, tag & 7) {
                (field, 0) => {
                    let v = read_varint(&mut rest)?;
                    match field {
                        1 => ledger = Some(v),
                        2 => entry = Some(v),
                        _ => {}
                    }
                }
                (_, 2) => {
                    let len = usize::try_from(read_varint(&mut rest)?).ok()?;
                    rest = rest.get(len..)?;
                }
                _ => return None,
            }
        }
        Some(Self {
            ledger: ledger?,
            entry: entry?,
        })
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `DateFormatter.format`: ISO-8601 with the server's offset.
pub(crate) fn format_time(t: OffsetDateTime, offset: UtcOffset) -> String {
    t.to_offset(offset).format(&Rfc3339).unwrap_or_default()
}

pub(crate) fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_match_the_reference_example() {
        let p = Position {
            ledger: 0,
            entry: 3,
        };
        assert_eq!(p.encode(), "CAAQAw==");
        assert_eq!(Position::decode("CAAQAw=="), Some(p));
        let big = Position {
            ledger: 1 << 40,
            entry: 300,
        };
        assert_eq!(Position::decode(&big.encode()), Some(big));
        // partition = 3 (varint) and ack_set = 5 (length-delimited) are skipped.
        let with_extras = BASE64.encode([0x08, 0x07, 0x10, 0x02, 0x18, 0x01, 0x2a, 0x01, 0xff]);
        assert_eq!(
            Position::decode(&with_extras),
            Some(Position {
                ledger: 7,
                entry: 2
            })
        );
        assert_eq!(Position::decode("not base64!"), None);
        assert_eq!(Position::decode(&BASE64.encode([0x08])), None);
    }
}
