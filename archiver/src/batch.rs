//! One batch on its way into the database, whatever queue it came from: queue records
//! become rows of messages or markers (or the reason they cannot), the batch is written in one transaction and
//! retried with exponential back-off while the database is away or slow, and a batch the
//! database refuses for good is written row by row so only the bad rows are held back.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use shared::archive::Record;

/// Milliseconds in a day of retention.
const DAY_MS: i64 = 86_400_000;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{Item, MAX_BATCH, MarkerRow, Row, Store, is_permanent};

/// The first wait after a failed write; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest one write may take before it counts as failed (the database stuck, or a
/// connection that died without a word) and is tried again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a `message` frame the archive keeps.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    from: std::borrow::Cow<'a, str>,
    ts: i64,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// The row of a queue record, or why it cannot be archived (it never will be).
pub fn item(r: &Record) -> Result<Item, String> {
    let num = |what: &str, n: u64| i64::try_from(n).map_err(|_| format!("{what} {n} is too big"));
    match r {
        Record::Message(m) => {
            let f: Frame = serde_json::from_str(&m.frame).map_err(|e| format!("frame: {e}"))?;
            if f.kind != "message" {
                return Err(format!("frame type {:?} is not message", f.kind));
            }
            let keep_until = m.keep_days.map(|d| f.ts.saturating_add(i64::from(d) * DAY_MS));
            Ok(Item::Message(Row {
                room: m.room.clone(),
                epoch: m.epoch.clone(),
                seq: num("seq", m.seq)?,
                sender: f.from.into_owned(),
                body: f.body.get().to_owned(),
                at: f.ts,
                keep_until,
            }))
        }
        Record::Marker(m) => Ok(Item::Marker(MarkerRow {
            room: m.room.clone(),
            user: m.user.clone(),
            epoch: m.epoch.clone(),
            read: num("read", m.read.unwrap_or(0))?,
            delivered: num("delivered", m.delivered)?,
            at: m.at,
        })),
    }
}

/// Writes `rows`; what became of each: `Ok` (archived now or before) or the database's
/// reason for refusing it for good. `None` when `token` stopped the retries.
pub async fn write(
    store: &Store,
    rows: &[Item],
    metrics: &Metrics,
    token: &CancellationToken,
) -> Option<Vec<Result<(), String>>> {
    if rows.is_empty() {
        return Some(Vec::new());
    }
    if rows.len() > MAX_BATCH {
        // More bind parameters than one statement may carry: one transaction per part.
        let mut out = Vec::with_capacity(rows.len());
        for part in rows.chunks(MAX_BATCH) {
            out.extend(Box::pin(write(store, part, metrics, token)).await?);
        }
        return Some(out);
    }
    match write_retrying(store, rows, metrics, token).await? {
        Ok(()) => Some(vec![Ok(()); rows.len()]),
        Err(reason) if rows.len() == 1 => Some(vec![Err(reason)]),
        Err(_) => {
            // Some row spoils the batch: find it by writing them one by one.
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let one = std::slice::from_ref(r);
                out.push(write_retrying(store, one, metrics, token).await?);
            }
            Some(out)
        }
    }
}

/// One transaction for `rows`, again and again while the failure is the database's (down,
/// restarting, busy); `Err` with the reason when it refuses the rows themselves.
async fn write_retrying(
    store: &Store,
    rows: &[Item],
    metrics: &Metrics,
    token: &CancellationToken,
) -> Option<Result<(), String>> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = std::time::Instant::now();
        let wrote = tokio::time::timeout(WRITE_TIMEOUT, store.insert(rows)).await;
        let wrote = wrote.unwrap_or(Err(sqlx::Error::PoolTimedOut));
        match wrote {
            Ok(n) => {
                metrics.batches.inc();
                metrics.batch_seconds.observe(started.elapsed());
                metrics.rows.add(rows.len() as u64);
                metrics.inserted.add(n);
                return Some(Ok(()));
            }
            Err(e) if is_permanent(&e) => {
                metrics.failures.inc();
                tracing::info!(rows = rows.len(), "archive database refused the rows: {e}");
                return Some(Err(e.to_string()));
            }
            Err(e) => {
                metrics.failures.inc();
                metrics.db_up.set(0);
                tracing::warn!(rows = rows.len(), ?backoff, "archive database: {e}; retrying");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        metrics.db_up.set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(frame: &str) -> Record {
        Record::Message(shared::archive::Message {
            room: "r".into(),
            epoch: "e".into(),
            seq: 7,
            frame: frame.into(),
            keep_days: None,
        })
    }

    fn row(r: &Record) -> Result<Row, String> {
        match item(r)? {
            Item::Message(row) => Ok(row),
            Item::Marker(_) => Err("a marker".into()),
        }
    }

    #[test]
    fn a_message_frame_becomes_a_row() {
        let r = row(&rec(
            r#"{"type":"message","room":"r","from":"ann","seq":7,"ts":1700,"body":{"t":"hi"},"id":3}"#,
        ))
        .unwrap();
        assert_eq!(
            (r.seq, r.sender.as_str(), r.body.as_str(), r.at, r.keep_until),
            (7, "ann", r#"{"t":"hi"}"#, 1700, None)
        );
        let escaped = row(&rec(r#"{"type":"message","from":"a\"b","ts":1,"body":"x"}"#)).unwrap();
        assert_eq!(escaped.sender, "a\"b");
        let Record::Message(mut m) = rec(r#"{"type":"message","from":"a","ts":1000,"body":1}"#)
        else {
            unreachable!()
        };
        m.keep_days = Some(2);
        let kept = row(&Record::Message(m)).unwrap();
        assert_eq!(kept.keep_until, Some(1000 + 2 * DAY_MS), "days after the message was sent");
    }

    #[test]
    fn a_marker_becomes_a_row_with_an_absent_read_as_zero() {
        let m = shared::archive::Marker {
            room: "r".into(),
            epoch: "e".into(),
            user: "ann".into(),
            read: None,
            delivered: 5,
            at: 9,
        };
        let Ok(Item::Marker(row)) = item(&Record::Marker(m)) else { panic!("a marker row") };
        assert_eq!((row.read, row.delivered, row.at, row.user.as_str()), (0, 5, 9, "ann"));
    }

    #[test]
    fn other_frames_are_refused_with_a_reason() {
        assert!(row(&rec("not json")).unwrap_err().starts_with("frame:"));
        assert!(
            row(&rec(r#"{"type":"ack","from":"a","ts":1,"body":1}"#)).unwrap_err().contains("ack")
        );
        assert!(row(&rec(r#"{"type":"message","ts":1,"body":1}"#)).is_err(), "no sender");
        let Record::Message(m) = rec(r#"{"type":"message","from":"a","ts":1,"body":1}"#) else {
            unreachable!()
        };
        let big = Record::Message(shared::archive::Message { seq: u64::MAX, ..m });
        assert!(row(&big).unwrap_err().contains("too big"));
    }
}
