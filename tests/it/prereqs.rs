//! `scripts/install-build-deps --check`: which Debian packages it reports missing for prepared
//! directory layouts (`PREREQ_ROOT`) and stub commands, in an environment that holds nothing else:
//! the host's own compilers, cmake, libclang and Python never leak in.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// The commands the script itself runs, linked from the host into the stub bin dir.
const TOOLS: &[&str] = &["bash", "mktemp", "rm", "dirname", "readlink", "head", "od", "tr", "sed", "grep", "id", "cat"];

/// A 64-bit ELF header's first bytes (magic and class 2), which is all the check reads.
const ELF64: &[u8] = &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const ELF32: &[u8] = &[0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A machine for the script: `root` is its PREREQ_ROOT, `bin` its whole PATH.
struct Machine {
    dir: TempDir,
    root: PathBuf,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

/// What `--check` printed: the package column of each line, and the whole output.
struct Check {
    code: Option<i32>,
    packages: Vec<String>,
    output: String,
}

impl Machine {
    /// Working compilers, cmake 3.25.1, make and the CA bundle; no libclang, no Python.
    fn new() -> Self {
        let (dir, root, bin) = stub_layout(TOOLS);
        let machine = Machine { dir, root, bin, env: Vec::new() };
        machine.stub("cc", "exit 0");
        machine.stub("c++", "exit 0");
        machine.stub("cmake", "echo 'cmake version 3.25.1'; echo; echo 'CMake suite maintained by Kitware'");
        machine.stub("make", "exit 0");
        machine.file("etc/ssl/certs/ca-certificates.crt", b"-----BEGIN CERTIFICATE-----\n");
        machine
    }

    /// A command on PATH that runs `body` as a shell script.
    fn stub(&self, name: &str, body: &str) {
        let path = self.bin.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn remove_stub(&self, name: &str) {
        fs::remove_file(self.bin.join(name)).unwrap();
    }

    /// A file under the root, with its parent directories.
    fn file(&self, relative: &str, contents: &[u8]) -> PathBuf {
        write_file(&self.root.join(relative), contents)
    }

    /// A symbolic link under the root pointing at `target` as given (relative stays relative).
    fn link(&self, relative: &str, target: &str) {
        let path = self.root.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }

    /// A directory outside the root (for LIBCLANG_PATH).
    fn outside(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::create_dir_all(&path).unwrap();
        path
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    fn check(&self, purpose: &str) -> Check {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-build-deps");
        let output = Command::new(&script)
            .args(["--check", "--for", purpose])
            .env_clear()
            .env("PATH", &self.bin)
            .env("PREREQ_ROOT", &self.root)
            .env("TMPDIR", self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run scripts/install-build-deps");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let packages = stdout.lines().map(|line| line.split('\t').next().unwrap_or("").to_owned()).collect();
        Check { code: output.status.code(), packages, output: format!("stdout:\n{stdout}stderr:\n{stderr}") }
    }
}

impl Check {
    /// Exactly these packages, in this order, and the exit code that goes with them.
    fn missing(&self, expected: &[&str]) {
        assert_eq!(self.packages, expected, "{}", self.output);
        let code = if expected.is_empty() { 0 } else { 1 };
        assert_eq!(self.code, Some(code), "{}", self.output);
    }

    /// The reason printed for `package`.
    fn reason(&self, package: &str) -> String {
        self.output
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{package}\t")))
            .unwrap_or_else(|| panic!("no line for {package}: {}", self.output))
            .to_owned()
    }
}

fn write_file(path: &Path, contents: &[u8]) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
    path.to_owned()
}

/// clang's own headers, `clang/<version>/include/stddef.h`, in `lib_dir`.
fn clang_headers(lib_dir: &Path) {
    write_file(&lib_dir.join("clang/14.0.6/include/stddef.h"), b"/* stddef */\n");
}

/// A scratch directory with `root/`, a machine's file system, and `bin/`, its whole PATH, holding
/// `tools` linked from the host.
pub(crate) fn stub_layout(tools: &[&str]) -> (TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let bin = dir.path().join("bin");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&bin).unwrap();
    for tool in tools {
        symlink(host_tool(tool), bin.join(tool)).unwrap();
    }
    (dir, root, bin)
}

/// A command of the host's own, for a stub machine's PATH.
pub(crate) fn host_tool(name: &str) -> PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("the host has no {name} in /usr/bin or /bin"))
}

/// Debian's llvm-14 library directory with libclang and clang's headers: a complete libclang.
fn debian_llvm14(machine: &Machine) {
    machine.file("usr/lib/llvm-14/lib/libclang.so.1", ELF64);
    clang_headers(&machine.root.join("usr/lib/llvm-14/lib"));
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let machine = Machine::new();
    machine.file("usr/lib/x86_64-linux-gnu/libclang-cpp.so.14", ELF64);
    let check = machine.check("build");
    check.missing(&["libclang-dev"]);
    assert!(check.reason("libclang-dev").contains("libclang-cpp does not count"), "{}", check.output);
}

#[test]
fn a_versioned_libclang_with_clang_headers_is_enough() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.check("build").missing(&[]);
}

#[test]
fn libclang_without_clang_headers_is_not_enough() {
    let machine = Machine::new();
    machine.file("usr/lib/llvm-14/lib/libclang.so.1", ELF64);
    let check = machine.check("build");
    check.missing(&["libclang-dev"]);
    assert!(check.reason("libclang-dev").contains("headers"), "{}", check.output);
}

#[test]
fn debians_versioned_symlink_into_the_llvm_directory_is_found() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.link("usr/lib/x86_64-linux-gnu/libclang-14.so.1", "../llvm-14/lib/libclang.so.1");
    machine.check("build").missing(&[]);
}

#[test]
fn the_headers_beside_a_symlinks_target_count() {
    let machine = Machine::new();
    // /opt is not searched: the library there is found only through the link, and its headers
    // only by following the link.
    machine.file("opt/llvm-14/lib/libclang.so.1", ELF64);
    clang_headers(&machine.root.join("opt/llvm-14/lib"));
    machine.link("usr/lib/x86_64-linux-gnu/libclang-14.so.1", "../../../opt/llvm-14/lib/libclang.so.1");
    machine.check("build").missing(&[]);
}

#[test]
fn bookworms_own_layout_is_found() {
    // libclang1-14, libclang-14-dev and libclang-common-14-dev as Debian 12 installs them.
    let machine = Machine::new();
    machine.file("usr/lib/x86_64-linux-gnu/libclang-14.so.14.0.6", ELF64);
    machine.link("usr/lib/x86_64-linux-gnu/libclang-14.so.13", "libclang-14.so.14.0.6");
    machine.link("usr/lib/x86_64-linux-gnu/libclang-14.so.1", "libclang-14.so.13");
    machine.link("usr/lib/x86_64-linux-gnu/libclang-cpp.so.14", "../llvm-14/lib/libclang-cpp.so.14");
    machine.file("usr/lib/llvm-14/lib/libclang-cpp.so.14", ELF64);
    machine.link("usr/lib/llvm-14/lib/libclang-14.so.1", "../../x86_64-linux-gnu/libclang-14.so.1");
    machine.link("usr/lib/llvm-14/lib/libclang.so.1", "libclang-14.so.1");
    machine.link("usr/lib/llvm-14/lib/libclang.so", "../../x86_64-linux-gnu/libclang-14.so.1");
    clang_headers(&machine.root.join("usr/lib/llvm-14/lib"));
    machine.check("build").missing(&[]);
}

#[test]
fn libclang_path_is_searched_instead_of_the_system() {
    let mut machine = Machine::new();
    let dir = machine.outside("llvm/lib");
    write_file(&dir.join("libclang.so"), ELF64);
    clang_headers(&dir);
    machine.set("LIBCLANG_PATH", dir.to_str().unwrap());
    machine.check("build").missing(&[]);
}

#[test]
fn libclang_path_is_the_only_place_searched_when_set() {
    let mut machine = Machine::new();
    debian_llvm14(&machine);
    let empty = machine.outside("empty");
    machine.set("LIBCLANG_PATH", empty.to_str().unwrap());
    let check = machine.check("build");
    check.missing(&["libclang-dev"]);
    assert!(check.reason("libclang-dev").contains("LIBCLANG_PATH"), "{}", check.output);
}

/// An LLVM installed outside the usual library directories: libclang and clang's headers in
/// `<prefix>/lib`.
fn llvm_prefix(machine: &Machine) -> PathBuf {
    let prefix = machine.outside("llvm-17");
    write_file(&prefix.join("lib/libclang.so.17"), ELF64);
    clang_headers(&prefix.join("lib"));
    prefix
}

#[test]
fn llvm_configs_prefix_is_searched() {
    let machine = Machine::new();
    let prefix = llvm_prefix(&machine);
    machine.check("build").missing(&["libclang-dev"]);
    machine.stub("llvm-config", &format!("echo '{}'", prefix.display()));
    machine.check("build").missing(&[]);
}

#[test]
fn llvm_config_path_names_the_llvm_config_to_run() {
    let mut machine = Machine::new();
    let prefix = llvm_prefix(&machine);
    let llvm_config = write_file(&machine.outside("tools").join("llvm-config-17"), b"");
    fs::write(&llvm_config, format!("#!/bin/sh\necho '{}'\n", prefix.display())).unwrap();
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755)).unwrap();
    machine.set("LLVM_CONFIG_PATH", llvm_config.to_str().unwrap());
    machine.check("build").missing(&[]);
}

#[test]
fn no_libclang_at_all_is_missing() {
    Machine::new().check("build").missing(&["libclang-dev"]);
}

#[test]
fn a_32_bit_libclang_is_rejected() {
    let machine = Machine::new();
    machine.file("usr/lib/llvm-14/lib/libclang.so.1", ELF32);
    clang_headers(&machine.root.join("usr/lib/llvm-14/lib"));
    machine.check("build").missing(&["libclang-dev"]);
}

#[test]
fn a_cmake_older_than_3_14_is_missing() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.stub("cmake", "echo 'cmake version 3.10.2'");
    machine.check("build").missing(&["cmake"]);
}

#[test]
fn no_cmake_is_missing() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.remove_stub("cmake");
    machine.check("build").missing(&["cmake"]);
}

#[test]
fn a_cxx_compiler_that_cannot_compile_is_missing() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.stub("c++", "echo 'fatal error: vector: No such file or directory' >&2; exit 1");
    machine.check("build").missing(&["g++"]);
}

#[test]
fn no_c_compiler_is_missing() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.remove_stub("cc");
    machine.check("build").missing(&["gcc libc6-dev"]);
}

#[test]
fn no_make_is_missing() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.remove_stub("make");
    machine.check("build").missing(&["make"]);
}

#[test]
fn serving_without_python_needs_python_and_pip() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.check("build").missing(&[]);
    machine.check("serve").missing(&["python3", "python3-pip"]);
}

#[test]
fn serving_without_the_ca_bundle_needs_ca_certificates() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.stub("python3", "exit 0");
    machine.check("serve").missing(&[]);
    fs::remove_file(machine.root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    machine.check("serve").missing(&["ca-certificates"]);
}

/// A test machine: what serving needs, plus Python's venv, Node.js with npm, and a Redis server of
/// version 5 or newer for the shared-state tests.
#[test]
fn testing_needs_venv_node_npm_and_a_recent_redis_server() {
    let machine = Machine::new();
    debian_llvm14(&machine);
    machine.stub("python3", "exit 0");
    machine.check("serve").missing(&[]);
    machine.check("test").missing(&["nodejs", "npm", "redis-server"]);
    machine.stub("node", "echo v18.19.0");
    machine.stub("npm", "echo 9.2.0");
    let check = machine.check("test");
    check.missing(&["redis-server"]);
    assert!(check.reason("redis-server").contains("5 or newer"), "{}", check.output);
    // Debian bookworm's (with its redis-cli), and an old one.
    machine.stub(
        "redis-server",
        "echo 'Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d7c971a948f0'",
    );
    machine.check("test").missing(&["redis-server"]);
    machine.stub("redis-cli", "echo 'redis-cli 7.0.15'");
    machine.check("test").missing(&[]);
    machine.stub(
        "redis-server",
        "echo 'Redis server v=4.0.9 sha=00000000:0 malloc=jemalloc-3.6.0 bits=64 build=9435c3c2879311f3'",
    );
    machine.check("test").missing(&["redis-server"]);
    // A redis-server that says nothing it can be judged by.
    machine.stub("redis-server", "exit 1");
    machine.check("test").missing(&["redis-server"]);
}
