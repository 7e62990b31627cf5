//! The benchmark's gRPC connection: tonic's generated client over one bare HTTP/2 connection
//! (hyper's `SendRequest`).
//!
//! tonic's `Channel` puts a buffer task, reconnection and load-balancing layers between a call and
//! the connection: an extra task hop and channel send per call that a lean gRPC client (grpc-go,
//! grpc C-core, this) does not pay. A benchmark of the gateway should not count its own client's
//! layers as the gateway's cost, so calls go straight onto the HTTP/2 connection. (Measured on the
//! 2-core machine: see BENCHMARKS.md, "What was changed".)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use copilot::proto::v1::copilot_client::CopilotClient;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::BoxError;

/// The generated client on one plaintext HTTP/2 connection; clones share the connection (one
/// HTTP/2 stream per call).
pub type GrpcClient = CopilotClient<H2Connection>;

/// One HTTP/2 connection, as a tower service tonic's generated client can call.
#[derive(Clone, Debug)]
pub struct H2Connection {
    sender: http2::SendRequest<tonic::body::Body>,
    /// `authorization: Bearer <key>` on every call, for a server with API keys.
    authorization: Option<http::HeaderValue>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for H2Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> ResponseFuture {
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
        }
        Box::pin(self.sender.send_request(request))
    }
}

/// Connects to `addr` (`http://host:port`; plaintext HTTP/2, as Copilot serves without TLS) within
/// five seconds, and drives the connection on a task of its own.
pub async fn connect(addr: &str) -> Result<GrpcClient, BoxError> {
    connect_with_key(addr, None).await
}

/// [`connect`], sending `api_key` as `authorization: Bearer <key>` on every call.
pub async fn connect_with_key(addr: &str, api_key: Option<&str>) -> Result<GrpcClient, BoxError> {
    let uri: http::Uri = addr.parse().map_err(|e| format!("invalid --addr {addr:?}: {e}"))?;
    let authorization = match api_key {
        Some(key) => {
            let mut value = http::HeaderValue::try_from(format!("Bearer {key}"))
                .map_err(|_| "the API key holds characters an authorization header cannot carry")?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let (sender, connection) = handshake(addr).await?;
    // A connection that fails makes every call on it fail, and the calls report it.
    tokio::spawn(connection);
    Ok(CopilotClient::with_origin(H2Connection { sender, authorization }, uri))
}

/// A plaintext HTTP/2 connection to `addr` with request bodies of type `B`: the handle that sends
/// requests, and the connection, which the caller must drive (spawn) for anything to happen.
pub async fn handshake<B>(
    addr: &str,
) -> Result<(http2::SendRequest<B>, http2::Connection<TokioIo<TcpStream>, B, TokioExecutor>), BoxError>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tcp = connect_tcp(addr).await?;
    tcp.set_nodelay(true)?;
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("cannot connect to {addr}: HTTP/2 handshake failed: {e}"))?;
    Ok(connection)
}

/// A TCP connection to the host and port of `addr` (`http://host:port`) within five seconds.
pub async fn connect_tcp(addr: &str) -> Result<TcpStream, BoxError> {
    let uri: http::Uri = addr.parse().map_err(|e| format!("invalid --addr {addr:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--addr {addr:?}: copilot-bench speaks plaintext HTTP/2, give an http:// address").into());
    }
    let host = uri.host().ok_or_else(|| format!("--addr {addr:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("cannot connect to {addr}: timed out after 5 s"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}").into())
}
