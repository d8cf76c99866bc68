//! The wire format of Adapty's server-side API, as far as entitled reads it: a profile
//! (`GET /api/v2/server-side-api/profile/`) in, an [`EventType::AdaptyApiSnapshot`]
//! event out, stored in `events` like a webhook.
//!
//! The stored body is an envelope entitled writes around Adapty's answer, kept byte
//! for byte under `"response"`:
//!
//! ```json
//! {"event_type":"adapty_api_snapshot","profile_id":"…","customer_user_id":"…",
//!  "event_datetime":"<Adapty's timestamp>","profile_event_id":"adapty-api:<profile>:<ms>",
//!  "source":"sync","fetched_at":"…","response":{"data":{…}}}
//! ```
//!
//! Its time is Adapty's `timestamp` (when Adapty produced the answer, there to resolve
//! races) and its id is made of the profile and that timestamp, so fetching an answer
//! that has not changed stores nothing new. A webhook may not claim the type: the
//! webhook parser refuses it.

use super::datetime;
use crate::projection::{ApiLevel, Event, EventType, Snapshot};
use crate::timestamp::Timestamp;
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;

/// The stored type of a fetched profile.
pub const SNAPSHOT_TYPE: &str = "adapty_api_snapshot";

/// What is wrong with an answer of Adapty's API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Adapty's profile answer is not usable: {0}")]
pub struct ApiParseError(pub String);

/// A fetched profile, ready to store: the envelope, and the event it decodes to.
#[derive(Debug)]
pub struct FetchedProfile {
    pub body: String,
    pub event: Event,
}

/// Wraps Adapty's answer (`{"data": {…}}`) in the stored envelope. `source` says who
/// asked (`sync`, `refresh`, `verify`, `wait_for`).
pub fn envelope(
    response: &str,
    source: &str,
    fetched_at: Timestamp,
) -> Result<FetchedProfile, ApiParseError> {
    let raw: &RawValue =
        serde_json::from_str(response).map_err(|e| ApiParseError(format!("not JSON: {e}")))?;
    let parsed: Value =
        serde_json::from_str(raw.get()).map_err(|e| ApiParseError(format!("not JSON: {e}")))?;
    let data = parsed
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| ApiParseError("no `data` object".into()))?;
    let profile_id =
        text(data, "profile_id").ok_or_else(|| ApiParseError("no `profile_id`".into()))?;
    let at = timestamp(data).ok_or_else(|| ApiParseError("no `timestamp`".into()))?;
    let id = format!("adapty-api:{profile_id}:{}", at.as_micros() / 1000);
    let body = format!(
        "{{\"event_type\":\"{SNAPSHOT_TYPE}\",\"profile_id\":{},\"customer_user_id\":{},\
         \"event_datetime\":\"{}\",\"profile_event_id\":{},\"source\":{},\"fetched_at\":\"{}\",\
         \"response\":{}}}",
        json(&profile_id),
        text(data, "customer_user_id").map_or_else(|| "null".to_owned(), |u| json(&u)),
        at.to_rfc3339(),
        json(&id),
        json(source),
        fetched_at.to_rfc3339(),
        raw.get(),
    );
    let event =
        decode(&body).ok_or_else(|| ApiParseError("the envelope does not decode".into()))?;
    Ok(FetchedProfile { body, event })
}

/// Whether a stored body is an envelope [`envelope`] wrote.
pub fn is_envelope(body: &str) -> bool {
    body.starts_with(concat!("{\"event_type\":\"", "adapty_api_snapshot", "\""))
}

/// The event of a stored envelope; `None` when it is not one.
pub fn decode(body: &str) -> Option<Event> {
    if !is_envelope(body) {
        return None;
    }
    let envelope: Value = serde_json::from_str(body).ok()?;
    let data = envelope.get("response")?.get("data")?;
    let profile_id = text(&envelope, "profile_id")?;
    let levels: Vec<ApiLevel> = data
        .get("access_levels")
        .and_then(Value::as_array)
        .map(|levels| levels.iter().filter_map(level).collect())
        .unwrap_or_default();
    Some(Event {
        id: Arc::from(text(&envelope, "profile_event_id")?),
        profile_id: Arc::from(profile_id),
        customer_user_id: text(&envelope, "customer_user_id").map(Arc::from),
        event_type: Some(EventType::AdaptyApiSnapshot),
        event_datetime: datetime::parse(envelope.get("event_datetime")?.as_str()?)?,
        environment: None,
        store: None,
        vendor_product_id: None,
        subscription_expires_at: None,
        cancellation_reason: None,
        snapshot: None,
        shared_with: Vec::new(),
        api_levels: Some(levels.into()),
    })
}

/// One entry of `access_levels`. Adapty gives no `is_active`: a listed level is held
/// from `starts_at` (when given) until `expires_at` (null: no end). One marked as
/// refunded is not held. `will_renew`: an end, and auto-renew not turned off
/// (`renewal_cancelled_at` null). An entry without `access_level_id` is skipped.
fn level(entry: &Value) -> Option<ApiLevel> {
    let time = |key: &str| {
        entry
            .get(key)
            .and_then(Value::as_str)
            .and_then(datetime::parse)
    };
    let flag = |key: &str| entry.get(key).and_then(Value::as_bool).unwrap_or(false);
    let expires_at = time("expires_at");
    let is_lifetime = flag("is_lifetime") || expires_at.is_none();
    let is_refund = flag("is_refund");
    Some(ApiLevel {
        snapshot: Snapshot {
            access_level_id: Arc::from(text(entry, "access_level_id")?),
            is_active: !is_refund,
            expires_at,
            starts_at: time("starts_at"),
            will_renew: !is_lifetime
                && entry.get("renewal_cancelled_at").is_none_or(Value::is_null),
            is_lifetime,
            is_in_grace_period: flag("is_in_grace_period"),
            is_refund,
        },
        store: text(entry, "store").map(Arc::from),
        vendor_product_id: text(entry, "store_product_id").map(Arc::from),
        environment: text(entry, "environment").map(Arc::from),
    })
}

/// Adapty's `timestamp`: milliseconds since the epoch (an integer; a float or a
/// numeric string is read too).
fn timestamp(data: &Value) -> Option<Timestamp> {
    let ms = match data.get("timestamp")? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    Some(Timestamp::from_micros(ms.checked_mul(1000)?))
}

/// A non-empty string (or a number, as ids sometimes are) at `key`.
fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(levels: &str) -> String {
        format!(
            r#"{{"data":{{"app_id":"a","profile_id":"p-1","customer_user_id":"u-1",
            "total_revenue_usd":0,"segment_hash":"h","timestamp":1900000000123,
            "custom_attributes":[],"access_levels":[{levels}],"subscriptions":[],
            "non_subscriptions":[]}}}}"#
        )
    }

    #[test]
    fn an_answer_becomes_a_snapshot_of_every_listed_level() {
        let response = answer(
            r#"{"access_level_id":"premium","store":"app_store","store_product_id":"m",
               "environment":"Production","starts_at":null,
               "purchased_at":"2030-03-01T00:00:00+00:00",
               "expires_at":"2030-04-01T00:00:00.5+00:00","renewal_cancelled_at":null,
               "is_in_grace_period":false,"is_refund":false},
               {"access_level_id":"lifetime","expires_at":null,"store":"play_store"},
               {"expires_at":null}"#,
        );
        let fetched = envelope(&response, "sync", Timestamp::from_micros(7)).unwrap();
        let e = &fetched.event;
        assert_eq!(&*e.id, "adapty-api:p-1:1900000000123");
        assert_eq!(e.event_type, Some(EventType::AdaptyApiSnapshot));
        assert_eq!(
            e.event_datetime,
            Timestamp::from_micros(1_900_000_000_123_000)
        );
        assert_eq!(e.customer_user_id.as_deref(), Some("u-1"));
        let levels = e.api_levels.as_deref().unwrap();
        assert_eq!(levels.len(), 2, "the entry without a level is skipped");
        assert!(levels[0].snapshot.is_active && levels[0].snapshot.will_renew);
        assert!(!levels[0].snapshot.is_lifetime);
        assert_eq!(levels[0].vendor_product_id.as_deref(), Some("m"));
        assert!(levels[1].snapshot.is_lifetime && !levels[1].snapshot.will_renew);
        // The raw answer is kept byte for byte, and the envelope decodes alone.
        assert!(fetched.body.contains(&response));
        assert_eq!(decode(&fetched.body).as_ref(), Some(e));
    }

    #[test]
    fn an_answer_without_data_or_timestamp_is_refused() {
        let now = Timestamp::from_micros(7);
        assert!(envelope(r#"{"errors":[]}"#, "sync", now).is_err());
        assert!(envelope(r#"{"data":{"profile_id":"p"}}"#, "sync", now).is_err());
        assert!(envelope("not json", "sync", now).is_err());
    }
}
