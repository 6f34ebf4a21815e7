//! The router's settings: [`Config`] with the documented defaults, the clap flags that fill it
//! (each with `env = "ROUTER_..."` and a config-file key of the same name), and the checks
//! that refuse a config that cannot work before anything binds.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use shared::auth::{HopKey, Verifier};
use shared::config::parse_secs;

use crate::Error;
use crate::health::HealthConfig;
use crate::membership::NodeSpec;
use crate::placement::PolicyName;
use crate::ring::DEFAULT_VNODES;

/// Descriptors kept free for node probes, admin requests and accept headroom.
const FD_RESERVE: u64 = 64;

/// Everything a router is run with. `Default` gives the production defaults except the
/// addresses, which the binary sets from its flags (tests use port 0).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect (`GET /ws`).
    pub listen: SocketAddr,
    /// The admin API and metrics; loopback unless a token is set.
    pub admin: SocketAddr,
    /// The nodes at start; more come and go through the admin API.
    pub nodes: Vec<NodeSpec>,
    pub policy: PolicyName,
    /// Bearer token `/admin/*` requires; required when `admin` is not loopback.
    pub admin_token: Option<String>,
    /// Bearer token for the nodes' own `/admin/*` (the drain call), when they require one.
    pub node_admin_token: Option<String>,
    /// `SO_REUSEPORT` on the public listener, so several routers share one port.
    pub reuse_port: bool,
    /// Virtual nodes per unit of weight.
    pub vnodes: usize,
    /// Client connections held at most; each proxied one costs two descriptors.
    pub max_connections: usize,
    /// Client connections one IP may hold; 0 = no limit (clients behind NAT or a load
    /// balancer share one address).
    pub max_connections_per_ip: usize,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// How long connecting to a node may take before the next candidate is tried.
    pub connect_timeout: Duration,
    /// How long a node may take to answer the upgrade.
    pub upstream_timeout: Duration,
    /// Nodes tried for one upgrade at most (the owner and its fallbacks).
    pub max_tries: usize,
    pub health: HealthConfig,
    /// How long shutdown lets open tunnels run before cutting them.
    pub shutdown_grace: Duration,
    /// The drain window passed to a node's `POST /admin/drain`; `None` = the node's default.
    pub drain_window: Option<Duration>,
    /// Nodes from the Redis registry (`--discovery redis`), besides the static ones.
    pub discovery: Option<crate::discovery::Discovery>,
    /// The country database of `--policy geo`.
    pub geoip: Option<std::path::PathBuf>,
    /// `--policy geo` pools: country (or `default`) -> the nodes its rooms are hashed over.
    pub pools: Vec<(String, Vec<String>)>,
    /// Peers whose `Forwarded` / `X-Forwarded-For` name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Verifies connection tokens; `None` = auth off (anyone may connect as anyone).
    pub jwt: Option<Arc<Verifier>>,
    /// Signs the verified identity for the nodes; required with `jwt`.
    pub hop_key: Option<HopKey>,
    /// Largest request header block a client may send (431 above).
    pub max_header_bytes: usize,
    /// Certificate and key of the public listener; `None` = plain TCP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// CA the nodes' certificates are checked against; `Some` = the router reaches every
    /// node over TLS (upgrades and probes), `None` = plain TCP.
    pub node_tls_ca: Option<std::path::PathBuf>,
    /// The server API listener (`/api/*`); `None` = none. The binaries default it to
    /// 127.0.0.1:9091.
    pub api: Option<SocketAddr>,
    /// Keys the server API takes; required when `api` is not loopback. With none, the API
    /// takes every loopback caller as `api`.
    pub api_keys: Vec<crate::api::ApiKey>,
    /// Read the Redis inbox (`--inbox`) and publish its entries.
    pub inbox: Option<crate::inbox::InboxConfig>,
    /// Nodes in this process that take clients handed over (`fleet up`), by node id.
    pub in_process: std::collections::BTreeMap<String, crate::handoff::InProcess>,
    /// The archive database the server API reads (`--archive-db`; opened by the binary).
    pub archive: Option<archiver::Store>,
    /// The metrics of an archiver in this process (`fleet up`), served after the router's own
    /// on `GET /metrics`: the archiver has no listener of its own there.
    pub archiver_metrics: Option<Arc<archiver::Metrics>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            nodes: Vec::new(),
            policy: PolicyName::Room,
            admin_token: None,
            node_admin_token: None,
            reuse_port: false,
            vnodes: DEFAULT_VNODES,
            max_connections: default_max_connections(),
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            header_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(5),
            max_tries: 3,
            health: HealthConfig::default(),
            shutdown_grace: Duration::from_secs(30),
            drain_window: None,
            discovery: None,
            geoip: None,
            pools: Vec::new(),
            trusted_proxies: Vec::new(),
            jwt: None,
            hop_key: None,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            tls: None,
            node_tls_ca: None,
            api: None,
            api_keys: Vec::new(),
            inbox: None,
            in_process: Default::default(),
            archive: None,
            archiver_metrics: None,
        }
    }
}

/// Client connections one address may hold by default: far above one user's tabs, far
/// below what one host can open to exhaust the router.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;
/// The request header block cap by default (nginx's `large_client_header_buffers` is 4x8 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Hyper's read buffer cannot be smaller than this.
const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Two descriptors per proxied client (client side and node side), less a reserve.
pub fn default_max_connections() -> usize {
    shared::listen::open_file_limit()
        .map(|n| (n.saturating_sub(FD_RESERVE) / 2).max(16) as usize)
        .unwrap_or(10_000)
}

impl Config {
    /// Refuses settings that cannot work, with one line naming the flag.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.admin.ip().is_loopback() && self.admin_token.as_deref().is_none_or(str::is_empty) {
            return Err(Error::config(format!(
                "--admin {} is not a loopback address: set --admin-token",
                self.admin
            )));
        }
        if let Some(api) = self.api
            && !api.ip().is_loopback()
            && self.api_keys.is_empty()
        {
            return Err(Error::config(format!(
                "--api {api} is not a loopback address: set --api-key NAME=SECRET"
            )));
        }
        let mut names: Vec<&str> = self.api_keys.iter().map(|k| k.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::config(format!("--api-key: name {} is given twice", w[0])));
        }
        let mut ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::config(format!("--node: node id {} is given twice", w[0])));
        }
        let checks: [(bool, &str); 10] = [
            ((1..=10_000).contains(&self.vnodes), "--vnodes must be 1..=10000"),
            (self.max_connections >= 1, "--max-connections must be at least 1"),
            (self.max_tries >= 1, "--max-tries must be at least 1"),
            (self.health.fall >= 1, "--health-fall must be at least 1"),
            (self.health.rise >= 1, "--health-rise must be at least 1"),
            (!self.health.interval.is_zero(), "--health-interval must be above 0"),
            (!self.health.timeout.is_zero(), "--health-timeout must be above 0"),
            (!self.connect_timeout.is_zero(), "--connect-timeout must be above 0"),
            (!self.upstream_timeout.is_zero(), "--upstream-timeout must be above 0"),
            (!self.header_timeout.is_zero(), "--header-timeout must be above 0"),
        ];
        if self.jwt.is_some() && self.hop_key.is_none() {
            return Err(Error::config(
                "--jwt-key needs --hop-secret: nodes trust only identities the router signs",
            ));
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(Error::config(format!(
                "--max-header-bytes must be at least {MIN_HEADER_BYTES}"
            )));
        }
        if self.policy == PolicyName::Geo && self.geoip.is_none() {
            return Err(Error::config("--policy geo needs --geoip FILE.mmdb"));
        }
        if let Some(i) = &self.inbox {
            redis::Client::open(i.redis.as_str())
                .map_err(|e| Error::config(format!("--redis {}: {e}", i.redis)))?;
            if i.claim_idle.is_zero() {
                return Err(Error::config("--inbox-claim-idle must be above 0"));
            }
        }
        if let Some(d) = &self.discovery {
            redis::Client::open(d.redis.as_str())
                .map_err(|e| Error::config(format!("--redis {}: {e}", d.redis)))?;
            if d.interval.is_zero() {
                return Err(Error::config("--discovery-interval must be above 0"));
            }
        }
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(Error::config(*why)),
            None => Ok(()),
        }
    }
}

/// The router flags besides the addresses and nodes, shared by `router` and `fleet up`.
/// Durations are seconds (`0.5` works).
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Placement policy.
    #[arg(long, env = "ROUTER_POLICY", value_enum, default_value_t = PolicyName::Room)]
    pub policy: PolicyName,
    /// Bearer token required on `/admin/*`; required when --admin is not loopback.
    #[arg(long, env = "ROUTER_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Bearer token the nodes' `/admin/*` requires (used for drain).
    #[arg(long, env = "ROUTER_NODE_ADMIN_TOKEN")]
    pub node_admin_token: Option<String>,
    /// Set SO_REUSEPORT on the public listener so several routers share the port.
    #[arg(long, env = "ROUTER_REUSE_PORT")]
    pub reuse_port: bool,
    /// Virtual nodes per unit of node weight.
    #[arg(long, env = "ROUTER_VNODES", default_value_t = DEFAULT_VNODES)]
    pub vnodes: usize,
    /// Client connections held at most (default: half the open-file limit less 64).
    #[arg(long, env = "ROUTER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Client connections per client IP (429 above); 0 = no limit.
    #[arg(long, env = "ROUTER_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// Largest request header block in bytes a client may send (431 above; at least 8192).
    #[arg(long, env = "ROUTER_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Connection tokens: `env:NAME` (HS256 secret in that variable), or a file holding an
    /// HS256 secret, RS256/ES256 PEM public keys, or a JWKS (reloaded when it changes).
    /// Without it the fleet is open: anyone may connect as anyone.
    #[arg(long, env = "ROUTER_JWT_KEY")]
    pub jwt_key: Option<String>,
    /// Secret (`env:NAME` or a file, 16 bytes at least) the router signs verified identities
    /// with for the nodes; the nodes' --hop-secret.
    #[arg(long, env = "ROUTER_HOP_SECRET")]
    pub hop_secret: Option<String>,
    /// PEM certificate chain of the public listener (TLS; reloaded on SIGHUP).
    #[arg(long, env = "ROUTER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ROUTER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificate(s) of the nodes' --tls-cert: the router then reaches every node
    /// over TLS (upgrades, probes, drain) and refuses a node whose certificate it cannot
    /// verify. Without it the router speaks plain TCP to the nodes.
    #[arg(long, env = "ROUTER_NODE_TLS_CA")]
    pub node_tls_ca: Option<std::path::PathBuf>,
    /// Seconds a client may take to send its request headers.
    #[arg(long, env = "ROUTER_HEADER_TIMEOUT", value_parser = parse_secs, default_value = "10")]
    pub header_timeout: Duration,
    /// Seconds connecting to a node may take before the next node is tried.
    #[arg(long, env = "ROUTER_CONNECT_TIMEOUT", value_parser = parse_secs, default_value = "1")]
    pub connect_timeout: Duration,
    /// Seconds a node may take to answer the upgrade.
    #[arg(long, env = "ROUTER_UPSTREAM_TIMEOUT", value_parser = parse_secs, default_value = "5")]
    pub upstream_timeout: Duration,
    /// Nodes tried for one upgrade at most.
    #[arg(long, env = "ROUTER_MAX_TRIES", default_value_t = 3)]
    pub max_tries: usize,
    /// Seconds between health probes of each node.
    #[arg(long, env = "ROUTER_HEALTH_INTERVAL", value_parser = parse_secs, default_value = "1")]
    pub health_interval: Duration,
    /// Seconds after which a probe fails.
    #[arg(long, env = "ROUTER_HEALTH_TIMEOUT", value_parser = parse_secs, default_value = "0.5")]
    pub health_timeout: Duration,
    /// Failed probes in a row that take a node off the ring.
    #[arg(long, env = "ROUTER_HEALTH_FALL", default_value_t = 3)]
    pub health_fall: u32,
    /// Good probes in a row that put a node back.
    #[arg(long, env = "ROUTER_HEALTH_RISE", default_value_t = 2)]
    pub health_rise: u32,
    /// Seconds shutdown lets open tunnels run before cutting them.
    #[arg(long, env = "ROUTER_SHUTDOWN_GRACE", value_parser = parse_secs, default_value = "30")]
    pub shutdown_grace: Duration,
    /// Seconds over which a drained node spreads its closes (default: the node's own).
    #[arg(long, env = "ROUTER_DRAIN_WINDOW", value_parser = parse_secs)]
    pub drain_window: Option<Duration>,
    /// Where nodes come from: `static` (--node, config file, admin API) or `redis` (also the
    /// registry the nodes keep with --advertise; needs --redis).
    #[arg(long, env = "ROUTER_DISCOVERY", value_enum, default_value_t = DiscoveryKind::Static)]
    pub discovery: DiscoveryKind,
    /// Redis URL of the node registry (`--discovery redis`) and of the inbox (`--inbox`).
    #[arg(long, env = "ROUTER_REDIS")]
    pub redis: Option<String>,
    /// Prefix of the registry's keys and channel: the nodes' --redis-prefix.
    #[arg(long, env = "ROUTER_REDIS_PREFIX", default_value = "roomfleet")]
    pub redis_prefix: String,
    /// Seconds between full reads of the registry (changes are also pushed at once).
    #[arg(long, env = "ROUTER_DISCOVERY_INTERVAL", value_parser = parse_secs, default_value = "1")]
    pub discovery_interval: Duration,
    /// MaxMind-format country database for `--policy geo` (GeoLite2/GeoIP2-Country, DB-IP
    /// country lite, ip-location-db); reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "ROUTER_GEOIP")]
    pub geoip: Option<std::path::PathBuf>,
    /// `--policy geo` pool: COUNTRY=NODE,NODE (or default=NODE,...); rooms of that country
    /// are hashed over those nodes. Repeat per country.
    #[arg(long = "pools", env = "ROUTER_POOLS", value_delimiter = ';', value_parser = parse_pool)]
    pub pools: Vec<(String, Vec<String>)>,
    /// A server API key NAME=SECRET (or NAME=env:VAR, NAME=file:PATH; 16 bytes at least):
    /// back ends send `Authorization: Bearer SECRET`, and NAME is the `from` of what they
    /// publish. Repeat for more. Required when --api is not loopback.
    #[arg(long = "api-key", env = "ROUTER_API_KEY", value_delimiter = ',')]
    pub api_keys: Vec<crate::api::ApiKey>,
    /// The archive database the server API serves history pages and room metadata from
    /// (`postgres://...` or `sqlite:PATH`, the archivers' --db); without it those answer 404.
    #[arg(long, env = "ROUTER_ARCHIVE_DB")]
    pub archive_db: Option<String>,
    /// Read the Redis inbox `{prefix}:inbox` (needs --redis) in the consumer group
    /// `routers` and publish its entries like the server API does.
    #[arg(long, env = "ROUTER_INBOX")]
    pub inbox: bool,
    /// This router's consumer name in the inbox group (default: router-PID-RANDOM); keep
    /// it unique per router.
    #[arg(long, env = "ROUTER_INBOX_CONSUMER")]
    pub inbox_consumer: Option<String>,
    /// Seconds an inbox entry stays pending with a silent router before another claims it.
    #[arg(long, env = "ROUTER_INBOX_CLAIM_IDLE", value_parser = parse_secs, default_value = "10")]
    pub inbox_claim_idle: Duration,
    /// CIDR of a proxy in front of the router whose Forwarded / X-Forwarded-For are believed.
    #[arg(long = "trusted-proxy", env = "ROUTER_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `DE=node-a,node-b` -> ("DE", ["node-a", "node-b"]).
fn parse_pool(s: &str) -> Result<(String, Vec<String>), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not COUNTRY=NODE,NODE"))?;
    let k = k.trim();
    let key = if k.eq_ignore_ascii_case("default") {
        "default".to_string()
    } else {
        geoip::Country::new(k)
            .ok_or_else(|| format!("{k:?} is not a two-letter country code"))?
            .to_string()
    };
    let nodes: Vec<String> =
        v.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
    if nodes.is_empty() {
        return Err(format!("pool {key} names no node"));
    }
    Ok((key, nodes))
}

/// The `--discovery` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoveryKind {
    Static,
    Redis,
}

impl RouterArgs {
    /// The config these flags give, around the addresses and nodes the caller chose;
    /// validated.
    pub fn into_config(
        self,
        listen: SocketAddr,
        admin: SocketAddr,
        nodes: Vec<NodeSpec>,
    ) -> Result<Config, Error> {
        let c = self.build(listen, admin, nodes)?;
        c.validate()?;
        Ok(c)
    }

    /// Like [`RouterArgs::into_config`] but not yet validated, for a caller that fills in
    /// more (`fleet up` makes up the hop secret its in-process nodes share).
    pub fn build(
        self,
        listen: SocketAddr,
        admin: SocketAddr,
        nodes: Vec<NodeSpec>,
    ) -> Result<Config, Error> {
        Ok(Config {
            listen,
            admin,
            nodes,
            policy: self.policy,
            admin_token: self.admin_token.filter(|t| !t.is_empty()),
            node_admin_token: self.node_admin_token.filter(|t| !t.is_empty()),
            reuse_port: self.reuse_port,
            vnodes: self.vnodes,
            max_connections: self.max_connections.unwrap_or_else(default_max_connections),
            max_connections_per_ip: self.max_connections_per_ip,
            max_header_bytes: self.max_header_bytes,
            jwt: match &self.jwt_key {
                Some(k) => {
                    Some(Arc::new(Verifier::from_arg(k).map_err(|e| Error::config(e.to_string()))?))
                }
                None => None,
            },
            hop_key: match &self.hop_secret {
                Some(s) => Some(HopKey::from_arg(s).map_err(Error::config)?),
                None => None,
            },
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
                _ => None,
            },
            node_tls_ca: self.node_tls_ca,
            header_timeout: self.header_timeout,
            connect_timeout: self.connect_timeout,
            upstream_timeout: self.upstream_timeout,
            max_tries: self.max_tries,
            health: HealthConfig {
                interval: self.health_interval,
                timeout: self.health_timeout,
                fall: self.health_fall,
                rise: self.health_rise,
            },
            shutdown_grace: self.shutdown_grace,
            drain_window: self.drain_window,
            discovery: match (self.discovery, self.redis.clone()) {
                (DiscoveryKind::Static, _) => None,
                (DiscoveryKind::Redis, None) => {
                    return Err(Error::config("--discovery redis needs --redis URL"));
                }
                (DiscoveryKind::Redis, Some(redis)) => Some(crate::discovery::Discovery {
                    redis,
                    prefix: self.redis_prefix.clone(),
                    interval: self.discovery_interval,
                }),
            },
            geoip: self.geoip,
            pools: self.pools,
            trusted_proxies: self.trusted_proxies,
            api: None,
            api_keys: self.api_keys,
            inbox: match (self.inbox, &self.redis) {
                (false, _) => None,
                (true, None) => return Err(Error::config("--inbox needs --redis URL")),
                (true, Some(redis)) => Some(crate::inbox::InboxConfig {
                    redis: redis.clone(),
                    prefix: self.redis_prefix.clone(),
                    consumer: self.inbox_consumer.clone().unwrap_or_else(|| {
                        format!("router-{}-{:08x}", std::process::id(), fastrand::u32(..))
                    }),
                    claim_idle: self.inbox_claim_idle,
                }),
            },
            in_process: Default::default(),
            // Opened by the binary (it is async); `archive_db` names it.
            archive: None,
            archiver_metrics: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_pool("de=node-a, node-b"),
            Ok(("DE".to_string(), vec!["node-a".to_string(), "node-b".to_string()]))
        );
        assert_eq!(parse_pool("Default=node-c").unwrap().0, "default");
        assert!(parse_pool("DEU=node-a").is_err());
        assert!(parse_pool("DE=").is_err());
        assert!(parse_pool("DE").is_err());
    }

    #[test]
    fn geo_needs_a_database() {
        let c = Config { policy: PolicyName::Geo, ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("--geoip"));
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let mut c = Config { admin: "0.0.0.0:9090".parse().unwrap(), ..Config::default() };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--admin-token"), "{e}");
        c.admin_token = Some("t".into());
        c.validate().unwrap();
    }

    #[test]
    fn api_off_loopback_needs_a_key() {
        let mut c = Config { api: Some("0.0.0.0:9091".parse().unwrap()), ..Config::default() };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--api-key"), "{e}");
        c.api_keys = vec!["orders=0123456789abcdef".parse().unwrap()];
        c.validate().unwrap();
        c.api_keys.push("orders=fedcba9876543210".parse().unwrap());
        assert!(c.validate().unwrap_err().to_string().contains("given twice"));
    }

    #[test]
    fn duplicate_nodes_and_zero_limits_are_refused() {
        let mut c = Config {
            nodes: vec!["a=127.0.0.1:1".parse().unwrap(), "a=127.0.0.1:2".parse().unwrap()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("node id a is given twice"));
        c.nodes.pop();
        c.max_tries = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--max-tries"));
    }
}
