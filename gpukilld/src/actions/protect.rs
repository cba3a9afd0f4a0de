//! Processes that are never signalled, whatever the flags and whoever asks.

use regex::Regex;

use crate::authz::Principal;
use crate::procinfo::{self, ProcessInfo};

/// The protection rules of the daemon's configuration.
#[derive(Debug, Clone)]
pub struct Protection {
    daemon_pid: u32,
    users: Option<Vec<String>>,
    patterns: Vec<Regex>,
}

impl Protection {
    /// Rules from the configured `protected_users` (None: the default) and
    /// `protected_processes` patterns.
    pub fn new(
        protected_users: Option<Vec<String>>,
        protected_processes: &[String],
    ) -> Result<Protection, regex::Error> {
        Ok(Protection {
            daemon_pid: std::process::id(),
            users: protected_users,
            patterns: protected_processes
                .iter()
                .map(|pattern| Regex::new(pattern))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Why `process` must not be signalled on behalf of `principal`, if it must not.
    /// Reads /proc (the process's flags and the daemon's ancestry): call it off the runtime.
    pub fn check(&self, principal: &Principal, process: &ProcessInfo) -> Option<String> {
        let pid = process.pid;
        if pid <= 1 {
            return Some("PID 1 (init) and PID 0 are never signalled".to_string());
        }
        if pid == self.daemon_pid {
            return Some("this is gpukilld itself".to_string());
        }
        if procinfo::read_stat(pid).is_ok_and(|stat| stat.kernel_thread) {
            return Some("kernel threads are never signalled".to_string());
        }
        if self.is_daemon_ancestor(pid) {
            return Some("an ancestor of gpukilld is never signalled".to_string());
        }
        match &self.users {
            // The exemption is for root on this node only: a remote principal, or a caller
            // a coordinator forwarded as uid 0 on its own host, meets the protection.
            None if process.uid == 0 && !principal.caller.is_local_root() => {
                return Some(
                    "root's processes are protected (protected_users defaults to root for everyone but root on this node's socket)"
                        .to_string(),
                );
            }
            Some(users)
                if users
                    .iter()
                    .any(|user| *user == *process.user || *user == process.uid.to_string()) =>
            {
                return Some(format!(
                    "processes of user {} are protected (protected_users)",
                    process.user
                ));
            }
            _ => {}
        }
        self.patterns
            .iter()
            .find(|pattern| pattern.is_match(&process.name) || pattern.is_match(&process.cmdline))
            .map(|pattern| format!("matches protected_processes pattern {:?}", pattern.as_str()))
    }

    fn is_daemon_ancestor(&self, pid: u32) -> bool {
        let mut current = self.daemon_pid;
        // PID namespaces are shallow; the bound only guards against a /proc that lies.
        for _ in 0..64 {
            match procinfo::read_stat(current) {
                Ok(stat) if stat.ppid == pid => return true,
                Ok(stat) if stat.ppid > 1 => current = stat.ppid,
                _ => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Caller, Transport};
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    fn principal(uid: u32) -> Principal {
        Principal {
            caller: Caller {
                uid,
                gid: uid,
                pid: None,
                transport: Transport::Local,
                remote: None,
            },
            user: uid.to_string(),
            admin: uid == 0,
        }
    }

    fn process(pid: u32, uid: u32, user: &str, name: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            start_ticks: 1,
            start_time: UNIX_EPOCH,
            uid,
            user: Arc::from(user),
            name: name.to_string(),
            cmdline: format!("/usr/bin/{name} --flag"),
            container: None,
            exe_name: None,
        }
    }

    fn defaults() -> Protection {
        Protection::new(None, &["^Xorg$".to_string()]).expect("valid patterns")
    }

    #[test]
    fn init_kernel_threads_and_the_daemon_and_its_ancestors_are_protected() {
        let rules = defaults();
        let root = principal(0);
        for pid in [0, 1, 2, std::process::id()] {
            let reason = rules.check(&root, &process(pid, 0, "root", "x"));
            assert!(reason.is_some(), "pid {pid} must be protected");
        }
        // In this test the "daemon" is the test process; its parent is its ancestor.
        let parent = nix::unistd::getppid().as_raw() as u32;
        let reason = rules.check(&root, &process(parent, 0, "root", "cargo"));
        assert!(reason.is_some_and(|r| r.contains("ancestor")));
    }

    #[test]
    fn roots_processes_are_protected_by_default_except_from_root() {
        let rules = defaults();
        let roots = process(999_999, 0, "root", "python3");
        assert!(rules.check(&principal(1000), &roots).is_some());
        assert!(rules.check(&principal(0), &roots).is_none());
        let listed = Protection::new(Some(vec!["root".into(), "1234".into()]), &[]).expect("rules");
        assert!(
            listed.check(&principal(0), &roots).is_some(),
            "listed: even for root"
        );
        let by_uid = process(999_999, 1234, "1234", "python3");
        assert!(listed.check(&principal(0), &by_uid).is_some());
    }

    #[test]
    fn roots_processes_are_protected_from_remote_and_forwarded_root() {
        use crate::authz::{Forwarded, Remote, Role};
        let rules = defaults();
        let roots = process(999_999, 0, "root", "python3");
        let remote = |forwarded: Option<Forwarded>| {
            let caller = Caller::remote(Remote {
                principal: "coord".into(),
                role: if forwarded.is_some() {
                    Role::Coordinator
                } else {
                    Role::Admin
                },
                forwarded,
                address: None,
            });
            Principal {
                caller,
                user: "root@coord".into(),
                admin: true,
            }
        };
        let forwarded_root = remote(Some(Forwarded {
            user: "root".into(),
            host: "coord".into(),
            uid: 0,
            role: Role::Admin,
        }));
        assert_eq!(forwarded_root.caller.uid, 0);
        let reason = rules.check(&forwarded_root, &roots).expect("protected");
        assert!(reason.contains("root's processes"), "{reason}");
        assert!(rules.check(&remote(None), &roots).is_some());
        // Everyone else's processes stay open to the same admin.
        let alices = process(999_999, 1000, "alice", "python3");
        assert!(rules.check(&forwarded_root, &alices).is_none());
    }

    #[test]
    fn protected_process_patterns_match_name_or_cmdline() {
        let rules = Protection::new(None, &["^Xorg$".into(), "miner-guard".into()]).expect("rules");
        let admin = principal(0);
        assert!(
            rules
                .check(&admin, &process(999_999, 1000, "alice", "Xorg"))
                .is_some()
        );
        let mut guarded = process(999_999, 1000, "alice", "python3");
        guarded.cmdline = "python3 miner-guard.py".into();
        assert!(rules.check(&admin, &guarded).is_some());
        assert!(
            rules
                .check(&admin, &process(999_999, 1000, "alice", "python3"))
                .is_none()
        );
    }
}
