//! The `copilot` command: `copilot serve` (the default) runs the gateway; `copilot models` manages the
//! embedded engine's model files; `copilot health` asks a running server whether it serves;
//! `copilot keys` makes API keys; `copilot doctor` checks a setup end to end.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cli::{doctor, health, keys, models};
use copilot::config::{Config, LogFormat, Overrides, Threading};

#[derive(Parser)]
#[command(name = "copilot", version, about = "A gRPC gateway to large language models")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service (the default when no command is given).
    Serve(ServeArgs),
    /// List, fetch and verify the embedded engine's pinned models.
    Models(models::ModelsArgs),
    /// Ask the server at the configured address whether it serves (exit 0) or not (exit 1), over
    /// gRPC health: a container health check without a shell.
    Health(health::HealthArgs),
    /// Make API keys for `[auth]`.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Check a setup end to end and print PASS/FAIL rows with what to do: this machine's
    /// configuration, its providers and models, and a real generation and chat through an
    /// in-process gateway; or, with --addr HOST:PORT, a running server. Exit 0 when every required
    /// check passes, 1 when one fails.
    Doctor(doctor::DoctorArgs),
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// The TOML configuration file.
    #[arg(long, env = "COPILOT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The address the gRPC listener binds (overrides the file and COPILOT_SERVER__ADDR); for
    /// `doctor`, the server to check (HOST:PORT).
    #[arg(long, env = "COPILOT_ADDR", global = true)]
    addr: Option<String>,
    /// Log as human-readable text or as JSON lines.
    #[arg(long, value_enum, env = "COPILOT_LOG_FORMAT", global = true)]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let (args, health) = match cli.command {
        Some(Command::Serve(args)) => (args, None),
        Some(Command::Models(args)) => return models::run(args),
        Some(Command::Keys(command)) => return keys::run(command),
        Some(Command::Health(health)) => (cli.serve, Some(health)),
        Some(Command::Doctor(doctor)) => {
            // Only an address on the command line means a remote check: COPILOT_ADDR says where
            // this machine's server binds, and the local check does not need it.
            let remote = cli.serve.addr.filter(|_| matches.value_source("addr") == Some(ValueSource::CommandLine));
            return doctor::run(doctor, remote, cli.serve.config);
        }
        None => (cli.serve, None),
    };
    let addr = match args.addr.as_deref().map(str::parse::<SocketAddr>).transpose() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("copilot: --addr (or COPILOT_ADDR) must be IP:PORT, e.g. 0.0.0.0:50051: {e}");
            return ExitCode::from(2);
        }
    };
    let overrides = Overrides { addr, log_format: args.log_format };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("copilot: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(health) = health {
        // The plaintext probe listener when there is one: it answers the same statuses.
        if let Some(addr) = config.server.health_addr {
            return health::run(health, addr);
        }
        if config.server.tls.is_some() {
            eprintln!(
                "copilot health: the listener speaks TLS (server.tls) and this check speaks plaintext; set \
                 server.health_addr for a plaintext probe listener, or use a TLS-capable gRPC health client \
                 (e.g. grpc_health_probe -tls)"
            );
            return ExitCode::from(2);
        }
        return health::run(health, config.server.addr);
    }
    // With per-connection threads (the default) the calls run on threads of their own
    // (`connection_threads.rs`) and this runtime only accepts connections and runs the probes, the
    // admin listeners and the exporters: one thread does.
    let mut runtime = match config.server.threading {
        Threading::PerConnection => tokio::runtime::Builder::new_current_thread(),
        Threading::WorkStealing => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = config.server.worker_threads {
                runtime.worker_threads(threads);
            }
            runtime
        }
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("copilot: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporters set up their gRPC channels on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        copilot::telemetry::init(&config.log, config.server.metrics_addr.is_some())
    };
    let prometheus = telemetry.prometheus.clone();
    let shutdown = {
        let _runtime = runtime.enter();
        shutdown_signal()
    };
    let served = runtime.block_on(copilot::server::serve(config, prometheus, shutdown));
    // Export what is still buffered (the exporters block while they do: keep them off the workers).
    runtime.block_on(async {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::task::spawn_blocking(move || telemetry.shutdown()),
        )
        .await;
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("copilot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed now, inside the runtime, not
/// when the future is first polled: a signal arriving between "listening" and that first poll
/// would otherwise kill the process without a drain.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let (mut terminate, mut interrupt) = handlers;
            let terminate = async {
                match terminate.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let interrupt = async {
                match interrupt.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = terminate => {}
                _ = interrupt => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
