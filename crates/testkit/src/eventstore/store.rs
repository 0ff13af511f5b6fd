//! The emulated database: one log (`$all`) and the streams indexed into it, with the
//! servers' expected-version, read and delete rules. Synchronous and IO-free.

use std::collections::HashMap;

use super::wire::{
    DeleteStreamCompleted, EventRecord, NewEvent, OperationResult, ReadAllEventsCompleted,
    ReadEventCompleted, ReadStreamEventsCompleted, ResolvedEvent, ResolvedIndexedEvent,
    WriteEventsCompleted, read_all_events_completed::ReadAllResult,
    read_event_completed::ReadEventResult, read_stream_events_completed::ReadStreamResult,
};

/// `ExpectedVersion` wire values.
const ANY: i64 = -2;
const NO_STREAM: i64 = -1;
const STREAM_EXISTS: i64 = -4;
/// `EventNumber.DeletedStream`.
const DELETED_STREAM: i64 = i64::MAX;
/// `EventNumber.Invalid` as the servers send it on failed writes.
const INVALID: i64 = i32::MIN as i64;
/// The servers' page limit.
pub(crate) const MAX_READ: i32 = 4096;
/// Bytes of log per record: positions grow by this much (real positions are byte offsets).
const RECORD_SPAN: i64 = 128;

#[derive(Debug, Clone)]
pub(crate) struct Record {
    stream: String,
    number: i64,
    event: NewEvent,
    created_epoch: i64,
}

#[derive(Debug, Default)]
struct Stream {
    /// Log indices of the stream's events, in event-number order.
    events: Vec<usize>,
    /// Event numbers below this were soft-deleted (`$tb`).
    truncated_before: i64,
    hard_deleted: bool,
}

impl Stream {
    fn last_number(&self, log: &[Record]) -> i64 {
        self.events.last().map_or(-1, |i| log[*i].number)
    }
}

/// The database.
#[derive(Debug, Default)]
pub(crate) struct Store {
    log: Vec<Record>,
    streams: HashMap<String, Stream>,
}

fn position(index: usize) -> i64 {
    index as i64 * RECORD_SPAN
}

impl Store {
    fn record(&self, index: usize) -> EventRecord {
        let r = &self.log[index];
        EventRecord {
            event_stream_id: r.stream.clone(),
            event_number: r.number,
            event_id: r.event.event_id.clone(),
            event_type: r.event.event_type.clone(),
            data_content_type: r.event.data_content_type,
            metadata_content_type: r.event.metadata_content_type,
            data: r.event.data.clone(),
            metadata: Some(r.event.metadata.clone().unwrap_or_default()),
            created: Some(r.created_epoch * 10_000 + 621_355_968_000_000_000),
            created_epoch: Some(r.created_epoch),
        }
    }

    /// Every record, for inspection.
    pub(crate) fn stream_events(&self, stream: &str) -> Vec<(i64, String, Vec<u8>)> {
        self.streams.get(stream).map_or_else(Vec::new, |s| {
            s.events
                .iter()
                .map(|i| {
                    let r = &self.log[*i];
                    (r.number, r.event.event_type.clone(), r.event.data.clone())
                })
                .collect()
        })
    }

    pub(crate) fn all_len(&self) -> usize {
        self.log.len()
    }

    /// Position and record of every `$all` entry from `from` (log index) on.
    pub(crate) fn resolved_from(&self, from: usize) -> Vec<(usize, ResolvedEvent)> {
        (from..self.log.len())
            .map(|i| (i, self.resolved(i)))
            .collect()
    }

    fn resolved(&self, index: usize) -> ResolvedEvent {
        ResolvedEvent {
            event: Some(self.record(index)),
            link: None,
            commit_position: position(index),
            prepare_position: position(index),
        }
    }

    /// Records of `stream` from event number `from` on (for subscriptions).
    pub(crate) fn stream_indices(&self, stream: &str) -> Vec<usize> {
        self.streams
            .get(stream)
            .map_or_else(Vec::new, |s| s.events.clone())
    }

    pub(crate) fn write(
        &mut self,
        stream: &str,
        expected: i64,
        events: Vec<NewEvent>,
        now_ms: i64,
    ) -> (WriteEventsCompleted, Vec<usize>) {
        let state = self.streams.entry(stream.to_owned()).or_default();
        let fail = |result: OperationResult, current: i64, message: &str| WriteEventsCompleted {
            result: result as i32,
            message: Some(message.to_owned()),
            first_event_number: INVALID,
            last_event_number: INVALID,
            prepare_position: None,
            commit_position: None,
            current_version: Some(current),
        };
        if state.hard_deleted {
            return (
                fail(
                    OperationResult::StreamDeleted,
                    DELETED_STREAM,
                    "Stream deleted",
                ),
                Vec::new(),
            );
        }
        let current = state.last_number(&self.log);
        let exists = state.events.len() as i64 > 0 && current >= state.truncated_before;
        let ok = match expected {
            ANY => true,
            NO_STREAM => !exists,
            STREAM_EXISTS => exists,
            n if n >= 0 => current == n,
            _ => false,
        };
        if !ok {
            return (
                fail(
                    OperationResult::WrongExpectedVersion,
                    current,
                    "Wrong expected version.",
                ),
                Vec::new(),
            );
        }
        let first = current + 1;
        let mut written = Vec::with_capacity(events.len());
        for (k, event) in events.into_iter().enumerate() {
            let index = self.log.len();
            self.log.push(Record {
                stream: stream.to_owned(),
                number: first + k as i64,
                event,
                created_epoch: now_ms,
            });
            written.push(index);
        }
        let state = self.streams.get_mut(stream).expect("created above");
        state.events.extend(&written);
        let last = first + written.len() as i64 - 1;
        let pos = written
            .last()
            .map_or_else(|| position(self.log.len()), |i| position(*i));
        (
            WriteEventsCompleted {
                result: OperationResult::Success as i32,
                message: None,
                first_event_number: first,
                last_event_number: last,
                prepare_position: Some(pos),
                commit_position: Some(pos),
                current_version: Some(last),
            },
            written,
        )
    }

    pub(crate) fn delete(
        &mut self,
        stream: &str,
        expected: i64,
        hard: bool,
    ) -> DeleteStreamCompleted {
        let state = self.streams.entry(stream.to_owned()).or_default();
        let done = |result: OperationResult, message: Option<&str>| DeleteStreamCompleted {
            result: result as i32,
            message: message.map(str::to_owned),
            prepare_position: None,
            commit_position: None,
            current_version: None,
        };
        if state.hard_deleted {
            return done(OperationResult::StreamDeleted, Some("Stream deleted"));
        }
        let current = state.last_number(&self.log);
        let exists = !state.events.is_empty() && current >= state.truncated_before;
        let ok = match expected {
            ANY => true,
            NO_STREAM => !exists,
            STREAM_EXISTS => exists,
            n if n >= 0 => current == n,
            _ => false,
        };
        if !ok {
            return done(
                OperationResult::WrongExpectedVersion,
                Some("Wrong expected version."),
            );
        }
        if hard {
            state.hard_deleted = true;
        } else {
            state.truncated_before = current + 1;
        }
        done(OperationResult::Success, None)
    }

    fn visible<'a>(&'a self, state: &'a Stream) -> impl Iterator<Item = usize> + 'a {
        state
            .events
            .iter()
            .copied()
            .filter(move |i| self.log[*i].number >= state.truncated_before)
    }

    pub(crate) fn read_event(&self, stream: &str, number: i64) -> ReadEventCompleted {
        let empty = |result: ReadEventResult| ReadEventCompleted {
            result: result as i32,
            event: Some(ResolvedIndexedEvent::default()),
            error: None,
        };
        let Some(state) = self.streams.get(stream) else {
            return empty(ReadEventResult::NoStream);
        };
        if state.hard_deleted {
            return empty(ReadEventResult::StreamDeleted);
        }
        let visible: Vec<usize> = self.visible(state).collect();
        if visible.is_empty() {
            return empty(ReadEventResult::NoStream);
        }
        let found = if number == -1 {
            visible.last().copied()
        } else {
            visible
                .iter()
                .copied()
                .find(|i| self.log[*i].number == number)
        };
        match found {
            Some(i) => ReadEventCompleted {
                result: ReadEventResult::Success as i32,
                event: Some(ResolvedIndexedEvent {
                    event: Some(self.record(i)),
                    link: None,
                }),
                error: None,
            },
            None => empty(ReadEventResult::NotFound),
        }
    }

    pub(crate) fn read_stream(
        &self,
        stream: &str,
        from: i64,
        max_count: i32,
        forward: bool,
    ) -> ReadStreamEventsCompleted {
        let mut reply = ReadStreamEventsCompleted {
            events: Vec::new(),
            result: ReadStreamResult::Success as i32,
            next_event_number: if forward { from } else { -1 },
            last_event_number: -1,
            is_end_of_stream: true,
            last_commit_position: position(self.log.len()),
            error: None,
        };
        if !(1..=MAX_READ).contains(&max_count) {
            reply.result = ReadStreamResult::Error as i32;
            reply.error = Some(format!("Read size too big: {max_count} (max {MAX_READ})"));
            return reply;
        }
        let Some(state) = self.streams.get(stream) else {
            reply.result = ReadStreamResult::NoStream as i32;
            return reply;
        };
        if state.hard_deleted {
            reply.result = ReadStreamResult::StreamDeleted as i32;
            reply.last_event_number = DELETED_STREAM;
            return reply;
        }
        let visible: Vec<usize> = self.visible(state).collect();
        if visible.is_empty() {
            reply.result = ReadStreamResult::NoStream as i32;
            return reply;
        }
        let last = self.log[*visible.last().expect("non-empty")].number;
        reply.last_event_number = last;
        let count = max_count as usize;
        let picked: Vec<usize> = if forward {
            visible
                .iter()
                .copied()
                .filter(|i| self.log[*i].number >= from)
                .take(count)
                .collect()
        } else {
            let from = if from < 0 { last } else { from };
            visible
                .iter()
                .rev()
                .copied()
                .filter(|i| self.log[*i].number <= from)
                .take(count)
                .collect()
        };
        if forward {
            let next = picked
                .last()
                .map_or_else(|| from.max(0), |i| self.log[*i].number + 1);
            reply.next_event_number = next;
            reply.is_end_of_stream = next > last;
        } else {
            let next = picked.last().map_or(-1, |i| self.log[*i].number - 1);
            reply.next_event_number = next;
            reply.is_end_of_stream = next < state.truncated_before.max(0)
                || picked.last().is_none_or(|i| self.log[*i].number == 0);
        }
        reply.events = picked
            .into_iter()
            .map(|i| ResolvedIndexedEvent {
                event: Some(self.record(i)),
                link: None,
            })
            .collect();
        reply
    }

    pub(crate) fn read_all(
        &self,
        commit: i64,
        max_count: i32,
        forward: bool,
    ) -> ReadAllEventsCompleted {
        let mut reply = ReadAllEventsCompleted {
            commit_position: commit,
            prepare_position: commit,
            events: Vec::new(),
            next_commit_position: commit,
            next_prepare_position: commit,
            result: Some(ReadAllResult::Success as i32),
            error: None,
        };
        if !(1..=MAX_READ).contains(&max_count) {
            reply.result = Some(ReadAllResult::Error as i32);
            reply.error = Some(format!("Read size too big: {max_count} (max {MAX_READ})"));
            return reply;
        }
        let count = max_count as usize;
        let len = self.log.len();
        let indices: Vec<usize> = if forward {
            let start = if commit < 0 {
                len
            } else {
                ((commit + RECORD_SPAN - 1) / RECORD_SPAN) as usize
            };
            (start.min(len)..len).take(count).collect()
        } else {
            // Backward from a position: the records before it (`End` = everything).
            let end = if commit < 0 {
                len
            } else {
                ((commit / RECORD_SPAN) as usize).min(len)
            };
            (0..end).rev().take(count).collect()
        };
        let next = if forward {
            indices
                .last()
                .map_or_else(|| commit.max(0).min(position(len)), |i| position(i + 1))
        } else {
            indices.last().map_or(0, |i| position(*i))
        };
        reply.next_commit_position = next;
        reply.next_prepare_position = next;
        reply.events = indices.into_iter().map(|i| self.resolved(i)).collect();
        reply
    }
}

#[cfg(test)]
mod tests;
