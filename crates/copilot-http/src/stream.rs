//! Reading a streamed chat reply: the I/O-free decoder every adapter has ([`ChatStreamDecoder`]),
//! and the one driver that reads a response's body into it and hands its events to the caller as
//! a [`ChatStream`] ([`Upstream::chat_stream`]). The driver owns what the adapters used to repeat:
//! the connection's lifetime, its return to the pool after the last event, the error of a broken
//! body, and the two things only some protocols need (a reply sent whole, a grace after finishing).

use std::sync::Arc;
use std::time::Duration;

use copilot_provider::{ChatEvent, ChatStream, ProviderError, Secret};
use futures::{FutureExt, StreamExt};
use reqwest::Response;
use tokio::time::Instant;

use crate::{Upstream, client, root_cause};

/// The pure half of a chat stream: response-body bytes in, events out, no I/O. Each adapter has
/// one (`StreamDecoder`); the driver reads the body into it, and the fuzz targets and benches
/// drive it with bytes of their own. The last event is always a `Done` or an error.
pub trait ChatStreamDecoder {
    /// The next piece of the body (ignored once the stream has ended).
    fn push(&mut self, chunk: &[u8]);
    /// The body ended cleanly.
    fn end(&mut self);
    /// The next event the bytes so far hold; `None` when more are needed or the stream is over.
    fn next_event(&mut self) -> Option<Result<ChatEvent, ProviderError>>;
    /// Bytes held for a line or an event not yet complete.
    fn buffered(&self) -> usize;

    /// A reply sent as one whole body instead of a stream (a server that ignored `stream: true`);
    /// its events follow from [`next_event`](Self::next_event). By default, the stream's bytes.
    fn push_whole(&mut self, body: &[u8]) {
        self.push(body);
        self.end();
    }

    /// Whether the answer is complete though the stream has not ended (a `finish_reason` came, and
    /// only usage may follow): what is left of the body then has [`FinishGrace`] to arrive.
    fn answer_complete(&self) -> bool {
        false
    }

    /// The final event, now, for an answer that is complete: the rest of the body stalled or
    /// broke. `None` while the answer is not complete.
    fn finish_now(&mut self) -> Option<ChatEvent> {
        None
    }
}

/// How long the end of a body may take once the answer is complete
/// ([`ChatStreamDecoder::answer_complete`]); after it the stream ends with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishGrace {
    /// Each read may take this long (OpenAI: the usage chunk and `[DONE]` come right after).
    EachRead(Duration),
    /// The whole rest has this long from the event that completed the answer (Gemini: the body
    /// ends right after its last chunk).
    Total(Duration),
}

/// What a protocol's stream needs of the driver besides its decoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOptions {
    /// The reply is one whole body (`application/json`), decoded by
    /// [`ChatStreamDecoder::push_whole`].
    pub whole_body: bool,
    /// Bounds the wait for the end of a body whose answer is complete; `None` waits for it.
    pub finish_grace: Option<FinishGrace>,
}

/// How long, after the final event, the rest of the body (the end of the chunked encoding, which
/// servers send right after) may take to arrive. Reading it lets the connection go back to the
/// pool; dropping a body that is still open closes the connection instead.
const RELEASE_GRACE: Duration = Duration::from_millis(50);

impl Upstream {
    /// The events of a streamed reply, decoded by `decoder`, as a [`ChatStream`]. Dropping the
    /// stream drops the response: that closes the connection, which is how the upstream learns to
    /// stop generating when the caller goes away.
    pub fn chat_stream<D: ChatStreamDecoder + Send + 'static>(
        &self,
        response: Response,
        decoder: D,
        options: StreamOptions,
    ) -> ChatStream {
        // Boxed: `unfold` moves its state into a new future for every event, and back out.
        let body = Box::new(DecodedBody {
            response: Some(response),
            decoder,
            body_ended: false,
            name: self.name().clone(),
            secret: self.secret().cloned(),
            options,
            deadline: None,
        });
        futures::stream::unfold(body, |mut body| async move {
            let item = body.next_event().await?;
            Some((item, body))
        })
        .boxed()
    }
}

/// A streamed response read into its adapter's decoder. After the final event the rest of the
/// body is released ([`release_body`]); after an error the response is dropped, closing the
/// connection.
struct DecodedBody<D> {
    /// `None` once the stream has ended.
    response: Option<Response>,
    decoder: D,
    body_ended: bool,
    /// Names the upstream in errors: `"Ollama at http://…"`.
    name: Arc<str>,
    /// Masked in the cause of a broken connection.
    secret: Option<Secret>,
    options: StreamOptions,
    /// Set by [`FinishGrace::Total`] once the answer is complete.
    deadline: Option<Instant>,
}

impl<D: ChatStreamDecoder> DecodedBody<D> {
    async fn next_event(&mut self) -> Option<Result<ChatEvent, ProviderError>> {
        if self.options.whole_body {
            self.options.whole_body = false;
            if let Err(err) = self.read_whole_body().await {
                return Some(Err(err));
            }
        }
        loop {
            if let Some(event) = self.decoder.next_event() {
                self.after_event(&event);
                return Some(event);
            }
            let deadline = self.read_deadline();
            let response = self.response.as_mut()?;
            let read = match deadline {
                None => response.chunk().await,
                Some(deadline) => match tokio::time::timeout_at(deadline, response.chunk()).await {
                    Ok(read) => read,
                    Err(_) => {
                        self.response = None;
                        return self.decoder.finish_now().map(Ok);
                    }
                },
            };
            match read {
                Ok(Some(chunk)) => self.decoder.push(&chunk),
                Ok(None) => {
                    self.body_ended = true;
                    self.decoder.end();
                }
                Err(err) => {
                    self.response = None;
                    // Everything that matters may have arrived: then only usage or the end is lost.
                    if let Some(done) = self.decoder.finish_now() {
                        return Some(Ok(done));
                    }
                    return Some(Err(ProviderError::Interrupted(self.lost(&err, "mid-stream"))));
                }
            }
        }
    }

    /// Reads a whole-body reply into the decoder.
    async fn read_whole_body(&mut self) -> Result<(), ProviderError> {
        let Some(response) = self.response.take() else { return Ok(()) };
        let body = response
            .bytes()
            .await
            .map_err(|err| ProviderError::Interrupted(self.lost(&err, "while reading the completion")))?;
        self.body_ended = true;
        self.decoder.push_whole(&body);
        Ok(())
    }

    fn after_event(&mut self, event: &Result<ChatEvent, ProviderError>) {
        match event {
            Ok(ChatEvent::Done(_)) => {
                if let Some(response) = self.response.take().filter(|_| !self.body_ended) {
                    release_body(response, RELEASE_GRACE);
                }
            }
            Err(_) => self.response = None,
            Ok(ChatEvent::Delta(_) | ChatEvent::ToolCall(_) | ChatEvent::Thinking(_)) => {
                if let Some(FinishGrace::Total(grace)) = self.options.finish_grace
                    && self.deadline.is_none()
                    && self.decoder.answer_complete()
                {
                    self.deadline = Some(Instant::now() + grace);
                }
            }
        }
    }

    /// When the next read must have come, if the answer is complete.
    fn read_deadline(&self) -> Option<Instant> {
        match self.options.finish_grace? {
            FinishGrace::EachRead(grace) => self.decoder.answer_complete().then(|| Instant::now() + grace),
            FinishGrace::Total(_) => self.deadline,
        }
    }

    /// "connection lost to Ollama at http://… mid-stream: …", the key masked.
    fn lost(&self, err: &reqwest::Error, when: &str) -> String {
        let text = format!("connection lost to {} {when}: {}", self.name, root_cause(err));
        crate::redact(&text, self.secret.as_ref())
    }
}

/// Ends a streamed response whose answer is complete, without keeping the caller waiting: what is
/// left of the body (normally just the end of the chunked encoding) is read for at most `grace`,
/// here if it has already arrived, else on a task of its own. Reading it lets the connection go
/// back to the pool; dropping a body that is still open closes the connection instead. The final
/// event must not wait for it: that would put one more network round on every call's latency.
fn release_body(mut response: Response, grace: Duration) {
    // Counted until the connection is back in the pool, so new requests on this thread wait a turn
    // for it rather than open another (`HttpClient::send`). hyper puts it back from a task that
    // reading the body's end wakes; a task spawned after that wake runs after it.
    let returning = client::Returning::new();
    let mut rest = Box::pin(async move { while let Ok(Some(_)) = response.chunk().await {} });
    if rest.as_mut().now_or_never().is_some() {
        tokio::spawn(async move { drop(returning) });
        return;
    }
    tokio::spawn(async move {
        // Arming a timer wakes the runtime's poller (tokio writes to its wake-up fd when a timer is
        // due sooner than any other), so it waits one turn of the scheduler: until the final event
        // has been written to the caller.
        tokio::task::yield_now().await;
        let _ = tokio::time::timeout(grace, rest).await;
        tokio::task::yield_now().await;
        drop(returning);
    });
}

#[cfg(test)]
mod tests {
    use copilot_provider::Completion;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server whose one reply is a chunked body holding `body` that never ends.
    async fn body_left_open(body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0; 1];
                if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                request.push(byte[0]);
            }
            let reply = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n", body.len());
            socket.write_all(reply.as_bytes()).await.unwrap();
            let _ = socket.read(&mut [0; 1]).await;
        });
        url
    }

    /// Each byte is a delta; a `!` completes the answer.
    #[derive(Default)]
    struct Letters {
        pending: Vec<u8>,
        complete: bool,
        finished: bool,
    }

    impl ChatStreamDecoder for Letters {
        fn push(&mut self, chunk: &[u8]) {
            self.pending.extend_from_slice(chunk);
        }

        fn end(&mut self) {}

        fn next_event(&mut self) -> Option<Result<ChatEvent, ProviderError>> {
            if self.finished || self.pending.is_empty() {
                return None;
            }
            let byte = self.pending.remove(0);
            self.complete |= byte == b'!';
            Some(Ok(ChatEvent::Delta(char::from(byte).to_string())))
        }

        fn buffered(&self) -> usize {
            self.pending.len()
        }

        fn answer_complete(&self) -> bool {
            self.complete
        }

        fn finish_now(&mut self) -> Option<ChatEvent> {
            self.finished = self.complete;
            self.complete.then(|| ChatEvent::done(Completion::default()))
        }
    }

    /// The events of `ab!` in a body left open, read with `finish_grace`, if they end within `wait`.
    async fn events(
        finish_grace: Option<FinishGrace>,
        wait: Duration,
    ) -> Option<Vec<Result<ChatEvent, ProviderError>>> {
        let url = body_left_open("ab!").await;
        let client =
            crate::adapter_client("test", Duration::from_secs(5), reqwest::header::HeaderMap::new(), |builder| builder)
                .unwrap();
        let upstream = Upstream::new(client, url.as_str(), Some("Test"), None);
        let response = upstream.get(&url).send().await.unwrap();
        let stream =
            upstream.chat_stream(response, Letters::default(), StreamOptions { whole_body: false, finish_grace });
        tokio::time::timeout(wait, stream.collect()).await.ok()
    }

    #[tokio::test]
    async fn a_body_left_open_after_the_answer_ends_with_the_finish_grace() {
        let delta = |text: &str| Ok(ChatEvent::Delta(text.into()));
        let grace = Duration::from_millis(100);
        for finish_grace in [FinishGrace::EachRead(grace), FinishGrace::Total(grace)] {
            let started = Instant::now();
            let events = events(Some(finish_grace), Duration::from_secs(5)).await.expect("the stream ended");
            assert_eq!(events, [delta("a"), delta("b"), delta("!"), Ok(ChatEvent::done(Completion::default()))]);
            assert!(started.elapsed() >= grace, "{finish_grace:?}: ended after {:?}", started.elapsed());
        }
        // Without a grace, the stream waits for the end of the body.
        assert_eq!(events(None, Duration::from_millis(500)).await, None);
    }
}
