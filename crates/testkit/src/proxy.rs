//! A TCP proxy on `127.0.0.1` that injects network faults between a client and a server:
//! it freezes (holds every socket open and forwards nothing — no FIN, no RST — as a stalled
//! load balancer does), slows every chunk down, cuts every connection, or goes down
//! (cuts them all and closes every new connection at once, as a restarting broker's port
//! does). Works for any protocol over TCP (AMQP, WebSocket, EventStore's TCP API).
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use headwaters_testkit::proxy::FaultProxy;
//! let proxy = FaultProxy::start("127.0.0.1:5672".parse().unwrap()).await?;
//! // point the client at proxy.addr(), then:
//! proxy.freeze(true);
//! proxy.freeze(false);
//! proxy.cut();
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the proxy tries to reach the upstream for a new connection before dropping it.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(5);

/// What the proxy does now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Control {
    frozen: bool,
    down: bool,
    delay: Duration,
    /// Bumped by [`FaultProxy::cut`]: connections opened before it end.
    cuts: u64,
}

/// A fault-injecting TCP proxy in front of one upstream address; dropping it stops accepting
/// (connections already open end with it: their tasks watch the control channel).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    control: watch::Sender<Control>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free port of `127.0.0.1` and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let control = watch::Sender::new(Control::default());
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let control = control.clone();
            let accepted = Arc::clone(&accepted);
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = client.set_nodelay(true);
                    tokio::spawn(serve(client, upstream, control.subscribe()));
                }
            }
        });
        Ok(Self {
            addr,
            control,
            accepted,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Freeze (`true`): every open connection stops forwarding in both directions, sockets
    /// held open; a new connection is accepted and reaches the upstream only after the thaw.
    /// Thaw (`false`): connections forward again what they held, as TCP does once a stalled
    /// route recovers.
    pub fn freeze(&self, frozen: bool) {
        self.control.send_modify(|c| c.frozen = frozen);
    }

    /// Hold every chunk, in both directions, for `delay` before forwarding it (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.control.send_modify(|c| c.delay = delay);
    }

    /// Close every open connection (both sides), as a dropped route or a restarted peer does.
    pub fn cut(&self) {
        self.control.send_modify(|c| c.cuts += 1);
    }

    /// Down (`true`): cut every connection and close new ones as soon as they are accepted;
    /// up (`false`): forward again.
    pub fn set_down(&self, down: bool) {
        self.control.send_modify(|c| {
            c.down = down;
            c.cuts += 1;
        });
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Ends every connection task.
        self.set_down(true);
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, mut control: watch::Receiver<Control>) {
    let start = *control.borrow_and_update();
    if start.down {
        return;
    }
    let ended = {
        let mut control = control.clone();
        async move {
            let _ = control.wait_for(|c| c.down || c.cuts != start.cuts).await;
        }
    };
    let mut ended = std::pin::pin!(ended);
    if start.frozen {
        // Accepted, and held silent until the thaw (a client that gave up meanwhile is
        // then forwarded its own close).
        tokio::select! {
            _ = control.wait_for(|c| !c.frozen) => {}
            () = &mut ended => return,
        }
    }
    let Ok(Ok(server)) = tokio::time::timeout(UPSTREAM_CONNECT, TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = async {
            tokio::join!(
                pump(client_read, server_write, control.clone()),
                pump(server_read, client_write, control.clone()),
            )
        } => {}
        () = ended => {}
    }
}

/// Forward one direction, honouring freeze and delay; half-closes the far side at EOF.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut control: watch::Receiver<Control>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // While frozen the chunk waits here, and the socket buffers fill behind it.
        let delay = match control.wait_for(|c| !c.frozen).await {
            Ok(c) => c.delay,
            Err(_) => return,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> Option<()> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(within, s.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        (&buf == b"ping").then_some(())
    }

    #[tokio::test]
    async fn forwards_freezes_thaws_cuts_and_goes_down() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, Duration::from_secs(5)).await.is_some());

        proxy.freeze(true);
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), s.read_exact(&mut buf))
                .await
                .is_err(),
            "nothing comes back while frozen"
        );
        proxy.freeze(false);
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("what was held arrives after the thaw")
            .unwrap();
        assert_eq!(&buf, b"ping");

        // A connection accepted while frozen gets through after the thaw.
        proxy.freeze(true);
        let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut late, Duration::from_millis(200))
                .await
                .is_none()
        );
        proxy.freeze(false);
        tokio::time::timeout(Duration::from_secs(5), late.read_exact(&mut buf))
            .await
            .expect("the late connection's bytes arrive after the thaw")
            .unwrap();
        assert_eq!(&buf, b"ping");
        drop(late);

        proxy.set_delay(Duration::from_millis(150));
        let started = std::time::Instant::now();
        assert!(round_trip(&mut s, Duration::from_secs(5)).await.is_some());
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "two delayed hops"
        );
        proxy.set_delay(Duration::ZERO);

        proxy.cut();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a cut connection ends");
        assert!(matches!(n, Ok(0) | Err(_)));

        proxy.set_down(true);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a connection to a down proxy is closed at once");
        assert!(matches!(n, Ok(0) | Err(_)));
        proxy.set_down(false);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, Duration::from_secs(5)).await.is_some());
        assert_eq!(proxy.accepted(), 4);
    }
}
