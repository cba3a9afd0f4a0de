//! Time formatting. The API carries milliseconds since the Unix epoch; JSON shows RFC 3339 in
//! UTC, tables show a wall-clock time in the chosen [`TimeZone`] plus an age.

use std::mem::MaybeUninit;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first millisecond RFC 3339 (four-digit years) cannot show: year 10000.
const END_OF_YEAR_9999_MS: i64 = 253_402_300_800_000;

/// Which clock tables show process start times in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeZone {
    /// Coordinated Universal Time; what tests use, so their output does not depend on the host.
    Utc,
    /// The local time zone of this host (`TZ`, `/etc/localtime`), like `ps` shows.
    Local,
}

/// `ms` as a [`SystemTime`], or `None` when it is not a usable time: zero or negative (the
/// proto's "unset"), or past year 9999.
fn system_time(ms: i64) -> Option<SystemTime> {
    if ms <= 0 || ms >= END_OF_YEAR_9999_MS {
        return None;
    }
    let ms = u64::try_from(ms).ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

/// RFC 3339 in UTC with whole seconds, e.g. `2024-05-01T12:00:00Z`.
pub fn rfc3339_seconds(ms: i64) -> Option<String> {
    system_time(ms).map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:00.250Z`.
pub fn rfc3339_millis(ms: i64) -> Option<String> {
    system_time(ms).map(|t| humantime::format_rfc3339_millis(t).to_string())
}

/// The wall-clock time of day `HH:MM:SS` of `ms` in `tz`.
pub fn clock(ms: i64, tz: TimeZone) -> Option<String> {
    system_time(ms)?;
    let secs = ms.div_euclid(1000);
    let (hour, minute, second) = match tz {
        TimeZone::Utc => {
            let of_day = secs.rem_euclid(86_400);
            (of_day / 3600, of_day % 3600 / 60, of_day % 60)
        }
        TimeZone::Local => local_clock(secs)?,
    };
    Some(format!("{hour:02}:{minute:02}:{second:02}"))
}

/// Hour, minute and second of `secs` since the epoch in the local time zone.
fn local_clock(secs: i64) -> Option<(i64, i64, i64)> {
    let time = libc::time_t::try_from(secs).ok()?;
    let mut tm = MaybeUninit::<libc::tm>::uninit();
    // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe variant
    // and writes only into `tm`, which we read only when it reports success (non-null).
    let result = unsafe { libc::localtime_r(&time, tm.as_mut_ptr()) };
    if result.is_null() {
        return None;
    }
    // SAFETY: localtime_r returned non-null, so it filled in `tm`.
    let tm = unsafe { tm.assume_init() };
    Some((
        i64::from(tm.tm_hour),
        i64::from(tm.tm_min),
        i64::from(tm.tm_sec),
    ))
}

/// A compact age: `42s`, `5m12s`, `2h13m`, `3d4h`. Negative ages (clock skew) show as `0s`.
pub fn age(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    let (days, hours, minutes, seconds) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: i64 = 1_714_564_800_250; // 2024-05-01T12:00:00.250Z

    #[test]
    fn rfc3339() {
        assert_eq!(
            rfc3339_seconds(NOON).as_deref(),
            Some("2024-05-01T12:00:00Z")
        );
        assert_eq!(
            rfc3339_millis(NOON).as_deref(),
            Some("2024-05-01T12:00:00.250Z")
        );
        assert_eq!(rfc3339_seconds(0), None);
        assert_eq!(rfc3339_millis(-5), None);
        assert_eq!(rfc3339_millis(i64::MAX), None);
        assert!(rfc3339_millis(END_OF_YEAR_9999_MS - 1).is_some());
    }

    #[test]
    fn clocks() {
        assert_eq!(
            clock(NOON - 8_000_000, TimeZone::Utc).as_deref(),
            Some("09:46:40")
        );
        assert_eq!(clock(0, TimeZone::Utc), None);
        // The local clock depends on the host; it must still be a well-formed time.
        let local = clock(NOON, TimeZone::Local).expect("local time");
        assert_eq!(local.len(), 8, "{local}");
        assert_eq!((&local[2..3], &local[5..6]), (":", ":"), "{local}");
    }

    #[test]
    fn ages() {
        assert_eq!(age(-1000), "0s");
        assert_eq!(age(999), "0s");
        assert_eq!(age(42_000), "42s");
        assert_eq!(age(312_000), "5m12s");
        assert_eq!(age((2 * 3600 + 13 * 60 + 13) * 1000), "2h13m");
        assert_eq!(age((3 * 86_400 + 4 * 3600 + 59) * 1000), "3d4h");
    }
}
