use super::*;
use proptest::prelude::*;

const DAY: i64 = 86_400_000_000;
const T0: i64 = 1_900_000_000_000_000; // 2030-03-17

fn at(days: i64) -> Timestamp {
    Timestamp::from_micros(T0 + days * DAY)
}

fn event(id: &str, event_type: EventType, day: i64) -> Event {
    Event {
        id: Arc::from(id),
        profile_id: Arc::from("p1"),
        customer_user_id: None,
        event_type: Some(event_type),
        event_datetime: at(day),
        environment: Some(Arc::from("Production")),
        store: Some(Arc::from("app_store")),
        vendor_product_id: Some(Arc::from("monthly")),
        subscription_expires_at: Some(at(day + 30)),
        cancellation_reason: None,
        snapshot: None,
        shared_with: Vec::new(),
        api_levels: None,
    }
}

fn product(mut e: Event, product: &str) -> Event {
    e.vendor_product_id = Some(Arc::from(product));
    e
}

fn expiring(mut e: Event, day: i64) -> Event {
    e.subscription_expires_at = Some(at(day));
    e
}

fn snapshot(id: &str, day: i64, is_active: bool, expires_day: i64) -> Event {
    let mut e = event(id, EventType::AccessLevelUpdated, day);
    e.snapshot = Some(Snapshot {
        access_level_id: Arc::from("premium"),
        is_active,
        expires_at: Some(at(expires_day)),
        starts_at: None,
        will_renew: is_active,
        is_lifetime: false,
        is_in_grace_period: false,
        is_refund: false,
    });
    e
}

/// The premium level after these events, in this order of arrival, folded as the
/// store folds them (directly when in order, refolding otherwise).
fn premium_after(events: &[Event]) -> Option<Entitlement> {
    let rules = Rules::default();
    let mut state = None;
    for (i, e) in events.iter().enumerate() {
        if rules.level_of(e).as_deref() != Some("premium") {
            continue;
        }
        let log = || Ok::<_, ()>(events[..=i].to_vec());
        state = fold_arrival(state, e, log).unwrap();
    }
    state
}

fn grants_on(events: &[Event], day: i64) -> bool {
    premium_after(events).is_some_and(|e| e.window.grants_at(at(day)))
}

#[test]
fn a_grant_lasts_until_its_expiry_and_no_longer() {
    let events = [event("a", EventType::SubscriptionStarted, 0)];
    assert!(grants_on(&events, 1));
    assert!(grants_on(&events, 29));
    assert!(
        !grants_on(&events, 30),
        "access ends at expires_at with no event"
    );
}

#[test]
fn every_grant_type_grants() {
    use EventType as T;
    for t in [
        T::SubscriptionStarted,
        T::SubscriptionRenewed,
        T::TrialStarted,
        T::TrialConverted,
        T::SubscriptionDeferred,
        T::EnteredGracePeriod,
    ] {
        let state = premium_after(&[event("a", t, 0)]).expect("a state");
        assert!(state.window.grants_at(at(1)), "{t:?}");
        assert_eq!(state.in_grace_period, t == T::EnteredGracePeriod, "{t:?}");
    }
}

#[test]
fn a_grant_with_no_expiry_is_not_taken_as_forever() {
    let mut e = event("a", EventType::SubscriptionStarted, 0);
    e.subscription_expires_at = None;
    assert_eq!(premium_after(&[e]), None);
}

#[test]
fn revocations_end_access_now() {
    use EventType as T;
    for t in [
        T::SubscriptionExpired,
        T::TrialExpired,
        T::SubscriptionRefunded,
    ] {
        let events = [
            event("a", T::SubscriptionStarted, 0),
            expiring(event("b", t, 5), 5),
        ];
        let state = premium_after(&events).unwrap();
        assert!(!state.window.grants_at(at(6)), "{t:?}");
        assert_eq!(state.is_refund, t == T::SubscriptionRefunded, "{t:?}");
    }
}

#[test]
fn an_upgrade_refund_does_not_revoke() {
    let mut refund = expiring(event("b", EventType::SubscriptionRefunded, 5), 5);
    refund.cancellation_reason = Some(Arc::from("upgraded"));
    let events = [event("a", EventType::SubscriptionStarted, 0), refund];
    assert!(grants_on(&events, 6));
}

#[test]
fn renewal_cancellation_keeps_access_until_expiry() {
    let events = [
        event("a", EventType::SubscriptionStarted, 0),
        event("b", EventType::SubscriptionRenewalCancelled, 3),
    ];
    let state = premium_after(&events).unwrap();
    assert!(!state.will_renew);
    assert!(state.window.grants_at(at(29)) && !state.window.grants_at(at(30)));
    let reactivated = [
        events[0].clone(),
        events[1].clone(),
        event("c", EventType::SubscriptionRenewalReactivated, 4),
    ];
    assert!(premium_after(&reactivated).unwrap().will_renew);
}

#[test]
fn billing_issue_then_grace_then_recovery_or_expiry() {
    let issue = expiring(event("b", EventType::BillingIssueDetected, 30), 30);
    let grace = expiring(event("c", EventType::EnteredGracePeriod, 30), 46);
    let start = event("a", EventType::SubscriptionStarted, 0);
    let in_grace = premium_after(&[start.clone(), grace.clone(), issue.clone()]).unwrap();
    assert!(in_grace.in_grace_period);
    assert!(in_grace.window.grants_at(at(45)) && !in_grace.window.grants_at(at(46)));

    let no_grace = [start.clone(), issue.clone()];
    assert!(
        !grants_on(&no_grace, 31),
        "a billing issue with no grace ends access"
    );

    let renewed = event("d", EventType::SubscriptionRenewed, 40);
    let recovered = premium_after(&[start, issue, grace, renewed]).unwrap();
    assert!(!recovered.in_grace_period && recovered.window.grants_at(at(69)));
}

#[test]
fn a_pause_keeps_access_until_the_paid_period_ends() {
    let events = [
        event("a", EventType::SubscriptionStarted, 0),
        expiring(event("b", EventType::SubscriptionPaused, 10), 30),
    ];
    let state = premium_after(&events).unwrap();
    assert!(!state.will_renew && grants_on(&events, 29) && !grants_on(&events, 30));
}

#[test]
fn lifetime_only_for_listed_products_and_a_refund_ends_it() {
    let rules = Rules::new(
        HashMap::from([(Arc::from("lifetime_unlock"), Arc::from("premium"))]),
        SandboxPolicy::Grant,
    );
    let coins = product(
        event("a", EventType::NonSubscriptionPurchase, 0),
        "coins_100",
    );
    assert_eq!(rules.level_of(&coins), None, "a consumable grants nothing");

    let purchase = product(
        event("b", EventType::NonSubscriptionPurchase, 0),
        "lifetime_unlock",
    );
    let state = project([&purchase], &rules);
    let premium = &state[&(Arc::from("p1"), Arc::from("premium"))];
    assert!(premium.window.is_lifetime && premium.window.grants_at(at(10_000)));

    // An expiry of some subscription on the same level does not end a lifetime purchase.
    let expiry = product(event("c", EventType::SubscriptionExpired, 5), "monthly");
    let refund = product(
        event("d", EventType::NonSubscriptionPurchaseRefunded, 6),
        "lifetime_unlock",
    );
    let after_expiry = project([&purchase, &expiry], &rules);
    assert!(after_expiry[&(Arc::from("p1"), Arc::from("premium"))]
        .window
        .grants_at(at(10)));
    let after_refund = project([&purchase, &expiry, &refund], &rules);
    let premium = &after_refund[&(Arc::from("p1"), Arc::from("premium"))];
    assert!(!premium.window.grants_at(at(10)) && premium.is_refund);
}

#[test]
fn another_products_expiry_does_not_end_the_level() {
    // Crossgrade: yearly starts, then the old monthly's expiry is reported.
    let events = [
        event("a", EventType::SubscriptionStarted, 0),
        expiring(
            product(event("b", EventType::SubscriptionStarted, 10), "yearly"),
            375,
        ),
        expiring(event("c", EventType::SubscriptionExpired, 12), 12),
    ];
    assert!(grants_on(&events, 100));
    // A late monthly renewal does not shorten the yearly plan either.
    let mut with_renewal = events.to_vec();
    with_renewal.push(event("d", EventType::SubscriptionRenewed, 20));
    let state = premium_after(&with_renewal).unwrap();
    assert_eq!(state.vendor_product_id.as_deref(), Some("yearly"));
}

#[test]
fn a_late_grant_retry_does_not_undo_a_refund() {
    let start = event("a", EventType::SubscriptionStarted, 0);
    let renewal = event("b", EventType::SubscriptionRenewed, 30);
    let refund = expiring(event("c", EventType::SubscriptionRefunded, 35), 35);
    // The refund arrives first; Adapty retries the renewal hours later.
    let arrivals = [start, refund, renewal];
    assert!(!grants_on(&arrivals, 40));
}

#[test]
fn at_one_instant_an_upgrade_ends_on_the_new_product() {
    let old_off = snapshot("z-old", 10, false, 10);
    let mut new_on = snapshot("a-new", 10, true, 375);
    new_on.vendor_product_id = Some(Arc::from("yearly"));
    for arrivals in [[old_off.clone(), new_on.clone()], [new_on, old_off]] {
        let state = premium_after(&arrivals).unwrap();
        assert!(state.window.grants_at(at(100)), "{arrivals:?}");
        assert_eq!(state.vendor_product_id.as_deref(), Some("yearly"));
    }
}

#[test]
fn a_snapshot_overrides_older_lifecycle_events_and_newer_ones_amend_it() {
    let events = [
        event("a", EventType::SubscriptionStarted, 0),
        snapshot("b", 1, false, 1),
        event("c", EventType::SubscriptionRenewalReactivated, 2),
    ];
    let state = premium_after(&events).unwrap();
    assert!(!state.window.grants_at(at(2)), "the snapshot said inactive");
    assert!(state.will_renew, "the newer lifecycle event still applies");
}

#[test]
fn sandbox_events_can_be_ignored() {
    let mut e = event("a", EventType::SubscriptionStarted, 0);
    e.environment = Some(Arc::from("Sandbox"));
    assert!(Rules::default().level_of(&e).is_some());
    let ignore = Rules::new(HashMap::new(), SandboxPolicy::Ignore);
    assert_eq!(ignore.level_of(&e), None);
}

#[test]
fn annotations_and_unknown_types_touch_no_level() {
    let rules = Rules::default();
    let mut unknown = event("a", EventType::TrialActive, 0);
    assert_eq!(rules.level_of(&unknown), None);
    unknown.event_type = None;
    assert_eq!(rules.level_of(&unknown), None);
}

#[test]
fn the_last_key_is_the_key_of_the_last_event() {
    for e in [
        event("a", EventType::SubscriptionStarted, 0),
        event("b", EventType::SubscriptionExpired, 0),
        snapshot("c", 0, true, 30),
        snapshot("d", 0, false, 30),
    ] {
        let state = fold(None, &e)
            .or_else(|| {
                fold(
                    Some(fold(None, &event("0", EventType::SubscriptionStarted, -1)).unwrap()),
                    &e,
                )
            })
            .unwrap();
        assert_eq!(Some(state.last_key()), order_key(&e), "{e:?}");
    }
}

// ---- order independence, over random event sets --------------------------------

fn arb_event(id: usize) -> impl Strategy<Value = Event> {
    use EventType as T;
    let types = prop::sample::select(vec![
        T::SubscriptionStarted,
        T::SubscriptionRenewed,
        T::SubscriptionExpired,
        T::TrialStarted,
        T::TrialConverted,
        T::TrialExpired,
        T::BillingIssueDetected,
        T::EnteredGracePeriod,
        T::SubscriptionRenewalCancelled,
        T::SubscriptionRenewalReactivated,
        T::SubscriptionRefunded,
        T::SubscriptionPaused,
        T::SubscriptionDeferred,
        T::NonSubscriptionPurchase,
        T::NonSubscriptionPurchaseRefunded,
        T::AccessLevelUpdated,
        T::TrialActive,
    ]);
    (
        types,
        0i64..6, // day: few values, so ties happen
        prop::sample::select(vec!["monthly", "yearly", "lifetime_unlock"]),
        prop::option::of(1i64..60), // expiry day
        any::<bool>(),              // upgraded refund / snapshot active
        prop::sample::select(vec!["premium", "pro"]),
        prop::sample::select(vec!["p1", "p2"]),
        any::<bool>(), // sandbox
    )
        .prop_map(
            move |(t, day, product_id, expiry, flag, level, profile, sandbox)| {
                let mut e = product(event(&format!("e{id:03}"), t, day), product_id);
                e.profile_id = Arc::from(profile);
                e.subscription_expires_at = expiry.map(at);
                if sandbox {
                    e.environment = Some(Arc::from("Sandbox"));
                }
                if t == T::SubscriptionRefunded && flag {
                    e.cancellation_reason = Some(Arc::from("upgraded"));
                }
                if t == T::AccessLevelUpdated {
                    e.snapshot = Some(Snapshot {
                        access_level_id: Arc::from(level),
                        is_active: flag,
                        expires_at: expiry.map(at),
                        starts_at: None,
                        will_renew: flag,
                        is_lifetime: product_id == "lifetime_unlock",
                        is_in_grace_period: false,
                        is_refund: !flag,
                    });
                }
                e
            },
        )
}

fn arb_events() -> impl Strategy<Value = Vec<Event>> {
    (1usize..24).prop_flat_map(|n| (0..n).map(arb_event).collect::<Vec<_>>())
}

/// What the store would hold after these arrivals: per level, folded on arrival
/// directly when in order and refolded from the log otherwise.
fn stored_after(arrivals: &[Event], rules: &Rules) -> BTreeMap<(Arc<str>, Arc<str>), Entitlement> {
    let mut seen = std::collections::HashSet::new();
    let mut log: Vec<Event> = Vec::new();
    let mut table: BTreeMap<(Arc<str>, Arc<str>), Entitlement> = BTreeMap::new();
    for e in arrivals {
        if !seen.insert(e.id.clone()) {
            continue; // a duplicate: the store answers 2xx and changes nothing
        }
        log.push(e.clone());
        let Some(level) = rules.level_of(e) else {
            continue;
        };
        let key = (e.profile_id.clone(), level.clone());
        let level_log = || {
            Ok::<_, ()>(
                log.iter()
                    .filter(|x| {
                        x.profile_id == e.profile_id && rules.level_of(x).as_ref() == Some(&level)
                    })
                    .cloned()
                    .collect(),
            )
        };
        match fold_arrival(table.remove(&key), e, level_log).unwrap() {
            Some(next) => table.insert(key, next),
            None => None,
        };
    }
    table
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any arrival order, with any duplicates, gives the table `project` gives.
    #[test]
    fn the_table_is_the_same_whatever_the_arrival_order(
        events in arb_events(),
        seed in any::<u64>(),
        duplicates in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ignore_sandbox in any::<bool>(),
    ) {
        let rules = Rules::new(
            HashMap::from([(Arc::from("lifetime_unlock"), Arc::from("pro"))]),
            if ignore_sandbox { SandboxPolicy::Ignore } else { SandboxPolicy::Grant },
        );
        let expected = project(&events, &rules);

        let arrivals = crate::projection::testing::arrivals(&events, &duplicates, seed);
        prop_assert_eq!(stored_after(&arrivals, &rules), expected.clone());
        prop_assert_eq!(stored_after(&events, &rules), expected);
    }
}
