//! What /proc says of a PID: uid and user, name and command line, start time, container,
//! and the executable's real name. Only the PIDs a vendor reports are ever read (never the
//! whole process table). A process is read once, when first seen; the reader then holds a
//! pidfd on it, so a tick learns which known processes exited with one poll(2) and reads
//! nothing else. Without pidfd support it re-reads /proc/PID/stat to catch PID reuse.

pub mod pidfd;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pidfd::{ExitWatch, PidFd};

/// The container a process runs in, from /proc/PID/cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Container id (hex).
    pub id: String,
    /// docker, containerd, cri-o, podman or kubepods.
    pub runtime: &'static str,
    /// Kubernetes pod UID, when the container is part of a pod.
    pub pod_uid: Option<String>,
}

/// Who a process is. Immutable for the life of the process (PID reuse makes a new one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat); with the pid it
    /// identifies the process across PID reuse.
    pub start_ticks: u64,
    /// Start time as wall-clock time.
    pub start_time: SystemTime,
    /// Real uid.
    pub uid: u32,
    /// User name of the uid, or the uid in decimal.
    pub user: Arc<str>,
    /// comm (at most 15 bytes, as the kernel keeps it).
    pub name: String,
    /// Command line, arguments joined by spaces.
    pub cmdline: String,
    /// The container it runs in.
    pub container: Option<Container>,
    /// Basename of /proc/PID/exe when it differs from `name` (a renamed binary).
    pub exe_name: Option<String>,
}

impl ProcessInfo {
    /// Whether a process filter `regex` selects this process: it matches the name or the
    /// command line. The one rule for every process filter (List and Watch, Kill), so a
    /// filter lists exactly what it would kill.
    pub fn matches(&self, regex: &regex::Regex) -> bool {
        regex.is_match(&self.name) || regex.is_match(&self.cmdline)
    }

    /// Whether `user` names this process's user: its user name or its uid in decimal.
    pub fn is_user(&self, user: &str) -> bool {
        *self.user == *user || user.parse() == Ok(self.uid)
    }
}

/// Reads /proc for a set of PIDs, caching identities across ticks.
#[derive(Debug)]
pub struct ProcReader {
    root: PathBuf,
    boot_time: SystemTime,
    ticks_per_second: u64,
    cache: HashMap<u32, Known>,
    users: HashMap<u32, Arc<str>>,
    /// The pidfds of the cache, to learn which processes exited; `None` when the set could
    /// not be made (then every PID is verified through /proc each tick).
    exits: Option<ExitWatch>,
}

/// A process already read, with a handle that tells when it exits.
#[derive(Debug)]
struct Known {
    info: Arc<ProcessInfo>,
    pidfd: Option<PidFd>,
}

impl ProcReader {
    /// A reader of the procfs mounted at `root` (normally `/proc`).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        let boot_time = read_boot_time(&root)?;
        let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|ticks| u64::try_from(ticks).ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100);
        Ok(Self {
            root,
            boot_time,
            ticks_per_second,
            cache: HashMap::new(),
            users: HashMap::new(),
            exits: ExitWatch::new()
                .inspect_err(|error| {
                    tracing::debug!(%error, "no epoll set for pidfds; verifying through /proc")
                })
                .ok(),
        })
    }

    /// Looks up every PID in `pids`. A PID whose process has exited (or cannot be read) is
    /// left out. Cache entries for PIDs not asked about are dropped.
    pub fn lookup(&mut self, pids: &[u32]) -> HashMap<u32, Arc<ProcessInfo>> {
        let verified = self.forget_exited();
        let mut found = HashMap::with_capacity(pids.len());
        for &pid in pids {
            if let Some(known) = self.cache.get(&pid)
                && verified
                && known.pidfd.is_some()
            {
                found.insert(pid, Arc::clone(&known.info));
                continue;
            }
            if found.contains_key(&pid) {
                continue;
            }
            match self.lookup_one(pid) {
                Ok(info) => {
                    found.insert(pid, info);
                }
                Err(error) => {
                    tracing::debug!(pid, %error, "process vanished or unreadable; dropped");
                }
            }
        }
        self.cache.retain(|pid, _| found.contains_key(pid));
        found
    }

    /// Drops the known processes whose pidfd says they exited. Returns false when that
    /// could not be checked (then every PID is verified through /proc).
    fn forget_exited(&mut self) -> bool {
        let Some(exits) = &self.exits else {
            return false;
        };
        match exits.exited(self.cache.len()) {
            Ok(gone) => {
                for pid in gone {
                    self.cache.remove(&pid);
                }
                true
            }
            Err(error) => {
                tracing::debug!(%error, "waiting on pidfds failed; verifying through /proc");
                false
            }
        }
    }

    /// Reads a process's identity without the cache (for a process that is not on a GPU).
    pub fn read(&mut self, pid: u32) -> io::Result<ProcessInfo> {
        let dir = self.root.join(pid.to_string());
        let stat = parse_stat(&fs::read_to_string(dir.join("stat"))?)?;
        self.read_info(pid, &dir, stat)
    }

    fn lookup_one(&mut self, pid: u32) -> io::Result<Arc<ProcessInfo>> {
        let dir = self.root.join(pid.to_string());
        let stat = parse_stat(&fs::read_to_string(dir.join("stat"))?)?;
        if let Some(known) = self.cache.get(&pid)
            && known.info.start_ticks == stat.start_ticks
        {
            return Ok(Arc::clone(&known.info));
        }
        // Opened before reading, so the handle is on the process we read (or on none).
        let pidfd = if self.root == Path::new("/proc") {
            PidFd::open(pid).ok().filter(|pidfd| {
                self.exits
                    .as_ref()
                    .is_some_and(|exits| exits.add(pidfd, pid).is_ok())
            })
        } else {
            None
        };
        let info = Arc::new(self.read_info(pid, &dir, stat)?);
        self.cache.insert(
            pid,
            Known {
                info: Arc::clone(&info),
                pidfd,
            },
        );
        Ok(info)
    }

    fn read_info(&mut self, pid: u32, dir: &Path, stat: Stat) -> io::Result<ProcessInfo> {
        // An exited process that is not reaped yet holds no GPU memory worth listing.
        if stat.state == 'Z' || stat.state == 'X' {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("pid {pid} has exited"),
            ));
        }
        let uid = parse_real_uid(&fs::read_to_string(dir.join("status"))?)?;
        let cmdline = fs::read(dir.join("cmdline"))
            .map(|raw| format_cmdline(&raw))
            .unwrap_or_default();
        let container = fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|cgroup| parse_container(&cgroup));
        // Reading another user's exe link needs CAP_SYS_PTRACE; without it the name is unknown.
        let exe_name = fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|exe| renamed_exe(&exe, &stat.comm));
        let start_time =
            self.boot_time + Duration::from_millis(stat.start_ticks * 1000 / self.ticks_per_second);
        // The process may have exited while we read; a last stat read catches PID reuse too.
        let again = parse_stat(&fs::read_to_string(dir.join("stat"))?)?;
        if again.start_ticks != stat.start_ticks {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("pid {pid} was reused while being read"),
            ));
        }
        Ok(ProcessInfo {
            pid,
            start_ticks: stat.start_ticks,
            start_time,
            uid,
            user: self.user_name(uid),
            name: stat.comm,
            cmdline,
            container,
            exe_name,
        })
    }

    fn user_name(&mut self, uid: u32) -> Arc<str> {
        Arc::clone(self.users.entry(uid).or_insert_with(|| {
            match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                Ok(Some(user)) => Arc::from(user.name),
                _ => Arc::from(uid.to_string()),
            }
        }))
    }
}

/// The fields of /proc/PID/stat we use.
#[derive(Debug, PartialEq)]
struct Stat {
    comm: String,
    state: char,
    ppid: u32,
    flags: u64,
    start_ticks: u64,
}

/// PF_KTHREAD in the flags field of /proc/PID/stat: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// What /proc/PID/stat says of a process that matters before signalling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatInfo {
    /// Run state (R, S, D, Z, ...).
    pub state: char,
    /// Parent process id.
    pub ppid: u32,
    /// Whether it is a kernel thread.
    pub kernel_thread: bool,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Reads /proc/PID/stat of the running system.
pub fn read_stat(pid: u32) -> io::Result<StatInfo> {
    let stat = parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat"))?)?;
    Ok(StatInfo {
        state: stat.state,
        ppid: stat.ppid,
        kernel_thread: stat.flags & PF_KTHREAD != 0,
        start_ticks: stat.start_ticks,
    })
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Parses /proc/PID/stat. comm is in parentheses and may itself contain spaces and ')',
/// so the fields after it are found from the last ')'.
fn parse_stat(stat: &str) -> io::Result<Stat> {
    let open = stat.find('(').ok_or_else(|| invalid("stat: no '('"))?;
    let close = stat.rfind(')').ok_or_else(|| invalid("stat: no ')'"))?;
    let comm = stat
        .get(open + 1..close)
        .ok_or_else(|| invalid("stat: bad comm"))?
        .to_string();
    // After ") " come fields 3 (state) onwards: ppid is field 4, flags field 9 and
    // starttime field 22, so indexes 1, 6 and 19 here.
    let fields: Vec<&str> = stat
        .get(close + 1..)
        .unwrap_or_default()
        .split_ascii_whitespace()
        .take(20)
        .collect();
    let field = |index: usize, name: &str| {
        fields
            .get(index)
            .copied()
            .ok_or_else(|| invalid(format!("stat: no {name}")))
    };
    let number = |index: usize, name: &str| -> io::Result<u64> {
        field(index, name)?
            .parse()
            .map_err(|_| invalid(format!("stat: bad {name}")))
    };
    let state = field(0, "state")?
        .chars()
        .next()
        .ok_or_else(|| invalid("stat: no state"))?;
    Ok(Stat {
        comm,
        state,
        ppid: u32::try_from(number(1, "ppid")?).map_err(|_| invalid("stat: bad ppid"))?,
        flags: number(6, "flags")?,
        start_ticks: number(19, "starttime")?,
    })
}

/// The real uid from /proc/PID/status ("Uid:\treal\teffective\tsaved\tfs").
fn parse_real_uid(status: &str) -> io::Result<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_ascii_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| invalid("status: no Uid line"))
}

/// Joins NUL-separated arguments with spaces.
fn format_cmdline(raw: &[u8]) -> String {
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(raw);
    String::from_utf8_lossy(trimmed).replace('\0', " ")
}

/// The executable's basename when it is not what comm says (comm holds at most 15 bytes).
fn renamed_exe(exe: &Path, comm: &str) -> Option<String> {
    let base = exe.file_name()?.to_string_lossy();
    // A deleted binary's link ends in " (deleted)".
    let base = base.strip_suffix(" (deleted)").unwrap_or(&base);
    let truncated: String = base.chars().take(15).collect();
    (truncated != comm && base != comm).then(|| base.to_string())
}

/// Boot time from the `btime` line of /proc/stat.
fn read_boot_time(root: &Path) -> io::Result<SystemTime> {
    let stat = fs::read_to_string(root.join("stat"))?;
    let seconds: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| invalid("/proc/stat: no btime"))?;
    Ok(UNIX_EPOCH + Duration::from_secs(seconds))
}

fn is_container_id(candidate: &str) -> bool {
    candidate.len() >= 32 && candidate.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Finds the container of a process from its /proc/PID/cgroup text, for the layouts of
/// docker, containerd (CRI), cri-o, podman and kubelet (cgroupfs and systemd drivers).
pub fn parse_container(cgroup: &str) -> Option<Container> {
    cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(parse_cgroup_path)
}

fn parse_cgroup_path(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pod_uid = segments.iter().find_map(|segment| pod_uid_of(segment));
    let in_kubepods = segments.iter().any(|s| s.starts_with("kubepods"));
    segments.iter().rev().find_map(|segment| {
        let segment = segment.strip_suffix(".scope").unwrap_or(segment);
        let (runtime, id) = [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("libpod-", "podman"),
        ]
        .iter()
        .find_map(|(prefix, runtime)| Some((*runtime, segment.strip_prefix(prefix)?)))
        .or_else(|| {
            let parent_runtime = if in_kubepods {
                "kubepods"
            } else if segments.contains(&"docker") {
                "docker"
            } else if segments.contains(&"libpod_parent") {
                "podman"
            } else {
                return None;
            };
            Some((parent_runtime, segment))
        })?;
        is_container_id(id).then(|| Container {
            id: id.to_string(),
            runtime,
            pod_uid: pod_uid.clone(),
        })
    })
}

/// The pod UID in a kubelet cgroup segment: `pod<uid>` (cgroupfs) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(segment: &str) -> Option<String> {
    let segment = segment.strip_suffix(".slice").unwrap_or(segment);
    let start = segment.rfind("pod")?;
    if start > 0 && !segment[..start].ends_with('-') {
        return None;
    }
    let uid = segment[start + 3..].replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e0c7d9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5";

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let stat = "4242 (my (weird) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let parsed = parse_stat(stat).expect("parses");
        assert_eq!(parsed.comm, "my (weird) proc");
        assert_eq!(parsed.state, 'S');
        assert_eq!(parsed.ppid, 1);
        assert_eq!(parsed.flags, 4194560);
        assert_eq!(parsed.start_ticks, 987654);
    }

    #[test]
    fn kernel_threads_are_recognized() {
        let kthreadd = read_stat(2).expect("kthreadd");
        assert!(kthreadd.kernel_thread);
        let me = read_stat(std::process::id()).expect("self");
        assert!(!me.kernel_thread);
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw() as u32);
    }

    #[test]
    fn truncated_stat_is_an_error() {
        assert!(parse_stat("12 (x) S 1 2").is_err());
    }

    #[test]
    fn real_uid_is_the_first_uid() {
        let status = "Name:\tpython\nUid:\t1001\t0\t0\t0\nGid:\t1001\t1001\t1001\t1001\n";
        assert_eq!(parse_real_uid(status).expect("uid"), 1001);
    }

    #[test]
    fn filters_match_the_name_or_the_command_line_never_the_user() {
        let info = ProcessInfo {
            pid: 7,
            start_ticks: 1,
            start_time: UNIX_EPOCH,
            uid: 1001,
            user: Arc::from("alice"),
            name: "python3".into(),
            cmdline: "/usr/bin/python3 train.py --lr 0.1".into(),
            container: None,
            exe_name: None,
        };
        let regex = |pattern: &str| regex::Regex::new(pattern).expect("regex");
        assert!(info.matches(&regex("^python")));
        assert!(info.matches(&regex(r"train\.py")));
        assert!(!info.matches(&regex("alice")));
        assert!(!info.matches(&regex("^train")));
        assert!(info.is_user("alice"));
        assert!(info.is_user("1001"));
        assert!(!info.is_user("alic"));
        assert!(!info.is_user("1000"));
    }

    #[test]
    fn cmdline_joins_arguments() {
        assert_eq!(
            format_cmdline(b"python\0train.py\0--lr\x000.1\0"),
            "python train.py --lr 0.1"
        );
        assert_eq!(format_cmdline(b""), "");
    }

    #[test]
    fn renamed_binaries_are_noticed_but_long_names_are_not() {
        assert_eq!(
            renamed_exe(Path::new("/usr/bin/xmrig"), "python3"),
            Some("xmrig".into())
        );
        assert_eq!(renamed_exe(Path::new("/usr/bin/python3"), "python3"), None);
        assert_eq!(
            renamed_exe(
                Path::new("/opt/bin/a-very-long-binary-name"),
                "a-very-long-bin"
            ),
            None
        );
        assert_eq!(
            renamed_exe(Path::new("/tmp/sleep (deleted)"), "sleep"),
            None
        );
    }

    #[test]
    fn docker_cgroupfs_and_systemd() {
        let cgroupfs = format!("12:memory:/docker/{ID}\n0::/docker/{ID}\n");
        let container = parse_container(&cgroupfs).expect("docker");
        assert_eq!((container.id.as_str(), container.runtime), (ID, "docker"));
        let systemd = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse_container(&systemd).expect("docker").runtime, "docker");
    }

    #[test]
    fn kubepods_with_containerd_and_systemd_driver() {
        let line = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f90a.slice/cri-containerd-{ID}.scope\n"
        );
        let container = parse_container(&line).expect("containerd");
        assert_eq!(container.runtime, "containerd");
        assert_eq!(container.id, ID);
        assert_eq!(
            container.pod_uid.as_deref(),
            Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f90a")
        );
    }

    #[test]
    fn kubepods_cgroupfs_driver() {
        let line =
            format!("0::/kubepods/besteffort/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f90a/{ID}\n");
        let container = parse_container(&line).expect("kubepods");
        assert_eq!(container.runtime, "kubepods");
        assert_eq!(
            container.pod_uid.as_deref(),
            Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f90a")
        );
    }

    #[test]
    fn podman_and_crio() {
        let podman = format!("0::/machine.slice/libpod-{ID}.scope/container\n");
        assert_eq!(parse_container(&podman).expect("podman").runtime, "podman");
        let crio = format!(
            "0::/kubepods.slice/kubepods-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f90a.slice/crio-{ID}.scope\n"
        );
        let container = parse_container(&crio).expect("cri-o");
        assert_eq!(container.runtime, "cri-o");
        assert!(container.pod_uid.is_some());
    }

    #[test]
    fn host_processes_have_no_container() {
        assert_eq!(
            parse_container("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
        assert_eq!(parse_container("0::/\n"), None);
    }

    #[test]
    fn reads_this_process_and_drops_a_gone_one() {
        let mut reader = ProcReader::new("/proc").expect("procfs");
        let me = std::process::id();
        let found = reader.lookup(&[me, u32::MAX - 1]);
        assert_eq!(found.len(), 1);
        let info = &found[&me];
        assert_eq!(info.uid, nix::unistd::getuid().as_raw());
        assert!(info.start_time <= SystemTime::now());
        // A second lookup reuses the cached identity.
        let again = reader.lookup(&[me]);
        assert!(Arc::ptr_eq(info, &again[&me]));
    }

    #[test]
    fn an_exited_process_is_dropped_and_a_new_one_read() {
        let mut reader = ProcReader::new("/proc").expect("procfs");
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let first = reader.lookup(&[pid]);
        assert_eq!(first[&pid].name, "sleep");
        // Killed but not reaped: a zombie is not listed.
        child.kill().expect("kill");
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            reader.lookup(&[pid]).is_empty(),
            "an exited process is dropped"
        );
        child.wait().expect("reap");
        assert!(reader.lookup(&[pid]).is_empty());
    }
}
