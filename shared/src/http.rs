//! Small HTTP helpers the router and node share: full-body responses, JSON errors, query
//! parameters and the hyper server loop for one accepted connection.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Every plain (non-proxied) response body.
pub type Body = Full<Bytes>;

/// A plain-text response, the reason as one line.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    let mut r = Response::new(Full::new(Bytes::from(msg)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A JSON response from anything serializable.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error": reason}` with `status`: the admin APIs' answer to bad input.
pub fn json_error(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "error": reason.into() }))
}

/// Prometheus text exposition.
pub fn metrics_text(body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The first value of query parameter `name`, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` and `+`; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a request on `/ws` is not a WebSocket upgrade router and node accept (426 when it is
/// no upgrade at all, 400 for a bad version or key); the client's `Sec-WebSocket-Key` when it is.
pub fn check_ws_upgrade(h: &http::HeaderMap) -> Result<&[u8], (StatusCode, &'static str)> {
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err((StatusCode::UPGRADE_REQUIRED, "/ws takes only WebSocket upgrades"));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err((StatusCode::BAD_REQUEST, "sec-websocket-version must be 13"));
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes())
        .filter(|k| !k.is_empty())
        .ok_or((StatusCode::BAD_REQUEST, "sec-websocket-key is missing"))
}

/// The answer to a request [`check_ws_upgrade`] refused; a 426 names the protocol to use.
pub fn ws_upgrade_refusal(status: StatusCode, why: &str) -> Response<Body> {
    let mut r = text(status, why);
    if status == StatusCode::UPGRADE_REQUIRED {
        r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    r
}

/// Whether the `Authorization: Bearer` header carries `token`, compared in constant time.
pub fn bearer_ok(headers: &http::HeaderMap, token: &str) -> bool {
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    got.len() == token.len()
        && got.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode() {
        assert_eq!(query_param(Some("room=a%3Ab&ip=1.2.3.4"), "room").as_deref(), Some("a:b"));
        assert_eq!(query_param(Some("room=a&ip=1.2.3.4"), "ip").as_deref(), Some("1.2.3.4"));
        assert_eq!(query_param(Some("room=a"), "ip"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn websocket_upgrades_are_checked() {
        let mut h = http::HeaderMap::new();
        assert_eq!(check_ws_upgrade(&h).unwrap_err().0, StatusCode::UPGRADE_REQUIRED);
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(check_ws_upgrade(&h).unwrap_err().0, StatusCode::BAD_REQUEST);
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        assert_eq!(check_ws_upgrade(&h).unwrap_err().1, "sec-websocket-key is missing");
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(check_ws_upgrade(&h).unwrap(), b"dGhlIHNhbXBsZSBub25jZQ==");
        let r = ws_upgrade_refusal(StatusCode::UPGRADE_REQUIRED, "no");
        assert_eq!(r.headers()[header::UPGRADE], "websocket");
    }

    #[test]
    fn bearer_tokens_compare() {
        let mut h = http::HeaderMap::new();
        assert!(!bearer_ok(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(bearer_ok(&h, "s3cret"));
        assert!(!bearer_ok(&h, "s3cre"));
        assert!(!bearer_ok(&h, "other!"));
    }
}
