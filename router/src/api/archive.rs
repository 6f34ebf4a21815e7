//! The archive on the server API (with `--archive-db`): a room's archived messages by
//! `seq` cursor within one epoch (`after` oldest first, `before` newest first), its users'
//! read and delivered markers, and its metadata (title, topic, custom JSON).

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shared::api::ApiError;
use shared::http::query_param;
use shared::ids::RoomId;

use archiver::store::{Cursor, MarkerRow, Meta, Store};

/// Messages per page when `limit` is absent, and at most.
const DEFAULT_LIMIT: u32 = 100;
pub(super) const MAX_LIMIT: u32 = 1000;

/// One page of a room's archive.
#[derive(Serialize)]
pub(super) struct Page {
    room: String,
    /// The epoch the page is of (the room's newest when the query did not name one).
    epoch: Option<String>,
    /// `message` frames as members got them, in the page's order.
    messages: Vec<Box<RawValue>>,
    /// The cursor of the next page in the same direction: the last `seq` of this one,
    /// when the page is full.
    next: Option<i64>,
    /// The page ended early before a message still being archived (a later one already
    /// is): ask again from the page's last `seq` (or the same cursor) in a moment.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pending: bool,
}

/// Whether a messages query asks for the archive (it has `before` or `after`).
pub(super) fn wants(query: Option<&str>) -> bool {
    query_param(query, "before").is_some() || query_param(query, "after").is_some()
}

fn bad(m: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", m)
}

fn store(s: Option<&Store>) -> Result<&Store, ApiError> {
    s.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_archive",
            "this router has no archive (--archive-db); without before/after the history answers",
        )
    })
}

fn db(e: sqlx::Error) -> ApiError {
    tracing::warn!("archive database: {e}");
    ApiError::unavailable("archive_unavailable", "the archive database did not answer; retry")
}

/// `GET /api/rooms/{room}/messages?after=SEQ|before=SEQ[&epoch=E][&limit=N]`.
pub(super) async fn messages(
    s: Option<&Store>,
    room: &RoomId,
    query: Option<&str>,
) -> Result<Page, ApiError> {
    let store = store(s)?;
    let num = |name: &str| -> Result<Option<i64>, ApiError> {
        query_param(query, name)
            .map(|v| v.parse::<i64>().ok().filter(|n| *n >= 0))
            .map(|v| v.ok_or_else(|| bad(&format!("{name} must be a number from 0"))))
            .transpose()
    };
    let cursor = match (num("after")?, num("before")?) {
        (Some(a), None) => Cursor::After(a),
        (None, Some(b)) => Cursor::Before(b),
        _ => return Err(bad("give one of before=SEQ and after=SEQ")),
    };
    let limit = match num("limit")? {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=i64::from(MAX_LIMIT)).contains(&n) => n as u32,
        Some(_) => return Err(bad(&format!("limit must be 1..={MAX_LIMIT}"))),
    };
    let epoch = match query_param(query, "epoch") {
        Some(e) if shared::ids::valid_epoch(&e) => Some(e),
        Some(_) => return Err(bad("epoch is not an epoch")),
        None => store.newest_epoch(room.as_str()).await.map_err(db)?,
    };
    let Some(epoch) = epoch else {
        let (messages, next, pending) = (Vec::new(), None, false);
        return Ok(Page { room: room.to_string(), epoch: None, messages, next, pending });
    };
    let page = store.page(room.as_str(), &epoch, cursor, limit).await.map_err(db)?;
    let rows = page.messages;
    let next = (rows.len() == limit as usize).then(|| rows.last().map(|m| m.seq)).flatten();
    let messages = rows
        .into_iter()
        .filter_map(|m| {
            let from = serde_json::to_string(&m.sender).ok()?;
            let room = serde_json::to_string(room.as_str()).ok()?;
            let f = format!(
                r#"{{"type":"message","room":{room},"from":{from},"seq":{},"ts":{},"body":{}}}"#,
                m.seq, m.at, m.body
            );
            RawValue::from_string(f).ok()
        })
        .collect();
    let pending = page.pending;
    Ok(Page { room: room.to_string(), epoch: Some(epoch), messages, next, pending })
}

/// A room's markers as the API shows them.
#[derive(Serialize)]
pub(super) struct Markers {
    room: String,
    markers: Vec<MarkerView>,
}

/// One user's markers: how far it read (what its clients sent in `read`) and how far a
/// node delivered to it, in `epoch`; `at` is the newest change (unix ms).
#[derive(Serialize)]
struct MarkerView {
    user: String,
    epoch: String,
    read: i64,
    delivered: i64,
    at: i64,
}

/// `GET /api/rooms/{room}/markers`: every user's archived markers (an archived room's;
/// a room the archive holds nothing of has none).
pub(super) async fn markers(s: Option<&Store>, room: &RoomId) -> Result<Markers, ApiError> {
    let rows = store(s)?.markers(room.as_str()).await.map_err(db)?;
    let markers = rows
        .into_iter()
        .map(|MarkerRow { user, epoch, read, delivered, at, .. }| MarkerView {
            user,
            epoch,
            read,
            delivered,
            at,
        })
        .collect();
    Ok(Markers { room: room.to_string(), markers })
}

/// A room's metadata as the API shows it.
#[derive(Serialize)]
pub(super) struct MetaView {
    room: String,
    title: Option<String>,
    topic: Option<String>,
    meta: Box<RawValue>,
    created: i64,
}

/// `PUT /api/rooms/{room}/meta`: every field replaced (absent ones cleared).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetaPut {
    title: Option<String>,
    topic: Option<String>,
    meta: Option<Box<RawValue>>,
}

/// Longest title or topic.
const MAX_TEXT: usize = 1024;

/// `GET /api/rooms/{room}/meta`.
pub(super) async fn get_meta(s: Option<&Store>, room: &RoomId) -> Result<MetaView, ApiError> {
    let m = store(s)?.meta(room.as_str()).await.map_err(db)?;
    let m = m.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_room",
            "the archive holds nothing of this room",
        )
    })?;
    view(room, m)
}

fn view(room: &RoomId, m: Meta) -> Result<MetaView, ApiError> {
    let meta =
        RawValue::from_string(m.meta).map_err(|_| db(sqlx::Error::Protocol("meta".into())))?;
    Ok(MetaView {
        room: room.to_string(),
        title: m.title,
        topic: m.topic,
        meta,
        created: m.created,
    })
}

pub(super) async fn put_meta(
    s: Option<&Store>,
    room: &RoomId,
    p: MetaPut,
) -> Result<MetaView, ApiError> {
    let store = store(s)?;
    for (name, v) in [("title", &p.title), ("topic", &p.topic)] {
        if v.as_ref().is_some_and(|t| t.len() > MAX_TEXT) {
            return Err(bad(&format!("{name} is longer than {MAX_TEXT} bytes")));
        }
    }
    let meta = p.meta.map_or_else(|| "{}".to_owned(), |m| m.get().to_owned());
    if !meta.starts_with('{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_meta",
            "meta must be a JSON object",
        ));
    }
    let created = shared::auth::unix_secs() as i64 * 1000;
    let m = Meta { title: p.title, topic: p.topic, meta, created };
    store.set_meta(room.as_str(), &m).await.map_err(db)?;
    get_meta(Some(store), room).await
}
