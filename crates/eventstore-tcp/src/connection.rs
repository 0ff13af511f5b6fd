//! The connection: handshake, heartbeats, correlation, retries and reconnection —
//! [`Settings`], [`Connection`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use headwaters_ordering_core::{Backoff, Keepalive, Liveness};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

use crate::command::Command;
use crate::error::{Busy, Error};
use crate::frame::{Credentials, Frame, FrameDecoder};
use crate::gossip::{self, NodePreference, Seeds};
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
    pub(crate) async fn connect(&self, addr: &str, stream: TcpStream) -> Result<Socket, String> {
        let host = self.server_name.clone().unwrap_or_else(|| {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("TLS server name {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
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
        }
    }

    /// Connect over TLS (the servers' secure TCP port), trusting the system's roots and,
    /// if given, the CA certificates in `ca_pem`. Cluster discovery then picks nodes'
    /// secure ports and gossips over HTTPS.
    pub fn with_tls(self, ca_pem: Option<&[u8]>) -> Result<Self, Error> {
        let config =
            headwaters_ordering_core::tls::client_config(ca_pem, None).map_err(Error::Tls)?;
        Ok(self.with_tls_config(config))
    }

    /// Connect over TLS presenting a client certificate (`cert_pem`: the chain, `key_pem`:
    /// its private key), trusting the system's roots and `ca_pem`.
    pub fn with_tls_identity(
        self,
        ca_pem: Option<&[u8]>,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, Error> {
        let config =
            headwaters_ordering_core::tls::client_config(ca_pem, Some((cert_pem, key_pem)))
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

    /// Client heartbeats: a request after `interval` of silence, the connection is dead
    /// after `timeout` more (defaults 750 ms / 1500 ms).
    pub fn with_heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval.max(Duration::from_millis(10));
        self.heartbeat_timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// How long an operation waits for its answer before it is sent again (default 7 s),
    /// and how often it is sent in all (default 10 retries).
    pub fn with_operation_timeout(mut self, timeout: Duration, retries: u32) -> Self {
        self.operation_timeout = timeout;
        self.operation_retries = retries;
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

/// Where the answer to a request goes.
enum Reply {
    /// One reply frame.
    Once(oneshot::Sender<Result<Frame, Error>>),
    /// Every frame with this correlation id, until `SubscriptionDropped` (subscriptions).
    Stream(mpsc::UnboundedSender<Routed>),
    /// None expected (unsubscribe, acks).
    Nothing,
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
            Self::Nothing => {}
        }
    }
}

/// One request on its way.
struct Op {
    command: Command,
    payload: Bytes,
    credentials: Option<Credentials>,
    reply: Reply,
    /// Reuse this correlation id (unsubscribe names its subscription's).
    correlation: Option<[u8; 16]>,
}

struct Pending {
    frame: Bytes,
    reply: Reply,
    sent: Instant,
    attempts: u32,
}

/// A connection to one node. Cheap to clone; every clone shares the socket. Operations are
/// pipelined and matched to replies by correlation id; they are retried after a timeout,
/// on `NotHandled(NotReady | TooBusy)` and after a reconnect.
#[derive(Clone)]
pub struct Connection {
    tx: mpsc::UnboundedSender<Op>,
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

/// A handshaken socket.
struct Link {
    stream: Socket,
    decoder: FrameDecoder,
}

fn correlation() -> [u8; 16] {
    *Uuid::new_v4().as_bytes()
}

/// Write one handshake frame; the error says why the connection failed.
async fn write_frame(stream: &mut Socket, frame: &Frame) -> Result<(), String> {
    let bytes = frame.to_bytes().map_err(|e| e.to_string())?;
    stream.write_all(&bytes).await.map_err(|e| e.to_string())
}

/// Read the reply to `correlation` during the handshake, answering heartbeats.
async fn await_reply(link: &mut Link, correlation: [u8; 16]) -> Result<Frame, String> {
    loop {
        while let Some(frame) = link.decoder.next_frame().map_err(|e| e.to_string())? {
            if frame.command == Command::HeartbeatRequest {
                let pong = Frame::new(Command::HeartbeatResponse, frame.correlation, Bytes::new());
                write_frame(&mut link.stream, &pong).await?;
            } else if frame.correlation == correlation {
                return Ok(frame);
            }
        }
        let n = link
            .stream
            .read_buf(link.decoder.buffer())
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
    }
}

/// The node to connect to: where a `NotLeader` answer pointed, else the gossip's choice
/// (avoiding `failed`), else the configured address.
async fn target(
    settings: &Settings,
    redirect: Option<String>,
    failed: Option<&str>,
) -> Result<String, Error> {
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
    .map_err(|reason| Error::Connect {
        addr: settings.addr.clone(),
        reason,
    })
}

/// TCP connect to `addr`, then `Authenticate` (with default credentials) and
/// `IdentifyClient`.
async fn handshake(settings: &Settings, addr: &str) -> Result<Link, Error> {
    let connect_err = |reason: String| Error::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            connect_err(format!(
                "no connection within {:?}",
                settings.connect_timeout
            ))
        })?
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let stream: Socket = match &settings.tls {
        None => Box::new(stream),
        Some(tls) => tokio::time::timeout(settings.connect_timeout, tls.connect(addr, stream))
            .await
            .map_err(|_| connect_err("no TLS handshake in time".into()))?
            .map_err(connect_err)?,
    };
    let mut link = Link {
        stream,
        decoder: FrameDecoder::new(),
    };
    let steps = async {
        if let Some(credentials) = &settings.credentials {
            let c = correlation();
            let auth = Frame::new(Command::Authenticate, c, Bytes::new())
                .with_credentials(credentials.clone());
            write_frame(&mut link.stream, &auth)
                .await
                .map_err(connect_err)?;
            let reply = await_reply(&mut link, c).await.map_err(connect_err)?;
            match reply.command {
                Command::Authenticated => {}
                Command::NotAuthenticated => {
                    return Err(Error::NotAuthenticated(
                        String::from_utf8_lossy(&reply.payload).into_owned(),
                    ));
                }
                other => {
                    return Err(connect_err(format!("unexpected {other:?} to Authenticate")));
                }
            }
        }
        let c = correlation();
        let identify = wire::IdentifyClient {
            version: 1,
            connection_name: Some(settings.connection_name.clone()),
        };
        write_frame(
            &mut link.stream,
            &Frame::new(Command::IdentifyClient, c, identify.encode_to_vec()),
        )
        .await
        .map_err(connect_err)?;
        let reply = await_reply(&mut link, c).await.map_err(connect_err)?;
        if reply.command != Command::ClientIdentified {
            return Err(connect_err(format!(
                "unexpected {:?} to IdentifyClient",
                reply.command
            )));
        }
        Ok(())
    };
    tokio::time::timeout(settings.operation_timeout, steps)
        .await
        .map_err(|_| connect_err("no answer to the handshake".into()))??;
    Ok(link)
}

impl Connection {
    /// Connect and handshake; the first connection's errors (unreachable, refused
    /// credentials) are returned here.
    pub async fn connect(settings: Settings) -> Result<Self, Error> {
        let addr = target(&settings, None, None).await?;
        let link = handshake(&settings, &addr).await?;
        tracing::debug!(%addr, "eventstore: connected");
        let settings = Arc::new(settings);
        let (tx, rx) = mpsc::unbounded_channel();
        let (close, closing) = watch::channel(false);
        let driver = Driver {
            settings: settings.clone(),
            rx,
            closing,
            pending: HashMap::new(),
            addr,
            redirect: None,
        };
        tokio::spawn(driver.run(link));
        Ok(Self {
            tx,
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
        self.tx
            .send(Op {
                command,
                payload: payload.into(),
                credentials: self.credentials.clone(),
                reply: Reply::Once(reply),
                correlation: None,
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
        self.tx
            .send(Op {
                command,
                payload: payload.into(),
                credentials: self.credentials.clone(),
                reply: Reply::Stream(tx),
                correlation: Some(c),
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
        self.tx
            .send(Op {
                command,
                payload: payload.into(),
                credentials: self.credentials.clone(),
                reply: Reply::Nothing,
                correlation: Some(correlation),
            })
            .map_err(|_| Error::Closed)
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
        let started = std::time::Instant::now();
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

/// Resolves once `Connection::close` was called (or every handle is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

struct Driver {
    settings: Arc<Settings>,
    rx: mpsc::UnboundedReceiver<Op>,
    /// True once `Connection::close` was called.
    closing: watch::Receiver<bool>,
    pending: HashMap<[u8; 16], Pending>,
    /// The node of the current (or last) connection.
    addr: String,
    /// The leader a `NotHandled(NotLeader)` named: the next connection goes there.
    redirect: Option<String>,
}

enum End {
    /// Every handle is gone, or `close` was called.
    Closed,
    /// The socket broke.
    Lost(String),
}

impl Driver {
    async fn run(mut self, first: Link) {
        let mut link = Some(first);
        let mut backoff = Backoff::new(self.settings.backoff_min, self.settings.backoff_max)
            .with_max_attempts(self.settings.max_reconnect_attempts);
        loop {
            let mut current = match link.take() {
                Some(l) => l,
                None => match self.reconnect().await {
                    Ok(l) => {
                        backoff.reset();
                        l
                    }
                    Err(e @ Error::NotAuthenticated(_)) => return self.give_up(e),
                    Err(e) => {
                        let Some(wait) = backoff.retry() else {
                            return self.give_up(e);
                        };
                        tracing::warn!(addr = %self.addr, error = %e, ?wait, "eventstore: reconnecting");
                        let mut closing = self.closing.clone();
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = closed(&mut closing) => return self.finish(Error::Closed),
                        }
                        continue;
                    }
                },
            };
            match self.session(&mut current).await {
                End::Closed => {
                    let _ = current.stream.shutdown().await;
                    return self.finish(Error::Closed);
                }
                End::Lost(reason) => {
                    tracing::warn!(addr = %self.addr, %reason, pending = self.pending.len(), "eventstore: connection lost");
                }
            }
        }
    }

    /// Connect again: to the leader a `NotLeader` named, or to the node gossip chooses now
    /// (not the one that just failed, when there is another), or to the one address.
    async fn reconnect(&mut self) -> Result<Link, Error> {
        let redirected = self.redirect.is_some();
        let addr = target(&self.settings, self.redirect.take(), Some(&self.addr)).await?;
        let link = handshake(&self.settings, &addr).await?;
        if addr != self.addr || redirected {
            tracing::info!(from = %self.addr, to = %addr, redirected, "eventstore: connected to another node");
        }
        self.addr = addr;
        Ok(link)
    }

    fn give_up(self, error: Error) {
        tracing::error!(addr = %self.addr, %error, "eventstore: giving up");
        self.finish(error);
    }

    /// Fail everything in flight and everything queued with `error`; later operations find
    /// the channel closed ([`Error::Closed`]).
    fn finish(mut self, error: Error) {
        self.rx.close();
        for (_, p) in self.pending.drain() {
            p.reply.fail(error.clone());
        }
        while let Ok(op) = self.rx.try_recv() {
            op.reply.fail(error.clone());
        }
    }

    async fn session(&mut self, link: &mut Link) -> End {
        // Operations in flight when the last connection broke go out again; subscriptions
        // hear that they were cut, then subscribe again.
        let mut out = BytesMut::new();
        for p in self.pending.values_mut() {
            if let Reply::Stream(tx) = &p.reply {
                let _ = tx.send(Routed::Lost);
            }
            out.extend_from_slice(&p.frame);
            p.sent = Instant::now();
        }
        if !out.is_empty() && link.stream.write_all(&out).await.is_err() {
            return End::Lost("write failed".into());
        }
        let interval = self.settings.heartbeat_interval;
        let mut keepalive = Keepalive::new(
            interval,
            self.settings.heartbeat_timeout,
            Instant::now().into_std(),
        );
        // Drives the heartbeats and the operation timeouts.
        let mut tick = tokio::time::interval(Duration::from_millis(50).min(interval));
        let mut closing = self.closing.clone();
        loop {
            tokio::select! {
                () = closed(&mut closing) => return End::Closed,
                op = self.rx.recv() => {
                    let Some(op) = op else { return End::Closed };
                    let mut out = BytesMut::new();
                    let mut next = Some(op);
                    while let Some(op) = next.take() {
                        self.start(op, &mut out);
                        next = self.rx.try_recv().ok();
                    }
                    if link.stream.write_all(&out).await.is_err() {
                        return End::Lost("write failed".into());
                    }
                }
                n = link.stream.read_buf(link.decoder.buffer()) => {
                    match n {
                        Ok(0) => return End::Lost("closed by the server".into()),
                        Err(e) => return End::Lost(e.to_string()),
                        Ok(_) => {}
                    }
                    keepalive.heard();
                    let mut out = BytesMut::new();
                    loop {
                        match link.decoder.next_frame() {
                            Ok(Some(frame)) => {
                                if let Err(reason) = self.received(frame, &mut out) {
                                    return End::Lost(reason);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return End::Lost(e.to_string()),
                        }
                    }
                    if !out.is_empty() && link.stream.write_all(&out).await.is_err() {
                        return End::Lost("write failed".into());
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    match keepalive.poll(now.into_std()) {
                        Liveness::Wait => {}
                        Liveness::Probe => {
                            let request = Frame::new(Command::HeartbeatRequest, correlation(), Bytes::new());
                            let Ok(bytes) = request.to_bytes() else { continue };
                            if link.stream.write_all(&bytes).await.is_err() {
                                return End::Lost("write failed".into());
                            }
                        }
                        Liveness::Dead(timeout) => {
                            return End::Lost(format!("no heartbeat answer within {timeout:?}"));
                        }
                    }
                    let mut out = BytesMut::new();
                    self.expire(now, &mut out);
                    if !out.is_empty() && link.stream.write_all(&out).await.is_err() {
                        return End::Lost("write failed".into());
                    }
                }
            }
        }
    }

    /// Encode an operation, remember it, queue its bytes.
    fn start(&mut self, op: Op, out: &mut BytesMut) {
        let c = op.correlation.unwrap_or_else(correlation);
        let mut frame = Frame::new(op.command, c, op.payload);
        if let Some(creds) = op.credentials.or_else(|| self.settings.credentials.clone()) {
            frame = frame.with_credentials(creds);
        }
        match frame.to_bytes() {
            Ok(bytes) => {
                out.extend_from_slice(&bytes);
                if matches!(op.reply, Reply::Nothing) {
                    return;
                }
                self.pending.insert(
                    c,
                    Pending {
                        frame: bytes,
                        reply: op.reply,
                        sent: Instant::now(),
                        attempts: 1,
                    },
                );
            }
            Err(e) => op.reply.fail(e.into()),
        }
    }

    /// Retry or fail operations whose answer is overdue.
    fn expire(&mut self, now: Instant, out: &mut BytesMut) {
        let timeout = self.settings.operation_timeout;
        let overdue: Vec<[u8; 16]> = self
            .pending
            .iter()
            // A subscription waits for its events as long as it lives.
            .filter(|(_, p)| !matches!(p.reply, Reply::Stream(_)) && now >= p.sent + timeout)
            .map(|(c, _)| *c)
            .collect();
        for c in overdue {
            let Some(mut p) = self.pending.remove(&c) else {
                continue;
            };
            if p.attempts > self.settings.operation_retries {
                p.reply.fail(Error::Timeout(timeout));
                continue;
            }
            p.attempts += 1;
            p.sent = now;
            out.extend_from_slice(&p.frame);
            self.pending.insert(c, p);
        }
    }

    /// Route a frame from the server. `Err` when the connection must be dropped.
    fn received(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), String> {
        match frame.command {
            Command::HeartbeatRequest => {
                let answer =
                    Frame::new(Command::HeartbeatResponse, frame.correlation, Bytes::new());
                if let Ok(bytes) = answer.to_bytes() {
                    out.extend_from_slice(&bytes);
                }
                return Ok(());
            }
            Command::HeartbeatResponse => return Ok(()),
            Command::BadRequest if frame.correlation == [0; 16] => {
                return Err(format!(
                    "the server refused the connection: {}",
                    String::from_utf8_lossy(&frame.payload)
                ));
            }
            _ => {}
        }
        if let Some(Pending {
            reply: Reply::Stream(tx),
            ..
        }) = self.pending.get(&frame.correlation)
            && frame.command != Command::NotHandled
        {
            let ends = frame.command.ends_subscription();
            let c = frame.correlation;
            if tx.send(Routed::Frame(frame)).is_err() || ends {
                self.pending.remove(&c);
            }
            return Ok(());
        }
        let Some(mut p) = self.pending.remove(&frame.correlation) else {
            tracing::debug!(command = ?frame.command, "eventstore: a reply for no pending operation");
            return Ok(());
        };
        if frame.command == Command::NotHandled {
            let reason = match wire::NotHandled::decode(frame.payload.clone()) {
                Ok(n) => n.reason(),
                Err(e) => {
                    // Not retried as if busy: what the server meant is unknown.
                    p.reply.fail(Error::Decode(format!(
                        "a NotHandled reply that does not decode: {e}"
                    )));
                    return Ok(());
                }
            };
            use wire::not_handled::NotHandledReason as R;
            let busy = match reason {
                R::NotReady => Busy::NotReady,
                R::TooBusy => Busy::TooBusy,
                R::IsReadOnly => {
                    p.reply.fail(Error::ReadOnly);
                    return Ok(());
                }
                R::NotMaster => {
                    // Reconnect to the leader it names and send the operation there.
                    let leader = leader(&frame.payload, self.settings.tls.is_some());
                    match leader {
                        Some(addr) if p.attempts <= self.settings.operation_retries => {
                            p.attempts += 1;
                            self.pending.insert(frame.correlation, p);
                            let reason =
                                format!("not the leader; reconnecting to the leader at {addr}");
                            self.redirect = Some(addr);
                            return Err(reason);
                        }
                        _ => {
                            p.reply
                                .fail(Error::NotLeader(leader.unwrap_or_else(|| "unknown".into())));
                            return Ok(());
                        }
                    }
                }
            };
            if p.attempts > self.settings.operation_retries {
                p.reply.fail(Error::NotHandled(busy));
                return Ok(());
            }
            p.attempts += 1;
            p.sent = Instant::now();
            out.extend_from_slice(&p.frame);
            self.pending.insert(frame.correlation, p);
            return Ok(());
        }
        let result = match frame.command {
            Command::NotAuthenticated => Err(Error::NotAuthenticated(
                String::from_utf8_lossy(&frame.payload).into_owned(),
            )),
            Command::BadRequest => Err(Error::BadRequest(
                String::from_utf8_lossy(&frame.payload).into_owned(),
            )),
            _ => Ok(frame),
        };
        if let Reply::Once(tx) = p.reply {
            let _ = tx.send(result);
        }
        Ok(())
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
