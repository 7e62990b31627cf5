//! `copilot models`: the embedded engine's catalog of pinned model files and the directory that holds them.

#[cfg(feature = "embedded")]
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "embedded")]
use copilot_embedded::download::{
    self, CATALOG, CatalogModel, DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL, FetchOptions, Status,
};

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
    /// Download, assemble and verify models (default: the default chat and embedding models).
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
        let name = match model.name {
            DEFAULT_CHAT_MODEL => format!("{} *", model.name),
            DEFAULT_EMBEDDING_MODEL => format!("{} +", model.name),
            _ => model.name.to_owned(),
        };
        let mib = model.size as f64 / (1024.0 * 1024.0);
        println!("{name:<name_width$}  {:<file_width$}  {mib:>8.1}  {}", model.file_name, status.label());
        if let Status::Mismatch { detail } = status {
            println!("    {detail}");
        }
    }
    println!("* the default chat model, + the default embedding model");
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "embedded")]
fn fetch(dir: &Path, names: &[String], all: bool) -> Result<ExitCode, ExitCode> {
    let models = match (all, names.is_empty()) {
        (true, _) => CATALOG.iter().collect(),
        (false, true) => resolve(&[DEFAULT_CHAT_MODEL.to_owned(), DEFAULT_EMBEDDING_MODEL.to_owned()])?,
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
    let (models, explicit) = if names.is_empty() { (CATALOG.iter().collect(), false) } else { (resolve(names)?, true) };
    let mut failed = false;
    for model in models {
        match download::status(model, dir, true) {
            Status::Verified => println!("{}: verified {}", model.name, dir.join(model.file_name).display()),
            Status::Missing if explicit => {
                println!("{}: missing from {}; run `copilot models fetch {}`", model.name, dir.display(), model.name);
                failed = true;
            }
            Status::Missing => println!("{}: missing (skipped)", model.name),
            Status::Mismatch { detail } => {
                println!("{}: MISMATCH: {detail}; run `copilot models fetch {}` to rebuild it", model.name, model.name);
                failed = true;
            }
            // `status` with the hash check never stops at "present".
            Status::Present => unreachable!("status was asked to check the hash"),
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
