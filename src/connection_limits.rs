//! Guards for the listeners against connections that hold a file descriptor and do nothing
//! (issue 14): a connection that has not sent the whole HTTP/2 preface within
//! `server.handshake_timeout` is closed, and at most `server.max_connections` are open at once
//! (past that the listener stops accepting, so new clients wait in the kernel's backlog).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The client connection preface every HTTP/2 connection opens with (RFC 9113, 3.4).
const PREFACE_LEN: usize = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".len();

/// The most connections open at once when `server.max_connections` is unset.
pub const MAX_CONNECTIONS_CEILING: usize = 10_000;

/// `server.max_connections` when unset: half the process's open-file limit (the other half is
/// left for upstream connections, listeners, TLS and model files and the log), at most 10,000,
/// at least 16. 10,000 when the limit cannot be read.
pub fn default_max_connections() -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => usize::try_from(soft / 2).unwrap_or(usize::MAX).clamp(16, MAX_CONNECTIONS_CEILING),
        Err(_) => MAX_CONNECTIONS_CEILING,
    }
}

/// A connection's I/O that fails reads with `TimedOut` once `timeout` has passed without the
/// client having sent the whole HTTP/2 preface; hyper then ends the connection and the socket
/// closes. After the preface it is the plain stream.
pub struct PrefaceTimeout<S> {
    inner: S,
    read: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> PrefaceTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        let deadline = Instant::now().checked_add(timeout).map(|at| Box::pin(tokio::time::sleep_until(at)));
        PrefaceTimeout { inner, read: 0, deadline }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefaceTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface in time")));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some() {
            this.read += buf.filled().len() - before;
            if this.read >= PREFACE_LEN {
                this.deadline = None;
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefaceTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How often at most the connection cap and accept errors are logged.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long accepting pauses after an accept error (out of file descriptors and the like).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts a listener's connections, at most `max` open at once: past that it waits for one to
/// close (back-pressure through the kernel's backlog, instead of accepting sockets there are no
/// descriptors for), with one warning per 10 s naming `cap_setting`; an accept error pauses it
/// briefly instead of spinning, with a rate-limited log line.
pub struct CappedAcceptor {
    slots: Arc<Semaphore>,
    max: usize,
    /// What the cap is, for the warning: the setting, or the listener.
    cap_setting: &'static str,
    at_cap_log: RateLimited,
    accept_error_log: RateLimited,
}

/// An open connection's place under the cap; the place is given back when it is dropped.
pub type ConnectionSlot = Option<OwnedSemaphorePermit>;

impl CappedAcceptor {
    pub fn new(max: usize, cap_setting: &'static str) -> Self {
        CappedAcceptor {
            slots: Arc::new(Semaphore::new(max)),
            max,
            cap_setting,
            at_cap_log: RateLimited::new(LIMIT_LOG_EVERY),
            accept_error_log: RateLimited::new(LIMIT_LOG_EVERY),
        }
    }

    /// The next connection, with its slot to hold until it closes. Cancel-safe.
    pub async fn accept(&mut self, listener: &TcpListener) -> (ConnectionSlot, TcpStream, SocketAddr) {
        loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    if let Some(suppressed) = self.at_cap_log.ready() {
                        tracing::warn!(
                            max_connections = self.max,
                            times_reached_since_last_warning = suppressed,
                            "connection limit reached: {} connections open ({}); not accepting new ones until one \
                             closes",
                            self.max,
                            self.cap_setting
                        );
                    }
                    // The semaphore is never closed; were it, connections would go uncounted.
                    self.slots.clone().acquire_owned().await.ok()
                }
            };
            match listener.accept().await {
                Ok((stream, peer)) => return (slot, stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like.
                    if let Some(suppressed) = self.accept_error_log.ready() {
                        tracing::warn!(error = %e, failures_since_last_warning = suppressed, "accept failed; pausing accepts briefly");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

/// A warning logged at most once per `every`, saying how often it was suppressed since.
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> Self {
        RateLimited { every, last: None, suppressed: 0 }
    }

    /// `Some(times suppressed since the last one)` when a line may be logged now, else `None`.
    pub fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_missing_preface_times_out_and_a_whole_one_disarms_the_timer() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut guarded = PrefaceTimeout::new(server, Duration::from_millis(300));
        client.write_all(&b"PRI * HTTP/2.0\r\n"[..]).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 16);
        let error = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "half a preface is not a preface");

        let (mut client, server) = tokio::io::duplex(1024);
        let mut guarded = PrefaceTimeout::new(server, Duration::from_millis(300));
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), PREFACE_LEN);
        tokio::time::sleep(Duration::from_secs(5)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(guarded.read(&mut buf).await.unwrap(), 1, "idle after the preface is fine");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_counts_what_it_suppressed() {
        let mut warn = RateLimited::new(Duration::from_secs(10));
        assert_eq!(warn.ready(), Some(0));
        assert_eq!(warn.ready(), None);
        assert_eq!(warn.ready(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(warn.ready(), Some(2));
    }

    #[test]
    fn the_default_cap_is_bounded() {
        let cap = default_max_connections();
        assert!((16..=MAX_CONNECTIONS_CEILING).contains(&cap), "{cap}");
    }
}
