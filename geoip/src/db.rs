//! `GeoDb`: the open database behind an `ArcSwap`, so lookups from any number of tasks never
//! block and a reload swaps the whole reader in one step (or leaves the old one in place).

use std::fs::File;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use maxminddb::{PathElement, Reader};

use crate::{Country, Error};

/// Where the country code sits in a record, in the order tried: GeoLite2 / GeoIP2 / DB-IP
/// country (`country.iso_code`), then the flat ip-location-db layout (`country_code`).
const CODE_PATHS: [&[PathElement<'static>]; 2] = [
    &[PathElement::Key("country"), PathElement::Key("iso_code")],
    &[PathElement::Key("country_code")],
];

/// A country database that can be shared (`Arc<GeoDb>`) and reloaded while in use.
#[derive(Debug)]
pub struct GeoDb {
    path: PathBuf,
    current: ArcSwap<Loaded>,
    /// Serializes reloads (SIGHUP and the poll may race) and remembers the file version whose
    /// load failed, so a broken file is not re-parsed on every poll.
    reloading: Mutex<Option<Stamp>>,
}

/// One loaded version of the file.
#[derive(Debug)]
struct Loaded {
    reader: Reader<Vec<u8>>,
    stamp: Stamp,
    generation: u64,
}

/// What identifies a version of the file on disk without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(meta),
        }
    }
}

impl GeoDb {
    /// Opens the database at start-up; a missing or corrupt file is an error naming the path,
    /// so a wrong `--geoip` flag stops the router before it binds.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let loaded = Loaded::open(&path, 0)?;
        Ok(Self { path, current: ArcSwap::from_pointee(loaded), reloading: Mutex::new(None) })
    }

    /// The country of `ip`, or `None` when the database has no country for it.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack listener reports) are
    /// looked up as IPv4. Lock-free; a record the reader cannot decode counts as a miss.
    pub fn lookup(&self, ip: IpAddr) -> Option<Country> {
        self.current.load().lookup(ip)
    }

    /// Re-reads the file and swaps it in for all later lookups; on error the previous
    /// database stays in use and the error (naming the path) is returned. Blocking (reads
    /// the whole file): from async code, call it through `spawn_blocking`.
    pub fn reload(&self) -> Result<(), Error> {
        let mut failed = self.reloading.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let loaded = Loaded::open(&self.path, self.generation() + 1)?;
        self.current.store(Arc::new(loaded));
        *failed = None;
        Ok(())
    }

    /// Reloads when the file's modification time, size or inode differ from the loaded
    /// version; `Ok(true)` when a new version was swapped in. A version that failed to load
    /// is not retried until the file changes again, and then reports `Ok(false)`. Replace the
    /// file by rename (as `geoipupdate` does): an in-place rewrite of the same size within the
    /// file system's timestamp granularity can go unnoticed until SIGHUP.
    pub fn reload_if_changed(&self) -> Result<bool, Error> {
        let mut failed = self.reloading.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let meta = std::fs::metadata(&self.path)
            .map_err(|source| Error::Io { path: self.path.clone(), source })?;
        let stamp = Stamp::of(&meta);
        let current = self.current.load();
        if stamp == current.stamp || Some(stamp) == *failed {
            return Ok(false);
        }
        match Loaded::open(&self.path, current.generation + 1) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                *failed = None;
                Ok(true)
            }
            Err(err) => {
                *failed = Some(stamp);
                Err(err)
            }
        }
    }

    /// The file this database reloads from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts at 0 and rises by one per successful reload, so tests and logs can tell
    /// which version answered.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// The `database_type` from the file's metadata (e.g. `GeoLite2-Country`), for the
    /// start-up log line.
    pub fn database_type(&self) -> String {
        self.current.load().reader.metadata().database_type.clone()
    }
}

impl Loaded {
    fn open(path: &Path, generation: u64) -> Result<Self, Error> {
        let io_err = |source| Error::Io { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(io_err)?;
        // Stamp from the handle before reading: if the file changes during the read, the next
        // poll sees a newer stamp and loads again.
        let stamp = Stamp::of(&file.metadata().map_err(io_err)?);
        let mut buf = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0));
        file.read_to_end(&mut buf).map_err(io_err)?;
        let reader = Reader::from_source(buf)
            .map_err(|source| Error::Invalid { path: path.to_owned(), source })?;
        Ok(Self { reader, stamp, generation })
    }

    fn lookup(&self, ip: IpAddr) -> Option<Country> {
        let ip = ip.to_canonical();
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return None;
        }
        let result = match self.reader.lookup(ip) {
            Ok(result) => result,
            Err(err) => {
                tracing::debug!(%ip, error = %err, "geoip lookup failed");
                return None;
            }
        };
        if !result.has_data() {
            return None;
        }
        for path in CODE_PATHS {
            match result.decode_path::<&str>(path) {
                Ok(Some(code)) => return Country::new(code),
                Ok(None) => {}
                Err(err) => tracing::debug!(%ip, error = %err, "geoip record not decodable"),
            }
        }
        None
    }
}
