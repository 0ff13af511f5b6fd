//! Subscriptions: volatile ([`Subscription`]) and catch-up ([`CatchUp`], Extreme's
//! `read_and_stay_subscribed`).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::command::Command;
use crate::connection::{Connection, Routed};
use crate::error::Error;
use crate::types::{Position, ReadDirection, ResolvedEvent};
use crate::wire;

/// Why a subscription stopped (or, for [`DropReason::ConnectionLost`], was cut and is being
/// re-established).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Unsubscribed on request.
    Unsubscribed,
    /// The user may not read the stream.
    AccessDenied,
    /// No such stream or group.
    NotFound,
    /// The persistent subscription was deleted.
    PersistentSubscriptionDeleted,
    /// The group has its maximum number of subscribers.
    SubscriberMaxCountReached,
    /// The connection was lost; a volatile subscription is subscribed again (events written
    /// meanwhile are not replayed), a catch-up subscription resumes from its last event.
    ConnectionLost,
    /// The stream was hard-deleted.
    StreamDeleted,
    /// The server refused the subscription.
    Refused(String),
}

impl DropReason {
    /// From a `SubscriptionDropped` payload.
    pub(crate) fn from_frame(payload: &bytes::Bytes) -> Self {
        use wire::subscription_dropped::SubscriptionDropReason as R;
        let d = wire::SubscriptionDropped::decode(payload.clone()).unwrap_or_default();
        match d.reason() {
            R::Unsubscribed => Self::Unsubscribed,
            R::AccessDenied => Self::AccessDenied,
            R::NotFound => Self::NotFound,
            R::PersistentSubscriptionDeleted => Self::PersistentSubscriptionDeleted,
            R::SubscriberMaxCountReached => Self::SubscriberMaxCountReached,
        }
    }
}

/// What a volatile subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionEvent {
    /// Subscribed (again, after a reconnect) at this point.
    Confirmed {
        /// The `$all` commit position at subscription.
        last_commit_position: i64,
        /// The stream's last event number at subscription (absent for `$all`).
        last_event_number: Option<i64>,
    },
    /// A live event.
    Event(Box<ResolvedEvent>),
    /// The subscription was cut or ended; see [`DropReason`].
    Dropped(DropReason),
}

/// A volatile subscription to a stream or to `$all`: live events only. Dropping it
/// unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    connection: Connection,
    correlation: [u8; 16],
    rx: mpsc::UnboundedReceiver<Routed>,
    ended: bool,
}

impl Connection {
    /// Subscribe to `stream` (`None` = `$all`), live.
    pub async fn subscribe_to(
        &self,
        stream: Option<&str>,
        resolve_links: bool,
    ) -> Result<Subscription, Error> {
        let request = wire::SubscribeToStream {
            event_stream_id: stream.unwrap_or_default().to_owned(),
            resolve_link_tos: resolve_links,
        };
        let (correlation, rx) =
            self.subscribe_raw(Command::SubscribeToStream, request.encode_to_vec())?;
        Ok(Subscription {
            connection: self.clone(),
            correlation,
            rx,
            ended: false,
        })
    }

    /// A catch-up subscription to `stream`: every event after `last_processed` (`None` =
    /// from the start), read in pages of `page_size`, then live — with no gap and no
    /// duplicate at the switch, or after a reconnect (it resumes after the last event it
    /// delivered). [`CatchUpEvent::CaughtUp`] marks the switch to live.
    pub fn subscribe_to_stream_from(
        &self,
        stream: &str,
        last_processed: Option<u64>,
        page_size: u32,
    ) -> CatchUp {
        let (tx, rx) = mpsc::channel(page_size.clamp(1, 4096) as usize * 2);
        let task = tokio::spawn(catch_up(
            self.clone(),
            stream.to_owned(),
            last_processed.map_or(0, |n| n as i64 + 1),
            page_size.clamp(1, crate::ops::MAX_READ_COUNT),
            tx,
        ));
        CatchUp { rx, task }
    }
}

impl Connection {
    /// A catch-up subscription to `$all`: every event after the position `last_processed`
    /// (`None` = from the start), in pages of `page_size`, then live — no gap and no
    /// duplicate at the switch or after a reconnect (events are compared by position).
    pub fn subscribe_to_all_from(
        &self,
        last_processed: Option<Position>,
        page_size: u32,
    ) -> CatchUp {
        let (tx, rx) = mpsc::channel(page_size.clamp(1, 4096) as usize * 2);
        let task = tokio::spawn(catch_up_all(
            self.clone(),
            last_processed,
            page_size.clamp(1, crate::ops::MAX_READ_COUNT),
            tx,
        ));
        CatchUp { rx, task }
    }
}

impl Subscription {
    /// Ask the server to end the subscription; the stream then yields
    /// `Dropped(Unsubscribed)` and ends.
    pub fn unsubscribe(&self) -> Result<(), Error> {
        self.connection.send_only(
            Command::UnsubscribeFromStream,
            self.correlation,
            wire::UnsubscribeFromStream {}.encode_to_vec(),
        )
    }

    fn map(&mut self, routed: Routed) -> Option<SubscriptionEvent> {
        let frame = match routed {
            Routed::Lost => return Some(SubscriptionEvent::Dropped(DropReason::ConnectionLost)),
            Routed::Frame(f) => f,
        };
        let text = || String::from_utf8_lossy(&frame.payload).into_owned();
        Some(match frame.command {
            Command::SubscriptionConfirmation => {
                let c = wire::SubscriptionConfirmation::decode(frame.payload.clone()).ok()?;
                SubscriptionEvent::Confirmed {
                    last_commit_position: c.last_commit_position,
                    last_event_number: c.last_event_number,
                }
            }
            Command::StreamEventAppeared => {
                let e = wire::StreamEventAppeared::decode(frame.payload.clone()).ok()?;
                let event = ResolvedEvent::from_all(e.event);
                if event
                    .original()
                    .is_some_and(|r| r.event_type == "$streamDeleted")
                {
                    self.ended = true;
                    SubscriptionEvent::Dropped(DropReason::StreamDeleted)
                } else {
                    SubscriptionEvent::Event(Box::new(event))
                }
            }
            Command::SubscriptionDropped => {
                self.ended = true;
                SubscriptionEvent::Dropped(DropReason::from_frame(&frame.payload))
            }
            Command::NotAuthenticated | Command::BadRequest => {
                self.ended = true;
                SubscriptionEvent::Dropped(DropReason::Refused(text()))
            }
            _ => return None,
        })
    }
}

impl Stream for Subscription {
    type Item = SubscriptionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(routed)) => {
                    if let Some(event) = self.map(routed) {
                        return Poll::Ready(Some(event));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.unsubscribe();
        }
    }
}

/// What a catch-up subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatchUpEvent {
    /// The next event of the stream.
    Event(Box<ResolvedEvent>),
    /// History is read; what follows is live (Extreme's `:caught_up`).
    CaughtUp,
    /// The subscription was cut (`ConnectionLost`: it resumes by itself) or ended.
    Dropped(DropReason),
}

/// A catch-up subscription; a `Stream` of [`CatchUpEvent`]s. Dropping it stops it.
#[derive(Debug)]
pub struct CatchUp {
    rx: mpsc::Receiver<CatchUpEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for CatchUp {
    type Item = CatchUpEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for CatchUp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribe first (live events wait in the subscription), read history from `next` to the
/// end, then pass on live events numbered `next` or later: nothing is missed between the
/// read and the subscription, and nothing is delivered twice. After a connection loss, the
/// same again from the first event not yet delivered.
async fn catch_up(
    connection: Connection,
    stream: String,
    mut next: i64,
    page: u32,
    tx: mpsc::Sender<CatchUpEvent>,
) {
    use futures_util::StreamExt;
    let stop = |reason: DropReason| CatchUpEvent::Dropped(reason);
    loop {
        let mut live = match connection.subscribe_to(Some(&stream), false).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(stop(DropReason::Refused(e.to_string()))).await;
                return;
            }
        };
        // History.
        loop {
            let slice = match connection
                .read_stream(&stream, next, page, ReadDirection::Forward, false)
                .await
            {
                Ok(s) => s,
                Err(Error::StreamDeleted(_)) => {
                    let _ = tx.send(stop(DropReason::StreamDeleted)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(stop(DropReason::Refused(e.to_string()))).await;
                    return;
                }
            };
            for e in slice.events {
                if let Some(n) = e.original_event_number() {
                    next = n as i64 + 1;
                }
                if tx.send(CatchUpEvent::Event(Box::new(e))).await.is_err() {
                    return;
                }
            }
            if slice.is_end_of_stream {
                break;
            }
        }
        if tx.send(CatchUpEvent::CaughtUp).await.is_err() {
            return;
        }
        // Live, skipping what history already delivered.
        loop {
            match live.next().await {
                Some(SubscriptionEvent::Event(e)) => {
                    let Some(n) = e.original_event_number() else {
                        continue;
                    };
                    if (n as i64) < next {
                        continue;
                    }
                    next = n as i64 + 1;
                    if tx.send(CatchUpEvent::Event(e)).await.is_err() {
                        return;
                    }
                }
                Some(SubscriptionEvent::Confirmed { .. }) => {}
                Some(SubscriptionEvent::Dropped(DropReason::ConnectionLost)) => {
                    if tx.send(stop(DropReason::ConnectionLost)).await.is_err() {
                        return;
                    }
                    // Start over from `next`: read the gap, then live again.
                    break;
                }
                Some(SubscriptionEvent::Dropped(reason)) => {
                    let _ = tx.send(stop(reason)).await;
                    return;
                }
                None => return,
            }
        }
    }
}

/// [`catch_up`] for `$all`: positions instead of event numbers.
async fn catch_up_all(
    connection: Connection,
    mut last: Option<Position>,
    page: u32,
    tx: mpsc::Sender<CatchUpEvent>,
) {
    use futures_util::StreamExt;
    let fresh = |e: &ResolvedEvent, last: Option<Position>| match (e.position, last) {
        (Some(p), Some(l)) => p > l,
        _ => true,
    };
    loop {
        let mut live = match connection.subscribe_to(None, false).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx
                    .send(CatchUpEvent::Dropped(DropReason::Refused(e.to_string())))
                    .await;
                return;
            }
        };
        let mut from = last.unwrap_or(Position::START);
        loop {
            let slice = match connection
                .read_all(from, page, ReadDirection::Forward, false)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx
                        .send(CatchUpEvent::Dropped(DropReason::Refused(e.to_string())))
                        .await;
                    return;
                }
            };
            for e in slice.events {
                if !fresh(&e, last) {
                    continue;
                }
                last = e.position.or(last);
                if tx.send(CatchUpEvent::Event(Box::new(e))).await.is_err() {
                    return;
                }
            }
            if slice.is_end || slice.next_position == from {
                break;
            }
            from = slice.next_position;
        }
        if tx.send(CatchUpEvent::CaughtUp).await.is_err() {
            return;
        }
        loop {
            match live.next().await {
                Some(SubscriptionEvent::Event(e)) => {
                    if !fresh(&e, last) {
                        continue;
                    }
                    last = e.position.or(last);
                    if tx.send(CatchUpEvent::Event(e)).await.is_err() {
                        return;
                    }
                }
                Some(SubscriptionEvent::Confirmed { .. }) => {}
                Some(SubscriptionEvent::Dropped(DropReason::ConnectionLost)) => {
                    if tx
                        .send(CatchUpEvent::Dropped(DropReason::ConnectionLost))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    break;
                }
                Some(SubscriptionEvent::Dropped(reason)) => {
                    let _ = tx.send(CatchUpEvent::Dropped(reason)).await;
                    return;
                }
                None => return,
            }
        }
    }
}
