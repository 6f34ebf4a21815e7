//! The Redis Streams consumer-group steps the routers' inbox and the archivers share:
//! connecting with timeouts that outlast a blocking read, creating a group from the
//! stream's start, claiming a silent consumer's entries, and dead-lettering an entry with
//! its reason.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId};

/// A connection whose reads may block for `block` (an `XREADGROUP ... BLOCK`).
pub async fn connect(url: &str, block: Duration) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let conf = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(block + Duration::from_secs(5)));
    client.get_multiplexed_async_connection_with_config(&conf).await
}

/// Creates consumer group `group` on `stream` (and the stream), reading from its start so
/// that what producers appended before any consumer came up counts too; a group that
/// exists is left as it is.
pub async fn ensure_group(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// Claims for `consumer` up to `count` entries of `stream` pending longer than `idle`,
/// scanning from `start` (`0-0` first, then the reply's `next_stream_id` until it is
/// `0-0` again).
pub async fn claim(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    idle: Duration,
    start: &str,
    count: usize,
) -> redis::RedisResult<StreamAutoClaimReply> {
    redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(idle.as_millis() as u64)
        .arg(start)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await
}

/// Where a dead entry goes and what it came from.
#[derive(Debug, Clone, Copy)]
pub struct Grave<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub dead: &'a str,
    /// Also delete the entry from `stream` (a queue that keeps only what is not done).
    pub delete: bool,
}

/// Moves entry `e` to the dead-letter stream (fields `entry`, `reason`, `extra`, and the
/// entry's own as `field:NAME`) and acknowledges it, atomically.
pub async fn bury(
    conn: &mut MultiplexedConnection,
    g: Grave<'_>,
    e: &StreamId,
    why: &str,
    extra: &[(&str, &str)],
) -> redis::RedisResult<()> {
    let mut add = redis::cmd("XADD");
    add.arg(g.dead).arg("*").arg("entry").arg(&e.id).arg("reason").arg(why);
    for (k, v) in extra {
        add.arg(*k).arg(*v);
    }
    for (k, v) in &e.map {
        if let Ok(s) = redis::from_redis_value_ref::<String>(v) {
            add.arg(format!("field:{k}")).arg(s);
        }
    }
    let mut pipe = redis::pipe();
    pipe.atomic().add_command(add).ignore();
    pipe.cmd("XACK").arg(g.stream).arg(g.group).arg(&e.id).ignore();
    if g.delete {
        pipe.cmd("XDEL").arg(g.stream).arg(&e.id).ignore();
    }
    pipe.query_async::<()>(conn).await
}
