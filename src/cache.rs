//! The response cache (issue 18, stage 3): whole answers of `Generate`, `Chat` and `Embed`, kept
//! under a key made of everything that changes the answer (`cache/key.rs`) and answered again to
//! an identical call without calling the upstream.
//!
//! The handlers call it in three places: after routing (and the key's model check) and before
//! reserving tokens, [`ResponseCache::generate`] / [`chat`](ResponseCache::chat) /
//! [`embed`](ResponseCache::embed) decide and look up — a hit is the answer, with no upstream call
//! and no token reservation (the call still spent one of its key's requests at admission, which
//! runs first); on a miss the call goes on as before, and [`Storing`] keeps its answer once it is
//! complete: a `Generate` or `Embed` response when it is built, a `Chat` stream accumulated as it
//! is sent ([`recording`]) and kept when it ends. Only a finished answer (`STOP`, `LENGTH`,
//! `TOOL_CALLS`) is kept: never an error, a cancelled call or `CONTENT_FILTER`.
//!
//! Per call, `CacheControl.mode` (see the proto): unspecified follows `cache.deterministic_only`,
//! `USE` looks up and stores even a call that is not deterministic, `SKIP` neither, `REFRESH`
//! stores without looking up, `ONLY_IF_CACHED` looks up and answers a miss with `CACHE_MISS`.
//!
//! Identical calls that miss while the first is still answering wait for its answer instead of
//! calling the upstream too (`cache.coalesce`; `cache/in_flight.rs`).

mod entry;
mod in_flight;
pub mod key;
mod redis_store;
mod store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use copilot_provider::GenerationOptions;
use futures::{FutureExt, Stream, future};
use opentelemetry::KeyValue;
use prost::Message as _;

pub use key::{CacheKey, Method};
pub use redis_store::RedisStore;
pub use store::{CacheStore, MemoryStore};

use crate::auth::Caller;
use crate::config::{CacheConfig, CacheScope};
use crate::deadline::CallContext;
use crate::error::GatewayError;
use crate::proto::v1 as pb;
use crate::router::Plan;
use crate::state::SharedState;
use crate::telemetry::metrics::metrics;
use crate::telemetry::metrics_enabled;
use crate::validate::{ValidEmbed, ValidRequest};
use entry::Answer;
use in_flight::{InFlight, Leading, Turn};
use key::{Asked, Scope};

/// The span attribute that says what the cache did for the call: `hit`, `miss` or `bypass`.
pub const CACHE_ATTRIBUTE: &str = "copilot.cache";

/// Consecutive text-only chunks of a `Chat` answer are stored merged, up to this many bytes each
/// (and never more than `limits.max_response_bytes`, the most a `Chat` message may carry).
pub const MERGED_TEXT_BYTES: usize = 16 * 1024;

/// What a call asks of the cache (`CacheControl`), checked by `validate::cache_control`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub mode: CacheMode,
    /// Shorter than `cache.ttl` to keep the answer for less; a longer one is cut to it.
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// The configuration decides.
    #[default]
    Default,
    Use,
    Skip,
    Refresh,
    OnlyIfCached,
}

impl CacheMode {
    /// As the proto names it.
    pub fn proto_name(self) -> &'static str {
        match self {
            CacheMode::Default => "CACHE_MODE_UNSPECIFIED",
            CacheMode::Use => "CACHE_MODE_USE",
            CacheMode::Skip => "CACHE_MODE_SKIP",
            CacheMode::Refresh => "CACHE_MODE_REFRESH",
            CacheMode::OnlyIfCached => "CACHE_MODE_ONLY_IF_CACHED",
        }
    }
}

/// A completion is deterministic when sampling is greedy or seeded.
pub fn deterministic(options: &GenerationOptions) -> bool {
    options.temperature == Some(0.0) || options.seed.is_some()
}

/// The cache as the handlers see it: off (no store), or a store and the configuration.
pub struct ResponseCache {
    config: CacheConfig,
    store: Option<Arc<dyn CacheStore>>,
    /// The misses being answered, when identical ones are coalesced.
    in_flight: Option<Arc<InFlight>>,
    /// The most text a merged `Chat` message holds.
    merged_text_bytes: usize,
}

/// What a lookup found: the answer, or a miss with what to store (nothing when the call is not
/// to be stored).
pub enum Lookup<T> {
    Hit(T),
    Miss(Option<Storing>),
}

impl ResponseCache {
    /// The cache the configuration asks for: off, in the shared Redis when there is one (every
    /// replica answers from what any stored), or in process.
    pub fn from_config(config: &CacheConfig, shared: Option<&Arc<SharedState>>) -> ResponseCache {
        let store = config.enabled.then(|| match shared {
            Some(state) => Arc::new(RedisStore::start(state.clone())) as Arc<dyn CacheStore>,
            None => Arc::new(MemoryStore::new(config.max_bytes)) as Arc<dyn CacheStore>,
        });
        ResponseCache::new(config, store)
    }

    fn new(config: &CacheConfig, store: Option<Arc<dyn CacheStore>>) -> ResponseCache {
        let in_flight = (store.is_some() && config.coalesce).then(Arc::default);
        ResponseCache { config: config.clone(), store, in_flight, merged_text_bytes: MERGED_TEXT_BYTES }
    }

    /// Merges no more text into one replayed `Chat` message than `max_message_bytes`
    /// (`limits.max_response_bytes`): a replay keeps the bound a live stream keeps.
    pub fn with_message_limit(mut self, max_message_bytes: usize) -> ResponseCache {
        self.merged_text_bytes = MERGED_TEXT_BYTES.min(max_message_bytes);
        self
    }

    /// No cache: every call bypasses it, and one that asks for it is refused (`CACHE_DISABLED`).
    pub fn disabled() -> ResponseCache {
        ResponseCache::new(&CacheConfig::default(), None)
    }

    /// A cache on `store` (the Redis store, or a test's).
    pub fn with_store(config: &CacheConfig, store: Arc<dyn CacheStore>) -> ResponseCache {
        ResponseCache::new(config, Some(store))
    }

    /// `call`'s deadline bounds the wait for an identical call's answer.
    pub async fn generate(
        &self,
        caller: Option<&Caller>,
        plan: &Plan,
        request: &ValidRequest,
        control: CacheControl,
        call: CallContext,
    ) -> Result<Lookup<pb::GenerateResponse>, GatewayError> {
        let started = Instant::now();
        let found = self
            .lookup(
                caller,
                Method::Generate,
                plan,
                Asked::Completion(request),
                deterministic(&request.options),
                control,
                call,
            )
            .await?;
        Ok(match found {
            Lookup::Hit(Answer::Generate(mut response)) => {
                response.cached = true;
                response.timing = Some(replay_timing(started));
                Lookup::Hit(response)
            }
            Lookup::Hit(_) => Lookup::Miss(None),
            Lookup::Miss(storing) => Lookup::Miss(storing),
        })
    }

    /// A hit is the stored stream's messages, each marked `cached`, the last with the replay's
    /// own timing.
    pub async fn chat(
        &self,
        caller: Option<&Caller>,
        plan: &Plan,
        request: &ValidRequest,
        control: CacheControl,
        call: CallContext,
    ) -> Result<Lookup<Vec<pb::ChatResponse>>, GatewayError> {
        let started = Instant::now();
        let asked = Asked::Completion(request);
        let found =
            self.lookup(caller, Method::Chat, plan, asked, deterministic(&request.options), control, call).await?;
        Ok(match found {
            Lookup::Hit(Answer::Chat(replay)) => {
                let mut chunks = replay.chunks;
                for chunk in &mut chunks {
                    chunk.cached = true;
                }
                if let Some(last) = chunks.last_mut() {
                    last.timing = Some(replay_timing(started));
                }
                Lookup::Hit(chunks)
            }
            Lookup::Hit(_) => Lookup::Miss(None),
            Lookup::Miss(storing) => Lookup::Miss(storing),
        })
    }

    /// Vectors are deterministic: with the cache on, every `Embed` is cacheable.
    pub async fn embed(
        &self,
        caller: Option<&Caller>,
        plan: &Plan,
        request: &ValidEmbed,
        control: CacheControl,
        call: CallContext,
    ) -> Result<Lookup<pb::EmbedResponse>, GatewayError> {
        let asked = Asked::Embedding(request);
        let found = self.lookup(caller, Method::Embed, plan, asked, true, control, call).await?;
        Ok(match found {
            Lookup::Hit(Answer::Embed(mut response)) => {
                response.cached = true;
                Lookup::Hit(response)
            }
            Lookup::Hit(_) => Lookup::Miss(None),
            Lookup::Miss(storing) => Lookup::Miss(storing),
        })
    }

    /// The decision and the lookup, recorded on the span and in the metrics. Everything but the
    /// store's answer is decided here, at once; only a lookup in the store is a future of its own,
    /// boxed: it is ~1.7 KiB (a round trip to the store, the caller's deferred admission), which
    /// every call waiting on its upstream would otherwise carry inside its own future.
    #[expect(clippy::too_many_arguments, reason = "the call's parts, each used once")]
    fn lookup<'a>(
        &'a self,
        caller: Option<&'a Caller>,
        method: Method,
        plan: &Plan,
        request: Asked<'_>,
        deterministic: bool,
        control: CacheControl,
        call: CallContext,
    ) -> impl Future<Output = Result<Lookup<Answer>, GatewayError>> + Send + use<'a> {
        let Some(store) = &self.store else {
            let bypass = if control.mode != CacheMode::Default {
                Err(GatewayError::CacheDisabled { mode: control.mode.proto_name() })
            } else {
                tracing::Span::current().record(CACHE_ATTRIBUTE, "bypass");
                Ok(Lookup::Miss(None))
            };
            return future::ready(bypass).left_future();
        };
        let by_default = deterministic || !self.config.deterministic_only;
        let (look, keep) = match control.mode {
            CacheMode::Default => (by_default, by_default),
            CacheMode::Use => (true, true),
            CacheMode::Skip => (false, false),
            CacheMode::Refresh => (false, true),
            CacheMode::OnlyIfCached => (true, false),
        };
        let scope = match (self.config.scope, caller) {
            (CacheScope::Key, Some(caller)) => Scope::Key(&caller.key.name),
            _ => Scope::Shared,
        };
        let key = if look || keep { key::key(scope, method, plan, request) } else { None };
        let Some(key) = key else {
            counted(method, "bypass");
            return future::ready(Ok(Lookup::Miss(None))).left_future();
        };
        let storing = keep.then(|| self.storing(store, key, &control));
        if !look {
            counted(method, "miss");
            return future::ready(Ok(Lookup::Miss(storing))).left_future();
        }
        Box::pin(self.find(store, caller, method, key, storing, control.mode, call)).right_future()
    }

    /// Looks `key` up in the store: a hit, or a miss with what to store. A miss that is to be
    /// stored joins the key's misses in flight: the first leads (its `Storing` publishes the
    /// answer), the others wait for that answer, until their deadline at the latest.
    #[expect(clippy::too_many_arguments, reason = "the call's parts, each used once")]
    async fn find(
        &self,
        store: &Arc<dyn CacheStore>,
        caller: Option<&Caller>,
        method: Method,
        key: CacheKey,
        mut storing: Option<Storing>,
        mode: CacheMode,
        call: CallContext,
    ) -> Result<Lookup<Answer>, GatewayError> {
        if let Some(bytes) = store.get(&key).await {
            match entry::decode(&bytes) {
                Some(answer) => return hit(caller, method, answer).await,
                // Another version's entry, or a damaged one: a miss, and gone.
                None => store.remove(&key),
            }
        }
        if mode == CacheMode::OnlyIfCached {
            counted(method, "miss");
            return Err(GatewayError::CacheMiss);
        }
        if let (Some(in_flight), Some(storing)) = (&self.in_flight, &mut storing) {
            match in_flight.join(key) {
                Turn::Lead(leading) => storing.leading = Some(leading),
                Turn::Follow(following) => {
                    let waited = match call.deadline() {
                        None => following.answer().await,
                        Some(deadline) => {
                            tokio::time::timeout_at(deadline, following.answer()).await.map_err(|_| {
                                counted(method, "miss");
                                GatewayError::DeadlineWaitingForIdentical { budget: call.budget.unwrap_or_default() }
                            })?
                        }
                    };
                    // Released empty-handed (the leader failed, or kept nothing), the call goes on
                    // as a miss and calls the upstream itself.
                    if let Some(answer) = waited.as_deref().and_then(entry::decode) {
                        if metrics_enabled() {
                            metrics().cache_coalesced.add(1, &[KeyValue::new("rpc.method", method.as_str())]);
                        }
                        return hit(caller, method, answer).await;
                    }
                }
            }
        }
        counted(method, "miss");
        Ok(Lookup::Miss(storing))
    }

    /// What a miss stores once the answer is complete.
    fn storing(&self, store: &Arc<dyn CacheStore>, key: CacheKey, control: &CacheControl) -> Storing {
        let ttl = control.ttl.map_or(self.config.ttl, |ttl| ttl.min(self.config.ttl));
        let max_entry_bytes = usize::try_from(self.config.max_entry_bytes).unwrap_or(usize::MAX);
        Storing {
            store: store.clone(),
            key,
            ttl,
            max_entry_bytes,
            merged_text_bytes: self.merged_text_bytes,
            leading: None,
        }
    }
}

/// A hit spends no tokens, but the call's request, whose admission may have been left to the
/// reservation (shared budgets) that a hit never makes.
async fn hit(caller: Option<&Caller>, method: Method, answer: Answer) -> Result<Lookup<Answer>, GatewayError> {
    if let Some(caller) = caller {
        caller.admit_deferred().await?;
    }
    counted(method, "hit");
    Ok(Lookup::Hit(answer))
}

/// The span attribute and the request counter.
fn counted(method: Method, result: &'static str) {
    tracing::Span::current().record(CACHE_ATTRIBUTE, result);
    if metrics_enabled() {
        metrics()
            .cache_requests
            .add(1, &[KeyValue::new("result", result), KeyValue::new("rpc.method", method.as_str())]);
    }
}

fn replay_timing(started: Instant) -> pb::Timing {
    let elapsed = started.elapsed();
    let total = prost_types::Duration { seconds: elapsed.as_secs() as i64, nanos: elapsed.subsec_nanos() as i32 };
    pb::Timing { total_duration: Some(total), ..Default::default() }
}

/// Whether an answer that ended so is kept: a finished answer, not a filtered one.
fn complete(finish_reason: i32) -> bool {
    matches!(
        pb::FinishReason::try_from(finish_reason),
        Ok(pb::FinishReason::Stop | pb::FinishReason::Length | pb::FinishReason::ToolCalls)
    )
}

/// Where a missed call's answer goes once it is complete.
pub struct Storing {
    store: Arc<dyn CacheStore>,
    key: CacheKey,
    ttl: Duration,
    max_entry_bytes: usize,
    merged_text_bytes: usize,
    /// When this call leads identical misses: they get the entry it stores, and are released
    /// (to call the upstream themselves) when it is dropped without storing one.
    leading: Option<Leading>,
}

impl Storing {
    pub fn generate(self, response: &pb::GenerateResponse) {
        if complete(response.finish_reason) && self.fits(entry::generate_len(response)) {
            self.put(entry::encode_generate(response));
        }
    }

    pub fn embed(self, response: &pb::EmbedResponse) {
        if self.fits(entry::embed_len(response)) {
            self.put(entry::encode_embed(response));
        }
    }

    fn chat(self) -> ChatRecorder {
        ChatRecorder { storing: self, chunks: Vec::new(), bytes: 0 }
    }

    /// Whether an entry of `len` bytes may be stored; one over `cache.max_entry_bytes` is counted.
    fn fits(&self, len: usize) -> bool {
        if len <= self.max_entry_bytes {
            return true;
        }
        if metrics_enabled() {
            metrics().cache_oversize.add(1, &[]);
        }
        false
    }

    fn put(self, value: bytes::Bytes) {
        if metrics_enabled() {
            metrics().cache_stores.add(1, &[]);
        }
        if let Some(leading) = &self.leading {
            leading.publish(&value);
        }
        self.store.put(self.key, value, self.ttl);
    }
}

/// A `Chat` answer accumulated as it is sent.
struct ChatRecorder {
    storing: Storing,
    chunks: Vec<pb::ChatResponse>,
    /// The entry's size so far, near enough to stop early (the entry is measured when stored).
    bytes: usize,
}

impl ChatRecorder {
    /// Keeps `chunk`; false when the answer has outgrown `cache.max_entry_bytes` (counted), and
    /// is not to be stored.
    fn add(&mut self, chunk: &pb::ChatResponse) -> bool {
        if text_only(chunk)
            && let Some(last) = self.chunks.last_mut()
            && text_only(last)
            && last.content.len() + chunk.content.len() <= self.storing.merged_text_bytes
        {
            last.content.push_str(&chunk.content);
            self.bytes += chunk.content.len();
        } else {
            // The replay carries its own timing.
            let kept = pb::ChatResponse { timing: None, ..chunk.clone() };
            self.bytes += kept.encoded_len() + 4;
            self.chunks.push(kept);
        }
        self.storing.fits(self.bytes)
    }

    /// Stores the answer if it finished.
    fn finish(self) {
        let finished = self.chunks.last().is_some_and(|last| complete(last.finish_reason));
        if !finished {
            return;
        }
        let value = entry::encode_chat(self.chunks);
        if self.storing.fits(value.len()) {
            self.storing.put(value);
        }
    }
}

/// A message with nothing but text, which may be merged with its neighbours. Every field is
/// named, so that a field added to `ChatResponse` fails to compile here until it is decided.
fn text_only(chunk: &pb::ChatResponse) -> bool {
    let pb::ChatResponse {
        content: _,
        model,
        finish_reason,
        usage,
        timing,
        thinking,
        tool_calls,
        thinking_signature,
        redacted_thinking,
        cached,
    } = chunk;
    model.is_empty()
        && *finish_reason == 0
        && usage.is_none()
        && timing.is_none()
        && thinking.is_empty()
        && tool_calls.is_empty()
        && thinking_signature.is_empty()
        && redacted_thinking.is_empty()
        && !cached
}

pin_project_lite::pin_project! {
    /// A `Chat` stream, passed through unchanged, whose answer is stored when it ends finished.
    /// Nothing is stored from a stream that fails, or is dropped before its end (the client went
    /// away).
    pub struct Recording<S> {
        #[pin]
        inner: S,
        recorder: Option<ChatRecorder>,
    }
}

/// `stream`, storing its answer on `storing` when there is one.
pub fn recording<S>(stream: S, storing: Option<Storing>) -> Recording<S> {
    Recording { inner: stream, recorder: storing.map(Storing::chat) }
}

impl<S, E> Stream for Recording<S>
where
    S: Stream<Item = Result<pb::ChatResponse, E>>,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let item = std::task::ready!(this.inner.poll_next(cx));
        match &item {
            Some(Ok(chunk)) => {
                if let Some(recorder) = this.recorder
                    && !recorder.add(chunk)
                {
                    *this.recorder = None;
                }
            }
            Some(Err(_)) => *this.recorder = None,
            None => {
                if let Some(recorder) = this.recorder.take() {
                    recorder.finish();
                }
            }
        }
        Poll::Ready(item)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// A store that keeps everything, for the cache logic's tests.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<std::collections::HashMap<CacheKey, bytes::Bytes>>);

    #[tonic::async_trait]
    impl CacheStore for Kept {
        async fn get(&self, key: &CacheKey) -> Option<bytes::Bytes> {
            self.0.lock().unwrap().get(key).cloned()
        }
        fn put(&self, key: CacheKey, value: bytes::Bytes, _: Duration) {
            self.0.lock().unwrap().insert(key, value);
        }
        fn remove(&self, key: &CacheKey) {
            self.0.lock().unwrap().remove(key);
        }
    }

    fn storing(store: &Arc<Kept>, max_entry_bytes: usize) -> Storing {
        Storing {
            store: store.clone(),
            key: CacheKey::from_bytes([1; 32]),
            ttl: Duration::from_secs(60),
            max_entry_bytes,
            merged_text_bytes: MERGED_TEXT_BYTES,
            leading: None,
        }
    }

    fn no_deadline() -> CallContext {
        CallContext { received: tokio::time::Instant::now(), budget: None }
    }

    fn text(content: &str) -> pb::ChatResponse {
        pb::ChatResponse { content: content.into(), ..Default::default() }
    }

    fn last(finish: pb::FinishReason) -> pb::ChatResponse {
        pb::ChatResponse {
            model: "ollama/m".into(),
            finish_reason: finish as i32,
            usage: Some(pb::Usage { input_tokens: 5, output_tokens: 3, ..Default::default() }),
            timing: Some(pb::Timing::default()),
            ..Default::default()
        }
    }

    async fn record(
        chunks: Vec<Result<pb::ChatResponse, ()>>,
        max_entry_bytes: usize,
    ) -> Option<Vec<pb::ChatResponse>> {
        record_merging(chunks, max_entry_bytes, MERGED_TEXT_BYTES).await
    }

    async fn record_merging(
        chunks: Vec<Result<pb::ChatResponse, ()>>,
        max_entry_bytes: usize,
        merged_text_bytes: usize,
    ) -> Option<Vec<pb::ChatResponse>> {
        let store = Arc::new(Kept::default());
        let storing = Storing { merged_text_bytes, ..storing(&store, max_entry_bytes) };
        let passed: Vec<_> = recording(futures::stream::iter(chunks.clone()), Some(storing)).collect().await;
        assert_eq!(passed, chunks, "the stream passes through unchanged");
        let stored = store.0.lock().unwrap().values().next().cloned()?;
        match entry::decode(&stored) {
            Some(Answer::Chat(replay)) => Some(replay.chunks),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn text_chunks_are_stored_merged_and_other_chunks_keep_their_bounds() {
        let tool = pb::ChatResponse {
            tool_calls: vec![pb::ToolCallDelta { name: "f".into(), ..Default::default() }],
            ..Default::default()
        };
        let thinking = pb::ChatResponse { thinking: "hm".into(), ..Default::default() };
        let chunks = vec![
            Ok(thinking.clone()),
            Ok(text("Hello")),
            Ok(text(", ")),
            Ok(text("world")),
            Ok(tool.clone()),
            Ok(text("!")),
            Ok(last(pb::FinishReason::ToolCalls)),
        ];
        let stored = record(chunks, 1 << 20).await.expect("stored");
        let last_stored = pb::ChatResponse { timing: None, ..last(pb::FinishReason::ToolCalls) };
        assert_eq!(stored, vec![thinking, text("Hello, world"), tool, text("!"), last_stored]);
    }

    #[tokio::test]
    async fn merged_text_stays_within_16_kib_per_message() {
        let piece = "x".repeat(1000);
        let mut chunks: Vec<_> = (0..40).map(|_| Ok(text(&piece))).collect();
        chunks.push(Ok(last(pb::FinishReason::Stop)));
        let stored = record(chunks, 1 << 20).await.expect("stored");
        let sizes: Vec<usize> = stored.iter().map(|chunk| chunk.content.len()).collect();
        assert_eq!(sizes, [16_000, 16_000, 8_000, 0]);
    }

    #[tokio::test]
    async fn merged_text_stays_within_the_servers_message_limit() {
        let config = CacheConfig { enabled: true, ..CacheConfig::default() };
        let cache = ResponseCache::with_store(&config, Arc::new(Kept::default())).with_message_limit(2500);
        assert_eq!(cache.merged_text_bytes, 2500);
        let piece = "x".repeat(1000);
        let mut chunks: Vec<_> = (0..5).map(|_| Ok(text(&piece))).collect();
        chunks.push(Ok(last(pb::FinishReason::Stop)));
        let stored = record_merging(chunks, 1 << 20, cache.merged_text_bytes).await.expect("stored");
        let sizes: Vec<usize> = stored.iter().map(|chunk| chunk.content.len()).collect();
        assert_eq!(sizes, [2000, 2000, 1000, 0]);
        let roomy = ResponseCache::with_store(&config, Arc::new(Kept::default())).with_message_limit(1 << 30);
        assert_eq!(roomy.merged_text_bytes, MERGED_TEXT_BYTES);
    }

    #[tokio::test]
    async fn only_finished_answers_within_the_size_are_stored() {
        let answer = |finish| vec![Ok(text("Hello")), Ok(last(finish))];
        assert!(record(answer(pb::FinishReason::Stop), 1 << 20).await.is_some());
        assert!(record(answer(pb::FinishReason::Length), 1 << 20).await.is_some());
        assert!(record(answer(pb::FinishReason::ContentFilter), 1 << 20).await.is_none());
        assert!(record(vec![Ok(text("Hello")), Err(())], 1 << 20).await.is_none(), "an error is never stored");
        assert!(record(vec![Ok(text("Hello"))], 1 << 20).await.is_none(), "an unfinished stream is not");
        assert!(record(answer(pb::FinishReason::Stop), 20).await.is_none(), "over max_entry_bytes");
        let long: Vec<_> = (0..100).map(|_| Ok(text("0123456789"))).chain([Ok(last(pb::FinishReason::Stop))]).collect();
        assert!(record(long, 500).await.is_none(), "abandoned once past max_entry_bytes");
    }

    #[tokio::test]
    async fn a_stream_dropped_before_its_end_stores_nothing() {
        let store = Arc::new(Kept::default());
        let chunks = vec![Ok::<_, ()>(text("Hello")), Ok(last(pb::FinishReason::Stop))];
        let mut stream = recording(futures::stream::iter(chunks), Some(storing(&store, 1 << 20)));
        // Both messages taken, but not the end of the stream.
        assert!(stream.next().await.is_some() && stream.next().await.is_some());
        drop(stream);
        assert!(store.0.lock().unwrap().is_empty());
    }

    #[test]
    fn determinism_is_temperature_zero_or_a_seed() {
        let options = |temperature, seed| GenerationOptions { temperature, seed, ..Default::default() };
        assert!(deterministic(&options(Some(0.0), None)));
        assert!(deterministic(&options(Some(0.7), Some(1))));
        assert!(deterministic(&options(None, Some(0))));
        assert!(!deterministic(&options(Some(0.7), None)));
        assert!(!deterministic(&options(None, None)));
    }

    fn plan() -> Plan {
        use crate::router::{Target, tests::instance};
        Plan { alias: None, tiers: vec![vec![Target { instance: Arc::new(instance("ollama")), model: "m".into() }]] }
    }

    fn request(temperature: f32) -> ValidRequest {
        ValidRequest {
            messages: vec![copilot_provider::Message::text(copilot_provider::Role::User, "hi")],
            options: GenerationOptions { temperature: Some(temperature), ..Default::default() },
            ..Default::default()
        }
    }

    fn answer() -> pb::GenerateResponse {
        pb::GenerateResponse {
            text: "hello".into(),
            finish_reason: pb::FinishReason::Stop as i32,
            timing: Some(pb::Timing { output_tokens_per_second: 9.0, ..Default::default() }),
            ..Default::default()
        }
    }

    /// Looks `request` up with `mode`; on a miss that stores, stores [`answer`]. What was found.
    async fn call(
        cache: &ResponseCache,
        request: &ValidRequest,
        mode: CacheMode,
    ) -> Result<&'static str, GatewayError> {
        let control = CacheControl { mode, ttl: None };
        Ok(match cache.generate(None, &plan(), request, control, no_deadline()).await? {
            Lookup::Hit(response) => {
                assert!(response.cached);
                assert_eq!(
                    response.timing.as_ref().map(|t| t.output_tokens_per_second),
                    Some(0.0),
                    "the replay's timing"
                );
                assert_eq!(response.text, "hello");
                "hit"
            }
            Lookup::Miss(Some(storing)) => {
                storing.generate(&answer());
                "miss, stored"
            }
            Lookup::Miss(None) => "miss",
        })
    }

    #[tokio::test]
    async fn modes_decide_what_is_looked_up_and_stored() {
        let config = CacheConfig { enabled: true, ..CacheConfig::default() };
        let cache = ResponseCache::with_store(&config, Arc::new(Kept::default()));
        let (greedy, warm) = (request(0.0), request(0.7));
        assert_eq!(call(&cache, &greedy, CacheMode::Skip).await.unwrap(), "miss");
        assert!(matches!(call(&cache, &greedy, CacheMode::OnlyIfCached).await, Err(GatewayError::CacheMiss)));
        assert_eq!(call(&cache, &greedy, CacheMode::Default).await.unwrap(), "miss, stored");
        assert_eq!(call(&cache, &greedy, CacheMode::Default).await.unwrap(), "hit");
        assert_eq!(call(&cache, &greedy, CacheMode::OnlyIfCached).await.unwrap(), "hit");
        assert_eq!(call(&cache, &greedy, CacheMode::Use).await.unwrap(), "hit");
        assert_eq!(call(&cache, &greedy, CacheMode::Skip).await.unwrap(), "miss");
        assert_eq!(call(&cache, &greedy, CacheMode::Refresh).await.unwrap(), "miss, stored");

        // Not deterministic: bypassed unless the call asks.
        assert_eq!(call(&cache, &warm, CacheMode::Default).await.unwrap(), "miss");
        assert_eq!(call(&cache, &warm, CacheMode::Default).await.unwrap(), "miss");
        assert_eq!(call(&cache, &warm, CacheMode::Use).await.unwrap(), "miss, stored");
        assert_eq!(call(&cache, &warm, CacheMode::Use).await.unwrap(), "hit");
        // Still not looked up by default: the entry is only for callers who ask.
        assert_eq!(call(&cache, &warm, CacheMode::Default).await.unwrap(), "miss");

        let everything = CacheConfig { deterministic_only: false, ..config };
        let cache = ResponseCache::with_store(&everything, Arc::new(Kept::default()));
        assert_eq!(call(&cache, &warm, CacheMode::Default).await.unwrap(), "miss, stored");
        assert_eq!(call(&cache, &warm, CacheMode::Default).await.unwrap(), "hit");
    }

    #[tokio::test]
    async fn a_disabled_cache_refuses_every_mode_but_the_default() {
        let cache = ResponseCache::disabled();
        assert_eq!(call(&cache, &request(0.0), CacheMode::Default).await.unwrap(), "miss");
        for mode in [CacheMode::Use, CacheMode::Skip, CacheMode::Refresh, CacheMode::OnlyIfCached] {
            match call(&cache, &request(0.0), mode).await {
                Err(GatewayError::CacheDisabled { mode: name }) => assert_eq!(name, mode.proto_name()),
                other => panic!("{mode:?}: {:?}", other.map_err(|e| e.to_string())),
            }
        }
    }

    #[tokio::test]
    async fn an_entry_that_does_not_decode_is_a_miss_and_removed() {
        let config = CacheConfig { enabled: true, ..CacheConfig::default() };
        let store = Arc::new(Kept::default());
        let cache = ResponseCache::with_store(&config, store.clone());
        assert_eq!(call(&cache, &request(0.0), CacheMode::Default).await.unwrap(), "miss, stored");
        for value in store.0.lock().unwrap().values_mut() {
            *value = bytes::Bytes::from_static(b"\x08\x02");
        }
        assert!(matches!(call(&cache, &request(0.0), CacheMode::OnlyIfCached).await, Err(GatewayError::CacheMiss)));
        assert!(store.0.lock().unwrap().is_empty(), "removed");
    }

    #[tokio::test]
    async fn the_call_may_shorten_the_ttl_never_lengthen_it() {
        let config = CacheConfig { enabled: true, ttl: Duration::from_secs(60), ..CacheConfig::default() };
        let cache = &ResponseCache::with_store(&config, Arc::new(Kept::default()));
        let ttl = |asked| async move {
            let control = CacheControl { mode: CacheMode::Use, ttl: asked };
            match cache.generate(None, &plan(), &request(0.0), control, no_deadline()).await {
                Ok(Lookup::Miss(Some(storing))) => storing.ttl,
                _ => panic!("a miss that stores"),
            }
        };
        assert_eq!(ttl(None).await, Duration::from_secs(60));
        assert_eq!(ttl(Some(Duration::from_secs(5))).await, Duration::from_secs(5));
        assert_eq!(ttl(Some(Duration::from_secs(3600))).await, Duration::from_secs(60));
    }

    #[tokio::test]
    async fn unfinished_or_filtered_or_oversized_generate_answers_are_not_stored() {
        let store = Arc::new(Kept::default());
        for finish in [pb::FinishReason::ContentFilter, pb::FinishReason::Unspecified] {
            storing(&store, 1 << 20).generate(&pb::GenerateResponse { finish_reason: finish as i32, ..answer() });
        }
        storing(&store, 10).generate(&answer());
        assert!(store.0.lock().unwrap().is_empty());
        storing(&store, 1 << 20).generate(&answer());
        assert_eq!(store.0.lock().unwrap().len(), 1);
    }
}
