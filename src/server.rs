//! The gRPC listener: the Copilot API, `grpc.health.v1` and reflection (v1 and v1alpha) served over
//! HTTP/2 on one port, with a graceful drain.
//!
//! tonic's own `Server` wraps every service in a timeout that answers CANCELLED when the caller's
//! `grpc-timeout` expires; serving the generated services on hyper directly (`grpc_routes.rs`) lets
//! the gateway answer DEADLINE_EXCEEDED itself (see `deadline.rs`).
//!
//! Drain on SIGTERM/SIGINT: health turns NOT_SERVING, new calls are still accepted for
//! `drain_delay` (so balancers notice), then the listener closes and every connection gets a
//! GOAWAY; in-flight calls may finish within `shutdown_grace`, after which they end with
//! UNAVAILABLE. The last part of `shutdown_grace` (its quarter, at most [`FINAL_FLUSH`]) is kept
//! for sending those statuses, so `serve` returns at most `drain_delay + shutdown_grace` after the
//! signal. Calls whose request body is still being read then end the same way (`request_body.rs`).
//!
//! Each accepted connection is then served on one connection thread, or on the shared runtime with
//! `server.threading = "work-stealing"` (see `connection_threads.rs`).
//!
//! With `[server.tls]` each accepted connection is wrapped in TLS before HTTP/2 (see `tls.rs`).
//! The checks on request headers (`request_headers.rs`: size, encoding), API keys (`auth.rs`) and the guards on request
//! bodies (`request_body.rs`: size, time, buffered bytes per connection and in all) are layers
//! between the tracing layer and the routes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::admin_listeners;
use crate::admission::{AdmissionLayer, Admitting};
use crate::auth::{Auth, AuthCheck, SharedKeyBudgets};
use crate::config::{Config, LimitsConfig, Threading};
use crate::connection_limits::{CappedAcceptor, PrefaceTimeout, default_max_connections};
use crate::connection_threads::{ConnectionRunner, ConnectionThreads};
use crate::gateway::Gateway;
use crate::grpc::CopilotApi;
use crate::grpc_routes::GrpcRoutes;
use crate::health::{self, HealthState};
use crate::proto;
use crate::proto::v1::copilot_server::CopilotServer;
use crate::request_body::{RequestBodyGuard, RequestBodyLayer};
use crate::request_buffers::{BufferBudget, BufferScope, ConnectionBuffers};
use crate::request_headers::{HeaderChecks, http2_header_list_limit};
use crate::router::Router;
use crate::state::SharedState;
use crate::telemetry::rpc_trace::{RpcTrace, RpcTraceLayer};
use crate::tls::Tls;

/// What every call goes through before `routes`, in this order: its trace, the checks on its
/// headers, its API key, and the guards on its request body. (The fuzz target on the request path
/// builds the same stack in-process.)
pub type Guarded<S> = RpcTrace<Admitting<HeaderChecks, Admitting<AuthCheck, RequestBodyGuard<S>>>>;

pub fn guarded<S>(
    routes: S,
    limits: &LimitsConfig,
    auth: Option<Arc<Auth>>,
    hard_stop: CancellationToken,
) -> Guarded<S> {
    tower::ServiceBuilder::new()
        .layer(RpcTraceLayer)
        .layer(AdmissionLayer::new(HeaderChecks { max_metadata_bytes: limits.max_metadata_bytes }))
        .layer(AdmissionLayer::new(AuthCheck(auth)))
        .layer(RequestBodyLayer::new(limits, hard_stop))
        .service(routes)
}

/// The health-check name of the API, as the generated server names it.
pub const SERVICE_NAME: &str = <CopilotServer<CopilotApi> as tonic::server::NamedService>::NAME;

/// The most of `shutdown_grace` kept, at its end, for calls ended by the hard stop to send their
/// status (the flush is part of the grace period, not added to it).
const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Splits `shutdown_grace` into the time in-flight calls may still run and the final flush after
/// the hard stop: a quarter of the grace period, at most [`FINAL_FLUSH`]. The two add up to `grace`.
fn grace_split(grace: Duration) -> (Duration, Duration) {
    let flush = FINAL_FLUSH.min(grace / 4);
    (grace - flush, flush)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
}

/// Runs the server until `shutdown` resolves, then drains. Returns when every connection closed.
pub async fn serve(
    config: Config,
    prometheus: prometheus::Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    run(config, prometheus, None, shutdown).await
}

/// Like [`serve`], on a listener the caller bound (ignoring `server.addr`), so it knows the address
/// before the server runs: `copilot doctor` serves on `127.0.0.1:0` in-process and calls itself.
pub async fn serve_on(
    listener: TcpListener,
    config: Config,
    prometheus: prometheus::Registry,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    run(config, prometheus, Some(listener), shutdown).await
}

async fn run(
    config: Config,
    prometheus: prometheus::Registry,
    listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let hard_stop = CancellationToken::new();
    let instances = crate::providers::build(&config).map_err(ServeError::Setup)?;
    let router = Router::new(
        instances,
        config.default_provider().map(String::from),
        config.routing.default_model.clone(),
        config.routing.aliases.clone(),
    )
    .with_default_embedding_model(config.routing.default_embedding_model.clone());
    let gateway = Arc::new(Gateway::new(router, hard_stop.clone()));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
    for instance in gateway.router().instances() {
        reporter.set_service_status(health::instance_service_name(&instance.name), ServingStatus::Serving).await;
    }
    let health = HealthState::new(reporter, SERVICE_NAME);
    let state =
        SharedState::from_config(&config.state).map_err(|e| ServeError::Setup(format!("state.redis_url: {e}")))?;
    let routes = GrpcRoutes::new(
        CopilotServer::new(
            CopilotApi::new(gateway.clone(), config.limits.clone()).with_cache(
                crate::cache::ResponseCache::from_config(&config.cache, state.as_ref())
                    .with_message_limit(config.limits.max_response_bytes),
            ),
        )
        .max_decoding_message_size(config.limits.max_message_bytes),
    )
    .with(health_service.clone())
    .with(reflection_v1()?)
    .with(reflection_v1alpha()?);
    if let Some(state) = &state {
        tracing::info!(url = %state.url(), on_error = state.on_error.name(), "key budgets{} shared in Redis at {}", if config.cache.enabled { " and the response cache" } else { "" }, state.url());
        health::spawn_state_probe(state.clone(), health.clone()).await;
    }
    let shared_budgets = state.map(SharedKeyBudgets::start);
    let auth = Auth::from_config(&config.auth, shared_budgets);
    let service = guarded(routes, &config.limits, auth, hard_stop.clone());
    let tls = match config.server.tls.clone() {
        Some(tls) => Some(Tls::start(tls).await.map_err(ServeError::Setup)?),
        None => None,
    };
    if let Some(addr) = config.server.metrics_addr {
        admin_listeners::serve_metrics(addr, prometheus, config.server.handshake_timeout).await?;
    }
    if let Some(addr) = config.server.health_addr {
        admin_listeners::serve_health(addr, health_service.clone(), config.server.handshake_timeout).await?;
    }

    let runner = match config.server.threading {
        Threading::PerConnection => {
            let threads = config.server.worker_threads.unwrap_or_else(available_cores);
            let threads = ConnectionThreads::start(threads, config.server.pin_threads)
                .map_err(|e| ServeError::Setup(format!("cannot start the connection threads: {e}")))?;
            ConnectionRunner::PerConnection(threads)
        }
        Threading::WorkStealing => ConnectionRunner::WorkStealing,
    };
    let listener = match listener {
        Some(listener) => listener,
        None => TcpListener::bind(config.server.addr)
            .await
            .map_err(|source| ServeError::Bind { addr: config.server.addr, source })?,
    };
    let local = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.server.addr, source })?;
    tracing::info!(addr = %local, "copilot listening on {local}");
    health::spawn_probes(gateway.clone(), health.clone());

    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.server.max_concurrent_streams)
        // Above limits.max_metadata_bytes, so that a call over it gets a gRPC status from
        // `request_headers.rs` rather than h2's 431 or GOAWAY.
        .max_header_list_size(http2_header_list_limit(config.limits.max_metadata_bytes))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let connections = GracefulShutdown::new();
    let handshake_timeout = config.server.handshake_timeout;
    let connection_buffer_bytes = config.limits.connection_buffer_bytes();
    let max_connections = config.server.max_connections.unwrap_or_else(default_max_connections);
    tracing::info!(max_connections, handshake_timeout = %humantime::format_duration(handshake_timeout), "connection limits");
    let mut acceptor = CappedAcceptor::new(max_connections, "server.max_connections");

    tokio::pin!(shutdown);
    let mut draining_since: Option<tokio::time::Instant> = None;
    loop {
        let drain_over = async {
            match draining_since {
                Some(since) => tokio::time::sleep_until(crate::deadline::later(since, config.server.drain_delay)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            (slot, stream, peer) = acceptor.accept(&listener) => {
                let _ = stream.set_nodelay(true);
                // The connection's own budget of partly received request bytes, seen by every
                // call on it (`request_buffers.rs`).
                let buffers = ConnectionBuffers(BufferBudget::new(BufferScope::Connection, connection_buffer_bytes));
                let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                    service.clone(),
                    move |mut request: http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(buffers.clone());
                        request
                    },
                ));
                let (acceptor, http2, watcher) = (tls.as_ref().map(|tls| tls.acceptor()), http2.clone(), connections.watcher());
                runner.run(stream, move |stream| async move {
                    // Held until the connection closes, however it ends.
                    let _slot = slot;
                    let served = match acceptor {
                        None => {
                            let stream = PrefaceTimeout::new(stream, handshake_timeout);
                            watcher.watch(http2.serve_connection(TokioIo::new(stream), service)).await
                        }
                        // The handshake runs on the connection's own task, so a slow client delays no one.
                        Some(acceptor) => {
                            let started = tokio::time::Instant::now();
                            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                            };
                            // The preface must follow within what is left of the same timeout.
                            let left = handshake_timeout.saturating_sub(started.elapsed());
                            let stream = PrefaceTimeout::new(stream, left);
                            watcher.watch(http2.serve_connection(TokioIo::new(stream), service)).await
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown, if draining_since.is_none() => {
                tracing::info!(
                    drain_delay = %humantime::format_duration(config.server.drain_delay),
                    "shutdown requested: health is NOT_SERVING; draining"
                );
                health.drain().await;
                draining_since = Some(tokio::time::Instant::now());
            }
            _ = drain_over => break,
        }
    }
    drop(listener);

    let in_flight = connections.count();
    tracing::info!(connections = in_flight, grace = %humantime::format_duration(config.server.shutdown_grace), "listener closed; waiting for in-flight calls");
    let drained = connections.shutdown();
    tokio::pin!(drained);
    let (run_for, flush) = grace_split(config.server.shutdown_grace);
    if tokio::time::timeout(run_for, &mut drained).await.is_err() {
        tracing::warn!(
            flush = %humantime::format_duration(flush),
            "grace period over: ending the calls still running with UNAVAILABLE"
        );
        hard_stop.cancel();
        if tokio::time::timeout(flush, drained).await.is_err() {
            tracing::warn!("grace period over: connections still open are closed when the process exits");
        }
    }
    tracing::info!("copilot stopped");
    Ok(())
}

/// The cores this process may use (1 when that cannot be told).
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

fn reflection_v1() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    ServeError,
> {
    reflection_builder().build_v1().map_err(|e| ServeError::Setup(format!("reflection: {e}")))
}

fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
    ServeError,
> {
    reflection_builder().build_v1alpha().map_err(|e| ServeError::Setup(format!("reflection: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderConfig, ProviderKind};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    /// The final flush is taken from `shutdown_grace`, not added to it: calls run for the grace
    /// period less the flush, and the two add up to the grace period.
    #[test]
    fn the_final_flush_is_part_of_the_grace_period() {
        assert_eq!(grace_split(Duration::from_secs(30)), (Duration::from_secs(28), FINAL_FLUSH));
        assert_eq!(grace_split(Duration::from_secs(2)), (Duration::from_millis(1500), Duration::from_millis(500)));
        assert_eq!(grace_split(Duration::ZERO), (Duration::ZERO, Duration::ZERO));
    }

    /// `serve_on` serves on the listener it is given, not on `server.addr` (an address this test
    /// cannot bind), and stops when told. (Liveness: the provider is down, so readiness may not be.)
    #[tokio::test]
    async fn serve_on_serves_on_the_given_listener() {
        let mut config = Config::default();
        // TEST-NET-1: no interface of this machine has it, so binding it fails, even as root.
        config.server.addr = SocketAddr::from(([192, 0, 2, 1], 50051));
        config.server.worker_threads = Some(1);
        config.server.shutdown_grace = Duration::from_secs(1);
        config.providers.insert(
            "ollama".into(),
            ProviderConfig { base_url: "http://127.0.0.1:9".into(), ..ProviderConfig::new(ProviderKind::Ollama) },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = serve_on(listener, config, prometheus::Registry::new(), async {
            let _ = stopped.await;
        });
        let client = async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await;
            let status = HealthClient::new(channel.unwrap())
                .check(HealthCheckRequest { service: String::new() })
                .await
                .map(|r| r.into_inner().status());
            let _ = stop.send(());
            status
        };
        let (served, status) =
            tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(server, client) }).await.unwrap();
        assert_eq!(status.unwrap(), tonic_health::pb::health_check_response::ServingStatus::Serving);
        served.unwrap();
    }
}
