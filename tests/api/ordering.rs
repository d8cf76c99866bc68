//! Group 3: duplicates, arrival order, late retries.

use crate::helpers::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_profile_event_id_twice_is_a_duplicate_and_changes_nothing() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let started = subscription_started("prof-dup-1")
        .at(t - days(1))
        .expires(t + days(29));
    daemon.store(&started).await;
    let before = without_clock(daemon.profile("prof-dup-1").await);

    // The very same body again (Adapty's retry).
    let resp = daemon.webhook(&started.0, None).await;
    resp.expect(200);
    assert_eq!(
        resp.json,
        json!({"status": "duplicate", "profile_event_id": started.event_id()}),
        "{resp}"
    );

    // A different body with the same id: ignored, even a revocation.
    let impostor = subscription_refunded("prof-dup-1")
        .at(t - hours(1))
        .expires(t - hours(1))
        .id(&started.event_id());
    let resp = daemon.webhook(&impostor.0, None).await;
    resp.expect(200);
    assert_eq!(
        resp.json,
        json!({"status": "duplicate", "profile_event_id": started.event_id()}),
        "{resp}"
    );

    assert_eq!(without_clock(daemon.profile("prof-dup-1").await), before);
    assert!(daemon.active("prof-dup-1", "premium").await);
    assert_eq!(daemon.events_count(), 1);
    // The stored body is the first one, byte for byte.
    assert_eq!(
        daemon
            .stored_body("prof-dup-1", &started.event_id())
            .as_deref(),
        Some(started.0.to_string().as_str())
    );
    // The same id on another profile is not this event sent again (Adapty's ids are
    // unique, and an event never changes profile): it is that profile's event.
    let elsewhere = started
        .clone()
        .top("profile_id", json!("prof-dup-2"))
        .prop("profile_id", json!("prof-dup-2"));
    daemon.store(&elsewhere).await;
    assert!(daemon.active("prof-dup-2", "premium").await);
    assert_eq!(daemon.events_count(), 2);
    assert_eq!(without_clock(daemon.profile("prof-dup-1").await), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_profile_event_id_is_keyed_by_its_body_hash() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let event = subscription_started("prof-hash-1")
        .at(t - days(1))
        .expires(t + days(29))
        .drop_prop("profile_event_id");
    let body = event.0.to_string();
    let want = format!("sha256:{:x}", Sha256::digest(body.as_bytes()));

    let resp = daemon.webhook_raw(body.clone().into_bytes(), None).await;
    resp.expect(200);
    assert_eq!(
        resp.json,
        json!({"status": "stored", "profile_event_id": want}),
        "{resp}"
    );
    let resp = daemon.webhook_raw(body.clone().into_bytes(), None).await;
    resp.expect(200);
    assert_eq!(
        resp.json,
        json!({"status": "duplicate", "profile_event_id": want}),
        "{resp}"
    );
    assert!(daemon.active("prof-hash-1", "premium").await);
    assert_eq!(daemon.events_count(), 1);
    assert_eq!(daemon.stored_body("prof-hash-1", &want), Some(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_arriving_before_an_older_renewal_retry_still_revokes() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let started = subscription_started("prof-ooo-1")
        .at(t - days(40))
        .expires(t - days(10));
    let renewed = subscription_renewed("prof-ooo-1")
        .at(t - days(10))
        .expires(t + days(20));
    let refunded = subscription_refunded("prof-ooo-1")
        .at(t - days(2))
        .expires(t - days(2));

    // The refund first; the older events trickle in afterwards (retries).
    daemon.store(&refunded).await;
    daemon.store(&started).await;
    daemon.store(&renewed).await;

    let answer = daemon.profile("prof-ooo-1").await;
    let level = &answer["access_levels"]["premium"];
    assert_eq!(level["active"], json!(false), "{answer}");
    assert_eq!(level["is_refund"], json!(true), "{answer}");
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(
        level["updated_at"],
        json!(out_time(t - days(2))),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_grant_retry_never_undoes_a_refund() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let started = subscription_started("prof-late-1")
        .at(t - days(20))
        .expires(t + days(10));
    let refunded = subscription_refunded("prof-late-1")
        .at(t - days(1))
        .expires(t - days(1));
    daemon.store(&started).await;
    daemon.store(&refunded).await;
    assert!(!daemon.active("prof-late-1", "premium").await);

    // The start is retried (a duplicate) …
    let resp = daemon.webhook(&started.0, None).await;
    resp.expect(200);
    assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
    // … and a renewal from before the refund arrives hours late.
    daemon
        .store(
            &subscription_renewed("prof-late-1")
                .at(t - days(5))
                .expires(t + days(25)),
        )
        .await;
    let level = daemon.level("prof-late-1", "premium").await;
    assert_eq!(level["active"], json!(false), "{level}");
    assert_eq!(level["is_refund"], json!(true), "{level}");

    // A real renewal after the refund does grant again (the user bought again).
    daemon
        .store(
            &subscription_started("prof-late-1")
                .at(t - hours(1))
                .expires(t + days(30)),
        )
        .await;
    assert!(daemon.active("prof-late-1", "premium").await);
}

/// One trial flow: trial_started+ALU, trial_converted+ALU, renewal_cancelled+ALU, each
/// pair at one instant.
fn trial_flow(profile: &str, t: chrono::DateTime<chrono::Utc>) -> Vec<Ev> {
    let t1 = t - days(10);
    let t2 = t - days(7);
    let t3 = t - days(1);
    vec![
        trial_started(profile).at(t1).expires(t2),
        access_level_updated(profile, "premium", true, Some(t2))
            .at(t1)
            .prop("active_introductory_offer_type", json!("free_trial")),
        trial_converted(profile).at(t2).expires(t + days(23)),
        access_level_updated(profile, "premium", true, Some(t + days(23))).at(t2),
        subscription_renewal_cancelled(profile).at(t3),
        access_level_updated(profile, "premium", true, Some(t + days(23)))
            .at(t3)
            .prop("will_renew", json!(false)),
    ]
}

/// Re-targets a flow's events at another profile, keeping their own ids distinct.
fn for_profile(events: &[Ev], profile: &str) -> Vec<Ev> {
    events
        .iter()
        .map(|e| {
            e.clone()
                .top("profile_id", json!(profile))
                .prop("profile_id", json!(profile))
                .id(&uuid())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_arrival_order_of_a_flow_gives_the_same_answer() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let flow = trial_flow("template", t);
    let mut answers: Vec<(String, Value)> = Vec::new();
    // In order, reversed, and twelve shuffles.
    let mut orders = vec![flow.clone(), flow.iter().rev().cloned().collect()];
    orders.extend((0..12).map(|seed| shuffled(&flow, seed)));
    for (n, order) in orders.iter().enumerate() {
        let profile = format!("prof-perm-{n}");
        for event in for_profile(order, &profile) {
            daemon.store(&event).await;
        }
        let level = daemon.level(&profile, "premium").await;
        answers.push((profile, level));
    }
    let (first_profile, first) = &answers[0];
    assert_eq!(first["active"], json!(true), "{first_profile}: {first}");
    assert_eq!(
        first["will_renew"],
        json!(false),
        "{first_profile}: {first}"
    );
    assert_eq!(
        first["expires_at"],
        json!(out_time(t + days(23))),
        "{first_profile}: {first}"
    );
    assert_eq!(first["updated_at"], json!(out_time(t - days(1))), "{first}");
    for (profile, level) in &answers[1..] {
        assert_eq!(
            level, first,
            "{profile} got another answer than {first_profile}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_only_permutations_agree_including_a_refund() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let flow = vec![
        subscription_started("x")
            .at(t - days(60))
            .expires(t - days(30)),
        subscription_renewed("x")
            .at(t - days(30))
            .expires(t + days(1)),
        subscription_renewal_cancelled("x").at(t - days(20)),
        subscription_refunded("x")
            .at(t - days(3))
            .expires(t - days(3)),
    ];
    let all = permutations(&flow);
    assert_eq!(all.len(), 24);
    let mut first: Option<Value> = None;
    for (n, order) in all.iter().enumerate() {
        let profile = format!("prof-lperm-{n}");
        for event in for_profile(order, &profile) {
            daemon.store(&event).await;
        }
        let level = daemon.level(&profile, "premium").await;
        assert_eq!(level["active"], json!(false), "{profile}: {level}");
        assert_eq!(level["is_refund"], json!(true), "{profile}: {level}");
        match &first {
            None => first = Some(level),
            Some(first) => assert_eq!(&level, first, "{profile} disagrees with order 0"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_at_one_instant_follow_the_documented_order() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let at = t - hours(2);
    let base = subscription_started("x").at(t - days(30)).expires(at);
    // (events at one instant, whether the level ends active)
    let cases: Vec<(&str, Vec<Ev>, bool)> = vec![
        (
            "lifecycle grant, then the snapshot saying inactive",
            vec![
                subscription_renewed("x").at(at).expires(t + days(30)),
                access_level_updated("x", "premium", false, Some(at)).at(at),
            ],
            false,
        ),
        (
            "lifecycle revoke, then the snapshot saying active",
            vec![
                subscription_expired("x").at(at).expires(at),
                access_level_updated("x", "premium", true, Some(t + days(30))).at(at),
            ],
            true,
        ),
        (
            "revoke before grant among lifecycle events",
            vec![
                subscription_expired("x").at(at).expires(at),
                subscription_renewed("x").at(at).expires(t + days(30)),
            ],
            true,
        ),
    ];
    for (n, (what, tie, want)) in cases.iter().enumerate() {
        for (m, order) in [tie.clone(), tie.iter().rev().cloned().collect()]
            .iter()
            .enumerate()
        {
            let profile = format!("prof-tie-{n}-{m}");
            let events: Vec<Ev> = std::iter::once(base.clone())
                .chain(order.iter().cloned())
                .collect();
            for event in for_profile(&events, &profile) {
                daemon.store(&event).await;
            }
            let level = daemon.level(&profile, "premium").await;
            assert_eq!(
                level["active"],
                json!(want),
                "{what} (arrival order {m}): {level}"
            );
        }
    }
}
