//! Time: RFC 3339 timestamps as nanoseconds since the Unix epoch, the
//! `--since`/`--until` bounds, and the compact durations of the narrative.
//!
//! Written by hand rather than pulling in a date-time crate: the log schema
//! allows exactly one textual form (RFC 3339 with an offset), and all this
//! crate ever does with a time is compare and subtract two of them.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const NANOS_PER_MILLI: i64 = 1_000_000;

/// A moment, as nanoseconds since 1970-01-01T00:00:00Z (years 1678 to 2261).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_nanos: i64,
}

impl Timestamp {
    /// The moment `unix_nanos` nanoseconds after the Unix epoch.
    pub fn from_unix_nanos(unix_nanos: i64) -> Self {
        Self { unix_nanos }
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(self) -> i64 {
        self.unix_nanos
    }

    /// The current time of the system clock.
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self::from_unix_nanos(i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Parses `2026-11-27T21:04:05.123Z` or `2026-11-27T22:04:05.123456+01:00`.
    ///
    /// Lenient where RFC 3339 itself is: `t`/`z` in lower case, a space
    /// instead of `T`; also accepts an offset without its colon (`+0100`).
    /// Digits past nanoseconds are ignored. `None` for anything else.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let mut cursor = Cursor::new(text);
        let (year, month, day) = cursor.date()?;
        cursor.one_of(b"Tt ")?;
        let seconds_of_day = cursor.time_of_day()?;
        let fraction_nanos = match cursor.peek() {
            Some(b'.' | b',') => {
                cursor.advance();
                cursor.fraction_nanos()?
            }
            _ => 0,
        };
        let offset_seconds = cursor.offset_seconds()?;
        if !cursor.at_end() {
            return None;
        }
        let seconds = days_from_civil(year, month, day) * 86_400 + seconds_of_day - offset_seconds;
        let unix_nanos = seconds
            .checked_mul(NANOS_PER_SECOND)?
            .checked_add(fraction_nanos)?;
        Some(Self::from_unix_nanos(unix_nanos))
    }

    /// Nanoseconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn nanos_since(self, earlier: Timestamp) -> i64 {
        self.unix_nanos.saturating_sub(earlier.unix_nanos)
    }
}

/// Parses a `--since`/`--until` value: an RFC 3339 time, a date (`2026-11-27`,
/// midnight UTC), or an age such as `90s`, `15m`, `2h`, `1d` (that long before
/// now). The error is a sentence for clap to show.
pub fn parse_time_bound(text: &str) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Some(moment) = Timestamp::parse_rfc3339(text) {
        return Ok(moment);
    }
    if let Some(midnight) = parse_date(text) {
        return Ok(midnight);
    }
    if let Some(age_nanos) = parse_age_nanos(text) {
        let now = Timestamp::now().unix_nanos();
        return Ok(Timestamp::from_unix_nanos(now.saturating_sub(age_nanos)));
    }
    Err(format!(
        "`{text}` is not a time: use RFC 3339 (2026-11-27T21:04:05Z), a date (2026-11-27) \
         or an age (90s, 15m, 2h, 1d)"
    ))
}

fn parse_date(text: &str) -> Option<Timestamp> {
    let mut cursor = Cursor::new(text);
    let (year, month, day) = cursor.date()?;
    cursor.at_end().then_some(())?;
    let unix_nanos = days_from_civil(year, month, day).checked_mul(86_400 * NANOS_PER_SECOND)?;
    Some(Timestamp::from_unix_nanos(unix_nanos))
}

fn parse_age_nanos(text: &str) -> Option<i64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (amount, unit) = text.split_at(unit_at);
    let amount: i64 = amount.parse().ok()?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    amount
        .checked_mul(unit_seconds)?
        .checked_mul(NANOS_PER_SECOND)
}

/// A span of time as the narrative shows it: `0.012s`, `2m05.300s`,
/// `1h02m05.300s`; milliseconds, truncated. Negative spans keep their sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed(pub(crate) i64);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let millis = self.0.unsigned_abs() / NANOS_PER_MILLI.unsigned_abs();
        let (hours, minutes) = (millis / 3_600_000, millis / 60_000 % 60);
        let (seconds, millis) = (millis / 1000 % 60, millis % 1000);
        if hours > 0 {
            write!(f, "{sign}{hours}h{minutes:02}m{seconds:02}.{millis:03}s")
        } else if minutes > 0 {
            write!(f, "{sign}{minutes}m{seconds:02}.{millis:03}s")
        } else {
            write!(f, "{sign}{seconds}.{millis:03}s")
        }
    }
}

/// Milliseconds in `nanos`, as a JSON number: an integer when whole.
pub(crate) fn millis_json(nanos: i64) -> serde_json::Value {
    if nanos % NANOS_PER_MILLI == 0 {
        (nanos / NANOS_PER_MILLI).into()
    } else {
        (nanos as f64 / NANOS_PER_MILLI as f64).into()
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Reads the fixed-width fields of an RFC 3339 string, left to right.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn advance(&mut self) {
        self.at += 1;
    }

    fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn one_of(&mut self, allowed: &[u8]) -> Option<u8> {
        let byte = self.peek().filter(|byte| allowed.contains(byte))?;
        self.advance();
        Some(byte)
    }

    fn number(&mut self, width: usize) -> Option<i64> {
        let digits = self.bytes.get(self.at..self.at + width)?;
        let mut value = 0;
        for &digit in digits {
            if !digit.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(digit - b'0');
        }
        self.at += width;
        Some(value)
    }

    fn date(&mut self) -> Option<(i64, i64, i64)> {
        let year = self.number(4)?;
        self.one_of(b"-")?;
        let month = self.number(2)?;
        self.one_of(b"-")?;
        let day = self.number(2)?;
        let valid = (1..=12).contains(&month) && (1..=days_in_month(year, month)).contains(&day);
        valid.then_some((year, month, day))
    }

    /// Seconds since midnight; a leap second (`:60`) counts as the next second.
    fn time_of_day(&mut self) -> Option<i64> {
        let hour = self.number(2)?;
        self.one_of(b":")?;
        let minute = self.number(2)?;
        self.one_of(b":")?;
        let second = self.number(2)?;
        let valid = hour < 24 && minute < 60 && second <= 60;
        valid.then_some(hour * 3_600 + minute * 60 + second)
    }

    fn fraction_nanos(&mut self) -> Option<i64> {
        let (mut nanos, mut digits) = (0, 0);
        while let Some(digit) = self.peek().filter(u8::is_ascii_digit) {
            if digits < 9 {
                nanos = nanos * 10 + i64::from(digit - b'0');
            }
            digits += 1;
            self.advance();
        }
        if digits == 0 {
            return None;
        }
        Some(nanos * 10_i64.pow(9_u32.saturating_sub(digits)))
    }

    fn offset_seconds(&mut self) -> Option<i64> {
        let sign = match self.one_of(b"Zz+-")? {
            b'Z' | b'z' => return Some(0),
            b'+' => 1,
            _ => -1,
        };
        let hours = self.number(2)?;
        if self.peek() == Some(b':') {
            self.advance();
        }
        let minutes = self.number(2)?;
        (hours < 24 && minutes < 60).then_some(sign * (hours * 3_600 + minutes * 60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanos(text: &str) -> Option<i64> {
        Timestamp::parse_rfc3339(text).map(Timestamp::unix_nanos)
    }

    #[test]
    fn parses_the_forms_the_components_write() {
        assert_eq!(nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            nanos("2000-02-29T00:00:00.123Z"),
            Some(951_782_400_123_000_000)
        );
        assert_eq!(
            nanos("2026-11-27T21:24:05.007Z"),
            Some(1_795_814_645_007_000_000)
        );
        assert_eq!(
            nanos("2026-11-27T22:24:05.007000+01:00"),
            nanos("2026-11-27T21:24:05.007Z")
        );
        assert_eq!(
            nanos("2026-11-27 16:24:05.007-0500"),
            nanos("2026-11-27t21:24:05.007z")
        );
        assert_eq!(
            nanos("1970-01-01T00:00:00.123456789123Z"),
            Some(123_456_789)
        );
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for text in [
            "",
            "yesterday",
            "2026-11-27",
            "2026-11-27T21:24:05",
            "2026-02-30T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T21:24:05.Z",
            "2026-11-27T21:24:05Zjunk",
            "２026-11-27T21:24:05Z",
        ] {
            assert_eq!(nanos(text), None, "{text:?}");
        }
    }

    #[test]
    fn parses_bounds() {
        assert_eq!(
            parse_time_bound("2026-11-27").map(Timestamp::unix_nanos),
            Ok(nanos("2026-11-27T00:00:00Z").unwrap_or_default())
        );
        let fifteen_minutes_ago = parse_time_bound("15m").map(Timestamp::unix_nanos);
        let age = Timestamp::now().unix_nanos() - fifteen_minutes_ago.unwrap_or_default();
        assert!((900 * NANOS_PER_SECOND..901 * NANOS_PER_SECOND).contains(&age));
        assert!(parse_time_bound("15 minutes").is_err());
    }

    #[test]
    fn formats_elapsed_time() {
        assert_eq!(Elapsed(0).to_string(), "0.000s");
        assert_eq!(Elapsed(12_999_999).to_string(), "0.012s");
        assert_eq!(Elapsed(125_300_000_000).to_string(), "2m05.300s");
        assert_eq!(Elapsed(3_725_120_000_000).to_string(), "1h02m05.120s");
        assert_eq!(Elapsed(-1_500_000_000).to_string(), "-1.500s");
        assert_eq!(millis_json(12_000_000), serde_json::json!(12));
        assert_eq!(millis_json(12_500_000), serde_json::json!(12.5));
    }
}
