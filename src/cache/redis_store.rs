//! The cache in the shared Redis (`state.redis_url`), so that every replica answers from what any
//! of them stored. An entry is one string, `copilot:<key_prefix>:cache:<sha-256 hex>`, set with its
//! ttl (`SET … PX`): Redis expires it, and evicts under `maxmemory` by its own policy. A lookup is
//! one `GET` bounded by `state.timeout`; a Redis that fails or is slow is a miss, never an error.
//! Stores and removals are sent by a background task; past [`MAX_QUEUED_BYTES`] waiting, new ones
//! are dropped (counted in `copilot.state.dropped`), so a slow Redis never holds our memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{CacheKey, CacheStore};
use crate::state::{SharedState, state_metrics};

/// The most bytes of entries waiting to be written.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Writes sent together (the multiplexed connection pipelines them).
const WRITE_BATCH: usize = 16;

enum Write {
    Put { key: CacheKey, value: Bytes, ttl: Duration },
    Remove(CacheKey),
}

pub struct RedisStore {
    state: Arc<SharedState>,
    writes: mpsc::UnboundedSender<Write>,
    queued_bytes: Arc<AtomicUsize>,
}

impl RedisStore {
    /// Starts the writer task; must run inside the Tokio runtime.
    pub fn start(state: Arc<SharedState>) -> RedisStore {
        let (writes, queue) = mpsc::unbounded_channel();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write(state.clone(), queue, queued_bytes.clone()));
        RedisStore { state, writes, queued_bytes }
    }

    fn enqueue(&self, write: Write) {
        let (value_bytes, operation) = match &write {
            Write::Put { value, .. } => (value.len(), "cache_set"),
            Write::Remove(_) => (0, "cache_remove"),
        };
        let size = value_bytes + std::mem::size_of::<Write>();
        // The queue is bounded here, in bytes (entries are of any size up to cache.max_entry_bytes).
        if self.queued_bytes.fetch_add(size, Ordering::Relaxed) + size > MAX_QUEUED_BYTES
            || self.writes.send(write).is_err()
        {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            dropped(operation);
        }
    }
}

fn dropped(operation: &'static str) {
    state_metrics().dropped.add(1, &[opentelemetry::KeyValue::new("operation", operation)]);
}

fn entry_key(state: &SharedState, key: &CacheKey) -> String {
    state.key(&format!("cache:{key}"))
}

#[tonic::async_trait]
impl CacheStore for RedisStore {
    async fn get(&self, key: &CacheKey) -> Option<Bytes> {
        self.state.get_bytes(&entry_key(&self.state, key)).await.ok().flatten().map(Bytes::from)
    }

    fn put(&self, key: CacheKey, value: Bytes, ttl: Duration) {
        self.enqueue(Write::Put { key, value, ttl });
    }

    fn remove(&self, key: &CacheKey) {
        self.enqueue(Write::Remove(*key));
    }
}

async fn write(state: Arc<SharedState>, mut queue: mpsc::UnboundedReceiver<Write>, queued_bytes: Arc<AtomicUsize>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let state = &state;
        let queued_bytes = &queued_bytes;
        futures::future::join_all(batch.drain(..).map(|write| async move {
            let (result, size, operation) = match &write {
                Write::Put { key, value, ttl } => {
                    (state.set_bytes(&entry_key(state, key), value, *ttl).await, value.len(), "cache_set")
                }
                Write::Remove(key) => (state.delete(&entry_key(state, key)).await, 0, "cache_remove"),
            };
            queued_bytes.fetch_sub(size + std::mem::size_of::<Write>(), Ordering::Relaxed);
            if result.is_err() {
                dropped(operation);
            }
        }))
        .await;
    }
}
