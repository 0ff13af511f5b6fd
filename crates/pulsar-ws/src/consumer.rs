//! Consumers and readers as `Stream`s of [`Message`]s, with flow control and reconnection —
//! [`Consumer`], [`Reader`], [`ConsumerHandle`], [`ConsumerOptions`], [`ReaderOptions`].
//!
//! **Flow control.** A consumer runs in *pull mode* unless told otherwise: it grants the
//! server permits only for room in its own buffer — at most `receiverQueueSize` messages
//! granted and on their way plus as many read and not yet taken — so a slow application
//! slows the broker down instead of filling memory, and a fast one never waits for a grant. In *push mode* the server
//! keeps at most `receiverQueueSize` unacknowledged messages on the socket; every message
//! must then be acked or nacked or the stream stalls. Readers free their server slot when the
//! application takes a message from the stream.
//!
//! **Reconnection.** Any close, EOF, missed pong or 429/5xx/409 on upgrade reconnects with
//! backoff and jitter. A consumer re-subscribes (the broker redelivers what was not
//! acknowledged); a reader resumes after the last message it delivered.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::conn::{self, ClientConfig, Ws};
use crate::error::Error;
use crate::params::{ConsumerParams, MAX_RECEIVER_QUEUE_SIZE, ReaderParams, ReaderStart};
use crate::proto::{Command, MessageId, ReceivedMessage, ZonedTime};
use crate::session::{
    ACK_BATCH, ANY_EPOCH, ConsumerSession, Delivery, FIRST_CONNECTION, Kind, Lost, Session, Settle,
};
use crate::topic::Topic;

/// Consumer settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// The endpoint's query parameters. `pull_mode` defaults to `true` here (the server's
    /// default is push); set `Some(false)` for push mode.
    pub params: ConsumerParams,
    /// Acks and nacks are grouped and written together at most this long after the first
    /// one (or as soon as 64 are waiting), like the Java client's `acknowledgmentGroupTime`.
    /// Zero writes each batch at once. Default 1 ms.
    pub ack_flush_delay: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            params: ConsumerParams::default(),
            ack_flush_delay: Duration::from_millis(1),
        }
    }
}

impl ConsumerOptions {
    /// Options with these parameters.
    pub fn with_params(mut self, params: ConsumerParams) -> Self {
        self.params = params;
        self
    }

    /// Set the ack grouping delay.
    pub fn with_ack_flush_delay(mut self, delay: Duration) -> Self {
        self.ack_flush_delay = delay;
        self
    }
}

/// Reader settings.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReaderOptions {
    /// The endpoint's query parameters.
    pub params: ReaderParams,
}

impl ReaderOptions {
    /// Options with these parameters.
    pub fn with_params(mut self, params: ReaderParams) -> Self {
        self.params = params;
        self
    }
}

/// A received message, with its topic and a way to settle it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Message {
    /// The topic it came from.
    pub topic: Arc<Topic>,
    /// Its id.
    pub message_id: MessageId,
    /// The body, decoded.
    pub payload: Bytes,
    /// Its key, if it has one.
    pub key: Option<String>,
    /// Its properties.
    pub properties: BTreeMap<String, String>,
    /// When it was published, with the server's UTC offset.
    pub publish_time: ZonedTime,
    /// Its event time, if it has one.
    pub event_time: Option<ZonedTime>,
    /// How often it was redelivered.
    pub redelivery_count: u32,
    acker: Option<Acker>,
}

#[derive(Debug, Clone)]
struct Acker {
    settlements: Arc<Settlements>,
    epoch: u64,
}

/// Acks and nacks from the application, coalesced: the connection task is woken when the
/// first one arrives (to start the grouping timer) and when a batch is full, not for each.
#[derive(Debug, Default)]
struct Settlements {
    queue: std::sync::Mutex<Vec<Settle>>,
    wake: Notify,
}

impl Settlements {
    fn push(&self, settle: Settle) {
        let len = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push(settle);
            q.len()
        };
        if len == 1 || len == ACK_BATCH {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<Settle> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Message {
    fn new(topic: Arc<Topic>, m: ReceivedMessage, acker: Option<Acker>) -> Self {
        Self {
            topic,
            message_id: m.message_id,
            payload: m.payload,
            key: m.key,
            properties: m.properties,
            publish_time: m.publish_time,
            event_time: m.event_time,
            redelivery_count: m.redelivery_count,
            acker,
        }
    }

    /// A handle that settles this message later, without keeping the message.
    pub fn ack_handle(&self) -> AckHandle {
        AckHandle {
            id: self.message_id.clone(),
            acker: self.acker.clone(),
        }
    }

    /// Acknowledge it (consumers; a no-op for reader messages, which need none).
    pub fn ack(&self) {
        self.ack_handle().ack();
    }

    /// Ask for redelivery after the subscription's `negativeAckRedeliveryDelay`.
    pub fn nack(&self) {
        self.ack_handle().nack();
    }

    /// The number of the consumer connection it came on (0 for reader messages).
    pub(crate) fn connection(&self) -> u64 {
        self.acker.as_ref().map_or(0, |a| a.epoch)
    }
}

/// Settles one message: what [`Message::ack_handle`] returns.
#[derive(Debug, Clone)]
pub struct AckHandle {
    id: MessageId,
    acker: Option<Acker>,
}

impl AckHandle {
    /// The message's id.
    pub fn message_id(&self) -> &MessageId {
        &self.id
    }

    /// Acknowledge the message (a no-op for reader messages).
    pub fn ack(&self) {
        if let Some(a) = &self.acker {
            a.settlements.push(Settle {
                id: self.id.clone(),
                nack: false,
                epoch: a.epoch,
            });
        }
    }

    /// Negatively acknowledge the message.
    pub fn nack(&self) {
        if let Some(a) = &self.acker {
            a.settlements.push(Settle {
                id: self.id.clone(),
                nack: true,
                epoch: a.epoch,
            });
        }
    }
}

enum Ctl {
    EndOfTopic(oneshot::Sender<Result<bool, Error>>),
    Unsubscribe(oneshot::Sender<Result<(), Error>>),
    Close(oneshot::Sender<()>),
}

/// Counters of a consumer or reader connection.
#[derive(Debug)]
struct Counters {
    in_flight: AtomicU64,
    reconnects: AtomicU64,
    /// The number of the current connection (what [`Message::connection`] tells), changed
    /// as soon as the connection is lost.
    connection: watch::Sender<u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connection: watch::Sender::new(FIRST_CONNECTION),
        }
    }
}

/// A cloneable handle to a consumer: settle by id, ask for end of topic, unsubscribe,
/// close. (What Stargate's registry hands out for `:consumer_ack`.)
#[derive(Clone)]
pub struct ConsumerHandle {
    ctl: mpsc::UnboundedSender<Ctl>,
    settlements: Arc<Settlements>,
    counters: Arc<Counters>,
    topic: Arc<Topic>,
}

impl std::fmt::Debug for ConsumerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ConsumerHandle {
    /// Acknowledge by id.
    pub fn ack(&self, id: &MessageId) {
        self.settlements.push(Settle {
            id: id.clone(),
            nack: false,
            epoch: ANY_EPOCH,
        });
    }

    /// Negatively acknowledge by id.
    pub fn nack(&self, id: &MessageId) {
        self.settlements.push(Settle {
            id: id.clone(),
            nack: true,
            epoch: ANY_EPOCH,
        });
    }

    /// Whether the topic was terminated and everything in it was delivered.
    pub async fn is_end_of_topic(&self) -> Result<bool, Error> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::EndOfTopic(tx))
            .map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Delete the subscription and close. The server sends no answer; when other consumers
    /// are still attached it refuses by closing the socket, which ends the stream.
    pub async fn unsubscribe(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Unsubscribe(tx))
            .map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Close the connection; the stream ends after the messages already buffered.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Ctl::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Messages delivered on the current connection and not yet acked or nacked (push
    /// mode), or permits granted and not yet used (pull mode).
    pub fn in_flight(&self) -> u64 {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.counters.reconnects.load(Ordering::Relaxed)
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// Watches the number of the current connection: it changes as soon as a connection is
    /// lost, before the messages of the next one arrive.
    pub(crate) fn connection(&self) -> watch::Receiver<u64> {
        self.counters.connection.subscribe()
    }
}

/// A [`Reader`]'s cloneable handle: what a consumer's handle offers, without acks (a reader
/// has no cursor at the broker to acknowledge to).
#[derive(Clone, Debug)]
pub struct ReaderHandle(ConsumerHandle);

impl ReaderHandle {
    /// Whether the topic was terminated and everything in it was read.
    pub async fn is_end_of_topic(&self) -> Result<bool, Error> {
        self.0.is_end_of_topic().await
    }

    /// Close the connection; the stream ends after the messages already buffered.
    pub async fn close(&self) {
        self.0.close().await;
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.0.reconnects()
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        self.0.topic()
    }
}

type Item = Result<Message, Error>;

/// The receiving half shared by [`Consumer`] and [`Reader`]. The connection task hands
/// over everything one wake-up read as one batch; `buffered` counts the messages handed over
/// and not yet taken, which is the room flow control works with.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Vec<Item>>,
    local: VecDeque<Item>,
    buffered: Arc<AtomicU64>,
    taken: Arc<Notify>,
    /// Messages taken since the connection task was last told.
    untold: u32,
    /// Tell it after this many (a quarter of the queue), or when the buffer runs empty.
    tell_every: u32,
    handle: ConsumerHandle,
}

impl Inbox {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let item = loop {
            if let Some(item) = self.local.pop_front() {
                break item;
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.local.extend(batch),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        };
        self.buffered.fetch_sub(1, Ordering::Relaxed);
        // The task grants permits (or frees reader slots) for the room taken; waking it for
        // every message would cost more than the messages.
        self.untold += 1;
        if self.untold >= self.tell_every || self.local.is_empty() {
            self.untold = 0;
            self.taken.notify_one();
        }
        Poll::Ready(Some(item))
    }
}

/// A subscription's consumer: a `Stream` of messages to ack or nack.
///
/// ```no_run
/// # async fn demo() -> Result<(), headwaters_pulsar_ws::Error> {
/// use futures_util::StreamExt;
/// use headwaters_pulsar_ws::{ClientConfig, Consumer, ConsumerOptions, ConsumerParams, SubscriptionType, Topic};
/// let config = ClientConfig::new("ws://127.0.0.1:8080")?;
/// let mut params = ConsumerParams::default();
/// params.subscription_type = Some(SubscriptionType::KeyShared);
/// let options = ConsumerOptions::default().with_params(params);
/// let topic = Topic::persistent("public", "default", "orders")?;
/// let mut consumer = Consumer::subscribe(&config, topic, "billing", options).await?;
/// while let Some(message) = consumer.next().await {
///     let message = message?;
///     println!("{:?}: {:?}", message.key, message.payload);
///     message.ack();
/// }
/// # Ok(()) }
/// ```
pub struct Consumer {
    inbox: Inbox,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.inbox.handle.topic)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Subscribe. The first connection's errors (401, 409 for a busy exclusive
    /// subscription, 400 for a parameter the server refuses…) are returned here.
    pub async fn subscribe(
        config: &ClientConfig,
        topic: Topic,
        subscription: &str,
        options: ConsumerOptions,
    ) -> Result<Self, Error> {
        let mut params = options.params;
        let pull = *params.pull_mode.get_or_insert(true);
        let queue = params
            .receiver_queue_size
            .unwrap_or(MAX_RECEIVER_QUEUE_SIZE)
            .clamp(1, MAX_RECEIVER_QUEUE_SIZE);
        let query = params.query()?;
        let path = topic.consumer_path(subscription)?;
        let kind = if pull { Kind::Pull } else { Kind::Push };
        let inbox = start(
            config,
            topic,
            path,
            Query::Fixed(query),
            kind,
            queue,
            options.ack_flush_delay,
        )
        .await?;
        Ok(Self { inbox })
    }

    /// A cloneable handle for acks by id, end-of-topic checks, unsubscribe and close.
    pub fn handle(&self) -> ConsumerHandle {
        self.inbox.handle.clone()
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.inbox.handle.topic
    }

    /// See [`ConsumerHandle::is_end_of_topic`].
    pub async fn is_end_of_topic(&self) -> Result<bool, Error> {
        self.inbox.handle.is_end_of_topic().await
    }

    /// See [`ConsumerHandle::unsubscribe`].
    pub async fn unsubscribe(&self) -> Result<(), Error> {
        self.inbox.handle.unsubscribe().await
    }

    /// See [`ConsumerHandle::close`].
    pub async fn close(&self) {
        self.inbox.handle.close().await;
    }
}

impl Stream for Consumer {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbox.poll(cx)
    }
}

/// A reader: a `Stream` of a topic's messages from a start position, without a
/// subscription and without acks.
pub struct Reader {
    inbox: Inbox,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("topic", &self.inbox.handle.topic)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Open a reader. The server answers any failure to create it with HTTP 500.
    pub async fn open(
        config: &ClientConfig,
        topic: Topic,
        options: ReaderOptions,
    ) -> Result<Self, Error> {
        let params = options.params;
        params.query()?;
        let queue = params
            .receiver_queue_size
            .unwrap_or(MAX_RECEIVER_QUEUE_SIZE)
            .clamp(1, MAX_RECEIVER_QUEUE_SIZE);
        let path = topic.reader_path();
        let inbox = start(
            config,
            topic,
            path,
            Query::Reader(params),
            Kind::Reader,
            queue,
            Duration::ZERO,
        )
        .await?;
        Ok(Self { inbox })
    }

    /// A cloneable handle: end-of-topic checks, close, counters. It has no `ack`: a reader
    /// acknowledges nothing at the broker (it has no cursor), and frees its own window.
    pub fn handle(&self) -> ReaderHandle {
        ReaderHandle(self.inbox.handle.clone())
    }

    /// Whether the topic was terminated and everything in it was read.
    pub async fn is_end_of_topic(&self) -> Result<bool, Error> {
        self.inbox.handle.is_end_of_topic().await
    }

    /// Close the connection.
    pub async fn close(&self) {
        self.inbox.handle.close().await;
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.inbox.handle.topic
    }
}

impl Stream for Reader {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbox.poll(cx)
    }
}

enum Query {
    Fixed(String),
    /// Recomputed on reconnect to resume after the last delivered message.
    Reader(ReaderParams),
}

async fn start(
    config: &ClientConfig,
    topic: Topic,
    path: String,
    query: Query,
    kind: Kind,
    queue: u32,
    ack_flush_delay: Duration,
) -> Result<Inbox, Error> {
    let first_query = match &query {
        Query::Fixed(q) => q.clone(),
        Query::Reader(p) => p.query()?,
    };
    let ws = config.connect(&path, &first_query).await?;
    let (out, rx) = mpsc::unbounded_channel();
    let buffered = Arc::new(AtomicU64::new(0));
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let taken = Arc::new(Notify::new());
    let counters = Arc::new(Counters::default());
    let topic = Arc::new(topic);
    let settlements = Arc::new(Settlements::default());
    let handle = ConsumerHandle {
        ctl: ctl_tx,
        settlements: settlements.clone(),
        counters: counters.clone(),
        topic: topic.clone(),
    };
    let task = Task {
        session: ConsumerSession::new(config.link(), kind, queue, ack_flush_delay),
        config: config.clone(),
        path,
        query,
        kind,
        ctl: ctl_rx,
        out,
        buffered: buffered.clone(),
        batch: Vec::new(),
        taken: taken.clone(),
        counters,
        topic,
        waiters: VecDeque::new(),
        settlements,
    };
    tokio::spawn(task.run(ws));
    Ok(Inbox {
        rx,
        local: VecDeque::new(),
        buffered,
        taken,
        untold: 0,
        tell_every: (queue / 4).max(1),
        handle,
    })
}

/// The driver of a [`ConsumerSession`]: moves frames, re-arms the session's timer, hands
/// messages to the application and reconnects; the session decides the rest.
struct Task {
    config: ClientConfig,
    session: ConsumerSession,
    path: String,
    query: Query,
    kind: Kind,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    out: mpsc::UnboundedSender<Vec<Item>>,
    /// Messages handed to the application and not yet taken.
    buffered: Arc<AtomicU64>,
    /// What the current round read.
    batch: Vec<Item>,
    taken: Arc<Notify>,
    counters: Arc<Counters>,
    topic: Arc<Topic>,
    waiters: VecDeque<oneshot::Sender<Result<bool, Error>>>,
    settlements: Arc<Settlements>,
}

/// What the handles ask while the task reconnects: a close ends the wait (its ack left in
/// `ack`), as does every handle going away; what needs the connection is answered
/// [`Error::Disconnected`] rather than held until the server is back.
async fn until_closed(
    ctl: &mut mpsc::UnboundedReceiver<Ctl>,
    ack: &mut Option<oneshot::Sender<()>>,
) {
    while let Some(request) = ctl.recv().await {
        match request {
            Ctl::Close(close) => {
                *ack = Some(close);
                return;
            }
            Ctl::EndOfTopic(reply) => {
                let _ = reply.send(Err(Error::Disconnected));
            }
            Ctl::Unsubscribe(reply) => {
                let _ = reply.send(Err(Error::Disconnected));
            }
        }
    }
}

enum End {
    Closed(Option<oneshot::Sender<()>>),
    Lost(Lost),
    /// The application dropped the stream.
    Dropped,
}

impl Task {
    fn query(&self) -> Result<String, Error> {
        match &self.query {
            Query::Fixed(q) => Ok(q.clone()),
            Query::Reader(p) => {
                let mut p = p.clone();
                if let Some(id) = self.session.last_id() {
                    p.start = Some(ReaderStart::At(id.clone()));
                }
                Ok(p.query()?)
            }
        }
    }

    async fn run(mut self, first: Ws) {
        let mut ws = Some(first);
        let mut backoff = self.config.backoff();
        loop {
            let mut socket = match ws.take() {
                Some(s) => s,
                None => {
                    let mut close_ack = None;
                    let reconnected = match self.query() {
                        Ok(q) => {
                            let stop = until_closed(&mut self.ctl, &mut close_ack);
                            conn::reconnect(&self.config, &self.path, &q, &mut backoff, stop).await
                        }
                        Err(e) => Err(e),
                    };
                    match reconnected {
                        Ok(s) => {
                            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                            s
                        }
                        Err(Error::Closed) => {
                            // Closed, or every handle dropped, while the server was away.
                            self.fail_waiters(&Error::Closed);
                            if let Some(ack) = close_ack {
                                let _ = ack.send(());
                            }
                            return;
                        }
                        Err(e) => {
                            tracing::error!(endpoint = %self.path, error = %e, "pulsar-ws: giving up");
                            self.fail_waiters(&e);
                            self.buffered.fetch_add(1, Ordering::Relaxed);
                            let _ = self.out.send(vec![Err(e)]);
                            return;
                        }
                    }
                }
            };
            match self.session(&mut socket).await {
                End::Closed(ack) => {
                    let _ = socket.close(None).await;
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    return;
                }
                End::Dropped => {
                    self.session.settle(self.settlements.take(), conn::now());
                    self.session.flush_settlements();
                    let _ = conn::write_out(&mut socket, &mut self.session).await;
                    let _ = socket.close(None).await;
                    return;
                }
                End::Lost(reason) => {
                    // What the last round read still goes to the application.
                    if !self.hand_over() {
                        return;
                    }
                    tracing::warn!(endpoint = %self.path, %reason, "pulsar-ws: connection lost, reconnecting");
                    self.fail_waiters(&Error::Disconnected);
                    self.counters.connection.send_replace(self.session.epoch());
                }
            }
        }
    }

    fn fail_waiters(&mut self, e: &Error) {
        for w in self.waiters.drain(..) {
            let _ = w.send(Err(e.clone()));
        }
    }

    /// Messages sitting in the stream's buffer.
    fn buffered(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }

    async fn session(&mut self, ws: &mut Ws) -> End {
        self.session.connected(conn::now());
        self.session.replenish(self.buffered());
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        // The notifications are waited on by futures that live across loop turns and are
        // renewed only when they fire: registering a waiter on every turn would cost more
        // than the messages.
        let (settled, taken, out) = (
            self.settlements.clone(),
            self.taken.clone(),
            self.out.clone(),
        );
        let settled_wake = settled.wake.notified();
        tokio::pin!(settled_wake);
        let taken_wake = taken.notified();
        tokio::pin!(taken_wake);
        let dropped = out.closed();
        tokio::pin!(dropped);
        loop {
            if let Err(e) = conn::write_out(ws, &mut self.session).await {
                self.session.connection_lost(e);
            }
            if let Some(why) = self.session.poll_lost() {
                return End::Lost(why);
            }
            self.counters
                .in_flight
                .store(self.session.in_flight(), Ordering::Relaxed);
            conn::arm(timer.as_mut(), self.session.poll_timeout());
            tokio::select! {
                ctl = self.ctl.recv() => {
                    // Every handle is gone.
                    let Some(ctl) = ctl else { return End::Dropped };
                    if let Some(end) = self.control(ws, ctl).await {
                        return end;
                    }
                }
                () = &mut settled_wake => {
                    settled_wake.set(settled.wake.notified());
                    self.session.settle(self.settlements.take(), conn::now());
                }
                () = &mut taken_wake => {
                    taken_wake.set(taken.notified());
                    self.session.replenish(self.buffered());
                }
                frame = ws.next() => {
                    self.session.heard();
                    if let Err(why) = conn::read_round(ws, frame, |text| self.session.handle_text(text)) {
                        self.session.connection_lost(why);
                    }
                    self.deliver();
                    if !self.hand_over() {
                        return End::Dropped;
                    }
                    // Grant again as soon as half the window has arrived, without waiting
                    // for the application to take it (the buffer bound still holds).
                    if self.kind == Kind::Pull {
                        self.session.replenish(self.buffered());
                    }
                }
                () = &mut timer => self.session.handle_timeout(conn::now()),
                () = &mut dropped => return End::Dropped,
            }
        }
    }

    async fn control(&mut self, ws: &mut Ws, ctl: Ctl) -> Option<End> {
        match ctl {
            Ctl::EndOfTopic(reply) => {
                self.waiters.push_back(reply);
                self.session.command(Command::IsEndOfTopic);
                None
            }
            Ctl::Unsubscribe(reply) => {
                if self.kind == Kind::Reader {
                    let _ = reply.send(Err(Error::Config("readers have no subscription".into())));
                    return None;
                }
                self.session.command(Command::Unsubscribe);
                let sent = conn::write_out(ws, &mut self.session).await;
                let _ = reply.send(sent.map_err(|_| Error::Disconnected));
                Some(End::Closed(None))
            }
            Ctl::Close(ack) => {
                // Settlements made before the close go out first.
                self.session.settle(self.settlements.take(), conn::now());
                self.session.flush_settlements();
                let _ = conn::write_out(ws, &mut self.session).await;
                Some(End::Closed(Some(ack)))
            }
        }
    }

    /// What the session decoded joins the round's batch (answers go to their waiters).
    fn deliver(&mut self) {
        while let Some(delivery) = self.session.poll_delivery() {
            let item = match delivery {
                Delivery::EndOfTopic(flag) => {
                    if let Some(w) = self.waiters.pop_front() {
                        let _ = w.send(Ok(flag));
                    }
                    continue;
                }
                Delivery::Message(m, epoch) => {
                    let acker = (self.kind != Kind::Reader).then(|| Acker {
                        settlements: self.settlements.clone(),
                        epoch,
                    });
                    Ok(Message::new(self.topic.clone(), m, acker))
                }
                // Reported, not fatal: the stream goes on.
                Delivery::Undecodable(e) => Err(Error::Decode(e)),
            };
            self.batch.push(item);
        }
    }

    /// Hand the round's batch to the application; `false` when it dropped the stream.
    fn hand_over(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let batch = std::mem::take(&mut self.batch);
        self.buffered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.out.send(batch).is_ok()
    }
}
