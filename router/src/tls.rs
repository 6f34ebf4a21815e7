//! TLS on the public listener and to the nodes: the loading and reload code is shared with
//! ws-node (`shared::tls`).

pub use shared::tls::{Tls, TlsError, TlsFiles, connector};
