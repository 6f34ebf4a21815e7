//! The accept loop and hyper connection of the router's plain HTTP listeners (admin and
//! server API): each connection runs under the header timeout and closes gracefully on
//! shutdown; `handle` answers every request.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use shared::http::Body;
use shared::listen::Acceptor;

use crate::proxy::Proxy;

/// Serves `handle` on `acceptor` until shutdown.
pub(crate) async fn serve<F, Fut>(
    proxy: Arc<Proxy>,
    mut acceptor: Acceptor,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<Proxy>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            _ = proxy.shutdown.token.cancelled() => break,
            (s, _) = acceptor.accept(&proxy.metrics.refused_fd_limit) => s,
        };
        let (p, handle) = (proxy.clone(), handle.clone());
        proxy.shutdown.tracker.spawn(async move {
            let svc_proxy = p.clone();
            let svc = service_fn(move |req| {
                let fut = handle(svc_proxy.clone(), req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Some(p.config.header_timeout))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!("{what} http: {e}") },
                _ = p.shutdown.token.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}
