//! Ordered processing: events dispatched through an ordering-core [`Dispatcher`] keyed by
//! stream id — events of one stream are handled one at a time in delivery order, different
//! streams concurrently. [`run_ordered`] for a persistent subscription (settlements become
//! acks and naks), [`run_ordered_catch_up`] for a catch-up subscription (e.g. on `$all`).

use std::time::Duration;

use futures_util::StreamExt;
use headwaters_ordering_core::{
    self as ordering, Delivery, Dispatcher, Epoch, Headers, Key, NoSettle, Settlement,
    ShutdownReport, SourceEvent, Timestamp,
};

use crate::error::Error;
use crate::persistent::{PersistentEvent, PersistentSubscription};
use crate::subscription::{CatchUp, CatchUpEvent, DropReason};
use crate::types::ResolvedEvent;

/// The ordering-core message for an event: its data, its id, its creation time (or now),
/// headers `eventstore.stream`, `eventstore.event_number`, `eventstore.event_type`, and a
/// persistent subscription's retry count as its redeliveries.
pub fn to_ordering_message(e: &ResolvedEvent, retry_count: u32) -> Option<ordering::Message> {
    let record = e.event.as_ref()?;
    let mut headers = Headers::new();
    headers.insert("eventstore.stream".to_owned(), record.stream_id.as_str());
    headers.insert(
        "eventstore.event_number".to_owned(),
        i64::try_from(record.event_number).unwrap_or(i64::MAX),
    );
    headers.insert(
        "eventstore.event_type".to_owned(),
        record.event_type.as_str(),
    );
    let at = record
        .created_epoch_ms
        .map_or_else(Timestamp::now, Timestamp::from_millis);
    Some(
        ordering::Message::new(record.data.clone(), record.id.to_string(), at)
            .with_headers(headers)
            .with_redeliveries(retry_count),
    )
}

/// Handle a persistent subscription's events through an ordering-core [`Dispatcher`] keyed
/// by the event's stream (for a resolved link, the stream linked to). Returns when the
/// subscription ends (dropped, deleted, unsubscribed); the dispatcher then drains for up to
/// `grace`. Each connection is an epoch: when it is lost, the events it delivered and the
/// handler has not started are dropped — the server gives them out again, maybe to another
/// member of the group — and the subscription rejoins.
pub async fn run_ordered<H>(
    subscription: PersistentSubscription,
    handler: H,
    config: ordering::Config,
    grace: Duration,
) -> Result<ShutdownReport, Error>
where
    H: ordering::Handler,
{
    let acker = subscription.acker();
    let mut connection = 1;
    let source = subscription.filter_map(move |event| {
        std::future::ready(match event {
            PersistentEvent::Event(m) => {
                let settle = acker.settle_handle(&m);
                delivery(&m.event, m.retry_count, settle, Epoch::new(connection))
            }
            PersistentEvent::Dropped(DropReason::ConnectionLost) => {
                connection += 1;
                Some(Ok(SourceEvent::EpochLost(Epoch::new(connection - 1))))
            }
            PersistentEvent::Reconnected => None,
            PersistentEvent::Dropped(reason) => {
                tracing::info!(
                    ?reason,
                    "eventstore ordered: the persistent subscription ended"
                );
                None
            }
        })
    });
    dispatcher(handler, config)?.run(source, grace).await
}

/// Handle a catch-up subscription's events (a stream, or `$all`) through an ordering-core
/// [`Dispatcher`] keyed by stream. Nothing is acknowledged at the server: keep your own
/// checkpoint from the handler. Returns when the subscription ends. A lost connection
/// loses nothing here: the subscription resumes after the last event it delivered, so what
/// the dispatcher holds stays valid (one epoch throughout).
pub async fn run_ordered_catch_up<H>(
    catch_up: CatchUp,
    handler: H,
    config: ordering::Config,
    grace: Duration,
) -> Result<ShutdownReport, Error>
where
    H: ordering::Handler,
{
    let source = catch_up.filter_map(|event| async move {
        match event {
            CatchUpEvent::Event(e) => delivery(&e, 0, NoSettle, Epoch::new(1)),
            CatchUpEvent::Dropped(reason) if reason != DropReason::ConnectionLost => {
                tracing::info!(
                    ?reason,
                    "eventstore ordered: the catch-up subscription ended"
                );
                None
            }
            _ => None,
        }
    });
    dispatcher(handler, config)?.run(source, grace).await
}

fn dispatcher<H: ordering::Handler, T: ordering::Settle>(
    handler: H,
    config: ordering::Config,
) -> Result<Dispatcher<H, T>, Error> {
    Dispatcher::new(handler, config).map_err(|e| Error::Config(e.to_string()))
}

/// An event as a dispatcher delivery keyed by its stream; `None` for a link to a deleted
/// event (settled at once: there is nothing to handle).
fn delivery<T: ordering::Settle>(
    event: &ResolvedEvent,
    retry_count: u32,
    settle: T,
    epoch: Epoch,
) -> Option<Result<SourceEvent<T>, Error>> {
    let Some(message) = to_ordering_message(event, retry_count) else {
        settle.settle(Settlement::Ack);
        return None;
    };
    let stream = event
        .event
        .as_ref()
        .map(|r| r.stream_id.clone())
        .unwrap_or_default();
    Some(Ok(SourceEvent::Delivery(Delivery {
        key: Key::new(stream),
        message,
        settle,
        epoch,
    })))
}
