//! Which address a client has: the TCP peer, or, when the peer is a trusted proxy, the
//! right-most untrusted address it reports in `Forwarded` (RFC 7239) or `X-Forwarded-For`.
//! A header from an untrusted peer is ignored, so clients cannot pick their own placement.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The client's address for placement and limits.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.ip().to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    // Walk the chain from the nearest hop: the first address not ours is the client.
    let chain = forwarded_chain(headers);
    let client = chain.iter().rev().find(|ip| !is_trusted(**ip, trusted));
    client.or(chain.first()).copied().unwrap_or(peer)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The addresses of `Forwarded: for=` (preferred) or else `X-Forwarded-For`, in order,
/// across repeated headers. Unparsable entries (obfuscated names, `unknown`) end the chain
/// there: nothing left of them can be trusted.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let forwarded: Vec<&str> =
        headers.get_all(http::header::FORWARDED).iter().filter_map(|v| v.to_str().ok()).collect();
    let items: Vec<Option<IpAddr>> = if !forwarded.is_empty() {
        forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|elem| {
                elem.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v.trim()))?
                })
            })
            .collect()
    } else {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| parse_node(s.trim()))
            .collect()
    };
    // Keep only the trailing run of parsable addresses.
    let tail = items.iter().rposition(Option::is_none).map_or(0, |i| i + 1);
    items[tail..].iter().flatten().map(|ip| ip.to_canonical()).collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:443"`, `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = s.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        m
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    const PEER: &str = "10.0.0.5:4000";

    #[test]
    fn untrusted_peers_cannot_choose_their_address() {
        let headers = h(&[("x-forwarded-for", "8.8.8.8")]);
        let ip = client_ip(PEER.parse().unwrap(), &headers, &nets(&["192.168.0.0/16"]));
        assert_eq!(ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        let ip = client_ip(PEER.parse().unwrap(), &headers, &[]);
        assert_eq!(ip, "10.0.0.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let t = nets(&["10.0.0.0/8"]);
        let peer = PEER.parse().unwrap();
        // The right-most untrusted address wins: a client cannot prepend a fake one.
        let headers = h(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.9")]);
        assert_eq!(client_ip(peer, &headers, &t), "1.2.3.4".parse::<IpAddr>().unwrap());
        let headers = h(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(client_ip(peer, &headers, &t), "1.2.3.4".parse::<IpAddr>().unwrap());
        let headers = h(&[("forwarded", r#"for=6.6.6.6, for="[2001:db8::7]:443";proto=https"#)]);
        assert_eq!(client_ip(peer, &headers, &t), "2001:db8::7".parse::<IpAddr>().unwrap());
        let headers = h(&[("forwarded", "for=1.2.3.4:5678;by=10.0.0.5")]);
        assert_eq!(client_ip(peer, &headers, &t), "1.2.3.4".parse::<IpAddr>().unwrap());
        let headers = h(&[("x-forwarded-for", "::ffff:1.2.3.4")]);
        assert_eq!(client_ip(peer, &headers, &t), "1.2.3.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_and_obfuscated_hops_fall_back_safely() {
        let t = nets(&["10.0.0.0/8"]);
        let peer = PEER.parse().unwrap();
        for v in ["", "nonsense", "unknown", "_hidden", "1.2.3.4.5"] {
            let headers = h(&[("x-forwarded-for", v)]);
            assert_eq!(
                client_ip(peer, &headers, &t),
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "{v:?}"
            );
        }
        // Nothing left of an unparsable hop is believed: the hop that saw it is the client.
        let headers = h(&[("x-forwarded-for", "1.2.3.4, garbage, 10.0.0.7")]);
        assert_eq!(client_ip(peer, &headers, &t), "10.0.0.7".parse::<IpAddr>().unwrap());
        let headers = h(&[("forwarded", "for=_gazonk")]);
        assert_eq!(client_ip(peer, &headers, &t), "10.0.0.5".parse::<IpAddr>().unwrap());
        // Every hop trusted: the left-most one.
        let headers = h(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(client_ip(peer, &headers, &t), "10.1.1.1".parse::<IpAddr>().unwrap());
    }
}
