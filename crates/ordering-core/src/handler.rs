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
}

impl fmt::Display for TerminateReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped(r) => write!(f, "stopped: {r}"),
            Self::Error(e) => write!(f, "error: {e}"),
            Self::Idle => f.write_str("idle"),
            Self::Shutdown => f.write_str("shutdown"),
        }
    }
}
