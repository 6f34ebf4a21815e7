//! The server API's wire types, shared by the router (the public `/api/*`) and the nodes
//! (the `/internal/*` calls routers make): request bodies, and the JSON error every
//! refusal is, `{"code": CODE, "message": TEXT}`, whose `code` is a stable snake_case word.

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::http::{Body, json};
use crate::protocol::{ClientId, MAX_CLIENT_ID_LEN};

/// `POST /api/rooms/{room}/publish` and the node's `POST /internal/rooms/{room}/publish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Any JSON: the `message` frame's `body`.
    pub body: Box<RawValue>,
    /// Makes the publish idempotent within the node's window, and is echoed in the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ClientId>,
    /// The `from` members see; the router fills in the API key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// What a publish got: the room's `seq` for it and the node that stamped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub seq: u64,
    pub node: String,
}

/// Checks a publish `id` the way member publishes are checked.
pub fn check_id(id: &Option<ClientId>) -> Result<(), ApiError> {
    match id {
        Some(ClientId::Str(s)) if s.is_empty() || s.len() > MAX_CLIENT_ID_LEN => {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_id",
                format!(
                    "id must be a string of 1 to {MAX_CLIENT_ID_LEN} bytes or an unsigned integer"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Every `code` the API answers with, so metrics show zeros before the first refusal.
pub const CODES: [&str; 18] = [
    "unauthorized",
    "bad_room",
    "bad_user",
    "bad_from",
    "bad_id",
    "bad_json",
    "bad_query",
    "bad_rooms",
    "body_too_large",
    "not_found",
    "method_not_allowed",
    "forbidden",
    "no_node",
    "node_unavailable",
    "degraded",
    "not_stored",
    "store_unavailable",
    "internal",
];

/// A refusal: its HTTP status, stable code (one of [`CODES`]), and one-line message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The body of an [`ApiError`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_json", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn method_not_allowed(method: &http::Method, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn response(&self) -> http::Response<Body> {
        json(self.status, &ErrorBody { code: self.code.into(), message: self.message.clone() })
    }
}

/// A secret given on the command line as itself, `env:VAR` (that variable's value) or
/// `file:PATH` (the file's text, trimmed); `what` names it in the error.
pub fn secret(what: &str, v: &str) -> Result<String, String> {
    if let Some(var) = v.strip_prefix("env:") {
        std::env::var(var).map_err(|_| format!("{what} env:{var}: variable not set"))
    } else if let Some(path) = v.strip_prefix("file:") {
        Ok(std::fs::read_to_string(path)
            .map_err(|e| format!("{what} file:{path}: {e}"))?
            .trim()
            .to_string())
    } else {
        Ok(v.to_string())
    }
}

/// The `x-roomfleet-signature` of a webhook body: `sha256=` and the hex HMAC-SHA256 of
/// the body with the webhook secret.
pub fn sign_webhook(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// An answer from any result whose error is an [`ApiError`].
pub fn answer<T: Serialize>(r: Result<T, ApiError>) -> http::Response<Body> {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => e.response(),
    }
}
