//! The request message size limit (`limits.max_message_bytes`), enforced on the gRPC frame
//! headers as the request body streams in: an oversized message is refused before any of it is
//! buffered, with RESOURCE_EXHAUSTED (what gRPC libraries answer) and a message naming the limit.
//! tonic's own limit stays configured behind it, but answers OUT_OF_RANGE without saying which
//! setting to change.
//!
//! The same reader checks each frame's compressed flag: a compressed message in a call that named
//! no `grpc-encoding` cannot be read, and is answered INTERNAL (as the gRPC compression spec
//! requires) with `MALFORMED_REQUEST` and a message saying what to fix.
//!
//! And it ends a body still being read when the shutdown grace period is over (`hard_stop`): a
//! client that sent part of a message and stalled gets UNAVAILABLE / `SHUTTING_DOWN`, like every
//! other call cut by the shutdown, rather than a reset stream with no status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http::Request;
use http_body::{Body, Frame};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::GatewayError;

/// A gRPC message frame starts with a compression flag and a big-endian 32-bit length.
const FRAME_HEADER: usize = 5;

#[derive(Clone)]
pub struct MessageLimitLayer {
    max_bytes: usize,
    hard_stop: CancellationToken,
}

impl MessageLimitLayer {
    /// `hard_stop` is cancelled when the shutdown grace period is over.
    pub fn new(max_bytes: usize, hard_stop: CancellationToken) -> Self {
        Self { max_bytes, hard_stop }
    }
}

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit { inner, max_bytes: self.max_bytes, hard_stop: self.hard_stop.clone() }
    }
}

#[derive(Clone)]
pub struct MessageLimit<S> {
    inner: S,
    max_bytes: usize,
    hard_stop: CancellationToken,
}

impl<S, B> tower::Service<Request<B>> for MessageLimit<S>
where
    S: tower::Service<Request<LimitedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut frames = FrameReader::new(self.max_bytes);
        // An encoding other than identity lets frames be compressed; tonic answers an encoding it
        // does not support UNIMPLEMENTED before reading the body.
        frames.compression = request.headers().get("grpc-encoding").is_some_and(|encoding| encoding != "identity");
        let stop = Box::pin(self.hard_stop.clone().cancelled_owned());
        self.inner.call(request.map(|inner| LimitedBody { inner, frames, stop, stopped: false }))
    }
}

pin_project_lite::pin_project! {
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        frames: FrameReader,
        // Resolves when the shutdown grace period is over.
        stop: Pin<Box<WaitForCancellationFutureOwned>>,
        // Whether the body already ended with the shutdown's status.
        stopped: bool,
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<tower::BoxError>,
{
    type Data = B::Data;
    type Error = tower::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.stopped {
            return Poll::Ready(None);
        }
        // A body still being read when the grace period ends would otherwise keep the call waiting
        // until the process exits and its stream is reset without a status.
        if this.stop.as_mut().poll(cx).is_ready() {
            *this.stopped = true;
            return Poll::Ready(Some(Err(Box::new(tonic::Status::from(GatewayError::ShuttingDown)))));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(error) = this.frames.read(data.chunk())
                {
                    let error = match error {
                        FrameError::TooLarge(size) => {
                            GatewayError::MessageTooLarge { size, limit: this.frames.max_bytes }
                        }
                        FrameError::CompressedWithoutEncoding(flag) => GatewayError::CompressedWithoutEncoding { flag },
                    };
                    return Poll::Ready(Some(Err(Box::new(tonic::Status::from(error)))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stopped || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What is wrong with a frame, read from its header.
#[derive(Debug, PartialEq)]
enum FrameError {
    /// The message's size, over the limit.
    TooLarge(u64),
    /// The compressed flag, set (or not 0 or 1) in a call without an encoding.
    CompressedWithoutEncoding(u8),
}

/// Follows the message frames through the body's chunks, wherever the chunks split them.
struct FrameReader {
    max_bytes: usize,
    /// Whether the call named an encoding, so that frames may have the compressed flag (1).
    compression: bool,
    header: [u8; FRAME_HEADER],
    header_len: usize,
    /// Bytes of the current message still to come.
    body_left: usize,
}

impl FrameReader {
    fn new(max_bytes: usize) -> Self {
        Self { max_bytes, compression: false, header: [0; FRAME_HEADER], header_len: 0, body_left: 0 }
    }

    /// Reads one chunk; `Err` says what is wrong with the frame whose header it completed.
    fn read(&mut self, mut chunk: &[u8]) -> Result<(), FrameError> {
        while !chunk.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(chunk.len());
                self.body_left -= n;
                chunk = &chunk[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&chunk[..n]);
            self.header_len += n;
            chunk = &chunk[n..];
            if self.header_len == FRAME_HEADER {
                self.header_len = 0;
                let [flag, a, b, c, d] = self.header;
                if flag != 0 && !(flag == 1 && self.compression) {
                    return Err(FrameError::CompressedWithoutEncoding(flag));
                }
                let size = u32::from_be_bytes([a, b, c, d]);
                if size as usize > self.max_bytes {
                    return Err(FrameError::TooLarge(u64::from(size)));
                }
                self.body_left = size as usize;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(b'x', len as usize));
        bytes
    }

    #[test]
    fn messages_within_the_limit_pass_however_the_chunks_split_them() {
        let stream: Vec<u8> = [frame(10), frame(0), frame(7)].concat();
        for split in 1..stream.len() {
            let mut reader = FrameReader::new(10);
            for chunk in stream.chunks(split) {
                assert_eq!(reader.read(chunk), Ok(()), "chunks of {split}");
            }
        }
    }

    #[test]
    fn a_message_over_the_limit_is_caught_at_its_header() {
        let stream: Vec<u8> = [frame(3), frame(11)].concat();
        for split in 1..stream.len() {
            let mut reader = FrameReader::new(10);
            let result = stream.chunks(split).try_for_each(|chunk| reader.read(chunk));
            assert_eq!(result, Err(FrameError::TooLarge(11)), "chunks of {split}");
        }
        // Only the header is needed to refuse it.
        assert_eq!(FrameReader::new(10).read(&[0, 0, 0, 1, 0]), Err(FrameError::TooLarge(256)));
    }

    #[test]
    fn a_compressed_flag_needs_an_encoding() {
        let compressed = [1, 0, 0, 0, 1, b'x'];
        assert_eq!(FrameReader::new(10).read(&compressed), Err(FrameError::CompressedWithoutEncoding(1)));
        let mut reader = FrameReader::new(10);
        reader.compression = true;
        assert_eq!(reader.read(&compressed), Ok(()));
        assert_eq!(reader.read(&[2, 0, 0, 0, 0]), Err(FrameError::CompressedWithoutEncoding(2)));
    }
}
