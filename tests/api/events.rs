//! Group 2: what each event type does to the read API.

use crate::helpers::*;
use serde_json::{json, Value};

/// Asserts one level's active flag, showing the whole answer otherwise.
#[track_caller]
fn assert_active(answer: &Value, level: &str, active: bool) {
    assert_eq!(
        answer["access_levels"][level]["active"],
        json!(active),
        "`{level}` should be active={active}: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_started_grants_until_expiry_with_every_field() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let started = subscription_started("prof-st-1")
        .user("user-st-1")
        .at(t - minutes(5))
        .expires(t + days(30));
    daemon.store(&started).await;

    let answer = daemon.profile("prof-st-1").await;
    assert_eq!(answer["customer_user_id"], json!("user-st-1"), "{answer}");
    assert_eq!(answer["premium"], json!(true), "{answer}");
    let level = &answer["access_levels"]["premium"];
    assert_level_shape(level);
    assert_eq!(
        level,
        &json!({
            "active": true,
            "expires_at": out_time(t + days(30)),
            "starts_at": null,
            "will_renew": true,
            "is_lifetime": false,
            "in_grace_period": false,
            "is_refund": false,
            "store": "app_store",
            "vendor_product_id": MONTHLY,
            "environment": "Production",
            "updated_at": out_time(t - minutes(5)),
            "shared_from": null,
        }),
        "{answer}"
    );
    assert_eq!(
        answer["access_levels"].as_object().map(|o| o.len()),
        Some(1),
        "{answer}"
    );
    // checked_at: RFC 3339 UTC, six fraction digits, Z.
    let checked = answer["checked_at"].as_str().expect("checked_at");
    assert!(
        checked.len() == 27 && checked.ends_with('Z') && checked.as_bytes()[19] == b'.',
        "checked_at shape: {checked}"
    );
    chrono::DateTime::parse_from_rfc3339(checked).expect("checked_at parses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_renewed_extends_access() {
    let daemon = Daemon::start(&[]);
    let t = now();
    // A subscription whose period ended an hour ago: not active …
    daemon
        .store(
            &subscription_started("prof-rn-1")
                .at(t - days(30))
                .expires(t - hours(1)),
        )
        .await;
    assert!(!daemon.active("prof-rn-1", "premium").await);
    // … until its renewal arrives.
    daemon
        .store(
            &subscription_renewed("prof-rn-1")
                .at(t - hours(1))
                .expires(t + days(29)),
        )
        .await;
    let level = daemon.level("prof-rn-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(29))),
        "{level}"
    );
    assert_eq!(
        level["updated_at"],
        json!(out_time(t - hours(1))),
        "{level}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trial_started_then_converted() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &trial_started("prof-tr-1")
                .at(t - days(2))
                .expires(t + days(1)),
        )
        .await;
    let level = daemon.level("prof-tr-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["expires_at"], json!(out_time(t + days(1))), "{level}");

    daemon
        .store(
            &trial_converted("prof-tr-1")
                .at(t - minutes(1))
                .expires(t + days(31)),
        )
        .await;
    let level = daemon.level("prof-tr-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(31))),
        "{level}"
    );
    assert_eq!(level["will_renew"], json!(true), "{level}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_expired_and_trial_expired_revoke() {
    let daemon = Daemon::start(&[]);
    let t = now();
    // Expired early (e.g. billing failure after grace): the expiry event ends access
    // even though the stored period would still run.
    daemon
        .store(
            &subscription_started("prof-ex-1")
                .at(t - days(10))
                .expires(t + days(20)),
        )
        .await;
    assert!(daemon.active("prof-ex-1", "premium").await);
    daemon
        .store(
            &subscription_expired("prof-ex-1")
                .at(t - hours(1))
                .expires(t - hours(1))
                .reason("billing_error"),
        )
        .await;
    let answer = daemon.profile("prof-ex-1").await;
    assert_active(&answer, "premium", false);
    assert_eq!(answer["premium"], json!(false), "{answer}");

    daemon
        .store(
            &trial_started("prof-ex-2")
                .at(t - days(2))
                .expires(t + days(1)),
        )
        .await;
    assert!(daemon.active("prof-ex-2", "premium").await);
    daemon
        .store(
            &trial_expired("prof-ex-2")
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    let answer = daemon.profile("prof-ex-2").await;
    assert_active(&answer, "premium", false);
    assert_eq!(answer["premium"], json!(false), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_cancelled_and_reactivated_flip_will_renew_only() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-rc-1")
                .at(t - days(3))
                .expires(t + days(27)),
        )
        .await;
    daemon
        .store(&subscription_renewal_cancelled("prof-rc-1").at(t - days(2)))
        .await;
    let level = daemon.level("prof-rc-1", "premium").await;
    assert_eq!(
        level["active"],
        json!(true),
        "access stays until expiry: {level}"
    );
    assert_eq!(level["will_renew"], json!(false), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(27))),
        "{level}"
    );

    daemon
        .store(&subscription_renewal_reactivated("prof-rc-1").at(t - days(1)))
        .await;
    let level = daemon.level("prof-rc-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["will_renew"], json!(true), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(27))),
        "{level}"
    );

    // The trial flavours.
    daemon
        .store(
            &trial_started("prof-rc-2")
                .at(t - days(1))
                .expires(t + days(2)),
        )
        .await;
    daemon
        .store(&trial_renewal_cancelled("prof-rc-2").at(t - hours(5)))
        .await;
    let level = daemon.level("prof-rc-2", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["will_renew"], json!(false), "{level}");
    daemon
        .store(&trial_renewal_reactivated("prof-rc-2").at(t - hours(4)))
        .await;
    let level = daemon.level("prof-rc-2", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["will_renew"], json!(true), "{level}");
    assert_eq!(level["expires_at"], json!(out_time(t + days(2))), "{level}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_refunded_revokes_and_marks_refund() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-rf-1")
                .at(t - days(5))
                .expires(t + days(25)),
        )
        .await;
    daemon
        .store(
            &subscription_refunded("prof-rf-1")
                .at(t - hours(2))
                .expires(t - hours(2)),
        )
        .await;
    let answer = daemon.profile("prof-rf-1").await;
    assert_active(&answer, "premium", false);
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(
        answer["access_levels"]["premium"]["is_refund"],
        json!(true),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_refunded_for_an_upgrade_does_not_revoke() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-ru-1")
                .at(t - days(5))
                .expires(t + days(25)),
        )
        .await;
    daemon
        .store(
            &subscription_refunded("prof-ru-1")
                .at(t - hours(2))
                .expires(t - hours(2))
                .reason("upgraded"),
        )
        .await;
    let level = daemon.level("prof-ru-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["is_refund"], json!(false), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(25))),
        "{level}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_issue_with_grace_period_keeps_access_until_grace_end() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let renewal_due = t - hours(3);
    let grace_end = t + days(6);
    daemon
        .store(
            &subscription_started("prof-bi-1")
                .at(t - days(30))
                .expires(renewal_due),
        )
        .await;
    daemon
        .store(
            &billing_issue_detected("prof-bi-1")
                .at(renewal_due)
                .expires(grace_end),
        )
        .await;
    daemon
        .store(
            &entered_grace_period("prof-bi-1")
                .at(renewal_due)
                .expires(grace_end),
        )
        .await;
    let level = daemon.level("prof-bi-1", "premium").await;
    assert_eq!(level["active"], json!(true), "active in grace: {level}");
    assert_eq!(level["in_grace_period"], json!(true), "{level}");
    assert_eq!(level["expires_at"], json!(out_time(grace_end)), "{level}");

    // The retry succeeds: a renewal ends the grace period.
    daemon
        .store(
            &subscription_renewed("prof-bi-1")
                .at(t - minutes(10))
                .expires(t + days(30)),
        )
        .await;
    let level = daemon.level("prof-bi-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["in_grace_period"], json!(false), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(30))),
        "{level}"
    );

    // Another profile: grace, then the retries fail for good.
    daemon
        .store(
            &subscription_started("prof-bi-2")
                .at(t - days(40))
                .expires(t - days(10)),
        )
        .await;
    daemon
        .store(
            &entered_grace_period("prof-bi-2")
                .at(t - days(10))
                .expires(t - days(4)),
        )
        .await;
    daemon
        .store(
            &subscription_expired("prof-bi-2")
                .at(t - days(4))
                .expires(t - days(4))
                .reason("billing_error"),
        )
        .await;
    assert!(!daemon.active("prof-bi-2", "premium").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_ends_by_itself() {
    let daemon = Daemon::start(&[]);
    let t = now();
    // The grace period ended an hour ago and nothing followed: no access.
    daemon
        .store(
            &subscription_started("prof-ge-1")
                .at(t - days(40))
                .expires(t - days(7)),
        )
        .await;
    daemon
        .store(
            &entered_grace_period("prof-ge-1")
                .at(t - days(7))
                .expires(t - hours(1)),
        )
        .await;
    let level = daemon.level("prof-ge-1", "premium").await;
    assert_eq!(level["active"], json!(false), "{level}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_paused_keeps_access_until_the_paid_period_ends() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-pa-1")
                .store_name("play_store")
                .at(t - days(20))
                .expires(t + days(10)),
        )
        .await;
    daemon
        .store(
            &subscription_paused("prof-pa-1")
                .at(t - days(1))
                .expires(t + days(10)),
        )
        .await;
    let level = daemon.level("prof-pa-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["will_renew"], json!(false), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(10))),
        "{level}"
    );
    assert_eq!(level["store"], json!("play_store"), "{level}");

    // A pause whose paid period is over: no access.
    daemon
        .store(
            &subscription_started("prof-pa-2")
                .at(t - days(40))
                .expires(t - days(10)),
        )
        .await;
    daemon
        .store(
            &subscription_paused("prof-pa-2")
                .at(t - days(11))
                .expires(t - days(10)),
        )
        .await;
    assert!(!daemon.active("prof-pa-2", "premium").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_deferred_extends_access() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-de-1")
                .store_name("play_store")
                .at(t - days(29))
                .expires(t + days(1)),
        )
        .await;
    daemon
        .store(
            &subscription_deferred("prof-de-1")
                .at(t - hours(1))
                .expires(t + days(15)),
        )
        .await;
    let level = daemon.level("prof-de-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(15))),
        "{level}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_subscription_purchase_grants_lifetime_only_for_listed_products() {
    let levels = format!("{LIFETIME}=premium");
    let daemon = Daemon::start(&["--product-levels", &levels]);
    let t = now();
    daemon
        .store(&non_subscription_purchase("prof-ns-1").at(t - days(100)))
        .await;
    let level = daemon.level("prof-ns-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["is_lifetime"], json!(true), "{level}");
    assert_eq!(level["expires_at"], json!(null), "{level}");
    assert_eq!(level["vendor_product_id"], json!(LIFETIME), "{level}");

    // A consumable (not listed) grants nothing, but is stored.
    let coins = non_subscription_purchase("prof-ns-2")
        .product(COINS)
        .at(t - days(1));
    daemon.store(&coins).await;
    let answer = daemon.profile("prof-ns-2").await;
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(answer["access_levels"], json!({}), "{answer}");
    assert!(daemon.stored_ids().contains(&coins.event_id()));

    // A consumable bought by someone with lifetime access changes nothing.
    daemon
        .store(
            &non_subscription_purchase("prof-ns-1")
                .product(COINS)
                .at(t - days(2)),
        )
        .await;
    assert_eq!(
        daemon.level("prof-ns-1", "premium").await,
        level,
        "a consumable must not touch the level"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_subscription_purchase_refunded_revokes_the_lifetime() {
    let levels = format!("{LIFETIME}=premium");
    let daemon = Daemon::start(&["--product-levels", &levels]);
    let t = now();
    daemon
        .store(&non_subscription_purchase("prof-nr-1").at(t - days(10)))
        .await;
    assert!(daemon.active("prof-nr-1", "premium").await);
    daemon
        .store(&non_subscription_purchase_refunded("prof-nr-1").at(t - days(1)))
        .await;
    let answer = daemon.profile("prof-nr-1").await;
    assert_active(&answer, "premium", false);
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(
        answer["access_levels"]["premium"]["is_refund"],
        json!(true),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_level_updated_is_an_authoritative_snapshot() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let alu = access_level_updated("prof-alu-1", "premium", true, Some(t + days(365)))
        .at(t - minutes(30))
        .user("user-alu-1")
        .product(YEARLY)
        .store_name("play_store")
        .prop("will_renew", json!(false));
    daemon.store(&alu).await;
    let answer = daemon.profile("prof-alu-1").await;
    assert_eq!(answer["customer_user_id"], json!("user-alu-1"), "{answer}");
    assert_eq!(answer["premium"], json!(true), "{answer}");
    assert_eq!(
        answer["access_levels"]["premium"],
        json!({
            "active": true,
            "expires_at": out_time(t + days(365)),
            "starts_at": null,
            "will_renew": false,
            "is_lifetime": false,
            "in_grace_period": false,
            "is_refund": false,
            "store": "play_store",
            "vendor_product_id": YEARLY,
            "environment": "Production",
            "updated_at": out_time(t - minutes(30)),
            "shared_from": null,
        }),
        "{answer}"
    );

    // A newer snapshot says inactive: it wins, whatever the previous expiry said.
    daemon
        .store(
            &access_level_updated("prof-alu-1", "premium", false, Some(t - minutes(10)))
                .at(t - minutes(10))
                .product(YEARLY)
                .prop("is_refund", json!(true)),
        )
        .await;
    let level = daemon.level("prof-alu-1", "premium").await;
    assert_eq!(level["active"], json!(false), "{level}");
    assert_eq!(level["is_refund"], json!(true), "{level}");

    // Other levels, named by the snapshot: any id.
    daemon
        .store(
            &access_level_updated("prof-alu-2", "gold", true, None)
                .at(t - days(1))
                .prop("is_lifetime", json!(true)),
        )
        .await;
    let answer = daemon.profile("prof-alu-2").await;
    assert_eq!(answer["premium"], json!(true), "any active level: {answer}");
    let gold = &answer["access_levels"]["gold"];
    assert_eq!(gold["active"], json!(true), "{answer}");
    assert_eq!(gold["is_lifetime"], json!(true), "{answer}");
    assert_eq!(gold["expires_at"], json!(null), "{answer}");
    assert!(answer["access_levels"]["premium"].is_null(), "{answer}");

    // A snapshot whose access starts later: not active yet.
    daemon
        .store(
            &access_level_updated("prof-alu-3", "premium", true, Some(t + days(60)))
                .at(t - minutes(1))
                .prop("starts_at", json!(adapty_time(t + days(30)))),
        )
        .await;
    let level = daemon.level("prof-alu-3", "premium").await;
    assert_eq!(level["active"], json!(false), "starts_at is ahead: {level}");
    assert_eq!(level["starts_at"], json!(out_time(t + days(30))), "{level}");

    // In grace, per the snapshot.
    daemon
        .store(
            &access_level_updated("prof-alu-4", "premium", true, Some(t + days(3)))
                .at(t - hours(1))
                .prop("is_in_grace_period", json!(true))
                .prop(
                    "billing_issue_detected_at",
                    json!(adapty_time(t - hours(1))),
                ),
        )
        .await;
    let level = daemon.level("prof-alu-4", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["in_grace_period"], json!(true), "{level}");
}

/// One old page of Adapty's shows the `access_level_updated` flat: its fields at the
/// top level and no `event_type`. Such a body is stored and folded as that event (a
/// 400 would lose it: Adapty does not retry one), and a wrapped one orders after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_access_level_update_without_event_type_is_stored_and_folded() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let flat = json!({
        "profile_id": "prof-alu-flat",
        "customer_user_id": "user-alu-flat",
        "profile_event_id": "e-alu-flat",
        "event_datetime": adapty_time(t - hours(2)),
        "access_level_id": "premium",
        "is_active": true,
        "expires_at": adapty_time(t + days(30)),
        "will_renew": true,
        "environment": "Production",
    });
    let resp = daemon.webhook(&flat, None).await;
    resp.expect(200);
    assert_eq!(resp.json["status"], json!("stored"), "{resp}");
    let level = daemon.level("prof-alu-flat", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(30))),
        "{level}"
    );
    assert_eq!(daemon.user("user-alu-flat").await["premium"], json!(true));
    assert_eq!(
        daemon.count(
            "SELECT count(*) FROM events WHERE event_type = 'access_level_updated' \
             AND canonical_type = 'access_level_updated'"
        ),
        1
    );
    // Sent again: a duplicate, as any event.
    let again = daemon.webhook(&flat, None).await;
    assert_eq!(again.json["status"], json!("duplicate"), "{again}");
    // A newer wrapped snapshot that says inactive wins over it.
    daemon
        .store(
            &access_level_updated("prof-alu-flat", "premium", false, Some(t + days(30)))
                .at(t - hours(1)),
        )
        .await;
    assert!(!daemon.active("prof-alu-flat", "premium").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_level_query_lists_only_that_level() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &access_level_updated("prof-q-1", "premium", false, Some(t - days(1))).at(t - days(1)),
        )
        .await;
    daemon
        .store(&access_level_updated("prof-q-1", "gold", true, Some(t + days(9))).at(t - days(1)))
        .await;
    let all = daemon.profile("prof-q-1").await;
    assert_eq!(all["premium"], json!(true), "gold is active: {all}");

    let resp = daemon
        .get("/profiles/prof-q-1/access?access_level=premium")
        .await;
    resp.expect(200);
    assert_eq!(resp.json["premium"], json!(false), "{resp}");
    let levels = resp.json["access_levels"].as_object().expect("levels");
    assert_eq!(levels.keys().collect::<Vec<_>>(), vec!["premium"], "{resp}");

    let resp = daemon
        .get("/profiles/prof-q-1/access?access_level=gold")
        .await;
    resp.expect(200);
    assert_eq!(resp.json["premium"], json!(true), "{resp}");
    let levels = resp.json["access_levels"].as_object().expect("levels");
    assert_eq!(levels.keys().collect::<Vec<_>>(), vec!["gold"], "{resp}");

    let resp = daemon
        .get("/profiles/prof-q-1/access?access_level=silver")
        .await;
    resp.expect(200);
    assert_eq!(resp.json["premium"], json!(false), "{resp}");
    assert_eq!(resp.json["access_levels"], json!({}), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_event_names_act_as_their_canonical_ones() {
    let daemon = Daemon::start(&[]);
    let t = now();
    // subscription_initial_purchase = subscription_started.
    daemon
        .store(
            &Ev::new("subscription_initial_purchase", "prof-lg-1")
                .at(t - days(3))
                .expires(t + days(27)),
        )
        .await;
    assert!(daemon.active("prof-lg-1", "premium").await);
    // auto_renew_off_subscription = subscription_renewal_cancelled.
    daemon
        .store(&Ev::new("auto_renew_off_subscription", "prof-lg-1").at(t - days(2)))
        .await;
    let level = daemon.level("prof-lg-1", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["will_renew"], json!(false), "{level}");
    // subscription_cancelled = subscription_expired.
    daemon
        .store(
            &Ev::new("subscription_cancelled", "prof-lg-1")
                .at(t - days(1))
                .expires(t - days(1))
                .reason("voluntarily_cancelled"),
        )
        .await;
    assert!(!daemon.active("prof-lg-1", "premium").await);

    // trial_cancelled = trial_expired; auto_renew_off = trial_renewal_cancelled.
    daemon
        .store(
            &trial_started("prof-lg-2")
                .at(t - days(2))
                .expires(t + days(1)),
        )
        .await;
    daemon
        .store(&Ev::new("auto_renew_off", "prof-lg-2").at(t - days(1)))
        .await;
    let level = daemon.level("prof-lg-2", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["will_renew"], json!(false), "{level}");
    daemon
        .store(
            &Ev::new("trial_cancelled", "prof-lg-2")
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    assert!(!daemon.active("prof-lg-2", "premium").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotation_and_unknown_types_are_stored_without_effect() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-an-1")
                .at(t - days(2))
                .expires(t + days(28)),
        )
        .await;
    let before = daemon.profile("prof-an-1").await;

    let noise = [
        Ev::new("trial_active", "prof-an-1")
            .at(t - days(1))
            .expires(t + days(90)),
        Ev::new("subscription_active", "prof-an-1")
            .at(t - days(1))
            .expires(t - days(1)),
        Ev::new("some_future_event", "prof-an-1")
            .at(t - hours(1))
            .expires(t - hours(1)),
        Ev::new("subscription_expired_v2", "prof-an-1").at(t - hours(1)),
    ];
    for event in &noise {
        daemon.store(event).await;
    }
    let after = daemon.profile("prof-an-1").await;
    assert_eq!(
        after["access_levels"], before["access_levels"],
        "annotations must not touch the level"
    );

    // On a profile with nothing: still nothing.
    daemon
        .store(&Ev::new("subscription_active", "prof-an-2").expires(t + days(30)))
        .await;
    daemon
        .store(&Ev::new("made_up_grant", "prof-an-2").expires(t + days(30)))
        .await;
    let answer = daemon.profile("prof-an-2").await;
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(answer["access_levels"], json!({}), "{answer}");
    assert_eq!(daemon.events_count(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_profile_and_user_are_a_plain_no() {
    let daemon = Daemon::start(&[]);
    let answer = daemon.profile("no-such-profile").await;
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(answer["access_levels"], json!({}), "{answer}");
    assert_eq!(answer["customer_user_id"], json!(null), "{answer}");
    assert!(answer["checked_at"].is_string(), "{answer}");

    let answer = daemon.user("no-such-user").await;
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(answer["profile_ids"], json!([]), "{answer}");
    assert_eq!(answer["access_levels"], json!({}), "{answer}");
    assert!(answer["checked_at"].is_string(), "{answer}");
}
