//! The store against both databases it runs on, a real PostgreSQL the test starts itself
//! and SQLite: pages by `seq` cursor that stay contiguous and stable while two writers
//! (two archivers draining one room) commit out of order, markers that only rise within
//! an epoch, retention that deletes in bounded batches, and room metadata.

use std::time::Duration;

use archiver::store::{Cursor, EXPIRE_BATCH, Item, MarkerRow, Meta, Row, Store};
use shared::testkit::postgres::PostgresServer;

/// A temporary SQLite database, removed when dropped.
struct Sqlite {
    dir: std::path::PathBuf,
}

impl Sqlite {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("archiver-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn url(&self) -> String {
        format!("sqlite:{}", self.dir.join("a.db").display())
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn msg(room: &str, epoch: &str, seq: i64) -> Item {
    Item::Message(Row {
        room: room.into(),
        epoch: epoch.into(),
        seq,
        sender: "ann".into(),
        body: format!(r#"{{"n":{seq}}}"#),
        at: 1000 + seq,
        keep_until: None,
    })
}

fn marker(user: &str, epoch: &str, read: i64, delivered: i64, at: i64) -> Item {
    Item::Marker(MarkerRow {
        room: "m".into(),
        user: user.into(),
        epoch: epoch.into(),
        read,
        delivered,
        at,
    })
}

fn seqs(p: &archiver::store::Page) -> Vec<i64> {
    p.messages.iter().map(|m| m.seq).collect()
}

/// Runs a statement on either pool (the tests' own changes behind the store's back).
async fn exec(store: &Store, sql: &str) {
    match store {
        Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Store::Sqlite(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn pages_and_metadata(store: &Store) {
    let rows: Vec<Item> =
        (1..=5).map(|s| msg("r", "old", s)).chain((11..=13).map(|s| msg("r", "new", s))).collect();
    assert_eq!(store.insert(&rows).await.unwrap(), 8);
    assert_eq!(store.insert(&rows[..2]).await.unwrap(), 0, "a batch written twice, once");
    assert_eq!(store.newest_epoch("r").await.unwrap().as_deref(), Some("new"));
    let page = store.page("r", "old", Cursor::After(2), 2).await.unwrap();
    assert_eq!((seqs(&page), page.pending), (vec![3, 4], false));
    assert!(page.messages[0].body.replace(' ', "") == r#"{"n":3}"#, "{}", page.messages[0].body);
    let back = store.page("r", "old", Cursor::Before(3), 10).await.unwrap();
    assert_eq!(seqs(&back), [2, 1]);
    let top = store.page("r", "new", Cursor::Before(i64::MAX), 2).await.unwrap();
    assert_eq!((seqs(&top), top.pending), (vec![13, 12], false), "from past the newest");
    let first = store.page("r", "new", Cursor::After(0), 10).await.unwrap();
    assert_eq!(seqs(&first), [11, 12, 13], "from the very start, whatever seq it has");
    let m = Meta {
        title: Some("T".into()),
        topic: Some("x".into()),
        meta: r#"{"a":1}"#.into(),
        created: 7,
    };
    store.set_meta("r", &m).await.unwrap();
    let got = store.meta("r").await.unwrap().unwrap();
    assert_eq!((got.title.as_deref(), got.created), (Some("T"), 1001), "created: first message");
    assert_eq!(got.meta.replace(' ', ""), r#"{"a":1}"#);
    store.set_meta("fresh", &m).await.unwrap();
    assert_eq!(store.meta("fresh").await.unwrap().unwrap().created, 7);
    assert_eq!(store.meta("nobody").await.unwrap(), None);
}

async fn a_missing_seq_ends_the_page_until_it_settles(store: &Store) {
    store.insert(&[msg("g", "e", 1), msg("g", "e", 2), msg("g", "e", 4)]).await.unwrap();
    let p = store.page("g", "e", Cursor::After(0), 10).await.unwrap();
    assert_eq!((seqs(&p), p.pending), (vec![1, 2], true), "3 may still be on its way");
    let p = store.page("g", "e", Cursor::After(2), 10).await.unwrap();
    assert_eq!((seqs(&p), p.pending), (vec![], true));
    let p = store.page("g", "e", Cursor::Before(i64::MAX), 10).await.unwrap();
    assert_eq!((seqs(&p), p.pending), (vec![4], true));
    // 3 arrives: the page is whole.
    store.insert(&[msg("g", "e", 3)]).await.unwrap();
    let p = store.page("g", "e", Cursor::After(0), 10).await.unwrap();
    assert_eq!((seqs(&p), p.pending), (vec![1, 2, 3, 4], false));
    // A gap older than the settle window is for good (dead-lettered, expired): skipped.
    store.insert(&[msg("g", "e", 6)]).await.unwrap();
    exec(store, "UPDATE messages SET archived_at = 0 WHERE room = 'g' AND seq = 6").await;
    let p = store.page("g", "e", Cursor::After(3), 10).await.unwrap();
    assert_eq!((seqs(&p), p.pending), (vec![4, 6], false));
}

async fn markers_only_rise_within_an_epoch(store: &Store) {
    store.insert(&[marker("ann", "e1", 5, 7, 100)]).await.unwrap();
    // Lower, and in one batch twice (an upsert may touch a row once per statement).
    store.insert(&[marker("ann", "e1", 3, 9, 90), marker("bob", "e1", 1, 1, 95)]).await.unwrap();
    store.insert(&[marker("ann", "e1", 8, 8, 110), marker("ann", "e1", 0, 12, 111)]).await.unwrap();
    let got = |v: Vec<MarkerRow>| -> Vec<(String, String, i64, i64, i64)> {
        v.into_iter().map(|m| (m.user, m.epoch, m.read, m.delivered, m.at)).collect()
    };
    let s = |x: &str| x.to_string();
    assert_eq!(
        got(store.markers("m").await.unwrap()),
        [(s("ann"), s("e1"), 8, 12, 111), (s("bob"), s("e1"), 1, 1, 95)]
    );
    // A new epoch starts over; a late marker of the old one changes nothing.
    store.insert(&[marker("ann", "e2", 1, 2, 200)]).await.unwrap();
    store.insert(&[marker("ann", "e1", 99, 99, 150)]).await.unwrap();
    let ann = store.markers("m").await.unwrap().remove(0);
    assert_eq!((ann.epoch.as_str(), ann.read, ann.delivered, ann.at), ("e2", 1, 2, 200));
    assert!(store.markers("nobody").await.unwrap().is_empty());
}

async fn retention_deletes_expired_messages_in_batches(store: &Store) {
    let now = shared::protocol::unix_ms() as i64;
    let kept = |seq: i64, keep_until: Option<i64>| {
        let Item::Message(r) = msg("t", "e", seq) else { unreachable!() };
        Item::Message(Row { keep_until, ..r })
    };
    let expired = EXPIRE_BATCH as i64 * 2 + 500;
    let mut rows: Vec<Item> = (1..=expired).map(|s| kept(s, Some(now - 1000))).collect();
    rows.push(kept(expired + 1, Some(now + 3_600_000)));
    rows.push(kept(expired + 2, None));
    for chunk in rows.chunks(1000) {
        store.insert(chunk).await.unwrap();
    }
    assert_eq!(store.expire(now).await.unwrap(), u64::from(EXPIRE_BATCH), "one bounded batch");
    let metrics = archiver::Metrics::new();
    let token = tokio_util::sync::CancellationToken::new();
    let rest = archiver::retention::round(store, &metrics, &token).await;
    assert_eq!(rest, expired as u64 - u64::from(EXPIRE_BATCH));
    assert_eq!(metrics.expired.get(), rest);
    let left = store.page("t", "e", Cursor::After(0), 10).await.unwrap();
    assert_eq!(seqs(&left), [expired + 1, expired + 2], "the unexpired and the kept for good");
    assert_eq!(archiver::retention::round(store, &metrics, &token).await, 0);
}

/// A writer commits one room's batches out of order, each pair the later one first (two
/// archivers sharing a shard, the second committing first), while a reader pages forward
/// and re-reads each cursor: every page follows its cursor without a hole, a page read
/// again starts the same, and the reader ends with every message once, in order; then it
/// pages back.
async fn pages_stay_contiguous_and_stable_while_messages_keep_arriving(store: &Store) {
    const N: i64 = 3000;
    const BATCH: i64 = 50;
    let batch = |b: i64| -> Vec<Item> {
        (b * BATCH + 1..=(b + 1) * BATCH).map(|s| msg("live", "e", s)).collect()
    };
    // The first batch is there before the reader starts (a reader from 0 has no cursor
    // row to follow: it takes whatever seq comes first).
    store.insert(&batch(0)).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut b = 1;
            while b * BATCH < N {
                for one in [b + 1, b] {
                    if one * BATCH < N {
                        store.insert(&batch(one)).await.unwrap();
                    }
                    // The reader gets to see the hole.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                b += 2;
            }
        })
    };
    let writers = [writer];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut got, mut cursor, mut pending_pages) = (Vec::new(), 0i64, 0);
    while cursor < N {
        assert!(tokio::time::Instant::now() < deadline, "paged to {cursor} of {N} in 60 s");
        let page = store.page("live", "e", Cursor::After(cursor), 97).await.unwrap();
        let s = seqs(&page);
        let want: Vec<i64> = (cursor + 1..=cursor + s.len() as i64).collect();
        assert_eq!(s, want, "the page after {cursor} has a hole");
        let again = store.page("live", "e", Cursor::After(cursor), 97).await.unwrap();
        assert_eq!(seqs(&again)[..s.len()], s[..], "the page after {cursor} changed");
        pending_pages += usize::from(page.pending);
        if s.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        cursor = s.last().copied().unwrap_or(cursor);
        got.extend(s);
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(got, (1..=N).collect::<Vec<_>>());
    assert!(pending_pages > 0, "the reader never met a hole: the test proved nothing");
    let (mut back, mut cursor) = (Vec::new(), i64::MAX);
    loop {
        let page = store.page("live", "e", Cursor::Before(cursor), 500).await.unwrap();
        assert!(!page.pending);
        let Some(last) = page.messages.last().map(|m| m.seq) else { break };
        back.extend(seqs(&page));
        cursor = last;
    }
    assert_eq!(back, (1..=N).rev().collect::<Vec<_>>());
}

async fn contract(store: Store) {
    pages_and_metadata(&store).await;
    a_missing_seq_ends_the_page_until_it_settles(&store).await;
    markers_only_rise_within_an_epoch(&store).await;
    retention_deletes_expired_messages_in_batches(&store).await;
    pages_stay_contiguous_and_stable_while_messages_keep_arriving(&store).await;
    store.close().await;
}

#[tokio::test]
async fn postgres_store() {
    let pg = PostgresServer::start().await;
    contract(Store::open(&pg.url()).await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_store() {
    let db = Sqlite::new("store");
    contract(Store::open(&db.url()).await.unwrap()).await;
    // Migrations run again on reopen without complaint.
    Store::open(&db.url()).await.unwrap().close().await;
}
