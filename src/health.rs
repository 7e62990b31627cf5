//! Background probes of every provider instance. They feed routing (an unhealthy replica is tried
//! last) and `grpc.health.v1`: `copilot.v1.Copilot` is SERVING while at least one instance can
//! serve, and each instance has its own entry, `provider/<name>`, for operators. `""` stays SERVING
//! while the process runs (liveness); both turn NOT_SERVING for good when a drain starts. With
//! `state.redis_url`, the entry `state` says whether the shared Redis answers; the API's own entry
//! does not follow it (a Redis blip must not pull every replica from its endpoints at once: calls get
//! `state.on_error`'s answer instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::gateway::Gateway;
use crate::router::Instance;
use crate::state::SharedState;

/// The health-check name of the shared Redis.
pub const STATE_SERVICE: &str = "state";

/// The health-check name of one instance.
pub fn instance_service_name(instance: &str) -> String {
    format!("provider/{instance}")
}

pub struct HealthState {
    reporter: HealthReporter,
    draining: AtomicBool,
    api_service: &'static str,
}

impl HealthState {
    pub fn new(reporter: HealthReporter, api_service: &'static str) -> Arc<Self> {
        Arc::new(Self { reporter, draining: AtomicBool::new(false), api_service })
    }

    /// Everything NOT_SERVING, and probes no longer change that.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.reporter.set_service_status("", ServingStatus::NotServing).await;
        self.reporter.set_service_status(self.api_service, ServingStatus::NotServing).await;
    }

    /// One entry's status, unless draining.
    async fn set(&self, service: &str, up: bool) {
        if !self.draining.load(Ordering::SeqCst) {
            let status = if up { ServingStatus::Serving } else { ServingStatus::NotServing };
            self.reporter.set_service_status(service, status).await;
        }
    }

    async fn update(&self, gateway: &Gateway, instance: &Instance, healthy: bool) {
        if self.draining.load(Ordering::SeqCst) {
            return;
        }
        let status = |up| if up { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status(instance_service_name(&instance.name), status(healthy)).await;
        let any = gateway.router().instances().any(|i| i.available());
        self.reporter.set_service_status(self.api_service, status(any)).await;
    }
}

/// Starts one probe loop per instance; the first probe runs at once.
pub fn spawn_probes(gateway: Arc<Gateway>, health: Arc<HealthState>) {
    for instance in gateway.router().instances().cloned().collect::<Vec<_>>() {
        let gateway = gateway.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut was_healthy: Option<bool> = None;
            loop {
                let timeout =
                    instance.policy.health_interval.min(Duration::from_secs(5)).max(Duration::from_millis(100));
                let result = tokio::time::timeout(timeout, instance.provider.health()).await;
                let healthy = matches!(result, Ok(Ok(_)));
                instance.state.healthy.store(healthy, Ordering::Relaxed);
                if was_healthy != Some(healthy) {
                    log_change(&instance, &result);
                    was_healthy = Some(healthy);
                }
                health.update(&gateway, &instance, healthy).await;
                tokio::time::sleep(instance.policy.health_interval).await;
            }
        });
    }
}

type ProbeResult =
    Result<Result<copilot_provider::HealthReport, copilot_provider::ProviderError>, tokio::time::error::Elapsed>;

fn log_change(instance: &Instance, result: &ProbeResult) {
    match result {
        Ok(Ok(report)) => tracing::info!(
            provider = %instance.name,
            endpoint = %instance.endpoint,
            version = report.version.as_deref().unwrap_or("unknown"),
            "provider is up"
        ),
        Ok(Err(e)) => tracing::warn!(
            provider = %instance.name,
            endpoint = %instance.endpoint,
            "provider '{}' does not answer at {}: {e}. Calls routed to it fail over to other targets or end with \
             UNAVAILABLE until it is up (for Ollama: run `ollama serve`, or set OLLAMA_HOST)",
            instance.name,
            instance.endpoint
        ),
        Err(_) => tracing::warn!(
            provider = %instance.name,
            endpoint = %instance.endpoint,
            "provider did not answer its health probe in time"
        ),
    }
}

/// PINGs the shared Redis every `state.health_interval` (bounded by `state.timeout`) for the `state`
/// entry. The entry is NOT_SERVING until the first probe, which runs at once and waits for the
/// connection to be made, has reached Redis.
pub async fn spawn_state_probe(state: Arc<SharedState>, health: Arc<HealthState>) {
    health.set(STATE_SERVICE, false).await;
    tokio::spawn(async move {
        let mut was_up: Option<bool> = None;
        let mut result = state.connect().await;
        loop {
            let up = result.is_ok();
            if was_up != Some(up) {
                match &result {
                    Ok(took) => {
                        tracing::info!(url = %state.url(), ping_ms = took.as_secs_f64() * 1e3, "the shared Redis answers")
                    }
                    Err(e) => tracing::warn!(
                        url = %state.url(),
                        on_error = state.on_error.name(),
                        "the shared Redis does not answer ({e}); key budgets are decided by state.on_error = \"{}\" until \
                         it does",
                        state.on_error.name()
                    ),
                }
                was_up = Some(up);
            }
            health.set(STATE_SERVICE, up).await;
            tokio::time::sleep(state.health_interval).await;
            result = state.ping().await;
        }
    });
}
