//! Adapty's datetimes: `2031-03-05T09:10:11.123456+0000` in every sample, which RFC
//! 3339 parsers refuse (no colon in the offset). We accept that shape, RFC 3339
//! (`Z`, `+HH:MM`), 0 to 9 fraction digits, and a missing offset (read as UTC).

use crate::timestamp::Timestamp;
use chrono::{DateTime, Datelike, NaiveDateTime, Utc};

///
/// Only years 0000 to 9999 (in UTC) are instants: chrono's `%Y` also reads `+10000` and
/// `-0001`, which RFC 3339 text cannot hold, so the store could not read them back
/// (and would refuse to start on them). No subscription lives there.
pub fn parse(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    let with_offset = DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"));
    let utc = match with_offset {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()?
            .and_utc(),
    };
    (0..=9999)
        .contains(&utc.year())
        .then(|| Timestamp::from(utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> String {
        parse(text)
            .unwrap_or_else(|| panic!("{text} should parse"))
            .to_rfc3339()
    }

    #[test]
    fn accepts_adapty_and_rfc3339_shapes() {
        let want = "2031-03-05T09:10:11.123456Z";
        assert_eq!(at("2031-03-05T09:10:11.123456+0000"), want);
        assert_eq!(at("2031-03-05T09:10:11.123456+00:00"), want);
        assert_eq!(at("2031-03-05T09:10:11.123456Z"), want);
        assert_eq!(at("2031-03-05T09:10:11.123456789Z"), want);
        assert_eq!(at("2031-03-05T10:10:11.123456+0100"), want);
        assert_eq!(at("2031-03-05T09:10:11.123456"), want);
        assert_eq!(
            at("2031-03-05T09:10:11+0000"),
            "2031-03-05T09:10:11.000000Z"
        );
        assert_eq!(at("2031-03-05T09:10:11.1Z"), "2031-03-05T09:10:11.100000Z");
        assert_eq!(
            at("0000-01-01T00:00:00+0000"),
            "0000-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn refuses_what_is_no_datetime() {
        for text in [
            "",
            "yesterday",
            "2031-03-05",
            "2031-13-05T09:10:11Z",
            "12",
            // Years RFC 3339 text cannot hold, before or after the offset.
            "+10000-01-01T00:00:00.000000+0000",
            "-0001-01-01T00:00:00.000000+0000",
            "9999-12-31T23:00:00.000000-0500",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
