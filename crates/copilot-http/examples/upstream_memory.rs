//! What one streamed upstream connection costs in memory, with the client Copilot uses (reqwest, as
//! `copilot_http::client_builder` sets it up) and with hyper's own client, whose HTTP/1.1 read
//! buffer can be given an exact size (reqwest exposes no such setting). Issue 19's memory target
//! hangs on this: each `Chat` stream holds one upstream connection.
//!
//! `cargo run --release -p copilot-http --example upstream_memory -- CLIENT STREAMS URL [WAVES]`
//!
//! CLIENT is `reqwest`, `hyper` (hyper-util's client with its default buffers) or `hyperNk` (an
//! exact read buffer of N KiB); a `-wrapped` suffix reads hyper's answer through a
//! `reqwest::Response` (what the adapters take), as a transport under them would. STREAMS streamed `POST URL` calls (Ollama's `/api/chat` of a
//! `fake-ollama --token-delay-ms 50`) run at once on one current-thread runtime, as on one of
//! Copilot's connection threads, each reading its answer chunk by chunk; WAVES times over, all
//! starting again together (the lockstep case). Prints the process's RSS before and at its peak,
//! and the difference per stream.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

const BODY: &str = r#"{"model":"endless","messages":[{"role":"user","content":"Tell me a story."}],"stream":true,"options":{"num_predict":100}}"#;

type HyperClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// One streamed call, its answer read chunk by chunk and dropped; the bytes it got.
async fn call(client: &str, url: &str, reqwest: &reqwest::Client, hyper: &HyperClient) -> Result<usize, String> {
    let mut got = 0;
    if client == "reqwest" {
        let mut response = reqwest.post(url).body(BODY).send().await.map_err(|e| e.to_string())?;
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            got += chunk.len();
        }
    } else {
        let request = hyper::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .map_err(|e| e.to_string())?;
        let response = hyper.request(request).await.map_err(|e| e.to_string())?;
        if client.ends_with("-wrapped") {
            let mut response = reqwest::Response::from(response.map(reqwest::Body::wrap));
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                got += chunk.len();
            }
            return Ok(got);
        }
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
                got += data.len();
            }
        }
    }
    Ok(got)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: upstream_memory reqwest|hyper|hyperNk STREAMS URL [WAVES]";
    let client = args.get(1).ok_or(usage)?.clone();
    let streams: usize = args.get(2).ok_or(usage)?.parse()?;
    let url = args.get(3).ok_or(usage)?.clone();
    let waves: usize = args.get(4).map(|w| w.parse()).transpose()?.unwrap_or(2);

    let reqwest = copilot_http::client_builder("upstream-memory", Duration::from_secs(5)).build()?;
    let mut builder = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    let size = client.trim_end_matches("-wrapped");
    if let Some(kib) = size.strip_prefix("hyper").and_then(|rest| rest.strip_suffix('k')) {
        builder.http1_read_buf_exact_size(kib.parse::<usize>()? * 1024);
    } else if size != "hyper" && size != "reqwest" {
        return Err(usage.into());
    }
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let hyper: HyperClient = builder.build(connector);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let idle = rss_kib();
    let peak = Rc::new(Cell::new(idle));
    let started = Instant::now();
    local.block_on(&runtime, async {
        let sampler = tokio::task::spawn_local({
            let peak = peak.clone();
            async move {
                loop {
                    peak.set(peak.get().max(rss_kib()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let calls: Vec<_> = (0..streams)
            .map(|_| {
                let (client, url, reqwest, hyper) = (client.clone(), url.clone(), reqwest.clone(), hyper.clone());
                tokio::task::spawn_local(async move {
                    for _ in 0..waves {
                        call(&client, &url, &reqwest, &hyper).await?;
                    }
                    Ok::<_, String>(())
                })
            })
            .collect();
        for call in calls {
            call.await.map_err(|e| e.to_string())??;
        }
        sampler.abort();
        Ok::<_, String>(())
    })?;
    let peak = peak.get().max(rss_kib());
    println!(
        "{client}: {streams} streams × {waves} waves in {:.1} s; RSS idle {idle} KiB, peak {peak} KiB, {:.1} KiB per stream",
        started.elapsed().as_secs_f64(),
        (peak - idle) as f64 / streams as f64
    );
    Ok(())
}
