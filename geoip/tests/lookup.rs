//! Lookups and errors on databases written by `geoip::testdb`.

mod common;

use common::{Scratch, fleet_networks, ip, net};
use geoip::testdb::{self, Layout, Tree};
use geoip::{Error, GeoDb};

fn code(db: &GeoDb, addr: &str) -> Option<String> {
    db.lookup(ip(addr)).map(|c| c.to_string())
}

fn open(scratch: &Scratch, layout: Layout) -> GeoDb {
    let path = scratch.path("fleet.mmdb");
    testdb::write(&path, &fleet_networks(), layout).unwrap();
    GeoDb::open(&path).unwrap()
}

#[test]
fn ipv4_ipv6_and_mapped_hits_in_both_layouts() {
    for layout in [Layout::Country, Layout::Flat] {
        let scratch = Scratch::new();
        let db = open(&scratch, layout);
        assert_eq!(code(&db, "127.1.2.3").as_deref(), Some("DE"), "{layout:?}");
        assert_eq!(code(&db, "127.2.255.254").as_deref(), Some("US"), "{layout:?}");
        assert_eq!(code(&db, "2001:db8:1:ffff::1").as_deref(), Some("FR"), "{layout:?}");
        assert_eq!(code(&db, "::ffff:127.1.0.1").as_deref(), Some("DE"), "{layout:?}");
        assert_eq!(code(&db, "::ffff:127.2.0.1").as_deref(), Some("US"), "{layout:?}");
        // The more specific network wins, and codes come back uppercase.
        assert_eq!(code(&db, "10.2.0.1").as_deref(), Some("JP"), "{layout:?}");
        assert_eq!(code(&db, "10.1.0.1").as_deref(), Some("BR"), "{layout:?}");
        assert_eq!(db.generation(), 0);
    }
}

#[test]
fn misses_are_none() {
    let scratch = Scratch::new();
    let db = open(&scratch, Layout::Country);
    for addr in ["127.0.0.1", "127.3.0.1", "192.0.2.1", "::1", "2001:db8:2::1", "::ffff:8.8.8.8"] {
        assert_eq!(code(&db, addr), None, "{addr}");
    }
}

#[test]
fn ipv4_only_tree_answers_ipv4_and_mapped_and_misses_ipv6() {
    let scratch = Scratch::new();
    let path = scratch.path("v4.mmdb");
    let nets = [(net("127.1.0.0/16"), "DE"), (net("0.0.0.0/1"), "US")];
    std::fs::write(&path, testdb::encode(&nets, Layout::Flat, Tree::V4).unwrap()).unwrap();
    let db = GeoDb::open(&path).unwrap();
    assert_eq!(code(&db, "127.1.0.9").as_deref(), Some("DE"));
    assert_eq!(code(&db, "127.9.0.9").as_deref(), Some("US"));
    assert_eq!(code(&db, "::ffff:127.1.0.9").as_deref(), Some("DE"));
    assert_eq!(code(&db, "200.1.1.1"), None);
    assert_eq!(code(&db, "2001:db8::1"), None);

    let err = testdb::encode(&[(net("::/0"), "DE")], Layout::Flat, Tree::V4).unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err}");
}

#[test]
fn whole_space_networks() {
    let scratch = Scratch::new();
    let path = scratch.path("all.mmdb");
    testdb::write(&path, &[(net("::/0"), "NL"), (net("0.0.0.0/0"), "SE")], Layout::Country)
        .unwrap();
    let db = GeoDb::open(&path).unwrap();
    assert_eq!(code(&db, "1.2.3.4").as_deref(), Some("SE"));
    assert_eq!(code(&db, "::ffff:1.2.3.4").as_deref(), Some("SE"));
    assert_eq!(code(&db, "2a00::1").as_deref(), Some("NL"));
}

/// The files must be valid for any MaxMind reader, not only for our lookup path.
#[test]
fn written_files_pass_the_reference_reader() {
    let scratch = Scratch::new();
    let path = scratch.path("fleet.mmdb");
    testdb::write(&path, &fleet_networks(), Layout::Country).unwrap();
    let reader = maxminddb::Reader::open_readfile(&path).unwrap();
    reader.verify().unwrap();
    let record = reader.lookup(ip("127.1.0.1")).unwrap();
    let country: maxminddb::geoip2::Country = record.decode().unwrap().unwrap();
    assert_eq!(country.country.iso_code, Some("DE"));
    // The alias MaxMind databases carry: IPv4-mapped addresses reach the IPv4 subtree.
    let mapped = reader.lookup(ip("::ffff:127.2.0.1")).unwrap();
    let country: maxminddb::geoip2::Country = mapped.decode().unwrap().unwrap();
    assert_eq!(country.country.iso_code, Some("US"));
    assert_eq!(reader.metadata().ip_version, 6);
}

#[test]
fn bad_country_codes_are_rejected() {
    let err = testdb::encode(&[(net("127.0.0.0/8"), "DEU")], Layout::Flat, Tree::V6).unwrap_err();
    assert!(err.to_string().contains("\"DEU\""), "{err}");
}

#[test]
fn missing_file_is_an_error_naming_the_path() {
    let scratch = Scratch::new();
    let path = scratch.path("absent.mmdb");
    let err = GeoDb::open(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("geoip database "), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn corrupt_files_are_errors_naming_the_path() {
    let scratch = Scratch::new();
    let good = testdb::encode(&fleet_networks(), Layout::Country, Tree::V6).unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("empty.mmdb", Vec::new()),
        ("text.mmdb", b"<html>404 not found</html>".to_vec()),
        // Metadata claims more tree than the file holds: a truncated download.
        ("truncated.mmdb", good[good.len() / 2..].to_vec()),
    ];
    for (name, bytes) in cases {
        let path = scratch.path(name);
        std::fs::write(&path, bytes).unwrap();
        let err = GeoDb::open(&path).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{name}: {err:?}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}
