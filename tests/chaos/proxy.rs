//! A TCP forwarder on a loopback port to the S3 server that the test can take away. While it is
//! down, every forwarded connection is closed (requests in flight, responses half sent) and the
//! listening socket is gone, so new connections are refused; when it is up again it listens on the
//! same port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// What went through the proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted and forwarded.
    pub accepted: AtomicU64,
    /// Connections closed by an outage.
    pub cut: AtomicU64,
}

pub struct Proxy {
    pub port: u16,
    up: watch::Sender<bool>,
    pub stats: Arc<ProxyStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forward 127.0.0.1:<a free port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, rx) = watch::channel(true);
        let stats = Arc::new(ProxyStats::default());
        let task = tokio::spawn(serve(listener, port, upstream, rx, stats.clone()));
        Proxy {
            port,
            up,
            stats,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cut every connection and refuse new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Forward again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    port: u16,
    upstream: SocketAddr,
    mut rx: watch::Receiver<bool>,
    stats: Arc<ProxyStats>,
) {
    let mut listener = Some(listener);
    loop {
        // Down: no listening socket at all, so connecting is refused.
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
        let l = match listener.take() {
            Some(l) => l,
            None => rebind(port).await,
        };
        loop {
            tokio::select! {
                accepted = l.accept() => {
                    if let Ok((client, _)) = accepted {
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(forward(client, upstream, rx.clone(), stats.clone()));
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !*rx.borrow_and_update() {
                        break;
                    }
                }
            }
        }
        drop(l);
    }
}

/// Listen on `port` again (the port the workers were told), retrying while the old socket lingers.
async fn rebind(port: u16) -> TcpListener {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut last = None;
    for _ in 0..100 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the S3 proxy could not listen on port {port} again: {last:?}");
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<bool>,
    stats: Arc<ProxyStats>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let down = async {
        loop {
            if !*rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                // The proxy is gone: stop forwarding too.
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = down => {
            stats.cut.fetch_add(1, Ordering::Relaxed);
        }
    }
}
