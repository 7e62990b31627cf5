//! Micro-benchmarks of the upstream stream decoders: a realistic 1,000-token response body of
//! each wire format, decoded into chat events the way each adapter does, delivered in
//! network-sized reads (4 KiB) and one line or event per read (a server flushing every token).
//! Besides criterion's times, it prints the heap allocations per token chunk, counted by a
//! global allocator. Run: `cargo bench -p copilot-bench --bench parsers`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use copilot_http::ChatStreamDecoder;
use copilot_provider::ChatEvent;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Token chunks per response.
const TOKENS: usize = 1_000;
/// One read of a busy connection.
const NETWORK_READ: usize = 4 * 1024;

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// The text of token `i`: short words with a leading space, now and then an escape or a
/// non-ASCII character, as real model output has.
fn token(i: usize) -> String {
    match i % 10 {
        0 => " the".into(),
        3 => " naïve".into(),
        7 => "\\n".into(),
        _ => format!(" w{i}"),
    }
}

fn ollama_body() -> Vec<u8> {
    let mut body = String::new();
    for i in 0..TOKENS {
        body += &format!(
            "{{\"model\":\"llama3.2:3b\",\"created_at\":\"2026-11-21T21:57:43.957319255Z\",\"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}},\"done\":false}}\n",
            token(i)
        );
    }
    body += "{\"model\":\"llama3.2:3b\",\"created_at\":\"2026-11-21T21:57:44.957319255Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done_reason\":\"stop\",\"done\":true,\"total_duration\":519232,\"load_duration\":62099,\"prompt_eval_count\":9,\"prompt_eval_duration\":225000,\"eval_count\":1000,\"eval_duration\":232133}\n";
    body.into_bytes()
}

fn openai_body() -> Vec<u8> {
    let head = "data: {\"id\":\"chatcmpl-BYr40dVG5XGXA0hm4au3nOZDM3out\",\"object\":\"chat.completion.chunk\",\"created\":1795298263,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_560af6e559\",";
    let mut body = String::new();
    for i in 0..TOKENS {
        body += &format!(
            "{head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null,\"obfuscation\":\"x9Kq\"}}\n\n",
            token(i)
        );
    }
    body += &format!(
        "{head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    );
    body += &format!(
        "{head}\"choices\":[],\"usage\":{{\"completion_tokens\":1000,\"prompt_tokens\":9,\"total_tokens\":1009}}}}\n\ndata: [DONE]\n\n"
    );
    body.into_bytes()
}

fn anthropic_body() -> Vec<u8> {
    let mut body = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_011CFakeAnthropic0000000002\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for i in 0..TOKENS {
        body += &format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
            token(i)
        );
    }
    body += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":1000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    body.into_bytes()
}

fn gemini_body() -> Vec<u8> {
    let mut body = String::new();
    for i in 0..TOKENS {
        let finish = if i + 1 == TOKENS { "\"finishReason\": \"STOP\"," } else { "" };
        body += &format!(
            "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"{}\"}}],\"role\": \"model\"}},{finish}\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 9,\"candidatesTokenCount\": {},\"totalTokenCount\": {}}},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"fake-000000000000\"}}\r\n\r\n",
            token(i),
            i + 1,
            i + 10
        );
    }
    body.into_bytes()
}

/// The body cut into reads: fixed-size ones, or one per line (`\n`) or event (`\n\n`).
fn reads<'a>(body: &'a [u8], per_read: Option<&[u8]>) -> Vec<&'a [u8]> {
    let Some(separator) = per_read else { return body.chunks(NETWORK_READ).collect() };
    let mut reads = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.windows(separator.len()).position(|w| w == separator) {
        let (read, tail) = rest.split_at(at + separator.len());
        reads.push(read);
        rest = tail;
    }
    if !rest.is_empty() {
        reads.push(rest);
    }
    reads
}

/// Feeds every read and takes every event, as the adapter does; returns the deltas seen.
fn decode(mut decoder: impl ChatStreamDecoder, reads: &[&[u8]]) -> usize {
    let mut deltas = 0;
    let mut take = |decoder: &mut dyn ChatStreamDecoder| {
        while let Some(event) = decoder.next_event() {
            match event.expect("the benchmark streams are valid") {
                ChatEvent::Delta(text) => deltas += usize::from(!black_box(text).is_empty()),
                ChatEvent::ToolCall(delta) => deltas += usize::from(!black_box(delta).arguments.is_empty()),
                ChatEvent::Thinking(delta) => {
                    black_box(delta);
                    deltas += 1;
                }
                ChatEvent::Done(completion) => {
                    black_box(completion);
                }
            }
        }
    };
    for read in reads {
        decoder.push(read);
        take(&mut decoder);
    }
    decoder.end();
    take(&mut decoder);
    deltas
}

fn bench_format<D: ChatStreamDecoder>(
    c: &mut Criterion,
    name: &str,
    body: &[u8],
    separator: &[u8],
    new: impl Fn() -> D,
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(TOKENS as u64));
    for (delivery, per_read) in [("4KiB-reads", None), ("read-per-chunk", Some(separator))] {
        let reads = reads(body, per_read);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let deltas = decode(new(), &reads);
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(deltas, TOKENS, "{name}: every token is decoded");
        println!("{name}/{delivery}: {:.2} allocations per chunk", allocations as f64 / TOKENS as f64);
        group.bench_function(BenchmarkId::from_parameter(delivery), |b| b.iter(|| decode(new(), black_box(&reads))));
    }
    group.finish();
}

fn parsers(c: &mut Criterion) {
    let base_url: Arc<str> = "http://upstream:8000".into();
    bench_format(c, "ollama-ndjson", &ollama_body(), b"\n", || copilot_ollama::StreamDecoder::new(base_url.clone()));
    bench_format(c, "openai-sse", &openai_body(), b"\n\n", || {
        copilot_openai::StreamDecoder::new(base_url.clone(), None)
    });
    bench_format(c, "anthropic-sse", &anthropic_body(), b"\n\n", || {
        copilot_anthropic::StreamDecoder::new(base_url.clone(), None)
    });
    bench_format(c, "gemini-sse", &gemini_body(), b"\r\n\r\n", || {
        copilot_gemini::StreamDecoder::new(base_url.clone(), None)
    });
}

criterion_group!(benches, parsers);
criterion_main!(benches);
