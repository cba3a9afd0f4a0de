//! What a caller may see of a file that holds secrets (the guard policy): admins see the
//! file as it is; everyone else sees it with every secret replaced by [`REDACTED`], and
//! otherwise unchanged, so it still parses and still reads as the same policy.
//!
//! A secret is: the value of any key whose name says it holds one (`token`, `secret`,
//! `password`, `header`, `auth`, ... anywhere in the key, every string under it), and in any
//! URL, in a value or in a comment, its user information and everything after the host
//! (`http://user:pass@relay:9000/hooks/T0/B0/XXXX?token=abc` is shown as
//! `http://<redacted>@relay:9000/<redacted>`): webhook receivers commonly carry their secret
//! in the path or the query.

use toml_edit::{DocumentMut, Item, Value};

use super::Principal;

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// Words that make a key's value a secret (compared with the key in lowercase).
const SECRET_KEY_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "credential",
    "apikey",
    "api_key",
    "auth",
    "bearer",
    "cookie",
    "header",
    "private",
];

/// Why a file cannot be shown redacted.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} does not parse as TOML ({reason}), so its secrets cannot be redacted: only an admin may read it until it is fixed"
)]
pub struct RedactError {
    /// The file.
    pub path: String,
    /// What the TOML parser said.
    pub reason: String,
}

/// The text of the file at `path` as `principal` may see it: all of it for an admin, with
/// its secrets redacted for anyone else.
pub fn shown_to(principal: &Principal, path: &str, text: String) -> Result<String, RedactError> {
    if principal.admin {
        return Ok(text);
    }
    redact_toml(&text).map_err(|error| RedactError {
        path: path.to_string(),
        reason: error.message().trim().to_string(),
    })
}

/// `text` (TOML) with its secrets redacted; byte for byte the same when it holds none.
pub fn redact_toml(text: &str) -> Result<String, toml_edit::TomlError> {
    let mut document: DocumentMut = text.parse()?;
    let changed = redact_table(document.as_table_mut().iter_mut(), false);
    let text = if changed {
        document.to_string()
    } else {
        text.to_string()
    };
    // Comments (and anything the walk above cannot see) may quote URLs too.
    Ok(redact_urls(&text))
}

fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_WORDS.iter().any(|word| key.contains(word))
}

/// Redacts the items of one table; `secret` when a key above named a secret. True when
/// anything changed.
fn redact_table<'a>(
    items: impl Iterator<Item = (toml_edit::KeyMut<'a>, &'a mut Item)>,
    secret: bool,
) -> bool {
    let mut changed = false;
    for (key, item) in items {
        changed |= redact_item(item, secret || secret_key(key.get()));
    }
    changed
}

fn redact_item(item: &mut Item, secret: bool) -> bool {
    match item {
        Item::None => false,
        Item::Value(value) => redact_value(value, secret),
        Item::Table(table) => redact_table(table.iter_mut(), secret),
        Item::ArrayOfTables(tables) => tables.iter_mut().fold(false, |changed, table| {
            redact_table(table.iter_mut(), secret) | changed
        }),
    }
}

fn redact_value(value: &mut Value, secret: bool) -> bool {
    match value {
        Value::String(text) => {
            let shown = if secret {
                REDACTED.to_string()
            } else {
                redact_urls(text.value())
            };
            if shown == *text.value() {
                return false;
            }
            // Keep the spacing and comments around the value.
            let decor = text.decor().clone();
            *value = Value::from(shown);
            *value.decor_mut() = decor;
            true
        }
        Value::Array(array) => array.iter_mut().fold(false, |changed, value| {
            redact_value(value, secret) | changed
        }),
        Value::InlineTable(table) => {
            let mut changed = false;
            for (key, value) in table.iter_mut() {
                changed |= redact_value(value, secret || secret_key(key.get()));
            }
            changed
        }
        // Numbers, booleans and dates are never secrets.
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) | Value::Datetime(_) => false,
    }
}

/// `text` with every URL's user information and everything after its host redacted. A URL
/// ends at white space, a quote or a backslash, so redacting never changes the TOML syntax
/// around it; redacting twice changes nothing more.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let scheme = &rest[scheme_start..at];
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push_str(&rest[..at + 3]);
            rest = &rest[at + 3..];
            continue;
        }
        out.push_str(&rest[..at + 3]);
        let after = &rest[at + 3..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'))
            .unwrap_or(after.len());
        let url = &after[..end];
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, tail) = url.split_at(authority_end);
        let host = match authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push('@');
                &authority[at + 1..]
            }
            None => authority,
        };
        out.push_str(host);
        if !tail.is_empty() && tail != "/" {
            out.push('/');
            out.push_str(REDACTED);
        } else {
            out.push_str(tail);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn urls_keep_their_scheme_and_host_only() {
        assert_eq!(
            redact_urls("http://user:pa%40ss@relay:9000/hooks/T0/B0/XXXX?token=abc#frag"),
            "http://<redacted>@relay:9000/<redacted>"
        );
        assert_eq!(redact_urls("http://relay:9000/"), "http://relay:9000/");
        assert_eq!(redact_urls("http://relay:9000"), "http://relay:9000");
        assert_eq!(
            redact_urls("# old: https://a:b@x.example/p?q=1 and ftp://h/x\n"),
            "# old: https://<redacted>@x.example/<redacted> and ftp://h/<redacted>\n"
        );
        let once = redact_urls("\"http://u@h/p?x\"");
        assert_eq!(once, "\"http://<redacted>@h/<redacted>\"");
        assert_eq!(redact_urls(&once), once);
        assert_eq!(redact_urls("no url :// here"), "no url :// here");
    }

    #[test]
    fn a_policy_without_secrets_is_shown_byte_for_byte() {
        let text = "# The lab's policy.\nmode = \"dry-run\"   # for now\n\n[[user]]\nname = \"alice\"\nmax_memory_per_process = \"20GiB\"\n\n[notify]\nwebhook = \"http://127.0.0.1:9000/\"\n";
        assert_eq!(redact_toml(text).unwrap(), text);
    }

    #[test]
    fn secrets_are_redacted_and_the_rest_is_kept_and_parses() {
        let text = r#"# webhook was http://old:secret@relay.example/x
mode = "soft"  # keep this comment
[notify]
webhook = "http://hook:s3cr3t@relay.example:9000/hooks/T0/B0/ABCDEF?token=tok123"
webhook_retries = 3
[notify.headers]
Authorization = "Bearer abcdef0123456789"
[[user]]
name = "alice"
api_token = "zzz-secret-zzz"
escaped = "http://u\u0040h/p?sig=escaped-secret"
limits = { password = "pw-in-inline", max = 3 }
"#;
        let shown = redact_toml(text).unwrap();
        for secret in [
            "old:secret",
            "s3cr3t",
            "T0/B0/ABCDEF",
            "tok123",
            "abcdef0123456789",
            "zzz-secret-zzz",
            "escaped-secret",
            "pw-in-inline",
        ] {
            assert!(!shown.contains(secret), "{secret} in:\n{shown}");
        }
        assert!(shown.contains("# keep this comment"), "{shown}");
        assert!(
            shown.contains("webhook = \"http://<redacted>@relay.example:9000/<redacted>\""),
            "{shown}"
        );
        let parsed: toml::Table = toml::from_str(&shown).unwrap();
        assert_eq!(parsed["notify"]["webhook_retries"].as_integer(), Some(3));
        assert_eq!(
            parsed["notify"]["headers"]["Authorization"].as_str(),
            Some(REDACTED)
        );
        assert_eq!(parsed["user"][0]["name"].as_str(), Some("alice"));
        assert_eq!(parsed["user"][0]["limits"]["max"].as_integer(), Some(3));
        // Redacting what is shown changes nothing more.
        assert_eq!(redact_toml(&shown).unwrap(), shown);
    }

    #[test]
    fn admins_see_the_file_and_a_broken_file_is_for_admins_only() {
        use crate::authz::{Caller, Transport};
        let principal = |admin: bool| Principal {
            caller: Caller {
                uid: 1000,
                gid: 1000,
                pid: None,
                transport: Transport::Local,
                remote: None,
            },
            user: "alice".into(),
            admin,
        };
        let text = "webhook = \"http://a:b@h/\"\n".to_string();
        assert_eq!(
            shown_to(&principal(true), "guard.toml", text.clone()).unwrap(),
            text
        );
        assert!(
            !shown_to(&principal(false), "guard.toml", text)
                .unwrap()
                .contains("a:b")
        );
        let error = shown_to(
            &principal(false),
            "/etc/gpukill/guard.toml",
            "x = \"http://a:b@h".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("/etc/gpukill/guard.toml") && error.contains("only an admin"),
            "{error}"
        );
        assert!(!error.contains("a:b"), "{error}");
    }
}
