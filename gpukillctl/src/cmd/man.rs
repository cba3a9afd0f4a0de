//! `gpukillctl man [DIR]`: the man pages, rendered from this very command line (no daemon is
//! asked): gpukillctl(1) on standard output, or every page written into DIR.

use std::io::Write;

use clap::CommandFactory;
use gpukill_manual::{Page, Section, tagged};

use crate::Output;
use crate::cli::{Cli, ManArgs};
use crate::error::Error;

/// gpukillctl(1) and one page per subcommand (`gpukillctl-list.1`, ...), section 1.
pub fn pages() -> std::io::Result<Vec<Page>> {
    gpukill_manual::pages(&Cli::command(), "1", &sections())
}

/// What gpukillctl(1) says beyond its options: where it finds the daemon (its SUBCOMMANDS
/// section names the other pages).
fn sections() -> Vec<Section> {
    let files = [
        tagged(
            "$XDG_RUNTIME_DIR/gpukill/gpukilld.sock",
            "The socket of a per-user daemon, used when it exists.",
        ),
        tagged(
            gpukill_proto::SYSTEM_SOCKET,
            "The socket of the system daemon (gpukilld.service), used otherwise.",
        ),
    ]
    .concat();
    vec![
        (
            "ENVIRONMENT",
            tagged(
                gpukill_proto::SOCKET_ENV,
                "The daemon's socket, when --socket is not given.",
            ),
        ),
        ("FILES", files),
        ("SEE ALSO", "\\fBgpukilld\\fR(8)".to_owned()),
    ]
}

/// Prints gpukillctl(1), or writes every page into `args.dir` and prints their paths.
pub fn run<W: Write, E: Write>(args: &ManArgs, out: &mut Output<W, E>) -> Result<(), Error> {
    let pages = pages().map_err(Error::Output)?;
    let Some(dir) = &args.dir else {
        let page = String::from_utf8_lossy(&pages[0].text).into_owned();
        return out.write_exact(&page);
    };
    let written = gpukill_manual::write_pages(dir, &pages).map_err(|source| Error::WriteFile {
        path: dir.clone(),
        source,
    })?;
    let list: String = written
        .iter()
        .map(|path| format!("{}\n", path.display()))
        .collect();
    out.write(&list)
}

#[cfg(test)]
mod tests {
    use crate::testutil::run_argv;

    #[tokio::test]
    async fn the_page_goes_to_standard_output() {
        let (result, text, _) = run_argv(&["man"]).await;
        result.expect("man");
        assert!(text.contains(".TH gpukillctl 1"), "{text}");
        assert!(text.contains(".SH \"FILES\""), "{text}");
        // The connection options are described on the main page.
        assert!(text.contains("\\-\\-token\\-file"), "{text}");
    }

    #[tokio::test]
    async fn a_directory_gets_every_page() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("man1");
        let target = target.to_str().expect("UTF-8");
        let (result, text, _) = run_argv(&["man", target]).await;
        result.expect("man DIR");
        for page in [
            "gpukillctl.1",
            "gpukillctl-list.1",
            "gpukillctl-guard-policy-add-user.1",
        ] {
            let path = format!("{target}/{page}");
            assert!(std::path::Path::new(&path).exists(), "{page}");
            assert!(text.lines().any(|line| line == path), "{text}");
        }
        let file = dir.path().join("file");
        std::fs::write(&file, "").expect("write");
        let (result, _, _) = run_argv(&["man", file.to_str().expect("UTF-8")]).await;
        let err = result.expect_err("a file is not a directory");
        assert!(err.to_string().starts_with("cannot write "), "{err}");
        assert_eq!(err.exit_code(), 1);
    }
}
