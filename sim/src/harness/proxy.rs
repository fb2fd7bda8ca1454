//! A fault-injecting TCP proxy, one per facility's link: it forwards every connection an
//! agent opens to the coordinator, and on command cuts them all, refuses new ones for a
//! while (an outage), limits the link's bandwidth (one budget per direction shared by all of
//! its connections, as on a real access link), or stops forwarding without closing anything
//! (half-open connections, as behind a NAT that lost its state).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Bytes forwarded at a time: small, so that connections sharing a limited link interleave.
const CHUNK: usize = 4096;

/// What the link does now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// New connections are closed at once.
    pub refuse: bool,
    /// Nothing is forwarded, and nothing is closed.
    pub blackhole: bool,
    /// Bytes per second in each direction, for the whole link.
    pub bytes_per_s: Option<u64>,
}

/// A running proxy; dropping it closes everything.
pub struct FaultProxy {
    pub port: u16,
    faults: watch::Sender<Faults>,
    /// Bumped to cut every open connection.
    cuts: watch::Sender<u64>,
    /// Connections numbered below this are stranded: held open, forwarding nothing.
    stranded: watch::Sender<u64>,
    opened: Arc<std::sync::atomic::AtomicU64>,
    _accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (faults, _) = watch::channel(Faults::default());
        let (cuts, _) = watch::channel(0u64);
        let (stranded, _) = watch::channel(0u64);
        let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let links = [Link::default(), Link::default()].map(Arc::new);
        let accept = {
            let faults = faults.subscribe();
            let cuts = cuts.clone();
            let stranded = stranded.clone();
            let opened = opened.clone();
            tokio::spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if faults.borrow().refuse {
                        drop(client);
                        continue;
                    }
                    let faults = faults.clone();
                    let cut = cuts.subscribe();
                    let links = links.clone();
                    let number = opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let stranded = stranded.subscribe();
                    conns.spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let held = Held {
                            number,
                            faults,
                            stranded,
                        };
                        forward(client, server, held, cut, links).await;
                    });
                    while conns.try_join_next().is_some() {}
                }
            })
        };
        FaultProxy {
            port,
            faults,
            cuts,
            stranded,
            opened,
            _accept: accept,
        }
    }

    /// `https://127.0.0.1:PORT`, for an agent's configuration.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Every open connection goes half-open for good (a NAT that lost its state): held,
    /// forwarding nothing, never closed. New connections work.
    pub fn strand(&self) {
        let open = self.opened.load(std::sync::atomic::Ordering::SeqCst);
        self.stranded.send_replace(open);
    }

    /// Closes every open connection now.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// The link goes down for `length`: open connections are cut and new ones refused.
    pub async fn outage(&self, length: Duration) {
        self.faults.send_modify(|f| f.refuse = true);
        self.cut();
        tokio::time::sleep(length).await;
        self.faults.send_modify(|f| f.refuse = false);
    }
}

/// One direction of the link: when its next byte may leave.
#[derive(Default)]
struct Link {
    next_free: Mutex<Option<Instant>>,
}

impl Link {
    /// Waits until `n` bytes fit into the link's budget after everything queued before.
    async fn take(&self, n: usize, bytes_per_s: u64) {
        let at = {
            let mut next = self.next_free.lock().unwrap();
            let start = next.map_or_else(Instant::now, |t| t.max(Instant::now()));
            let at = start + Duration::from_secs_f64(n as f64 / bytes_per_s as f64);
            *next = Some(at);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// When a connection may forward: not while the link is a black hole or the connection
/// is stranded.
#[derive(Clone)]
struct Held {
    number: u64,
    faults: watch::Receiver<Faults>,
    stranded: watch::Receiver<u64>,
}

impl Held {
    /// Waits while forwarding is held; `false` once the proxy is gone.
    async fn wait(&mut self) -> bool {
        loop {
            let stranded = self.number < *self.stranded.borrow();
            if !stranded && !self.faults.borrow().blackhole {
                return true;
            }
            tokio::select! {
                changed = self.faults.changed() => if changed.is_err() { return false },
                changed = self.stranded.changed() => if changed.is_err() { return false },
            }
        }
    }
}

async fn forward(
    client: TcpStream,
    server: TcpStream,
    held: Held,
    mut cut: watch::Receiver<u64>,
    links: [Arc<Link>; 2],
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let [up, down] = links;
    let pumps = async {
        tokio::join!(
            pump(client_read, server_write, held.clone(), up),
            pump(server_read, client_write, held, down),
        )
    };
    tokio::select! {
        _ = pumps => {}
        _ = cut.changed() => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: Held,
    link: Arc<Link>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            // A stranded connection's end never reaches the other side either.
            Ok(0) | Err(_) if held.number < *held.stranded.borrow() => {
                std::future::pending::<usize>().await
            }
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Held, not dropped, while the link is a black hole or the connection stranded.
        if !held.wait().await {
            return;
        }
        let limit = held.faults.borrow().bytes_per_s;
        if let Some(rate) = limit {
            link.take(n, rate).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
