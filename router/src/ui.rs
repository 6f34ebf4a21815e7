//! The browser pages, embedded in the binary so they work offline and need no files beside
//! it: the demo chat on the public listener's `/` (with `clients/js/roomfleet.js` at
//! `/roomfleet.js`) and the admin UI on the admin listener's `/`. The pages hold no secret:
//! the admin page asks for the admin token and sends it on its own `/admin/*` requests.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use shared::http::Body;

/// Which listener asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Site {
    Chat,
    Admin,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Only the page's own origin, so a page can load nothing from a CDN by mistake and an
/// injected script cannot run; `connect-src 'self'` covers the chat's same-origin `ws:`.
const CSP_CHAT: &str =
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'";
/// The admin page may not be framed: a framed drain button could be clicked by deceit.
const CSP_ADMIN: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

/// The embedded file at `path` for `site`, or `None` when there is none (the caller's 404).
fn asset(site: Site, path: &str) -> Option<(&'static str, &'static str)> {
    let file = match (site, path) {
        (Site::Chat, "/" | "/index.html") => (HTML, include_str!("../ui/chat.html")),
        (Site::Chat, "/chat.js") => (JS, include_str!("../ui/chat.js")),
        (Site::Chat, "/roomfleet.js") => (JS, include_str!("../../clients/js/roomfleet.js")),
        (Site::Admin, "/" | "/index.html") => (HTML, include_str!("../ui/admin.html")),
        (Site::Admin, "/admin.js") => (JS, include_str!("../ui/admin.js")),
        (_, "/ui.css") => (CSS, include_str!("../ui/ui.css")),
        _ => return None,
    };
    Some(file)
}

/// Answers a GET or HEAD for one of `site`'s files; `None` when `path` is not one.
pub(crate) fn serve(site: Site, method: &Method, path: &str) -> Option<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let (kind, text) = asset(site, path)?;
    let body =
        if method == Method::HEAD { Bytes::new() } else { Bytes::from_static(text.as_bytes()) };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The pages change with the binary; a stale cached script would talk an old protocol.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let csp = if site == Site::Admin { CSP_ADMIN } else { CSP_CHAT };
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_site_serves_its_own_pages_only() {
        let get = |site, path| {
            serve(site, &Method::GET, path).map(|r| r.headers()[header::CONTENT_TYPE].clone())
        };
        assert_eq!(get(Site::Chat, "/").unwrap(), HTML);
        assert_eq!(get(Site::Chat, "/roomfleet.js").unwrap(), JS);
        assert_eq!(get(Site::Admin, "/").unwrap(), HTML);
        assert_eq!(get(Site::Admin, "/ui.css").unwrap(), CSS);
        assert!(get(Site::Admin, "/roomfleet.js").is_none());
        assert!(get(Site::Chat, "/admin.js").is_none());
        assert!(get(Site::Chat, "/../Cargo.toml").is_none());
        assert!(serve(Site::Chat, &Method::POST, "/").is_none());
    }
}
