//! Lookups per second of `GeoDb::lookup` on one thread, over a generated database with a few
//! thousand networks. Run: `cargo run --release -p geoip --example lookup_bench`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use geoip::GeoDb;
use geoip::testdb::{self, Layout};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const COUNTRIES: [&str; 12] =
    ["DE", "US", "FR", "JP", "BR", "IN", "GB", "NL", "SE", "AU", "CA", "ZA"];
const V4_NETWORKS: usize = 4_000;
const V6_NETWORKS: usize = 1_000;
const LOOKUPS: u32 = 2_000_000;

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut networks: Vec<(IpNet, &str)> = Vec::new();
    for i in 0..V4_NETWORKS {
        let len = 12 + (rng.next() % 13) as u8; // /12 .. /24
        let net = Ipv4Net::new(Ipv4Addr::from_bits(rng.next() as u32), len)?.trunc();
        networks.push((net.into(), COUNTRIES[i % COUNTRIES.len()]));
    }
    for i in 0..V6_NETWORKS {
        let len = 20 + (rng.next() % 29) as u8; // /20 .. /48
        let addr = Ipv6Addr::from_bits((0x2000u128 << 112) | (u128::from(rng.next()) << 48));
        networks.push((Ipv6Net::new(addr, len)?.trunc().into(), COUNTRIES[i % COUNTRIES.len()]));
    }

    let dir = std::env::temp_dir().join(format!("geoip-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench.mmdb");
    testdb::write(&path, &networks, Layout::Country)?;
    let size = std::fs::metadata(&path)?.len();
    let db = GeoDb::open(&path)?;
    println!("database: {} networks, {size} bytes ({})", networks.len(), db.database_type());

    // Half the probes land inside a known network (hits), half are random (mostly misses).
    let probes: Vec<(&str, Vec<IpAddr>)> = vec![
        ("ipv4", v4_probes(&mut rng, &networks)),
        ("ipv4-mapped ipv6", v4_probes(&mut rng, &networks).into_iter().map(map_v4).collect()),
        ("ipv6", v6_probes(&mut rng, &networks)),
    ];
    for (name, ips) in &probes {
        let mut hits = 0u32;
        let start = Instant::now();
        for i in 0..LOOKUPS {
            let ip = ips[i as usize % ips.len()];
            hits += u32::from(black_box(db.lookup(black_box(ip))).is_some());
        }
        let elapsed = start.elapsed();
        let rate = f64::from(LOOKUPS) / elapsed.as_secs_f64();
        println!(
            "{name:>17}: {LOOKUPS} lookups in {elapsed:.2?} = {:.2} M lookups/s, {:.0} ns each, {:.0}% hits",
            rate / 1e6,
            elapsed.as_nanos() as f64 / f64::from(LOOKUPS),
            f64::from(hits) * 100.0 / f64::from(LOOKUPS)
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn v4_probes(rng: &mut Rng, networks: &[(IpNet, &str)]) -> Vec<IpAddr> {
    let v4: Vec<Ipv4Net> = networks
        .iter()
        .filter_map(|(net, _)| if let IpNet::V4(net) = net { Some(*net) } else { None })
        .collect();
    (0..4096)
        .map(|i| {
            let random = rng.next() as u32;
            if i % 2 == 0 {
                let net = v4[random as usize % v4.len()];
                IpAddr::V4(Ipv4Addr::from_bits(
                    net.network().to_bits() | (random & !net.netmask().to_bits()),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from_bits(random))
            }
        })
        .collect()
}

fn v6_probes(rng: &mut Rng, networks: &[(IpNet, &str)]) -> Vec<IpAddr> {
    let v6: Vec<Ipv6Net> = networks
        .iter()
        .filter_map(|(net, _)| if let IpNet::V6(net) = net { Some(*net) } else { None })
        .collect();
    (0..4096)
        .map(|i| {
            let random = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            if i % 2 == 0 {
                let net = v6[random as usize % v6.len()];
                IpAddr::V6(Ipv6Addr::from_bits(
                    net.network().to_bits() | (random & !net.netmask().to_bits()),
                ))
            } else {
                IpAddr::V6(Ipv6Addr::from_bits((0x2000u128 << 112) | (random >> 16)))
            }
        })
        .collect()
}

fn map_v4(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}
