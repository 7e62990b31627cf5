//! State shared by every replica, in Redis (or Valkey): the key budgets that must hold across
//! replicas (`limiter`). Issue 18, stage 1 of `docs/design/shared-state.md`: the limiter and its
//! tests against a real server; the server does not use it yet (budgets are still per replica).

pub mod limiter;
