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

/// `YYYYMMDDTHHMMSSZ` (SigV4's `X-Amz-Date`) for a Unix time in seconds.
pub fn amz_date(unix_secs: u64) -> String {
    let t = rfc3339(unix_secs.saturating_mul(1000), false);
    t.chars().filter(|c| !matches!(c, '-' | ':')).collect()
}

/// Parses `YYYYMMDDTHHMMSSZ` into Unix seconds; `None` for anything else (also dates
/// before 1970 or fields out of range).
pub fn parse_amz_date(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    u64::try_from(civil_seconds(year, month, day, hour, minute, second)?).ok()
}

/// Parses an RFC 3339 time into Unix milliseconds: `2026-12-01T08:00:00Z`, with a
/// fraction (`…:00.250Z`, milliseconds kept), an offset (`…+02:00`), `t`/`z` or a space
/// for `T`; also a date alone (`2026-12-01`, midnight UTC). `None` for anything else,
/// a time without a zone (ambiguous), fields out of range, or dates before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (mut hour, mut minute, mut second, mut millis, mut offset) = (0, 0, 0, 0, 0i64);
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 17 || b[13] != b':' {
            return None;
        }
        (hour, minute) = (digits(11..13)?, digits(14..16)?);
        let mut i = 16;
        if b.get(i) == Some(&b':') {
            second = digits(17..19)?;
            i = 19;
            if b.get(i) == Some(&b'.') {
                let start = i + 1;
                let mut end = start;
                while b.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
                if end == start {
                    return None;
                }
                let frac = text.get(start..end.min(start + 3))?;
                millis =
                    frac.parse::<i64>().ok()? * 10_i64.pow(3 - u32::try_from(frac.len()).ok()?);
                i = end;
            }
        }
        match b.get(i..)? {
            [b'Z' | b'z'] => {}
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let (h, m) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
                if h > 23 || m > 59 {
                    return None;
                }
                offset = (h * 60 + m) * if *sign == b'+' { 1 } else { -1 };
            }
            _ => return None,
        }
    }
    let secs = civil_seconds(year, month, day, hour, minute, second)? - offset * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Seconds since the Unix epoch of a UTC calendar time; `None` when a field is out of
/// range (a leap second, 60, is accepted). Howard Hinnant's days-from-civil.
fn civil_seconds(
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
) -> Option<i64> {
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::{amz_date, parse_amz_date, parse_rfc3339, rfc3339, unix_ms};

    #[test]
    fn rfc3339_times_parse_with_zones_fractions_and_dates_alone() {
        assert_eq!(parse_rfc3339("1970-01-01"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14t22:13:20.1234567z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14 22:13:20.5Z"),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T17:13:20-05:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_rfc3339("2023-11-14T22:13Z"), Some(1_699_999_980_000));
        for t in [0, 951_782_400_123, 1_700_000_000_123, 4_102_444_799_000] {
            assert_eq!(parse_rfc3339(&rfc3339(t, true)), Some(t));
        }
        for bad in [
            "",
            "yesterday",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20.Z",
            "2023-13-01",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20+24:00",
            "1969-12-31T23:59:59Z",
            "+023-11-14",
            "2023-11-14T22:13:20Zjunk",
            "2023-1-14",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn amz_dates_round_trip() {
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("20000229T000000Z"), Some(951_782_400));
        for t in [0, 951_782_400, 1_700_000_000, 4_102_444_799] {
            assert_eq!(parse_amz_date(&amz_date(t)), Some(t));
        }
        for bad in [
            "",
            "20150830T123600",
            "2015-08-30T12:36:00Z",
            "20151330T123600Z",
            "2015083OT123600Z",
            "20150830T243600Z",
            "19691231T235959Z",
            "+0150830T123600Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }
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
