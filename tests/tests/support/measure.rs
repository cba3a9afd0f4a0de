//! What benchmarks measure a daemon with: its CPU time and memory from /proc, and
//! percentiles of samples.

/// CPU time of every thread of `pid`, in nanoseconds (`/proc/PID/task/*/schedstat`).
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|task| {
                    let path = task.ok()?.path().join("schedstat");
                    let text = std::fs::read_to_string(path).ok()?;
                    text.split_whitespace().next()?.parse::<u64>().ok()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The `pct` percentile of `values` (nearest rank below; sorts them).
pub fn percentile(values: &mut [f64], pct: usize) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) * pct / 100]
}

/// The median of `values` (the upper one of an even count; sorts them).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
