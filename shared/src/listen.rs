//! Listening sockets: binding (optionally with `SO_REUSEPORT` so several processes share a
//! port), the open-file limit, and an accept loop that survives running out of descriptors.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Binds a TCP listener with `SO_REUSEADDR`, and `SO_REUSEPORT` when asked.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// The soft limit on open files of this process (from `/proc/self/limits`), if known.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Accepts connections, answering with a plain `503` when the process is out of file
/// descriptors instead of spinning on `EMFILE`: one descriptor is held in reserve and
/// released for exactly that.
pub struct Acceptor {
    listener: TcpListener,
    reserve: Option<std::fs::File>,
    refusal: &'static [u8],
}

/// What a refused client reads when the process has no descriptor left.
pub const FD_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 36\r\nretry-after: 1\r\nconnection: close\r\n\r\nserver at its open-file limit; retry\n";

impl Acceptor {
    pub fn new(listener: TcpListener) -> Self {
        Self { listener, reserve: reserve_fd(), refusal: FD_LIMIT_RESPONSE }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next accepted connection. Transient errors are retried with backoff; running out
    /// of descriptors refuses one waiting client with 503 (and counts it in `refused`).
    pub async fn accept(&mut self, refused: &crate::metrics::Counter) -> (TcpStream, SocketAddr) {
        let mut backoff = Duration::from_millis(1);
        loop {
            if self.reserve.is_none() {
                // Lost to another task in the instant it was free; take it back as soon as
                // any descriptor closes, or the next client at the limit cannot be answered.
                self.reserve = reserve_fd();
            }
            match self.listener.accept().await {
                Ok((s, a)) => {
                    let _ = s.set_nodelay(true);
                    return (s, a);
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    // Linux reports EMFILE before it looks at the queue, so this may come with
                    // nobody waiting: take a client only if one is there now. Nothing else
                    // runs on this task until the reserve is held again.
                    self.reserve = None;
                    let waiting = match self.listener.accept().now_or_never() {
                        Some(Ok((mut s, peer))) => {
                            refused.inc();
                            tracing::warn!(%peer, "accept: {e}; refusing the client with 503");
                            let write = s.write_all(self.refusal);
                            let _ = tokio::time::timeout(Duration::from_millis(100), write).await;
                            Ok(())
                        }
                        Some(Err(e)) => Err(e),
                        // Nobody waiting: the next accept sleeps until somebody is.
                        None => Ok(()),
                    };
                    self.reserve = reserve_fd();
                    let Err(e) = waiting else { continue };
                    tracing::debug!("accept at the file limit: {e}");
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => {
                    tracing::debug!("accept: {e}");
                    tokio::time::sleep(backoff).await;
                }
            }
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }
}

fn reserve_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// `EMFILE` or `ENFILE`: the process or the system has no descriptor left.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23) | Some(24))
}
