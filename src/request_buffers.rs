//! Budgets of request bytes held in partly received messages: one per client connection
//! (`limits.max_buffered_request_bytes_per_connection`) and one for the whole server
//! (`limits.max_buffered_request_bytes`).
//!
//! tonic keeps a request message's bytes until the whole message has arrived, so a client that
//! announces a large message, sends most of it and stalls holds that memory for as long as its
//! stream lives. The request body (`request_body.rs`) charges the bytes of each incomplete message
//! here and gives them back when the message completes or the stream ends; a message that arrives
//! whole in one read is never charged, so small calls pass even when the budgets are full.
//!
//! This is what Envoy does with `per_connection_buffer_limit_bytes` and its overload manager,
//! adapted to gRPC: where Envoy stops reading a connection over its limit (every stream on it
//! waits), a stream that would go over is refused with RESOURCE_EXHAUSTED, which its caller can
//! act on; and where the overload manager shortens idle timeouts under memory pressure
//! (`reduce_timeouts`), a stream whose partial message stalls while the server's budget is more
//! than half used ([`BufferBudget::under_pressure`]) is ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Whose budget is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferScope {
    Connection,
    Server,
}

impl BufferScope {
    /// The configuration key of the budget.
    pub fn config_key(self) -> &'static str {
        match self {
            BufferScope::Connection => "limits.max_buffered_request_bytes_per_connection",
            BufferScope::Server => "limits.max_buffered_request_bytes",
        }
    }
}

/// Bytes held against a limit, shared by every stream it covers.
#[derive(Debug)]
pub struct BufferBudget {
    scope: BufferScope,
    limit: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    pub fn new(scope: BufferScope, limit: usize) -> Arc<Self> {
        Arc::new(Self { scope, limit, used: AtomicUsize::new(0) })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// More than half of the budget is held: time to end streams that stall.
    pub fn under_pressure(&self) -> bool {
        self.used() > self.limit / 2
    }

    fn take(&self, bytes: usize) -> Result<(), BufferFull> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .map(drop)
            .map_err(|_| BufferFull { scope: self.scope, limit: self.limit })
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A budget that has no room for what a stream asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferFull {
    pub scope: BufferScope,
    pub limit: usize,
}

/// The connection's budget, put into each request's extensions by the listener.
#[derive(Clone)]
pub struct ConnectionBuffers(pub Arc<BufferBudget>);

/// What one request body holds against its connection's and the server's budgets; given back
/// when dropped, however the stream ends.
pub struct Held {
    connection: Option<Arc<BufferBudget>>,
    server: Arc<BufferBudget>,
    bytes: usize,
}

impl Held {
    pub fn new(connection: Option<Arc<BufferBudget>>, server: Arc<BufferBudget>) -> Self {
        Self { connection, server, bytes: 0 }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn server(&self) -> &BufferBudget {
        &self.server
    }

    /// Holds `bytes` from now on: more takes the difference from both budgets (or nothing, and
    /// says which is full), less gives it back.
    pub fn set(&mut self, bytes: usize) -> Result<(), BufferFull> {
        // Nearly every call's message arrives whole: nothing held before or after, no atomics.
        if bytes == self.bytes {
            return Ok(());
        }
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            if let Some(connection) = &self.connection {
                connection.take(more)?;
            }
            if let Err(full) = self.server.take(more) {
                if let Some(connection) = &self.connection {
                    connection.give(more);
                }
                return Err(full);
            }
        } else {
            let less = self.bytes - bytes;
            if let Some(connection) = &self.connection {
                connection.give(less);
            }
            self.server.give(less);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_share_their_connections_budget_and_the_servers() {
        let server = BufferBudget::new(BufferScope::Server, 100);
        let first = BufferBudget::new(BufferScope::Connection, 60);
        let second = BufferBudget::new(BufferScope::Connection, 60);

        let mut a = Held::new(Some(first.clone()), server.clone());
        let mut b = Held::new(Some(first.clone()), server.clone());
        assert_eq!(a.set(40), Ok(()));
        assert_eq!(b.set(30), Err(BufferFull { scope: BufferScope::Connection, limit: 60 }));
        assert_eq!(b.set(20), Ok(()));
        assert_eq!((first.used(), server.used()), (60, 60));

        // The server's budget is full before the second connection's is; a refusal takes nothing.
        let mut c = Held::new(Some(second.clone()), server.clone());
        assert_eq!(c.set(50), Err(BufferFull { scope: BufferScope::Server, limit: 100 }));
        assert_eq!((second.used(), server.used()), (0, 60));
        assert_eq!(c.set(40), Ok(()));
        assert!(server.under_pressure());

        // Shrinking and dropping give back to both.
        assert_eq!(a.set(10), Ok(()));
        drop(b);
        assert_eq!((first.used(), server.used()), (10, 50));
        drop((a, c));
        assert_eq!((first.used(), second.used(), server.used()), (0, 0, 0));
        assert!(!server.under_pressure());
    }

    #[test]
    fn a_body_without_a_connection_budget_counts_against_the_server_alone() {
        let server = BufferBudget::new(BufferScope::Server, 10);
        let mut held = Held::new(None, server.clone());
        assert_eq!(held.set(10), Ok(()));
        assert_eq!(held.set(11), Err(BufferFull { scope: BufferScope::Server, limit: 10 }));
        assert_eq!(held.bytes(), 10);
    }
}
