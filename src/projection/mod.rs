//! The projection: events in, access-level state out. Pure: no I/O, no clock.
//!
//! The state of one `(profile, access level)` is the fold of that level's events in
//! [`order_key`] order, whatever order they arrived in. The store folds a new event
//! onto the saved state when it sorts after every event already folded in, and
//! refolds the level from the event log otherwise; both give [`project`]'s answer.
//! [docs/access-rules.md](../../docs/access-rules.md) ("How access is decided") tells
//! the same rules in prose.

mod event;
pub mod sharing;
#[cfg(test)]
mod tests;

/// For the property tests here and in the store.
#[cfg(test)]
pub(crate) mod testing {
    use super::Event;

    /// `events` with the picked ones sent again, in an order shuffled by `seed`
    /// (Fisher-Yates over an LCG): an arrival order Adapty could produce.
    pub fn arrivals(
        events: &[Event],
        duplicates: &[proptest::sample::Index],
        seed: u64,
    ) -> Vec<Event> {
        let mut arrivals = events.to_vec();
        for d in duplicates {
            arrivals.push(d.get(events).clone());
        }
        let mut state = seed;
        for i in (1..arrivals.len()).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            arrivals.swap(i, (state >> 33) as usize % (i + 1));
        }
        arrivals
    }
}

pub use event::{ApiLevel, Event, EventType, SharedProfile, Snapshot};
pub use sharing::{membership, GroupState, Groups, LinksByLevel, Membership, MAX_SHARING_GROUP};

use crate::timestamp::Timestamp;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The level a lifecycle event grants when `--product-levels` does not list its
/// product (Adapty's default level).
pub const DEFAULT_ACCESS_LEVEL: &str = "premium";

/// What `--sandbox` says about events from Adapty's sandbox environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SandboxPolicy {
    /// Sandbox events grant access like production ones.
    #[default]
    Grant,
    /// Sandbox events are stored in the log but change no access.
    Ignore,
}

/// The configuration the fold depends on. Changing it changes what the same events
/// mean, which is why `events` keeps every raw body.
#[derive(Clone, Debug)]
pub struct Rules {
    product_levels: HashMap<Arc<str>, Arc<str>>,
    default_level: Arc<str>,
    sandbox: SandboxPolicy,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::new(HashMap::new(), SandboxPolicy::Grant)
    }
}

impl Rules {
    pub fn new(product_levels: HashMap<Arc<str>, Arc<str>>, sandbox: SandboxPolicy) -> Self {
        Rules {
            product_levels,
            default_level: Arc::from(DEFAULT_ACCESS_LEVEL),
            sandbox,
        }
    }

    /// The access level this event is folded into, or `None` when it touches none:
    /// unknown and annotation-only types, ignored sandbox events, a snapshot missing
    /// its level, and one-time purchases of products `--product-levels` does not list
    /// (a consumable must never make anyone premium).
    pub fn level_of(&self, event: &Event) -> Option<Arc<str>> {
        if self.sandbox == SandboxPolicy::Ignore && event.is_sandbox() || event.api_levels.is_some()
        {
            return None;
        }
        let listed = || {
            let product = event.vendor_product_id.as_ref()?;
            self.product_levels.get(product).cloned()
        };
        match effect(event)? {
            Effect::Snapshot(snapshot) => Some(snapshot.access_level_id.clone()),
            Effect::Lifetime | Effect::RevokeLifetime => listed(),
            _ => Some(listed().unwrap_or_else(|| self.default_level.clone())),
        }
    }
}

impl Rules {
    /// The event as the fold of `level` sees it, or `None` when it does not touch that
    /// level. A webhook touches the one level [`Rules::level_of`] gives; an API
    /// snapshot touches every level of its profile ([`Event::for_level`]), its sandbox
    /// entries left out under `--sandbox ignore`.
    pub fn view<'a>(&self, event: &'a Event, level: &str) -> Option<Cow<'a, Event>> {
        if event.api_levels.is_none() {
            return (self.level_of(event).as_deref() == Some(level))
                .then_some(Cow::Borrowed(event));
        }
        let mut view = event.for_level(level).into_owned();
        if self.sandbox == SandboxPolicy::Ignore && view.is_sandbox() {
            view.snapshot = None;
        }
        Some(Cow::Owned(view))
    }

    /// The levels an API snapshot lists (its sandbox ones left out under `--sandbox
    /// ignore`); none for any other event.
    pub fn listed_levels(&self, event: &Event) -> Vec<Arc<str>> {
        let Some(levels) = &event.api_levels else {
            return Vec::new();
        };
        levels
            .iter()
            .filter(|l| {
                !(self.sandbox == SandboxPolicy::Ignore
                    && l.environment
                        .as_deref()
                        .is_some_and(|e| e.eq_ignore_ascii_case("sandbox")))
            })
            .map(|l| l.snapshot.access_level_id.clone())
            .collect()
    }
}

/// The instants that decide whether a level grants access at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessWindow {
    /// What the newest event said; the clock can only end it.
    pub is_active: bool,
    /// No expiry. A refunded lifetime purchase is not active, so this alone is no grant.
    pub is_lifetime: bool,
    /// Access ends at this instant; `None`: no end.
    pub expires_at: Option<Timestamp>,
    /// Access begins at this instant; `None`: already began.
    pub starts_at: Option<Timestamp>,
}

impl AccessWindow {
    /// Whether the level grants access at `t`: the one rule the read API and the
    /// `active_entitlements` view both apply.
    pub fn grants_at(&self, t: Timestamp) -> bool {
        self.is_active
            && (self.is_lifetime || self.expires_at.is_none_or(|end| t < end))
            && self.starts_at.is_none_or(|start| start <= t)
    }

    /// Whether this window still grants at `t` and lasts at least until `end`.
    fn outlasts(&self, t: Timestamp, end: Timestamp) -> bool {
        self.grants_at(t) && (self.is_lifetime || self.expires_at.is_none_or(|x| x > end))
    }
}

/// The state of one `(profile, access level)`: a row of the `entitlements` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entitlement {
    pub window: AccessWindow,
    pub will_renew: bool,
    pub in_grace_period: bool,
    pub is_refund: bool,
    pub store: Option<Arc<str>>,
    pub vendor_product_id: Option<Arc<str>>,
    pub environment: Option<Arc<str>>,
    /// The newest event folded in (by [`order_key`]), whether or not it changed anything.
    pub last_event_id: Arc<str>,
    pub last_event_type: EventType,
    pub last_event_at: Timestamp,
    /// The profile whose events this state comes from, when not the row's own: a
    /// member of a sharing group (see [`sharing`]). `None`: its own.
    pub shared_from: Option<Arc<str>>,
    /// The sharing group the row's profile is in for this level: the group's smallest
    /// profile id. `None`: alone.
    pub sharing_group: Option<Arc<str>>,
}

/// The position of an event in the fold: `event_datetime`, then a rank that puts, at
/// one instant, lifecycle events before snapshots and revocations before grants (so
/// an upgrade's "old off, new on" ends on), then `profile_event_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey<'a> {
    pub at: Timestamp,
    pub rank: u8,
    pub id: &'a str,
}

/// The [`OrderKey`] of an event; `None` when the event is never folded.
pub fn order_key(event: &Event) -> Option<OrderKey<'_>> {
    let effect = effect(event)?;
    Some(OrderKey {
        at: event.event_datetime,
        rank: rank(event.event_type?, effect.is_active_snapshot()),
        id: &event.id,
    })
}

impl Entitlement {
    /// The [`OrderKey`] of the newest event folded in: a new event that sorts after it
    /// can be folded onto this state directly.
    pub fn last_key(&self) -> OrderKey<'_> {
        OrderKey {
            at: self.last_event_at,
            // A snapshot sets `is_active`, so it is the snapshot's own when it was last.
            rank: rank(self.last_event_type, self.window.is_active),
            id: &self.last_event_id,
        }
    }
}

/// What an event does to the level it touches.
#[derive(Clone, Copy, Debug)]
enum Effect<'a> {
    /// Grant or extend until `subscription_expires_at`.
    Grant {
        in_grace_period: bool,
    },
    /// A one-time purchase of a listed product: access with no end.
    Lifetime,
    /// Auto-renew flipped; access unchanged.
    WillRenew(bool),
    /// The payment failed: access ends at `subscription_expires_at` unless a grace
    /// period or a renewal follows.
    BillingIssue,
    /// Play pause: access lasts until the paid period ends, then stops renewing.
    Pause,
    /// Access ends now.
    Revoke {
        refund: bool,
    },
    /// A refund that only accompanies an immediate upgrade: nothing changes.
    UpgradeRefund,
    RevokeLifetime,
    /// `access_level_updated`, or an API snapshot that lists the level: Adapty's own
    /// state of the level.
    Snapshot(&'a Snapshot),
    /// An API snapshot that no longer lists the level: access ended by then.
    Absent,
}

impl Effect<'_> {
    fn is_active_snapshot(self) -> bool {
        matches!(self, Effect::Snapshot(s) if s.is_active)
    }
}

/// The tie-break at one instant: lifecycle events before snapshots, revocations before
/// neutral events before grants, inactive snapshots before active ones.
fn rank(event_type: EventType, snapshot_is_active: bool) -> u8 {
    use EventType as T;
    match event_type {
        T::SubscriptionExpired
        | T::TrialExpired
        | T::SubscriptionRefunded
        | T::NonSubscriptionPurchaseRefunded => 0,
        T::TrialRenewalCancelled
        | T::TrialRenewalReactivated
        | T::SubscriptionRenewalCancelled
        | T::SubscriptionRenewalReactivated
        | T::BillingIssueDetected
        | T::SubscriptionPaused
        | T::TrialActive
        | T::SubscriptionActive => 1,
        T::SubscriptionStarted
        | T::SubscriptionRenewed
        | T::TrialStarted
        | T::TrialConverted
        | T::SubscriptionDeferred
        | T::EnteredGracePeriod
        | T::NonSubscriptionPurchase => 2,
        T::AccessLevelUpdated | T::AdaptyApiSnapshot if snapshot_is_active => 4,
        T::AccessLevelUpdated | T::AdaptyApiSnapshot => 3,
    }
}

fn effect(event: &Event) -> Option<Effect<'_>> {
    use EventType as T;
    Some(match event.event_type? {
        T::SubscriptionStarted
        | T::SubscriptionRenewed
        | T::TrialStarted
        | T::TrialConverted
        | T::SubscriptionDeferred => Effect::Grant {
            in_grace_period: false,
        },
        T::EnteredGracePeriod => Effect::Grant {
            in_grace_period: true,
        },
        T::NonSubscriptionPurchase => Effect::Lifetime,
        T::TrialRenewalCancelled | T::SubscriptionRenewalCancelled => Effect::WillRenew(false),
        T::TrialRenewalReactivated | T::SubscriptionRenewalReactivated => Effect::WillRenew(true),
        T::BillingIssueDetected => Effect::BillingIssue,
        T::SubscriptionPaused => Effect::Pause,
        T::SubscriptionExpired | T::TrialExpired => Effect::Revoke { refund: false },
        T::SubscriptionRefunded if event.cancellation_reason.as_deref() == Some("upgraded") => {
            Effect::UpgradeRefund
        }
        T::SubscriptionRefunded => Effect::Revoke { refund: true },
        T::NonSubscriptionPurchaseRefunded => Effect::RevokeLifetime,
        T::AccessLevelUpdated => Effect::Snapshot(event.snapshot.as_ref()?),
        T::AdaptyApiSnapshot => match &event.snapshot {
            Some(snapshot) => Effect::Snapshot(snapshot),
            None => Effect::Absent,
        },
        T::TrialActive | T::SubscriptionActive => return None,
    })
}

/// Folds one event into the state of the level [`Rules::level_of`] assigned it. The
/// event must sort after every event already in `state` (see [`Entitlement::last_key`]).
/// Returns `None` only when there was no state and the event creates none (a
/// cancellation of something never granted, say).
pub fn fold(state: Option<Entitlement>, event: &Event) -> Option<Entitlement> {
    let (Some(event_type), Some(effect)) = (event.event_type, effect(event)) else {
        return state;
    };
    let mut next = match (state, effect) {
        (_, Effect::Snapshot(s)) => from_snapshot(s, event),
        (None, Effect::Absent) => return None,
        (Some(mut held), Effect::Absent) => {
            held.window.is_active = false;
            held.window.expires_at = held
                .window
                .expires_at
                .map(|end| end.min(event.event_datetime));
            held.will_renew = false;
            held.in_grace_period = false;
            held
        }
        (Some(held), Effect::Grant { .. })
            if !same_product(&held, event)
                && event
                    .subscription_expires_at
                    .is_some_and(|end| held.window.outlasts(event.event_datetime, end)) =>
        {
            // Another product holds the level for longer (a yearly plan bought over a
            // monthly one): this grant does not shorten it.
            held
        }
        (state, Effect::Grant { in_grace_period }) => match event.subscription_expires_at {
            Some(end) => inherit(granted(event, Some(end), in_grace_period, false), state),
            // A grant with no end is not a grant we can bound: leave the level as it was.
            None => state?,
        },
        (state, Effect::Lifetime) => inherit(granted(event, None, false, true), state),
        (Some(mut held), effect) if same_product(&held, event) => {
            match effect {
                Effect::WillRenew(will_renew) => held.will_renew = will_renew,
                Effect::BillingIssue => {
                    held.window.expires_at =
                        event.subscription_expires_at.or(held.window.expires_at);
                }
                Effect::Pause => {
                    held.will_renew = false;
                    held.window.expires_at =
                        event.subscription_expires_at.or(held.window.expires_at);
                }
                Effect::Revoke { refund } if !held.window.is_lifetime => {
                    held.window.is_active = false;
                    held.window.expires_at =
                        event.subscription_expires_at.or(held.window.expires_at);
                    held.will_renew = false;
                    held.in_grace_period = false;
                    held.is_refund = refund;
                }
                Effect::RevokeLifetime if held.window.is_lifetime => {
                    held.window.is_active = false;
                    held.window.is_lifetime = false;
                    held.is_refund = true;
                }
                _ => {}
            }
            held
        }
        // Another product's renewal flip, expiry or refund: the level is not its to end.
        (Some(held), _) => held,
        (None, _) => return None,
    };
    next.last_event_id = event.id.clone();
    next.last_event_type = event_type;
    next.last_event_at = event.event_datetime;
    Some(next)
}

/// A renewal that does not repeat the store or environment keeps the known ones.
fn inherit(mut next: Entitlement, previous: Option<Entitlement>) -> Entitlement {
    if let Some(previous) = previous {
        if next.vendor_product_id.is_none() || next.vendor_product_id == previous.vendor_product_id
        {
            next.vendor_product_id = next.vendor_product_id.or(previous.vendor_product_id);
            next.store = next.store.or(previous.store);
            next.environment = next.environment.or(previous.environment);
        }
    }
    next
}

fn same_product(held: &Entitlement, event: &Event) -> bool {
    match (&held.vendor_product_id, &event.vendor_product_id) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

fn granted(
    event: &Event,
    expires_at: Option<Timestamp>,
    in_grace_period: bool,
    is_lifetime: bool,
) -> Entitlement {
    Entitlement {
        window: AccessWindow {
            is_active: true,
            is_lifetime,
            expires_at,
            starts_at: None,
        },
        will_renew: !is_lifetime,
        in_grace_period,
        is_refund: false,
        store: event.store.clone(),
        vendor_product_id: event.vendor_product_id.clone(),
        environment: event.environment.clone(),
        last_event_id: event.id.clone(),
        last_event_type: EventType::SubscriptionStarted,
        last_event_at: event.event_datetime,
        shared_from: None,
        sharing_group: None,
    }
}

fn from_snapshot(s: &Snapshot, event: &Event) -> Entitlement {
    Entitlement {
        window: AccessWindow {
            is_active: s.is_active,
            is_lifetime: s.is_lifetime,
            expires_at: s.expires_at,
            starts_at: s.starts_at,
        },
        will_renew: s.will_renew,
        in_grace_period: s.is_in_grace_period,
        is_refund: s.is_refund,
        ..granted(event, None, false, false)
    }
}

/// Folds a newly arrived event into its level's saved state: directly when it sorts
/// after every event folded in so far (the common case), otherwise by refolding
/// `log()`, every event of the level with this one included. Either way the answer is
/// [`fold_all`] of the level's events, whatever order they arrived in.
pub fn fold_arrival<E>(
    saved: Option<Entitlement>,
    event: &Event,
    log: impl FnOnce() -> Result<Vec<Event>, E>,
) -> Result<Option<Entitlement>, E> {
    match (saved, order_key(event)) {
        (Some(saved), Some(key)) if key > saved.last_key() => Ok(fold(Some(saved), event)),
        _ => Ok(fold_all(&log()?)),
    }
}

/// Folds the events of one `(profile, level)` in [`order_key`] order: what the store
/// does when an event arrives out of order, and what [`project`] does for each level.
pub fn fold_all<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<Entitlement> {
    in_order(events).into_iter().fold(None, fold)
}

/// The events that fold, in [`order_key`] order, each id once.
pub fn in_order<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<&'a Event> {
    let mut ordered: Vec<(OrderKey<'a>, &'a Event)> = events
        .into_iter()
        .filter_map(|e| Some((order_key(e)?, e)))
        .collect();
    ordered.sort_by_key(|(key, _)| *key);
    ordered.dedup_by(|a, b| a.0.id == b.0.id);
    ordered.into_iter().map(|(_, event)| event).collect()
}

/// The fold of one level, step by step: each event in [`order_key`] order with the
/// state after it. What `explain` and `entitled events` show.
pub fn fold_steps<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> Vec<(&'a Event, Option<Entitlement>)> {
    let mut state = None;
    in_order(events)
        .into_iter()
        .map(|event| {
            state = fold(state.take(), event);
            (event, state.clone())
        })
        .collect()
}

/// What changed between two states of a level, for people: `active: false → true`,
/// `expires_at: … → …`. Empty when the event changed nothing.
pub fn describe_change(before: Option<&Entitlement>, after: Option<&Entitlement>) -> Vec<String> {
    fn time(t: Option<Timestamp>) -> String {
        t.map_or_else(|| "none".to_owned(), |t| t.to_rfc3339())
    }
    fn text(s: &Option<Arc<str>>) -> String {
        s.as_deref().unwrap_or("none").to_owned()
    }
    let (Some(b), Some(a)) = (before, after) else {
        return match after {
            Some(a) if a.window.is_active => vec![format!(
                "created: active until {}",
                if a.window.is_lifetime {
                    "forever".to_owned()
                } else {
                    time(a.window.expires_at)
                }
            )],
            Some(_) => vec!["created: inactive".to_owned()],
            None => Vec::new(),
        };
    };
    let mut changes = Vec::new();
    let mut flag = |name: &str, old: bool, new: bool| {
        if old != new {
            changes.push(format!("{name}: {old} → {new}"));
        }
    };
    flag("active", b.window.is_active, a.window.is_active);
    flag("is_lifetime", b.window.is_lifetime, a.window.is_lifetime);
    flag("will_renew", b.will_renew, a.will_renew);
    flag("in_grace_period", b.in_grace_period, a.in_grace_period);
    flag("is_refund", b.is_refund, a.is_refund);
    if b.window.expires_at != a.window.expires_at {
        changes.push(format!(
            "expires_at: {} → {}",
            time(b.window.expires_at),
            time(a.window.expires_at)
        ));
    }
    if b.window.starts_at != a.window.starts_at {
        changes.push(format!(
            "starts_at: {} → {}",
            time(b.window.starts_at),
            time(a.window.starts_at)
        ));
    }
    if b.vendor_product_id != a.vendor_product_id {
        changes.push(format!(
            "vendor_product_id: {} → {}",
            text(&b.vendor_product_id),
            text(&a.vendor_product_id)
        ));
    }
    changes
}

/// The whole projection of a set of events: what the `entitlements` table holds for
/// them, by `(profile_id, access_level_id)`, sharing groups included ([`sharing`]).
/// Exact duplicates count once; arrival order does not matter.
pub fn project<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    rules: &Rules,
) -> BTreeMap<(Arc<str>, Arc<str>), Entitlement> {
    project_with_links(events, rules, None)
}

/// [`project`], making only the sharing links given by level (both ways) when
/// `links` is given: the links the store holds, whose bound it checked in arrival
/// order. Without, links are made in event order up to [`MAX_SHARING_GROUP`].
pub fn project_with_links<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    rules: &Rules,
    links: Option<&LinksByLevel>,
) -> BTreeMap<(Arc<str>, Arc<str>), Entitlement> {
    let events: Vec<&Event> = events.into_iter().collect();
    // Every level any event touches; an API snapshot touches each of them.
    let mut levels: BTreeSet<Arc<str>> = BTreeSet::new();
    for event in &events {
        levels.extend(rules.level_of(event));
        levels.extend(rules.listed_levels(event));
    }
    let mut projected = BTreeMap::new();
    for level in levels {
        let views: Vec<Cow<'_, Event>> = events
            .iter()
            .filter_map(|e| rules.view(e, &level))
            .collect();
        let groups = match links {
            Some(links) => Groups::with_links(links.get(&level).cloned().unwrap_or_default()),
            None => Groups::default(),
        }
        .fold_all(views.iter().map(|v| &**v));
        for (profile, row) in groups.rows() {
            if let Some(row) = row {
                projected.insert((profile.clone(), level.clone()), row);
            }
        }
    }
    projected
}
