//! [`Keepalive`]: when to probe a quiet connection and when to give it up — IO-free, shared
//! by the transports (Pulsar's WebSocket pings, EventStore's heartbeat requests).

use std::mem;
use std::time::{Duration, Instant};

/// Liveness of one connection, driven by the caller's clock: a probe (a ping, a heartbeat
/// request) every `interval`; if nothing at all is heard within `timeout` of the first
/// unanswered probe, the peer is gone. Anything heard — an answer to a probe or any other
/// frame — proves the connection alive. Probing at a fixed rate, even under traffic, keeps
/// the peer's own idle timer quiet whatever direction the traffic flows.
///
/// Hearing only sets a flag, so the receive path costs nothing; the flag is read when the
/// driver's single timer fires at [`deadline`](Self::deadline).
///
/// ```
/// use std::time::{Duration, Instant};
/// use headwaters_ordering_core::keepalive::{Keepalive, Liveness};
/// let t0 = Instant::now();
/// let ms = Duration::from_millis;
/// let mut k = Keepalive::new(ms(100), ms(50), t0);
/// assert_eq!(k.poll(t0 + ms(99)), Liveness::Wait);
/// assert_eq!(k.poll(t0 + ms(100)), Liveness::Probe);
/// assert_eq!(k.deadline(), t0 + ms(150));
/// assert_eq!(k.poll(t0 + ms(150)), Liveness::Dead(ms(50)));
/// ```
#[derive(Debug, Clone)]
pub struct Keepalive {
    interval: Duration,
    timeout: Duration,
    next_probe: Instant,
    /// When the first unanswered probe went out.
    probed_at: Option<Instant>,
    heard: bool,
}

/// What [`Keepalive::poll`] asks the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Nothing: poll again at [`Keepalive::deadline`].
    Wait,
    /// Send a probe now.
    Probe,
    /// The probe went unanswered for this long: close the connection and reconnect.
    Dead(Duration),
}

impl Keepalive {
    /// A connection that just opened at `now`.
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        Self {
            interval,
            timeout,
            next_probe: now + interval,
            probed_at: None,
            heard: false,
        }
    }

    /// Something arrived from the peer.
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// When [`poll`](Self::poll) must run next.
    pub fn deadline(&self) -> Instant {
        match self.probed_at {
            Some(at) => (at + self.timeout).min(self.next_probe),
            None => self.next_probe,
        }
    }

    /// The timer fired (or anything else woke the driver) at `now`.
    pub fn poll(&mut self, now: Instant) -> Liveness {
        if mem::take(&mut self.heard) {
            self.probed_at = None;
        }
        if self.probed_at.is_some_and(|at| now >= at + self.timeout) {
            return Liveness::Dead(self.timeout);
        }
        if now >= self.next_probe {
            self.next_probe = now + self.interval;
            self.probed_at.get_or_insert(now);
            return Liveness::Probe;
        }
        Liveness::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_peer_that_answers_lives_on_with_a_probe_every_interval() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(ms(100), ms(300), t0);
        let mut probes = Vec::new();
        let mut now = t0;
        // Ten minutes of virtual time; every probe is answered before the next poll.
        while now < t0 + Duration::from_secs(600) {
            now = k.deadline();
            match k.poll(now) {
                Liveness::Probe => {
                    probes.push(now);
                    k.heard();
                }
                Liveness::Wait => {}
                Liveness::Dead(_) => panic!("an answering peer was given up at {now:?}"),
            }
        }
        assert_eq!(probes.len(), 6000);
        assert!(probes.windows(2).all(|w| w[1] - w[0] == ms(100)));
    }

    #[test]
    fn traffic_keeps_a_connection_alive_though_probes_go_unanswered() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(ms(100), ms(300), t0);
        for step in 1..=50 {
            k.heard();
            let now = t0 + ms(step * 100);
            assert_eq!(k.poll(now), Liveness::Probe, "at {step}");
        }
    }

    #[test]
    fn an_unanswered_probe_gives_the_peer_up_after_the_timeout() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(ms(100), ms(300), t0);
        assert_eq!(k.poll(t0 + ms(100)), Liveness::Probe);
        assert_eq!(k.poll(t0 + ms(200)), Liveness::Probe, "probes go on");
        assert_eq!(k.poll(t0 + ms(300)), Liveness::Probe);
        assert_eq!(k.deadline(), t0 + ms(400));
        assert_eq!(
            k.poll(t0 + ms(400)),
            Liveness::Dead(ms(300)),
            "counted from the first unanswered probe"
        );
    }

    #[test]
    fn an_answer_just_in_time_saves_the_connection() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(ms(100), ms(50), t0);
        assert_eq!(k.poll(t0 + ms(100)), Liveness::Probe);
        assert_eq!(k.deadline(), t0 + ms(150));
        k.heard();
        assert_eq!(k.poll(t0 + ms(150)), Liveness::Wait);
        assert_eq!(k.deadline(), t0 + ms(200));
        assert_eq!(k.poll(t0 + ms(200)), Liveness::Probe);
    }
}
