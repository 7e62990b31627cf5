//! Clients that stall while sending their request: the read timeout and the call's deadline end
//! them, and the bytes of partly received messages are bounded per connection and in all. Each
//! case on a raw HTTP/2 connection (a gRPC client always finishes its messages), which then
//! still serves a normal call.

use std::time::{Duration, Instant};

use hyper::client::conn::http2::SendRequest;
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{RawBody, raw_call, raw_connection, start_with_limits, within};
use crate::requests::{prompt, reason};

const LIMIT: Duration = Duration::from_secs(20);

/// The frame header of a `declared`-byte message and `sent` bytes of it; then the client stalls.
fn stalled(declared: u32, sent: usize) -> RawBody {
    let mut bytes = vec![0];
    bytes.extend(declared.to_be_bytes());
    bytes.extend(std::iter::repeat_n(0x0a, sent));
    RawBody::stalled_after(bytes)
}

/// A 90 KB partial message of a declared 100 KB, sent on `connection` in the background: the
/// call's status, and when it came (from `started`).
fn hold(connection: &SendRequest<RawBody>, started: Instant) -> tokio::task::JoinHandle<(tonic::Status, Duration)> {
    let connection = connection.clone();
    tokio::spawn(async move {
        let (status, _) = raw_call(&connection, "Generate", &[], stalled(100_000, 90_000)).await;
        (status, started.elapsed())
    })
}

/// A normal Generate on `connection` succeeds.
async fn still_serves(connection: &SendRequest<RawBody>) {
    let request = prompt("ollama/m", "hi");
    let (status, reply) = raw_call(connection, "Generate", &[], RawBody::frame(0, &request.encode_to_vec())).await;
    assert_eq!(status.code(), Code::Ok, "{}", status.message());
    assert!(!reply.is_empty());
}

#[tokio::test]
async fn a_request_that_stalls_ends_with_deadline_exceeded_after_the_read_timeout() {
    let (fake, copilot) = start_with_limits("request_read_timeout = \"1s\"").await;
    let connection = raw_connection(&copilot).await;
    let started = Instant::now();
    let (status, _) = raw_call(&connection, "Generate", &[], stalled(100, 10)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
    assert_eq!(reason(&status), "REQUEST_READ_TIMEOUT");
    assert!(
        status.message().contains("limits.request_read_timeout") && status.message().contains("15 bytes"),
        "{}",
        status.message()
    );
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "ended after {took:?}");

    // A whole message whose stream is never closed is a stall too: tonic waits for the end.
    let request = prompt("ollama/m", "hi");
    let mut whole = vec![0];
    whole.extend((request.encoded_len() as u32).to_be_bytes());
    whole.extend(request.encode_to_vec());
    let (status, _) = raw_call(&connection, "Generate", &[], RawBody::stalled_after(whole)).await;
    assert_eq!(reason(&status), "REQUEST_READ_TIMEOUT", "{}", status.message());
    assert!(fake.chat_requests().is_empty(), "a request that never arrived whole went upstream");
    still_serves(&connection).await;
}

#[tokio::test]
async fn the_calls_deadline_covers_the_time_its_request_takes_to_arrive() {
    let (_fake, copilot) = start_with_limits("").await;
    let connection = raw_connection(&copilot).await;
    let started = Instant::now();
    let (status, _) = raw_call(&connection, "Generate", &[("grpc-timeout", "500m")], stalled(100, 10)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
    assert_eq!(reason(&status), "DEADLINE_EXCEEDED");
    assert!(status.message().contains("while its request was still arriving"), "{}", status.message());
    assert!(took < Duration::from_secs(3), "the 500 ms deadline ended the call after {took:?}");
    still_serves(&connection).await;
}

#[tokio::test]
async fn stalled_messages_cannot_hold_more_than_their_connections_budget() {
    // Two 90 KB partial messages fit a connection's 200 KB; a third does not.
    let (_fake, copilot) = start_with_limits(
        "max_message_bytes = 100000\nmax_buffered_request_bytes_per_connection = 200000\n\
         max_buffered_request_bytes = 10000000\nrequest_read_timeout = \"5s\"",
    )
    .await;
    let connection = raw_connection(&copilot).await;
    let started = Instant::now();
    let holders = [hold(&connection, started), hold(&connection, started)];
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, _) = raw_call(&connection, "Generate", &[], stalled(100_000, 90_000)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert_eq!(reason(&status), "REQUEST_BUFFERS_FULL");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["config_key"], "limits.max_buffered_request_bytes_per_connection");
    assert_eq!(info.metadata["limit_bytes"], "200000");
    assert!(status.get_details_retry_info().is_some(), "RetryInfo says when to retry");
    assert!(status.message().contains("another connection"), "{}", status.message());

    // A small call arrives whole, holds nothing, and passes on the full connection; another
    // connection has a budget of its own.
    still_serves(&connection).await;
    let other = raw_connection(&copilot).await;
    let other_holder = hold(&other, started);

    // The holders end at the read timeout, and give their bytes back.
    for holder in holders {
        let (status, _) = within(LIMIT, holder).await.unwrap();
        assert_eq!(reason(&status), "REQUEST_READ_TIMEOUT", "{}", status.message());
    }
    let (status, _) = within(LIMIT, other_holder).await.unwrap();
    assert_eq!(reason(&status), "REQUEST_READ_TIMEOUT", "{}", status.message());
    let again = hold(&connection, started);
    let (status, _) = within(LIMIT, again).await.unwrap();
    assert_eq!(reason(&status), "REQUEST_READ_TIMEOUT", "the budget was given back: {}", status.message());
}

#[tokio::test]
async fn the_servers_budget_bounds_every_connection_and_stalls_are_ended_under_pressure() {
    // Three 90 KB partial messages on three connections fill 270 KB of the server's 300 KB: a
    // fourth is refused, and with more than half held, stalled ones are ended within seconds,
    // long before the 10 s read timeout, until no more than half is held.
    let (_fake, copilot) = start_with_limits(
        "max_message_bytes = 100000\nmax_buffered_request_bytes_per_connection = 200000\n\
         max_buffered_request_bytes = 300000\nrequest_read_timeout = \"10s\"",
    )
    .await;
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(raw_connection(&copilot).await);
    }
    let started = Instant::now();
    let holders: Vec<_> = connections[..3].iter().map(|connection| hold(connection, started)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, _) = raw_call(&connections[3], "Generate", &[], stalled(100_000, 90_000)).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    assert_eq!(reason(&status), "REQUEST_BUFFERS_FULL");
    assert_eq!(status.get_details_error_info().unwrap().metadata["config_key"], "limits.max_buffered_request_bytes");
    still_serves(&connections[3]).await;

    // The first two stalls ended relieve the pressure (90 KB is under half of 300 KB): the last
    // holder stays until its read timeout.
    let mut ended = Vec::new();
    for holder in holders {
        let (status, took) = within(LIMIT, holder).await.unwrap();
        ended.push((reason(&status), took));
        if reason(&status) == "REQUEST_STALLED" {
            assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
            assert!(status.message().contains("90005 bytes"), "{}", status.message());
        }
    }
    ended.sort();
    let reasons: Vec<&str> = ended.iter().map(|(reason, _)| reason.as_str()).collect();
    assert_eq!(reasons, ["REQUEST_READ_TIMEOUT", "REQUEST_STALLED", "REQUEST_STALLED"], "{ended:?}");
    assert!(ended[1].1 < Duration::from_secs(6) && ended[2].1 < Duration::from_secs(6), "{ended:?}");
    for connection in &connections {
        still_serves(connection).await;
    }
}
