//! The spliced tunnel after both 101s: bytes copied both ways, no frame parsing, until one
//! side closes (the other then gets a short grace to finish its close handshake), or until
//! the hard stop at the end of the shutdown grace.
//!
//! An idle tunnel holds no copy buffer. Each direction waits for readiness, then reads into
//! its runtime thread's one buffer and writes it on at once; only bytes the other side
//! cannot take yet are copied to the heap, for as long as that write waits. Most WebSocket
//! clients are idle most of the time, so this is what makes a proxied idle client cheap
//! (see docs/benchmarks.md).

use std::cell::RefCell;
use std::io::{self, ErrorKind};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use shared::handoff::Prefixed;
use shared::metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::upstream::NodeIo;

/// How long the other direction may still run once one side has closed: enough for the
/// WebSocket close frames, short enough that a client gone without a FIN frees its slot.
pub const HALF_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Most bytes moved by one read: a 16 KiB frame passes in one read.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// The read buffer of every tunnel on this thread, used only while one read and its
    /// write run (see [`move_once`]). A buffer made for each read was 16 KiB zeroed per
    /// message moved, most of them a hundred bytes long.
    static CHUNK: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// The TCP stream under an upgraded connection and the bytes hyper had read past the
/// headers. Both sides of a tunnel are plain TCP here, so the splice runs on owned socket
/// halves with readiness-driven reads and writes.
pub(crate) fn into_tcp(up: Upgraded) -> Result<(TcpStream, Bytes), Upgraded> {
    let up = match up.downcast::<TokioIo<TcpStream>>() {
        Ok(p) => return Ok((p.io.into_inner(), p.read_buf)),
        Err(up) => up,
    };
    // A client whose head the router read itself before proxying it (see crate::handoff).
    up.downcast::<TokioIo<Prefixed<TcpStream>>>().map(|p| {
        let (tcp, unread) = p.io.into_inner().into_parts();
        if unread.is_empty() {
            return (tcp, p.read_buf);
        }
        let mut early = bytes::BytesMut::with_capacity(unread.len() + p.read_buf.len());
        early.extend_from_slice(&p.read_buf);
        early.extend_from_slice(&unread);
        (tcp, early.freeze())
    })
}

/// A client that came over TLS: the TLS stream and the bytes hyper had read past the headers.
pub(crate) fn into_tls(up: Upgraded) -> Option<(TlsStream<TcpStream>, Bytes)> {
    up.downcast::<TokioIo<TlsStream<TcpStream>>>().ok().map(|p| (p.io.into_inner(), p.read_buf))
}

/// The node side: a [`NodeIo`] (plain TCP, or TLS with `--node-tls-ca`) and the bytes hyper
/// had read past the 101.
pub(crate) fn into_node(up: Upgraded) -> Option<(NodeIo, Bytes)> {
    up.downcast::<TokioIo<NodeIo>>().ok().map(|p| (p.io.into_inner(), p.read_buf))
}

/// Splices when either side speaks TLS. TLS records must be decrypted, so this one copies
/// through buffers (tokio's `copy_bidirectional`) and counts the bytes when the tunnel ends.
pub(crate) async fn splice_buffered<C, N>(
    (mut client, client_early): (C, Bytes),
    (mut node, node_early): (N, Bytes),
    metrics: Arc<Metrics>,
    hard_stop: CancellationToken,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    N: AsyncRead + AsyncWrite + Unpin,
{
    node.write_all(&client_early).await?;
    node.flush().await?;
    client.write_all(&node_early).await?;
    client.flush().await?;
    metrics.bytes_to_node.add(client_early.len() as u64);
    metrics.bytes_to_client.add(node_early.len() as u64);
    drop((client_early, node_early));
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut node) => {
            let (up, down) = r?;
            metrics.bytes_to_node.add(up);
            metrics.bytes_to_client.add(down);
            Ok(())
        }
        _ = hard_stop.cancelled() => Err(io::Error::other("router shutdown grace over")),
    }
}

/// Splices two upgraded TCP connections; `*_early` are bytes already read from each side.
/// Copies client -> node and node -> client until either side closes or `hard_stop` fires;
/// bytes are counted as they pass, so `/metrics` is live for long tunnels too.
pub(crate) async fn splice_tcp(
    (client, client_early): (TcpStream, Bytes),
    (node, node_early): (TcpStream, Bytes),
    metrics: Arc<Metrics>,
    hard_stop: CancellationToken,
) -> io::Result<()> {
    let (client_rd, mut client_wr) = client.into_split();
    let (node_rd, mut node_wr) = node.into_split();
    if !client_early.is_empty() {
        node_wr.write_all(&client_early).await?;
        metrics.bytes_to_node.add(client_early.len() as u64);
    }
    if !node_early.is_empty() {
        client_wr.write_all(&node_early).await?;
        metrics.bytes_to_client.add(node_early.len() as u64);
    }
    // These may be views into hyper's whole read buffers: let the buffers go now, not when
    // the tunnel ends.
    drop((client_early, node_early));
    let up = pump(&client_rd, &mut node_wr, &metrics.bytes_to_node);
    let down = pump(&node_rd, &mut client_wr, &metrics.bytes_to_client);
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
        r = tokio::time::timeout(HALF_CLOSE_GRACE, finish) => r.unwrap_or(Ok(())),
        _ = hard_stop.cancelled() => Ok(()),
    }
}

enum Either {
    Up,
    Down,
}

/// Copies `rd` to `wr` until `rd` ends, then shuts `wr` down (the half-close reaches the
/// other side, which can then finish its close handshake).
async fn pump(rd: &OwnedReadHalf, wr: &mut OwnedWriteHalf, counter: &Counter) -> io::Result<()> {
    let r = copy(rd, wr, counter).await;
    let _ = wr.shutdown().await;
    r
}

async fn copy(rd: &OwnedReadHalf, wr: &mut OwnedWriteHalf, counter: &Counter) -> io::Result<()> {
    loop {
        rd.readable().await?;
        let unsent = match move_once(rd, wr, counter)? {
            Step::Moved => continue,
            Step::Eof => return Ok(()),
            Step::Unsent(unsent) => unsent,
        };
        wr.write_all(&unsent).await?;
        counter.add(unsent.len() as u64);
    }
}

/// What one read and write did.
enum Step {
    /// Everything read (possibly nothing: a spurious wake-up) was written.
    Moved,
    /// The read side ended.
    Eof,
    /// Bytes read that the write side could not take yet.
    Unsent(Vec<u8>),
}

/// One read into the thread's buffer and one write of what it got. A plain function, not an
/// `async` one: the buffer is never held across an await, so no tunnel owns one.
fn move_once(rd: &OwnedReadHalf, wr: &OwnedWriteHalf, counter: &Counter) -> io::Result<Step> {
    CHUNK.with_borrow_mut(|buf| move_through(rd, wr, counter, buf))
}

fn move_through(
    rd: &OwnedReadHalf,
    wr: &OwnedWriteHalf,
    counter: &Counter,
    buf: &mut [u8],
) -> io::Result<Step> {
    // A read shorter than the buffer has emptied the socket. Reporting it to tokio as
    // WouldBlock clears the readiness, so the next round waits for the socket's next event
    // instead of paying a read that can only fail (tokio's own `poll_read` does the same;
    // readiness that arrived meanwhile is kept, and so is a FIN).
    let mut short = 0;
    let read = rd.as_ref().try_io(Interest::READABLE, || match rd.try_read(buf)? {
        n if n > 0 && n < buf.len() => {
            short = n;
            Err(ErrorKind::WouldBlock.into())
        }
        n => Ok(n),
    });
    let n = match read {
        Ok(0) => return Ok(Step::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock && short > 0 => short,
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Step::Moved),
        Err(e) => return Err(e),
    };
    let written = match wr.try_write(&buf[..n]) {
        Ok(w) => w,
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    counter.add(written as u64);
    Ok(if written == n { Step::Moved } else { Step::Unsent(buf[written..n].to_vec()) })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A connected loopback pair: (the router's end, the peer's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (peer, accepted) = tokio::join!(peer, listener.accept());
        (accepted.unwrap().0, peer.unwrap())
    }

    /// A tunnel between two fresh pairs: (task, client peer, node peer, metrics).
    async fn tunnel(
        stop: CancellationToken,
    ) -> (tokio::task::JoinHandle<io::Result<()>>, TcpStream, TcpStream, Arc<Metrics>) {
        let (client, client_peer) = pair().await;
        let (node, node_peer) = pair().await;
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(splice_tcp(
            (client, Bytes::new()),
            (node, Bytes::new()),
            metrics.clone(),
            stop,
        ));
        (task, client_peer, node_peer, metrics)
    }

    #[tokio::test]
    async fn copies_both_ways_and_ends_when_one_side_closes() {
        let (task, mut client_peer, mut node_peer, metrics) =
            tunnel(CancellationToken::new()).await;
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
        assert!(rest.is_empty());
        drop(client_peer);
        task.await.unwrap().unwrap();
        assert_eq!((metrics.bytes_to_node.get(), metrics.bytes_to_client.get()), (5, 2));
    }

    /// A short read clears the socket's readiness: every later message must still wake the
    /// tunnel, and a FIN right behind a message must still end it.
    #[tokio::test]
    async fn short_reads_miss_neither_the_next_message_nor_the_fin() {
        let (task, mut client_peer, mut node_peer, metrics) =
            tunnel(CancellationToken::new()).await;
        let rounds = async {
            for i in 0..300u32 {
                let msg = i.to_be_bytes();
                client_peer.write_all(&msg).await.unwrap();
                let mut buf = [0u8; 4];
                node_peer.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, msg);
                node_peer.write_all(&msg).await.unwrap();
                client_peer.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, msg);
            }
            client_peer.write_all(b"last").await.unwrap();
            client_peer.shutdown().await.unwrap();
            let mut rest = Vec::new();
            node_peer.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"last");
        };
        tokio::time::timeout(Duration::from_secs(10), rounds).await.expect("a message stalled");
        drop((client_peer, node_peer));
        task.await.unwrap().unwrap();
        assert_eq!((metrics.bytes_to_node.get(), metrics.bytes_to_client.get()), (1204, 1200));
    }

    #[tokio::test]
    async fn early_bytes_go_first_and_are_counted() {
        let (client, mut client_peer) = pair().await;
        let (node, mut node_peer) = pair().await;
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(splice_tcp(
            (client, Bytes::from_static(b"c0")),
            (node, Bytes::from_static(b"n0")),
            metrics.clone(),
            CancellationToken::new(),
        ));
        client_peer.write_all(b"c1").await.unwrap();
        let mut buf = [0u8; 4];
        node_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"c0c1");
        client_peer.read_exact(&mut buf[..2]).await.unwrap();
        assert_eq!(&buf[..2], b"n0");
        drop((client_peer, node_peer));
        task.await.unwrap().unwrap();
        assert_eq!((metrics.bytes_to_node.get(), metrics.bytes_to_client.get()), (4, 2));
    }

    #[tokio::test]
    async fn a_slow_reader_gets_every_byte_in_order() {
        // Far more than the socket buffers hold: the writes must wait, with the bytes read
        // but not yet taken held on the heap.
        const TOTAL: usize = 8 * 1024 * 1024;
        let (task, client_peer, mut node_peer, metrics) = tunnel(CancellationToken::new()).await;
        let (mut client_rd, mut client_wr) = client_peer.into_split();
        let send = tokio::spawn(async move {
            let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
            client_wr.write_all(&data).await.unwrap();
            client_wr.shutdown().await.unwrap();
        });
        let mut got = Vec::with_capacity(TOTAL);
        let mut chunk = vec![0u8; 1000];
        loop {
            // Small reads, each a separate wake-up: the tunnel's writes keep hitting a full
            // socket buffer.
            let n = node_peer.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            tokio::task::yield_now().await;
        }
        send.await.unwrap();
        assert_eq!(got.len(), TOTAL);
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "bytes out of order");
        drop(node_peer);
        let mut rest = Vec::new();
        client_rd.read_to_end(&mut rest).await.unwrap();
        task.await.unwrap().unwrap();
        assert_eq!(metrics.bytes_to_node.get(), TOTAL as u64);
    }

    #[tokio::test]
    async fn the_read_buffer_stays_out_of_the_tunnel_future() {
        let (client, _c) = pair().await;
        let (node, _n) = pair().await;
        let fut = splice_tcp(
            (client, Bytes::new()),
            (node, Bytes::new()),
            Arc::default(),
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&fut);
        assert!(size < READ_CHUNK / 8, "the tunnel future is {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_does_not_hold_the_tunnel_open() {
        let (task, _client_peer, node_peer, _) = tunnel(CancellationToken::new()).await;
        drop(node_peer);
        tokio::time::timeout(HALF_CLOSE_GRACE * 2, task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_hard_stop_cuts_the_tunnel() {
        let stop = CancellationToken::new();
        let (task, _c, _n, _) = tunnel(stop.clone()).await;
        stop.cancel();
        assert!(task.await.unwrap().is_err());
    }
}
