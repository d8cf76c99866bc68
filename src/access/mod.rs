//! The read model: the answer to "is this profile (or user) premium?", computed from
//! an [`Index`] at an instant. HTTP, the CLI and any future console render these
//! answers; none of them computes one. The types derive `Serialize` (the JSON is the
//! API's contract, also what `entitled access --json` prints) and utoipa's `ToSchema`
//! (the OpenAPI document is generated from these very types and their doc comments).
//! "No" is the common answer, not an error: an unknown profile or user is
//! `premium: false` with no levels.

pub mod body;
pub mod change;
pub mod explain;

use crate::index::{Index, LevelAccess};
use crate::timestamp::Timestamp;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// One access level. Datetimes are RFC 3339 UTC with six fraction digits.
#[derive(Debug, Serialize, ToSchema)]
pub struct LevelView {
    /// Grants access at `checked_at`: the event said active, and the clock has not
    /// ended it.
    pub active: bool,
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Option<String>)]
    pub starts_at: Option<Timestamp>,
    pub will_renew: bool,
    pub is_lifetime: bool,
    pub in_grace_period: bool,
    pub is_refund: bool,
    #[schema(value_type = Option<String>)]
    pub store: Option<Arc<str>>,
    #[schema(value_type = Option<String>)]
    pub vendor_product_id: Option<Arc<str>>,
    #[schema(value_type = Option<String>)]
    pub environment: Option<Arc<str>>,
    /// `event_datetime` of the newest event folded into the level.
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
    /// The profile whose purchase this level's state comes from, when the profile
    /// shares it (Adapty's "Sharing paid access between user accounts"); null when the
    /// state is the profile's own.
    #[schema(value_type = Option<String>)]
    pub shared_from: Option<Arc<str>>,
    /// On the users route: the profile this level comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub profile_id: Option<Arc<str>>,
    #[serde(skip)]
    reach: (bool, Option<Timestamp>),
}

impl LevelView {
    pub fn new(level: &LevelAccess, at: Timestamp, profile_id: Option<Arc<str>>) -> Self {
        let w = level.window();
        LevelView {
            active: w.grants_at(at),
            expires_at: w.expires_at,
            starts_at: w.starts_at,
            will_renew: level.will_renew,
            is_lifetime: w.is_lifetime,
            in_grace_period: level.in_grace_period,
            is_refund: level.is_refund,
            store: level.labels.store.clone(),
            vendor_product_id: level.labels.vendor_product_id.clone(),
            environment: level.labels.environment.clone(),
            updated_at: level.updated_at,
            shared_from: level.labels.shared_from.clone(),
            profile_id,
            reach: (w.is_lifetime || w.expires_at.is_none(), w.expires_at),
        }
    }
}

/// The next instant at which a level's answer changes with no new event: its expiry
/// while it grants, its start while it waits for one.
pub fn next_change(level: &LevelAccess, at: Timestamp) -> Option<Timestamp> {
    let w = level.window();
    if w.grants_at(at) {
        w.expires_at.filter(|_| !w.is_lifetime)
    } else if w.is_active {
        w.starts_at.filter(|start| *start > at)
    } else {
        None
    }
}

/// A profile's access. An unknown profile is `premium: false` with no levels.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileAnswer {
    pub profile_id: String,
    #[schema(value_type = Option<String>)]
    pub customer_user_id: Option<Arc<str>>,
    /// Any listed level grants access at `checked_at`.
    pub premium: bool,
    #[schema(value_type = BTreeMap<String, LevelView>)]
    pub access_levels: BTreeMap<Arc<str>, LevelView>,
    /// The next instant this answer can change with no new event (an expiry, a grace
    /// end, a `starts_at`); null when nothing is scheduled.
    #[schema(value_type = Option<String>)]
    pub valid_until: Option<Timestamp>,
    // Must stay the last field: the ETag is a hash of the answer before it.
    /// The instant the answer is for: now, or `at`.
    #[schema(value_type = String)]
    pub checked_at: Timestamp,
}

/// A user's access over every profile that carries the `customer_user_id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserAnswer {
    pub customer_user_id: String,
    #[schema(value_type = Vec<String>)]
    pub profile_ids: Vec<Arc<str>>,
    pub premium: bool,
    #[schema(value_type = BTreeMap<String, LevelView>)]
    pub access_levels: BTreeMap<Arc<str>, LevelView>,
    #[schema(value_type = Option<String>)]
    pub valid_until: Option<Timestamp>,
    // Must stay the last field: the ETag is a hash of the answer before it.
    /// The instant the answer is for: now, or `at`.
    #[schema(value_type = String)]
    pub checked_at: Timestamp,
}

pub fn wanted(level: &LevelAccess, access_level: Option<&str>) -> bool {
    access_level.is_none_or(|wanted| **level.access_level_id() == *wanted)
}

/// The answer for one profile from an index, evaluated at `at`.
pub fn profile_answer(
    index: &Index,
    profile_id: &str,
    access_level: Option<&str>,
    at: Timestamp,
) -> ProfileAnswer {
    let mut valid_until: Option<Timestamp> = None;
    let (customer_user_id, access_levels) = index.with_profile(profile_id, |known| {
        let Some(known) = known else {
            return (None, BTreeMap::new());
        };
        let levels = known
            .levels
            .iter()
            .filter(|level| wanted(level, access_level))
            .map(|level| {
                valid_until = earliest(valid_until, next_change(level, at));
                (
                    level.access_level_id().clone(),
                    LevelView::new(level, at, None),
                )
            })
            .collect();
        (known.customer_user_id.clone(), levels)
    });
    ProfileAnswer {
        profile_id: profile_id.to_owned(),
        customer_user_id,
        premium: access_levels.values().any(|l| l.active),
        access_levels,
        valid_until,
        checked_at: at,
    }
}

/// The answer for a user over `profile_ids` from an index, evaluated at `at`.
pub fn user_answer(
    index: &Index,
    customer_user_id: &str,
    profile_ids: Vec<Arc<str>>,
    access_level: Option<&str>,
    at: Timestamp,
) -> UserAnswer {
    let mut access_levels: BTreeMap<Arc<str>, LevelView> = BTreeMap::new();
    let mut valid_until: Option<Timestamp> = None;
    for profile_id in &profile_ids {
        index.with_profile(profile_id, |known| {
            for level in known.iter().flat_map(|p| &p.levels) {
                if !wanted(level, access_level) {
                    continue;
                }
                valid_until = earliest(valid_until, next_change(level, at));
                let candidate = LevelView::new(level, at, Some(profile_id.clone()));
                match access_levels.get(level.access_level_id()) {
                    Some(best) if better(best, &candidate) != Ordering::Less => {}
                    _ => {
                        access_levels.insert(level.access_level_id().clone(), candidate);
                    }
                }
            }
        });
    }
    UserAnswer {
        customer_user_id: customer_user_id.to_owned(),
        profile_ids,
        premium: access_levels.values().any(|l| l.active),
        access_levels,
        valid_until,
        checked_at: at,
    }
}

pub fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Across a user's profiles, the level to show: an active one over an inactive one;
/// among those, lifetime or no end, then the later `expires_at`, then the newer event.
fn better(a: &LevelView, b: &LevelView) -> Ordering {
    (a.active, a.reach, &a.updated_at).cmp(&(b.active, b.reach, &b.updated_at))
}
