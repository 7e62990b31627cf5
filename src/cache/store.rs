//! Where entries live. [`CacheStore`] is what the handlers' cache logic needs of a store, so that
//! the Redis store (issue 18, stage 4) plugs in beside [`MemoryStore`] without touching them:
//! a lookup that may wait, and a store and a removal that never fail the call nor make it wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::Context;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use moka::Expiry;
use moka::notification::RemovalCause;
use opentelemetry::KeyValue;

use super::CacheKey;
use crate::telemetry::metrics::metrics;
use crate::telemetry::metrics_enabled;

#[tonic::async_trait]
pub trait CacheStore: Send + Sync {
    /// The value stored under `key`, unless it expired or was evicted. A store that fails
    /// (stage 4: Redis down or slow) answers `None`: a miss, never an error.
    async fn get(&self, key: &CacheKey) -> Option<Bytes>;

    /// Stores `value` under `key` for `ttl`, replacing what was there. Never fails the call and
    /// never makes it wait: what cannot be stored at once is stored in the background, or dropped.
    fn put(&self, key: CacheKey, value: Bytes, ttl: Duration);

    /// Forgets `key` (an entry that no longer decodes), like `put` without waiting.
    fn remove(&self, key: &CacheKey);
}

/// What the in-process store keeps per key: the encoded entry and its time to live.
#[derive(Clone)]
struct Stored {
    value: Bytes,
    ttl: Duration,
}

/// The bytes an entry is weighed at: its value and its key (moka's own bookkeeping aside).
fn weight(value: &Bytes) -> u32 {
    u32::try_from(value.len() + std::mem::size_of::<CacheKey>()).unwrap_or(u32::MAX)
}

/// Each entry lives for its own ttl, from when it was stored (a replacement starts anew).
struct PerEntryTtl;

impl Expiry<CacheKey, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, stored: &Stored, _: Instant) -> Option<Duration> {
        Some(stored.ttl)
    }

    fn expire_after_update(&self, _: &CacheKey, stored: &Stored, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(stored.ttl)
    }
}

/// What the store counts, beside the metrics (which may be off): for its tests and its gauge.
#[derive(Default)]
struct Counts {
    /// Entries evicted for room (`max_bytes`), not those that expired or were replaced.
    evictions: AtomicU64,
    /// The weight of the entries held (moka's `weighted_size` lags until its housekeeping runs).
    bytes: AtomicI64,
}

/// The in-process store: a `moka` cache bounded by weight (`cache.max_bytes`), where each entry
/// expires after its own ttl and the least useful entries (TinyLFU) are evicted for room.
pub struct MemoryStore {
    cache: moka::future::Cache<CacheKey, Stored>,
    counts: Arc<Counts>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> MemoryStore {
        let counts = Arc::new(Counts::default());
        let listener_counts = counts.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &CacheKey, stored: &Stored| weight(&stored.value))
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_: Arc<CacheKey>, stored: Stored, cause: RemovalCause| {
                let weight = i64::from(weight(&stored.value));
                listener_counts.bytes.fetch_sub(weight, Ordering::Relaxed);
                if metrics_enabled() {
                    metrics().cache_bytes.add(-weight, &[]);
                }
                if cause == RemovalCause::Size {
                    listener_counts.evictions.fetch_add(1, Ordering::Relaxed);
                    if metrics_enabled() {
                        metrics().cache_evictions.add(1, &[KeyValue::new("cause", "size")]);
                    }
                }
            })
            .build();
        MemoryStore { cache, counts }
    }

    /// Entries evicted for room so far.
    pub fn evictions(&self) -> u64 {
        self.counts.evictions.load(Ordering::Relaxed)
    }

    /// The weight of the entries held.
    pub fn bytes(&self) -> i64 {
        self.counts.bytes.load(Ordering::Relaxed)
    }

    /// Runs the store's pending housekeeping (evictions, expiries) now rather than on a later call.
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Runs `work` now if it can finish without waiting (the usual case: moka's writes wait only
    /// when another task holds its housekeeping lock), else in the background.
    fn without_waiting(work: impl Future<Output = ()> + Send + 'static) {
        let mut work = Box::pin(work);
        if work.poll_unpin(&mut Context::from_waker(futures::task::noop_waker_ref())).is_pending() {
            // Handlers run on Tokio; outside a runtime there is no background to wait in.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(work);
            }
        }
    }
}

#[tonic::async_trait]
impl CacheStore for MemoryStore {
    async fn get(&self, key: &CacheKey) -> Option<Bytes> {
        self.cache.get(key).await.map(|stored| stored.value)
    }

    fn put(&self, key: CacheKey, value: Bytes, ttl: Duration) {
        let weight = i64::from(weight(&value));
        self.counts.bytes.fetch_add(weight, Ordering::Relaxed);
        if metrics_enabled() {
            metrics().cache_bytes.add(weight, &[]);
        }
        let cache = self.cache.clone();
        Self::without_waiting(async move { cache.insert(key, Stored { value, ttl }).await });
    }

    fn remove(&self, key: &CacheKey) {
        let (cache, key) = (self.cache.clone(), *key);
        Self::without_waiting(async move { cache.invalidate(&key).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey::from_bytes([n; 32])
    }

    #[tokio::test]
    async fn a_stored_value_is_found_until_its_ttl_passes() {
        let store = MemoryStore::new(1 << 20);
        store.put(key(1), Bytes::from_static(b"short"), Duration::from_millis(300));
        store.put(key(2), Bytes::from_static(b"long"), Duration::from_secs(60));
        assert_eq!(store.get(&key(1)).await.as_deref(), Some(&b"short"[..]));
        assert_eq!(store.get(&key(3)).await, None);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.get(&key(1)).await, None, "expired after its own ttl");
        assert_eq!(store.get(&key(2)).await.as_deref(), Some(&b"long"[..]));
        // A replacement lives for its own ttl, from when it was stored.
        store.put(key(2), Bytes::from_static(b"new"), Duration::from_millis(300));
        assert_eq!(store.get(&key(2)).await.as_deref(), Some(&b"new"[..]));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.get(&key(2)).await, None);
        // Expired entries are unreadable at once, and removed by the housekeeping of the next
        // tick of moka's timer wheel (about a second).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        store.run_pending_tasks().await;
        assert_eq!(store.bytes(), 0, "expired entries leave the byte count");
        assert_eq!(store.evictions(), 0, "expiries are not evictions");
    }

    #[tokio::test]
    async fn the_store_stays_within_its_bytes_and_counts_evictions_for_room() {
        let value = Bytes::from(vec![7u8; 1000 - std::mem::size_of::<CacheKey>()]);
        let store = MemoryStore::new(10_000);
        for n in 0..50 {
            store.put(key(n), value.clone(), Duration::from_secs(60));
            store.run_pending_tasks().await;
        }
        store.run_pending_tasks().await;
        let mut held = 0;
        for n in 0..50 {
            held += usize::from(store.get(&key(n)).await.is_some());
        }
        assert!(held <= 10, "{held} entries of 1000 bytes held in 10000");
        assert!(store.bytes() <= 10_000, "{} bytes", store.bytes());
        assert_eq!(store.evictions(), 50 - held as u64, "every entry not held was evicted for room");
        assert_eq!(store.bytes(), held as i64 * 1000);
    }

    #[tokio::test]
    async fn removed_entries_are_gone() {
        let store = MemoryStore::new(1 << 20);
        store.put(key(1), Bytes::from_static(b"x"), Duration::from_secs(60));
        store.remove(&key(1));
        assert_eq!(store.get(&key(1)).await, None);
        store.run_pending_tasks().await;
        assert_eq!((store.bytes(), store.evictions()), (0, 0));
    }
}
