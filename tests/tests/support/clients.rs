//! Stock gRPC clients of other languages for the tests, installed from their registries as
//! their users would, pinned, and kept under `/var/cache/gpukill-tests` (root-owned, not
//! world-writable, readable by all) so that other uids (nobody) can run them:
//!
//! - a Python venv made from Debian's `/usr/bin/python3` with `clients/python/requirements.txt`
//!   from PyPI (grpcio, grpcio-tools, the health and reflection packages);
//! - `clients/node`'s `node_modules` from npm (`npm ci`: @grpc/grpc-js, @grpc/proto-loader);
//! - buf from npm (`proto/tools`), for the contract's lint and breaking-change checks.
//!
//! Each is made once and made again when its pinned list changes. Nothing here skips:
//! without the interpreter, its package tool or the registry, the test fails and says what
//! to install (scripts/test installs it).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::require_root;

/// Debian's Python: readable by every uid (pyenv's lives under /root).
const PYTHON: &str = "/usr/bin/python3";

/// Where the clients are kept between runs.
const CACHE: &str = "/var/cache/gpukill-tests";

/// The examples' directory, `clients/`.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients")
}

/// The contract's `.proto` files, `proto/proto`.
fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto")
}

/// The venv's python, made (or checked) once per test process.
pub fn python() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        assert!(
            Path::new(PYTHON).exists(),
            "{PYTHON} is missing: install Debian's python3 and python3-venv (scripts/test does)"
        );
        let requirements = clients_dir().join("python/requirements.txt");
        cached("python", &[&requirements], |venv| {
            run_readable(
                Command::new(PYTHON).arg("-m").arg("venv").arg(venv),
                "python3 -m venv (install python3-venv: apt-get install python3-venv; scripts/test does)",
            );
            run_readable(
                Command::new(venv.join("bin/python"))
                    .args(["-m", "pip", "install", "--disable-pip-version-check", "-q", "-r"])
                    .arg(&requirements),
                "pip install -r clients/python/requirements.txt (needs PyPI)",
            );
        })
    })
    .join("bin/python")
}

/// The `node_modules` of clients/node, installed (or checked) once per test process.
pub fn node_modules() -> PathBuf {
    static MODULES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODULES
        .get_or_init(|| npm_ci("node", &clients_dir().join("node"), "clients/node"))
        .join("node_modules")
}

/// buf (from npm, pinned by proto/tools), which lints the contract and checks it for
/// breaking changes; installed (or checked) once per test process.
pub fn buf() -> PathBuf {
    static BUF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUF.get_or_init(|| {
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tools");
        npm_ci("buf", &tools, "proto/tools")
    })
    .join("node_modules/.bin/buf")
}

/// `CACHE/name` holding the packages pinned by `package`'s `package.json` and
/// `package-lock.json` (`shown` in messages), installed with `npm ci` unless they already
/// are.
fn npm_ci(name: &str, package: &Path, shown: &str) -> PathBuf {
    let (manifest, lock) = (
        package.join("package.json"),
        package.join("package-lock.json"),
    );
    cached(name, &[&manifest, &lock], |dir| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(&manifest, dir.join("package.json")).unwrap();
        std::fs::copy(&lock, dir.join("package-lock.json")).unwrap();
        run_readable(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(dir),
            &format!(
                "npm ci in {shown} (install nodejs and npm: apt-get install nodejs npm; scripts/test does; needs the npm registry)"
            ),
        );
    })
}

/// `CACHE/name`, made by `make` unless it was made from `inputs` as they are now; one maker
/// at a time, across test processes too.
fn cached(name: &str, inputs: &[&Path], make: impl FnOnce(&Path)) -> PathBuf {
    require_root("keeps clients in /var/cache/gpukill-tests and runs them as nobody");
    let mut made_from = String::new();
    for input in inputs {
        made_from.push_str(
            &std::fs::read_to_string(input)
                .unwrap_or_else(|error| panic!("read {}: {error}", input.display())),
        );
    }
    let cache = Path::new(CACHE);
    std::fs::create_dir_all(cache).unwrap();
    std::fs::set_permissions(cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lock = std::fs::File::create(cache.join(format!("{name}.lock"))).unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .expect("lock the cache");
    let dir = cache.join(name);
    let marker = dir.join(".gpukill-made-from");
    if std::fs::read_to_string(&marker).is_ok_and(|made| made == made_from) {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    make(&dir);
    std::fs::write(&marker, made_from).unwrap();
    dir
}

/// Runs `command` with umask 022 (what it writes is readable by nobody), failing with `what`.
fn run_readable(command: &mut Command, what: &str) {
    // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("{what}: cannot start: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A temporary directory every uid can read, holding copies of `files` of clients/`language`.
fn workdir(language: &str, files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("gpukill-{language}-"))
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in files {
        let copy = dir.path().join(file);
        std::fs::copy(clients_dir().join(language).join(file), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir
}

/// The Python examples, and in `stubs/` what `clients/python/generate.sh` makes from proto/.
pub fn python_workdir() -> tempfile::TempDir {
    let dir = workdir("python", &["example.py", "reflection_client.py"]);
    run_readable(
        Command::new(clients_dir().join("python/generate.sh"))
            .arg(dir.path().join("stubs"))
            .env("PYTHON", python()),
        "clients/python/generate.sh",
    );
    dir
}

/// The Node example, and a copy of proto/ in `proto/`.
pub fn node_workdir() -> tempfile::TempDir {
    let dir = workdir("node", &["example.js"]);
    let copy = dir.path().join("proto/gpukill/v1");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(proto_dir().join("gpukill/v1")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    run_readable(
        Command::new("chmod").arg("-R").arg("a+rX").arg(dir.path()),
        "chmod",
    );
    dir
}

/// Runs the venv's python on `script` in `dir` with `args`, as `uid` (gid = uid).
pub fn python_as(uid: u32, dir: &Path, script: &str, args: &[&str]) -> Output {
    let mut command = Command::new(python());
    command.env("PYTHONDONTWRITEBYTECODE", "1");
    run_as(
        uid,
        command.arg(dir.join(script)).args(args).current_dir(dir),
    )
}

/// Runs node on `script` in `dir` with `args` and the clients' modules, as `uid`.
pub fn node_as(uid: u32, dir: &Path, script: &str, args: &[&str]) -> Output {
    let mut command = Command::new("node");
    command.env("NODE_PATH", node_modules());
    run_as(
        uid,
        command.arg(dir.join(script)).args(args).current_dir(dir),
    )
}

fn run_as(uid: u32, command: &mut Command) -> Output {
    command
        .uid(uid)
        .gid(uid)
        // Nothing of root's home (caches, configuration) for the other uid.
        .env_remove("HOME")
        .stdin(Stdio::null())
        .output()
        .expect("run the client")
}
