//! Persistent subscription groups (competing consumers) as the server runs them: each group
//! reads its stream from `start_from`, hands events round-robin to connected consumers up to
//! each one's `allowed_in_flight`, retries on nak (`Retry`/`Unknown`), on timeout and when a
//! consumer leaves, parks after `max_retry_count` retries (or on `Park`), skips on `Skip`.
//! `Stop` leaves the message outstanding, as the server does (it times out and is retried).
//! Synchronous and IO-free: the caller looks events up and sends what [`Groups::dispatch`]
//! returns.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// A consumer: its connection and the correlation id it connected with.
pub(crate) type ConsumerKey = (u64, [u8; 16]);

/// A group's settings (those the emulator acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupSettings {
    pub(crate) resolve_link_tos: bool,
    /// −1 = from the end at creation, otherwise the first event number.
    pub(crate) start_from: i64,
    pub(crate) message_timeout_ms: i64,
    pub(crate) max_retry_count: u32,
    /// 0 = unlimited.
    pub(crate) max_subscribers: usize,
}

/// How the consumer wants a message handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nak {
    Unknown,
    Park,
    Retry,
    Skip,
    Stop,
}

impl Nak {
    pub(crate) const fn from_wire(action: i32) -> Self {
        match action {
            1 => Self::Park,
            2 => Self::Retry,
            3 => Self::Skip,
            4 => Self::Stop,
            _ => Self::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectError {
    NotFound,
    MaxSubscribers,
}

#[derive(Debug)]
struct InFlight {
    number: i64,
    retry: u32,
    consumer: ConsumerKey,
    deadline_ms: i64,
}

#[derive(Debug)]
struct Consumer {
    key: ConsumerKey,
    allowed: usize,
    in_flight: usize,
}

#[derive(Debug)]
struct Group {
    settings: GroupSettings,
    /// The next event number to read from the stream.
    next: i64,
    retry: VecDeque<(i64, u32)>,
    in_flight: HashMap<Bytes, InFlight>,
    consumers: Vec<Consumer>,
    turn: usize,
}

impl Group {
    /// Retry a message, or park it when it has used up its retries.
    fn retry_or_park(&mut self, number: i64, retry: u32, parked: &mut Vec<i64>) {
        if retry >= self.settings.max_retry_count {
            parked.push(number);
        } else {
            self.retry.push_back((number, retry + 1));
        }
    }

    /// Take the messages in flight that `pred` picks, as (event number, retry count) in
    /// event order.
    fn take_in_flight(&mut self, pred: impl Fn(&InFlight) -> bool) -> Vec<(i64, u32)> {
        let ids: Vec<Bytes> = self
            .in_flight
            .iter()
            .filter(|(_, m)| pred(m))
            .map(|(id, _)| id.clone())
            .collect();
        let mut taken: Vec<(i64, u32)> = ids
            .iter()
            .filter_map(|id| self.settle(id).map(|m| (m.number, m.retry)))
            .collect();
        taken.sort_unstable();
        taken
    }

    /// Retry `messages` (in order), parking those out of retries; the numbers to park.
    fn retry_all(&mut self, messages: Vec<(i64, u32)>) -> Vec<i64> {
        let mut park = Vec::new();
        for (number, retry) in messages {
            self.retry_or_park(number, retry, &mut park);
        }
        park
    }

    fn settle(&mut self, id: &[u8]) -> Option<InFlight> {
        let done = self.in_flight.remove(id)?;
        if let Some(c) = self.consumers.iter_mut().find(|c| c.key == done.consumer) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        Some(done)
    }

    fn next_consumer(&mut self) -> Option<usize> {
        let n = self.consumers.len();
        (0..n)
            .map(|k| (self.turn + k) % n)
            .find(|i| self.consumers[*i].in_flight < self.consumers[*i].allowed)
    }
}

/// One event to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) consumer: ConsumerKey,
    pub(crate) stream: String,
    pub(crate) number: i64,
    pub(crate) retry: u32,
    pub(crate) resolve_link_tos: bool,
}

/// The first readable event of a stream numbered at least the given one, with its id.
pub(crate) type NextEvent<'a> = dyn Fn(&str, i64) -> Option<(i64, Bytes)> + 'a;

/// Messages to park: (stream, group, event number).
pub(crate) type Parked = Vec<(String, String, i64)>;

/// Add `numbers` of group `name` on `stream` to `parked`.
fn park_in(parked: &mut Parked, stream: &str, name: &str, numbers: Vec<i64>) {
    parked.extend(
        numbers
            .into_iter()
            .map(|n| (stream.to_owned(), name.to_owned(), n)),
    );
}

/// Every group, by (stream, group name).
#[derive(Debug, Default)]
pub(crate) struct Groups {
    groups: HashMap<(String, String), Group>,
}

impl Groups {
    /// Create a group; `stream_next` is the stream's next event number (for `start_from` −1).
    /// `false` when it exists.
    pub(crate) fn create(
        &mut self,
        stream: &str,
        group: &str,
        settings: GroupSettings,
        stream_next: i64,
    ) -> bool {
        let key = (stream.to_owned(), group.to_owned());
        if self.groups.contains_key(&key) {
            return false;
        }
        let next = if settings.start_from < 0 {
            stream_next
        } else {
            settings.start_from
        };
        self.groups.insert(
            key,
            Group {
                settings,
                next,
                retry: VecDeque::new(),
                in_flight: HashMap::new(),
                consumers: Vec::new(),
                turn: 0,
            },
        );
        true
    }

    /// Change a group's settings; its consumers are dropped (the server restarts the
    /// subscription) and its messages in flight are retried. `None` when there is no such
    /// group.
    pub(crate) fn update(
        &mut self,
        stream: &str,
        group: &str,
        settings: GroupSettings,
    ) -> Option<Vec<ConsumerKey>> {
        let g = self
            .groups
            .get_mut(&(stream.to_owned(), group.to_owned()))?;
        g.settings = settings;
        let dropped: Vec<ConsumerKey> = g.consumers.drain(..).map(|c| c.key).collect();
        // Redelivered first, as they were (the restart is not the message's fault).
        for m in g.take_in_flight(|_| true).into_iter().rev() {
            g.retry.push_front(m);
        }
        Some(dropped)
    }

    /// Delete a group; returns its consumers (to be told), `None` when there is none.
    pub(crate) fn delete(&mut self, stream: &str, group: &str) -> Option<Vec<ConsumerKey>> {
        let g = self.groups.remove(&(stream.to_owned(), group.to_owned()))?;
        Some(g.consumers.into_iter().map(|c| c.key).collect())
    }

    /// Connect a consumer.
    pub(crate) fn connect(
        &mut self,
        stream: &str,
        group: &str,
        key: ConsumerKey,
        allowed: usize,
    ) -> Result<(), ConnectError> {
        let g = self
            .groups
            .get_mut(&(stream.to_owned(), group.to_owned()))
            .ok_or(ConnectError::NotFound)?;
        let max = g.settings.max_subscribers;
        if max > 0 && g.consumers.len() >= max {
            return Err(ConnectError::MaxSubscribers);
        }
        g.consumers.push(Consumer {
            key,
            allowed: allowed.max(1),
            in_flight: 0,
        });
        Ok(())
    }

    /// A consumer left (unsubscribed or its connection closed): its messages in flight are
    /// retried (or parked when out of retries). `true` when it was a consumer.
    pub(crate) fn disconnect(&mut self, key: ConsumerKey, parked: &mut Parked) -> bool {
        let mut found = false;
        for ((stream, name), g) in &mut self.groups {
            let before = g.consumers.len();
            g.consumers.retain(|c| c.key != key);
            if g.consumers.len() == before {
                continue;
            }
            found = true;
            let mine = g.take_in_flight(|m| m.consumer == key);
            let park = g.retry_all(mine);
            park_in(parked, stream, name, park);
        }
        found
    }

    /// The group a consumer belongs to.
    fn group_of(&mut self, key: ConsumerKey) -> Option<(&(String, String), &mut Group)> {
        self.groups
            .iter_mut()
            .find(|(_, g)| g.consumers.iter().any(|c| c.key == key))
    }

    /// Acknowledge messages by event id.
    pub(crate) fn ack(&mut self, key: ConsumerKey, ids: &[Bytes]) {
        if let Some((_, g)) = self.group_of(key) {
            for id in ids {
                g.settle(id);
            }
        }
    }

    /// Negative acknowledgement.
    pub(crate) fn nak(
        &mut self,
        key: ConsumerKey,
        ids: &[Bytes],
        action: Nak,
        parked: &mut Parked,
    ) {
        let Some(((stream, name), g)) = self.group_of(key) else {
            return;
        };
        let mut park = Vec::new();
        for id in ids {
            if action == Nak::Stop {
                // The server's StopSubscription does nothing: the message stays outstanding.
                continue;
            }
            let Some(m) = g.settle(id) else { continue };
            match action {
                Nak::Park => park.push(m.number),
                Nak::Retry | Nak::Unknown => g.retry_or_park(m.number, m.retry, &mut park),
                Nak::Skip | Nak::Stop => {}
            }
        }
        park_in(parked, stream, name, park);
    }

    /// Messages whose consumer did not answer within the group's timeout are retried.
    pub(crate) fn expire(&mut self, now_ms: i64, parked: &mut Parked) {
        for ((stream, name), g) in &mut self.groups {
            let overdue = g.take_in_flight(|m| m.deadline_ms <= now_ms);
            let park = g.retry_all(overdue);
            park_in(parked, stream, name, park);
        }
    }

    /// Hand out what consumers have room for: retries first, then new events.
    /// `next_event(stream, from)` is the first readable event numbered `from` or more, with
    /// its id.
    pub(crate) fn dispatch(&mut self, now_ms: i64, next_event: &NextEvent<'_>) -> Vec<Delivery> {
        let mut out = Vec::new();
        for ((stream, _), g) in &mut self.groups {
            while let Some(i) = g.next_consumer() {
                let (number, retry, id) = if let Some((number, retry)) = g.retry.pop_front() {
                    match next_event(stream, number) {
                        Some((n, id)) if n == number => (number, retry, id),
                        // Gone (truncated or deleted): nothing to retry.
                        _ => continue,
                    }
                } else if let Some((n, id)) = next_event(stream, g.next) {
                    g.next = n + 1;
                    (n, 0, id)
                } else {
                    break;
                };
                if g.in_flight.contains_key(&id) {
                    continue;
                }
                let consumer = &mut g.consumers[i];
                consumer.in_flight += 1;
                g.in_flight.insert(
                    id,
                    InFlight {
                        number,
                        retry,
                        consumer: consumer.key,
                        deadline_ms: now_ms + g.settings.message_timeout_ms,
                    },
                );
                out.push(Delivery {
                    consumer: consumer.key,
                    stream: stream.clone(),
                    number,
                    retry,
                    resolve_link_tos: g.settings.resolve_link_tos,
                });
                g.turn = (i + 1) % g.consumers.len();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_retry_count: u32) -> GroupSettings {
        GroupSettings {
            resolve_link_tos: false,
            start_from: 0,
            message_timeout_ms: 1000,
            max_retry_count,
            max_subscribers: 0,
        }
    }

    /// The id of event `n` in [`stream`].
    fn id(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    /// A stream of `len` events whose ids are their numbers.
    fn stream(len: i64) -> impl Fn(&str, i64) -> Option<(i64, Bytes)> {
        move |_, from| (from < len).then(|| (from, id(from as u8)))
    }

    const A: ConsumerKey = (1, [1; 16]);
    const B: ConsumerKey = (2, [2; 16]);

    fn numbers(d: &[Delivery]) -> Vec<(i64, u32)> {
        d.iter().map(|d| (d.number, d.retry)).collect()
    }

    #[test]
    fn hands_out_round_robin_within_each_consumers_allowance() {
        let mut g = Groups::default();
        assert!(g.create("s", "g", settings(10), 0));
        assert!(!g.create("s", "g", settings(10), 0), "already exists");
        g.connect("s", "g", A, 2).unwrap();
        g.connect("s", "g", B, 1).unwrap();
        let d = g.dispatch(0, &stream(10));
        assert_eq!(numbers(&d), vec![(0, 0), (1, 0), (2, 0)]);
        assert_eq!(d.iter().filter(|d| d.consumer == A).count(), 2);
        assert!(g.dispatch(0, &stream(10)).is_empty(), "everyone is full");
        g.ack(B, &[id(1)]);
        g.ack(B, &[id(0)]); // not B's: acks are by id, whoever sends them
        assert_eq!(numbers(&g.dispatch(0, &stream(10))), vec![(3, 0), (4, 0)]);
    }

    #[test]
    fn retries_then_parks_after_max_retry_count() {
        let mut g = Groups::default();
        g.create("s", "g", settings(2), 0);
        g.connect("s", "g", A, 1).unwrap();
        let mut parked = Vec::new();
        for expected_retry in 0..=2 {
            let d = g.dispatch(0, &stream(5));
            assert_eq!(numbers(&d), vec![(0, expected_retry)]);
            g.nak(A, &[id(0)], Nak::Retry, &mut parked);
        }
        assert_eq!(parked, vec![("s".into(), "g".into(), 0)]);
        assert_eq!(numbers(&g.dispatch(0, &stream(5))), vec![(1, 0)]);
    }

    #[test]
    fn park_skip_stop_and_timeouts() {
        let mut g = Groups::default();
        g.create("s", "g", settings(10), 0);
        g.connect("s", "g", A, 3).unwrap();
        assert_eq!(g.dispatch(0, &stream(3)).len(), 3);
        let mut parked = Vec::new();
        g.nak(A, &[id(0)], Nak::Park, &mut parked);
        g.nak(A, &[id(1)], Nak::Skip, &mut parked);
        g.nak(A, &[id(2)], Nak::Stop, &mut parked);
        assert_eq!(parked, vec![("s".into(), "g".into(), 0)]);
        assert!(
            g.dispatch(0, &stream(3)).is_empty(),
            "2 is still outstanding"
        );
        g.expire(999, &mut parked);
        assert!(g.dispatch(999, &stream(3)).is_empty());
        g.expire(1000, &mut parked);
        assert_eq!(numbers(&g.dispatch(1000, &stream(3))), vec![(2, 1)]);
    }

    #[test]
    fn a_leaving_consumers_messages_go_to_the_others() {
        let mut g = Groups::default();
        g.create("s", "g", settings(10), 0);
        g.connect("s", "g", A, 2).unwrap();
        assert_eq!(g.dispatch(0, &stream(2)).len(), 2);
        g.connect("s", "g", B, 5).unwrap();
        let mut parked = Vec::new();
        assert!(g.disconnect(A, &mut parked));
        let d = g.dispatch(0, &stream(2));
        assert_eq!(numbers(&d), vec![(0, 1), (1, 1)]);
        assert!(d.iter().all(|d| d.consumer == B));
        assert!(parked.is_empty());
    }

    #[test]
    fn start_from_end_limits_and_deletes() {
        let mut g = Groups::default();
        let mut s = settings(10);
        s.start_from = -1;
        s.max_subscribers = 1;
        g.create("s", "g", s, 5);
        assert_eq!(g.connect("s", "x", A, 1), Err(ConnectError::NotFound));
        g.connect("s", "g", A, 1).unwrap();
        assert_eq!(g.connect("s", "g", B, 1), Err(ConnectError::MaxSubscribers));
        assert!(
            g.dispatch(0, &stream(5)).is_empty(),
            "starts after the 5 existing"
        );
        assert_eq!(numbers(&g.dispatch(0, &stream(6))), vec![(5, 0)]);
        assert_eq!(g.delete("s", "g"), Some(vec![A]));
        assert_eq!(g.delete("s", "g"), None);
    }
}
