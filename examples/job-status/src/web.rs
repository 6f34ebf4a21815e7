//! The example's HTTP side: `POST /jobs` (submit), the page (`/`, `/status.js`, and
//! `/roomfleet.js` from clients/js), `/config.json` (the router's WebSocket URL for the page)
//! and `/healthz`. Refusals are the server API's JSON errors (`{"code","message"}`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use shared::api::ApiError;
use shared::http::Body;
use shared::ids::{RoomId, UserId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::queue::{self, Keys, MAX_TESTS};

/// Bytes a submit body may have.
const MAX_BODY: usize = 16 * 1024;

/// What the endpoints share.
#[derive(Debug)]
pub struct Web {
    pub conn: redis::aio::MultiplexedConnection,
    pub keys: Keys,
    /// The router's `/ws` URL the page connects to.
    pub ws_url: String,
}

/// `POST /jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submit {
    user: String,
    #[serde(default = "twelve")]
    tests: u32,
    #[serde(default)]
    fail: Vec<u32>,
}

fn twelve() -> u32 {
    12
}

#[derive(Debug, Serialize)]
struct Submitted {
    job: u64,
    room: String,
}

/// Serves until `stop` is cancelled.
pub async fn serve(web: Arc<Web>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let web = web.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let web = web.clone();
                async move { Ok::<_, Infallible>(handle(&web, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Some(Duration::from_secs(10)))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!("http: {e}");
            }
        });
    }
}

fn file(kind: &'static str, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

async fn handle(web: &Web, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/" | "/index.html") => file(HTML, include_str!("../page/index.html")),
        (&Method::GET, "/status.js") => file(JS, include_str!("../page/status.js")),
        (&Method::GET, "/roomfleet.js") => {
            file(JS, include_str!("../../../clients/js/roomfleet.js"))
        }
        (&Method::GET, "/config.json") => {
            shared::http::json(StatusCode::OK, &serde_json::json!({ "ws": web.ws_url }))
        }
        (&Method::GET, "/healthz") => shared::http::text(StatusCode::OK, "ok"),
        (&Method::POST, "/jobs") => match submit(web, req).await {
            Ok(job) => shared::http::json(StatusCode::ACCEPTED, &job),
            Err(e) => e.response(),
        },
        (_, "/" | "/index.html" | "/status.js" | "/roomfleet.js" | "/config.json" | "/jobs") => {
            ApiError::method_not_allowed(req.method(), &path).response()
        }
        _ => ApiError::not_found(format!("no such endpoint: {path}")).response(),
    }
}

async fn submit(web: &Web, req: Request<Incoming>) -> Result<Submitted, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY).collect().await.map_err(|e| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("body: {e}"))
    })?;
    let s: Submit = serde_json::from_slice(&body.to_bytes()).map_err(|e| {
        ApiError::bad_json(format!(
            "body must be {{\"user\": USER, \"tests\": N?, \"fail\": [N]?}}: {e}"
        ))
    })?;
    let user = UserId::parse(&s.user)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_user", format!("user: {e}")))?;
    let room = queue::room_of(user.as_str());
    RoomId::parse(&room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_user", format!("room: {e}")))?;
    if !(1..=MAX_TESTS).contains(&s.tests) || s.fail.iter().any(|t| *t == 0 || *t > s.tests) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_tests",
            format!("tests must be 1 to {MAX_TESTS} and each fail one of them"),
        ));
    }
    let mut conn = web.conn.clone();
    let job = queue::submit(&mut conn, &web.keys, user.as_str(), s.tests, s.fail)
        .await
        .map_err(|e| ApiError::unavailable("redis_unavailable", format!("redis: {e}")))?;
    Ok(Submitted { job: job.id, room })
}
