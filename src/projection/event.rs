//! Events as the projection sees them: already parsed, already named canonically.

use crate::timestamp::Timestamp;
use std::sync::Arc;

/// Adapty's canonical event types. Legacy and user-renamed names are mapped to these
/// by the wire format (`crate::adapty::names`); anything else is `None` upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    SubscriptionStarted,
    SubscriptionRenewed,
    SubscriptionExpired,
    TrialStarted,
    TrialConverted,
    TrialExpired,
    NonSubscriptionPurchase,
    BillingIssueDetected,
    EnteredGracePeriod,
    TrialRenewalCancelled,
    TrialRenewalReactivated,
    SubscriptionRenewalCancelled,
    SubscriptionRenewalReactivated,
    SubscriptionRefunded,
    NonSubscriptionPurchaseRefunded,
    SubscriptionPaused,
    SubscriptionDeferred,
    AccessLevelUpdated,
    TrialActive,
    SubscriptionActive,
    /// Not a webhook: a profile as Adapty's server-side API answered it, fetched by
    /// entitled (`entitled sync`, a refresh, a check before a lapse). A snapshot of
    /// every level of the profile at Adapty's `timestamp` (see [`Event::for_level`]).
    AdaptyApiSnapshot,
}

impl EventType {
    /// Adapty's webhook event types (not [`EventType::AdaptyApiSnapshot`], which no
    /// webhook may claim to be).
    pub const ALL: [EventType; 20] = [
        EventType::SubscriptionStarted,
        EventType::SubscriptionRenewed,
        EventType::SubscriptionExpired,
        EventType::TrialStarted,
        EventType::TrialConverted,
        EventType::TrialExpired,
        EventType::NonSubscriptionPurchase,
        EventType::BillingIssueDetected,
        EventType::EnteredGracePeriod,
        EventType::TrialRenewalCancelled,
        EventType::TrialRenewalReactivated,
        EventType::SubscriptionRenewalCancelled,
        EventType::SubscriptionRenewalReactivated,
        EventType::SubscriptionRefunded,
        EventType::NonSubscriptionPurchaseRefunded,
        EventType::SubscriptionPaused,
        EventType::SubscriptionDeferred,
        EventType::AccessLevelUpdated,
        EventType::TrialActive,
        EventType::SubscriptionActive,
    ];

    /// The name Adapty gives this type, as stored in `events.canonical_type`.
    pub const fn name(self) -> &'static str {
        match self {
            EventType::SubscriptionStarted => "subscription_started",
            EventType::SubscriptionRenewed => "subscription_renewed",
            EventType::SubscriptionExpired => "subscription_expired",
            EventType::TrialStarted => "trial_started",
            EventType::TrialConverted => "trial_converted",
            EventType::TrialExpired => "trial_expired",
            EventType::NonSubscriptionPurchase => "non_subscription_purchase",
            EventType::BillingIssueDetected => "billing_issue_detected",
            EventType::EnteredGracePeriod => "entered_grace_period",
            EventType::TrialRenewalCancelled => "trial_renewal_cancelled",
            EventType::TrialRenewalReactivated => "trial_renewal_reactivated",
            EventType::SubscriptionRenewalCancelled => "subscription_renewal_cancelled",
            EventType::SubscriptionRenewalReactivated => "subscription_renewal_reactivated",
            EventType::SubscriptionRefunded => "subscription_refunded",
            EventType::NonSubscriptionPurchaseRefunded => "non_subscription_purchase_refunded",
            EventType::SubscriptionPaused => "subscription_paused",
            EventType::SubscriptionDeferred => "subscription_deferred",
            EventType::AccessLevelUpdated => "access_level_updated",
            EventType::TrialActive => "trial_active",
            EventType::SubscriptionActive => "subscription_active",
            EventType::AdaptyApiSnapshot => "adapty_api_snapshot",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        EventType::ALL
            .into_iter()
            .chain([EventType::AdaptyApiSnapshot])
            .find(|t| t.name() == name)
    }
}

/// The `access_level_updated` payload: Adapty's own view of one level after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub access_level_id: Arc<str>,
    pub is_active: bool,
    pub expires_at: Option<Timestamp>,
    pub starts_at: Option<Timestamp>,
    pub will_renew: bool,
    pub is_lifetime: bool,
    pub is_in_grace_period: bool,
    pub is_refund: bool,
}

/// One webhook event, reduced to what decides access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `profile_event_id`: unique per event, the last tie-break of the order.
    pub id: Arc<str>,
    pub profile_id: Arc<str>,
    pub customer_user_id: Option<Arc<str>>,
    /// `None` for a name no map knows: stored, never folded.
    pub event_type: Option<EventType>,
    pub event_datetime: Timestamp,
    pub environment: Option<Arc<str>>,
    pub store: Option<Arc<str>>,
    pub vendor_product_id: Option<Arc<str>>,
    pub subscription_expires_at: Option<Timestamp>,
    pub cancellation_reason: Option<Arc<str>>,
    /// Present on `access_level_updated` when its level and `is_active` were given.
    pub snapshot: Option<Snapshot>,
    /// `profiles_sharing_access_level`: the other profiles that share the level with
    /// this one (the event's own profile left out; empty when null or absent).
    pub shared_with: Vec<SharedProfile>,
    /// On an [`EventType::AdaptyApiSnapshot`]: every level Adapty listed.
    pub api_levels: Option<Arc<[ApiLevel]>>,
}

/// One level of a profile as Adapty's server-side API lists it: held from `starts_at`
/// until `expires_at` (`None`: no end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLevel {
    pub snapshot: Snapshot,
    pub store: Option<Arc<str>>,
    pub vendor_product_id: Option<Arc<str>>,
    pub environment: Option<Arc<str>>,
}

/// One entry of `profiles_sharing_access_level`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedProfile {
    pub profile_id: Arc<str>,
    pub customer_user_id: Option<Arc<str>>,
}

impl Event {
    /// The event as one level's fold sees it. An API snapshot becomes that level's
    /// snapshot: the listed entry, or none when Adapty no longer lists the level (the
    /// fold then ends it, if it was held). Any other event is itself.
    pub fn for_level(&self, level: &str) -> std::borrow::Cow<'_, Event> {
        use std::borrow::Cow;
        let Some(levels) = &self.api_levels else {
            return Cow::Borrowed(self);
        };
        let listed = levels
            .iter()
            .find(|l| &*l.snapshot.access_level_id == level);
        Cow::Owned(Event {
            snapshot: listed.map(|l| l.snapshot.clone()),
            store: listed.and_then(|l| l.store.clone()),
            vendor_product_id: listed.and_then(|l| l.vendor_product_id.clone()),
            environment: listed.and_then(|l| l.environment.clone()),
            api_levels: None,
            ..self.clone()
        })
    }

    pub fn is_sandbox(&self) -> bool {
        self.environment
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case("sandbox"))
    }
}
