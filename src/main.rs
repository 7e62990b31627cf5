//! The `copilot` command: `copilot serve` (the default) runs the gateway; `copilot models` manages the
//! embedded engine's model files; `copilot health` asks a running server whether it serves;
//! `copilot keys` makes API keys; `copilot doctor` checks a setup end to end.

mod doctor_cmd;
mod health_cmd;
mod keys_cmd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
    Models(models_cmd::ModelsArgs),
    /// Ask the server at the configured address whether it serves (exit 0) or not (exit 1), over
    /// gRPC health: a container health check without a shell.
    Health(health_cmd::HealthArgs),
    /// Make API keys for `[auth]`.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Check a setup end to end and print PASS/FAIL rows with what to do: this machine's
    /// configuration, its providers and models, and a real generation and chat through an
    /// in-process gateway; or, with --addr HOST:PORT, a running server. Exit 0 when every required
    /// check passes, 1 when one fails.
    Doctor(doctor_cmd::DoctorArgs),
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
        Some(Command::Models(args)) => return models_cmd::run(args),
        Some(Command::Keys(command)) => return keys_cmd::run(command),
        Some(Command::Health(health)) => (cli.serve, Some(health)),
        Some(Command::Doctor(doctor)) => {
            // Only an address on the command line means a remote check: COPILOT_ADDR says where
            // this machine's server binds, and the local check does not need it.
            let remote = cli.serve.addr.filter(|_| matches.value_source("addr") == Some(ValueSource::CommandLine));
            return doctor_cmd::run(doctor, remote, cli.serve.config);
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
            return health_cmd::run(health, addr);
        }
        if config.server.tls.is_some() {
            eprintln!(
                "copilot health: the listener speaks TLS (server.tls) and this check speaks plaintext; set \
                 server.health_addr for a plaintext probe listener, or use a TLS-capable gRPC health client \
                 (e.g. grpc_health_probe -tls)"
            );
            return ExitCode::from(2);
        }
        return health_cmd::run(health, config.server.addr);
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

/// `copilot models`: the embedded engine's catalog of pinned model files and the directory that holds them.
mod models_cmd {
    #[cfg(feature = "embedded")]
    use std::path::Path;
    use std::path::PathBuf;
    use std::process::ExitCode;

    #[cfg(feature = "embedded")]
    use copilot_embedded::download::{self, CATALOG, CatalogModel, DEFAULT_CHAT_MODEL, FetchOptions, Status};

    #[derive(clap::Args)]
    pub struct ModelsArgs {
        /// The directory holding the model files [default: $XDG_CACHE_HOME/copilot/models, else ~/.cache/copilot/models].
        #[arg(long, env = "COPILOT_MODELS_DIR", global = true)]
        dir: Option<PathBuf>,
        #[command(subcommand)]
        command: ModelsCommand,
    }

    #[derive(clap::Subcommand)]
    enum ModelsCommand {
        /// Show the catalog and which models are on disk.
        List {
            /// Hash-check the files that are present (reads every byte).
            #[arg(long)]
            verify: bool,
        },
        /// Download, assemble and verify models (default: the default chat model).
        Fetch {
            /// Catalog names, as `copilot models list` shows them.
            #[arg(value_name = "NAME")]
            names: Vec<String>,
            /// Every model in the catalog.
            #[arg(long, conflicts_with = "names")]
            all: bool,
        },
        /// Hash-check model files on disk (default: every catalog model that is present).
        Verify {
            /// Catalog names, as `copilot models list` shows them.
            #[arg(value_name = "NAME")]
            names: Vec<String>,
        },
    }

    #[cfg(not(feature = "embedded"))]
    pub fn run(_args: ModelsArgs) -> ExitCode {
        eprintln!(
            "copilot: this build has no embedded engine (built without the `embedded` feature), so no models to manage"
        );
        ExitCode::from(2)
    }

    /// Each command returns its exit code; usage errors come back as `Err` so that `?` ends it early.
    #[cfg(feature = "embedded")]
    pub fn run(args: ModelsArgs) -> ExitCode {
        let dir = args.dir.unwrap_or_else(download::default_models_dir);
        let result = match args.command {
            ModelsCommand::List { verify } => list(&dir, verify),
            ModelsCommand::Fetch { names, all } => fetch(&dir, &names, all),
            ModelsCommand::Verify { names } => verify(&dir, &names),
        };
        result.unwrap_or_else(|code| code)
    }

    /// The catalog entries `names` refer to; an unknown name is a usage error.
    #[cfg(feature = "embedded")]
    fn resolve(names: &[String]) -> Result<Vec<&'static CatalogModel>, ExitCode> {
        names
            .iter()
            .map(|name| {
                download::find(name).ok_or_else(|| {
                    let known: Vec<&str> = CATALOG.iter().map(|m| m.name).collect();
                    eprintln!("copilot: no model {name:?} in the catalog; it has {}", known.join(", "));
                    ExitCode::from(2)
                })
            })
            .collect()
    }

    #[cfg(feature = "embedded")]
    fn list(dir: &Path, verify: bool) -> Result<ExitCode, ExitCode> {
        let name_width = CATALOG.iter().map(|m| m.name.len()).max().unwrap_or(0) + 2;
        let file_width = CATALOG.iter().map(|m| m.file_name.len()).max().unwrap_or(0);
        println!("models in {}", dir.display());
        println!("{:<name_width$}  {:<file_width$}  {:>8}  STATUS", "NAME", "FILE", "MiB");
        for model in CATALOG {
            let status = download::status(model, dir, verify);
            let name =
                if model.name == DEFAULT_CHAT_MODEL { format!("{} *", model.name) } else { model.name.to_owned() };
            let mib = model.size as f64 / (1024.0 * 1024.0);
            println!("{name:<name_width$}  {:<file_width$}  {mib:>8.1}  {}", model.file_name, status.label());
            if let Status::Mismatch { detail } = status {
                println!("    {detail}");
            }
        }
        println!("* the default chat model");
        Ok(ExitCode::SUCCESS)
    }

    #[cfg(feature = "embedded")]
    fn fetch(dir: &Path, names: &[String], all: bool) -> Result<ExitCode, ExitCode> {
        let models = match (all, names.is_empty()) {
            (true, _) => CATALOG.iter().collect(),
            (false, true) => resolve(&[DEFAULT_CHAT_MODEL.to_owned()])?,
            (false, false) => resolve(names)?,
        };
        let opts = FetchOptions { progress: true, ..FetchOptions::for_dir(dir) };
        let mut failed = false;
        for model in models {
            match download::fetch(model, dir, &opts) {
                Ok(path) => println!("{}: {} (verified)", model.name, path.display()),
                Err(e) => {
                    eprintln!("copilot: fetching {} failed: {e}", model.name);
                    failed = true;
                }
            }
        }
        Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    }

    #[cfg(feature = "embedded")]
    fn verify(dir: &Path, names: &[String]) -> Result<ExitCode, ExitCode> {
        // Named models must be there; without names, whatever is on disk is checked.
        let (models, explicit) =
            if names.is_empty() { (CATALOG.iter().collect(), false) } else { (resolve(names)?, true) };
        let mut failed = false;
        for model in models {
            match download::status(model, dir, true) {
                Status::Verified => println!("{}: verified {}", model.name, dir.join(model.file_name).display()),
                Status::Missing if explicit => {
                    println!(
                        "{}: missing from {}; run `copilot models fetch {}`",
                        model.name,
                        dir.display(),
                        model.name
                    );
                    failed = true;
                }
                Status::Missing => println!("{}: missing (skipped)", model.name),
                Status::Mismatch { detail } => {
                    println!(
                        "{}: MISMATCH: {detail}; run `copilot models fetch {}` to rebuild it",
                        model.name, model.name
                    );
                    failed = true;
                }
                // `status` with the hash check never stops at "present".
                Status::Present => unreachable!("status was asked to check the hash"),
            }
        }
        Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    }
}
