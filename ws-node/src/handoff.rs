//! Clients a router hands over instead of proxying: in process through [`taker`], or from a
//! router process on this host over `--handoff unix:PATH` ([`serve_handoff`]). Each handoff
//! is answered at once, taken or refused (draining, full, starting); a taken one is then
//! served exactly like a proxied upgrade, the router's hop header checked as usual.

use std::sync::Arc;
use std::time::Duration;

use shared::handoff::{self, Handoff, Refusal, Taker};
use tokio::net::{UnixListener, UnixStream};

use crate::node::Node;

/// What this node answers a handoff now, before any byte of it is read.
fn refusal(node: &Node) -> Option<Refusal> {
    if node.is_draining() || node.token.is_cancelled() {
        Some(Refusal::Draining)
    } else if !node.rooms.bus.is_ready() {
        Some(Refusal::Starting)
    } else if node.connections() >= node.config.max_connections {
        Some(Refusal::Full)
    } else {
        None
    }
}

struct NodeTaker(Arc<Node>);

impl Taker for NodeTaker {
    fn take(&self, client: Handoff) -> Result<(), Box<(Handoff, Refusal)>> {
        let node = &self.0;
        if let Some(why) = refusal(node) {
            node.metrics.handoffs_refused.inc();
            return Err(Box::new((client, why)));
        }
        node.metrics.handoffs_taken.inc();
        let Handoff { stream, head, hold } = client;
        node.tracker.spawn(crate::server::serve_handed(node.clone(), stream, head, hold));
        Ok(())
    }
}

/// The in-process handoff target of `node` (for `fleet up`'s router).
pub fn taker(node: &Arc<Node>) -> Arc<dyn Taker> {
    Arc::new(NodeTaker(node.clone()))
}

/// Takes handed-off clients on `listener` until the node shuts down; one handoff per Unix
/// connection.
pub async fn serve_handoff(node: Arc<Node>, listener: UnixListener) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(1);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let unix = tokio::select! {
            _ = node.token.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    backoff = FIRST_BACKOFF;
                    s
                }
                Err(e) => {
                    // Out of descriptors, most likely: the router proxies meanwhile.
                    tracing::debug!("handoff accept: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                    continue;
                }
            },
        };
        node.tracker.spawn(one_handoff(node.clone(), unix));
    }
}

/// Reads one handoff, answers it, and serves the client when taken. The client is served only
/// once the "taken" answer is written: a router that did not get it keeps the client.
async fn one_handoff(node: Arc<Node>, mut unix: UnixStream) {
    let read = tokio::time::timeout(node.config.header_timeout, handoff::recv(&mut unix));
    let (fd, head) = match read.await {
        Ok(Ok(got)) => got,
        Ok(Err(e)) => return tracing::debug!("handoff: {e}"),
        Err(_) => return tracing::debug!("handoff: nothing sent in time"),
    };
    let stream = match handoff::tcp_stream(fd) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("handoff: not a connected TCP socket: {e}");
            node.metrics.handoffs_refused.inc();
            let _ = handoff::answer(&mut unix, Err(Refusal::Malformed)).await;
            return;
        }
    };
    if let Some(why) = refusal(&node) {
        node.metrics.handoffs_refused.inc();
        let _ = handoff::answer(&mut unix, Err(why)).await;
        return;
    }
    if let Err(e) = handoff::answer(&mut unix, Ok(())).await {
        return tracing::debug!("handoff: the router left before the answer: {e}");
    }
    drop(unix);
    node.metrics.handoffs_taken.inc();
    crate::server::serve_handed(node, stream, head, None).await;
}

/// Binds `path` for `--handoff unix:PATH`, replacing a socket file a previous run left.
pub fn bind(path: &std::path::Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
}
