//! Adapty's datetimes: `2031-03-05T09:10:11.123456+0000` in every sample, which RFC
//! 3339 parsers refuse (no colon in the offset). We accept that shape, RFC 3339
//! (`Z`, `+HH:MM`), 0 to 9 fraction digits, and a missing offset (read as UTC).

use crate::timestamp::Timestamp;
use chrono::{DateTime, NaiveDateTime, Utc};

pub fn parse(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    let with_offset = DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"));
    match with_offset {
        Ok(t) => Some(Timestamp::from(t.with_timezone(&Utc))),
        Err(_) => NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .map(|t| Timestamp::from(t.and_utc())),
    }
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
    }

    #[test]
    fn refuses_what_is_no_datetime() {
        for text in ["", "yesterday", "2031-03-05", "2031-13-05T09:10:11Z", "12"] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
