//! The local time of the week, for policy windows: from the C library's `localtime_r`,
//! which follows the host's time zone (TZ, /etc/localtime) and its daylight-saving rules.

use std::time::{SystemTime, UNIX_EPOCH};

use super::policy::{LocalTime, Weekday};

/// The local day and minute of `time`; UTC if the C library cannot convert it.
pub fn local_time(time: SystemTime) -> LocalTime {
    let seconds = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let mut tm: libc::tm = unsafe_zeroed_tm();
    let t: libc::time_t = seconds;
    // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe variant.
    let converted = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !converted {
        return utc(seconds);
    }
    // tm_wday: 0 is Sunday.
    let weekday = Weekday::ALL[((tm.tm_wday + 6) % 7) as usize];
    LocalTime {
        weekday,
        minute: (tm.tm_hour * 60 + tm.tm_min) as u16,
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

fn unsafe_zeroed_tm() -> libc::tm {
    // SAFETY: libc::tm is plain old data; all-zero is a valid value (tm_zone a null pointer).
    unsafe { std::mem::zeroed() }
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
}
