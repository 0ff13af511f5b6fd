//! EventStore as batch-flusher sources: [`EventStoreSource`] (one stream per shard, a
//! catch-up subscription from the stored event number), [`EventStoreAllSource`] (`$all` by
//! position) and [`EventStorePersistentSource`] (a persistent subscription group, acked at
//! the server once flushed).

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use headwaters_batch_flusher::{Source, SourceEvent, SourceRecord};
use headwaters_ordering_core::NoSettle;

use crate::connection::Connection;
use crate::error::Error;
use crate::persistent::{PersistentAck, PersistentEvent};
use crate::subscription::{CatchUp, CatchUpEvent, DropReason};
use crate::types::{Position, ResolvedEvent};

/// Feeds a [`BatchProcessor`](headwaters_batch_flusher::BatchProcessor) from EventStore:
/// shard `"orders"` is the stream `orders`, read with a catch-up subscription after the
/// stored checkpoint (the last flushed event number), live afterwards. The checkpoint store
/// is the only record of progress (nothing is acknowledged at the server), so a restart
/// resumes after the last checkpoint and replays at most what was flushed since. A hard
/// delete of the stream ends the shard (flush, final checkpoint); a connection loss is
/// bridged by the subscription itself.
#[derive(Debug, Clone)]
pub struct EventStoreSource {
    connection: Connection,
    page_size: u32,
}

impl EventStoreSource {
    /// Streams of `connection`, read in pages of `page_size` while catching up.
    pub fn new(connection: Connection, page_size: u32) -> Self {
        Self {
            connection,
            page_size,
        }
    }
}

type Events = BoxStream<'static, Result<SourceEvent<u64, ResolvedEvent, NoSettle>, Error>>;

impl Source for EventStoreSource {
    type Position = u64;
    type Record = ResolvedEvent;
    type Ack = NoSettle;
    type Error = Error;
    type Stream = Events;

    async fn open(&self, shard: &str, from: Option<u64>) -> Result<Events, Error> {
        let catch_up = self
            .connection
            .subscribe_to_stream_from(shard, from, self.page_size);
        Ok(records(catch_up, ResolvedEvent::original_event_number))
    }
}

/// A catch-up subscription as a source stream: records positioned by `position` (events
/// it gives no position are skipped), a hard delete ends the shard, a connection loss or a
/// fall-back to paging is bridged by the subscription, any other end is an error.
fn records<P: Send + 'static>(
    catch_up: CatchUp,
    position: impl Fn(&ResolvedEvent) -> Option<P> + Send + Sync + 'static,
) -> BoxStream<'static, Result<SourceEvent<P, ResolvedEvent, NoSettle>, Error>> {
    catch_up
        .filter_map(move |event| {
            let record = match event {
                CatchUpEvent::Event(e) => position(&e).map(|position| {
                    Ok(SourceEvent::Record(SourceRecord {
                        position,
                        sub: None,
                        record: *e,
                        ack: NoSettle,
                    }))
                }),
                CatchUpEvent::Dropped(DropReason::StreamDeleted) => {
                    Some(Ok(SourceEvent::ShardEnded))
                }
                CatchUpEvent::Dropped(DropReason::ConnectionLost)
                | CatchUpEvent::CaughtUp
                | CatchUpEvent::FellBehind => None,
                CatchUpEvent::Dropped(other) => Some(Err(Error::Server(format!(
                    "the catch-up subscription ended: {other:?}"
                )))),
            };
            std::future::ready(record)
        })
        .boxed()
}

/// Feeds a batch processor from `$all` (one shard; its name is only a label), by position:
/// a catch-up subscription after the stored checkpoint (`commit/prepare`), live afterwards.
/// System events (types starting with `$`) are skipped unless asked for.
#[derive(Debug, Clone)]
pub struct EventStoreAllSource {
    connection: Connection,
    page_size: u32,
    system_events: bool,
}

impl EventStoreAllSource {
    /// `$all` on `connection`, read in pages of `page_size` while catching up.
    pub fn new(connection: Connection, page_size: u32) -> Self {
        Self {
            connection,
            page_size,
            system_events: false,
        }
    }

    /// Pass system events (`$metadata`, `$>` links, …) to the flusher too.
    pub fn with_system_events(mut self, on: bool) -> Self {
        self.system_events = on;
        self
    }
}

type AllEvents = BoxStream<'static, Result<SourceEvent<Position, ResolvedEvent, NoSettle>, Error>>;

impl Source for EventStoreAllSource {
    type Position = Position;
    type Record = ResolvedEvent;
    type Ack = NoSettle;
    type Error = Error;
    type Stream = AllEvents;

    async fn open(&self, _shard: &str, from: Option<Position>) -> Result<AllEvents, Error> {
        let system = self.system_events;
        let catch_up = self.connection.subscribe_to_all_from(from, self.page_size);
        Ok(records(catch_up, move |e| {
            let is_system = e.original().is_some_and(|r| r.event_type.starts_with('$'));
            if is_system && !system {
                return None;
            }
            e.position
        }))
    }
}

/// Feeds a batch processor from a persistent subscription group: shard `"orders"` joins
/// the group on stream `orders`. The server keeps the group's position, so the stored
/// checkpoint is informational: records are acknowledged at the server once flushed
/// (source-native checkpointing), a rejected one is retried (`requeue: true`) or parked,
/// and what was delivered but not flushed when a shard stops is delivered again.
#[derive(Debug, Clone)]
pub struct EventStorePersistentSource {
    connection: Connection,
    group: String,
    allowed_in_flight: u32,
}

impl EventStorePersistentSource {
    /// Join `group` on each shard's stream with at most `allowed_in_flight` unacknowledged
    /// events (make it at least the flusher's batch size, or batches never fill).
    pub fn new(connection: Connection, group: impl Into<String>, allowed_in_flight: u32) -> Self {
        Self {
            connection,
            group: group.into(),
            allowed_in_flight,
        }
    }
}

type PersistentEvents =
    BoxStream<'static, Result<SourceEvent<u64, ResolvedEvent, PersistentAck>, Error>>;

impl Source for EventStorePersistentSource {
    type Position = u64;
    type Record = ResolvedEvent;
    type Ack = PersistentAck;
    type Error = Error;
    type Stream = PersistentEvents;

    async fn open(&self, shard: &str, _from: Option<u64>) -> Result<PersistentEvents, Error> {
        let subscription = self
            .connection
            .connect_to_persistent_subscription(shard, &self.group, self.allowed_in_flight)
            .await?;
        let acker = subscription.acker();
        Ok(subscription
            .filter_map(move |event| {
                std::future::ready(match event {
                    PersistentEvent::Event(m) => m.event.original_event_number().map(|position| {
                        Ok(SourceEvent::Record(SourceRecord {
                            position,
                            sub: None,
                            ack: acker.settle_handle(&m),
                            record: m.event,
                        }))
                    }),
                    PersistentEvent::Reconnected
                    | PersistentEvent::Dropped(DropReason::ConnectionLost) => None,
                    PersistentEvent::Dropped(other) => Some(Err(Error::Server(format!(
                        "the persistent subscription ended: {other:?}"
                    )))),
                })
            })
            .boxed())
    }
}
