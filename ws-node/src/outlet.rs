//! A connection's outbound side, shared by its room and its session: the queue of frames
//! the room and the session's own tungstenite hand it, and the writer that drains it.
//!
//! On a plain TCP connection whose queue is empty, [`Outlet::push`] writes the frame
//! straight to the socket (`try_write` from the room's task): no queue, no wake-up, no
//! task switch for the common case of a connection keeping up. Only when the socket takes
//! less, or something is queued already, does the frame queue, and the connection's
//! [`Writer`] is woken when its queue goes from empty to non-empty. Order holds because a
//! frame is written straight only when nothing is queued or held by the writer, and the
//! rest of a frame written in part stays first in the queue. TLS connections always queue.
//!
//! Tungstenite keeps reading and the control frames (ping, pong, close), writing them
//! through the same outlet ([`Duplex`]), so they never interleave inside a frame.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use shared::handoff::Prefixed;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::outbox::{self, Outbox};
use crate::room::Outbound;

/// Frames the writer takes from the queue at once, so one busy connection cannot hog its
/// task and a welcome is serialized outside the lock.
const MAX_BATCH: usize = 256;

/// Control frames tungstenite may queue beyond the data cap: its close after a full queue.
const CONTROL_SLACK: usize = 4;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The connection holds its maximum of queued frames: a slow consumer.
    Full,
    /// The connection is closing.
    Closed,
}

/// What happens to queued frames when the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// Written before the close frame (a drain, a shutdown, our error reply).
    Write,
    /// Dropped, but for the rest of a frame written in part (a slow consumer).
    Drop,
}

/// A connection's outbound queue; see the module docs.
#[derive(Debug)]
pub struct Outlet {
    state: Mutex<State>,
    wake: Notify,
    cap: usize,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Outbound>,
    /// The writer holds frames taken from the queue that are not fully written yet.
    held: bool,
    /// The queue's first frame is the rest of one written in part straight to the socket.
    partial_front: bool,
    /// Data frames are refused from now on.
    closed: bool,
    /// The socket pushes may write to directly: a plain TCP connection, until it closes.
    tcp: Option<Arc<TcpStream>>,
}

impl Outlet {
    fn new(cap: usize, tcp: Option<Arc<TcpStream>>) -> Arc<Self> {
        let state =
            State { queue: VecDeque::new(), held: false, partial_front: false, closed: false, tcp };
        Arc::new(Self { state: Mutex::new(state), wake: Notify::new(), cap: cap.max(2) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it cannot leave the queue half-changed in a way that matters
        // more than losing the connection; carry on with what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `frame` to the connection: written at once when `direct` is allowed and the
    /// connection is idle, queued otherwise. `direct` is for callers that would rather do
    /// the write themselves than wake the connection (a room's fan-out).
    pub fn push(&self, frame: Outbound, direct: bool) -> Result<(), Refused> {
        let mut st = self.lock();
        if st.closed {
            return Err(Refused::Closed);
        }
        if st.queue.len() >= self.cap {
            return Err(Refused::Full);
        }
        self.enqueue(&mut st, frame, direct);
        Ok(())
    }

    /// Tungstenite's own frames (pong, ping, close); refused only past the cap's slack.
    fn push_control(&self, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        if st.queue.len() >= self.cap + CONTROL_SLACK {
            return Err(io::Error::other("outbound queue full"));
        }
        self.enqueue(&mut st, Outbound::Wire(Bytes::copy_from_slice(bytes)), true);
        Ok(())
    }

    fn enqueue(&self, st: &mut State, frame: Outbound, direct: bool) {
        if let Outbound::Wire(b) = &frame
            && b.is_empty()
        {
            return;
        }
        let idle = st.queue.is_empty() && !st.held;
        if idle
            && direct
            && let (Outbound::Wire(bytes), Some(tcp)) = (&frame, &st.tcp)
        {
            match tcp.try_write(bytes) {
                Ok(n) if n == bytes.len() => return,
                Ok(n) => {
                    st.queue.push_back(Outbound::Wire(bytes.slice(n..)));
                    st.partial_front = n > 0;
                    self.wake.notify_one();
                    return;
                }
                // Full socket, or a broken one: the writer waits for room or meets the error.
                Err(_) => {}
            }
        }
        st.queue.push_back(frame);
        if idle {
            self.wake.notify_one();
        }
    }

    /// Refuses data frames from now on and stops writing straight to the socket.
    fn close(&self, leftover: Leftover) {
        let mut st = self.lock();
        st.closed = true;
        st.tcp = None;
        if leftover == Leftover::Drop {
            let keep = usize::from(st.partial_front);
            st.queue.truncate(keep);
        }
    }

    /// Moves up to [`MAX_BATCH`] queued frames to `into`; marks them held while any are.
    fn take(&self, into: &mut Vec<Outbound>) {
        let mut st = self.lock();
        let n = st.queue.len().min(MAX_BATCH);
        into.extend(st.queue.drain(..n));
        st.partial_front = false;
        st.held = n > 0;
    }
}

/// Where the writer writes: the TCP socket itself, or the write half of any other stream.
enum Sink {
    Tcp(Arc<TcpStream>),
    Stream(WriteHalf<TokioIo<Upgraded>>),
}

/// Drains a connection's [`Outlet`]. Progress lives here, so its futures are cancel-safe.
pub struct Writer {
    outlet: Arc<Outlet>,
    sink: Sink,
    out: Outbox,
    taken: Vec<Outbound>,
}

impl Writer {
    /// Writes frames as they queue, until a write fails.
    pub async fn run(&mut self) -> io::Error {
        loop {
            if let Err(e) = self.write_taken().await {
                return e;
            }
            self.refill();
            if self.out.is_empty() {
                self.outlet.wake.notified().await;
            }
        }
    }

    /// Writes everything queued now (after a close: tungstenite's close frame, its reply
    /// to the peer's), then returns.
    pub async fn flush(&mut self) -> io::Result<()> {
        loop {
            self.write_taken().await?;
            self.refill();
            if self.out.is_empty() {
                return Ok(());
            }
        }
    }

    /// Takes a batch from the queue; the welcomes in it are serialized here, by the
    /// connection's own task.
    fn refill(&mut self) {
        if !self.out.is_empty() {
            return;
        }
        self.outlet.take(&mut self.taken);
        for o in self.taken.drain(..) {
            self.out.push(match o {
                Outbound::Wire(b) => b,
                Outbound::Welcome(w) => outbox::text(w.to_json()),
            });
        }
    }

    async fn write_taken(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Tcp(tcp) => {
                while !self.out.is_empty() {
                    tcp.writable().await?;
                    match self.out.write_with(|iov| tcp.try_write_vectored(iov)) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        r => r?,
                    }
                }
            }
            Sink::Stream(w) => self.out.write_to(w).await?,
        }
        Ok(())
    }
}

/// The stream tungstenite reads and writes: reads from the socket, writes into the outlet.
pub struct Duplex {
    read: Source,
    outlet: Arc<Outlet>,
}

enum Source {
    Tcp(Arc<TcpStream>),
    Stream(ReadHalf<TokioIo<Upgraded>>),
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.read {
            Source::Tcp(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                match tcp.try_read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Source::Stream(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.outlet.push_control(buf).map(|()| buf.len()))
    }
    // The writer flushes; a frame handed over is as good as queued on the socket.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A connection's two halves around its outlet: what tungstenite reads and writes
/// through, the writer, the outlet the room pushes to, and the bytes the HTTP server read
/// past the upgrade request (tungstenite reads them first).
pub struct Halves {
    pub duplex: Duplex,
    pub writer: Writer,
    pub outlet: Arc<Outlet>,
    pub read_ahead: Vec<u8>,
}

/// Splits an upgraded connection. A plain TCP socket (accepted, or handed over) is shared
/// by reads and direct writes; any other stream (TLS) is split and always queues.
/// `cap` is the most data frames the connection may have queued.
pub fn open(upgraded: Upgraded, cap: usize) -> Halves {
    let (tcp, read_ahead) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(p) => (Ok(p.io.into_inner()), p.read_buf.to_vec()),
        Err(u) => match u.downcast::<TokioIo<Prefixed<TcpStream>>>() {
            Ok(p) => {
                let (tcp, unread) = p.io.into_inner().into_parts();
                (Ok(tcp), [unread, p.read_buf].concat())
            }
            Err(u) => (Err(u), Vec::new()),
        },
    };
    match tcp {
        Ok(tcp) => Halves::tcp(tcp, cap, read_ahead),
        Err(other) => {
            let (r, w) = tokio::io::split(TokioIo::new(other));
            let outlet = Outlet::new(cap, None);
            Halves {
                duplex: Duplex { read: Source::Stream(r), outlet: outlet.clone() },
                writer: Writer::new(outlet.clone(), Sink::Stream(w)),
                outlet,
                read_ahead,
            }
        }
    }
}

impl Halves {
    /// A plain TCP connection's halves: reads and direct writes share the socket.
    fn tcp(tcp: TcpStream, cap: usize, read_ahead: Vec<u8>) -> Self {
        let tcp = Arc::new(tcp);
        let outlet = Outlet::new(cap, Some(tcp.clone()));
        Halves {
            duplex: Duplex { read: Source::Tcp(tcp.clone()), outlet: outlet.clone() },
            writer: Writer::new(outlet.clone(), Sink::Tcp(tcp)),
            outlet,
            read_ahead,
        }
    }
}

impl Writer {
    fn new(outlet: Arc<Outlet>, sink: Sink) -> Self {
        Self { outlet, sink, out: Outbox::default(), taken: Vec::new() }
    }

    /// Closes the outlet (see [`Leftover`]) and writes what it still holds, bounded by the
    /// caller's timeout.
    pub async fn close(&mut self, leftover: Leftover) -> io::Result<()> {
        self.outlet.close(leftover);
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::net::TcpSocket;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use super::*;

    /// A connected loopback pair with small buffers, so the socket fills after a few
    /// frames: the writing end as [`Halves`], the reading end as a WebSocket client.
    async fn pair(cap: usize) -> (Halves, WebSocketStream<TcpStream>) {
        let listen = TcpSocket::new_v4().unwrap();
        listen.set_recv_buffer_size(4096).unwrap();
        listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listen.listen(8).unwrap();
        let writing = TcpSocket::new_v4().unwrap();
        writing.set_send_buffer_size(4096).unwrap();
        let (server, accepted) =
            tokio::join!(writing.connect(listener.local_addr().unwrap()), listener.accept());
        let (reading, _) = accepted.unwrap();
        let cfg = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let client = WebSocketStream::from_raw_socket(reading, Role::Client, Some(cfg)).await;
        (Halves::tcp(server.unwrap(), cap, Vec::new()), client)
    }

    fn frame(i: usize) -> Outbound {
        // Sizes from a few bytes to several socket buffers, so writes split mid-frame.
        let pad = "p".repeat((i * 7919) % 20_000);
        Outbound::Wire(outbox::text(format!("{i}:{pad}")))
    }

    async fn read_text(client: &mut WebSocketStream<TcpStream>) -> Option<String> {
        let next = tokio::time::timeout(Duration::from_secs(10), client.next()).await;
        match next.expect("a frame within 10 s") {
            Some(Ok(Message::Text(t))) => Some(t.to_string()),
            Some(Ok(Message::Ping(_))) => Some("ping".into()),
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(_)) | None => None,
        }
    }

    /// Reads every text frame until the connection closes.
    fn read_all(mut client: WebSocketStream<TcpStream>) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(t) = read_text(&mut client).await {
                got.push(t);
            }
            got
        })
    }

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order_while_the_room_writes_and_the_writer_drains() {
        let (halves, mut client) = pair(100_000).await;
        let Halves { duplex, mut writer, outlet, .. } = halves;
        let writing = tokio::spawn(async move { writer.run().await });
        let pushing = tokio::spawn({
            let outlet = outlet.clone();
            async move {
                for i in 0..600 {
                    outlet.push(frame(i), i % 3 != 0).unwrap();
                    if i % 50 == 0 {
                        // A ping from tungstenite's side, between data frames.
                        let ping = tokio_tungstenite::tungstenite::protocol::frame::Frame::ping(
                            Vec::new(),
                        );
                        let mut wire = Vec::new();
                        ping.format(&mut wire).unwrap();
                        outlet.push_control(&wire).unwrap();
                    }
                    if i % 10 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        let mut want = 0;
        let mut pings = 0;
        while want < 600 {
            let got = read_text(&mut client).await.expect("the connection stays open");
            if got == "ping" {
                pings += 1;
                continue;
            }
            let (i, pad) = got.split_once(':').unwrap();
            assert_eq!(i.parse::<usize>().unwrap(), want, "in push order");
            assert_eq!(pad.len(), (want * 7919) % 20_000, "frame {want} whole");
            want += 1;
        }
        assert_eq!(pings, 12);
        pushing.await.unwrap();
        writing.abort();
        drop(duplex);
    }

    #[tokio::test]
    async fn nothing_is_written_straight_past_a_queued_frame() {
        let (halves, mut client) = pair(100).await;
        let Halves { mut writer, outlet, .. } = halves;
        // Queued (a welcome is pushed like this), then offered for a direct write.
        outlet.push(Outbound::Wire(outbox::text("first")), false).unwrap();
        outlet.push(Outbound::Wire(outbox::text("second")), true).unwrap();
        writer.flush().await.unwrap();
        assert_eq!(read_text(&mut client).await.as_deref(), Some("first"));
        assert_eq!(read_text(&mut client).await.as_deref(), Some("second"));
    }

    #[tokio::test]
    async fn nothing_is_written_straight_while_the_writer_holds_a_frame_cut_short() {
        use futures_util::FutureExt;
        let (halves, client) = pair(100).await;
        let Halves { duplex, mut writer, outlet, .. } = halves;
        let big = "b".repeat(1 << 20);
        outlet.push(Outbound::Wire(outbox::text(big.clone())), false).unwrap();
        // One poll: the writer takes the frame, writes what the socket takes, and waits.
        assert!(writer.flush().now_or_never().is_none(), "the socket is full");
        let reader = read_all(client);
        // The reader makes room; a direct write now would land inside the big frame.
        let tcp = outlet.lock().tcp.clone().unwrap();
        tcp.writable().await.unwrap();
        outlet.push(Outbound::Wire(outbox::text("small")), true).unwrap();
        writer.flush().await.unwrap();
        drop((duplex, writer, outlet, tcp));
        assert_eq!(reader.await.unwrap(), vec![big, "small".to_string()]);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_slow_consumer_close_keeps_only_the_cut_frame() {
        let cap = 8;
        let (halves, client) = pair(cap).await;
        let Halves { duplex, mut writer, outlet, .. } = halves;
        // Nobody reads and the writer does not run: the socket fills, part of the big
        // frame goes straight out, and the rest queues.
        let big = "b".repeat(1 << 20);
        outlet.push(Outbound::Wire(outbox::text(big.clone())), true).unwrap();
        for i in 1..cap {
            outlet.push(frame(i), true).unwrap();
        }
        assert_eq!(outlet.push(frame(cap), true), Err(Refused::Full));
        let reader = read_all(client);
        writer.close(Leftover::Drop).await.unwrap();
        assert_eq!(outlet.push(frame(0), true), Err(Refused::Closed));
        // The session ends: the socket closes with its last holder.
        drop((duplex, writer, outlet));
        let got = reader.await.unwrap();
        assert_eq!(got, vec![big], "the cut frame whole, then nothing");
    }

    #[tokio::test]
    async fn control_frames_past_the_cap_and_its_slack_are_refused() {
        let cap = 4;
        let (halves, _client) = pair(cap).await;
        // Queued, not written: the writer does not run.
        for i in 0..cap {
            halves.outlet.push(frame(i), false).unwrap();
        }
        assert_eq!(halves.outlet.push(frame(cap), false), Err(Refused::Full));
        // A client that pings and never reads gets its pongs queued only this far.
        for _ in 0..CONTROL_SLACK {
            halves.outlet.push_control(b"\x8a\x00").unwrap();
        }
        assert!(halves.outlet.push_control(b"\x8a\x00").is_err());
    }
}
