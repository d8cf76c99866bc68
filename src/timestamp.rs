//! The one representation of an instant used inside entitled.
//!
//! Adapty sends microseconds; we keep exactly microseconds (an `i64` since the Unix
//! epoch), so that an instant read back from SQLite compares equal to the one parsed
//! from the wire. Orders of events depend on that equality.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
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

/// [`Timestamp::to_rfc3339`]'s text on the stack: what the read API writes, thousands of
/// times a second, without a `String` or the formatting machinery between.
pub struct Rfc3339Text([u8; 27]);

impl Rfc3339Text {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Timestamp {
    /// The shape [`Timestamp::to_rfc3339`] names, written digit by digit into a stack
    /// buffer (chrono's general formatter was a twentieth of a lookup's CPU); `None`
    /// for years outside 0–9999, which need another width.
    pub fn rfc3339_text(self) -> Option<Rfc3339Text> {
        // Days to a civil date as in Howard Hinnant's `civil_from_days` (public
        // domain): a few dozen instructions where chrono's calendar took ~500.
        let seconds = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000) as u32;
        let (days, of_day) = (
            seconds.div_euclid(86_400),
            seconds.rem_euclid(86_400) as u32,
        );
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097) as u32;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = i64::from(yoe) + era * 400 + i64::from(month <= 2);
        let year = u32::try_from(year).ok().filter(|year| *year <= 9999)?;
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |mut n: u32, end: usize, width: usize| {
            for digit in text[end - width..end].iter_mut().rev() {
                *digit = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(year, 4, 4);
        put(month, 7, 2);
        put(day, 10, 2);
        put(of_day / 3600, 13, 2);
        put(of_day / 60 % 60, 16, 2);
        put(of_day % 60, 19, 2);
        put(micros, 26, 6);
        Some(Rfc3339Text(text))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rfc3339_text() {
            Some(text) => f.write_str(text.as_str()),
            None => f.write_str(
                &self
                    .to_datetime()
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
        }
    }
}

/// As its RFC 3339 text, written straight into the output (no `String` between).
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339_text() {
            Some(text) => serializer.serialize_str(text.as_str()),
            None => serializer.collect_str(self),
        }
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
        // Years -0026 to 14645: the fast writer's range (0000–9999) and either side.
        fn every_instant_writes_as_chrono_would_and_reads_back(micros in -63_000_000_000_000_000i64..400_000_000_000_000_000) {
            let t = Timestamp::from_micros(micros);
            let chrono = t.to_datetime().to_rfc3339_opts(SecondsFormat::Micros, true);
            proptest::prop_assert_eq!(t.to_rfc3339(), chrono);
            if t.rfc3339_text().is_some() {
                proptest::prop_assert_eq!(Timestamp::parse_written(&t.to_rfc3339()), Some(t));
            }
        }
    }

    #[test]
    fn calendar_edges_write_as_chrono_would() {
        let mut checked = 0;
        for text in [
            "0000-01-01T00:00:00Z",
            "0000-02-29T00:00:00Z",
            "0000-03-01T00:00:00Z",
            "1900-02-28T00:00:00Z",
            "1900-03-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2000-02-29T00:00:00Z",
            "2000-12-31T00:00:00Z",
            "2100-02-28T00:00:00Z",
            "2100-03-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
        ] {
            let day = Timestamp::from(DateTime::parse_from_rfc3339(text).unwrap().to_utc());
            // Each side of the instant, by a microsecond and by a day.
            for delta in [-86_400_000_000, -1, 0, 1, 86_400_000_000] {
                let t = day.saturating_add_micros(delta);
                let chrono = t.to_datetime().to_rfc3339_opts(SecondsFormat::Micros, true);
                assert_eq!(t.to_rfc3339(), chrono);
                checked += usize::from(t.rfc3339_text().is_some());
            }
        }
        assert!(checked >= 50, "the fast writer wrote {checked}");
    }

    #[test]
    fn text_order_is_time_order() {
        let a = Timestamp::from_micros(999_999).to_rfc3339();
        let b = Timestamp::from_micros(1_000_000).to_rfc3339();
        assert!(a < b, "{a} should sort before {b}");
    }
}
