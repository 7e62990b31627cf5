//! The checks a client can make over gRPC: health, reflection, ListModels, GetModel, a unary
//! Generate and a streamed Chat, with their latencies. Remote mode runs them against the server at
//! `--addr`; local mode against the gateway it started in-process, so validation, routing,
//! retries and the gRPC layer are what a real client would go through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use copilot::proto::v1::copilot_client::CopilotClient;
use copilot::proto::v1::{
    ChatRequest, GenerateRequest, GenerationOptions, GetModelRequest, ListModelsRequest, ListModelsResponse, Message,
    Model, Role,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::advice::{Advisor, describe_status};
use super::report::Report;

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a health or reflection answer may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long ListModels and GetModel may take (the server waits up to each provider's list_timeout).
const LISTING_TIMEOUT: Duration = Duration::from_secs(30);
/// The most output tokens a test generation asks for: enough to show the model works, bounded.
const TEST_MAX_TOKENS: u32 = 32;

/// Where the server is and how to talk to it.
pub struct Server {
    /// `host:port`.
    pub authority: String,
    /// How the rows name it.
    pub shown: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `Bearer <key>`, sent with every call.
    pub authorization: Option<MetadataValue<Ascii>>,
}

/// What to check and how strictly.
pub struct Suite<'a> {
    /// Local mode: the server is the doctor's own (provider rows came before; no per-provider health).
    pub local: bool,
    /// The name of the connection row.
    pub connect_check: &'a str,
    /// The model to test (empty: the server's default).
    pub model: &'a str,
    pub max_latency: Duration,
    /// The longest one generation may take.
    pub timeout: Duration,
    pub advisor: &'a Advisor,
}

#[derive(Clone)]
struct Authorization(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Authorized = InterceptedService<Channel, Authorization>;

async fn connect(server: &Server) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{}", server.authority))
        .map_err(|e| format!("not an address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    let connecting = async {
        match &server.tls {
            None => endpoint.connect().await,
            Some(tls) => endpoint.connect_with_connector(tls_connector(server.authority.clone(), tls.clone())).await,
        }
    };
    // The connector's own timeout covers TCP (and TLS); this bounds the HTTP/2 handshake too.
    let Ok(connected) = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), connecting).await else {
        return Err(format!("no connection within {}", humantime::format_duration(CONNECT_TIMEOUT)));
    };
    connected.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        text
    })
}

/// TLS over TCP, verifying the server's certificate for the host of `authority`; HTTP/2 by ALPN.
fn tls_connector(
    authority: String,
    tls: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<
        Output = std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>,
    > + Send,
> + Send
+ Clone
+ 'static {
    tower::service_fn(move |_: http::Uri| {
        let (authority, tls) = (authority.clone(), tls.clone());
        async move {
            let host = authority.rsplit_once(':').map_or(authority.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// Runs every check against `server`, adding a row for each.
pub async fn run(suite: &Suite<'_>, server: &Server, report: &mut Report) {
    let channel = match connect(server).await {
        Ok(channel) => channel,
        Err(e) => {
            let advice = if suite.local {
                "this is a bug in copilot doctor or the gateway: please report it with this output".to_string()
            } else if server.tls.is_some() {
                format!(
                    "is copilot running at {} with TLS? (a certificate problem: pass --ca-file with the CA that issued it)",
                    server.authority
                )
            } else {
                format!(
                    "is copilot running at {}? (`copilot serve`; `copilot health` checks a local one). If it speaks \
                     TLS, pass --tls",
                    server.authority
                )
            };
            report.fail(suite.connect_check, format!("{}: {e}", server.shown), advice);
            return;
        }
    };
    let authorization = Authorization(server.authorization.clone());
    let mut health = HealthClient::with_interceptor(channel.clone(), authorization.clone());
    let mut api = CopilotClient::with_interceptor(channel.clone(), authorization.clone());

    // The first call shows whether gRPC works over the connection at all: a plaintext client at a
    // TLS listener connects, then fails its calls with transport errors.
    let liveness = bounded(PROBE_TIMEOUT, health.check(HealthCheckRequest { service: String::new() })).await;
    match &liveness {
        Err(status) if is_transport_error(status) || status.code() == Code::DeadlineExceeded => {
            let detail = format!("{}: connected, but no gRPC answer: {}", server.shown, describe_status(status));
            let advice = if suite.local {
                "this is a bug in copilot doctor or the gateway: please report it with this output".to_string()
            } else {
                suite.advisor.not_grpc(server.tls.is_some())
            };
            report.fail(suite.connect_check, detail, advice);
            return;
        }
        _ => report.pass(suite.connect_check, &server.shown),
    }
    health_answer(suite, "", "health: liveness (\"\")", true, liveness, report);
    health_row(suite, &mut health, copilot::server::SERVICE_NAME, "health: readiness", true, report).await;
    reflection(suite, channel, authorization, report).await;

    let listing = match bounded(LISTING_TIMEOUT, api.list_models(ListModelsRequest {})).await {
        Ok(listing) => listing.into_inner(),
        Err(status) => {
            report.fail("ListModels", describe_status(&status), suite.advisor.for_status(&status));
            if status.code() == Code::Unauthenticated {
                // Every call below would be refused the same way.
                return;
            }
            Default::default()
        }
    };
    listing_row(suite, &listing, report);
    if !suite.local {
        let mut providers: Vec<&str> = listing
            .models
            .iter()
            .map(|m| m.provider.as_str())
            .chain(listing.failed_providers.iter().map(|f| f.provider.as_str()))
            .filter(|p| !p.is_empty())
            .collect();
        providers.sort_unstable();
        providers.dedup();
        for provider in providers {
            let service = copilot::health::instance_service_name(provider);
            let check = format!("health: {service}");
            health_row(suite, &mut health, &service, &check, false, report).await;
        }
    }

    let shown_model = if suite.model.is_empty() { "the default model".to_string() } else { suite.model.to_string() };
    match bounded(LISTING_TIMEOUT, api.get_model(GetModelRequest { model: suite.model.to_string() })).await {
        Ok(response) => match response.into_inner().model {
            Some(model) => report.pass("GetModel", describe_model(&model)),
            None => report.fail("GetModel", format!("{shown_model}: the answer holds no model"), None),
        },
        Err(status) => {
            let pointless = matches!(
                status.code(),
                Code::NotFound | Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated
            );
            report.fail(
                "GetModel",
                format!("{shown_model}: {}", describe_status(&status)),
                suite.advisor.for_status(&status),
            );
            if pointless {
                // A generation would fail the same way.
                return;
            }
        }
    }

    if generate(suite, &mut api, report).await {
        chat(suite, &mut api, report).await;
    }
}

/// What ListModels answered: its models and aliases, and the providers that did not answer.
fn listing_row(suite: &Suite<'_>, listing: &ListModelsResponse, report: &mut Report) {
    if listing.models.is_empty() && listing.failed_providers.is_empty() {
        return report.problem(false, "ListModels", "no models", None);
    }
    let aliases = listing.models.iter().filter(|m| !m.alias_targets.is_empty()).count();
    let mut detail = format!("{} models, {aliases} aliases", listing.models.len() - aliases);
    if listing.failed_providers.is_empty() {
        return report.pass("ListModels", detail);
    }
    let failed: Vec<String> =
        listing.failed_providers.iter().map(|f| format!("{} ({})", f.provider, f.message)).collect();
    detail.push_str(&format!("; not answering: {}", failed.join(", ")));
    // Local mode judged each provider already, knowing which ones the default needs.
    if suite.local {
        report.pass("ListModels", detail);
    } else {
        let advice = listing.failed_providers.first().map(|f| suite.advisor.unreachable(&f.provider));
        report.problem(false, "ListModels", detail, advice);
    }
}

async fn health_row(
    suite: &Suite<'_>,
    client: &mut HealthClient<Authorized>,
    service: &str,
    check: &str,
    required: bool,
    report: &mut Report,
) {
    let request = HealthCheckRequest { service: service.to_string() };
    let answer = bounded(PROBE_TIMEOUT, client.check(request)).await;
    health_answer(suite, service, check, required, answer, report);
}

fn health_answer(
    suite: &Suite<'_>,
    service: &str,
    check: &str,
    required: bool,
    answer: Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, Status>,
    report: &mut Report,
) {
    match answer {
        Ok(answer) => match answer.into_inner().status() {
            ServingStatus::Serving => report.pass(check, "SERVING"),
            status => {
                let advice = match service.strip_prefix("provider/") {
                    Some(provider) => suite.advisor.unreachable(provider),
                    None if service.is_empty() => "the server is shutting down".to_string(),
                    None => "no provider can serve now: see the provider rows (or the server's log)".to_string(),
                };
                report.problem(required, check, status.as_str_name(), advice);
            }
        },
        Err(status) if status.code() == Code::NotFound => {
            report.problem(required, check, "no such health service: is this a Copilot server?", None)
        }
        Err(status) => report.problem(required, check, describe_status(&status), suite.advisor.for_status(&status)),
    }
}

/// A failure of the connection rather than an answer from a gRPC server.
fn is_transport_error(status: &Status) -> bool {
    use tonic_types::StatusExt;
    matches!(status.code(), Code::Unknown | Code::Internal | Code::Cancelled | Code::Unavailable)
        && status.get_details_error_info().is_none()
        && (status.message().contains("transport error")
            || status.message().contains("protocol error")
            || status.message().contains("operation was canceled")
            || status.message().contains("connection"))
}

/// Server reflection lists the API (v1, else v1alpha).
async fn reflection(suite: &Suite<'_>, channel: Channel, authorization: Authorization, report: &mut Report) {
    let listed = match list_services_v1(channel.clone(), authorization.clone()).await {
        Err(status) if status.code() == Code::Unimplemented => list_services_v1alpha(channel, authorization).await,
        other => other,
    };
    match listed {
        Ok(services) if services.iter().any(|s| s == copilot::server::SERVICE_NAME) => {
            report.pass("reflection", services.join(", "))
        }
        Ok(services) => report.fail(
            "reflection",
            format!("lists {} but not {}", services.join(", "), copilot::server::SERVICE_NAME),
            "this is not a Copilot server: check --addr".to_string(),
        ),
        // Reflection is for people with grpcurl; clients do not need it.
        Err(status) => report.problem(false, "reflection", describe_status(&status), suite.advisor.for_status(&status)),
    }
}

/// `list_services_v1` and `list_services_v1alpha`: the same exchange over each version's generated
/// types (identical messages in two packages).
macro_rules! list_services {
    ($name:ident, $version:ident) => {
        async fn $name(channel: Channel, authorization: Authorization) -> Result<Vec<String>, Status> {
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::{ServerReflectionRequest, ServerReflectionResponse};

            let mut client = ServerReflectionClient::with_interceptor(channel, authorization);
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let answer: Option<ServerReflectionResponse> = bounded(PROBE_TIMEOUT, async {
                let mut answers = client.server_reflection_info(futures::stream::iter([request])).await?.into_inner();
                answers.message().await
            })
            .await?;
            match answer.and_then(|a| a.message_response) {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    Ok(list.service.into_iter().map(|s| s.name).collect())
                }
                Some(MessageResponse::ErrorResponse(e)) => Err(Status::new(Code::from(e.error_code), e.error_message)),
                _ => Err(Status::internal("reflection answered without a service list")),
            }
        }
    };
}

list_services!(list_services_v1, v1);
list_services!(list_services_v1alpha, v1alpha);

/// A unary Generate, and its latency against the threshold. Returns whether it worked.
async fn generate(suite: &Suite<'_>, api: &mut CopilotClient<Authorized>, report: &mut Report) -> bool {
    let mut request = Request::new(GenerateRequest {
        model: suite.model.to_string(),
        prompt: "Reply with one short sentence: what colour is a clear daytime sky?".into(),
        system: String::new(),
        options: Some(GenerationOptions { max_tokens: Some(TEST_MAX_TOKENS), ..Default::default() }),
        ..Default::default()
    });
    // The server learns the deadline too, and drops the upstream request when it passes.
    request.set_timeout(suite.timeout);
    let started = Instant::now();
    let answer = bounded(suite.timeout.saturating_add(Duration::from_secs(2)), api.generate(request)).await;
    let took = started.elapsed();
    match answer {
        Ok(response) => {
            let response = response.into_inner();
            let tokens = response.usage.map(|u| u.output_tokens).unwrap_or_default();
            let detail = format!("{} answered {} ({tokens} tokens)", response.model, quoted(&response.text));
            if response.text.trim().is_empty() {
                report.problem(
                    false,
                    "Generate",
                    detail,
                    Some("the model answered with no text: is it a chat or completion model?".to_string()),
                );
            } else {
                report.pass("Generate", detail);
            }
            let load = response
                .timing
                .and_then(|t| t.load_duration)
                .map(|d| proto_duration(&d))
                .filter(|d| *d >= Duration::from_millis(100));
            let load = load.map(|d| format!(", model load {}", seconds(d))).unwrap_or_default();
            latency_row(suite, "Generate: latency", took, &format!("{} in all{load}", seconds(took)), report);
            true
        }
        Err(status) => {
            report.fail("Generate", describe_status(&status), suite.advisor.for_status(&status));
            false
        }
    }
}

/// A streamed Chat: its time to first token against the threshold.
async fn chat(suite: &Suite<'_>, api: &mut CopilotClient<Authorized>, report: &mut Report) {
    let mut request = Request::new(ChatRequest {
        model: suite.model.to_string(),
        messages: vec![Message {
            role: Role::User as i32,
            content: "Say hello in five words or fewer.".into(),
            ..Default::default()
        }],
        options: Some(GenerationOptions { max_tokens: Some(TEST_MAX_TOKENS), ..Default::default() }),
        ..Default::default()
    });
    request.set_timeout(suite.timeout);
    let started = Instant::now();
    let streamed = bounded(suite.timeout.saturating_add(Duration::from_secs(2)), async {
        let mut stream = api.chat(request).await?.into_inner();
        let (mut first, mut chunks, mut text, mut last) = (None, 0usize, String::new(), None);
        while let Some(message) = stream.message().await? {
            if !message.content.is_empty() {
                first.get_or_insert_with(|| started.elapsed());
                chunks += 1;
                text.push_str(&message.content);
            }
            if message.finish_reason != 0 {
                last = Some(message);
            }
        }
        Ok((first, chunks, text, last))
    })
    .await;
    let total = started.elapsed();
    match streamed {
        Ok((first, chunks, text, Some(last))) => {
            let tokens = last.usage.map(|u| u.output_tokens).unwrap_or_default();
            report
                .pass("Chat", format!("{} streamed {chunks} chunks: {} ({tokens} tokens)", last.model, quoted(&text)));
            let first = first.unwrap_or(total);
            let detail = format!("{} to the first token, {} in all", seconds(first), seconds(total));
            latency_row(suite, "Chat: time to first token", first, &detail, report);
        }
        Ok((_, chunks, _, None)) => report.fail(
            "Chat",
            format!("the stream ended after {chunks} chunks without its final message"),
            "the server broke the API contract: please report it".to_string(),
        ),
        Err(status) => report.fail("Chat", describe_status(&status), suite.advisor.for_status(&status)),
    }
}

fn latency_row(suite: &Suite<'_>, check: &str, took: Duration, detail: &str, report: &mut Report) {
    let limit = humantime::format_duration(suite.max_latency);
    if took <= suite.max_latency {
        report.pass(check, format!("{detail} (limit {limit})"));
    } else {
        report.fail(check, format!("{detail}: over the limit of {limit}"), suite.advisor.slow(suite.max_latency));
    }
}

/// A call bounded by `limit`; past it, DEADLINE_EXCEEDED.
async fn bounded<T>(limit: Duration, call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {}", humantime::format_duration(limit)))),
    }
}

/// What GetModel says of a model, one line.
pub fn describe_model(model: &Model) -> String {
    if !model.alias_targets.is_empty() {
        return format!("{}: an alias of {}", model.name, model.alias_targets.join(", "));
    }
    let details = super::model_details(
        &model.family,
        &model.parameter_size,
        &model.quantization,
        model.context_length,
        model.size_bytes,
    );
    format!("{}: {details}", model.name)
}

/// Text as a row shows it: quoted, on one line, at most 60 characters.
fn quoted(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut shown: String = flat.chars().take(60).collect();
    if shown.len() < flat.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

fn proto_duration(d: &prost_types::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// `230ms`, `1.23s`, `12.4s`.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    match s {
        s if s < 1.0 => format!("{}ms", d.as_millis()),
        s if s < 10.0 => format!("{s:.2}s"),
        s => format!("{s:.1}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_shown_short_and_on_one_line() {
        assert_eq!(quoted("The sky\nis blue."), "\"The sky is blue.\"");
        let long = "word ".repeat(40);
        let shown = quoted(&long);
        assert!(shown.chars().count() <= 63 && shown.ends_with("…\""), "{shown}");
        assert_eq!(seconds(Duration::from_millis(230)), "230ms");
        assert_eq!(seconds(Duration::from_millis(1234)), "1.23s");
        assert_eq!(seconds(Duration::from_millis(12_345)), "12.3s");
    }

    #[test]
    fn a_model_is_described_by_what_the_server_knows() {
        let model = Model {
            name: "ollama/llama3.2:3b".into(),
            family: "llama".into(),
            parameter_size: "3.2B".into(),
            quantization: "Q4_K_M".into(),
            context_length: Some(131_072),
            ..Default::default()
        };
        assert_eq!(describe_model(&model), "ollama/llama3.2:3b: llama, 3.2B parameters, Q4_K_M, context 131072");
        let alias =
            Model { name: "fast".into(), alias_targets: vec!["a/m".into(), "b/m".into()], ..Default::default() };
        assert_eq!(describe_model(&alias), "fast: an alias of a/m, b/m");
    }
}
