//! The proto contract (`proto/proto`) checked with buf, as its users' tools would: `buf lint`
//! with the STANDARD rules, and `buf breaking` against `proto/baseline.binpb`, the contract
//! as last released (an intended change writes a new baseline: scripts/proto-baseline).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto")
}

/// Runs buf with `args` in proto/proto; panics with its findings when it fails.
fn buf(args: &[&str]) {
    let output = Command::new(support::clients::buf())
        .args(args)
        .current_dir(proto_dir())
        .env(
            "BUF_CACHE_DIR",
            std::env::temp_dir().join("gpukill-buf-cache"),
        )
        .output()
        .expect("run buf");
    assert!(
        output.status.success(),
        "buf {} found:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_contract_passes_buf_lint() {
    buf(&["lint"]);
}

#[test]
fn the_contract_breaks_nothing_of_the_baseline() {
    let baseline = proto_dir().join("../baseline.binpb");
    assert!(
        baseline.exists(),
        "{} is missing: write it with scripts/proto-baseline",
        baseline.display()
    );
    buf(&["breaking", "--against", &baseline.display().to_string()]);
}
