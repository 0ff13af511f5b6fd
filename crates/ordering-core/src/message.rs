//! The message vocabulary every transport shares: [`Key`], [`Message`], [`Headers`], [`Timestamp`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// A sharding key: messages with equal keys are processed in order, one at a time.
///
/// Keys are opaque bytes (an AMQP `sharding_key` header, a Pulsar message key, an EventStore
/// stream id). Cloning is cheap (reference-counted).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Key(Bytes);

impl Key {
    /// A key from any byte source.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key's bytes as a cheap clone of the underlying buffer.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl From<&'static str> for Key {
    fn from(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<Vec<u8>> for Key {
    fn from(v: Vec<u8>) -> Self {
        Self(Bytes::from(v))
    }
}

impl From<Bytes> for Key {
    fn from(b: Bytes) -> Self {
        Self(b)
    }
}

impl From<u64> for Key {
    /// The decimal spelling of the number, so `Key::from(7)` equals `Key::from("7")`.
    fn from(n: u64) -> Self {
        Self(Bytes::from(n.to_string()))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(&self.0))
    }
}

/// A point in time with microsecond precision, as Unix microseconds (UTC).
///
/// A message's [`timestamp`](Message::timestamp) is when its event happened (the producer's
/// clock, or the broker's where the protocol has no event time), and the process-status
/// store keeps, per entity, the timestamp of the last event processed — EventStreamex's
/// meaning, which Mississippi's integer timestamps share. Both print as RFC 3339
/// (`2026-12-07T23:32:51.123456Z`); `{:?}` wraps that in `Timestamp(…)`.
///
/// ```
/// use headwaters_ordering_core::Timestamp;
/// let t = Timestamp::from_micros(1_765_150_371_123_456);
/// assert_eq!(t.to_string(), "2025-12-07T23:32:51.123456Z");
/// assert_eq!(format!("{t:?}"), "Timestamp(2025-12-07T23:32:51.123456Z)");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// From Unix microseconds.
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// From Unix milliseconds.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis.saturating_mul(1000))
    }

    /// Unix microseconds.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Unix milliseconds (rounded down).
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let micros = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |m| -m),
        };
        Self(micros)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        let abs = Duration::from_micros(t.0.unsigned_abs());
        if t.0 >= 0 {
            UNIX_EPOCH + abs
        } else {
            UNIX_EPOCH - abs
        }
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with six fraction digits; years outside 0–9999 keep their sign and
    /// digits (`-0001-…`, `+10000-…`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        match year {
            0..=9999 => write!(f, "{year:04}")?,
            _ => write!(f, "{year:+05}")?,
        }
        write!(
            f,
            "-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            of_day / 3600,
            of_day % 3600 / 60,
            of_day % 60
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One header value. The variants cover what AMQP tables, Pulsar properties and EventStore
/// metadata carry.
#[derive(Clone, PartialEq, Debug)]
#[non_exhaustive]
pub enum HeaderValue {
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// Raw bytes.
    Bytes(Bytes),
}

impl HeaderValue {
    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}

impl From<i64> for HeaderValue {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<bool> for HeaderValue {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

/// Message headers: names to values, iterated in name order.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Headers(BTreeMap<String, HeaderValue>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Self(BTreeMap::new())
    }

    /// Set a header, returning the previous value.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: impl Into<HeaderValue>,
    ) -> Option<HeaderValue> {
        self.0.insert(name.into(), value.into())
    }

    /// A header by name.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.0.get(name)
    }

    /// Remove a header.
    pub fn remove(&mut self, name: &str) -> Option<HeaderValue> {
        self.0.remove(name)
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// All headers in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl<K: Into<String>, V: Into<HeaderValue>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// A message as a handler sees it: payload, headers, id and timestamp (Mississippi's
/// `handle_message(payload, headers, message_id, timestamp, state)` arguments, bundled),
/// and how often the source delivered it before.
#[derive(Clone, PartialEq, Debug)]
#[non_exhaustive]
pub struct Message {
    /// The body, untouched.
    pub payload: Bytes,
    /// Application headers.
    pub headers: Headers,
    /// The message id; producers default it to a UUIDv4 so handlers can deduplicate
    /// redeliveries.
    pub message_id: String,
    /// When the message was produced.
    pub timestamp: Timestamp,
    /// How many times the source delivered it before (0: the first delivery), as far as the
    /// source knows: AMQP's `x-delivery-count` (quorum queues), else 1 for a delivery
    /// flagged `redelivered`; Pulsar's `redeliveryCount`; an EventStore persistent
    /// subscription's retry count. Not counted: deliveries the broker never knew about
    /// (a producer resend is a new message).
    pub redeliveries: u32,
}

impl Message {
    /// A first delivery with no headers.
    pub fn new(
        payload: impl Into<Bytes>,
        message_id: impl Into<String>,
        timestamp: Timestamp,
    ) -> Self {
        Self {
            payload: payload.into(),
            headers: Headers::new(),
            message_id: message_id.into(),
            timestamp,
            redeliveries: 0,
        }
    }

    /// The same message with headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// The same message, delivered `redeliveries` times before.
    pub fn with_redeliveries(mut self, redeliveries: u32) -> Self {
        self.redeliveries = redeliveries;
        self
    }

    /// Whether the source delivered it before: a handler that already processed it may be
    /// seeing it again (at-least-once).
    pub fn is_redelivery(&self) -> bool {
        self.redeliveries > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_system_time() {
        for micros in [0_i64, 1, 1_700_000_000_123_456, -5_000_001] {
            let t = Timestamp::from_micros(micros);
            assert_eq!(Timestamp::from(SystemTime::from(t)), t);
        }
        assert_eq!(Timestamp::from_millis(1500).as_micros(), 1_500_000);
        assert_eq!(Timestamp::from_micros(-1).as_millis(), -1);
    }

    #[test]
    fn timestamps_print_as_rfc_3339_in_utc() {
        for (micros, text) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
            (1_765_150_371_123_456, "2025-12-07T23:32:51.123456Z"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
            (253_402_300_800_000_000, "+10000-01-01T00:00:00.000000Z"),
            (-62_198_755_200_000_000, "-0001-01-01T00:00:00.000000Z"),
        ] {
            assert_eq!(Timestamp::from_micros(micros).to_string(), text);
        }
        // The extremes print without overflowing.
        assert!(Timestamp::from_micros(i64::MAX).to_string().ends_with('Z'));
        assert!(Timestamp::from_micros(i64::MIN).to_string().ends_with('Z'));
        assert_eq!(
            format!("{:?}", Timestamp::from_micros(0)),
            "Timestamp(1970-01-01T00:00:00.000000Z)"
        );
    }

    #[test]
    fn keys_from_numbers_equal_their_decimal_spelling() {
        assert_eq!(Key::from(42_u64), Key::from("42"));
        assert_eq!(Key::from("a").to_string(), "a");
        assert_eq!(format!("{:?}", Key::from("a")), "Key(\"a\")");
    }

    #[test]
    fn headers_keep_name_order() {
        let h: Headers = [("b", 1_i64), ("a", 2)].into_iter().collect();
        let names: Vec<_> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(h.get("a"), Some(&HeaderValue::Int(2)));
    }
}
