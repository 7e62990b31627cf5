//! A connection to the primary that Redis Sentinel names, which follows a failover.
//!
//! redis-rs finds the primary through the sentinels (asking the next when one fails, and checking
//! the answer with `ROLE`, as the Sentinel client spec asks) but keeps no connection that moves
//! when the primary does. This one does: commands go through a reconnecting `ConnectionManager`
//! to the primary last found, and a supervisor task looks for the primary again when a sentinel
//! announces a switch (`+switch-master`, subscribed on one sentinel) or when a sign that the
//! primary is gone reaches it — a refused, dropped or failed connection, a timeout, a `READONLY`
//! reply from a demoted primary, a failed health probe. It looks one lookup at a time, at most
//! every [`LOOKUP_INTERVAL`], retrying with backoff while no sentinel names a reachable primary
//! (during a failover), and moves the connection only when the answer is a different address.
//! So a storm of failing calls costs one lookup, and a lookup outlives the bounded call that
//! asked for it. A command that failed is not sent again: it may have run, and the caller's
//! `state.on_error` decides what its failure means.

use std::time::Duration;

use futures::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSubStream};
use redis::sentinel::SentinelClient;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::{mpsc, watch};

/// The least time between two lookups.
const LOOKUP_INTERVAL: Duration = Duration::from_millis(100);
/// The longest wait between failed lookups.
const MAX_LOOKUP_BACKOFF: Duration = Duration::from_secs(1);

/// The primary last found: its address and the connection to it.
#[derive(Clone)]
struct Primary {
    address: String,
    connection: ConnectionManager,
}

/// Cheap to clone: clones share the primary and its supervisor.
#[derive(Clone)]
pub struct SentinelConnection {
    primary: watch::Receiver<Option<Primary>>,
    look_again: mpsc::Sender<()>,
    db: i64,
}

impl SentinelConnection {
    /// Starts the supervisor on the current Tokio runtime and asks it for the primary at once;
    /// nothing waits for the answer (commands wait for it within their own bound). Each lookup
    /// gets `lookup_timeout`; connections to the primary are made with `config`.
    pub fn start(
        sentinel: SentinelClient,
        db: i64,
        config: ConnectionManagerConfig,
        lookup_timeout: Duration,
    ) -> SentinelConnection {
        let (publish, primary) = watch::channel(None);
        let (look_again, asked) = mpsc::channel(1);
        tokio::spawn(supervise(sentinel, publish, asked, config, lookup_timeout));
        let connection = SentinelConnection { primary, look_again, db };
        connection.look_again();
        connection
    }

    /// Asks the supervisor to look for the primary again (a request already pending is enough).
    pub fn look_again(&self) {
        let _ = self.look_again.try_send(());
    }

    /// The primary's address, once found (for `copilot doctor`).
    pub fn primary_address(&self) -> Option<String> {
        self.primary.borrow().as_ref().map(|primary| primary.address.clone())
    }

    /// The connection to the primary, waiting for the first lookup if none is known yet.
    async fn connection(&self) -> RedisResult<ConnectionManager> {
        let mut primary = self.primary.clone();
        loop {
            if let Some(known) = primary.borrow_and_update().as_ref() {
                return Ok(known.connection.clone());
            }
            primary.changed().await.map_err(|_| {
                RedisError::from((redis::ErrorKind::Io, "the Sentinel supervisor stopped", String::new()))
            })?;
        }
    }

    /// Looks again after an error that says the primary may have moved.
    fn after<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(error) = &result
            && primary_may_have_moved(error)
        {
            self.look_again();
        }
        result
    }
}

/// An error after which the primary should be looked up again: the connection failed, or the
/// server is no longer a primary (after a failover Sentinel demotes the old one, which then
/// answers writes with `READONLY`).
fn primary_may_have_moved(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly | redis::ServerErrorKind::MasterDown)
        )
}

async fn supervise(
    mut sentinel: SentinelClient,
    publish: watch::Sender<Option<Primary>>,
    mut asked: mpsc::Receiver<()>,
    config: ConnectionManagerConfig,
    lookup_timeout: Duration,
) {
    let mut announcements: Option<PubSubStream> = None;
    loop {
        if announcements.is_none() {
            announcements = tokio::time::timeout(lookup_timeout, switch_announcements(&mut sentinel))
                .await
                .ok()
                .and_then(Result::ok);
        }
        // A reason to look: a caller's request, or a switch a sentinel announced (or the end of
        // its announcements: it went away, and another is subscribed to next time round).
        let look = match announcements.as_mut() {
            Some(switches) => tokio::select! {
                request = asked.recv() => match request {
                    Some(()) => true,
                    None => return,
                },
                switch = switches.next() => {
                    if switch.is_none() {
                        announcements = None;
                    }
                    true
                }
            },
            None => tokio::select! {
                request = asked.recv() => match request {
                    Some(()) => true,
                    None => return,
                },
                // Time to subscribe again.
                () = tokio::time::sleep(MAX_LOOKUP_BACKOFF) => false,
            },
        };
        if look {
            look_up(&mut sentinel, &publish, &config, lookup_timeout).await;
            // Failures reported during this lookup are answered by it.
            tokio::time::sleep(LOOKUP_INTERVAL).await;
            while asked.try_recv().is_ok() {}
        }
    }
}

/// Sentinel's announcements of a new primary (`+switch-master`), from the first sentinel that
/// answers. They let a replica move as soon as a failover ends, rather than when the old primary,
/// demoted seconds later (or still taking writes after a manual failover), first fails a call.
async fn switch_announcements(sentinel: &mut SentinelClient) -> RedisResult<PubSubStream> {
    let client = sentinel.async_get_sentinel_client().await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe("+switch-master").await?;
    Ok(pubsub.into_on_message())
}

/// Asks the sentinels for the primary until one names a reachable one, and moves there if it is
/// not where the connection already is.
async fn look_up(
    sentinel: &mut SentinelClient,
    publish: &watch::Sender<Option<Primary>>,
    config: &ConnectionManagerConfig,
    lookup_timeout: Duration,
) {
    let mut backoff = LOOKUP_INTERVAL;
    loop {
        let failure = match tokio::time::timeout(lookup_timeout, sentinel.async_get_client()).await {
            Ok(Ok(client)) => {
                let address = client.get_connection_info().addr().to_string();
                if publish.borrow().as_ref().is_some_and(|known| known.address == address) {
                    return;
                }
                match ConnectionManager::new_lazy_with_config(client, config.clone()) {
                    Ok(connection) => {
                        tracing::info!(primary = %address, "Redis Sentinel names this primary: shared state uses it");
                        publish.send_replace(Some(Primary { address, connection }));
                        return;
                    }
                    Err(error) => error.to_string(),
                }
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {lookup_timeout:?}"),
        };
        tracing::warn!(error = %failure, retry_in = ?backoff, "Redis Sentinel named no reachable primary");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_LOOKUP_BACKOFF);
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let result = connection.req_packed_command(cmd).await;
            self.after(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let result = connection.req_packed_commands(pipeline, offset, count).await;
            self.after(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_mean_the_primary_may_have_moved() {
        let io = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(primary_may_have_moved(&io));
        let refused = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert!(primary_may_have_moved(&refused));
        let read_only = RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly), "replica"));
        assert!(primary_may_have_moved(&read_only), "a demoted primary answers READONLY");
        let script_error = RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::NoScript), "no script"));
        assert!(!primary_may_have_moved(&script_error), "a missing script is reloaded, not a move");
    }
}
