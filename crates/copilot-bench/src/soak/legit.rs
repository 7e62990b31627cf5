//! The legitimate load beside the hostile actors: a few callers, each on its own connection
//! through the generated gRPC client, alternately `Generate` and streaming `Chat`, at a bounded
//! rate, each answer checked against the echo the fake upstream gives for its unique prompt. Every
//! call must succeed; failures are counted by how they failed, latencies per method.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use super::raw::{self, Ended};
use super::tally::{Stop, Tally, TallyReport};
use crate::chat::ChatParams;
use crate::h2_client;
use crate::stats::{Percentiles, Recorder};

/// Output tokens each call allows: more than the echo of its prompt needs (the echo's words).
const MAX_TOKENS: u32 = 64;

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct LegitArgs {
    /// Legitimate callers, each on its own connection: even ones call Generate, odd ones Chat.
    #[arg(long, default_value_t = 4)]
    pub legit_callers: u32,
    /// Legitimate calls per second over all callers (each caller paces itself to its share).
    #[arg(long, default_value_t = 20.0)]
    pub legit_rate: f64,
    /// A legitimate call without its whole answer after this long has failed (TIMEOUT).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub legit_timeout: Duration,
}

/// The legitimate calls' results, shared by the callers.
#[derive(Clone, Default)]
pub struct Legit {
    failures: Tally,
    latencies: Arc<Mutex<Latencies>>,
}

#[derive(Default)]
struct Latencies {
    generate: Recorder,
    chat: Recorder,
}

/// What the legitimate load saw.
#[derive(Clone, Debug, Serialize)]
pub struct LegitReport {
    pub ok: u64,
    pub failed: u64,
    /// Failures by label, with the first message of each.
    pub failures: TallyReport,
    pub generate_ms: Option<Percentiles>,
    pub chat_ms: Option<Percentiles>,
}

impl Legit {
    pub fn report(&self) -> LegitReport {
        let failures = self.failures.report();
        let (generate_ms, chat_ms) = match self.latencies.lock() {
            Ok(latencies) => (latencies.generate.summary(), latencies.chat.summary()),
            Err(_) => (None, None),
        };
        let ok = generate_ms.map_or(0, |p| p.count) + chat_ms.map_or(0, |p| p.count);
        LegitReport { ok, failed: failures.total(), failures, generate_ms, chat_ms }
    }

    /// Runs `args.legit_callers` callers until `stop`.
    pub async fn run(&self, args: &LegitArgs, addr: &str, model: &str, stop: Stop) {
        let mut tasks = JoinSet::new();
        let interval = Duration::from_secs_f64(f64::from(args.legit_callers) / args.legit_rate.max(0.01));
        for caller in 0..args.legit_callers {
            let caller = Caller {
                number: caller,
                chat: caller % 2 == 1,
                addr: addr.to_owned(),
                model: model.to_owned(),
                timeout: args.legit_timeout,
                legit: self.clone(),
            };
            tasks.spawn(caller.run(interval, stop.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One call, outside the load (the check that the server still serves after the soak).
    pub async fn once(&self, addr: &str, model: &str, chat: bool, timeout: Duration) -> Result<(), Ended> {
        let mut client = h2_client::connect(addr).await.map_err(|e| Ended::new("connect failed", e.to_string()))?;
        let caller = Caller {
            number: u32::MAX,
            chat,
            addr: addr.to_owned(),
            model: model.to_owned(),
            timeout,
            legit: self.clone(),
        };
        caller.call(&mut client, 0).await
    }

    fn record(&self, chat: bool, result: &Result<(), Ended>, took: Duration) {
        match result {
            Ok(()) => {
                if let Ok(mut latencies) = self.latencies.lock() {
                    let recorder = if chat { &mut latencies.chat } else { &mut latencies.generate };
                    recorder.record(took);
                }
            }
            Err(ended) => self.failures.add(&ended.label, &ended.detail),
        }
    }
}

struct Caller {
    number: u32,
    chat: bool,
    addr: String,
    model: String,
    timeout: Duration,
    legit: Legit,
}

impl Caller {
    async fn run(self, interval: Duration, mut stop: Stop) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client = None;
        for seq in 0u64.. {
            tokio::select! {
                _ = stop.wait() => return,
                _ = ticks.tick() => {}
            }
            // A real client reconnects when its connection is gone; the failure is counted.
            if client.is_none() {
                match h2_client::connect(&self.addr).await {
                    Ok(connection) => client = Some(connection),
                    Err(error) => {
                        self.legit.failures.add("connect failed", error.to_string());
                        continue;
                    }
                }
            }
            let Some(connection) = client.as_mut() else { continue };
            let result = self.call(connection, seq).await;
            if let Err(ended) = &result
                && ended.lost_connection()
            {
                client = None;
            }
        }
    }

    /// One call with a prompt of its own, its answer checked, its result recorded.
    async fn call(&self, client: &mut crate::GrpcClient, seq: u64) -> Result<(), Ended> {
        let prompt = format!("soak caller {} call {seq}", self.number);
        let params = ChatParams { model: self.model.clone(), prompt, temperature: 0.0, max_tokens: MAX_TOKENS };
        let expected = format!("You said: {}", params.prompt);
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, answer(client, &params, self.chat)).await;
        let result = match answer {
            Err(_) => Err(Ended::new("TIMEOUT", format!("no whole answer within {:?}", self.timeout))),
            Ok(Err(status)) => Err(raw::from_status(&status)),
            Ok(Ok(text)) if text == expected => Ok(()),
            Ok(Ok(text)) => Err(Ended::new("wrong text", format!("expected {expected:?}, got {text:?}"))),
        };
        self.legit.record(self.chat, &result, started.elapsed());
        result
    }
}

/// The answer's text: `Generate`'s, or the `Chat` stream's chunks joined (which must end with
/// the final message, the one with usage).
async fn answer(client: &mut crate::GrpcClient, params: &ChatParams, chat: bool) -> Result<String, tonic::Status> {
    if !chat {
        return Ok(client.generate(params.generate_request()).await?.into_inner().text);
    }
    let mut stream = client.chat(params.request()).await?.into_inner();
    let mut text = String::new();
    while let Some(message) = stream.message().await? {
        text.push_str(&message.content);
        if message.usage.is_some() {
            return Ok(text);
        }
    }
    Err(tonic::Status::unknown("the stream ended without its final message (no usage)"))
}
