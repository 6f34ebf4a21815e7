//! `--connect direct`: each connection first asks the router where its room lives
//! (`GET /connect` with the query it would have upgraded with, the token included) and
//! opens the URL the router answers (the node's, with a ticket only that node takes), so
//! the router is out of the data path. The node must be on 127.0.0.0/8 like every target.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::run::dial;
use crate::target::Target;

/// How a connection reaches its node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConnectMode {
    /// Open the URL as given (a router proxies or hands off; or a node itself).
    #[default]
    Url,
    /// Ask the router's `GET /connect` first, then open the node's URL it answers.
    Direct,
}

/// The router's answer (only what the client needs).
#[derive(Deserialize)]
struct Answer {
    url: String,
}

/// Bytes of a `/connect` answer read at most.
const MAX_ANSWER: usize = 16 * 1024;

/// The node URL for `request` (the router's `ws://HOST:PORT/ws?room=..&user=..`, resume
/// and token included), asked of the router at `router` from `src`; the cause on failure,
/// as a short label for the report (`connect_401`, `connect_refused`, ...).
pub async fn resolve(
    router: &Target,
    src: Option<IpAddr>,
    request: &str,
) -> Result<Target, String> {
    let query = request.split_once('?').map_or("", |(_, q)| q);
    let stream = dial(router.addr, src).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "connect_handshake".to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("/connect?{query}"))
        .header(http::header::HOST, router.addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|_| "connect_request".to_string())?;
    let resp = sender.send_request(req).await.map_err(|_| "connect_io".to_string())?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|_| "connect_body".to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("connect_{}", status.as_u16()));
    }
    let a: Answer = serde_json::from_slice(&body).map_err(|_| "connect_answer".to_string())?;
    // A node off loopback is refused like any target.
    let mut node = Target::parse(&a.url).map_err(|_| "connect_url".to_string())?;
    node.path = a.url;
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_answer_names_a_node_url() {
        let a: Answer = serde_json::from_str(
            r#"{"url":"ws://127.0.0.1:7001/ws?room=r&user=u","node":"a","ticket":null,"expires":null}"#,
        )
        .unwrap();
        let t = Target::parse(&a.url).unwrap();
        assert_eq!(t.addr, "127.0.0.1:7001".parse().unwrap());
    }
}
