//! gpukill-manual: man pages and shell completions rendered from a clap command.
//!
//! One renderer for every way they are made: `gpukillctl man` and `gpukillctl completions`,
//! `gpukilld --man` and `gpukilld --completions`, and gpukill-gen, which writes both
//! binaries' files for the packages. Each binary adds what clap does not know (its
//! environment, its files) as extra sections; this crate knows nothing of either.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;
use clap_mangen::Man;

/// The manual every page belongs to (the centered header of each page).
pub const MANUAL: &str = "gpukill manual";

/// A rendered man page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Its file name, `NAME.SECTION` (`gpukillctl-list.1`).
    pub file_name: String,
    /// The roff source.
    pub text: Vec<u8>,
}

/// A section a page adds to clap's: its title and its roff body.
pub type Section = (&'static str, String);

/// The page of `command` in manual `section` ("1", "8"), with `extra` sections before its
/// VERSION section (or at the end when it has none).
pub fn page(command: &clap::Command, section: &str, extra: &[Section]) -> io::Result<Page> {
    let man = Man::new(command.clone()).section(section).manual(MANUAL);
    let mut rendered = Vec::new();
    man.render(&mut rendered)?;
    let rendered = String::from_utf8(rendered).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "clap_mangen wrote invalid UTF-8",
        )
    })?;
    let mut sections = String::new();
    for (title, body) in extra {
        sections.push_str(&format!(".SH \"{title}\"\n{body}"));
        if !body.ends_with('\n') {
            sections.push('\n');
        }
    }
    let at = rendered
        .find("\n.SH VERSION\n")
        .map_or(rendered.len(), |at| at + 1);
    let mut text = rendered;
    text.insert_str(at, &sections);
    Ok(Page {
        file_name: man.get_filename(),
        text: text.into_bytes(),
    })
}

/// The pages of a command with subcommands: its own (with `extra` sections), then one per
/// visible subcommand, depth first, named `NAME-SUB` (`gpukillctl-guard-policy`), each
/// pointing back to the first in SEE ALSO. `help` gets no page.
pub fn pages(command: &clap::Command, section: &str, extra: &[Section]) -> io::Result<Vec<Page>> {
    // `build` names each subcommand `gpukillctl-list`, `gpukillctl-guard-policy`, ...:
    // those names become the pages' titles and file names.
    let mut built = command.clone().disable_help_subcommand(true);
    built.build();
    let mut all = vec![page(&built, section, extra)?];
    let see_also = vec![(
        "SEE ALSO",
        format!("\\fB{}\\fR({section})", roff(built.get_name())),
    )];
    for sub in subcommands(&built) {
        all.push(page(&sub, section, &see_also)?);
    }
    Ok(all)
}

/// Every visible subcommand of `command`, depth first.
fn subcommands(command: &clap::Command) -> Vec<clap::Command> {
    let mut all = Vec::new();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        all.push(sub.clone());
        all.extend(subcommands(sub));
    }
    all
}

/// Writes `pages` into `dir` (created when missing); returns the paths written.
pub fn write_pages(dir: &Path, pages: &[Page]) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    pages
        .iter()
        .map(|page| {
            let path = dir.join(&page.file_name);
            fs::write(&path, &page.text)?;
            Ok(path)
        })
        .collect()
}

/// The completion script of `command`, run as `name`, for `shell`.
pub fn completion(shell: Shell, command: &clap::Command, name: &str) -> Vec<u8> {
    let mut command = command.clone();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    script
}

/// The file name `shell` looks `name`'s completions up under, as its packages install them:
/// bash `name`, zsh `_name`, fish `name.fish`, elvish `name.elv`, PowerShell `_name.ps1`.
pub fn completion_file_name(shell: Shell, name: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{name}"),
        Shell::Fish => format!("{name}.fish"),
        Shell::Elvish => format!("{name}.elv"),
        Shell::PowerShell => format!("_{name}.ps1"),
        // Bash, and any shell clap_complete adds later.
        _ => name.to_owned(),
    }
}

/// A roff paragraph that starts with a bold tag (a path, a variable) and explains it.
pub fn tagged(tag: &str, text: &str) -> String {
    format!(".TP\n\\fB{}\\fR\n{}\n", roff(tag), roff(text))
}

/// Plain text for roff: backslashes doubled, hyphens as the minus sign that can be typed
/// and searched for (`\-`).
pub fn roff(text: &str) -> String {
    text.replace('\\', "\\\\").replace('-', "\\-")
}

#[cfg(test)]
mod tests {

    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("tool")
            .version("1.0")
            .about("A tool")
            .arg(clap::Arg::new("verbose").long("verbose"))
            .subcommand(
                clap::Command::new("list")
                    .about("List")
                    .subcommand(clap::Command::new("all").about("All")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn a_page_per_visible_command_with_the_extra_sections_before_version() {
        let extra = vec![("FILES", tagged("/etc/tool.toml", "The config-file."))];
        let pages = pages(&command(), "1", &extra).unwrap();
        let names: Vec<&str> = pages.iter().map(|p| p.file_name.as_str()).collect();
        assert_eq!(names, ["tool.1", "tool-list.1", "tool-list-all.1"]);
        let top = String::from_utf8(pages[0].text.clone()).unwrap();
        assert!(top.contains(".TH tool 1"), "{top}");
        let files = top.find(".SH \"FILES\"\n.TP\n\\fB/etc/tool.toml\\fR\nThe config\\-file.\n");
        let version = top.find(".SH VERSION");
        assert!(files.is_some() && files < version, "{top}");
        let sub = String::from_utf8(pages[1].text.clone()).unwrap();
        assert!(sub.contains(".SH \"SEE ALSO\"\n\\fBtool\\fR(1)"), "{sub}");
    }

    #[test]
    fn completions_are_named_as_each_shell_looks_them_up() {
        let names: Vec<String> = [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ]
        .into_iter()
        .map(|shell| completion_file_name(shell, "tool"))
        .collect();
        assert_eq!(
            names,
            ["tool", "_tool", "tool.fish", "tool.elv", "_tool.ps1"]
        );
        let bash = String::from_utf8(completion(Shell::Bash, &command(), "tool")).unwrap();
        assert!(bash.contains("complete -F _tool"), "{bash}");
    }

    #[test]
    fn pages_are_written_into_a_directory() {
        let dir = std::env::temp_dir().join(format!("gpukill-manual-{}", std::process::id()));
        let written = write_pages(&dir, &pages(&command(), "8", &[]).unwrap()).unwrap();
        assert_eq!(written.len(), 3);
        assert!(written.iter().all(|path| path.exists()));
        fs::remove_dir_all(&dir).unwrap();
    }
}
