//! Guards on a call's request body, applied as it streams in, before tonic buffers and decodes it.
//!
//! - **Size** (`limits.max_message_bytes`), on the gRPC frame headers: an oversized message is
//!   refused before any of it is buffered, with RESOURCE_EXHAUSTED (what gRPC libraries answer)
//!   and a message naming the limit. tonic's own limit stays configured behind it, but answers
//!   OUT_OF_RANGE without saying which setting to change.
//! - **Compressed flag**: a compressed message in a call that named no `grpc-encoding` cannot be
//!   read, and is answered INTERNAL (as the gRPC compression spec requires) with
//!   `MALFORMED_REQUEST` and a message saying what to fix.
//! - **Time**: the body must arrive whole by the call's deadline (`grpc-timeout`, counted from
//!   when its headers arrived) and within `limits.request_read_timeout`; for a request stream
//!   (reflection), each message within the read timeout from its first byte. A client that stalls
//!   while sending gets DEADLINE_EXCEEDED instead of holding its stream forever.
//! - **Memory**: the bytes of an incomplete message are held against the connection's and the
//!   server's budgets (`request_buffers.rs`); a stream that would go over is refused, and while
//!   the server's budget is more than half used, a stream whose partial message has received
//!   nothing for [`STALL_UNDER_PRESSURE`] is ended.
//! - **Shape**: a method that takes one message gets exactly one; a body that ends inside a
//!   message, holds none, or (for such a method) holds more than one is the caller's error,
//!   INVALID_ARGUMENT / `MALFORMED_REQUEST`, where tonic would answer INTERNAL or drop the extra.
//! - **Shutdown**: a body still being read when the shutdown grace period is over (`hard_stop`)
//!   ends with UNAVAILABLE / `SHUTTING_DOWN`, like every other call cut by the shutdown, rather
//!   than a reset stream with no status.
//!
//! The timers are armed only when the body has to wait for the client, so a request that arrives
//! in one piece (nearly all of them) costs no timer.

mod frames;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::Request;
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::LimitsConfig;
use crate::error::GatewayError;
use crate::request_buffers::{BufferBudget, BufferScope, ConnectionBuffers, Held};
use frames::{FrameError, FrameReader};

/// How long a partial message may go without a byte while the server's request buffers are more
/// than half used, before its stream is ended to make room.
pub const STALL_UNDER_PRESSURE: Duration = Duration::from_secs(2);

/// When a call's headers arrived: where its deadline starts (`deadline.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ReceivedAt(pub Instant);

#[derive(Clone)]
pub struct RequestBodyLayer {
    max_message_bytes: usize,
    read_timeout: Duration,
    server_buffers: Arc<BufferBudget>,
    hard_stop: CancellationToken,
}

impl RequestBodyLayer {
    /// `hard_stop` is cancelled when the shutdown grace period is over.
    pub fn new(limits: &LimitsConfig, hard_stop: CancellationToken) -> Self {
        Self {
            max_message_bytes: limits.max_message_bytes,
            read_timeout: limits.request_read_timeout,
            server_buffers: BufferBudget::new(BufferScope::Server, limits.server_buffer_bytes()),
            hard_stop,
        }
    }
}

impl<S> tower::Layer<S> for RequestBodyLayer {
    type Service = RequestBodyGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestBodyGuard { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct RequestBodyGuard<S> {
    inner: S,
    layer: RequestBodyLayer,
}

impl<S, B> tower::Service<Request<B>> for RequestBodyGuard<S>
where
    S: tower::Service<Request<GuardedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let received = Instant::now();
        request.extensions_mut().insert(ReceivedAt(received));
        // An encoding other than identity would let frames be compressed (`request_headers.rs`
        // refuses every such encoding today, before the body is read).
        let compression = request.headers().get("grpc-encoding").is_some_and(|encoding| encoding != "identity");
        let frames = FrameReader::new(self.layer.max_message_bytes, compression);
        let connection = request.extensions().get::<ConnectionBuffers>().map(|buffers| buffers.0.clone());
        let held = Held::new(connection, self.layer.server_buffers.clone());
        let budget = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout);
        let request_stream = is_request_stream(request.uri().path());
        let clock = ReadClock::new(received, self.layer.read_timeout, budget, request_stream);
        let stop = Box::pin(self.layer.hard_stop.clone().cancelled_owned());
        self.inner.call(request.map(|inner| GuardedBody {
            inner,
            frames,
            held,
            clock,
            timer: None,
            stop,
            ended: false,
            bytes_received: 0,
            request_stream,
        }))
    }
}

/// Whether the method's request is a stream of messages rather than one: only server reflection's
/// (every Copilot and health method takes one message).
fn is_request_stream(path: &str) -> bool {
    path.starts_with("/grpc.reflection.")
}

pin_project_lite::pin_project! {
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        frames: FrameReader,
        held: Held,
        clock: ReadClock,
        // Armed only while the body waits for the client.
        timer: Option<Pin<Box<Sleep>>>,
        // Resolves when the shutdown grace period is over.
        stop: Pin<Box<WaitForCancellationFutureOwned>>,
        // Whether the body already ended with an error status (or its end).
        ended: bool,
        bytes_received: u64,
        // Whether the method takes a stream of messages rather than exactly one.
        request_stream: bool,
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<tower::BoxError>,
{
    type Data = B::Data;
    type Error = tower::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let fail = |ended: &mut bool, held: &mut Held, error: GatewayError| {
            *ended = true;
            let _ = held.set(0);
            Poll::Ready(Some(Err(Box::new(tonic::Status::from(error)) as tower::BoxError)))
        };
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let chunk = data.chunk();
                    *this.bytes_received += chunk.len() as u64;
                    if let Err(error) = this.frames.read(chunk) {
                        let error = match error {
                            FrameError::TooLarge(size) => {
                                GatewayError::MessageTooLarge { size, limit: this.frames.max_bytes() }
                            }
                            FrameError::CompressedWithoutEncoding(flag) => {
                                GatewayError::CompressedWithoutEncoding { flag }
                            }
                        };
                        return fail(this.ended, this.held, error);
                    }
                    if !*this.request_stream && this.frames.messages() > 1 {
                        let problem = "holds more than one message, and the method takes one".to_string();
                        return fail(this.ended, this.held, GatewayError::MalformedBody { problem });
                    }
                    if let Err(full) = this.held.set(this.frames.partial()) {
                        return fail(this.ended, this.held, GatewayError::RequestBuffersFull(full));
                    }
                    // Progress matters only to a partial message (its stall check) and to a
                    // request stream (its per-message timeout): a whole message costs no clock read.
                    if this.held.bytes() > 0 || this.clock.watches_messages() {
                        this.clock.progress(Instant::now(), this.frames.partial());
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => {
                let problem = match this.frames.current_frame_len() {
                    _ if this.frames.partial() == 0 && (*this.request_stream || this.frames.messages() > 0) => None,
                    Some(len) => {
                        Some(format!("ended inside a message: {} of its {len} bytes arrived", this.frames.partial()))
                    }
                    None if this.frames.partial() > 0 => Some(format!(
                        "ended inside a message's 5-byte frame header ({} bytes of it arrived)",
                        this.frames.partial()
                    )),
                    None => Some("held no message".to_string()),
                };
                if let Some(problem) = problem {
                    return fail(this.ended, this.held, GatewayError::MalformedBody { problem });
                }
                *this.ended = true;
                let _ = this.held.set(0);
                *this.timer = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                // A body still being read when the grace period ends would otherwise keep the
                // call waiting until the process exits and its stream is reset without a status.
                if this.stop.as_mut().poll(cx).is_ready() {
                    return fail(this.ended, this.held, GatewayError::ShuttingDown);
                }
                loop {
                    let Some(wake) = this.clock.next_check(this.held.bytes()) else {
                        *this.timer = None;
                        return Poll::Pending;
                    };
                    let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
                    if timer.deadline() != wake {
                        timer.as_mut().reset(wake);
                    }
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let pressure = this.held.server().under_pressure();
                    if let Some(error) = this.clock.check(Instant::now(), this.held.bytes(), pressure) {
                        let error = match error {
                            Expired::ReadTimeout(timeout) => {
                                GatewayError::RequestReadTimeout { timeout, bytes_received: *this.bytes_received }
                            }
                            Expired::Deadline(budget) => GatewayError::RequestDeadline { budget },
                            Expired::Stalled(stalled_for) => {
                                GatewayError::RequestStalled { stalled_for, held: this.held.bytes() }
                            }
                        };
                        return fail(this.ended, this.held, error);
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Which time ran out while the body was being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// `limits.request_read_timeout`.
    ReadTimeout(Duration),
    /// The call's own deadline, its budget.
    Deadline(Duration),
    /// A partial message went this long without a byte while the server was short of buffers.
    Stalled(Duration),
}

/// The times a body must keep: by when it (or, in a request stream, its current message) must
/// have arrived, and when a stalled partial message is next looked at.
#[derive(Debug)]
struct ReadClock {
    read_timeout: Duration,
    /// By when the body must have arrived, and what ends it then; for a request stream, set while
    /// a message is incomplete.
    read_by: Option<(Instant, Expired)>,
    request_stream: bool,
    /// When the last bytes arrived.
    last_progress: Instant,
    /// When a partial message is next looked at for a stall.
    stall_check: Instant,
}

impl ReadClock {
    fn new(received: Instant, read_timeout: Duration, deadline: Option<Duration>, request_stream: bool) -> Self {
        let read_by = if request_stream {
            None
        } else {
            let timeout = (crate::deadline::later(received, read_timeout), Expired::ReadTimeout(read_timeout));
            Some(match deadline {
                Some(budget) if budget < read_timeout => (received + budget, Expired::Deadline(budget)),
                _ => timeout,
            })
        };
        Self {
            read_timeout,
            read_by,
            request_stream,
            last_progress: received,
            stall_check: received + STALL_UNDER_PRESSURE,
        }
    }

    /// Whether each message has its own read timeout (a request stream).
    fn watches_messages(&self) -> bool {
        self.request_stream
    }

    /// Bytes arrived at `now`; `partial` of an incomplete message are now held.
    fn progress(&mut self, now: Instant, partial: usize) {
        self.last_progress = now;
        self.stall_check = now + STALL_UNDER_PRESSURE;
        if self.request_stream {
            self.read_by = match (partial, self.read_by) {
                (0, _) => None,
                (_, None) => Some((now + self.read_timeout, Expired::ReadTimeout(self.read_timeout))),
                (_, started) => started,
            };
        }
    }

    /// When the body must next be looked at while it waits, holding `held` bytes.
    fn next_check(&self, held: usize) -> Option<Instant> {
        let stall = (held > 0).then_some(self.stall_check);
        match (self.read_by.map(|(at, _)| at), stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What has run out at `now`, if anything; a stall check that finds no pressure is put off.
    fn check(&mut self, now: Instant, held: usize, pressure: bool) -> Option<Expired> {
        if let Some((at, expired)) = self.read_by
            && at <= now
        {
            return Some(expired);
        }
        if held > 0 && self.stall_check <= now {
            if pressure {
                return Some(Expired::Stalled(now - self.last_progress));
            }
            self.stall_check = now + STALL_UNDER_PRESSURE;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_request_must_arrive_within_the_read_timeout_or_its_deadline_if_sooner() {
        let start = Instant::now();
        let clock = ReadClock::new(start, READ, None, false);
        assert_eq!(clock.next_check(0), Some(start + READ));
        let clock = ReadClock::new(start, READ, Some(Duration::from_secs(5)), false);
        assert_eq!(clock.read_by, Some((start + Duration::from_secs(5), Expired::Deadline(Duration::from_secs(5)))));
        let mut clock = ReadClock::new(start, READ, Some(Duration::from_secs(60)), false);
        assert_eq!(clock.check(start + READ, 0, false), Some(Expired::ReadTimeout(READ)));
        // A huge deadline does not overflow the clock.
        let clock = ReadClock::new(start, Duration::MAX, Some(Duration::MAX), false);
        assert!(clock.next_check(0).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn in_a_request_stream_each_message_has_the_read_timeout() {
        let start = Instant::now();
        let mut clock = ReadClock::new(start, READ, None, true);
        assert_eq!(clock.next_check(0), None, "an idle request stream waits without a timer");
        let later = start + Duration::from_secs(100);
        clock.progress(later, 10);
        assert_eq!(clock.read_by, Some((later + READ, Expired::ReadTimeout(READ))));
        // More of the same message does not move its deadline; its end clears it.
        clock.progress(later + Duration::from_secs(1), 20);
        assert_eq!(clock.read_by.unwrap().0, later + READ);
        clock.progress(later + Duration::from_secs(2), 0);
        assert_eq!(clock.next_check(0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_partial_message_is_ended_only_under_pressure() {
        let start = Instant::now();
        let mut clock = ReadClock::new(start, READ, None, false);
        clock.progress(start, 1000);
        let stall = start + STALL_UNDER_PRESSURE;
        assert_eq!(clock.next_check(1000), Some(stall));
        // No pressure: looked at again later.
        assert_eq!(clock.check(stall, 1000, false), None);
        assert_eq!(clock.next_check(1000), Some(stall + STALL_UNDER_PRESSURE));
        let at = stall + STALL_UNDER_PRESSURE;
        assert_eq!(clock.check(at, 1000, true), Some(Expired::Stalled(at - start)));
        // Nothing held: a stall holds no memory and is left to the read timeout.
        let mut clock = ReadClock::new(start, READ, None, false);
        assert_eq!(clock.next_check(0), Some(start + READ));
        assert_eq!(clock.check(stall, 0, true), None);
    }
}
