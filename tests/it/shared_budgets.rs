//! The shared key budgets' limiter (`src/state/limiter.rs`, issue 18 stage 1) against a real
//! `redis-server` on loopback (Debian's package; `scripts/install-build-deps --for test` installs
//! it): `auth/bucket.rs`'s rule replayed on a fixed clock, exactly the budget admitted across
//! several connections at once, and a Redis that stops and comes back.

use std::time::{Duration, Instant};

use copilot::auth::KeyHash;
use copilot::state::limiter::{Budget, Limits, Op, SharedBudgets, StateError, Verdict};

use crate::redis_server::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(200);
const SECOND_US: u64 = 1_000_000;

fn key() -> KeyHash {
    KeyHash::of("cp_test_secret_key")
}

fn limited(budget: Budget, millis: u64) -> Verdict {
    Verdict::Limited { budget, retry_after: Duration::from_millis(millis) }
}

const REQUESTS_2: Limits = Limits { requests_per_minute: Some(2), tokens_per_minute: None };
const TOKENS_60: Limits = Limits { requests_per_minute: None, tokens_per_minute: Some(60) };

/// The unit tests of `auth/bucket.rs`, step for step, on a fixed timeline.
#[tokio::test]
async fn the_rule_is_that_of_the_in_process_bucket() {
    let redis = RedisServer::start();
    let budgets = SharedBudgets::connect(&redis.url(), "test", TIMEOUT).await.unwrap();
    let key = key();
    let t0 = 1_000 * SECOND_US;
    let admit = Op::Admit { uses_tokens: false };
    let at = |op, limits, t| budgets.apply_at(&key, limits, op, Some(t));

    // Two per minute: one every 30 seconds.
    assert_eq!(at(admit, REQUESTS_2, t0).await.unwrap(), Verdict::Done);
    assert_eq!(at(admit, REQUESTS_2, t0).await.unwrap(), Verdict::Done);
    assert_eq!(at(admit, REQUESTS_2, t0).await.unwrap(), limited(Budget::Requests, 30_000));
    assert_eq!(at(admit, REQUESTS_2, t0 + 10 * SECOND_US).await.unwrap(), limited(Budget::Requests, 20_000));
    assert_eq!(at(admit, REQUESTS_2, t0 + 30 * SECOND_US).await.unwrap(), Verdict::Done);
    assert!(matches!(at(admit, REQUESTS_2, t0 + 30 * SECOND_US).await.unwrap(), Verdict::Limited { .. }));
    // Time does not go backwards: an earlier instant refills nothing.
    assert!(matches!(at(admit, REQUESTS_2, t0).await.unwrap(), Verdict::Limited { .. }));

    // Tokens: 60 per minute is one a second; a charge beyond the level is a debt paid off first.
    let tokens_key = KeyHash::of("cp_other_key");
    let tok = |op, t| budgets.apply_at(&tokens_key, TOKENS_60, op, Some(t));
    let completion = Op::Admit { uses_tokens: true };
    assert_eq!(tok(completion, t0).await.unwrap(), Verdict::Done);
    assert_eq!(tok(Op::Charge(120), t0).await.unwrap(), Verdict::Done);
    assert_eq!(tok(completion, t0).await.unwrap(), limited(Budget::Tokens, 61_000));
    assert_eq!(tok(completion, t0 + 60 * SECOND_US).await.unwrap(), limited(Budget::Tokens, 1_000));
    assert_eq!(tok(completion, t0 + 61 * SECOND_US).await.unwrap(), Verdict::Done);
    // An embedding or count call (no tokens up front) is not held back by the token debt.
    assert_eq!(tok(Op::Charge(30), t0 + 61 * SECOND_US).await.unwrap(), Verdict::Done);
    assert_eq!(tok(Op::Admit { uses_tokens: false }, t0 + 61 * SECOND_US).await.unwrap(), Verdict::Done);

    // A refund gives back what was taken, up to the capacity (a fresh key: full at 60).
    let third = KeyHash::of("cp_third_key");
    let t1 = 5_000 * SECOND_US;
    let op3 = |op, t| budgets.apply_at(&third, TOKENS_60, op, Some(t));
    assert_eq!(op3(Op::Take(50), t1).await.unwrap(), Verdict::Done);
    assert_eq!(op3(Op::Refund(30), t1).await.unwrap(), Verdict::Done);
    assert_eq!(op3(Op::Take(40), t1).await.unwrap(), Verdict::Done);
    assert_eq!(op3(Op::Take(1), t1).await.unwrap(), limited(Budget::Tokens, 1_000));
    assert_eq!(op3(Op::Refund(40), t1 + 30 * SECOND_US).await.unwrap(), Verdict::Done);
    assert_eq!(op3(Op::Take(60), t1 + 30 * SECOND_US).await.unwrap(), Verdict::Done);
    assert!(matches!(op3(Op::Take(1), t1 + 30 * SECOND_US).await.unwrap(), Verdict::Limited { .. }));
}

/// Three replicas' connections, 300 calls at once against 10 a minute: exactly 10 admitted.
#[tokio::test]
async fn replicas_together_admit_exactly_the_budget() {
    let redis = RedisServer::start();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(SharedBudgets::connect(&redis.url(), "test", TIMEOUT).await.unwrap());
    }
    let limits = Limits { requests_per_minute: Some(10), tokens_per_minute: None };
    let key = key();
    let calls = (0..300).map(|i| {
        let replica = replicas[i % 3].clone();
        let key = key.clone();
        tokio::spawn(async move { replica.apply(&key, limits, Op::Admit { uses_tokens: false }).await.unwrap() })
    });
    let verdicts: Vec<Verdict> = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    let admitted = verdicts.iter().filter(|v| **v == Verdict::Done).count();
    assert_eq!(admitted, 10, "{verdicts:?}");
    // The refused are told when the next one fits: within one refill interval (6 s at 10 a minute).
    for verdict in verdicts.iter().filter(|v| **v != Verdict::Done) {
        let Verdict::Limited { budget: Budget::Requests, retry_after } = verdict else { panic!("{verdict:?}") };
        assert!(*retry_after > Duration::ZERO && *retry_after <= Duration::from_secs(6), "{verdict:?}");
    }
}

/// Key names carry neither the secret nor its configured hash; a full bucket is no key, and any
/// other expires by the time it would have refilled.
#[tokio::test]
async fn keys_are_namespaced_opaque_and_expire() {
    let redis = RedisServer::start();
    let budgets = SharedBudgets::connect(&redis.url(), "prod", TIMEOUT).await.unwrap();
    let key = key();
    let limits = Limits { requests_per_minute: Some(60), tokens_per_minute: Some(600) };
    budgets.apply(&key, limits, Op::Admit { uses_tokens: true }).await.unwrap();
    budgets.apply(&key, limits, Op::Take(300)).await.unwrap();
    let mut keys = redis.keys();
    keys.sort();
    let id = SharedBudgets::key_id(&key);
    assert_eq!(keys, [format!("copilot:prod:rl:{{{id}}}:requests"), format!("copilot:prod:rl:{{{id}}}:tokens")]);
    for name in &keys {
        assert!(!name.contains("cp_test_secret_key") && !name.contains(&key.to_string()), "{name}");
    }
    // One request of 60 a minute refills in a second (+1 s); 300 tokens of 600 in 30 s (+1 s).
    let requests_ttl = redis.pttl(&keys[0]);
    let tokens_ttl = redis.pttl(&keys[1]);
    assert!((1_000..=2_000).contains(&requests_ttl), "{requests_ttl}");
    assert!((30_000..=31_000).contains(&tokens_ttl), "{tokens_ttl}");
    // Refunded to full: the token bucket's key is gone.
    budgets.apply(&key, limits, Op::Refund(300)).await.unwrap();
    assert_eq!(redis.keys().len(), 1);
}

/// Redis stops: each call fails within the timeout, never hangs. Redis comes back on the same
/// port: the same handle works again without being rebuilt (budgets start full: no persistence).
#[tokio::test]
async fn a_stopped_redis_is_an_error_in_bounded_time_and_a_restarted_one_is_used_again() {
    let mut redis = RedisServer::start();
    let budgets = SharedBudgets::connect(&redis.url(), "test", TIMEOUT).await.unwrap();
    let key = key();
    let limits = Limits { requests_per_minute: Some(1), tokens_per_minute: None };
    let admit = Op::Admit { uses_tokens: false };
    assert_eq!(budgets.apply(&key, limits, admit).await.unwrap(), Verdict::Done);
    assert!(matches!(budgets.apply(&key, limits, admit).await.unwrap(), Verdict::Limited { .. }));

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let error = budgets.apply(&key, limits, admit).await.unwrap_err();
        assert!(matches!(error, StateError::Redis(_) | StateError::Timeout(_)), "{error:?}");
        assert!(started.elapsed() < TIMEOUT * 3, "took {:?}", started.elapsed());
    }

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match budgets.apply(&key, limits, admit).await {
            Ok(verdict) => {
                // A fresh Redis has forgotten the script and the bucket: loaded again, full again.
                assert_eq!(verdict, Verdict::Done);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "still failing after the restart: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(budgets.apply(&key, limits, admit).await.unwrap(), Verdict::Limited { .. }));
}

/// An address where nothing listens: connecting fails within the timeout.
#[tokio::test]
async fn connecting_to_no_redis_fails_in_bounded_time() {
    let nothing = RedisServer::not_started();
    let started = Instant::now();
    let error = SharedBudgets::connect(&nothing.url(), "test", TIMEOUT).await.unwrap_err();
    assert!(matches!(error, StateError::Redis(_) | StateError::Timeout(_)), "{error:?}");
    assert!(started.elapsed() < TIMEOUT * 3, "took {:?}", started.elapsed());
    let error = SharedBudgets::connect("http://127.0.0.1/", "test", TIMEOUT).await.unwrap_err();
    assert!(matches!(error, StateError::Url(_)), "{error:?}");
}

/// `admit_take` is `admit` then `take` at the same instant, in one round trip: the request is spent
/// even when the tokens do not fit.
#[tokio::test]
async fn admit_and_take_is_admit_then_take() {
    let redis = RedisServer::start();
    let budgets = SharedBudgets::connect(&redis.url(), "test", TIMEOUT).await.unwrap();
    let key = key();
    let limits = Limits { requests_per_minute: Some(2), tokens_per_minute: Some(60) };
    let at = |seconds: u64| Some(1_000 * SECOND_US + seconds * SECOND_US);
    let both = |tokens| Op::AdmitAndTake { uses_tokens: true, tokens };
    assert_eq!(budgets.apply_at(&key, limits, both(50), at(0)).await.unwrap(), Verdict::Done);
    // 10 tokens left, 30 wanted: 20 more refill in 20 s; the request is spent all the same.
    assert_eq!(budgets.apply_at(&key, limits, both(30), at(0)).await.unwrap(), limited(Budget::Tokens, 20_000));
    // Both requests are spent: the next call waits 30 s for one.
    assert_eq!(budgets.apply_at(&key, limits, both(1), at(0)).await.unwrap(), limited(Budget::Requests, 30_000));
    // An Embed (no token check at admission) with nothing to take spends a request only.
    let embed = Op::AdmitAndTake { uses_tokens: false, tokens: 0 };
    assert_eq!(budgets.apply_at(&key, limits, embed, at(30)).await.unwrap(), Verdict::Done);
}
