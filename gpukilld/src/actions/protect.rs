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
            None if process.uid == 0 && principal.caller.uid != 0 => {
                return Some(
                    "root's processes are protected (protected_users defaults to root for everyone but root)"
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
