//! Subscriptions: volatile ([`Subscription`]) and catch-up ([`CatchUp`], Extreme's
//! `read_and_stay_subscribed`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::command::Command;
use crate::connection::{Connection, Routed};
use crate::error::Error;
use crate::frame::Frame;
use crate::types::{Links, Position, ReadDirection, ResolvedEvent};
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
    routes: Routes,
    request: Vec<u8>,
}

/// The frames of one subscription's correlation id, until it ends.
#[derive(Debug)]
pub(crate) struct Routes {
    rx: mpsc::UnboundedReceiver<Routed>,
    pub(crate) ended: bool,
}

/// What a subscription makes of a routed frame.
pub(crate) enum Step<T> {
    /// Nothing to yield.
    Skip,
    /// Yield this.
    Yield(T),
    /// Yield this, then end.
    End(T),
}

impl Routes {
    pub(crate) const fn new(rx: mpsc::UnboundedReceiver<Routed>) -> Self {
        Self { rx, ended: false }
    }

    /// The next item `step` makes of the routed frames; `None` once ended.
    pub(crate) fn poll_step<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(Routed) -> Step<T>,
    ) -> Poll<Option<T>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let Some(routed) = std::task::ready!(self.rx.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            match step(routed) {
                Step::Skip => {}
                Step::Yield(item) => return Poll::Ready(Some(item)),
                Step::End(item) => {
                    self.ended = true;
                    return Poll::Ready(Some(item));
                }
            }
        }
    }
}

/// Why a frame ends its subscription (see [`Command::ends_subscription`]).
pub(crate) fn ending(frame: &Frame) -> Option<DropReason> {
    if !frame.command.ends_subscription() {
        return None;
    }
    Some(if frame.command == Command::SubscriptionDropped {
        DropReason::from_frame(&frame.payload)
    } else {
        DropReason::Refused(String::from_utf8_lossy(&frame.payload).into_owned())
    })
}

impl Connection {
    /// Subscribe to `stream`, live (events from now on; for history first, see
    /// [`subscribe_to_stream_from`](Self::subscribe_to_stream_from)).
    pub async fn subscribe_to_stream(
        &self,
        stream: &str,
        links: Links,
    ) -> Result<Subscription, Error> {
        self.subscribe_to(Some(stream), links).await
    }

    /// Subscribe to `$all`, live (see
    /// [`subscribe_to_all_from`](Self::subscribe_to_all_from) for history first).
    pub async fn subscribe_to_all(&self, links: Links) -> Result<Subscription, Error> {
        self.subscribe_to(None, links).await
    }

    /// Subscribe to `stream` (`None`: `$all`), live.
    pub(crate) async fn subscribe_to(
        &self,
        stream: Option<&str>,
        links: Links,
    ) -> Result<Subscription, Error> {
        let request = wire::SubscribeToStream {
            event_stream_id: stream.unwrap_or_default().to_owned(),
            resolve_link_tos: links.resolve(),
        }
        .encode_to_vec();
        let (correlation, rx) = self.subscribe_raw(Command::SubscribeToStream, request.clone())?;
        Ok(Subscription {
            connection: self.clone(),
            correlation,
            routes: Routes::new(rx),
            request,
        })
    }
}

/// How a catch-up subscription reads: the page size while reading history and the most
/// live events it lets wait (Extreme's `ListenerWithBackPressure`): when more are waiting
/// the consumer is too slow for live delivery, so the subscription unsubscribes, yields
/// [`CatchUpEvent::FellBehind`], reads in pages again (memory stays bounded) and subscribes
/// anew once drained. A `u32` converts to the default with that page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatchUpSettings {
    /// Events per history page (1–4096; default 500).
    pub page_size: u32,
    /// Live events allowed to wait before falling back to paging (default 10,000, the .NET
    /// client's `MaxLiveQueueSize`).
    pub max_live_queue: usize,
    /// Deliver the events that link events (`$>`) point at, with the link beside them
    /// (Extreme's `read_and_stay_subscribed` `resolve_link_tos`): what category (`$ce-…`)
    /// and event-type (`$et-…`) streams need. Default off.
    pub resolve_link_tos: bool,
}

impl Default for CatchUpSettings {
    fn default() -> Self {
        Self {
            page_size: 500,
            max_live_queue: 10_000,
            resolve_link_tos: false,
        }
    }
}

impl CatchUpSettings {
    /// Events per history page.
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// Live events allowed to wait before falling back to paging.
    pub fn with_max_live_queue(mut self, max: usize) -> Self {
        self.max_live_queue = max.max(1);
        self
    }

    /// Resolve link events (see [`CatchUpSettings::resolve_link_tos`]).
    pub fn with_resolve_link_tos(mut self, resolve: bool) -> Self {
        self.resolve_link_tos = resolve;
        self
    }
}

impl From<u32> for CatchUpSettings {
    fn from(page_size: u32) -> Self {
        Self::default().with_page_size(page_size)
    }
}

impl Connection {
    /// A catch-up subscription to `stream`: every event after `last_processed` (`None` =
    /// from the start), read in pages, then live — with no gap and no duplicate at the
    /// switch, after a reconnect (it resumes after the last event it delivered) or after
    /// falling behind (see [`CatchUpSettings`]). [`CatchUpEvent::CaughtUp`] marks each
    /// switch to live. `settings` may be a page size.
    pub fn subscribe_to_stream_from(
        &self,
        stream: &str,
        last_processed: Option<u64>,
        settings: impl Into<CatchUpSettings>,
    ) -> CatchUp {
        let settings = settings.into();
        let cursor = StreamCursor {
            stream: stream.to_owned(),
            next: last_processed.map_or(0, |n| n + 1),
            links: Links::from_resolve(settings.resolve_link_tos),
        };
        CatchUp::spawn(self.clone(), cursor, settings)
    }

    /// A catch-up subscription to `$all`: every event after the position `last_processed`
    /// (`None` = from the start), in pages, then live — no gap and no duplicate at the
    /// switch, after a reconnect or after falling behind (events are compared by position).
    pub fn subscribe_to_all_from(
        &self,
        last_processed: Option<Position>,
        settings: impl Into<CatchUpSettings>,
    ) -> CatchUp {
        let settings = settings.into();
        let cursor = AllCursor {
            last: last_processed,
            from: last_processed.unwrap_or(Position::START),
            links: Links::from_resolve(settings.resolve_link_tos),
        };
        CatchUp::spawn(self.clone(), cursor, settings)
    }
}

impl Subscription {
    /// Events received and not yet taken from the stream.
    pub fn queued(&self) -> usize {
        self.routes.rx.len()
    }

    /// Subscribe again (Extreme's `FanoutListener` resubscribe): after an unsubscribe, a
    /// drop, or to skip what is queued. Live events from now on; a current subscription is
    /// ended first.
    pub fn resubscribe(&mut self) -> Result<(), Error> {
        if !self.routes.ended {
            self.unsubscribe()?;
        }
        let (correlation, rx) = self
            .connection
            .subscribe_raw(Command::SubscribeToStream, self.request.clone())?;
        self.correlation = correlation;
        self.routes = Routes::new(rx);
        Ok(())
    }

    /// Ask the server to end the subscription; the stream then yields
    /// `Dropped(Unsubscribed)` and ends.
    pub fn unsubscribe(&self) -> Result<(), Error> {
        self.connection.unsubscribe(self.correlation)
    }

    fn step(routed: Routed) -> Step<SubscriptionEvent> {
        let frame = match routed {
            Routed::Lost => {
                return Step::Yield(SubscriptionEvent::Dropped(DropReason::ConnectionLost));
            }
            Routed::Frame(f) => f,
        };
        if let Some(reason) = ending(&frame) {
            return Step::End(SubscriptionEvent::Dropped(reason));
        }
        match frame.command {
            Command::SubscriptionConfirmation => {
                match wire::SubscriptionConfirmation::decode(frame.payload) {
                    Ok(c) => Step::Yield(SubscriptionEvent::Confirmed {
                        last_commit_position: c.last_commit_position,
                        last_event_number: c.last_event_number,
                    }),
                    Err(_) => Step::Skip,
                }
            }
            Command::StreamEventAppeared => {
                let Ok(e) = wire::StreamEventAppeared::decode(frame.payload) else {
                    return Step::Skip;
                };
                let event = ResolvedEvent::from_all(e.event);
                if event
                    .original()
                    .is_some_and(|r| r.event_type == "$streamDeleted")
                {
                    Step::End(SubscriptionEvent::Dropped(DropReason::StreamDeleted))
                } else {
                    Step::Yield(SubscriptionEvent::Event(Box::new(event)))
                }
            }
            _ => Step::Skip,
        }
    }
}

impl Stream for Subscription {
    type Item = SubscriptionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.routes.poll_step(cx, Self::step)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.routes.ended {
            let _ = self.unsubscribe();
        }
    }
}

/// What a catch-up subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatchUpEvent {
    /// The next event.
    Event(Box<ResolvedEvent>),
    /// History is read; what follows is live (Extreme's `:caught_up`). Comes again after
    /// each fall-back to paging and after each reconnect.
    CaughtUp,
    /// Live events piled up beyond [`CatchUpSettings::max_live_queue`]: the subscription
    /// unsubscribed and reads in pages until it catches up again (nothing is lost).
    FellBehind,
    /// The subscription was cut (`ConnectionLost`: it resumes by itself) or ended.
    Dropped(DropReason),
}

/// A catch-up subscription; a `Stream` of [`CatchUpEvent`]s. Dropping it stops it.
#[derive(Debug)]
pub struct CatchUp {
    rx: mpsc::Receiver<CatchUpEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl CatchUp {
    fn spawn(connection: Connection, cursor: impl Cursor, settings: CatchUpSettings) -> Self {
        let page = settings.page_size.clamp(1, crate::ops::MAX_READ_COUNT);
        let (tx, rx) = mpsc::channel(page as usize * 2);
        let task = tokio::spawn(catch_up(
            connection,
            cursor,
            page,
            settings.max_live_queue,
            tx,
        ));
        Self { rx, task }
    }
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

/// What a catch-up subscription reads and how it recognises what it already delivered.
trait Cursor: Send + 'static {
    /// The stream to subscribe to (`None` = `$all`).
    fn stream(&self) -> Option<&str>;
    /// What reads and the subscription do with link events.
    fn links(&self) -> Links;
    /// Read the next page after what was delivered: the events and whether it was the end.
    fn page(
        &mut self,
        connection: &Connection,
        count: u32,
    ) -> impl Future<Output = Result<(Vec<ResolvedEvent>, bool), Error>> + Send;
    /// Whether `event` comes after everything delivered; if so it counts as delivered.
    fn advance(&mut self, event: &ResolvedEvent) -> bool;
    /// Start the next read pass just after the last delivered event.
    fn rewind(&mut self) {}
}

/// A stream, by event number.
struct StreamCursor {
    stream: String,
    /// The first event number not delivered.
    next: u64,
    links: Links,
}

impl Cursor for StreamCursor {
    fn stream(&self) -> Option<&str> {
        Some(&self.stream)
    }

    fn links(&self) -> Links {
        self.links
    }

    async fn page(
        &mut self,
        connection: &Connection,
        count: u32,
    ) -> Result<(Vec<ResolvedEvent>, bool), Error> {
        let slice = connection
            .read_stream(
                &self.stream,
                self.next,
                count,
                ReadDirection::Forward,
                self.links,
            )
            .await?;
        Ok((slice.events, slice.is_end_of_stream))
    }

    fn advance(&mut self, event: &ResolvedEvent) -> bool {
        match event.original_event_number() {
            Some(n) if n >= self.next => {
                self.next = n + 1;
                true
            }
            _ => false,
        }
    }
}

/// `$all`, by position.
struct AllCursor {
    /// The last delivered position.
    last: Option<Position>,
    /// Where the next page starts.
    from: Position,
    links: Links,
}

impl Cursor for AllCursor {
    fn stream(&self) -> Option<&str> {
        None
    }

    fn links(&self) -> Links {
        self.links
    }

    async fn page(
        &mut self,
        connection: &Connection,
        count: u32,
    ) -> Result<(Vec<ResolvedEvent>, bool), Error> {
        let slice = connection
            .read_all(self.from, count, ReadDirection::Forward, self.links)
            .await?;
        let end = slice.is_end || slice.next_position == self.from;
        self.from = slice.next_position;
        Ok((slice.events, end))
    }

    fn advance(&mut self, event: &ResolvedEvent) -> bool {
        let fresh = match (event.position, self.last) {
            (Some(p), Some(l)) => p > l,
            _ => true,
        };
        if fresh {
            self.last = event.position.or(self.last);
        }
        fresh
    }

    fn rewind(&mut self) {
        self.from = self.last.unwrap_or(Position::START);
    }
}

/// The subscription is over (ended, refused, or nobody listens any more).
struct Over;

/// Read pages from the cursor to the end, passing on what was not delivered yet.
async fn read_to_end(
    connection: &Connection,
    cursor: &mut impl Cursor,
    page: u32,
    tx: &mpsc::Sender<CatchUpEvent>,
) -> Result<(), Over> {
    cursor.rewind();
    loop {
        let (events, end) = match cursor.page(connection, page).await {
            Ok(p) => p,
            Err(e) => {
                let reason = match e {
                    Error::StreamDeleted(_) => DropReason::StreamDeleted,
                    other => DropReason::Refused(other.to_string()),
                };
                let _ = tx.send(CatchUpEvent::Dropped(reason)).await;
                return Err(Over);
            }
        };
        for e in events {
            if cursor.advance(&e) && tx.send(CatchUpEvent::Event(Box::new(e))).await.is_err() {
                return Err(Over);
            }
        }
        if end {
            return Ok(());
        }
    }
}

/// Live events the cursor has not seen, until the subscription is cut (`Ok`: start over)
/// or over.
async fn live(
    mut live: Subscription,
    cursor: &mut impl Cursor,
    max_live: usize,
    tx: &mpsc::Sender<CatchUpEvent>,
) -> Result<(), Over> {
    use futures_util::StreamExt;
    let pass_on = |event: CatchUpEvent| async move { tx.send(event).await.map_err(|_| Over) };
    while let Some(event) = live.next().await {
        match event {
            SubscriptionEvent::Event(e) => {
                if live.queued() > max_live {
                    // Too slow for live delivery: page instead, subscribe again later.
                    let _ = live.unsubscribe();
                    return pass_on(CatchUpEvent::FellBehind).await;
                }
                if cursor.advance(&e) {
                    pass_on(CatchUpEvent::Event(e)).await?;
                }
            }
            SubscriptionEvent::Confirmed { .. } => {}
            SubscriptionEvent::Dropped(DropReason::ConnectionLost) => {
                return pass_on(CatchUpEvent::Dropped(DropReason::ConnectionLost)).await;
            }
            SubscriptionEvent::Dropped(reason) => {
                let _ = pass_on(CatchUpEvent::Dropped(reason)).await;
                return Err(Over);
            }
        }
    }
    Err(Over)
}

/// History in pages (no subscription yet, so nothing piles up), then subscribe and read
/// the gap while live events wait in the subscription, then pass on live events the
/// cursor has not seen: nothing is missed between the read and the subscription, and
/// nothing is delivered twice. After a connection loss or when live events pile up beyond
/// `max_live`, the same again from the first event not yet delivered.
async fn catch_up(
    connection: Connection,
    mut cursor: impl Cursor,
    page: u32,
    max_live: usize,
    tx: mpsc::Sender<CatchUpEvent>,
) {
    loop {
        let pass: Result<(), Over> = async {
            read_to_end(&connection, &mut cursor, page, &tx).await?;
            let subscription = match connection
                .subscribe_to(cursor.stream(), cursor.links())
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx
                        .send(CatchUpEvent::Dropped(DropReason::Refused(e.to_string())))
                        .await;
                    return Err(Over);
                }
            };
            read_to_end(&connection, &mut cursor, page, &tx).await?;
            tx.send(CatchUpEvent::CaughtUp).await.map_err(|_| Over)?;
            live(subscription, &mut cursor, max_live, &tx).await
        }
        .await;
        if pass.is_err() {
            return;
        }
    }
}
