//! The policy file on disk: reading and checking it, noticing that it changed, writing a
//! changed one atomically.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Loaded, UpdateError};
use crate::actions::protect::Protection;
use crate::guard::policy::{CompiledPolicy, unix_group_members};

/// The file's policy; `Ok(None)` when there is no file.
pub(super) fn load_file(
    path: &Path,
    daemon_users: Option<&Vec<String>>,
    daemon_processes: &[String],
) -> Result<Option<Loaded>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let origin = path.display().to_string();
    let policy = CompiledPolicy::parse(&text, Some(&origin), &unix_group_members)
        .map_err(|error| error.to_string())?;
    let mut users = daemon_users
        .cloned()
        .unwrap_or_else(|| vec!["root".to_owned()]);
    users.extend(policy.policy.protected_users.iter().cloned());
    let mut patterns = daemon_processes.to_vec();
    patterns.extend(policy.policy.protected_processes.iter().cloned());
    let protection = Protection::new(Some(users), &patterns).map_err(|error| error.to_string())?;
    Ok(Some(Loaded {
        policy,
        protection,
        loaded_at: SystemTime::now(),
    }))
}

/// Writes `text` to `path` through a temporary file in the same directory, flushed to disk,
/// then renamed over it: a reader (or a crash) sees the old file or the new one, never half.
pub(super) fn write_atomically(path: &Path, text: &str) -> Result<(), UpdateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpdateError::Io { path, source }
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&temporary)
        .map_err(io(&temporary))?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(UpdateError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        // The rename is durable once the directory is.
        let _ = std::fs::File::open(dir).and_then(|dir| dir.sync_all());
    }
    Ok(())
}

/// The file's modification time and length, to notice a change.
pub(super) fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
