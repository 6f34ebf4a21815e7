//! Helpers for the geoip tests: a scratch directory removed on drop, and the usual networks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::IpNet;

/// A fresh directory under the system temp dir, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "geoip-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn net(s: &str) -> IpNet {
    s.parse().expect("network")
}

/// The fleet's test map: two loopback ranges and one IPv6 range.
pub fn fleet_networks() -> Vec<(IpNet, &'static str)> {
    vec![
        (net("127.1.0.0/16"), "DE"),
        (net("127.2.0.0/16"), "US"),
        (net("2001:db8:1::/48"), "FR"),
        (net("10.0.0.0/8"), "JP"),
        (net("10.1.0.0/16"), "br"),
    ]
}

pub fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("ip address")
}
