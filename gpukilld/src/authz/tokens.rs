//! Bearer tokens: the token file (`[tcp] tokens`) maps secrets to principals. Tokens are kept
//! only as SHA-256 digests and a presented token is compared with every one of them in
//! constant time, so neither the answer's timing nor the daemon's memory gives a token away.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

/// The shortest token accepted: 16 characters (128 bits of hex or base64 are 22 or more).
pub const MIN_TOKEN_LEN: usize = 16;

/// The loaded token file.
#[derive(Clone)]
pub struct Tokens {
    /// (principal, SHA-256 of its token).
    entries: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field(
                "principals",
                &self.entries.iter().map(|e| &e.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It cannot be read.
    #[error("cannot read the token file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Others may read it.
    #[error(
        "the token file {path} has mode {mode:04o}: it holds secrets, so no one but its owner may read it (chmod 600 {path})"
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Someone other than root or the daemon's own user owns it, and so could change which
    /// tokens name which principals.
    #[error(
        "the token file {path} is owned by uid {owner}: it decides who may do what, so only root or gpukilld's own user (uid {daemon}) may own it (chown root:root {path})"
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        daemon: u32,
    },
    /// A line is not `PRINCIPAL TOKEN`.
    #[error("token file {path}, line {line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// What is wrong with the owner or mode of a file that holds secrets, if anything: it must be
/// owned by root or by the daemon's own effective uid (anyone else could rewrite it), and
/// readable by its owner only.
fn secret_file_problem(path: &Path, metadata: &std::fs::Metadata) -> Option<TokenFileError> {
    let daemon = nix::unistd::geteuid().as_raw();
    let owner = metadata.uid();
    if owner != 0 && owner != daemon {
        return Some(TokenFileError::Owner {
            path: path.to_path_buf(),
            owner,
            daemon,
        });
    }
    let mode = metadata.mode() & 0o777;
    (mode & 0o077 != 0).then(|| TokenFileError::Mode {
        path: path.to_path_buf(),
        mode,
    })
}

/// The `authorization` value (`Bearer TOKEN`) for the token a daemon presents, read from a
/// file that holds it on its first non-empty line; the file must be owned by root or the
/// daemon's user and readable by its owner only. The error says what is wrong with the
/// file (the caller names the setting).
pub fn read_bearer(path: &Path) -> Result<String, String> {
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot read it: {error}"))?;
    if let Some(problem) = secret_file_problem(path, &metadata) {
        return Err(problem.to_string());
    }
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read it: {error}"))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or_else(|| "holds no token (put the token on its first line)".to_string())?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token holds characters a header cannot carry".to_string());
    }
    Ok(format!("Bearer {token}"))
}

fn hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

impl Tokens {
    /// Reads `path`: one `PRINCIPAL TOKEN` per line; blank lines and `#` comments are
    /// skipped. The file must be owned by root or the daemon's own user, and not be
    /// readable by group or others.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let read_error = |source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        if let Some(problem) = secret_file_problem(path, &metadata) {
            return Err(problem);
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Tokens::parse(&text).map_err(|(line, message)| TokenFileError::Line {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// Parses the file's text; an error carries the line number and what is wrong (never
    /// the token).
    pub fn parse(text: &str) -> Result<Tokens, (usize, String)> {
        let mut entries: Vec<(String, [u8; 32])> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(principal), Some(token), None) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err((
                    number + 1,
                    "expected `PRINCIPAL TOKEN` (two fields separated by spaces)".into(),
                ));
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err((
                    number + 1,
                    format!(
                        "the token of {principal} is {} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
                        token.len()
                    ),
                ));
            }
            let digest = hash(token);
            if let Some((other, _)) = entries.iter().find(|(_, d)| *d == digest) {
                return Err((
                    number + 1,
                    format!(
                        "the token of {principal} is also the token of {other}: tokens must be unique"
                    ),
                ));
            }
            entries.push((principal.to_string(), digest));
        }
        Ok(Tokens { entries })
    }

    /// The principal whose token `presented` is. Every entry is compared, in constant time.
    pub fn principal(&self, presented: &str) -> Option<&str> {
        let presented = hash(presented);
        let mut found = None;
        for (principal, digest) in &self.entries {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(principal.as_str());
            }
        }
        found
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn tokens_map_to_their_principals() {
        let tokens = Tokens::parse(
            "# ops tokens\n\ncoordinator 0123456789abcdef0123\nalice   fedcba9876543210fedc\n",
        )
        .unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.principal("0123456789abcdef0123"),
            Some("coordinator")
        );
        assert_eq!(tokens.principal("fedcba9876543210fedc"), Some("alice"));
        assert_eq!(tokens.principal("0123456789abcdef012"), None);
        assert_eq!(tokens.principal(""), None);
    }

    #[test]
    fn bad_lines_are_named_without_the_secret() {
        let (line, message) = Tokens::parse("a 0123456789abcdef\nb short\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(message.contains("at least 16"), "{message}");
        assert!(!message.contains("short"), "{message}");
        let (line, message) =
            Tokens::parse("a 0123456789abcdef\nb 0123456789abcdef\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(message.contains("unique"), "{message}");
        let (line, _) = Tokens::parse("a b c\n").unwrap_err();
        assert_eq!(line, 1);
    }

    #[test]
    fn a_readable_token_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "a 0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Tokens::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("0644") && error.contains("chmod 600"),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Tokens::load(&path).unwrap().len(), 1);
        let error = read_bearer(&dir.path().join("missing")).unwrap_err();
        assert!(error.contains("cannot read"), "{error}");
        std::fs::write(dir.path().join("bearer"), "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("bearer"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let error = read_bearer(&dir.path().join("bearer")).unwrap_err();
        assert!(
            error.contains("0640") && error.contains("chmod 600"),
            "{error}"
        );
    }

    #[test]
    fn a_token_file_owned_by_another_user_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "a 0123456789abcdef\n").unwrap();
        let bearer = dir.path().join("bearer");
        std::fs::write(&bearer, "0123456789abcdef\n").unwrap();
        if !nix::unistd::geteuid().is_root() {
            // Only root can give a file away; as another user, our own file is accepted.
            assert_eq!(Tokens::load(&path).unwrap().len(), 1);
            return;
        }
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        for file in [&path, &bearer] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
            nix::unistd::chown(file.as_path(), nobody, None).unwrap();
        }
        let error = Tokens::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("owned by uid 65534") && error.contains("chown root"),
            "{error}"
        );
        let error = read_bearer(&bearer).unwrap_err();
        assert!(error.contains("owned by uid 65534"), "{error}");
        nix::unistd::chown(path.as_path(), Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
        assert_eq!(Tokens::load(&path).unwrap().len(), 1);
    }
}
