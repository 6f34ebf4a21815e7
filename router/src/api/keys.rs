//! The server API's keys: `--api-key NAME=SECRET` (the secret literal, `env:VAR`, or
//! `file:PATH`), and the check of `Authorization: Bearer SECRET` against all of them in
//! constant time (SHA-256 of both sides compared whole, so neither a prefix nor the length
//! leaks). A key's name is the `from` of what it publishes.

use ring::digest::{SHA256, digest};
use shared::ids::UserId;

/// Shortest secret taken: a guessable key on an API that publishes into every room is a hole.
pub const MIN_SECRET: usize = 16;

/// One key: its name (a user id: it signs messages) and the SHA-256 of its secret.
#[derive(Clone)]
pub struct ApiKey {
    pub name: UserId,
    hash: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}, ..)", self.name)
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, b).as_ref());
    out
}

impl ApiKey {
    pub fn new(name: &str, secret: &[u8]) -> Result<Self, String> {
        let name = UserId::parse(name).map_err(|e| format!("--api-key name {name:?}: {e}"))?;
        if secret.len() < MIN_SECRET {
            return Err(format!("--api-key {name}: the secret needs at least {MIN_SECRET} bytes"));
        }
        Ok(Self { name, hash: sha256(secret) })
    }

    /// Whether `secret` is this key's, without an early exit.
    fn matches(&self, secret: &[u8]) -> bool {
        let h = sha256(secret);
        h.iter().zip(self.hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl std::str::FromStr for ApiKey {
    type Err = String;

    /// `NAME=SECRET`, `NAME=env:VAR`, `NAME=file:PATH` (the file's text, trimmed).
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, v) =
            s.split_once('=').ok_or_else(|| "--api-key takes NAME=SECRET".to_string())?;
        let secret = shared::api::secret(&format!("--api-key {name}="), v)?;
        ApiKey::new(name, secret.as_bytes())
    }
}

/// The key whose secret `Authorization: Bearer` carries; every key is compared.
pub fn find<'a>(keys: &'a [ApiKey], headers: &http::HeaderMap) -> Option<&'a ApiKey> {
    let got = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    keys.iter().fold(None, |found, k| if k.matches(got.as_bytes()) { Some(k) } else { found })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_match_only_their_secret() {
        let a: ApiKey = "orders=0123456789abcdef".parse().unwrap();
        let b: ApiKey = "judge=fedcba9876543210".parse().unwrap();
        assert!("short=abc".parse::<ApiKey>().unwrap_err().contains("16 bytes"));
        assert!("bad name=0123456789abcdef".parse::<ApiKey>().is_err());
        assert!("nosecret".parse::<ApiKey>().is_err());
        let keys = [a, b];
        let mut h = http::HeaderMap::new();
        assert!(find(&keys, &h).is_none());
        h.insert(http::header::AUTHORIZATION, "Bearer fedcba9876543210".parse().unwrap());
        assert_eq!(find(&keys, &h).unwrap().name.as_str(), "judge");
        h.insert(http::header::AUTHORIZATION, "Bearer fedcba987654321".parse().unwrap());
        assert!(find(&keys, &h).is_none());
    }

    #[test]
    fn a_secret_comes_from_a_file() {
        let dir = std::env::temp_dir().join(format!("rf-apikey-{}", std::process::id()));
        std::fs::write(&dir, "  from-a-file-0123456789\n").unwrap();
        let k: ApiKey = format!("ops=file:{}", dir.display()).parse().unwrap();
        assert!(k.matches(b"from-a-file-0123456789"));
        let _ = std::fs::remove_file(&dir);
    }
}
