//! This node's identity in a cluster: a stable id, generated once and kept in the state
//! directory (so a restart, a new host name or a new address is still the same node), and a
//! name (`[node] name`, the host name by default).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The file under the state directory that holds the node id.
pub const ID_FILE: &str = "node-id";

/// Who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// 32 lower-case hex digits.
    pub id: String,
    /// The name other daemons and `gpukillctl --node` use.
    pub name: String,
    /// A plain node or the coordinator.
    pub role: crate::config::ClusterRole,
}

/// Why the node id could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum NodeIdError {
    /// The id file could not be read or written.
    #[error("cannot {action} the node id file {path}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The id file holds something else than an id.
    #[error(
        "the node id file {path} does not hold a node id (32 hex digits): {found:?}; remove it to give this node a new id"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it holds (cut short).
        found: String,
    },
}

/// Reads the node id from `state_dir`, or generates one and writes it there (atomically:
/// two daemons starting at once agree on the id that lands).
pub fn load_or_create_id(state_dir: &Path) -> Result<String, NodeIdError> {
    let path = state_dir.join(ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => return parse_id(&path, &text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(NodeIdError::Io {
                action: "read",
                path,
                source,
            });
        }
    }
    let write_error = |source| NodeIdError::Io {
        action: "write",
        path: path.clone(),
        source,
    };
    let id = random_id().map_err(write_error)?;
    let temporary = state_dir.join(format!(".{ID_FILE}.{}", std::process::id()));
    let written = std::fs::File::create(&temporary)
        .and_then(|mut file| {
            file.write_all(format!("{id}\n").as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| {
            // Keep an id another daemon wrote first.
            std::fs::hard_link(&temporary, &path).or_else(|error| {
                if error.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(error)
                }
            })
        });
    let _ = std::fs::remove_file(&temporary);
    written.map_err(write_error)?;
    let text = std::fs::read_to_string(&path).map_err(|source| NodeIdError::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    parse_id(&path, &text)
}

fn parse_id(path: &Path, text: &str) -> Result<String, NodeIdError> {
    let id = text.trim();
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(id.to_string())
    } else {
        Err(NodeIdError::Malformed {
            path: path.to_path_buf(),
            found: id.chars().take(64).collect(),
        })
    }
}

/// 128 random bits from the kernel, in hex.
pub fn random_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn the_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_id(dir.path()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(load_or_create_id(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_id(other.path()).unwrap(), first);
    }

    #[test]
    fn a_damaged_id_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ID_FILE), "not an id\n").unwrap();
        let error = load_or_create_id(dir.path()).unwrap_err().to_string();
        assert!(error.contains("node-id"), "{error}");
        assert!(error.contains("not an id"), "{error}");
        assert!(error.contains("remove it"), "{error}");
    }
}
