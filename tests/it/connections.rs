//! Connections that never speak HTTP/2 (issue 14): they are closed after
//! `server.handshake_timeout`, and `server.max_connections` caps how many are open at once.

use std::time::{Duration, Instant};

use copilot_fakes::FakeOllama;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::{Copilot, OLLAMA_ONLY, within};

const LIMIT: Duration = Duration::from_secs(20);

async fn start(server: &str) -> (FakeOllama, Copilot) {
    let fake = FakeOllama::start().await;
    let config = format!("[server]\n{server}\n{OLLAMA_ONLY}");
    let copilot = Copilot::start_with(&config, &[("OLLAMA_HOST", fake.base_url())]).await;
    (fake, copilot)
}

/// Waits for the server to close `socket`, which never sends a byte; returns when it did.
async fn closed_by_server(mut socket: TcpStream) -> Instant {
    let mut buf = [0u8; 256];
    loop {
        match socket.read(&mut buf).await {
            // hyper may write its SETTINGS before it gives up on the preface.
            Ok(n) if n > 0 => continue,
            _ => return Instant::now(),
        }
    }
}

async fn liveness(copilot: &Copilot) -> ServingStatus {
    let mut health = HealthClient::new(copilot.channel().await);
    let reply = health.check(HealthCheckRequest { service: String::new() }).await.expect("health check");
    reply.into_inner().status()
}

#[tokio::test]
async fn connections_that_send_no_preface_are_closed_after_the_handshake_timeout() {
    let (_fake, copilot) = start("handshake_timeout = \"300ms\"").await;
    let opened = Instant::now();
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(TcpStream::connect(copilot.addr).await.unwrap());
    }
    let closed = within(LIMIT, futures::future::join_all(sockets.into_iter().map(closed_by_server))).await;
    for at in closed {
        let after = at - opened;
        assert!(after >= Duration::from_millis(250), "closed after {after:?}, before the timeout");
        assert!(after < Duration::from_secs(5), "closed only after {after:?}");
    }
    assert_eq!(within(LIMIT, liveness(&copilot)).await, ServingStatus::Serving, "real clients are served");
}

#[tokio::test]
async fn at_max_connections_new_clients_wait_until_idle_ones_are_closed_and_the_cap_is_logged_once() {
    let (_fake, copilot) = start("handshake_timeout = \"500ms\"\nmax_connections = 5").await;
    let opened = Instant::now();
    // Three rounds of five: the cap is reached again each time a round is closed.
    let mut idle = Vec::new();
    for _ in 0..15 {
        idle.push(TcpStream::connect(copilot.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let closing = tokio::spawn(futures::future::join_all(idle.into_iter().map(closed_by_server)));

    // The listener is not accepting: this call waits behind the fifteen idle connections.
    assert_eq!(within(LIMIT, liveness(&copilot)).await, ServingStatus::Serving);
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_millis(1400), "served after {waited:?}, while the cap was reached");
    let closed = within(LIMIT, closing).await.unwrap();
    assert_eq!(closed.len(), 15);

    let logs = copilot.logs();
    let warnings = logs.matches("connection limit reached").count();
    assert_eq!(warnings, 1, "one warning, not one per connection:\n{logs}");
    assert!(logs.contains("server.max_connections"), "the warning names the key:\n{logs}");
}

/// The address a listener logged it listens on (`<what> listening on <addr>`).
fn logged_addr(copilot: &Copilot, what: &str) -> String {
    let marker = format!("{what} listening on ");
    let logs = copilot.logs();
    let line = logs.lines().find_map(|line| line.split(&marker).nth(1));
    line.and_then(|rest| rest.split(['"', ' ']).next()).expect("the listener's address in the log").to_string()
}

#[tokio::test]
async fn the_health_and_metrics_listeners_close_silent_connections_and_cap_them() {
    let (_fake, copilot) =
        start("handshake_timeout = \"1s\"\nhealth_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"").await;
    let (health, metrics) = (logged_addr(&copilot, "health"), logged_addr(&copilot, "metrics"));
    let opened = Instant::now();
    let mut sockets = Vec::new();
    // More than a side listener's cap on the health port, a few on the metrics port.
    for _ in 0..copilot::admin_listeners::ADMIN_MAX_CONNECTIONS + 6 {
        sockets.push(TcpStream::connect(&health).await.unwrap());
    }
    for _ in 0..5 {
        sockets.push(TcpStream::connect(&metrics).await.unwrap());
    }
    let closed = within(LIMIT, futures::future::join_all(sockets.into_iter().map(closed_by_server))).await;
    for at in closed {
        let after = at - opened;
        assert!(after >= Duration::from_millis(900), "closed after {after:?}, before the timeout");
        assert!(after < Duration::from_secs(8), "closed only after {after:?}");
    }
    assert_eq!(copilot.logs().matches("the health listener's cap").count(), 1, "{}", copilot.logs());

    // Both still serve.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health}")).unwrap().connect().await.unwrap();
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    let mut stream = TcpStream::connect(&metrics).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut page = String::new();
    within(LIMIT, stream.read_to_string(&mut page)).await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
}
