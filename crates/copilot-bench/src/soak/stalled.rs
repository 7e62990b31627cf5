//! Hostile actor 1, stalled bodies: `Generate` streams whose gRPC frame header declares a large
//! message and that send most of it, then nothing more, ever. Many on each of a few connections,
//! each re-opened when the server ends it (a new connection when the server closes one), at a
//! bounded rate of new streams. Counts how the server ended them and how long they lived; the ones
//! it never ended are counted at the end with their age.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::task::JoinSet;

use super::raw::{self, RawBody, RawConnection};
use super::tally::{Stop, Tally};

/// The label of streams the server had not ended when the soak stopped.
pub const STILL_OPEN: &str = "still open at the end";

/// A pause after a failed connection attempt, so a server that refuses connections is not
/// hammered.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct StalledArgs {
    /// Stalled bodies: connections (0 turns the actor off).
    #[arg(long, default_value_t = 2)]
    pub stalled_connections: u32,
    /// Stalled bodies: streams kept open on each connection.
    #[arg(long, default_value_t = 100)]
    pub stalled_streams: u32,
    /// Stalled bodies: the message length each frame header declares (under the server's
    /// limits.max_message_bytes, 4 MiB by default, so the size alone is not refused).
    #[arg(long, default_value_t = 4_000_000)]
    pub stalled_declared_bytes: u32,
    /// Stalled bodies: the bytes of it actually sent before the stall.
    #[arg(long, default_value_t = 3_500_000)]
    pub stalled_sent_bytes: u32,
    /// Stalled bodies: at most this many new streams a second over all connections (the first
    /// fill included), so a server that ends them at once costs a bounded client CPU.
    #[arg(long, default_value_t = 20.0)]
    pub stalled_rate: f64,
}

/// Releases one new stream every 1/rate seconds, whoever asks (tokio's clock, for tests).
struct Pacer {
    next: tokio::sync::Mutex<tokio::time::Instant>,
    interval: Duration,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Pacer {
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            interval: Duration::from_secs_f64(1.0 / rate.max(0.01)),
        }
    }

    /// Waits for this caller's turn.
    async fn turn(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Runs the actor until `stop`; every stream's end goes to `streams`, every connection's to
/// `connections`.
pub async fn run(args: StalledArgs, addr: String, stop: Stop, streams: Tally, connections: Tally) {
    if args.stalled_connections == 0 || args.stalled_streams == 0 {
        return;
    }
    let sent = args.stalled_sent_bytes.min(args.stalled_declared_bytes) as usize;
    // One buffer for every stream: each request body is a cheap clone of it.
    let body = raw::grpc_frame(args.stalled_declared_bytes, &vec![b'x'; sent]);
    let pacer = Arc::new(Pacer::new(args.stalled_rate));
    let mut tasks = JoinSet::new();
    for _ in 0..args.stalled_connections {
        let job = Connection {
            addr: addr.clone(),
            streams_per_connection: args.stalled_streams,
            body: body.clone(),
            pacer: pacer.clone(),
            streams: streams.clone(),
            connections: connections.clone(),
        };
        tasks.spawn(job.run(stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

struct Connection {
    addr: String,
    streams_per_connection: u32,
    body: Bytes,
    pacer: Arc<Pacer>,
    streams: Tally,
    connections: Tally,
}

impl Connection {
    /// One connection after another, each filled with stalled streams until the server closes it.
    async fn run(self, mut stop: Stop) {
        while !stop.is_set() {
            let connection = match RawConnection::open(&self.addr).await {
                Ok(connection) => connection,
                Err(error) => {
                    self.connections.add("connect failed", error.to_string());
                    stop.sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            };
            let opened = Instant::now();
            let mut slots = JoinSet::new();
            for _ in 0..self.streams_per_connection {
                slots.spawn(slot(
                    connection.sender.clone(),
                    self.body.clone(),
                    self.pacer.clone(),
                    self.streams.clone(),
                    stop.clone(),
                ));
            }
            while slots.join_next().await.is_some() {}
            let label = if stop.is_set() && !connection.is_closed() { STILL_OPEN } else { "closed by the server" };
            self.connections.add_timed(label, "", opened.elapsed());
        }
    }
}

/// One stream at a time on `sender`, each stalled, re-opened when the server ends it, until the
/// connection is gone or the soak stops.
async fn slot(
    mut sender: hyper::client::conn::http2::SendRequest<RawBody>,
    body: Bytes,
    pacer: Arc<Pacer>,
    streams: Tally,
    mut stop: Stop,
) {
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = pacer.turn() => {}
        }
        if sender.is_closed() {
            return;
        }
        let started = Instant::now();
        let request = raw::grpc_request("Generate", RawBody::stalled_after(body.clone()));
        // No limit of its own: how long the server lets a stalled stream live is what is measured.
        let ended = tokio::select! {
            _ = stop.wait() => None,
            ended = raw::call(&mut sender, request, Duration::MAX) => Some(ended),
        };
        match ended {
            None => {
                streams.add_timed(STILL_OPEN, "the server had not ended it", started.elapsed());
                return;
            }
            Some(ended) => {
                streams.add_timed(&ended.label, &ended.detail, started.elapsed());
                if ended.lost_connection() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_turns_whoever_asks() {
        let pacer = Arc::new(Pacer::new(10.0));
        let start = tokio::time::Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..5 {
            let pacer = pacer.clone();
            tasks.spawn(async move {
                pacer.turn().await;
                tokio::time::Instant::now()
            });
        }
        let mut times = Vec::new();
        while let Some(at) = tasks.join_next().await {
            times.push(at.unwrap() - start);
        }
        times.sort();
        assert_eq!(times.last().copied().unwrap(), Duration::from_millis(400));
    }
}
