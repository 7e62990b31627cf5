//! The two side listeners: `server.health_addr` (plaintext `grpc.health.v1` alone, for probes
//! that cannot speak TLS) and `server.metrics_addr` (Prometheus metrics at `/metrics`).
//!
//! They are as open to the network as the API port, so they get the same guards against sockets
//! that hold a file descriptor and do nothing: a connection must send its HTTP/2 preface (health)
//! or its request headers (metrics) within `server.handshake_timeout`, and at most
//! [`ADMIN_MAX_CONNECTIONS`] are open at once on each, past which the listener stops accepting.
//! Metrics connections serve one request each (scrapes are seconds apart), so none sits idle.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::connection_limits::{CappedAcceptor, PrefaceTimeout};
use crate::server::ServeError;

/// Connections open at once on each side listener: probes and scrapers open a few.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The health listener: `health` (tonic's `grpc.health.v1` service) over HTTP/2.
pub async fn serve_health<S>(addr: SocketAddr, health: S, handshake_timeout: Duration) -> Result<(), ServeError>
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = bind(addr, "health").await?;
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    tokio::spawn(accept_capped(listener, "the health listener's cap", move |stream| {
        let (http2, service) = (http2.clone(), TowerToHyperService::new(health.clone()));
        async move {
            let stream = PrefaceTimeout::new(stream, handshake_timeout);
            let _ = http2.serve_connection(TokioIo::new(stream), service).await;
        }
    }));
    Ok(())
}

/// The metrics listener: Prometheus' text format at `/metrics`, over HTTP/1.1.
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: prometheus::Registry,
    handshake_timeout: Duration,
) -> Result<(), ServeError> {
    let listener = bind(addr, "metrics").await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
                    Ok(()) => (http::StatusCode::OK, [(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text),
                    Err(e) => (
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(http::header::CONTENT_TYPE, "text/plain")],
                        format!("cannot encode metrics: {e}"),
                    ),
                }
            }
        }),
    );
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(handshake_timeout).keep_alive(false);
    tokio::spawn(accept_capped(listener, "the metrics listener's cap", move |stream| {
        let (http1, service) = (http1.clone(), TowerToHyperService::new(app.clone()));
        async move {
            let _ = http1.serve_connection(TokioIo::new(stream), service).await;
        }
    }));
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ServeError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    tracing::info!(addr = %local, "{what} listening on {local}");
    Ok(listener)
}

/// Accepts connections on `listener` and serves each on its own task with `serve`, at most
/// [`ADMIN_MAX_CONNECTIONS`] at once.
async fn accept_capped<F, Fut>(listener: TcpListener, what: &'static str, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut acceptor = CappedAcceptor::new(ADMIN_MAX_CONNECTIONS, what);
    loop {
        let (slot, stream, _) = acceptor.accept(&listener).await;
        let _ = stream.set_nodelay(true);
        let served = serve(stream);
        tokio::spawn(async move {
            served.await;
            drop(slot);
        });
    }
}
