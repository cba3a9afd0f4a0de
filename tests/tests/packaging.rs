//! The .deb: `packaging/build-packages` builds it, `dpkg-deb -c` lists every file gpukill
//! ships, and `dpkg -i` on this machine puts working binaries on PATH (the installed
//! gpukilld, reading the installed /etc/gpukill/gpukilld.toml, serves the installed
//! gpukillctl on the fake NVML); `dpkg --purge` then leaves the machine as it was.
//!
//! The package is built from this test run's binaries (`--profile dev --no-build`): a
//! release build of the workspace takes many minutes on the 2-core machine, and what is
//! tested here is the packaging, not the optimizer. cargo-deb 3.8 warns that it may refuse
//! the dev profile one day; `scripts/test` pins that version.
//!
//! Needs cargo-deb (`cargo install --locked --version 3.8.0 cargo-deb`, which `scripts/test`
//! runs when it is missing) and dpkg: without them the tests fail and say so. Installing
//! needs root (CI runs as root); as another user the install test fails and says so.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{build_dir, fake_nvml, full_gpu, write_scenario};

/// The package's name (`[package.metadata.deb] name`).
const PACKAGE: &str = "gpukill";

/// A PATH as root has it on Debian: what "on PATH" means for the installed binaries.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every file the package must install, man pages of gpukillctl's subcommands aside (those
/// are checked against what gpukill-gen rendered).
const EXPECTED_FILES: &[&str] = &[
    "/usr/bin/gpukilld",
    "/usr/bin/gpukillctl",
    "/lib/systemd/system/gpukilld.service",
    "/lib/systemd/system/gpukilld.socket",
    "/usr/lib/sysusers.d/gpukill.conf",
    "/usr/lib/tmpfiles.d/gpukill.conf",
    "/etc/gpukill/gpukilld.toml",
    "/usr/share/doc/gpukill/README.md",
    "/usr/share/doc/gpukill/docs/README.md",
    "/usr/share/doc/gpukill/docs/limits.md",
    "/usr/share/doc/gpukill/copyright",
    "/usr/share/doc/gpukill/examples/guard.toml",
    "/usr/share/man/man8/gpukilld.8.gz",
    "/usr/share/man/man1/gpukillctl.1.gz",
    "/usr/share/man/man1/gpukillctl-list.1.gz",
    "/usr/share/man/man1/gpukillctl-kill.1.gz",
    "/usr/share/man/man1/gpukillctl-guard-policy-add-user.1.gz",
    "/usr/share/bash-completion/completions/gpukilld",
    "/usr/share/bash-completion/completions/gpukillctl",
    "/usr/share/zsh/vendor-completions/_gpukilld",
    "/usr/share/zsh/vendor-completions/_gpukillctl",
    "/usr/share/fish/vendor_completions.d/gpukilld.fish",
    "/usr/share/fish/vendor_completions.d/gpukillctl.fish",
];

/// The directories the package's postinst creates (tmpfiles.d); purge removes them when
/// they are empty.
const CREATED_DIRS: &[&str] = &["/etc/gpukill", "/var/lib/gpukill", "/run/gpukill"];

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("{shown}: {err}"));
    assert!(
        output.status.success(),
        "{shown} failed with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fails, saying how to get `what`, when `program args` does not succeed.
fn require(what: &str, program: &str, args: &[&str], how: &str) {
    let found = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(found, "the packaging tests need {what}: {how}");
}

/// The .deb, built once for both tests by packaging/build-packages into the build dir.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        require(
            "cargo-deb",
            &cargo,
            &["deb", "--version"],
            "install it with `cargo install --locked --version 3.8.0 cargo-deb` (scripts/test does)",
        );
        require(
            "dpkg-deb",
            "dpkg-deb",
            &["--version"],
            "it comes with dpkg (Debian, Ubuntu)",
        );
        let build = build_dir();
        assert!(
            build.join("gpukill-gen").exists(),
            "{} is missing: build the workspace first (cargo build --workspace)",
            build.join("gpukill-gen").display()
        );
        // The profile whose binaries this test run uses: target/debug is the dev profile.
        let profile = match build.file_name().and_then(|name| name.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(name) => name.to_owned(),
            None => panic!("unexpected build dir {}", build.display()),
        };
        let out = build.join("packaging-test");
        let _ = std::fs::remove_dir_all(&out);
        let started = Instant::now();
        let output = run(Command::new(workspace().join("packaging/build-packages"))
            .args(["--profile", &profile, "--no-build", "--fast", "--deb-only"])
            .arg("--out-dir")
            .arg(&out)
            // The script finds the binaries through cargo: the target dir of this run.
            .env("CARGO_TARGET_DIR", build.parent().expect("target dir"))
            .env("CARGO", &cargo));
        eprintln!("build-packages took {:?}", started.elapsed());
        let printed = stdout(&output);
        let deb = printed
            .lines()
            .map(PathBuf::from)
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("gpukill_") && name.ends_with(".deb"))
            })
            .unwrap_or_else(|| panic!("build-packages printed no gpukill .deb: {printed:?}"));
        assert!(
            deb.starts_with(&out),
            "{} is not in {}",
            deb.display(),
            out.display()
        );
        assert!(deb.is_file(), "{} does not exist", deb.display());
        deb
    })
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The paths of the files (not directories) in the package, from `dpkg-deb -c`.
fn listed_files(deb: &Path) -> BTreeSet<String> {
    let listing = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(deb)));
    listing
        .lines()
        .filter(|line| line.starts_with('-'))
        .map(|line| {
            let path = line.split_whitespace().last().expect("a path");
            path.trim_start_matches('.').to_owned()
        })
        .collect()
}

#[test]
fn the_deb_lists_every_file_gpukill_ships() {
    let deb = deb();
    let files = listed_files(deb);
    for expected in EXPECTED_FILES {
        assert!(files.contains(*expected), "{expected} is not in {files:#?}");
    }
    // Every docs/ page is there, where the README's links point.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    for entry in std::fs::read_dir(&docs).expect("docs/") {
        let name = entry.expect("entry").file_name();
        let name = name.to_str().expect("UTF-8 name");
        let packaged = format!("/usr/share/doc/gpukill/docs/{name}");
        assert!(files.contains(&packaged), "{packaged} is not in {files:#?}");
    }
    // Every page gpukill-gen rendered (one per gpukillctl subcommand) is in the package.
    let rendered = build_dir().join("packaging/man/man1");
    let mut pages = 0;
    for entry in std::fs::read_dir(&rendered).expect("rendered man pages") {
        let name = entry.expect("entry").file_name();
        let name = name.to_str().expect("UTF-8 name");
        let packaged = format!("/usr/share/man/man1/{name}");
        assert!(files.contains(&packaged), "{packaged} is not in {files:#?}");
        pages += 1;
    }
    assert!(pages > 20, "only {pages} gpukillctl man pages");
    // The policy example must not be where gpukilld reads a policy: it would turn the guard on.
    assert!(!files.contains("/etc/gpukill/guard.toml"), "{files:#?}");

    let field = |name: &str| {
        stdout(&run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name)))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), PACKAGE);
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    // libc only: NVML is loaded at run time, and the daemon serves without it.
    let depends = field("Depends");
    assert!(depends.starts_with("libc6"), "Depends: {depends}");
    assert!(
        !depends.to_lowercase().contains("nvidia"),
        "Depends: {depends}"
    );
    let conffiles = stdout(&run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(deb)
        .arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/gpukill/gpukilld.toml");
}

/// What this machine looked like before the install; dropping it purges the package and
/// removes what the install added (the gpukill group, empty directories), also when the
/// test fails half-way.
struct Installation {
    group_existed: bool,
    dirs_existed: Vec<(&'static str, bool)>,
}

impl Installation {
    fn install(deb: &Path) -> Installation {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", PACKAGE])
            .output()
            .expect("dpkg-query");
        assert!(
            !stdout(&status).contains("installed"),
            "{PACKAGE} is already installed on this machine ({}); this test installs and purges \
             its own build, so remove it first: dpkg --purge {PACKAGE}",
            stdout(&status)
        );
        for file in ["/usr/bin/gpukilld", "/usr/bin/gpukillctl"] {
            assert!(
                !Path::new(file).exists(),
                "{file} exists without the {PACKAGE} package: installing would overwrite it \
                 and purging delete it; remove it first"
            );
        }
        let installation = Installation {
            group_existed: group_exists(),
            dirs_existed: CREATED_DIRS
                .iter()
                .map(|dir| (*dir, Path::new(dir).exists()))
                .collect(),
        };
        let started = Instant::now();
        run(Command::new("dpkg").arg("-i").arg(deb));
        eprintln!("dpkg -i took {:?}", started.elapsed());
        installation
    }

    fn purge(&self) -> Output {
        Command::new("dpkg")
            .args(["--purge", PACKAGE])
            .stdin(Stdio::null())
            .output()
            .expect("dpkg --purge")
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        let purged = self.purge();
        if !purged.status.success() {
            eprintln!(
                "dpkg --purge {PACKAGE} failed: {}",
                String::from_utf8_lossy(&purged.stderr)
            );
        }
        if !self.group_existed && group_exists() {
            let _ = Command::new("groupdel").arg("gpukill").status();
        }
        for (dir, existed) in &self.dirs_existed {
            if !existed {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

fn group_exists() -> bool {
    Command::new("getent")
        .args(["group", "gpukill"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `program` with `args`, found on the system PATH.
fn on_path(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env_clear().env("PATH", SYSTEM_PATH);
    command
}

#[test]
fn the_deb_installs_working_binaries_on_path_and_purges_cleanly() {
    support::require_root("installs and purges the .deb with dpkg");
    let deb = deb();
    let installation = Installation::install(deb);

    let which = stdout(&run(
        on_path("sh").args(["-c", "command -v gpukilld && command -v gpukillctl"])
    ));
    assert_eq!(which, "/usr/bin/gpukilld\n/usr/bin/gpukillctl\n");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        stdout(&run(on_path("gpukilld").arg("--version"))),
        format!("gpukilld {version}\n")
    );
    assert_eq!(
        stdout(&run(on_path("gpukillctl").arg("--version"))),
        format!("gpukillctl {version}\n")
    );
    // The installed daemon accepts the installed default configuration.
    run(on_path("gpukilld").arg("--check-config"));

    // postinst: the admin group and the directories of tmpfiles.d, without a running systemd.
    assert!(group_exists(), "postinst did not create the gpukill group");
    for dir in CREATED_DIRS {
        assert!(Path::new(dir).is_dir(), "postinst did not create {dir}");
    }

    // Man pages and completions where man and the shells look.
    let page = stdout(&run(
        Command::new("gzip").args(["-dc", "/usr/share/man/man8/gpukilld.8.gz"])
    ));
    assert!(page.contains(".TH gpukilld 8"), "{page}");
    run(Command::new("bash").args(["-n", "/usr/share/bash-completion/completions/gpukillctl"]));

    // The installed binaries work together: gpukilld (with /etc/gpukill/gpukilld.toml, the
    // fake NVML and a temporary store and socket) serves the installed gpukillctl.
    let dir = tempfile::Builder::new()
        .prefix("gpukill-packaging-")
        .tempdir()
        .expect("tempdir");
    let scenario = dir.path().join("scenario.json");
    write_scenario(&scenario, &json!({"gpus": [full_gpu(0, json!([]))]}));
    let socket = dir.path().join("gpukilld.sock");
    let log = dir.path().join("gpukilld.log");
    let mut daemon = on_path("gpukilld")
        .arg("--socket")
        .arg(&socket)
        .args(["--poll-interval", "200ms"])
        .env("GPUKILL_STATE_DIR", dir.path().join("state"))
        .env("GPUKILL_NVML_LIBRARY", fake_nvml())
        .env("FAKE_NVML_SCENARIO", &scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn the installed gpukilld");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(status) = daemon.try_wait().expect("try_wait") {
            panic!(
                "the installed gpukilld exited with {status}:\n{}",
                log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the installed gpukilld did not serve in 15 s:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let listed = on_path("gpukillctl")
        .arg("--socket")
        .arg(&socket)
        .args(["list", "--output", "json"])
        .output()
        .expect("run the installed gpukillctl");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let stopped = daemon.wait().expect("wait for gpukilld");
    assert!(
        listed.status.success(),
        "gpukillctl list failed: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&listed.stderr),
        log_text()
    );
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(list["gpus"][0]["gpu_index"], json!(0), "{list:#}");
    assert!(stopped.success(), "gpukilld: {stopped}\n{}", log_text());

    // Purge: the package's files and its empty directories are gone.
    let started = Instant::now();
    let purged = installation.purge();
    eprintln!("dpkg --purge took {:?}", started.elapsed());
    assert!(
        purged.status.success(),
        "dpkg --purge {PACKAGE}: {}",
        String::from_utf8_lossy(&purged.stderr)
    );
    for file in EXPECTED_FILES {
        assert!(!Path::new(file).exists(), "{file} is left after purge");
    }
    for (dir, existed) in &installation.dirs_existed {
        if !existed {
            assert!(!Path::new(dir).exists(), "{dir} is left after purge");
        }
    }
    drop(installation);
}
