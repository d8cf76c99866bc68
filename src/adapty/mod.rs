//! The wire format: a webhook body in, a verification request or an [`Event`] out.
//!
//! Lenient where Adapty varies (unknown fields, nulls, missing keys, `+0000` offsets,
//! ids that are not uuids, money of any shape: we read no money at all) and strict
//! where the projection would otherwise guess: a field it needs, present with the
//! wrong type, refuses the whole body with a [`ParseError`] naming the field.

pub mod api;
pub mod datetime;
pub mod names;

use crate::projection::{Event, EventType, SharedProfile, Snapshot};
use crate::timestamp::Timestamp;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub use names::EventNames;

/// What a webhook body is.
#[derive(Debug)]
pub enum Webhook {
    /// Adapty's check when the user presses Save: `{}` now, `{"adapty_check": s}` in
    /// the older generation, which wants `s` echoed back.
    Verification {
        adapty_check: Option<Value>,
    },
    Event(Box<ReceivedEvent>),
}

/// An event as the `events` table keeps it.
#[derive(Debug)]
pub struct ReceivedEvent {
    pub event: Event,
    /// `event_type` exactly as received, before any name mapping.
    pub received_type: String,
    /// The body, byte for byte.
    pub body: String,
}

impl ReceivedEvent {
    /// Whether a string the store writes holds U+0000 (a JSON `\u0000`), which
    /// PostgreSQL's `text` cannot hold: such an event is refused there (SQLite keeps it).
    pub fn holds_nul(&self) -> bool {
        let e = &self.event;
        let nul = |s: Option<&str>| s.is_some_and(|s| s.contains('\0'));
        let snapshot = |s: &crate::projection::Snapshot| nul(Some(&s.access_level_id));
        nul(Some(&self.received_type))
            || nul(Some(&self.body))
            || [&e.id, &e.profile_id].iter().any(|s| nul(Some(s)))
            || [
                &e.customer_user_id,
                &e.environment,
                &e.store,
                &e.vendor_product_id,
            ]
            .iter()
            .any(|s| nul(s.as_deref()))
            || e.snapshot.as_ref().is_some_and(snapshot)
            || e.shared_with
                .iter()
                .any(|s| nul(Some(&s.profile_id)) || nul(s.customer_user_id.as_deref()))
            || e.api_levels.as_deref().unwrap_or_default().iter().any(|l| {
                snapshot(&l.snapshot)
                    || [&l.store, &l.vendor_product_id, &l.environment]
                        .iter()
                        .any(|s| nul(s.as_deref()))
            })
    }
}

/// Why a body can never be processed. Adapty does not retry these (4xx).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the body is not JSON: {0}")]
    InvalidJson(String),
    #[error("the body is JSON but not an object")]
    NotAnObject,
    #[error("`{0}` is missing")]
    MissingField(&'static str),
    #[error("`{field}` must be {expected}")]
    InvalidField {
        field: String,
        expected: &'static str,
    },
}

impl ParseError {
    /// The stable machine code of the error, as the API answers it.
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::InvalidJson(_) => "invalid_json",
            ParseError::NotAnObject => "not_an_object",
            ParseError::MissingField(_) => "missing_field",
            ParseError::InvalidField { .. } => "invalid_field",
        }
    }
}

/// The `event_type` a flat access-level snapshot (one with none) is stored under.
const FLAT_SNAPSHOT_TYPE: &str = "access_level_updated";

/// Parses a webhook body. `names` resolves `event_type` to a canonical type.
pub fn parse(body: &[u8], names: &EventNames) -> Result<Webhook, ParseError> {
    let text = std::str::from_utf8(body).map_err(|e| ParseError::InvalidJson(e.to_string()))?;
    let top = Known::object(text).map_err(|e| match e {
        Shape::NotAnObject => ParseError::NotAnObject,
        Shape::Invalid(e) => ParseError::InvalidJson(e),
    })?;
    let props = match top.event_properties {
        None => None,
        Some(raw) => Some(Known::object(raw.get()).map_err(|e| match e {
            Shape::NotAnObject => invalid("event_properties", "an object"),
            Shape::Invalid(e) => ParseError::InvalidJson(e),
        })?),
    };
    let fields = Fields {
        top: &top,
        props: props.as_ref(),
    };

    let received_type = fields.envelope_str("event_type")?;
    let profile_id = fields.envelope_str("profile_id")?;
    let (received_type, profile_id) = match (received_type, profile_id) {
        (None, None) => {
            return Ok(Webhook::Verification {
                adapty_check: top.adapty_check.clone(),
            })
        }
        // One old page of Adapty's says the `access_level_updated` is the one event not
        // wrapped in the envelope with `event_type`: a flat snapshot of a level. A body
        // that names a level and says whether it is active is read as that, and stored
        // under that name, rather than refused (400s are never retried).
        (None, Some(p)) if fields.is_flat_snapshot()? => (FLAT_SNAPSHOT_TYPE.to_owned(), p),
        (None, Some(_)) => return Err(ParseError::MissingField("event_type")),
        (Some(_), None) => return Err(ParseError::MissingField("profile_id")),
        (Some(t), Some(p)) => (t.to_owned(), p),
    };
    if received_type
        .trim()
        .eq_ignore_ascii_case(api::SNAPSHOT_TYPE)
    {
        // entitled's own type for a profile it fetched from Adapty's API: a webhook
        // claiming it would be folded as an authoritative snapshot.
        return Err(invalid(
            "event_type",
            "an Adapty webhook event type (adapty_api_snapshot is entitled's own)",
        ));
    }
    let event_datetime = fields
        .envelope_datetime("event_datetime")?
        .ok_or(ParseError::MissingField("event_datetime"))?;
    let event_type = names.resolve(&received_type);
    let id = match fields.id("profile_event_id")? {
        Some(id) => id,
        None => format!("sha256:{:x}", Sha256::digest(body)),
    };
    let snapshot = match event_type {
        Some(EventType::AccessLevelUpdated) => fields.snapshot()?,
        _ => None,
    };
    let event = Event {
        id: Arc::from(id),
        profile_id: Arc::from(profile_id),
        customer_user_id: fields.envelope_id("customer_user_id")?.map(Arc::from),
        event_type,
        event_datetime,
        environment: fields.str("environment")?.map(Arc::from),
        store: fields.str("store")?.map(Arc::from),
        vendor_product_id: fields.id("vendor_product_id")?.map(Arc::from),
        subscription_expires_at: fields.datetime("subscription_expires_at")?,
        cancellation_reason: fields.str("cancellation_reason")?.map(Arc::from),
        snapshot,
        shared_with: fields.shared_with(profile_id),
        api_levels: None,
    };
    Ok(Webhook::Event(Box::new(ReceivedEvent {
        event,
        received_type,
        body: text.to_owned(),
    })))
}

/// Reads back the bodies the `events` table holds, under the configured names: the one
/// decoder the writer (refolding a level), `rebuild`, explain, time travel and the CLI
/// share. Cloning is cheap.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    names: Arc<EventNames>,
}

impl Decoder {
    pub fn new(names: EventNames) -> Self {
        Decoder {
            names: Arc::new(names),
        }
    }

    /// The names the webhook parser uses too.
    pub fn names(&self) -> &EventNames {
        &self.names
    }

    /// The event of a stored body. `None` only for a body that is not an event (none
    /// is ever stored).
    pub fn decode(&self, body: &str) -> Option<Event> {
        if api::is_envelope(body) {
            return api::decode(body);
        }
        match parse(body.as_bytes(), &self.names) {
            Ok(Webhook::Event(received)) => Some(received.event),
            _ => None,
        }
    }
}

fn invalid(field: &str, expected: &'static str) -> ParseError {
    ParseError::InvalidField {
        field: field.to_owned(),
        expected,
    }
}

/// Where a field was found: its name in an error message.
#[derive(Clone, Copy)]
enum Place {
    Top(&'static str),
    Properties(&'static str),
}

impl Place {
    fn invalid(self, expected: &'static str) -> ParseError {
        match self {
            Place::Top(name) => invalid(name, expected),
            Place::Properties(name) => invalid(&format!("event_properties.{name}"), expected),
        }
    }
}

/// The fields entitled reads, at one level of a body (the top, or `event_properties`,
/// which may hold any of them). Everything else, most of a 2–3 KB body, is skipped
/// without being built: parsing into a whole `Value` tree was a third of the CPU an
/// event cost. A null is the same as a missing key. A known field given twice is
/// refused as invalid JSON (a tree would silently keep the last one).
#[derive(Deserialize)]
struct Known<'a> {
    event_type: Option<Value>,
    profile_id: Option<Value>,
    event_datetime: Option<Value>,
    customer_user_id: Option<Value>,
    profile_event_id: Option<Value>,
    environment: Option<Value>,
    store: Option<Value>,
    vendor_product_id: Option<Value>,
    subscription_expires_at: Option<Value>,
    cancellation_reason: Option<Value>,
    access_level_id: Option<Value>,
    is_active: Option<Value>,
    expires_at: Option<Value>,
    starts_at: Option<Value>,
    will_renew: Option<Value>,
    is_lifetime: Option<Value>,
    is_in_grace_period: Option<Value>,
    is_refund: Option<Value>,
    adapty_check: Option<Value>,
    profiles_sharing_access_level: Option<Value>,
    #[serde(borrow)]
    event_properties: Option<&'a RawValue>,
}

/// Why a text is not a [`Known`] object.
enum Shape {
    NotAnObject,
    Invalid(String),
}

impl<'a> Known<'a> {
    /// Reads a JSON object. Anything else is refused before serde sees it, since a
    /// derived struct would also accept an array of its fields in order.
    fn object(text: &'a str) -> Result<Self, Shape> {
        if !text.trim_start().starts_with('{') {
            return match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => Err(Shape::NotAnObject),
                Err(e) => Err(Shape::Invalid(e.to_string())),
            };
        }
        serde_json::from_str(text).map_err(|e| Shape::Invalid(e.to_string()))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        let field = match name {
            "event_type" => &self.event_type,
            "profile_id" => &self.profile_id,
            "event_datetime" => &self.event_datetime,
            "customer_user_id" => &self.customer_user_id,
            "profile_event_id" => &self.profile_event_id,
            "environment" => &self.environment,
            "store" => &self.store,
            "vendor_product_id" => &self.vendor_product_id,
            "subscription_expires_at" => &self.subscription_expires_at,
            "cancellation_reason" => &self.cancellation_reason,
            "access_level_id" => &self.access_level_id,
            "is_active" => &self.is_active,
            "expires_at" => &self.expires_at,
            "starts_at" => &self.starts_at,
            "will_renew" => &self.will_renew,
            "is_lifetime" => &self.is_lifetime,
            "is_in_grace_period" => &self.is_in_grace_period,
            "is_refund" => &self.is_refund,
            "profiles_sharing_access_level" => &self.profiles_sharing_access_level,
            _ => return None,
        };
        field.as_ref().filter(|v| !v.is_null())
    }
}

/// Where a field is looked up: event-specific fields in `event_properties` first and
/// the top level as a fallback (one old page puts them there); envelope fields the
/// other way round. A missing key and an explicit `null` are the same.
struct Fields<'a> {
    top: &'a Known<'a>,
    props: Option<&'a Known<'a>>,
}

impl<'a> Fields<'a> {
    /// The value, and where it was found (for an error message: built only then).
    fn lookup(&self, name: &'static str, envelope: bool) -> Option<(Place, &'a Value)> {
        let in_props = || {
            let v = self.props?.get(name)?;
            Some((Place::Properties(name), v))
        };
        let in_top = || {
            let v = self.top.get(name)?;
            Some((Place::Top(name), v))
        };
        if envelope {
            in_top().or_else(in_props)
        } else {
            in_props().or_else(in_top)
        }
    }

    fn string(&self, name: &'static str, envelope: bool) -> Result<Option<&'a str>, ParseError> {
        match self.lookup(name, envelope) {
            None => Ok(None),
            Some((_, Value::String(s))) if s.trim().is_empty() => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s)),
            Some((place, _)) => Err(place.invalid("a string")),
        }
    }

    /// Ids are strings in every sample, but nothing is gained by refusing a number.
    fn identifier(&self, name: &'static str, envelope: bool) -> Result<Option<String>, ParseError> {
        match self.lookup(name, envelope) {
            Some((_, Value::Number(n))) => Ok(Some(n.to_string())),
            _ => Ok(self.string(name, envelope)?.map(str::to_owned)),
        }
    }

    fn date_time(
        &self,
        name: &'static str,
        envelope: bool,
    ) -> Result<Option<Timestamp>, ParseError> {
        let Some((place, value)) = self.lookup(name, envelope) else {
            return Ok(None);
        };
        const EXPECTED: &str = "a datetime such as 2031-03-05T09:10:11.123456+0000";
        match value {
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => datetime::parse(s)
                .map(Some)
                .ok_or_else(|| place.invalid(EXPECTED)),
            _ => Err(place.invalid(EXPECTED)),
        }
    }

    fn envelope_str(&self, name: &'static str) -> Result<Option<&'a str>, ParseError> {
        self.string(name, true)
    }

    fn envelope_id(&self, name: &'static str) -> Result<Option<String>, ParseError> {
        self.identifier(name, true)
    }

    fn envelope_datetime(&self, name: &'static str) -> Result<Option<Timestamp>, ParseError> {
        self.date_time(name, true)
    }

    fn str(&self, name: &'static str) -> Result<Option<&'a str>, ParseError> {
        self.string(name, false)
    }

    fn id(&self, name: &'static str) -> Result<Option<String>, ParseError> {
        self.identifier(name, false)
    }

    fn datetime(&self, name: &'static str) -> Result<Option<Timestamp>, ParseError> {
        self.date_time(name, false)
    }

    fn bool(&self, name: &'static str) -> Result<Option<bool>, ParseError> {
        match self.lookup(name, false) {
            None => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(*b)),
            Some((place, _)) => Err(place.invalid("true or false")),
        }
    }

    /// `profiles_sharing_access_level` (top level first), read leniently: entries that
    /// are not objects with a non-empty string `profile_id`, and the event's own
    /// profile, are left out; anything but an array is read as no list. A malformed
    /// list must not cost the event (a 400 is never retried), and an entry without a
    /// profile links nothing.
    fn shared_with(&self, own_profile: &str) -> Vec<SharedProfile> {
        let Some((_, Value::Array(entries))) = self.lookup("profiles_sharing_access_level", true)
        else {
            return Vec::new();
        };
        let text = |entry: &Value, key: &str| -> Option<Arc<str>> {
            let s = entry.get(key)?.as_str()?.trim();
            (!s.is_empty()).then(|| Arc::from(s))
        };
        let mut shared: Vec<SharedProfile> = Vec::new();
        for entry in entries {
            let Some(profile_id) = text(entry, "profile_id") else {
                continue;
            };
            if &*profile_id == own_profile || shared.iter().any(|s| s.profile_id == profile_id) {
                continue;
            }
            shared.push(SharedProfile {
                profile_id,
                customer_user_id: text(entry, "customer_user_id"),
            });
        }
        shared
    }

    /// Whether a body without `event_type` is an access level's snapshot: it names the
    /// level and says whether it is active.
    fn is_flat_snapshot(&self) -> Result<bool, ParseError> {
        Ok(self.id("access_level_id")?.is_some() && self.bool("is_active")?.is_some())
    }

    /// The snapshot of an `access_level_updated`, or `None` when it names no level or
    /// does not say whether it is active: such an event is stored but decides nothing.
    fn snapshot(&self) -> Result<Option<Snapshot>, ParseError> {
        let access_level_id = self.id("access_level_id")?;
        let is_active = self.bool("is_active")?;
        let snapshot = Snapshot {
            access_level_id: Arc::from(access_level_id.unwrap_or_default()),
            is_active: is_active.unwrap_or(false),
            expires_at: self.datetime("expires_at")?,
            starts_at: self.datetime("starts_at")?,
            will_renew: self.bool("will_renew")?.unwrap_or(false),
            is_lifetime: self.bool("is_lifetime")?.unwrap_or(false),
            is_in_grace_period: self.bool("is_in_grace_period")?.unwrap_or(false),
            is_refund: self.bool("is_refund")?.unwrap_or(false),
        };
        let complete = !snapshot.access_level_id.is_empty() && is_active.is_some();
        Ok(complete.then_some(snapshot))
    }
}

#[cfg(test)]
mod tests;
