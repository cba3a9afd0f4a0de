//! A database file that SQLite finds corrupt (or not a database at all) is moved aside at
//! start, with its WAL and shared-memory files, to `<name>.corrupt-<unix ms>` (named in the
//! log), and a new one is created at the path: never silently truncated.

use std::path::{Path, PathBuf};

use crate::store::{Store, StoreError};

/// Opens (creating and migrating) the database at `path`; one that is corrupt is moved aside
/// and a new one created in its place.
pub(super) fn open_or_move_aside(path: &Path) -> Result<Store, StoreError> {
    match Store::open(path) {
        Ok(store) => Ok(store),
        Err(error) if is_corruption(&error) => {
            let aside = move_aside(path)?;
            tracing::error!(
                store = %path.display(),
                moved_to = %aside.display(),
                error = %crate::errors::chain(&error),
                "the store is corrupt: moved it aside and started a new one"
            );
            Store::open(path)
        }
        Err(error) => Err(error),
    }
}

/// Whether SQLite said the file is corrupt or not a database.
fn is_corruption(error: &StoreError) -> bool {
    let source = match error {
        StoreError::Open { source, .. } | StoreError::Migrate { source, .. } => source,
        _ => return false,
    };
    matches!(
        source.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Renames a corrupt database (and its WAL and shared-memory files) out of the way.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = crate::store::unix_ms(std::time::SystemTime::now());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(aside);
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(source) => {
                return Err(StoreError::CreateDir {
                    path: PathBuf::from(from),
                    source,
                });
            }
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::super::tests::batch;
    use super::super::{Database, HistoryOptions};

    #[tokio::test]
    async fn a_corrupt_database_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpukill.db");
        std::fs::write(
            &path,
            b"this is not an SQLite database, it is 64 bytes of text........",
        )
        .unwrap();
        let log = Database::start_with_history(path.clone(), HistoryOptions::default()).unwrap();
        assert_eq!(log.record(batch(2, 1_000)).await.unwrap().len(), 2);
        let moved: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().to_string())
            .filter(|name| name.starts_with("gpukill.db.corrupt-"))
            .collect();
        assert_eq!(moved.len(), 1, "{moved:?}");
        let kept = std::fs::read(dir.path().join(&moved[0])).unwrap();
        assert!(
            kept.starts_with(b"this is not an SQLite database"),
            "kept byte for byte"
        );
    }
}
