//! The local time of the week, for policy windows, from `jiff`: the host's time zone (`TZ`,
//! else /etc/localtime) with its daylight-saving rules.
//!
//! jiff keeps the zone it found for five minutes, so a change of `TZ` in the daemon's
//! environment or of /etc/localtime is followed within five minutes, without a restart.
//! When no zone can be found (an invalid `TZ`, no /etc/localtime) the time is UTC, as the
//! C library does; the daemon says so once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::policy::{LocalTime, Weekday};

/// The local day and minute of `time`; UTC if the host's time zone cannot be found.
pub fn local_time(time: SystemTime) -> LocalTime {
    in_zone(time, &system_zone())
}

/// The day and minute of `time` in `zone`; UTC for a time outside jiff's range (the years
/// -9999 to 9999).
fn in_zone(time: SystemTime, zone: &TimeZone) -> LocalTime {
    let Ok(timestamp) = Timestamp::try_from(time) else {
        return utc(epoch_seconds(time));
    };
    let zoned = timestamp.to_zoned(zone.clone());
    let weekday = match zoned.weekday() {
        jiff::civil::Weekday::Monday => Weekday::Mon,
        jiff::civil::Weekday::Tuesday => Weekday::Tue,
        jiff::civil::Weekday::Wednesday => Weekday::Wed,
        jiff::civil::Weekday::Thursday => Weekday::Thu,
        jiff::civil::Weekday::Friday => Weekday::Fri,
        jiff::civil::Weekday::Saturday => Weekday::Sat,
        jiff::civil::Weekday::Sunday => Weekday::Sun,
    };
    // jiff keeps hour in 0..=23 and minute in 0..=59.
    let minute =
        u16::try_from(i32::from(zoned.hour()) * 60 + i32::from(zoned.minute())).unwrap_or_default();
    LocalTime { weekday, minute }
}

/// The host's time zone (cached by jiff), or UTC when it cannot be found.
fn system_zone() -> TimeZone {
    static WARNED: AtomicBool = AtomicBool::new(false);
    TimeZone::try_system().unwrap_or_else(|error| {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                "cannot find the host's time zone (TZ, /etc/localtime): guard windows use UTC"
            );
        }
        TimeZone::UTC
    })
}

/// Seconds since the epoch, negative before it, saturating.
fn epoch_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The UTC day and minute of `seconds` since the epoch.
fn utc(seconds: i64) -> LocalTime {
    let days = seconds.div_euclid(86_400);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = Weekday::ALL[(days + 3).rem_euclid(7) as usize];
    LocalTime {
        weekday,
        minute: (seconds.rem_euclid(86_400) / 60) as u16,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn utc_weekday_and_minute() {
        // 2026-11-22 is a Sunday; 03:07 UTC.
        let time = 1_795_316_820;
        assert_eq!(
            utc(time),
            LocalTime {
                weekday: Weekday::Sun,
                minute: 3 * 60 + 7
            }
        );
        assert_eq!(utc(0).weekday, Weekday::Thu);
        assert_eq!(utc(-1).weekday, Weekday::Wed);
    }

    #[test]
    fn local_time_agrees_with_utc_up_to_the_zone_offset() {
        let time = UNIX_EPOCH + Duration::from_secs(1_795_316_820);
        let local = local_time(time);
        let utc = utc(1_795_316_820);
        let week = |t: LocalTime| t.weekday as i64 * 1440 + i64::from(t.minute);
        // Zones are at most 14 hours from UTC.
        let offset = (week(local) - week(utc)).rem_euclid(7 * 1440);
        assert!(
            offset <= 14 * 60 || offset >= 7 * 1440 - 14 * 60,
            "{offset}"
        );
    }

    #[test]
    fn a_zone_with_daylight_saving_time() {
        // Central Europe: UTC+1, UTC+2 from the last Sunday of March to the last of October.
        let zone = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("a POSIX TZ rule");
        let at = |seconds: u64| in_zone(UNIX_EPOCH + Duration::from_secs(seconds), &zone);
        // 2026-11-22 03:07 UTC (a Sunday) is 04:07 in winter time.
        assert_eq!(
            at(1_795_316_820),
            LocalTime {
                weekday: Weekday::Sun,
                minute: 4 * 60 + 7
            }
        );
        // 2026-07-01 23:30 UTC (a Wednesday) is Thursday 01:30 in summer time.
        assert_eq!(
            at(1_782_948_600),
            LocalTime {
                weekday: Weekday::Thu,
                minute: 60 + 30
            }
        );
        // In UTC, in_zone and utc agree.
        assert_eq!(
            in_zone(
                UNIX_EPOCH + Duration::from_secs(1_795_316_820),
                &TimeZone::UTC
            ),
            utc(1_795_316_820)
        );
    }
}
