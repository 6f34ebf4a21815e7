//! A job's progress as roomfleet inbox entries: one `XADD {prefix}:inbox` per status with
//! the fields the routers read (`room`, `body` as JSON text, `id`, `from`; docs/api.md).
//! Every status has an `id` of its own, so a worker that runs a job again after a crash
//! (or a router that claims an entry again) delivers nothing twice.

use serde::Serialize;

/// Who the statuses come from, as members see it.
pub const FROM: &str = "judge";
/// Entries the inbox keeps at about most; acknowledged ones are not needed any more.
pub const MAX_LEN: usize = 100_000;

/// What one status says; the `message` body members get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Status {
    pub job: u64,
    /// `queued`, `running`, `passed` or `failed`.
    pub state: String,
    pub done: u32,
    pub total: u32,
    /// For people: `queued`, `running 3/12`, `passed 12/12`.
    pub text: String,
}

impl Status {
    pub fn new(job: u64, state: &str, done: u32, total: u32) -> Self {
        let text = match state {
            "queued" => "queued".to_owned(),
            _ => format!("{state} {done}/{total}"),
        };
        Self { job, state: state.to_owned(), done, total, text }
    }

    /// The publish `id`: the same status of the same job is the same message.
    pub fn id(&self) -> String {
        match self.state.as_str() {
            "running" => format!("job-{}-running-{}", self.job, self.done),
            s => format!("job-{}-{s}", self.job),
        }
    }
}

/// The inbox stream's key for the fleet's `--redis-prefix`.
pub fn stream(prefix: &str) -> String {
    format!("{prefix}:inbox")
}

/// Adds the `XADD` of `status` for `room` to `pipe` (so a submit can queue the job in the
/// same `MULTI`).
pub fn add(pipe: &mut redis::Pipeline, prefix: &str, room: &str, status: &Status) {
    let body = serde_json::to_string(status).unwrap_or_default();
    pipe.cmd("XADD")
        .arg(stream(prefix))
        .arg("MAXLEN")
        .arg("~")
        .arg(MAX_LEN)
        .arg("*")
        .arg("room")
        .arg(room)
        .arg("body")
        .arg(body)
        .arg("id")
        .arg(status.id())
        .arg("from")
        .arg(FROM)
        .ignore();
}

/// Appends one status.
pub async fn push(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    room: &str,
    status: &Status,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    add(&mut pipe, prefix, room, status);
    pipe.query_async(conn).await
}
