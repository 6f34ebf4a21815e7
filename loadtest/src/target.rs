//! Where the client connects and from where: the `ws://` or `wss://` URL (loopback only: this tool
//! loads the machine it runs on, never someone else's) and the `--src-ips` range that
//! spreads client sockets over many loopback source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};

use crate::dialect::Dialect;

/// A parsed `ws://HOST:PORT/PATH?QUERY` (or `wss://`) on 127.0.0.0/8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// `wss://`: TLS, with the host as written kept for the certificate check.
    pub tls: bool,
    pub host: String,
    /// Path and query as given, e.g. `/ws`.
    pub path: String,
}

fn loopback(ip: Ipv4Addr, what: &str) -> anyhow::Result<Ipv4Addr> {
    if !ip.is_loopback() {
        bail!("{what} {ip} is not in 127.0.0.0/8: loadtest only talks to this machine");
    }
    Ok(ip)
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (tls, rest) = match url.strip_prefix("wss://") {
            Some(rest) => (true, rest),
            None => (
                false,
                url.strip_prefix("ws://")
                    .with_context(|| format!("url {url:?}: only ws:// and wss:// are supported"))?,
            ),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        let (host, port) = authority
            .rsplit_once(':')
            .with_context(|| format!("url {url:?}: needs an explicit port"))?;
        let port: u16 = port.parse().with_context(|| format!("url {url:?}: port"))?;
        let ip = match host {
            "localhost" => Ipv4Addr::LOCALHOST,
            h => h.parse().with_context(|| format!("url {url:?}: host must be an IPv4 address"))?,
        };
        let ip = loopback(ip, "url host")?;
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        Ok(Self { addr: SocketAddr::new(IpAddr::V4(ip), port), tls, host: host.to_owned(), path })
    }

    /// The request URL one connection sends.
    pub fn request_url(&self, dialect: Dialect, room: &str, user: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let authority = format!("{}:{}", self.host, self.addr.port());
        match dialect {
            Dialect::Native => {
                let sep = if self.path.contains('?') { '&' } else { '?' };
                format!("{scheme}://{authority}{}{sep}room={room}&user={user}", self.path)
            }
            Dialect::Socketio => {
                // Keep a custom Socket.IO path; the Engine.IO query is always ours.
                let path = self.path.split('?').next().unwrap_or_default();
                let path = if path.starts_with("/socket.io") { path } else { "/socket.io/" };
                format!("{scheme}://{authority}{path}?EIO=4&transport=websocket")
            }
            // The app key and protocol query come from `--pusher-app` (see cli), as the path.
            Dialect::Pusher => format!("{scheme}://{authority}{}", self.path),
        }
    }
}

/// Parses `--src-ips`: `A-B` (an inclusive IPv4 range) or `A,B,C`, all in 127.0.0.0/8.
pub fn parse_src_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    const MAX_ADDRS: u32 = 1 << 16;
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().with_context(|| format!("--src-ips {part:?}"))?;
            let b: Ipv4Addr = b.trim().parse().with_context(|| format!("--src-ips {part:?}"))?;
            let (a, b) = (u32::from(loopback(a, "source")?), u32::from(loopback(b, "source")?));
            if b < a || b - a >= MAX_ADDRS {
                bail!("--src-ips {part:?}: need A <= B and at most {MAX_ADDRS} addresses");
            }
            out.extend((a..=b).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
        } else {
            let ip: Ipv4Addr = part.parse().with_context(|| format!("--src-ips {part:?}"))?;
            out.push(IpAddr::V4(loopback(ip, "source")?));
        }
    }
    if out.is_empty() {
        bail!("--src-ips {spec:?} names no address");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls_only() {
        let t = Target::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            t.request_url(Dialect::Native, "r", "u"),
            "ws://127.0.0.1:8080/ws?room=r&user=u"
        );
        assert_eq!(
            t.request_url(Dialect::Socketio, "r", "u"),
            "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket"
        );
        let sio = Target::parse("ws://127.0.0.1:3000/socket.io/").unwrap();
        assert_eq!(
            sio.request_url(Dialect::Socketio, "r", "u"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(Target::parse("ws://localhost:9").unwrap().path, "/ws");
        assert!(Target::parse("ws://10.0.0.1:80/ws").is_err());
        let tls = Target::parse("wss://localhost:8443/ws").unwrap();
        assert!(tls.tls);
        assert_eq!(
            tls.request_url(Dialect::Native, "r", "u"),
            "wss://localhost:8443/ws?room=r&user=u"
        );
        assert!(Target::parse("http://127.0.0.1:80/ws").is_err());
        assert!(Target::parse("ws://example.com:80/ws").is_err());
        assert!(Target::parse("ws://127.0.0.1/ws").is_err());
    }

    #[test]
    fn parses_source_ranges() {
        let ips = parse_src_ips("127.0.0.2-127.0.0.254").unwrap();
        assert_eq!(ips.len(), 253);
        assert_eq!(ips[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(parse_src_ips("127.0.0.5,127.0.1.1").unwrap().len(), 2);
        assert!(parse_src_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_src_ips("192.168.0.1").is_err());
        assert!(parse_src_ips("").is_err());
    }
}
