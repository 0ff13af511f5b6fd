//! Persistent subscriptions (competing consumers): the server keeps each group's position
//! and hands every event to one of the group's consumers, which acknowledges it or asks for
//! a retry, park or skip. [`PersistentSettings`], [`PersistentSubscription`], [`Acker`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use headwaters_ordering_core::{Settle, Settlement};
use prost::Message as _;

use crate::command::Command;
use crate::connection::{Connection, Routed};
use crate::error::Error;
use crate::ops::decode;
use crate::subscription::{DropReason, Routes, Step, ending};
use crate::types::ResolvedEvent;
use crate::wire;

/// Where a new group starts reading its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first event.
    Beginning,
    /// Events written after the group is created.
    End,
    /// This event number.
    Event(u64),
}

/// How a group shares events among its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerStrategy {
    /// Each event to the next consumer with room.
    RoundRobin,
    /// Everything to one consumer while it has room.
    DispatchToSingle,
    /// Events of a stream to the same consumer (by hash).
    Pinned,
}

impl ConsumerStrategy {
    const fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "RoundRobin",
            Self::DispatchToSingle => "DispatchToSingle",
            Self::Pinned => "Pinned",
        }
    }
}

/// A group's settings, with the .NET client's defaults (`PersistentSubscriptionSettings`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PersistentSettings {
    /// Resolve `$>` links to their events (default off).
    pub resolve_link_tos: bool,
    /// Where a new group starts (default [`StartFrom::End`]).
    pub start_from: StartFrom,
    /// Keep extra statistics on the server (default off).
    pub extra_statistics: bool,
    /// An event not acknowledged this long is retried (default 30 s).
    pub message_timeout: Duration,
    /// Retries before an event is parked (default 10).
    pub max_retry_count: u32,
    /// Live events buffered by the server (default 500).
    pub live_buffer_size: u32,
    /// Events read per page while catching up (default 20).
    pub read_batch_size: u32,
    /// History events buffered by the server (default 500).
    pub history_buffer_size: u32,
    /// Checkpoint the group's position at most this often (default 2 s).
    pub checkpoint_after: Duration,
    /// Checkpoint after at least this many events (default 10).
    pub min_checkpoint_count: u32,
    /// Checkpoint after at most this many events (default 1,000).
    pub max_checkpoint_count: u32,
    /// At most this many consumers; 0 = unlimited (default).
    pub max_subscriber_count: u32,
    /// How events are shared (default round robin).
    pub strategy: ConsumerStrategy,
}

impl Default for PersistentSettings {
    fn default() -> Self {
        Self {
            resolve_link_tos: false,
            start_from: StartFrom::End,
            extra_statistics: false,
            message_timeout: Duration::from_secs(30),
            max_retry_count: 10,
            live_buffer_size: 500,
            read_batch_size: 20,
            history_buffer_size: 500,
            checkpoint_after: Duration::from_secs(2),
            min_checkpoint_count: 10,
            max_checkpoint_count: 1000,
            max_subscriber_count: 0,
            strategy: ConsumerStrategy::RoundRobin,
        }
    }
}

impl PersistentSettings {
    /// Where a new group starts.
    pub fn with_start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }

    /// Retry an unacknowledged event after `timeout`.
    pub fn with_message_timeout(mut self, timeout: Duration) -> Self {
        self.message_timeout = timeout;
        self
    }

    /// Park an event after `retries` retries.
    pub fn with_max_retry_count(mut self, retries: u32) -> Self {
        self.max_retry_count = retries;
        self
    }

    /// Resolve `$>` links.
    pub fn with_resolve_link_tos(mut self, resolve: bool) -> Self {
        self.resolve_link_tos = resolve;
        self
    }

    /// Limit the number of consumers (0 = unlimited).
    pub fn with_max_subscriber_count(mut self, max: u32) -> Self {
        self.max_subscriber_count = max;
        self
    }

    /// How events are shared among consumers.
    pub fn with_strategy(mut self, strategy: ConsumerStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    fn to_wire(&self, stream: &str, group: &str) -> wire::CreatePersistentSubscription {
        let millis = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        wire::CreatePersistentSubscription {
            subscription_group_name: group.to_owned(),
            event_stream_id: stream.to_owned(),
            resolve_link_tos: self.resolve_link_tos,
            start_from: match self.start_from {
                StartFrom::Beginning => 0,
                StartFrom::End => -1,
                StartFrom::Event(n) => i64::try_from(n).unwrap_or(i64::MAX),
            },
            message_timeout_milliseconds: millis(self.message_timeout),
            record_statistics: self.extra_statistics,
            live_buffer_size: int(self.live_buffer_size),
            read_batch_size: int(self.read_batch_size),
            buffer_size: int(self.history_buffer_size),
            max_retry_count: int(self.max_retry_count),
            prefer_round_robin: self.strategy == ConsumerStrategy::RoundRobin,
            checkpoint_after_time: millis(self.checkpoint_after),
            checkpoint_max_count: int(self.max_checkpoint_count),
            checkpoint_min_count: int(self.min_checkpoint_count),
            subscriber_max_count: int(self.max_subscriber_count),
            named_consumer_strategy: Some(self.strategy.name().to_owned()),
        }
    }
}

/// What to do with an event the consumer could not handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NakAction {
    /// Let the server decide (it retries).
    Unknown,
    /// Do not retry: move it to the group's parked-messages stream.
    Park,
    /// Deliver it again (parked once retries are used up).
    Retry,
    /// Drop it: no retry, not parked.
    Skip,
    /// Stop consuming: the event stays outstanding on the server (retried after the
    /// message timeout) and this consumer unsubscribes.
    Stop,
}

impl NakAction {
    const fn wire(self) -> wire::persistent_subscription_nak_events::NakAction {
        use wire::persistent_subscription_nak_events::NakAction as W;
        match self {
            Self::Unknown => W::Unknown,
            Self::Park => W::Park,
            Self::Retry => W::Retry,
            Self::Skip => W::Skip,
            Self::Stop => W::Stop,
        }
    }
}

/// One event from a persistent subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PersistentMessage {
    /// The event (and its link, when the group resolves links).
    pub event: ResolvedEvent,
    /// How many times it was delivered before (4.1+ servers; 0 otherwise).
    pub retry_count: u32,
}

impl PersistentMessage {
    /// The id acks and naks name: the link's when the event came through one.
    pub fn ack_id(&self) -> [u8; 16] {
        self.event.original().map_or([0; 16], |r| r.id_bytes)
    }
}

/// What a persistent subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PersistentEvent {
    /// An event to handle, then [`Acker::ack`] or [`Acker::nak`].
    Event(Box<PersistentMessage>),
    /// Connected again after a [`DropReason::ConnectionLost`]; events not acknowledged
    /// before the loss come again (their retry count raised).
    Reconnected,
    /// The subscription was cut (`ConnectionLost`: it reconnects by itself) or ended.
    Dropped(DropReason),
}

/// Acknowledges events of one persistent subscription; cheap to clone and to move to the
/// tasks that handle the events.
#[derive(Debug, Clone)]
pub struct Acker {
    connection: Connection,
    correlation: [u8; 16],
    subscription_id: String,
}

/// The server's limit on ids per ack or nak.
const MAX_IDS: usize = 2000;

impl Acker {
    /// Acknowledge handled events.
    pub fn ack<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a PersistentMessage>,
    ) -> Result<(), Error> {
        self.ack_ids(messages.into_iter().map(PersistentMessage::ack_id))
    }

    /// Acknowledge by id ([`PersistentMessage::ack_id`]).
    pub fn ack_ids(&self, ids: impl IntoIterator<Item = [u8; 16]>) -> Result<(), Error> {
        self.send_ids(Command::PersistentSubscriptionAckEvents, ids, |ids| {
            wire::PersistentSubscriptionAckEvents {
                subscription_id: self.subscription_id.clone(),
                processed_event_ids: ids,
            }
            .encode_to_vec()
        })
    }

    /// Refuse events: `action` says what the server does with them; `reason` shows in the
    /// server's logs and parked-message details.
    pub fn nak<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a PersistentMessage>,
        action: NakAction,
        reason: &str,
    ) -> Result<(), Error> {
        self.nak_ids(
            messages.into_iter().map(PersistentMessage::ack_id),
            action,
            reason,
        )
    }

    /// Refuse events by id ([`PersistentMessage::ack_id`]).
    pub fn nak_ids(
        &self,
        ids: impl IntoIterator<Item = [u8; 16]>,
        action: NakAction,
        reason: &str,
    ) -> Result<(), Error> {
        self.send_ids(Command::PersistentSubscriptionNakEvents, ids, |ids| {
            wire::PersistentSubscriptionNakEvents {
                subscription_id: self.subscription_id.clone(),
                processed_event_ids: ids,
                message: Some(reason.to_owned()),
                action: action.wire() as i32,
            }
            .encode_to_vec()
        })?;
        if action == NakAction::Stop {
            self.unsubscribe()?;
        }
        Ok(())
    }

    /// Send `ids` on the subscription in messages of at most the server's limit each.
    fn send_ids(
        &self,
        command: Command,
        ids: impl IntoIterator<Item = [u8; 16]>,
        message: impl Fn(Vec<bytes::Bytes>) -> Vec<u8>,
    ) -> Result<(), Error> {
        let ids: Vec<bytes::Bytes> = ids
            .into_iter()
            .map(|id| bytes::Bytes::copy_from_slice(&id))
            .collect();
        for chunk in ids.chunks(MAX_IDS) {
            self.connection
                .send_only(command, self.correlation, message(chunk.to_vec()))?;
        }
        Ok(())
    }

    /// Leave the group; the stream then yields `Dropped(Unsubscribed)` and ends. Events not
    /// acknowledged go to the group's other consumers.
    pub fn unsubscribe(&self) -> Result<(), Error> {
        self.connection.unsubscribe(self.correlation)
    }
}

impl Acker {
    /// A settle handle for one event, for ordering-core and the batch processor.
    pub fn settle_handle(&self, message: &PersistentMessage) -> PersistentAck {
        PersistentAck {
            acker: self.clone(),
            id: message.ack_id(),
        }
    }
}

/// Settles one persistent-subscription event (an ordering-core [`Settle`]): `Ack` acks, a
/// requeue naks with `Retry`, a discard naks with `Park` (the group's parked-messages
/// stream is its dead-letter queue). If the connection is gone, the server redelivers after
/// its message timeout.
#[derive(Debug)]
pub struct PersistentAck {
    acker: Acker,
    id: [u8; 16],
}

impl Settle for PersistentAck {
    fn settle(self, settlement: Settlement) {
        let sent = match settlement {
            Settlement::Ack => self.acker.ack_ids([self.id]),
            Settlement::Reject { requeue: true } => {
                self.acker
                    .nak_ids([self.id], NakAction::Retry, "rejected, to be retried")
            }
            Settlement::Reject { requeue: false } => {
                self.acker
                    .nak_ids([self.id], NakAction::Park, "rejected, not to be retried")
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "eventstore: could not settle a persistent-subscription event");
        }
    }
}

/// A consumer in a persistent subscription group: a `Stream` of [`PersistentEvent`]s.
/// Dropping it leaves the group.
#[derive(Debug)]
pub struct PersistentSubscription {
    acker: Acker,
    routes: Routes,
    last_event_number: Option<i64>,
    reconnecting: bool,
}

impl Connection {
    /// Create a persistent subscription group on `stream`.
    pub async fn create_persistent_subscription(
        &self,
        stream: &str,
        group: &str,
        settings: &PersistentSettings,
    ) -> Result<(), Error> {
        self.group_command(
            Command::CreatePersistentSubscription,
            Command::CreatePersistentSubscriptionCompleted,
            settings.to_wire(stream, group).encode_to_vec(),
            Error::GroupExists {
                stream: stream.to_owned(),
                group: group.to_owned(),
            },
        )
        .await
    }

    /// Change a group's settings (the server restarts it: its consumers are dropped with
    /// [`DropReason::PersistentSubscriptionDeleted`] and must connect again).
    pub async fn update_persistent_subscription(
        &self,
        stream: &str,
        group: &str,
        settings: &PersistentSettings,
    ) -> Result<(), Error> {
        // `UpdatePersistentSubscription` has the create message's fields, numbers and types:
        // the same bytes.
        self.group_command(
            Command::UpdatePersistentSubscription,
            Command::UpdatePersistentSubscriptionCompleted,
            settings.to_wire(stream, group).encode_to_vec(),
            Error::GroupNotFound {
                stream: stream.to_owned(),
                group: group.to_owned(),
            },
        )
        .await
    }

    /// Delete a group; its consumers are dropped with
    /// [`DropReason::PersistentSubscriptionDeleted`].
    pub async fn delete_persistent_subscription(
        &self,
        stream: &str,
        group: &str,
    ) -> Result<(), Error> {
        let request = wire::DeletePersistentSubscription {
            subscription_group_name: group.to_owned(),
            event_stream_id: stream.to_owned(),
        };
        self.group_command(
            Command::DeletePersistentSubscription,
            Command::DeletePersistentSubscriptionCompleted,
            request.encode_to_vec(),
            Error::GroupNotFound {
                stream: stream.to_owned(),
                group: group.to_owned(),
            },
        )
        .await
    }

    /// Send a group command. The three answers share their fields (1 result, 2 reason) and
    /// codes: 0 success, 1 the group exists (create) or does not (update, delete) —
    /// `code_1` —, 2 failure, 3 access denied.
    async fn group_command(
        &self,
        command: Command,
        completed: Command,
        payload: Vec<u8>,
        code_1: Error,
    ) -> Result<(), Error> {
        let frame = self.request(command, payload).await?;
        let done: wire::DeletePersistentSubscriptionCompleted = decode(&frame, completed)?;
        let reason = done.reason.unwrap_or_default();
        match done.result {
            0 => Ok(()),
            1 => Err(code_1),
            3 => Err(Error::AccessDenied(reason)),
            _ => Err(Error::Server(reason)),
        }
    }

    /// Join group `group` on `stream` as a consumer with at most `allowed_in_flight`
    /// unacknowledged events. Returns once the server confirmed; a missing group or a full
    /// one is an error here. After a connection loss it joins again by itself
    /// (`Dropped(ConnectionLost)`, then `Reconnected`).
    pub async fn connect_to_persistent_subscription(
        &self,
        stream: &str,
        group: &str,
        allowed_in_flight: u32,
    ) -> Result<PersistentSubscription, Error> {
        if allowed_in_flight == 0 {
            return Err(Error::Config("allowed_in_flight must be at least 1".into()));
        }
        let request = wire::ConnectToPersistentSubscription {
            subscription_id: group.to_owned(),
            event_stream_id: stream.to_owned(),
            allowed_in_flight_messages: i32::try_from(allowed_in_flight).unwrap_or(i32::MAX),
        };
        let (correlation, mut rx) = self.subscribe_raw(
            Command::ConnectToPersistentSubscription,
            request.encode_to_vec(),
        )?;
        let not_found = || Error::GroupNotFound {
            stream: stream.to_owned(),
            group: group.to_owned(),
        };
        let wait = self.settings().operation_timeout;
        loop {
            let next = tokio::time::timeout(wait, rx.recv())
                .await
                .map_err(|_| Error::Timeout(wait))?;
            let frame = match next {
                None => return Err(Error::Closed),
                Some(Routed::Lost) => continue,
                Some(Routed::Frame(f)) => f,
            };
            let text = || String::from_utf8_lossy(&frame.payload).into_owned();
            match frame.command {
                Command::PersistentSubscriptionConfirmation => {
                    let c = wire::PersistentSubscriptionConfirmation::decode(frame.payload.clone())
                        .map_err(Error::Protobuf)?;
                    return Ok(PersistentSubscription {
                        acker: Acker {
                            connection: self.clone(),
                            correlation,
                            subscription_id: c.subscription_id,
                        },
                        routes: Routes::new(rx),
                        last_event_number: c.last_event_number,
                        reconnecting: false,
                    });
                }
                Command::SubscriptionDropped => {
                    return Err(match DropReason::from_frame(&frame.payload) {
                        DropReason::NotFound | DropReason::PersistentSubscriptionDeleted => {
                            not_found()
                        }
                        DropReason::SubscriberMaxCountReached => {
                            Error::SubscriberMaxCountReached(group.to_owned())
                        }
                        DropReason::AccessDenied => Error::AccessDenied(group.to_owned()),
                        other => Error::Server(format!("subscription dropped: {other:?}")),
                    });
                }
                Command::NotAuthenticated => return Err(Error::NotAuthenticated(text())),
                Command::BadRequest => return Err(Error::BadRequest(text())),
                _ => {}
            }
        }
    }
}

impl PersistentSubscription {
    /// A handle to acknowledge events with.
    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// Acknowledge one handled event.
    pub fn ack(&self, message: &PersistentMessage) -> Result<(), Error> {
        self.acker.ack([message])
    }

    /// Refuse one event (see [`Acker::nak`]).
    pub fn nak(
        &self,
        message: &PersistentMessage,
        action: NakAction,
        reason: &str,
    ) -> Result<(), Error> {
        self.acker.nak([message], action, reason)
    }

    /// The server's id of the subscription (`stream::group`).
    pub fn subscription_id(&self) -> &str {
        &self.acker.subscription_id
    }

    /// The stream's last event number when the subscription was confirmed.
    pub fn last_event_number(&self) -> Option<i64> {
        self.last_event_number
    }

    fn step(reconnecting: &mut bool, routed: Routed) -> Step<PersistentEvent> {
        let frame = match routed {
            Routed::Lost => {
                *reconnecting = true;
                return Step::Yield(PersistentEvent::Dropped(DropReason::ConnectionLost));
            }
            Routed::Frame(f) => f,
        };
        if let Some(reason) = ending(&frame) {
            return Step::End(PersistentEvent::Dropped(reason));
        }
        match frame.command {
            // The first confirmation was consumed by connect; later ones follow a reconnect.
            Command::PersistentSubscriptionConfirmation if std::mem::take(reconnecting) => {
                Step::Yield(PersistentEvent::Reconnected)
            }
            Command::PersistentSubscriptionStreamEventAppeared => {
                match wire::PersistentSubscriptionStreamEventAppeared::decode(frame.payload) {
                    Ok(e) => Step::Yield(PersistentEvent::Event(Box::new(PersistentMessage {
                        event: ResolvedEvent::from_indexed(e.event),
                        retry_count: e.retry_count.unwrap_or(0).max(0) as u32,
                    }))),
                    Err(_) => Step::Skip,
                }
            }
            _ => Step::Skip,
        }
    }
}

impl Stream for PersistentSubscription {
    type Item = PersistentEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let reconnecting = &mut this.reconnecting;
        this.routes
            .poll_step(cx, |routed| Self::step(reconnecting, routed))
    }
}

impl Drop for PersistentSubscription {
    fn drop(&mut self) {
        if !self.routes.ended {
            let _ = self.acker.unsubscribe();
        }
    }
}
