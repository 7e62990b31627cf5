//! The load generator shared by `load`, `overhead` and `http`: the options, the closed-loop and
//! open-loop drivers, per-request timing records, warm-up, memory sampling and the progress bar.
//!
//! A mode supplies a [`Backend`] (how to send one request and read its answer to the end); the
//! driver decides *when* requests are sent and takes the timestamps:
//! - **Closed loop** (`--concurrency N`): N callers each send a request, wait for its end, and send
//!   the next. A request's intended send time is when it is sent.
//! - **Open loop** (`--rate R`): request `i` is due at `start + i/R`, whatever happened to earlier
//!   ones. A pacer thread releases requests at their due times (`std::thread::sleep`, far finer than
//!   the async timer's millisecond ticks); each runs as its own task. Latency is measured from the
//!   *intended* send time, so a server that stalls is charged for every request that should have
//!   been sent meanwhile (no coordinated omission), including requests held back because
//!   `--max-in-flight` were already out or because this client itself was late to send them.

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{ValueEnum, value_parser};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::BoxError;
use crate::memory::{self, Sampler};
use crate::report::{MemoryUse, RunReport};
use crate::stats::RunSummary;

/// Which call a request makes: a unary completion or a streamed chat.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rpc {
    /// Unary: the whole answer in one response (gRPC `Generate`; HTTP `stream: false`).
    Generate,
    /// Streaming: the answer chunk by chunk (gRPC `Chat`; HTTP NDJSON or SSE).
    Chat,
    /// Embeddings: `--embed-batch` copies of the prompt embedded in one call (gRPC `Embed`; Ollama
    /// `/api/embed`). A request's "tokens" are its vectors.
    Embed,
}

impl Rpc {
    pub fn streaming(self) -> bool {
        self == Rpc::Chat
    }
}

/// Prompt sizes, as Ollama benchmarks use them.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// About 10 words.
    Short,
    /// About 150 words.
    Medium,
    /// About 1,000 words.
    Long,
}

impl Scenario {
    pub fn words(self) -> usize {
        match self {
            Scenario::Short => 10,
            Scenario::Medium => 150,
            Scenario::Long => 1000,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Short => "short",
            Scenario::Medium => "medium",
            Scenario::Long => "long",
        }
    }

    /// The prompt every request of the run sends (the same one, as in Ollama's benchmarks).
    pub fn prompt(self) -> String {
        crate::tokens::build_prompt(self.words(), None)
    }
}

/// `CacheControl.mode`, as `--cache-mode` names it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    Use,
    Skip,
    Refresh,
    OnlyIfCached,
}

impl CacheMode {
    pub fn control(self) -> copilot::proto::v1::CacheControl {
        use copilot::proto::v1::CacheMode as Mode;
        let mode = match self {
            CacheMode::Use => Mode::Use,
            CacheMode::Skip => Mode::Skip,
            CacheMode::Refresh => Mode::Refresh,
            CacheMode::OnlyIfCached => Mode::OnlyIfCached,
        };
        copilot::proto::v1::CacheControl { mode: mode as i32, ttl: None }
    }
}

/// How much load, of what shape, for how long: the options `load`, `overhead` and `http` share.
#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct LoadArgs {
    /// The call each request makes.
    #[arg(long, value_enum, default_value_t = Rpc::Chat)]
    pub rpc: Rpc,
    /// Closed loop: this many callers, each sending its next request when the previous one ends
    /// (default 10, unless --rate is given).
    #[arg(long, conflicts_with = "rate", value_parser = value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,
    /// Open loop: requests per second on a fixed schedule, whatever the server's pace; latency
    /// counts from each request's scheduled send time.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Stop sending after this long (e.g. 10s, 1m); requests in flight then are awaited. Default
    /// 10s unless --requests is given.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// Stop after sending this many requests (with --duration too: whichever comes first).
    #[arg(long, value_parser = value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Open loop: the most requests out at once; a due request waits for a free place, and that
    /// wait counts in its latency.
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Prompt size: short (~10 words), medium (~150), long (~1,000).
    #[arg(long, value_enum, default_value_t = Scenario::Short)]
    pub scenario: Scenario,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 128, value_parser = value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy, so runs are comparable.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// The response cache's mode on every gRPC request (`CacheControl.mode`): `use`, `skip`,
    /// `refresh` (a miss every time: the model answers and the answer is stored) or
    /// `only-if-cached`; unset leaves it to the server. With `--temperature 0` (the default) every
    /// request is the same call, so with the server's cache on all but the first are hits.
    #[arg(long, value_enum)]
    pub cache_mode: Option<CacheMode>,
    /// Inputs per call with `--rpc embed`.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u32).range(1..=2048))]
    pub embed_batch: u32,
    /// Ask for reasoning with its thoughts returned (gRPC `reasoning {enabled, include_thoughts}`,
    /// Ollama's `think: true`), to stream thinking: with the fakes' `thinking` model.
    #[arg(long)]
    pub thinking: bool,
    /// Requests sent before measuring, not counted (default: one per caller in a closed loop, 10 in
    /// an open loop; sent up to that many at once, so connection pools are warm).
    #[arg(long)]
    pub warmup: Option<u32>,
    /// A request with no complete answer after this long is abandoned and counted as TIMEOUT.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The server's process id: report its RSS idle (before any request), after the warm-up, at
    /// the peak of the run, and per stream for chat runs (Linux /proc).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Also write the results to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a positive number of requests per second")),
    }
}

/// When requests are sent: by callers back to back, or on a schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Closed { concurrency: u32 },
    Open { rate: f64 },
}

/// A run's shape, resolved from [`LoadArgs`] with the defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub mode: Mode,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub max_in_flight: u32,
    pub timeout: Duration,
}

impl LoadArgs {
    pub fn plan(&self) -> Plan {
        let mode = match (self.rate, self.concurrency) {
            (Some(rate), _) => Mode::Open { rate },
            (None, concurrency) => Mode::Closed { concurrency: concurrency.unwrap_or(10) },
        };
        let duration = match (self.duration, self.requests) {
            (None, None) => Some(Duration::from_secs(10)),
            (duration, _) => duration,
        };
        Plan { mode, duration, requests: self.requests, max_in_flight: self.max_in_flight, timeout: self.timeout }
    }

    /// Warm-up requests, and how many of them go at once.
    fn warmup(&self, plan: &Plan) -> (u64, u32) {
        let (default, parallel) = match plan.mode {
            Mode::Closed { concurrency } => (concurrency, concurrency),
            Mode::Open { .. } => (10, 10),
        };
        let count = self.warmup.unwrap_or(default);
        (u64::from(count), parallel.min(count).max(1))
    }
}

impl Plan {
    /// Requests the run will send at most (`None`: as many as fit in the duration).
    pub fn max_requests(&self) -> Option<u64> {
        match self.mode {
            Mode::Open { rate } => Some(open_loop_count(rate, self.duration, self.requests)),
            Mode::Closed { .. } => self.requests,
        }
    }

    /// One line for people, e.g. `closed loop, 50 callers, 500 requests`.
    pub fn describe(&self) -> String {
        let mut text = match self.mode {
            Mode::Closed { concurrency } => format!("closed loop, {concurrency} callers back to back"),
            Mode::Open { rate } => format!(
                "open loop at {rate} req/s ({} scheduled, at most {} in flight; latency from the scheduled send time)",
                self.max_requests().unwrap_or_default(),
                self.max_in_flight
            ),
        };
        match (self.duration, self.requests) {
            (Some(d), Some(n)) => text.push_str(&format!(", {} or {n} requests", humantime::format_duration(d))),
            (Some(d), None) => text.push_str(&format!(", for {}", humantime::format_duration(d))),
            (None, Some(n)) => text.push_str(&format!(", {n} requests")),
            (None, None) => {}
        }
        text
    }
}

/// When request `i` of an open loop at `rate` per second is due, from the start of the run.
pub fn intended_offset(rate: f64, i: u64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// How many requests an open loop schedules: those due before `duration` ends, at most `requests`.
pub fn open_loop_count(rate: f64, duration: Option<Duration>, requests: Option<u64>) -> u64 {
    // Request i is due at i/rate, so those due before d are i < rate·d. The small tolerance keeps
    // 0.1/s × 30 s at 3 requests although 0.1 × 30 is 3.0000000000000004 in floating point.
    let by_time = duration.map(|d| ((rate * d.as_secs_f64()) - 1e-9).ceil().max(0.0) as u64);
    match (by_time, requests) {
        (Some(t), Some(n)) => t.min(n),
        (Some(t), None) => t,
        (None, Some(n)) => n,
        (None, None) => 0,
    }
}

/// A failed request: a short code to count failures by, and what went wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct CallError {
    /// A gRPC code name (`UNAVAILABLE`), `HTTP 503`, `TIMEOUT`, `TRANSPORT`, `STREAM ERROR`, …
    pub code: String,
    pub message: String,
}

impl CallError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        CallError { code: code.into(), message: message.into() }
    }
}

/// Notes when each non-empty content chunk of a streamed answer arrives.
#[derive(Debug, Default)]
pub struct ChunkClock {
    first: Option<Instant>,
    last: Option<Instant>,
    gaps_us: Vec<u32>,
    chunks: u64,
}

impl ChunkClock {
    /// A content chunk arrived now.
    pub fn chunk(&mut self) {
        let now = Instant::now();
        match self.last {
            Some(last) => self.gaps_us.push(u32::try_from((now - last).as_micros()).unwrap_or(u32::MAX)),
            None => self.first = Some(now),
        }
        self.last = Some(now);
        self.chunks += 1;
    }
}

/// How to send one request and read its answer to the end.
pub trait Backend: Send + Sync + 'static {
    /// Sends request number `seq`, reads the answer to its end and notes each non-empty content
    /// chunk on `clock`. Returns the output tokens the server reported (`None` if it reported
    /// none), or why the request failed. An answer that ends without its final message is a
    /// failure. Cancelled (dropped) when `--timeout` expires.
    fn call(&self, seq: u64, clock: &mut ChunkClock) -> impl Future<Output = Result<Option<u64>, CallError>> + Send;
}

/// One request, as the driver saw it.
#[derive(Debug)]
pub struct Record {
    pub seq: u64,
    /// When it was due: its slot in an open loop's schedule; its send time in a closed loop.
    pub intended: Instant,
    /// When it was sent.
    pub start: Instant,
    /// When its answer ended (or it failed).
    pub end: Instant,
    pub first_chunk: Option<Instant>,
    pub last_chunk: Option<Instant>,
    /// Microseconds between consecutive content chunks.
    pub gaps_us: Vec<u32>,
    pub chunks: u64,
    /// Output tokens the server reported, or the failure.
    pub outcome: Result<Option<u64>, CallError>,
}

/// The durations of one request, from its four instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// From the intended send time to the end: what a user who wanted it then waited.
    pub latency: Duration,
    /// From the actual send to the end: what the server took.
    pub service: Duration,
    /// How late it was sent: actual − intended (waiting for `--max-in-flight`, or a busy client).
    pub send_lag: Duration,
    /// From the intended send time to the first content chunk.
    pub ttft: Option<Duration>,
}

/// The durations of a request intended at `intended`, sent at `start`, whose first chunk came at
/// `first_chunk` and which ended at `end`. Never negative.
pub fn timings(intended: Instant, start: Instant, first_chunk: Option<Instant>, end: Instant) -> Timings {
    Timings {
        latency: end.saturating_duration_since(intended),
        service: end.saturating_duration_since(start),
        send_lag: start.saturating_duration_since(intended),
        ttft: first_chunk.map(|first| first.saturating_duration_since(intended)),
    }
}

/// Live counts, read by the progress bar.
#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

/// A finished run: every request's record, by sequence number.
#[derive(Debug)]
pub struct Run {
    pub records: Vec<Record>,
    /// From the start to the end of the last request.
    pub wall: Duration,
    pub max_in_flight: u64,
}

/// Sends one request at once and records it.
async fn execute<B: Backend>(
    backend: &B,
    seq: u64,
    intended: Instant,
    timeout: Duration,
    counters: &Counters,
) -> Record {
    let in_flight = counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    counters.max_in_flight.fetch_max(in_flight, Ordering::Relaxed);
    let mut clock = ChunkClock::default();
    let start = Instant::now();
    let outcome = match tokio::time::timeout(timeout, backend.call(seq, &mut clock)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            Err(CallError::new("TIMEOUT", format!("no complete answer within {}", humantime::format_duration(timeout))))
        }
    };
    let end = Instant::now();
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    let counter = if outcome.is_ok() { &counters.ok } else { &counters.failed };
    counter.fetch_add(1, Ordering::Relaxed);
    Record {
        seq,
        intended,
        start,
        end,
        first_chunk: clock.first,
        last_chunk: clock.last,
        gaps_us: clock.gaps_us,
        chunks: clock.chunks,
        outcome,
    }
}

/// What releases an open loop's requests at their due times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pacer {
    /// A dedicated thread sleeping until each due time (sub-millisecond precision). Real runs.
    Thread,
    /// A task on the async timer (millisecond ticks); follows tokio's paused clock in tests.
    Task,
}

/// Runs `plan` against `backend`.
pub async fn drive<B: Backend>(backend: Arc<B>, plan: &Plan, counters: Arc<Counters>, pacer: Pacer) -> Run {
    let started = Instant::now();
    let mut records = match plan.mode {
        Mode::Closed { concurrency } => closed_loop(backend, plan, concurrency, started, counters.clone()).await,
        Mode::Open { rate } => open_loop(backend, plan, rate, started, counters.clone(), pacer).await,
    };
    records.sort_by_key(|r| r.seq);
    let wall = records.iter().map(|r| r.end).max().map_or(Duration::ZERO, |end| end - started);
    Run { records, wall, max_in_flight: counters.max_in_flight.load(Ordering::Relaxed) }
}

async fn closed_loop<B: Backend>(
    backend: Arc<B>,
    plan: &Plan,
    concurrency: u32,
    started: Instant,
    counters: Arc<Counters>,
) -> Vec<Record> {
    let deadline = plan.duration.map(|d| started + d);
    let limit = plan.requests.unwrap_or(u64::MAX);
    let next = Arc::new(AtomicU64::new(0));
    let timeout = plan.timeout;
    let mut callers = JoinSet::new();
    for _ in 0..concurrency {
        let (backend, counters, next) = (backend.clone(), counters.clone(), next.clone());
        callers.spawn(async move {
            let mut records = Vec::new();
            while deadline.is_none_or(|deadline| Instant::now() < deadline) {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= limit {
                    break;
                }
                records.push(execute(&*backend, seq, Instant::now(), timeout, &counters).await);
            }
            records
        });
    }
    let mut records = Vec::new();
    while let Some(joined) = callers.join_next().await {
        records.extend(joined.expect("a caller task panicked"));
    }
    records
}

async fn open_loop<B: Backend>(
    backend: Arc<B>,
    plan: &Plan,
    rate: f64,
    started: Instant,
    counters: Arc<Counters>,
    pacer: Pacer,
) -> Vec<Record> {
    let count = open_loop_count(rate, plan.duration, plan.requests);
    let (due, mut released) = mpsc::unbounded_channel::<(u64, Instant)>();
    match pacer {
        Pacer::Thread => {
            let start = started.into_std();
            std::thread::Builder::new()
                .name("copilot-bench-pacer".into())
                .spawn(move || {
                    for i in 0..count {
                        let intended = start + intended_offset(rate, i);
                        let now = std::time::Instant::now();
                        if intended > now {
                            std::thread::sleep(intended - now);
                        }
                        if due.send((i, Instant::from_std(intended))).is_err() {
                            break;
                        }
                    }
                })
                .expect("start the pacer thread");
        }
        Pacer::Task => {
            tokio::spawn(async move {
                for i in 0..count {
                    let intended = started + intended_offset(rate, i);
                    tokio::time::sleep_until(intended).await;
                    if due.send((i, intended)).is_err() {
                        break;
                    }
                }
            });
        }
    }

    let places = Arc::new(Semaphore::new(plan.max_in_flight as usize));
    let mut requests = JoinSet::new();
    let mut records = Vec::with_capacity(usize::try_from(count).unwrap_or_default().min(1 << 20));
    while let Some((seq, intended)) = released.recv().await {
        let place = places.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (backend, counters, timeout) = (backend.clone(), counters.clone(), plan.timeout);
        requests.spawn(async move {
            let record = execute(&*backend, seq, intended, timeout, &counters).await;
            drop(place);
            record
        });
        while let Some(joined) = requests.try_join_next() {
            records.push(joined.expect("a request task panicked"));
        }
    }
    while let Some(joined) = requests.join_next().await {
        records.push(joined.expect("a request task panicked"));
    }
    records
}

/// A progress bar on stderr, redrawn from the live counters ten times a second; hidden with
/// `--quiet` or when stderr is not a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: &str, plan: &Plan, counters: Arc<Counters>, quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress { bar: None, ticker: None };
        }
        // Count requests when that is what ends the run, otherwise show elapsed time.
        let by_count = match (plan.duration, plan.max_requests()) {
            (_, Some(n)) if plan.duration.is_none() || matches!(plan.mode, Mode::Open { .. }) => Some(n),
            _ => None,
        };
        let length = by_count.or(plan.duration.map(|d| d.as_millis() as u64)).unwrap_or(0);
        let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        let started = Instant::now();
        let total = plan.duration;
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut ticks = tokio::time::interval(Duration::from_millis(100));
                loop {
                    ticks.tick().await;
                    let ok = counters.ok.load(Ordering::Relaxed);
                    let failed = counters.failed.load(Ordering::Relaxed);
                    let in_flight = counters.in_flight.load(Ordering::Relaxed);
                    let elapsed = started.elapsed();
                    let position = match by_count {
                        Some(_) => ok + failed,
                        None => elapsed.as_millis() as u64,
                    };
                    bar.set_position(position.min(length));
                    let of = total.map(|t| format!("/{:.0}s", t.as_secs_f64())).unwrap_or_default();
                    bar.set_message(format!(
                        "{:.1}s{of}  {ok} ok  {failed} failed  {in_flight} in flight  {:.0} req/s",
                        elapsed.as_secs_f64(),
                        (ok + failed) as f64 / elapsed.as_secs_f64().max(1e-3)
                    ));
                }
            }
        });
        Progress { bar: Some(bar), ticker: Some(ticker) }
    }

    pub fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Sends `count` requests, `parallel` at a time, and forgets them. Returns how many succeeded and
/// the first failure.
async fn warm_up<B: Backend>(
    backend: &Arc<B>,
    count: u64,
    parallel: u32,
    timeout: Duration,
) -> (u64, Option<CallError>) {
    let plan = Plan {
        mode: Mode::Closed { concurrency: parallel },
        duration: None,
        requests: Some(count),
        max_in_flight: parallel,
        timeout,
    };
    let run = drive(backend.clone(), &plan, Arc::new(Counters::default()), Pacer::Task).await;
    let ok = run.records.iter().filter(|r| r.outcome.is_ok()).count() as u64;
    (ok, run.records.into_iter().find_map(|r| r.outcome.err()))
}

/// What a mode says about the run it measures, for its report.
pub struct RunInfo {
    /// Which run this is, e.g. `(a) direct`.
    pub label: String,
    /// What is measured, e.g. `gRPC Chat at http://127.0.0.1:50051, model ollama/llama3.2:3b`.
    pub target: String,
    /// The server whose memory to sample.
    pub pid: Option<u32>,
}

/// Warms up, then runs the load of `args` against `backend` while sampling the server's memory, and
/// summarizes. Fails when every warm-up request failed (with the first error), or when the
/// server's memory cannot be read.
pub async fn measure<B: Backend>(backend: Arc<B>, args: &LoadArgs, info: RunInfo) -> Result<RunReport, BoxError> {
    let plan = args.plan();
    let (warmup, parallel) = args.warmup(&plan);
    let read_rss =
        |pid: u32| memory::read_rss(pid).map_err(|e| format!("cannot read the memory of process {pid}: {e}"));
    let idle = match info.pid {
        Some(pid) => Some(read_rss(pid)?),
        None => None,
    };
    if warmup > 0 {
        let (ok, error) = warm_up(&backend, warmup, parallel, plan.timeout).await;
        eprintln!("{}: warm-up {ok}/{warmup} ok", info.label);
        if let Some(error) = error {
            if ok == 0 {
                return Err(
                    format!("{}: every warm-up request failed: {}: {}", info.label, error.code, error.message).into()
                );
            }
            eprintln!("{}: warm-up error: {}: {}", info.label, error.code, error.message);
        }
    }

    let warmed = match info.pid {
        Some(pid) => Some(read_rss(pid)?),
        None => None,
    };
    let sampler = info.pid.map(Sampler::start);
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(&info.label, &plan, counters.clone(), args.quiet);
    let run = drive(backend, &plan, counters, Pacer::Thread).await;
    progress.finish();
    let peak = match sampler {
        Some(sampler) => sampler.stop().await.peak,
        None => None,
    };
    let summary = RunSummary::from_run(&run);
    eprintln!(
        "{}: {}/{} ok in {:.2} s, {:.1} req/s",
        info.label, summary.ok, summary.requests, summary.wall_s, summary.throughput_rps
    );
    let memory = info
        .pid
        .zip(idle)
        .map(|(pid, idle_bytes)| MemoryUse::new(pid, idle_bytes, peak, summary.max_in_flight, args.rpc.streaming()))
        .map(|memory| MemoryUse { warmed_bytes: warmed, ..memory });
    Ok(RunReport {
        label: info.label,
        target: info.target,
        rpc: args.rpc,
        plan: plan.describe(),
        scenario: args.scenario,
        prompt_words: args.scenario.words(),
        max_tokens: args.max_tokens,
        summary,
        memory,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn args(argv: &[&str]) -> LoadArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).unwrap().load
    }

    #[test]
    fn cache_modes_become_the_requests_cache_control() {
        assert_eq!(args(&[]).cache_mode, None);
        let mode = args(&["--cache-mode", "only-if-cached"]).cache_mode.unwrap();
        assert_eq!(mode.control().mode, copilot::proto::v1::CacheMode::OnlyIfCached as i32);
        assert_eq!(args(&["--cache-mode", "refresh"]).cache_mode.unwrap().control().mode, 3);
    }

    #[test]
    fn defaults_are_a_ten_second_closed_loop_of_ten_callers() {
        let plan = args(&[]).plan();
        assert_eq!(plan.mode, Mode::Closed { concurrency: 10 });
        assert_eq!((plan.duration, plan.requests), (Some(Duration::from_secs(10)), None));
        assert_eq!(plan.max_requests(), None);
        assert_eq!(plan.describe(), "closed loop, 10 callers back to back, for 10s");
    }

    #[test]
    fn rate_makes_an_open_loop_and_requests_replace_the_default_duration() {
        let plan = args(&["--rate", "200", "--duration", "5s"]).plan();
        assert_eq!(plan.mode, Mode::Open { rate: 200.0 });
        assert_eq!(plan.max_requests(), Some(1000));
        let plan = args(&["--concurrency", "50", "--requests", "500"]).plan();
        assert_eq!((plan.mode, plan.duration, plan.requests), (Mode::Closed { concurrency: 50 }, None, Some(500)));
        assert_eq!(plan.describe(), "closed loop, 50 callers back to back, 500 requests");
    }

    #[test]
    fn rate_and_concurrency_exclude_each_other_and_the_rate_must_be_positive() {
        let parse = |argv: &[&str]| Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()));
        assert!(parse(&["--rate", "10", "--concurrency", "2"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--rate", "-3"]).is_err());
        assert!(parse(&["--rate", "inf"]).is_err());
        assert!(parse(&["--rate", "0.5"]).is_ok());
        assert!(parse(&["--duration", "ten"]).is_err());
    }

    #[test]
    fn warm_up_defaults_to_one_request_per_caller() {
        let a = args(&["--concurrency", "20"]);
        assert_eq!(a.warmup(&a.plan()), (20, 20));
        let a = args(&["--rate", "500"]);
        assert_eq!(a.warmup(&a.plan()), (10, 10));
        let a = args(&["--concurrency", "20", "--warmup", "3"]);
        assert_eq!(a.warmup(&a.plan()), (3, 3));
        let a = args(&["--warmup", "0"]);
        assert_eq!(a.warmup(&a.plan()).0, 0);
    }

    #[test]
    fn scenarios_have_their_word_counts() {
        for (scenario, words) in [(Scenario::Short, 10), (Scenario::Medium, 150), (Scenario::Long, 1000)] {
            assert_eq!(scenario.prompt().split_whitespace().count(), words);
        }
    }

    #[test]
    fn open_loop_schedule_is_evenly_spaced_from_the_start() {
        assert_eq!(intended_offset(200.0, 0), Duration::ZERO);
        assert_eq!(intended_offset(200.0, 1), Duration::from_millis(5));
        assert_eq!(intended_offset(200.0, 999), Duration::from_millis(4995));
        assert_eq!(intended_offset(0.5, 3), Duration::from_secs(6));
        assert_eq!(intended_offset(3.0, 1), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn open_loop_counts_the_requests_due_before_the_end() {
        let secs = |s: f64| Some(Duration::from_secs_f64(s));
        assert_eq!(open_loop_count(200.0, secs(5.0), None), 1000);
        assert_eq!(open_loop_count(0.1, secs(30.0), None), 3, "0.1 × 30 is not quite 3 in floating point");
        assert_eq!(open_loop_count(3.0, secs(1.0), None), 3);
        assert_eq!(open_loop_count(2.0, secs(1.1), None), 3, "due at 0, 0.5 and 1.0 s");
        assert_eq!(open_loop_count(1000.0, secs(0.0005), None), 1);
        assert_eq!(open_loop_count(200.0, secs(5.0), Some(10)), 10);
        assert_eq!(open_loop_count(200.0, None, Some(7)), 7);
        assert_eq!(open_loop_count(200.0, secs(0.0), None), 0);
    }

    #[test]
    fn latency_counts_from_the_intended_send_time() {
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        // Closed loop: sent when intended, so latency is the service time.
        let t = timings(at(0), at(0), Some(at(20)), at(50));
        assert_eq!(
            t,
            Timings {
                latency: at(50) - at(0),
                service: at(50) - at(0),
                send_lag: Duration::ZERO,
                ttft: Some(at(20) - at(0))
            }
        );
        // Open loop, sent 300 ms late (the client waited for a place): the wait is in the latency and
        // the time to first token, not in the service time.
        let t = timings(at(100), at(400), Some(at(410)), at(450));
        assert_eq!(t.latency, Duration::from_millis(350));
        assert_eq!(t.service, Duration::from_millis(50));
        assert_eq!(t.send_lag, Duration::from_millis(300));
        assert_eq!(t.ttft, Some(Duration::from_millis(310)));
        // Never negative, and no first chunk means no time to first token.
        let t = timings(at(10), at(5), None, at(8));
        assert_eq!((t.latency, t.send_lag, t.ttft), (Duration::ZERO, Duration::ZERO, None));
    }

    #[tokio::test(start_paused = true)]
    async fn chunk_clock_notes_first_chunk_and_gaps() {
        let mut clock = ChunkClock::default();
        let start = Instant::now();
        for pause in [7, 3, 12] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            clock.chunk();
        }
        assert_eq!(clock.chunks, 3);
        assert_eq!(clock.first.unwrap() - start, Duration::from_millis(7));
        assert_eq!(clock.last.unwrap() - start, Duration::from_millis(22));
        assert_eq!(clock.gaps_us, vec![3_000, 12_000]);
    }

    /// A server that answers one request at a time (FIFO), each in `service` with two chunks,
    /// except request `stall_seq`, which takes `stall`.
    struct SerialServer {
        lock: tokio::sync::Mutex<()>,
        service: Duration,
        stall_seq: u64,
        stall: Duration,
    }

    impl SerialServer {
        fn new(service_ms: u64, stall_seq: u64, stall_ms: u64) -> Arc<Self> {
            Arc::new(SerialServer {
                lock: tokio::sync::Mutex::new(()),
                service: Duration::from_millis(service_ms),
                stall_seq,
                stall: Duration::from_millis(stall_ms),
            })
        }
    }

    impl Backend for SerialServer {
        async fn call(&self, seq: u64, clock: &mut ChunkClock) -> Result<Option<u64>, CallError> {
            let _turn = self.lock.lock().await;
            let took = if seq == self.stall_seq { self.stall } else { self.service };
            // Whole milliseconds: the async timer rounds sleeps up to the next millisecond.
            tokio::time::sleep(took - Duration::from_millis(1)).await;
            clock.chunk();
            tokio::time::sleep(Duration::from_millis(1)).await;
            clock.chunk();
            Ok(Some(2))
        }
    }

    fn plan(mode: Mode, duration_ms: Option<u64>, requests: Option<u64>, max_in_flight: u32) -> Plan {
        Plan {
            mode,
            duration: duration_ms.map(Duration::from_millis),
            requests,
            max_in_flight,
            timeout: Duration::from_secs(60),
        }
    }

    /// Runs `plan` on the paused clock: the run, its summary, and its start.
    async fn run(backend: Arc<SerialServer>, plan: &Plan) -> (Run, RunSummary, Instant) {
        let started = Instant::now();
        let run = drive(backend, plan, Arc::new(Counters::default()), Pacer::Task).await;
        let summary = RunSummary::from_run(&run);
        (run, summary, started)
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_on_schedule_whatever_the_server_does() {
        // 100 req/s for 500 ms: 50 requests due every 10 ms; the server takes 5 ms, but request 10
        // stalls it for a second.
        let (run, summary, started) =
            run(SerialServer::new(5, 10, 1000), &plan(Mode::Open { rate: 100.0 }, Some(500), None, 1000)).await;
        assert_eq!(run.records.len(), 50);
        for record in &run.records {
            assert_eq!(record.intended - started, Duration::from_millis(10 * record.seq), "request {}", record.seq);
            assert_eq!(record.start, record.intended, "request {} was sent on time", record.seq);
        }
        // Requests 11..49 queue behind the stall at the server: the last, due at 490 ms, ends at 1295.
        let latency = summary.latency.unwrap();
        assert_eq!(latency.max_ms, 1000.0, "request 10 itself, and 11 (due 110, done 1105): 995");
        assert!(latency.p50_ms > 800.0, "most requests waited for the stall: p50 {}", latency.p50_ms);
        assert_eq!(summary.max_in_flight, 40, "requests 10..49 were all out at once");
        assert_eq!(summary.send_lag.unwrap().max_ms, 0.001, "nothing was held back (1 µs is the floor)");
        assert_eq!(summary.wall_s, 1.295);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_time_held_back_by_max_in_flight() {
        // As above, but only one request may be out at a time: the queue forms in the client, and is
        // still charged to the latency (from the schedule), though not to the service time.
        let (run, summary, started) =
            run(SerialServer::new(5, 10, 1000), &plan(Mode::Open { rate: 100.0 }, Some(500), None, 1)).await;
        assert_eq!(run.records.len(), 50);
        assert_eq!(summary.max_in_flight, 1);
        let last = &run.records[49];
        assert_eq!(last.intended - started, Duration::from_millis(490));
        assert_eq!(last.start - started, Duration::from_millis(1290));
        let t = timings(last.intended, last.start, last.first_chunk, last.end);
        assert_eq!(
            (t.latency, t.service, t.send_lag),
            (Duration::from_millis(805), Duration::from_millis(5), Duration::from_millis(800))
        );
        assert!(summary.latency.unwrap().p50_ms > 800.0);
        assert_eq!(summary.service_time.unwrap().p90_ms, 5.0, "the server itself was fast");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_hides_the_stall_that_open_loop_exposes() {
        // One caller, 50 requests: the stall delays the callers' next sends, so only one request
        // sees it. This is the coordinated omission the open loop avoids.
        let (run, summary, _) =
            run(SerialServer::new(5, 10, 1000), &plan(Mode::Closed { concurrency: 1 }, None, Some(50), 1)).await;
        assert_eq!(run.records.len(), 50);
        let latency = summary.latency.unwrap();
        assert_eq!((latency.p50_ms, latency.p99_ms, latency.max_ms), (5.0, 1000.0, 1000.0));
        assert_eq!(latency.p90_ms, 5.0);
        assert!(run.records.iter().all(|r| r.start == r.intended));
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_keeps_its_callers_busy_until_the_count_or_the_deadline() {
        let (_, summary, _) =
            run(SerialServer::new(10, u64::MAX, 0), &plan(Mode::Closed { concurrency: 4 }, None, Some(10), 4)).await;
        assert_eq!((summary.requests, summary.ok, summary.max_in_flight), (10, 10, 4));
        // Two callers on a 10 ms server for 100 ms: they take turns, 5 requests each finish in time.
        let (run, summary, started) =
            run(SerialServer::new(10, u64::MAX, 0), &plan(Mode::Closed { concurrency: 2 }, Some(100), None, 2)).await;
        assert!((10..=11).contains(&summary.requests), "{} requests", summary.requests);
        assert!(run.records.iter().all(|r| r.start - started < Duration::from_millis(100)));
        assert_eq!(summary.output_tokens, 2 * summary.requests);
    }

    struct Hangs;

    impl Backend for Hangs {
        async fn call(&self, _seq: u64, _clock: &mut ChunkClock) -> Result<Option<u64>, CallError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Some(1))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_the_timeout_is_abandoned_and_counted() {
        let mut plan = plan(Mode::Closed { concurrency: 2 }, None, Some(3), 2);
        plan.timeout = Duration::from_secs(2);
        let run = drive(Arc::new(Hangs), &plan, Arc::new(Counters::default()), Pacer::Task).await;
        let summary = RunSummary::from_run(&run);
        assert_eq!((summary.ok, summary.failed), (0, 3));
        assert_eq!(summary.errors.get("TIMEOUT"), Some(&3));
        assert_eq!(summary.error_examples["TIMEOUT"], "no complete answer within 2s");
        assert_eq!(run.wall, Duration::from_secs(4));
    }
}
