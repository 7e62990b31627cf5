//! Deadlines, cancellation, concurrency and graceful shutdown: what a mesh and its clients rely on.

use std::sync::Arc;
use std::time::Duration;

use copilot::proto::v1::GenerateRequest;
use copilot::proto::v1::copilot_client::CopilotClient;
use copilot_fakes::{FakeModel, FakeOllama, Reply};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::harness::{Copilot, RawBody, raw_connection, within};
use crate::requests::{chat, prompt};

const LIMIT: Duration = Duration::from_secs(20);

fn endless(delay_ms: u64) -> FakeModel {
    FakeModel::new("endless").with_reply(Reply::Endless).with_token_delay(Duration::from_millis(delay_ms))
}

#[tokio::test]
async fn an_expired_deadline_is_deadline_exceeded_and_reaches_the_upstream() {
    let fake = FakeOllama::start().await;
    fake.add_model(endless(20));
    fake.add_model(FakeModel::new("slow-start").with_header_delay(Duration::from_secs(30)));
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client_without_local_deadline();

    // Unary: tonic's own server timeout would answer CANCELLED; Copilot must say DEADLINE_EXCEEDED.
    let mut request = tonic::Request::new(GenerateRequest {
        model: "ollama/endless".into(),
        prompt: "never stop".into(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(300));
    let status = within(LIMIT, client.generate(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline"), "{}", status.message());
    assert!(within(LIMIT, fake.wait_for_disconnects(1, LIMIT)).await, "the upstream request was not dropped");

    // Streaming: the stream ends with DEADLINE_EXCEEDED after some chunks.
    let mut request = tonic::Request::new(chat("ollama/endless", "talk to me"));
    request.set_timeout(Duration::from_millis(300));
    let mut stream = within(LIMIT, client.chat(request)).await.unwrap().into_inner();
    let mut chunks = 0;
    let status = loop {
        match within(LIMIT, stream.next()).await {
            Some(Ok(_)) => chunks += 1,
            Some(Err(status)) => break status,
            None => panic!("an endless stream cannot end OK"),
        }
    };
    assert!(chunks > 0);
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(fake.wait_for_disconnects(2, LIMIT).await);

    // A slow upstream that has not even answered yet.
    let mut request = tonic::Request::new(chat("ollama/slow-start", "talk to me"));
    request.set_timeout(Duration::from_millis(200));
    let status = within(LIMIT, client.chat(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn a_silent_upstream_times_out_after_ollama_timeout() {
    let fake = FakeOllama::start().await;
    fake.add_model(endless(5_000).with_reply(Reply::Tokens(vec!["slow".into()])));
    let copilot = Copilot::start(&fake, &[("OLLAMA_TIMEOUT", "0.3")]).await;
    let mut client = copilot.client().await;

    let status = within(LIMIT, client.generate(prompt("ollama/endless", "hi"))).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(status.get_details_error_info().unwrap().reason, "UPSTREAM_TIMEOUT");
    assert!(status.message().contains("timeout"), "{}", status.message());
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_request() {
    let fake = FakeOllama::start().await;
    fake.add_model(endless(10));
    let copilot = Copilot::start(&fake, &[]).await;
    let mut client = copilot.client().await;

    // Streaming: read a few chunks, then drop the stream.
    let mut stream = client.chat(chat("ollama/endless", "talk to me")).await.unwrap().into_inner();
    for _ in 0..3 {
        within(LIMIT, stream.next()).await.unwrap().unwrap();
    }
    drop(stream);
    assert!(fake.wait_for_disconnects(1, LIMIT).await, "Ollama was not told to stop generating");
    assert_eq!(fake.active_streams(), 0);

    // Unary: the client gives up on a Generate that is still running.
    let generate = client.generate(prompt("ollama/endless", "go"));
    assert!(tokio::time::timeout(Duration::from_millis(300), generate).await.is_err());
    assert!(fake.wait_for_disconnects(2, LIMIT).await, "Ollama was not told to stop generating");
}

#[tokio::test]
async fn hundreds_of_streams_run_at_once_without_blocking_each_other() {
    const STREAMS: usize = 150;
    let fake = FakeOllama::start().await;
    fake.add_model(
        FakeModel::new("m")
            .with_reply(Reply::Tokens(vec!["first".into(), " second".into(), " third".into()]))
            .with_token_delay(Duration::from_millis(5)),
    );
    let copilot = Copilot::start(&fake, &[]).await;
    let client = copilot.client().await;

    // Every stream must get its first chunk while all the others are still open: if streams
    // blocked one another the barrier would never open.
    let barrier = Arc::new(tokio::sync::Barrier::new(STREAMS));
    let tasks: Vec<_> = (0..STREAMS)
        .map(|_| {
            let mut client = client.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut stream = client.chat(chat("ollama/m", "talk to me")).await.unwrap().into_inner();
                let mut text = stream.next().await.unwrap().unwrap().content;
                barrier.wait().await;
                while let Some(chunk) = stream.next().await {
                    text.push_str(&chunk.unwrap().content);
                }
                text
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(within(Duration::from_secs(60), task).await.unwrap(), "first second third");
    }
    assert_eq!(fake.completed_streams(), STREAMS);
}

async fn health_of(channel: tonic::transport::Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let fake = FakeOllama::start().await;
    let words: Vec<String> = (0..15).map(|i| format!(" w{i}")).collect();
    fake.add_model(
        FakeModel::new("m").with_reply(Reply::Tokens(words.clone())).with_token_delay(Duration::from_millis(100)),
    );
    let mut copilot = Copilot::start(&fake, &[("COPILOT_SERVER__DRAIN_DELAY", "700ms")]).await;
    let channel = copilot.channel().await;
    let mut client = copilot::proto::v1::copilot_client::CopilotClient::new(channel.clone());

    let mut stream = client.chat(chat("ollama/m", "talk to me")).await.unwrap().into_inner();
    let mut text = within(LIMIT, stream.next()).await.unwrap().unwrap().content;
    copilot.signal("TERM");

    // While draining, health says NOT_SERVING so balancers move traffic away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(health_of(channel.clone(), "").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(health_of(channel.clone(), "copilot.v1.Copilot").await.unwrap(), ServingStatus::NotServing);

    // The call that was in flight finishes completely.
    let mut last = None;
    while let Some(chunk) = within(LIMIT, stream.next()).await {
        let chunk = chunk.expect("an in-flight stream must finish cleanly during the drain");
        text.push_str(&chunk.content);
        last = Some(chunk);
    }
    assert_eq!(text, words.concat());
    assert!(last.unwrap().usage.is_some());

    let status = copilot.wait_for_exit(LIMIT).await;
    assert!(status.success(), "exit status {status:?}; log:\n{}", copilot.logs());

    // And then nobody is listening.
    let refused = tonic::transport::Channel::from_shared(copilot.url()).unwrap().connect().await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn calls_outliving_the_grace_period_end_with_unavailable() {
    let fake = FakeOllama::start().await;
    fake.add_model(endless(20));
    let mut copilot = Copilot::start(&fake, &[("COPILOT_SERVER__SHUTDOWN_GRACE", "300ms")]).await;
    let mut client = copilot.client().await;

    let mut stream = client.chat(chat("ollama/endless", "talk to me")).await.unwrap().into_inner();
    within(LIMIT, stream.next()).await.unwrap().unwrap();
    copilot.signal("INT");
    let status = loop {
        match within(LIMIT, stream.next()).await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("an endless stream cannot end OK"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.get_details_error_info().unwrap().reason, "SHUTTING_DOWN");
    assert!(copilot.wait_for_exit(LIMIT).await.success());
    assert!(fake.wait_for_disconnects(1, LIMIT).await);
}

/// Threads of `pid` whose name starts with `prefix` (Linux `/proc`).
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn worker_threads_sizes_the_connection_threads_or_the_runtime() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    for threads in [1, 4] {
        let copilot = Copilot::start(&fake, &[("COPILOT_SERVER__WORKER_THREADS", &threads.to_string())]).await;
        assert_eq!(threads_named(copilot.pid(), "copilot-conn-"), threads, "connection threads");
    }
    let mut counts = Vec::new();
    for threads in ["1", "4"] {
        let env = [("COPILOT_SERVER__WORKER_THREADS", threads), ("COPILOT_SERVER__THREADING", "work-stealing")];
        let copilot = Copilot::start(&fake, &env).await;
        assert_eq!(threads_named(copilot.pid(), "copilot-conn-"), 0, "work stealing has no connection threads");
        calls(&mut copilot.client().await, 3).await;
        // tokio names its workers and its blocking threads alike; the start-up work is the same in
        // both runs, so the difference is the workers'.
        counts.push(threads_named(copilot.pid(), "tokio-"));
    }
    assert_eq!(counts[1] - counts[0], 3, "tokio threads with 1 and 4 workers: {counts:?}");
}

/// What `file` of each connection thread of `pid` (`/proc/<pid>/task/<tid>/<file>`) says, read by
/// `read`, by thread name.
fn per_connection_thread<T>(pid: u32, file: &str, read: impl Fn(&str) -> T) -> Vec<(String, T)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_owned();
        if name.starts_with("copilot-conn-") {
            found.push((name, read(&std::fs::read_to_string(path.join(file)).unwrap())));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The CPUs each connection thread of `pid` may run on, as Linux lists them (`0-1`, `3`, …).
fn connection_thread_cpus(pid: u32) -> Vec<(String, String)> {
    per_connection_thread(pid, "status", allowed_cpu_list)
}

fn allowed_cpu_list(status: &str) -> String {
    status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_owned()
}

#[tokio::test]
async fn pinned_connection_threads_each_get_a_cpu_of_their_own() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    // Copilot inherits this process's CPUs.
    let ours = allowed_cpu_list(&std::fs::read_to_string("/proc/self/status").unwrap());
    let env = [("COPILOT_SERVER__WORKER_THREADS", "2"), ("COPILOT_SERVER__PIN_THREADS", "always")];
    let copilot = Copilot::start(&fake, &env).await;
    let pinned = connection_thread_cpus(copilot.pid());
    assert_eq!(pinned.len(), 2, "{pinned:?}");
    for (name, cpus) in &pinned {
        assert!(cpus.parse::<usize>().is_ok(), "{name} may run on {cpus}, not on one CPU");
    }
    if ours.contains(['-', ',']) {
        assert_ne!(pinned[0].1, pinned[1].1, "with two CPUs or more, two threads get two: {pinned:?}");
    }
    calls(&mut copilot.client().await, 2).await;

    let env = [("COPILOT_SERVER__WORKER_THREADS", "2"), ("COPILOT_SERVER__PIN_THREADS", "never")];
    let copilot = Copilot::start(&fake, &env).await;
    for (name, cpus) in connection_thread_cpus(copilot.pid()) {
        assert_eq!(cpus, ours, "{name} is left to the kernel");
    }
}

/// CPU time, in nanoseconds, of each connection thread of `pid`, by thread name (Linux
/// `/proc/<pid>/task/<tid>/schedstat`): a thread that serves calls accumulates it, an idle one
/// stays where it was, however busy the machine.
fn connection_thread_cpu(pid: u32) -> Vec<(String, u64)> {
    per_connection_thread(pid, "schedstat", |schedstat| schedstat.split_whitespace().next().unwrap().parse().unwrap())
}

/// Which of the connection threads served calls between `before` and `after`: those that used at
/// least a millisecond of CPU and twenty times what the least busy one used.
fn busy_threads(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<String> {
    let grew: Vec<(String, u64)> = after.iter().zip(before).map(|((name, a), (_, b))| (name.clone(), a - b)).collect();
    let least = grew.iter().map(|(_, ns)| *ns).min().unwrap_or(0);
    grew.into_iter().filter(|(_, ns)| *ns >= 1_000_000 && *ns >= 20 * least).map(|(name, _)| name).collect()
}

async fn calls(client: &mut CopilotClient<Channel>, count: usize) {
    for _ in 0..count {
        let request = prompt("ollama/m", "hi");
        within(LIMIT, client.generate(request)).await.unwrap();
    }
}

#[tokio::test]
async fn a_connection_stays_on_one_thread_and_connections_spread_over_them() {
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let copilot = Copilot::start(&fake, &[("COPILOT_SERVER__WORKER_THREADS", "2")]).await;
    let before = connection_thread_cpu(copilot.pid());
    assert_eq!(before.len(), 2, "{before:?}");

    let mut first = copilot.client().await;
    calls(&mut first, 200).await;
    let after_one = connection_thread_cpu(copilot.pid());
    let first_thread = busy_threads(&before, &after_one);
    assert_eq!(first_thread.len(), 1, "one thread serves the connection, the other idles: {before:?} → {after_one:?}");

    // A second connection, while the first is open, goes to the other, idle thread.
    let mut second = copilot.client().await;
    calls(&mut second, 200).await;
    let after_two = connection_thread_cpu(copilot.pid());
    let second_thread = busy_threads(&after_one, &after_two);
    assert_eq!(second_thread.len(), 1, "{after_one:?} → {after_two:?}");
    assert_ne!(first_thread, second_thread, "both connections on one thread: {before:?} → {after_two:?}");
    drop(first);
}

#[tokio::test]
async fn a_call_whose_request_is_still_being_read_when_the_grace_ends_gets_unavailable() {
    const GRACE: Duration = Duration::from_secs(1);
    let fake = FakeOllama::start().await;
    fake.add_model(FakeModel::new("m"));
    let mut copilot = Copilot::start(&fake, &[("COPILOT_SERVER__SHUTDOWN_GRACE", "1s")]).await;
    let mut connection = raw_connection(&copilot).await;

    // The frame header announces a 100-byte message; 10 bytes of it come, then nothing.
    let mut partial = vec![0u8, 0, 0, 0, 100];
    partial.extend_from_slice(&[0x0a; 10]);
    let request = http::Request::post("http://localhost/copilot.v1.Copilot/Generate")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(RawBody::stalled_after(partial))
        .unwrap();
    let response = tokio::spawn(connection.send_request(request));
    // Let the server take the stream and start reading its body.
    tokio::time::sleep(Duration::from_millis(300)).await;
    copilot.signal("TERM");
    let signalled = std::time::Instant::now();

    let response = within(LIMIT, response).await.unwrap().expect("a response, not a reset stream");
    let (parts, mut body) = response.into_parts();
    let mut trailers = None;
    while let Some(frame) =
        within(LIMIT, std::future::poll_fn(|cx| http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx))).await
    {
        if let Ok(t) = frame.expect("the response ends with a status, not a reset").into_trailers() {
            trailers = Some(t);
        }
    }
    let ended = signalled.elapsed();
    let status = tonic::Status::from_header_map(trailers.as_ref().unwrap_or(&parts.headers)).expect("a grpc-status");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert_eq!(status.get_details_error_info().unwrap().reason, "SHUTTING_DOWN");
    assert!(status.message().contains("shutting down"), "{}", status.message());
    assert!(ended < GRACE + Duration::from_millis(1500), "the status came {ended:?} after SIGTERM");
    let status = copilot.wait_for_exit(LIMIT).await;
    assert!(status.success(), "exit status {status:?}; log:\n{}", copilot.logs());
    assert!(fake.chat_requests().is_empty());
}
