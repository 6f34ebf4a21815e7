//! Handing an accepted client connection to a ws-node: the socket and the bytes already read
//! from it. [`Prefixed`] replays those bytes before the socket's own; [`Taker`] is what an
//! in-process node offers; [`send`]/[`recv`] and the one-byte answer are the wire between a
//! router and a node process on one host (the descriptor passed with SCM_RIGHTS).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A stream whose first reads return `prefix`: the request head a router read before it
/// decided where the connection goes.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }

    /// The stream and the prefix bytes not read yet.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.prefix)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a router keeps alive for as long as a handed-off client stays (its connection-limit
/// slot, its per-node gauge); the node drops it when the session ends.
pub type Hold = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// One client for a node: its socket, the request head the node is to read first (the
/// router's forwarded request, hop header included), and the router's [`Hold`].
pub struct Handoff {
    pub stream: TcpStream,
    pub head: Bytes,
    pub hold: Option<Hold>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("stream", &self.stream)
            .field("head", &self.head.len())
            .finish()
    }
}

/// Why a node gave a client back; the router then proxies it (or tries the next node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Draining,
    Full,
    /// Waiting for Redis: rooms opened now could not read their stored history.
    Starting,
    /// Not a TCP socket, or a head that breaks the wire's rules.
    Malformed,
}

impl Refusal {
    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Draining => "draining",
            Refusal::Full => "full",
            Refusal::Starting => "starting",
            Refusal::Malformed => "malformed",
        }
    }

    fn code(self) -> u8 {
        match self {
            Refusal::Draining => 1,
            Refusal::Full => 2,
            Refusal::Starting => 3,
            Refusal::Malformed => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Refusal::Draining,
            2 => Refusal::Full,
            3 => Refusal::Starting,
            4 => Refusal::Malformed,
            _ => return None,
        })
    }
}

/// A node in this process that takes clients: it answers at once, and a client it refuses
/// comes back untouched.
pub trait Taker: Send + Sync {
    fn take(&self, client: Handoff) -> Result<(), Box<(Handoff, Refusal)>>;
}

/// Largest head one handoff carries; the router's header cap is far below it.
pub const MAX_HEAD: usize = 256 * 1024;
/// The answer byte for "taken".
const TAKEN: u8 = 0;

/// Sends `client`'s descriptor and `head` over `unix` (one handoff per Unix connection):
/// a 4-byte big-endian length, then the head, the descriptor riding on the first bytes.
pub async fn send(unix: &mut UnixStream, client: &impl AsFd, head: &[u8]) -> io::Result<()> {
    if head.len() > MAX_HEAD {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "handoff head too large"));
    }
    let len = (head.len() as u32).to_be_bytes();
    let sent = unix
        .async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut cmsg = SendAncillaryBuffer::new(&mut space);
            let fds = [client.as_fd()];
            cmsg.push(SendAncillaryMessage::ScmRights(&fds));
            let iov = [IoSlice::new(&len), IoSlice::new(head)];
            Ok(sendmsg(&*unix, &iov, &mut cmsg, SendFlags::NOSIGNAL)?)
        })
        .await?;
    let mut whole = BytesMut::with_capacity(len.len() + head.len());
    whole.extend_from_slice(&len);
    whole.extend_from_slice(head);
    unix.write_all(&whole[sent.min(whole.len())..]).await?;
    Ok(())
}

/// Receives one handoff: the client's descriptor and the head to read first.
pub async fn recv(unix: &mut UnixStream) -> io::Result<(OwnedFd, Bytes)> {
    let mut buf = vec![0u8; 16 * 1024];
    let (n, fd) = unix
        .async_io(Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut cmsg = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let got = recvmsg(&*unix, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
            let mut fd = None;
            for m in cmsg.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    // Descriptors past the first are closed here.
                    for f in fds {
                        fd.get_or_insert(f);
                    }
                }
            }
            Ok((got.bytes, fd))
        })
        .await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let fd = fd.ok_or_else(|| invalid("a handoff without a descriptor"))?;
    buf.truncate(n);
    if buf.len() < 4 {
        let have = buf.len();
        buf.resize(4, 0);
        unix.read_exact(&mut buf[have..]).await?;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_HEAD {
        return Err(invalid("handoff head too large"));
    }
    if buf.len() > 4 + len {
        return Err(invalid("bytes past the handoff head"));
    }
    let have = buf.len();
    buf.resize(4 + len, 0);
    unix.read_exact(&mut buf[have..]).await?;
    Ok((fd, Bytes::from(buf).slice(4..)))
}

/// The node's answer to one handoff.
pub async fn answer(unix: &mut UnixStream, r: Result<(), Refusal>) -> io::Result<()> {
    let code = match r {
        Ok(()) => TAKEN,
        Err(why) => why.code(),
    };
    unix.write_all(&[code]).await?;
    unix.flush().await
}

/// The router's read of that answer.
pub async fn read_answer(unix: &mut UnixStream) -> io::Result<Result<(), Refusal>> {
    let mut code = [0u8];
    unix.read_exact(&mut code).await?;
    match code[0] {
        TAKEN => Ok(Ok(())),
        c => Refusal::from_code(c).map(Err).ok_or_else(|| invalid("unknown handoff answer")),
    }
}

/// A received descriptor as a Tokio TCP stream; an error when it is not a connected socket.
pub fn tcp_stream(fd: OwnedFd) -> io::Result<TcpStream> {
    let s = std::net::TcpStream::from(fd);
    s.peer_addr()?;
    s.set_nonblocking(true)?;
    TcpStream::from_std(s)
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prefixed_stream_reads_its_prefix_first() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), a);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn a_descriptor_and_its_head_cross_a_unix_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = l.accept().await.unwrap();
        let (mut router, mut node) = UnixStream::pair().unwrap();
        let head = vec![b'x'; 40_000];
        let (sent, got) = tokio::join!(send(&mut router, &accepted, &head), recv(&mut node));
        sent.unwrap();
        let (fd, got_head) = got.unwrap();
        assert_eq!(got_head.len(), head.len());
        drop(accepted);
        let mut taken = tcp_stream(fd).unwrap();
        taken.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        answer(&mut node, Err(Refusal::Draining)).await.unwrap();
        assert_eq!(read_answer(&mut router).await.unwrap(), Err(Refusal::Draining));
        answer(&mut node, Ok(())).await.unwrap();
        assert_eq!(read_answer(&mut router).await.unwrap(), Ok(()));
    }
}
