//! Domain types: what applications write and read — [`ExpectedVersion`], [`EventData`],
//! [`RecordedEvent`], [`ResolvedEvent`], [`Position`], [`StreamSlice`], [`AllSlice`],
//! [`WriteResult`], [`ReadDirection`].

// Conversions from the wire are used by the client only.
#![cfg_attr(not(feature = "client"), allow(dead_code))]

use bytes::Bytes;
use uuid::Uuid;

use crate::guid;
use crate::wire;

/// The optimistic-concurrency check of a write or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist (or be empty).
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last event number must be this.
    Exact(u64),
}

impl ExpectedVersion {
    /// The wire value.
    pub const fn wire(self) -> i64 {
        match self {
            Self::Any => -2,
            Self::NoStream => -1,
            Self::StreamExists => -4,
            Self::Exact(n) => n as i64,
        }
    }
}

/// An event to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    /// Its id (idempotency key); sent in .NET GUID order so the server shows the same id.
    pub id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The body.
    pub data: Bytes,
    /// Metadata.
    pub metadata: Bytes,
    /// Whether `data` is JSON.
    pub is_json: bool,
}

impl EventData {
    /// A JSON event with a fresh id.
    pub fn json(event_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            id: Uuid::new_v4(),
            event_type: event_type.into(),
            data: data.into(),
            metadata: Bytes::new(),
            is_json: true,
        }
    }

    /// A binary event with a fresh id.
    pub fn binary(event_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            is_json: false,
            ..Self::json(event_type, data)
        }
    }

    /// The same event with this id.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// The same event with metadata.
    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = metadata.into();
        self
    }

    pub(crate) fn to_wire(&self) -> wire::NewEvent {
        wire::NewEvent {
            event_id: Bytes::copy_from_slice(&guid::to_dotnet_bytes(self.id)),
            event_type: self.event_type.clone(),
            data_content_type: i32::from(self.is_json),
            metadata_content_type: 0,
            data: self.data.clone(),
            metadata: Some(self.metadata.clone()),
        }
    }
}

/// A position in `$all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Commit position.
    pub commit: i64,
    /// Prepare position.
    pub prepare: i64,
}

impl Position {
    /// The beginning of `$all`.
    pub const START: Self = Self {
        commit: 0,
        prepare: 0,
    };
    /// The end of `$all`.
    pub const END: Self = Self {
        commit: -1,
        prepare: -1,
    };
}

/// `commit/prepare`, the form checkpoint stores keep.
impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.commit, self.prepare)
    }
}

/// A [`Position`] that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a $all position (commit/prepare): {0:?}")]
pub struct ParsePositionError(String);

impl std::str::FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_owned());
        let (commit, prepare) = s.split_once('/').ok_or_else(err)?;
        Ok(Self {
            commit: commit.trim().parse().map_err(|_| err())?,
            prepare: prepare.trim().parse().map_err(|_| err())?,
        })
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedEvent {
    /// Its stream.
    pub stream_id: String,
    /// Its number in the stream.
    pub event_number: u64,
    /// Its id (read from .NET GUID order).
    pub id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The body.
    pub data: Bytes,
    /// Metadata.
    pub metadata: Bytes,
    /// Whether the body is JSON.
    pub is_json: bool,
    /// When it was written, in Unix milliseconds, if the server said.
    pub created_epoch_ms: Option<i64>,
    /// The raw 16 id bytes as the server sent them (persistent-subscription acks echo them).
    pub id_bytes: [u8; 16],
}

impl RecordedEvent {
    pub(crate) fn from_wire(r: wire::EventRecord) -> Self {
        let mut id_bytes = [0u8; 16];
        if r.event_id.len() == 16 {
            id_bytes.copy_from_slice(&r.event_id);
        }
        Self {
            stream_id: r.event_stream_id,
            event_number: u64::try_from(r.event_number).unwrap_or(0),
            id: guid::from_dotnet_bytes(id_bytes),
            event_type: r.event_type,
            data: r.data,
            metadata: r.metadata.unwrap_or_default(),
            is_json: r.data_content_type == 1,
            created_epoch_ms: r.created_epoch,
            id_bytes,
        }
    }
}

/// An event with the link that pointed at it, if it was reached through one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolvedEvent {
    /// The event (absent when a link points at a deleted event).
    pub event: Option<RecordedEvent>,
    /// The `$>` link record, when resolved through one (boxed: most events have none, and
    /// pages of thousands stay small).
    pub link: Option<Box<RecordedEvent>>,
    /// Its `$all` position, when read from `$all` or a subscription.
    pub position: Option<Position>,
}

impl ResolvedEvent {
    /// The record that was read: the link if there is one, else the event.
    pub fn original(&self) -> Option<&RecordedEvent> {
        self.link.as_deref().or(self.event.as_ref())
    }

    /// The original record's event number.
    pub fn original_event_number(&self) -> Option<u64> {
        self.original().map(|e| e.event_number)
    }

    pub(crate) fn from_indexed(e: wire::ResolvedIndexedEvent) -> Self {
        Self {
            event: e.event.map(RecordedEvent::from_wire),
            link: e.link.map(|l| Box::new(RecordedEvent::from_wire(l))),
            position: None,
        }
    }

    pub(crate) fn from_all(e: wire::ResolvedEvent) -> Self {
        Self {
            event: e.event.map(RecordedEvent::from_wire),
            link: e.link.map(|l| Box::new(RecordedEvent::from_wire(l))),
            position: Some(Position {
                commit: e.commit_position,
                prepare: e.prepare_position,
            }),
        }
    }
}

/// What a read or subscription does with link events (`$>`, e.g. in category and event-type
/// streams): hand over the event they point to, or the link itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Links {
    /// Resolve each link to the event it points to (the link rides along in
    /// [`ResolvedEvent::link`]).
    Resolve,
    /// Hand link events over as stored.
    #[default]
    AsStored,
}

impl Links {
    /// `resolve_link_tos` on the wire.
    pub(crate) fn resolve(self) -> bool {
        self == Self::Resolve
    }

    pub(crate) fn from_resolve(resolve: bool) -> Self {
        if resolve {
            Self::Resolve
        } else {
            Self::AsStored
        }
    }
}

/// Where a stream read starts: an event number, or the stream's last event (the wire's
/// `-1`). A `u64` converts: `read_stream("orders", 0, …)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPosition {
    /// The event with this number.
    Event(u64),
    /// The stream's last event: where a backward read or [`read_event`] of the newest starts.
    ///
    /// [`read_event`]: crate::Connection::read_event
    End,
}

impl StreamPosition {
    /// The first event.
    pub const START: Self = Self::Event(0);

    /// The number on the wire.
    pub(crate) fn wire(self) -> i64 {
        match self {
            Self::Event(n) => i64::try_from(n).unwrap_or(i64::MAX),
            Self::End => -1,
        }
    }
}

impl From<u64> for StreamPosition {
    fn from(number: u64) -> Self {
        Self::Event(number)
    }
}

/// How [`Connection::delete_stream`](crate::Connection::delete_stream) deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteMode {
    /// The stream's events are hidden (`$tb` in its metadata); it can be written again and
    /// its numbers continue.
    Soft,
    /// A tombstone: the stream is gone for good, and writing to it fails with
    /// `StreamDeleted`.
    Hard,
}

/// Which way to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadDirection {
    /// Oldest first.
    Forward,
    /// Newest first.
    Backward,
}

/// The outcome of a successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteResult {
    /// The stream's last event number after the write (the next expected version).
    pub next_expected_version: i64,
    /// The `$all` position of the write, if the server said.
    pub position: Option<Position>,
}

impl WriteResult {
    /// From a completed write or commit: the last event number and the positions.
    pub(crate) fn from_wire(last: i64, commit: Option<i64>, prepare: Option<i64>) -> Self {
        Self {
            next_expected_version: last,
            position: commit.map(|commit| Position {
                commit,
                prepare: prepare.unwrap_or(commit),
            }),
        }
    }
}

/// A page of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSlice {
    /// The events, in the read direction.
    pub events: Vec<ResolvedEvent>,
    /// Where the next page starts.
    pub next_event_number: i64,
    /// The stream's last event number.
    pub last_event_number: i64,
    /// Whether this page reached the end (forward) or the start (backward).
    pub is_end_of_stream: bool,
}

impl StreamSlice {
    /// Where the next page in the same direction starts: `next_event_number` as a
    /// [`StreamPosition`], `None` when a backward read passed the first event (the wire's
    /// `-1`).
    pub fn next_position(&self) -> Option<StreamPosition> {
        u64::try_from(self.next_event_number)
            .ok()
            .map(StreamPosition::Event)
    }
}

/// A page of `$all`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllSlice {
    /// The events, in the read direction.
    pub events: Vec<ResolvedEvent>,
    /// Where the next page starts.
    pub next_position: Position,
    /// Whether the page came back short of the requested count (nothing more to read now).
    pub is_end: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_print_and_parse_back() {
        let p = Position {
            commit: 1024,
            prepare: 896,
        };
        assert_eq!(p.to_string(), "1024/896");
        assert_eq!("1024/896".parse::<Position>(), Ok(p));
        assert_eq!("-1/-1".parse::<Position>(), Ok(Position::END));
        assert!("1024".parse::<Position>().is_err());
        assert!("a/b".parse::<Position>().is_err());
    }

    #[test]
    fn expected_versions_have_the_servers_values() {
        assert_eq!(ExpectedVersion::Any.wire(), -2);
        assert_eq!(ExpectedVersion::NoStream.wire(), -1);
        assert_eq!(ExpectedVersion::StreamExists.wire(), -4);
        assert_eq!(ExpectedVersion::Exact(7).wire(), 7);
    }

    #[test]
    fn event_ids_travel_in_dotnet_order_and_come_back_the_same() {
        let e = EventData::json("t", "{}");
        let w = e.to_wire();
        assert_eq!(w.event_id[..], guid::to_dotnet_bytes(e.id));
        let back = RecordedEvent::from_wire(wire::EventRecord {
            event_stream_id: "s".into(),
            event_number: 3,
            event_id: w.event_id.clone(),
            event_type: w.event_type,
            data_content_type: w.data_content_type,
            metadata_content_type: 0,
            data: w.data,
            metadata: None,
            created: None,
            created_epoch: Some(5),
        });
        assert_eq!(back.id, e.id);
        assert!(back.is_json);
        assert_eq!(back.event_number, 3);
    }
}
