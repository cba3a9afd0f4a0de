//! Changing the policy file from `gpukillctl guard ...`: edits of its text that keep the
//! admin's comments and layout (`toml_edit`), checked as a whole before anything is written.

use std::fmt;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use super::policy::Mode;

/// The kinds of entries `guard policy add-*` / `remove-*` handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// `[[user]]`, keyed by `name`.
    User,
    /// `[[group]]`, keyed by `name`.
    Group,
    /// `[[gpu]]`, keyed by `index`.
    Gpu,
}

impl EntryKind {
    /// The table array's name.
    pub fn table(self) -> &'static str {
        match self {
            EntryKind::User => "user",
            EntryKind::Group => "group",
            EntryKind::Gpu => "gpu",
        }
    }

    /// The key that identifies an entry.
    fn key(self) -> &'static str {
        match self {
            EntryKind::User | EntryKind::Group => "name",
            EntryKind::Gpu => "index",
        }
    }
}

/// One change to the policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `guard enable` / `guard disable`.
    Enabled(bool),
    /// `guard mode ...`.
    Mode(Mode),
    /// Add an entry, or replace the one with the same key: its keys as TOML.
    Add {
        /// Which table array.
        kind: EntryKind,
        /// `name = "alice"` (or `index = 3`) and the limits.
        fragment: String,
    },
    /// Remove the entry with this key.
    Remove {
        /// Which table array.
        kind: EntryKind,
        /// Its name, or its index for a GPU.
        key: String,
    },
    /// Replace the whole file (`guard import`).
    Replace(String),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Enabled(true) => f.write_str("guard enable"),
            Change::Enabled(false) => f.write_str("guard disable"),
            Change::Mode(mode) => write!(f, "guard mode {}", mode.as_str()),
            Change::Add { kind, .. } => write!(f, "guard policy add-{}", kind.table()),
            Change::Remove { kind, key } => write!(f, "guard policy remove-{} {key}", kind.table()),
            Change::Replace(_) => f.write_str("guard import"),
        }
    }
}

/// `current` with `change` applied, and a line saying what changed. The result is not
/// checked here: the caller parses it as a whole.
pub fn apply(current: &str, change: &Change) -> Result<(String, String), String> {
    if let Change::Replace(text) = change {
        return Ok((text.clone(), "replaced the whole policy".to_owned()));
    }
    let mut doc: DocumentMut = current
        .parse()
        .map_err(|error| format!("the current policy file does not parse: {error}"))?;
    let summary = match change {
        Change::Enabled(enabled) => {
            doc["enabled"] = value(*enabled);
            format!("enabled = {enabled}")
        }
        Change::Mode(mode) => {
            doc["mode"] = value(mode.as_str());
            format!("mode = \"{}\"", mode.as_str())
        }
        Change::Add { kind, fragment } => {
            let entry: DocumentMut = fragment.parse().map_err(|error| {
                format!("the [[{}]] entry is not valid TOML: {error}", kind.table())
            })?;
            let entry: Table = entry.as_table().clone();
            let key = key_of(&entry, *kind)
                .ok_or_else(|| format!("a [[{}]] entry needs its {}", kind.table(), kind.key()))?;
            let entries = entries_mut(&mut doc, *kind)?;
            match position(entries, *kind, &key) {
                Some(at) => {
                    if let Some(existing) = entries.get_mut(at) {
                        *existing = entry;
                    }
                    format!("replaced [[{}]] {key}", kind.table())
                }
                None => {
                    entries.push(entry);
                    format!("added [[{}]] {key}", kind.table())
                }
            }
        }
        Change::Remove { kind, key } => {
            let entries = entries_mut(&mut doc, *kind)?;
            let at = position(entries, *kind, key)
                .ok_or_else(|| format!("the policy has no [[{}]] {key}", kind.table()))?;
            entries.remove(at);
            if entries.is_empty() {
                doc.remove(kind.table());
            }
            format!("removed [[{}]] {key}", kind.table())
        }
        Change::Replace(_) => unreachable!("handled above"),
    };
    Ok((doc.to_string(), summary))
}

/// The entry's key as text: a name, or a GPU index.
fn key_of(entry: &Table, kind: EntryKind) -> Option<String> {
    let item = entry.get(kind.key())?;
    match kind {
        EntryKind::Gpu => item.as_integer().map(|index| index.to_string()),
        EntryKind::User | EntryKind::Group => item.as_str().map(str::to_owned),
    }
}

fn position(entries: &ArrayOfTables, kind: EntryKind, key: &str) -> Option<usize> {
    entries
        .iter()
        .position(|entry| key_of(entry, kind).as_deref() == Some(key))
}

/// The `[[kind]]` array, created when missing.
fn entries_mut(doc: &mut DocumentMut, kind: EntryKind) -> Result<&mut ArrayOfTables, String> {
    let item = doc
        .entry(kind.table())
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    item.as_array_of_tables_mut().ok_or_else(|| {
        format!(
            "`{}` in the policy file is not a list of [[{}]] tables",
            kind.table(),
            kind.table()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# The lab's GPU policy.\nmode = \"dry-run\" # for now\n\n[[user]]\n# our biggest user\nname = \"alice\"\nmax_processes = 2\n";

    #[test]
    fn mode_and_enabled_keep_comments() {
        let (text, summary) = apply(FILE, &Change::Mode(Mode::Hard)).unwrap();
        assert_eq!(summary, "mode = \"hard\"");
        assert!(
            text.starts_with("# The lab's GPU policy.\nmode = \"hard\""),
            "{text}"
        );
        assert!(text.contains("# our biggest user"), "{text}");
        let (text, _) = apply(&text, &Change::Enabled(false)).unwrap();
        let parsed: toml::Table = text.parse().unwrap();
        assert_eq!(parsed["enabled"].as_bool(), Some(false));
        // Top-level keys stay above the tables.
        assert!(
            text.find("enabled").unwrap() < text.find("[[user]]").unwrap(),
            "{text}"
        );
    }

    #[test]
    fn add_replaces_by_key_and_remove_removes() {
        let add = |fragment: &str| Change::Add {
            kind: EntryKind::User,
            fragment: fragment.to_owned(),
        };
        let (text, summary) = apply(FILE, &add("name = \"bob\"\nmax_processes = 1\n")).unwrap();
        assert_eq!(summary, "added [[user]] bob");
        let (text, summary) = apply(&text, &add("name = \"alice\"\nmax_processes = 5\n")).unwrap();
        assert_eq!(summary, "replaced [[user]] alice");
        let parsed: toml::Table = text.parse().unwrap();
        let users = parsed["user"].as_array().unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0]["max_processes"].as_integer(), Some(5));
        let (text, summary) = apply(
            &text,
            &Change::Remove {
                kind: EntryKind::User,
                key: "bob".into(),
            },
        )
        .unwrap();
        assert_eq!(summary, "removed [[user]] bob");
        assert!(!text.contains("bob"));
        let gpu = Change::Add {
            kind: EntryKind::Gpu,
            fragment: "index = 3\nreserved_memory = \"8GiB\"\n".into(),
        };
        let (text, summary) = apply(&text, &gpu).unwrap();
        assert_eq!(summary, "added [[gpu]] 3");
        let (_, summary) = apply(
            &text,
            &Change::Remove {
                kind: EntryKind::Gpu,
                key: "3".into(),
            },
        )
        .unwrap();
        assert_eq!(summary, "removed [[gpu]] 3");
    }

    #[test]
    fn bad_changes_say_why() {
        let missing = Change::Remove {
            kind: EntryKind::Group,
            key: "lab".into(),
        };
        assert_eq!(
            apply(FILE, &missing).unwrap_err(),
            "the policy has no [[group]] lab"
        );
        let nameless = Change::Add {
            kind: EntryKind::User,
            fragment: "max_processes = 1".into(),
        };
        assert_eq!(
            apply(FILE, &nameless).unwrap_err(),
            "a [[user]] entry needs its name"
        );
        assert!(
            apply("mode = [", &Change::Enabled(true))
                .unwrap_err()
                .starts_with("the current policy file does not parse")
        );
        assert_eq!(
            apply("", &Change::Mode(Mode::Soft)).unwrap().0,
            "mode = \"soft\"\n"
        );
    }
}
