//! Group 6: one customer_user_id over several profiles.

use crate::helpers::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_spanning_two_profiles_gets_the_best_of_both() {
    let daemon = Daemon::start(&[]);
    let t = now();
    // Bought monthly on the phone (profile B), yearly on the tablet (profile A).
    daemon
        .store(
            &subscription_started("prof-span-b")
                .user("span-user")
                .at(t - days(5))
                .expires(t + days(25)),
        )
        .await;
    daemon
        .store(
            &subscription_started("prof-span-a")
                .user("span-user")
                .product(YEARLY)
                .store_name("play_store")
                .at(t - days(2))
                .expires(t + days(363)),
        )
        .await;
    // A third profile of the same user with an expired subscription.
    daemon
        .store(
            &subscription_started("prof-span-c")
                .user("span-user")
                .at(t - days(400))
                .expires(t - days(35)),
        )
        .await;

    let answer = daemon.user("span-user").await;
    assert_eq!(
        answer["profile_ids"],
        json!(["prof-span-a", "prof-span-b", "prof-span-c"]),
        "sorted profile ids: {answer}"
    );
    assert_eq!(answer["premium"], json!(true), "{answer}");
    let level = &answer["access_levels"]["premium"];
    assert_level_shape(level);
    assert_eq!(
        level["profile_id"],
        json!("prof-span-a"),
        "the later expiry: {answer}"
    );
    assert_eq!(level["active"], json!(true), "{answer}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(363))),
        "{answer}"
    );
    assert_eq!(level["vendor_product_id"], json!(YEARLY), "{answer}");
    assert_eq!(level["store"], json!("play_store"), "{answer}");

    // Each profile still answers for itself.
    let b = daemon.profile("prof-span-b").await;
    assert_eq!(b["customer_user_id"], json!("span-user"), "{b}");
    assert_eq!(
        b["access_levels"]["premium"]["expires_at"],
        json!(out_time(t + days(25))),
        "{b}"
    );

    // The yearly one is refunded: the monthly one is now the best.
    daemon
        .store(
            &subscription_refunded("prof-span-a")
                .user("span-user")
                .product(YEARLY)
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    let answer = daemon.user("span-user").await;
    assert_eq!(answer["premium"], json!(true), "{answer}");
    let level = &answer["access_levels"]["premium"];
    assert_eq!(
        level["profile_id"],
        json!("prof-span-b"),
        "active over inactive: {answer}"
    );
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(25))),
        "{answer}"
    );

    // access_level narrows the answer.
    let resp = daemon
        .get("/users/span-user/access?access_level=gold")
        .await;
    resp.expect(200);
    assert_eq!(resp.json["premium"], json!(false), "{resp}");
    assert_eq!(resp.json["access_levels"], json!({}), "{resp}");
    let resp = daemon
        .get("/users/span-user/access?access_level=premium")
        .await;
    resp.expect(200);
    assert_eq!(resp.json["premium"], json!(true), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_beats_a_subscription_and_levels_merge_per_level() {
    let levels = format!("{LIFETIME}=premium");
    let daemon = Daemon::start(&["--product-levels", &levels]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-ml-1")
                .user("merge-user")
                .at(t - days(1))
                .expires(t + days(300)),
        )
        .await;
    daemon
        .store(
            &non_subscription_purchase("prof-ml-2")
                .user("merge-user")
                .at(t - days(100)),
        )
        .await;
    daemon
        .store(
            &access_level_updated("prof-ml-1", "gold", true, Some(t + days(3)))
                .user("merge-user")
                .at(t - days(1)),
        )
        .await;
    let answer = daemon.user("merge-user").await;
    assert_eq!(
        answer["profile_ids"],
        json!(["prof-ml-1", "prof-ml-2"]),
        "{answer}"
    );
    let premium = &answer["access_levels"]["premium"];
    assert_eq!(
        premium["profile_id"],
        json!("prof-ml-2"),
        "lifetime wins: {answer}"
    );
    assert_eq!(premium["is_lifetime"], json!(true), "{answer}");
    let gold = &answer["access_levels"]["gold"];
    assert_eq!(gold["profile_id"], json!("prof-ml-1"), "{answer}");
    assert_eq!(gold["active"], json!(true), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_without_customer_user_id_joins_the_user_when_it_logs_in() {
    let daemon = Daemon::start(&[]);
    let t = now();
    // Bought before login: no customer_user_id.
    daemon
        .store(
            &subscription_started("prof-anon-1")
                .at(t - days(3))
                .expires(t + days(27)),
        )
        .await;
    let answer = daemon.profile("prof-anon-1").await;
    assert_eq!(answer["customer_user_id"], json!(null), "{answer}");
    assert_eq!(answer["premium"], json!(true), "{answer}");
    let user = daemon.user("late-login").await;
    assert_eq!(user["profile_ids"], json!([]), "{user}");
    assert_eq!(user["premium"], json!(false), "{user}");

    // Logs in: the next event carries the id.
    daemon
        .store(
            &subscription_renewal_cancelled("prof-anon-1")
                .user("late-login")
                .at(t - days(1)),
        )
        .await;
    let answer = daemon.profile("prof-anon-1").await;
    assert_eq!(answer["customer_user_id"], json!("late-login"), "{answer}");
    let user = daemon.user("late-login").await;
    assert_eq!(user["profile_ids"], json!(["prof-anon-1"]), "{user}");
    assert_eq!(user["premium"], json!(true), "{user}");
    assert_eq!(
        user["access_levels"]["premium"]["profile_id"],
        json!("prof-anon-1"),
        "{user}"
    );

    // A newer event with customer_user_id null does not erase it …
    daemon
        .store(&trial_active("prof-anon-1").at(t - hours(1)))
        .await;
    // … nor does an older one with another id arriving late.
    daemon
        .store(
            &Ev::new("subscription_active", "prof-anon-1")
                .user("someone-else")
                .at(t - days(2)),
        )
        .await;
    let answer = daemon.profile("prof-anon-1").await;
    assert_eq!(answer["customer_user_id"], json!("late-login"), "{answer}");
    assert_eq!(daemon.user("someone-else").await["profile_ids"], json!([]));

    // A newer event with another id moves the profile.
    daemon
        .store(
            &Ev::new("subscription_active", "prof-anon-1")
                .user("new-account")
                .at(t - minutes(5)),
        )
        .await;
    assert_eq!(daemon.user("late-login").await["profile_ids"], json!([]));
    let moved = daemon.user("new-account").await;
    assert_eq!(moved["profile_ids"], json!(["prof-anon-1"]), "{moved}");
    assert_eq!(moved["premium"], json!(true), "{moved}");
}

fn trial_active(profile: &str) -> Ev {
    Ev::new("trial_active", profile)
}
