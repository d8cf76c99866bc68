//! The change feed (`GET /changes`, the `access_changes` table): every flip of a level's
//! effective access is reported once, in order, with the event (or the clock) that did
//! it; events that flip nothing report nothing; the cursor pages through it; a long
//! poll wakes when a change commits; and restarts (SIGTERM and kill -9) neither lose,
//! repeat nor hide a change. Each test drives the real daemon over HTTP and compares
//! what the feed says with the table in the database.

use crate::helpers::*;
use serde_json::{json, Value};
use std::time::{Duration as StdDuration, Instant};

/// `GET /changes?after=…[&limit=…][&wait=…]`, insisting on 200 and the answer's shape.
async fn feed(daemon: &Daemon, after: i64, limit: Option<u32>, wait: Option<u64>) -> Value {
    let mut path = format!("/changes?after={after}");
    if let Some(limit) = limit {
        path.push_str(&format!("&limit={limit}"));
    }
    if let Some(wait) = wait {
        path.push_str(&format!("&wait={wait}"));
    }
    let resp = daemon.get(&path).await;
    resp.expect(200);
    assert!(
        resp.json["changes"].is_array(),
        "no `changes` array: {resp}"
    );
    assert!(resp.json["next_after"].is_i64(), "no `next_after`: {resp}");
    resp.json
}

/// Every change after `after`, as a list.
async fn changes_after(daemon: &Daemon, after: i64) -> Vec<Value> {
    feed(daemon, after, Some(1000), None).await["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn seq(change: &Value) -> i64 {
    change["seq"]
        .as_i64()
        .unwrap_or_else(|| panic!("a change without an integer seq: {change}"))
}

/// The feed's table as (seq, profile_id, level, active, reason, profile_event_id).
type Row = (i64, String, String, bool, String, Option<String>);

fn table(daemon: &Daemon) -> Vec<Row> {
    let sql = "SELECT seq, profile_id, access_level_id, active, reason, profile_event_id \
               FROM access_changes ORDER BY seq";
    daemon
        .rows(sql, &[])
        .into_iter()
        .map(|r| {
            let text = |v: &Value| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{sql}: {r:?}"))
                    .to_owned()
            };
            (
                r[0].as_i64().unwrap_or_else(|| panic!("{sql}: {r:?}")),
                text(&r[1]),
                text(&r[2]),
                truthy(&r[3]),
                text(&r[4]),
                r[5].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The feed's answer in the table's shape.
fn as_rows(changes: &[Value]) -> Vec<Row> {
    changes
        .iter()
        .map(|c| {
            (
                seq(c),
                c["profile_id"].as_str().expect("profile_id").to_owned(),
                c["access_level_id"]
                    .as_str()
                    .expect("access_level_id")
                    .to_owned(),
                c["active"].as_bool().expect("active"),
                c["reason"].as_str().expect("reason").to_owned(),
                c["profile_event_id"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Seqs strictly increasing: nothing reported twice, nothing out of order.
#[track_caller]
fn assert_strictly_increasing(changes: &[Value]) {
    let seqs: Vec<i64> = changes.iter().map(seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs not strictly increasing: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_and_a_refund_each_report_one_flip_and_other_events_none() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let started = subscription_started("prof-cf-1")
        .user("user-cf-1")
        .at(t - hours(4))
        .expires(t + days(30));
    daemon.store(&started).await;

    let changes = changes_after(&daemon, 0).await;
    assert_eq!(changes.len(), 1, "one purchase, one change: {changes:?}");
    let gained = &changes[0];
    assert!(seq(gained) > 0, "{gained}");
    assert_eq!(
        gained,
        &json!({
            "seq": seq(gained),
            "profile_id": "prof-cf-1",
            "customer_user_id": "user-cf-1",
            "access_level_id": "premium",
            "active": true,
            "reason": "subscription_started",
            "profile_event_id": started.event_id(),
            "expires_at": out_time(t + days(30)),
            "changed_at": gained["changed_at"],
            "shared_from": null,
        }),
        "the purchase's change"
    );
    chrono::DateTime::parse_from_rfc3339(gained["changed_at"].as_str().expect("changed_at"))
        .expect("changed_at is RFC 3339");
    let first = seq(gained);

    // Events that leave effective access as it was: a renewal of an active
    // subscription, a renewal-cancel, a reactivation, an annotation-only type, a grant
    // whose period is already over on a second profile, and a duplicate of the
    // purchase.
    daemon
        .store_all(&[
            subscription_renewed("prof-cf-1")
                .at(t - hours(3))
                .expires(t + days(60)),
            subscription_renewal_cancelled("prof-cf-1").at(t - hours(2)),
            subscription_renewal_reactivated("prof-cf-1").at(t - minutes(90)),
            Ev::new("subscription_active", "prof-cf-1").at(t - minutes(80)),
            subscription_renewed("prof-cf-2")
                .at(t - days(40))
                .expires(t - days(10)),
        ])
        .await;
    let resp = daemon.webhook(&started.0, None).await;
    resp.expect(200);
    assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
    let none = feed(&daemon, first, None, None).await;
    assert_eq!(
        none,
        json!({"changes": [], "next_after": first}),
        "events that flip nothing reported something"
    );
    assert!(daemon.active("prof-cf-1", "premium").await);

    // The refund takes access away: one change, inactive, naming the refund.
    let refund = subscription_refunded("prof-cf-1")
        .at(t - hours(1))
        .expires(t - hours(1));
    daemon.store(&refund).await;
    let changes = changes_after(&daemon, first).await;
    assert_eq!(changes.len(), 1, "one refund, one change: {changes:?}");
    let lost = &changes[0];
    assert!(seq(lost) > first, "{lost}");
    assert_eq!(lost["profile_id"], json!("prof-cf-1"), "{lost}");
    assert_eq!(lost["customer_user_id"], json!("user-cf-1"), "{lost}");
    assert_eq!(lost["access_level_id"], json!("premium"), "{lost}");
    assert_eq!(lost["active"], json!(false), "{lost}");
    assert_eq!(lost["reason"], json!("subscription_refunded"), "{lost}");
    assert_eq!(lost["profile_event_id"], json!(refund.event_id()), "{lost}");

    // A second refund of what is already gone flips nothing.
    daemon
        .store(&subscription_refunded("prof-cf-1").at(t - minutes(30)))
        .await;
    let resp = daemon.webhook(&refund.0, None).await;
    assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
    let all = changes_after(&daemon, 0).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        as_rows(&all),
        table(&daemon),
        "the feed and the table differ"
    );
}

/// A change names the user its profile had when it was recorded: a profile that later
/// moves to another user does not take its past changes along (a consumer revoking by
/// user must revoke the one who lost access). The column holds it, in the file too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_keeps_the_user_its_profile_had_then() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let profile = "prof-cf-owner";
    daemon
        .store_all(&[
            subscription_started(profile)
                .user("user-cf-then")
                .at(t - days(3))
                .expires(t + days(27)),
            subscription_refunded(profile)
                .user("user-cf-then")
                .at(t - days(2))
                .expires(t - days(2)),
            // The profile moves to another user (an event that grants nothing).
            Ev::new("trial_active", profile)
                .user("user-cf-now")
                .at(t - days(1)),
            subscription_started(profile)
                .user("user-cf-now")
                .at(t - hours(1))
                .expires(t + days(30)),
        ])
        .await;
    let users: Vec<(bool, Value)> = changes_after(&daemon, 0)
        .await
        .iter()
        .map(|c| {
            (
                c["active"].as_bool().unwrap(),
                c["customer_user_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        users,
        [
            (true, json!("user-cf-then")),
            (false, json!("user-cf-then")),
            (true, json!("user-cf-now")),
        ]
    );
    assert_eq!(
        daemon.count("SELECT count(*) FROM access_changes WHERE customer_user_id = 'user-cf-then'"),
        2
    );
    assert_eq!(daemon.user("user-cf-now").await["premium"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_by_the_clock_reports_expired_with_no_event() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let ends = t + secs(6);
    daemon
        .store(
            &subscription_started("prof-cf-exp")
                .at(t - days(30))
                .expires(ends),
        )
        .await;
    let gained = changes_after(&daemon, 0).await;
    assert_eq!(gained.len(), 1, "{gained:?}");
    assert_eq!(gained[0]["active"], json!(true), "{gained:?}");
    let after = seq(&gained[0]);

    // The daemon's timer ticks every second: the expiry is reported within a few.
    let reported = poll_until(
        StdDuration::from_secs(20),
        StdDuration::from_millis(200),
        || async { !changes_after(&daemon, after).await.is_empty() },
    )
    .await;
    assert!(reported, "no change within 20 s of a 6 s expiry");
    let expired = changes_after(&daemon, after).await;
    assert!(
        chrono::Utc::now() >= ends,
        "expiry reported before {ends}: {expired:?}"
    );
    assert_eq!(expired.len(), 1, "{expired:?}");
    let change = &expired[0];
    assert_eq!(change["profile_id"], json!("prof-cf-exp"), "{change}");
    assert_eq!(change["access_level_id"], json!("premium"), "{change}");
    assert_eq!(change["active"], json!(false), "{change}");
    assert_eq!(change["reason"], json!("expired"), "{change}");
    assert_eq!(change["profile_event_id"], json!(null), "{change}");
    assert_eq!(change["expires_at"], json!(out_time(ends)), "{change}");
    assert!(!daemon.active("prof-cf-exp", "premium").await);

    // Reported once: two more ticks (a 2 s long poll) add nothing.
    let later = feed(&daemon, seq(change), None, Some(2)).await;
    assert_eq!(
        later,
        json!({"changes": [], "next_after": seq(change)}),
        "the expiry was reported again"
    );
    assert_eq!(table(&daemon).len(), 2);
}

/// A level granted with a start ahead is reported by the clock when it starts; one
/// whose start and end have both passed (it started and ended with no event) is never
/// reported, however many ticks go by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_by_the_clock_reports_started_and_a_past_window_nothing() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let starts = t + secs(6);
    daemon
        .store_all(&[
            access_level_updated("prof-cf-start", "premium", true, Some(t + days(30)))
                .prop("starts_at", json!(adapty_time(starts)))
                .at(t - minutes(1)),
            access_level_updated("prof-cf-past", "premium", true, Some(t - days(1)))
                .prop("starts_at", json!(adapty_time(t - days(31))))
                .at(t - days(31)),
        ])
        .await;
    assert!(changes_after(&daemon, 0).await.is_empty());
    assert!(!daemon.active("prof-cf-start", "premium").await);

    let reported = poll_until(
        StdDuration::from_secs(20),
        StdDuration::from_millis(200),
        || async { !changes_after(&daemon, 0).await.is_empty() },
    )
    .await;
    assert!(reported, "no change within 20 s of a 6 s start");
    assert!(chrono::Utc::now() >= starts, "reported before {starts}");
    let started = changes_after(&daemon, 0).await;
    assert_eq!(started.len(), 1, "{started:?}");
    let change = &started[0];
    assert_eq!(change["profile_id"], json!("prof-cf-start"), "{change}");
    assert_eq!(change["active"], json!(true), "{change}");
    assert_eq!(change["reason"], json!("started"), "{change}");
    assert!(daemon.active("prof-cf-start", "premium").await);

    // Two more ticks say nothing of either.
    let later = feed(&daemon, seq(change), None, Some(2)).await;
    assert_eq!(later, json!({"changes": [], "next_after": seq(change)}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_pages_through_every_change_in_order() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let profiles: Vec<String> = (1..=7).map(|n| format!("prof-cf-page-{n}")).collect();
    for (n, profile) in profiles.iter().enumerate() {
        daemon
            .store(
                &subscription_started(profile)
                    .at(t - hours(10) + minutes(n as i64))
                    .expires(t + days(30)),
            )
            .await;
    }
    // And one loss, so the feed is not only gains.
    daemon
        .store(&subscription_refunded(&profiles[2]).at(t - hours(1)))
        .await;

    let mut pages = Vec::new();
    let mut collected: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let page = feed(&daemon, after, Some(3), None).await;
        let changes = page["changes"].as_array().cloned().unwrap_or_default();
        assert!(changes.len() <= 3, "limit=3 gave {}: {page}", changes.len());
        let next = page["next_after"].as_i64().expect("next_after");
        match changes.last() {
            Some(last) => assert_eq!(next, seq(last), "next_after is the last seq: {page}"),
            None => {
                assert_eq!(next, after, "an empty page keeps the cursor: {page}");
                break;
            }
        }
        assert!(
            changes.iter().all(|c| seq(c) > after),
            "a page went back before its cursor {after}: {page}"
        );
        pages.push(changes.len());
        collected.extend(changes);
        after = next;
        assert!(pages.len() <= 10, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, vec![3, 3, 2], "8 changes in pages of 3");
    assert_strictly_increasing(&collected);
    assert_eq!(as_rows(&collected), table(&daemon), "paged feed vs table");
    // In the order they happened.
    let order: Vec<(&str, bool)> = collected
        .iter()
        .map(|c| {
            (
                c["profile_id"].as_str().unwrap_or_default(),
                c["active"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    let mut expected: Vec<(&str, bool)> = profiles.iter().map(|p| (p.as_str(), true)).collect();
    expected.push((profiles[2].as_str(), false));
    assert_eq!(order, expected);

    // After the latest: nothing, and the cursor stays.
    let latest = seq(collected.last().expect("a change"));
    assert_eq!(
        feed(&daemon, latest, None, None).await,
        json!({"changes": [], "next_after": latest})
    );
    // A cursor in the middle resumes right after it.
    let middle = seq(&collected[4]);
    let rest = changes_after(&daemon, middle).await;
    assert_eq!(rest, collected[5..].to_vec());
    // Without a limit every change comes (the default is 100).
    assert_eq!(changes_after(&daemon, 0).await.len(), collected.len());
    let page = feed(&daemon, 0, None, None).await;
    assert_eq!(page["changes"], json!(collected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_as_soon_as_a_change_commits() {
    let daemon = Daemon::start(&[]);
    // A client that outwaits the daemon's 60 s maximum, so a poll that is never woken
    // shows up as a late, empty answer rather than a client timeout.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(StdDuration::from_secs(90))
        .build()
        .expect("a client");
    let url = daemon.url("/changes?after=0&wait=60");
    let asked = Instant::now();
    // Two consumers wait at once: a commit must wake every waiter, not one.
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let resp = client.get(&url).send().await.expect("an answer");
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.expect("JSON");
                (status, body, asked.elapsed())
            })
        })
        .collect();

    // Meanwhile, with no change, a 1 s long poll answers empty once its wait is over,
    // which gives the 60 s polls sent before it the time to be parked on the server.
    // Were one not parked yet when the event commits, it would find the change at
    // once: the same answer, so this cannot flake. What fails the test is a waiter
    // that a commit does not wake (it would answer empty, 60 s later).
    let started = Instant::now();
    let empty = feed(&daemon, 0, None, Some(1)).await;
    assert_eq!(empty, json!({"changes": [], "next_after": 0}));
    assert!(
        started.elapsed() >= StdDuration::from_millis(900),
        "wait=1 answered after {:?}, before its wait",
        started.elapsed()
    );
    assert!(
        polls.iter().all(|p| !p.is_finished()),
        "a 60 s poll answered with no change"
    );

    let t = now();
    let event = subscription_started("prof-cf-lp")
        .at(t - minutes(1))
        .expires(t + days(30));
    daemon.store(&event).await;

    for poll in polls {
        let (status, body, took) = poll.await.expect("the poll task");
        assert_eq!(status, 200, "{body}");
        let changes = body["changes"].as_array().cloned().unwrap_or_default();
        assert_eq!(changes.len(), 1, "{body}");
        assert_eq!(changes[0]["profile_id"], json!("prof-cf-lp"), "{body}");
        assert_eq!(
            changes[0]["profile_event_id"],
            json!(event.event_id()),
            "{body}"
        );
        assert_eq!(body["next_after"], json!(seq(&changes[0])), "{body}");
        // The behaviour is about time: a poll that is not woken answers at its 60 s
        // deadline. 30 s is far above any scheduling delay on a loaded 2-core machine
        // (the event itself was answered before we got here) and far below 60 s.
        assert!(
            took < StdDuration::from_secs(30),
            "the long poll answered after {took:?}: it was not woken by the commit"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_past_the_latest_change_waits_and_answers_empty() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-cf-lp2")
                .at(t - minutes(1))
                .expires(t + days(30)),
        )
        .await;
    let latest = seq(&changes_after(&daemon, 0).await[0]);
    let started = Instant::now();
    let empty = feed(&daemon, latest, None, Some(1)).await;
    assert_eq!(empty, json!({"changes": [], "next_after": latest}));
    assert!(
        started.elapsed() >= StdDuration::from_millis(900),
        "wait=1 answered after {:?}: it did not wait",
        started.elapsed()
    );
    // A wait with changes already past the cursor does not wait for more.
    let now_answer = feed(&daemon, 0, None, Some(60)).await;
    assert_eq!(now_answer["changes"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_survive_a_restart_and_a_crash_without_repeats_or_gaps() {
    let mut daemon = Daemon::start(&[]);
    let t = now();
    let old_events = vec![
        // Expires by the clock a moment from now: its `expired` must be reported once,
        // whether before or after a restart. (Stored first, so that its purchase is
        // still current when it commits.)
        subscription_started("prof-cf-rs-4")
            .at(t - days(1))
            .expires(t + secs(6)),
        subscription_started("prof-cf-rs-1")
            .user("user-cf-rs")
            .at(t - days(3))
            .expires(t + days(27)),
        subscription_started("prof-cf-rs-2")
            .at(t - days(2))
            .expires(t + days(28)),
        subscription_refunded("prof-cf-rs-1").at(t - days(1)),
        access_level_updated("prof-cf-rs-3", "gold", true, Some(t + days(5))).at(t - hours(5)),
    ];
    daemon.store_all(&old_events).await;
    let expired_reported = || async {
        changes_after(&daemon, 0)
            .await
            .iter()
            .any(|c| c["profile_id"] == json!("prof-cf-rs-4") && c["reason"] == json!("expired"))
    };
    assert!(
        poll_until(
            StdDuration::from_secs(20),
            StdDuration::from_millis(200),
            expired_reported
        )
        .await,
        "no expiry reported within 20 s of a 6 s expiry"
    );
    let before = changes_after(&daemon, 0).await;
    assert_eq!(before.len(), 6, "{before:?}");
    assert_strictly_increasing(&before);
    assert_eq!(as_rows(&before), table(&daemon));
    let last_before = seq(before.last().expect("a change"));

    // SIGTERM and start again: the feed answers everything at once, with no wait
    // (a warm-up that did not tell the long-poll watch would answer nothing here).
    daemon.restart();
    let after_restart = changes_after(&daemon, 0).await;
    assert_eq!(after_restart, before, "the feed changed over a restart");
    let page = feed(&daemon, 0, Some(2), None).await;
    assert_eq!(page["changes"], json!(before[..2]), "{page}");
    assert_eq!(
        feed(&daemon, last_before, None, Some(1)).await,
        json!({"changes": [], "next_after": last_before}),
        "a change was reported again after the restart"
    );

    // Old events again: duplicates, no change.
    for event in &old_events {
        let resp = daemon.webhook(&event.0, None).await;
        resp.expect(200);
        assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
    }
    assert_eq!(changes_after(&daemon, 0).await, before);

    // A new change continues the sequence.
    let new = subscription_started("prof-cf-rs-5")
        .at(t - minutes(5))
        .expires(t + days(30));
    daemon.store(&new).await;
    let fresh = changes_after(&daemon, last_before).await;
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!(fresh[0]["profile_event_id"], json!(new.event_id()));
    let mut expected = before.clone();
    expected.extend(fresh.clone());

    // kill -9 and start again: the same, from the journal.
    daemon.crash();
    daemon.start_again();
    let after_crash = changes_after(&daemon, 0).await;
    assert_eq!(after_crash, expected, "the feed changed over a crash");
    assert_eq!(
        changes_after(&daemon, last_before).await,
        fresh,
        "a cursor in the middle after a crash"
    );
    for event in old_events.iter().chain([&new]) {
        let resp = daemon.webhook(&event.0, None).await;
        assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
    }
    let last = seq(expected.last().expect("a change"));
    assert_eq!(
        feed(&daemon, last, None, Some(1)).await,
        json!({"changes": [], "next_after": last}),
        "a change was reported again after the crash"
    );
    let final_feed = changes_after(&daemon, 0).await;
    assert_eq!(final_feed, expected);
    assert_strictly_increasing(&final_feed);
    assert_eq!(
        as_rows(&final_feed),
        table(&daemon),
        "the feed skips or adds a row of the table"
    );
    let expired: Vec<&Value> = final_feed
        .iter()
        .filter(|c| c["reason"] == json!("expired"))
        .collect();
    assert_eq!(expired.len(), 1, "{final_feed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_that_is_not_a_number_is_a_400_with_a_json_error() {
    let daemon = Daemon::start(&[]);
    for path in [
        "/changes?after=abc",
        "/changes?after=1.5",
        "/changes?limit=-1",
        "/changes?wait=soon",
    ] {
        daemon.get(path).await.expect_error(400, "bad_request");
    }
    // A cursor before the beginning is the beginning.
    assert_eq!(
        feed(&daemon, -5, None, None).await,
        json!({"changes": [], "next_after": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_grant_that_does_not_undo_a_refund_reports_nothing() {
    let daemon = Daemon::start(&[]);
    let t = now();
    // The refund arrives first, the purchase it refunds (older) after it: the level
    // is never active, so the feed has nothing to say.
    daemon
        .store_all(&[
            subscription_refunded("prof-cf-late").at(t - days(1)),
            subscription_started("prof-cf-late")
                .at(t - days(5))
                .expires(t + days(25)),
        ])
        .await;
    assert!(!daemon.active("prof-cf-late", "premium").await);
    assert_eq!(
        feed(&daemon, 0, None, None).await,
        json!({"changes": [], "next_after": 0})
    );
    assert_eq!(table(&daemon), Vec::<Row>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_in_flight_answers_at_sigterm_and_does_not_hold_up_the_stop() {
    // A long shutdown timeout, so a stop that waits for the poll is unmistakable.
    let mut daemon = Daemon::start(&["--shutdown-timeout", "20"]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(StdDuration::from_secs(90))
        .build()
        .expect("a client");
    let url = daemon.url("/changes?after=0&wait=60");
    let poll = tokio::spawn(async move {
        let resp = client.get(&url).send().await?;
        let status = resp.status().as_u16();
        let body = resp.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    // Lets the poll sent before it be parked on the server (see above).
    let empty = feed(&daemon, 0, None, Some(1)).await;
    assert_eq!(empty["changes"], json!([]));
    assert!(!poll.is_finished(), "the 60 s poll answered with no change");

    let stopping = Instant::now();
    let status = daemon.stop();
    let took = stopping.elapsed();
    assert!(status.success(), "SIGTERM: {status}");
    // The behaviour is about time: a poll that holds the graceful shutdown keeps the
    // daemon up for the whole --shutdown-timeout (20 s), and every deploy restarts a
    // daemon that consumers long-poll. 10 s is far above a stop on a loaded machine.
    assert!(
        took < StdDuration::from_secs(10),
        "SIGTERM took {took:?} with a long poll in flight: the poll held up the stop"
    );
    // And the consumer got an answer (nothing new), not a dropped connection.
    let answer = poll.await.expect("the poll task");
    let (status, body) = answer.unwrap_or_else(|e| panic!("the long poll got no answer: {e}"));
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body, json!({"changes": [], "next_after": 0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_that_passes_while_the_daemon_is_down_is_reported_once_at_start() {
    let mut daemon = Daemon::start(&[]);
    let t = now();
    let ends = t + secs(6);
    daemon
        .store(
            &subscription_started("prof-cf-down")
                .at(t - days(30))
                .expires(ends),
        )
        .await;
    daemon.crash();
    // The expiry passes while nothing runs (a poll on the clock, not on the daemon).
    assert!(
        poll_until(
            StdDuration::from_secs(10),
            StdDuration::from_millis(100),
            || async { chrono::Utc::now() > ends }
        )
        .await
    );
    daemon.start_again();
    let reported = poll_until(
        StdDuration::from_secs(20),
        StdDuration::from_millis(200),
        || async { changes_after(&daemon, 0).await.len() >= 2 },
    )
    .await;
    let changes = changes_after(&daemon, 0).await;
    assert!(reported, "no expiry reported after the start: {changes:?}");
    let reasons: Vec<(&Value, &Value)> = changes
        .iter()
        .map(|c| (&c["active"], &c["reason"]))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (&json!(true), &json!("subscription_started")),
            (&json!(false), &json!("expired")),
        ]
    );
    // Once: a restart and two more ticks add nothing.
    daemon.restart();
    let last = seq(&changes[1]);
    assert_eq!(
        feed(&daemon, last, None, Some(2)).await,
        json!({"changes": [], "next_after": last})
    );
    assert_eq!(as_rows(&changes_after(&daemon, 0).await), table(&daemon));
}
