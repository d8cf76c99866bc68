//! Group 4: access ends when `expires_at` passes, with no event.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration as StdDuration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_snapshot_with_a_past_expiry_is_not_active() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &access_level_updated("prof-past-1", "premium", true, Some(t - hours(1)))
                .at(t - days(30)),
        )
        .await;
    let answer = daemon.profile("prof-past-1").await;
    let level = &answer["access_levels"]["premium"];
    assert_eq!(level["active"], json!(false), "{answer}");
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t - hours(1))),
        "{answer}"
    );

    // The same through a lifecycle grant whose period is over.
    daemon
        .store(
            &subscription_renewed("prof-past-2")
                .at(t - days(31))
                .expires(t - days(1)),
        )
        .await;
    assert!(!daemon.active("prof-past-2", "premium").await);

    // And the database view agrees.
    assert_eq!(daemon.count("SELECT count(*) FROM active_entitlements"), 0);
    assert_eq!(daemon.count("SELECT count(*) FROM entitlements"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_ends_by_the_clock_a_few_seconds_later() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let ends = t + secs(3);
    daemon
        .store(&access_level_updated("prof-clock-1", "premium", true, Some(ends)).at(t - days(30)))
        .await;
    daemon
        .store(
            &subscription_started("prof-clock-2")
                .at(t - days(30))
                .expires(ends),
        )
        .await;
    // Still running while the expiry is ahead (checked only when the answer surely
    // came before it: no timing assertion).
    let answer = daemon.profile("prof-clock-1").await;
    if chrono::Utc::now() < ends - secs(1) {
        assert_eq!(answer["premium"], json!(true), "before expiry: {answer}");
    }

    let ended = poll_until(
        StdDuration::from_secs(10),
        StdDuration::from_millis(100),
        || async {
            !daemon.active("prof-clock-1", "premium").await
                && !daemon.active("prof-clock-2", "premium").await
        },
    )
    .await;
    assert!(ended, "access did not end within 10 s of a 3 s expiry");
    // Not before its time: once it reads inactive, the clock is past expires_at.
    assert!(chrono::Utc::now() >= ends, "ended before {ends}");
    let answer = daemon.profile("prof-clock-1").await;
    assert_eq!(answer["premium"], json!(false), "{answer}");
    let answer = daemon.profile("prof-clock-2").await;
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(daemon.count("SELECT count(*) FROM active_entitlements"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_snapshots_do_not_expire() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &access_level_updated("prof-life-1", "premium", true, None)
                .at(t - days(500))
                .prop("is_lifetime", json!(true))
                .prop("will_renew", json!(false)),
        )
        .await;
    assert!(daemon.active("prof-life-1", "premium").await);
    let level = daemon.level("prof-life-1", "premium").await;
    assert_eq!(level["is_lifetime"], json!(true), "{level}");
    assert_eq!(level["expires_at"], json!(null), "{level}");
}
