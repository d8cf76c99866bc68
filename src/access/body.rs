//! The profile answer's body, written straight from the index into bytes.
//!
//! `GET /profiles/{id}/access` is the route that must cost less than the network hop
//! to it. Building a [`super::ProfileAnswer`] (a map, a view per level, shared
//! strings cloned) and handing it to serde's derive took half of a lookup's own CPU
//! (docs/performance.md#lookup-answer-written-from-the-index). This writes the same bytes while the profile's index entry is
//! borrowed: field names as literals, strings through `serde_json`'s escaping, instants
//! from a stack buffer. The derived serializer stays the reference: a property test
//! holds the two byte for byte equal, and the OpenAPI schema comes from the derive.
//!
//! The body is written in two steps so that the ETag can hash what the answer says
//! without when it was asked: [`write_profile`] stops before `checked_at`, the caller
//! hashes that, then [`close`] appends `,"checked_at":"…"}`.

use super::{earliest, next_change, wanted};
use crate::index::{LevelAccess, ProfileAccess};
use crate::timestamp::Timestamp;

/// Writes the profile answer for `known` evaluated at `at`, up to (not including) its
/// final `checked_at` field. Returns the answer's `valid_until`.
pub fn write_profile(
    out: &mut Vec<u8>,
    profile_id: &str,
    known: Option<&ProfileAccess>,
    access_level: Option<&str>,
    at: Timestamp,
) -> Option<Timestamp> {
    let levels = known.map_or(&[][..], |p| &p.levels[..]);
    let wanted = |level: &&LevelAccess| wanted(level, access_level);
    out.extend_from_slice(b"{\"profile_id\":");
    string(out, profile_id);
    out.extend_from_slice(b",\"customer_user_id\":");
    optional_string(out, known.and_then(|p| p.customer_user_id.as_deref()));
    out.extend_from_slice(b",\"premium\":");
    let premium = levels
        .iter()
        .filter(wanted)
        .any(|l| l.window().grants_at(at));
    boolean(out, premium);
    out.extend_from_slice(b",\"access_levels\":{");
    let mut valid_until: Option<Timestamp> = None;
    // The index keeps a profile's levels sorted by id: the order of the derive's map.
    for (i, level) in levels.iter().filter(wanted).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, level.access_level_id());
        out.push(b':');
        write_level(out, level, at);
        valid_until = earliest(valid_until, next_change(level, at));
    }
    out.extend_from_slice(b"},\"valid_until\":");
    optional_instant(out, valid_until);
    valid_until
}

/// Ends a body [`write_profile`] began.
pub fn close(out: &mut Vec<u8>, checked_at: Timestamp) {
    out.extend_from_slice(b",\"checked_at\":");
    instant(out, checked_at);
    out.push(b'}');
}

fn write_level(out: &mut Vec<u8>, level: &LevelAccess, at: Timestamp) {
    let w = level.window();
    out.extend_from_slice(b"{\"active\":");
    boolean(out, w.grants_at(at));
    out.extend_from_slice(b",\"expires_at\":");
    optional_instant(out, w.expires_at);
    out.extend_from_slice(b",\"starts_at\":");
    optional_instant(out, w.starts_at);
    out.extend_from_slice(b",\"will_renew\":");
    boolean(out, level.will_renew);
    out.extend_from_slice(b",\"is_lifetime\":");
    boolean(out, w.is_lifetime);
    out.extend_from_slice(b",\"in_grace_period\":");
    boolean(out, level.in_grace_period);
    out.extend_from_slice(b",\"is_refund\":");
    boolean(out, level.is_refund);
    out.extend_from_slice(b",\"store\":");
    optional_string(out, level.labels.store.as_deref());
    out.extend_from_slice(b",\"vendor_product_id\":");
    optional_string(out, level.labels.vendor_product_id.as_deref());
    out.extend_from_slice(b",\"environment\":");
    optional_string(out, level.labels.environment.as_deref());
    out.extend_from_slice(b",\"updated_at\":");
    instant(out, level.updated_at);
    out.extend_from_slice(b",\"shared_from\":");
    optional_string(out, level.labels.shared_from.as_deref());
    out.push(b'}');
}

fn string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn instant(out: &mut Vec<u8>, t: Timestamp) {
    match t.rfc3339_text() {
        Some(text) => {
            out.push(b'"');
            out.extend_from_slice(text.as_str().as_bytes());
            out.push(b'"');
        }
        // Years outside 0000–9999 (never stored: the parser refuses them).
        None => string(out, &t.to_rfc3339()),
    }
}

fn optional_instant(out: &mut Vec<u8>, t: Option<Timestamp>) {
    match t {
        Some(t) => instant(out, t),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::profile_answer;
    use crate::index::{Change, Index};
    use crate::projection::{AccessWindow, Entitlement, EventType};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn instant() -> impl Strategy<Value = Timestamp> {
        // Around "now" in the tests (`at` below), so that every branch of the window is hit.
        (-3i64..4).prop_map(|d| Timestamp::from_micros(1_900_000_000_000_000 + d * 86_400_000_000))
    }

    fn text() -> impl Strategy<Value = String> {
        // Quotes, backslashes, controls and non-ASCII: everything escaping must handle.
        prop_oneof!["[a-z_]{1,8}", "\\PC{0,6}", "[\"\\\\\u{0}-\u{1f}é☃]{1,4}"]
    }

    fn entitlement() -> impl Strategy<Value = Entitlement> {
        (
            (
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(instant()),
                proptest::option::of(instant()),
            ),
            (any::<bool>(), any::<bool>(), any::<bool>()),
            (
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(text()),
            ),
            instant(),
        )
            .prop_map(
                |(
                    (is_active, is_lifetime, expires_at, starts_at),
                    (will_renew, in_grace_period, is_refund),
                    (store, product, environment, shared_from),
                    last_event_at,
                )| Entitlement {
                    window: AccessWindow {
                        is_active,
                        is_lifetime,
                        expires_at,
                        starts_at,
                    },
                    will_renew,
                    in_grace_period,
                    is_refund,
                    store: store.map(Arc::from),
                    vendor_product_id: product.map(Arc::from),
                    environment: environment.map(Arc::from),
                    last_event_id: "e".into(),
                    last_event_type: EventType::SubscriptionStarted,
                    last_event_at,
                    shared_from: shared_from.map(Arc::from),
                    sharing_group: None,
                },
            )
    }

    proptest! {
        #[test]
        fn writes_the_bytes_the_derived_serializer_writes(
            profile_id in text(),
            customer_user_id in proptest::option::of(text()),
            levels in proptest::collection::vec((text(), entitlement()), 0..4),
            filter in proptest::option::of(text()),
            at in instant(),
        ) {
            let index = Index::new();
            let profile: Arc<str> = profile_id.as_str().into();
            index.apply(levels.iter().map(|(level, e)| Change::Level {
                profile_id: profile.clone(),
                access_level_id: level.as_str().into(),
                entitlement: Some(e.clone()),
            }));
            if let Some(id) = &customer_user_id {
                index.apply([Change::CustomerUserId { profile_id: profile.clone(), customer_user_id: id.as_str().into() }]);
            }
            // The filter names one of the levels, or another.
            let filter = filter.map(|f| levels.first().map_or(f.clone(), |(l, _)| if f.len() % 2 == 0 { l.clone() } else { f }));
            for id in [profile_id.as_str(), "unknown profile"] {
                let expected = serde_json::to_vec(&profile_answer(&index, id, filter.as_deref(), at)).unwrap();
                let mut written = Vec::new();
                let valid_until = index.with_profile(id, |known| write_profile(&mut written, id, known, filter.as_deref(), at));
                close(&mut written, at);
                prop_assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(expected).unwrap());
                prop_assert_eq!(valid_until, profile_answer(&index, id, filter.as_deref(), at).valid_until);
            }
        }
    }
}
