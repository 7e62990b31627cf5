//! `scripts/build-pgo --find-profdata`: which llvm-profdata it takes for the LLVM that rustc was
//! built with, on prepared layouts (`PGO_TOOL_ROOT`) and stub commands, with nothing of the host's
//! toolchain on PATH. (`scripts/test` runs `--check` for real on the machine's own toolchain.)

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::prereqs::{host_tool, stub_layout};

/// The commands the script itself runs on the way to its answer, linked from the host.
const TOOLS: &[&str] = &["bash", "dirname", "sed", "head", "id"];

/// A machine whose rustc says it was built with LLVM 22.1.2, its sysroot at /opt/rust.
struct Machine {
    dir: TempDir,
    root: PathBuf,
    bin: PathBuf,
}

struct Found {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Machine {
    fn new() -> Self {
        let (dir, root, bin) = stub_layout(TOOLS);
        let machine = Machine { dir, root, bin };
        machine.stub(
            "rustc",
            "case \"$1\" in\n  -vV) printf 'rustc 1.95.0\\nhost: x86_64-unknown-linux-gnu\\nLLVM version: 22.1.2\\n' ;;\n  --print) echo /opt/rust ;;\nesac",
        );
        machine
    }

    /// A command on PATH that runs `body` as a shell script.
    fn stub(&self, name: &str, body: &str) -> PathBuf {
        executable(&self.bin.join(name), body)
    }

    /// An llvm-profdata at `path` (under the root) or, for a bare name, on PATH, of LLVM `version`.
    fn profdata(&self, place: &str, version: &str) -> PathBuf {
        let body = format!("[ \"$1\" = --version ] && printf 'LLVM (http://llvm.org/):\\n  LLVM version {version}\\n'");
        if place.contains('/') { executable(&self.root.join(place), &body) } else { self.stub(place, &body) }
    }

    fn find(&self) -> Found {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-pgo");
        let output = Command::new(&script)
            .arg("--find-profdata")
            .env_clear()
            .env("PATH", &self.bin)
            .env("PGO_TOOL_ROOT", &self.root)
            .env("TMPDIR", self.dir.path())
            .output()
            .expect("run scripts/build-pgo");
        Found {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Found {
    fn is(&self, path: &Path) {
        assert_eq!(self.code, Some(0), "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        assert_eq!(self.stdout, path.display().to_string(), "stderr: {}", self.stderr);
    }
}

/// A shell script at `path`, replacing what was there (never writing through a link to the host's tool).
fn executable(path: &Path, body: &str) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    if path.symlink_metadata().is_ok() {
        fs::remove_file(path).unwrap();
    }
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_owned()
}

#[test]
fn an_llvm_profdata_of_another_llvm_is_not_taken() {
    let machine = Machine::new();
    machine.profdata("llvm-profdata", "14.0.6");
    machine.profdata("llvm-profdata-14", "14.0.6");
    machine.profdata("usr/lib/llvm-14/bin/llvm-profdata", "14.0.6");
    let found = machine.find();
    assert_eq!(found.code, Some(1), "{}", found.stderr);
    assert!(found.stdout.is_empty(), "{}", found.stdout);
    assert!(
        found.stderr.contains("no llvm-profdata for LLVM 22") && found.stderr.contains("llvm-22"),
        "the message names the version to install: {}",
        found.stderr
    );
}

#[test]
fn the_versioned_command_is_found() {
    let machine = Machine::new();
    machine.profdata("llvm-profdata", "14.0.6");
    let wanted = machine.profdata("llvm-profdata-22", "22.1.8");
    machine.find().is(&wanted);
}

#[test]
fn debians_llvm_directory_is_found() {
    let machine = Machine::new();
    let wanted = machine.profdata("usr/lib/llvm-22/bin/llvm-profdata", "22.1.8");
    machine.find().is(&wanted);
}

#[test]
fn an_unversioned_llvm_profdata_of_the_same_llvm_is_taken() {
    let machine = Machine::new();
    let wanted = machine.profdata("llvm-profdata", "22.1.0");
    machine.find().is(&wanted);
}

#[test]
fn rustups_llvm_tools_come_first() {
    let machine = Machine::new();
    machine.profdata("llvm-profdata-22", "22.1.8");
    let wanted = machine.profdata("opt/rust/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-profdata", "22.1.2");
    machine.find().is(&wanted);
}

#[test]
fn a_version_that_only_starts_alike_is_not_the_same() {
    let machine = Machine::new();
    machine.profdata("llvm-profdata", "2.2");
    machine.profdata("llvm-profdata-22", "220.0.1");
    assert_eq!(machine.find().code, Some(1));
}

#[test]
fn debians_llvm_of_rustcs_version_is_installed_when_none_is_there() {
    let machine = Machine::new();
    machine.profdata("llvm-profdata", "14.0.6");
    let log = machine.dir.path().join("apt.log");
    let installed = machine.bin.join("llvm-profdata-22");
    machine.stub(
        "apt-get",
        &format!(
            "echo \"$*\" >> {log}\ncase \"$*\" in *install*llvm-22*) printf '#!/bin/sh\\n[ \"$1\" = --version ] && echo \"  LLVM version 22.1.8\"\\n' > {installed} && {chmod} 755 {installed} ;; esac",
            log = log.display(),
            installed = installed.display(),
            chmod = host_tool("chmod").display()
        ),
    );
    machine.stub("id", "echo 0");
    machine.find().is(&installed);
    let calls = fs::read_to_string(&log).unwrap();
    assert!(calls.lines().any(|line| line.starts_with("update")), "the package lists first: {calls}");
    assert!(
        calls.lines().any(|line| line.contains("install") && line.split_whitespace().any(|word| word == "llvm-22")),
        "{calls}"
    );
}

#[test]
fn an_install_that_brings_no_llvm_profdata_fails_with_what_to_install() {
    let machine = Machine::new();
    machine.stub("apt-get", "exit 0");
    machine.stub("id", "echo 0");
    let found = machine.find();
    assert_eq!(found.code, Some(1), "{}", found.stderr);
    assert!(found.stderr.contains("llvm-tools") && found.stderr.contains("llvm-22"), "{}", found.stderr);
}
