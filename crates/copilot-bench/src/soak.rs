//! `copilot-bench soak`: a hostile mix against one Copilot with a legitimate load beside it, for a
//! few minutes (issue 14's soak). Five hostile actors, each on connections of its own — stalled
//! request bodies (`soak/stalled.rs`), idle pre-preface sockets and garbage bytes
//! (`soak/sockets.rs`), big metadata, random messages and cancels (`soak/calls.rs`) — run beside
//! legitimate `Generate` and `Chat` callers whose every answer is checked (`soak/legit.rs`), while
//! the server's RSS, open fds and threads are read every second (`soak/watch.rs`). Then the actors
//! stop, the fds are given time to settle, the server is stopped and its log's panics counted. The
//! report (`soak/report.rs`) says what every actor saw; the run fails if a legitimate call failed, a
//! panic was logged, the server died, or the RSS or fd bounds given were crossed.

mod calls;
mod legit;
mod raw;
mod report;
mod sockets;
mod stalled;
mod tally;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use self::calls::{CallArgs, Models};
use self::legit::{Legit, LegitArgs};
use self::report::SoakReport;
use self::sockets::SocketArgs;
use self::stalled::StalledArgs;
use self::tally::{Stop, Tally};
use crate::overhead::{UpstreamKind, copilot_config};
use crate::procs::{self, Process, TempFile};
use crate::{BoxError, report as common};

/// How long the actors may take to wind down after the stop before they are aborted.
const WIND_DOWN: Duration = Duration::from_secs(30);

/// How often a progress line is printed on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct SoakCmd {
    /// How long the hostile mix and the legitimate load run.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// After the actors stop, how long to wait at most for the server's open fds to come back to
    /// their level before the run (the server closes what the actors left behind).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// Fail if the server's RSS ever exceeds this many MiB.
    #[arg(long)]
    pub max_rss_mib: Option<u64>,
    /// Fail if the server has more than this many open fds more after the settle than before
    /// the run.
    #[arg(long, default_value_t = 5)]
    pub max_fd_growth: u64,
    /// A Copilot already running (http://host:port) that serves --model and --endless-model;
    /// default: start one (and a fake upstream) here.
    #[arg(long)]
    pub addr: Option<String>,
    /// With --addr: the server's process id, for its RSS, fds and threads (Linux /proc).
    #[arg(long, requires = "addr")]
    pub pid: Option<u32>,
    /// With --addr: a model that echoes ("You said: PROMPT"), as fake-ollama's llama3.2:3b.
    #[arg(long, default_value = "ollama/llama3.2:3b")]
    pub model: String,
    /// With --addr: a model that streams " tok" chunks up to max_tokens, as fake-ollama's endless.
    #[arg(long, default_value = "ollama/endless")]
    pub endless_model: String,
    /// The Copilot to start (default: target/release/copilot, else target/debug/copilot).
    #[arg(long)]
    pub copilot_bin: Option<PathBuf>,
    /// The fake upstream to start (default: target/release/fake-ollama, else target/debug/…).
    #[arg(long)]
    pub fake_bin: Option<PathBuf>,
    /// The fake's pause before each chunk: what keeps the big-metadata round's other call
    /// streaming while the big call arrives, and cancelled calls mid-stream.
    #[arg(long, default_value_t = 2)]
    pub token_delay_ms: u64,
    /// Also write the started server's whole output to this file.
    #[arg(long)]
    pub server_log: Option<PathBuf>,
    /// Seed of the random bytes and delays (a run can be repeated exactly as far as the client's
    /// choices go).
    #[arg(long, default_value_t = 14)]
    pub seed: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub legit: LegitArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub stalled: StalledArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub sockets: SocketArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub calls: CallArgs,
    /// Also write everything as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The server under soak: where it is, and what was started here for it.
struct Server {
    addr: String,
    pid: Option<u32>,
    copilot: Option<Process>,
    fake: Option<Process>,
    description: String,
    _config: Option<TempFile>,
}

impl Server {
    async fn start_or_connect(cmd: &SoakCmd) -> Result<Self, BoxError> {
        if let Some(addr) = &cmd.addr {
            let description = format!("a running Copilot at {addr} (given with --addr)");
            return Ok(Server {
                addr: procs::with_scheme(addr),
                pid: cmd.pid,
                copilot: None,
                fake: None,
                description,
                _config: None,
            });
        }
        let fake_bin = procs::find_binary(cmd.fake_bin.as_deref(), "fake-ollama")?;
        let (fake, upstream) =
            procs::start_fake(&fake_bin, "fake-ollama", &[("--token-delay-ms", cmd.token_delay_ms)]).await?;
        let copilot_bin = procs::find_binary(cmd.copilot_bin.as_deref(), "copilot")?;
        let config = TempFile::write("soak.toml", &copilot_config(UpstreamKind::Ollama, &upstream))?;
        let (copilot, addr) = procs::start_copilot(&copilot_bin, &config.0, cmd.server_log.as_deref()).await?;
        let debug = if copilot_bin.components().any(|c| c.as_os_str() == "debug") { ", a DEBUG build" } else { "" };
        let description = format!(
            "{} (pid {}{debug}) at {addr}, started here with its default limits; upstream {} (pid {}) at {upstream}, \
             --token-delay-ms {}",
            copilot_bin.display(),
            copilot.pid,
            fake_bin.display(),
            fake.pid,
            cmd.token_delay_ms
        );
        Ok(Server {
            addr: procs::with_scheme(&addr),
            pid: Some(copilot.pid),
            copilot: Some(copilot),
            fake: Some(fake),
            description,
            _config: Some(config),
        })
    }
}

/// Every actor's tallies.
#[derive(Clone, Default)]
struct Tallies {
    stalled_streams: Tally,
    stalled_connections: Tally,
    idle_sockets: Tally,
    garbage_sockets: Tally,
    random_messages: Tally,
    cancels: Tally,
    metadata: Arc<Mutex<BTreeMap<String, calls::MetadataCase>>>,
}

pub async fn run(cmd: SoakCmd) -> Result<ExitCode, BoxError> {
    let started_unix_s = common::unix_now();
    let mut server = Server::start_or_connect(&cmd).await?;
    eprintln!("soak: {}", server.description);
    let result = soak(&cmd, &mut server, started_unix_s).await;
    let log = match server.copilot.take() {
        Some(copilot) => Some(copilot.stop().await),
        None => None,
    };
    if let Some(fake) = server.fake.take() {
        fake.stop().await;
    }
    let mut report = result?;
    report.server_log = log;
    report.checks = report::checks(&cmd, &report);
    print!("{}", report::render(&report));
    if let Some(path) = &cmd.json {
        common::write_json(path, &report).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(if report.checks.iter().all(|check| check.passed) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The run itself, with the server up: the report without the server's log and the checks.
async fn soak(cmd: &SoakCmd, server: &mut Server, started_unix_s: u64) -> Result<SoakReport, BoxError> {
    let models = Models { echo: cmd.model.clone(), endless: cmd.endless_model.clone() };
    // A server that cannot serve the legitimate calls at all is a setup error, not a soak result.
    let warmup = Legit::default();
    for chat in [false, true] {
        warmup.once(&server.addr, &models.echo, chat, cmd.legit.legit_timeout).await.map_err(|ended| {
            format!("the server does not serve a legitimate call before the soak: {} ({})", ended.label, ended.detail)
        })?;
    }
    let before = server.pid.map(watch::read).transpose().map_err(|e| format!("cannot read the server's /proc: {e}"))?;

    let zero = Instant::now();
    let watcher = server.pid.map(|pid| watch::Watcher::start(pid, zero));
    let (stop_sender, stop) = Stop::new();
    let tallies = Tallies::default();
    let legit = Legit::default();
    let mut actors = JoinSet::new();
    spawn_actors(&mut actors, cmd, &server.addr, &models, &stop, &tallies, &legit);

    let mut progress = tokio::time::interval_at((zero + PROGRESS_EVERY).into(), PROGRESS_EVERY);
    let deadline = tokio::time::sleep(cmd.duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = progress.tick() => eprintln!("{}", progress_line(zero, watcher.as_ref(), &legit)),
        }
        if let Some(copilot) = server.copilot.as_mut()
            && !copilot.is_running()
        {
            eprintln!("soak: the server has exited; stopping");
            break;
        }
    }
    let hostile_s = zero.elapsed().as_secs_f64();
    let _ = stop_sender.send(true);
    if tokio::time::timeout(WIND_DOWN, async { while actors.join_next().await.is_some() {} }).await.is_err() {
        eprintln!("soak: some actors had not stopped {WIND_DOWN:?} after the stop; aborting them");
        actors.abort_all();
    }
    let at_stop = watcher.as_ref().and_then(|w| w.now().1);

    // The server closes what the actors left (their connections are gone): wait for its fds to
    // come back to where they were, or for the settle time to run out (then the tolerance
    // decides: an upstream connection pool may keep a few connections the load opened).
    let settle_started = Instant::now();
    let mut after = None;
    if let Some(pid) = server.pid {
        let target = before.map_or(0, |b| b.fds);
        loop {
            after = watch::read(pid).ok().map(|r| watch::Reading { at_s: watch::seconds_since(zero), ..r });
            if after.is_none_or(|a| a.fds <= target) || settle_started.elapsed() >= cmd.settle {
                break;
            }
            tokio::time::sleep(watch::INTERVAL).await;
        }
    }
    let settled_s = settle_started.elapsed().as_secs_f64();

    // The server still serves, after everything.
    let mut served_after = Vec::new();
    for chat in [false, true] {
        let result = legit.once(&server.addr, &models.echo, chat, cmd.legit.legit_timeout).await;
        served_after.push(result.map_or_else(|ended| format!("{}: {}", ended.label, ended.detail), |()| "OK".into()));
    }
    let (readings, peaks, read_failure) = match watcher {
        Some(watcher) => {
            let (readings, peaks, failure) = watcher.stop();
            (readings, Some(peaks), failure)
        }
        None => (Vec::new(), None, None),
    };
    let server_running = server.copilot.as_mut().map(Process::is_running);
    let metadata = tallies.metadata.lock().map(|cases| calls::metadata_report(&cases)).unwrap_or_default();
    Ok(SoakReport {
        mode: "soak",
        started_unix_s,
        config: cmd.clone(),
        server: server.description.clone(),
        hostile_s,
        legit: legit.report(),
        served_after,
        stalled_streams: tallies.stalled_streams.report(),
        stalled_connections: tallies.stalled_connections.report(),
        idle_sockets: tallies.idle_sockets.report(),
        metadata,
        garbage_sockets: tallies.garbage_sockets.report(),
        random_messages: tallies.random_messages.report(),
        cancels: tallies.cancels.report(),
        process: report::ProcessFigures { before, peaks, at_stop, after, settled_s, readings, read_failure },
        server_running,
        server_log: None,
        checks: Vec::new(),
    })
}

/// Starts the legitimate load and every hostile actor on `actors`, each until `stop`.
fn spawn_actors(
    actors: &mut JoinSet<()>,
    cmd: &SoakCmd,
    addr: &str,
    models: &Models,
    stop: &Stop,
    tallies: &Tallies,
    legit: &Legit,
) {
    let (legit, args, echo, signal) = (legit.clone(), cmd.legit.clone(), models.echo.clone(), stop.clone());
    let target = addr.to_owned();
    actors.spawn(async move { legit.run(&args, &target, &echo, signal).await });
    let t = tallies.clone();
    let a = || addr.to_owned();
    actors.spawn(stalled::run(cmd.stalled.clone(), a(), stop.clone(), t.stalled_streams, t.stalled_connections));
    actors.spawn(sockets::idle(cmd.sockets.clone(), a(), stop.clone(), t.idle_sockets));
    actors.spawn(sockets::garbage(cmd.sockets.clone(), a(), stop.clone(), t.garbage_sockets, cmd.seed));
    // Random messages go at the rate of garbage connections: both are "random bytes".
    actors.spawn(calls::random_messages(cmd.sockets.garbage_rate, a(), stop.clone(), t.random_messages, cmd.seed + 1));
    actors.spawn(calls::big_metadata(cmd.calls.metadata_every, a(), models.clone(), stop.clone(), t.metadata));
    let endless = models.endless.clone();
    actors.spawn(calls::cancels(cmd.calls.clone(), a(), endless, stop.clone(), t.cancels, cmd.seed + 2));
}

/// `[1m30s] RSS 123.4 MiB (peak 150.0), fds 230, threads 5; legitimate calls 1800 ok, 0 failed`.
fn progress_line(zero: Instant, watcher: Option<&watch::Watcher>, legit: &Legit) -> String {
    let elapsed = humantime::format_duration(Duration::from_secs(zero.elapsed().as_secs()));
    let server = match watcher.map(watch::Watcher::now) {
        Some((peaks, Some(last))) => format!(
            "RSS {} MiB (peak {}), fds {}, threads {}",
            common::mib(Some(last.rss_bytes)),
            common::mib(Some(peaks.rss_bytes)),
            last.fds,
            last.threads
        ),
        _ => "server not read".to_owned(),
    };
    let legit = legit.report();
    format!("soak [{elapsed}] {server}; legitimate calls {} ok, {} failed", legit.ok, legit.failed)
}
