//! The connection: handshake, heartbeats, correlation, retries and reconnection —
//! [`Settings`], [`Connection`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use headwaters_ordering_core::{Backoff, Pause};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::Command;
use crate::error::{ConnectError, Error};
use crate::frame::{Credentials, Frame};
use crate::gossip::{self, NodePreference, Seeds};
use crate::session::{Correlation, Event, Expect, Request, Session, SessionConfig, correlation};
use crate::wire;

/// Connection settings (Extreme's configuration, with the .NET client's defaults).
#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) addr: String,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) connection_name: String,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) operation_retries: u32,
    pub(crate) max_reconnect_attempts: Option<u32>,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// Cluster discovery instead of `addr`.
    pub(crate) seeds: Option<Seeds>,
    pub(crate) node_preference: NodePreference,
    pub(crate) gossip_timeout: Duration,
    pub(crate) tls: Option<Tls>,
    /// What the TLS configuration was built from (`with_ca_pem`, `with_client_identity`).
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// TLS settings: the rustls configuration and, optionally, the name to verify.
#[derive(Clone)]
pub(crate) struct Tls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Wrap `stream` for `addr` (`host:port`; the host is the name checked unless one
    /// was set).
    pub(crate) async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> Result<Socket, ConnectError> {
        let host = self.server_name.clone().unwrap_or_else(|| {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|_| ConnectError::TlsServerName(host))?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| ConnectError::TlsHandshake(Arc::new(e)))?;
        Ok(Box::new(tls))
    }
}

/// A byte stream to a node: plain TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub(crate) type Socket = Box<dyn Io>;

impl Settings {
    /// A node at `host:port` (the TCP API's port, 1113 by default).
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            credentials: None,
            connection_name: "Headwaters".into(),
            heartbeat_interval: Duration::from_millis(750),
            heartbeat_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(7),
            operation_retries: 10,
            max_reconnect_attempts: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            seeds: None,
            node_preference: NodePreference::Leader,
            gossip_timeout: Duration::from_secs(1),
            tls: None,
            ca_pem: None,
            identity: None,
        }
    }

    /// Connect over TLS (the servers' secure TCP port), trusting the system's roots and,
    /// if given, the CA certificates in `ca_pem`. Cluster discovery then picks nodes'
    /// secure ports and gossips over HTTPS.
    pub fn with_tls(mut self, ca_pem: Option<&[u8]>) -> Result<Self, Error> {
        self.ca_pem = ca_pem.map(<[u8]>::to_vec);
        self.build_tls()
    }

    /// Connect over TLS trusting this CA (PEM) in addition to the system's roots — the
    /// same call as the AMQP and Pulsar clients' `with_ca_pem`.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Result<Self, Error> {
        self.ca_pem = Some(pem.into());
        self.build_tls()
    }

    /// Connect over TLS presenting this client certificate (PEM chain) and key (PEM):
    /// mutual TLS, as the AMQP and Pulsar clients' `with_client_identity`.
    pub fn with_client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Result<Self, Error> {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self.build_tls()
    }

    /// Connect over TLS presenting a client certificate (`cert_pem`: the chain, `key_pem`:
    /// its private key), trusting the system's roots and `ca_pem`.
    pub fn with_tls_identity(
        self,
        ca_pem: Option<&[u8]>,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, Error> {
        self.with_tls(ca_pem)?
            .with_client_identity(cert_pem, key_pem)
    }

    /// The rustls configuration from the CA and identity given so far.
    fn build_tls(self) -> Result<Self, Error> {
        let identity = self
            .identity
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_slice()));
        let config = headwaters_ordering_core::tls::client_config(self.ca_pem.as_deref(), identity)
            .map_err(Error::Tls)?;
        Ok(self.with_tls_config(config))
    }

    /// Connect over TLS with a rustls configuration of your own (client certificates,
    /// pinned roots).
    pub fn with_tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(Tls {
            config,
            server_name: self.tls.and_then(|t| t.server_name),
        });
        self
    }

    /// The name to verify the server's certificate against, when it is not the host
    /// connected to (a cluster's nodes behind one certificate name).
    pub fn with_tls_server_name(mut self, name: impl Into<String>) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.server_name = Some(name.into());
        }
        self
    }

    /// A cluster found through gossip: `seeds` are nodes' HTTP endpoints (`host:2113`),
    /// tried in order; the node is chosen by [`Settings::with_node_preference`] and chosen
    /// again (gossip anew) after every connection loss.
    pub fn cluster<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> Self {
        let seeds: Vec<String> = seeds.into_iter().map(Into::into).collect();
        Self {
            seeds: Some(Seeds::List(seeds.clone())),
            ..Self::new(seeds.join(","))
        }
    }

    /// A cluster whose nodes are the addresses of a DNS name, gossiping on `http_port`
    /// (2113 by default on the servers).
    pub fn cluster_dns(name: impl Into<String>, http_port: u16) -> Self {
        let name = name.into();
        Self {
            seeds: Some(Seeds::Dns(name.clone(), http_port)),
            ..Self::new(format!("{name}:{http_port}"))
        }
    }

    /// Which cluster node to use (default the leader). With
    /// [`NodePreference::Follower`] reads may be served by a follower; otherwise reads ask
    /// for the leader and a follower's `NotHandled(NotLeader)` sends the client there.
    pub fn with_node_preference(mut self, preference: NodePreference) -> Self {
        self.node_preference = preference;
        self
    }

    /// How long one gossip request may take (default 1 s).
    pub fn with_gossip_timeout(mut self, timeout: Duration) -> Self {
        self.gossip_timeout = timeout;
        self
    }

    /// Whether reads must be served by the leader (`require_leader`).
    pub(crate) fn reads_require_leader(&self) -> bool {
        self.node_preference == NodePreference::Leader
    }

    /// Default credentials: sent with `Authenticate` on every (re)connect.
    pub fn with_credentials(
        mut self,
        login: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, Error> {
        self.credentials = Some(Credentials::new(login, password)?);
        Ok(self)
    }

    /// The name the server logs for this connection (`IdentifyClient`).
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Client heartbeats: a request every `interval`; the connection is dead when nothing
    /// arrives within `timeout` of an unanswered one (defaults 750 ms / 1500 ms). The same
    /// call as the Pulsar client's `with_keepalive`.
    pub fn with_keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval.max(Duration::from_millis(10));
        self.heartbeat_timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// The old name of [`with_keepalive`](Self::with_keepalive) (Extreme's heartbeats).
    #[deprecated(
        since = "0.1.0",
        note = "renamed `with_keepalive`, as in the Pulsar client"
    )]
    pub fn with_heartbeat(self, interval: Duration, timeout: Duration) -> Self {
        self.with_keepalive(interval, timeout)
    }

    /// How long an operation waits for its answer before it is sent again (default 7 s),
    /// and how often it is sent in all (default 10 retries).
    pub fn with_operation_timeout(mut self, timeout: Duration, retries: u32) -> Self {
        self.operation_timeout = timeout;
        self.operation_retries = retries;
        self
    }

    /// How long a TCP connection (and then the TLS handshake) may take to open (default
    /// 5 s); the handshake after it is bounded by the operation timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Give up after this many failed reconnection attempts in a row (Extreme's
    /// `max_attempts`); unlimited by default.
    pub fn with_max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.max_reconnect_attempts = Some(attempts);
        self
    }

    /// Reconnect backoff: from `min`, doubling to `max`, with 50–100 % jitter. Default
    /// 100 ms to 1 s: during a long outage attempts stay cheap (one a second), and once the
    /// node is back the connection resumes within about a second.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_min);
        self
    }
}

/// What a subscription's correlation id carries to its owner.
#[derive(Debug)]
pub(crate) enum Routed {
    /// A frame with the subscription's correlation id.
    Frame(Frame),
    /// The connection was lost; the subscription is being re-established.
    Lost,
}

/// Where the answers to a request go.
enum Reply {
    /// One reply frame.
    Once(oneshot::Sender<Result<Frame, Error>>),
    /// Every frame with this correlation id, until one ends the subscription.
    Stream(mpsc::UnboundedSender<Routed>),
}

impl Reply {
    fn fail(self, error: Error) {
        match self {
            Self::Once(tx) => {
                let _ = tx.send(Err(error));
            }
            Self::Stream(tx) => {
                let _ = tx.send(Routed::Lost);
            }
        }
    }
}

/// One request from a handle to the driver.
struct Op {
    request: Request,
    /// `None`: no answer expected (unsubscribe, acks).
    reply: Option<Reply>,
}

/// A connection to one node. Cheap to clone; every clone shares the socket. Operations are
/// pipelined and matched to replies by correlation id; they are retried after a timeout,
/// on `NotHandled(NotReady | TooBusy)` and after a reconnect.
#[derive(Clone)]
pub struct Connection {
    tx: mpsc::UnboundedSender<Op>,
    /// Whether a handshaken socket is up (set by the driver).
    connected: Arc<AtomicBool>,
    /// Set by [`Connection::close`]; the driver watches it.
    close: Arc<watch::Sender<bool>>,
    settings: Arc<Settings>,
    /// Credentials of this handle's operations (see [`Connection::as_user`]).
    credentials: Option<Credentials>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.settings.addr)
            .field(
                "as_user",
                &self.credentials.as_ref().map(Credentials::login),
            )
            .finish_non_exhaustive()
    }
}

/// The node to connect to: where a `NotLeader` answer pointed, else the gossip's choice
/// (avoiding `failed`), else the configured address.
async fn target(
    settings: &Settings,
    redirect: Option<String>,
    failed: Option<&str>,
) -> Result<String, ConnectError> {
    if let Some(addr) = redirect {
        return Ok(addr);
    }
    let Some(seeds) = &settings.seeds else {
        return Ok(settings.addr.clone());
    };
    gossip::discover(
        seeds,
        failed,
        settings.node_preference,
        settings.tls.as_ref(),
        settings.gossip_timeout,
    )
    .await
    .map_err(ConnectError::Gossip)
}

/// A socket to `addr`: TCP, then TLS when configured, each within the connect timeout.
async fn open(settings: &Settings, addr: &str) -> Result<Socket, ConnectError> {
    let timeout = settings.connect_timeout;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::ConnectTimeout(timeout))??;
    let _ = stream.set_nodelay(true);
    match &settings.tls {
        None => Ok(Box::new(stream)),
        Some(tls) => tokio::time::timeout(timeout, tls.connect(addr, stream))
            .await
            .map_err(|_| ConnectError::ConnectTimeout(timeout))?,
    }
}

impl Connection {
    /// Connect and handshake; the first connection's errors (unreachable, refused
    /// credentials) are returned here.
    pub async fn connect(settings: Settings) -> Result<Self, Error> {
        let settings = Arc::new(settings);
        let (tx, rx) = mpsc::unbounded_channel();
        let (close, closing) = watch::channel(false);
        let (first, ready) = oneshot::channel();
        let connected = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            connected: Arc::clone(&connected),
            session: Session::new(SessionConfig {
                credentials: settings.credentials.clone(),
                connection_name: settings.connection_name.clone(),
                heartbeat_interval: settings.heartbeat_interval,
                heartbeat_timeout: settings.heartbeat_timeout,
                operation_timeout: settings.operation_timeout,
                operation_retries: settings.operation_retries,
                tls: settings.tls.is_some(),
            }),
            settings: settings.clone(),
            rx,
            closing,
            replies: HashMap::new(),
            addr: settings.addr.clone(),
            first: Some(first),
        };
        tokio::spawn(driver.run());
        ready.await.unwrap_or(Err(Error::Closed))?;
        Ok(Self {
            tx,
            connected,
            close: Arc::new(close),
            settings,
            credentials: None,
        })
    }

    /// Close the connection for every handle: operations in flight and later ones fail with
    /// [`Error::Closed`], subscriptions end, the socket is shut down (a reconnect in
    /// progress stops). Returns once the connection's task has ended, or after 5 s.
    pub async fn close(&self) {
        self.close.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tx.closed()).await;
    }

    /// Whether a connection to a node is up and handshaken right now (`false` while it
    /// reconnects, and after [`close`](Self::close)).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether [`close`](Self::close) was called (on this handle or a clone).
    pub fn is_closed(&self) -> bool {
        *self.close.borrow() || self.tx.is_closed()
    }

    /// A handle on the same socket whose operations carry these credentials instead of the
    /// default ones (per-operation credentials). Errors for credentials that cannot be sent
    /// (see [`Credentials::new`]).
    pub fn as_user(
        &self,
        login: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, Error> {
        Ok(Self {
            credentials: Some(Credentials::new(login, password)?),
            ..self.clone()
        })
    }

    /// Send a request and wait for its reply frame (retries included).
    pub(crate) async fn request(&self, command: Command, payload: Vec<u8>) -> Result<Frame, Error> {
        let (reply, rx) = oneshot::channel();
        let request = self.request_to(command, correlation(), payload, Expect::Reply);
        self.tx
            .send(Op {
                request,
                reply: Some(Reply::Once(reply)),
            })
            .map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Start a subscription: every frame with its correlation id goes to the returned
    /// receiver, across reconnects (a `Routed::Lost` marks each).
    pub(crate) fn subscribe_raw(
        &self,
        command: Command,
        payload: Vec<u8>,
    ) -> Result<([u8; 16], mpsc::UnboundedReceiver<Routed>), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let c = correlation();
        let request = self.request_to(command, c, payload, Expect::Stream);
        self.tx
            .send(Op {
                request,
                reply: Some(Reply::Stream(tx)),
            })
            .map_err(|_| Error::Closed)?;
        Ok((c, rx))
    }

    /// Send a frame that expects no answer of its own.
    pub(crate) fn send_only(
        &self,
        command: Command,
        correlation: [u8; 16],
        payload: Vec<u8>,
    ) -> Result<(), Error> {
        let request = self.request_to(command, correlation, payload, Expect::Nothing);
        self.tx
            .send(Op {
                request,
                reply: None,
            })
            .map_err(|_| Error::Closed)
    }

    /// A request with this handle's credentials.
    fn request_to(
        &self,
        command: Command,
        correlation: Correlation,
        payload: Vec<u8>,
        expect: Expect,
    ) -> Request {
        Request {
            command,
            correlation,
            payload: payload.into(),
            credentials: self.credentials.clone(),
            expect,
        }
    }

    /// End the subscription with this correlation id (the server answers
    /// `SubscriptionDropped(Unsubscribed)` on it).
    pub(crate) fn unsubscribe(&self, correlation: [u8; 16]) -> Result<(), Error> {
        self.send_only(
            Command::UnsubscribeFromStream,
            correlation,
            wire::UnsubscribeFromStream {}.encode_to_vec(),
        )
    }

    /// Round trip to the server (`Ping` → `Pong`).
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        let reply = self.request(Command::Ping, Vec::new()).await?;
        if reply.command != Command::Pong {
            return Err(Error::Decode(format!(
                "{:?} in answer to Ping",
                reply.command
            )));
        }
        Ok(started.elapsed())
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The driver's clock: tokio's (so paused test time applies), as the session's `Instant`.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Resolves once `Connection::close` was called (or every handle is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// Moves bytes between the socket and the [`Session`], re-arms its one timer, connects
/// again when it asks; it decides nothing else.
struct Driver {
    settings: Arc<Settings>,
    /// Told whether a handshaken socket is up ([`Connection::is_connected`]).
    connected: Arc<AtomicBool>,
    session: Session,
    rx: mpsc::UnboundedReceiver<Op>,
    /// True once `Connection::close` was called.
    closing: watch::Receiver<bool>,
    /// Where each request's answers go, by correlation id.
    replies: HashMap<Correlation, Reply>,
    /// The node of the current (or last) connection.
    addr: String,
    /// Told how the first connection went (`Connection::connect` waits for it).
    first: Option<oneshot::Sender<Result<(), Error>>>,
}

/// How one connection ended.
enum End {
    /// Every handle is gone, or `close` was called.
    Closed,
    /// The connection failed or broke (`ready`: after its handshake).
    Lost { why: ConnectError, ready: bool },
}

impl Driver {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.settings.backoff_min, self.settings.backoff_max)
            .with_max_attempts(self.settings.max_reconnect_attempts);
        let mut redirect = None;
        let mut failed = None;
        loop {
            let end = match self.open(redirect.take(), failed.take()).await {
                Ok(socket) => self.session(socket).await,
                Err(End::Closed) => End::Closed,
                Err(lost) => lost,
            };
            let (why, ready) = match end {
                End::Closed => return self.finish(Error::Closed),
                End::Lost { why, ready } => (why, ready),
            };
            let error = match why.clone() {
                ConnectError::NotAuthenticated(why) => Error::NotAuthenticated(why),
                reason => Error::Connect {
                    addr: self.addr.clone(),
                    reason,
                },
            };
            if let Some(first) = self.first.take() {
                let _ = first.send(Err(error));
                return self.finish(Error::Closed);
            }
            if matches!(why, ConnectError::NotAuthenticated(_)) {
                return self.give_up(error);
            }
            failed = Some(self.addr.clone());
            if ready {
                tracing::warn!(addr = %self.addr, reason = %why, pending = self.session.in_flight(), "eventstore: connection lost");
                backoff.reset();
                if let ConnectError::NotLeader(leader) = why {
                    redirect = Some(leader);
                }
                continue; // at once: the node (or its leader) is likely up
            }
            let mut closing = self.closing.clone();
            let what = format!("eventstore {}", self.addr);
            match backoff.pause(&what, &error, closed(&mut closing)).await {
                Pause::Retry => {}
                Pause::GiveUp => return self.give_up(error),
                Pause::Stopped => return self.finish(Error::Closed),
            }
        }
    }

    /// A socket to the leader a `NotLeader` named, or to the node gossip chooses now (not
    /// the one that just failed, when there is another), or to the one address.
    async fn open(
        &mut self,
        redirect: Option<String>,
        failed: Option<String>,
    ) -> Result<Socket, End> {
        let lost = |why| End::Lost { why, ready: false };
        let redirected = redirect.is_some();
        let mut closing = self.closing.clone();
        let addr = tokio::select! {
            addr = target(&self.settings, redirect, failed.as_deref()) => addr.map_err(lost)?,
            () = closed(&mut closing) => return Err(End::Closed),
        };
        if failed.as_ref().is_some_and(|f| *f != addr) || redirected {
            tracing::info!(from = %self.addr, to = %addr, redirected, "eventstore: connecting to another node");
        }
        self.addr = addr;
        tokio::select! {
            socket = open(&self.settings, &self.addr) => socket.map_err(lost),
            () = closed(&mut closing) => Err(End::Closed),
        }
    }

    fn give_up(self, error: Error) {
        tracing::error!(addr = %self.addr, %error, "eventstore: giving up");
        self.finish(error);
    }

    /// Fail everything in flight and everything queued with `error`; later operations find
    /// the channel closed ([`Error::Closed`]).
    fn finish(mut self, error: Error) {
        self.rx.close();
        for (_, reply) in self.replies.drain() {
            reply.fail(error.clone());
        }
        while let Ok(op) = self.rx.try_recv() {
            if let Some(reply) = op.reply {
                reply.fail(error.clone());
            }
        }
    }

    /// One connection: handshake, then operations until it breaks or the client closes.
    async fn session(&mut self, mut socket: Socket) -> End {
        self.session.connected(now());
        let mut closing = self.closing.clone();
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut armed = None;
        let mut ready = false;
        loop {
            if let Some(bytes) = self.session.poll_transmit()
                && let Err(e) = socket.write_all(&bytes).await
            {
                self.session.connection_lost(e.into());
            }
            while let Some(event) = self.session.poll_event() {
                match event {
                    Event::Ready => {
                        ready = true;
                        self.connected.store(true, Ordering::Relaxed);
                        if let Some(first) = self.first.take() {
                            let _ = first.send(Ok(()));
                        }
                    }
                    Event::Lost(why) => {
                        self.connected.store(false, Ordering::Relaxed);
                        return End::Lost { why, ready };
                    }
                    event => self.route(event),
                }
            }
            let deadline = self.session.poll_timeout();
            if deadline != armed {
                armed = deadline;
                // No deadline: a day away (the loop re-arms on the next turn anyway).
                let at = deadline.unwrap_or_else(|| now() + Duration::from_secs(86_400));
                timer.as_mut().reset(at.into());
            }
            tokio::select! {
                () = closed(&mut closing) => break,
                op = self.rx.recv() => {
                    let Some(op) = op else { break };
                    let now = now();
                    let mut next = Some(op);
                    while let Some(op) = next.take() {
                        if let Some(reply) = op.reply {
                            self.replies.insert(op.request.correlation, reply);
                        }
                        self.session.send(op.request, now);
                        next = self.rx.try_recv().ok();
                    }
                }
                n = socket.read_buf(self.session.buffer()) => match n {
                    Ok(0) => self.session.connection_lost(ConnectError::ClosedByServer),
                    Ok(_) => self.session.handle_read(now()),
                    Err(e) => self.session.connection_lost(e.into()),
                },
                () = &mut timer => {
                    armed = None;
                    self.session.handle_timeout(now());
                }
            }
        }
        self.connected.store(false, Ordering::Relaxed);
        let _ = socket.shutdown().await;
        End::Closed
    }

    /// Hand an answer, a subscription's frame or its interruption to its owner.
    fn route(&mut self, event: Event) {
        match event {
            Event::Reply {
                correlation,
                result,
            } => {
                if let Some(Reply::Once(tx)) = self.replies.remove(&correlation) {
                    let _ = tx.send(result);
                }
            }
            Event::Delivered { correlation, frame } => {
                let ends = frame.command.ends_subscription();
                let taken = match self.replies.get(&correlation) {
                    Some(Reply::Stream(tx)) => tx.send(Routed::Frame(frame)).is_ok(),
                    _ => false,
                };
                if !taken {
                    self.session.forget(&correlation); // the subscriber is gone
                }
                if ends || !taken {
                    self.replies.remove(&correlation);
                }
            }
            Event::Interrupted { correlation } => {
                if let Some(Reply::Stream(tx)) = self.replies.get(&correlation) {
                    let _ = tx.send(Routed::Lost);
                }
            }
            Event::Ready | Event::Lost(_) => {}
        }
    }
}
