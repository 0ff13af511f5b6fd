//! A simulated three-node cluster: the nodes share one database (replication is instant),
//! one is the leader, the others followers. Followers answer reads that require the leader
//! and persistent-subscription commands with `NotHandled(NotMaster)` naming the leader;
//! writes are forwarded (served), as the servers do. Each node serves the HTTP gossip
//! document (`GET /gossip`) in the v20+ or the v5 shape.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{AbortOnDrop, EventStoreConfig, EventStoreEmulator, Shared, State, wire};
use headwaters_eventstore_tcp::Command;

/// The gossip document's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GossipFormat {
    /// v20+: `Leader`/`Follower`, `httpEndPointIp`/`httpEndPointPort`.
    #[default]
    V20,
    /// v5: `Master`/`Slave`, internal and external HTTP endpoints.
    V5,
}

/// What every node knows about the cluster.
#[derive(Debug)]
pub(crate) struct View {
    leader: AtomicUsize,
    tcp: Vec<SocketAddr>,
    http: Vec<SocketAddr>,
    format: GossipFormat,
    /// Nodes reported dead in gossip.
    dead: Mutex<Vec<bool>>,
}

impl View {
    fn gossip(&self, state: &Mutex<State>) -> serde_json::Value {
        let leader = self.leader.load(Ordering::Relaxed);
        let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let position = state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .store
            .end_position();
        let members: Vec<serde_json::Value> = (0..self.tcp.len())
            .map(|i| {
                let (tcp, http) = (self.tcp[i], self.http[i]);
                let v20 = self.format == GossipFormat::V20;
                let state = match (i == leader, v20) {
                    (true, true) => "Leader",
                    (true, false) => "Master",
                    (false, true) => "Follower",
                    (false, false) => "Slave",
                };
                let mut m = serde_json::json!({
                    "instanceId": format!("00000000-0000-0000-0000-00000000000{i}"),
                    "timeStamp": "2026-01-01T00:00:00Z",
                    "state": state,
                    "isAlive": !dead[i],
                    "internalTcpIp": tcp.ip().to_string(),
                    "internalTcpPort": 0,
                    "internalSecureTcpPort": 0,
                    "externalTcpIp": tcp.ip().to_string(),
                    "externalTcpPort": tcp.port(),
                    "externalSecureTcpPort": 0,
                    "lastCommitPosition": position,
                    "writerCheckpoint": position,
                    "chaserCheckpoint": position,
                    "epochPosition": 0,
                    "epochNumber": 1,
                    "epochId": "00000000-0000-0000-0000-0000000000e1",
                    "nodePriority": 0,
                });
                let extra = if v20 {
                    serde_json::json!({
                        "httpEndPointIp": http.ip().to_string(),
                        "httpEndPointPort": http.port(),
                        "advertiseHostToClientAs": "",
                        "advertiseHttpPortToClientAs": 0,
                        "advertiseTcpPortToClientAs": 0,
                        "isReadOnlyReplica": false,
                    })
                } else {
                    serde_json::json!({
                        "internalHttpIp": http.ip().to_string(),
                        "internalHttpPort": http.port(),
                        "externalHttpIp": http.ip().to_string(),
                        "externalHttpPort": http.port(),
                    })
                };
                if let (Some(m), serde_json::Value::Object(extra)) = (m.as_object_mut(), extra) {
                    m.extend(extra);
                }
                m
            })
            .collect();
        serde_json::json!({
            "members": members,
            "serverIp": self.http[0].ip().to_string(),
            "serverPort": self.http[0].port(),
        })
    }
}

/// A running three-node cluster; dropping it stops every node.
#[derive(Debug)]
pub struct EventStoreCluster {
    nodes: Vec<EventStoreEmulator>,
    view: Arc<View>,
    _http: Vec<AbortOnDrop>,
}

impl EventStoreCluster {
    /// Start three nodes on `127.0.0.1` (free ports) with `config`; node 0 leads.
    pub async fn start(config: EventStoreConfig, format: GossipFormat) -> io::Result<Self> {
        let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut tcp_listeners = Vec::new();
        let mut http_listeners = Vec::new();
        for _ in 0..3 {
            tcp_listeners.push(TcpListener::bind(local).await?);
            http_listeners.push(TcpListener::bind(local).await?);
        }
        let view = Arc::new(View {
            leader: AtomicUsize::new(0),
            tcp: tcp_listeners
                .iter()
                .map(TcpListener::local_addr)
                .collect::<io::Result<_>>()?,
            http: http_listeners
                .iter()
                .map(TcpListener::local_addr)
                .collect::<io::Result<_>>()?,
            format,
            dead: Mutex::new(vec![false; 3]),
        });
        let state: Arc<Mutex<State>> = Arc::default();
        let mut nodes = Vec::new();
        for (i, listener) in tcp_listeners.into_iter().enumerate() {
            nodes.push(EventStoreEmulator::launch(
                config.clone(),
                listener,
                state.clone(),
                Some((view.clone(), i)),
            )?);
        }
        let http = http_listeners
            .into_iter()
            .map(|l| AbortOnDrop(tokio::spawn(serve_gossip(l, view.clone(), state.clone()))))
            .collect();
        Ok(Self {
            nodes,
            view,
            _http: http,
        })
    }

    /// Node `i` (0–2).
    pub fn node(&self, i: usize) -> &EventStoreEmulator {
        &self.nodes[i]
    }

    /// Node `i`'s HTTP gossip endpoint (`host:port`, the seed for clients).
    pub fn gossip_addr(&self, i: usize) -> SocketAddr {
        self.view.http[i]
    }

    /// The leader's index.
    pub fn leader(&self) -> usize {
        self.view.leader.load(Ordering::Relaxed)
    }

    /// Make node `i` the leader (an election): the old leader's connections drop, as they
    /// do when a node steps down.
    pub fn set_leader(&self, i: usize) {
        let old = self.view.leader.swap(i, Ordering::Relaxed);
        if old != i {
            self.nodes[old].drop_connections();
        }
    }

    /// Report node `i` dead (or alive again) in gossip.
    pub fn set_alive(&self, i: usize, alive: bool) {
        self.view.dead.lock().unwrap_or_else(|e| e.into_inner())[i] = !alive;
    }
}

/// Answer `GET /gossip…` with the document; anything else 404.
async fn serve_gossip(listener: TcpListener, view: Arc<View>, state: Arc<Mutex<State>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let view = view.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request);
            let path = line.split_whitespace().nth(1).unwrap_or_default();
            let response = if path == "/gossip" || path.starts_with("/gossip?") {
                let body = view.gossip(&state).to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// On a follower, the `NotHandled(NotMaster)` answer for a request that needs the leader.
pub(super) fn redirect(shared: &Shared, command: Command, payload: &[u8]) -> Option<Vec<u8>> {
    let (view, me) = shared.cluster.as_ref()?;
    let leader = view.leader.load(Ordering::Relaxed);
    if leader == *me || !needs_leader(command, payload) {
        return None;
    }
    let (tcp, http) = (view.tcp[leader], view.http[leader]);
    let info = wire::not_handled::MasterInfo {
        external_tcp_address: tcp.ip().to_string(),
        external_tcp_port: i32::from(tcp.port()),
        external_http_address: http.ip().to_string(),
        external_http_port: i32::from(http.port()),
        external_secure_tcp_address: None,
        external_secure_tcp_port: None,
    };
    Some(
        wire::NotHandled {
            reason: wire::not_handled::NotHandledReason::NotMaster as i32,
            additional_info: Some(info.encode_to_vec().into()),
        }
        .encode_to_vec(),
    )
}

/// Reads flagged `require_leader` and persistent subscriptions (which live on the leader).
/// Writes are forwarded by followers.
fn needs_leader(command: Command, payload: &[u8]) -> bool {
    match command {
        Command::ReadEvent => wire::ReadEvent::decode(payload).is_ok_and(|m| m.require_master),
        Command::ReadStreamEventsForward | Command::ReadStreamEventsBackward => {
            wire::ReadStreamEvents::decode(payload).is_ok_and(|m| m.require_master)
        }
        Command::ReadAllEventsForward | Command::ReadAllEventsBackward => {
            wire::ReadAllEvents::decode(payload).is_ok_and(|m| m.require_master)
        }
        Command::ConnectToPersistentSubscription
        | Command::CreatePersistentSubscription
        | Command::DeletePersistentSubscription
        | Command::UpdatePersistentSubscription => true,
        _ => false,
    }
}
