//! The connection to the shared Redis, one of two topologies behind one type: a single server (or a
//! primary behind a stable address) through a multiplexed connection that reconnects by itself, or a
//! Redis Cluster, whose client learns the nodes from a seed and follows slot moves. Both connect
//! lazily — an unreachable Redis never stops the server from starting — and bound every command
//! by `state.timeout`. A connection attempt may take longer (at least [`CONNECT_TIMEOUT`]): a TLS
//! handshake to a distant Redis should succeed in the background while the first calls, bounded by
//! their own timeout, are decided by `state.on_error`.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;

use super::StateError;
use crate::config::{RedisTopology, RedisUrl};

/// The least time one connection attempt gets.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    pub fn open(
        url: &RedisUrl,
        topology: RedisTopology,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Connection, StateError> {
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
        match topology {
            RedisTopology::Single => {
                let client = match certificates {
                    Some(certificates) => redis::Client::build_with_tls(url.expose(), certificates),
                    None => redis::Client::open(url.expose()),
                }
                .map_err(|e| StateError::Url(e.to_string()))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client, config)
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
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}
