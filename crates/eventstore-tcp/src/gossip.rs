//! Cluster discovery: the HTTP gossip document of v5 and v20+ servers ([`parse_gossip`]),
//! node ranking by [`NodePreference`] ([`select_node`]), and the fetch from seeds or DNS.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connection::{Socket, Tls};
use crate::error::Error;

/// A node's state, in both the v5 (`Master`, `Slave`, …) and v20+ (`Leader`, `Follower`, …)
/// spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeState {
    /// Starting.
    Initializing,
    /// Looking for the leader (v20+).
    DiscoverLeader,
    /// Unknown.
    Unknown,
    /// About to replicate.
    PreReplica,
    /// Catching up with the leader.
    CatchingUp,
    /// A clone.
    Clone,
    /// A follower (`Slave` in v5).
    Follower,
    /// About to lead (`PreMaster` in v5).
    PreLeader,
    /// The leader (`Master` in v5).
    Leader,
    /// A manager node (not a database node).
    Manager,
    /// Shutting down.
    ShuttingDown,
    /// Shut down.
    Shutdown,
    /// A read-only replica without a leader.
    ReadOnlyLeaderless,
    /// About to be a read-only replica.
    PreReadOnlyReplica,
    /// A read-only replica.
    ReadOnlyReplica,
    /// Giving up leadership.
    ResigningLeader,
}

impl NodeState {
    /// From the gossip's `state` string (either version's names).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "Initializing" => Self::Initializing,
            "DiscoverLeader" => Self::DiscoverLeader,
            "Unknown" => Self::Unknown,
            "PreReplica" => Self::PreReplica,
            "CatchingUp" => Self::CatchingUp,
            "Clone" => Self::Clone,
            "Follower" | "Slave" => Self::Follower,
            "PreLeader" | "PreMaster" => Self::PreLeader,
            "Leader" | "Master" => Self::Leader,
            "Manager" => Self::Manager,
            "ShuttingDown" => Self::ShuttingDown,
            "Shutdown" => Self::Shutdown,
            "ReadOnlyLeaderless" => Self::ReadOnlyLeaderless,
            "PreReadOnlyReplica" => Self::PreReadOnlyReplica,
            "ReadOnlyReplica" => Self::ReadOnlyReplica,
            "ResigningLeader" => Self::ResigningLeader,
            _ => return None,
        })
    }
}

/// Which node to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodePreference {
    /// The leader (writes go there without forwarding; the default).
    #[default]
    Leader,
    /// A follower, for reads (Extreme's read mode); the leader when there is none.
    Follower,
    /// A read-only replica, else a follower, else the leader.
    ReadOnlyReplica,
}

/// A cluster member as gossip describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// Its state.
    pub state: NodeState,
    /// Whether the gossiping node thinks it is alive.
    pub is_alive: bool,
    /// The host clients should use.
    pub host: String,
    /// The plain-text external TCP port (0 when disabled, as with TLS on v20+).
    pub tcp_port: u16,
    /// The TLS external TCP port (0 when none).
    pub secure_tcp_port: u16,
}

impl Member {
    /// `host:port` for a client, over TLS or not; `None` when the node offers no such port.
    pub fn endpoint(&self, tls: bool) -> Option<String> {
        let port = if tls {
            self.secure_tcp_port
        } else {
            self.tcp_port
        };
        (port != 0).then(|| format!("{}:{port}", self.host))
    }
}

/// Parse a gossip document (`{"members": [...]}`) of a v5 or v20+ server. Members with an
/// unknown state are kept as [`NodeState::Unknown`]; a document without `members` is an
/// error.
pub fn parse_gossip(body: &[u8]) -> Result<Vec<Member>, Error> {
    let bad = |what: String| Error::Decode(format!("gossip: {what}"));
    let doc: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let members = doc
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"members\" array".into()))?;
    let port = |m: &Value, key: &str| {
        m.get(key)
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0)
    };
    let text = |m: &Value, key: &str| {
        m.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    members
        .iter()
        .map(|m| {
            let state = m
                .get("state")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a member without a state".into()))?;
            // v20+ may advertise another host and port to clients.
            let host = text(m, "advertiseHostToClientAs")
                .or_else(|| text(m, "externalTcpIp"))
                .ok_or_else(|| bad("a member without externalTcpIp".into()))?;
            let advertised = port(m, "advertiseTcpPortToClientAs");
            Ok(Member {
                state: NodeState::parse(state).unwrap_or(NodeState::Unknown),
                is_alive: m.get("isAlive").and_then(Value::as_bool).unwrap_or(false),
                host,
                tcp_port: if advertised != 0 {
                    advertised
                } else {
                    port(m, "externalTcpPort")
                },
                secure_tcp_port: port(m, "externalSecureTcpPort"),
            })
        })
        .collect()
}

/// The best member for `preference` among those alive and able to serve clients, with an
/// endpoint of the right kind (Extreme's ranking; v5 and v20 names alike).
pub fn select_node(members: &[Member], preference: NodePreference, tls: bool) -> Option<&Member> {
    use NodeState as S;
    let rank = |state: S| -> Option<u8> {
        let lead = match preference {
            NodePreference::Leader => [S::Leader, S::PreLeader, S::Follower],
            NodePreference::Follower => [S::Follower, S::Leader, S::PreLeader],
            NodePreference::ReadOnlyReplica => [S::ReadOnlyReplica, S::Follower, S::Leader],
        };
        if let Some(i) = lead.iter().position(|s| *s == state) {
            return Some(i as u8);
        }
        Some(match state {
            S::Leader | S::PreLeader | S::Follower | S::ReadOnlyReplica => 3,
            S::Clone => 4,
            S::CatchingUp => 5,
            S::PreReplica | S::PreReadOnlyReplica => 6,
            S::Unknown | S::DiscoverLeader | S::ReadOnlyLeaderless | S::ResigningLeader => 7,
            S::Initializing => 8,
            S::Manager | S::ShuttingDown | S::Shutdown => return None,
        })
    };
    members
        .iter()
        .filter(|m| m.is_alive && m.endpoint(tls).is_some())
        .filter_map(|m| rank(m.state).map(|r| (r, m)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, m)| m)
}

/// `GET /gossip?format=json` from `seed` (`host:port` of the node's HTTP API) over
/// HTTP/1.1, or HTTPS with `tls` (v20+ servers serve gossip over HTTPS unless insecure).
pub(crate) async fn fetch(
    seed: &str,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<Vec<u8>, SeedError> {
    let get = async {
        let tcp = TcpStream::connect(seed).await?;
        let mut stream: Socket = match tls {
            None => Box::new(tcp),
            Some(tls) => tls
                .connect(seed, tcp)
                .await
                .map_err(|e| SeedError::Tls(Box::new(e)))?,
        };
        let host = seed.rsplit_once(':').map_or(seed, |(h, _)| h);
        let request = format!(
            "GET /gossip?format=json HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        // A gossip document is a few KiB per member: read no more than the cap (a peer that
        // streams without end must not fill our memory).
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_GOSSIP_RESPONSE + 1)
            .read_to_end(&mut response)
            .await?;
        if response.len() as u64 > MAX_GOSSIP_RESPONSE {
            return Err(SeedError::TooLong(MAX_GOSSIP_RESPONSE));
        }
        http_body(&response).map_err(SeedError::Http)
    };
    tokio::time::timeout(timeout, get)
        .await
        .map_err(|_| SeedError::Timeout(timeout))?
}

/// The most bytes of a gossip answer we read.
const MAX_GOSSIP_RESPONSE: u64 = 1 << 20;

/// The body of a complete HTTP/1.1 response (status 200; `Content-Length`, chunked or to
/// the end of the connection), parsed with `httparse`.
fn http_body(response: &[u8]) -> Result<Vec<u8>, HttpError> {
    use httparse::Status;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut headers);
    let head_len = match head.parse(response) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Err(HttpError::Incomplete),
        Err(e) => return Err(HttpError::NotHttp(e)),
    };
    if head.code != Some(200) {
        return Err(HttpError::Status {
            code: head.code.unwrap_or_default(),
            reason: head.reason.unwrap_or_default().to_owned(),
        });
    }
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let body = &response[head_len..];
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let (consumed, size) = match httparse::parse_chunk_size(rest) {
                Ok(Status::Complete(chunk)) => chunk,
                Ok(Status::Partial) => return Err(HttpError::Truncated),
                Err(_) => return Err(HttpError::BadChunkSize),
            };
            rest = &rest[consumed..];
            let size = usize::try_from(size).map_err(|_| HttpError::BadChunkSize)?;
            if size == 0 {
                return Ok(out);
            }
            if rest.len() < size {
                return Err(HttpError::Truncated);
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
    }
    match header("content-length").map(|v| v.parse::<usize>()) {
        Some(Err(_)) => Err(HttpError::BadContentLength),
        Some(Ok(n)) if body.len() < n => Err(HttpError::Truncated),
        Some(Ok(n)) => Ok(body[..n].to_vec()),
        None => Ok(body.to_vec()),
    }
}

/// Why a gossip answer is not a usable HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The connection closed before the response's head was complete.
    #[error("an incomplete HTTP response")]
    Incomplete,
    /// The bytes are not an HTTP response.
    #[error("not an HTTP response: {0}")]
    NotHttp(#[source] httparse::Error),
    /// The node answered with another status than 200.
    #[error("gossip answered {code} {reason}")]
    Status {
        /// The status code.
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// The body (or a chunk of it) is shorter than announced.
    #[error("a truncated body")]
    Truncated,
    /// A chunk's size does not parse.
    #[error("a bad chunk size")]
    BadChunkSize,
    /// `Content-Length` is not a number.
    #[error("a bad Content-Length")]
    BadContentLength,
}

/// Where to gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seeds {
    /// HTTP endpoints (`host:port`), tried in order.
    List(Vec<String>),
    /// A DNS name whose addresses are the seeds, on this HTTP port.
    Dns(String, u16),
}

/// Gossip with the seeds in turn and pick a node's TCP endpoint (not `failed` when another
/// will do).
pub(crate) async fn discover(
    seeds: &Seeds,
    failed: Option<&str>,
    preference: NodePreference,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<String, GossipError> {
    let secure = tls.is_some();
    let candidates: Vec<String> = match seeds {
        Seeds::List(list) => list.clone(),
        Seeds::Dns(name, port) => {
            let resolve = |error| GossipError::Resolve {
                name: name.clone(),
                error,
            };
            tokio::time::timeout(timeout, tokio::net::lookup_host((name.as_str(), *port)))
                .await
                .map_err(|_| resolve(SeedError::Timeout(timeout)))?
                .map_err(|e| resolve(e.into()))?
                .map(|a| a.to_string())
                .collect()
        }
    };
    let mut errors = Vec::new();
    for seed in &candidates {
        let gossip = match fetch(seed, tls, timeout).await {
            Ok(body) => parse_gossip(&body).map_err(|e| SeedError::Document(Box::new(e))),
            Err(e) => Err(e),
        };
        let members = match gossip {
            Ok(members) => members,
            Err(e) => {
                errors.push((seed.clone(), e));
                continue;
            }
        };
        let usable: Vec<Member> = members
            .iter()
            .filter(|m| failed.is_none_or(|f| m.endpoint(secure).as_deref() != Some(f)))
            .cloned()
            .collect();
        let chosen = select_node(&usable, preference, secure)
            .or_else(|| select_node(&members, preference, secure));
        if let Some(node) = chosen.and_then(|m| m.endpoint(secure)) {
            return Ok(node);
        }
        errors.push((seed.clone(), SeedError::NoMember));
    }
    Err(GossipError::Seeds(errors))
}

/// Why cluster discovery found no node to connect to.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GossipError {
    /// The DNS name of the seeds did not resolve.
    #[error("cannot resolve {name}: {error}")]
    Resolve {
        /// The name.
        name: String,
        /// Why.
        #[source]
        error: SeedError,
    },
    /// No seed named a node that takes clients: what each one answered.
    #[error("cluster discovery failed ({})", seeds(.0))]
    Seeds(Vec<(String, SeedError)>),
}

fn seeds(errors: &[(String, SeedError)]) -> String {
    let each: Vec<String> = errors.iter().map(|(s, e)| format!("{s}: {e}")).collect();
    each.join("; ")
}

/// Why one seed's gossip could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// No answer in time.
    #[error("no gossip answer within {0:?}")]
    Timeout(Duration),
    /// The socket failed (refused, reset).
    #[error("{0}")]
    Io(#[source] Arc<std::io::Error>),
    /// The TLS connection to the seed failed.
    #[error("{0}")]
    Tls(#[source] Box<crate::error::ConnectError>),
    /// The answer is longer than any gossip document (this many bytes at most).
    #[error("the gossip answer is longer than {0} bytes")]
    TooLong(u64),
    /// Not a usable HTTP answer (incomplete, chunking broken, a status other than 200).
    #[error("{0}")]
    Http(#[source] HttpError),
    /// The body is not a gossip document.
    #[error("{0}")]
    Document(#[source] Box<Error>),
    /// The document names no member that takes clients.
    #[error("no member can take clients")]
    NoMember,
}

impl From<std::io::Error> for SeedError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V5: &str = r#"{"members":[
        {"instanceId":"a","state":"Slave","isAlive":true,"externalTcpIp":"10.0.0.1","externalTcpPort":1113,"externalSecureTcpPort":0,"externalHttpIp":"10.0.0.1","externalHttpPort":2113},
        {"instanceId":"b","state":"Master","isAlive":true,"externalTcpIp":"10.0.0.2","externalTcpPort":1113,"externalSecureTcpPort":0,"externalHttpIp":"10.0.0.2","externalHttpPort":2113},
        {"instanceId":"c","state":"Manager","isAlive":true,"externalTcpIp":"10.0.0.3","externalTcpPort":1113,"externalSecureTcpPort":0},
        {"instanceId":"d","state":"Slave","isAlive":false,"externalTcpIp":"10.0.0.4","externalTcpPort":1113,"externalSecureTcpPort":0}
    ],"serverIp":"10.0.0.1","serverPort":2113}"#;

    const V20: &str = r#"{"members":[
        {"instanceId":"a","state":"Follower","isAlive":true,"externalTcpIp":"10.0.0.1","externalTcpPort":0,"externalSecureTcpPort":1113,"httpEndPointIp":"10.0.0.1","httpEndPointPort":2113,"advertiseHostToClientAs":"","advertiseTcpPortToClientAs":0,"isReadOnlyReplica":false},
        {"instanceId":"b","state":"Leader","isAlive":true,"externalTcpIp":"10.0.0.2","externalTcpPort":0,"externalSecureTcpPort":1113,"httpEndPointIp":"10.0.0.2","httpEndPointPort":2113,"advertiseHostToClientAs":"db-b.example","advertiseTcpPortToClientAs":0,"isReadOnlyReplica":false},
        {"instanceId":"c","state":"ReadOnlyReplica","isAlive":true,"externalTcpIp":"10.0.0.3","externalTcpPort":0,"externalSecureTcpPort":1113,"isReadOnlyReplica":true}
    ]}"#;

    #[test]
    fn v5_names_rank_like_v20_names() {
        let members = parse_gossip(V5.as_bytes()).unwrap();
        assert_eq!(members.len(), 4);
        assert_eq!(members[1].state, NodeState::Leader, "Master is the leader");
        let leader = select_node(&members, NodePreference::Leader, false).unwrap();
        assert_eq!(leader.endpoint(false).unwrap(), "10.0.0.2:1113");
        let follower = select_node(&members, NodePreference::Follower, false).unwrap();
        assert_eq!(
            follower.endpoint(false).unwrap(),
            "10.0.0.1:1113",
            "the live slave"
        );
        assert!(
            select_node(&members, NodePreference::Leader, true).is_none(),
            "no TLS port on v5"
        );
    }

    #[test]
    fn v20_uses_secure_ports_and_advertised_hosts() {
        let members = parse_gossip(V20.as_bytes()).unwrap();
        let leader = select_node(&members, NodePreference::Leader, true).unwrap();
        assert_eq!(leader.endpoint(true).unwrap(), "db-b.example:1113");
        assert!(select_node(&members, NodePreference::Leader, false).is_none());
        let replica = select_node(&members, NodePreference::ReadOnlyReplica, true).unwrap();
        assert_eq!(replica.state, NodeState::ReadOnlyReplica);
    }

    #[test]
    fn bad_documents_are_errors() {
        assert!(parse_gossip(b"{}").is_err());
        assert!(parse_gossip(b"not json").is_err());
        assert!(parse_gossip(br#"{"members":[{"isAlive":true}]}"#).is_err());
        let odd = parse_gossip(
            br#"{"members":[{"state":"Sideways","isAlive":true,"externalTcpIp":"h","externalTcpPort":1}]}"#,
        )
        .unwrap();
        assert_eq!(odd[0].state, NodeState::Unknown);
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_cap() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let seed = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            let _ = peer.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            let block = vec![b' '; 64 * 1024];
            while peer.write_all(&block).await.is_ok() {}
        });
        let err = fetch(&seed, None, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SeedError::TooLong(n) if n == MAX_GOSSIP_RESPONSE),
            "{err}"
        );
    }

    #[test]
    fn http_bodies_by_length_chunks_or_close() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}xx";
        assert_eq!(http_body(plain).unwrap(), b"{}");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).unwrap(), b"{\"a\":1}");
        let to_close = b"HTTP/1.0 200 OK\r\n\r\n{}";
        assert_eq!(http_body(to_close).unwrap(), b"{}");
        assert_eq!(
            http_body(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Err(HttpError::Status {
                code: 404,
                reason: "Not Found".into()
            })
        );
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}"),
            Err(HttpError::Truncated)
        );
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(HttpError::BadChunkSize)
        );
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}"),
            Err(HttpError::BadContentLength)
        );
        assert!(matches!(
            http_body(b"HTTP/1.1 503 Unavailable\r\n\r\n"),
            Err(HttpError::Status { code: 503, .. })
        ));
        assert!(matches!(
            http_body(b"garbage\r\n\r\n"),
            Err(HttpError::NotHttp(_))
        ));
        assert!(matches!(http_body(b"garbage"), Err(HttpError::NotHttp(_))));
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\nContent-Le"),
            Err(HttpError::Incomplete)
        );
    }
}
