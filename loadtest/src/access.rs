//! What a run needs to get into a fleet with auth and TLS on: the flags (`--jwt-secret`,
//! `--jwt-es256-key`, `--ca`), a token per connection in its URL, and the WebSocket
//! handshake over plain TCP or over TLS verified against the test CA.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream, tungstenite};

use crate::token::Minter;

/// The flags.
#[derive(Debug, Args, Default)]
pub struct AccessArgs {
    /// Mint an HS256 token per connection with this secret (`env:NAME` or a file).
    #[arg(long, env = "LOADTEST_JWT_SECRET", conflicts_with = "jwt_es256_key")]
    pub jwt_secret: Option<String>,
    /// Mint an ES256 token per connection with this EC P-256 private key (PEM file).
    #[arg(long, env = "LOADTEST_JWT_ES256_KEY")]
    pub jwt_es256_key: Option<String>,
    /// For `wss://` URLs: the PEM file of the CA that signed the server's certificate.
    #[arg(long, env = "LOADTEST_CA")]
    pub ca: Option<PathBuf>,
}

/// Tokens and TLS for every connection of a run.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub minter: Option<Minter>,
    /// The client config for `wss://`; `None` for `ws://`.
    pub tls: Option<Arc<ClientConfig>>,
}

impl AccessArgs {
    /// Reads the key and the CA; `tls` is whether the URL is `wss://`.
    pub fn access(&self, tls: bool) -> anyhow::Result<Access> {
        let minter = match (&self.jwt_secret, &self.jwt_es256_key) {
            (Some(s), _) => Some(Minter::hs256(s)?),
            (None, Some(k)) => Some(Minter::es256(k)?),
            (None, None) => None,
        };
        let tls = match (&self.ca, tls) {
            (Some(ca), true) => Some(client_config(ca)?),
            (None, true) => {
                bail!("a wss:// URL needs --ca FILE (the CA of the server's certificate)")
            }
            (Some(_), false) => bail!("--ca is for wss:// URLs"),
            (None, false) => None,
        };
        Ok(Access { minter, tls })
    }
}

fn client_config(ca: &PathBuf) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("--ca {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("--ca {}", ca.display()))?)?;
    }
    if roots.is_empty() {
        bail!("--ca {}: no certificate in the file", ca.display());
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A connection, over TLS or not.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl Access {
    /// `url` with this connection's token appended when tokens are on.
    pub fn url(&self, url: String, user: &str, room: &str) -> Result<String, String> {
        let Some(m) = &self.minter else { return Ok(url) };
        let token = m.mint(user, room).map_err(|_| "mint".to_string())?;
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{sep}token={token}"))
    }

    /// The TLS handshake (for `wss://`) and the WebSocket handshake over `stream`.
    pub async fn handshake(
        &self,
        url: &str,
        stream: TcpStream,
        config: WebSocketConfig,
    ) -> Result<Ws, tungstenite::Error> {
        let connector = match &self.tls {
            Some(c) => Connector::Rustls(c.clone()),
            None => Connector::Plain,
        };
        let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
            url,
            stream,
            Some(config),
            Some(connector),
        )
        .await?;
        Ok(ws)
    }
}
