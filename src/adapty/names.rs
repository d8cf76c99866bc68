//! Event names as Adapty sends them: canonical, legacy, or renamed by the user.

use crate::projection::EventType;
use std::borrow::Cow;
use std::collections::HashMap;

/// Names older Adapty documentation used for today's canonical types (it spells the
/// cancelled one both ways).
const LEGACY: [(&str, EventType); 6] = [
    (
        "subscription_initial_purchase",
        EventType::SubscriptionStarted,
    ),
    ("subscription_cancelled", EventType::SubscriptionExpired),
    ("subscription_canceled", EventType::SubscriptionExpired),
    ("trial_cancelled", EventType::TrialExpired),
    ("auto_renew_off", EventType::TrialRenewalCancelled),
    (
        "auto_renew_off_subscription",
        EventType::SubscriptionRenewalCancelled,
    ),
];

/// Resolves a received `event_type` to a canonical type. Users may rename any event
/// in Adapty's dashboard; `--event-names custom=canonical,...` maps those back. Every
/// name matches without regard to ASCII case or surrounding spaces, the custom ones as
/// the built-in ones: Adapty sends the dashboard's names in lowercase.
#[derive(Clone, Debug, Default)]
pub struct EventNames {
    /// Keyed by the trimmed, lowercased name.
    custom: HashMap<String, EventType>,
}

impl EventNames {
    /// Builds the map; a target that is not a canonical or legacy name is an error,
    /// since a typo there would silently turn real purchases into no-ops.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut custom = HashMap::new();
        for (name, target) in pairs {
            let Some(canonical) = builtin(target) else {
                return Err(format!(
                    "'{target}' (the target of '{name}') is not an Adapty event type; \
                     expected one of: {}",
                    EventType::ALL.map(EventType::name).join(", ")
                ));
            };
            if custom
                .insert(normalized(name).into_owned(), canonical)
                .is_some()
            {
                return Err(format!("'{name}' is mapped twice"));
            }
        }
        Ok(EventNames { custom })
    }

    /// `None`: a name nothing knows; such events are stored and change no access.
    pub fn resolve(&self, received: &str) -> Option<EventType> {
        self.custom
            .get(&*normalized(received))
            .copied()
            .or_else(|| builtin(received))
    }
}

/// The name trimmed and lowercased; no copy for one that already is (Adapty sends
/// lowercase), since every event's name passes here.
fn normalized(name: &str) -> Cow<'_, str> {
    let name = name.trim();
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

fn builtin(name: &str) -> Option<EventType> {
    let name = name.trim();
    EventType::ALL
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
        .or_else(|| {
            LEGACY
                .iter()
                .find(|(legacy, _)| legacy.eq_ignore_ascii_case(name))
                .map(|(_, t)| *t)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_canonical_legacy_and_custom_names() {
        let names = EventNames::new([("my_renewal", "subscription_renewed")]).unwrap();
        assert_eq!(
            names.resolve("trial_converted"),
            Some(EventType::TrialConverted)
        );
        assert_eq!(
            names.resolve("TRIAL_CONVERTED"),
            Some(EventType::TrialConverted)
        );
        assert_eq!(
            names.resolve("subscription_initial_purchase"),
            Some(EventType::SubscriptionStarted)
        );
        assert_eq!(
            names.resolve("subscription_canceled"),
            Some(EventType::SubscriptionExpired)
        );
        assert_eq!(
            names.resolve("my_renewal"),
            Some(EventType::SubscriptionRenewed)
        );
        assert_eq!(names.resolve("something_new"), None);
    }

    /// A name given as the dashboard shows it matches what Adapty sends, lowercased.
    #[test]
    fn custom_names_match_regardless_of_case_and_spaces() {
        let names = EventNames::new([("PremiumBought", "subscription_started")]).unwrap();
        for received in ["premiumbought", "PremiumBought", " PREMIUMBOUGHT "] {
            assert_eq!(
                names.resolve(received),
                Some(EventType::SubscriptionStarted),
                "{received:?}"
            );
        }
        let err = EventNames::new([
            ("renamed", "subscription_started"),
            ("Renamed", "subscription_renewed"),
        ])
        .unwrap_err();
        assert!(err.contains("mapped twice"), "{err}");
    }

    #[test]
    fn refuses_a_target_that_is_no_event_type() {
        let err = EventNames::new([("x", "subscription_renewd")]).unwrap_err();
        assert!(err.contains("subscription_renewd"), "{err}");
    }
}
