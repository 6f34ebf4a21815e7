//! Talking to a node outside the tunnel: connecting under a timeout, and one small HTTP/1.1
//! request (health probes, the node's drain) with its whole exchange under a deadline.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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

/// Opens a TCP connection to `member` within `timeout`. Running out of descriptors is the
/// router's own trouble, [`Error::FdLimit`], never counted against the node.
pub(crate) async fn connect(member: &Member, timeout: Duration) -> Result<TcpStream, Error> {
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
pub(crate) async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    req: Request<Empty<Bytes>>,
    conn: &mut ConnFuture,
    conn_done: &mut Option<hyper::Result<()>>,
) -> hyper::Result<Response<Incoming>> {
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
    member: &Member,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), Error> {
    let addr = &member.spec.addr;
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = connect(member, timeout).await?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| (Cause::Protocol, format!("handshake: {e}")))?;
        let mut conn: ConnFuture = Box::pin(conn);
        let mut conn_done = None;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.as_str())
            .header(header::CONNECTION, "close");
        if let Some(token) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| (Cause::Protocol, format!("request: {e}")))?;
        let resp = exchange(&mut sender, req, &mut conn, &mut conn_done)
            .await
            .map_err(|e| (Cause::Protocol, format!("request: {e}")))?;
        drop(sender);
        let status = resp.status();
        let (body, _) = tokio::join!(
            Limited::new(resp.into_body(), MAX_BODY).collect(),
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
