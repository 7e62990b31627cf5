//! What to do about a failed check, in the words of the setting or command that fixes it. Local
//! mode knows each provider's kind and address; remote mode only what the server's statuses say.

use std::collections::BTreeMap;
use std::time::Duration;

use copilot::config::{Config, ProviderKind};
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub struct Advisor {
    /// Each configured provider's kind and upstream (local mode only).
    providers: BTreeMap<String, (ProviderKind, String)>,
    local: bool,
}

impl Advisor {
    pub fn remote() -> Advisor {
        Advisor { providers: BTreeMap::new(), local: false }
    }

    pub fn local(config: &Config) -> Advisor {
        let providers =
            config.providers.iter().map(|(name, p)| (name.clone(), (p.kind(), p.base_url.clone()))).collect();
        Advisor { providers, local: true }
    }

    fn kind(&self, provider: &str) -> Option<(ProviderKind, &str)> {
        self.providers.get(provider).map(|(kind, url)| (*kind, url.as_str()))
    }

    /// The provider's upstream does not answer.
    pub fn unreachable(&self, provider: &str) -> String {
        match self.kind(provider) {
            Some((ProviderKind::Ollama, url)) if provider == "ollama" => {
                format!("start Ollama (`ollama serve`), or set OLLAMA_HOST to where it runs (now {url})")
            }
            Some((ProviderKind::Ollama, url)) => {
                format!("start the Ollama at {url}, or fix providers.{provider}.base_url")
            }
            Some((ProviderKind::OpenAi, url)) => format!(
                "start the OpenAI-compatible server at {url}, or fix providers.{provider}.base_url{}",
                vendor_hint(provider, "openai", " (OPENAI_BASE_URL)")
            ),
            Some((ProviderKind::Embedded, _)) => {
                "the embedded engine runs in this process: see the message above".to_string()
            }
            Some((_, url)) => {
                format!("check the network path to {url} (a proxy or firewall?), or fix providers.{provider}.base_url")
            }
            None => format!(
                "the server cannot reach its provider '{provider}': start that upstream, or fix its base_url in the \
                 server's configuration (run `copilot doctor` on the server's host for details)"
            ),
        }
    }

    /// The upstream refused the API key configured for the provider.
    pub fn unauthorized(&self, provider: &str) -> String {
        match self.kind(provider).and_then(|(kind, _)| kind.default_key_variable()) {
            Some(var) => format!(
                "the upstream refused the API key of provider '{provider}': set a valid {var} (or \
                 providers.{provider}.api_key_env / api_key_file)"
            ),
            None => format!("the upstream refused the API key configured for provider '{provider}' on the server"),
        }
    }

    /// A provider could not be set up (a missing API key, a bad setting).
    pub fn setup_failed(&self, provider: &str, message: &str) -> String {
        match self.kind(provider).and_then(|(kind, _)| kind.default_key_variable()) {
            Some(var) if message.contains("API key") => {
                format!(
                    "set {var} (or providers.{provider}.api_key_env / api_key_file); `copilot serve` stops at start until then"
                )
            }
            _ => format!("fix providers.{provider} as the message says; `copilot serve` stops at start until then"),
        }
    }

    /// The model is not at the provider. `available` is what it has (possibly empty).
    pub fn model_missing(&self, provider: &str, model: &str, available: &[String]) -> String {
        let choose = if available.is_empty() {
            String::new()
        } else {
            let shown: Vec<&str> = available.iter().take(5).map(String::as_str).collect();
            let more = if available.len() > shown.len() { ", …" } else { "" };
            format!("; or use one it has: {}{more}", shown.join(", "))
        };
        match self.kind(provider) {
            Some((ProviderKind::Ollama, url)) => {
                let at = if is_local(url) { String::new() } else { format!(" on the Ollama host ({url})") };
                format!("ollama pull {model}{at}{choose}")
            }
            Some((ProviderKind::Embedded, _)) => embedded_missing(provider, model, &choose),
            Some((kind, _)) => format!(
                "check the model name (providers.{provider}.default_model{}){choose}",
                vendor_hint(provider, kind_name(kind), &format!(" or {}_MODEL", kind_name(kind).to_uppercase()))
            ),
            None => format!(
                "the server's provider '{provider}' has no model '{model}': pull or fetch it there (Ollama: \
                 `ollama pull {model}`; the embedded engine: `copilot models fetch`), or pass --model with a model \
                 ListModels shows"
            ),
        }
    }

    /// A generation worked but took longer than the threshold.
    pub fn slow(&self, limit: Duration) -> String {
        format!(
            "the model answers, but slower than --max-latency {}: a smaller or more quantized model, a GPU, fewer \
             concurrent users, or keeping the model loaded (keep_alive, preload) helps; or raise --max-latency",
            humantime::format_duration(limit)
        )
    }

    /// What to do about a status a Copilot server answered with.
    pub fn for_status(&self, status: &Status) -> Option<String> {
        let info = status.get_details_error_info();
        let reason = info.as_ref().map(|i| i.reason.as_str()).unwrap_or_default();
        let meta = |key: &str| info.as_ref().and_then(|i| i.metadata.get(key).cloned()).unwrap_or_default();
        let (provider, model) = (meta("provider"), meta("model"));
        let advice = match reason {
            "API_KEY_MISSING" => "UNAUTHENTICATED: pass --api-key KEY (or set COPILOT_API_KEY)".to_string(),
            "API_KEY_INVALID" | "API_KEY_MALFORMED" => {
                "UNAUTHENTICATED: the server does not know that key: check --api-key / COPILOT_API_KEY \
                 (`copilot keys new` makes a key and its [[auth.keys]] entry)"
                    .to_string()
            }
            "MODEL_NOT_ALLOWED" => {
                "this key may not use the model: pass --model with one it may use, or add the model to the key's \
                 auth.keys[].models"
                    .to_string()
            }
            "MODEL_REQUIRED" if self.local => {
                "no default model is configured: set routing.default_model (or OLLAMA_MODEL, GEMINI_MODEL, …), or \
                 pass --model"
                    .to_string()
            }
            "MODEL_REQUIRED" => "the server has no default model: pass --model".to_string(),
            "MODEL_NOT_FOUND" => self.model_missing(&provider, &model, &[]),
            "MODEL_UNUSABLE" => format!(
                "the model's file is damaged or cannot be loaded: fetch it again (`copilot models fetch {model}`) or \
                 replace it"
            ),
            "UPSTREAM_UNREACHABLE" | "UPSTREAM_ERROR" | "CIRCUIT_OPEN" | "UPSTREAM_STREAM_INTERRUPTED"
                if !provider.is_empty() =>
            {
                self.unreachable(&provider)
            }
            "NO_PROVIDER_AVAILABLE" => "no provider can serve: see the provider rows (or the server's log)".to_string(),
            "UPSTREAM_UNAUTHORIZED" => self.unauthorized(&provider),
            "UPSTREAM_TIMEOUT" | "DEADLINE_EXCEEDED" => {
                "no answer in time: the model may still be loading (try again), or be too slow for this machine; \
                 raise --timeout or the provider's timeout"
                    .to_string()
            }
            "UPSTREAM_RATE_LIMITED"
            | "UPSTREAM_OVERLOADED"
            | "PROVIDER_AT_CAPACITY"
            | "KEY_REQUEST_LIMIT"
            | "KEY_TOKEN_LIMIT" => "the provider or key is busy or over its limits: try again later".to_string(),
            _ => return self.for_code(status),
        };
        Some(advice)
    }

    fn for_code(&self, status: &Status) -> Option<String> {
        Some(match status.code() {
            Code::Unauthenticated => "UNAUTHENTICATED: pass --api-key KEY (or set COPILOT_API_KEY)".to_string(),
            Code::Unimplemented => "the server does not implement this: is it Copilot (and a recent one)?".to_string(),
            Code::Unavailable if !self.local => {
                "cannot reach the server: is copilot running there? If it speaks TLS, pass --tls".to_string()
            }
            Code::DeadlineExceeded => {
                "no answer in time: the model may still be loading (try again), or raise --timeout".to_string()
            }
            Code::Cancelled if status.message().contains("imeout") => {
                "no answer in time: the model may still be loading (try again), or raise --timeout".to_string()
            }
            _ => return None,
        })
    }

    /// The connection works but gRPC over it does not: a TLS listener spoken to in plaintext (or
    /// the other way round), something else than a gRPC server, or a server too stuck to answer.
    pub fn not_grpc(&self, tls: bool) -> String {
        if tls {
            "nothing answers gRPC over TLS there: leave out --tls (and https://) if the server is plaintext, check \
             --addr, or look at the server's log"
                .to_string()
        } else {
            "nothing answers plaintext gRPC there: if the server has [server.tls], pass --tls (and --ca-file for a \
             private CA); else check --addr, or look at the server's log"
                .to_string()
        }
    }
}

#[cfg(feature = "embedded")]
fn embedded_missing(provider: &str, model: &str, choose: &str) -> String {
    use copilot_embedded::download::{self, DEFAULT_CHAT_MODEL};
    match download::find(model) {
        Some(found) if found.name == DEFAULT_CHAT_MODEL => format!("run `copilot models fetch`{choose}"),
        Some(found) => format!("run `copilot models fetch {}`{choose}", found.name),
        None => format!(
            "put {model}.gguf in the models directory (providers.{provider}.models_dir or COPILOT_MODELS_DIR), or \
             name its file in providers.{provider}.models{choose}"
        ),
    }
}

#[cfg(not(feature = "embedded"))]
fn embedded_missing(_: &str, _: &str, _: &str) -> String {
    "this build has no embedded engine (built without the `embedded` feature)".to_string()
}

/// `hint` when the provider is named after its kind (the vendor variables apply to that one only).
fn vendor_hint(provider: &str, kind: &str, hint: &str) -> String {
    if provider == kind { hint.to_string() } else { String::new() }
}

fn kind_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Ollama => "ollama",
        ProviderKind::Embedded => "embedded",
        ProviderKind::OpenAi => "openai",
        ProviderKind::Gemini => "gemini",
        ProviderKind::Anthropic => "anthropic",
    }
}

/// Whether an upstream URL points at this machine (so `ollama pull` here is the fix).
fn is_local(url: &str) -> bool {
    http::Uri::try_from(url)
        .ok()
        .and_then(|uri| uri.host().map(str::to_string))
        .is_some_and(|host| matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]" | "::1"))
}

/// A status as a row's detail: `CODE: message`.
pub fn describe_status(status: &Status) -> String {
    format!("{}: {}", copilot::telemetry::rpc_trace::code_name(status.code() as i32), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot::config::ProviderConfig;
    use std::collections::HashMap;
    use tonic_types::ErrorDetails;

    fn advisor(providers: &[(&str, ProviderKind, &str)]) -> Advisor {
        let mut config = Config::default();
        for (name, kind, url) in providers {
            let mut provider = ProviderConfig::new(*kind);
            provider.base_url = url.to_string();
            config.providers.insert(name.to_string(), provider);
        }
        Advisor::local(&config)
    }

    fn status(code: Code, reason: &str, provider: &str, model: &str) -> Status {
        let mut details = ErrorDetails::new();
        let metadata = HashMap::from([("provider".to_string(), provider.into()), ("model".to_string(), model.into())]);
        details.set_error_info(reason, "copilot.v1", metadata);
        Status::with_error_details(code, "message", details)
    }

    #[test]
    fn a_missing_model_is_pulled_where_its_provider_runs() {
        let a = advisor(&[
            ("ollama", ProviderKind::Ollama, "http://localhost:11434"),
            ("gpu", ProviderKind::Ollama, "http://10.0.0.7:11434"),
            ("gemini", ProviderKind::Gemini, "https://generativelanguage.googleapis.com"),
        ]);
        assert_eq!(a.model_missing("ollama", "llama3.2:3b", &[]), "ollama pull llama3.2:3b");
        let remote = a.model_missing("gpu", "llama3.2:3b", &["qwen".into()]);
        assert!(remote.starts_with("ollama pull llama3.2:3b on the Ollama host (http://10.0.0.7:11434)"), "{remote}");
        assert!(remote.ends_with("use one it has: qwen"), "{remote}");
        let hosted = a.model_missing("gemini", "gemini-9", &[]);
        assert!(hosted.contains("providers.gemini.default_model or GEMINI_MODEL"), "{hosted}");
        let unknown = Advisor::remote().model_missing("ollama", "x", &[]);
        assert!(unknown.contains("ollama pull x") && unknown.contains("--model"), "{unknown}");
    }

    #[cfg(feature = "embedded")]
    #[test]
    fn a_missing_embedded_model_is_fetched() {
        let a = advisor(&[("embedded", ProviderKind::Embedded, "")]);
        let default = copilot_embedded::download::DEFAULT_CHAT_MODEL;
        assert_eq!(a.model_missing("embedded", default, &[]), "run `copilot models fetch`");
        assert!(a.model_missing("embedded", "mistral", &[]).contains("mistral.gguf"));
    }

    #[test]
    fn statuses_map_to_what_fixes_them() {
        let a = advisor(&[("ollama", ProviderKind::Ollama, "http://localhost:11434")]);
        let missing_key = Status::with_error_details(Code::Unauthenticated, "no key", {
            let mut d = ErrorDetails::new();
            d.set_error_info("API_KEY_MISSING", "copilot.v1", HashMap::new());
            d
        });
        assert!(a.for_status(&missing_key).unwrap().contains("--api-key"));
        let down = status(Code::Unavailable, "UPSTREAM_UNREACHABLE", "ollama", "llama3.2:3b");
        assert!(a.for_status(&down).unwrap().contains("OLLAMA_HOST"));
        let not_found = status(Code::NotFound, "MODEL_NOT_FOUND", "ollama", "llama3.2:3b");
        assert_eq!(a.for_status(&not_found).unwrap(), "ollama pull llama3.2:3b");
        let refused = status(Code::Unavailable, "UPSTREAM_UNAUTHORIZED", "ollama", "m");
        assert!(a.for_status(&refused).unwrap().contains("refused the API key"));
        assert!(Advisor::remote().for_status(&Status::unavailable("connection refused")).unwrap().contains("--tls"));
        assert_eq!(a.for_status(&Status::internal("bug")), None);
    }

    #[test]
    fn a_missing_key_names_the_variable_and_an_unreachable_ollama_its_host() {
        let a = advisor(&[
            ("gemini", ProviderKind::Gemini, "https://generativelanguage.googleapis.com"),
            ("ollama", ProviderKind::Ollama, "http://localhost:11434"),
            ("gpu", ProviderKind::Ollama, "http://10.0.0.7:11434"),
        ]);
        let setup = a.setup_failed("gemini", "provider 'gemini' needs an API key: set GEMINI_API_KEY");
        assert!(setup.starts_with("set GEMINI_API_KEY"), "{setup}");
        assert!(a.unreachable("ollama").contains("set OLLAMA_HOST"));
        let gpu = a.unreachable("gpu");
        assert!(gpu.contains("providers.gpu.base_url") && !gpu.contains("OLLAMA_HOST"), "{gpu}");
    }
}
