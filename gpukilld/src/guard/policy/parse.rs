//! From the text of `guard.toml` to a [`CompiledPolicy`]: parsing, checking every value,
//! resolving group names from the group database, and errors that name the line of the
//! offending table or key. Nothing of a file that fails is used.

use std::collections::{BTreeSet, HashMap};

use regex::Regex;

use super::compiled::{CompiledPolicy, Members};
use super::schema::{Limits, Policy};
use crate::guard::notify::Webhook;
use crate::guard::rogue::{RiskLevel, RogueScorer};

/// What is wrong with a policy file: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}line {line}: {reason}", origin.as_deref().map(|o| format!("{o}, ")).unwrap_or_default())]
pub struct PolicyError {
    /// The file, when the text came from one.
    pub origin: Option<String>,
    /// The 1-based line of the offending key or table.
    pub line: usize,
    /// What is wrong, naming the value.
    pub reason: String,
}

impl CompiledPolicy {
    /// Parses and checks `text` (from `origin`, for messages), resolving Unix groups with
    /// `unix_group_members`.
    pub fn parse(
        text: &str,
        origin: Option<&str>,
        unix_group_members: &dyn Fn(&str) -> Option<Vec<String>>,
    ) -> Result<CompiledPolicy, PolicyError> {
        let error = |line: usize, reason: String| PolicyError {
            origin: origin.map(str::to_owned),
            line,
            reason,
        };
        let policy: Policy = toml::from_str(text).map_err(|parse| {
            let line = parse
                .span()
                .map_or(1, |span| line_of_offset(text, span.start));
            error(line, parse.message().to_owned())
        })?;
        let lines = TableLines::new(text);
        let mut protected_patterns = Vec::new();
        for pattern in &policy.protected_processes {
            let regex = Regex::new(pattern).map_err(|regex| {
                error(
                    lines.key("protected_processes"),
                    format!("protected_processes pattern {pattern:?} does not compile: {regex}"),
                )
            })?;
            protected_patterns.push(regex);
        }
        check_limits(&policy.defaults, "[defaults]")
            .map_err(|reason| error(lines.table("defaults"), reason))?;
        check_fraction(policy.hysteresis_pct, "hysteresis_pct", 0.0, 50.0)
            .map_err(|reason| error(lines.key("hysteresis_pct"), reason))?;
        if policy.max_kills_per_minute == 0 {
            return Err(error(
                lines.key("max_kills_per_minute"),
                "max_kills_per_minute 0 would never act: use 1 or more, or mode = \"dry-run\""
                    .to_owned(),
            ));
        }
        let mut seen = BTreeSet::new();
        for (n, user) in policy.users.iter().enumerate() {
            let at = lines.array("user", n);
            check_limits(&user.limits, &format!("[[user]] {}", user.name))
                .map_err(|reason| error(at, reason))?;
            if !seen.insert(user.name.as_str()) {
                return Err(error(
                    at,
                    format!("user {:?} has two [[user]] entries", user.name),
                ));
            }
        }
        let group_names: BTreeSet<&str> = policy.groups.iter().map(|g| g.name.as_str()).collect();
        if group_names.len() != policy.groups.len() {
            return Err(error(
                lines.array("group", 0),
                "two [[group]] entries share a name".to_owned(),
            ));
        }
        let mut group_members = Vec::new();
        for (n, group) in policy.groups.iter().enumerate() {
            let at = lines.array("group", n);
            let mut members: Vec<String> = group.members.clone();
            if let Some(unix) = &group.unix_group {
                let found = unix_group_members(unix).ok_or_else(|| {
                    error(
                        at,
                        format!(
                            "[[group]] {}: Unix group {unix:?} does not exist",
                            group.name
                        ),
                    )
                })?;
                members.extend(found);
            }
            if let Some(pct) = group.max_utilization_pct
                && !(pct.is_finite() && pct > 0.0)
            {
                return Err(error(
                    at,
                    format!(
                        "[[group]] {}: max_utilization_pct {pct} must be above 0",
                        group.name
                    ),
                ));
            }
            group_members.push(Members::new(members));
        }
        // `@name` that is not a [[group]]: a Unix group, resolved now.
        let mut unix_groups = HashMap::new();
        let lists = policy
            .gpus
            .iter()
            .enumerate()
            .flat_map(|(n, gpu)| {
                let at = lines.array("gpu", n);
                gpu.allowed_users
                    .iter()
                    .flatten()
                    .chain(&gpu.blocked_users)
                    .map(move |name| (at, name))
            })
            .chain(policy.windows.iter().enumerate().flat_map(|(n, window)| {
                let at = lines.array("window", n);
                window.applies_to.iter().map(move |name| (at, name))
            }));
        for (at, name) in lists {
            let Some(group) = name.strip_prefix('@') else {
                continue;
            };
            if group_names.contains(group) || unix_groups.contains_key(group) {
                continue;
            }
            let found = unix_group_members(group).ok_or_else(|| {
                error(
                    at,
                    format!("{name:?} is neither a [[group]] of this file nor a Unix group"),
                )
            })?;
            unix_groups.insert(group.to_owned(), Members::new(found));
        }
        let mut gpus = BTreeSet::new();
        for (n, gpu) in policy.gpus.iter().enumerate() {
            if !gpus.insert(gpu.index) {
                return Err(error(
                    lines.array("gpu", n),
                    format!("GPU {} has two [[gpu]] entries", gpu.index),
                ));
            }
        }
        for (n, window) in policy.windows.iter().enumerate() {
            check_limits(&window.limits, &format!("[[window]] {}", window.name))
                .map_err(|reason| error(lines.array("window", n), reason))?;
        }
        let rogue = RogueScorer::new(&policy.rogue).map_err(|rogue| {
            error(
                lines.table("rogue"),
                format!("[rogue] {}", crate::errors::chain(&rogue)),
            )
        })?;
        if let Some(url) = &policy.notify.webhook {
            Webhook::parse(url).map_err(|reason| error(lines.table("notify"), reason))?;
        }
        if policy.rogue_act_at == Some(RiskLevel::None) {
            return Err(error(
                lines.key("rogue_act_at"),
                "rogue_act_at \"none\" would act on every process: use low, medium, high or critical".to_owned(),
            ));
        }
        Ok(CompiledPolicy::new(
            policy,
            protected_patterns,
            group_members,
            rogue,
            unix_groups,
        ))
    }
}

/// The members of Unix group `name` from the group database: its member list and the users
/// whose primary group it is. `None` when the group does not exist. Blocking.
pub fn unix_group_members(name: &str) -> Option<Vec<String>> {
    let group = nix::unistd::Group::from_name(name).ok().flatten()?;
    let mut members = group.mem.clone();
    // Primary-group members are only in /etc/passwd; a host with network users would need
    // getpwent, which is not thread-safe. The listed members cover the common case.
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3 && fields[3].parse::<u32>() == Ok(group.gid.as_raw()) {
                members.push(fields[0].to_owned());
            }
        }
    }
    Some(members)
}

fn check_limits(limits: &Limits, what: &str) -> Result<(), String> {
    if let Some(key) = limits.unknown.keys().next() {
        return Err(format!(
            "{what}: unknown key {key:?}; limits are max_memory_per_process, max_memory_total, max_utilization_pct, utilization_window, max_duration, max_processes, allowed_gpus, blocked_gpus"
        ));
    }
    if let Some(pct) = limits.max_utilization_pct {
        check_fraction(pct, &format!("{what}: max_utilization_pct"), 0.0, 100.0)?;
    }
    if limits
        .utilization_window
        .is_some_and(|window| window.is_zero())
    {
        return Err(format!("{what}: utilization_window must be longer than 0s"));
    }
    Ok(())
}

fn check_fraction(value: f64, what: &str, low: f64, high: f64) -> Result<(), String> {
    if value.is_finite() && value >= low && value <= high {
        Ok(())
    } else {
        Err(format!("{what} {value} is out of range ({low} to {high})"))
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Where the tables and top-level keys of a policy file start, for error messages.
struct TableLines<'a> {
    text: &'a str,
}

impl<'a> TableLines<'a> {
    fn new(text: &'a str) -> Self {
        TableLines { text }
    }

    fn find(&self, wanted: impl Fn(&str) -> bool, nth: usize) -> usize {
        self.text
            .lines()
            .enumerate()
            .filter(|(_, line)| wanted(line.trim()))
            .nth(nth)
            .map_or(1, |(n, _)| n + 1)
    }

    /// The line of `[[name]]` number `n`.
    fn array(&self, name: &str, n: usize) -> usize {
        let header = format!("[[{name}]]");
        self.find(|line| line.starts_with(&header), n)
    }

    /// The line of `[name]`.
    fn table(&self, name: &str) -> usize {
        let header = format!("[{name}]");
        self.find(|line| line.starts_with(&header), 0)
    }

    /// The line of top-level `key = ...`.
    fn key(&self, key: &str) -> usize {
        self.find(
            |line| {
                line.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            },
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::parse;
    use super::super::{Mode, TimeOfDay};
    use super::*;

    #[test]
    fn errors_name_the_line_and_the_value() {
        let cases: [(&str, usize, &str); 8] = [
            ("mode = \"strict\"", 1, "unknown variant `strict`"),
            ("grace = \"soon\"", 1, "invalid duration \"soon\""),
            (
                // Inside a table with limits, toml names the table's line.
                "[[user]]\nname = \"a\"\n\n[[user]]\nname = \"b\"\nmax_memory_per_process = \"lots\"",
                4,
                "invalid size \"lots\"",
            ),
            (
                "[[user]]\nname = \"a\"\n[[user]]\nname = \"b\"\nmax_gpus = 2",
                3,
                "[[user]] b: unknown key \"max_gpus\"",
            ),
            (
                "protected_processes = [\"(\"]",
                1,
                "protected_processes pattern \"(\" does not compile",
            ),
            ("enabled = true\nx = 1", 2, "unknown field `x`"),
            (
                "[[window]]\nname = \"w\"\nstart = \"25:00\"\nend = \"06:00\"",
                3,
                "invalid time \"25:00\"",
            ),
            (
                "[[group]]\nname = \"g\"\nunix_group = \"no-such-group\"",
                1,
                "Unix group \"no-such-group\" does not exist",
            ),
        ];
        for (text, line, reason) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.line, line, "{text}: {error}");
            assert!(error.reason.contains(reason), "{text}: {error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("guard.toml, line {line}: "))
            );
        }
    }

    #[test]
    fn rogue_settings_are_checked() {
        let compiled = parse("rogue_act_at = \"high\"\n[rogue]\nhigh_util_pct = 90\n").unwrap();
        assert_eq!(compiled.policy.rogue_act_at, Some(RiskLevel::High));
        let error = parse("rogue_act_at = \"none\"").unwrap_err();
        assert!(
            error.reason.contains("would act on every process"),
            "{error}"
        );
        let error = parse("x = 1\n[rogue]\nname_patterns = [\"(\"]\n").unwrap_err();
        assert_eq!(error.line, 1, "unknown x first: {error}");
        let error = parse("\n[rogue]\nname_patterns = [\"(\"]\n").unwrap_err();
        assert_eq!(error.line, 2, "{error}");
        assert!(
            error.reason.starts_with("[rogue] name_patterns[0]"),
            "{error}"
        );
    }

    #[test]
    fn the_packaged_example_is_valid() {
        let text = include_str!("../../../../packaging/guard.toml");
        let compiled = parse(text).unwrap();
        assert_eq!(compiled.policy.mode, Mode::DryRun);
        assert_eq!(compiled.policy.users.len(), 1);
        assert_eq!(compiled.policy.windows[0].start, TimeOfDay(20 * 60));
        assert!(compiled.policy.notify.terminals);
    }
}
