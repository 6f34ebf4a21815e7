//! `GET /connect`: the router out of the data path for clients that can reach the nodes.
//! The router checks the request as it would an upgrade (IDs, token, room rights), places
//! the room, and answers where to connect with a ticket only that node takes (an identity
//! signed with `--hop-secret`, for that room and node, for 30 s). The client then talks to
//! the node directly; the router holds nothing.

use std::net::SocketAddr;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use shared::auth::{Identity, TICKET_VALIDITY};
use shared::http::{Body, json, text};
use shared::ids::{WsTarget, parse_ws_query};

use crate::proxy::Proxy;

/// The answer: a URL to open as is, the node it names, the ticket (also in the URL; `null`
/// with auth off) and when it expires (Unix ms).
#[derive(Debug, Serialize)]
struct Direct {
    url: String,
    node: String,
    ticket: Option<String>,
    expires: Option<u64>,
}

pub(crate) fn answer(proxy: &Proxy, req: &Request<Incoming>, peer: SocketAddr) -> Response {
    let target = match parse_ws_query(req.uri().query()) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let id = match proxy.verified(req, &target) {
        Ok(id) => id,
        Err(e) => {
            proxy.metrics.auth_refused(&e);
            return text(e.status(), e.to_string());
        }
    };
    let client_ip = crate::client_ip::client_ip(peer, req.headers(), &proxy.config.trusted_proxies);
    let view = proxy.membership.view();
    let placement = match proxy.policy.place(&view, &target.room, client_ip) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry later")),
    };
    let Some(member) = placement.members(&view).next() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no node can take the room; retry later");
    };
    let node = member.spec.id.to_string();
    let ticket = match (&id, &proxy.config.hop_key) {
        (Some(id), Some(hop)) => Some(hop.ticket(id, &target.room, &node, TICKET_VALIDITY)),
        _ => None,
    };
    // Nodes behind --node-tls-ca serve TLS only.
    let scheme = if proxy.config.node_tls_ca.is_some() { "wss" } else { "ws" };
    let url = format!(
        "{scheme}://{}/ws?{}",
        member.spec.addr,
        query(&target, id.as_ref(), ticket.as_ref().map(|t| t.value.as_str()))
    );
    let expires = ticket.as_ref().map(|t| t.expires);
    json(StatusCode::OK, &Direct { url, node, ticket: ticket.map(|t| t.value), expires })
}

type Response = http::Response<Body>;

/// The node URL's query: the room, the user (the token's when auth is on), the resume, and
/// the ticket; never the client's token.
fn query(t: &WsTarget, id: Option<&Identity>, ticket: Option<&str>) -> String {
    let mut q = format!("room={}", t.room);
    if let Some(u) = id.map(|i| &i.user).or(t.user.as_ref()) {
        q.push_str(&format!("&user={u}"));
    }
    if let Some(r) = &t.resume {
        q.push_str(&format!("&since={}&epoch={}", r.since, r.epoch));
    }
    if t.history > 0 {
        q.push_str(&format!("&history={}", t.history));
    }
    if let Some(ticket) = ticket {
        // Base64url and '.': nothing to escape.
        q.push_str(&format!("&ticket={ticket}"));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_url_carries_the_resume_and_the_history_count() {
        let t = parse_ws_query(Some("room=r&user=u&history=20")).unwrap();
        assert_eq!(query(&t, None, None), "room=r&user=u&history=20");
        let t = parse_ws_query(Some("room=r&since=3&epoch=e")).unwrap();
        assert_eq!(query(&t, None, Some("tk")), "room=r&since=3&epoch=e&ticket=tk");
    }
}
