//! The spliced tunnel after both 101s: bytes copied both ways, no frame parsing, until one
//! side closes (the other then gets a short grace to finish its close handshake), or until
//! the hard stop at the end of the shutdown grace.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How long the other direction may still run once one side has closed: enough for the
/// WebSocket close frames, short enough that a client gone without a FIN frees its slot.
pub const HALF_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Copy buffer per direction. Frames larger than this just take several reads; small
/// buffers keep an idle tunnel cheap (two of these per proxied client).
const TUNNEL_BUF: usize = 4096;

/// The TCP stream under an upgraded connection and the bytes hyper had read past the
/// headers. Both sides of a tunnel are plain TCP here, so the splice runs on owned socket
/// halves: no lock per read and no dynamic dispatch on the data path.
pub(crate) fn into_tcp(up: Upgraded) -> Option<(TcpStream, Bytes)> {
    up.downcast::<TokioIo<TcpStream>>().ok().map(|p| (p.io.into_inner(), p.read_buf))
}

/// Splices two upgraded TCP connections; `*_early` are bytes already read from each side.
pub(crate) async fn splice_tcp(
    (client, client_early): (TcpStream, Bytes),
    (node, node_early): (TcpStream, Bytes),
    metrics: Arc<Metrics>,
    hard_stop: CancellationToken,
) -> io::Result<()> {
    let (client_rd, client_wr) = client.into_split();
    let (node_rd, mut node_wr) = node.into_split();
    let mut client_wr = Counted { inner: client_wr, metrics: metrics.clone() };
    if !client_early.is_empty() {
        metrics.bytes_to_node.add(client_early.len() as u64);
        node_wr.write_all(&client_early).await?;
    }
    if !node_early.is_empty() {
        client_wr.write_all(&node_early).await?;
    }
    // These may be views into hyper's whole read buffers: let the buffers go now, not when
    // the tunnel ends.
    drop((client_early, node_early));
    splice(Counted { inner: client_rd, metrics }, client_wr, node_rd, node_wr, hard_stop).await
}

/// Copies client -> node and node -> client until either side closes or `hard_stop` fires.
/// Bytes are counted as they pass (the `Counted` client halves), so `/metrics` is live for
/// long tunnels too.
pub(crate) async fn splice<CR, CW, NR, NW>(
    client_rd: CR,
    mut client_wr: CW,
    node_rd: NR,
    mut node_wr: NW,
    hard_stop: CancellationToken,
) -> io::Result<()>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    NR: AsyncRead + Unpin,
    NW: AsyncWrite + Unpin,
{
    let mut client_rd = BufReader::with_capacity(TUNNEL_BUF, client_rd);
    let mut node_rd = BufReader::with_capacity(TUNNEL_BUF, node_rd);
    let up = async {
        let r = tokio::io::copy_buf(&mut client_rd, &mut node_wr).await;
        let _ = node_wr.shutdown().await;
        r
    };
    let down = async {
        let r = tokio::io::copy_buf(&mut node_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
        r
    };
    tokio::pin!(up, down);
    let (first, rest) = tokio::select! {
        r = &mut up => (r, Either::Down),
        r = &mut down => (r, Either::Up),
        _ = hard_stop.cancelled() => return Err(io::Error::other("router shutdown grace over")),
    };
    first?;
    let finish = async {
        match rest {
            Either::Up => up.await,
            Either::Down => down.await,
        }
    };
    tokio::select! {
        r = tokio::time::timeout(HALF_CLOSE_GRACE, finish) => match r {
            Ok(r) => r.map(|_| ()),
            Err(_) => Ok(()),
        },
        _ = hard_stop.cancelled() => Ok(()),
    }
}

enum Either {
    Up,
    Down,
}

/// The client side of a tunnel, counting what it reads (to the node) and writes (to the client).
struct Counted<T> {
    inner: T,
    metrics: Arc<Metrics>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.metrics.bytes_to_node.add((buf.filled().len() - before) as u64);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.metrics.bytes_to_client.add(n as u64);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, duplex};

    use super::*;

    /// `splice` over in-memory pipes, with the client side counted as in production.
    async fn split_splice(
        client: tokio::io::DuplexStream,
        node: tokio::io::DuplexStream,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> io::Result<()> {
        let (cr, cw) = tokio::io::split(client);
        let (nr, nw) = tokio::io::split(node);
        let (cr, cw) =
            (Counted { inner: cr, metrics: metrics.clone() }, Counted { inner: cw, metrics });
        splice(cr, cw, nr, nw, stop).await
    }

    #[tokio::test]
    async fn copies_both_ways_and_ends_when_one_side_closes() {
        let metrics = Arc::new(Metrics::default());
        let (client, mut client_peer) = duplex(1024);
        let (node, mut node_peer) = duplex(1024);
        let task =
            tokio::spawn(split_splice(client, node, metrics.clone(), CancellationToken::new()));
        client_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        node_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        node_peer.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        drop(node_peer);
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.unwrap();
        drop(client_peer);
        task.await.unwrap().unwrap();
        assert_eq!((metrics.bytes_to_node.get(), metrics.bytes_to_client.get()), (5, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_does_not_hold_the_tunnel_open() {
        let (client, _client_peer) = duplex(1024);
        let (node, node_peer) = duplex(1024);
        let task =
            tokio::spawn(split_splice(client, node, Arc::default(), CancellationToken::new()));
        drop(node_peer);
        tokio::time::timeout(HALF_CLOSE_GRACE * 2, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_hard_stop_cuts_the_tunnel() {
        let (client, _c) = duplex(1024);
        let (node, _n) = duplex(1024);
        let stop = CancellationToken::new();
        let task = tokio::spawn(split_splice(client, node, Arc::default(), stop.clone()));
        stop.cancel();
        assert!(task.await.unwrap().is_err());
    }
}
