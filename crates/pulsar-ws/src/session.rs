//! The IO-free sessions of the producer and the consumer/reader sockets: what to send, when
//! to ping, when a connection is dead, what a frame means — decided without a socket or a
//! clock. The tasks in `producer.rs` and `consumer.rs` are their drivers: they move frames,
//! re-arm one timer and hand results to the application (quinn-proto's shape:
//! `handle_*(…, now)` in, `poll_transmit` / `poll_timeout` / `poll_event` out).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use headwaters_ordering_core::{Keepalive, Liveness};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::DecodeError;
use crate::error::Error;
use crate::producer::PendingPolicy;
use crate::proto::{Command, ConsumerFrame, MessageId, Receipt, ReceivedMessage};

/// A frame for the driver to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Out {
    /// A JSON frame.
    Text(Utf8Bytes),
    /// A WebSocket ping.
    Ping,
}

/// Why a session's connection ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Lost {
    /// The server closed the socket.
    #[error("closed by the server")]
    Closed,
    /// A ping went unanswered.
    #[error("no answer to a ping within {0:?}")]
    PingTimeout(Duration),
    /// The socket failed.
    #[error(transparent)]
    Socket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// What every Pulsar socket shares: the keepalive and the frames to write.
#[derive(Debug)]
pub(crate) struct Link {
    ping_interval: Duration,
    pong_timeout: Duration,
    /// `None` while disconnected.
    keepalive: Option<Keepalive>,
    transmit: VecDeque<Out>,
    lost: Option<Lost>,
}

impl Link {
    pub(crate) fn new(ping_interval: Duration, pong_timeout: Duration) -> Self {
        Self {
            ping_interval,
            pong_timeout,
            keepalive: None,
            transmit: VecDeque::new(),
            lost: None,
        }
    }

    fn connected(&mut self, now: Instant) {
        self.keepalive = Some(Keepalive::new(self.ping_interval, self.pong_timeout, now));
        self.transmit.clear();
        self.lost = None;
    }

    fn is_connected(&self) -> bool {
        self.keepalive.is_some()
    }

    fn lose(&mut self, why: Lost) {
        if self.keepalive.take().is_some() {
            self.transmit.clear();
            self.lost = Some(why);
        }
    }

    fn send(&mut self, text: Utf8Bytes) {
        if self.is_connected() {
            self.transmit.push_back(Out::Text(text));
        }
    }

    /// Anything arrived from the server (a pong included).
    fn heard(&mut self) {
        if let Some(k) = &mut self.keepalive {
            k.heard();
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let Some(k) = &mut self.keepalive else {
            return;
        };
        match k.poll(now) {
            Liveness::Wait => {}
            Liveness::Probe => self.transmit.push_back(Out::Ping),
            Liveness::Dead(t) => self.lose(Lost::PingTimeout(t)),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.keepalive.as_ref().map(Keepalive::deadline)
    }
}

/// The sessions' common surface, for the drivers.
pub(crate) trait Session {
    /// The shared part.
    fn link(&mut self) -> &mut Link;

    /// Anything arrived from the server (a pong included).
    fn heard(&mut self) {
        self.link().heard();
    }

    /// The timer fired at `now`.
    fn handle_timeout(&mut self, now: Instant) {
        self.link().handle_timeout(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run, if ever.
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.link().poll_timeout()
    }

    /// The next frame to write.
    fn poll_transmit(&mut self) -> Option<Out> {
        self.link().transmit.pop_front()
    }

    /// Why the connection ended, once the session or the driver decided it has.
    fn poll_lost(&mut self) -> Option<Lost> {
        self.link().lost.take()
    }
}

struct Entry<T> {
    context: String,
    frame: Utf8Bytes,
    token: T,
}

/// A producer socket: sends pipelined and matched to receipts by context, resent in their
/// order (or failed) after a reconnect. `T` is the driver's token for a send (its reply
/// channel), handed back with the outcome.
pub(crate) struct ProducerSession<T> {
    link: Link,
    policy: PendingPolicy,
    /// By sequence number: the order they go out again.
    pending: BTreeMap<u64, Entry<T>>,
    /// Contexts the application chose (generated ones are the sequence number).
    by_context: HashMap<String, u64>,
    completed: VecDeque<(T, Result<MessageId, Error>)>,
}

impl<T> Session for ProducerSession<T> {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }
}

impl<T> ProducerSession<T> {
    pub(crate) fn new(link: Link, policy: PendingPolicy) -> Self {
        Self {
            link,
            policy,
            pending: BTreeMap::new(),
            by_context: HashMap::new(),
            completed: VecDeque::new(),
        }
    }

    /// A socket opened at `now`: what is pending goes out again, in its order.
    pub(crate) fn connected(&mut self, now: Instant) {
        self.link.connected(now);
        for entry in self.pending.values() {
            self.link.send(entry.frame.clone());
        }
    }

    /// The socket broke: pending sends wait for the next one, or fail
    /// ([`PendingPolicy::Fail`]).
    pub(crate) fn connection_lost(&mut self, why: Lost) {
        self.link.lose(why);
        if self.policy == PendingPolicy::Fail {
            self.fail_all(&Error::Disconnected);
        }
    }

    /// Fail every pending send with `error`.
    pub(crate) fn fail_all(&mut self, error: &Error) {
        self.by_context.clear();
        for (_, entry) in std::mem::take(&mut self.pending) {
            self.completed.push_back((entry.token, Err(error.clone())));
        }
    }

    /// Sends waiting for their receipt.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Send `frame` (publish `seq`, correlated by `context`): now, or once connected.
    pub(crate) fn send(&mut self, seq: u64, context: String, frame: Utf8Bytes, token: T) {
        if self.find(&context).is_some() {
            self.completed
                .push_back((token, Err(Error::DuplicateContext(context))));
            return;
        }
        self.link.send(frame.clone());
        if context != seq.to_string() {
            self.by_context.insert(context.clone(), seq);
        }
        self.pending.insert(
            seq,
            Entry {
                context,
                frame,
                token,
            },
        );
    }

    /// The pending send a context names.
    fn find(&self, context: &str) -> Option<u64> {
        if let Some(seq) = self.by_context.get(context) {
            return Some(*seq);
        }
        let seq = context.parse().ok()?;
        self.pending
            .get(&seq)
            .filter(|p| p.context == context)
            .map(|_| seq)
    }

    /// A JSON frame (a receipt) arrived.
    pub(crate) fn handle_text(&mut self, text: &str) {
        let receipt = match Receipt::decode(text) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "pulsar-ws producer: undecodable receipt");
                return;
            }
        };
        let Some(context) = receipt.context else {
            // send-error:3 carries no context: the server could not parse a frame. Ours are
            // generated JSON, so this means a server or proxy bug; nothing to correlate.
            tracing::error!(result = ?receipt.result, "pulsar-ws producer: receipt without context");
            return;
        };
        let Some(seq) = self.find(&context) else {
            tracing::debug!(%context, "pulsar-ws producer: receipt for no pending send");
            return;
        };
        self.by_context.remove(&context);
        if let Some(entry) = self.pending.remove(&seq) {
            self.completed
                .push_back((entry.token, receipt.result.map_err(Error::Send)));
        }
    }

    /// A send's outcome.
    pub(crate) fn poll_completed(&mut self) -> Option<(T, Result<MessageId, Error>)> {
        self.completed.pop_front()
    }
}

/// What a consumer socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The server pushes up to `receiverQueueSize` unacknowledged messages.
    Push,
    /// The client grants permits for the room in its buffer.
    Pull,
    /// A reader: it frees its slot for each message taken, and resumes after the last one.
    Reader,
}

/// One ack or nack on its way to the socket.
#[derive(Debug)]
pub(crate) struct Settle {
    pub(crate) id: MessageId,
    pub(crate) nack: bool,
    /// The connection the message came on ([`ANY_EPOCH`]: whichever is current).
    pub(crate) epoch: u64,
}

/// Any epoch: acks by id through a handle go out on the current connection.
pub(crate) const ANY_EPOCH: u64 = 0;

/// The number of a consumer's first connection.
pub(crate) const FIRST_CONNECTION: u64 = 1;

/// Settlements written at once when this many wait, without the grouping delay.
pub(crate) const ACK_BATCH: usize = 64;

/// What arrived on a consumer socket.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A message, on connection `epoch`.
    Message(ReceivedMessage, u64),
    /// The answer to `IsEndOfTopic`.
    EndOfTopic(bool),
    /// A frame that does not decode: reported, the stream goes on.
    Undecodable(DecodeError),
}

/// A consumer or reader socket: flow control (pull permits, push in-flight count, reader
/// slots), the resume position, grouped acks and the connection's epoch.
pub(crate) struct ConsumerSession {
    link: Link,
    kind: Kind,
    /// `receiverQueueSize`.
    queue: i64,
    /// The connection's number; acks of older connections are not sent in push mode.
    epoch: u64,
    /// Push: delivered minus acked/nacked on this socket (the server's counter).
    in_flight: i64,
    /// Pull: permits granted minus messages delivered on this socket.
    outstanding: i64,
    /// Reader: delivered minus slot-freeing frames sent on this socket.
    unfreed: i64,
    /// Reader: the last message delivered, where a new connection resumes.
    last_id: Option<MessageId>,
    /// Settlements waiting for the grouping delay.
    settlements: Vec<Settle>,
    flush_delay: Duration,
    flush_at: Option<Instant>,
    deliveries: VecDeque<Delivery>,
}

impl Session for ConsumerSession {
    fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.link.handle_timeout(now);
        if self.flush_at.is_some_and(|at| now >= at) {
            self.flush_settlements();
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let keepalive = self.link.poll_timeout()?;
        Some(self.flush_at.map_or(keepalive, |at| at.min(keepalive)))
    }
}

impl ConsumerSession {
    /// `queue`: `receiverQueueSize`; `flush_delay`: how long acks wait to be grouped.
    pub(crate) fn new(link: Link, kind: Kind, queue: u32, flush_delay: Duration) -> Self {
        Self {
            link,
            kind,
            queue: i64::from(queue),
            epoch: FIRST_CONNECTION,
            in_flight: 0,
            outstanding: 0,
            unfreed: 0,
            last_id: None,
            settlements: Vec::new(),
            flush_delay,
            flush_at: None,
            deliveries: VecDeque::new(),
        }
    }

    /// A socket opened at `now` (the server's counters start from zero).
    pub(crate) fn connected(&mut self, now: Instant) {
        self.link.connected(now);
        self.in_flight = 0;
        self.outstanding = 0;
        self.unfreed = 0;
    }

    /// The socket broke: a new epoch begins (messages of the old one are redelivered by
    /// the broker, their acks no longer count).
    pub(crate) fn connection_lost(&mut self, why: Lost) {
        if self.link.is_connected() {
            self.link.lose(why);
            self.epoch += 1;
        }
    }

    /// The current connection's number.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Reader: the message to resume after.
    pub(crate) fn last_id(&self) -> Option<&MessageId> {
        self.last_id.as_ref()
    }

    /// What the server counts against this consumer: unacked (push), granted and not
    /// delivered (pull), or delivered and not freed (reader).
    pub(crate) fn in_flight(&self) -> u64 {
        let n = match self.kind {
            Kind::Push => self.in_flight,
            Kind::Pull => self.outstanding,
            Kind::Reader => self.unfreed,
        };
        n.max(0) as u64
    }

    /// The application's buffer holds `buffered` messages: pull grants permits for the
    /// room, a reader frees the slots of what was taken.
    pub(crate) fn replenish(&mut self, buffered: u64) {
        if !self.link.is_connected() {
            return;
        }
        let buffered = buffered as i64;
        match self.kind {
            Kind::Pull => {
                // Up to `receiverQueueSize` messages granted and on their way, plus as many
                // again read and waiting for the application: the application never waits
                // for a grant's round trip while it works through what it has, and a slow
                // application still holds the broker back. Granted as soon as half the
                // window has room.
                let free = (2 * self.queue - buffered - self.outstanding)
                    .min(self.queue - self.outstanding);
                if free > 0 && (free >= self.queue / 2 || self.outstanding == 0) {
                    self.outstanding += free;
                    self.command(Command::Permit(free as u32));
                }
            }
            Kind::Reader => {
                let to_free = self.unfreed - buffered;
                if to_free > 0 {
                    let id = self.last_id.clone().unwrap_or_else(|| MessageId::new(""));
                    let frame = Utf8Bytes::from(Command::Ack(id).encode());
                    for _ in 0..to_free {
                        self.link.send(frame.clone());
                    }
                    self.unfreed -= to_free;
                }
            }
            Kind::Push => {}
        }
    }

    /// Send a command now (nothing while disconnected).
    pub(crate) fn command(&mut self, command: Command) {
        self.link.send(Utf8Bytes::from(command.encode()));
    }

    /// Acks and nacks from the application at `now`: written when a batch is full (or
    /// without a grouping delay), else when the delay has passed.
    pub(crate) fn settle(&mut self, batch: Vec<Settle>, now: Instant) {
        if batch.is_empty() {
            return;
        }
        self.settlements.extend(batch);
        if self.settlements.len() >= ACK_BATCH || self.flush_delay.is_zero() {
            self.flush_settlements();
        } else if self.flush_at.is_none() {
            self.flush_at = Some(now + self.flush_delay);
        }
    }

    /// Write the waiting acks and nacks now. Push mode: an ack or nack frees a server slot,
    /// so only those of messages that came on this connection go out (the broker
    /// redelivers the rest), which keeps the in-flight count exact. Readers send none.
    pub(crate) fn flush_settlements(&mut self) {
        self.flush_at = None;
        if !self.link.is_connected() {
            return; // they wait for the next connection
        }
        for Settle { id, nack, epoch } in std::mem::take(&mut self.settlements) {
            match self.kind {
                Kind::Reader => continue,
                Kind::Push if epoch != ANY_EPOCH && epoch != self.epoch => {
                    tracing::debug!(
                        "pulsar-ws: dropping the ack of a message from a previous connection"
                    );
                    continue;
                }
                Kind::Push => self.in_flight -= 1,
                Kind::Pull => {}
            }
            self.command(if nack {
                Command::Nack(id)
            } else {
                Command::Ack(id)
            });
        }
    }

    /// A JSON frame arrived.
    pub(crate) fn handle_text(&mut self, text: &str) {
        let delivery = match ConsumerFrame::decode(text) {
            Ok(ConsumerFrame::EndOfTopic(flag)) => Delivery::EndOfTopic(flag),
            Ok(ConsumerFrame::Message(m)) => {
                match self.kind {
                    Kind::Push => self.in_flight += 1,
                    Kind::Pull => self.outstanding -= 1,
                    Kind::Reader => {
                        self.unfreed += 1;
                        self.last_id = Some(m.message_id.clone());
                    }
                }
                Delivery::Message(m, self.epoch)
            }
            Err(e) => Delivery::Undecodable(e),
        };
        self.deliveries.push_back(delivery);
    }

    /// What arrived, in order.
    pub(crate) fn poll_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.pop_front()
    }
}

#[cfg(test)]
mod tests {
    //! In virtual time: nothing here sleeps.

    use super::*;

    const PING: Duration = Duration::from_secs(30);
    const PONG: Duration = Duration::from_secs(10);

    fn producer(policy: PendingPolicy) -> ProducerSession<u64> {
        ProducerSession::new(Link::new(PING, PONG), policy)
    }

    fn written<S: Session>(s: &mut S) -> Vec<Out> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn receipt(context: &str, id: &str) -> String {
        format!(r#"{{"result":"ok","messageId":"{id}","context":"{context}"}}"#)
    }

    #[test]
    fn receipts_complete_their_sends_by_context_in_any_order() {
        let t0 = Instant::now();
        let mut s = producer(PendingPolicy::Resend);
        s.connected(t0);
        s.send(1, "1".into(), "m1".into(), 1);
        s.send(2, "order-9".into(), "m2".into(), 2);
        assert_eq!(
            written(&mut s),
            [Out::Text("m1".into()), Out::Text("m2".into())]
        );
        s.handle_text(&receipt("order-9", "CAE="));
        s.handle_text(&receipt("1", "CAI="));
        s.handle_text(&receipt("1", "CAI=")); // a duplicate receipt is ignored
        let done: Vec<_> = std::iter::from_fn(|| s.poll_completed())
            .map(|(t, r)| (t, r.unwrap()))
            .collect();
        assert_eq!(
            done,
            [(2, MessageId::new("CAE=")), (1, MessageId::new("CAI="))]
        );
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_context_in_use_is_refused_and_a_failed_receipt_is_the_sends_error() {
        let t0 = Instant::now();
        let mut s = producer(PendingPolicy::Resend);
        s.connected(t0);
        s.send(1, "x".into(), "m1".into(), 1);
        s.send(2, "x".into(), "m2".into(), 2);
        assert!(
            matches!(s.poll_completed(), Some((2, Err(Error::DuplicateContext(c)))) if c == "x")
        );
        s.handle_text(r#"{"result":"send-error:8","errorMsg":"queue full","context":"x"}"#);
        assert!(matches!(s.poll_completed(), Some((1, Err(Error::Send(_))))));
    }

    #[test]
    fn after_a_reconnect_pending_sends_go_out_again_in_order_or_fail() {
        let t0 = Instant::now();
        let mut s = producer(PendingPolicy::Resend);
        for seq in [3, 1, 2] {
            s.send(seq, seq.to_string(), format!("m{seq}").into(), seq);
        }
        assert!(
            written(&mut s).is_empty(),
            "nothing goes out while disconnected"
        );
        s.connected(t0);
        let frames = written(&mut s);
        assert_eq!(frames, ["m1", "m2", "m3"].map(|m| Out::Text(m.into())));
        s.connection_lost(Lost::Closed);
        assert!(matches!(s.poll_lost(), Some(Lost::Closed)));
        s.connected(t0);
        assert_eq!(written(&mut s), frames);

        let mut s = producer(PendingPolicy::Fail);
        s.connected(t0);
        s.send(1, "1".into(), "m1".into(), 1);
        s.connection_lost(Lost::Closed);
        assert!(matches!(
            s.poll_completed(),
            Some((1, Err(Error::Disconnected)))
        ));
        s.connected(t0);
        assert!(written(&mut s).is_empty());
    }

    #[test]
    fn pings_every_interval_and_an_unanswered_one_loses_the_connection() {
        let t0 = Instant::now();
        let mut s = producer(PendingPolicy::Resend);
        assert_eq!(s.poll_timeout(), None, "no timer while disconnected");
        s.connected(t0);
        assert_eq!(s.poll_timeout(), Some(t0 + PING));
        s.handle_timeout(t0 + PING);
        assert_eq!(written(&mut s), [Out::Ping]);
        s.heard(); // the pong
        s.handle_timeout(t0 + PING * 2);
        assert_eq!(written(&mut s), [Out::Ping]);
        assert_eq!(s.poll_timeout(), Some(t0 + PING * 2 + PONG));
        s.handle_timeout(t0 + PING * 2 + PONG);
        assert!(matches!(s.poll_lost(), Some(Lost::PingTimeout(t)) if t == PONG));
        assert_eq!(s.poll_timeout(), None);
    }

    fn consumer(kind: Kind, queue: u32, flush: Duration) -> ConsumerSession {
        ConsumerSession::new(Link::new(PING, PONG), kind, queue, flush)
    }

    fn message(id: &str) -> String {
        format!(
            r#"{{"messageId":"{id}","payload":"aGVsbG8=","publishTime":"2021-10-29T16:01:38Z"}}"#
        )
    }

    fn commands(s: &mut ConsumerSession) -> Vec<String> {
        written(s)
            .into_iter()
            .map(|o| match o {
                Out::Text(t) => t.to_string(),
                Out::Ping => "ping".into(),
            })
            .collect()
    }

    fn permit(n: u32) -> String {
        Command::Permit(n).encode()
    }

    fn ack(id: &str) -> String {
        Command::Ack(MessageId::new(id)).encode()
    }

    fn settle(id: &str, epoch: u64) -> Settle {
        Settle {
            id: MessageId::new(id),
            nack: false,
            epoch,
        }
    }

    #[test]
    fn pull_grants_a_window_and_more_once_half_of_it_arrived_within_the_buffer_bound() {
        let t0 = Instant::now();
        let mut s = consumer(Kind::Pull, 10, Duration::ZERO);
        s.connected(t0);
        s.replenish(0);
        assert_eq!(commands(&mut s), [permit(10)]);
        for n in 0..4 {
            s.handle_text(&message(&format!("m{n}")));
        }
        s.replenish(4);
        assert!(commands(&mut s).is_empty(), "4 of 10 arrived: not yet half");
        s.handle_text(&message("m4"));
        s.replenish(5);
        assert_eq!(commands(&mut s), [permit(5)]);
        assert_eq!(s.in_flight(), 10);
        // The application takes nothing: at most a window read plus a window on its way.
        for n in 5..15 {
            s.handle_text(&message(&format!("m{n}")));
        }
        s.replenish(15);
        assert_eq!(commands(&mut s), [permit(5)]);
        for n in 15..20 {
            s.handle_text(&message(&format!("m{n}")));
        }
        s.replenish(20);
        assert!(
            commands(&mut s).is_empty(),
            "the buffer holds 2 windows: no grant"
        );
        let delivered = std::iter::from_fn(|| s.poll_delivery())
            .filter(|d| matches!(d, Delivery::Message(_, FIRST_CONNECTION)))
            .count();
        assert_eq!(delivered, 20);
    }

    #[test]
    fn push_acks_of_a_lost_connection_are_dropped_the_current_ones_sent() {
        let t0 = Instant::now();
        let mut s = consumer(Kind::Push, 10, Duration::ZERO);
        s.connected(t0);
        s.handle_text(&message("a"));
        s.handle_text(&message("b"));
        assert_eq!(s.in_flight(), 2);
        s.settle(vec![settle("a", FIRST_CONNECTION)], t0);
        assert_eq!(commands(&mut s), [ack("a")]);
        assert_eq!(s.in_flight(), 1);
        s.connection_lost(Lost::Closed);
        s.connection_lost(Lost::Closed); // counted once
        assert_eq!(s.epoch(), FIRST_CONNECTION + 1);
        // Settled while disconnected: held, then filtered by epoch.
        s.settle(
            vec![settle("b", FIRST_CONNECTION), settle("c", ANY_EPOCH)],
            t0,
        );
        assert!(commands(&mut s).is_empty());
        s.connected(t0);
        s.handle_text(&message("d"));
        assert!(matches!(s.poll_delivery(), Some(Delivery::Message(_, 1))));
        assert!(matches!(s.poll_delivery(), Some(Delivery::Message(_, 1))));
        assert!(
            matches!(s.poll_delivery(), Some(Delivery::Message(m, 2)) if m.message_id.as_str() == "d")
        );
        s.settle(vec![settle("d", 2)], t0);
        assert_eq!(commands(&mut s), [ack("c"), ack("d")]);
    }

    #[test]
    fn acks_wait_for_the_grouping_delay_or_a_full_batch() {
        let t0 = Instant::now();
        let delay = Duration::from_millis(10);
        let mut s = consumer(Kind::Pull, 1000, delay);
        s.connected(t0);
        s.replenish(0);
        commands(&mut s);
        s.settle(vec![settle("a", 1)], t0);
        s.settle(vec![settle("b", 1)], t0 + Duration::from_millis(5));
        assert!(commands(&mut s).is_empty());
        assert_eq!(s.poll_timeout(), Some(t0 + delay), "from the first ack");
        s.handle_timeout(t0 + delay);
        assert_eq!(commands(&mut s), [ack("a"), ack("b")]);
        assert_eq!(s.poll_timeout(), Some(t0 + PING));
        let batch: Vec<_> = (0..ACK_BATCH).map(|n| settle(&n.to_string(), 1)).collect();
        s.settle(batch, t0 + delay);
        assert_eq!(
            commands(&mut s).len(),
            ACK_BATCH,
            "a full batch goes at once"
        );
    }

    #[test]
    fn a_reader_frees_a_slot_per_message_taken_and_resumes_after_the_last() {
        let t0 = Instant::now();
        let mut s = consumer(Kind::Reader, 10, Duration::ZERO);
        s.connected(t0);
        s.replenish(0);
        assert!(commands(&mut s).is_empty());
        for id in ["a", "b", "c"] {
            s.handle_text(&message(id));
        }
        assert_eq!(s.last_id().map(MessageId::as_str), Some("c"));
        s.replenish(3);
        assert!(commands(&mut s).is_empty(), "nothing taken yet");
        s.replenish(1);
        assert_eq!(commands(&mut s), [ack("c"), ack("c")]);
        assert_eq!(s.in_flight(), 1);
        s.settle(vec![settle("a", 1)], t0);
        assert!(commands(&mut s).is_empty(), "readers acknowledge nothing");
    }

    #[test]
    fn an_undecodable_frame_is_reported_and_the_stream_goes_on() {
        let t0 = Instant::now();
        let mut s = consumer(Kind::Push, 10, Duration::ZERO);
        s.connected(t0);
        s.handle_text("{not json");
        s.handle_text(r#"{"endOfTopic":true}"#);
        s.handle_text(&message("a"));
        assert!(matches!(s.poll_delivery(), Some(Delivery::Undecodable(_))));
        assert!(matches!(
            s.poll_delivery(),
            Some(Delivery::EndOfTopic(true))
        ));
        assert!(matches!(s.poll_delivery(), Some(Delivery::Message(..))));
        assert_eq!(s.in_flight(), 1);
    }
}
