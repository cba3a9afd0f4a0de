//! Snapshot files: expected output kept in `gpukillctl/tests/snapshots/`.

use std::path::Path;

/// Compares `actual` with `tests/snapshots/<name>`. With `UPDATE_SNAPSHOTS=1` in the
/// environment it (re)writes the file instead.
#[track_caller]
pub fn assert_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "cannot read {}: {err}; run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (run with UPDATE_SNAPSHOTS=1 to accept the new output)\n\
         --- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}
