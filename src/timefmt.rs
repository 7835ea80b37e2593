//! Time conversions (pure, no dependencies; callers pass the clock reading): Unix
//! milliseconds, and RFC 3339 timestamps in UTC — the one civil-date conversion the
//! gateway (API dates) and delivery (CloudWatch `eventTime`) share. L0 like `protocol`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for times before it, `u64::MAX` far after.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `YYYY-MM-DDTHH:MM:SSZ`, or with `.mmm` before the `Z` when `millis` is set, for a Unix
/// time in milliseconds (proleptic Gregorian calendar, Howard Hinnant's days-to-civil).
pub fn rfc3339(unix_ms: u64, millis: bool) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = if millis {
        format!(".{:03}", unix_ms % 1000)
    } else {
        String::new()
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{rfc3339, unix_ms};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn unix_milliseconds() {
        assert_eq!(unix_ms(UNIX_EPOCH), 0);
        assert_eq!(
            unix_ms(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            1_700_000_000_123
        );
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(0, true), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000, false), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123, true), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(1_729_534_091_999, false), "2024-10-21T18:08:11Z");
        assert_eq!(rfc3339(4_102_444_799_000, false), "2099-12-31T23:59:59Z");
    }
}
