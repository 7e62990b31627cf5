//! The core's policy, in process and on tokio's paused clock: a scripted provider plays each
//! upstream attempt (a refusal, a stream with timed events, a stream that fails, an upstream that
//! never answers) and records when it was called, so each test asserts exact attempt counts and
//! the virtual instants of retries, fallbacks and timeouts. No sockets, no real sleeps.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use copilot_provider::{
    ChatEvent, ChatRequest, ChatStream, Completion, Feature, Features, FinishReason, HealthReport, Message, ModelInfo,
    Provider, ProviderError, Role, Tool, ToolCallDelta, Usage,
};
use futures::StreamExt;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::*;
use crate::config::AliasTarget;
use crate::deadline::CallContext;
use crate::error::Phase;
use crate::resilience::{Breaker, ConcurrencyLimit};
use crate::router::tests::Nothing;
use crate::router::{Instance, Router};
use crate::validate::{ValidEmbed, ValidRequest};

// ---------------------------------------------------------------------------------------------
// The scripted provider

/// What one call to [`Scripted::chat`] does.
enum Step {
    /// `chat` fails at once: the upstream refused the request.
    Refuse(ProviderError),
    /// `chat` accepts, and its stream plays these items in order.
    Accept(Vec<Item>),
    /// `chat` never returns: an upstream that accepted the connection and went silent.
    Hang,
}

/// One item of an accepted stream.
enum Item {
    /// A pause (on tokio's clock, so paused time drives it).
    Wait(Duration),
    Delta(&'static str),
    /// The end of a successful completion reporting this many output tokens.
    Done(u32),
    /// Any event, as an adapter would produce it.
    Event(ChatEvent),
    /// An error inside the stream; the stream ends with it.
    Fail(ProviderError),
    /// Nothing more, ever (neither an event nor the end).
    Hang,
}

/// What the gateway asked of the provider, and when (virtual time).
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    model: String,
    max_tokens: Option<u32>,
    /// `ChatRequest::collected`.
    collected: bool,
}

/// A provider that plays a script, one [`Step`] per call, and records the calls it got. Running
/// out of script panics the test: a call the test did not expect is a failure.
#[derive(Default)]
struct Scripted {
    steps: Mutex<VecDeque<Step>>,
    calls: Mutex<Vec<Call>>,
    /// Accepted streams dropped so far (the gateway dropping one is how an upstream is cancelled).
    dropped: Arc<AtomicUsize>,
    /// What it says it can translate.
    features: Features,
    /// What each call to `embed` answers, in order.
    embeddings: Mutex<VecDeque<Result<copilot_provider::Embeddings, ProviderError>>>,
    /// What each call to `count_tokens` answers, in order.
    counts: Mutex<VecDeque<Result<copilot_provider::TokenCount, ProviderError>>>,
    /// The requests `count_tokens` got.
    counted: Mutex<Vec<ChatRequest>>,
}

impl Scripted {
    fn new(steps: impl IntoIterator<Item = Step>) -> Arc<Self> {
        Arc::new(Self { steps: Mutex::new(steps.into_iter().collect()), ..Self::default() })
    }

    fn with_features(steps: impl IntoIterator<Item = Step>, features: Features) -> Arc<Self> {
        Arc::new(Self { steps: Mutex::new(steps.into_iter().collect()), features, ..Self::default() })
    }

    fn push(&self, step: Step) {
        self.steps.lock().unwrap().push_back(step);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// When each call came, relative to `start`.
    fn times(&self, start: Instant) -> Vec<Duration> {
        self.calls().iter().map(|call| call.at - start).collect()
    }

    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// Counts the stream as dropped when the stream (which owns it) is dropped.
struct DropGuard(Arc<AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[copilot_provider::async_trait]
impl Provider for Scripted {
    async fn chat(&self, request: ChatRequest) -> Result<ChatStream, ProviderError> {
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            model: request.model.clone(),
            max_tokens: request.options.max_tokens,
            collected: request.collected,
        });
        let step = self.steps.lock().unwrap().pop_front();
        let items = match step.expect("the gateway made a call the script did not expect") {
            Step::Refuse(error) => return Err(error),
            Step::Hang => futures::future::pending().await,
            Step::Accept(items) => items,
        };
        let guard = DropGuard(self.dropped.clone());
        Ok(async_stream::stream! {
            let _guard = guard;
            for item in items {
                match item {
                    Item::Wait(pause) => sleep(pause).await,
                    Item::Delta(text) => yield Ok(ChatEvent::Delta(text.to_string())),
                    Item::Event(event) => yield Ok(event),
                    Item::Done(output_tokens) => {
                        let usage = Usage { input_tokens: 1, output_tokens, ..Default::default() };
                        yield Ok(ChatEvent::done(Completion { usage, ..Completion::default() }));
                    }
                    Item::Fail(error) => {
                        yield Err(error);
                        break;
                    }
                    Item::Hang => futures::future::pending::<()>().await,
                }
            }
        }
        .boxed())
    }

    // Only `chat` is scripted: the rest answers as the router's do-nothing test provider does.
    async fn list_models(&self) -> Result<Vec<ModelInfo>, ProviderError> {
        Nothing.list_models().await
    }

    async fn describe_model(&self, model: &str) -> Result<ModelInfo, ProviderError> {
        Nothing.describe_model(model).await
    }

    async fn health(&self) -> Result<HealthReport, ProviderError> {
        Nothing.health().await
    }

    fn features(&self) -> Features {
        self.features
    }

    async fn embed(
        &self,
        request: copilot_provider::EmbedRequest,
    ) -> Result<copilot_provider::Embeddings, ProviderError> {
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            model: request.model.clone(),
            max_tokens: None,
            collected: true,
        });
        self.embeddings.lock().unwrap().pop_front().expect("an embed call the script did not expect")
    }

    async fn count_tokens(&self, request: ChatRequest) -> Result<copilot_provider::TokenCount, ProviderError> {
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            model: request.model.clone(),
            max_tokens: None,
            collected: request.collected,
        });
        self.counted.lock().unwrap().push(request);
        self.counts.lock().unwrap().pop_front().expect("a count the script did not expect")
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A reply that answers at once: two words, then done.
fn answer() -> Step {
    Step::Accept(vec![Item::Delta("hello"), Item::Delta(" world"), Item::Done(2)])
}

/// The router's test instance (no retries, no breaker, no limit, 1 s timeouts) on `provider`.
fn instance(name: &str, provider: &Arc<Scripted>) -> Instance {
    Instance { provider: provider.clone(), ..crate::router::tests::instance(name) }
}

/// An instance that retries `retries` times with `base` backoff, at most `max`.
/// `instance` with some of its policy or state changed.
fn tuned(mut instance: Instance, change: impl FnOnce(&mut Instance)) -> Instance {
    change(&mut instance);
    instance
}

fn retrying(name: &str, provider: &Arc<Scripted>, retries: u32, base: Duration, max: Duration) -> Instance {
    tuned(instance(name, provider), |i| {
        i.policy.retries = retries;
        i.policy.retry_backoff = base;
        i.policy.retry_backoff_max = max;
    })
}

/// A gateway over `instances`, with the alias `pair` = the given targets in fallback order.
fn gateway(instances: Vec<Instance>, pair: &[&str]) -> (Gateway, CancellationToken) {
    let aliases =
        BTreeMap::from([("pair".to_string(), pair.iter().map(|t| AliasTarget::Model(t.to_string())).collect())]);
    let hard_stop = CancellationToken::new();
    (Gateway::new(Router::new(instances, None, None, aliases), hard_stop.clone()), hard_stop)
}

/// A call as the handlers make it: routed first, then handed to the gateway with its plan.
async fn chat(
    gateway: &Gateway,
    request: ValidRequest,
    call: CallContext,
    limit: ResponseLimit,
) -> Result<impl futures::Stream<Item = Result<GatewayEvent, GatewayError>> + Send + use<>, GatewayError> {
    let plan = gateway.router().resolve(&request.model)?;
    gateway.chat(&plan, &request, call, limit).await
}

fn request(model: &str) -> ValidRequest {
    ValidRequest { model: model.into(), messages: vec![Message::text(Role::User, "hi")], ..Default::default() }
}

/// A call arriving now, with the given `grpc-timeout`.
fn call(budget: Option<Duration>) -> CallContext {
    CallContext { received: Instant::now(), budget }
}

const STREAMED: ResponseLimit = ResponseLimit::Chunk(1 << 20);

/// A call's refusal (its error before any output); panics if it started instead.
fn refusal<T>(result: Result<T, GatewayError>) -> GatewayError {
    match result {
        Ok(_) => panic!("the call started, but was expected to be refused"),
        Err(error) => error,
    }
}

/// A call's refusal as the client gets it.
fn refused<T>(result: Result<T, GatewayError>) -> Status {
    refusal(result).into()
}

/// A started call's stream; panics if it was refused. (`expect` needs a Debug stream.)
fn started<T>(result: Result<T, GatewayError>) -> T {
    result.unwrap_or_else(|error| panic!("the call was refused: {error}"))
}

fn reason(status: &Status) -> String {
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

fn retry_delay(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|info| info.retry_delay)
}

/// What a started call's stream delivered: its text, then how it ended (the summary or the error).
async fn drain(
    stream: impl Stream<Item = Result<GatewayEvent, GatewayError>>,
) -> (String, Result<Summary, GatewayError>) {
    let mut stream = std::pin::pin!(stream);
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(GatewayEvent::Delta(delta)) => text.push_str(&delta),
            // Written into the text so a test sees them in order among it.
            Ok(GatewayEvent::ToolCall(delta)) => text.push_str(&format!(
                "[call {} {} {} {}]",
                delta.index,
                delta.id.as_deref().unwrap_or("-"),
                delta.name.as_deref().unwrap_or("-"),
                delta.arguments
            )),
            Ok(GatewayEvent::Thinking(delta)) => text.push_str(&format!("[thinking {delta:?}]")),
            Ok(GatewayEvent::Done(summary)) => {
                assert!(stream.next().await.is_none(), "nothing follows Done");
                return (text, Ok(*summary));
            }
            Err(error) => {
                assert!(stream.next().await.is_none(), "nothing follows an error");
                return (text, Err(error));
            }
        }
    }
    panic!("the stream ended without Done or an error, after {text:?}");
}

/// Runs a call to the end: its text and summary, or its status (before or during output).
async fn complete(gateway: &Gateway, model: &str, call: CallContext) -> (String, Result<Summary, Status>) {
    match chat(gateway, request(model), call, STREAMED).await {
        Ok(stream) => {
            let (text, end) = drain(stream).await;
            (text, end.map_err(Status::from))
        }
        Err(error) => (String::new(), Err(error.into())),
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

// ---------------------------------------------------------------------------------------------
// Classification

/// One row of the classification table: what the gateway does with a failure before output.
struct Row {
    error: ProviderError,
    retried: bool,
    falls_back: bool,
    counts_against_instance: bool,
    code: Code,
    reason: &'static str,
}

fn table() -> Vec<Row> {
    use ProviderError as E;
    let row = |retried, falls_back, counts_against_instance| {
        move |error, code, reason| Row { error, retried, falls_back, counts_against_instance, code, reason }
    };
    // The request is the problem: another attempt anywhere would say the same.
    let request_is_wrong = row(false, false, false);
    // Transient ill health: retried here, then the next target; counts towards the breaker.
    let ill = row(true, true, true);
    // Busy is not ill: retried and fallen back from, but the breaker does not count it.
    let busy = row(true, true, false);
    // This instance cannot serve it (credentials, protocol, model file): next target, no retry.
    let unusable_here = row(false, true, true);
    let s = || "scripted".to_string();
    vec![
        request_is_wrong(E::InvalidRequest(s()), Code::InvalidArgument, "UPSTREAM_REJECTED_REQUEST"),
        request_is_wrong(E::ModelNotFound { model: s() }, Code::NotFound, "MODEL_NOT_FOUND"),
        ill(E::Unreachable(s()), Code::Unavailable, "UPSTREAM_UNREACHABLE"),
        ill(E::Overloaded { message: s(), retry_after: None }, Code::Unavailable, "UPSTREAM_OVERLOADED"),
        ill(E::Upstream { status: 500, message: s() }, Code::Unavailable, "UPSTREAM_ERROR"),
        ill(E::Interrupted(s()), Code::Unavailable, "UPSTREAM_STREAM_INTERRUPTED"),
        ill(E::MidStream(s()), Code::Unavailable, "UPSTREAM_FAILED_MID_STREAM"),
        busy(E::RateLimited { message: s(), retry_after: None }, Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED"),
        busy(E::CapacityExhausted { message: s(), retry_after: None }, Code::ResourceExhausted, "PROVIDER_AT_CAPACITY"),
        unusable_here(E::Unauthorized(s()), Code::Unavailable, "UPSTREAM_UNAUTHORIZED"),
        unusable_here(E::Protocol(s()), Code::Internal, "UPSTREAM_PROTOCOL_ERROR"),
        unusable_here(E::ModelUnusable(s()), Code::FailedPrecondition, "MODEL_UNUSABLE"),
    ]
}

/// Every ProviderError variant, delivered both as a refusal of the request and as the first item
/// of an accepted stream (the two must be treated alike): whether it is retried on the same
/// instance, whether the alias falls back to its next target, whether it counts towards the
/// instance's breaker, and the status and ErrorInfo reason a client gets for it.
#[tokio::test(start_paused = true)]
async fn the_classification_table() {
    assert_eq!(table().len(), 12, "a ProviderError variant was added: give it a row");
    for row in table() {
        for in_stream in [false, true] {
            let failure = || match in_stream {
                false => Step::Refuse(row.error.clone()),
                true => Step::Accept(vec![Item::Fail(row.error.clone())]),
            };
            let case = format!("{:?} (in the stream: {in_stream})", row.error);

            // Retry and fallback: `first` retries once, then the alias may go on to `second`.
            let first = Scripted::new([failure(), failure()]);
            let second = Scripted::new([answer()]);
            let (gw, _) = gateway(
                vec![retrying("first", &first, 1, ms(10), ms(10)), instance("second", &second)],
                &["first/m", "second/m"],
            );
            let (text, end) = complete(&gw, "pair", call(None)).await;
            assert_eq!(first.count(), if row.retried { 2 } else { 1 }, "{case}: attempts on the first target");
            assert_eq!(second.count(), usize::from(row.falls_back), "{case}: fallback");
            if row.falls_back {
                assert_eq!(text, "hello world", "{case}");
                assert_eq!(end.unwrap().model, "second/m", "{case}");
            } else {
                let status = end.unwrap_err();
                assert_eq!((status.code(), reason(&status).as_str()), (row.code, row.reason), "{case}");
            }

            // Alone, with a breaker that opens on the first failure it counts.
            let alone = Scripted::new([failure()]);
            let breaker = Breaker::new(1, secs(60));
            let (gw, _) = gateway(vec![tuned(instance("alone", &alone), |i| i.state.breaker = breaker)], &[]);
            let status = complete(&gw, "alone/m", call(None)).await.1.unwrap_err();
            assert_eq!((status.code(), reason(&status).as_str()), (row.code, row.reason), "{case}: status");
            assert_eq!(status.get_details_error_info().unwrap().metadata["chunks_sent"], "0", "{case}");
            let instance = gw.router().instances().next().unwrap();
            assert_eq!(instance.state.breaker.is_open(), row.counts_against_instance, "{case}: breaker");
        }
    }
}

/// A stream that ends before its first event is an interrupted attempt: retried like one.
/// An answer collected whole (`Generate`'s limit) tells the provider so, which lets an HTTP adapter
/// read it in larger pieces; a streamed one does not.
#[tokio::test(start_paused = true)]
async fn the_provider_is_told_whether_the_answer_is_collected_or_streamed() {
    let provider = Scripted::new([answer(), answer()]);
    let (gw, _) = gateway(vec![instance("a", &provider)], &[]);
    for limit in [ResponseLimit::Total(1 << 20), STREAMED] {
        let events = started(chat(&gw, request("a/m"), call(None), limit).await);
        let (text, end) = drain(events).await;
        assert_eq!(text, "hello world");
        assert!(end.is_ok(), "{end:?}");
    }
    let collected: Vec<bool> = provider.calls().iter().map(|call| call.collected).collect();
    assert_eq!(collected, [true, false]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_closed_before_any_output_is_retried() {
    let provider = Scripted::new([Step::Accept(vec![]), answer()]);
    let (gw, _) = gateway(vec![retrying("a", &provider, 1, ms(10), ms(10))], &[]);
    let (text, end) = complete(&gw, "a/m", call(None)).await;
    assert_eq!(text, "hello world");
    assert!(end.is_ok());
    assert_eq!(provider.count(), 2);
    assert_eq!(provider.dropped(), 2, "both upstream streams were released");
}

// ---------------------------------------------------------------------------------------------
// Retry and fallback

/// A target is retried up to its `retries`, with a backoff pause before each retry; then the next
/// target is tried at once. The upstream model name and the instance's defaults go to each.
#[tokio::test(start_paused = true)]
async fn retries_then_falls_back_to_the_next_target() {
    let overloaded = || Step::Refuse(ProviderError::Overloaded { message: "busy".into(), retry_after: None });
    let first = Scripted::new([overloaded(), overloaded(), overloaded()]);
    let second = Scripted::new([answer()]);
    let mut backup = instance("second", &second);
    backup.defaults.max_tokens = Some(7);
    let (gw, _) = gateway(vec![retrying("first", &first, 2, ms(100), ms(100)), backup], &["first/m", "second/big"]);
    let start = Instant::now();

    let (text, end) = complete(&gw, "pair", call(None)).await;
    assert_eq!(text, "hello world");
    assert_eq!(end.unwrap().model, "second/big");

    let tried = first.times(start);
    assert_eq!(tried.len(), 3, "one attempt and two retries");
    assert_eq!(tried[0], Duration::ZERO);
    for pause in [tried[1] - tried[0], tried[2] - tried[1]] {
        // Equal jitter: half of the backoff fixed, half random.
        assert!(pause >= ms(50) && pause <= ms(100), "retry pause {pause:?}");
    }
    let fell_back = second.calls();
    assert_eq!(fell_back.len(), 1);
    assert_eq!(fell_back[0].at - start, tried[2], "the fallback is not delayed");
    assert_eq!((fell_back[0].model.as_str(), fell_back[0].max_tokens), ("big", Some(7)));
    assert!(first.calls().iter().all(|call| call.model == "m" && call.max_tokens.is_none()));
}

/// When every target of an alias fails, the last failure decides the status (with its RetryInfo)
/// and the message names the earlier ones.
#[tokio::test(start_paused = true)]
async fn when_every_target_fails_the_last_failure_is_the_status() {
    let first = Scripted::new([Step::Refuse(ProviderError::Unreachable("connection refused".into()))]);
    let limited = ProviderError::RateLimited { message: "slow down".into(), retry_after: Some(secs(5)) };
    let second = Scripted::new([Step::Refuse(limited)]);
    let (gw, _) = gateway(vec![instance("first", &first), instance("second", &second)], &["first/m", "second/m"]);
    let status = complete(&gw, "pair", call(None)).await.1.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "UPSTREAM_RATE_LIMITED");
    assert_eq!(retry_delay(&status), Some(secs(5)));
    assert!(status.message().starts_with("every target of 'pair' failed"), "{}", status.message());
    assert!(status.message().contains("connection refused"), "{}", status.message());
    assert_eq!((first.count(), second.count()), (1, 1));
}

/// Once output went to the client the call is committed: a failure ends the stream with its error
/// (saying how many chunks were sent), and is neither retried nor fallen back from.
#[tokio::test(start_paused = true)]
async fn no_retry_and_no_fallback_after_the_first_token() {
    let crash = ProviderError::MidStream("the runner crashed".into());
    let first = Scripted::new([Step::Accept(vec![Item::Delta("one"), Item::Delta(" two"), Item::Fail(crash)])]);
    let second = Scripted::new([]);
    let (gw, _) = gateway(
        vec![retrying("first", &first, 2, ms(10), ms(10)), instance("second", &second)],
        &["first/m", "second/m"],
    );
    let (text, end) = complete(&gw, "pair", call(None)).await;
    assert_eq!(text, "one two");
    let status = end.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "UPSTREAM_FAILED_MID_STREAM"));
    assert_eq!(status.get_details_error_info().unwrap().metadata["chunks_sent"], "2");
    assert!(status.message().contains("the runner crashed"), "{}", status.message());
    assert_eq!((first.count(), second.count()), (1, 0));

    // A stream that just stops (no Done) after output is reported as interrupted, not completed.
    first.push(Step::Accept(vec![Item::Delta("half")]));
    let (text, end) = complete(&gw, "pair", call(None)).await;
    assert_eq!(text, "half");
    let status = end.unwrap_err();
    assert_eq!(reason(&status), "UPSTREAM_STREAM_INTERRUPTED");
    assert_eq!(status.get_details_error_info().unwrap().metadata["chunks_sent"], "1");
    assert_eq!((first.count(), second.count()), (2, 0));
}

// ---------------------------------------------------------------------------------------------
// Retry pauses: Retry-After, backoff, the deadline, MAX_RETRY_PAUSE

/// A Retry-After longer than the backoff is waited for exactly; the retry then succeeds.
#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_the_backoff_wins() {
    let limited = ProviderError::RateLimited { message: "wait".into(), retry_after: Some(secs(3)) };
    let provider = Scripted::new([Step::Refuse(limited), answer()]);
    let (gw, _) = gateway(vec![retrying("a", &provider, 1, ms(100), ms(100))], &[]);
    let start = Instant::now();
    assert!(complete(&gw, "a/m", call(Some(secs(10)))).await.1.is_ok());
    assert_eq!(provider.times(start), [Duration::ZERO, secs(3)]);
}

/// Without a Retry-After (or a shorter one) the pause is the backoff: exponential from
/// retry_backoff, each at least half of its step and never over retry_backoff_max.
#[tokio::test(start_paused = true)]
async fn the_backoff_grows_with_jitter_and_stops_at_its_maximum() {
    let short_hint = ProviderError::Overloaded { message: "busy".into(), retry_after: Some(ms(1)) };
    let unreachable = || Step::Refuse(ProviderError::Unreachable("refused".into()));
    let steps = [unreachable(), unreachable(), Step::Refuse(short_hint), unreachable(), unreachable(), answer()];
    let provider = Scripted::new(steps);
    let (gw, _) = gateway(vec![retrying("a", &provider, 5, ms(100), ms(300))], &[]);
    let start = Instant::now();
    assert!(complete(&gw, "a/m", call(None)).await.1.is_ok());
    let times = provider.times(start);
    assert_eq!(times.len(), 6);
    // Full steps: 100, 200, 400 → 300, 800 → 300, 1600 → 300 ms; each pause is in [step/2, step].
    for (retry, step) in [100, 200, 300, 300, 300].into_iter().enumerate() {
        let pause = times[retry + 1] - times[retry];
        assert!(pause >= ms(step / 2) && pause <= ms(step), "retry {}: {pause:?} for a {step} ms step", retry + 1);
    }
}

/// A retry whose pause would reach past the call's deadline is not made: the call ends at once
/// (not at the deadline) with the upstream's status and its Retry-After as RetryInfo; through an
/// alias, the next target is tried at once instead.
#[tokio::test(start_paused = true)]
async fn a_retry_that_would_pass_the_deadline_is_not_made() {
    let limited = || ProviderError::RateLimited { message: "wait".into(), retry_after: Some(secs(5)) };
    let provider = Scripted::new([Step::Refuse(limited())]);
    let other = Scripted::new([answer()]);
    let (gw, _) = gateway(vec![retrying("a", &provider, 3, ms(10), ms(10)), instance("b", &other)], &["a/m", "b/m"]);
    let start = Instant::now();
    let status = complete(&gw, "a/m", call(Some(secs(5)))).await.1.unwrap_err();
    assert_eq!(Instant::now() - start, Duration::ZERO, "not waited for");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED"));
    assert_eq!(retry_delay(&status), Some(secs(5)));
    assert_eq!(provider.count(), 1);

    // A pause that ends just before the deadline is still waited for.
    provider.push(Step::Refuse(limited()));
    provider.push(answer());
    let start = Instant::now();
    assert!(complete(&gw, "a/m", call(Some(secs(5) + ms(1)))).await.1.is_ok());
    assert_eq!(provider.times(start)[1..], [Duration::ZERO, secs(5)]);

    // Through the alias, the next target gets the call without waiting.
    provider.push(Step::Refuse(limited()));
    let start = Instant::now();
    let (_, end) = complete(&gw, "pair", call(Some(secs(2)))).await;
    assert_eq!(end.unwrap().model, "b/m");
    assert_eq!(other.times(start), [Duration::ZERO]);
    assert_eq!(provider.count(), 4);
}

/// Without a deadline, a retry is waited for in place only up to MAX_RETRY_PAUSE: longer asks go
/// straight back to the client with their RetryInfo.
#[tokio::test(start_paused = true)]
async fn a_retry_is_waited_for_in_place_at_most_max_retry_pause() {
    let asks = |wait| Step::Refuse(ProviderError::Overloaded { message: "loading".into(), retry_after: Some(wait) });
    let provider = Scripted::new([asks(MAX_RETRY_PAUSE), answer(), asks(MAX_RETRY_PAUSE + ms(1))]);
    let (gw, _) = gateway(vec![retrying("a", &provider, 1, ms(10), ms(10))], &[]);
    let start = Instant::now();
    assert!(complete(&gw, "a/m", call(None)).await.1.is_ok());
    assert_eq!(provider.times(start), [Duration::ZERO, MAX_RETRY_PAUSE]);

    let start = Instant::now();
    let status = complete(&gw, "a/m", call(None)).await.1.unwrap_err();
    assert_eq!(Instant::now(), start, "not waited for");
    assert_eq!(reason(&status), "UPSTREAM_OVERLOADED");
    assert_eq!(retry_delay(&status), Some(MAX_RETRY_PAUSE + ms(1)));
    assert_eq!(provider.count(), 3);
}

// ---------------------------------------------------------------------------------------------
// Timeouts and the deadline

/// An upstream that does not start answering within first_token_timeout — whether it never
/// accepts the request or accepts it and sends nothing — ends the attempt with UPSTREAM_TIMEOUT at
/// exactly that time, is not retried (it would be as slow again), and the alias falls back.
#[tokio::test(start_paused = true)]
async fn a_silent_start_is_an_upstream_timeout_then_a_fallback() {
    for (silent, phase) in [
        (Step::Hang, Phase::Response),
        (Step::Accept(vec![Item::Hang]), Phase::Output { chunks_sent: 0 }),
        (Step::Accept(vec![Item::Wait(secs(2)), Item::Delta("late")]), Phase::Output { chunks_sent: 0 }),
    ] {
        let slow = Scripted::new([silent]);
        let other = Scripted::new([answer()]);
        // The test instance's first_token_timeout is 1 s; retries would be possible.
        let slow_instance = retrying("slow", &slow, 2, ms(10), ms(10));
        let (gw, _) = gateway(vec![slow_instance, instance("b", &other)], &["slow/m", "b/m"]);
        let start = Instant::now();
        let (_, end) = complete(&gw, "pair", call(Some(secs(60)))).await;
        assert_eq!(end.unwrap().model, "b/m", "{phase:?}");
        assert_eq!((slow.count(), other.times(start)), (1, vec![secs(1)]), "{phase:?}");
        assert_eq!(slow.dropped(), usize::from(phase != Phase::Response), "{phase:?}: the slow stream was dropped");

        // Alone, the timeout is the status.
        slow.push(Step::Hang);
        let start = Instant::now();
        let error = refusal(chat(&gw, request("slow/m"), call(None), STREAMED).await);
        assert_eq!(Instant::now() - start, secs(1));
        assert!(matches!(error, GatewayError::UpstreamTimeout { timeout, .. } if timeout == secs(1)), "{error:?}");
        let status = Status::from(error);
        assert_eq!((status.code(), reason(&status).as_str()), (Code::DeadlineExceeded, "UPSTREAM_TIMEOUT"));
    }
}

/// A deadline shorter than the first-token timeout ends the call at the deadline with
/// DEADLINE_EXCEEDED — and does not fall back, since no time is left for another target.
#[tokio::test(start_paused = true)]
async fn the_deadline_before_the_first_token_is_deadline_exceeded_without_fallback() {
    let slow = Scripted::new([Step::Hang]);
    let other = Scripted::new([]);
    let (gw, _) = gateway(vec![instance("slow", &slow), instance("b", &other)], &["slow/m", "b/m"]);
    let start = Instant::now();
    let status = complete(&gw, "pair", call(Some(ms(400)))).await.1.unwrap_err();
    assert_eq!(Instant::now() - start, ms(400));
    assert_eq!((status.code(), reason(&status).as_str()), (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"));
    assert_eq!((slow.count(), other.count()), (1, 0));
}

/// After the first token, silence longer than idle_timeout ends the stream with UPSTREAM_TIMEOUT
/// exactly idle_timeout after the last chunk; gaps just under it never do, however long the whole
/// stream lasts; and the deadline ends it at the deadline with DEADLINE_EXCEEDED.
#[tokio::test(start_paused = true)]
async fn idle_timeouts_and_the_deadline_during_output() {
    let gap = Item::Wait;
    let provider = Scripted::new([
        // Gaps of 900 ms under a 1 s idle timeout: 2.7 s in all, and it completes.
        Step::Accept(vec![
            gap(ms(500)),
            Item::Delta("a"),
            gap(ms(900)),
            Item::Delta("b"),
            gap(ms(900)),
            Item::Delta("c"),
            gap(ms(900)),
            Item::Done(3),
        ]),
        // A 2 s gap after the second chunk.
        Step::Accept(vec![Item::Delta("a"), gap(ms(300)), Item::Delta("b"), gap(secs(2)), Item::Delta("never")]),
        // Steady output, but a deadline of 2.5 s.
        Step::Accept(vec![
            Item::Delta("a"),
            gap(ms(900)),
            Item::Delta("b"),
            gap(ms(900)),
            Item::Delta("c"),
            Item::Hang,
        ]),
    ]);
    let (gw, _) = gateway(vec![instance("a", &provider)], &[]);

    let start = Instant::now();
    let (text, end) = complete(&gw, "a/m", call(Some(secs(10)))).await;
    assert_eq!(text, "abc");
    let summary = end.unwrap();
    assert_eq!(summary.time_to_first_token, Some(ms(500)));
    assert_eq!(summary.total_duration, ms(3200));
    assert_eq!(Instant::now() - start, ms(3200));

    let start = Instant::now();
    let (text, end) = complete(&gw, "a/m", call(None)).await;
    assert_eq!(text, "ab");
    let status = end.unwrap_err();
    assert_eq!(Instant::now() - start, ms(1300), "1 s after the last chunk");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::DeadlineExceeded, "UPSTREAM_TIMEOUT"));
    assert!(status.message().contains("after 2 chunks"), "{}", status.message());

    let start = Instant::now();
    let (text, end) = complete(&gw, "a/m", call(Some(ms(2500)))).await;
    assert_eq!(text, "abc");
    let status = end.unwrap_err();
    assert_eq!(Instant::now() - start, ms(2500));
    assert_eq!((status.code(), reason(&status).as_str()), (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"));
    assert_eq!(provider.dropped(), 3, "every upstream stream was released");
}

// ---------------------------------------------------------------------------------------------
// The circuit breaker

/// After breaker_failures consecutive failures the instance is skipped (CIRCUIT_OPEN with a
/// RetryInfo, nothing sent upstream); after the cooldown exactly one probe goes through while
/// others are still refused; a successful probe closes it, a failed one opens it for another
/// cooldown.
#[tokio::test(start_paused = true)]
async fn the_breaker_opens_probes_once_and_closes_or_reopens() {
    let unreachable = || Step::Refuse(ProviderError::Unreachable("refused".into()));
    let provider = Scripted::new([unreachable(), unreachable()]);
    let breaker = Breaker::new(2, secs(10));
    let (gw, _) = gateway(vec![tuned(instance("a", &provider), |i| i.state.breaker = breaker)], &[]);

    for _ in 0..2 {
        assert_eq!(reason(&complete(&gw, "a/m", call(None)).await.1.unwrap_err()), "UPSTREAM_UNREACHABLE");
    }
    let status = complete(&gw, "a/m", call(None)).await.1.unwrap_err();
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "CIRCUIT_OPEN"));
    assert_eq!(retry_delay(&status), Some(secs(1)));
    assert_eq!(provider.count(), 2, "an open breaker sends nothing upstream");

    // Just before the cooldown ends it is still open.
    sleep(secs(10) - ms(1)).await;
    assert_eq!(reason(&complete(&gw, "a/m", call(None)).await.1.unwrap_err()), "CIRCUIT_OPEN");

    // The probe takes 1 s to answer; a call 100 ms into it is refused.
    sleep(ms(1)).await;
    provider.push(Step::Accept(vec![Item::Wait(secs(1)), Item::Delta("ok"), Item::Done(1)]));
    let other = async {
        sleep(ms(100)).await;
        complete(&gw, "a/m", call(None)).await.1.unwrap_err()
    };
    let (probe, other) = tokio::join!(complete(&gw, "a/m", call(None)), other);
    assert_eq!(probe.0, "ok");
    assert_eq!(reason(&other), "CIRCUIT_OPEN", "one probe at a time");
    assert_eq!(provider.count(), 3);

    // Closed again: calls go through, and it takes two new failures to open it.
    provider.push(answer());
    assert!(complete(&gw, "a/m", call(None)).await.1.is_ok());
    provider.push(unreachable());
    provider.push(unreachable());
    provider.push(unreachable());
    for _ in 0..2 {
        assert_eq!(reason(&complete(&gw, "a/m", call(None)).await.1.unwrap_err()), "UPSTREAM_UNREACHABLE");
    }
    assert_eq!(reason(&complete(&gw, "a/m", call(None)).await.1.unwrap_err()), "CIRCUIT_OPEN");

    // A failed probe opens it for another full cooldown.
    sleep(secs(10)).await;
    assert_eq!(reason(&complete(&gw, "a/m", call(None)).await.1.unwrap_err()), "UPSTREAM_UNREACHABLE");
    assert_eq!(reason(&complete(&gw, "a/m", call(None)).await.1.unwrap_err()), "CIRCUIT_OPEN");
    sleep(secs(10) - ms(1)).await;
    assert_eq!(reason(&complete(&gw, "a/m", call(None)).await.1.unwrap_err()), "CIRCUIT_OPEN");
    assert_eq!(provider.count(), 7);
}

/// A breaker opened by the call's own retries ends that call with its last upstream error (more
/// useful than "circuit open"); an alias skips an open instance for its next target.
#[tokio::test(start_paused = true)]
async fn a_breaker_opened_by_the_call_itself_reports_the_upstream_error() {
    let unreachable = || Step::Refuse(ProviderError::Unreachable("refused".into()));
    let provider = Scripted::new([unreachable(), unreachable()]);
    let other = Scripted::new([answer()]);
    let flaky = tuned(retrying("a", &provider, 3, ms(10), ms(10)), |i| i.state.breaker = Breaker::new(2, secs(10)));
    let (gw, _) = gateway(vec![flaky, instance("b", &other)], &["a/m", "b/m"]);
    let status = complete(&gw, "a/m", call(None)).await.1.unwrap_err();
    assert_eq!(reason(&status), "UPSTREAM_UNREACHABLE");
    assert_eq!(provider.count(), 2, "no retry once the breaker opened");

    let (_, end) = complete(&gw, "pair", call(None)).await;
    assert_eq!(end.unwrap().model, "b/m");
    assert_eq!((provider.count(), other.count()), (2, 1));
}

// ---------------------------------------------------------------------------------------------
// Instance limits

/// max_concurrency calls run; max_queue more wait, each up to queue_timeout (or its deadline);
/// beyond that a call is refused at once. Refusals are RESOURCE_EXHAUSTED / PROVIDER_AT_CAPACITY
/// with a RetryInfo; a place freed by a finished call goes to the waiting one at once.
#[tokio::test(start_paused = true)]
async fn instance_limits_queue_then_refuse() {
    let provider = Scripted::new([Step::Accept(vec![Item::Delta("held"), Item::Hang]), answer()]);
    let limit = Some(ConcurrencyLimit::new(1, 1, secs(2)));
    let (gw, _) = gateway(
        vec![tuned(instance("a", &provider), |i| {
            i.state.limit = limit;
            i.policy.idle_timeout = secs(3600);
        })],
        &[],
    );
    let running = started(chat(&gw, request("a/m"), call(None), STREAMED).await);
    let a = gw.router().instances().next().unwrap().clone();
    assert_eq!(a.state.outstanding.load(Ordering::Relaxed), 1, "a running call counts as in flight");

    // A queued call and, while it waits, a call that finds the queue full.
    let start = Instant::now();
    let queued = async { refused(chat(&gw, request("a/m"), call(None), STREAMED).await) };
    let over = async {
        sleep(ms(100)).await;
        let status = refused(chat(&gw, request("a/m"), call(None), STREAMED).await);
        (Instant::now() - start, status)
    };
    let (queued, (over_at, over)) = tokio::join!(queued, over);
    assert_eq!(over_at, ms(100), "a full queue refuses at once");
    assert_eq!(Instant::now() - start, secs(2), "the queued call gave up after queue_timeout");
    for status in [&queued, &over] {
        assert_eq!((status.code(), reason(status).as_str()), (Code::ResourceExhausted, "PROVIDER_AT_CAPACITY"));
        assert_eq!(retry_delay(status), Some(secs(1)));
        assert!(status.message().contains("max_concurrency"), "{}", status.message());
    }

    // A queued call gives up at its own deadline if that comes first, with the deadline's status.
    let start = Instant::now();
    let status = refused(chat(&gw, request("a/m"), call(Some(ms(500))), STREAMED).await);
    assert_eq!(Instant::now() - start, ms(500));
    assert_eq!((status.code(), reason(&status).as_str()), (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"));
    assert!(status.message().contains("waiting for a free place"), "{}", status.message());
    assert_eq!(provider.count(), 1, "no refused call reached the upstream");

    // The running call ends 300 ms into the next one's wait: that one starts then.
    let start = Instant::now();
    let next = async { complete(&gw, "a/m", call(None)).await };
    let finish = async {
        sleep(ms(300)).await;
        drop(running);
    };
    let ((text, _), ()) = tokio::join!(next, finish);
    assert_eq!(text, "hello world");
    assert_eq!(provider.times(start)[1..], [ms(300)]);
    assert_eq!(a.state.outstanding.load(Ordering::Relaxed), 0);
}

/// An instance at its limit is not waited for through an alias, nor retried: the next target
/// gets the call at once.
#[tokio::test(start_paused = true)]
async fn a_full_instance_falls_back_without_retrying() {
    let provider = Scripted::new([Step::Accept(vec![Item::Delta("held"), Item::Hang])]);
    let other = Scripted::new([answer()]);
    let full = tuned(retrying("a", &provider, 2, ms(10), ms(10)), |i| {
        i.state.limit = Some(ConcurrencyLimit::new(1, 0, secs(60)))
    });
    let (gw, _) = gateway(vec![full, instance("b", &other)], &["a/m", "b/m"]);
    let _running = started(chat(&gw, request("a/m"), call(None), STREAMED).await);
    let start = Instant::now();
    let (_, end) = complete(&gw, "pair", call(None)).await;
    assert_eq!(end.unwrap().model, "b/m");
    assert_eq!((provider.count(), other.times(start)), (1, vec![Duration::ZERO]));
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/// The hard stop (end of the shutdown grace period) ends a call wherever it is — streaming,
/// waiting for its first token, or pausing before a retry — with UNAVAILABLE / SHUTTING_DOWN, at
/// that instant, and without trying another target.
#[tokio::test(start_paused = true)]
async fn the_hard_stop_ends_calls_with_shutting_down() {
    let busy = ProviderError::Overloaded { message: "busy".into(), retry_after: Some(secs(10)) };
    let cases = [
        ("streaming", Step::Accept(vec![Item::Delta("part"), Item::Hang]), "part"),
        ("before the first token", Step::Hang, ""),
        ("in a retry pause", Step::Refuse(busy), ""),
    ];
    for (case, step, output) in cases {
        let provider = Scripted::new([step]);
        let other = Scripted::new([]);
        let patient = tuned(instance("a", &provider), |i| {
            i.policy.idle_timeout = secs(3600);
            i.policy.first_token_timeout = secs(3600);
        });
        let a = tuned(patient, |i| i.policy.retries = 1);
        let (gw, hard_stop) = gateway(vec![a, instance("b", &other)], &["a/m", "b/m"]);
        let start = Instant::now();
        let stop = async {
            sleep(ms(700)).await;
            hard_stop.cancel();
        };
        let ((text, end), ()) = tokio::join!(complete(&gw, "pair", call(None)), stop);
        let status = end.unwrap_err();
        assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "SHUTTING_DOWN"), "{case}");
        assert_eq!(text, output, "{case}");
        assert_eq!(Instant::now() - start, ms(700), "{case}");
        assert_eq!((provider.count(), other.count()), (1, 0), "{case}: no retry and no fallback");
        assert_eq!(provider.dropped(), usize::from(case == "streaming"), "{case}: the upstream stream was released");

        // After the hard stop, a new call ends at once without reaching the upstream.
        let status = complete(&gw, "pair", call(None)).await.1.unwrap_err();
        assert_eq!(reason(&status), "SHUTTING_DOWN", "{case}");
        assert_eq!((provider.count(), other.count()), (1, 0), "{case}");
    }
}

/// An upstream that always has its next event ready is still stopped: the hard stop is not only
/// noticed while the relay waits for the upstream.
#[tokio::test(start_paused = true)]
async fn the_hard_stop_ends_a_stream_whose_upstream_is_never_waited_for() {
    let provider = Scripted::new([Step::Accept((0..100).map(|_| Item::Delta("word ")).collect())]);
    let (gw, hard_stop) = gateway(vec![instance("a", &provider)], &[]);
    let mut stream = std::pin::pin!(started(chat(&gw, request("a/m"), call(None), STREAMED).await));
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(Ok(GatewayEvent::Delta(_)))));
    }
    hard_stop.cancel();
    let (text, end) = drain(stream).await;
    assert_eq!(text, "", "nothing more after the hard stop");
    assert!(matches!(end, Err(GatewayError::ShuttingDown)), "{end:?}");
    assert_eq!(provider.dropped(), 1, "the upstream stream was released");
}

/// An instance with one place and a queue of one, whose upstream answers one word and then hangs;
/// the gateway's hard stop.
fn one_place_held_forever() -> (Arc<Scripted>, Gateway, CancellationToken) {
    let provider = Scripted::new([Step::Accept(vec![Item::Delta("held"), Item::Hang])]);
    let limit = Some(ConcurrencyLimit::new(1, 1, secs(60)));
    let patient = tuned(instance("a", &provider), |i| {
        i.state.limit = limit;
        i.policy.idle_timeout = secs(3600);
    });
    let (gw, hard_stop) = gateway(vec![patient], &[]);
    (provider, gw, hard_stop)
}

/// A call waiting in an instance's queue at the hard stop ends with SHUTTING_DOWN too, as does the
/// running call it waits for, and neither is retried or reaches the upstream again.
#[tokio::test(start_paused = true)]
async fn a_call_queued_at_the_hard_stop_ends_with_shutting_down() {
    let (provider, gw, hard_stop) = one_place_held_forever();
    let start = Instant::now();
    let running = async { complete(&gw, "a/m", call(None)).await };
    let queued = async {
        sleep(ms(100)).await;
        complete(&gw, "a/m", call(None)).await.1.unwrap_err()
    };
    let stop = async {
        sleep(secs(1)).await;
        hard_stop.cancel();
    };
    let ((text, running), queued, ()) = tokio::join!(running, queued, stop);
    assert_eq!(text, "held");
    assert_eq!(reason(&running.unwrap_err()), "SHUTTING_DOWN");
    assert_eq!(reason(&queued), "SHUTTING_DOWN");
    assert_eq!(Instant::now() - start, secs(1));
    assert_eq!(provider.count(), 1);
}

/// The queue watches the hard stop itself: a queued call ends at once even when the call it waits
/// for is not being read (its client is slow), and so cannot free its place.
#[tokio::test(start_paused = true)]
async fn the_hard_stop_ends_a_queued_call_whose_running_call_is_not_read() {
    let (provider, gw, hard_stop) = one_place_held_forever();
    // Started, holding the instance's only place, and never polled again.
    let _running = started(chat(&gw, request("a/m"), call(None), STREAMED).await);
    let start = Instant::now();
    let queued = async { refused(chat(&gw, request("a/m"), call(None), STREAMED).await) };
    let stop = async {
        sleep(secs(1)).await;
        hard_stop.cancel();
    };
    let (status, ()) = tokio::join!(queued, stop);
    assert_eq!(reason(&status), "SHUTTING_DOWN");
    assert_eq!(Instant::now() - start, secs(1));
    assert_eq!(provider.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Response limits

/// limits.max_response_bytes: a streamed call refuses any single chunk over it, a collected one
/// the sum of its chunks; either way the text over the limit is not passed on, the stream ends
/// with RESOURCE_EXHAUSTED / RESPONSE_TOO_LARGE, and the upstream stream is dropped (cancelled).
#[tokio::test(start_paused = true)]
async fn response_limits_end_the_stream_and_cancel_the_upstream() {
    // Chunks of 4, 1 and 5 bytes: each limit is met exactly once before it is passed.
    let reply = || Step::Accept(vec![Item::Delta("abcd"), Item::Delta("e"), Item::Delta("fghij"), Item::Hang]);
    let provider = Scripted::new([reply(), reply(), reply()]);
    let (gw, _) = gateway(vec![instance("a", &provider)], &[]);
    for (limit, text, chunk_bytes) in [
        (ResponseLimit::Chunk(4), "abcde", Some(5)),
        (ResponseLimit::Total(5), "abcde", None),
        (ResponseLimit::Total(4), "abcd", None),
    ] {
        let stream = started(chat(&gw, request("a/m"), call(None), limit).await);
        let (got, end) = drain(stream).await;
        assert_eq!(got, text, "{limit:?}");
        let error = end.unwrap_err();
        assert!(
            matches!(&error, GatewayError::ResponseTooLarge { limit: l, chunk_bytes: c, .. }
                if *l == limit.bytes() && *c == chunk_bytes),
            "{limit:?}: {error:?}"
        );
        let status = Status::from(error);
        assert_eq!((status.code(), reason(&status).as_str()), (Code::ResourceExhausted, "RESPONSE_TOO_LARGE"));
    }
    assert_eq!(provider.dropped(), 3);
}

// ---------------------------------------------------------------------------------------------
// Tool calls and features

fn piece(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Item {
    Item::Event(ChatEvent::tool_call(ToolCallDelta {
        index,
        id: id.map(Into::into),
        name: name.map(Into::into),
        arguments: arguments.into(),
        ..Default::default()
    }))
}

fn finished(reason: FinishReason) -> Item {
    Item::Event(ChatEvent::done(Completion { finish_reason: reason, ..Completion::default() }))
}

fn with_tools(model: &str) -> ValidRequest {
    let tool = Tool { name: "f".into(), ..Default::default() };
    ValidRequest { tools: vec![tool], ..request(model) }
}

/// Whatever the upstream sends, clients get each call's id and name once, on its first piece
/// (an id made up where the upstream gave none), `{}` for a call whose arguments never came, and
/// TOOL_CALLS when calls end an answer the upstream said stopped.
#[tokio::test(start_paused = true)]
async fn tool_calls_reach_clients_in_one_shape_whatever_the_upstream_sends() {
    let provider = Scripted::with_features(
        [Step::Accept(vec![
            Item::Delta("Checking."),
            piece(0, Some("up_1"), Some("f"), ""),
            piece(1, None, Some("g"), "{\"a\":"),
            // Repeated id and name (some servers send them on every piece) are not passed on.
            piece(0, Some("up_1"), Some("f"), "{\"x\":1.0}"),
            piece(1, None, None, "9007199254740993}"),
            piece(2, Some("up_3"), Some("h"), ""),
            finished(FinishReason::Stop),
        ])],
        Features::of(&[Feature::Tools]),
    );
    let (gw, _) = gateway(vec![instance("a", &provider)], &[]);
    let (text, end) = drain(started(chat(&gw, with_tools("a/m"), call(None), STREAMED).await)).await;
    let summary = end.unwrap();
    assert_eq!(summary.completion.finish_reason, FinishReason::ToolCalls);
    let made_up = text.split(' ').nth(6).unwrap().to_string();
    assert!(made_up.starts_with("call_") && made_up.len() == 29, "{text}");
    assert_eq!(
        text,
        format!(
            "Checking.[call 0 up_1 f ][call 1 {made_up} g {{\"a\":][call 0 - - {{\"x\":1.0}}][call 1 - - \
             9007199254740993}}][call 2 up_3 h ][call 2 - - {{}}]"
        )
    );
}

/// A cut answer keeps LENGTH (its arguments may be incomplete); an upstream that says tool_calls
/// without a call gets STOP; a piece that starts a call out of order or without a name is the
/// upstream's protocol error, and the upstream is cancelled.
#[tokio::test(start_paused = true)]
async fn the_finish_reason_follows_the_calls_and_broken_calls_are_protocol_errors() {
    let provider = Scripted::with_features(
        [
            Step::Accept(vec![piece(0, None, Some("f"), "{\"x\":"), finished(FinishReason::Length)]),
            Step::Accept(vec![Item::Delta("no call"), finished(FinishReason::ToolCalls)]),
            Step::Accept(vec![Item::Delta("a"), piece(1, None, Some("f"), "{}"), Item::Hang]),
            Step::Accept(vec![piece(0, Some("x"), None, "{}"), Item::Hang]),
        ],
        Features::of(&[Feature::Tools]),
    );
    let (gw, _) = gateway(vec![instance("a", &provider)], &[]);
    let (_, end) = drain(started(chat(&gw, with_tools("a/m"), call(None), STREAMED).await)).await;
    assert_eq!(end.unwrap().completion.finish_reason, FinishReason::Length);
    let (_, end) = drain(started(chat(&gw, with_tools("a/m"), call(None), STREAMED).await)).await;
    assert_eq!(end.unwrap().completion.finish_reason, FinishReason::Stop);
    for expected in ["tool call 1 began before call 0", "without the tool's name"] {
        let outcome = chat(&gw, with_tools("a/m"), call(None), STREAMED).await;
        let (_, end) = match outcome {
            Ok(stream) => drain(stream).await,
            Err(error) => (String::new(), Err(error)),
        };
        let status = Status::from(end.unwrap_err());
        assert_eq!((status.code(), reason(&status).as_str()), (Code::Internal, "UPSTREAM_PROTOCOL_ERROR"));
        assert!(status.message().contains(expected), "{}", status.message());
    }
    assert_eq!(provider.dropped(), 4);
}

/// A request needing what an instance's adapter cannot translate never reaches it: a plain
/// model is refused with FAILED_PRECONDITION / FEATURE_UNSUPPORTED naming the feature, and an
/// alias skips that target for the next one that can.
#[tokio::test(start_paused = true)]
async fn a_target_that_cannot_serve_the_request_is_refused_or_skipped() {
    let text_only = Scripted::new([]);
    let with_tools_provider = Scripted::with_features([answer()], Features::of(&[Feature::Tools]));
    let (gw, _) = gateway(vec![instance("a", &text_only), instance("b", &with_tools_provider)], &["a/m", "b/m"]);

    let status = refused(chat(&gw, with_tools("a/m"), call(None), STREAMED).await);
    assert_eq!((status.code(), reason(&status).as_str()), (Code::FailedPrecondition, "FEATURE_UNSUPPORTED"));
    assert!(status.message().contains("'a/m' cannot do tool calling"), "{}", status.message());
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata.get("feature").map(String::as_str), Some("tools"));

    let (text, end) = drain(started(chat(&gw, with_tools("pair"), call(None), STREAMED).await)).await;
    assert_eq!(text, "hello world");
    assert!(end.is_ok());
    assert_eq!((text_only.count(), with_tools_provider.count()), (0, 1));

    // Without tools the text-only target serves the alias as before.
    text_only.push(answer());
    let (text, _) = drain(started(chat(&gw, request("pair"), call(None), STREAMED).await)).await;
    assert_eq!((text.as_str(), text_only.count()), ("hello world", 1));
}

/// Tool-call arguments count against limits.max_response_bytes as text does.
#[tokio::test(start_paused = true)]
async fn tool_call_arguments_count_against_the_response_limit() {
    let provider = Scripted::with_features(
        [Step::Accept(vec![piece(0, Some("c"), Some("f"), "{\"abc\":"), piece(0, None, None, "12345}"), Item::Hang])],
        Features::of(&[Feature::Tools]),
    );
    let (gw, _) = gateway(vec![instance("a", &provider)], &[]);
    let stream = started(chat(&gw, with_tools("a/m"), call(None), ResponseLimit::Total(12)).await);
    let (_, end) = drain(stream).await;
    assert!(matches!(end, Err(GatewayError::ResponseTooLarge { limit: 12, .. })), "{end:?}");
    assert_eq!(provider.dropped(), 1);
}

// ---------------------------------------------------------------------------------------------
// Embeddings

fn embed_request(model: &str) -> ValidEmbed {
    ValidEmbed { model: model.into(), inputs: vec!["a".into(), "b".into()], ..Default::default() }
}

fn vectors(vectors: Vec<Vec<f32>>) -> Result<copilot_provider::Embeddings, ProviderError> {
    Ok(copilot_provider::Embeddings { vectors, model: String::new(), input_tokens: Some(4) })
}

/// `Embed` takes the chat path's policy: a target that cannot embed is refused or skipped by an
/// alias, a retryable failure is retried, and the answer comes back normalised, in order.
#[tokio::test(start_paused = true)]
async fn embeddings_are_routed_retried_and_normalised() {
    let chat_only = Scripted::new([]);
    let embedder = Scripted::with_features([], Features::of(&[Feature::Embeddings]));
    embedder
        .embeddings
        .lock()
        .unwrap()
        .extend([Err(ProviderError::Unreachable("refused".into())), vectors(vec![vec![3.0, 4.0], vec![0.0, 5.0]])]);
    let retrying_embedder = retrying("b", &embedder, 1, secs(1), secs(1));
    let (gw, _) = gateway(vec![instance("a", &chat_only), retrying_embedder], &["a/m", "b/e"]);

    let plan = gw.router().resolve("a/m").unwrap();
    let status = Status::from(gw.embed(&plan, embed_request("a/m"), call(None)).await.unwrap_err());
    assert_eq!((status.code(), reason(&status).as_str()), (Code::FailedPrecondition, "FEATURE_UNSUPPORTED"));
    assert_eq!(status.get_details_error_info().unwrap().metadata["feature"], "embedding");

    let plan = gw.router().resolve("pair").unwrap();
    let embedded = gw.embed(&plan, embed_request("pair"), call(None)).await.unwrap();
    assert_eq!(embedded.vectors, [vec![0.6, 0.8], vec![0.0, 1.0]]);
    assert_eq!((embedded.model.as_str(), embedded.dimensions, embedded.input_tokens), ("b/e", 2, Some(4)));
    assert_eq!((chat_only.count(), embedder.count()), (0, 2));

    // Shortened vectors need an adapter that can shorten them.
    let plan = gw.router().resolve("b/e").unwrap();
    let shortened = ValidEmbed { dimensions: Some(1), ..embed_request("b/e") };
    let status = Status::from(gw.embed(&plan, shortened, call(None)).await.unwrap_err());
    assert_eq!(status.get_details_error_info().unwrap().metadata["feature"], "embedding_dimensions");
}

// ---------------------------------------------------------------------------------------------
// Token counts

/// `CountTokens` takes the chat path's policy too: a target whose adapter cannot count is refused
/// without being asked (or skipped by an alias), a retryable failure is retried, and the request
/// reaches the adapter with its messages and tools but no generation options.
#[tokio::test(start_paused = true)]
async fn counts_are_routed_retried_and_refused_where_nothing_counts() {
    let chat_only = Scripted::new([]);
    let counter = Scripted::with_features([], Features::of(&[Feature::CountTokens, Feature::Tools]));
    counter.counts.lock().unwrap().extend([
        Err(ProviderError::Overloaded { message: "busy".into(), retry_after: None }),
        Ok(copilot_provider::TokenCount { input_tokens: 42, exact: false, model: String::new() }),
    ]);
    let retrying_counter = retrying("b", &counter, 1, secs(1), secs(1));
    let (gw, _) = gateway(vec![instance("a", &chat_only), retrying_counter], &["a/m", "b/e"]);
    let with_tool = ValidRequest { tools: vec![Tool { name: "t".into(), ..Default::default() }], ..request("pair") };

    let plan = gw.router().resolve("a/m").unwrap();
    let status = Status::from(gw.count_tokens(&plan, request("a/m"), call(None)).await.unwrap_err());
    assert_eq!((status.code(), reason(&status).as_str()), (Code::FailedPrecondition, "FEATURE_UNSUPPORTED"));
    assert_eq!(status.get_details_error_info().unwrap().metadata["feature"], "count_tokens");
    assert!(status.message().contains("no token-counting endpoint"), "{}", status.message());

    let plan = gw.router().resolve("pair").unwrap();
    let counted = gw.count_tokens(&plan, with_tool, call(None)).await.unwrap();
    assert_eq!(counted, Counted { model: "b/e".into(), input_tokens: 42, exact: false });
    assert_eq!((chat_only.count(), counter.count()), (0, 2));
    let sent = counter.counted.lock().unwrap().pop().unwrap();
    assert_eq!((sent.model.as_str(), sent.tools.len(), sent.messages.len()), ("e", 1, 1));
    assert_eq!(sent.options, copilot_provider::GenerationOptions::default());
}

/// An empty name goes to the configured default embedding model, or is MODEL_REQUIRED.
#[test]
fn an_embed_without_a_model_uses_the_default_embedding_model() {
    let provider = Scripted::new([]);
    let router = Router::new(vec![instance("a", &provider)], None, Some("a/chat".into()), BTreeMap::new());
    let status = Status::from(refusal(router.resolve_embedding("")));
    assert_eq!(reason(&status), "MODEL_REQUIRED");
    assert!(status.message().contains("routing.default_embedding_model"), "{}", status.message());
    let router = router.with_default_embedding_model(Some("a/embedder".into()));
    let plan = router.resolve_embedding("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.attempt_order()[0].model, "embedder");
}
