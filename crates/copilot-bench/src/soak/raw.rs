//! Hand-made gRPC calls for the hostile actors: a bare HTTP/2 connection whose request bodies are
//! bytes the actor chooses (a frame header that promises more than is sent, random bytes), a call
//! read to its end and named by how it ended (gRPC code, HTTP status, RST_STREAM, GOAWAY), and a
//! small random number generator for the garbage.

use std::convert::Infallible;
use std::error::Error;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::client::conn::http2::SendRequest;
use tokio::task::JoinHandle;

use crate::BoxError;
use crate::chat::code_name;
use crate::h2_client;

/// A request body: some bytes, then either the end or (a stalled client) nothing more, ever.
pub struct RawBody {
    data: Option<Bytes>,
    stall: bool,
}

impl RawBody {
    /// `data`, then the end of the body.
    pub fn complete(data: Bytes) -> Self {
        RawBody { data: Some(data), stall: false }
    }

    /// `data`, then a stall: the body never ends (until the stream is dropped).
    pub fn stalled_after(data: Bytes) -> Self {
        RawBody { data: Some(data), stall: true }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.data.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            // Never woken: the stream stays open until the server ends it or the call is dropped.
            None if self.stall => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

/// gRPC's length-prefixed message: the uncompressed flag, the big-endian `declared` length, then
/// `message` (which may be shorter than declared: a stalled client's promise).
pub fn grpc_frame(declared: u32, message: &[u8]) -> Bytes {
    let mut bytes = Vec::with_capacity(5 + message.len());
    bytes.push(0);
    bytes.extend(declared.to_be_bytes());
    bytes.extend(message);
    bytes.into()
}

/// One HTTP/2 connection for hand-made calls; dropping it closes the connection (the task that
/// drives it is aborted), whatever streams are still open on it.
pub struct RawConnection {
    pub sender: SendRequest<RawBody>,
    driver: JoinHandle<()>,
}

impl RawConnection {
    pub async fn open(addr: &str) -> Result<Self, BoxError> {
        let (sender, connection) = h2_client::handshake(addr).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(RawConnection { sender, driver })
    }

    /// Whether the connection has ended (the server closed it, or it failed).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed() || self.driver.is_finished()
    }
}

impl Drop for RawConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A POST to `/copilot.v1.Copilot/{method}` as a gRPC client sends it.
pub fn grpc_request(method: &str, body: RawBody) -> http::Request<RawBody> {
    http::Request::post(format!("http://localhost/copilot.v1.Copilot/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("a valid request")
}

/// How a call ended: a short label to count by, and a detail (the status message, the error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub label: String,
    pub detail: String,
}

impl Ended {
    pub fn new(label: impl Into<String>, detail: impl Into<String>) -> Self {
        Ended { label: label.into(), detail: detail.into() }
    }

    /// Whether the connection under the call is gone (not only the stream).
    pub fn lost_connection(&self) -> bool {
        self.label.starts_with("GOAWAY") || self.label == CONNECTION_CLOSED || self.label == IO_ERROR
    }
}

pub const CONNECTION_CLOSED: &str = "connection closed";
pub const IO_ERROR: &str = "I/O error";

/// Sends `request` on `sender` and reads the response to its end, each step within `limit`.
pub async fn call(sender: &mut SendRequest<RawBody>, request: http::Request<RawBody>, limit: Duration) -> Ended {
    let response = match tokio::time::timeout(limit, sender.send_request(request)).await {
        Err(_) => return Ended::new("no answer", format!("no response headers within {limit:?}")),
        Ok(Err(error)) => return classify(&error),
        Ok(Ok(response)) => response,
    };
    let (parts, mut body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        return Ended::new(format!("HTTP {}", parts.status.as_u16()), "an HTTP status instead of a gRPC answer");
    }
    let mut trailers = None;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout(limit, frame).await {
            Err(_) => return Ended::new("no answer", format!("the response body stalled for {limit:?}")),
            Ok(None) => break,
            Ok(Some(Err(error))) => return classify(&error),
            Ok(Some(Ok(frame))) => {
                if let Ok(map) = frame.into_trailers() {
                    trailers = Some(map);
                }
            }
        }
    }
    // A trailers-only answer carries the status in the headers.
    match tonic::Status::from_header_map(trailers.as_ref().unwrap_or(&parts.headers)) {
        Some(status) => Ended::new(code_name(status.code()), status.message()),
        None => Ended::new("no grpc-status", "the response ended without a grpc-status"),
    }
}

/// HTTP/2 error codes in order (RFC 9113, 7), each with the text h2 describes it with (its
/// `Reason` display), so an error can be named without depending on h2's types.
pub const REASONS: [(&str, &str); 14] = [
    ("NO_ERROR", "not a result of an error"),
    ("PROTOCOL_ERROR", "unspecific protocol error detected"),
    ("INTERNAL_ERROR", "unexpected internal error encountered"),
    ("FLOW_CONTROL_ERROR", "flow-control protocol violated"),
    ("SETTINGS_TIMEOUT", "settings ACK not received in timely manner"),
    ("STREAM_CLOSED", "received frame when stream half-closed"),
    ("FRAME_SIZE_ERROR", "frame with invalid size"),
    ("REFUSED_STREAM", "refused stream before processing any application logic"),
    ("CANCEL", "stream no longer needed"),
    ("COMPRESSION_ERROR", "unable to maintain the header compression context"),
    ("CONNECT_ERROR", "connection established in response to a CONNECT request"),
    ("ENHANCE_YOUR_CALM", "detected excessive load generating behavior"),
    ("INADEQUATE_SECURITY", "security properties do not meet minimum requirements"),
    ("HTTP_1_1_REQUIRED", "endpoint requires HTTP/1.1"),
];

/// Names a client-side error by what the server did: reset the stream (`RST_STREAM <code>`),
/// closed the connection with a reason (`GOAWAY <code>`) or without one, or an I/O error.
pub fn classify(error: &(dyn Error + 'static)) -> Ended {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let label = transport_label(&text).unwrap_or_else(|| "client error".to_owned());
    Ended::new(label, text)
}

/// The label of a transport failure described by `text` (hyper's and h2's error messages), if it
/// is one.
fn transport_label(text: &str) -> Option<String> {
    let reason = REASONS.iter().find(|(_, description)| text.contains(description)).map_or("", |(name, _)| name);
    let label = if text.contains("stream error received") {
        format!("RST_STREAM {reason}")
    } else if text.contains("connection error received") {
        format!("GOAWAY {reason}")
    } else if text.contains("error detected") || text.contains("protocol error") {
        format!("HTTP/2 error detected by the client {reason}")
    } else if ["broken pipe", "channel closed", "connection closed", "canceled"].iter().any(|t| text.contains(t)) {
        // h2 ends the streams of a connection that failed with a "broken pipe"; hyper and tonic
        // say "closed" of a connection that is gone: the call died with its connection.
        CONNECTION_CLOSED.to_owned()
    } else if text.contains("os error") || text.contains("connection reset") {
        IO_ERROR.to_owned()
    } else {
        return None;
    };
    Some(label.trim_end().to_owned())
}

/// Names a failed gRPC call of tonic's client: by what the server did to the connection or stream
/// when that is the cause, by the HTTP status when the answer was not gRPC, else by its code.
pub fn from_status(status: &tonic::Status) -> Ended {
    if let Some(cause) = Error::source(status) {
        return classify(cause);
    }
    let message = status.message();
    if let Some(code) = message.split("mapped from HTTP status code ").nth(1) {
        return Ended::new(format!("HTTP {}", code.trim()), message);
    }
    // tonic's own statuses for a connection it could not use carry no source, only the text.
    let local = matches!(status.code(), tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled);
    match transport_label(message).filter(|_| local) {
        Some(label) => Ended::new(label, message),
        None => Ended::new(code_name(status.code()), message),
    }
}

/// xorshift64*: fast, seedable, good enough for garbage bytes and jitter (not for secrets).
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (zero, which xorshift cannot leave, is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// Between `low` and `high` random bytes.
    pub fn bytes_between(&mut self, low: u64, high: u64) -> Vec<u8> {
        let len = self.between(low, high) as usize;
        self.bytes(len)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            bytes.extend(self.next_u64().to_le_bytes());
        }
        bytes.truncate(len);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Chain {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|c| c as &(dyn Error + 'static))
        }
    }

    fn label(outer: &'static str, inner: &'static str) -> String {
        classify(&Chain(outer, Some(Box::new(Chain(inner, None))))).label
    }

    #[test]
    fn names_errors_by_what_the_server_did() {
        assert_eq!(label("http2 error", "stream error received: stream no longer needed"), "RST_STREAM CANCEL");
        assert_eq!(
            label("http2 error", "connection error received: detected excessive load generating behavior"),
            "GOAWAY ENHANCE_YOUR_CALM"
        );
        assert_eq!(label("http2 error", "connection error received: not a result of an error"), "GOAWAY NO_ERROR");
        assert_eq!(label("operation was canceled", "connection closed"), CONNECTION_CLOSED);
        assert_eq!(
            label("error reading a body from connection", "stream closed because of a broken pipe"),
            CONNECTION_CLOSED
        );
        assert_eq!(label("http2 error", "Connection reset by peer (os error 104)"), IO_ERROR);
        let ended = classify(&Chain("http2 error", Some(Box::new(Chain("connection error received: x", None)))));
        assert!(ended.lost_connection());
        assert_eq!(ended.detail, "http2 error: connection error received: x");
        assert!(!Ended::new("RST_STREAM CANCEL", "").lost_connection());
    }

    #[test]
    fn names_failed_grpc_calls() {
        let status = tonic::Status::invalid_argument("bad");
        assert_eq!(from_status(&status), Ended::new("INVALID_ARGUMENT", "bad"));
        let status = tonic::Status::unknown("grpc-status header missing, mapped from HTTP status code 431");
        assert_eq!(from_status(&status).label, "HTTP 431");
        let status = tonic::Status::unknown("Service was not ready: channel closed");
        assert_eq!(from_status(&status).label, CONNECTION_CLOSED);
        // A server's own UNAVAILABLE whose text says nothing of the transport keeps its code.
        let status = tonic::Status::unavailable("the upstream is down");
        assert_eq!(from_status(&status).label, "UNAVAILABLE");
    }

    #[test]
    fn frames_declare_what_they_are_told() {
        assert_eq!(&grpc_frame(4_000_000, b"ab")[..], &[0, 0x00, 0x3d, 0x09, 0x00, b'a', b'b']);
    }

    #[test]
    fn random_numbers_stay_in_range() {
        let mut rng = Rng::new(0);
        for _ in 0..1000 {
            let n = rng.between(3, 7);
            assert!((3..=7).contains(&n));
        }
        assert_eq!(rng.bytes(13).len(), 13);
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[tokio::test]
    async fn a_stalled_body_sends_its_bytes_then_never_ends() {
        let mut body = RawBody::stalled_after(Bytes::from_static(b"abc"));
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"abc"));
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        assert!(tokio::time::timeout(Duration::from_millis(20), next).await.is_err());
        let mut body = RawBody::complete(Bytes::from_static(b"x"));
        assert!(std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.is_some());
        assert!(std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.is_none());
    }
}
