//! The database: PostgreSQL for deployments, SQLite for `fleet up`, behind one [`Store`].
//! It runs the migrations kept in `archiver/migrations/` (built into the binary) at open,
//! and writes a batch in one transaction: one multi-row insert of messages that skips what
//! it already holds (a batch written twice is archived once) and one upsert of markers
//! that keeps the highest (a marker written twice, or late, changes nothing). It serves
//! pages that never skip a message still on its way, and deletes expired messages in
//! bounded batches.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// One message as the archive keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub room: String,
    pub epoch: String,
    pub seq: i64,
    pub sender: String,
    /// The message body, JSON text.
    pub body: String,
    /// Unix milliseconds (the frame's `ts`).
    pub at: i64,
    /// Unix milliseconds after which retention deletes it; `None` = kept for good.
    pub keep_until: Option<i64>,
}

/// A user's markers in a room, as the archive keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerRow {
    pub room: String,
    pub user: String,
    /// The room's epoch the two `seq`s are of.
    pub epoch: String,
    pub read: i64,
    pub delivered: i64,
    /// Unix ms of the newest change.
    pub at: i64,
}

/// One queue entry as the database takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Message(Row),
    Marker(MarkerRow),
}

/// Where a page of a room's archive starts (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    After(i64),
    Before(i64),
}

/// One archived message of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: i64,
    pub sender: String,
    /// JSON text.
    pub body: String,
    pub at: i64,
}

/// A page of a room's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<Message>,
    /// The page stopped early, before a `seq` the archive does not hold yet while later
    /// ones arrived less than [`SETTLE`] ago (another archiver, or a retry, is still
    /// writing it): ask again from the page's last `seq` shortly.
    pub pending: bool,
}

/// How long a missing `seq` counts as on its way rather than gone for good (a message
/// dead-lettered, a node that died before queueing it, expired by retention). It covers an
/// archiver's `--claim-idle` (30 s) plus its longest back-off (5 s) with room to spare.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Rows retention deletes per statement: each delete is a short transaction, so it never
/// holds up the writers for long.
pub const EXPIRE_BATCH: u32 = 1000;

/// A room's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub title: Option<String>,
    pub topic: Option<String>,
    /// Custom JSON text (`{}` when none was set).
    pub meta: String,
    /// Unix ms: the first archived message, or the first `set_meta`.
    pub created: i64,
}

/// SQLite's numbered placeholders (`?N`) for PostgreSQL's (`$N`).
fn sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Columns per message row (a batch's bind parameters are this times its rows).
const COLUMNS: usize = 8;
/// Columns per marker row.
const MARKER_COLUMNS: usize = 6;

/// Most rows one insert may carry: PostgreSQL takes at most 65,535 bind parameters.
pub const MAX_BATCH: usize = 65_535 / COLUMNS;

/// How long a statement may wait for a pooled connection: a database that is down fails
/// the batch this fast, and the archiver backs off.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

type Migrations = &'static [(i64, &'static str, &'static str)];

const POSTGRES: Migrations = &[
    (1, "archive", include_str!("../migrations/postgres/0001_archive.sql")),
    (2, "retention and markers", include_str!("../migrations/postgres/0002_retention_markers.sql")),
];
const SQLITE: Migrations = &[
    (1, "archive", include_str!("../migrations/sqlite/0001_archive.sql")),
    (2, "retention and markers", include_str!("../migrations/sqlite/0002_retention_markers.sql")),
];

/// The migrations of one database, built into the binary from `archiver/migrations/`.
#[derive(Debug)]
struct Embedded(Migrations);

type Resolved<'s> =
    Pin<Box<dyn Future<Output = Result<Vec<Migration>, sqlx::error::BoxDynError>> + Send + 's>>;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> Resolved<'s> {
        let out = self
            .0
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(
                    *v,
                    Cow::Borrowed(d),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(out)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database URL {0:?}: expected postgres://... or sqlite:PATH")]
    Url(String),
    #[error("database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrations on {url}: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
}

/// A pool on the archive database.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Store {
    /// Connects to `url` (`postgres://...`, or `sqlite:PATH`, created when missing) and
    /// brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, Error> {
        let connect = |source| Error::Connect { url: redact(url), source };
        let migrate = |source| Error::Migrate { url: redact(url), source };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(connect)?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(connect)?;
            let m = Migrator::new(Embedded(POSTGRES)).await.map_err(migrate)?;
            m.run(&pool).await.map_err(migrate)?;
            Ok(Self::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(ACQUIRE_TIMEOUT);
            // One writer: SQLite serializes writes anyway, and one connection never waits
            // on another's lock.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(connect)?;
            let m = Migrator::new(Embedded(SQLITE)).await.map_err(migrate)?;
            m.run(&pool).await.map_err(migrate)?;
            Ok(Self::Sqlite(pool))
        } else {
            Err(Error::Url(redact(url)))
        }
    }

    /// Writes `items` in one transaction: messages skipping those already archived (each
    /// room's first noted in `rooms`), markers keeping the highest of each user. The number
    /// of new messages. At most [`MAX_BATCH`] items.
    pub async fn insert(&self, items: &[Item]) -> Result<u64, sqlx::Error> {
        let rows: Vec<&Row> = items
            .iter()
            .filter_map(|i| match i {
                Item::Message(r) => Some(r),
                Item::Marker(_) => None,
            })
            .collect();
        let markers = merge_markers(items);
        if rows.is_empty() && markers.is_empty() {
            return Ok(0);
        }
        debug_assert!(items.len() <= MAX_BATCH);
        let mut rooms: Vec<(&str, i64)> = Vec::new();
        for r in &rows {
            match rooms.iter_mut().find(|(room, _)| *room == r.room) {
                Some((_, at)) => *at = (*at).min(r.at),
                None => rooms.push((&r.room, r.at)),
            }
        }
        let now = now_ms();
        // The same statements on either pool; only the placeholders differ.
        macro_rules! write {
            ($pool:expr, $pg:expr) => {{
                let mut tx = $pool.begin().await?;
                let mut n = 0;
                if !rows.is_empty() {
                    let sql = insert_sql(rows.len(), $pg);
                    let mut q = sqlx::query(&sql);
                    for r in &rows {
                        q = q.bind(&r.room).bind(&r.epoch).bind(r.seq).bind(&r.sender);
                        q = q.bind(&r.body).bind(r.at).bind(r.keep_until).bind(now);
                    }
                    n = q.execute(&mut *tx).await?.rows_affected();
                    let sql = rooms_sql(rooms.len(), $pg);
                    let mut q = sqlx::query(&sql);
                    for (room, at) in &rooms {
                        q = q.bind(*room).bind(*at);
                    }
                    q.execute(&mut *tx).await?;
                }
                if !markers.is_empty() {
                    let sql = markers_sql(markers.len(), $pg);
                    let mut q = sqlx::query(&sql);
                    for m in &markers {
                        q = q.bind(&m.room).bind(&m.user).bind(&m.epoch);
                        q = q.bind(m.read).bind(m.delivered).bind(m.at);
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(n)
            }};
        }
        match self {
            Self::Postgres(pool) => write!(pool, true),
            Self::Sqlite(pool) => write!(pool, false),
        }
    }

    /// Every user's markers in `room`, by user.
    pub async fn markers(&self, room: &str) -> Result<Vec<MarkerRow>, sqlx::Error> {
        let sql = r#"SELECT "user", epoch, read_seq, delivered_seq, at FROM markers WHERE room = $1 ORDER BY "user""#;
        type R = (String, String, i64, i64, i64);
        let rows: Vec<R> = match self {
            Self::Postgres(p) => sqlx::query_as(sql).bind(room).fetch_all(p).await?,
            Self::Sqlite(p) => sqlx::query_as(&sqlite(sql)).bind(room).fetch_all(p).await?,
        };
        Ok(rows
            .into_iter()
            .map(|(user, epoch, read, delivered, at)| MarkerRow {
                room: room.to_owned(),
                user,
                epoch,
                read,
                delivered,
                at,
            })
            .collect())
    }

    /// Deletes at most [`EXPIRE_BATCH`] messages whose `keep_until` is before `now` (unix
    /// ms); how many it deleted.
    pub async fn expire(&self, now: i64) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "DELETE FROM messages WHERE (room, epoch, seq) IN (SELECT room, epoch, seq FROM messages \
             WHERE keep_until IS NOT NULL AND keep_until < $1 LIMIT {EXPIRE_BATCH})"
        );
        let done = match self {
            Self::Postgres(p) => sqlx::query(&sql).bind(now).execute(p).await?.rows_affected(),
            Self::Sqlite(p) => {
                sqlx::query(&sqlite(&sql)).bind(now).execute(p).await?.rows_affected()
            }
        };
        Ok(done)
    }

    /// The epoch of the room's newest archived message (`None`: nothing archived).
    pub async fn newest_epoch(&self, room: &str) -> Result<Option<String>, sqlx::Error> {
        let sql = "SELECT epoch FROM messages WHERE room = $1 ORDER BY at DESC, seq DESC LIMIT 1";
        match self {
            Self::Postgres(p) => sqlx::query_scalar(sql).bind(room).fetch_optional(p).await,
            Self::Sqlite(p) => sqlx::query_scalar(&sqlite(sql)).bind(room).fetch_optional(p).await,
        }
    }

    /// At most `limit` messages of `room` in `epoch` from `cursor`: after it oldest first,
    /// before it newest first. Keyed by `seq`, so a page never shifts while messages keep
    /// arriving; and it ends before a `seq` still on its way (see [`Page::pending`]), so
    /// paging on from its last `seq` never skips a message that is archived later.
    pub async fn page(
        &self,
        room: &str,
        epoch: &str,
        cursor: Cursor,
        limit: u32,
    ) -> Result<Page, sqlx::Error> {
        // The cursor's own row comes too (when the archive holds it): the first message of
        // the page must follow it. A cursor the archive does not hold (0, or past the
        // newest) has nothing to follow.
        let (op, order, cur) = match cursor {
            Cursor::After(s) => (">=", "ASC", s),
            Cursor::Before(s) => ("<=", "DESC", s),
        };
        let body = if matches!(self, Self::Postgres(_)) { "body::text" } else { "body" };
        let sql = format!(
            "SELECT seq, sender, {body}, at, archived_at FROM messages WHERE room = $1 \
             AND epoch = $2 AND seq {op} $3 ORDER BY seq {order} LIMIT $4"
        );
        type R = (i64, String, String, i64, i64);
        let want = i64::from(limit) + 1;
        let rows: Vec<R> = match self {
            Self::Postgres(p) => {
                let q = sqlx::query_as(&sql).bind(room).bind(epoch).bind(cur);
                q.bind(want).fetch_all(p).await?
            }
            Self::Sqlite(p) => {
                let sql = sqlite(&sql);
                let q = sqlx::query_as(&sql).bind(room).bind(epoch).bind(cur);
                q.bind(want).fetch_all(p).await?
            }
        };
        let settled = now_ms() - SETTLE.as_millis() as i64;
        let step = if matches!(cursor, Cursor::After(_)) { 1 } else { -1 };
        let mut last = None;
        let mut messages = Vec::with_capacity(rows.len());
        let mut pending = false;
        for (seq, sender, body, at, archived_at) in rows {
            if seq == cur {
                last = Some(seq);
                continue;
            }
            if messages.len() == limit as usize {
                break;
            }
            if last.is_some_and(|l| seq != l + step) && archived_at > settled {
                pending = true;
                break;
            }
            last = Some(seq);
            messages.push(Message { seq, sender, body, at });
        }
        Ok(Page { messages, pending })
    }

    /// The room's metadata (`None` for a room the archive does not know).
    pub async fn meta(&self, room: &str) -> Result<Option<Meta>, sqlx::Error> {
        let meta = if matches!(self, Self::Postgres(_)) { "meta::text" } else { "meta" };
        let sql = format!("SELECT title, topic, {meta}, created FROM rooms WHERE room = $1");
        type R = (Option<String>, Option<String>, String, i64);
        let row: Option<R> = match self {
            Self::Postgres(p) => sqlx::query_as(&sql).bind(room).fetch_optional(p).await?,
            Self::Sqlite(p) => sqlx::query_as(&sqlite(&sql)).bind(room).fetch_optional(p).await?,
        };
        Ok(row.map(|(title, topic, meta, created)| Meta { title, topic, meta, created }))
    }

    /// Replaces the room's title, topic and custom JSON (`meta`, JSON text); a room the
    /// archive does not know yet is created `now` (unix ms).
    pub async fn set_meta(&self, room: &str, m: &Meta) -> Result<(), sqlx::Error> {
        let cast = if matches!(self, Self::Postgres(_)) { "::jsonb" } else { "" };
        let sql = format!(
            "INSERT INTO rooms (room, title, topic, meta, created) VALUES ($1, $2, $3, $4{cast}, $5) \
             ON CONFLICT (room) DO UPDATE SET title = EXCLUDED.title, topic = EXCLUDED.topic, \
             meta = EXCLUDED.meta"
        );
        macro_rules! run {
            ($pool:expr, $sql:expr) => {
                sqlx::query($sql)
                    .bind(room)
                    .bind(&m.title)
                    .bind(&m.topic)
                    .bind(&m.meta)
                    .bind(m.created)
                    .execute($pool)
                    .await
                    .map(|_| ())
            };
        }
        match self {
            Self::Postgres(p) => run!(p, &sql),
            Self::Sqlite(p) => run!(p, &sqlite(&sql)),
        }
    }

    /// Closes the pool (waits for connections in use to come back).
    pub async fn close(&self) {
        match self {
            Self::Postgres(p) => p.close().await,
            Self::Sqlite(p) => p.close().await,
        }
    }
}

/// `INSERT INTO messages ... VALUES (..), (..) ON CONFLICT DO NOTHING` for `n` rows, with
/// `$N` placeholders (PostgreSQL, the body cast to jsonb) or `?` (SQLite).
fn insert_sql(n: usize, pg: bool) -> String {
    let mut sql = String::from(
        "INSERT INTO messages (room, epoch, seq, sender, body, at, keep_until, archived_at) VALUES ",
    );
    let casts = ["", "", "", "", "::jsonb", "", "", ""];
    push_values(&mut sql, n, pg, &casts);
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// `(..), (..)` for `n` rows of `casts.len()` columns, each placeholder followed by its
/// cast on PostgreSQL.
fn push_values(sql: &mut String, n: usize, pg: bool, casts: &[&str]) {
    use std::fmt::Write;
    for i in 0..n {
        sql.push_str(if i > 0 { ", (" } else { "(" });
        for (c, cast) in casts.iter().enumerate() {
            if c > 0 {
                sql.push_str(", ");
            }
            if pg {
                let _ = write!(sql, "${}{cast}", i * casts.len() + c + 1);
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
}

/// The upsert of `n` users' markers: within an epoch each `seq` only rises; a marker of
/// another epoch replaces the row only when it is newer (`at`).
fn markers_sql(n: usize, pg: bool) -> String {
    let mut sql = String::from(
        r#"INSERT INTO markers (room, "user", epoch, read_seq, delivered_seq, at) VALUES "#,
    );
    push_values(&mut sql, n, pg, &[""; MARKER_COLUMNS]);
    let max = if pg { "GREATEST" } else { "MAX" };
    let _ = std::fmt::Write::write_fmt(
        &mut sql,
        format_args!(
            r#" ON CONFLICT (room, "user") DO UPDATE SET
 read_seq = CASE WHEN markers.epoch = excluded.epoch THEN {max}(markers.read_seq, excluded.read_seq) ELSE excluded.read_seq END,
 delivered_seq = CASE WHEN markers.epoch = excluded.epoch THEN {max}(markers.delivered_seq, excluded.delivered_seq) ELSE excluded.delivered_seq END,
 at = {max}(markers.at, excluded.at),
 epoch = excluded.epoch
 WHERE markers.epoch = excluded.epoch OR excluded.at >= markers.at"#
        ),
    );
    sql
}

/// The batch's markers, one per room and user (an upsert may touch a row once): within an
/// epoch the highest of each, across epochs the newest.
fn merge_markers(items: &[Item]) -> Vec<MarkerRow> {
    let mut by_user: std::collections::BTreeMap<(&str, &str), MarkerRow> = Default::default();
    for i in items {
        let Item::Marker(m) = i else { continue };
        match by_user.entry((&m.room, &m.user)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(m.clone());
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let old = o.get_mut();
                if old.epoch == m.epoch {
                    old.read = old.read.max(m.read);
                    old.delivered = old.delivered.max(m.delivered);
                    old.at = old.at.max(m.at);
                } else if m.at >= old.at {
                    *old = m.clone();
                }
            }
        }
    }
    by_user.into_values().collect()
}

pub(crate) fn now_ms() -> i64 {
    shared::protocol::unix_ms() as i64
}

/// `INSERT INTO rooms (room, created) ...` for `n` rooms, keeping rows that exist.
fn rooms_sql(n: usize, pg: bool) -> String {
    let mut sql = String::from("INSERT INTO rooms (room, created) VALUES ");
    push_values(&mut sql, n, pg, &["", ""]);
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// Whether a failed write is the batch's own fault (it would fail every time: bad data,
/// a constraint) rather than the database being away or busy.
pub fn is_permanent(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            // PostgreSQL: class 22 data exception (bad JSON, a \u0000 in jsonb), 23
            // integrity, 42 syntax or access rule. Everything else (57 shutdown, 08
            // connection, 53 resources, 40 rollback) passes.
            Some(code) if code.len() == 5 => {
                matches!(&code[..2], "22" | "23" | "42")
            }
            // SQLite's result codes: 18 too big, 19 constraint, 20 mismatch, 25 range.
            Some(code) => matches!(code.as_ref(), "18" | "19" | "20" | "25"),
            None => false,
        },
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } => true,
        _ => false,
    }
}

/// `url` with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_have_one_placeholder_per_column() {
        assert_eq!(
            insert_sql(2, true),
            "INSERT INTO messages (room, epoch, seq, sender, body, at, keep_until, archived_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8), \
             ($9, $10, $11, $12, $13::jsonb, $14, $15, $16) ON CONFLICT DO NOTHING"
        );
        assert_eq!(markers_sql(1, false).matches('?').count(), MARKER_COLUMNS);
        assert_eq!(insert_sql(1, false).matches('?').count(), COLUMNS);
        assert_eq!(
            rooms_sql(2, true),
            "INSERT INTO rooms (room, created) VALUES ($1, $2), ($3, $4) ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:roomfleet.db"), "sqlite:roomfleet.db");
    }

    #[tokio::test]
    async fn sqlite_archives_a_batch_written_twice_once() {
        let dir = std::env::temp_dir().join(format!("archiver-store-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let url = format!("sqlite:{}", dir.join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        let row = |seq| {
            Item::Message(Row {
                room: "r".into(),
                epoch: "e".into(),
                seq,
                sender: "ann".into(),
                body: r#"{"t":"hi"}"#.into(),
                at: 1000 + seq,
                keep_until: None,
            })
        };
        assert_eq!(store.insert(&[row(1), row(2)]).await.unwrap(), 2);
        assert_eq!(store.insert(&[row(2), row(3)]).await.unwrap(), 1);
        store.close().await;
        // Migrations run again on reopen without complaint.
        let store = Store::open(&url).await.unwrap();
        let Store::Sqlite(pool) = &store else { panic!("sqlite") };
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM messages").fetch_one(pool).await.unwrap();
        assert_eq!(n, 3);
        let created: i64 = sqlx::query_scalar("SELECT created FROM rooms WHERE room = 'r'")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(created, 1001);
        assert_eq!(store.newest_epoch("r").await.unwrap().as_deref(), Some("e"));
        let after = store.page("r", "e", Cursor::After(1), 10).await.unwrap();
        assert_eq!(after.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3]);
        let before = store.page("r", "e", Cursor::Before(3), 1).await.unwrap().messages;
        assert_eq!((before[0].seq, before[0].body.as_str()), (2, r#"{"t":"hi"}"#));
        let m =
            Meta { title: Some("T".into()), topic: None, meta: r#"{"a":1}"#.into(), created: 5 };
        store.set_meta("r", &m).await.unwrap();
        assert_eq!(store.meta("r").await.unwrap(), Some(Meta { created: 1001, ..m }));
        assert_eq!(store.meta("nobody").await.unwrap(), None);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
