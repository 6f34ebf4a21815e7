//! A client's first request head, read and parsed (`httparse`) off the socket before hyper
//! sees it, so that the router can place the request and hand the socket on with the bytes
//! it read. Whatever it does not take as a clean head goes to hyper, which answers as always.

use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Header lines one head may have (hyper's own default).
const MAX_HEADERS: usize = 100;

/// What the first read of a connection gave.
pub(crate) enum Read {
    /// A whole head: the request and its length in the buffer.
    Head(Box<Request<()>>, usize),
    /// Too large, malformed, or not one this router takes apart: hyper serves it.
    Other,
    /// Closed or silent past the header timeout before a whole head arrived.
    Gone,
}

/// Reads into `buf` until it holds a whole head, at most about `max` bytes.
pub(crate) async fn read(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
    timeout: Duration,
) -> Read {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match parse(buf) {
            Parsed::Done(req, len) => return Read::Head(req, len),
            Parsed::Bad => return Read::Other,
            Parsed::Partial if buf.len() >= max => return Read::Other,
            Parsed::Partial => {}
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Read::Gone,
        }
    }
}

enum Parsed {
    Done(Box<Request<()>>, usize),
    Partial,
    Bad,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => match build(&req) {
            Some(r) => Parsed::Done(Box::new(r), len),
            None => Parsed::Bad,
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Bad,
    }
}

fn build(parsed: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    let mut req = Request::new(());
    *req.method_mut() = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    *req.uri_mut() = parsed.path?.parse::<Uri>().ok()?;
    *req.version_mut() = if parsed.version? == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
    let h = req.headers_mut();
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        h.append(name, HeaderValue::from_bytes(header.value).ok()?);
    }
    Some(req)
}

/// `req` as HTTP/1.1 text, for a node to read first.
pub(crate) fn write<B>(req: &Request<B>, out: &mut BytesMut) {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_parses_and_writes_back() {
        let text =
            b"GET /ws?room=r1&user=u1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nEARLY";
        let Parsed::Done(req, len) = parse(text) else { panic!("not parsed") };
        assert_eq!(&text[len..], b"EARLY");
        assert_eq!(req.uri(), "/ws?room=r1&user=u1");
        assert_eq!(req.headers()["upgrade"], "websocket");
        let mut out = BytesMut::new();
        write(&req, &mut out);
        assert_eq!(
            &out[..],
            &b"GET /ws?room=r1&user=u1 HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\r\n"[..]
        );
        assert!(matches!(parse(b"GET /ws HTTP/1.1\r\nHost"), Parsed::Partial));
        assert!(matches!(parse(b"GET /ws HTTP/1.1\r\nBad Header: x\r\n\r\n"), Parsed::Bad));
    }
}
