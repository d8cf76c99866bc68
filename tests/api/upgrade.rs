//! Group 5: upgrades and crossgrades between products of one level.

use crate::helpers::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_upgrade_ends_on_the_new_product_in_any_arrival_order() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let bought = t - days(10);
    let upgrade = t - minutes(20);
    let template = "template";
    let before = [
        subscription_started(template)
            .product(MONTHLY)
            .at(bought)
            .expires(bought + days(30)),
        access_level_updated(template, "premium", true, Some(bought + days(30)))
            .product(MONTHLY)
            .at(bought),
    ];
    // All created at one instant by the upgrade.
    let upgrade_events = vec![
        access_level_updated(template, "premium", false, Some(upgrade))
            .product(MONTHLY)
            .prop("will_renew", json!(false))
            .prop("cancellation_reason", json!("upgraded"))
            .at(upgrade),
        access_level_updated(template, "premium", true, Some(upgrade + days(365)))
            .product(YEARLY)
            .at(upgrade),
        subscription_refunded(template)
            .product(MONTHLY)
            .reason("upgraded")
            .expires(upgrade)
            .at(upgrade),
        subscription_started(template)
            .product(YEARLY)
            .prop("price_usd", json!(59.99))
            .expires(upgrade + days(365))
            .at(upgrade),
    ];
    let mut orders: Vec<Vec<Ev>> = permutations(&upgrade_events)
        .into_iter()
        .step_by(3) // 8 of the 24 orders of the upgrade itself
        .map(|o| before.iter().cloned().chain(o).collect())
        .collect();
    // And a few where the upgrade overtakes the original purchase.
    let everything: Vec<Ev> = before
        .iter()
        .chain(upgrade_events.iter())
        .cloned()
        .collect();
    orders.extend((100..104).map(|seed| shuffled(&everything, seed)));

    for (n, order) in orders.iter().enumerate() {
        let profile = format!("prof-up-{n}");
        for event in order {
            let event = event
                .clone()
                .top("profile_id", json!(profile))
                .prop("profile_id", json!(profile))
                .id(&uuid());
            daemon.store(&event).await;
        }
        let answer = daemon.profile(&profile).await;
        let level = &answer["access_levels"]["premium"];
        assert_eq!(level["active"], json!(true), "order {n}: {answer}");
        assert_eq!(
            level["vendor_product_id"],
            json!(YEARLY),
            "order {n}: {answer}"
        );
        assert_eq!(
            level["expires_at"],
            json!(out_time(upgrade + days(365))),
            "order {n}: {answer}"
        );
        assert_eq!(level["is_refund"], json!(false), "order {n}: {answer}");
        assert_eq!(answer["premium"], json!(true), "order {n}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_products_expiry_after_a_crossgrade_does_not_revoke() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let events = vec![
        subscription_started("template")
            .product(MONTHLY)
            .at(t - days(20))
            .expires(t + days(10)),
        subscription_renewal_cancelled("template")
            .product(MONTHLY)
            .at(t - days(6)),
        subscription_started("template")
            .product(YEARLY)
            .at(t - days(5))
            .expires(t + days(360)),
        // The old plan's end, reported after the new one began.
        subscription_expired("template")
            .product(MONTHLY)
            .reason("upgraded")
            .at(t - days(1))
            .expires(t - days(1)),
    ];
    let mut orders = vec![events.clone(), events.iter().rev().cloned().collect()];
    orders.extend((0..4).map(|seed| shuffled(&events, seed)));
    for (n, order) in orders.iter().enumerate() {
        let profile = format!("prof-cross-{n}");
        for event in order {
            let event = event
                .clone()
                .top("profile_id", json!(profile))
                .prop("profile_id", json!(profile))
                .id(&uuid());
            daemon.store(&event).await;
        }
        let level = daemon.level(&profile, "premium").await;
        assert_eq!(level["active"], json!(true), "order {n}: {level}");
        assert_eq!(
            level["vendor_product_id"],
            json!(YEARLY),
            "order {n}: {level}"
        );
        assert_eq!(
            level["expires_at"],
            json!(out_time(t + days(360))),
            "order {n}: {level}"
        );
        assert_eq!(level["will_renew"], json!(true), "order {n}: {level}");
    }
}
