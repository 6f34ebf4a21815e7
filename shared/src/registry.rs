//! The node registry in Redis that `--discovery redis` routers read: each node's ID,
//! advertised address and weight, alive while its heartbeat key is. Nodes write it
//! (register, refresh, deregister); routers read the live entries and follow the events.

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

/// One node as the registry holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// Where routers reach the node (`host:port`).
    pub addr: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Key and channel names under one prefix (the same prefix the Redis bus uses).
#[derive(Debug, Clone)]
pub struct Registry {
    prefix: String,
}

/// Returns the live records and removes the dead ones. KEYS[1] = registry hash;
/// ARGV[1] = heartbeat key prefix.
const LIVE: &str = r#"
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if redis.call('EXISTS', ARGV[1] .. all[i]) == 1 then table.insert(out, all[i + 1])
  else redis.call('HDEL', KEYS[1], all[i]) end
end
return out
"#;

impl Registry {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub fn hash_key(&self) -> String {
        format!("{}:registry", self.prefix)
    }

    /// The channel every change is announced on; routers subscribe to it.
    pub fn events_channel(&self) -> String {
        format!("{}:registry:events", self.prefix)
    }

    /// The node's heartbeat key: shared with the bus, so one heartbeat keeps both alive.
    pub fn heartbeat_key(&self, node: &str) -> String {
        format!("{}:hb:{node}", self.prefix)
    }

    /// Adds or refreshes the node and its heartbeat (TTL in ms); `announce` tells routers
    /// at once (on start), a refresh is left to their periodic read.
    pub async fn register(
        &self,
        conn: &mut MultiplexedConnection,
        rec: &NodeRecord,
        ttl_ms: u64,
        announce: bool,
    ) -> redis::RedisResult<()> {
        let json = serde_json::to_string(rec).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.hash_key(), &rec.id, json)
            .ignore()
            .cmd("SET")
            .arg(self.heartbeat_key(&rec.id))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms.max(1))
            .ignore();
        if announce {
            pipe.publish(self.events_channel(), format!("up {}", rec.id)).ignore();
        }
        pipe.query_async(conn).await
    }

    /// Takes the node out of placement and announces it, so routers stop placing there at
    /// once. The heartbeat key stays: the node still holds rooms until it has drained.
    pub async fn withdraw(
        &self,
        conn: &mut MultiplexedConnection,
        id: &str,
    ) -> redis::RedisResult<()> {
        self.leave(id, false).query_async(conn).await
    }

    /// Withdraws the node and drops its heartbeat: the last step of a shutdown, after which
    /// other nodes prune it from room sets at once.
    pub async fn deregister(
        &self,
        conn: &mut MultiplexedConnection,
        id: &str,
    ) -> redis::RedisResult<()> {
        self.leave(id, true).query_async(conn).await
    }

    fn leave(&self, id: &str, heartbeat_too: bool) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic().hdel(self.hash_key(), id).ignore();
        if heartbeat_too {
            pipe.del(self.heartbeat_key(id)).ignore();
        }
        pipe.publish(self.events_channel(), format!("down {id}")).ignore();
        pipe
    }

    /// Every live node, sorted by ID; unreadable entries are skipped.
    pub async fn live(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> redis::RedisResult<Vec<NodeRecord>> {
        let raw: Vec<String> = redis::Script::new(LIVE)
            .key(self.hash_key())
            .arg(format!("{}:hb:", self.prefix))
            .invoke_async(conn)
            .await?;
        let mut out: Vec<NodeRecord> =
            raw.iter().filter_map(|r| serde_json::from_str(r).ok()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
