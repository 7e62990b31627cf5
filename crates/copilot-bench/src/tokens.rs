//! `copilot-bench tokens`: generation and prompt-processing speed through the gRPC API.
//!
//! Phases, in order: warm-up (not counted, so a cold model load is excluded); one closed-loop level
//! per `--concurrency` value, where `c` streams start together and each sends `--requests` requests
//! back to back; then a prompt phase, one stream sending a long prompt with `max_tokens = 1`.
//! With `--pid`, the server's RSS is read before the run and sampled during every level.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::value_parser;
use futures::future::join_all;
use serde::Serialize;

use crate::chat::{ChatParams, Sample, chat_once, code_name};
use crate::memory::{self, Sampler};
use crate::report::{self, Table, mib, num};
use crate::stats::{Percentiles, mean, min};
use crate::{BoxError, GrpcClient, Target};

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct TokensArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub target: Target,
    /// Concurrency levels to run, in order: the number of streams sending at once.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8", value_parser = value_parser!(u32).range(1..))]
    pub concurrency: Vec<u32>,
    /// Requests each stream sends, back to back, per level (and requests of the prompt phase).
    #[arg(long, default_value_t = 3, value_parser = value_parser!(u32).range(1..))]
    pub requests: u32,
    /// `max_tokens` of each generation request.
    #[arg(long, default_value_t = 128, value_parser = value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Words in the prompt of the generation requests.
    #[arg(long, default_value_t = 16, value_parser = value_parser!(u32).range(1..))]
    pub prompt_words: u32,
    /// Sampling temperature; 0 is greedy, so runs are comparable.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// The server's process id: report its idle RSS and the peak RSS of each level (Linux /proc).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Words in the long prompt of the prompt phase (sent with max_tokens=1); 0 skips the phase.
    #[arg(long, default_value_t = 400)]
    pub prompt_test_words: u32,
    /// Also write every result, with per-request samples, to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Requests sent (on one stream) before measuring, not counted.
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
}

/// Everything `tokens` measured: printed as tables, written with `--json`.
#[derive(Debug, Serialize)]
pub struct TokensReport {
    pub mode: &'static str,
    pub started_unix_s: u64,
    pub config: TokensArgs,
    /// The model that answered, as the server named it (from the first successful response).
    pub server_model: Option<String>,
    pub memory: Option<MemoryReport>,
    pub levels: Vec<LevelReport>,
    pub prompt: Option<PromptReport>,
    /// Measured requests (warm-up excluded), and how many failed, by gRPC code.
    pub requests: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct MemoryReport {
    pub pid: u32,
    /// RSS before anything was sent.
    pub idle_bytes: u64,
    /// RSS after the warm-up (the model loaded), before the first level.
    pub after_warmup_bytes: Option<u64>,
}

/// One request's outcome, with the stream that sent it.
#[derive(Debug, Serialize)]
pub struct Record {
    pub stream: u32,
    #[serde(flatten)]
    pub sample: Sample,
}

#[derive(Debug, Serialize)]
pub struct LevelReport {
    pub concurrency: u32,
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// From the start of the level to the end of its last request.
    pub wall_s: f64,
    pub output_tokens: u64,
    /// Output tokens of all streams over the wall time.
    pub aggregate_output_tps: f64,
    /// Per-request generation speed seen by the client: (output_tokens - 1) / (total - TTFT).
    pub stream_tps_mean: Option<f64>,
    pub stream_tps_min: Option<f64>,
    /// Mean of the server's `timing.output_tokens_per_second`.
    pub server_tps_mean: Option<f64>,
    pub ttft: Option<Percentiles>,
    pub peak_rss_bytes: Option<u64>,
    pub samples: Vec<Record>,
}

#[derive(Debug, Serialize)]
pub struct PromptReport {
    pub words: u32,
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub input_tokens_mean: Option<f64>,
    pub ttft_s_mean: Option<f64>,
    /// input_tokens / server `timing.prompt_duration`, mean over requests.
    pub server_prompt_tps_mean: Option<f64>,
    /// input_tokens / client TTFT, mean over requests.
    pub client_prompt_tps_mean: Option<f64>,
    pub samples: Vec<Sample>,
}

const INSTRUCTION: &str = "Write a long, detailed story about the scene described here.";
const SCENE: &str = "A lighthouse keeper walks along the shore at dawn, counting the fishing boats that \
    return to the small harbour while gulls circle slowly above the calm grey water.";

/// A neutral prompt of exactly `words` words (at least one): an instruction to write a story, then a
/// scene description repeated as needed. With a `tag`, the first word is `#tag`, so prompts differ
/// from their first token and no prefix cache can skip their processing.
pub fn build_prompt(words: usize, tag: Option<u32>) -> String {
    let tag = tag.map(|t| format!("#{t}"));
    let text = tag.as_deref().into_iter().chain(INSTRUCTION.split_whitespace()).chain(SCENE.split_whitespace().cycle());
    text.take(words.max(1)).collect::<Vec<_>>().join(" ")
}

pub async fn run(args: TokensArgs) -> Result<ExitCode, BoxError> {
    let started_unix_s = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let client = args.target.connect().await?;
    let idle_bytes = match args.pid {
        Some(pid) => Some(memory::read_rss(pid).map_err(|e| format!("cannot read the memory of process {pid}: {e}"))?),
        None => None,
    };
    let params = ChatParams {
        model: args.target.model.clone(),
        prompt: build_prompt(args.prompt_words as usize, None),
        temperature: args.temperature,
        max_tokens: args.max_tokens,
    };

    let mut server_model = None;
    for i in 1..=args.warmup {
        match chat_once(&mut client.clone(), &params).await {
            Ok(sample) => {
                eprintln!(
                    "warm-up {i}/{}: {} output tokens in {:.2} s ({})",
                    args.warmup, sample.output_tokens, sample.total_s, sample.model
                );
                server_model.get_or_insert(sample.model);
            }
            Err(status) => eprintln!("warm-up {i}/{}: failed: {}", args.warmup, describe(&status)),
        }
    }
    let memory = args.pid.zip(idle_bytes).map(|(pid, idle_bytes)| MemoryReport {
        pid,
        idle_bytes,
        after_warmup_bytes: memory::read_rss(pid).ok(),
    });

    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        let level = run_level(&client, &params, concurrency, args.requests, args.pid).await;
        eprintln!(
            "level {concurrency}: {}/{} ok, {} output tokens in {:.2} s, {:.1} tok/s aggregate",
            level.ok, level.requests, level.output_tokens, level.wall_s, level.aggregate_output_tps
        );
        if server_model.is_none() {
            server_model = level.samples.first().map(|r| r.sample.model.clone());
        }
        levels.push(level);
    }

    let prompt = if args.prompt_test_words > 0 {
        let phase = run_prompt_phase(&client, &args).await;
        eprintln!(
            "prompt phase: {}/{} ok, {} words, {} input tokens, TTFT {} ms",
            phase.ok,
            phase.requests,
            phase.words,
            num(phase.input_tokens_mean, 0),
            num(phase.ttft_s_mean.map(|s| s * 1e3), 1)
        );
        Some(phase)
    } else {
        None
    };

    let mut errors = BTreeMap::new();
    let (mut requests, mut ok) = (0, 0);
    for (level_requests, level_ok, level_errors) in
        levels.iter().map(|l| (l.requests, l.ok, &l.errors)).chain(prompt.iter().map(|p| (p.requests, p.ok, &p.errors)))
    {
        requests += level_requests;
        ok += level_ok;
        report::merge_counts(&mut errors, level_errors);
    }
    let report = TokensReport {
        mode: "tokens",
        started_unix_s,
        config: args,
        server_model,
        memory,
        levels,
        prompt,
        requests,
        failed: requests - ok,
        errors,
    };

    print!("{}", render(&report));
    if let Some(path) = &report.config.json {
        report::write_json(path, &report).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if ok == 0 {
        eprintln!("copilot-bench: every request failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// One closed-loop level: `concurrency` streams start together, each sends `requests` requests back
/// to back.
async fn run_level(
    client: &GrpcClient,
    params: &ChatParams,
    concurrency: u32,
    requests: u32,
    pid: Option<u32>,
) -> LevelReport {
    let sampler = pid.map(Sampler::start);
    let start = Instant::now();
    let streams = (0..concurrency).map(|stream| {
        let mut client = client.clone();
        let params = params.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(requests as usize);
            for _ in 0..requests {
                let outcome = chat_once(&mut client, &params).await;
                if let Err(status) = &outcome {
                    eprintln!("level {concurrency}, stream {stream}: request failed: {}", describe(status));
                }
                outcomes.push((stream, outcome));
            }
            outcomes
        })
    });
    let outcomes: Vec<_> =
        join_all(streams).await.into_iter().flat_map(|joined| joined.expect("stream task")).collect();
    let wall_s = start.elapsed().as_secs_f64();
    let peak_rss_bytes = match sampler {
        Some(sampler) => sampler.stop().await.peak,
        None => None,
    };

    let requests = outcomes.len() as u64;
    let (samples, errors) = split(outcomes);
    let output_tokens = samples.iter().map(|r| u64::from(r.sample.output_tokens)).sum();
    let stream_tps = || samples.iter().filter_map(|r| r.sample.client_generation_tps());
    LevelReport {
        concurrency,
        requests,
        ok: samples.len() as u64,
        errors,
        wall_s,
        output_tokens,
        aggregate_output_tps: if wall_s > 0.0 { output_tokens as f64 / wall_s } else { 0.0 },
        stream_tps_mean: mean(stream_tps()),
        stream_tps_min: min(stream_tps()),
        server_tps_mean: mean(samples.iter().map(|r| r.sample.server_output_tps).filter(|tps| *tps > 0.0)),
        ttft: Percentiles::from_seconds(samples.iter().filter_map(|r| r.sample.ttft_s)),
        peak_rss_bytes,
        samples,
    }
}

/// Single stream, long prompts, one output token: the time to first token is mostly prompt
/// processing. Each prompt starts with its own tag, so a prefix cache cannot help.
async fn run_prompt_phase(client: &GrpcClient, args: &TokensArgs) -> PromptReport {
    let mut client = client.clone();
    let mut outcomes = Vec::new();
    for i in 1..=args.requests {
        let params = ChatParams {
            model: args.target.model.clone(),
            prompt: build_prompt(args.prompt_test_words as usize, Some(i)),
            temperature: args.temperature,
            max_tokens: 1,
        };
        let outcome = chat_once(&mut client, &params).await;
        if let Err(status) = &outcome {
            eprintln!("prompt phase: request failed: {}", describe(status));
        }
        outcomes.push((0, outcome));
    }
    let requests = outcomes.len() as u64;
    let (records, errors) = split(outcomes);
    let samples: Vec<Sample> = records.into_iter().map(|r| r.sample).collect();
    PromptReport {
        words: args.prompt_test_words,
        requests,
        ok: samples.len() as u64,
        errors,
        input_tokens_mean: mean(samples.iter().map(|s| f64::from(s.input_tokens))),
        ttft_s_mean: mean(samples.iter().filter_map(|s| s.ttft_s)),
        server_prompt_tps_mean: mean(samples.iter().filter_map(Sample::server_prompt_tps)),
        client_prompt_tps_mean: mean(samples.iter().filter_map(Sample::client_prompt_tps)),
        samples,
    }
}

type Outcome = (u32, Result<Sample, tonic::Status>);

/// Successful requests as records, failed ones counted by gRPC code.
fn split(outcomes: Vec<Outcome>) -> (Vec<Record>, BTreeMap<String, u64>) {
    let mut records = Vec::new();
    let mut errors = BTreeMap::new();
    for (stream, outcome) in outcomes {
        match outcome {
            Ok(sample) => records.push(Record { stream, sample }),
            Err(status) => *errors.entry(code_name(status.code()).to_owned()).or_default() += 1,
        }
    }
    (records, errors)
}

fn describe(status: &tonic::Status) -> String {
    format!("{}: {}", code_name(status.code()), status.message())
}

/// The report as plain-text tables.
pub fn render(report: &TokensReport) -> String {
    let config = &report.config;
    let model = report.server_model.as_deref().unwrap_or(if config.target.model.is_empty() {
        "(server default)"
    } else {
        &config.target.model
    });
    let mut out = format!(
        "copilot-bench tokens: {} model {model}\n\
         prompt {} words, max_tokens {}, temperature {}, {} request(s) per stream per level, {} warm-up\n",
        config.target.addr, config.prompt_words, config.max_tokens, config.temperature, config.requests, config.warmup
    );
    if let Some(memory) = &report.memory {
        out.push_str(&format!(
            "server RSS (pid {}): idle {} MiB, after warm-up {} MiB\n",
            memory.pid,
            mib(Some(memory.idle_bytes)),
            mib(memory.after_warmup_bytes)
        ));
    }

    out.push_str("\nGeneration (closed loop; tok/s per stream = (output_tokens - 1) / (total - TTFT), client-side)\n");
    let mut table = Table::new(&[
        "streams",
        "ok/req",
        "wall s",
        "out tok",
        "agg tok/s",
        "stream tok/s",
        "min",
        "server tok/s",
        "TTFT p50 ms",
        "p90 ms",
        "max ms",
        "peak RSS MiB",
    ]);
    for level in &report.levels {
        table.row(vec![
            level.concurrency.to_string(),
            format!("{}/{}", level.ok, level.requests),
            format!("{:.2}", level.wall_s),
            level.output_tokens.to_string(),
            format!("{:.1}", level.aggregate_output_tps),
            num(level.stream_tps_mean, 1),
            num(level.stream_tps_min, 1),
            num(level.server_tps_mean, 1),
            num(level.ttft.map(|t| t.p50_ms), 1),
            num(level.ttft.map(|t| t.p90_ms), 1),
            num(level.ttft.map(|t| t.max_ms), 1),
            mib(level.peak_rss_bytes),
        ]);
    }
    out.push_str(&table.render());

    if let Some(prompt) = &report.prompt {
        out.push_str(&format!(
            "\nPrompt processing ({} words, max_tokens 1, single stream; prompt tok/s = input tokens / time)\n",
            prompt.words
        ));
        let mut table =
            Table::new(&["request", "input tok", "TTFT ms", "server prompt ms", "tok/s (server)", "tok/s (TTFT)"]);
        for (i, sample) in prompt.samples.iter().enumerate() {
            table.row(vec![
                (i + 1).to_string(),
                sample.input_tokens.to_string(),
                num(sample.ttft_s.map(|s| s * 1e3), 1),
                num(sample.server_prompt_s.map(|s| s * 1e3), 1),
                num(sample.server_prompt_tps(), 1),
                num(sample.client_prompt_tps(), 1),
            ]);
        }
        table.row(vec![
            "mean".to_owned(),
            num(prompt.input_tokens_mean, 1),
            num(prompt.ttft_s_mean.map(|s| s * 1e3), 1),
            num(mean(prompt.samples.iter().filter_map(|s| s.server_prompt_s)).map(|s| s * 1e3), 1),
            num(prompt.server_prompt_tps_mean, 1),
            num(prompt.client_prompt_tps_mean, 1),
        ]);
        out.push_str(&table.render());
    }

    out.push_str(&format!(
        "\nrequests: {} measured, {} failed; errors: {}\n",
        report.requests,
        report.failed,
        report::format_counts(&report.errors)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_has_the_requested_word_count() {
        for words in [1, 5, 16, 400] {
            assert_eq!(build_prompt(words, None).split_whitespace().count(), words);
            assert_eq!(build_prompt(words, Some(3)).split_whitespace().count(), words);
        }
        assert_eq!(build_prompt(0, None).split_whitespace().count(), 1, "never empty");
    }

    #[test]
    fn prompt_reads_as_an_instruction_then_a_scene() {
        assert_eq!(
            build_prompt(16, None),
            "Write a long, detailed story about the scene described here. A lighthouse keeper walks along the"
        );
        let long = build_prompt(400, None);
        assert!(long.starts_with(INSTRUCTION));
        assert!(long.contains("grey water. A lighthouse keeper"), "the scene repeats");
    }

    #[test]
    fn tagged_prompts_differ_from_the_first_word() {
        let (a, b) = (build_prompt(10, Some(1)), build_prompt(10, Some(2)));
        assert!(a.starts_with("#1 Write a long,"));
        assert!(b.starts_with("#2 Write"));
    }

    #[test]
    fn split_counts_errors_by_code() {
        let outcomes = vec![
            (0, Ok(Sample { output_tokens: 5, ..Sample::default() })),
            (1, Err(tonic::Status::unavailable("down"))),
            (1, Err(tonic::Status::unavailable("down"))),
            (2, Err(tonic::Status::resource_exhausted("full"))),
        ];
        let (records, errors) = split(outcomes);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].stream, 0);
        assert_eq!(errors, BTreeMap::from([("RESOURCE_EXHAUSTED".to_owned(), 1), ("UNAVAILABLE".to_owned(), 2)]));
    }
}
