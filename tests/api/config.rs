//! Group 7: --event-names, --product-levels, --sandbox.

use crate::helpers::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_events_act_as_their_canonical_names() {
    let daemon = Daemon::start(&[
        "--event-names",
        "my_renewal=subscription_renewed,my_refund=subscription_refunded,my_start=subscription_started",
    ]);
    let t = now();
    daemon
        .store(
            &Ev::new("my_start", "prof-ren-1")
                .at(t - days(40))
                .expires(t - days(10)),
        )
        .await;
    assert!(!daemon.active("prof-ren-1", "premium").await);
    let renewal = Ev::new("my_renewal", "prof-ren-1")
        .at(t - days(10))
        .expires(t + days(20));
    daemon.store(&renewal).await;
    let level = daemon.level("prof-ren-1", "premium").await;
    assert_eq!(level["active"], json!(true), "my_renewal renews: {level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(20))),
        "{level}"
    );

    daemon
        .store(
            &Ev::new("my_refund", "prof-ren-1")
                .at(t - days(1))
                .expires(t - days(1))
                .reason("customer_support"),
        )
        .await;
    let level = daemon.level("prof-ren-1", "premium").await;
    assert_eq!(level["active"], json!(false), "my_refund refunds: {level}");
    assert_eq!(level["is_refund"], json!(true), "{level}");

    // The log keeps the name as received and the canonical one.
    let rows = daemon.rows(
        "SELECT event_type, canonical_type FROM events WHERE profile_event_id = ?1",
        &[&renewal.event_id()],
    );
    assert_eq!(
        rows,
        vec![vec![json!("my_renewal"), json!("subscription_renewed")]],
        "the renewal row"
    );

    // The canonical names still work beside the custom ones.
    daemon
        .store(
            &subscription_started("prof-ren-2")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;
    assert!(daemon.active("prof-ren-2", "premium").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_event_unknown_without_the_map() {
    // Without --event-names, the same custom name is an unknown type: stored, no effect.
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &Ev::new("my_renewal", "prof-ren-3")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;
    let answer = daemon.profile("prof-ren-3").await;
    assert_eq!(answer["access_levels"], json!({}), "{answer}");
    assert_eq!(daemon.events_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_levels_route_products_to_levels() {
    let levels = format!("com.example.pro.monthly=pro,{LIFETIME}=lifetime_pro");
    let daemon = Daemon::start(&["--product-levels", &levels]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-pl-1")
                .product("com.example.pro.monthly")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;
    let answer = daemon.profile("prof-pl-1").await;
    assert_eq!(
        answer["access_levels"]["pro"]["active"],
        json!(true),
        "{answer}"
    );
    assert!(
        answer["access_levels"]["premium"].is_null(),
        "no premium: {answer}"
    );
    assert_eq!(answer["premium"], json!(true), "any level: {answer}");
    let only_premium = daemon
        .get("/profiles/prof-pl-1/access?access_level=premium")
        .await;
    only_premium.expect(200);
    assert_eq!(only_premium.json["premium"], json!(false), "{only_premium}");

    // Unlisted subscription products grant premium.
    daemon
        .store(
            &subscription_started("prof-pl-1")
                .product(MONTHLY)
                .at(t - hours(2))
                .expires(t + days(30)),
        )
        .await;
    let answer = daemon.profile("prof-pl-1").await;
    assert_eq!(
        answer["access_levels"]["premium"]["active"],
        json!(true),
        "{answer}"
    );
    assert_eq!(
        answer["access_levels"]["pro"]["active"],
        json!(true),
        "{answer}"
    );

    // A listed one-time product grants its level for life.
    daemon
        .store(&non_subscription_purchase("prof-pl-2").at(t - days(3)))
        .await;
    let answer = daemon.profile("prof-pl-2").await;
    let level = &answer["access_levels"]["lifetime_pro"];
    assert_eq!(level["active"], json!(true), "{answer}");
    assert_eq!(level["is_lifetime"], json!(true), "{answer}");
    assert!(answer["access_levels"]["premium"].is_null(), "{answer}");

    // A refund of the pro product revokes pro, not premium.
    daemon
        .store(
            &subscription_refunded("prof-pl-1")
                .product("com.example.pro.monthly")
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    let answer = daemon.profile("prof-pl-1").await;
    assert_eq!(
        answer["access_levels"]["pro"]["active"],
        json!(false),
        "{answer}"
    );
    assert_eq!(
        answer["access_levels"]["premium"]["active"],
        json!(true),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_ignore_stores_sandbox_events_without_effect() {
    let daemon = Daemon::start(&["--sandbox", "ignore"]);
    let t = now();
    let sandbox = [
        subscription_started("prof-sbi-1")
            .sandbox()
            .at(t - days(1))
            .expires(t + days(29)),
        access_level_updated("prof-sbi-1", "premium", true, Some(t + days(29)))
            .sandbox()
            .at(t - days(1)),
    ];
    daemon.store_all(&sandbox).await;
    let answer = daemon.profile("prof-sbi-1").await;
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(answer["access_levels"], json!({}), "{answer}");
    assert_eq!(daemon.events_count(), 2, "stored all the same");

    // A sandbox refund does not revoke production access either.
    daemon
        .store(
            &subscription_started("prof-sbi-2")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;
    daemon
        .store(
            &subscription_refunded("prof-sbi-2")
                .sandbox()
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    let level = daemon.level("prof-sbi-2", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["environment"], json!("Production"), "{level}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_grant_is_the_default() {
    for args in [&[][..], &["--sandbox", "grant"][..]] {
        let daemon = Daemon::start(args);
        let t = now();
        daemon
            .store(
                &subscription_started("prof-sbg-1")
                    .sandbox()
                    .at(t - days(1))
                    .expires(t + days(29)),
            )
            .await;
        let level = daemon.level("prof-sbg-1", "premium").await;
        assert_eq!(level["active"], json!(true), "{args:?}: {level}");
        assert_eq!(level["environment"], json!("Sandbox"), "{args:?}: {level}");
    }
}
