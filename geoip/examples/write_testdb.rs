//! Writes a small country database for benchmarks and manual tests:
//! `write_testdb OUT.mmdb 127.1.0.0/16=DE 127.2.0.0/16=US ...` (MaxMind Country layout).

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: write_testdb OUT.mmdb CIDR=CC ...");
        std::process::exit(2);
    };
    let pairs: Vec<(String, String)> = args
        .map(|a| {
            let (net, cc) = a.split_once('=').unwrap_or_else(|| {
                eprintln!("{a:?} is not CIDR=CC");
                std::process::exit(2)
            });
            (net.to_string(), cc.to_string())
        })
        .collect();
    let nets: Vec<(ipnet::IpNet, &str)> = pairs
        .iter()
        .map(|(n, c)| {
            let net = n.parse().unwrap_or_else(|e| {
                eprintln!("{n}: {e}");
                std::process::exit(2)
            });
            (net, c.as_str())
        })
        .collect();
    if let Err(e) = geoip::testdb::write(&out, &nets, geoip::testdb::Layout::Country) {
        eprintln!("{out}: {e}");
        std::process::exit(1);
    }
}
