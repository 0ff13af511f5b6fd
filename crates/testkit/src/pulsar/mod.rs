//! An in-process Pulsar WebSocket API v2 server that behaves as Pulsar's own handlers do
//! (`ProducerHandler`, `ConsumerHandler`, `ReaderHandler`, `AbstractWebSocketHandler`): the endpoint paths, the query parameters and their
//! validation, HTTP statuses on refused upgrades, receipts with every field, durable
//! subscriptions of all four types, ack / negative ack / ack timeout / dead-letter topic,
//! push windows and pull permits, reader start positions and the reader's
//! slot-per-frame rule, `isEndOfTopic`, unsubscribe, token authentication and the idle
//! timeout. Faults can be injected while it runs.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use headwaters_testkit::pulsar::PulsarEmulator;
//! let emulator = PulsarEmulator::start().await?;
//! println!("point the client at {}", emulator.url());
//! emulator.drop_connections(); // every socket goes away, as when a proxy restarts
//! # Ok(()) }
//! ```

pub mod admin;
mod broker;
mod wire;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

pub use broker::StoredMessage;
use broker::{Broker, ConnId, ConsumerSpec, Out, ReaderStart, Refused, SubKind};
use wire::Position;

/// `webSocketMaxTextFrameSize`'s default.
pub const MAX_TEXT_FRAME: usize = 1024 * 1024;

/// How the emulator behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// Require this token (header `Authorization: Bearer …` or query parameter `token`);
    /// `None` accepts everyone.
    pub token: Option<String>,
    /// Close sockets that send nothing for this long (`webSocketSessionIdleTimeoutMillis`,
    /// default 300 s).
    pub idle_timeout: Duration,
    /// The UTC offset the "server's local zone" writes times in, in seconds.
    pub time_offset_seconds: i32,
    /// Create topics on first use (else 404 for unknown topics).
    pub auto_create_topics: bool,
    /// Serve `wss://` with this rustls configuration.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            token: None,
            idle_timeout: Duration::from_secs(300),
            time_offset_seconds: 0,
            auto_create_topics: true,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl EmulatorConfig {
    /// Require a token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Set the idle timeout.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Write times with this UTC offset (seconds east of UTC).
    pub fn with_time_offset(mut self, seconds: i32) -> Self {
        self.time_offset_seconds = seconds;
        self
    }

    /// Refuse unknown topics with 404 instead of creating them.
    pub fn without_auto_create(mut self) -> Self {
        self.auto_create_topics = false;
        self
    }

    /// Serve TLS.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }
}

struct Shared {
    broker: Mutex<Broker>,
    config: EmulatorConfig,
    /// The token required now (starts as the configured one; see `set_token`).
    token: Mutex<Option<String>>,
    receipt_delay_ms: AtomicU64,
    frozen: watch::Sender<bool>,
    next_conn: AtomicU64,
    kill: watch::Sender<u64>,
    open: AtomicU64,
    pings: AtomicU64,
}

impl Shared {
    fn broker(&self) -> MutexGuard<'_, Broker> {
        // A panic while holding the lock is a bug in the emulator; keep serving.
        self.broker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running emulator. Dropping it stops the server and closes every socket.
pub struct PulsarEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for PulsarEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarEmulator")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl PulsarEmulator {
    /// Start with the default configuration on `127.0.0.1` and a free port.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(
            EmulatorConfig::default(),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await
    }

    /// Start with `config` on `addr`.
    pub async fn start_with(config: EmulatorConfig, addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let offset = time::UtcOffset::from_whole_seconds(config.time_offset_seconds)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let shared = Arc::new(Shared {
            token: Mutex::new(config.token.clone()),
            broker: Mutex::new(Broker::new(config.auto_create_topics, offset)),
            config,
            receipt_delay_ms: AtomicU64::new(0),
            frozen: watch::channel(false).0,
            next_conn: AtomicU64::new(1),
            kill: watch::channel(0).0,
            open: AtomicU64::new(0),
            pings: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        let ticker = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(10));
                loop {
                    every.tick().await;
                    shared.broker().tick(Instant::now());
                }
            })
        };
        Ok(Self {
            addr,
            shared,
            tasks: vec![accept, ticker],
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT` (or `wss://` with TLS).
    pub fn url(&self) -> String {
        #[cfg(feature = "tls")]
        let scheme = if self.shared.config.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        #[cfg(not(feature = "tls"))]
        let scheme = "ws";
        format!("{scheme}://{}", self.addr)
    }

    /// Drop every open socket without a close frame, as a proxy restart does.
    pub fn drop_connections(&self) {
        self.shared.kill.send_modify(|n| *n += 1);
    }

    /// Stop (or resume) reading every socket: frames, pings included, go unanswered, as
    /// with a stalled proxy. New connections are still accepted.
    pub fn freeze(&self, frozen: bool) {
        self.shared.frozen.send_replace(frozen);
    }

    /// Require another token from now on (`None`: none), as after a key rotation; open
    /// connections stay.
    pub fn set_token(&self, token: Option<String>) {
        *self.shared.token.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// Hold every receipt back for `delay` (zero turns it off).
    pub fn delay_receipts(&self, delay: Duration) {
        self.shared
            .receipt_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Fail the next `n` publishes with `send-error:8`.
    pub fn fail_next_sends(&self, n: u32) {
        self.shared.broker().fail_next_sends(n);
    }

    /// Terminate a topic (`persistent://t/ns/name`): publishes fail, readers and consumers
    /// reach the end of the topic.
    pub fn terminate_topic(&self, topic: &str) {
        self.shared.broker().terminate(topic);
    }

    /// Create a topic (needed when auto-creation is off).
    pub fn create_topic(&self, topic: &str) {
        self.shared.broker().create_topic(topic);
    }

    /// Every message stored on a topic, in order.
    pub fn messages(&self, topic: &str) -> Vec<StoredMessage> {
        self.shared.broker().messages(topic)
    }

    /// Messages of a subscription not yet acknowledged (`None` when there is no such
    /// subscription).
    pub fn backlog(&self, topic: &str, subscription: &str) -> Option<usize> {
        self.shared.broker().backlog(topic, subscription)
    }

    /// Messages delivered to the subscription's consumers and not yet acknowledged.
    pub fn unacked(&self, topic: &str, subscription: &str) -> Option<usize> {
        self.shared.broker().unacked(topic, subscription)
    }

    /// A subscription's backlog and unacked count, as a real broker's admin API answers them
    /// ([`admin::PulsarAdmin::subscription`]); `None` when there is no such subscription.
    pub fn subscription(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Option<admin::SubscriptionStats> {
        let broker = self.shared.broker();
        let backlog = broker.backlog(topic, subscription)?;
        let unacked = broker.unacked(topic, subscription).unwrap_or(0);
        Some(admin::SubscriptionStats {
            backlog: backlog as u64,
            unacked: unacked as u64,
        })
    }

    /// Open WebSocket connections.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// WebSocket pings received from clients so far (each answered with a pong).
    pub fn pings(&self) -> u64 {
        self.shared.pings.load(Ordering::Relaxed)
    }

    /// Run until the task is cancelled (for the standalone binary).
    pub async fn serve_forever(&self) {
        std::future::pending::<()>().await;
    }
}

impl Drop for PulsarEmulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.drop_connections();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_tcp(stream, shared.clone()));
    }
}

async fn serve_tcp(stream: TcpStream, shared: Arc<Shared>) {
    #[cfg(feature = "tls")]
    if let Some(tls) = shared.config.tls.clone() {
        match tokio_rustls::TlsAcceptor::from(tls).accept(stream).await {
            Ok(s) => serve(s, shared).await,
            Err(e) => tracing::debug!("emulator: TLS handshake failed: {e}"),
        }
        return;
    }
    serve(stream, shared).await;
}

/// What a socket is.
#[derive(Clone, Copy)]
enum Role {
    Producer,
    Consumer,
    Reader,
    PingPong,
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn serve<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut role = None;
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match open(&shared, conn, tx.clone(), req) {
            Ok(r) => {
                role = Some(r);
                // Counted before the 101 answer leaves: a client that sees itself
                // connected sees itself counted.
                shared.open.fetch_add(1, Ordering::Relaxed);
                Ok(resp)
            }
            Err(refused) => {
                let mut err = ErrorResponse::new(Some(refused.body));
                *err.status_mut() = StatusCode::from_u16(refused.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Err(err)
            }
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_TEXT_FRAME))
        .max_frame_size(Some(MAX_TEXT_FRAME));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
    let (Ok(mut ws), Some(role)) = (ws, role) else {
        if role.is_some() {
            shared.open.fetch_sub(1, Ordering::Relaxed);
        }
        shared.broker().disconnect(conn);
        return;
    };
    drop(tx);
    let mut kill = shared.kill.subscribe();
    let mut frozen = shared.frozen.subscribe();
    let idle = shared.config.idle_timeout;
    let mut last_inbound = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = kill.changed() => break,
            () = tokio::time::sleep_until(last_inbound + idle) => {
                let _ = ws.close(None).await;
                break;
            }
            out = rx.recv() => {
                let Some(out) = out else { break };
                if !write(&mut ws, out, &mut rx).await {
                    break;
                }
            }
            _ = frozen.changed() => {
                last_inbound = tokio::time::Instant::now();
            }
            frame = ws.next(), if !*frozen.borrow() => {
                last_inbound = tokio::time::Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if !inbound(&shared, conn, role, &text) {
                            break;
                        }
                    }
                    Some(Ok(Message::Ping(_))) => {
                        shared.pings.fetch_add(1, Ordering::Relaxed);
                        let _ = ws.flush().await;
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => {
                        let _ = ws.flush().await;
                    }
                    // Binary frames are not part of the API: the JSON decoder fails.
                    Some(Ok(Message::Binary(_))) => {
                        if !inbound(&shared, conn, role, "\u{0}") {
                            break;
                        }
                    }
                    // Over the limit (`webSocketMaxTextFrameSize`): the server closes with
                    // 1009, saying why, as Jetty does.
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        let close = CloseFrame {
                            code: CloseCode::Size,
                            reason: format!("Text message too large: {e} (max {MAX_TEXT_FRAME} bytes)").into(),
                        };
                        let _ = ws.close(Some(close)).await;
                        break;
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                }
            }
        }
    }
    shared.open.fetch_sub(1, Ordering::Relaxed);
    shared.broker().disconnect(conn);
}

/// Write `first` and whatever else is queued, then flush once. `false`: the socket broke.
async fn write<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    first: Out,
    rx: &mut mpsc::UnboundedReceiver<Out>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut next = Some(first);
    while let Some(text) = next.take() {
        if ws.feed(Message::Text(Utf8Bytes::from(text))).await.is_err() {
            return false;
        }
        next = rx.try_recv().ok();
    }
    ws.flush().await.is_ok()
}

/// Handle a text frame. `false`: close the socket (what the Java handler does on bad JSON).
fn inbound(shared: &Arc<Shared>, conn: ConnId, role: Role, text: &str) -> bool {
    match role {
        Role::Producer => {
            let (receipt, tx) = {
                let mut broker = shared.broker();
                (broker.publish(conn, text), broker.producer_sender(conn))
            };
            let delay = shared.receipt_delay_ms.load(Ordering::Relaxed);
            if let Some(tx) = tx {
                if delay == 0 {
                    let _ = tx.send(receipt);
                } else {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let _ = tx.send(receipt);
                    });
                }
            }
            true
        }
        Role::Consumer => shared.broker().consumer_frame(conn, text),
        Role::Reader => shared.broker().reader_frame(conn, text),
        Role::PingPong => true,
    }
}

fn refuse(status: u16, body: impl Into<String>) -> Refused {
    Refused {
        status,
        body: body.into(),
    }
}

/// Whether every `%` in `path` starts an escape of two hex digits.
fn valid_escapes(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

fn query(req: &Request) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
        })
        .collect()
}

fn authenticate(
    shared: &Shared,
    req: &Request,
    q: &HashMap<String, String>,
) -> Result<(), Refused> {
    let expected = shared
        .token
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(expected) = expected else {
        return Ok(());
    };
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The `token` query parameter becomes the header; `Bearer ` is added when missing.
    let presented = header.or_else(|| {
        q.get("token").map(|t| {
            if t.starts_with("Bearer ") {
                t.clone()
            } else {
                format!("Bearer {t}")
            }
        })
    });
    if presented.as_deref() == Some(format!("Bearer {expected}").as_str()) {
        Ok(())
    } else {
        Err(refuse(401, "Failed to authenticate"))
    }
}

fn int<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, Refused> {
    q.get(name)
        .map(|v| {
            v.parse::<T>().map_err(|_| {
                refuse(
                    400,
                    format!("Invalid query params: {name}={v} is not a number"),
                )
            })
        })
        .transpose()
}

fn one_of(
    q: &HashMap<String, String>,
    name: &str,
    allowed: &[&str],
) -> Result<Option<String>, Refused> {
    match q.get(name) {
        Some(v) if !allowed.contains(&v.as_str()) => Err(refuse(
            400,
            format!("Invalid query params: No enum constant {name}.{v}"),
        )),
        v => Ok(v.cloned()),
    }
}

/// Parse and check an upgrade request and register its endpoint with the broker.
fn open(
    shared: &Arc<Shared>,
    conn: ConnId,
    tx: mpsc::UnboundedSender<Out>,
    req: &Request,
) -> Result<Role, Refused> {
    let path = req.uri().path();
    if path == "/ws/pingpong" || path == "/ws/v2/pingpong" {
        return Ok(Role::PingPong);
    }
    // The server's HTTP layer refuses a malformed escape (`%ZZ`, a lone `%`) before routing.
    if !valid_escapes(path) {
        return Err(refuse(
            400,
            format!("Bad Request: invalid percent-encoding in {path}"),
        ));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 8 || parts[1] != "ws" || parts[2] != "v2" {
        return Err(refuse(400, format!("Invalid path {path}")));
    }
    let domain = parts[4];
    if domain != "persistent" && domain != "non-persistent" {
        return Err(refuse(400, format!("Invalid domain {domain}")));
    }
    let q = query(req);
    authenticate(shared, req, &q)?;
    let prefix = format!("{domain}://{}/{}/", decode(parts[5]), decode(parts[6]));
    match parts[3] {
        "producer" => {
            let topic = prefix
                + &parts[7..]
                    .iter()
                    .map(|p| decode(p))
                    .collect::<Vec<_>>()
                    .join("/");
            for n in [
                "sendTimeoutMillis",
                "batchingMaxMessages",
                "maxPendingMessages",
                "batchingMaxPublishDelay",
            ] {
                int::<i32>(&q, n)?;
            }
            int::<i64>(&q, "initialSequenceId")?;
            one_of(
                &q,
                "messageRoutingMode",
                &["SinglePartition", "RoundRobinPartition", "CustomPartition"],
            )?;
            one_of(
                &q,
                "compressionType",
                &["NONE", "LZ4", "ZLIB", "ZSTD", "SNAPPY"],
            )?;
            one_of(&q, "hashingScheme", &["JavaStringHash", "Murmur3_32Hash"])?;
            shared
                .broker()
                .add_producer(conn, tx, &topic, q.get("producerName").cloned())?;
            Ok(Role::Producer)
        }
        "consumer" => {
            if parts.len() != 9 {
                return Err(refuse(400, format!("Invalid consumer path {path}")));
            }
            let subscription = decode(parts[8]);
            if subscription.is_empty() {
                return Err(refuse(400, "Empty subscription name"));
            }
            let kind = one_of(
                &q,
                "subscriptionType",
                &["Exclusive", "Shared", "Failover", "Key_Shared"],
            )?
            .and_then(|k| SubKind::parse(&k))
            .unwrap_or(SubKind::Exclusive);
            let mode = one_of(&q, "subscriptionMode", &["Durable", "NonDurable"])?;
            let position = one_of(&q, "subscriptionInitialPosition", &["Latest", "Earliest"])?;
            let ack_timeout = int::<i64>(&q, "ackTimeoutMillis")?.unwrap_or(0);
            if ack_timeout != 0 && ack_timeout < 1000 {
                return Err(refuse(
                    400,
                    "Invalid query params: Ack timeout should be greater than 1000 ms",
                ));
            }
            let queue = int::<i64>(&q, "receiverQueueSize")?
                .unwrap_or(1000)
                .min(1000);
            int::<i32>(&q, "priorityLevel")?;
            let nack_delay = int::<i64>(&q, "negativeAckRedeliveryDelay")?.unwrap_or(60_000);
            let max_redeliver = int::<u32>(&q, "maxRedeliverCount")?.unwrap_or(0);
            let spec = ConsumerSpec {
                topic: prefix + &decode(parts[7]),
                subscription,
                kind,
                durable: mode.as_deref() != Some("NonDurable"),
                earliest: position.as_deref() == Some("Earliest"),
                pull: q
                    .get("pullMode")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true")),
                queue,
                ack_timeout: (ack_timeout > 0).then(|| Duration::from_millis(ack_timeout as u64)),
                nack_delay: Duration::from_millis(nack_delay.max(0) as u64),
                max_redeliver,
                dead_letter_topic: q.get("deadLetterTopic").cloned(),
            };
            shared.broker().add_consumer(conn, tx, spec)?;
            Ok(Role::Consumer)
        }
        "reader" => {
            let topic = prefix
                + &parts[7..]
                    .iter()
                    .map(|p| decode(p))
                    .collect::<Vec<_>>()
                    .join("/");
            let start = match q.get("messageId").map(String::as_str) {
                None | Some("latest") => ReaderStart::Latest,
                Some("earliest") => ReaderStart::Earliest,
                // Pulsar 4's reader servlet checks the id before the handler runs: 400 (the
                // handler's own failures are 500). Seen against a 4.2 broker.
                Some(id) => ReaderStart::After(Position::decode(id).ok_or_else(|| {
                    refuse(
                        400,
                        "Invalid query params: Invalid messageId value".to_owned(),
                    )
                })?),
            };
            let queue = int::<i64>(&q, "receiverQueueSize")
                .map_err(|r| refuse(500, format!("Failed to create reader: {}", r.body)))?
                .unwrap_or(1000)
                .min(1000);
            shared
                .broker()
                .add_reader(conn, tx, &topic, start, queue)
                .map_err(|r| refuse(500, format!("Failed to create reader: {}", r.body)))?;
            Ok(Role::Reader)
        }
        other => Err(refuse(400, format!("Unknown endpoint {other}"))),
    }
}
