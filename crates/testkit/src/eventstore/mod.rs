//! An in-memory EventStoreDB speaking the legacy TCP protocol as the servers do: framing
//! (little-endian length, command, flags, correlation id, credentials), authentication
//! (`Authenticate`, whose user stands for requests without credentials, and per-frame
//! credentials), users in groups ([`User`]) and access control (stream `$acl`, the
//! `$settings` defaults, `$all` and system streams for `$admins`), `IdentifyClient`,
//! heartbeats both ways with the server's rule (a request after `heartbeat_interval` of
//! silence, close after a further `heartbeat_timeout`), ping, appends with expected-version
//! checks, transactions, reads of one event, of a stream forward and backward and of `$all`
//! forward and backward (at most 4,096 per page), stream metadata (`$tb`, `$maxCount`,
//! `$maxAge`), soft and hard deletes,
//! link events, volatile subscriptions to a stream or `$all`, persistent subscription groups
//! (retry, park, max retry count, message timeout), TLS (feature `tls`), `BadRequest` for
//! unknown commands and malformed messages, and a simulated three-node cluster with HTTP
//! gossip ([`EventStoreCluster`]). Faults: drop every connection, stop answering heartbeats,
//! delay replies, answer the next requests with `NotHandled`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use headwaters_testkit::eventstore::EventStoreEmulator;
//! let emulator = EventStoreEmulator::start().await?;
//! println!("connect to {}", emulator.addr()); // 127.0.0.1:PORT, user admin / changeit
//! # Ok(()) }
//! ```

mod acl;
mod cluster;
mod persistent;
mod store;

pub use acl::User;
pub use cluster::{EventStoreCluster, GossipFormat};

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use headwaters_eventstore_tcp::wire;
use headwaters_eventstore_tcp::{Command, Credentials, Flags, Frame, FrameDecoder, FrameError};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use acl::Access;
use persistent::{ConnectError, ConsumerKey, GroupSettings, Groups, Nak, Parked};
use store::Store;

/// How the emulator behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EventStoreConfig {
    /// Send a heartbeat request after this much silence (`ExtTcpHeartbeatInterval`, 2 s).
    pub heartbeat_interval: Duration,
    /// Close when nothing arrives this long after a heartbeat request
    /// (`ExtTcpHeartbeatTimeout`, 1 s).
    pub heartbeat_timeout: Duration,
    /// Accepted logins (default: `admin` / `changeit` in `$admins`, `ops` / `changeit` in
    /// `$ops`, as the servers create them).
    pub users: Vec<User>,
    /// Serve TLS (the secure TCP port) with this rustls configuration.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for EventStoreConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(2000),
            heartbeat_timeout: Duration::from_millis(1000),
            users: vec![
                User::new("admin", "changeit", [acl::ADMINS]),
                User::new("ops", "changeit", [acl::OPS]),
            ],
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl EventStoreConfig {
    /// Serve TLS with this rustls configuration (see `headwaters_testkit::tls`).
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Accept another login, a member of no group (its rights come from stream ACLs that
    /// name it, or grant `$all`).
    pub fn with_user(self, login: impl Into<String>, password: impl Into<String>) -> Self {
        self.with_account(User::new(login, password, Vec::<String>::new()))
    }

    /// Accept another login with its groups (e.g. `$admins`).
    pub fn with_account(mut self, user: User) -> Self {
        self.users.push(user);
        self
    }

    /// Set the server heartbeat rule.
    pub fn with_heartbeats(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }
}

/// The `NotHandled` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotHandledReason {
    /// The node is starting.
    NotReady,
    /// The node is overloaded.
    TooBusy,
    /// The node is a read-only replica.
    IsReadOnly,
}

/// A volatile subscription.
struct Subscription {
    conn: u64,
    correlation: [u8; 16],
    /// `None` for `$all`.
    stream: Option<String>,
    resolve_link_tos: bool,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

/// A transaction between `TransactionStart` and `TransactionCommit`.
struct Transaction {
    stream: String,
    expected: i64,
    events: Vec<wire::NewEvent>,
}

/// Everything behind the one lock.
#[derive(Default)]
struct State {
    store: Store,
    subs: Vec<Subscription>,
    groups: Groups,
    /// Where each persistent-subscription consumer's frames go.
    consumers: HashMap<ConsumerKey, mpsc::UnboundedSender<Vec<u8>>>,
    transactions: HashMap<i64, Transaction>,
    next_transaction: i64,
}

struct Shared {
    state: Arc<Mutex<State>>,
    /// In a simulated cluster: the cluster's view and this node's index.
    cluster: Option<(Arc<cluster::View>, usize)>,
    config: EventStoreConfig,
    kill: watch::Sender<u64>,
    heartbeats_stopped: AtomicBool,
    /// Heartbeat requests from clients answered, and answers from clients to the server's.
    heartbeats: [AtomicU64; 2],
    reply_delay_ms: AtomicU64,
    not_handled: Mutex<Option<(u32, NotHandledReason)>>,
    next_conn: AtomicU64,
    open: AtomicU32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running emulator (one node); dropping it stops the server and drops every connection.
pub struct EventStoreEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for EventStoreEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStoreEmulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl EventStoreEmulator {
    /// Start with the defaults on `127.0.0.1` and a free port.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(
            EventStoreConfig::default(),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await
    }

    /// Start with `config` on `addr`.
    pub async fn start_with(config: EventStoreConfig, addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Self::launch(config, listener, Arc::default(), None)
    }

    /// Serve on `listener` with the database `state` (shared by a cluster's nodes).
    fn launch(
        config: EventStoreConfig,
        listener: TcpListener,
        state: Arc<Mutex<State>>,
        cluster: Option<(Arc<cluster::View>, usize)>,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let owns_state = cluster.as_ref().is_none_or(|(_, me)| *me == 0);
        let shared = Arc::new(Shared {
            state,
            cluster,
            config,
            kill: watch::channel(0).0,
            heartbeats_stopped: AtomicBool::new(false),
            heartbeats: [AtomicU64::new(0), AtomicU64::new(0)],
            reply_delay_ms: AtomicU64::new(0),
            not_handled: Mutex::new(None),
            next_conn: AtomicU64::new(1),
            open: AtomicU32::new(0),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                // Persistent subscriptions retry messages nobody answered in time: one timer
                // per database (a cluster's nodes share theirs; node 0 runs it).
                let _timer = owns_state.then(|| {
                    let weak = Arc::downgrade(&shared);
                    AbortOnDrop(tokio::spawn(async move {
                        let mut tick = tokio::time::interval(Duration::from_millis(100));
                        loop {
                            tick.tick().await;
                            let Some(shared) = weak.upgrade() else { return };
                            let mut state = shared.lock();
                            let mut parked = Vec::new();
                            state.groups.expire(now_ms(), &mut parked);
                            settle(&mut state, parked);
                        }
                    }))
                });
                loop {
                    if let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        #[cfg(feature = "tls")]
                        if let Some(tls) = shared.config.tls.clone() {
                            let shared = shared.clone();
                            tokio::spawn(async move {
                                match tokio_rustls::TlsAcceptor::from(tls).accept(stream).await {
                                    Ok(stream) => serve(stream, shared).await,
                                    Err(e) => {
                                        tracing::debug!(error = %e, "eventstore emulator: TLS handshake failed")
                                    }
                                }
                            });
                            continue;
                        }
                        tokio::spawn(serve(stream, shared.clone()));
                    }
                }
            }
        });
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop every connection without a goodbye.
    pub fn drop_connections(&self) {
        self.shared.kill.send_modify(|n| *n += 1);
    }

    /// Stop (or resume) answering and sending heartbeats, as a stalled server does.
    pub fn stop_heartbeats(&self, stopped: bool) {
        self.shared
            .heartbeats_stopped
            .store(stopped, Ordering::Relaxed);
    }

    /// Hold every operation reply back for `delay`.
    pub fn delay_replies(&self, delay: Duration) {
        self.shared
            .reply_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Answer the next `n` operations with `NotHandled(reason)`.
    pub fn not_handled(&self, n: u32, reason: NotHandledReason) {
        *self
            .shared
            .not_handled
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((n, reason));
    }

    /// A stream's events as (event number, type, data).
    pub fn stream(&self, stream: &str) -> Vec<(i64, String, Vec<u8>)> {
        self.shared.lock().store.stream_events(stream)
    }

    /// Records in `$all`.
    pub fn all_len(&self) -> usize {
        self.shared.lock().store.all_len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.next_conn.load(Ordering::Relaxed) - 1
    }

    /// Open connections.
    pub fn open_connections(&self) -> u32 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Heartbeats so far: (clients' requests the emulator answered, clients' answers to the
    /// emulator's requests).
    pub fn heartbeats(&self) -> (u64, u64) {
        (
            self.shared.heartbeats[0].load(Ordering::Relaxed),
            self.shared.heartbeats[1].load(Ordering::Relaxed),
        )
    }

    /// Run until the task is cancelled (for the standalone binary).
    pub async fn serve_forever(&self) {
        std::future::pending::<()>().await;
    }
}

impl Drop for EventStoreEmulator {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a connection's bytes are not acceptable framing; `Display` is what the server says
/// in its connection-level `BadRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum BadFraming {
    #[error("Invalid package length {0}")]
    Length(usize),
    #[error("Invalid credentials")]
    Credentials,
    #[error("Trusted writes are not allowed on external connections")]
    TrustedWrite,
}

/// The next frame in `decoder`: `Ok(None)` when more bytes are needed, `Err` when the
/// stream is not valid framing.
fn parse(decoder: &mut FrameDecoder) -> Result<Option<Frame>, BadFraming> {
    let frame = match decoder.next_frame() {
        Ok(frame) => frame,
        Err(FrameError::TooLarge(len) | FrameError::TooShort(len)) => {
            return Err(BadFraming::Length(len));
        }
        // BadCredentials (and any kind a later codec adds).
        Err(_) => return Err(BadFraming::Credentials),
    };
    if frame
        .as_ref()
        .is_some_and(|f| f.flags.bits() & Flags::TRUSTED_WRITE != 0)
    {
        return Err(BadFraming::TrustedWrite);
    }
    Ok(frame)
}

/// A frame's bytes. The emulator's answers stay far below the 64 MiB limit (pages hold at
/// most 4,096 events), which the encoder checks.
fn frame(command: Command, correlation: [u8; 16], payload: impl Into<Bytes>) -> Vec<u8> {
    let frame = Frame::new(command, correlation, payload);
    let mut out = BytesMut::with_capacity(22 + frame.payload.len());
    if let Err(e) = frame.encode(&mut out) {
        tracing::error!(error = %e, "eventstore emulator: an answer does not fit in a frame");
        out.clear();
    }
    out.into()
}

/// The command answering `request` (the next code, as every request/completed pair has).
fn reply_to(request: Command) -> Command {
    Command::from_code(request.code() + 1)
}

fn fresh_correlation(n: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&n.to_le_bytes());
    c[8] = 0xee;
    c
}

async fn serve<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    shared.open.fetch_add(1, Ordering::Relaxed);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writing = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = first;
            while let Ok(more) = rx.try_recv() {
                batch.extend_from_slice(&more);
                if batch.len() > 1 << 20 {
                    break;
                }
            }
            if writer.write_all(&batch).await.is_err() {
                return;
            }
        }
    });
    let mut kill = shared.kill.subscribe();
    let mut decoder = FrameDecoder::new();
    let interval = shared.config.heartbeat_interval;
    let timeout = shared.config.heartbeat_timeout;
    let mut received = false;
    // The user an `Authenticate` established: requests without credentials act as it.
    let mut session: Option<User> = None;
    let mut check: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut beats = 0u64;
    'serve: loop {
        tokio::select! {
            _ = kill.changed() => break,
            _ = tick.tick() => {
                if !std::mem::take(&mut received) && check.is_none() && !shared.heartbeats_stopped.load(Ordering::Relaxed) {
                    beats += 1;
                    let _ = tx.send(frame(Command::HeartbeatRequest, fresh_correlation(beats), Bytes::new()));
                    check = Some(tokio::time::Instant::now() + timeout);
                }
            }
            () = async { tokio::time::sleep_until(check.expect("guarded")).await }, if check.is_some() => {
                if received {
                    check = None;
                } else {
                    tracing::debug!(conn, "eventstore emulator: heartbeat timeout, closing");
                    break;
                }
            }
            n = reader.read_buf(decoder.buffer()) => {
                match n {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                received = true;
                check = None;
                loop {
                    match parse(&mut decoder) {
                        Ok(Some(p)) => handle(&shared, conn, &tx, &mut session, p),
                        Ok(None) => break,
                        Err(reason) => {
                            // Not framing: say why (connection-level BadRequest), then close.
                            let _ = tx.send(frame(Command::BadRequest, [0; 16], reason.to_string()));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            break 'serve;
                        }
                    }
                }
            }
        }
    }
    shared.open.fetch_sub(1, Ordering::Relaxed);
    drop_subscriptions(&shared, conn);
    writing.abort();
}

/// A connection closed: its volatile subscriptions end, its persistent-subscription
/// consumers leave their groups (their messages in flight go to the others).
fn drop_subscriptions(shared: &Shared, conn: u64) {
    let mut state = shared.lock();
    state.subs.retain(|s| s.conn != conn);
    let gone: Vec<ConsumerKey> = state
        .consumers
        .keys()
        .filter(|k| k.0 == conn)
        .copied()
        .collect();
    let mut parked = Vec::new();
    for key in gone {
        state.consumers.remove(&key);
        state.groups.disconnect(key, &mut parked);
    }
    settle(&mut state, parked);
}

/// What the servers say when access is refused.
const ACCESS_DENIED: &str = "Access denied.";

/// Whether transaction `id` exists and `user` may write to its stream.
fn transaction_check(
    state: &State,
    id: i64,
    user: Option<&User>,
) -> Result<(), wire::OperationResult> {
    let t = state
        .transactions
        .get(&id)
        .ok_or(wire::OperationResult::InvalidTransaction)?;
    if acl::granted(&state.store, &t.stream, Access::Write, user) {
        Ok(())
    } else {
        Err(wire::OperationResult::AccessDenied)
    }
}

/// The message the servers send with a failed transaction step.
fn failure_message(result: wire::OperationResult) -> &'static str {
    match result {
        wire::OperationResult::AccessDenied => ACCESS_DENIED,
        _ => "Invalid transaction.",
    }
}

/// Credentials that match no user.
struct NotAuthenticated;

/// The user a request's credentials name; without credentials, the connection's
/// authenticated user, if any (`None`: anonymous).
fn login<'a>(
    shared: &'a Shared,
    credentials: Option<&Credentials>,
    session: Option<&'a User>,
) -> Result<Option<&'a User>, NotAuthenticated> {
    let Some(credentials) = credentials else {
        return Ok(session);
    };
    shared
        .config
        .users
        .iter()
        .find(|u| u.login == credentials.login() && u.password == credentials.password())
        .map(Some)
        .ok_or(NotAuthenticated)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Send `reply` now, or after the configured delay.
fn reply(shared: &Shared, tx: &mpsc::UnboundedSender<Vec<u8>>, bytes: Vec<u8>) {
    let delay = shared.reply_delay_ms.load(Ordering::Relaxed);
    if delay == 0 {
        let _ = tx.send(bytes);
    } else {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let _ = tx.send(bytes);
        });
    }
}

fn handle(
    shared: &Shared,
    conn: u64,
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    session: &mut Option<User>,
    p: Frame,
) {
    let c = p.correlation;
    match p.command {
        Command::HeartbeatRequest => {
            if !shared.heartbeats_stopped.load(Ordering::Relaxed) {
                shared.heartbeats[0].fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(frame(Command::HeartbeatResponse, c, Bytes::new()));
            }
            return;
        }
        Command::HeartbeatResponse => {
            shared.heartbeats[1].fetch_add(1, Ordering::Relaxed);
            return;
        }
        Command::Ping => {
            let _ = tx.send(frame(Command::Pong, c, p.payload));
            return;
        }
        Command::Authenticate => {
            let user = login(shared, p.credentials.as_ref(), None);
            let ok = matches!(user, Ok(Some(_)));
            if let Ok(Some(user)) = user {
                *session = Some(user.clone());
            }
            let _ = tx.send(if ok {
                frame(Command::Authenticated, c, Bytes::new())
            } else if p.credentials.is_none() {
                frame(
                    Command::NotAuthenticated,
                    c,
                    "No user credentials provided.",
                )
            } else {
                frame(Command::NotAuthenticated, c, "Not Authenticated")
            });
            return;
        }
        Command::IdentifyClient => {
            if wire::IdentifyClient::decode(p.payload.clone()).is_err() {
                let _ = tx.send(frame(Command::BadRequest, c, "Invalid IdentifyClient"));
            } else {
                let _ = tx.send(frame(Command::ClientIdentified, c, Bytes::new()));
            }
            return;
        }
        _ => {}
    }
    let Ok(user) = login(shared, p.credentials.as_ref(), session.as_ref()) else {
        reply(
            shared,
            tx,
            frame(Command::NotAuthenticated, c, "Not Authenticated"),
        );
        return;
    };
    {
        let mut pending = shared.not_handled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, reason)) = pending.as_mut() {
            let code = match reason {
                NotHandledReason::NotReady => wire::not_handled::NotHandledReason::NotReady,
                NotHandledReason::TooBusy => wire::not_handled::NotHandledReason::TooBusy,
                NotHandledReason::IsReadOnly => wire::not_handled::NotHandledReason::IsReadOnly,
            };
            *n -= 1;
            if *n == 0 {
                *pending = None;
            }
            let body = wire::NotHandled {
                reason: code as i32,
                additional_info: None,
            };
            reply(
                shared,
                tx,
                frame(Command::NotHandled, c, body.encode_to_vec()),
            );
            return;
        }
    }
    if let Some(not_leader) = cluster::redirect(shared, p.command, &p.payload) {
        reply(shared, tx, frame(Command::NotHandled, c, not_leader));
        return;
    }
    // Access is checked before anything else about the request (expected versions too).
    let r = Request {
        shared,
        conn,
        tx,
        user,
        c,
        key: (conn, c),
        command: p.command,
    };
    // Creating, updating and deleting persistent subscription groups takes write access
    // to `$settings` (admins by default). The three replies share one shape: a result
    // (AccessDenied = 3 in each) and a reason.
    if matches!(
        p.command,
        Command::CreatePersistentSubscription
            | Command::DeletePersistentSubscription
            | Command::UpdatePersistentSubscription
    ) && !r.may(&shared.lock(), "$settings", Access::Write)
    {
        let denied = wire::CreatePersistentSubscriptionCompleted {
            result: wire::create_persistent_subscription_completed::CreatePersistentSubscriptionResult::AccessDenied as i32,
            reason: Some("You do not have permissions to manage persistent subscriptions.".into()),
        };
        return reply(
            shared,
            tx,
            frame(reply_to(p.command), c, denied.encode_to_vec()),
        );
    }
    // Each command is answered by its own function over the shared state (`None`: it sent
    // its answers itself).
    let out = match p.command {
        Command::WriteEvents => write_events(&r, p.payload),
        Command::TransactionStart => transaction_start(&r, p.payload),
        Command::TransactionWrite => transaction_write(&r, p.payload),
        Command::TransactionCommit => transaction_commit(&r, p.payload),
        Command::DeleteStream => delete_stream(&r, p.payload),
        Command::ReadEvent => read_event(&r, p.payload),
        Command::ReadStreamEventsForward | Command::ReadStreamEventsBackward => {
            read_stream_events(&r, p.payload)
        }
        Command::ReadAllEventsForward | Command::ReadAllEventsBackward => {
            read_all_events(&r, p.payload)
        }
        Command::SubscribeToStream => subscribe_to_stream(&r, p.payload),
        Command::UnsubscribeFromStream => unsubscribe_from_stream(&r, p.payload),
        Command::ConnectToPersistentSubscription => {
            connect_to_persistent_subscription(&r, p.payload)
        }
        Command::PersistentSubscriptionAckEvents => {
            persistent_subscription_ack_events(&r, p.payload)
        }
        Command::PersistentSubscriptionNakEvents => {
            persistent_subscription_nak_events(&r, p.payload)
        }
        Command::CreatePersistentSubscription => create_persistent_subscription(&r, p.payload),
        Command::UpdatePersistentSubscription => update_persistent_subscription(&r, p.payload),
        Command::DeletePersistentSubscription => delete_persistent_subscription(&r, p.payload),
        other => Some(unknown(c, other)),
    };
    if let Some(out) = out {
        reply(shared, tx, out);
    }
}

/// A request being answered: who asked, on which connection, with which correlation id.
#[derive(Clone, Copy)]
struct Request<'a> {
    shared: &'a Shared,
    conn: u64,
    tx: &'a mpsc::UnboundedSender<Vec<u8>>,
    user: Option<&'a User>,
    c: [u8; 16],
    key: ConsumerKey,
    command: Command,
}

impl Request<'_> {
    /// The answer to a request that does not decode.
    fn bad(&self, what: &str) -> Vec<u8> {
        frame(
            Command::BadRequest,
            self.c,
            format!("Invalid {what} message"),
        )
    }

    /// Whether the caller may access `stream` so.
    fn may(&self, state: &State, stream: &str, access: Access) -> bool {
        acl::granted(&state.store, stream, access, self.user)
    }
}

/// Answers `WriteEvents`.
fn write_events(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, c, .. } = *r;
    let bad = |what: &str| r.bad(what);
    let may = |state: &State, stream: &str, access| r.may(state, stream, access);
    Some(match wire::WriteEvents::decode(payload) {
        Ok(m) => {
            let mut state = shared.lock();
            let done = if may(&state, &m.event_stream_id, Access::Write) {
                append(&mut state, &m.event_stream_id, m.expected_version, m.events)
            } else {
                store::write_failed(wire::OperationResult::AccessDenied, 0, ACCESS_DENIED)
            };
            frame(Command::WriteEventsCompleted, c, done.encode_to_vec())
        }
        Err(_) => bad("WriteEvents"),
    })
}

/// Answers `TransactionStart`.
fn transaction_start(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, c, .. } = *r;
    let bad = |what: &str| r.bad(what);
    let may = |state: &State, stream: &str, access| r.may(state, stream, access);
    Some(match wire::TransactionStart::decode(payload) {
        Ok(m) => {
            let mut state = shared.lock();
            if !may(&state, &m.event_stream_id, Access::Write) {
                let done = wire::TransactionStartCompleted {
                    transaction_id: -1,
                    result: wire::OperationResult::AccessDenied as i32,
                    message: Some(ACCESS_DENIED.into()),
                };
                drop(state);
                return Some(frame(
                    Command::TransactionStartCompleted,
                    c,
                    done.encode_to_vec(),
                ));
            }
            state.next_transaction += 1;
            let id = state.next_transaction;
            state.transactions.insert(
                id,
                Transaction {
                    stream: m.event_stream_id,
                    expected: m.expected_version,
                    events: Vec::new(),
                },
            );
            let done = wire::TransactionStartCompleted {
                transaction_id: id,
                result: wire::OperationResult::Success as i32,
                message: None,
            };
            frame(Command::TransactionStartCompleted, c, done.encode_to_vec())
        }
        Err(_) => bad("TransactionStart"),
    })
}

/// Answers `TransactionWrite`.
fn transaction_write(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request {
        shared, c, user, ..
    } = *r;
    let bad = |what: &str| r.bad(what);
    Some(match wire::TransactionWrite::decode(payload) {
        Ok(m) => {
            let mut state = shared.lock();
            let id = m.transaction_id;
            let result = transaction_check(&state, id, user).map(|()| {
                if let Some(t) = state.transactions.get_mut(&id) {
                    t.events.extend(m.events);
                }
            });
            let done = wire::TransactionWriteCompleted {
                transaction_id: id,
                result: result.err().unwrap_or(wire::OperationResult::Success) as i32,
                message: result.err().map(|r| failure_message(r).to_owned()),
            };
            frame(Command::TransactionWriteCompleted, c, done.encode_to_vec())
        }
        Err(_) => bad("TransactionWrite"),
    })
}

/// Answers `TransactionCommit`.
fn transaction_commit(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request {
        shared, c, user, ..
    } = *r;
    let bad = |what: &str| r.bad(what);
    Some(match wire::TransactionCommit::decode(payload) {
        Ok(m) => {
            let mut state = shared.lock();
            let id = m.transaction_id;
            // A denied commit leaves the transaction open for a user who may commit it.
            let done = match transaction_check(&state, id, user)
                .map(|()| state.transactions.remove(&id))
            {
                Ok(Some(t)) => {
                    let w = append(&mut state, &t.stream, t.expected, t.events);
                    wire::TransactionCommitCompleted {
                        transaction_id: id,
                        result: w.result,
                        message: w.message,
                        first_event_number: w.first_event_number,
                        last_event_number: w.last_event_number,
                        prepare_position: w.prepare_position,
                        commit_position: w.commit_position,
                    }
                }
                failed => {
                    let result = failed
                        .err()
                        .unwrap_or(wire::OperationResult::InvalidTransaction);
                    wire::TransactionCommitCompleted {
                        transaction_id: id,
                        result: result as i32,
                        message: Some(failure_message(result).into()),
                        first_event_number: -1,
                        last_event_number: -1,
                        prepare_position: None,
                        commit_position: None,
                    }
                }
            };
            frame(Command::TransactionCommitCompleted, c, done.encode_to_vec())
        }
        Err(_) => bad("TransactionCommit"),
    })
}

/// Answers `DeleteStream`.
fn delete_stream(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, c, .. } = *r;
    let bad = |what: &str| r.bad(what);
    let may = |state: &State, stream: &str, access| r.may(state, stream, access);
    Some(match wire::DeleteStream::decode(payload) {
        Ok(m) => {
            let hard = m.hard_delete.unwrap_or(false);
            let mut state = shared.lock();
            if !may(&state, &m.event_stream_id, Access::Delete) {
                let done = wire::DeleteStreamCompleted {
                    result: wire::OperationResult::AccessDenied as i32,
                    message: Some(ACCESS_DENIED.into()),
                    prepare_position: None,
                    commit_position: None,
                    current_version: None,
                };
                drop(state);
                return Some(frame(
                    Command::DeleteStreamCompleted,
                    c,
                    done.encode_to_vec(),
                ));
            }
            let (done, written) =
                state
                    .store
                    .delete(&m.event_stream_id, m.expected_version, hard, now_ms());
            publish(&mut state, &written);
            if hard && done.result == wire::OperationResult::Success as i32 {
                tombstone(&state, &m.event_stream_id);
            }
            frame(Command::DeleteStreamCompleted, c, done.encode_to_vec())
        }
        Err(_) => bad("DeleteStream"),
    })
}

/// Answers `ReadEvent`.
fn read_event(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, c, .. } = *r;
    let bad = |what: &str| r.bad(what);
    let may = |state: &State, stream: &str, access| r.may(state, stream, access);
    Some(match wire::ReadEvent::decode(payload) {
        Ok(m) => {
            let state = shared.lock();
            let done = if may(&state, &m.event_stream_id, Access::Read) {
                state
                    .store
                    .read_event(&m.event_stream_id, m.event_number, m.resolve_link_tos)
            } else {
                wire::ReadEventCompleted {
                    result: wire::read_event_completed::ReadEventResult::AccessDenied as i32,
                    event: Some(wire::ResolvedIndexedEvent::default()),
                    error: Some(ACCESS_DENIED.into()),
                }
            };
            frame(Command::ReadEventCompleted, c, done.encode_to_vec())
        }
        Err(_) => bad("ReadEvent"),
    })
}

/// Answers `ReadStreamEventsForward` / `ReadStreamEventsBackward`.
fn read_stream_events(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, c, .. } = *r;
    let bad = |what: &str| r.bad(what);
    let may = |state: &State, stream: &str, access| r.may(state, stream, access);
    Some(match wire::ReadStreamEvents::decode(payload) {
        Ok(m) => {
            let forward = r.command == Command::ReadStreamEventsForward;
            let state = shared.lock();
            if !may(&state, &m.event_stream_id, Access::Read) {
                use wire::read_stream_events_completed::ReadStreamResult as R;
                let denied = wire::ReadStreamEventsCompleted {
                    events: Vec::new(),
                    result: R::AccessDenied as i32,
                    next_event_number: -1,
                    last_event_number: -1,
                    is_end_of_stream: true,
                    last_commit_position: -1,
                    error: Some(ACCESS_DENIED.into()),
                };
                return Some(frame(reply_to(r.command), c, denied.encode_to_vec()));
            }
            let (done, picked) = state.store.stream_page(
                &m.event_stream_id,
                m.from_event_number,
                m.max_count,
                forward,
                m.resolve_link_tos,
            );
            frame(
                reply_to(r.command),
                c,
                state.store.encode_stream_page(&done, &picked),
            )
        }
        Err(_) => bad("ReadStreamEvents"),
    })
}

/// Answers `ReadAllEventsForward` / `ReadAllEventsBackward`.
fn read_all_events(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, c, .. } = *r;
    let bad = |what: &str| r.bad(what);
    let may = |state: &State, stream: &str, access| r.may(state, stream, access);
    Some(match wire::ReadAllEvents::decode(payload) {
        Ok(m) => {
            let forward = r.command == Command::ReadAllEventsForward;
            let state = shared.lock();
            if !may(&state, "$all", Access::Read) {
                use wire::read_all_events_completed::ReadAllResult as R;
                let denied = wire::ReadAllEventsCompleted {
                    commit_position: m.commit_position,
                    prepare_position: m.prepare_position,
                    events: Vec::new(),
                    next_commit_position: m.commit_position,
                    next_prepare_position: m.prepare_position,
                    result: Some(R::AccessDenied as i32),
                    error: Some(ACCESS_DENIED.into()),
                };
                return Some(frame(reply_to(r.command), c, denied.encode_to_vec()));
            }
            let (done, picked) =
                state
                    .store
                    .all_page(m.commit_position, m.max_count, forward, m.resolve_link_tos);
            frame(
                reply_to(r.command),
                c,
                state.store.encode_all_page(&done, &picked),
            )
        }
        Err(_) => bad("ReadAllEvents"),
    })
}

/// Answers `SubscribeToStream`.
fn subscribe_to_stream(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request {
        shared,
        conn,
        tx,
        c,
        ..
    } = *r;
    let bad = |what: &str| r.bad(what);
    let may = |state: &State, stream: &str, access| r.may(state, stream, access);
    Some(match wire::SubscribeToStream::decode(payload) {
        Ok(m) => {
            let mut state = shared.lock();
            let stream = (!m.event_stream_id.is_empty()).then(|| m.event_stream_id.clone());
            if !may(&state, stream.as_deref().unwrap_or("$all"), Access::Read) {
                use wire::subscription_dropped::SubscriptionDropReason as R;
                return Some(dropped(c, R::AccessDenied));
            }
            let last_event_number = stream.as_ref().map(|s| state.store.stream_next(s) - 1);
            let confirmation = wire::SubscriptionConfirmation {
                last_commit_position: state.store.end_position(),
                last_event_number,
            };
            // Registered under the lock, so no write slips between the confirmation's
            // position and the first pushed event.
            let _ = tx.send(frame(
                Command::SubscriptionConfirmation,
                c,
                confirmation.encode_to_vec(),
            ));
            state.subs.push(Subscription {
                conn,
                correlation: c,
                stream,
                resolve_link_tos: m.resolve_link_tos,
                tx: tx.clone(),
            });
            return None;
        }
        Err(_) => bad("SubscribeToStream"),
    })
}

/// Answers `UnsubscribeFromStream`.
fn unsubscribe_from_stream(r: &Request<'_>, _payload: Bytes) -> Option<Vec<u8>> {
    let Request {
        shared,
        conn,
        c,
        key,
        ..
    } = *r;
    let mut state = shared.lock();
    state
        .subs
        .retain(|s| !(s.conn == conn && s.correlation == c));
    if state.consumers.remove(&key).is_some() {
        let mut parked = Vec::new();
        state.groups.disconnect(key, &mut parked);
        settle(&mut state, parked);
    }
    Some(dropped(
        c,
        wire::subscription_dropped::SubscriptionDropReason::Unsubscribed,
    ))
}

/// Answers `ConnectToPersistentSubscription`.
fn connect_to_persistent_subscription(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request {
        shared, tx, c, key, ..
    } = *r;
    let bad = |what: &str| r.bad(what);
    let may = |state: &State, stream: &str, access| r.may(state, stream, access);
    Some(
        match wire::ConnectToPersistentSubscription::decode(payload) {
            Ok(m) => {
                use wire::subscription_dropped::SubscriptionDropReason as R;
                let mut state = shared.lock();
                let group = &m.subscription_id;
                let stream = &m.event_stream_id;
                if !may(&state, stream, Access::Read) {
                    return Some(dropped(c, R::AccessDenied));
                }
                match state.groups.connect(
                    stream,
                    group,
                    key,
                    m.allowed_in_flight_messages.max(1) as usize,
                ) {
                    Err(ConnectError::NotFound) => dropped(c, R::NotFound),
                    Err(ConnectError::MaxSubscribers) => dropped(c, R::SubscriberMaxCountReached),
                    Ok(()) => {
                        let confirmation = wire::PersistentSubscriptionConfirmation {
                            last_commit_position: state.store.end_position(),
                            subscription_id: format!("{stream}::{group}"),
                            last_event_number: Some(state.store.stream_next(stream) - 1),
                        };
                        let _ = tx.send(frame(
                            Command::PersistentSubscriptionConfirmation,
                            c,
                            confirmation.encode_to_vec(),
                        ));
                        state.consumers.insert(key, tx.clone());
                        settle(&mut state, Vec::new());
                        return None;
                    }
                }
            }
            Err(_) => bad("ConnectToPersistentSubscription"),
        },
    )
}

/// Answers `PersistentSubscriptionAckEvents`.
fn persistent_subscription_ack_events(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, key, .. } = *r;
    let bad = |what: &str| r.bad(what);
    if let Ok(m) = wire::PersistentSubscriptionAckEvents::decode(payload) {
        let mut state = shared.lock();
        state.groups.ack(key, &m.processed_event_ids);
        settle(&mut state, Vec::new());
        return None;
    }
    Some(bad("PersistentSubscriptionAckEvents"))
}

/// Answers `PersistentSubscriptionNakEvents`.
fn persistent_subscription_nak_events(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, key, .. } = *r;
    let bad = |what: &str| r.bad(what);
    if let Ok(m) = wire::PersistentSubscriptionNakEvents::decode(payload) {
        let mut state = shared.lock();
        let mut parked = Vec::new();
        let action = Nak::from_wire(m.action);
        state
            .groups
            .nak(key, &m.processed_event_ids, action, &mut parked);
        settle(&mut state, parked);
        return None;
    }
    Some(bad("PersistentSubscriptionNakEvents"))
}

/// Answers `CreatePersistentSubscription`.
fn create_persistent_subscription(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, c, .. } = *r;
    let bad = |what: &str| r.bad(what);
    Some(match wire::CreatePersistentSubscription::decode(payload) {
        Ok(m) => {
            use wire::create_persistent_subscription_completed::CreatePersistentSubscriptionResult as R;
            let mut state = shared.lock();
            let (result, reason) = if m.event_stream_id.is_empty() || m.event_stream_id == "$all" {
                (
                    R::Fail,
                    Some("Persistent subscriptions to $all are not available over TCP".to_owned()),
                )
            } else {
                let next = state.store.stream_next(&m.event_stream_id);
                let settings = group_settings(&m);
                if state.groups.create(
                    &m.event_stream_id,
                    &m.subscription_group_name,
                    settings,
                    next,
                ) {
                    (R::Success, None)
                } else {
                    (
                        R::AlreadyExists,
                        Some(format!(
                            "Group '{}' already exists.",
                            m.subscription_group_name
                        )),
                    )
                }
            };
            let done = wire::CreatePersistentSubscriptionCompleted {
                result: result as i32,
                reason,
            };
            frame(
                Command::CreatePersistentSubscriptionCompleted,
                c,
                done.encode_to_vec(),
            )
        }
        Err(_) => bad("CreatePersistentSubscription"),
    })
}

/// Answers `UpdatePersistentSubscription`.
///
/// Update has Create's fields, numbers and types: the same message on the wire.
fn update_persistent_subscription(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, c, .. } = *r;
    let bad = |what: &str| r.bad(what);
    Some(match wire::CreatePersistentSubscription::decode(payload) {
        Ok(m) => {
            let mut state = shared.lock();
            let consumers = state.groups.update(
                &m.event_stream_id,
                &m.subscription_group_name,
                group_settings(&m),
            );
            let done = wire::UpdatePersistentSubscriptionCompleted {
                result: group_result(&mut state, consumers),
                reason: None,
            };
            frame(
                Command::UpdatePersistentSubscriptionCompleted,
                c,
                done.encode_to_vec(),
            )
        }
        Err(_) => bad("UpdatePersistentSubscription"),
    })
}

/// Answers `DeletePersistentSubscription`.
fn delete_persistent_subscription(r: &Request<'_>, payload: Bytes) -> Option<Vec<u8>> {
    let Request { shared, c, .. } = *r;
    let bad = |what: &str| r.bad(what);
    Some(match wire::DeletePersistentSubscription::decode(payload) {
        Ok(m) => {
            let mut state = shared.lock();
            let consumers = state
                .groups
                .delete(&m.event_stream_id, &m.subscription_group_name);
            let done = wire::DeletePersistentSubscriptionCompleted {
                result: group_result(&mut state, consumers),
                reason: None,
            };
            frame(
                Command::DeletePersistentSubscriptionCompleted,
                c,
                done.encode_to_vec(),
            )
        }
        Err(_) => bad("DeletePersistentSubscription"),
    })
}

/// A command the emulator does not serve: `BadRequest`, as the server answers.
fn unknown(c: [u8; 16], other: Command) -> Vec<u8> {
    frame(
        Command::BadRequest,
        c,
        format!(
            "Could not unwrap network package for command {:#04x}.",
            other.code()
        ),
    )
}

fn dropped(c: [u8; 16], reason: wire::subscription_dropped::SubscriptionDropReason) -> Vec<u8> {
    let body = wire::SubscriptionDropped {
        reason: Some(reason as i32),
    };
    frame(Command::SubscriptionDropped, c, body.encode_to_vec())
}

fn group_settings(m: &wire::CreatePersistentSubscription) -> GroupSettings {
    GroupSettings {
        resolve_link_tos: m.resolve_link_tos,
        start_from: m.start_from,
        // 0 = the server's default (30 s).
        message_timeout_ms: if m.message_timeout_milliseconds > 0 {
            i64::from(m.message_timeout_milliseconds)
        } else {
            30_000
        },
        max_retry_count: m.max_retry_count.max(0) as u32,
        max_subscribers: m.subscriber_max_count.max(0) as usize,
    }
}

/// The result code of an update or delete (0 success, 1 no such group); the group's
/// consumers (it was restarted or deleted) are told it is gone.
fn group_result(state: &mut State, consumers: Option<Vec<ConsumerKey>>) -> i32 {
    use wire::subscription_dropped::SubscriptionDropReason as R;
    let Some(consumers) = consumers else {
        return 1;
    };
    for key in consumers {
        if let Some(tx) = state.consumers.remove(&key) {
            let _ = tx.send(dropped(key.1, R::PersistentSubscriptionDeleted));
        }
    }
    0
}

/// Append to a stream and tell every live subscriber; persistent groups get their share.
fn append(
    state: &mut State,
    stream: &str,
    expected: i64,
    events: Vec<wire::NewEvent>,
) -> wire::WriteEventsCompleted {
    let (done, written) = state.store.write(stream, expected, events, now_ms());
    publish(state, &written);
    done
}

/// Records were written at log indices `written`: live subscribers hear of them, persistent
/// groups get their share.
fn publish(state: &mut State, written: &[usize]) {
    notify(state, written);
    settle(state, Vec::new());
}

/// Push the records at log indices `written` to the volatile subscriptions that match.
fn notify(state: &State, written: &[usize]) {
    for index in written {
        let stream = state.store.stream_of(*index);
        let mut resolved = [None, None];
        for s in &state.subs {
            if s.stream.as_deref().is_some_and(|name| name != stream) {
                continue;
            }
            let slot = &mut resolved[usize::from(s.resolve_link_tos)];
            let bytes = slot.get_or_insert_with(|| {
                Bytes::from(
                    wire::StreamEventAppeared {
                        event: state.store.resolved(*index, s.resolve_link_tos),
                    }
                    .encode_to_vec(),
                )
            });
            let _ = s.tx.send(frame(
                Command::StreamEventAppeared,
                s.correlation,
                bytes.clone(),
            ));
        }
    }
}

/// The tombstone of a hard delete: live subscribers of the stream see `$streamDeleted`.
fn tombstone(state: &State, stream: &str) {
    let position = state.store.end_position();
    let tombstone = wire::StreamEventAppeared {
        event: wire::ResolvedEvent {
            event: Some(wire::EventRecord {
                event_stream_id: stream.to_owned(),
                event_number: i64::MAX,
                event_id: vec![0; 16].into(),
                event_type: "$streamDeleted".into(),
                data_content_type: 0,
                metadata_content_type: 0,
                data: Bytes::new(),
                metadata: None,
                created: None,
                created_epoch: Some(now_ms()),
            }),
            link: None,
            commit_position: position,
            prepare_position: position,
        },
    }
    .encode_to_vec()
    .into();
    for s in state
        .subs
        .iter()
        .filter(|s| s.stream.as_deref() == Some(stream))
    {
        let _ = s.tx.send(frame(
            Command::StreamEventAppeared,
            s.correlation,
            Bytes::clone(&tombstone),
        ));
    }
}

/// Park `parked` messages (a link to each in the group's `-parked` stream, as the server
/// writes them), then hand out what persistent consumers have room for.
fn settle(state: &mut State, parked: Parked) {
    for (stream, group, number) in parked {
        let parked_stream = format!("$persistentsubscription-{stream}::{group}-parked");
        let seed = state.store.all_len();
        let (_, written) = state.store.write(
            &parked_stream,
            store::ANY,
            vec![store::link_event(&stream, number, seed)],
            now_ms(),
        );
        notify(state, &written);
    }
    let deliveries = {
        let store = &state.store;
        state
            .groups
            .dispatch(now_ms(), &|stream, from| store.next_event(stream, from))
    };
    for d in deliveries {
        let (Some(tx), Some(index)) = (
            state.consumers.get(&d.consumer),
            state.store.index_of(&d.stream, d.number),
        ) else {
            continue;
        };
        let appeared = wire::PersistentSubscriptionStreamEventAppeared {
            event: state.store.indexed(index, d.resolve_link_tos),
            retry_count: Some(d.retry as i32),
        };
        let _ = tx.send(frame(
            Command::PersistentSubscriptionStreamEventAppeared,
            d.consumer.1,
            appeared.encode_to_vec(),
        ));
    }
}
