//! The keys' budgets kept in the shared Redis (`state.redis_url`), so that every replica spends
//! from the same buckets. Admission and reservations wait for Redis's answer (one round trip,
//! bounded by `state.timeout`); settlements — the charge or refund when a completion ends, the
//! refund of a cancelled call — are sent by a background task, so that neither a response nor a
//! `Drop` ever waits on Redis. When Redis fails, `state.on_error` decides: this replica's own
//! buckets (`local`), admit (`open`), or refuse (`closed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::ApiKey;
use crate::config::OnStateError;
use crate::error::{GatewayError, KeyLimit};
use crate::state::{Budget, Op, SharedState, StateError, Verdict, state_metrics};

/// Settlements waiting for the background task; past this many, new ones are dropped (counted):
/// memory stays bounded however long Redis is slow.
const SETTLEMENT_QUEUE: usize = 8192;
/// Settlements sent together (the multiplexed connection pipelines them).
const SETTLEMENT_BATCH: usize = 64;

pub struct SharedKeyBudgets {
    state: Arc<SharedState>,
    settlements: mpsc::Sender<(Arc<ApiKey>, Op)>,
}

/// Where a reservation's tokens were taken, so its settlement goes to the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Shared,
    Local,
    /// Redis failed and `on_error = "open"` let the call run with nothing reserved.
    Nothing,
}

impl SharedKeyBudgets {
    /// Starts the background task that sends settlements; must run inside the Tokio runtime.
    pub fn start(state: Arc<SharedState>) -> Arc<SharedKeyBudgets> {
        let (settlements, queue) = mpsc::channel(SETTLEMENT_QUEUE);
        tokio::spawn(send_settlements(state.clone(), queue));
        Arc::new(SharedKeyBudgets { state, settlements })
    }

    /// Admits one call of `key` (see `ApiKey::admit`), in Redis.
    pub async fn admit(&self, key: &ApiKey, uses_tokens: bool) -> Result<(), GatewayError> {
        match self.state.apply(&key.id, key.limits(), Op::Admit { uses_tokens }).await {
            Ok(verdict) => verdict_result(key, verdict),
            Err(error) => match self.fall_back(key, &error)? {
                OnStateError::Local => key.admit(uses_tokens, Instant::now()),
                _ => Ok(()),
            },
        }
    }

    /// Takes tokens from `key`'s token budget in Redis: `op` is a `Take`, or an `AdmitAndTake` for a
    /// call whose admission was deferred to its reservation.
    pub async fn take(&self, key: &ApiKey, op: Op) -> Result<Held, GatewayError> {
        match self.state.apply(&key.id, key.limits(), op).await {
            Ok(verdict) => verdict_result(key, verdict).map(|()| Held::Shared),
            Err(error) => match self.fall_back(key, &error)? {
                OnStateError::Local => {
                    let now = Instant::now();
                    let tokens = match op {
                        Op::AdmitAndTake { uses_tokens, tokens } => {
                            key.admit(uses_tokens, now)?;
                            tokens
                        }
                        Op::Take(tokens) => tokens,
                        Op::Admit { .. } | Op::Charge(_) | Op::Refund(_) => 0,
                    };
                    key.take_tokens(tokens, now).map(|()| Held::Local)
                }
                _ => Ok(Held::Nothing),
            },
        }
    }

    /// Queues a charge or refund for `key`; never waits.
    pub fn settle(&self, key: Arc<ApiKey>, op: Op) {
        if let Err(error) = self.settlements.try_send((key, op)) {
            let (key, op) = error.into_inner();
            lost(&self.state, &key, op);
        }
    }

    /// The policy's answer to a failed operation: an error to return (`closed`), or the policy.
    fn fall_back(&self, key: &ApiKey, error: &StateError) -> Result<OnStateError, GatewayError> {
        let policy = self.state.on_error;
        state_metrics().fallbacks.add(1, &[opentelemetry::KeyValue::new("policy", policy.name())]);
        tracing::debug!(key = %key.name, policy = policy.name(), "shared budgets unavailable: {error}");
        match policy {
            OnStateError::Closed => Err(GatewayError::StateUnavailable { problem: error.to_string() }),
            policy => Ok(policy),
        }
    }
}

fn verdict_result(key: &ApiKey, verdict: Verdict) -> Result<(), GatewayError> {
    match verdict {
        Verdict::Done => Ok(()),
        Verdict::Limited { budget, retry_after } => {
            let limits = key.limits();
            let limit = match budget {
                Budget::Requests => KeyLimit::RequestsPerMinute(limits.requests_per_minute.unwrap_or(0)),
                Budget::Tokens => KeyLimit::TokensPerMinute(limits.tokens_per_minute.unwrap_or(0)),
            };
            Err(GatewayError::KeyLimited { key: key.name.clone(), limit, retry_after })
        }
    }
}

/// A settlement that did not reach Redis: applied to this replica's buckets with `on_error =
/// "local"`, otherwise lost (counted). A lost refund leaves the key short until the refill repays it;
/// a lost charge leaves one call's overrun unbilled.
fn lost(state: &SharedState, key: &ApiKey, op: Op) {
    if state.on_error == OnStateError::Local {
        key.settle_locally(op, Instant::now());
    } else {
        state_metrics().dropped.add(1, &[opentelemetry::KeyValue::new("operation", op.name())]);
    }
}

async fn send_settlements(state: Arc<SharedState>, mut queue: mpsc::Receiver<(Arc<ApiKey>, Op)>) {
    let mut batch = Vec::with_capacity(SETTLEMENT_BATCH);
    while queue.recv_many(&mut batch, SETTLEMENT_BATCH).await > 0 {
        let state = &state;
        futures::future::join_all(batch.drain(..).map(|(key, op)| async move {
            if state.apply(&key.id, key.limits(), op).await.is_err() {
                lost(state, &key, op);
            }
        }))
        .await;
    }
}

/// A call's admission left to its reservation, so that both cost one round trip to Redis. A call
/// that ends before it reserves (refused by validation, routing or the key's models) still spends
/// its request: in the background, when this is dropped.
pub struct DeferredAdmission {
    key: Arc<ApiKey>,
    shared: Arc<SharedKeyBudgets>,
    uses_tokens: bool,
    pending: AtomicBool,
}

impl DeferredAdmission {
    pub fn new(key: Arc<ApiKey>, shared: Arc<SharedKeyBudgets>, uses_tokens: bool) -> Arc<DeferredAdmission> {
        Arc::new(DeferredAdmission { key, shared, uses_tokens, pending: AtomicBool::new(true) })
    }

    /// The admission to make with the reservation (whether the call spends tokens), once.
    pub fn claim(&self) -> Option<bool> {
        self.pending.swap(false, Ordering::Relaxed).then_some(self.uses_tokens)
    }
}

impl Drop for DeferredAdmission {
    fn drop(&mut self) {
        if let Some(uses_tokens) = self.claim() {
            self.shared.settle(self.key.clone(), Op::Admit { uses_tokens });
        }
    }
}
