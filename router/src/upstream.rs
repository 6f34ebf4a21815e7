//! Talking to a node: connecting under a timeout, over plain TCP or over TLS checked
//! against `--node-tls-ca` (a [`Dialer`]), and one small HTTP/1.1 request outside the
//! tunnel (health probes, the node's drain, the server API's calls) with its whole
//! exchange under a deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::error::{Cause, Error};
use crate::membership::Member;

/// Largest body read back from a node's plain answer.
pub const MAX_BODY: usize = 64 * 1024;

pub(crate) fn node_error(m: &Member, cause: Cause, detail: impl Into<String>) -> Error {
    Error::Node {
        id: m.spec.id.to_string(),
        addr: m.spec.addr.to_string(),
        cause,
        detail: detail.into(),
    }
}

/// How the router reaches nodes: plain TCP, or TLS verified against `--node-tls-ca`.
#[derive(Clone, Default)]
pub(crate) struct Dialer {
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").field("tls", &self.tls.is_some()).finish()
    }
}

/// A connection to a node, over TLS or not.
pub(crate) enum NodeIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Dialer {
    pub(crate) fn new(tls: Option<TlsConnector>) -> Self {
        Self { tls }
    }

    /// Connects to `member` within `timeout`, the TLS handshake included.
    pub(crate) async fn connect(
        &self,
        member: &Member,
        timeout: Duration,
    ) -> Result<NodeIo, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let tcp = connect(member, timeout).await?;
        let Some(tls) = &self.tls else { return Ok(NodeIo::Plain(tcp)) };
        let host = member.spec.addr.host();
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            node_error(member, Cause::Connect, format!("TLS: {host:?} is no server name: {e}"))
        })?;
        match tokio::time::timeout_at(deadline, tls.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(NodeIo::Tls(Box::new(s))),
            Ok(Err(e)) => Err(node_error(
                member,
                Cause::Connect,
                format!("TLS handshake (--node-tls-ca is set; does the node serve TLS?): {e}"),
            )),
            Err(_) => Err(node_error(
                member,
                Cause::Timeout,
                format!("TLS handshake: no answer within {timeout:?}"),
            )),
        }
    }
}

impl AsyncRead for NodeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeIo::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeIo::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeIo::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NodeIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens a TCP connection to `member` within `timeout`. Running out of descriptors is the
/// router's own trouble, [`Error::FdLimit`], never counted against the node.
async fn connect(member: &Member, timeout: Duration) -> Result<TcpStream, Error> {
    let addr = &member.spec.addr;
    let attempt = async {
        match addr.ip() {
            Some(ip) => TcpStream::connect(ip).await,
            None => TcpStream::connect(addr.as_str()).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) if shared::listen::is_fd_exhaustion(&e) => Err(Error::FdLimit(e)),
        Ok(Err(e)) => Err(node_error(member, Cause::Connect, format!("connect: {e}"))),
        Err(_) => Err(node_error(
            member,
            Cause::Timeout,
            format!("connect: no answer within {timeout:?}"),
        )),
    }
}

/// A client connection future, boxed: hyper's upgradeable one cannot be named.
pub(crate) type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// Sends `req` while driving `conn`, whose result lands in `conn_done`. hyper hands the
/// answer over before the connection future ends (an upgrade ends it at once), so the
/// answer is awaited even after the connection is done; it fails if none came.
pub(crate) async fn exchange<B>(
    sender: &mut SendRequest<B>,
    req: Request<B>,
    conn: &mut ConnFuture,
    conn_done: &mut Option<hyper::Result<()>>,
) -> hyper::Result<Response<Incoming>>
where
    B: hyper::body::Body + 'static,
{
    let send = sender.send_request(req);
    tokio::pin!(send);
    loop {
        tokio::select! {
            biased;
            r = &mut send => return r,
            r = conn.as_mut(), if conn_done.is_none() => *conn_done = Some(r),
        }
    }
}

/// Drives `conn` to its end unless it is already done.
pub(crate) async fn finish(
    conn: ConnFuture,
    conn_done: Option<hyper::Result<()>>,
) -> hyper::Result<()> {
    match conn_done {
        Some(r) => r,
        None => conn.await,
    }
}

/// One request to `member` on a fresh connection; the status and (bounded) body, or why not.
pub(crate) async fn request(
    dialer: &Dialer,
    member: &Member,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), Error> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(token) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| node_error(member, Cause::Protocol, format!("request: {e}")))?;
    call(dialer, member, req, timeout, MAX_BODY).await
}

/// Sends `req` (its `Host` and `Connection: close` are set here) to `member` on a fresh
/// connection, the whole exchange within `timeout`; the status and the body (at most
/// `max_body` bytes).
pub(crate) async fn call(
    dialer: &Dialer,
    member: &Member,
    mut req: Request<Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
) -> Result<(StatusCode, Bytes), Error> {
    let addr = &member.spec.addr;
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = dialer.connect(member, timeout).await?;
    let h = req.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(addr.as_str()) {
        h.insert(header::HOST, v);
    }
    h.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| (Cause::Protocol, format!("handshake: {e}")))?;
        let mut conn: ConnFuture = Box::pin(conn);
        let mut conn_done = None;
        let resp = exchange(&mut sender, req, &mut conn, &mut conn_done)
            .await
            .map_err(|e| (Cause::Protocol, format!("request: {e}")))?;
        drop(sender);
        let status = resp.status();
        let (body, _) = tokio::join!(
            Limited::new(resp.into_body(), max_body).collect(),
            finish(conn, conn_done)
        );
        let body = body.map_err(|e| (Cause::Protocol, format!("body: {e}")))?.to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err((cause, detail))) => Err(node_error(member, cause, detail)),
        Err(_) => Err(node_error(member, Cause::Timeout, format!("no answer within {timeout:?}"))),
    }
}
