//! Operations on a [`Connection`]: append, read one event, read a stream or `$all` in
//! either direction, delete.

use prost::Message;

use crate::command::Command;
use crate::connection::Connection;
use crate::error::Error;
use crate::frame::Frame;
use crate::types::{
    AllSlice, DeleteMode, EventData, ExpectedVersion, Links, Position, ReadDirection,
    ResolvedEvent, StreamPosition, StreamSlice, WriteResult,
};
use crate::wire::{self, OperationResult};

/// The servers' page limit.
pub const MAX_READ_COUNT: u32 = 4096;

/// What reading one event found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventRead {
    /// The event.
    Found(Box<ResolvedEvent>),
    /// The stream has no such event.
    NotFound,
    /// There is no such stream.
    NoStream,
    /// The stream was hard-deleted.
    Deleted,
}

pub(crate) fn decode<M: Message + Default>(frame: &Frame, expected: Command) -> Result<M, Error> {
    if frame.command != expected {
        return Err(Error::Decode(format!(
            "{:?} in answer to a request expecting {expected:?}",
            frame.command
        )));
    }
    M::decode(frame.payload.clone()).map_err(Error::Protobuf)
}

pub(crate) fn operation_error(
    result: OperationResult,
    message: Option<String>,
    stream: &str,
    current: Option<i64>,
) -> Error {
    let message = message.unwrap_or_default();
    match result {
        OperationResult::WrongExpectedVersion => Error::WrongExpectedVersion { current },
        OperationResult::StreamDeleted => Error::StreamDeleted(stream.to_owned()),
        OperationResult::AccessDenied => Error::AccessDenied(message),
        other => Error::Server(format!("{other:?}: {message}")),
    }
}

fn check_count(count: u32) -> Result<i32, Error> {
    if count == 0 || count > MAX_READ_COUNT {
        return Err(Error::Config(format!(
            "read count {count}: must be 1 to {MAX_READ_COUNT} (the servers' page limit)"
        )));
    }
    Ok(count as i32)
}

impl Connection {
    /// Append events to a stream, checking its version.
    pub async fn append_to_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<WriteResult, Error> {
        let request = wire::WriteEvents {
            event_stream_id: stream.to_owned(),
            expected_version: expected.wire(),
            events: events.iter().map(EventData::to_wire).collect(),
            require_master: true,
        };
        let frame = self
            .request(Command::WriteEvents, request.encode_to_vec())
            .await?;
        let done: wire::WriteEventsCompleted = decode(&frame, Command::WriteEventsCompleted)?;
        match done.result() {
            OperationResult::Success => Ok(WriteResult::from_wire(
                done.last_event_number,
                done.commit_position,
                done.prepare_position,
            )),
            other => Err(operation_error(
                other,
                done.message,
                stream,
                done.current_version,
            )),
        }
    }

    /// Read one event (`StreamPosition::End`: the last one).
    pub async fn read_event(
        &self,
        stream: &str,
        event: impl Into<StreamPosition>,
        links: Links,
    ) -> Result<EventRead, Error> {
        let request = wire::ReadEvent {
            event_stream_id: stream.to_owned(),
            event_number: event.into().wire(),
            resolve_link_tos: links.resolve(),
            require_master: self.settings().reads_require_leader(),
        };
        let frame = self
            .request(Command::ReadEvent, request.encode_to_vec())
            .await?;
        let done: wire::ReadEventCompleted = decode(&frame, Command::ReadEventCompleted)?;
        use wire::read_event_completed::ReadEventResult as R;
        match done.result() {
            R::Success => Ok(EventRead::Found(Box::new(ResolvedEvent::from_indexed(
                done.event.unwrap_or_default(),
            )))),
            R::NotFound => Ok(EventRead::NotFound),
            R::NoStream => Ok(EventRead::NoStream),
            R::StreamDeleted => Ok(EventRead::Deleted),
            R::AccessDenied => Err(Error::AccessDenied(done.error.unwrap_or_default())),
            R::Error => Err(Error::Server(done.error.unwrap_or_default())),
        }
    }

    /// Read up to `count` (≤ 4096) events of a stream from `from` (backward from the newest:
    /// `StreamPosition::End`). A stream that does not exist reads as an empty slice at its
    /// end; a deleted one is [`Error::StreamDeleted`].
    pub async fn read_stream(
        &self,
        stream: &str,
        from: impl Into<StreamPosition>,
        count: u32,
        direction: ReadDirection,
        links: Links,
    ) -> Result<StreamSlice, Error> {
        let from = from.into().wire();
        let request = wire::ReadStreamEvents {
            event_stream_id: stream.to_owned(),
            from_event_number: from,
            max_count: check_count(count)?,
            resolve_link_tos: links.resolve(),
            require_master: self.settings().reads_require_leader(),
        };
        let (command, completed) = match direction {
            ReadDirection::Forward => (
                Command::ReadStreamEventsForward,
                Command::ReadStreamEventsForwardCompleted,
            ),
            ReadDirection::Backward => (
                Command::ReadStreamEventsBackward,
                Command::ReadStreamEventsBackwardCompleted,
            ),
        };
        let frame = self.request(command, request.encode_to_vec()).await?;
        let done: wire::ReadStreamEventsCompleted = decode(&frame, completed)?;
        use wire::read_stream_events_completed::ReadStreamResult as R;
        match done.result() {
            R::Success | R::NotModified => Ok(StreamSlice {
                events: done
                    .events
                    .into_iter()
                    .map(ResolvedEvent::from_indexed)
                    .collect(),
                next_event_number: done.next_event_number,
                last_event_number: done.last_event_number,
                is_end_of_stream: done.is_end_of_stream,
            }),
            R::NoStream => Ok(StreamSlice {
                events: Vec::new(),
                next_event_number: from,
                last_event_number: -1,
                is_end_of_stream: true,
            }),
            R::StreamDeleted => Err(Error::StreamDeleted(stream.to_owned())),
            R::AccessDenied => Err(Error::AccessDenied(done.error.unwrap_or_default())),
            R::Error => Err(Error::Server(done.error.unwrap_or_default())),
        }
    }

    /// Read up to `count` (≤ 4096) events of `$all` from `from`.
    pub async fn read_all(
        &self,
        from: Position,
        count: u32,
        direction: ReadDirection,
        links: Links,
    ) -> Result<AllSlice, Error> {
        let max_count = check_count(count)?;
        let request = wire::ReadAllEvents {
            commit_position: from.commit,
            prepare_position: from.prepare,
            max_count,
            resolve_link_tos: links.resolve(),
            require_master: self.settings().reads_require_leader(),
        };
        let (command, completed) = match direction {
            ReadDirection::Forward => (
                Command::ReadAllEventsForward,
                Command::ReadAllEventsForwardCompleted,
            ),
            ReadDirection::Backward => (
                Command::ReadAllEventsBackward,
                Command::ReadAllEventsBackwardCompleted,
            ),
        };
        let frame = self.request(command, request.encode_to_vec()).await?;
        let done: wire::ReadAllEventsCompleted = decode(&frame, completed)?;
        use wire::read_all_events_completed::ReadAllResult as R;
        match done.result() {
            R::Success | R::NotModified => {
                let is_end = done.events.len() < max_count as usize;
                Ok(AllSlice {
                    events: done
                        .events
                        .into_iter()
                        .map(ResolvedEvent::from_all)
                        .collect(),
                    next_position: Position {
                        commit: done.next_commit_position,
                        prepare: done.next_prepare_position,
                    },
                    is_end,
                })
            }
            R::AccessDenied => Err(Error::AccessDenied(done.error.unwrap_or_default())),
            R::Error => Err(Error::Server(done.error.unwrap_or_default())),
        }
    }

    /// Delete a stream: [`DeleteMode::Soft`] (it can be written again, numbers continue) or
    /// [`DeleteMode::Hard`] (a tombstone: gone for good).
    pub async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        mode: DeleteMode,
    ) -> Result<(), Error> {
        let request = wire::DeleteStream {
            event_stream_id: stream.to_owned(),
            expected_version: expected.wire(),
            require_master: true,
            hard_delete: Some(mode == DeleteMode::Hard),
        };
        let frame = self
            .request(Command::DeleteStream, request.encode_to_vec())
            .await?;
        let done: wire::DeleteStreamCompleted = decode(&frame, Command::DeleteStreamCompleted)?;
        match done.result() {
            OperationResult::Success => Ok(()),
            other => Err(operation_error(
                other,
                done.message,
                stream,
                done.current_version,
            )),
        }
    }
}
