//! Connection floods as a hostile local user makes them: a Python process (`/usr/bin/python3`,
//! readable by every uid) run as another uid opens the connections, reports how many it got,
//! holds them until its standard input closes, then reports how many the daemon had closed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Opens `n` Unix-socket connections to `path`, each sending the HTTP/2 client preface and
/// an empty SETTINGS frame, then silence.
pub const UNIX_IDLE: &str = r#"
import socket, sys
path, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
    except OSError:
        s.close()
        continue
    try:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    except OSError:
        pass  # already refused and closed by the daemon
    socks.append(s)
"#;

/// Opens `n` TCP connections to `127.0.0.1:port`, each completing a TLS handshake without
/// any credentials (no client certificate, no token), then silence. Reports the handshakes
/// that completed.
pub const TLS_IDLE: &str = r#"
import socket, ssl, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.set_alpn_protocols(["h2"])
socks = []
for _ in range(n):
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        s = context.wrap_socket(raw)
        socks.append(s)
    except (OSError, ssl.SSLError):
        pass
"#;

/// Opens `n` TCP connections to `127.0.0.1:port` and sends nothing on them.
pub const TCP_SILENT: &str = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    try:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        pass
"#;

/// Opens `n` TCP connections to `127.0.0.1:port` and writes pipelined `GET /metrics`
/// requests into each until the socket takes no more, never reading an answer.
pub const PIPELINE: &str = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
request = b"GET /metrics HTTP/1.1\r\nHost: flood\r\n\r\n" * 64
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    socks.append(s)
for _ in range(200):
    for s in socks:
        try:
            s.send(request)
        except (BlockingIOError, OSError):
            pass
"#;

/// What every flood does once its connections are open (in `socks`): report how many it
/// got, hold them until its standard input closes, then report how many the daemon had
/// closed (a read that ends the stream or fails; "would block" means still open).
const HOLD_AND_COUNT: &str = r#"
import ssl
print(len(socks), flush=True)
sys.stdin.read()
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
        closed += 1
    except (BlockingIOError, ssl.SSLWantReadError):
        pass
    except OSError:
        closed += 1
print(closed, flush=True)
"#;

/// A running flood.
pub struct Flood {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// What the flood reported once its connections were open (how many it got).
    pub opened: usize,
}

impl Flood {
    /// Runs `script` (which opens its connections into `socks`) then [`HOLD_AND_COUNT`],
    /// with `args`, as `uid`, with its open file limit raised to the hard limit, and waits
    /// until it has opened its connections.
    pub fn start(script: &str, args: &[String], uid: u32) -> Flood {
        let mut command = Command::new("/usr/bin/python3");
        command
            .arg("-c")
            .arg(format!("{script}{HOLD_AND_COUNT}"))
            .args(args)
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: getrlimit/setrlimit are async-signal-safe; raising the soft limit up to
        // the hard one needs no privilege.
        unsafe {
            command.pre_exec(|| {
                use nix::sys::resource::{Resource, getrlimit, setrlimit};
                let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
                setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn the flood (/usr/bin/python3)");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let opened = read_count(&mut stdout);
        Flood {
            child,
            stdin,
            stdout,
            opened,
        }
    }

    /// Ends the flood: returns how many of its connections the daemon had closed.
    pub fn finish(mut self) -> usize {
        drop(self.stdin.take());
        let closed = read_count(&mut self.stdout);
        let _ = self.child.wait();
        closed
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_count(stdout: &mut BufReader<ChildStdout>) -> usize {
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("read the flood's report");
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("the flood reported {line:?}"))
}

/// File descriptors `pid` holds open now.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// One `GET path` over a new HTTP/1.1 connection to `127.0.0.1:port`: the status line
/// and how long the answer took.
pub fn http_get(port: u16, path: &str) -> (String, std::time::Duration) {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.lines().next().unwrap_or_default().to_owned();
    (status, started.elapsed())
}

/// The value of the sample `name` (with its labels, as the exposition writes them) on the
/// metrics endpoint at `127.0.0.1:port`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
