//! Event names as Adapty sends them: canonical, legacy, or renamed by the user.

use crate::projection::EventType;
use std::collections::HashMap;

/// Names older Adapty documentation used for today's canonical types.
const LEGACY: [(&str, EventType); 5] = [
    (
        "subscription_initial_purchase",
        EventType::SubscriptionStarted,
    ),
    ("subscription_cancelled", EventType::SubscriptionExpired),
    ("trial_cancelled", EventType::TrialExpired),
    ("auto_renew_off", EventType::TrialRenewalCancelled),
    (
        "auto_renew_off_subscription",
        EventType::SubscriptionRenewalCancelled,
    ),
];

/// Resolves a received `event_type` to a canonical type. Users may rename any event
/// in Adapty's dashboard; `--event-names custom=canonical,...` maps those back.
#[derive(Clone, Debug, Default)]
pub struct EventNames {
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
            if custom.insert(name.to_owned(), canonical).is_some() {
                return Err(format!("'{name}' is mapped twice"));
            }
        }
        Ok(EventNames { custom })
    }

    /// `None`: a name nothing knows; such events are stored and change no access.
    pub fn resolve(&self, received: &str) -> Option<EventType> {
        self.custom
            .get(received)
            .copied()
            .or_else(|| builtin(received))
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
            names.resolve("my_renewal"),
            Some(EventType::SubscriptionRenewed)
        );
        assert_eq!(names.resolve("something_new"), None);
    }

    #[test]
    fn refuses_a_target_that_is_no_event_type() {
        let err = EventNames::new([("x", "subscription_renewd")]).unwrap_err();
        assert!(err.contains("subscription_renewd"), "{err}");
    }
}
