//! gpukillctl on a real terminal: tmux panes of 100 x 30 running the real gpukillctl against
//! the real gpukilld on the fake NVML (tables fit, `list --watch` keeps its header, `q` and
//! Ctrl-C end it with exit 0 and the terminal as it was, hostile process names reach the
//! screen only as visible escapes), and the completion scripts and man pages of both binaries,
//! checked by bash, zsh, fish and man. scripts/test installs tmux, zsh, fish and man-db.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Daemon, MIB, Target, full_gpu, gpukillctl, gpukilld};

/// The pane size the issue names: a 100 x 30 terminal.
const COLUMNS: usize = 100;
const ROWS: usize = 30;

/// A tmux server of its own (no user configuration) with one 100 x 30 session running a
/// bash command; killed on drop.
struct Pane {
    server: String,
}

impl Pane {
    /// Starts `command` (run by bash) in a new 100 x 30 pane.
    fn start(command: &str) -> Pane {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = format!(
            "gpukill-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pane = Pane { server };
        let columns = COLUMNS.to_string();
        let rows = ROWS.to_string();
        let started = pane.tmux(&[
            "new-session",
            "-d",
            "-x",
            &columns,
            "-y",
            &rows,
            "-s",
            "t",
            "bash",
            "-c",
            command,
        ]);
        assert!(started.status.success(), "tmux new-session: {started:?}");
        pane
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.server, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux (scripts/test installs it)")
    }

    /// The screen as shown, wrapped lines joined (so a line wider than the pane shows as
    /// one long line), trailing blanks trimmed.
    fn screen(&self) -> Vec<String> {
        let output = self.tmux(&["capture-pane", "-p", "-J", "-t", "t"]);
        assert!(output.status.success(), "capture-pane: {output:?}");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut lines: Vec<String> = text.lines().map(|l| l.trim_end().to_owned()).collect();
        while lines.last().is_some_and(String::is_empty) {
            lines.pop();
        }
        lines
    }

    /// A tmux format of the pane (`#{alternate_on}`, `#{pane_title}`, ...).
    fn show(&self, format: &str) -> String {
        let output = self.tmux(&["display-message", "-p", "-t", "t", format]);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn keys(&self, keys: &str) {
        let sent = self.tmux(&["send-keys", "-t", "t", keys]);
        assert!(sent.status.success(), "send-keys {keys}: {sent:?}");
    }

    /// Waits until the screen satisfies `accept`; returns it.
    fn wait_for(&self, what: &str, accept: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = self.screen();
            if accept(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never showed; the screen:\n{}",
                screen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// Waits for the file a pane's command writes when gpukillctl has exited; its contents.
fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} was never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Display columns of a line: every character the tables print takes one column.
fn columns(line: &str) -> usize {
    line.chars().count()
}

/// A training job with a long command line (argv[0] set by bash's `exec -a`).
fn long_command_line() -> Target {
    Target::spawn(
        None,
        "/bin/bash",
        &[
            "-c",
            "exec -a 'python train.py --config configs/imagenet/resnet152-long-schedule.yaml \
             --epochs 300 --batch-size 256 --lr 0.1' /bin/sleep 600",
        ],
    )
}

/// Four A100s; `targets` spread over them, 1 GiB each.
fn scenario(targets: &[&Target]) -> Value {
    let gpus: Vec<Value> = (0..4)
        .map(|index| {
            let on: Vec<Value> = targets
                .iter()
                .enumerate()
                .filter(|(at, _)| at % 4 == index)
                .map(|(_, target)| json!({"pid": target.pid(), "used_memory_bytes": 1024 * MIB}))
                .collect();
            full_gpu(index as u32, json!(on))
        })
        .collect();
    json!({ "gpus": gpus })
}

/// A daemon once it lists all of `targets`.
fn daemon_listing(targets: &[&Target]) -> Daemon {
    let daemon = Daemon::start(&scenario(targets));
    let count = targets.len();
    daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"].as_array().is_some_and(|p| p.len() == count)
    });
    daemon
}

/// gpukillctl against `daemon`, as a bash command line for a pane.
fn ctl_command(daemon: &Daemon, args: &str) -> String {
    format!(
        "{} --socket {} {args}",
        gpukillctl().display(),
        daemon.socket.display()
    )
}

/// The host name the header starts with.
fn host(daemon: &Daemon) -> String {
    daemon.list_json(&[])["host"]
        .as_str()
        .expect("host")
        .to_owned()
}

#[test]
fn list_fits_a_100_column_terminal_and_a_pipe_gets_every_column() {
    let job = long_command_line();
    let others: Vec<Target> = (0..3).map(|_| Target::sleep(None)).collect();
    let mut targets = vec![&job];
    targets.extend(others.iter());
    let daemon = daemon_listing(&targets);
    let host = host(&daemon);

    // Not a terminal: nothing is narrowed, so this table is wider than 100 columns (the
    // pane below has something to fit).
    let piped = daemon.ctl(&["list", "--details"]);
    let piped = String::from_utf8_lossy(&piped.stdout);
    assert!(
        piped.lines().any(|line| columns(line) > COLUMNS),
        "the test needs a table wider than the pane:\n{piped}"
    );
    assert!(piped.contains("--lr 0.1 600"), "{piped}");

    let dir = tempfile::tempdir().expect("tempdir");
    let status = dir.path().join("status");
    let pane = Pane::start(&format!(
        "{}; echo exit=$? > {}; sleep 600",
        ctl_command(&daemon, "list --details"),
        status.display()
    ));
    assert_eq!(wait_for_file(&status), "exit=0\n");
    let screen = pane.screen();
    for line in &screen {
        assert!(
            columns(line) <= COLUMNS,
            "a line wraps in a {COLUMNS}-column terminal ({} columns): {line:?}\n{}",
            columns(line),
            screen.join("\n")
        );
    }
    let text = screen.join("\n");
    assert!(screen[0].starts_with(&format!("{host}  ")), "{text}");
    assert!(screen[0].contains("sampled "), "{text}");
    assert!(screen[0].contains("CUDA 12.4"), "{text}");
    assert!(text.contains("1536 / 81920 MiB"), "{text}");
    // The command line is cut to fit, not dropped.
    assert!(text.contains(" COMMAND"), "{text}");
    assert!(text.contains("python train.py --c"), "{text}");
    assert!(text.contains('…'), "{text}");

    // --wide: every column whole, whatever the terminal.
    let wide = dir.path().join("wide");
    let pane = Pane::start(&format!(
        "{}; echo exit=$? > {}; sleep 600",
        ctl_command(&daemon, "list --details --wide"),
        wide.display()
    ));
    assert_eq!(wait_for_file(&wide), "exit=0\n");
    let text = pane.screen().join("\n");
    assert!(text.contains("--lr 0.1 600"), "{text}");
}

#[test]
fn watch_keeps_its_header_on_a_full_screen_and_q_quits_with_exit_0() {
    // 24 processes: the process table alone is taller than the 30-line terminal.
    let job = long_command_line();
    let others: Vec<Target> = (0..23).map(|_| Target::sleep(None)).collect();
    let mut targets = vec![&job];
    targets.extend(others.iter());
    let daemon = daemon_listing(&targets);
    let host = host(&daemon);

    let dir = tempfile::tempdir().expect("tempdir");
    let (before, after, status) = (
        dir.path().join("before"),
        dir.path().join("after"),
        dir.path().join("status"),
    );
    let pane = Pane::start(&format!(
        "stty -a > {}; {}; echo exit=$? > {}; stty -a > {}; sleep 600",
        before.display(),
        ctl_command(&daemon, "list --watch --details"),
        status.display(),
        after.display(),
    ));
    let first = pane.wait_for("the watch screen", |screen| {
        screen
            .last()
            .is_some_and(|line| line == "q or Ctrl-C to quit")
    });
    assert_eq!(pane.show("#{alternate_on}"), "1", "the alternate screen");
    // Frames keep coming (every 200 ms); the header stays on the first line of each.
    std::thread::sleep(Duration::from_millis(1200));
    for screen in [first, pane.screen()] {
        let text = screen.join("\n");
        assert!(screen.len() <= ROWS, "{} lines:\n{text}", screen.len());
        assert!(screen[0].starts_with(&format!("{host}  ")), "{text}");
        assert!(screen[0].contains("sampled "), "{text}");
        assert!(text.contains(" GPU | NAME"), "{text}");
        assert!(
            screen
                .iter()
                .any(|line| line.starts_with("… ") && line.contains("more lines")),
            "{text}"
        );
        for line in &screen {
            assert!(columns(line) <= COLUMNS, "{line:?} wraps:\n{text}");
        }
        assert_eq!(
            screen.last().map(String::as_str),
            Some("q or Ctrl-C to quit")
        );
    }

    pane.keys("q");
    assert_eq!(wait_for_file(&status), "exit=0\n");
    assert_eq!(wait_for_file(&after), wait_for_file(&before), "stty -a");
    assert_eq!(
        pane.show("#{alternate_on}"),
        "0",
        "back on the normal screen"
    );
    assert_eq!(pane.show("#{cursor_flag}"), "1", "the cursor shows again");
}

#[test]
fn ctrl_c_ends_the_watch_with_exit_0_and_the_terminal_restored() {
    let target = Target::sleep(None);
    let daemon = daemon_listing(&[&target]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, after, status) = (
        dir.path().join("before"),
        dir.path().join("after"),
        dir.path().join("status"),
    );
    // bash waits for gpukillctl to handle SIGINT (it exits normally) and carries on.
    let pane = Pane::start(&format!(
        "stty -a > {}; {}; echo exit=$? > {}; stty -a > {}; sleep 600",
        before.display(),
        ctl_command(&daemon, "list --watch"),
        status.display(),
        after.display(),
    ));
    pane.wait_for("the watch screen", |screen| {
        screen
            .last()
            .is_some_and(|line| line == "q or Ctrl-C to quit")
    });
    pane.keys("C-c");
    assert_eq!(wait_for_file(&status), "exit=0\n");
    assert_eq!(wait_for_file(&after), wait_for_file(&before), "stty -a");
    assert_eq!(pane.show("#{alternate_on}"), "0");
    assert_eq!(pane.show("#{cursor_flag}"), "1");
}

/// A process that renamed itself (comm) to a sequence that sets the terminal's title, once
/// /proc shows the new name (gpukilld reads a process's identity once).
fn title_setter() -> Target {
    let target = Target::spawn(
        None,
        "/bin/bash",
        &[
            "-c",
            "printf '\\033]2;PWNED\\007' > /proc/self/comm; while :; do sleep 0.2; done",
        ],
    );
    wait_for_proc(&target, "comm", "\u{1b}]2;PWNED\u{7}\n");
    target
}

/// A process whose command line clears the screen and sets the title, once /proc shows it.
fn screen_clearer() -> Target {
    let target = Target::spawn(
        None,
        "/bin/bash",
        &[
            "-c",
            "exec -a \"$(printf '\\033[2J\\033]2;OWNED\\007')x\" /bin/sleep 600",
        ],
    );
    wait_for_proc(
        &target,
        "cmdline",
        "\u{1b}[2J\u{1b}]2;OWNED\u{7}x\u{0}600\u{0}",
    );
    target
}

/// Waits until /proc/PID/`file` of `target` reads `expected`.
fn wait_for_proc(target: &Target, file: &str, expected: &str) {
    let path = format!("/proc/{}/{file}", target.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&path).ok().as_deref() != Some(expected) {
        assert!(Instant::now() < deadline, "{path} never read {expected:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn control_characters_from_process_names_never_reach_the_terminal() {
    let (renamed, clearer) = (title_setter(), screen_clearer());
    let daemon = daemon_listing(&[&renamed, &clearer]);
    // The daemon reports what /proc says, control characters and all.
    let list = daemon.wait_for_list(Duration::from_secs(10), |list| {
        list["procs"].as_array().is_some_and(|procs| {
            procs
                .iter()
                .any(|p| p["proc_name"] == json!("\u{1b}]2;PWNED\u{7}"))
        })
    });
    assert!(
        list["procs"]
            .as_array()
            .expect("procs")
            .iter()
            .any(|p| p["cmdline"] == json!("\u{1b}[2J\u{1b}]2;OWNED\u{7}x 600")),
        "{list:#}"
    );

    // Through a pipe: tables show visible escapes, JSON escapes them its own way; no ESC or
    // BEL byte in either.
    for args in [
        &["list", "--details"][..],
        &["list", "--details", "--wide", "-o", "json"],
    ] {
        let output = daemon.ctl(args);
        assert!(output.status.success(), "{output:?}");
        assert!(
            !output.stdout.iter().any(|b| *b == 0x1b || *b == 0x07),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let table = String::from_utf8_lossy(&daemon.ctl(&["list", "--details"]).stdout).into_owned();
    assert!(table.contains("\\e]2;PWNED\\x07"), "{table}");
    assert!(table.contains("\\e[2J\\e]2;OWNED\\x07x 600"), "{table}");

    // On a terminal. First, that this tmux does take a title from such a sequence, so the
    // check below means something.
    let control = Pane::start("printf '\\033]2;CONTROL\\007'; sleep 600");
    let deadline = Instant::now() + Duration::from_secs(10);
    while control.show("#{pane_title}") != "CONTROL" {
        assert!(Instant::now() < deadline, "tmux took no title from OSC 2");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A list, then a watch (full screen) for two seconds.
    let dir = tempfile::tempdir().expect("tempdir");
    let status = dir.path().join("status");
    let pane = Pane::start(&format!(
        "{}; {} & sleep 2; kill -TERM $!; wait; echo done > {}; sleep 600",
        ctl_command(&daemon, "list --details --wide"),
        ctl_command(&daemon, "list --watch --details --wide"),
        status.display()
    ));
    assert_eq!(wait_for_file(&status), "done\n");
    let title = pane.show("#{pane_title}");
    assert!(
        !title.contains("PWNED") && !title.contains("OWNED"),
        "a process name set the terminal's title: {title}"
    );
    let text = pane.screen().join("\n");
    assert!(text.contains("\\e]2;PWNED\\x07"), "{text}");
    assert!(text.contains("\\e[2J\\e]2;OWNED\\x07x 600"), "{text}");
}

/// Runs `program args`, failing the test unless it succeeds; its standard output.
fn run(program: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{} {args:?}: {output:?}",
        program.display()
    );
    output.stdout
}

/// Checks a completion script with its shell's parser (`bash -n`, `zsh -n`,
/// `fish --no-execute`).
fn shell_accepts(shell: &str, script: &Path) {
    let check = match shell {
        "bash" => Command::new("bash").arg("-n").arg(script).output(),
        "zsh" => Command::new("zsh").arg("-n").arg(script).output(),
        "fish" => Command::new("fish")
            .arg("--no-execute")
            .arg(script)
            .output(),
        other => panic!("no checker for {other}"),
    }
    .unwrap_or_else(|error| panic!("run {shell} (scripts/test installs it): {error}"));
    assert!(
        check.status.success() && check.stderr.is_empty(),
        "{shell} rejects {}: {check:?}",
        script.display()
    );
}

/// Checks a man page with man (and groff's warnings): it renders, with a NAME section.
fn man_accepts(page: &Path) {
    let output = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .stdin(Stdio::null())
        .output()
        .expect("run man (scripts/test installs man-db)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "man -l {}: {output:?}",
        page.display()
    );
    assert!(text.contains("NAME"), "{}: {text}", page.display());
}

#[test]
fn completions_and_man_pages_of_both_binaries_are_accepted_by_the_shells_and_man() {
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        for (binary, args) in [
            (gpukillctl(), vec!["completions", shell]),
            (gpukilld(), vec!["--completions", shell]),
        ] {
            let script = run(&binary, &args);
            let name = binary.file_name().and_then(|n| n.to_str()).expect("name");
            assert!(
                String::from_utf8_lossy(&script).contains(name),
                "{name} {shell}"
            );
            let path = dir.path().join(format!("{name}.{shell}"));
            std::fs::write(&path, &script).expect("write");
            shell_accepts(shell, &path);
        }
    }
    // The bash script completes an option of a subcommand.
    let completed = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(gpukillctl list --wi); COMP_CWORD=2; \
             _gpukillctl gpukillctl --wi list; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            dir.path().join("gpukillctl.bash").display()
        ))
        .output()
        .expect("bash");
    assert_eq!(
        String::from_utf8_lossy(&completed.stdout).trim(),
        "--wide",
        "{completed:?}"
    );
    for shell in ["elvish", "powershell"] {
        let script = run(&gpukillctl(), &["completions", shell]);
        assert!(
            String::from_utf8_lossy(&script).contains("gpukillctl"),
            "{shell}"
        );
    }

    // Man pages: written into a directory, or printed.
    let man1 = dir.path().join("man1");
    let listed = run(&gpukillctl(), &["man", man1.to_str().expect("UTF-8")]);
    let pages: Vec<PathBuf> = String::from_utf8_lossy(&listed)
        .lines()
        .map(PathBuf::from)
        .collect();
    assert!(pages.len() > 30, "{pages:?}");
    assert!(pages.contains(&man1.join("gpukillctl-list.1")), "{pages:?}");
    for page in &pages {
        man_accepts(page);
    }
    let man8 = dir.path().join("man8");
    run(&gpukilld(), &["--man", man8.to_str().expect("UTF-8")]);
    man_accepts(&man8.join("gpukilld.8"));
    for (binary, args, title) in [
        (gpukillctl(), vec!["man"], ".TH gpukillctl 1"),
        (gpukilld(), vec!["--man"], ".TH gpukilld 8"),
    ] {
        let page = run(&binary, &args);
        assert!(String::from_utf8_lossy(&page).contains(title), "{title}");
        let path = dir
            .path()
            .join(format!("stdout-{}", title.replace(' ', "-")));
        std::fs::write(&path, page).expect("write");
        man_accepts(&path);
    }
}
