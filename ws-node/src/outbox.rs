//! Encoded outbound bytes: text frames encoded once as WebSocket wire bytes (a server
//! frame is unmasked, so every member of a room gets the same bytes), and a writer's batch
//! of them as shared buffers written with vectored writes, progress kept across partial
//! and cancelled writes. [`crate::outlet`] decides when they are written.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Buffers handed to one `writev`: enough for a full batch of small frames.
const IOVECS: usize = 128;

/// The wire bytes of a final, unmasked text frame carrying `payload` (RFC 6455 §5.2),
/// encoded by tungstenite's own framer.
pub fn text(payload: impl Into<Bytes>) -> Bytes {
    let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
    let mut out = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out.into()
}

/// Encoded frames not yet written; the first one may be partly written. Writing keeps its
/// progress here, so a write cancelled half way (a kill while the socket is full) resumes
/// at the same byte and the stream stays frame-aligned for the close that follows.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
}

impl Outbox {
    pub fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.queue.push_back(frame);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes everything queued, a `writev` of up to [`IOVECS`] frames at a time, then
    /// flushes (a TLS stream holds the last record until then). Cancel-safe.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        while !self.queue.is_empty() {
            let (iov, k) = self.slices();
            let n = w.write_vectored(&iov[..k]).await?;
            self.written(n)?;
        }
        w.flush().await
    }

    /// One vectored write through `write` (a non-blocking `try_write_vectored`), its
    /// progress kept.
    pub fn write_with(
        &mut self,
        write: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<()> {
        let (iov, k) = self.slices();
        let n = write(&iov[..k])?;
        self.written(n)
    }

    /// The first [`IOVECS`] queued buffers, and how many there are.
    fn slices(&self) -> ([IoSlice<'_>; IOVECS], usize) {
        let mut iov = [IoSlice::new(&[]); IOVECS];
        let mut k = 0;
        for (slot, b) in iov.iter_mut().zip(&self.queue) {
            *slot = IoSlice::new(b);
            k += 1;
        }
        (iov, k)
    }

    fn written(&mut self, n: usize) -> io::Result<()> {
        if n == 0 && !self.queue.is_empty() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.consume(n);
        Ok(())
    }

    /// Drops the first `n` queued bytes (written).
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { return };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read, Write};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocket};
    use tokio_tungstenite::tungstenite::{Error, Message};

    use super::*;

    #[test]
    fn every_length_format_parses_back_as_one_unmasked_final_text_frame() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70_000] {
            let payload = "x".repeat(len);
            let wire = text(payload.clone());
            let mut c = Cursor::new(&wire[..]);
            let (h, n) = FrameHeader::parse(&mut c).unwrap().expect("a whole header");
            assert_eq!(n as usize, len, "length {len}");
            assert!(h.is_final && h.mask.is_none(), "length {len}");
            assert_eq!(h.opcode, OpCode::Data(Data::Text), "length {len}");
            let header = match len {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(c.position() as usize, header, "length {len}");
            assert_eq!(&wire[header..], payload.as_bytes(), "length {len}");
        }
    }

    /// One direction of a connection in memory: what the server wrote, read by a client.
    #[derive(Default)]
    struct Pipe {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.input.read(buf)? {
                0 => Err(io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        }
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Write::write(&mut self.output, buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that takes at most `step` bytes per call, and every call vectored.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        calls: usize,
    }
    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.step;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_writes_resume_where_they_stopped_and_a_close_follows_on_a_frame_boundary() {
        let payloads: Vec<String> =
            [0, 5, 125, 126, 300, 65536].iter().map(|n| "y".repeat(*n)).collect();
        for step in [1, 7, 4096, usize::MAX] {
            let mut outbox = Outbox::default();
            for p in &payloads {
                outbox.push(text(p.clone()));
            }
            let mut w = Trickle { out: Vec::new(), step, calls: 0 };
            outbox.write_to(&mut w).await.unwrap();
            assert!(outbox.is_empty());
            if step == usize::MAX {
                assert_eq!(w.calls, 1, "one writev for the whole batch");
            }
            // The server's tungstenite then closes: its close frame goes after our bytes.
            let mut server = WebSocket::from_raw_socket(Pipe::default(), Role::Server, None);
            let close = CloseFrame { code: CloseCode::Policy, reason: "slow consumer".into() };
            server.close(Some(close)).unwrap();
            server.flush().unwrap();
            w.out.extend_from_slice(&server.get_ref().output);

            let pipe = Pipe { input: Cursor::new(w.out), output: Vec::new() };
            let mut client = WebSocket::from_raw_socket(pipe, Role::Client, None);
            for p in &payloads {
                assert_eq!(client.read().unwrap(), Message::text(p.clone()), "step {step}");
            }
            match client.read() {
                Ok(Message::Close(Some(f))) => {
                    assert_eq!((f.code, f.reason.as_str()), (CloseCode::Policy, "slow consumer"))
                }
                other => panic!("step {step}: expected the close, got {other:?}"),
            }
            assert!(matches!(client.read(), Err(Error::Io(_) | Error::ConnectionClosed)));
        }
    }

    #[test]
    fn consuming_crosses_frame_boundaries() {
        let mut o = Outbox::default();
        for f in [&b"abc"[..], b"", b"de", b"fghij"] {
            o.push(Bytes::from_static(f));
        }
        o.consume(4);
        assert_eq!(o.queue.iter().map(|b| &b[..]).collect::<Vec<_>>(), [&b"e"[..], b"fghij"]);
        o.consume(6);
        assert!(o.is_empty());
    }
}
