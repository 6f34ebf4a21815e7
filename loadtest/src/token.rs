//! Connection tokens for a fleet with auth on: one JWT minted per connection (`sub` = that
//! connection's user, `rooms` = its room with `rw`), HS256 from `--jwt-secret` or ES256
//! from `--jwt-es256-key`, sent as `?token=`. Minting is part of what a real client costs,
//! so it happens per connection, not once up front.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// How long a minted token is good for: longer than any bounded run.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Signs connection tokens with one key.
#[derive(Clone)]
pub struct Minter {
    header: Header,
    key: EncodingKey,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter").field("alg", &self.header.alg).finish()
    }
}

impl Minter {
    /// `--jwt-secret`: `env:NAME` or a file holding the HS256 secret (whitespace trimmed),
    /// the same forms the router's `--jwt-key` reads.
    pub fn hs256(arg: &str) -> anyhow::Result<Self> {
        let secret = match arg.strip_prefix("env:") {
            Some(name) => std::env::var(name)
                .with_context(|| format!("--jwt-secret env:{name}: variable not set"))?,
            None => std::fs::read_to_string(arg).with_context(|| format!("--jwt-secret {arg}"))?,
        };
        let secret = secret.trim();
        if secret.len() < 16 {
            bail!("--jwt-secret {arg}: an HS256 secret needs at least 16 bytes");
        }
        Ok(Self {
            header: Header::new(Algorithm::HS256),
            key: EncodingKey::from_secret(secret.as_bytes()),
        })
    }

    /// `--jwt-es256-key`: a PEM file with an EC P-256 private key (PKCS#8).
    pub fn es256(path: &str) -> anyhow::Result<Self> {
        let pem = std::fs::read(path).with_context(|| format!("--jwt-es256-key {path}"))?;
        let key = EncodingKey::from_ec_pem(&pem)
            .with_context(|| format!("--jwt-es256-key {path}: not an EC private key in PEM"))?;
        Ok(Self { header: Header::new(Algorithm::ES256), key })
    }

    /// A token for `user` with read-write rights in `room`.
    pub fn mint(&self, user: &str, room: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = serde_json::json!({
            "sub": user,
            "exp": now + TTL.as_secs(),
            "rooms": { room: "rw" },
        });
        Ok(jsonwebtoken::encode(&self.header, &claims, &self.key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn hs256_tokens_carry_the_connection_and_its_room() {
        let path = std::env::temp_dir().join(format!("lt-secret-{}", std::process::id()));
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let m = Minter::hs256(path.to_str().unwrap()).unwrap();
        let t = m.mint("lt-u7", "lt-r3").unwrap();
        let v = Validation::new(Algorithm::HS256);
        let got = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &DecodingKey::from_secret(b"0123456789abcdef0123"),
            &v,
        )
        .unwrap();
        assert_eq!(got.claims["sub"], "lt-u7");
        assert_eq!(got.claims["rooms"]["lt-r3"], "rw");
        let _ = std::fs::remove_file(&path);
        assert!(Minter::hs256("env:LOADTEST_NO_SUCH_VARIABLE").is_err());
    }
}
