//! AMD's RAS error counters: one file per hardware block under the card's `device/ras/`
//! directory, `<block>_err_count` (`umc`, `gfx`, `sdma`, `mmhub`, `xgmi_wafl`, ...), in
//! amdgpu's format (`amdgpu_ras_sysfs_read`):
//!
//! ```text
//! ue: 1
//! ce: 3
//! de: 0
//! ```
//!
//! `ue` uncorrectable, `ce` correctable, and on newer kernels `de` (deferred: poisoned data
//! not yet consumed) for `umc` only. While a RAS interrupt or a GPU reset is handled the file
//! reads `Query currently inaccessible`.
//!
//! Reading a counter is not free: the driver queries the block's error registers (on MI300
//! through SMU messages, one per MCA bank) and resets their status on every read. So the
//! counters are read at most once per [`RAS_INTERVAL`] and the last values are reported in
//! between, except after a read that failed, which is retried on the next tick.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::health::RasCount;

/// How often the RAS counters are read.
pub const RAS_INTERVAL: Duration = Duration::from_secs(10);

/// The RAS directory of one card: each block's counts, and what could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RasRead {
    /// One entry per block whose file read and parsed, sorted by block name.
    pub blocks: Vec<RasCount>,
    /// Every error ECC count of the memory controller (`umc`: ue + ce + de), as
    /// `ecc_volatile_errors` reports it.
    pub umc_total: Option<u64>,
    /// `(file, error)` for each file that could not be read or parsed (`ras/gfx_err_count`).
    pub errors: Vec<(String, String)>,
}

/// The last RAS reading of one card and when it was taken.
#[derive(Debug, Clone, Default)]
pub struct RasCache {
    last: Option<(Instant, RasRead)>,
}

impl RasCache {
    /// The card's RAS counters at `now`: the last reading when it was complete and younger
    /// than `interval`, else a new one (kept for next time only when it had no error).
    pub fn read(&mut self, device_dir: &Path, now: Instant, interval: Duration) -> RasRead {
        if let Some((at, read)) = &self.last
            && now.checked_duration_since(*at).unwrap_or_default() < interval
        {
            return read.clone();
        }
        let read = read_dir(device_dir);
        self.last = read.errors.is_empty().then(|| (now, read.clone()));
        read
    }
}

/// Reads every `<block>_err_count` under `device_dir/ras`. No `ras` directory: nothing, no
/// error (the card has no RAS, as consumer cards).
pub fn read_dir(device_dir: &Path) -> RasRead {
    let dir = device_dir.join("ras");
    let mut read = RasRead::default();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return read,
        Err(error) => {
            read.errors.push(("ras".to_owned(), error.to_string()));
            return read;
        }
    };
    let mut files: Vec<(String, String)> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let block = name.strip_suffix("_err_count")?;
            (!block.is_empty()).then(|| (block.to_owned(), name.clone()))
        })
        .collect();
    files.sort();
    for (block, file) in files {
        let label = format!("ras/{file}");
        let text = match fs::read(dir.join(&file)) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            // Gone between the listing and the read: the block is absent this time.
            Err(error) if error.kind() == ErrorKind::NotFound => continue,
            Err(error) => {
                read.errors.push((label, error.to_string()));
                continue;
            }
        };
        match parse(&text) {
            Ok(counts) => {
                if block == "umc" {
                    read.umc_total = Some(
                        counts
                            .uncorrectable
                            .saturating_add(counts.correctable)
                            .saturating_add(counts.deferred.unwrap_or(0)),
                    );
                }
                read.blocks.push(RasCount {
                    block: Arc::from(block),
                    correctable: Some(counts.correctable),
                    uncorrectable: Some(counts.uncorrectable),
                });
            }
            Err(error) => read.errors.push((label, error)),
        }
    }
    read
}

/// One `*_err_count` file's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// `ue`.
    pub uncorrectable: u64,
    /// `ce`.
    pub correctable: u64,
    /// `de`, where the kernel counts deferred errors.
    pub deferred: Option<u64>,
}

/// Parses `ue: N\nce: N\n[de: N\n]`. Both `ue` and `ce` are required; a key the kernel may
/// add later is skipped; anything that is not `key: number` is an error.
pub fn parse(text: &str) -> Result<Counts, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("Query currently inaccessible") {
        return Err(
            "query currently inaccessible (a RAS error or GPU reset is being handled)".into(),
        );
    }
    let (mut ue, mut ce, mut de) = (None, None, None);
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        let count: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("unexpected line {line:?}"))?;
        match key.trim() {
            "ue" => ue = Some(count),
            "ce" => ce = Some(count),
            "de" => de = Some(count),
            _ => {}
        }
    }
    match (ue, ce) {
        (Some(uncorrectable), Some(correctable)) => Ok(Counts {
            uncorrectable,
            correctable,
            deferred: de,
        }),
        (None, _) if text.is_empty() => Err("empty".to_owned()),
        (None, _) => Err("no ue count".to_owned()),
        (_, None) => Err("no ce count".to_owned()),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn count(block: &str, ce: u64, ue: u64) -> RasCount {
        RasCount {
            block: Arc::from(block),
            correctable: Some(ce),
            uncorrectable: Some(ue),
        }
    }

    #[test]
    fn parses_the_kernel_formats() {
        assert_eq!(
            parse("ue: 1\nce: 3\n"),
            Ok(Counts {
                uncorrectable: 1,
                correctable: 3,
                deferred: None
            })
        );
        // umc on kernels that count deferred errors.
        assert_eq!(
            parse("ue: 0\nce: 2\nde: 5\n"),
            Ok(Counts {
                uncorrectable: 0,
                correctable: 2,
                deferred: Some(5)
            })
        );
        // A key a later kernel may add is skipped.
        assert_eq!(parse("ue: 7\nce: 0\nfe: 1\n").unwrap().uncorrectable, 7);
    }

    #[test]
    fn garbled_and_inaccessible_are_errors() {
        assert_eq!(parse(""), Err("empty".to_owned()));
        assert_eq!(parse("ue: 1\n"), Err("no ce count".to_owned()));
        assert_eq!(parse("ce: 1\n"), Err("no ue count".to_owned()));
        assert_eq!(
            parse("ue: x\nce: 1\n"),
            Err("unexpected line \"ue: x\"".to_owned())
        );
        assert_eq!(
            parse("garbage\n"),
            Err("unexpected line \"garbage\"".to_owned())
        );
        assert!(
            parse("Query currently inaccessible\n")
                .unwrap_err()
                .starts_with("query currently inaccessible")
        );
    }

    #[test]
    fn every_block_sorted_and_a_bad_file_is_left_out_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ras = dir.path().join("ras");
        fs::create_dir(&ras).unwrap();
        fs::write(ras.join("umc_err_count"), "ue: 2\nce: 5\nde: 1\n").unwrap();
        fs::write(ras.join("gfx_err_count"), "ue: 0\nce: 1\n").unwrap();
        fs::write(ras.join("xgmi_wafl_err_count"), "ue: 0\nce: 0\n").unwrap();
        fs::write(ras.join("sdma_err_count"), "Query currently inaccessible\n").unwrap();
        // A directory where a file is expected: EISDIR.
        fs::create_dir(ras.join("mmhub_err_count")).unwrap();
        // Not counters.
        fs::write(ras.join("features"), "feature mask: 0x3fff\n").unwrap();
        fs::write(ras.join("_err_count"), "ue: 9\nce: 9\n").unwrap();

        let read = read_dir(dir.path());
        assert_eq!(
            read.blocks,
            vec![
                count("gfx", 1, 0),
                count("umc", 5, 2),
                count("xgmi_wafl", 0, 0)
            ]
        );
        assert_eq!(read.umc_total, Some(8));
        let files: Vec<&str> = read.errors.iter().map(|(file, _)| file.as_str()).collect();
        assert_eq!(files, ["ras/mmhub_err_count", "ras/sdma_err_count"]);
    }

    #[test]
    fn no_ras_directory_is_nothing_and_no_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_dir(dir.path()), RasRead::default());
    }

    #[test]
    fn counters_are_read_once_per_interval_and_a_failed_read_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let ras = dir.path().join("ras");
        fs::create_dir(&ras).unwrap();
        let umc = ras.join("umc_err_count");
        fs::write(&umc, "ue: 0\nce: 1\n").unwrap();
        let mut cache = RasCache::default();
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);

        assert_eq!(cache.read(dir.path(), t0, interval).umc_total, Some(1));
        fs::write(&umc, "ue: 1\nce: 1\n").unwrap();
        // Within the interval: the last reading.
        let t1 = t0 + Duration::from_secs(9);
        assert_eq!(cache.read(dir.path(), t1, interval).umc_total, Some(1));
        // Past it: read again.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(cache.read(dir.path(), t2, interval).umc_total, Some(2));

        // A failed read is not kept: the next tick reads again.
        fs::write(&umc, "Query currently inaccessible\n").unwrap();
        let t3 = t2 + Duration::from_secs(10);
        let failed = cache.read(dir.path(), t3, interval);
        assert_eq!((failed.blocks.len(), failed.errors.len()), (0, 1));
        fs::write(&umc, "ue: 3\nce: 1\n").unwrap();
        let t4 = t3 + Duration::from_secs(1);
        let read = cache.read(dir.path(), t4, interval);
        assert_eq!((read.umc_total, read.errors.len()), (Some(4), 0));
    }
}
