//! A worker: takes jobs off the queue and "runs" their tests (a pause per test stands in for
//! compiling and judging), pushing `running`, `running k/n` and `passed n/n` (or `failed`)
//! into the submitter's room. Redis errors are retried with back-off; it stops with `stop`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::inbox::{self, Status};
use crate::queue::{self, Job, Keys};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub name: String,
    pub keys: Keys,
    /// How long one test takes.
    pub step: Duration,
}

/// Runs until `stop` is cancelled.
pub async fn run(client: redis::Client, cfg: WorkerConfig, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match serve(&client, &cfg, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(worker = %cfg.name, "redis: {e}; again in {backoff:?}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn serve(
    client: &redis::Client,
    cfg: &WorkerConfig,
    stop: &CancellationToken,
) -> redis::RedisResult<()> {
    let mut conn = crate::connect(client).await?;
    let again = queue::requeue(&mut conn, &cfg.keys, &cfg.name).await?;
    if again > 0 {
        tracing::info!(worker = %cfg.name, jobs = again, "unfinished jobs queued again");
    }
    tracing::info!(worker = %cfg.name, "taking jobs");
    loop {
        let taken = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            t = queue::take(&mut conn, &cfg.keys, &cfg.name) => t?,
        };
        let Some((raw, job)) = taken else { continue };
        tracing::info!(worker = %cfg.name, job = job.id, user = %job.user, "running");
        // A stop halfway leaves the job in the running list: the next start runs it again.
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = work(&mut conn, cfg, &job) => r?,
        }
        queue::finish(&mut conn, &cfg.keys, &cfg.name, &raw).await?;
    }
}

/// The job's statuses after `queued`, each pushed as soon as it is known.
pub fn outcome(job: &Job, done: u32) -> Status {
    let failed = job.fail.iter().filter(|t| **t <= done).count() as u32;
    match (done == job.tests, failed) {
        (true, 0) => Status::new(job.id, "passed", done, job.tests),
        (true, f) => Status::new(job.id, "failed", done - f, job.tests),
        (false, _) => Status::new(job.id, "running", done, job.tests),
    }
}

async fn work(
    conn: &mut redis::aio::MultiplexedConnection,
    cfg: &WorkerConfig,
    job: &Job,
) -> redis::RedisResult<()> {
    let room = job.room();
    for done in 0..=job.tests {
        if done > 0 {
            tokio::time::sleep(cfg.step).await;
        }
        inbox::push(conn, &cfg.keys.fleet, &room, &outcome(job, done)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_goes_running_then_passed_or_failed_with_ids_of_its_own() {
        let job = Job { id: 7, user: "u".into(), tests: 3, fail: vec![] };
        let texts: Vec<String> = (0..=3).map(|d| outcome(&job, d).text).collect();
        assert_eq!(texts, ["running 0/3", "running 1/3", "running 2/3", "passed 3/3"]);
        let ids: Vec<String> = (0..=3).map(|d| outcome(&job, d).id()).collect();
        assert_eq!(ids, ["job-7-running-0", "job-7-running-1", "job-7-running-2", "job-7-passed"]);
        let bad = Job { fail: vec![2], ..job };
        assert_eq!(outcome(&bad, 3).text, "failed 2/3");
    }
}
