//! The handler contract (Mississippi's `DataUpdater.Handler`): [`Handler`], [`Outcome`],
//! [`StopAction`], [`TerminateReason`].

use std::fmt;
use std::future::Future;

use crate::message::{Key, Message};

/// Processes the messages of one key at a time, with per-key state.
///
/// The dispatcher calls `init` once per key before the first message (and again after a
/// failure), then `handle_message` for each message of that key in delivery order, never two
/// at once for the same key. Different keys run concurrently, so the handler is shared
/// (`&self`) and per-key data lives in [`Handler::State`].
///
/// Failure semantics:
///
/// | the handler…                      | the dispatcher…                                                   |
/// |-----------------------------------|-------------------------------------------------------------------|
/// | returns `Err` from `init`         | retries `init` with backoff; the key's messages wait, in order    |
/// | returns `Err` from `handle_message` | calls `terminate(Error)`, then gives the **same** message to a fresh handler (`init` again) after a backoff, up to the poison policy |
/// | panics                            | the same, without `terminate` (the state is gone)                 |
/// | returns [`Outcome::Stop`]         | settles the message per the action, calls `terminate(Stopped)`; the key's later messages go to a fresh handler, in order |
///
/// Every method has the `Send` futures a multi-threaded runtime needs; implement them with
/// `async fn`.
pub trait Handler: Send + Sync + 'static {
    /// Per-key state, created by [`init`](Handler::init).
    type State: Send + 'static;
    /// The argument of a continuation requested by [`Outcome`]'s `continue_with`.
    type Continue: Send + 'static;
    /// What [`handle_signal`](Handler::handle_signal) takes.
    type Signal: Send + 'static;
    /// What [`handle_signal`](Handler::handle_signal) answers.
    type Reply: Send + 'static;
    /// A handler failure; shown in logs.
    type Error: fmt::Display + Send + 'static;

    /// Start the handler for `key`.
    fn init(&self, key: &Key) -> impl Future<Output = Result<Self::State, Self::Error>> + Send;

    /// Process one message.
    fn handle_message(
        &self,
        message: &Message,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<Outcome<Self::Continue>, Self::Error>> + Send;

    /// Run a continuation after the message that asked for it was settled and before the next
    /// message of the key. An `Err` ends this handler (a fresh one takes the next message).
    fn handle_continue(
        &self,
        arg: Self::Continue,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (arg, state);
        async { Ok(()) }
    }

    /// Answer a signal sent with
    /// [`Dispatcher::signal`](crate::Dispatcher::signal). Runs between two messages of the
    /// key; there is no ordering guarantee relative to messages.
    fn handle_signal(
        &self,
        signal: Self::Signal,
        state: &mut Self::State,
    ) -> impl Future<Output = Self::Reply> + Send;

    /// Clean up before the state is dropped.
    fn terminate(
        &self,
        reason: TerminateReason,
        state: Self::State,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reason, state);
        async {}
    }
}

/// The short form of [`Handler`] for per-message processing without per-key state: one
/// method and an error type. Every `SimpleHandler` is a [`Handler`] (state: the key; no
/// continuations; signals answered with `()`), so it goes wherever a `Handler` does — the
/// [`Dispatcher`](crate::Dispatcher), AMQP's `Consumer::start`, Pulsar's and EventStore's
/// `run_ordered`. Per-key order, retries with a fresh handler and the poison policy are the
/// same; implement [`Handler`] itself for state kept across a key's messages, continuations
/// or signals.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use headwaters_ordering_core::{
///     Config, Delivery, Dispatcher, Key, Message, SimpleHandler, NoSettle, Outcome, Timestamp,
/// };
///
/// /// Remembers what it saw, per key.
/// #[derive(Clone, Default)]
/// struct Log(Arc<Mutex<Vec<String>>>);
///
/// impl SimpleHandler for Log {
///     type Error = std::convert::Infallible;
///
///     async fn handle(&self, key: &Key, message: &Message) -> Result<Outcome, Self::Error> {
///         let text = String::from_utf8_lossy(&message.payload);
///         self.0.lock().unwrap().push(format!("{key}:{text}"));
///         Ok(Outcome::ack())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let log = Log::default();
/// let dispatcher = Dispatcher::new(log.clone(), Config::default()).unwrap();
/// let epoch = dispatcher.new_epoch();
/// for (key, payload) in [("a", "1"), ("b", "1"), ("a", "2"), ("b", "2")] {
///     let message = Message::new(payload, "id", Timestamp::now());
///     let delivery = Delivery { key: Key::from(key), message, settle: NoSettle, epoch };
///     dispatcher.dispatch(delivery).await.unwrap();
/// }
/// while dispatcher.metrics().acked < 4 {
///     tokio::task::yield_now().await;
/// }
/// let seen = log.0.lock().unwrap().clone();
/// let of = |k: &str| seen.iter().filter(|s| s.starts_with(k)).cloned().collect::<Vec<_>>();
/// assert_eq!(of("a:"), ["a:1", "a:2"]);
/// assert_eq!(of("b:"), ["b:1", "b:2"]);
/// dispatcher.shutdown(std::time::Duration::from_secs(1)).await;
/// # }
/// ```
pub trait SimpleHandler: Send + Sync + 'static {
    /// A failure; the message goes to a fresh handler after a backoff (see [`Handler`]).
    type Error: fmt::Display + Send + 'static;

    /// Process one message of `key`.
    fn handle(
        &self,
        key: &Key,
        message: &Message,
    ) -> impl Future<Output = Result<Outcome, Self::Error>> + Send;
}

impl<T: SimpleHandler> Handler for T {
    type State = Key;
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = T::Error;

    async fn init(&self, key: &Key) -> Result<Key, Self::Error> {
        Ok(key.clone())
    }

    fn handle_message(
        &self,
        message: &Message,
        key: &mut Key,
    ) -> impl Future<Output = Result<Outcome, Self::Error>> + Send {
        self.handle(key, message)
    }

    async fn handle_signal(&self, (): (), _: &mut Key) {}
}

/// What a handler decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<C = ()> {
    /// Processed: the message is acked at its source.
    Ack {
        /// Run [`Handler::handle_continue`] with this after the ack.
        continue_with: Option<C>,
    },
    /// Not wanted: the message is rejected **without** requeue (dead-lettered where the source
    /// supports it) and the reason is logged.
    Discard {
        /// Why; logged at `warn`.
        reason: String,
        /// Run [`Handler::handle_continue`] with this after the reject.
        continue_with: Option<C>,
    },
    /// Settle the message per `action`, then terminate this handler. Later messages of the key
    /// are processed, in order, by a fresh handler.
    Stop {
        /// Why; passed to [`Handler::terminate`].
        reason: String,
        /// How the message itself is settled.
        action: StopAction,
    },
}

impl<C> Outcome<C> {
    /// Ack the message.
    pub const fn ack() -> Self {
        Self::Ack {
            continue_with: None,
        }
    }

    /// Reject the message without requeue.
    pub fn discard(reason: impl Into<String>) -> Self {
        Self::Discard {
            reason: reason.into(),
            continue_with: None,
        }
    }

    /// Settle the message per `action` and stop the handler.
    pub fn stop(reason: impl Into<String>, action: StopAction) -> Self {
        Self::Stop {
            reason: reason.into(),
            action,
        }
    }

    /// Ask for [`Handler::handle_continue`] after settling. A `Stop` has no continuation, so
    /// on `Stop` the argument is dropped.
    pub fn and_continue(self, arg: C) -> Self {
        match self {
            Self::Ack { .. } => Self::Ack {
                continue_with: Some(arg),
            },
            Self::Discard { reason, .. } => Self::Discard {
                reason,
                continue_with: Some(arg),
            },
            stop @ Self::Stop { .. } => stop,
        }
    }
}

/// How a stopping handler's last message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAction {
    /// Ack it.
    Ack,
    /// Reject it without requeue.
    Discard,
}

/// Why [`Handler::terminate`] is called.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TerminateReason {
    /// The handler returned [`Outcome::Stop`] with this reason.
    Stopped(String),
    /// The handler returned an error; a fresh handler retries the message.
    Error(String),
    /// The key was idle longer than the configured idle timeout.
    Idle,
    /// The dispatcher is shutting down.
    Shutdown,
    /// The source connection (epoch) that fed this state was lost. Meanwhile the broker may
    /// hand the key's messages to another consumer, so the state may be behind: it ends
    /// before the key's next message, which a fresh handler (`init`) takes.
    EpochLost,
}

impl fmt::Display for TerminateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped(r) => write!(f, "stopped: {r}"),
            Self::Error(e) => write!(f, "error: {e}"),
            Self::Idle => f.write_str("idle"),
            Self::Shutdown => f.write_str("shutdown"),
            Self::EpochLost => f.write_str("its source connection was lost"),
        }
    }
}
