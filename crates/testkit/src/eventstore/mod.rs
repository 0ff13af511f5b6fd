//! An in-memory EventStoreDB speaking the legacy TCP protocol as the servers do: framing
//! (little-endian length, command, flags, correlation id, credentials), authentication
//! (`Authenticate` and per-frame credentials), `IdentifyClient`, heartbeats both ways with
//! the server's rule (a request after `heartbeat_interval` of silence, close after a further
//! `heartbeat_timeout`), ping, appends with expected-version checks, reads of one event, of
//! a stream forward and backward and of `$all` forward and backward (at most 4,096 per
//! page), soft and hard deletes, volatile subscriptions to a stream or `$all`, `BadRequest`
//! for unknown commands and malformed messages. Faults: drop every connection, stop
//! answering heartbeats, delay replies, answer the next requests with `NotHandled`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use headwaters_testkit::eventstore::EventStoreEmulator;
//! let emulator = EventStoreEmulator::start().await?;
//! println!("connect to {}", emulator.addr()); // 127.0.0.1:PORT, user admin / changeit
//! # Ok(()) }
//! ```

mod store;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use store::Store;

/// The framer's limit.
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// How the emulator behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EventStoreConfig {
    /// Send a heartbeat request after this much silence (`ExtTcpHeartbeatInterval`, 2 s).
    pub heartbeat_interval: Duration,
    /// Close when nothing arrives this long after a heartbeat request
    /// (`ExtTcpHeartbeatTimeout`, 1 s).
    pub heartbeat_timeout: Duration,
    /// Accepted logins and passwords (default `admin` / `changeit`).
    pub users: Vec<(String, String)>,
}

impl Default for EventStoreConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(2000),
            heartbeat_timeout: Duration::from_millis(1000),
            users: vec![("admin".into(), "changeit".into())],
        }
    }
}

impl EventStoreConfig {
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

struct Subscription {
    conn: u64,
    correlation: [u8; 16],
    /// `None` for `$all`.
    stream: Option<String>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

struct Shared {
    store: Mutex<(Store, Vec<Subscription>)>,
    config: EventStoreConfig,
    kill: watch::Sender<u64>,
    heartbeats_stopped: AtomicBool,
    reply_delay_ms: AtomicU64,
    not_handled: Mutex<Option<(u32, NotHandledReason)>>,
    next_conn: AtomicU64,
    open: AtomicU32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, (Store, Vec<Subscription>)> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running emulator; dropping it stops the server and drops every connection.
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
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new((Store::default(), Vec::new())),
            config,
            kill: watch::channel(0).0,
            heartbeats_stopped: AtomicBool::new(false),
            reply_delay_ms: AtomicU64::new(0),
            not_handled: Mutex::new(None),
            next_conn: AtomicU64::new(1),
            open: AtomicU32::new(0),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                loop {
                    if let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
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
        self.shared.lock().0.stream_events(stream)
    }

    /// Records in `$all`.
    pub fn all_len(&self) -> usize {
        self.shared.lock().0.all_len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.next_conn.load(Ordering::Relaxed) - 1
    }

    /// Open connections.
    pub fn open_connections(&self) -> u32 {
        self.shared.open.load(Ordering::Relaxed)
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

/// One decoded frame.
struct Package {
    command: u8,
    correlation: [u8; 16],
    credentials: Option<(String, String)>,
    payload: Bytes,
}

/// The next frame in `buf`: `Ok(None)` when more bytes are needed, `Err` when the stream is
/// not valid framing.
fn parse(buf: &mut BytesMut) -> Result<Option<Package>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(18..=MAX_FRAME).contains(&len) {
        return Err(format!("Invalid package length {len}"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let mut body = buf.split_to(len).freeze();
    let command = body.get_u8();
    let flags = body.get_u8();
    let mut correlation = [0; 16];
    body.copy_to_slice(&mut correlation);
    let credentials = if flags & 0x01 != 0 {
        let mut take = || -> Result<String, String> {
            if body.is_empty() {
                return Err("Invalid credentials".into());
            }
            let n = body.get_u8() as usize;
            if body.len() < n {
                return Err("Invalid credentials".into());
            }
            String::from_utf8(body.split_to(n).to_vec()).map_err(|_| "Invalid credentials".into())
        };
        let login = take()?;
        let password = take()?;
        Some((login, password))
    } else {
        None
    };
    if flags & 0x02 != 0 {
        return Err("Trusted writes are not allowed on external connections".into());
    }
    Ok(Some(Package {
        command,
        correlation,
        credentials,
        payload: body,
    }))
}

fn frame(command: u8, correlation: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(22 + payload.len());
    out.put_u32_le((18 + payload.len()) as u32);
    out.put_u8(command);
    out.put_u8(0);
    out.put_slice(&correlation);
    out.put_slice(payload);
    out
}

fn fresh_correlation(n: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&n.to_le_bytes());
    c[8] = 0xee;
    c
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    shared.open.fetch_add(1, Ordering::Relaxed);
    let (mut reader, mut writer) = stream.into_split();
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
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let interval = shared.config.heartbeat_interval;
    let timeout = shared.config.heartbeat_timeout;
    let mut received = false;
    let mut check: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut beats = 0u64;
    loop {
        tokio::select! {
            _ = kill.changed() => break,
            _ = tick.tick() => {
                if !std::mem::take(&mut received) && check.is_none() && !shared.heartbeats_stopped.load(Ordering::Relaxed) {
                    beats += 1;
                    let _ = tx.send(frame(0x01, fresh_correlation(beats), &[]));
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
            n = reader.read_buf(&mut buf) => {
                match n {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                received = true;
                check = None;
                loop {
                    match parse(&mut buf) {
                        Ok(Some(p)) => handle(&shared, conn, &tx, p),
                        Ok(None) => break,
                        Err(reason) => {
                            let _ = tx.send(frame(0xF0, [0; 16], reason.as_bytes()));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            shared.open.fetch_sub(1, Ordering::Relaxed);
                            drop_subscriptions(&shared, conn);
                            writing.abort();
                            return;
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

fn drop_subscriptions(shared: &Shared, conn: u64) {
    shared.lock().1.retain(|s| s.conn != conn);
}

fn authenticate(shared: &Shared, credentials: &Option<(String, String)>) -> bool {
    match credentials {
        None => true,
        Some((login, password)) => shared
            .config
            .users
            .iter()
            .any(|(l, p)| l == login && p == password),
    }
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

fn handle(shared: &Shared, conn: u64, tx: &mpsc::UnboundedSender<Vec<u8>>, p: Package) {
    let c = p.correlation;
    match p.command {
        0x01 => {
            if !shared.heartbeats_stopped.load(Ordering::Relaxed) {
                let _ = tx.send(frame(0x02, c, &[]));
            }
            return;
        }
        0x02 => return,
        0x03 => {
            let _ = tx.send(frame(0x04, c, &p.payload));
            return;
        }
        0xF2 => {
            let ok = p.credentials.is_some() && authenticate(shared, &p.credentials);
            let _ = tx.send(if ok {
                frame(0xF3, c, &[])
            } else if p.credentials.is_none() {
                frame(0xF4, c, b"No user credentials provided.")
            } else {
                frame(0xF4, c, b"Not Authenticated")
            });
            return;
        }
        0xF5 => {
            if wire::IdentifyClient::decode(p.payload.clone()).is_err() {
                let _ = tx.send(frame(0xF0, c, b"Invalid IdentifyClient"));
            } else {
                let _ = tx.send(frame(0xF6, c, &[]));
            }
            return;
        }
        _ => {}
    }
    if !authenticate(shared, &p.credentials) {
        reply(shared, tx, frame(0xF4, c, b"Not Authenticated"));
        return;
    }
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
            reply(shared, tx, frame(0xF1, c, &body.encode_to_vec()));
            return;
        }
    }
    let bad = |what: &str| frame(0xF0, c, format!("Invalid {what} message").as_bytes());
    let out = match p.command {
        0x82 => match wire::WriteEvents::decode(p.payload) {
            Ok(m) => {
                let mut guard = shared.lock();
                let (store, subs) = &mut *guard;
                let (done, written) =
                    store.write(&m.event_stream_id, m.expected_version, m.events, now_ms());
                // Live subscribers hear about the new events in log order.
                for (index, event) in
                    store.resolved_from(written.first().copied().unwrap_or(usize::MAX))
                {
                    if !written.contains(&index) {
                        continue;
                    }
                    for s in subs.iter() {
                        let matches = s
                            .stream
                            .as_ref()
                            .is_none_or(|name| *name == m.event_stream_id);
                        if matches {
                            let appeared = wire::StreamEventAppeared {
                                event: event.clone(),
                            };
                            let _ =
                                s.tx.send(frame(0xC2, s.correlation, &appeared.encode_to_vec()));
                        }
                    }
                }
                frame(0x83, c, &done.encode_to_vec())
            }
            Err(_) => bad("WriteEvents"),
        },
        0x8A => match wire::DeleteStream::decode(p.payload) {
            Ok(m) => {
                let hard = m.hard_delete.unwrap_or(false);
                let mut guard = shared.lock();
                let (store, subs) = &mut *guard;
                let done = store.delete(&m.event_stream_id, m.expected_version, hard);
                if hard && done.result == wire::OperationResult::Success as i32 {
                    // The tombstone: live subscribers of the stream see `$streamDeleted`.
                    let position = store.all_len() as i64 * 128;
                    let tombstone = wire::StreamEventAppeared {
                        event: wire::ResolvedEvent {
                            event: Some(wire::EventRecord {
                                event_stream_id: m.event_stream_id.clone(),
                                event_number: i64::MAX,
                                event_id: vec![0; 16],
                                event_type: "$streamDeleted".into(),
                                data_content_type: 0,
                                metadata_content_type: 0,
                                data: Vec::new(),
                                metadata: None,
                                created: None,
                                created_epoch: Some(now_ms()),
                            }),
                            link: None,
                            commit_position: position,
                            prepare_position: position,
                        },
                    }
                    .encode_to_vec();
                    for s in subs
                        .iter()
                        .filter(|s| s.stream.as_deref() == Some(m.event_stream_id.as_str()))
                    {
                        let _ = s.tx.send(frame(0xC2, s.correlation, &tombstone));
                    }
                }
                frame(0x8B, c, &done.encode_to_vec())
            }
            Err(_) => bad("DeleteStream"),
        },
        0xB0 => match wire::ReadEvent::decode(p.payload) {
            Ok(m) => frame(
                0xB1,
                c,
                &shared
                    .lock()
                    .0
                    .read_event(&m.event_stream_id, m.event_number)
                    .encode_to_vec(),
            ),
            Err(_) => bad("ReadEvent"),
        },
        0xB2 | 0xB4 => match wire::ReadStreamEvents::decode(p.payload) {
            Ok(m) => {
                let forward = p.command == 0xB2;
                let done = shared.lock().0.read_stream(
                    &m.event_stream_id,
                    m.from_event_number,
                    m.max_count,
                    forward,
                );
                frame(p.command + 1, c, &done.encode_to_vec())
            }
            Err(_) => bad("ReadStreamEvents"),
        },
        0xB6 | 0xB8 => match wire::ReadAllEvents::decode(p.payload) {
            Ok(m) => {
                let forward = p.command == 0xB6;
                let done = shared
                    .lock()
                    .0
                    .read_all(m.commit_position, m.max_count, forward);
                frame(p.command + 1, c, &done.encode_to_vec())
            }
            Err(_) => bad("ReadAllEvents"),
        },
        0xC0 => match wire::SubscribeToStream::decode(p.payload) {
            Ok(m) => {
                let mut guard = shared.lock();
                let (store, subs) = &mut *guard;
                let stream = (!m.event_stream_id.is_empty()).then(|| m.event_stream_id.clone());
                let last_event_number = stream
                    .as_ref()
                    .map(|s| store.stream_indices(s).len() as i64 - 1);
                let confirmation = wire::SubscriptionConfirmation {
                    last_commit_position: store.all_len() as i64 * 128,
                    last_event_number,
                };
                // Registered under the lock, so no write slips between the confirmation's
                // position and the first pushed event.
                let _ = tx.send(frame(0xC1, c, &confirmation.encode_to_vec()));
                subs.push(Subscription {
                    conn,
                    correlation: c,
                    stream,
                    tx: tx.clone(),
                });
                return;
            }
            Err(_) => bad("SubscribeToStream"),
        },
        0xC3 => {
            shared
                .lock()
                .1
                .retain(|s| !(s.conn == conn && s.correlation == c));
            let dropped = wire::SubscriptionDropped {
                reason: Some(
                    wire::subscription_dropped::SubscriptionDropReason::Unsubscribed as i32,
                ),
            };
            frame(0xC4, c, &dropped.encode_to_vec())
        }
        other => frame(
            0xF0,
            c,
            format!("Could not unwrap network package for command {other:#04x}.").as_bytes(),
        ),
    };
    reply(shared, tx, out);
}
