//! The IO-free session of one EventStore TCP connection: the handshake, the correlation
//! table, operation timeouts and retries, heartbeats both ways, and the `NotHandled`,
//! `NotLeader` and `BadRequest` decisions.
//!
//! The session reads no socket and no clock: the driver ([`Connection`](crate::Connection))
//! hands it what arrived ([`Session::buffer`], [`Session::handle_read`]), new requests
//! ([`Session::send`]) and the time ([`Session::handle_timeout`]), and carries out what it
//! asks ([`Session::poll_transmit`], [`Session::poll_timeout`], [`Session::poll_event`]) —
//! quinn-proto's shape. Every timing rule is therefore tested here in virtual time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use headwaters_ordering_core::{Keepalive, Liveness};
use prost::Message;
use uuid::Uuid;

use crate::command::Command;
use crate::error::{Busy, ConnectError, Error};
use crate::frame::{Credentials, Frame, FrameDecoder};
use crate::wire;

/// A request's correlation id.
pub(crate) type Correlation = [u8; 16];

/// A fresh correlation id.
pub(crate) fn correlation() -> Correlation {
    *Uuid::new_v4().as_bytes()
}

/// What a request expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// One reply frame ([`Event::Reply`]); retried after a timeout.
    Reply,
    /// Every frame with its correlation id until one ends the subscription
    /// ([`Event::Delivered`]); never times out, sent again after a reconnect.
    Stream,
    /// Nothing (unsubscribe, acks); held while disconnected.
    Nothing,
}

/// A request for the session to send.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) command: Command,
    pub(crate) correlation: Correlation,
    pub(crate) payload: Bytes,
    /// Overrides the session's default credentials.
    pub(crate) credentials: Option<Credentials>,
    pub(crate) expect: Expect,
}

/// What the session tells its driver.
#[derive(Debug)]
pub(crate) enum Event {
    /// The handshake is done; operations flow.
    Ready,
    /// The outcome of an [`Expect::Reply`] request.
    Reply {
        correlation: Correlation,
        result: Result<Frame, Error>,
    },
    /// A frame for an [`Expect::Stream`] request. When the frame ends the subscription
    /// (`Command::ends_subscription`) the session has forgotten it.
    Delivered {
        correlation: Correlation,
        frame: Frame,
    },
    /// The connection under a subscription was lost; it is sent again after the next
    /// handshake.
    Interrupted { correlation: Correlation },
    /// The connection is unusable: close the socket, then reconnect (to the leader, for
    /// [`ConnectError::NotLeader`]) and call [`Session::connected`], or give up.
    Lost(ConnectError),
}

/// The session's timing and identity.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub(crate) credentials: Option<Credentials>,
    pub(crate) connection_name: String,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    /// How long an answer (and the handshake) may take.
    pub(crate) operation_timeout: Duration,
    /// How often an operation is sent again (timeouts, busy nodes, leader changes).
    pub(crate) operation_retries: u32,
    /// Whether the connection is TLS (a `NotLeader` then names the secure endpoint).
    pub(crate) tls: bool,
}

enum Phase {
    /// No socket.
    Down,
    /// `Authenticate` (or, without credentials, `IdentifyClient`) is on its way.
    Handshake {
        step: Correlation,
        authenticated: bool,
        deadline: Instant,
    },
    Ready(Keepalive),
}

struct Pending {
    frame: Bytes,
    expect: Expect,
    attempts: u32,
    /// Order of submission: the order requests go out again after a reconnect.
    seq: u64,
    /// Which transmission the newest timeout entry belongs to.
    stamp: u64,
}

/// One connection's protocol state (see the module docs).
pub(crate) struct Session {
    config: SessionConfig,
    phase: Phase,
    decoder: FrameDecoder,
    pending: HashMap<Correlation, Pending>,
    /// `Expect::Nothing` frames waiting for the handshake, with their sequence numbers.
    held: Vec<(u64, Bytes)>,
    /// Answer deadlines in sending order (the timeout is fixed, so they are sorted);
    /// entries whose stamp no longer matches their request are skipped.
    deadlines: VecDeque<(Instant, Correlation, u64)>,
    seq: u64,
    stamp: u64,
    transmit: BytesMut,
    events: VecDeque<Event>,
}

impl Session {
    /// A session with no connection yet.
    pub(crate) fn new(config: SessionConfig) -> Self {
        Self {
            config,
            phase: Phase::Down,
            decoder: FrameDecoder::new(),
            pending: HashMap::new(),
            held: Vec::new(),
            deadlines: VecDeque::new(),
            seq: 0,
            stamp: 0,
            transmit: BytesMut::new(),
            events: VecDeque::new(),
        }
    }

    /// A socket opened at `now`: start the handshake (`Authenticate` with the default
    /// credentials, then `IdentifyClient`). Requests go out once it is done.
    pub(crate) fn connected(&mut self, now: Instant) {
        self.decoder = FrameDecoder::new();
        self.transmit.clear();
        let authenticated = self.config.credentials.is_none();
        let step = self.handshake_step(authenticated);
        self.phase = Phase::Handshake {
            step,
            authenticated,
            deadline: now + self.config.operation_timeout,
        };
    }

    /// Queue the next handshake frame: `Authenticate` unless done, else `IdentifyClient`.
    fn handshake_step(&mut self, authenticated: bool) -> Correlation {
        let c = correlation();
        let frame = match &self.config.credentials {
            Some(credentials) if !authenticated => {
                Frame::new(Command::Authenticate, c, Bytes::new())
                    .with_credentials(credentials.clone())
            }
            _ => {
                let identify = wire::IdentifyClient {
                    version: 1,
                    connection_name: Some(self.config.connection_name.clone()),
                };
                Frame::new(Command::IdentifyClient, c, identify.encode_to_vec())
            }
        };
        self.queue(&frame);
        c
    }

    /// The socket broke, or the driver closed it: subscriptions hear it, requests wait for
    /// the next connection.
    pub(crate) fn connection_lost(&mut self, why: ConnectError) {
        if matches!(self.phase, Phase::Down) {
            return;
        }
        self.phase = Phase::Down;
        self.transmit.clear();
        self.deadlines.clear();
        for (c, p) in &self.pending {
            if p.expect == Expect::Stream {
                self.events
                    .push_back(Event::Interrupted { correlation: *c });
            }
        }
        self.events.push_back(Event::Lost(why));
    }

    /// Whether the handshake is done and the connection usable.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready(_))
    }

    /// Requests waiting for an answer (subscriptions included).
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Send a request (now, or after the handshake).
    pub(crate) fn send(&mut self, request: Request, now: Instant) {
        let mut frame = Frame::new(request.command, request.correlation, request.payload);
        if let Some(creds) = request
            .credentials
            .or_else(|| self.config.credentials.clone())
        {
            frame = frame.with_credentials(creds);
        }
        let bytes = match frame.to_bytes() {
            Ok(bytes) => bytes,
            Err(e) => {
                if request.expect == Expect::Reply {
                    self.events.push_back(Event::Reply {
                        correlation: request.correlation,
                        result: Err(e.into()),
                    });
                }
                return;
            }
        };
        self.seq += 1;
        if request.expect == Expect::Nothing {
            if self.is_ready() {
                self.transmit.extend_from_slice(&bytes);
            } else {
                self.held.push((self.seq, bytes));
            }
            return;
        }
        let pending = Pending {
            frame: bytes,
            expect: request.expect,
            attempts: 1,
            seq: self.seq,
            stamp: 0,
        };
        self.pending.insert(request.correlation, pending);
        if self.is_ready() {
            self.transmit_pending(request.correlation, now);
        }
    }

    /// The subscriber of `correlation` is gone: forget it.
    pub(crate) fn forget(&mut self, correlation: &Correlation) {
        self.pending.remove(correlation);
    }

    /// (Re)send a pending request and start its answer timer.
    fn transmit_pending(&mut self, c: Correlation, now: Instant) {
        let Some(p) = self.pending.get_mut(&c) else {
            return;
        };
        self.transmit.extend_from_slice(&p.frame);
        if p.expect == Expect::Reply {
            self.stamp += 1;
            p.stamp = self.stamp;
            self.deadlines
                .push_back((now + self.config.operation_timeout, c, self.stamp));
        }
    }

    /// Where the driver reads into; call [`handle_read`](Self::handle_read) after.
    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        self.decoder.buffer()
    }

    /// Bytes arrived (in [`buffer`](Self::buffer)) at `now`.
    pub(crate) fn handle_read(&mut self, now: Instant) {
        if let Phase::Ready(keepalive) = &mut self.phase {
            keepalive.heard();
        }
        loop {
            if matches!(self.phase, Phase::Down) {
                return;
            }
            match self.decoder.next_frame() {
                Ok(Some(frame)) => self.received(frame, now),
                Ok(None) => return,
                Err(e) => return self.connection_lost(ConnectError::Frame(e)),
            }
        }
    }

    /// The timer ([`poll_timeout`](Self::poll_timeout)) fired at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Down => return,
            Phase::Handshake { deadline, .. } => {
                if now >= *deadline {
                    let timeout = self.config.operation_timeout;
                    self.connection_lost(ConnectError::HandshakeTimeout(timeout));
                }
                return;
            }
            Phase::Ready(keepalive) => match keepalive.poll(now) {
                Liveness::Wait => {}
                Liveness::Probe => {
                    let probe = Frame::new(Command::HeartbeatRequest, correlation(), Bytes::new());
                    self.queue(&probe);
                }
                Liveness::Dead(timeout) => {
                    return self.connection_lost(ConnectError::HeartbeatTimeout(timeout));
                }
            },
        }
        while let Some(&(deadline, c, stamp)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(p) = self.pending.get_mut(&c) else {
                continue;
            };
            if p.stamp != stamp {
                continue;
            }
            if p.attempts > self.config.operation_retries {
                self.pending.remove(&c);
                self.events.push_back(Event::Reply {
                    correlation: c,
                    result: Err(Error::Timeout(self.config.operation_timeout)),
                });
                continue;
            }
            p.attempts += 1;
            self.transmit_pending(c, now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next, if ever.
    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        let keepalive = match &self.phase {
            Phase::Down => return None,
            Phase::Handshake { deadline, .. } => return Some(*deadline),
            Phase::Ready(keepalive) => keepalive.deadline(),
        };
        // Drop the front entries of requests answered since (or sent again).
        while let Some((_, c, stamp)) = self.deadlines.front() {
            if self.pending.get(c).is_some_and(|p| p.stamp == *stamp) {
                break;
            }
            self.deadlines.pop_front();
        }
        Some(match self.deadlines.front() {
            Some((deadline, ..)) => keepalive.min(*deadline),
            None => keepalive,
        })
    }

    /// Bytes to write, if any.
    pub(crate) fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// The next event, if any.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn queue(&mut self, frame: &Frame) {
        // Frames the session builds itself are far below the size limit.
        if let Ok(bytes) = frame.to_bytes() {
            self.transmit.extend_from_slice(&bytes);
        }
    }

    /// The handshake is done at `now`: everything waiting goes out, in submission order.
    fn ready(&mut self, now: Instant) {
        self.phase = Phase::Ready(Keepalive::new(
            self.config.heartbeat_interval,
            self.config.heartbeat_timeout,
            now,
        ));
        let mut waiting: Vec<(u64, Option<Correlation>)> = self
            .pending
            .iter()
            .map(|(c, p)| (p.seq, Some(*c)))
            .collect();
        let held = std::mem::take(&mut self.held);
        waiting.extend(held.iter().map(|(seq, _)| (*seq, None)));
        waiting.sort_unstable_by_key(|(seq, _)| *seq);
        let mut held = held.into_iter();
        for (_, c) in waiting {
            match c {
                Some(c) => self.transmit_pending(c, now),
                None => {
                    if let Some((_, bytes)) = held.next() {
                        self.transmit.extend_from_slice(&bytes);
                    }
                }
            }
        }
        self.events.push_back(Event::Ready);
    }

    fn received(&mut self, frame: Frame, now: Instant) {
        match frame.command {
            Command::HeartbeatRequest => {
                let answer =
                    Frame::new(Command::HeartbeatResponse, frame.correlation, Bytes::new());
                return self.queue(&answer);
            }
            Command::HeartbeatResponse => return,
            Command::BadRequest if frame.correlation == [0; 16] => {
                let why = String::from_utf8_lossy(&frame.payload).into_owned();
                return self.connection_lost(ConnectError::Refused(why));
            }
            _ => {}
        }
        if let Phase::Handshake {
            step,
            authenticated,
            ..
        } = self.phase
        {
            if frame.correlation != step {
                return; // nothing else is in flight yet
            }
            return match (authenticated, frame.command) {
                (false, Command::Authenticated) => {
                    let step = self.handshake_step(true);
                    if let Phase::Handshake {
                        step: s,
                        authenticated: a,
                        ..
                    } = &mut self.phase
                    {
                        *s = step;
                        *a = true;
                    }
                }
                (false, Command::NotAuthenticated) => {
                    let why = String::from_utf8_lossy(&frame.payload).into_owned();
                    self.connection_lost(ConnectError::NotAuthenticated(why));
                }
                (true, Command::ClientIdentified) => self.ready(now),
                (_, other) => self.connection_lost(ConnectError::Handshake(other)),
            };
        }
        let c = frame.correlation;
        let Some(p) = self.pending.get_mut(&c) else {
            return; // a late answer to a request already answered or given up
        };
        if frame.command == Command::NotHandled {
            return self.not_handled(c, &frame.payload, now);
        }
        if p.expect == Expect::Stream {
            if frame.command.ends_subscription() {
                self.pending.remove(&c);
            }
            self.events.push_back(Event::Delivered {
                correlation: c,
                frame,
            });
            return;
        }
        self.pending.remove(&c);
        let result = match frame.command {
            Command::NotAuthenticated => Err(Error::NotAuthenticated(
                String::from_utf8_lossy(&frame.payload).into_owned(),
            )),
            Command::BadRequest => Err(Error::BadRequest(
                String::from_utf8_lossy(&frame.payload).into_owned(),
            )),
            _ => Ok(frame),
        };
        self.events.push_back(Event::Reply {
            correlation: c,
            result,
        });
    }

    /// `NotHandled` for request `c`: retry a busy node's, follow a leader, or fail.
    fn not_handled(&mut self, c: Correlation, payload: &Bytes, now: Instant) {
        let retries = self.config.operation_retries;
        let Some(p) = self.pending.get_mut(&c) else {
            return;
        };
        use wire::not_handled::NotHandledReason as R;
        let failure = match wire::NotHandled::decode(payload.clone()) {
            // Not retried as if busy: what the server meant is unknown.
            Err(e) => Some(Error::Protobuf(e)),
            Ok(n) => match n.reason() {
                R::IsReadOnly => Some(Error::ReadOnly),
                R::NotMaster => match leader(payload, self.config.tls) {
                    Some(addr) if p.attempts <= retries => {
                        // Reconnect to the leader it names; the request goes out there.
                        p.attempts += 1;
                        return self.connection_lost(ConnectError::NotLeader(addr));
                    }
                    leader => Some(Error::NotLeader(leader.unwrap_or_else(|| "unknown".into()))),
                },
                R::NotReady | R::TooBusy if p.attempts > retries => {
                    let busy = if n.reason() == R::NotReady {
                        Busy::NotReady
                    } else {
                        Busy::TooBusy
                    };
                    Some(Error::NotHandled(busy))
                }
                R::NotReady | R::TooBusy => None,
            },
        };
        match failure {
            Some(error) => {
                let p = self.pending.remove(&c);
                if p.is_some_and(|p| p.expect == Expect::Reply) {
                    self.events.push_back(Event::Reply {
                        correlation: c,
                        result: Err(error),
                    });
                } else {
                    // A subscription's request: it ends, refused with the error's text.
                    self.events.push_back(Event::Delivered {
                        correlation: c,
                        frame: Frame::new(Command::BadRequest, c, error.to_string().into_bytes()),
                    });
                }
            }
            None => {
                p.attempts += 1;
                self.transmit_pending(c, now);
            }
        }
    }
}

/// The leader's TCP address from a `NotHandled(NotMaster)` reply: its secure endpoint
/// when connecting over TLS.
fn leader(payload: &Bytes, tls: bool) -> Option<String> {
    let info = wire::NotHandled::decode(payload.clone())
        .ok()?
        .additional_info
        .and_then(|info| wire::not_handled::MasterInfo::decode(info).ok())?;
    let (host, port) = if tls {
        (
            info.external_secure_tcp_address?,
            info.external_secure_tcp_port?,
        )
    } else {
        (info.external_tcp_address, info.external_tcp_port)
    };
    (!host.is_empty() && port > 0).then(|| format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    //! Every timing rule in virtual time: nothing here sleeps.

    use super::*;
    use wire::not_handled::NotHandledReason as R;

    const A: Correlation = [1; 16];
    const B: Correlation = [2; 16];
    const INTERVAL: Duration = Duration::from_millis(750);
    const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(1500);
    const OP_TIMEOUT: Duration = Duration::from_secs(7);

    fn config(credentials: bool, retries: u32) -> SessionConfig {
        SessionConfig {
            credentials: credentials.then(|| Credentials::new("admin", "changeit").unwrap()),
            connection_name: "test".into(),
            heartbeat_interval: INTERVAL,
            heartbeat_timeout: HEARTBEAT_TIMEOUT,
            operation_timeout: OP_TIMEOUT,
            operation_retries: retries,
            tls: false,
        }
    }

    /// The frames the session wrote since the last call.
    fn sent(s: &mut Session) -> Vec<Frame> {
        let mut decoder = FrameDecoder::new();
        while let Some(bytes) = s.poll_transmit() {
            decoder.extend(&bytes);
        }
        std::iter::from_fn(|| decoder.next_frame().unwrap()).collect()
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// The server sends `frame` at `now`.
    fn receive(s: &mut Session, frame: &Frame, now: Instant) {
        frame.encode(s.buffer()).unwrap();
        s.handle_read(now);
    }

    /// A session whose handshake (without credentials) is done at `now`.
    fn ready(retries: u32, now: Instant) -> Session {
        let mut s = Session::new(config(false, retries));
        s.connected(now);
        let identify = sent(&mut s).remove(0);
        receive(
            &mut s,
            &Frame::new(
                Command::ClientIdentified,
                identify.correlation,
                Bytes::new(),
            ),
            now,
        );
        assert!(matches!(events(&mut s)[..], [Event::Ready]));
        s
    }

    fn read(c: Correlation) -> Request {
        Request {
            command: Command::ReadEvent,
            correlation: c,
            payload: Bytes::from_static(b"read"),
            credentials: None,
            expect: Expect::Reply,
        }
    }

    fn not_handled(c: Correlation, reason: R, leader: Option<(&str, i32)>) -> Frame {
        let info = leader.map(|(host, port)| {
            wire::not_handled::MasterInfo {
                external_tcp_address: host.into(),
                external_tcp_port: port,
                external_http_address: host.into(),
                external_http_port: 2113,
                external_secure_tcp_address: None,
                external_secure_tcp_port: None,
            }
            .encode_to_vec()
            .into()
        });
        let payload = wire::NotHandled {
            reason: reason as i32,
            additional_info: info,
        };
        Frame::new(Command::NotHandled, c, payload.encode_to_vec())
    }

    #[test]
    fn the_handshake_authenticates_identifies_then_sends_what_waited() {
        let t0 = Instant::now();
        let mut s = Session::new(config(true, 10));
        s.send(read(A), t0);
        s.connected(t0);
        let auth = sent(&mut s);
        assert_eq!(
            auth.len(),
            1,
            "nothing but Authenticate before it is answered"
        );
        assert_eq!(auth[0].command, Command::Authenticate);
        assert_eq!(auth[0].credentials.as_ref().unwrap().login(), "admin");
        receive(
            &mut s,
            &Frame::new(Command::Authenticated, auth[0].correlation, Bytes::new()),
            t0,
        );
        let identify = sent(&mut s);
        assert_eq!(identify.len(), 1);
        assert_eq!(identify[0].command, Command::IdentifyClient);
        let id = wire::IdentifyClient::decode(identify[0].payload.clone()).unwrap();
        assert_eq!(
            (id.version, id.connection_name.as_deref()),
            (1, Some("test"))
        );
        assert!(!s.is_ready());
        receive(
            &mut s,
            &Frame::new(
                Command::ClientIdentified,
                identify[0].correlation,
                Bytes::new(),
            ),
            t0,
        );
        assert!(matches!(events(&mut s)[..], [Event::Ready]));
        let out = sent(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].command, out[0].correlation),
            (Command::ReadEvent, A)
        );
        assert!(
            out[0].credentials.is_some(),
            "default credentials on every request"
        );
    }

    #[test]
    fn refused_credentials_and_a_silent_handshake_lose_the_connection() {
        let t0 = Instant::now();
        let mut s = Session::new(config(true, 10));
        s.connected(t0);
        let auth = sent(&mut s).remove(0);
        receive(
            &mut s,
            &Frame::new(
                Command::NotAuthenticated,
                auth.correlation,
                &b"bad password"[..],
            ),
            t0,
        );
        assert!(matches!(
            &events(&mut s)[..],
            [Event::Lost(ConnectError::NotAuthenticated(why))] if why == "bad password"
        ));

        let mut s = Session::new(config(false, 10));
        s.connected(t0);
        assert_eq!(s.poll_timeout(), Some(t0 + OP_TIMEOUT));
        s.handle_timeout(t0 + OP_TIMEOUT - Duration::from_millis(1));
        assert!(events(&mut s).is_empty());
        s.handle_timeout(t0 + OP_TIMEOUT);
        assert!(matches!(
            events(&mut s)[..],
            [Event::Lost(ConnectError::HandshakeTimeout(t))] if t == OP_TIMEOUT
        ));
        assert_eq!(s.poll_timeout(), None, "no timer while disconnected");
    }

    #[test]
    fn heartbeats_go_out_every_interval_and_an_unanswered_one_loses_the_connection() {
        let t0 = Instant::now();
        let mut s = ready(10, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + INTERVAL));
        s.handle_timeout(t0 + INTERVAL);
        let probe = sent(&mut s);
        assert_eq!(probe.len(), 1);
        assert_eq!(probe[0].command, Command::HeartbeatRequest);
        // Answered: the connection lives on, probes continue.
        receive(
            &mut s,
            &Frame::new(
                Command::HeartbeatResponse,
                probe[0].correlation,
                Bytes::new(),
            ),
            t0 + INTERVAL,
        );
        s.handle_timeout(t0 + INTERVAL * 2);
        assert_eq!(sent(&mut s)[0].command, Command::HeartbeatRequest);
        // Unanswered from here: lost once the timeout has passed since that probe.
        let mut now = t0 + INTERVAL * 2;
        let lost_at = now + HEARTBEAT_TIMEOUT;
        loop {
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            if let Some(Event::Lost(why)) = s.poll_event() {
                assert!(matches!(why, ConnectError::HeartbeatTimeout(t) if t == HEARTBEAT_TIMEOUT));
                break;
            }
            assert!(now < lost_at, "still alive at {:?}", now - t0);
        }
        assert_eq!(now, lost_at);
    }

    #[test]
    fn the_servers_heartbeat_requests_are_answered_with_their_correlation() {
        let t0 = Instant::now();
        let mut s = ready(10, t0);
        receive(
            &mut s,
            &Frame::new(Command::HeartbeatRequest, [7; 16], Bytes::new()),
            t0,
        );
        let out = sent(&mut s);
        assert_eq!(
            (out[0].command, out[0].correlation),
            (Command::HeartbeatResponse, [7; 16])
        );
        assert!(events(&mut s).is_empty());
    }

    #[test]
    fn an_unanswered_operation_is_sent_again_each_timeout_then_fails() {
        let t0 = Instant::now();
        let mut s = ready(2, t0);
        s.send(read(A), t0);
        assert_eq!(sent(&mut s).len(), 1);
        // Keep the heartbeats answered so only the operation's timer matters.
        let mut now;
        let mut sends = vec![t0];
        let failed = loop {
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            for f in sent(&mut s) {
                match f.command {
                    Command::HeartbeatRequest => receive(
                        &mut s,
                        &Frame::new(Command::HeartbeatResponse, f.correlation, Bytes::new()),
                        now,
                    ),
                    Command::ReadEvent => sends.push(now),
                    other => panic!("{other:?}"),
                }
            }
            if let Some(event) = s.poll_event() {
                break event;
            }
        };
        assert!(matches!(
            failed,
            Event::Reply { correlation: A, result: Err(Error::Timeout(t)) } if t == OP_TIMEOUT
        ));
        assert_eq!(sends, [t0, t0 + OP_TIMEOUT, t0 + OP_TIMEOUT * 2]);
        assert_eq!(now, t0 + OP_TIMEOUT * 3);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn an_answer_stops_the_operations_timer() {
        let t0 = Instant::now();
        let mut s = ready(2, t0);
        s.send(read(A), t0);
        sent(&mut s);
        receive(
            &mut s,
            &Frame::new(Command::ReadEventCompleted, A, &b"ok"[..]),
            t0,
        );
        assert!(matches!(
            &events(&mut s)[..],
            [Event::Reply { correlation: A, result: Ok(f) }] if f.payload == "ok"
        ));
        // The timer is the keepalive's alone; a late duplicate answer is ignored.
        assert_eq!(s.poll_timeout(), Some(t0 + INTERVAL));
        s.handle_timeout(t0 + OP_TIMEOUT);
        receive(
            &mut s,
            &Frame::new(Command::ReadEventCompleted, A, &b"again"[..]),
            t0 + OP_TIMEOUT,
        );
        assert!(
            sent(&mut s)
                .iter()
                .all(|f| f.command == Command::HeartbeatRequest)
        );
        assert!(events(&mut s).is_empty());
    }

    #[test]
    fn a_busy_node_gets_the_operation_again_until_the_retries_run_out() {
        let t0 = Instant::now();
        let mut s = ready(2, t0);
        s.send(read(A), t0);
        sent(&mut s);
        for _ in 0..2 {
            receive(&mut s, &not_handled(A, R::TooBusy, None), t0);
            assert_eq!(
                sent(&mut s)[0].command,
                Command::ReadEvent,
                "sent again at once"
            );
            assert!(events(&mut s).is_empty());
        }
        receive(&mut s, &not_handled(A, R::NotReady, None), t0);
        assert!(sent(&mut s).is_empty());
        assert!(matches!(
            events(&mut s)[..],
            [Event::Reply {
                result: Err(Error::NotHandled(Busy::NotReady)),
                ..
            }]
        ));
    }

    #[test]
    fn a_read_only_node_and_an_undecodable_not_handled_fail_at_once() {
        let t0 = Instant::now();
        let mut s = ready(10, t0);
        s.send(read(A), t0);
        s.send(read(B), t0);
        sent(&mut s);
        receive(&mut s, &not_handled(A, R::IsReadOnly, None), t0);
        receive(
            &mut s,
            &Frame::new(Command::NotHandled, B, &b"\xff\xff"[..]),
            t0,
        );
        assert!(sent(&mut s).is_empty(), "neither is retried");
        let events = events(&mut s);
        assert!(matches!(
            events[..],
            [
                Event::Reply {
                    correlation: A,
                    result: Err(Error::ReadOnly)
                },
                Event::Reply {
                    correlation: B,
                    result: Err(Error::Protobuf(_))
                },
            ]
        ));
    }

    #[test]
    fn not_the_leader_reconnects_there_and_sends_the_operation_again() {
        let t0 = Instant::now();
        let mut s = ready(10, t0);
        s.send(read(A), t0);
        s.send(
            Request {
                command: Command::SubscribeToStream,
                correlation: B,
                payload: Bytes::new(),
                credentials: None,
                expect: Expect::Stream,
            },
            t0,
        );
        sent(&mut s);
        receive(
            &mut s,
            &not_handled(A, R::NotMaster, Some(("10.0.0.2", 1113))),
            t0,
        );
        let events1 = events(&mut s);
        assert!(matches!(
            &events1[..],
            [
                Event::Interrupted { correlation: B },
                Event::Lost(ConnectError::NotLeader(addr)),
            ] if addr == "10.0.0.2:1113"
        ));
        assert!(!s.is_ready());
        // The driver connected to the leader: both go out again after the handshake, in
        // the order they were first sent.
        let t1 = t0 + Duration::from_secs(1);
        s.connected(t1);
        let identify = sent(&mut s).remove(0);
        receive(
            &mut s,
            &Frame::new(
                Command::ClientIdentified,
                identify.correlation,
                Bytes::new(),
            ),
            t1,
        );
        let again: Vec<_> = sent(&mut s).iter().map(|f| f.correlation).collect();
        assert_eq!(again, [A, B]);
        // Without a leader to go to, it fails.
        receive(&mut s, &not_handled(A, R::NotMaster, None), t1);
        assert!(matches!(
            &events(&mut s)[..],
            [Event::Ready, Event::Reply { result: Err(Error::NotLeader(l)), .. }] if l == "unknown"
        ));
    }

    #[test]
    fn subscriptions_get_every_frame_never_time_out_and_end_when_dropped() {
        let t0 = Instant::now();
        let mut s = ready(0, t0);
        let subscribe = Request {
            command: Command::SubscribeToStream,
            correlation: B,
            payload: Bytes::new(),
            credentials: None,
            expect: Expect::Stream,
        };
        s.send(subscribe, t0);
        sent(&mut s);
        assert_eq!(s.poll_timeout(), Some(t0 + INTERVAL), "no answer timer");
        for command in [
            Command::SubscriptionConfirmation,
            Command::StreamEventAppeared,
        ] {
            receive(&mut s, &Frame::new(command, B, Bytes::new()), t0);
        }
        receive(
            &mut s,
            &Frame::new(Command::SubscriptionDropped, B, Bytes::new()),
            t0,
        );
        let commands: Vec<_> = events(&mut s)
            .into_iter()
            .map(|e| match e {
                Event::Delivered { frame, .. } => frame.command,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            commands,
            [
                Command::SubscriptionConfirmation,
                Command::StreamEventAppeared,
                Command::SubscriptionDropped
            ]
        );
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn frames_expecting_nothing_wait_for_the_handshake_in_order() {
        let t0 = Instant::now();
        let mut s = ready(10, t0);
        s.connection_lost(ConnectError::ClosedByServer);
        assert!(matches!(
            events(&mut s)[..],
            [Event::Lost(ConnectError::ClosedByServer)]
        ));
        s.send(read(A), t0);
        let ack = |c: u8| Request {
            command: Command::PersistentSubscriptionAckEvents,
            correlation: [c; 16],
            payload: Bytes::new(),
            credentials: None,
            expect: Expect::Nothing,
        };
        s.send(ack(3), t0);
        s.send(read([4; 16]), t0);
        assert!(
            sent(&mut s).is_empty(),
            "nothing goes out while disconnected"
        );
        s.connected(t0);
        let identify = sent(&mut s).remove(0);
        receive(
            &mut s,
            &Frame::new(
                Command::ClientIdentified,
                identify.correlation,
                Bytes::new(),
            ),
            t0,
        );
        let order: Vec<_> = sent(&mut s).iter().map(|f| f.correlation[0]).collect();
        assert_eq!(order, [1, 3, 4]);
    }

    #[test]
    fn a_refusal_or_bad_framing_loses_the_connection() {
        let t0 = Instant::now();
        let mut s = ready(10, t0);
        receive(
            &mut s,
            &Frame::new(Command::BadRequest, [0; 16], &b"go away"[..]),
            t0,
        );
        assert!(matches!(
            &events(&mut s)[..],
            [Event::Lost(ConnectError::Refused(why))] if why == "go away"
        ));
        let mut s = ready(10, t0);
        s.buffer().extend_from_slice(&[1, 0, 0, 0, 0]); // a 1-byte frame cannot exist
        s.handle_read(t0);
        assert!(matches!(
            events(&mut s)[..],
            [Event::Lost(ConnectError::Frame(_))]
        ));
    }
}
