//! Misses in progress, so that a stampede of identical calls makes one upstream call: the first
//! call to miss a key leads — it calls the upstream and stores the answer as before — and an
//! identical call that misses while it runs follows: it waits for the leader's stored answer and
//! replays it, as a hit. A leader that stores nothing (an error, a cancelled call, an answer that
//! is not kept) releases its followers, which then call the upstream themselves: a failure is never
//! shared. Per process: replicas sharing a Redis cache coalesce each their own calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

use super::CacheKey;

/// The keys being answered now, each with the channel its leader publishes the stored entry on.
#[derive(Default)]
pub struct InFlight {
    leaders: Mutex<HashMap<CacheKey, Leader>>,
    next_id: AtomicU64,
}

/// A key's leader, as followers find it: which one (a later leader of the key has another id),
/// and the channel its stored entry comes on.
struct Leader {
    id: u64,
    answer: watch::Receiver<Option<Bytes>>,
}

/// What a call that missed does.
pub enum Turn {
    /// Calls the upstream; its answer is published when stored.
    Lead(Leading),
    /// Waits for the leader of the same key.
    Follow(Following),
}

impl InFlight {
    pub fn join(self: &Arc<Self>, key: CacheKey) -> Turn {
        let mut leaders = self.leaders.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(leader) = leaders.get(&key) {
            return Turn::Follow(Following { answer: leader.answer.clone() });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (publish, answer) = watch::channel(None);
        leaders.insert(key, Leader { id, answer });
        Turn::Lead(Leading { in_flight: self.clone(), key, id, publish })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.leaders.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The leading call of a key; its followers are released when it is dropped.
pub struct Leading {
    in_flight: Arc<InFlight>,
    key: CacheKey,
    id: u64,
    publish: watch::Sender<Option<Bytes>>,
}

impl Leading {
    /// Hands the stored entry to the followers.
    pub fn publish(&self, entry: &Bytes) {
        self.publish.send_replace(Some(entry.clone()));
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        let mut leaders = self.in_flight.leaders.lock().unwrap_or_else(PoisonError::into_inner);
        if leaders.get(&self.key).is_some_and(|leader| leader.id == self.id) {
            leaders.remove(&self.key);
        }
    }
}

pub struct Following {
    answer: watch::Receiver<Option<Bytes>>,
}

impl Following {
    /// The leader's stored entry, or `None` once it ended without storing one.
    pub async fn answer(mut self) -> Option<Bytes> {
        let waited = self.answer.wait_for(Option::is_some).await.map(|entry| entry.clone());
        // Dropped without a value; one published just before the drop is still seen.
        waited.unwrap_or_else(|_| self.answer.borrow().clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(byte: u8) -> CacheKey {
        CacheKey::from_bytes([byte; 32])
    }

    fn lead(turn: Turn) -> Leading {
        match turn {
            Turn::Lead(leading) => leading,
            Turn::Follow(_) => panic!("expected to lead"),
        }
    }

    fn follow(turn: Turn) -> Following {
        match turn {
            Turn::Follow(following) => following,
            Turn::Lead(_) => panic!("expected to follow"),
        }
    }

    #[tokio::test]
    async fn followers_of_a_key_get_what_its_leader_stored_and_other_keys_lead() {
        let in_flight = Arc::new(InFlight::default());
        let leader = lead(in_flight.join(key(1)));
        let followers: Vec<_> = (0..3).map(|_| tokio::spawn(follow(in_flight.join(key(1))).answer())).collect();
        let other = lead(in_flight.join(key(2)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(followers.iter().all(|f| !f.is_finished()), "followers wait for the leader");

        leader.publish(&Bytes::from_static(b"entry"));
        drop(leader);
        for follower in followers {
            assert_eq!(follower.await.unwrap().as_deref(), Some(&b"entry"[..]));
        }
        assert_eq!(in_flight.len(), 1, "the finished key is gone, the other is still in flight");
        drop(other);
        assert_eq!(in_flight.len(), 0);
        // The next miss of the key leads again.
        lead(in_flight.join(key(1)));
    }

    #[tokio::test]
    async fn a_leader_that_stores_nothing_releases_its_followers_empty_handed() {
        let in_flight = Arc::new(InFlight::default());
        let leader = lead(in_flight.join(key(1)));
        let follower = tokio::spawn(follow(in_flight.join(key(1))).answer());
        drop(leader);
        assert_eq!(follower.await.unwrap(), None);
        assert_eq!(in_flight.len(), 0);
    }

    #[tokio::test]
    async fn a_follower_that_joins_after_the_answer_was_published_gets_it() {
        let in_flight = Arc::new(InFlight::default());
        let leader = lead(in_flight.join(key(1)));
        leader.publish(&Bytes::from_static(b"entry"));
        let late = follow(in_flight.join(key(1)));
        assert_eq!(late.answer().await.as_deref(), Some(&b"entry"[..]));
        // A follower that asks after the leader dropped, holding its channel, still gets it.
        let later = follow(in_flight.join(key(1)));
        drop(leader);
        assert_eq!(later.answer().await.as_deref(), Some(&b"entry"[..]));
    }
}
