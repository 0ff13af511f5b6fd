//! Ordered processing: events dispatched through an ordering-core [`Dispatcher`] keyed by
//! stream id — events of one stream are handled one at a time in delivery order, different
//! streams concurrently. [`start_ordered`] / [`run_ordered`] for a persistent subscription
//! (settlements become acks and naks), [`start_ordered_catch_up`] /
//! [`run_ordered_catch_up`] for a catch-up subscription (e.g. on `$all`). The `start_*`
//! forms run on a task of their own and stop with `shutdown(grace)`, as AMQP's `Consumer`
//! and Pulsar's `start_ordered` do; the `run_*` forms are the same as a future.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use headwaters_ordering_core::{
    self as ordering, Delivery, Dispatcher, Epoch, Headers, Key, NoSettle, Running, Settlement,
    ShutdownReport, SourceEvent, Timestamp,
};

use crate::error::Error;
use crate::persistent::{PersistentAck, PersistentEvent, PersistentSubscription};
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
    dispatcher(handler, config)?
        .run(persistent_source(subscription), grace)
        .await
}

/// An ordered persistent subscription at work: what [`start_ordered`] returns.
pub type OrderedSubscription<H> = Running<H, PersistentAck, Error>;

/// [`run_ordered`] on a task of its own, stopped by [`OrderedSubscription::shutdown`]
/// (handlers finish within the grace, their acks go out, then the subscription is dropped) —
/// the shape of AMQP's `Consumer::start` and Pulsar's `start_ordered`.
pub fn start_ordered<H>(
    subscription: PersistentSubscription,
    handler: H,
    config: ordering::Config,
) -> Result<OrderedSubscription<H>, Error>
where
    H: ordering::Handler,
{
    Ok(dispatcher(handler, config)?.start(persistent_source(subscription)))
}

/// The subscription's events as a dispatcher source, an epoch per connection.
fn persistent_source(
    subscription: PersistentSubscription,
) -> impl Stream<Item = Result<SourceEvent<PersistentAck>, Error>> + Send {
    let acker = subscription.acker();
    let mut connection = 1;
    subscription.filter_map(move |event| {
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
    })
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
    dispatcher(handler, config)?
        .run(catch_up_source(catch_up), grace)
        .await
}

/// An ordered catch-up subscription at work: what [`start_ordered_catch_up`] returns.
pub type OrderedCatchUp<H> = Running<H, NoSettle, Error>;

/// [`run_ordered_catch_up`] on a task of its own, stopped by [`OrderedCatchUp::shutdown`].
pub fn start_ordered_catch_up<H>(
    catch_up: CatchUp,
    handler: H,
    config: ordering::Config,
) -> Result<OrderedCatchUp<H>, Error>
where
    H: ordering::Handler,
{
    Ok(dispatcher(handler, config)?.start(catch_up_source(catch_up)))
}

/// The catch-up subscription's events as a dispatcher source (one epoch).
fn catch_up_source(
    catch_up: CatchUp,
) -> impl Stream<Item = Result<SourceEvent<NoSettle>, Error>> + Send {
    catch_up.filter_map(|event| async move {
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
    })
}

fn dispatcher<H: ordering::Handler, T: ordering::Settle>(
    handler: H,
    config: ordering::Config,
) -> Result<Dispatcher<H, T>, Error> {
    Dispatcher::new(handler, config).map_err(Error::Dispatcher)
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
