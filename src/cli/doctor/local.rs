//! Local mode: the configuration, each provider instance on its own, then the real gateway started
//! in-process and checked over gRPC like a remote one.
//!
//! Which problems are FAILs: the configuration not loading, a provider that cannot be set up
//! (`copilot serve` refuses to start then), and anything wrong with the providers the configured
//! default (or `--model`) needs — the default provider and the instance the model routes to:
//! unreachable, or its model missing. The same problems with another provider (the implicit local
//! Ollama of the built-in configuration, an alias's fallback) are WARNs.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use copilot::config::{
    Config, EmbeddedSettings, KindSettings, OnStateError, Overrides, PinThreads, ProviderConfig, ProviderKind,
    RedisTopology,
};
use copilot::router::Instance;
use copilot::state::SharedState;
use copilot_provider::{ModelInfo, ProviderError};
use tokio::net::TcpListener;

use super::Options;
use super::advice::Advisor;
use super::api::{self, Server, Suite};
use super::report::Report;

/// How long one provider check (health, model list, model details) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(options: &Options, config_path: Option<&Path>, report: &mut Report) {
    let config = match Config::load(config_path, &Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            let advice = "fix the setting the message names (see the README's Configuration section), then run \
                          `copilot doctor` again";
            report.fail("configuration", e.to_string(), advice.to_string());
            return;
        }
    };
    report.pass("configuration", describe(&config, config_path));
    if config.auth.enabled {
        report.info(
            "auth",
            format!(
                "API keys required ({} keys); the in-process check runs without them: check a running server with \
                 --addr and --api-key",
                config.auth.keys.len()
            ),
        );
    }
    if config.state.redis_url.is_some() {
        check_state(&config, report).await;
    }
    let advisor = Advisor::local(&config);
    let wanted = Wanted::new(&config, &options.model);
    for (name, settings) in &config.providers {
        check_provider(&config, name, settings, &wanted, &advisor, report).await;
    }
    gateway(&config, options, &advisor, report).await;
    report.info("resources: peak memory", peak_memory());
}

fn describe(config: &Config, path: Option<&Path>) -> String {
    let source = match path {
        Some(path) => format!("{}", path.display()),
        None => "no file: built-in providers and the environment".to_string(),
    };
    let providers: Vec<&str> = config.providers.keys().map(String::as_str).collect();
    let default = config.routing.default_model.as_deref().unwrap_or("none");
    format!("{source}; providers {}; default model {default}", providers.join(", "))
}

/// The providers and models the model under test needs.
struct Wanted {
    /// The model under test is an alias: its targets back each other up.
    alias: bool,
    /// `(instance, model)` pairs it routes to.
    targets: Vec<(String, String)>,
    default_provider: Option<String>,
}

impl Wanted {
    /// Resolves `model` (empty: the default model) as the router does, by name.
    fn new(config: &Config, model: &str) -> Wanted {
        let default_provider = config.default_provider().map(String::from);
        let name =
            if model.is_empty() { config.routing.default_model.clone().unwrap_or_default() } else { model.into() };
        let split = |name: &str| match name.split_once('/') {
            Some((provider, model)) if config.providers.contains_key(provider) => {
                Some((provider.to_string(), model.to_string()))
            }
            _ => default_provider.clone().map(|provider| (provider, name.to_string())),
        };
        let (alias, targets) = match config.routing.aliases.get(&name) {
            Some(tiers) => (true, tiers.iter().flat_map(|tier| tier.models()).filter_map(split).collect()),
            None if name.is_empty() => (false, Vec::new()),
            None => (false, split(&name).into_iter().collect()),
        };
        Wanted { alias, targets, default_provider }
    }

    /// Whether the instance's problems are FAILs.
    fn required(&self, instance: &str) -> bool {
        self.default_provider.as_deref() == Some(instance)
            || (!self.alias && self.targets.iter().any(|(target, _)| target == instance))
    }

    /// The models to look for at the instance, each with whether its absence is a FAIL.
    fn models(&self, instance: &str, settings: &ProviderConfig) -> Vec<(String, bool)> {
        let required = self.required(instance);
        fn add(models: &mut Vec<(String, bool)>, model: &str, required: bool) {
            match models.iter_mut().find(|(m, _)| m == model) {
                Some((_, r)) => *r |= required,
                None => models.push((model.to_string(), required)),
            }
        }
        let mut models = Vec::new();
        for (target, model) in &self.targets {
            if target == instance {
                add(&mut models, model, !self.alias);
            }
        }
        if let Some(model) = &settings.default_model {
            add(&mut models, model, required);
        }
        #[cfg(feature = "embedded")]
        if models.is_empty() && settings.kind() == ProviderKind::Embedded {
            add(&mut models, copilot_embedded::download::DEFAULT_CHAT_MODEL, required);
        }
        models
    }
}

/// One instance, as `copilot serve` builds it (without preloading models: the gateway loads them).
fn build_one(config: &Config, name: &str) -> Result<Instance, String> {
    let mut one = config.clone();
    one.providers.retain(|n, _| n == name);
    for provider in one.providers.values_mut() {
        if let KindSettings::Embedded(settings) = &mut provider.settings {
            settings.preload.clear();
        }
    }
    copilot::providers::build(&one)?.pop().ok_or_else(|| format!("provider '{name}' was not built"))
}

fn kind_label(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Ollama => "Ollama",
        ProviderKind::Embedded => "embedded engine",
        ProviderKind::OpenAi => "OpenAI-compatible",
        ProviderKind::Gemini => "Gemini",
        ProviderKind::Anthropic => "Anthropic",
    }
}

async fn check_provider(
    config: &Config,
    name: &str,
    settings: &ProviderConfig,
    wanted: &Wanted,
    advisor: &Advisor,
    report: &mut Report,
) {
    let required = wanted.required(name);
    let kind = settings.kind();
    // A WARN says why it is not a FAIL.
    let optional = |advice: String, required: bool| {
        if required { advice } else { format!("{advice} (needed only for calls routed to {name}/…)") }
    };
    let setup = format!("provider {name}: setup");
    let instance = match build_one(config, name) {
        Ok(instance) => instance,
        Err(e) => {
            let advice = advisor.setup_failed(name, &e);
            report.fail(setup, e, advice);
            return;
        }
    };
    let role = if wanted.default_provider.as_deref() == Some(name) { ", the default provider" } else { "" };
    let place = match &settings.settings {
        KindSettings::Embedded(EmbeddedSettings { models_dir: Some(dir), .. }) => {
            format!("models from {}", dir.display())
        }
        KindSettings::Embedded(_) => "in-process".to_string(),
        _ => format!("at {}", instance.endpoint),
    };
    report.pass(setup, format!("{} {place}{role}", kind_label(kind)));

    let reachable = format!("provider {name}: reachable");
    let version = match tokio::time::timeout(CHECK_TIMEOUT, instance.provider.health()).await {
        Ok(Ok(health)) => health.version,
        Ok(Err(ProviderError::Unauthorized(message))) => {
            let advice = optional(advisor.unauthorized(name), required);
            report.problem(required, reachable, format!("the key was refused: {message}"), advice);
            return;
        }
        Ok(Err(e)) => {
            let detail = format!("{} at {}", e, instance.endpoint);
            report.problem(required, reachable, detail, optional(advisor.unreachable(name), required));
            return;
        }
        Err(_) => {
            let detail =
                format!("no answer from {} within {}", instance.endpoint, humantime::format_duration(CHECK_TIMEOUT));
            report.problem(required, reachable, detail, optional(advisor.unreachable(name), required));
            return;
        }
    };
    let listed =
        tokio::time::timeout(instance.policy.list_timeout.min(CHECK_TIMEOUT), instance.provider.list_models()).await;
    let available: Vec<String> = match &listed {
        Ok(Ok(models)) => models.iter().map(|m| m.name.clone()).collect(),
        _ => Vec::new(),
    };
    let models = match listed {
        Ok(Ok(models)) => format!("{} models", models.len()),
        Ok(Err(e)) => format!("cannot list its models: {e}"),
        Err(_) => "its model list did not come in time".to_string(),
    };
    let detail = match (kind, version) {
        // The engine's own report counts its models.
        (ProviderKind::Embedded, Some(version)) => version,
        (_, Some(version)) => format!("version {version}; {models}"),
        (_, None) => format!("answering; {models}"),
    };
    report.pass(reachable, detail);

    for (model, required) in wanted.models(name, settings) {
        let check = format!("provider {name}: model");
        match tokio::time::timeout(CHECK_TIMEOUT, instance.provider.describe_model(&model)).await {
            Ok(Ok(info)) => report.pass(check, format!("{model}: {}", details(&info))),
            Ok(Err(ProviderError::ModelNotFound { .. })) => {
                let advice = optional(advisor.model_missing(name, &model, &available), required);
                report.problem(required, check, format!("{model}: not found at {name}"), advice);
            }
            Ok(Err(ProviderError::ModelUnusable(message))) => {
                let advice =
                    optional(format!("fetch it again (`copilot models fetch {model}`) or replace the file"), required);
                report.problem(required, check, format!("{model}: cannot be used: {message}"), advice);
            }
            Ok(Err(e)) => report.problem(required, check, format!("{model}: {e}"), None),
            Err(_) => {
                let detail = format!("{model}: no answer within {}", humantime::format_duration(CHECK_TIMEOUT));
                report.problem(required, check, detail, None);
            }
        }
    }
}

fn details(info: &ModelInfo) -> String {
    super::model_details(&info.family, &info.parameter_size, &info.quantization, info.context_length, info.size_bytes)
}

/// Starts the gateway in-process on loopback, as `copilot serve` would with this configuration
/// (minus TLS, API keys and the extra listeners), runs the gRPC checks against it, and stops it.
/// The shared Redis: reachable, how fast, which server, and what it does when full. Unreachable is a
/// FAIL only with `on_error = "closed"` (then every call with a budget is refused); otherwise the
/// server works on this replica's budgets, and it is a WARN.
async fn check_state(config: &Config, report: &mut Report) {
    const CHECK: &str = "shared state (Redis)";
    let state = match SharedState::from_config(&config.state) {
        Ok(Some(state)) => state,
        Ok(None) => return,
        Err(e) => return report.fail(CHECK, e.to_string(), "fix state.redis_url or state.tls_ca_file".to_string()),
    };
    let mut url = state.url().masked();
    let connected = state.connect().await;
    if let Some(primary) = state.sentinel_primary() {
        url = format!("{url} (Sentinel's primary: {primary})");
    }
    match connected {
        Ok(took) => {
            let (server, policy) = match state.describe().await {
                Ok((version, policy)) => {
                    (format!("Redis {version}"), policy.unwrap_or_else(|| "unknown (CONFIG GET refused)".into()))
                }
                Err(e) => (format!("INFO failed: {e}"), "unknown".into()),
            };
            let detail = format!(
                "{url}: PING {:.1} ms, {server}, maxmemory-policy {policy}; key budgets{} shared, on_error = {}",
                took.as_secs_f64() * 1e3,
                if config.cache.enabled { " and the response cache" } else { "" },
                config.state.on_error.name()
            );
            if config.cache.enabled && policy == "noeviction" {
                let advice = "give Redis an eviction policy (maxmemory-policy volatile-lru: every key Copilot writes \
                              expires): with noeviction a full Redis refuses new cache entries"
                    .to_string();
                report.problem(false, CHECK, detail, advice);
            } else {
                report.pass(CHECK, detail);
            }
        }
        Err(e) => {
            let closed = config.state.on_error == OnStateError::Closed;
            let effect = if closed {
                "every call of a key with a budget is refused (on_error = closed)"
            } else {
                "each replica falls back to its own budgets (on_error = local) or admits (open)"
            };
            let advice = if config.state.topology == RedisTopology::Sentinel {
                "start Redis and its sentinels, or check state.redis_url (the Sentinel service name, password, \
                 rediss:// for TLS), state.sentinels and the network path to them"
            } else {
                "start Redis, or check state.redis_url (host, port, password, rediss:// for TLS) and the network \
                 path to it"
            };
            report.problem(closed, CHECK, format!("{url} does not answer: {e}; {effect}"), advice.to_string());
        }
    }
}

async fn gateway(config: &Config, options: &Options, advisor: &Advisor, report: &mut Report) {
    const CHECK: &str = "gateway: started";
    let mut served = config.clone();
    served.server.tls = None;
    served.server.metrics_addr = None;
    served.server.health_addr = None;
    served.server.drain_delay = Duration::ZERO;
    served.server.shutdown_grace = Duration::from_secs(2);
    served.server.worker_threads = Some(1);
    served.server.pin_threads = PinThreads::Never;
    served.auth.enabled = false;
    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
        Ok(listener) => listener,
        Err(e) => return report.fail(CHECK, format!("cannot listen on 127.0.0.1: {e}"), None),
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => return report.fail(CHECK, format!("cannot listen on 127.0.0.1: {e}"), None),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = copilot::server::serve_on(listener, served, prometheus::Registry::new(), async move {
        let _ = stopped.await;
    });
    tokio::pin!(server);
    let target = Server {
        authority: addr.to_string(),
        shown: format!("in-process on {addr}, as `copilot serve` runs (without TLS and API keys)"),
        tls: None,
        authorization: None,
    };
    let suite = Suite {
        local: true,
        connect_check: CHECK,
        model: &options.model,
        max_latency: options.max_latency,
        timeout: options.timeout,
        advisor,
    };
    let ended_early = {
        let checks = api::run(&suite, &target, report);
        tokio::pin!(checks);
        tokio::select! {
            served = &mut server => Some(served),
            () = &mut checks => None,
        }
    };
    match ended_early {
        Some(Err(e)) => report.fail(
            CHECK,
            e.to_string(),
            "`copilot serve` stops the same way: fix what the message says".to_string(),
        ),
        Some(Ok(())) => report.fail(CHECK, "the in-process gateway stopped by itself", None),
        None => {
            let _ = stop.send(());
            // Whatever is left ends with the runtime.
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

/// The process's peak resident memory, which includes the gateway and any model it ran in-process.
fn peak_memory() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    match std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(vm_hwm) {
        Some(bytes) => format!(
            "{:.1} MiB (VmHWM of this process, which ran the gateway and its in-process models); {cpus} CPUs",
            bytes as f64 / (1024.0 * 1024.0)
        ),
        None => format!("not available on this system; {cpus} CPUs"),
    }
}

/// `VmHWM` of a `/proc/<pid>/status`, in bytes.
fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot::config::AliasTarget;

    fn config(providers: &[(&str, ProviderKind)], default_provider: &str, default_model: Option<&str>) -> Config {
        let mut config = Config::default();
        for (name, kind) in providers {
            config.providers.insert(name.to_string(), ProviderConfig::new(*kind));
        }
        config.routing.default_provider = Some(default_provider.into());
        config.routing.default_model = default_model.map(String::from);
        config
    }

    #[test]
    fn the_default_provider_and_the_model_under_test_are_required_others_are_not() {
        let config = config(
            &[("ollama", ProviderKind::Ollama), ("gemini", ProviderKind::Gemini)],
            "gemini",
            Some("gemini/gemini-2.5-flash"),
        );
        let wanted = Wanted::new(&config, "");
        assert!(wanted.required("gemini"));
        assert!(!wanted.required("ollama"));
        assert_eq!(wanted.models("gemini", &config.providers["gemini"]), [("gemini-2.5-flash".to_string(), true)]);
        assert!(wanted.models("ollama", &config.providers["ollama"]).is_empty());

        // --model elsewhere makes that instance required too; a bare name goes to the default provider.
        let wanted = Wanted::new(&config, "ollama/llama3.2:3b");
        assert!(wanted.required("ollama") && wanted.required("gemini"));
        assert_eq!(Wanted::new(&config, "gemini-pro").targets, [("gemini".to_string(), "gemini-pro".to_string())]);
    }

    #[test]
    fn an_instance_default_model_is_checked_and_required_only_where_the_instance_is() {
        let mut config = config(&[("ollama", ProviderKind::Ollama), ("gemini", ProviderKind::Gemini)], "gemini", None);
        config.providers.get_mut("ollama").unwrap().default_model = Some("llama3.2:3b".into());
        let wanted = Wanted::new(&config, "");
        assert_eq!(wanted.models("ollama", &config.providers["ollama"]), [("llama3.2:3b".to_string(), false)]);
    }

    #[test]
    fn alias_targets_back_each_other_up() {
        let mut config =
            config(&[("a", ProviderKind::Ollama), ("b", ProviderKind::Ollama), ("c", ProviderKind::Ollama)], "c", None);
        config.routing.aliases.insert(
            "fast".into(),
            vec![
                AliasTarget::Replicas { replicas: vec!["a/m".into(), "b/m".into()] },
                AliasTarget::Model("c/n".into()),
            ],
        );
        let wanted = Wanted::new(&config, "fast");
        assert!(!wanted.required("a") && !wanted.required("b") && wanted.required("c"));
        assert_eq!(wanted.models("a", &config.providers["a"]), [("m".to_string(), false)]);
        assert_eq!(wanted.models("c", &config.providers["c"]), [("n".to_string(), false)]);
    }

    #[test]
    fn peak_memory_comes_from_vm_hwm() {
        let status = "Name:\tcopilot\nVmPeak:\t  300000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(vm_hwm(status), Some(2048 * 1024));
        assert_eq!(vm_hwm("Name:\tx\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_memory().contains("MiB (VmHWM"), "{}", peak_memory());
        }
    }
}
