//! The emulated broker behind the WebSocket handlers: topics, subscriptions, dispatch and
//! flow control. Synchronous and IO-free: connections are numbers with an outbound queue,
//! and the server module moves frames between them and the sockets.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::mpsc::UnboundedSender;

use super::wire::{self, ConsumerCommand, ConsumerMessage, Position, ProducerAck, ProducerMessage};

/// Connection number.
pub(crate) type ConnId = u64;

/// A text frame for a connection. Sockets are closed by returning `false` from the frame
/// handlers, never with a close code: the Java handler's codes 1–8 are not valid WebSocket
/// codes, so Jetty never sends them.
pub(crate) type Out = String;

/// How a subscription spreads messages over its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubKind {
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

impl SubKind {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "Exclusive" => Self::Exclusive,
            "Shared" => Self::Shared,
            "Failover" => Self::Failover,
            "Key_Shared" => Self::KeyShared,
            _ => return None,
        })
    }

    fn honours_delay(self) -> bool {
        matches!(self, Self::Shared | Self::KeyShared)
    }

    /// Whether the broker counts redeliveries (and so dead-letters): only the shared
    /// dispatchers have a redelivery tracker; Exclusive and Failover report 0 however often
    /// a message comes back (seen against a Pulsar 4.2 broker).
    fn tracks_redeliveries(self) -> bool {
        matches!(self, Self::Shared | Self::KeyShared)
    }
}

/// A consumer as its upgrade request configured it.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSpec {
    pub(crate) topic: String,
    pub(crate) subscription: String,
    pub(crate) kind: SubKind,
    pub(crate) durable: bool,
    pub(crate) earliest: bool,
    pub(crate) pull: bool,
    pub(crate) queue: i64,
    pub(crate) ack_timeout: Option<Duration>,
    pub(crate) nack_delay: Duration,
    pub(crate) max_redeliver: u32,
    pub(crate) dead_letter_topic: Option<String>,
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReaderStart {
    Earliest,
    Latest,
    After(Position),
}

/// Why an endpoint could not be opened: the HTTP status of the upgrade response.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: u16,
    pub(crate) body: String,
}

fn refused(status: u16, body: impl Into<String>) -> Refused {
    Refused {
        status,
        body: body.into(),
    }
}

/// A message as the emulator stores it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// The key, if it had one.
    pub key: Option<String>,
    /// The payload, decoded.
    pub payload: Vec<u8>,
    /// Its properties.
    pub properties: BTreeMap<String, String>,
    payload_b64: String,
    key_hash: u32,
    publish_time: String,
    event_time: Option<String>,
    deliver_at: Option<Instant>,
}

#[derive(Debug)]
struct TopicLog {
    ledger: u64,
    entries: Vec<StoredMessage>,
    terminated: bool,
    subs: BTreeMap<String, Sub>,
}

#[derive(Debug)]
struct Unacked {
    consumer: ConnId,
    deadline: Option<Instant>,
    key_hash: u32,
}

/// A subscription's messages delivered and not yet acknowledged, with how many of each key
/// hash each consumer holds: what Key_Shared's draining hashes are computed from.
#[derive(Debug, Default)]
struct Pending {
    by_entry: HashMap<u64, Unacked>,
    by_hash: HashMap<u32, Vec<(ConnId, u32)>>,
}

impl Pending {
    fn insert(&mut self, entry: u64, u: Unacked) {
        let holders = self.by_hash.entry(u.key_hash).or_default();
        match holders.iter_mut().find(|(c, _)| *c == u.consumer) {
            Some((_, n)) => *n += 1,
            None => holders.push((u.consumer, 1)),
        }
        if let Some(old) = self.by_entry.insert(entry, u) {
            self.forget(&old);
        }
    }

    fn remove(&mut self, entry: u64) -> Option<Unacked> {
        let u = self.by_entry.remove(&entry)?;
        self.forget(&u);
        Some(u)
    }

    fn forget(&mut self, u: &Unacked) {
        let Some(holders) = self.by_hash.get_mut(&u.key_hash) else {
            return;
        };
        if let Some(i) = holders.iter().position(|(c, _)| *c == u.consumer) {
            holders[i].1 -= 1;
            if holders[i].1 == 0 {
                holders.swap_remove(i);
            }
        }
        if holders.is_empty() {
            self.by_hash.remove(&u.key_hash);
        }
    }

    fn len(&self) -> usize {
        self.by_entry.len()
    }

    /// Whether a consumer other than `consumer` holds messages of this key hash.
    fn held_elsewhere(&self, key_hash: u32, consumer: ConnId) -> bool {
        self.by_hash
            .get(&key_hash)
            .is_some_and(|holders| holders.iter().any(|(c, _)| *c != consumer))
    }
}

#[derive(Debug)]
struct Sub {
    kind: SubKind,
    durable: bool,
    /// Entries waiting to be dispatched (new and redelivered), in order.
    ready: BTreeSet<u64>,
    /// Entries waiting for a redelivery time.
    scheduled: Vec<(Instant, u64)>,
    unacked: Pending,
    redeliveries: HashMap<u64, u32>,
    consumers: Vec<ConnId>,
    next_shared: usize,
}

#[derive(Debug)]
struct Consumer {
    tx: UnboundedSender<Out>,
    spec: ConsumerSpec,
    /// Push mode: messages delivered and not yet acked or nacked on this socket.
    in_flight: i64,
    /// Pull mode: permits granted minus messages delivered.
    permits: i64,
}

impl Consumer {
    fn has_room(&self) -> bool {
        if self.spec.pull {
            self.permits > 0
        } else {
            self.in_flight < self.spec.queue.max(1)
        }
    }
}

#[derive(Debug)]
struct Reader {
    tx: UnboundedSender<Out>,
    topic: String,
    next: u64,
    queue: i64,
    in_flight: i64,
}

#[derive(Debug)]
struct Producer {
    tx: UnboundedSender<Out>,
    topic: String,
    name: Option<String>,
}

/// The broker's state.
#[derive(Debug)]
pub(crate) struct Broker {
    topics: HashMap<String, TopicLog>,
    consumers: HashMap<ConnId, Consumer>,
    readers: HashMap<ConnId, Reader>,
    producers: HashMap<ConnId, Producer>,
    next_ledger: u64,
    fail_next_sends: u32,
    pub(crate) auto_create: bool,
    pub(crate) time_offset: UtcOffset,
}

impl Broker {
    pub(crate) fn new(auto_create: bool, time_offset: UtcOffset) -> Self {
        Self {
            topics: HashMap::new(),
            consumers: HashMap::new(),
            readers: HashMap::new(),
            producers: HashMap::new(),
            next_ledger: 1,
            fail_next_sends: 0,
            auto_create,
            time_offset,
        }
    }

    fn topic(&mut self, name: &str) -> Result<&mut TopicLog, Refused> {
        if !self.topics.contains_key(name) {
            if !self.auto_create {
                return Err(refused(404, format!("Topic {name} does not exist")));
            }
            self.create_topic(name);
        }
        Ok(self.topics.get_mut(name).expect("just created"))
    }

    pub(crate) fn create_topic(&mut self, name: &str) {
        if !self.topics.contains_key(name) {
            let ledger = self.next_ledger;
            self.next_ledger += 1;
            self.topics.insert(
                name.to_owned(),
                TopicLog {
                    ledger,
                    entries: Vec::new(),
                    terminated: false,
                    subs: BTreeMap::new(),
                },
            );
        }
    }

    pub(crate) fn terminate(&mut self, name: &str) {
        if let Ok(t) = self.topic(name) {
            t.terminated = true;
        }
    }

    pub(crate) fn fail_next_sends(&mut self, n: u32) {
        self.fail_next_sends = n;
    }

    pub(crate) fn messages(&self, name: &str) -> Vec<StoredMessage> {
        self.topics
            .get(name)
            .map(|t| t.entries.clone())
            .unwrap_or_default()
    }

    /// Messages of the subscription not yet acknowledged.
    pub(crate) fn backlog(&self, topic: &str, subscription: &str) -> Option<usize> {
        let sub = self.topics.get(topic)?.subs.get(subscription)?;
        Some(sub.ready.len() + sub.scheduled.len() + sub.unacked.len())
    }

    /// Messages delivered to the subscription's consumers and not yet acknowledged.
    pub(crate) fn unacked(&self, topic: &str, subscription: &str) -> Option<usize> {
        Some(
            self.topics
                .get(topic)?
                .subs
                .get(subscription)?
                .unacked
                .len(),
        )
    }

    // ---- producers ----

    pub(crate) fn add_producer(
        &mut self,
        conn: ConnId,
        tx: UnboundedSender<Out>,
        topic: &str,
        name: Option<String>,
    ) -> Result<(), Refused> {
        let log = self.topic(topic)?;
        if log.terminated {
            return Err(refused(
                503,
                format!("Topic {topic} was already terminated"),
            ));
        }
        if let Some(n) = &name
            && self
                .producers
                .values()
                .any(|p| p.topic == topic && p.name.as_ref() == Some(n))
        {
            return Err(refused(
                409,
                format!("Producer with name '{n}' is already connected to topic"),
            ));
        }
        self.producers.insert(
            conn,
            Producer {
                tx,
                topic: topic.to_owned(),
                name,
            },
        );
        Ok(())
    }

    /// The outbound queue of a producer socket.
    pub(crate) fn producer_sender(&self, conn: ConnId) -> Option<UnboundedSender<Out>> {
        self.producers.get(&conn).map(|p| p.tx.clone())
    }

    /// Handle a publish frame; returns the receipt.
    pub(crate) fn publish(&mut self, conn: ConnId, text: &str) -> String {
        let Some(topic) = self.producers.get(&conn).map(|p| p.topic.clone()) else {
            return String::new();
        };
        let Ok(frame) = serde_json::from_str::<ProducerMessage<'_>>(text) else {
            return error_receipt(None, 3, "Failed to deserialize from JSON");
        };
        let context = frame.context.as_deref();
        let Some(payload_b64) = frame.payload.as_deref() else {
            return error_receipt(context, 7, "Invalid payload encoding: payload is null");
        };
        let Ok(payload) = BASE64.decode(payload_b64.as_bytes()) else {
            return error_receipt(context, 7, "Invalid payload encoding");
        };
        let event_time = match frame.event_time.as_deref() {
            None => None,
            Some(t) => match wire::parse_time(t) {
                Some(t) => Some(wire::format_time(t, self.time_offset)),
                None => return error_receipt(context, 7, "Invalid event time"),
            },
        };
        if self.fail_next_sends > 0 {
            self.fail_next_sends -= 1;
            return error_receipt(
                context,
                8,
                "org.apache.pulsar.client.api.PulsarClientException$TimeoutException: emulated send failure",
            );
        }
        let now = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let deliver_at = frame
            .deliver_at
            .filter(|ms| *ms > 0)
            .map(|ms| {
                let ahead = ms.saturating_sub((wall.unix_timestamp_nanos() / 1_000_000) as i64);
                now + Duration::from_millis(ahead.max(0) as u64)
            })
            .or_else(|| {
                frame
                    .deliver_after_ms
                    .filter(|ms| *ms > 0)
                    .map(|ms| now + Duration::from_millis(ms as u64))
            });
        let offset = self.time_offset;
        let Some(log) = self.topics.get_mut(&topic) else {
            return error_receipt(context, 8, "topic deleted");
        };
        if log.terminated {
            return error_receipt(
                context,
                8,
                "org.apache.pulsar.client.api.PulsarClientException$TopicTerminatedException: Topic was already terminated",
            );
        }
        let entry = log.entries.len() as u64;
        log.entries.push(StoredMessage {
            key_hash: key_hash(frame.key.as_deref().unwrap_or("")),
            key: frame.key.map(Cow::into_owned),
            payload_b64: BASE64.encode(&payload),
            payload,
            properties: frame.properties.into_owned(),
            publish_time: wire::format_time(wall, offset),
            event_time,
            deliver_at,
        });
        for sub in log.subs.values_mut() {
            sub.ready.insert(entry);
        }
        let id = Position {
            ledger: log.ledger,
            entry,
        };
        let mut ack = ProducerAck::new("ok");
        ack.message_id = Some(id.encode().into());
        ack.context = context.map(Cow::Borrowed);
        let receipt = wire::to_json(&ack);
        self.dispatch(&topic);
        receipt
    }

    // ---- consumers ----

    pub(crate) fn add_consumer(
        &mut self,
        conn: ConnId,
        tx: UnboundedSender<Out>,
        spec: ConsumerSpec,
    ) -> Result<(), Refused> {
        let log = self.topic(&spec.topic)?;
        let len = log.entries.len() as u64;
        let sub = log
            .subs
            .entry(spec.subscription.clone())
            .or_insert_with(|| Sub {
                kind: spec.kind,
                durable: spec.durable,
                ready: if spec.earliest {
                    (0..len).collect()
                } else {
                    BTreeSet::new()
                },
                scheduled: Vec::new(),
                unacked: Pending::default(),
                redeliveries: HashMap::new(),
                consumers: Vec::new(),
                next_shared: 0,
            });
        if sub.kind != spec.kind {
            return Err(refused(
                409,
                format!(
                    "Subscription {} is of a different type: {:?}",
                    spec.subscription, sub.kind
                ),
            ));
        }
        if sub.kind == SubKind::Exclusive && !sub.consumers.is_empty() {
            return Err(refused(
                409,
                format!(
                    "Exclusive consumer is already connected to {}",
                    spec.subscription
                ),
            ));
        }
        sub.consumers.push(conn);
        let topic = spec.topic.clone();
        self.consumers.insert(
            conn,
            Consumer {
                tx,
                spec,
                in_flight: 0,
                permits: 0,
            },
        );
        self.dispatch(&topic);
        Ok(())
    }

    /// A frame from a consumer socket. Returns `false` when the socket must be closed.
    pub(crate) fn consumer_frame(&mut self, conn: ConnId, text: &str) -> bool {
        let Ok(cmd) = serde_json::from_str::<ConsumerCommand<'_>>(text) else {
            return false;
        };
        let Some(c) = self.consumers.get_mut(&conn) else {
            return true;
        };
        let topic = c.spec.topic.clone();
        // In pull mode an ack or nack frees no delivery slot, so only permits can let more
        // messages out (nacked ones come back through the timer).
        let frees_room = !c.spec.pull;
        match cmd.kind.as_deref() {
            Some("permit") => {
                let Some(n) = cmd.permit_messages else {
                    return false;
                };
                if c.spec.pull {
                    c.permits += n;
                    self.dispatch(&topic);
                }
                return true;
            }
            Some("unsubscribe") => return self.unsubscribe(conn),
            Some("isEndOfTopic") => {
                let end = self.consumer_at_end(conn);
                if let Some(c) = self.consumers.get(&conn) {
                    let _ = c.tx.send(wire::end_of_topic(end));
                }
                return true;
            }
            Some("negativeAcknowledge") => {
                if !c.spec.pull {
                    c.in_flight -= 1;
                }
                if let Some(id) = cmd.message_id.as_deref().and_then(Position::decode) {
                    self.nack(conn, id);
                }
            }
            // No type, or any unrecognised type: an acknowledgement.
            _ => {
                if !c.spec.pull {
                    c.in_flight -= 1;
                }
                if let Some(id) = cmd.message_id.as_deref().and_then(Position::decode) {
                    self.ack(conn, id);
                }
            }
        }
        if frees_room {
            self.dispatch(&topic);
        }
        true
    }

    fn sub_of(&mut self, conn: ConnId) -> Option<(&mut Sub, u64, &ConsumerSpec)> {
        let spec = &self.consumers.get(&conn)?.spec;
        let log = self.topics.get_mut(&spec.topic)?;
        let ledger = log.ledger;
        let sub = log.subs.get_mut(&spec.subscription)?;
        Some((sub, ledger, spec))
    }

    fn ack(&mut self, conn: ConnId, id: Position) {
        let Some((sub, ledger, _)) = self.sub_of(conn) else {
            return;
        };
        if id.ledger != ledger {
            return;
        }
        sub.unacked.remove(id.entry);
        sub.ready.remove(&id.entry);
        sub.scheduled.retain(|(_, e)| *e != id.entry);
        sub.redeliveries.remove(&id.entry);
    }

    fn nack(&mut self, conn: ConnId, id: Position) {
        let Some((sub, ledger, spec)) = self.sub_of(conn) else {
            return;
        };
        if id.ledger != ledger || sub.unacked.remove(id.entry).is_none() {
            return;
        }
        let delay = spec.nack_delay;
        self.redeliver(conn, id.entry, delay);
    }

    /// Schedule a redelivery, or move the message to the dead-letter topic once it was
    /// redelivered `maxRedeliverCount` times.
    fn redeliver(&mut self, conn: ConnId, entry: u64, delay: Duration) {
        let Some((sub, _, spec)) = self.sub_of(conn) else {
            return;
        };
        let count = sub.redeliveries.get(&entry).copied().unwrap_or(0);
        let dead_letter =
            sub.kind.tracks_redeliveries() && spec.max_redeliver > 0 && count >= spec.max_redeliver;
        if !dead_letter {
            if sub.kind.tracks_redeliveries() {
                sub.redeliveries.insert(entry, count + 1);
            }
            if delay.is_zero() {
                sub.ready.insert(entry);
            } else {
                sub.scheduled.push((Instant::now() + delay, entry));
            }
            return;
        }
        sub.redeliveries.remove(&entry);
        let spec = spec.clone();
        let dlq = spec
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}-{}-DLQ", spec.topic, spec.subscription));
        let (mut message, ledger) = {
            let log = &self.topics[&spec.topic];
            (log.entries[entry as usize].clone(), log.ledger)
        };
        message
            .properties
            .insert("REAL_TOPIC".into(), spec.topic.clone());
        message
            .properties
            .insert("ORIGIN_MESSAGE_ID".into(), format!("{ledger}:{entry}:-1"));
        self.create_topic(&dlq);
        let log = self.topics.get_mut(&dlq).expect("created");
        let e = log.entries.len() as u64;
        log.entries.push(message);
        for sub in log.subs.values_mut() {
            sub.ready.insert(e);
        }
        self.dispatch(&dlq);
    }

    fn unsubscribe(&mut self, conn: ConnId) -> bool {
        let Some((sub, _, spec)) = self.sub_of(conn) else {
            return true;
        };
        if sub.consumers.len() > 1 {
            // The Java consumer's unsubscribe fails while others are attached; the handler
            // then closes the socket.
            return false;
        }
        let (topic, subscription) = (spec.topic.clone(), spec.subscription.clone());
        self.consumers.remove(&conn);
        if let Some(log) = self.topics.get_mut(&topic) {
            log.subs.remove(&subscription);
        }
        true
    }

    fn consumer_at_end(&mut self, conn: ConnId) -> bool {
        let Some(spec) = self.consumers.get(&conn).map(|c| c.spec.clone()) else {
            return false;
        };
        let Some(log) = self.topics.get(&spec.topic) else {
            return false;
        };
        let Some(sub) = log.subs.get(&spec.subscription) else {
            return false;
        };
        log.terminated && sub.ready.is_empty() && sub.scheduled.is_empty()
    }

    // ---- readers ----

    pub(crate) fn add_reader(
        &mut self,
        conn: ConnId,
        tx: UnboundedSender<Out>,
        topic: &str,
        start: ReaderStart,
        queue: i64,
    ) -> Result<(), Refused> {
        let log = self.topic(topic)?;
        let next = match start {
            ReaderStart::Earliest => 0,
            ReaderStart::Latest => log.entries.len() as u64,
            ReaderStart::After(p) if p.ledger == log.ledger => p.entry + 1,
            ReaderStart::After(p) if p.ledger < log.ledger => 0,
            ReaderStart::After(_) => log.entries.len() as u64,
        };
        self.readers.insert(
            conn,
            Reader {
                tx,
                topic: topic.to_owned(),
                next,
                queue,
                in_flight: 0,
            },
        );
        self.dispatch(topic);
        Ok(())
    }

    /// A frame from a reader socket: anything but `isEndOfTopic` frees one slot.
    pub(crate) fn reader_frame(&mut self, conn: ConnId, text: &str) -> bool {
        let is_end = serde_json::from_str::<ConsumerCommand<'_>>(text)
            .ok()
            .and_then(|c| c.kind)
            .is_some_and(|k| k == "isEndOfTopic");
        let Some(r) = self.readers.get_mut(&conn) else {
            return true;
        };
        if is_end {
            let end = self
                .topics
                .get(&r.topic)
                .is_some_and(|t| t.terminated && r.next >= t.entries.len() as u64);
            let _ = r.tx.send(wire::end_of_topic(end));
            return true;
        }
        r.in_flight -= 1;
        let topic = r.topic.clone();
        self.dispatch(&topic);
        true
    }

    // ---- connections ----

    /// A socket closed: its consumer's unacknowledged messages are redelivered to others.
    pub(crate) fn disconnect(&mut self, conn: ConnId) {
        self.producers.remove(&conn);
        self.readers.remove(&conn);
        let Some(c) = self.consumers.remove(&conn) else {
            return;
        };
        let Some(log) = self.topics.get_mut(&c.spec.topic) else {
            return;
        };
        let Some(sub) = log.subs.get_mut(&c.spec.subscription) else {
            return;
        };
        sub.consumers.retain(|id| *id != conn);
        let mine: Vec<u64> = sub
            .unacked
            .by_entry
            .iter()
            .filter(|(_, u)| u.consumer == conn)
            .map(|(e, _)| *e)
            .collect();
        for e in mine {
            sub.unacked.remove(e);
            if sub.kind.tracks_redeliveries() {
                *sub.redeliveries.entry(e).or_insert(0) += 1;
            }
            sub.ready.insert(e);
        }
        if sub.consumers.is_empty() && !sub.durable {
            log.subs.remove(&c.spec.subscription);
        }
        let topic = c.spec.topic;
        self.dispatch(&topic);
    }

    /// Fire what is due: nack delays, ack timeouts, delayed deliveries.
    pub(crate) fn tick(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        for log in self.topics.values_mut() {
            for sub in log.subs.values_mut() {
                sub.scheduled.retain(|(at, e)| {
                    if *at <= now {
                        sub.ready.insert(*e);
                        false
                    } else {
                        true
                    }
                });
                for (e, u) in &sub.unacked.by_entry {
                    if u.deadline.is_some_and(|d| d <= now) {
                        timed_out.push((u.consumer, *e));
                    }
                }
            }
        }
        for (conn, entry) in timed_out {
            // The slot stays taken (the server's known behaviour, issue #2731): only an ack
            // or nack frees it.
            if let Some((sub, _, _)) = self.sub_of(conn) {
                sub.unacked.remove(entry);
            }
            self.redeliver(conn, entry, Duration::ZERO);
        }
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for t in names {
            self.dispatch(&t);
        }
    }

    /// Drain the deliveries: subscriptions to their consumers, then readers.
    fn dispatch(&mut self, topic: &str) {
        let Some(log) = self.topics.get_mut(topic) else {
            return;
        };
        let now = Instant::now();
        for sub in log.subs.values_mut() {
            dispatch_sub(sub, &log.entries, log.ledger, &mut self.consumers, now);
        }
        for r in self.readers.values_mut().filter(|r| r.topic == topic) {
            while r.in_flight < r.queue.max(1) && (r.next as usize) < log.entries.len() {
                let m = &log.entries[r.next as usize];
                let text = delivered(m, log.ledger, r.next, 0);
                r.next += 1;
                r.in_flight += 1;
                let _ = r.tx.send(text);
            }
        }
    }
}

/// How many messages of blocked keys a Key_Shared dispatch passes over looking for
/// messages of keys whose consumer has room (the broker's look-ahead limit).
const KEY_SHARED_LOOKAHEAD: usize = 1000;

fn dispatch_sub(
    sub: &mut Sub,
    entries: &[StoredMessage],
    ledger: u64,
    consumers: &mut HashMap<ConnId, Consumer>,
    now: Instant,
) {
    if sub.consumers.is_empty() || sub.ready.is_empty() {
        return;
    }
    let mut delivered_now = Vec::new();
    // Consumers in dispatch order (Key_Shared: a stable order for the key hash), with
    // whether each has room, kept up to date as messages go out.
    let mut order = sub.consumers.clone();
    if sub.kind == SubKind::KeyShared {
        order.sort_unstable();
    }
    let n = order.len();
    let mut room: Vec<bool> = order.iter().map(|c| consumers[c].has_room()).collect();
    let mut with_room = room.iter().filter(|r| **r).count();
    let mut skipped = 0;
    for &entry in &sub.ready {
        if with_room == 0 {
            break;
        }
        let m = &entries[entry as usize];
        if sub.kind.honours_delay() && m.deliver_at.is_some_and(|at| at > now) {
            continue;
        }
        let slot = match sub.kind {
            SubKind::Exclusive | SubKind::Failover => {
                if !room[0] {
                    break;
                }
                0
            }
            SubKind::Shared => {
                let Some(i) = (0..n).map(|i| (sub.next_shared + i) % n).find(|i| room[*i]) else {
                    break;
                };
                sub.next_shared = (i + 1) % n;
                i
            }
            SubKind::KeyShared => {
                let i = (m.key_hash % n as u32) as usize;
                // A hash whose messages another consumer still holds is draining (after a
                // consumer joined or left, the hash moved): it waits until they are acked,
                // so a key keeps its order when it moves — the broker's draining hashes
                // (Pulsar 4; older brokers hold back recently joined consumers instead).
                if !room[i] || sub.unacked.held_elsewhere(m.key_hash, order[i]) {
                    // The broker looks ahead past a blocked key only so far.
                    skipped += 1;
                    if skipped >= KEY_SHARED_LOOKAHEAD {
                        break;
                    }
                    continue;
                }
                i
            }
        };
        let target = order[slot];
        let consumer = consumers.get_mut(&target).expect("registered");
        if consumer.spec.pull {
            consumer.permits -= 1;
        } else {
            consumer.in_flight += 1;
        }
        let redeliveries = sub.redeliveries.get(&entry).copied().unwrap_or(0);
        let _ = consumer.tx.send(delivered(m, ledger, entry, redeliveries));
        sub.unacked.insert(
            entry,
            Unacked {
                consumer: target,
                deadline: consumer.spec.ack_timeout.map(|t| now + t),
                key_hash: m.key_hash,
            },
        );
        if !consumer.has_room() {
            room[slot] = false;
            with_room -= 1;
        }
        delivered_now.push(entry);
    }
    for e in delivered_now {
        sub.ready.remove(&e);
    }
}

fn delivered(m: &StoredMessage, ledger: u64, entry: u64, redelivery_count: u32) -> String {
    let mut message = ConsumerMessage::default();
    message.message_id = Some(Position { ledger, entry }.encode().into());
    message.payload = Some(Cow::Borrowed(&m.payload_b64));
    message.properties = Cow::Borrowed(&m.properties);
    message.publish_time = Some(m.publish_time.clone());
    message.redelivery_count = redelivery_count;
    message.event_time = m.event_time.clone();
    message.key = m.key.as_deref().map(Cow::Borrowed);
    wire::to_json(&message)
}

fn error_receipt(context: Option<&str>, code: u8, message: &str) -> String {
    let mut ack = ProducerAck::new(format!("send-error:{code}"));
    ack.context = context.map(Cow::Borrowed);
    ack.error_msg = Some(Cow::Borrowed(message));
    wire::to_json(&ack)
}

/// Murmur3-32 of the key, as Pulsar's Key_Shared selector hashes it.
pub(crate) fn key_hash(key: &str) -> u32 {
    let data = key.as_bytes();
    let (c1, c2) = (0xcc9e_2d51u32, 0x1b87_3593u32);
    let mut h = 0u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(c1).rotate_left(15).wrapping_mul(c2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= k.wrapping_mul(c1).rotate_left(15).wrapping_mul(c2);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests;
