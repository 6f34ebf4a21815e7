//! Country lookup for the router's `geo` placement policy: a MaxMind DB (`maxminddb`) behind an
//! atomically swapped reader, reloaded on SIGHUP or when the file changes, plus a writer of
//! small databases so tests can give loopback ranges a country.
#![forbid(unsafe_code)]

mod country;
mod db;
mod reloader;
pub mod testdb;

use std::path::PathBuf;

pub use country::Country;
pub use db::GeoDb;
pub use reloader::{DEFAULT_POLL, spawn_reloader, spawn_reloader_every};

/// Everything that can go wrong in this crate; database errors name the file, because the
/// usual cause is a wrong `--geoip` path or a half-downloaded file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read (missing, unreadable).
    #[error("geoip database {}: {source}", path.display())]
    Io {
        /// The database file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file was read but is not a usable MaxMind DB.
    #[error("geoip database {}: {source}", path.display())]
    Invalid {
        /// The database file.
        path: PathBuf,
        /// What the MaxMind DB reader rejected.
        source: maxminddb::MaxMindDbError,
    },
    /// A country code that is not two ASCII letters (configuration or test input).
    #[error("country code {0:?}: expected two ASCII letters such as \"DE\"")]
    Country(String),
    /// A network the test-database writer cannot place (an IPv6 network in an IPv4 tree).
    #[error("geoip test database: network {net}: {reason}")]
    Network {
        /// The offending network.
        net: ipnet::IpNet,
        /// Why it cannot be written.
        reason: &'static str,
    },
}
