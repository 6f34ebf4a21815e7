//! Writes small MaxMind DB files (search tree, data section, metadata, per the format spec at
//! <https://maxmind.github.io/MaxMind-DB/>) so tests can give address ranges a country,
//! e.g. 127.1.0.0/16 -> DE and 127.2.0.0/16 -> US for clients that bind loopback addresses.
//! Part of the normal library so other crates' tests can use it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net};

use crate::{Country, Error};

/// How a record spells its country, matching the databases the router reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `{"country": {"iso_code": "DE"}}`: GeoLite2-Country, GeoIP2-Country, DB-IP country lite.
    Country,
    /// `{"country_code": "DE"}`: the free ip-location-db country databases.
    Flat,
}

/// Which search tree to write: real databases are IPv6 trees with IPv4 under `::/96`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tree {
    /// 32-bit tree (`ip_version` 4); IPv6 networks are rejected.
    V4,
    /// 128-bit tree (`ip_version` 6): IPv4 networks go under `::/96`, which `::ffff:0:0/96`
    /// aliases, as in MaxMind's own databases.
    #[default]
    V6,
}

/// Writes an IPv6-tree database mapping each network to a country (more specific networks
/// win; among equal ones, the later). The file is replaced atomically (write + rename), so a
/// watching [`GeoDb`](crate::GeoDb) never reads half a file.
///
/// ```
/// # fn main() -> Result<(), geoip::Error> {
/// # let dir = std::env::temp_dir().join(format!("geoip-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).map_err(|source| geoip::Error::Io { path: dir.clone(), source })?;
/// let path = dir.join("test.mmdb");
/// let nets = [("127.1.0.0/16".parse().unwrap(), "DE"), ("127.2.0.0/16".parse().unwrap(), "US")];
/// geoip::testdb::write(&path, &nets, geoip::testdb::Layout::Country)?;
/// let db = geoip::GeoDb::open(&path)?;
/// assert_eq!(db.lookup("127.1.2.3".parse().unwrap()).map(|c| c.to_string()), Some("DE".into()));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
pub fn write(
    path: impl AsRef<Path>,
    networks: &[(IpNet, &str)],
    layout: Layout,
) -> Result<(), Error> {
    let path = path.as_ref();
    let bytes = encode(networks, layout, Tree::V6)?;
    let mut tmp = path.as_os_str().to_owned();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    tmp.push(format!(".tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|source| Error::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

/// The bytes of a database, for callers that want an IPv4-only tree or to corrupt a file on
/// purpose. Errors on a country that is not two letters or an IPv6 network in a [`Tree::V4`].
pub fn encode(networks: &[(IpNet, &str)], layout: Layout, tree: Tree) -> Result<Vec<u8>, Error> {
    let mut data = Vec::new();
    let mut offsets: HashMap<Country, u32> = HashMap::new();
    let mut entries = Vec::with_capacity(networks.len());
    for &(net, code) in networks {
        let country = Country::new(code).ok_or_else(|| Error::Country(code.to_owned()))?;
        let offset = *offsets.entry(country).or_insert_with(|| {
            let offset = data.len() as u32;
            encode_record(&mut data, layout, country);
            offset
        });
        entries.push((tree_key(net, tree)?, Record::Data(offset)));
    }
    // Shorter prefixes first, so a more specific network splits a wider one instead of being
    // overwritten by it; the sort is stable, so the later of two equal networks wins.
    entries.sort_by_key(|((_, depth), _)| *depth);

    let mut trie = Trie::new(tree);
    for ((bits, depth), record) in entries {
        trie.insert(bits, depth, record);
    }
    if tree == Tree::V6 {
        let ipv4 = trie.get(0, 96);
        if ipv4 != Record::Empty {
            trie.insert(0xffff << 32, 96, ipv4);
        }
    }
    let record_size = trie.smallest_record_size(data.len());
    Ok(trie.into_file(tree, layout, &data, record_size))
}

/// A network as the leading `depth` bits of a `width`-bit key for the chosen tree.
fn tree_key(net: IpNet, tree: Tree) -> Result<(u128, u8), Error> {
    let v4 = |net: Ipv4Net| (u128::from(net.network().to_bits()), net.prefix_len());
    match (net, tree) {
        (IpNet::V4(net), Tree::V4) => Ok(v4(net)),
        (IpNet::V4(net), Tree::V6) => {
            let (bits, len) = v4(net);
            Ok((bits, len + 96))
        }
        (IpNet::V6(v6), Tree::V6) => {
            // An IPv4-mapped network is written where IPv4 lives, so the alias stays intact.
            if v6.prefix_len() >= 96
                && let IpAddr::V4(addr) = IpAddr::V6(v6.network()).to_canonical()
                && let Ok(net) = Ipv4Net::new(addr, v6.prefix_len() - 96)
            {
                let (bits, len) = v4(net);
                return Ok((bits, len + 96));
            }
            Ok((v6.network().to_bits(), v6.prefix_len()))
        }
        (IpNet::V6(_), Tree::V4) => {
            Err(Error::Network { net, reason: "IPv6 network in an IPv4-only database" })
        }
    }
}

/// One half of a search-tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// No data for this range.
    Empty,
    /// Index of the next node.
    Node(u32),
    /// Offset of the record in the data section.
    Data(u32),
}

/// The search tree; node 0 is the root. The `::ffff:0:0/96` alias makes it a DAG, which the
/// format allows since nodes are addressed by number.
struct Trie {
    nodes: Vec<[Record; 2]>,
    width: u8,
}

impl Trie {
    fn new(tree: Tree) -> Self {
        let width = match tree {
            Tree::V4 => 32,
            Tree::V6 => 128,
        };
        Self { nodes: vec![[Record::Empty; 2]], width }
    }

    fn bit(&self, bits: u128, index: u8) -> usize {
        ((bits >> (self.width - 1 - index)) & 1) as usize
    }

    fn insert(&mut self, bits: u128, depth: u8, record: Record) {
        if depth == 0 {
            self.nodes[0] = [record; 2];
            return;
        }
        let mut node = 0;
        for index in 0..depth - 1 {
            let side = self.bit(bits, index);
            node = match self.nodes[node][side] {
                Record::Node(next) => next as usize,
                leaf => {
                    // Split a wider network (or an empty range) so both halves keep its value.
                    let next = self.nodes.len();
                    self.nodes.push([leaf; 2]);
                    self.nodes[node][side] = Record::Node(next as u32);
                    next
                }
            };
        }
        let side = self.bit(bits, depth - 1);
        self.nodes[node][side] = record;
    }

    /// The record that covers the first `depth` bits of `bits`.
    fn get(&self, bits: u128, depth: u8) -> Record {
        let mut node = 0;
        for index in 0..depth {
            match self.nodes[node][self.bit(bits, index)] {
                Record::Node(next) if index + 1 < depth => node = next as usize,
                record => return record,
            }
        }
        Record::Empty
    }

    /// 24-bit records while every record value fits, else 32 (28 saves nothing worth it here).
    fn smallest_record_size(&self, data_len: usize) -> u16 {
        let max_value = (self.nodes.len() + DATA_SEPARATOR + data_len) as u64;
        if max_value < 1 << 24 { 24 } else { 32 }
    }

    fn into_file(self, tree: Tree, layout: Layout, data: &[u8], record_size: u16) -> Vec<u8> {
        let node_count = self.nodes.len() as u64;
        let value = |record: Record| -> u32 {
            match record {
                Record::Empty => node_count as u32,
                Record::Node(next) => next,
                Record::Data(offset) => node_count as u32 + DATA_SEPARATOR as u32 + offset,
            }
        };

        let mut out = Vec::with_capacity(self.nodes.len() * 8 + data.len() + 512);
        for [left, right] in &self.nodes {
            for record in [*left, *right] {
                let bytes = value(record).to_be_bytes();
                out.extend_from_slice(if record_size == 24 { &bytes[1..] } else { &bytes });
            }
        }
        out.extend_from_slice(&[0; DATA_SEPARATOR]);
        out.extend_from_slice(data);
        out.extend_from_slice(METADATA_MARKER);

        let build_epoch =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (database_type, ip_version) = match (layout, tree) {
            (Layout::Country, Tree::V4) => ("roomfleet-Test-Country-IPv4", 4),
            (Layout::Country, Tree::V6) => ("roomfleet-Test-Country", 6),
            (Layout::Flat, Tree::V4) => ("roomfleet-Test-country_code-IPv4", 4),
            (Layout::Flat, Tree::V6) => ("roomfleet-Test-country_code", 6),
        };
        let m = &mut out;
        map(m, 9);
        string(m, "binary_format_major_version");
        uint(m, UINT16, 2);
        string(m, "binary_format_minor_version");
        uint(m, UINT16, 0);
        string(m, "build_epoch");
        uint(m, UINT64, build_epoch);
        string(m, "database_type");
        string(m, database_type);
        string(m, "description");
        map(m, 1);
        string(m, "en");
        string(m, "roomfleet test database");
        string(m, "ip_version");
        uint(m, UINT16, ip_version);
        string(m, "languages");
        array(m, 1);
        string(m, "en");
        string(m, "node_count");
        uint(m, UINT32, node_count);
        string(m, "record_size");
        uint(m, UINT16, u64::from(record_size));
        out
    }
}

/// Zero bytes between the search tree and the data section.
const DATA_SEPARATOR: usize = 16;
/// Starts the metadata section; readers search for its last occurrence.
const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";

const UTF8_STRING: u8 = 2;
const UINT16: u8 = 5;
const UINT32: u8 = 6;
const MAP: u8 = 7;
const UINT64: u8 = 9;
const ARRAY: u8 = 11;

fn encode_record(out: &mut Vec<u8>, layout: Layout, country: Country) {
    map(out, 1);
    match layout {
        Layout::Country => {
            string(out, "country");
            map(out, 1);
            string(out, "iso_code");
        }
        Layout::Flat => string(out, "country_code"),
    }
    string(out, country.as_str());
}

/// A field's control byte(s): type in the top three bits (or an extended-type byte),
/// size in the low five bits plus up to three size bytes.
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (size_bits, extra): (u8, Vec<u8>) = match size {
        0..29 => (size as u8, Vec::new()),
        29..285 => (29, vec![(size - 29) as u8]),
        285..65_821 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
    };
    if kind <= 7 {
        out.push(kind << 5 | size_bits);
    } else {
        out.push(size_bits);
        out.push(kind - 7);
    }
    out.extend_from_slice(&extra);
}

fn string(out: &mut Vec<u8>, value: &str) {
    control(out, UTF8_STRING, value.len());
    out.extend_from_slice(value.as_bytes());
}

fn map(out: &mut Vec<u8>, pairs: usize) {
    control(out, MAP, pairs);
}

fn array(out: &mut Vec<u8>, items: usize) {
    control(out, ARRAY, items);
}

/// Unsigned integers are big-endian with leading zero bytes dropped.
fn uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = (value.leading_zeros() / 8) as usize;
    control(out, kind, bytes.len() - skip);
    out.extend_from_slice(&bytes[skip..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_follow_the_spec() {
        let mut out = Vec::new();
        control(&mut out, UTF8_STRING, 2);
        assert_eq!(out, [0x42]);
        out.clear();
        control(&mut out, UTF8_STRING, 300);
        assert_eq!(out, [0x5e, 0x00, 15]);
        out.clear();
        control(&mut out, ARRAY, 1);
        assert_eq!(out, [0x01, 0x04]);
        out.clear();
        uint(&mut out, UINT16, 0);
        assert_eq!(out, [0xa0]);
    }

    #[test]
    fn thirty_two_bit_records_read_back() {
        let mut trie = Trie::new(Tree::V6);
        let mut data = Vec::new();
        encode_record(&mut data, Layout::Flat, Country::new("DE").unwrap());
        let (bits, depth) = tree_key("127.1.0.0/16".parse().unwrap(), Tree::V6).unwrap();
        trie.insert(bits, depth, Record::Data(0));
        let bytes = trie.into_file(Tree::V6, Layout::Flat, &data, 32);
        let reader = maxminddb::Reader::from_source(bytes).unwrap();
        assert_eq!(reader.metadata().record_size, 32);
        let found = reader.lookup("127.1.9.9".parse().unwrap()).unwrap();
        let code: Option<&str> =
            found.decode_path(&[maxminddb::PathElement::Key("country_code")]).unwrap();
        assert_eq!(code, Some("DE"));
    }

    #[test]
    fn insert_splits_wider_networks() {
        let mut trie = Trie::new(Tree::V4);
        trie.insert(0, 1, Record::Data(7));
        trie.insert(0x4000_0000, 2, Record::Data(9));
        assert_eq!(trie.get(0, 2), Record::Data(7));
        assert_eq!(trie.get(0x4000_0000, 2), Record::Data(9));
        assert_eq!(trie.get(0x8000_0000, 1), Record::Empty);
    }
}
