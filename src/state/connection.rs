//! The connection to the shared Redis, one of three topologies behind one type: a single server (or
//! a primary behind a stable address) through a multiplexed connection that reconnects by itself, a
//! Redis Cluster, whose client learns the nodes from a seed and follows slot moves, or the primary
//! that Redis Sentinel names, followed through failovers (`sentinel.rs`). All connect
//! lazily — an unreachable Redis never stops the server from starting — and bound every command
//! by `state.timeout`. A connection attempt may take longer (at least [`CONNECT_TIMEOUT`]): a TLS
//! handshake to a distant Redis should succeed in the background while the first calls, bounded by
//! their own timeout, are decided by `state.on_error`.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;

use redis::IntoConnectionInfo;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};

use super::StateError;
use super::sentinel::SentinelConnection;
use crate::config::{RedisTopology, RedisUrl, StateConfig};

/// The least time one connection attempt gets.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

impl Connection {
    /// Must run inside the Tokio runtime (the Sentinel topology starts its supervisor there).
    pub fn open(url: &RedisUrl, config: &StateConfig) -> Result<Connection, StateError> {
        let (topology, ca_file, timeout) = (config.topology, config.tls_ca_file.as_deref(), config.timeout);
        let connect_timeout = timeout.max(CONNECT_TIMEOUT);
        // rediss:// builds its TLS configuration from the process's default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificates = match ca_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| StateError::Url(format!("cannot read state.tls_ca_file {}: {e}", path.display())))?;
                Some(redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
            }
            None => None,
        };
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        match topology {
            RedisTopology::Single => {
                let client = match certificates {
                    Some(certificates) => redis::Client::build_with_tls(url.expose(), certificates),
                    None => redis::Client::open(url.expose()),
                }
                .map_err(|e| StateError::Url(e.to_string()))?;
                ConnectionManager::new_lazy_with_config(client, manager_config)
                    .map(Connection::Single)
                    .map_err(|e| StateError::Redis(e.to_string()))
            }
            RedisTopology::Cluster => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(vec![url.expose()])
                    .connection_timeout(connect_timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .min_retry_wait(10)
                    .max_retry_wait(100);
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                let client = builder.build().map_err(|e| StateError::Url(e.to_string()))?;
                Ok(Connection::Cluster(client.get_pending_async_connection_with_config(Default::default())))
            }
            RedisTopology::Sentinel => {
                let (sentinel, db) = sentinel_client(url, &config.sentinels, certificates)?;
                // A lookup asks the sentinels and checks the primary's role: two connections.
                let lookup_timeout = connect_timeout * 2;
                Ok(Connection::Sentinel(SentinelConnection::start(sentinel, db, manager_config, lookup_timeout)))
            }
        }
    }

    /// After a failed health probe: the Sentinel topology looks for its primary again (a hung
    /// primary fails calls only by their timeouts, which no connection error reports).
    pub fn probe_failed(&self) {
        if let Connection::Sentinel(connection) = self {
            connection.look_again();
        }
    }

    /// The address of the primary Sentinel named, once known.
    pub fn sentinel_primary(&self) -> Option<String> {
        match self {
            Connection::Sentinel(connection) => connection.primary_address(),
            Connection::Single(_) | Connection::Cluster(_) => None,
        }
    }
}

/// The Sentinel client: the primary's service name, user, password, database and TLS from
/// `redis_url`; the sentinels' addresses, user, password and TLS from `sentinels` (checked at load
/// to share one scheme and one user and password).
fn sentinel_client(
    url: &RedisUrl,
    sentinels: &[RedisUrl],
    certificates: Option<redis::TlsCertificates>,
) -> Result<(redis::sentinel::SentinelClient, i64), StateError> {
    let parsed = url::Url::parse(url.expose()).map_err(|e| StateError::Url(e.to_string()))?;
    let service = parsed.host_str().unwrap_or_default().to_string();
    let primary = url.expose().into_connection_info().map_err(|e| StateError::Url(e.to_string()))?;
    let mut addresses = Vec::new();
    for sentinel in sentinels {
        let info = sentinel.expose().into_connection_info().map_err(|e| StateError::Url(e.to_string()))?;
        addresses.push(info);
    }
    let first = addresses.first().cloned().ok_or_else(|| StateError::Url("state.sentinels is empty".into()))?;
    let mut builder = SentinelClientBuilder::new(
        addresses.iter().map(|info| info.addr().clone()),
        &service,
        SentinelServerType::Master,
    )
    .map_err(|e| StateError::Url(e.to_string()))?
    .set_client_to_redis_db(primary.redis_settings().db());
    if let Some(username) = primary.redis_settings().username() {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = primary.redis_settings().password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let redis::ConnectionAddr::TcpTls { .. } = primary.addr() {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(certificates) = &certificates {
            builder = builder.set_client_to_redis_certificates(certificates.clone());
        }
    }
    if let Some(username) = first.redis_settings().username() {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(password) = first.redis_settings().password() {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if let redis::ConnectionAddr::TcpTls { .. } = first.addr() {
        builder = builder.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(certificates) = certificates {
            builder = builder.set_client_to_sentinel_certificates(certificates);
        }
    }
    let client = builder.build().map_err(|e| StateError::Url(e.to_string()))?;
    Ok((client, primary.redis_settings().db()))
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
            Connection::Sentinel(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
            Connection::Sentinel(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
            Connection::Sentinel(connection) => connection.get_db(),
        }
    }
}
