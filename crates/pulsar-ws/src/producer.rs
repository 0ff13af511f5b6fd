//! The producer: a cloneable handle on one persistent, pipelined connection —
//! [`Producer`], [`ProducerOptions`], [`SendFuture`], [`PendingPolicy`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::conn::{self, ClientConfig, Ws};
use crate::error::Error;
use crate::params::ProducerParams;
use crate::proto::{MessageId, OutgoingMessage};
use crate::session::{Lost, ProducerSession, Session};
use crate::topic::Topic;

/// What happens to sends still waiting for a receipt when the connection drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PendingPolicy {
    /// Send them again on the new connection (at-least-once: a message whose receipt was
    /// lost may be stored twice).
    #[default]
    Resend,
    /// Fail them with [`Error::Disconnected`] (at-most-once for those).
    Fail,
}

/// Producer settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProducerOptions {
    /// The endpoint's query parameters.
    pub params: ProducerParams,
    /// Sends waiting for a receipt, at most (keep it below the server's
    /// `maxPendingMessages`, 1000 by default, or it answers `send-error:8` "queue full").
    pub max_in_flight: usize,
    /// What happens to pending sends on a reconnect.
    pub on_disconnect: PendingPolicy,
    /// How long every send (`send`, `enqueue`, `send_with_callback`) may wait for its
    /// receipt, from the moment it is handed over, before it fails with
    /// [`Error::Timeout`] (the Java client's `sendTimeout`; default 30 s; `None`: no
    /// deadline). A send that timed out may still be stored: retrying may duplicate.
    pub send_timeout: Option<Duration>,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            params: ProducerParams::default(),
            max_in_flight: 1000,
            on_disconnect: PendingPolicy::Resend,
            send_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl ProducerOptions {
    /// Options with these parameters.
    pub fn with_params(mut self, params: ProducerParams) -> Self {
        self.params = params;
        self
    }

    /// Set the in-flight limit.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Set the reconnect policy for pending sends.
    pub fn with_on_disconnect(mut self, policy: PendingPolicy) -> Self {
        self.on_disconnect = policy;
        self
    }

    /// Set the deadline of every send (see [`ProducerOptions::send_timeout`]).
    pub fn with_send_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.send_timeout = timeout;
        self
    }
}

type Callback = Box<dyn FnOnce(Result<MessageId, Error>) + Send>;

enum Done {
    Future(oneshot::Sender<Result<MessageId, Error>>),
    Callback(Callback),
}

impl Done {
    fn complete(self, result: Result<MessageId, Error>) {
        match self {
            Self::Future(tx) => {
                let _ = tx.send(result);
            }
            Self::Callback(f) => f(result),
        }
    }
}

struct Pending {
    seq: u64,
    context: String,
    frame: Utf8Bytes,
    done: Done,
    _slot: OwnedSemaphorePermit,
}

enum Cmd {
    Send(Pending),
    Close(oneshot::Sender<()>),
}

struct Inner {
    tx: mpsc::UnboundedSender<Cmd>,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    seq: AtomicU64,
    topic: Topic,
    max_frame: usize,
    failure: Arc<Mutex<Option<Error>>>,
    runtime: tokio::runtime::Handle,
    send_timeout: Option<Duration>,
}

/// A producer on one topic. Clones share the connection; sends are pipelined and matched
/// to their receipts by context.
///
/// ```no_run
/// # async fn demo() -> Result<(), headwaters_pulsar_ws::Error> {
/// use headwaters_pulsar_ws::{ClientConfig, OutgoingMessage, Producer, ProducerOptions, Topic};
/// let config = ClientConfig::new("ws://127.0.0.1:8080")?;
/// let topic = Topic::persistent("public", "default", "orders")?;
/// let producer = Producer::connect(&config, topic, ProducerOptions::default()).await?;
/// let id = producer.send(("user-1", "created")).await?;
/// // Pipelined: enqueue many, then await the receipts.
/// let mut receipts = Vec::new();
/// for i in 0..100 {
///     receipts.push(producer.enqueue(OutgoingMessage::new(format!("event {i}"))).await?);
/// }
/// for r in receipts {
///     r.await?;
/// }
/// producer.close().await;
/// # let _ = id; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.inner.topic)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// Resolves to the message id when the broker's receipt arrives, or to
/// [`Error::Timeout`] once the send timeout has passed.
#[derive(Debug)]
#[must_use = "the receipt says whether the broker stored the message"]
pub struct SendFuture {
    receipt: oneshot::Receiver<Result<MessageId, Error>>,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
}

impl Future for SendFuture {
    type Output = Result<MessageId, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = Pin::new(&mut self.receipt).poll(cx) {
            return Poll::Ready(r.unwrap_or(Err(Error::Closed)));
        }
        if let Some((sleep, timeout)) = &mut self.deadline
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(Error::Timeout(*timeout)));
        }
        Poll::Pending
    }
}

impl Producer {
    /// Connect (the first connection's errors are returned here: a 401, a 409 for a taken
    /// producer name…) and start the connection task.
    pub async fn connect(
        config: &ClientConfig,
        topic: Topic,
        options: ProducerOptions,
    ) -> Result<Self, Error> {
        let query = options.params.query()?;
        Self::open(config, topic, query, options).await
    }

    /// [`connect`](Self::connect) with a ready-made query string (ad-hoc produce by URL).
    pub(crate) async fn open(
        config: &ClientConfig,
        topic: Topic,
        query: String,
        options: ProducerOptions,
    ) -> Result<Self, Error> {
        let path = topic.producer_path();
        let ws = config.connect(&path, &query).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let failure = Arc::new(Mutex::new(None));
        let task = Task {
            session: ProducerSession::new(config.link(), options.on_disconnect),
            config: config.clone(),
            path,
            query,
            rx,
            failure: failure.clone(),
        };
        tokio::spawn(task.run(ws));
        let max_in_flight = options.max_in_flight.max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                slots: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                seq: AtomicU64::new(1),
                topic,
                max_frame: config.max_frame,
                failure,
                runtime: tokio::runtime::Handle::current(),
                send_timeout: options.send_timeout,
            }),
        })
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.inner.topic
    }

    /// Sends waiting for their receipt.
    pub fn in_flight(&self) -> usize {
        self.inner
            .max_in_flight
            .saturating_sub(self.inner.slots.available_permits())
    }

    fn closed_error(&self) -> Error {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(Error::Closed)
    }

    async fn submit(&self, message: OutgoingMessage, done: Done) -> Result<(), Error> {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let context = message.context.clone().unwrap_or_else(|| seq.to_string());
        let frame = message.encode(&context);
        if frame.len() > self.inner.max_frame {
            return Err(Error::TooLarge {
                size: frame.len(),
                limit: self.inner.max_frame,
            });
        }
        let slot = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.closed_error())?;
        let pending = Pending {
            seq,
            context,
            frame: Utf8Bytes::from(frame),
            done,
            _slot: slot,
        };
        self.inner
            .tx
            .send(Cmd::Send(pending))
            .map_err(|_| self.closed_error())
    }

    /// Hand the message to the connection (waiting while `max_in_flight` sends are
    /// pending) and return a future for its receipt. Await many of these to pipeline.
    pub async fn enqueue(&self, message: impl Into<OutgoingMessage>) -> Result<SendFuture, Error> {
        let (tx, rx) = oneshot::channel();
        // The deadline runs from the hand-over, waiting for a slot included.
        let deadline = self
            .inner
            .send_timeout
            .map(|t| (Box::pin(tokio::time::sleep(t)), t));
        self.submit(message.into(), Done::Future(tx)).await?;
        Ok(SendFuture {
            receipt: rx,
            deadline,
        })
    }

    /// Send and wait for the receipt.
    pub async fn send(&self, message: impl Into<OutgoingMessage>) -> Result<MessageId, Error> {
        self.enqueue(message).await?.await
    }

    /// Send, and have `callback` called with the outcome — success **or** failure (Stargate
    /// calls its MFA only on success). The callback runs on the connection task: keep it
    /// short and non-blocking.
    pub async fn send_with_callback(
        &self,
        message: impl Into<OutgoingMessage>,
        callback: impl FnOnce(Result<MessageId, Error>) + Send + 'static,
    ) -> Result<(), Error> {
        let Some(timeout) = self.inner.send_timeout else {
            return self
                .submit(message.into(), Done::Callback(Box::new(callback)))
                .await;
        };
        // Whichever comes first — the receipt or the deadline — calls it, once.
        let once = Arc::new(Mutex::new(Some(callback)));
        let on_timeout = Arc::clone(&once);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let callback = on_timeout.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(callback) = callback {
                callback(Err(Error::Timeout(timeout)));
            }
        });
        let call = move |result| {
            let callback = once.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(callback) = callback {
                callback(result);
            }
        };
        self.submit(message.into(), Done::Callback(Box::new(call)))
            .await
    }

    /// Send from synchronous code and wait at most `timeout` for the receipt. Must not be
    /// called on a runtime thread ([`Error::BlockingInRuntime`]); the producer's runtime
    /// must be multi-threaded.
    pub fn send_blocking(
        &self,
        message: impl Into<OutgoingMessage>,
        timeout: Duration,
    ) -> Result<MessageId, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::BlockingInRuntime);
        }
        let message = message.into();
        self.inner.runtime.block_on(async {
            tokio::time::timeout(timeout, self.send(message))
                .await
                .unwrap_or(Err(Error::Timeout(timeout)))
        })
    }

    /// Wait for the pending receipts, then close the connection. Other clones fail with
    /// [`Error::Closed`] afterwards.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// What the session keeps for a send: where its outcome goes and its in-flight slot.
struct Waiter {
    done: Done,
    _slot: OwnedSemaphorePermit,
}

/// The driver of a [`ProducerSession`]: moves frames, re-arms the keepalive timer,
/// reconnects; the session decides the rest.
struct Task {
    config: ClientConfig,
    path: String,
    query: String,
    rx: mpsc::UnboundedReceiver<Cmd>,
    session: ProducerSession<Waiter>,
    failure: Arc<Mutex<Option<Error>>>,
}

/// Hand the outcomes `session` decided to their senders.
fn complete(session: &mut ProducerSession<Waiter>) {
    while let Some((waiter, result)) = session.poll_completed() {
        waiter.done.complete(result);
    }
}

fn submit(session: &mut ProducerSession<Waiter>, p: Pending) {
    let waiter = Waiter {
        done: p.done,
        _slot: p._slot,
    };
    session.send(p.seq, p.context, p.frame, waiter);
}

/// What the handles ask while the task reconnects: sends go to the session (sent once
/// connected, or failed as its policy says), a close ends the wait (its ack left in `ack`),
/// as does every handle going away.
async fn until_closed(
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    session: &mut ProducerSession<Waiter>,
    ack: &mut Option<oneshot::Sender<()>>,
) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Send(p) => {
                submit(session, p);
                complete(session);
            }
            Cmd::Close(close) => {
                *ack = Some(close);
                return;
            }
        }
    }
}

/// How a session on one socket ended.
enum End {
    /// Closed on request (or every handle is gone and nothing is pending).
    Closed(Option<oneshot::Sender<()>>),
    /// The socket broke.
    Lost(Lost),
}

impl Task {
    async fn run(mut self, first: Ws) {
        let mut ws = Some(first);
        let mut backoff = self.config.backoff();
        let mut close_ack = None;
        loop {
            let mut socket = match ws.take() {
                Some(s) => s,
                None => {
                    let stop = until_closed(&mut self.rx, &mut self.session, &mut close_ack);
                    let reconnected =
                        conn::reconnect(&self.config, &self.path, &self.query, &mut backoff, stop)
                            .await;
                    match reconnected {
                        Ok(s) => s,
                        Err(Error::Closed) => {
                            // Closed, or every handle dropped, while the server was away: what
                            // is pending fails rather than waiting for the outage to end.
                            self.give_up(Error::Closed);
                            if let Some(ack) = close_ack.take() {
                                let _ = ack.send(());
                            }
                            return;
                        }
                        Err(e) => {
                            tracing::error!(endpoint = %self.path, error = %e, "pulsar-ws producer: giving up");
                            self.give_up(e);
                            return;
                        }
                    }
                }
            };
            match self.session(&mut socket).await {
                End::Closed(ack) => {
                    let _ = socket.close(None).await;
                    self.give_up(Error::Closed);
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    return;
                }
                End::Lost(reason) => {
                    tracing::warn!(endpoint = %self.path, %reason, pending = self.session.in_flight(), "pulsar-ws producer: connection lost");
                    self.complete();
                }
            }
        }
    }

    /// Hand the outcomes the session decided to their senders.
    fn complete(&mut self) {
        complete(&mut self.session);
    }

    /// Fail everything pending and queued; later sends get `error`.
    fn give_up(&mut self, error: Error) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
        self.rx.close();
        self.session.fail_all(&error);
        self.complete();
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Cmd::Send(p) => p.done.complete(Err(error.clone())),
                Cmd::Close(ack) => {
                    let _ = ack.send(());
                }
            }
        }
    }

    fn submit(&mut self, p: Pending) {
        submit(&mut self.session, p);
    }

    async fn session(&mut self, ws: &mut Ws) -> End {
        self.session.connected(conn::now());
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut closing: Option<Option<oneshot::Sender<()>>> = None;
        loop {
            if let Err(e) = conn::write_out(ws, &mut self.session).await {
                self.session.connection_lost(e);
            }
            self.complete();
            if let Some(why) = self.session.poll_lost() {
                return End::Lost(why);
            }
            if let Some(ack) = closing.take_if(|_| self.session.in_flight() == 0) {
                return End::Closed(ack);
            }
            conn::arm(timer.as_mut(), self.session.poll_timeout());
            tokio::select! {
                cmd = self.rx.recv(), if closing.is_none() => match cmd {
                    None => closing = Some(None),
                    Some(Cmd::Close(ack)) => closing = Some(Some(ack)),
                    Some(Cmd::Send(p)) => {
                        self.submit(p);
                        for _ in 1..conn::DRAIN {
                            match self.rx.try_recv() {
                                Ok(Cmd::Send(p)) => self.submit(p),
                                Ok(Cmd::Close(ack)) => {
                                    closing = Some(Some(ack));
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                },
                frame = ws.next() => {
                    self.session.heard();
                    if let Err(why) = conn::read_round(ws, frame, |text| self.session.handle_text(text)) {
                        self.session.connection_lost(why);
                    }
                }
                () = &mut timer => self.session.handle_timeout(conn::now()),
            }
        }
    }
}
