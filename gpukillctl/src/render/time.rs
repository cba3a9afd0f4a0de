//! Time formatting. The API carries milliseconds since the Unix epoch; JSON shows RFC 3339 in
//! UTC, tables show a wall-clock time in the chosen [`TimeZone`] plus an age.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::civil::DateTime;
use jiff::{SignedDuration, Timestamp};

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

/// `time` in milliseconds since the epoch; 0 for a time before it.
pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    })
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
    let t = civil(ms, tz)?;
    Some(format!(
        "{:02}:{:02}:{:02}",
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// The date and time `YYYY-MM-DD HH:MM:SS` of `ms` in `tz`, for tables of events that may
/// span days.
pub fn date_time(ms: i64, tz: TimeZone) -> Option<String> {
    let t = civil(ms, tz)?;
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// The date and time `YYYY-MM-DD HH:MM` of `ms` in `tz`, for hours (the seconds of an hour's
/// start are always zero).
pub fn date_minutes(ms: i64, tz: TimeZone) -> Option<String> {
    let t = civil(ms, tz)?;
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute()
    ))
}

/// The Unix epoch, as a date and time in UTC.
const EPOCH: DateTime = DateTime::constant(1970, 1, 1, 0, 0, 0, 0);

/// The calendar date and time of `ms` (whole seconds) in `tz`, or `None` when `ms` is not a
/// usable time.
fn civil(ms: i64, tz: TimeZone) -> Option<DateTime> {
    system_time(ms)?;
    let secs = ms.div_euclid(1000);
    match tz {
        // Calendar arithmetic rather than a `Timestamp`: jiff's timestamps end a day before
        // year 9999 does (so that every offset has a date), and UTC times are shown to its end.
        TimeZone::Utc => EPOCH.checked_add(SignedDuration::from_secs(secs)).ok(),
        // The host's zone (`TZ`, else `/etc/localtime`) with its daylight saving time, read on
        // first use and again after five minutes (glibc's `localtime_r` read `TZ` only once).
        TimeZone::Local => in_zone(secs, &local_zone()),
    }
}

/// How long the local zone is kept before it is read again (a `list --watch` that runs for
/// days follows a change of the host's zone).
const LOCAL_ZONE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The host's time zone, read as the C library reads it: `TZ` (a file, a zone name under the
/// zoneinfo directory, or a POSIX TZ string), else `/etc/localtime`; kept for
/// [`LOCAL_ZONE_TTL`].
///
/// Not `jiff::tz::TimeZone::system()`: to name the zone, it lists the whole zoneinfo tree
/// (its 20-odd directories), work that every `gpukillctl list` would pay at
/// start-up; the zone's rules are all a table needs.
fn local_zone() -> jiff::tz::TimeZone {
    static CACHE: std::sync::Mutex<Option<(std::time::Instant, jiff::tz::TimeZone)>> =
        std::sync::Mutex::new(None);
    let Ok(mut cache) = CACHE.lock() else {
        return read_local_zone();
    };
    match &*cache {
        Some((read, zone)) if read.elapsed() < LOCAL_ZONE_TTL => zone.clone(),
        _ => {
            let zone = read_local_zone();
            *cache = Some((std::time::Instant::now(), zone.clone()));
            zone
        }
    }
}

/// Reads the host's time zone (see [`local_zone`]); jiff's own search when none of the
/// quick ways works.
fn read_local_zone() -> jiff::tz::TimeZone {
    let tz = std::env::var("TZ").ok();
    let dir = std::env::var_os("TZDIR")
        .map_or_else(|| "/usr/share/zoneinfo".into(), std::path::PathBuf::from);
    zone_from(tz.as_deref(), &dir, std::path::Path::new("/etc/localtime"))
        .unwrap_or_else(jiff::tz::TimeZone::system)
}

/// The zone `TZ` (when set and not empty) names, with zone files under `dir`; otherwise
/// the zone file `localtime`. `None` when that cannot be read.
fn zone_from(
    tz: Option<&str>,
    dir: &std::path::Path,
    localtime: &std::path::Path,
) -> Option<jiff::tz::TimeZone> {
    let tzif = |name: &str, path: &std::path::Path| {
        std::fs::read(path)
            .ok()
            .and_then(|data| jiff::tz::TimeZone::tzif(name, &data).ok())
    };
    match tz {
        Some(tz) if !tz.is_empty() => {
            let name = tz.strip_prefix(':').unwrap_or(tz);
            if name.starts_with('/') {
                tzif(name, std::path::Path::new(name))
            } else if !name.contains("..") && dir.join(name).is_file() {
                tzif(name, &dir.join(name))
            } else {
                jiff::tz::TimeZone::posix(name).ok()
            }
        }
        _ => tzif("localtime", localtime),
    }
}

/// The date and time of `secs` since the epoch in `zone`; `None` past jiff's last timestamp
/// (9999-12-30T22:00:00Z).
fn in_zone(secs: i64, zone: &jiff::tz::TimeZone) -> Option<DateTime> {
    Timestamp::from_second(secs)
        .ok()
        .map(|time| zone.to_datetime(time))
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

/// A length of time as [`age`] shows it, rounded to the nearest second and without a
/// trailing zero unit: `8h` rather than `8h0m`, `1h2m`, `5m`, `12s`.
pub fn span(ms: i64) -> String {
    let mut text = age(ms.max(0).saturating_add(500));
    // Two units end in `<letter>0<letter>`: `8h0m`, but not `10s` or `1h10m`.
    if let [.., first, b'0', _] = text.as_bytes()
        && first.is_ascii_alphabetic()
    {
        text.truncate(text.len() - 2);
    }
    text
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
    fn dates_and_times() {
        assert_eq!(
            date_time(NOON, TimeZone::Utc).as_deref(),
            Some("2024-05-01 12:00:00")
        );
        assert_eq!(date_time(0, TimeZone::Utc), None);
        assert_eq!(
            date_minutes(NOON, TimeZone::Utc).as_deref(),
            Some("2024-05-01 12:00")
        );
        assert_eq!(date_minutes(-1, TimeZone::Utc), None);
        let local = date_time(NOON, TimeZone::Local).expect("local time");
        assert_eq!(local.len(), 19, "{local}");
        // UTC calendar dates agree with humantime's RFC 3339 over leap years and centuries.
        let mut ms = 1;
        while ms < END_OF_YEAR_9999_MS {
            let rfc = rfc3339_seconds(ms).expect("in range");
            let expected = rfc.trim_end_matches('Z').replacen('T', " ", 1);
            assert_eq!(date_time(ms, TimeZone::Utc), Some(expected), "{ms}");
            ms += 86_399_999 * 37 + 12_345;
        }
    }

    #[test]
    fn local_times_follow_the_zone_and_its_daylight_saving_time() {
        // New York's rules since 2007, as a POSIX TZ string (no tzdb needed): EDT in May,
        // EST in January.
        let zone = jiff::tz::TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").expect("TZ string");
        let at = |ms: i64| in_zone(ms.div_euclid(1000), &zone).expect("in range");
        assert_eq!(at(NOON), DateTime::constant(2024, 5, 1, 8, 0, 0, 0));
        let january = NOON - 106 * 86_400_000;
        assert_eq!(at(january), DateTime::constant(2024, 1, 16, 7, 0, 0, 0));
        // The last hour of year 9999 in UTC has no jiff timestamp; UTC still shows it.
        let last = END_OF_YEAR_9999_MS - 1000;
        assert_eq!(in_zone(last / 1000, &jiff::tz::TimeZone::UTC), None);
        assert_eq!(
            date_time(last, TimeZone::Utc).as_deref(),
            Some("9999-12-31 23:59:59")
        );
    }

    /// A TZif (version 1) file of one zone, UTC+1 all year, abbreviated `X`.
    fn tzif_utc_plus_one() -> Vec<u8> {
        let mut data = b"TZif".to_vec();
        data.extend([0u8; 16]); // version 1, then 15 reserved bytes
        // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
        for count in [0u32, 0, 0, 0, 1, 2] {
            data.extend(count.to_be_bytes());
        }
        data.extend(3600i32.to_be_bytes()); // utoff
        data.extend([0, 0]); // isdst, desigidx
        data.extend(b"X\0");
        data
    }

    #[test]
    fn the_local_zone_is_read_from_tz_or_the_localtime_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("Plus1");
        std::fs::write(&file, tzif_utc_plus_one()).expect("write");
        let none = dir.path().join("missing");
        let hour = |zone: Option<jiff::tz::TimeZone>| {
            in_zone(NOON.div_euclid(1000), &zone.expect("a zone")).map(|t| t.hour())
        };
        // No TZ: the localtime file.
        assert_eq!(hour(zone_from(None, dir.path(), &file)), Some(13));
        assert_eq!(hour(zone_from(Some(""), dir.path(), &file)), Some(13));
        assert!(zone_from(None, dir.path(), &none).is_none());
        // TZ: a name under the zone directory (with or without ':'), a path, a POSIX string.
        assert_eq!(hour(zone_from(Some("Plus1"), dir.path(), &none)), Some(13));
        assert_eq!(hour(zone_from(Some(":Plus1"), dir.path(), &none)), Some(13));
        let path = file.to_str().expect("UTF-8");
        assert_eq!(hour(zone_from(Some(path), &none, &none)), Some(13));
        assert_eq!(
            hour(zone_from(Some("EST5EDT,M3.2.0,M11.1.0"), dir.path(), &none)),
            Some(8)
        );
        assert!(zone_from(Some("not a zone"), dir.path(), &none).is_none());
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

    #[test]
    fn spans_drop_a_trailing_zero_unit() {
        assert_eq!(span(8 * 3600 * 1000 - 40), "8h");
        assert_eq!(span((3600 + 120) * 1000), "1h2m");
        assert_eq!(span(300_000), "5m");
        assert_eq!(span(303_000), "5m3s");
        assert_eq!(span(12_400), "12s");
        assert_eq!(span(2 * 86_400 * 1000), "2d");
        assert_eq!(span(-5), "0s");
        assert_eq!(span(10_000), "10s");
        assert_eq!(span((3600 + 600) * 1000), "1h10m");
    }
}
