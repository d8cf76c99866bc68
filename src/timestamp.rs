//! The one representation of an instant used inside entitled.
//!
//! Adapty sends microseconds; we keep exactly microseconds (an `i64` since the Unix
//! epoch), so that an instant read back from SQLite compares equal to the one parsed
//! from the wire. Orders of events depend on that equality.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike, Utc};
use std::fmt;

/// An instant, in whole microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    pub fn now() -> Self {
        Self::from(Utc::now())
    }

    /// Parses the one shape entitled writes (`2031-03-05T09:10:11.123456Z`) and any
    /// other RFC 3339 text; used for values read back from our own database.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        Self::parse_written(text).or_else(|| {
            DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| Self::from(t.with_timezone(&Utc)))
        })
    }

    /// The shape [`Timestamp::to_rfc3339`] writes, read without a general parser:
    /// warm-up reads three per entitlement, millions of them.
    fn parse_written(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        let shape = b.len() == 27
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[26] == b'Z';
        if !shape {
            return None;
        }
        let number = |from: usize, to: usize| {
            b[from..to].iter().try_fold(0u32, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        let year = i32::try_from(number(0, 4)?).ok()?;
        let date = NaiveDate::from_ymd_opt(year, number(5, 7)?, number(8, 10)?)?;
        let time = date.and_hms_micro_opt(
            number(11, 13)?,
            number(14, 16)?,
            number(17, 19)?,
            number(20, 26)?,
        )?;
        Some(Self::from(time.and_utc()))
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// RFC 3339 in UTC with six fraction digits and `Z`: sortable as text.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }

    pub fn saturating_add_micros(self, micros: i64) -> Self {
        Timestamp(self.0.saturating_add(micros))
    }
}

impl From<DateTime<Utc>> for Timestamp {
    /// Truncates below the microsecond, which Adapty never sends.
    fn from(t: DateTime<Utc>) -> Self {
        Timestamp(t.timestamp_micros())
    }
}

impl fmt::Display for Timestamp {
    /// The shape [`Timestamp::to_rfc3339`] names, written digit by digit into a stack
    /// buffer (chrono's general formatter was a twentieth of a lookup's CPU); years
    /// outside 0–9999, which need another width, go through chrono.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.to_datetime();
        let year = match u32::try_from(t.year()) {
            Ok(year) if year <= 9999 => year,
            _ => return f.write_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true)),
        };
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |mut n: u32, end: usize, width: usize| {
            for digit in text[end - width..end].iter_mut().rev() {
                *digit = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(year, 4, 4);
        put(t.month(), 7, 2);
        put(t.day(), 10, 2);
        put(t.hour(), 13, 2);
        put(t.minute(), 16, 2);
        put(t.second(), 19, 2);
        put(t.timestamp_subsec_micros(), 26, 6);
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// As its RFC 3339 text, written straight into the output (no `String` between).
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_text_form() {
        let t = Timestamp::from_micros(1_930_000_211_123_456);
        let text = t.to_rfc3339();
        assert_eq!(text, "2031-02-27T23:10:11.123456Z");
        assert_eq!(Timestamp::parse_rfc3339(&text), Some(t));
    }

    #[test]
    fn the_fast_reading_agrees_with_chrono() {
        // Edges of the fast path: leap days, year ends, the last microsecond.
        for text in [
            "2028-02-29T23:59:59.999999Z",
            "1970-01-01T00:00:00.000000Z",
            "2031-12-31T23:59:59.000001Z",
            "0001-01-01T00:00:00.000000Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(
                Timestamp::parse_written(text),
                Some(Timestamp::from(chrono))
            );
        }
        for not_ours in [
            "2031-02-30T00:00:00.000000Z",
            "2031-02-27T24:00:00.000000Z",
            "2031-02-27T23:10:11.12345xZ",
            "2031-02-27T23:10:11.123456+00:00",
        ] {
            assert_eq!(Timestamp::parse_written(not_ours), None, "{not_ours}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_instant_writes_as_chrono_would_and_reads_back(micros in -62_135_596_800_000_000i64..253_402_300_799_999_999) {
            let t = Timestamp::from_micros(micros);
            let chrono = t.to_datetime().to_rfc3339_opts(SecondsFormat::Micros, true);
            proptest::prop_assert_eq!(t.to_rfc3339(), chrono);
            proptest::prop_assert_eq!(Timestamp::parse_written(&t.to_rfc3339()), Some(t));
        }
    }

    #[test]
    fn text_order_is_time_order() {
        let a = Timestamp::from_micros(999_999).to_rfc3339();
        let b = Timestamp::from_micros(1_000_000).to_rfc3339();
        assert!(a < b, "{a} should sort before {b}");
    }
}
