//! Hostile actors that make gRPC calls:
//! - 3, big metadata: a call with 20 KiB, 100 KiB or 300 KiB of metadata (in one header, or in
//!   100) on a connection where another call is streaming; how the big call ended, whether the
//!   other call survived, and whether the connection still serves a new call;
//! - 4b, random messages: well-formed HTTP/2 gRPC streams whose message is random bytes;
//! - 5, cancels: `Chat` calls dropped (RST_STREAM CANCEL) a few milliseconds after they start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tonic::metadata::MetadataValue;

use super::raw::{self, Ended, RawBody, RawConnection, Rng};
use super::tally::{Stop, Tally, TallyReport};
use crate::chat::ChatParams;
use crate::{GrpcClient, h2_client};

/// Metadata sizes a big-metadata round cycles through, with one header or 100 of them.
const METADATA_KIB: [usize; 3] = [20, 100, 300];
const MANY_HEADERS: usize = 100;

/// The streaming call beside the big one: tokens of the fake's `endless` model, each after the
/// fake's token delay, so it is still streaming when the big call arrives.
const COMPANION_TOKENS: u32 = 100;

/// How long any one call of these actors may take before it counts as unanswered.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// A cancelled call's stream asks for this many tokens: far more than arrive before the cancel.
const CANCELLED_TOKENS: u32 = 1000;

/// The most cancel calls in flight at once (rate × the longest cancel delay is far below it).
const CANCELS_IN_FLIGHT: usize = 100;

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct CallArgs {
    /// Big metadata: one round (a fresh connection, a streaming call, a big-metadata call, a
    /// follow-up call) every this long; 0s turns the actor off.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub metadata_every: Duration,
    /// Cancels: Chat calls started per second, each dropped after a random 1 ms to
    /// --cancel-max-ms (0 turns the actor off).
    #[arg(long, default_value_t = 10.0)]
    pub cancel_rate: f64,
    /// Cancels: the longest delay before a call is dropped, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub cancel_max_ms: u64,
}

/// What one kind of big-metadata round saw, on its three calls.
#[derive(Clone, Default)]
pub struct MetadataCase {
    /// The call with the big metadata.
    pub big: Tally,
    /// The call streaming beside it on the same connection.
    pub companion: Tally,
    /// A new call on the same connection afterwards.
    pub after: Tally,
}

#[derive(Clone, Debug, Serialize)]
pub struct MetadataCaseReport {
    pub case: String,
    pub big_call: TallyReport,
    pub other_call_on_the_connection: TallyReport,
    pub next_call_on_the_connection: TallyReport,
}

/// Each case's name, `20 KiB in 1 header`, `20 KiB in 100 headers`, … in the order they run.
fn cases() -> Vec<(String, usize, usize)> {
    let mut cases = Vec::new();
    for kib in METADATA_KIB {
        for headers in [1, MANY_HEADERS] {
            let plural = if headers == 1 { "" } else { "s" };
            cases.push((format!("{kib} KiB in {headers} header{plural}"), kib * 1024, headers));
        }
    }
    cases
}

/// The models the actors ask for: the echoing one and the endless one.
#[derive(Clone)]
pub struct Models {
    pub echo: String,
    pub endless: String,
}

/// Runs big-metadata rounds until `stop`; the results go to `cases`, by case name.
pub async fn big_metadata(
    every: Duration,
    addr: String,
    models: Models,
    mut stop: Stop,
    results: Arc<std::sync::Mutex<BTreeMap<String, MetadataCase>>>,
) {
    if every.is_zero() {
        return;
    }
    let cases = cases();
    for round in 0.. {
        if !stop.sleep(every).await {
            return;
        }
        let (name, bytes, headers) = &cases[round % cases.len()];
        let case = match results.lock() {
            Ok(mut results) => results.entry(name.clone()).or_default().clone(),
            Err(_) => return,
        };
        tokio::select! {
            _ = stop.wait() => return,
            _ = metadata_round(&addr, &models, *bytes, *headers, &case) => {}
        }
    }
}

/// The report of every case, in the order they run.
pub fn metadata_report(results: &BTreeMap<String, MetadataCase>) -> Vec<MetadataCaseReport> {
    cases()
        .into_iter()
        .filter_map(|(name, _, _)| {
            let case = results.get(&name)?;
            Some(MetadataCaseReport {
                case: name,
                big_call: case.big.report(),
                other_call_on_the_connection: case.companion.report(),
                next_call_on_the_connection: case.after.report(),
            })
        })
        .collect()
}

async fn metadata_round(addr: &str, models: &Models, bytes: usize, headers: usize, case: &MetadataCase) {
    let client = match h2_client::connect(addr).await {
        Ok(client) => client,
        Err(error) => {
            case.big.add("connect failed", error.to_string());
            return;
        }
    };
    let (started, streaming) = oneshot::channel();
    let mut companion_client = client.clone();
    let endless = models.endless.clone();
    let companion = tokio::spawn(async move { companion(&mut companion_client, &endless, started).await });
    // The big call goes out once the other one is streaming (or has failed to).
    let _ = tokio::time::timeout(CALL_LIMIT, streaming).await;

    let mut request = tonic::Request::new(params(&models.echo, "soak big metadata", 16).generate_request());
    let value = "x".repeat(bytes / headers);
    for header in 0..headers {
        let name: tonic::metadata::MetadataKey<_> =
            format!("x-soak-padding-{header}").parse().expect("a valid metadata name");
        request.metadata_mut().insert(name, MetadataValue::try_from(value.as_str()).expect("ASCII metadata"));
    }
    let mut big_client = client.clone();
    let ended = match tokio::time::timeout(CALL_LIMIT, big_client.generate(request)).await {
        Err(_) => Ended::new("no answer", format!("no answer within {CALL_LIMIT:?}")),
        Ok(Ok(_)) => Ended::new("OK", "accepted and answered"),
        Ok(Err(status)) => raw::from_status(&status),
    };
    case.big.add(ended.label, ended.detail);

    let ended = match companion.await {
        Ok(Ok(())) => Ended::new("survived", "streamed all its tokens"),
        Ok(Err(ended)) => ended,
        Err(error) => Ended::new("client task failed", error.to_string()),
    };
    case.companion.add(ended.label, ended.detail);

    let mut next_client = client.clone();
    let request = params(&models.echo, "soak after big metadata", 16).generate_request();
    let ended = match tokio::time::timeout(CALL_LIMIT, next_client.generate(request)).await {
        Err(_) => Ended::new("no answer", format!("no answer within {CALL_LIMIT:?}")),
        Ok(Ok(_)) => Ended::new("OK", "served"),
        Ok(Err(status)) => raw::from_status(&status),
    };
    case.after.add(ended.label, ended.detail);
}

fn params(model: &str, prompt: &str, max_tokens: u32) -> ChatParams {
    ChatParams { model: model.to_owned(), prompt: prompt.to_owned(), temperature: 0.0, max_tokens }
}

/// A `Chat` of [`COMPANION_TOKENS`] tokens that says when its first message has come and
/// succeeds if all of them and the final message come.
async fn companion(client: &mut GrpcClient, model: &str, started: oneshot::Sender<()>) -> Result<(), Ended> {
    let run = async {
        let mut stream = client.chat(params(model, "companion", COMPANION_TOKENS).request()).await?.into_inner();
        let mut started = Some(started);
        let mut chunks = 0;
        while let Some(message) = stream.message().await? {
            if let Some(started) = started.take() {
                let _ = started.send(());
            }
            chunks += u32::from(!message.content.is_empty());
            if message.usage.is_some() {
                return Ok(chunks);
            }
        }
        Err(tonic::Status::unknown("the stream ended without its final message"))
    };
    match tokio::time::timeout(CALL_LIMIT * 3, run).await {
        Err(_) => Err(Ended::new("no answer", "the stream did not end in time")),
        Ok(Err(status)) => Err(raw::from_status(&status)),
        Ok(Ok(chunks)) if chunks == COMPANION_TOKENS => Ok(()),
        Ok(Ok(chunks)) => Err(Ended::new("cut short", format!("{chunks} of {COMPANION_TOKENS} chunks"))),
    }
}

/// Sends a well-formed stream whose message is random bytes, alternately to `Generate` and `Chat`,
/// at `rate` a second on one connection (a new one when the server closes it), until `stop`.
pub async fn random_messages(rate: f64, addr: String, mut stop: Stop, tally: Tally, seed: u64) {
    if rate <= 0.0 {
        return;
    }
    let mut rng = Rng::new(seed);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<RawConnection> = None;
    for n in 0u64.. {
        tokio::select! {
            _ = stop.wait() => return,
            _ = ticks.tick() => {}
        }
        if connection.as_ref().is_none_or(RawConnection::is_closed) {
            connection = match RawConnection::open(&addr).await {
                Ok(connection) => Some(connection),
                Err(error) => {
                    tally.add("connect failed", error.to_string());
                    continue;
                }
            };
        }
        let Some(open) = connection.as_mut() else { continue };
        let method = if n % 2 == 0 { "Generate" } else { "Chat" };
        let message = rng.bytes_between(1, 2048);
        let body = RawBody::complete(raw::grpc_frame(message.len() as u32, &message));
        let ended = tokio::select! {
            _ = stop.wait() => return,
            ended = raw::call(&mut open.sender, raw::grpc_request(method, body), CALL_LIMIT) => ended,
        };
        tally.add(format!("{method}: {}", ended.label), ended.detail);
    }
}

/// Starts `rate` `Chat` calls a second, each dropped after a random delay of up to `max_ms`
/// milliseconds, on one connection (a new one when it is gone), until `stop`.
pub async fn cancels(args: CallArgs, addr: String, model: String, mut stop: Stop, tally: Tally, seed: u64) {
    if args.cancel_rate <= 0.0 {
        return;
    }
    let mut rng = Rng::new(seed);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.cancel_rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<GrpcClient> = None;
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            _ = ticks.tick() => {}
        }
        while let Some(lost) = tasks.try_join_next() {
            if lost.unwrap_or(false) {
                client = None;
            }
        }
        if tasks.len() >= CANCELS_IN_FLIGHT {
            tally.add("skipped: too many in flight", "");
            continue;
        }
        if client.is_none() {
            match h2_client::connect(&addr).await {
                Ok(connection) => client = Some(connection),
                Err(error) => {
                    tally.add("connect failed", error.to_string());
                    continue;
                }
            }
        }
        let Some(connection) = client.clone() else { continue };
        let after = Duration::from_millis(rng.between(1, args.cancel_max_ms.max(1)));
        tasks.spawn(cancelled_call(connection, model.clone(), after, tally.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// One `Chat` dropped after `after`; `true` if the connection turned out to be gone.
async fn cancelled_call(mut client: GrpcClient, model: String, after: Duration, tally: Tally) -> bool {
    let messages = AtomicU32::new(0);
    let call = async {
        let mut stream = client.chat(params(&model, "cancel me", CANCELLED_TOKENS).request()).await?.into_inner();
        while let Some(message) = stream.message().await? {
            messages.fetch_add(1, Ordering::Relaxed);
            if message.usage.is_some() {
                break;
            }
        }
        Ok::<_, tonic::Status>(())
    };
    // Dropping the call at the timeout resets its stream: the cancel.
    let ended = match tokio::time::timeout(after, call).await {
        Err(_) if messages.load(Ordering::Relaxed) == 0 => Ended::new("cancelled before any message", ""),
        Err(_) => Ended::new("cancelled mid-stream", ""),
        Ok(Ok(())) => Ended::new("finished before the cancel", ""),
        Ok(Err(status)) => raw::from_status(&status),
    };
    let lost = ended.lost_connection();
    let detail =
        if ended.detail.is_empty() { format!("after {after:?}") } else { format!("after {after:?}: {}", ended.detail) };
    tally.add(ended.label, detail);
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_cycle_sizes_and_header_counts() {
        let names: Vec<String> = cases().into_iter().map(|(name, _, _)| name).collect();
        assert_eq!(names[0], "20 KiB in 1 header");
        assert_eq!(names[1], "20 KiB in 100 headers");
        assert_eq!(names[5], "300 KiB in 100 headers");
        let (_, bytes, headers) = cases()[3];
        assert_eq!((bytes, headers), (100 * 1024, 100));
    }
}
