//! [`EventStoreSource`]: EventStore streams as batch-flusher sources, one stream per shard,
//! read with a catch-up subscription from the stored checkpoint (an event number).

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use headwaters_batch_flusher::{Source, SourceEvent, SourceRecord};
use headwaters_ordering_core::NoSettle;

use crate::connection::Connection;
use crate::error::Error;
use crate::subscription::{CatchUpEvent, DropReason};
use crate::types::ResolvedEvent;

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
        Ok(catch_up
            .filter_map(|event| async move {
                match event {
                    CatchUpEvent::Event(e) => {
                        let position = e.original_event_number()?;
                        Some(Ok(SourceEvent::Record(SourceRecord {
                            position,
                            sub: None,
                            record: *e,
                            ack: NoSettle,
                        })))
                    }
                    CatchUpEvent::Dropped(DropReason::StreamDeleted) => {
                        Some(Ok(SourceEvent::ShardEnded))
                    }
                    CatchUpEvent::Dropped(DropReason::ConnectionLost) | CatchUpEvent::CaughtUp => {
                        None
                    }
                    CatchUpEvent::Dropped(other) => Some(Err(Error::Server(format!(
                        "the catch-up subscription ended: {other:?}"
                    )))),
                }
            })
            .boxed())
    }
}
