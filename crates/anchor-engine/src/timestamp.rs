//! Instants for the `before` and `after` operators: RFC 3339 strings or unix seconds.
//!
//! The engine has no clock: a condition compares an attribute of the evaluation context (for
//! example `now` or `signupDate`) with instants written in the configuration.

use serde_json::Value;

/// Seconds and nanoseconds since the unix epoch, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timestamp {
    secs: i64,
    nanos: u32,
}

impl Timestamp {
    /// An RFC 3339 string, or a JSON number of unix seconds (fractions allowed).
    pub(crate) fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::String(s) => parse_rfc3339(s),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Some(Timestamp { secs: i, nanos: 0 })
                } else {
                    let f = n.as_f64()?;
                    // Beyond ±2^62 seconds a double has no sub-second precision left anyway.
                    if !f.is_finite() || f.abs() > 4.6e18 {
                        return None;
                    }
                    let secs = f.floor();
                    let nanos = ((f - secs) * 1e9).round().min(999_999_999.0) as u32;
                    Some(Timestamp {
                        secs: secs as i64,
                        nanos,
                    })
                }
            }
            _ => None,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t`, `z` and a space separator are accepted
/// as RFC 3339 §5.6 allows.
pub(crate) fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(&b[0..4])? as i64;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos: u32 = 0;
    if let Some((b'.', frac)) = rest.split_first() {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &c) in frac[..n].iter().enumerate() {
            if i < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
        }
        for _ in n..9 {
            nanos *= 10;
        }
        rest = &frac[n..];
    }
    let offset_secs: i64 = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = digits(&[*h1, *h2])?;
            let m = digits(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let off = i64::from(h * 3600 + m * 60);
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    Some(Timestamp { secs, nanos })
}

/// A calendar date `YYYY-MM-DD`, as used for cleanup dates.
pub(crate) fn is_valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    match (digits(&b[0..4]), digits(&b[5..7]), digits(&b[8..10])) {
        (Some(y), Some(m), Some(d)) => {
            (1..=12).contains(&m) && d >= 1 && d <= days_in_month(i64::from(y), m)
        }
        _ => false,
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut n = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    Some(n)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64, nanos: u32) -> Option<Timestamp> {
        Some(Timestamp { secs, nanos })
    }

    #[test]
    fn rfc3339_strings_give_unix_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), ts(0, 0));
        assert_eq!(parse_rfc3339("2026-11-21T12:00:00Z"), ts(1_795_262_400, 0));
        assert_eq!(
            parse_rfc3339("2026-11-21T13:30:00+01:30"),
            ts(1_795_262_400, 0)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29t23:59:59.5z"),
            ts(951_868_799, 500_000_000)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.000000001Z"), ts(-1, 1));
        assert_eq!(
            parse_rfc3339("2024-06-01 00:00:00-07:00"),
            ts(1_717_225_200, 0)
        );
    }

    #[test]
    fn malformed_timestamps_are_rejected() {
        for bad in [
            "",
            "2026-11-21",
            "2026-11-21T12:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-21T24:00:00Z",
            "2026-11-21T12:00:00.Z",
            "2026-11-21T12:00:00+1:00",
            "２０２６-11-21T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn numbers_are_unix_seconds() {
        assert_eq!(
            Timestamp::from_value(&serde_json::json!(1_700_000_000)),
            ts(1_700_000_000, 0)
        );
        assert_eq!(
            Timestamp::from_value(&serde_json::json!(1.25)),
            ts(1, 250_000_000)
        );
        assert_eq!(
            Timestamp::from_value(&serde_json::json!(-0.5)),
            ts(-1, 500_000_000)
        );
        assert_eq!(Timestamp::from_value(&serde_json::json!(true)), None);
    }

    #[test]
    fn dates_are_checked_against_the_calendar() {
        assert!(is_valid_date("2024-02-29"));
        assert!(!is_valid_date("2023-02-29"));
        assert!(!is_valid_date("2023-2-28"));
    }
}
