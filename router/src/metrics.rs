//! The router's Prometheus metrics: plain atomics the proxy, health checker and membership
//! update, and their label sets, rendered with per-node samples on `GET /metrics`. A leaf:
//! it imports no other router module; the others hand it plain numbers.

use std::sync::Arc;

use shared::metrics::{Counter, Exposition, Gauge, Histogram};

/// Why a talk with a node failed before its `101`; the label of `router_proxy_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// TCP connect refused, reset or unresolvable.
    Connect,
    /// No connection or no answer within the configured timeout.
    Timeout,
    /// The node answered 5xx (at its connection limit, draining, broken).
    Refused,
    /// The node spoke broken HTTP or answered an upgrade with something else than 101.
    Protocol,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::Connect, Cause::Timeout, Cause::Refused, Cause::Protocol];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Connect => "connect",
            Cause::Timeout => "timeout",
            Cause::Refused => "node_5xx",
            Cause::Protocol => "protocol",
        }
    }
}

/// Why `geo` did not place by country; the label of `router_geo_fallbacks_total`.
pub const GEO_FALLBACKS: [&str; 2] = ["unknown_country", "pool_unavailable"];

/// One member's numbers for `/metrics`, read off the current view.
#[derive(Debug, Clone, Copy)]
pub struct NodeSample<'a> {
    pub id: &'a str,
    /// Tunnels open to it now.
    pub connections: i64,
    /// Upgrades it answered with 101.
    pub upgrades: u64,
    /// Healthy, ready and not drained: placed on the ring.
    pub up: bool,
}

/// How an upgrade request on `/ws` ended; the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A node answered 101; the tunnel is open.
    Ok,
    /// Refused by the router before placement: bad IDs, not an upgrade.
    BadRequest,
    /// A node answered 4xx, passed back to the client as is.
    NodeRejected,
    /// No eligible node on the ring.
    NoNode,
    /// Every candidate tried failed (unreachable, 5xx, timeout).
    Failed,
    /// Refused by the token check (401/403) before placement.
    Unauthorized,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::BadRequest,
        Outcome::NodeRejected,
        Outcome::NoNode,
        Outcome::Failed,
        Outcome::Unauthorized,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::NodeRejected => "node_rejected",
            Outcome::NoNode => "no_node",
            Outcome::Failed => "failed",
            Outcome::Unauthorized => "unauthorized",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How one offer of a client to a node ended; the label of `router_handoffs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffOutcome {
    /// Taken by a node in this process.
    InProcess,
    /// Taken by a node process over its Unix socket; the router holds nothing of it now.
    Unix,
    /// Given back (draining, full, starting): the next candidate or the proxy takes it.
    Refused,
    /// The node's socket could not be reached: the next candidate or the proxy takes it.
    Unreachable,
    /// Sent but not answered: the client is closed (the node may hold it).
    Lost,
}

impl HandoffOutcome {
    pub const ALL: [HandoffOutcome; 5] = [
        HandoffOutcome::InProcess,
        HandoffOutcome::Unix,
        HandoffOutcome::Refused,
        HandoffOutcome::Unreachable,
        HandoffOutcome::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandoffOutcome::InProcess => "in_process",
            HandoffOutcome::Unix => "unix",
            HandoffOutcome::Refused => "refused",
            HandoffOutcome::Unreachable => "unreachable",
            HandoffOutcome::Lost => "lost",
        }
    }
}

/// Why a client connection was refused before its request was served; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    PerIp,
    FdLimit,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Server API requests answered 2xx.
    pub api_ok: Counter,
    api_errors: [Counter; shared::api::CODES.len()],
    /// Inbox entries published (and acknowledged).
    pub inbox_published: Counter,
    /// Inbox entries moved to the dead-letter stream.
    pub inbox_dead: Counter,
    /// Inbox entries claimed from a silent consumer.
    pub inbox_claimed: Counter,
    /// Inbox connections lost or commands failed.
    pub inbox_errors: Counter,
    /// Client connections open now (plain HTTP and tunnels).
    pub connections: Gauge,
    /// Upgraded tunnels open now.
    pub tunnels: Gauge,
    upgrades: [Counter; 6],
    /// Time from the client's request to the node's 101, retries included.
    pub upgrade_seconds: Histogram,
    /// Bytes spliced client -> node, counted as they pass.
    pub bytes_to_node: Counter,
    /// Bytes spliced node -> client, counted as they pass.
    pub bytes_to_client: Counter,
    proxy_errors: [Counter; 4],
    /// Upgrades that went to a further candidate after one failed.
    pub retries: Counter,
    pub refused_max_connections: Counter,
    pub refused_per_ip: Counter,
    pub refused_fd_limit: Counter,
    pub health_down: Counter,
    pub health_up: Counter,
    pub probe_failures: Counter,
    /// Probe rounds finished: an operator (or a test) sees the checker is running.
    pub probe_rounds: Counter,
    /// The ring generation in use; membership sets it on every rebuild.
    pub ring_generation: Arc<Gauge>,
    /// Full reads of the Redis node registry (`--discovery redis`).
    pub registry_syncs: Counter,
    /// Registry connections or reads that failed (the last membership is kept).
    pub registry_errors: Counter,
    /// `geo` placements by country (at most the ~250 ISO codes).
    geo_countries: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// `geo` placements that fell back, by [`GEO_FALLBACKS`] reason.
    geo_fallbacks: [Counter; 2],
    /// Upgrades refused by token checks, by [`shared::auth::AuthError::REASONS`] label.
    auth_refused: [Counter; shared::auth::AuthError::REASONS.len()],
    /// Requests whose header block was over `--max-header-bytes` (answered 431).
    pub refused_header_too_large: Counter,
    handoffs: [Counter; HandoffOutcome::ALL.len()],
}

impl Metrics {
    /// Counts one `geo` placement of a client by country, or its fallback reason.
    pub fn geo(&self, country: Option<&str>, fallback: Option<&str>) {
        if let Some(i) = fallback.and_then(|f| GEO_FALLBACKS.iter().position(|x| *x == f)) {
            self.geo_fallbacks[i].inc();
        }
        if let Some(c) = country {
            let mut m = self.geo_countries.lock().unwrap_or_else(|e| e.into_inner());
            *m.entry(c.to_owned()).or_default() += 1;
        }
    }

    /// Counts one upgrade refused by the token check.
    pub fn auth_refused(&self, e: &shared::auth::AuthError) {
        if let Some(i) = shared::auth::AuthError::REASONS.iter().position(|r| *r == e.reason()) {
            self.auth_refused[i].inc();
        }
    }

    pub fn auth_refusals(&self, reason: &str) -> u64 {
        shared::auth::AuthError::REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.auth_refused[i].get())
    }

    pub fn upgrade(&self, o: Outcome) {
        self.upgrades[o.index()].inc();
    }

    pub fn upgrades(&self, o: Outcome) -> u64 {
        self.upgrades[o.index()].get()
    }

    /// A server API refusal, by its code.
    pub fn api_error(&self, code: &str) {
        if let Some(i) = shared::api::CODES.iter().position(|c| *c == code) {
            self.api_errors[i].inc();
        }
    }

    pub fn handoff(&self, o: HandoffOutcome) {
        self.handoffs[o as usize].inc();
    }

    pub fn handoffs(&self, o: HandoffOutcome) -> u64 {
        self.handoffs[o as usize].get()
    }

    pub fn proxy_error(&self, c: Cause) {
        self.proxy_errors[c as usize].inc();
    }

    pub fn proxy_errors(&self, c: Cause) -> u64 {
        self.proxy_errors[c as usize].get()
    }

    pub fn refused(&self, r: Refusal) {
        match r {
            Refusal::MaxConnections => self.refused_max_connections.inc(),
            Refusal::PerIp => self.refused_per_ip.inc(),
            Refusal::FdLimit => self.refused_fd_limit.inc(),
        }
    }

    /// The Prometheus text for `/metrics`: `placed` nodes on the ring, one sample a member.
    pub fn render(&self, placed: usize, nodes: &[NodeSample<'_>]) -> String {
        let mut e = Exposition::new();
        e.gauge("router_connections", "Client connections open now.", self.connections.get());
        e.gauge("router_tunnels", "Upgraded tunnels open now.", self.tunnels.get());
        e.counter("router_api_ok_total", "Server API requests answered 2xx.", &self.api_ok);
        e.counter(
            "router_inbox_published_total",
            "Redis inbox entries published and acknowledged.",
            &self.inbox_published,
        );
        e.counter(
            "router_inbox_dead_total",
            "Redis inbox entries moved to the dead-letter stream.",
            &self.inbox_dead,
        );
        e.counter(
            "router_inbox_claimed_total",
            "Redis inbox entries claimed from a router that left them pending.",
            &self.inbox_claimed,
        );
        e.counter(
            "router_inbox_errors_total",
            "Redis inbox failures (reconnected).",
            &self.inbox_errors,
        );
        e.labeled(
            "router_api_errors_total",
            "counter",
            "Server API refusals by code.",
            "code",
            shared::api::CODES.iter().zip(&self.api_errors).map(|(c, n)| (*c, n.get())),
        );
        e.labeled(
            "router_upgrades_total",
            "counter",
            "Upgrade requests on /ws by outcome.",
            "outcome",
            Outcome::ALL.iter().map(|o| (o.as_str(), self.upgrades(*o))),
        );
        e.histogram(
            "router_upgrade_seconds",
            "Time from the client's request to the node's 101, retries included.",
            &self.upgrade_seconds,
        );
        e.counter(
            "router_bytes_to_node_total",
            "Bytes spliced from clients to nodes (counted as they pass).",
            &self.bytes_to_node,
        );
        e.counter(
            "router_bytes_to_client_total",
            "Bytes spliced from nodes to clients (counted as they pass).",
            &self.bytes_to_client,
        );
        e.labeled(
            "router_proxy_errors_total",
            "counter",
            "Failed attempts to reach a node before its 101, by cause.",
            "cause",
            Cause::ALL.iter().map(|c| (c.as_str(), self.proxy_errors(*c))),
        );
        e.labeled(
            "router_handoffs_total",
            "counter",
            "Clients offered to a node instead of proxied, by outcome (in_process and unix: taken).",
            "outcome",
            HandoffOutcome::ALL.iter().map(|o| (o.as_str(), self.handoffs(*o))),
        );
        e.counter(
            "router_retries_total",
            "Upgrades sent on to the next node of the ring.",
            &self.retries,
        );
        e.labeled(
            "router_refused_total",
            "counter",
            "Client connections refused before their request was served.",
            "reason",
            [
                ("max_connections", self.refused_max_connections.get()),
                ("per_ip", self.refused_per_ip.get()),
                ("fd_limit", self.refused_fd_limit.get()),
                ("header_too_large", self.refused_header_too_large.get()),
            ],
        );
        e.labeled(
            "router_auth_refused_total",
            "counter",
            "Upgrades refused by the token check (401/403), by reason.",
            "reason",
            shared::auth::AuthError::REASONS
                .iter()
                .zip(&self.auth_refused)
                .map(|(r, n)| (*r, n.get())),
        );
        e.labeled(
            "router_health_transitions_total",
            "counter",
            "Node health changes decided by the probes.",
            "to",
            [("down", self.health_down.get()), ("up", self.health_up.get())],
        );
        e.counter("router_probe_failures_total", "Failed health probes.", &self.probe_failures);
        e.counter(
            "router_probe_rounds_total",
            "Health probe rounds finished (one probe of every node each).",
            &self.probe_rounds,
        );
        e.counter(
            "router_registry_syncs_total",
            "Full reads of the Redis node registry.",
            &self.registry_syncs,
        );
        let countries = self.geo_countries.lock().unwrap_or_else(|e| e.into_inner()).clone();
        e.labeled(
            "router_geo_placements_total",
            "counter",
            "Clients placed by the geo policy, by country.",
            "country",
            countries.iter().map(|(c, n)| (c.as_str(), *n)),
        );
        e.labeled(
            "router_geo_fallbacks_total",
            "counter",
            "Geo placements that fell back to the room hash or the whole ring, by reason.",
            "reason",
            GEO_FALLBACKS.iter().zip(&self.geo_fallbacks).map(|(r, n)| (*r, n.get())),
        );
        e.counter(
            "router_registry_errors_total",
            "Failed registry connections or reads (the last membership is kept).",
            &self.registry_errors,
        );
        e.gauge(
            "router_ring_generation",
            "Generation of the ring in use.",
            self.ring_generation.get(),
        );
        e.gauge("router_ring_nodes", "Nodes placement uses now.", placed as i64);
        let per_node = |f: &dyn Fn(&NodeSample<'_>) -> u64| {
            nodes.iter().map(|n| (n.id, f(n))).collect::<Vec<_>>()
        };
        e.labeled(
            "router_node_connections",
            "gauge",
            "Tunnels open to each node now.",
            "node",
            per_node(&|n| n.connections.max(0) as u64),
        );
        e.labeled(
            "router_node_upgrades_total",
            "counter",
            "Upgrades each node answered with 101.",
            "node",
            per_node(&|n| n.upgrades),
        );
        e.labeled(
            "router_node_up",
            "gauge",
            "1 while a node is healthy and not draining (placed on the ring).",
            "node",
            per_node(&|n| u64::from(n.up)),
        );
        e.finish()
    }
}
