//! Connection admission on the public listener: a cap on open client connections (set
//! below the open-file limit, since a proxied client costs two descriptors) and an optional
//! cap per client IP. A guard held for the connection's whole life, tunnel included, gives
//! the slot back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::{Metrics, Refusal};

#[derive(Debug)]
pub(crate) struct Limits {
    max: usize,
    per_ip: usize,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
}

/// One admitted client connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Limits {
    /// `per_ip` 0 means no per-IP cap.
    pub(crate) fn new(max: usize, per_ip: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { max, per_ip, open: AtomicUsize::new(0), by_ip: Mutex::default(), metrics })
    }

    /// Takes a slot for a client at `ip`, or says which cap it hit.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::MaxConnections);
        }
        if self.per_ip > 0 {
            let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = by_ip.entry(ip).or_default();
            if *n >= self.per_ip {
                drop(by_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        self.metrics.connections.inc();
        Ok(ConnGuard { limits: self.clone(), ip })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let l = &self.limits;
        if l.per_ip > 0 {
            let mut by_ip = l.by_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
        l.open.fetch_sub(1, Ordering::AcqRel);
        l.metrics.connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_slots_come_back() {
        let l = Limits::new(3, 2, Arc::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = l.admit(a).unwrap();
        let _g2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refusal::PerIp);
        let _g3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refusal::MaxConnections);
        drop(g1);
        assert_eq!(l.open(), 2);
        let _g4 = l.admit(a).unwrap();
        assert_eq!(l.metrics.connections.get(), 3);
    }

    #[test]
    fn no_per_ip_cap_when_zero() {
        let l = Limits::new(100, 0, Arc::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let guards: Vec<_> = (0..100).map(|_| l.admit(a).unwrap()).collect();
        assert_eq!(guards.len(), 100);
        assert!(l.by_ip.lock().unwrap().is_empty());
    }
}
