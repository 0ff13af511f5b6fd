//! The emulated database: one log (`$all`) and the streams indexed into it, with the
//! servers' expected-version, read and delete rules, stream metadata (`$$stream`: `$tb`,
//! `$maxCount`, `$maxAge` hide events from reads; a soft delete writes `$tb`) and link
//! events (`$>`, resolved on request). Synchronous and IO-free.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;

use super::wire::{
    DeleteStreamCompleted, EventRecord, NewEvent, OperationResult, ReadAllEventsCompleted,
    ReadEventCompleted, ReadStreamEventsCompleted, ResolvedEvent, ResolvedIndexedEvent,
    WriteEventsCompleted, read_all_events_completed::ReadAllResult,
    read_event_completed::ReadEventResult, read_stream_events_completed::ReadStreamResult,
};

/// `ExpectedVersion` wire values.
pub(crate) const ANY: i64 = -2;
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
/// Where the first event sits: the servers' log opens with an epoch record, so no event is
/// ever at 0/0 and "from the start" excludes nothing.
const LOG_START: i64 = RECORD_SPAN;

#[derive(Debug, Clone)]
pub(crate) struct Record {
    stream: String,
    number: i64,
    event: NewEvent,
    created_epoch: i64,
    /// The `EventRecord` encoding, made once at write time: reads copy it into replies.
    encoded: Vec<u8>,
}

/// The records a read picked (log indices), to be encoded into its reply.
#[derive(Debug, Default)]
pub(crate) struct Picked {
    indices: Vec<usize>,
    resolve: bool,
}

#[derive(Debug, Default)]
struct Stream {
    /// Log indices of the stream's events, in event-number order.
    events: Vec<usize>,
    hard_deleted: bool,
}

/// What a stream's metadata (the last `$metadata` event of `$$stream`) says about reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Limits {
    /// `$tb`: events numbered below are gone (a soft delete sets it past the last event).
    truncate_before: i64,
    /// `$maxCount`: only the newest so many are readable.
    max_count: Option<usize>,
    /// `$maxAge` in seconds.
    max_age_s: Option<i64>,
}

/// The metadata stream of `stream`.
pub(crate) fn metadata_stream(stream: &str) -> String {
    format!("$${stream}")
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

/// The `$all` position of the record at log index `index`.
fn position(index: usize) -> i64 {
    LOG_START + index as i64 * RECORD_SPAN
}

/// The log index of the first record at or after `position` (also: how many records lie
/// before it).
fn index_at_or_after(position: i64) -> usize {
    if position <= LOG_START {
        0
    } else {
        ((position - LOG_START + RECORD_SPAN - 1) / RECORD_SPAN) as usize
    }
}

impl Store {
    /// The limits `$$stream` sets on `stream`.
    fn limits(&self, stream: &str) -> Limits {
        let meta = self.metadata(stream);
        let int = |key: &str| meta.get(key).and_then(serde_json::Value::as_i64);
        Limits {
            truncate_before: int("$tb").unwrap_or(0),
            max_count: int("$maxCount").map(|n| n.max(0) as usize),
            max_age_s: int("$maxAge"),
        }
    }

    /// The current metadata document of `stream` (an empty object when it has none).
    pub(crate) fn metadata(&self, stream: &str) -> serde_json::Map<String, serde_json::Value> {
        self.last_document(&metadata_stream(stream))
    }

    /// The system settings (`$settings`: `$userStreamAcl`, `$systemStreamAcl`).
    pub(crate) fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        self.last_document("$settings")
    }

    /// The JSON object in the last event of `stream` (an empty object when there is none).
    fn last_document(&self, stream: &str) -> serde_json::Map<String, serde_json::Value> {
        self.streams
            .get(stream)
            .and_then(|s| s.events.last())
            .and_then(|i| serde_json::from_slice(&self.log[*i].event.data).ok())
            .unwrap_or_default()
    }

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
                    (r.number, r.event.event_type.clone(), r.event.data.to_vec())
                })
                .collect()
        })
    }

    pub(crate) fn all_len(&self) -> usize {
        self.log.len()
    }

    /// The stream of the record at log index `index`.
    pub(crate) fn stream_of(&self, index: usize) -> &str {
        &self.log[index].stream
    }

    /// The `$all` position after the last record (a subscription's starting point).
    pub(crate) fn end_position(&self) -> i64 {
        position(self.log.len())
    }

    /// The `$all` entry at log index `index`, resolved when `resolve`.
    pub(crate) fn resolved(&self, index: usize, resolve: bool) -> ResolvedEvent {
        let indexed = self.indexed(index, resolve);
        ResolvedEvent {
            event: indexed.event,
            link: indexed.link,
            commit_position: position(index),
            prepare_position: position(index),
        }
    }

    /// The record at `index`; a link (`$>`, data `"n@stream"`) is resolved to its target
    /// when `resolve` (`event` = target, `link` = the link; a dangling link comes back as
    /// `link` alone, as the servers send it).
    pub(crate) fn indexed(&self, index: usize, resolve: bool) -> ResolvedIndexedEvent {
        let record = self.record(index);
        if !resolve || record.event_type != "$>" {
            return ResolvedIndexedEvent {
                event: Some(record),
                link: None,
            };
        }
        let target = std::str::from_utf8(&record.data)
            .ok()
            .and_then(|d| d.split_once('@'))
            .and_then(|(n, stream)| Some((n.parse::<i64>().ok()?, stream)))
            .and_then(|(n, stream)| self.index_of(stream, n));
        ResolvedIndexedEvent {
            event: target.map(|i| self.record(i)),
            link: Some(record),
        }
    }

    /// The log index of event `number` of `stream`, if readable.
    pub(crate) fn index_of(&self, stream: &str, number: i64) -> Option<usize> {
        self.next_index(stream, number)
            .filter(|i| self.log[*i].number == number)
    }

    /// The first readable event of `stream` numbered `from` or more, with its id.
    pub(crate) fn next_event(&self, stream: &str, from: i64) -> Option<(i64, Bytes)> {
        let r = &self.log[self.next_index(stream, from)?];
        Some((r.number, r.event.event_id.clone()))
    }

    /// The log index of the first readable event of `stream` numbered `from` or more.
    fn next_index(&self, stream: &str, from: i64) -> Option<usize> {
        let state = self.streams.get(stream).filter(|s| !s.hard_deleted)?;
        self.visible(stream, state, from).next()
    }

    /// The next event number of `stream` (0 when it has none).
    pub(crate) fn stream_next(&self, stream: &str) -> i64 {
        self.streams
            .get(stream)
            .map_or(0, |s| s.last_number(&self.log) + 1)
    }

    pub(crate) fn write(
        &mut self,
        stream: &str,
        expected: i64,
        events: Vec<NewEvent>,
        now_ms: i64,
    ) -> (WriteEventsCompleted, Vec<usize>) {
        let state = self.streams.entry(stream.to_owned()).or_default();
        let hard_deleted = state.hard_deleted;
        let fail = write_failed;
        if hard_deleted {
            return (
                fail(
                    OperationResult::StreamDeleted,
                    DELETED_STREAM,
                    "Stream deleted",
                ),
                Vec::new(),
            );
        }
        let (current, ok) = self.check_version(stream, expected);
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
                encoded: Vec::new(),
            });
            self.log[index].encoded = self.record(index).encode_to_vec();
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

    /// The stream's last event number and whether `expected` holds for it (a stream
    /// truncated past its last event, as a soft delete leaves it, does not exist).
    fn check_version(&self, stream: &str, expected: i64) -> (i64, bool) {
        let current = self
            .streams
            .get(stream)
            .map_or(-1, |s| s.last_number(&self.log));
        let exists = current >= 0 && current >= self.limits(stream).truncate_before;
        let ok = match expected {
            ANY => true,
            NO_STREAM => !exists,
            STREAM_EXISTS => exists,
            n if n >= 0 => current == n,
            _ => false,
        };
        (current, ok)
    }

    /// Delete a stream: hard (a tombstone; the stream can never be written again) or soft
    /// (`$tb` past the last event in its metadata; writing recreates it). Returns the reply
    /// and the log indices written (a soft delete's metadata event).
    pub(crate) fn delete(
        &mut self,
        stream: &str,
        expected: i64,
        hard: bool,
        now_ms: i64,
    ) -> (DeleteStreamCompleted, Vec<usize>) {
        let done = |result: OperationResult, message: Option<&str>| DeleteStreamCompleted {
            result: result as i32,
            message: message.map(str::to_owned),
            prepare_position: None,
            commit_position: None,
            current_version: None,
        };
        let state = self.streams.entry(stream.to_owned()).or_default();
        if state.hard_deleted {
            return (
                done(OperationResult::StreamDeleted, Some("Stream deleted")),
                Vec::new(),
            );
        }
        let (current, ok) = self.check_version(stream, expected);
        if !ok {
            return (
                done(
                    OperationResult::WrongExpectedVersion,
                    Some("Wrong expected version."),
                ),
                Vec::new(),
            );
        }
        if hard {
            // The metadata stream goes with the stream: reading `$$stream` answers
            // StreamDeleted from now on, as the servers do.
            for name in [stream.to_owned(), metadata_stream(stream)] {
                self.streams.entry(name).or_default().hard_deleted = true;
            }
            return (done(OperationResult::Success, None), Vec::new());
        }
        let mut meta = self.metadata(stream);
        meta.insert("$tb".into(), (current + 1).into());
        let (_, written) = self.write(
            &metadata_stream(stream),
            ANY,
            vec![metadata_event(&meta, self.log.len())],
            now_ms,
        );
        (done(OperationResult::Success, None), written)
    }

    /// The readable events of `stream` numbered `from` or more, in order: at or past `$tb`,
    /// younger than `$maxAge`, among the newest `$maxCount`. Events are kept in number
    /// order, so the start is found by bisection.
    fn visible<'a>(
        &'a self,
        stream: &str,
        state: &'a Stream,
        from: i64,
    ) -> impl DoubleEndedIterator<Item = usize> + 'a {
        let limits = self.limits(stream);
        let oldest_ms = limits
            .max_age_s
            .map_or(i64::MIN, |age| now_ms() - age.saturating_mul(1000));
        let newest = limits
            .max_count
            .map_or(0, |max| state.events.len().saturating_sub(max));
        let first = from.max(limits.truncate_before);
        let start = state
            .events
            .partition_point(|i| self.log[*i].number < first)
            .max(newest);
        state.events[start..]
            .iter()
            .copied()
            .filter(move |i| self.log[*i].created_epoch >= oldest_ms)
    }

    pub(crate) fn read_event(
        &self,
        stream: &str,
        number: i64,
        resolve: bool,
    ) -> ReadEventCompleted {
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
        let Some(last) = self.visible(stream, state, 0).next_back() else {
            return empty(ReadEventResult::NoStream);
        };
        let found = if number == -1 {
            Some(last)
        } else {
            self.index_of(stream, number)
        };
        match found {
            Some(i) => ReadEventCompleted {
                result: ReadEventResult::Success as i32,
                event: Some(self.indexed(i, resolve)),
                error: None,
            },
            None => empty(ReadEventResult::NotFound),
        }
    }

    /// A page of a stream: the reply without its events, and the events picked (see
    /// [`Store::encode_stream_page`]).
    pub(crate) fn stream_page(
        &self,
        stream: &str,
        from: i64,
        max_count: i32,
        forward: bool,
        resolve: bool,
    ) -> (ReadStreamEventsCompleted, Picked) {
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
            return (reply, Picked::default());
        }
        let Some(state) = self.streams.get(stream) else {
            reply.result = ReadStreamResult::NoStream as i32;
            return (reply, Picked::default());
        };
        if state.hard_deleted {
            reply.result = ReadStreamResult::StreamDeleted as i32;
            reply.last_event_number = DELETED_STREAM;
            return (reply, Picked::default());
        }
        let (Some(first), Some(last)) = (
            self.visible(stream, state, 0).next(),
            self.visible(stream, state, 0).next_back(),
        ) else {
            reply.result = ReadStreamResult::NoStream as i32;
            return (reply, Picked::default());
        };
        let (first, last) = (self.log[first].number, self.log[last].number);
        reply.last_event_number = last;
        let count = max_count as usize;
        let picked: Vec<usize> = if forward {
            let picked: Vec<usize> = self.visible(stream, state, from).take(count).collect();
            let next = picked
                .last()
                .map_or_else(|| from.max(0), |i| self.log[*i].number + 1);
            reply.next_event_number = next;
            reply.is_end_of_stream = next > last;
            picked
        } else {
            // The servers read the range [end - count + 1, end] (`End` = the last event):
            // from past the end that is an empty page whose next number is the last event.
            let end = if from < 0 { last } else { from };
            let start = end.saturating_sub(max_count as i64 - 1).max(0);
            reply.is_end_of_stream = start <= first;
            reply.next_event_number = if reply.is_end_of_stream {
                -1
            } else {
                (start - 1).min(last)
            };
            self.visible(stream, state, start)
                .take_while(|i| self.log[*i].number <= end)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect()
        };
        (
            reply,
            Picked {
                indices: picked,
                resolve,
            },
        )
    }

    /// The encoded `ReadStreamEventsCompleted`: `reply` and then the picked events (field 1).
    pub(crate) fn encode_stream_page(
        &self,
        reply: &ReadStreamEventsCompleted,
        picked: &Picked,
    ) -> Vec<u8> {
        let mut out = reply.encode_to_vec();
        self.put_events(&mut out, 1, picked, false);
        out
    }

    /// Append the picked events as repeated field `field`: `ResolvedIndexedEvent`s, or
    /// with `positions` `ResolvedEvent`s (the same first two fields, then the commit and
    /// prepare positions). An unresolved record is its pre-encoded bytes.
    fn put_events(&self, out: &mut Vec<u8>, field: u8, picked: &Picked, positions: bool) {
        let mut inner = Vec::new();
        for i in &picked.indices {
            let record = &self.log[*i];
            inner.clear();
            if picked.resolve && record.event.event_type == "$>" {
                inner.extend_from_slice(&self.indexed(*i, true).encode_to_vec());
            } else {
                put_len(&mut inner, 1, &record.encoded);
            }
            if positions {
                let p = position(*i) as u64;
                inner.push(3 << 3);
                prost::encoding::encode_varint(p, &mut inner);
                inner.push(4 << 3);
                prost::encoding::encode_varint(p, &mut inner);
            }
            put_len(out, field, &inner);
        }
    }

    /// A page of `$all`: the reply without its events, and the events picked (see
    /// [`Store::encode_all_page`]).
    pub(crate) fn all_page(
        &self,
        commit: i64,
        max_count: i32,
        forward: bool,
        resolve: bool,
    ) -> (ReadAllEventsCompleted, Picked) {
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
            return (reply, Picked::default());
        }
        let count = max_count as usize;
        let len = self.log.len();
        // `End` (-1/-1) is resolved to the end of the log before reading, and the reply
        // names the resolved position, as the servers do.
        let end = self.end_position();
        let from = if commit < 0 { end } else { commit };
        reply.commit_position = from;
        reply.prepare_position = from;
        // Forward: the records at or after `from`; backward: those before it.
        let split = index_at_or_after(from).min(len);
        let indices: Vec<usize> = if forward {
            (split..len).take(count).collect()
        } else {
            (0..split).rev().take(count).collect()
        };
        let next = if forward {
            indices
                .last()
                .map_or_else(|| from.min(end), |i| position(i + 1))
        } else {
            indices.last().map_or(0, |i| position(*i))
        };
        reply.next_commit_position = next;
        reply.next_prepare_position = next;
        (reply, Picked { indices, resolve })
    }

    /// The encoded `ReadAllEventsCompleted`: `reply` and then the picked events (field 3).
    pub(crate) fn encode_all_page(
        &self,
        reply: &ReadAllEventsCompleted,
        picked: &Picked,
    ) -> Vec<u8> {
        let mut out = reply.encode_to_vec();
        self.put_events(&mut out, 3, picked, true);
        out
    }
}

/// The reply to a write that failed with `result`; `current` is the stream's version.
pub(crate) fn write_failed(
    result: OperationResult,
    current: i64,
    message: &str,
) -> WriteEventsCompleted {
    WriteEventsCompleted {
        result: result as i32,
        message: Some(message.to_owned()),
        first_event_number: INVALID,
        last_event_number: INVALID,
        prepare_position: None,
        commit_position: None,
        current_version: Some(current),
    }
}

/// Append field `field` (length-delimited) holding `bytes`.
fn put_len(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    prost::encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A `$metadata` event holding `meta`; `seed` makes its id unique.
pub(crate) fn metadata_event(
    meta: &serde_json::Map<String, serde_json::Value>,
    seed: usize,
) -> NewEvent {
    let mut event_id = vec![0xad; 16];
    event_id[..8].copy_from_slice(&(seed as u64).to_le_bytes());
    NewEvent {
        event_id: event_id.into(),
        event_type: "$metadata".into(),
        data_content_type: 1,
        metadata_content_type: 0,
        data: serde_json::to_vec(meta).unwrap_or_default().into(),
        metadata: None,
    }
}

/// A link event (`$>`) to event `number` of `stream`; `seed` makes its id unique.
pub(crate) fn link_event(stream: &str, number: i64, seed: usize) -> NewEvent {
    let mut event_id = vec![0x11; 16];
    event_id[..8].copy_from_slice(&(seed as u64).to_le_bytes());
    NewEvent {
        event_id: event_id.into(),
        event_type: "$>".into(),
        data_content_type: 0,
        metadata_content_type: 0,
        data: format!("{number}@{stream}").into_bytes().into(),
        metadata: None,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
