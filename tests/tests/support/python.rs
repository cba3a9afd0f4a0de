//! Stock Python gRPC clients for the tests: a venv made from Debian's `/usr/bin/python3` with
//! `clients/python/requirements.txt` installed from PyPI (grpcio, grpcio-tools, the health
//! and reflection packages, pinned), made once and kept under `/var/cache/gpukill-tests`
//! where other uids (nobody) can run it; it is made again when the requirements change.
//! Nothing here skips: without `/usr/bin/python3`, its venv module or PyPI, the test fails
//! and says what to install (scripts/test installs it).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::require_root;

/// Debian's Python: readable by every uid (pyenv's lives under /root).
const PYTHON: &str = "/usr/bin/python3";

/// Where the venv is kept between runs: root-owned, not world-writable, readable by all.
const CACHE: &str = "/var/cache/gpukill-tests";

/// The examples' directory, `clients/python`.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python")
}

/// The venv's python, made (or checked) once per test process.
pub fn python() -> PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(make_venv).join("bin/python")
}

fn make_venv() -> PathBuf {
    require_root("keeps a Python venv in /var/cache and runs the clients as nobody");
    let requirements = std::fs::read_to_string(clients_dir().join("requirements.txt"))
        .expect("read clients/python/requirements.txt");
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: install Debian's python3 and python3-venv (scripts/test does)"
    );
    let cache = Path::new(CACHE);
    std::fs::create_dir_all(cache).unwrap();
    std::fs::set_permissions(cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    // One maker at a time, across test processes too.
    let lock = std::fs::File::create(cache.join("python.lock")).unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .expect("lock the venv");
    let venv = cache.join("python");
    let marker = venv.join("gpukill-requirements.txt");
    if std::fs::read_to_string(&marker).is_ok_and(|made| made == requirements) {
        return venv;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run_readable(
        Command::new(PYTHON).arg("-m").arg("venv").arg(&venv),
        "python3 -m venv (install python3-venv: apt-get install python3-venv; scripts/test does)",
    );
    run_readable(
        Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(clients_dir().join("requirements.txt")),
        "pip install -r clients/python/requirements.txt (needs PyPI)",
    );
    std::fs::write(&marker, requirements).unwrap();
    venv
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

/// A directory nobody can read, holding copies of the example scripts and the stubs that
/// `clients/python/generate.sh` makes from proto/ (in `stubs/`).
pub fn workdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("gpukill-python-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for script in ["example.py", "reflection_client.py"] {
        let copy = dir.path().join(script);
        std::fs::copy(clients_dir().join(script), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    run_readable(
        Command::new(clients_dir().join("generate.sh"))
            .arg(dir.path().join("stubs"))
            .env("PYTHON", python()),
        "clients/python/generate.sh",
    );
    dir
}

/// Runs the venv's python on `script` in `dir` with `args`, as `uid` (gid = uid).
pub fn run_as(uid: u32, dir: &Path, script: &str, args: &[&str]) -> Output {
    Command::new(python())
        .arg(dir.join(script))
        .args(args)
        .current_dir(dir)
        .uid(uid)
        .gid(uid)
        // Nothing of root's environment (HOME, caches) for the other uid.
        .env_remove("HOME")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run the venv's python")
}
