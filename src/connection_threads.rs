//! Where accepted connections run: each on one thread from start to finish (the default), or on
//! the shared work-stealing runtime (`server.threading = "work-stealing"`).
//!
//! In the default mode each connection is served by a thread running its own single-threaded
//! tokio runtime, as Envoy's workers serve theirs; a new connection goes to the thread with the
//! fewest open ones.
//! A call's tasks (its HTTP/2 connection, the call, its upstream connection) then wake each other
//! on one thread. On the work-stealing runtime they wake each other across threads, and each such
//! wake-up is a futex call and, when the other core is idle, a slow wake of that core. Measured at
//! 1,000 Generate calls/s on the 2-core VM: 12.6 context switches and 311 µs of CPU per call with
//! two work-stealing workers, 4.3 and 251 µs on one thread (BENCHMARKS.md). The price: one
//! connection is served by one core, so a client that needs more than a core's worth of calls
//! (thousands per second) opens more connections.
//!
//! With a thread per CPU the process may use, each thread is also pinned to its CPU
//! (`server.pin_threads`): left to the kernel, a thread that sleeps between calls wakes on
//! whichever core is free and finds its caches cold there. Measured at 1,000 Generate calls/s on
//! the 2-core VM: 1.2 migrations and 202 µs of CPU per call unpinned, none and 155 µs pinned.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::config::PinThreads;

/// Runs connections: pinned to connection threads, or spawned on the current (work-stealing) runtime.
pub enum ConnectionRunner {
    PerConnection(ConnectionThreads),
    WorkStealing,
}

impl ConnectionRunner {
    /// Serves `stream` with `serve`, which runs on the thread (and runtime) that will own the
    /// connection, so the stream and everything `serve` spawns stay there.
    pub fn run<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self {
            ConnectionRunner::PerConnection(threads) => threads.run(stream, serve),
            ConnectionRunner::WorkStealing => {
                tokio::spawn(serve(stream));
            }
        }
    }
}

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Threads that each run a single-threaded runtime and the connections handed to them.
pub struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
}

struct ConnectionThread {
    jobs: mpsc::UnboundedSender<Job>,
    open: Arc<AtomicUsize>,
}

impl ConnectionThreads {
    /// Starts `count` threads (at least one), pinned to CPUs as `pin` says. They stop when this is
    /// dropped, ending the connections they still run (the server drops it after its drain).
    pub fn start(count: usize, pin: PinThreads) -> io::Result<Self> {
        let count = count.max(1);
        let cpus = pin_plan(count, &allowed_cpus(), pin);
        match &cpus {
            Some(cpus) => tracing::info!(threads = count, ?cpus, "connection threads pinned, one per CPU"),
            None => tracing::info!(threads = count, "connection threads not pinned to CPUs"),
        }
        let mut threads = Vec::with_capacity(count);
        let (running, started) = std::sync::mpsc::channel();
        for index in 0..count {
            let cpu = cpus.as_ref().map(|cpus| cpus[index]);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (jobs, mut incoming) = mpsc::unbounded_channel::<Job>();
            let running = running.clone();
            std::thread::Builder::new().name(format!("copilot-conn-{index}")).spawn(move || {
                if let Some(cpu) = cpu {
                    pin_current_thread(cpu);
                }
                let _ = running.send(());
                runtime.block_on(async move {
                    while let Some(job) = incoming.recv().await {
                        tokio::spawn(job());
                    }
                });
            })?;
            threads.push(ConnectionThread { jobs, open: Arc::new(AtomicUsize::new(0)) });
        }
        // Running (and named) before the server says it listens.
        for _ in 0..count {
            let _ = started.recv();
        }
        Ok(ConnectionThreads { threads })
    }

    fn run<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // The socket is registered with the accepting runtime's poller; it moves as a plain socket
        // and is registered again with the poller of the thread that serves it.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => return tracing::warn!(error = %e, "cannot hand an accepted connection over"),
        };
        let Some(thread) = self.threads.iter().min_by_key(|thread| thread.open.load(Ordering::Relaxed)) else {
            return;
        };
        let open = OpenConnection::count(&thread.open);
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _open = open;
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve(stream).await,
                    Err(e) => tracing::warn!(error = %e, "cannot register an accepted connection"),
                }
            })
        });
        if thread.jobs.send(job).is_err() {
            tracing::warn!("a connection thread has stopped; connection dropped");
        }
    }
}

/// The CPU for each of `threads` connection threads, or `None` to leave them unpinned: `auto` pins
/// only when there is exactly one thread per allowed CPU, since fewer threads than CPUs means a
/// share of a machine (a CPU quota, or `worker_threads` set lower), where a pinned thread could
/// not move away from a busy neighbour.
fn pin_plan(threads: usize, allowed: &[usize], pin: PinThreads) -> Option<Vec<usize>> {
    match pin {
        PinThreads::Never => None,
        _ if allowed.is_empty() => None,
        PinThreads::Auto if threads != allowed.len() => None,
        PinThreads::Auto | PinThreads::Always => Some((0..threads).map(|i| allowed[i % allowed.len()]).collect()),
    }
}

/// The CPUs this process may run on (its affinity mask, which a container's cpuset narrows).
fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the CPUs this process may use; threads stay unpinned");
            Vec::new()
        }
    }
}

fn pin_current_thread(cpu: usize) {
    let mut set = CpuSet::new();
    if let Err(e) = set.set(cpu).and_then(|()| sched_setaffinity(Pid::from_raw(0), &set)) {
        tracing::warn!(cpu, error = %e, "cannot pin a connection thread to its CPU; it stays unpinned");
    }
}

/// One open connection in its thread's count, until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn count(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_pins_only_with_one_thread_per_allowed_cpu() {
        assert_eq!(pin_plan(2, &[0, 1], PinThreads::Auto), Some(vec![0, 1]));
        assert_eq!(pin_plan(2, &[4, 6], PinThreads::Auto), Some(vec![4, 6]), "a cpuset's own CPUs");
        assert_eq!(pin_plan(2, &[0, 1, 2, 3], PinThreads::Auto), None, "a share of a bigger machine");
        assert_eq!(pin_plan(4, &[0, 1], PinThreads::Auto), None, "more threads than CPUs");
    }

    #[test]
    fn always_pins_round_robin_and_never_does_not() {
        assert_eq!(pin_plan(3, &[2, 5], PinThreads::Always), Some(vec![2, 5, 2]));
        assert_eq!(pin_plan(1, &[0, 1, 2, 3], PinThreads::Always), Some(vec![0]));
        assert_eq!(pin_plan(2, &[0, 1], PinThreads::Never), None);
        assert_eq!(pin_plan(2, &[], PinThreads::Always), None, "nothing known to pin to");
    }
}
