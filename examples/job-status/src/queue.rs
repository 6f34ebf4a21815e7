//! The job queue in Redis: `{app}:queue` (submitted jobs; pushed left, taken right) and one
//! `{app}:running:{worker}` list per worker holding the job it works on, moved there
//! atomically by `BLMOVE`, so a worker that dies leaves its job for its next start.

use serde::{Deserialize, Serialize};

use crate::inbox::{self, Status};

/// Tests one job may have at most.
pub const MAX_TESTS: u32 = 1000;
/// How long one blocking take waits before the worker looks at its stop token again.
pub const TAKE_WAIT_SECS: f64 = 1.0;

/// A submitted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub user: String,
    pub tests: u32,
    /// The tests (1-based) that fail.
    #[serde(default)]
    pub fail: Vec<u32>,
}

impl Job {
    /// The submitter's room.
    pub fn room(&self) -> String {
        room_of(&self.user)
    }
}

pub fn room_of(user: &str) -> String {
    format!("status:{user}")
}

/// The Redis names of one deployment of the example.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The example's own key prefix.
    pub app: String,
    /// The fleet's `--redis-prefix` (the inbox is `{fleet}:inbox`).
    pub fleet: String,
}

impl Keys {
    fn queue(&self) -> String {
        format!("{}:queue", self.app)
    }
    fn next_id(&self) -> String {
        format!("{}:next-id", self.app)
    }
    fn running(&self, worker: &str) -> String {
        format!("{}:running:{worker}", self.app)
    }
}

/// Queues a job and its `queued` status in one `MULTI`: the status is in the inbox before
/// any worker can take the job, so it comes first in the room.
pub async fn submit(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    user: &str,
    tests: u32,
    fail: Vec<u32>,
) -> redis::RedisResult<Job> {
    let id: u64 = redis::cmd("INCR").arg(keys.next_id()).query_async(conn).await?;
    let job = Job { id, user: user.to_owned(), tests, fail };
    let mut pipe = redis::pipe();
    pipe.atomic();
    inbox::add(&mut pipe, &keys.fleet, &job.room(), &Status::new(id, "queued", 0, tests));
    pipe.cmd("LPUSH").arg(keys.queue()).arg(serde_json::to_string(&job).unwrap_or_default());
    pipe.ignore();
    pipe.query_async::<()>(conn).await?;
    Ok(job)
}

/// Waits up to [`TAKE_WAIT_SECS`] for the next job, moving it to `worker`'s running list.
/// Returns the raw entry (to remove it once done) and the job, or `None`. An entry that is
/// not a job is dropped with a warning.
pub async fn take(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    worker: &str,
) -> redis::RedisResult<Option<(String, Job)>> {
    let raw: Option<String> = redis::cmd("BLMOVE")
        .arg(keys.queue())
        .arg(keys.running(worker))
        .arg("RIGHT")
        .arg("LEFT")
        .arg(TAKE_WAIT_SECS)
        .query_async(conn)
        .await?;
    let Some(raw) = raw else { return Ok(None) };
    match serde_json::from_str(&raw) {
        Ok(job) => Ok(Some((raw, job))),
        Err(e) => {
            tracing::warn!(entry = %raw, "not a job, dropped: {e}");
            finish(conn, keys, worker, &raw).await?;
            Ok(None)
        }
    }
}

/// Removes a finished job from `worker`'s running list.
pub async fn finish(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    worker: &str,
    raw: &str,
) -> redis::RedisResult<()> {
    redis::cmd("LREM").arg(keys.running(worker)).arg(1).arg(raw).query_async(conn).await
}

/// Puts the jobs a previous run of `worker` did not finish back at the queue's taking end;
/// how many. Their statuses are sent again with the same ids, so members see each once.
pub async fn requeue(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    worker: &str,
) -> redis::RedisResult<usize> {
    let n: usize = redis::cmd("LLEN").arg(keys.running(worker)).query_async(conn).await?;
    for _ in 0..n {
        let _: Option<String> = redis::cmd("LMOVE")
            .arg(keys.running(worker))
            .arg(keys.queue())
            .arg("RIGHT")
            .arg("RIGHT")
            .query_async(conn)
            .await?;
    }
    Ok(n)
}
