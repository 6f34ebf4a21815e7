//! The job-status example: a submit endpoint puts jobs on a Redis list, workers take them and
//! push each job's progress into the submitter's room `status:<user>` through the fleet's
//! Redis inbox, and a page served here shows the room live (clients/js/roomfleet.js).
#![forbid(unsafe_code)]

pub mod inbox;
pub mod queue;
pub mod web;
pub mod worker;

use std::time::Duration;

/// How long one Redis reply may take; a blocking take waits less than this.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection of its own (a worker's blocking take must not hold up others).
pub async fn connect(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let conf = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(REPLY_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&conf).await
}
