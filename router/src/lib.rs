//! roomfleet's router: places every room on one ws-node of a consistent-hash ring and
//! proxies the WebSocket upgrade there. Start one with [`Router::start`] (tests run it on
//! port 0); `main.rs` only turns flags into a [`Config`] and waits for a signal.
#![forbid(unsafe_code)]

mod admin;
pub mod api;
mod client_ip;
pub mod config;
mod connect;
pub mod discovery;
mod error;
pub mod handoff;
mod head;
pub mod health;
pub mod inbox;
mod limits;
pub mod membership;
pub mod metrics;
mod node_stats;
pub mod placement;
mod plain_http;
mod proxy;
pub mod ring;
pub mod tls;
mod tunnel;
mod ui;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shared::listen::Acceptor;
use shared::shutdown::Shutdown;
use tokio_util::sync::CancellationToken;

pub use config::{Config, RouterArgs};
pub use error::{Cause, Error};
pub use handoff::InProcess;
pub use health::HealthConfig;
pub use membership::{Membership, NodeSpec, Source, View};
pub use metrics::Metrics;
pub use placement::{Placement, Policy, PolicyName};
pub use proxy::{NODE as NODE_HEADER, RING_GENERATION as RING_GENERATION_HEADER};
pub use ring::Ring;

/// A running router: its two listeners, health checker, and the handles tests and `main`
/// use. Dropping it stops accepting; [`Router::shutdown`] also waits for the tunnels.
#[derive(Debug)]
pub struct Router {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    membership: Arc<Membership>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    hard_stop: CancellationToken,
    grace: Duration,
    tls: bool,
}

impl Router {
    /// Validates `config`, binds both listeners (port 0 works) and starts serving on the
    /// current Tokio runtime.
    pub fn start(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let policy = Policy::new(config.policy, config.geoip.as_deref(), &config.pools)?;
        let listener = shared::listen::bind(config.listen, config.reuse_port)
            .map_err(|source| Error::Bind { addr: config.listen, source })?;
        let admin_listener = shared::listen::bind(config.admin, false)
            .map_err(|source| Error::Bind { addr: config.admin, source })?;
        let bound = |l: &tokio::net::TcpListener, addr| {
            l.local_addr().map_err(|source| Error::Bind { addr, source })
        };
        let proxy_addr = bound(&listener, config.listen)?;
        let admin_addr = bound(&admin_listener, config.admin)?;
        let api_listener = match config.api {
            Some(addr) => {
                let l = shared::listen::bind(addr, false)
                    .map_err(|source| Error::Bind { addr, source })?;
                let bound_at = bound(&l, addr)?;
                Some((l, bound_at))
            }
            None => None,
        };
        let api_addr = api_listener.as_ref().map(|(_, a)| *a);

        let metrics = Arc::new(Metrics::default());
        let membership = Arc::new(Membership::new(
            config.nodes.clone(),
            Source::Static,
            config.vnodes,
            metrics.ring_generation.clone(),
        ));
        let shutdown = Shutdown::new();
        let hard_stop = CancellationToken::new();
        let grace = config.shutdown_grace;
        let health = config.health;
        let discovery = config.discovery.clone();
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(
                tls::Tls::load(files.clone()).map_err(|e| Error::config(e.to_string()))?,
            )),
            None => None,
        };
        let dialer = upstream::Dialer::new(match &config.node_tls_ca {
            Some(ca) => Some(
                tls::connector(ca, "--node-tls-ca").map_err(|e| Error::config(e.to_string()))?,
            ),
            None => None,
        });
        if config.jwt.is_none() {
            tracing::warn!("auth is off (no --jwt-key): anyone may connect as any user");
        }
        let handoff = handoff::Routes::new(&config);
        let config = Arc::new(config);
        let proxy = Arc::new(proxy::Proxy {
            limits: limits::Limits::new(
                config.max_connections,
                config.max_connections_per_ip,
                metrics.clone(),
            ),
            config,
            policy,
            membership: membership.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
            tls: tls.clone(),
            dialer,
            handoff,
        });
        let t = &shutdown.tracker;
        t.spawn(proxy::serve(proxy.clone(), Acceptor::new(listener)));
        t.spawn(admin::serve(proxy.clone(), Acceptor::new(admin_listener)));
        if let Some((l, _)) = api_listener {
            t.spawn(api::serve(proxy.clone(), Acceptor::new(l)));
        }
        t.spawn(health::run(
            membership.clone(),
            metrics.clone(),
            health,
            proxy.dialer.clone(),
            shutdown.token.clone(),
        ));
        if let Policy::Geo(geo) = &proxy.policy {
            let reloader = geoip::spawn_reloader(geo.db.clone(), shutdown.token.clone());
            t.spawn(async move {
                let _ = reloader.await;
            });
        }
        if let Some(tls) = tls {
            t.spawn(tls.reload_on_sighup(shutdown.token.clone()));
        }
        if let Some(jwt) = &proxy.config.jwt {
            jwt.spawn_reloader(shutdown.token.clone());
        }
        if let Some(i) = proxy.config.inbox.clone() {
            t.spawn(inbox::run(proxy.clone(), i, shutdown.token.clone()));
        }
        if let Some(d) = discovery {
            t.spawn(discovery::run(membership.clone(), metrics.clone(), d, shutdown.token.clone()));
        }
        tracing::info!(
            listen = %proxy_addr,
            admin = %admin_addr,
            api = ?api_addr,
            nodes = membership.view().members.len(),
            generation = membership.generation(),
            "router serving"
        );
        Ok(Self {
            proxy_addr,
            admin_addr,
            api_addr,
            membership,
            metrics,
            shutdown,
            hard_stop,
            grace,
            tls: proxy.tls.is_some(),
        })
    }

    /// Where clients connect.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Whether the public listener speaks TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Where the admin API and metrics are.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where the server API is (`/api/*`), when it listens.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The node table: add, remove, drain, or sync nodes from code (a registry, tests).
    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, lets open tunnels run for the shutdown grace, then cuts the rest.
    /// True when every tunnel ended by itself.
    pub async fn shutdown(&self) -> bool {
        let clean = self.shutdown.finish(self.grace).await;
        if !clean {
            tracing::warn!("shutdown grace over: cutting the tunnels still open");
            self.hard_stop.cancel();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), self.shutdown.tracker.wait()).await;
        }
        clean
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.shutdown.token.cancel();
        self.shutdown.tracker.close();
    }
}
