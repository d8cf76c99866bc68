//! The one representation of an instant used inside entitled.
//!
//! Adapty sends microseconds; we keep exactly microseconds (an `i64` since the Unix
//! epoch), so that an instant read back from SQLite compares equal to the one parsed
//! from the wire. Orders of events depend on that equality.

use chrono::{DateTime, SecondsFormat, Utc};
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
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Self::from(t.with_timezone(&Utc)))
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// RFC 3339 in UTC with six fraction digits and `Z`: sortable as text.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Micros, true)
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
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
    fn text_order_is_time_order() {
        let a = Timestamp::from_micros(999_999).to_rfc3339();
        let b = Timestamp::from_micros(1_000_000).to_rfc3339();
        assert!(a < b, "{a} should sort before {b}");
    }
}
