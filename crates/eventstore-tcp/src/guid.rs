//! .NET GUID byte order.
//!
//! The servers read event ids (and the ids in persistent-subscription acks) with
//! `new Guid(byte[16])`: the first three groups little-endian, the last eight bytes as they
//! are. A UUID's RFC 4122 bytes are all big-endian, so writing `Uuid::as_bytes` makes the
//! server, its HTTP API and its UI show a different id (what Extreme does). These helpers
//! convert; correlation ids are only echoed, so their order does not matter.

use uuid::Uuid;

/// The 16 bytes .NET writes for `id` (`Guid.ToByteArray`).
pub fn to_dotnet_bytes(id: Uuid) -> [u8; 16] {
    swap(*id.as_bytes())
}

/// The UUID whose .NET bytes are `bytes`.
pub fn from_dotnet_bytes(bytes: [u8; 16]) -> Uuid {
    Uuid::from_bytes(swap(bytes))
}

/// Reverse the first three groups (an involution).
fn swap(mut b: [u8; 16]) -> [u8; 16] {
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_dotnet_to_byte_array() {
        // new Guid("00112233-4455-6677-8899-aabbccddeeff").ToByteArray()
        let id = Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(
            to_dotnet_bytes(id),
            [
                0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]
        );
        assert_eq!(from_dotnet_bytes(to_dotnet_bytes(id)), id);
    }
}
