//! Answers beyond "now": time travel (`?at=`), the caching headers (`valid_until`,
//! `Cache-Control`, `ETag`/`If-None-Match`), `…/access/explain`, and the batch
//! `POST /access/lookup`. Each test stores events with chosen `event_datetime`s in the
//! real daemon and checks the HTTP answers (headers included) against what those
//! events say, and against the single lookups where an answer must equal them.

use crate::helpers::*;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// A GET with an optional `If-None-Match`: (status, headers, body text).
async fn get_raw(
    daemon: &Daemon,
    path: &str,
    if_none_match: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = daemon.client.get(daemon.url(path));
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    let resp = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("a body");
    (status, headers, text)
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header: {headers:?}"))
        .to_str()
        .expect("an ASCII header")
}

/// N of `Cache-Control: private, max-age=N`, insisting on that exact shape.
fn max_age(headers: &reqwest::header::HeaderMap) -> i64 {
    let value = header(headers, "cache-control");
    value
        .strip_prefix("private, max-age=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("Cache-Control is not `private, max-age=N`: {value:?}"))
}

/// `GET path`, insisting on 200 JSON.
async fn answer(daemon: &Daemon, path: &str) -> Value {
    let resp = daemon.get(path).await;
    resp.expect(200);
    resp.json.clone()
}

/// `?at=` in the daemon's own output shape.
fn at(t: DateTime<Utc>) -> String {
    out_time(t)
}

#[track_caller]
fn assert_premium(answer: &Value, premium: bool, when: &str) {
    assert_eq!(
        answer["premium"],
        json!(premium),
        "{when}: premium should be {premium}: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_answers_from_the_events_up_to_the_instant_asked() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let bought = t - days(10);
    let refunded = t - days(5);
    let purchase = subscription_started("prof-tt-1")
        .user("user-tt")
        .at(bought)
        .expires(t + days(20));
    daemon
        .store_all(&[
            purchase.clone(),
            subscription_refunded("prof-tt-1")
                .user("user-tt")
                .at(refunded)
                .expires(refunded),
        ])
        .await;

    let profile_at = |when: DateTime<Utc>| {
        let daemon = &daemon;
        async move {
            answer(
                daemon,
                &format!("/profiles/prof-tt-1/access?at={}", at(when)),
            )
            .await
        }
    };
    let user_at = |when: DateTime<Utc>| {
        let daemon = &daemon;
        async move { answer(daemon, &format!("/users/user-tt/access?at={}", at(when))).await }
    };

    // Before the purchase: no event yet, so no level at all.
    let before = profile_at(bought - days(1)).await;
    assert_premium(&before, false, "before the purchase");
    assert_eq!(before["access_levels"], json!({}), "{before}");
    assert_eq!(
        before["checked_at"],
        json!(at(bought - days(1))),
        "{before}"
    );
    // One microsecond before the purchase is still before it; at its instant it counts.
    let just_before = profile_at(bought - chrono::Duration::microseconds(1)).await;
    assert_premium(&just_before, false, "1 µs before the purchase");
    let at_purchase = profile_at(bought).await;
    assert_premium(&at_purchase, true, "at the purchase's event_datetime");

    // Between purchase and refund: premium, as the purchase said.
    let between = profile_at(t - days(7)).await;
    assert_premium(&between, true, "between purchase and refund");
    let level = &between["access_levels"]["premium"];
    assert_level_shape(level);
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(20))),
        "{between}"
    );
    assert_eq!(level["is_refund"], json!(false), "{between}");
    assert_eq!(level["updated_at"], json!(out_time(bought)), "{between}");
    assert_eq!(between["checked_at"], json!(at(t - days(7))), "{between}");
    assert_eq!(between["customer_user_id"], json!("user-tt"), "{between}");

    // After the refund: not premium, the level says refunded.
    let after = profile_at(t - days(1)).await;
    assert_premium(&after, false, "after the refund");
    assert_eq!(
        after["access_levels"]["premium"]["is_refund"],
        json!(true),
        "{after}"
    );
    // And now, with no `at`, the same as after the refund.
    assert_premium(&daemon.profile("prof-tt-1").await, false, "now");

    // The users route, the same instants.
    assert_premium(&user_at(bought - days(1)).await, false, "user, before");
    let user_between = user_at(t - days(7)).await;
    assert_premium(&user_between, true, "user, between");
    assert_eq!(
        user_between["access_levels"]["premium"]["profile_id"],
        json!("prof-tt-1"),
        "{user_between}"
    );
    assert_premium(&user_at(t - days(1)).await, false, "user, after");

    // Adapty's own datetime shape is accepted too (`+` escaped in a query string).
    let adapty_shape = adapty_time(t - days(7)).replace('+', "%2B");
    let same = answer(
        &daemon,
        &format!("/profiles/prof-tt-1/access?at={adapty_shape}"),
    )
    .await;
    assert_eq!(same, between);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_evaluates_expiry_at_the_instant_and_spans_a_user_s_profiles() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store_all(&[
            // One paid period long ago, with no event at its end.
            subscription_started("prof-tt-2")
                .user("user-tt-2")
                .at(t - days(40))
                .expires(t - days(10)),
            // The same user bought again on another profile two days ago.
            subscription_started("prof-tt-3")
                .user("user-tt-2")
                .at(t - days(2))
                .expires(t + days(28)),
        ])
        .await;
    let during = answer(
        &daemon,
        &format!("/profiles/prof-tt-2/access?at={}", at(t - days(20))),
    )
    .await;
    assert_premium(&during, true, "inside the paid period");
    assert_eq!(
        during["valid_until"],
        json!(out_time(t - days(10))),
        "{during}"
    );
    let lapsed = answer(
        &daemon,
        &format!("/profiles/prof-tt-2/access?at={}", at(t - days(5))),
    )
    .await;
    assert_premium(&lapsed, false, "after expires_at with no event");
    assert_eq!(
        lapsed["access_levels"]["premium"]["active"],
        json!(false),
        "{lapsed}"
    );

    let user = |when: DateTime<Utc>| {
        let daemon = &daemon;
        async move { answer(daemon, &format!("/users/user-tt-2/access?at={}", at(when))).await }
    };
    let first = user(t - days(20)).await;
    assert_premium(&first, true, "user, first period");
    assert_eq!(
        first["access_levels"]["premium"]["profile_id"],
        json!("prof-tt-2"),
        "{first}"
    );
    assert_premium(&user(t - days(5)).await, false, "user, between purchases");
    let second = user(t - days(1)).await;
    assert_premium(&second, true, "user, second purchase");
    assert_eq!(
        second["access_levels"]["premium"]["profile_id"],
        json!("prof-tt-3"),
        "{second}"
    );
    assert_eq!(
        second["profile_ids"],
        json!(["prof-tt-2", "prof-tt-3"]),
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_at_is_a_400_with_a_json_error() {
    let daemon = Daemon::start(&[]);
    daemon
        .store(&subscription_started("prof-tt-bad").user("user-tt-bad"))
        .await;
    for path in [
        "/profiles/prof-tt-bad/access?at=yesterday",
        "/profiles/prof-tt-bad/access?at=2031-13-05T09:10:11Z",
        "/profiles/prof-tt-bad/access?at=",
        "/users/user-tt-bad/access?at=2031-03-05",
        "/users/nobody/access?at=12",
    ] {
        daemon.get(path).await.expect_error(400, "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_until_and_cache_control_follow_the_next_scheduled_change() {
    let levels = format!("{LIFETIME}=premium");
    let daemon = Daemon::start(&["--product-levels", &levels]);
    let t = now();
    let soon = t + secs(40);
    daemon
        .store_all(&[
            subscription_started("prof-vu-month")
                .user("user-vu")
                .at(t - days(1))
                .expires(t + days(30)),
            subscription_started("prof-vu-soon")
                .at(t - days(1))
                .expires(soon),
            non_subscription_purchase("prof-vu-life").at(t - days(3)),
            subscription_started("prof-vu-gone")
                .at(t - days(3))
                .expires(t + days(27)),
            subscription_refunded("prof-vu-gone").at(t - days(1)),
            access_level_updated("prof-vu-later", "premium", true, Some(t + days(30)))
                .prop("starts_at", json!(adapty_time(t + hours(1))))
                .at(t - minutes(5)),
        ])
        .await;

    // An active subscription: valid until its expiry; cached for at most 60 s.
    let requested = chrono::Utc::now();
    let (status, headers, body) = get_raw(&daemon, "/profiles/prof-vu-month/access", None).await;
    assert_eq!(status, 200, "{body}");
    let month: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        month["valid_until"],
        json!(out_time(t + days(30))),
        "{month}"
    );
    let n = max_age(&headers);
    assert!((0..=60).contains(&n), "max-age {n} for a 30-day expiry");

    // Expiring in 40 s: max-age no later than the expiry.
    let (status, headers, body) = get_raw(&daemon, "/profiles/prof-vu-soon/access", None).await;
    assert_eq!(status, 200, "{body}");
    let soon_answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(soon_answer["valid_until"], json!(out_time(soon)), "{body}");
    let n = max_age(&headers);
    let left = (soon - requested).num_seconds();
    assert!(
        (0..=left.min(60)).contains(&n),
        "max-age {n} with {left} s left to valid_until"
    );

    // Nothing scheduled: lifetime, refunded, unknown.
    for profile in ["prof-vu-life", "prof-vu-gone", "prof-vu-nobody"] {
        let (status, headers, body) =
            get_raw(&daemon, &format!("/profiles/{profile}/access"), None).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert!(
            answer
                .as_object()
                .is_some_and(|o| o.contains_key("valid_until")),
            "no valid_until: {answer}"
        );
        assert_eq!(answer["valid_until"], json!(null), "{profile}: {answer}");
        let n = max_age(&headers);
        assert!((0..=60).contains(&n), "{profile}: max-age {n}");
    }
    assert_premium(&daemon.profile("prof-vu-life").await, true, "lifetime");

    // Not started yet: valid until it starts.
    let later = daemon.profile("prof-vu-later").await;
    assert_premium(&later, false, "before starts_at");
    assert_eq!(
        later["valid_until"],
        json!(out_time(t + hours(1))),
        "{later}"
    );

    // The users route carries the same.
    let (status, headers, body) = get_raw(&daemon, "/users/user-vu/access", None).await;
    assert_eq!(status, 200, "{body}");
    let user: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(user["valid_until"], json!(out_time(t + days(30))), "{user}");
    assert!((0..=60).contains(&max_age(&headers)), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etag_changes_with_the_answer_and_if_none_match_gives_a_bodiless_304() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-etag")
                .user("user-etag")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;

    for path in ["/profiles/prof-etag/access", "/users/user-etag/access"] {
        let (status, first_headers, first_body) = get_raw(&daemon, path, None).await;
        assert_eq!(status, 200, "{path}: {first_body}");
        let tag = header(&first_headers, "etag").to_owned();
        assert!(
            tag.len() > 2 && tag.starts_with('"') && tag.ends_with('"'),
            "{path}: not a strong ETag: {tag}"
        );
        // A second read (a later checked_at) with nothing changed: the same tag.
        let (_, second_headers, second_body) = get_raw(&daemon, path, None).await;
        assert_eq!(header(&second_headers, "etag"), tag, "{path}");
        let first: Value = serde_json::from_str(&first_body).expect("JSON");
        let second: Value = serde_json::from_str(&second_body).expect("JSON");
        assert_eq!(without_clock(first), without_clock(second), "{path}");

        // Sent back: 304, no body, the tag and the caching header again.
        let (status, headers, body) = get_raw(&daemon, path, Some(&tag)).await;
        assert_eq!(status, 304, "{path}: {body}");
        assert_eq!(body, "", "{path}: a 304 has no body");
        assert_eq!(header(&headers, "etag"), tag, "{path}");
        assert!((0..=60).contains(&max_age(&headers)), "{path}");
        // Among others, and with a tag that is not it.
        let list = format!("\"nope\", {tag}");
        assert_eq!(get_raw(&daemon, path, Some(&list)).await.0, 304, "{path}");
        let (status, _, body) = get_raw(&daemon, path, Some("\"nope\"")).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    let profile_tag = header(
        &get_raw(&daemon, "/profiles/prof-etag/access", None).await.1,
        "etag",
    )
    .to_owned();
    let user_tag = header(
        &get_raw(&daemon, "/users/user-etag/access", None).await.1,
        "etag",
    )
    .to_owned();

    // A change to the answer (will_renew) changes the tag; the old one gets a full 200.
    daemon
        .store(&subscription_renewal_cancelled("prof-etag").at(t - hours(1)))
        .await;
    for (path, old) in [
        ("/profiles/prof-etag/access", &profile_tag),
        ("/users/user-etag/access", &user_tag),
    ] {
        let (status, headers, body) = get_raw(&daemon, path, Some(old)).await;
        assert_eq!(status, 200, "{path}: the old ETag still matched");
        assert_ne!(header(&headers, "etag"), old, "{path}");
        let answer: Value = serde_json::from_str(&body).expect("a full JSON body");
        assert_eq!(
            answer["access_levels"]["premium"]["will_renew"],
            json!(false),
            "{answer}"
        );
    }
    // Two profiles with the same state have different tags (the id is part of it).
    daemon
        .store(
            &subscription_started("prof-etag-2")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;
    let a = get_raw(&daemon, "/profiles/prof-etag-2/access", None)
        .await
        .1;
    let b = get_raw(&daemon, "/profiles/prof-etag-3/access", None)
        .await
        .1;
    assert_ne!(header(&a, "etag"), header(&b, "etag"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_each_level_s_events_in_fold_order_with_their_effects() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let started = subscription_started("prof-ex")
        .at(t - days(10))
        .expires(t + days(20));
    let cancelled = subscription_renewal_cancelled("prof-ex").at(t - days(5));
    let renewed = subscription_renewed("prof-ex")
        .at(t - days(3))
        .expires(t + days(50));
    let noop = subscription_renewal_reactivated("prof-ex").at(t - days(2));
    let gold = access_level_updated("prof-ex", "gold", true, Some(t + days(5))).at(t - days(4));
    let annotation = Ev::new("trial_active", "prof-ex").at(t - days(6));
    let unknown = Ev::new("made_up_event", "prof-ex").at(t - days(1));
    // Arrival order differs from event order: explain follows event order.
    daemon
        .store_all(&[
            renewed.clone(),
            unknown.clone(),
            started.clone(),
            gold.clone(),
            noop.clone(),
            cancelled.clone(),
            annotation.clone(),
        ])
        .await;

    let explained = answer(&daemon, "/profiles/prof-ex/access/explain").await;
    assert_eq!(explained["profile_id"], json!("prof-ex"), "{explained}");
    let premium = &explained["access_levels"]["premium"];
    let events = premium["events"].as_array().expect("premium events");
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["profile_event_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        ids,
        vec![
            started.event_id(),
            cancelled.event_id(),
            renewed.event_id(),
            noop.event_id()
        ],
        "fold order: {explained}"
    );
    let changed = |n: usize| -> Vec<String> {
        events[n]["changed"]
            .as_array()
            .unwrap_or_else(|| panic!("`changed` is a list: {}", events[n]))
            .iter()
            .map(|c| c.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        changed(0),
        vec![format!("created: active until {}", out_time(t + days(20)))],
        "{explained}"
    );
    assert_eq!(
        changed(1),
        vec!["will_renew: true → false".to_owned()],
        "{explained}"
    );
    let renewal = changed(2);
    assert!(
        renewal.contains(&"will_renew: false → true".to_owned())
            && renewal.contains(&format!(
                "expires_at: {} → {}",
                out_time(t + days(20)),
                out_time(t + days(50))
            )),
        "the renewal's effect: {renewal:?}"
    );
    assert_eq!(changed(3), Vec::<String>::new(), "a no-op changes nothing");
    let first = &events[0];
    assert_eq!(
        first["event_type"],
        json!("subscription_started"),
        "{first}"
    );
    assert_eq!(
        first["canonical_type"],
        json!("subscription_started"),
        "{first}"
    );
    assert_eq!(
        first["event_datetime"],
        json!(out_time(t - days(10))),
        "{first}"
    );
    assert_eq!(first["vendor_product_id"], json!(MONTHLY), "{first}");
    assert!(first["received_at"].is_string(), "{first}");
    assert_eq!(
        premium["expires_at_set_by"],
        json!(renewed.event_id()),
        "{explained}"
    );
    // The state is what the access route answers for the level.
    let now_answer = daemon.profile("prof-ex").await;
    assert_eq!(
        premium["state"], now_answer["access_levels"]["premium"],
        "explain's state vs the access route"
    );

    // Another level, from Adapty's snapshot.
    let gold_level = &explained["access_levels"]["gold"];
    assert_eq!(
        gold_level["events"]
            .as_array()
            .map(|e| e.iter().map(|e| e["profile_event_id"].clone()).collect()),
        Some(vec![json!(gold.event_id())]),
        "{explained}"
    );
    assert_eq!(
        gold_level["expires_at_set_by"],
        json!(gold.event_id()),
        "{explained}"
    );
    assert_eq!(gold_level["state"]["active"], json!(true), "{explained}");
    assert_eq!(
        explained["access_levels"].as_object().map(|o| o.len()),
        Some(2),
        "{explained}"
    );

    // Events that touch no level, in arrival order.
    let ignored = explained["ignored_events"]
        .as_array()
        .expect("ignored_events");
    let ignored: Vec<(&str, &str, &Value)> = ignored
        .iter()
        .map(|e| {
            (
                e["profile_event_id"].as_str().unwrap_or_default(),
                e["event_type"].as_str().unwrap_or_default(),
                &e["canonical_type"],
            )
        })
        .collect();
    let unknown_id = unknown.event_id();
    let annotation_id = annotation.event_id();
    assert_eq!(
        ignored,
        vec![
            (unknown_id.as_str(), "made_up_event", &json!(null)),
            (
                annotation_id.as_str(),
                "trial_active",
                &json!("trial_active")
            ),
        ],
        "{explained}"
    );

    // An unknown profile: nothing to explain, not an error.
    let nobody = answer(&daemon, "/profiles/prof-ex-nobody/access/explain").await;
    assert_eq!(nobody["access_levels"], json!({}), "{nobody}");
    assert_eq!(nobody["ignored_events"], json!([]), "{nobody}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lookup_answers_in_order_as_the_single_lookups_do() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store_all(&[
            subscription_started("prof-bl-1")
                .user("user-bl-1")
                .at(t - days(2))
                .expires(t + days(28)),
            subscription_started("prof-bl-2")
                .user("user-bl-1")
                .at(t - days(9))
                .expires(t + days(21)),
            subscription_refunded("prof-bl-2").at(t - days(1)),
            access_level_updated("prof-bl-3", "gold", true, Some(t + days(5)))
                .user("user-bl-3")
                .at(t - hours(3)),
        ])
        .await;

    let profile_ids = ["prof-bl-3", "prof-bl-unknown", "prof-bl-1", "prof-bl-2"];
    let user_ids = ["user-bl-unknown", "user-bl-1", "user-bl-3"];
    let resp = daemon
        .client
        .post(daemon.url("/access/lookup"))
        .json(&json!({"profile_ids": profile_ids, "customer_user_ids": user_ids}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status().as_u16(), 200);
    let batch: Value = resp.json().await.expect("JSON");
    let checked_at = batch["checked_at"].as_str().expect("checked_at").to_owned();

    let profiles = batch["profiles"].as_array().expect("profiles");
    assert_eq!(profiles.len(), profile_ids.len(), "{batch}");
    for (got, id) in profiles.iter().zip(profile_ids) {
        assert_eq!(got["profile_id"], json!(id), "order: {batch}");
        assert_eq!(got["checked_at"], json!(checked_at), "one instant: {batch}");
        let single = daemon.profile(id).await;
        assert_eq!(
            without_clock(got.clone()),
            without_clock(single),
            "batch vs single for {id}"
        );
    }
    let users = batch["users"].as_array().expect("users");
    assert_eq!(users.len(), user_ids.len(), "{batch}");
    for (got, id) in users.iter().zip(user_ids) {
        assert_eq!(got["customer_user_id"], json!(id), "order: {batch}");
        assert_eq!(got["checked_at"], json!(checked_at), "one instant: {batch}");
        let single = daemon.user(id).await;
        assert_eq!(
            without_clock(got.clone()),
            without_clock(single),
            "batch vs single for {id}"
        );
    }
    assert_premium(&profiles[0], true, "prof-bl-3");
    assert_premium(&profiles[1], false, "an unknown profile");
    assert_eq!(profiles[1]["access_levels"], json!({}), "{batch}");
    assert_premium(&profiles[3], false, "a refunded profile");
    assert_premium(&users[0], false, "an unknown user");
    assert_eq!(users[0]["profile_ids"], json!([]), "{batch}");
    assert_premium(&users[1], true, "user-bl-1");

    // With an access level, as the single lookup with `?access_level=`.
    let resp = daemon
        .client
        .post(daemon.url("/access/lookup"))
        .json(&json!({"profile_ids": ["prof-bl-3", "prof-bl-1"], "access_level": "gold"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status().as_u16(), 200);
    let filtered: Value = resp.json().await.expect("JSON");
    for (n, id) in ["prof-bl-3", "prof-bl-1"].into_iter().enumerate() {
        let single = answer(&daemon, &format!("/profiles/{id}/access?access_level=gold")).await;
        assert_eq!(
            without_clock(filtered["profiles"][n].clone()),
            without_clock(single),
            "{filtered}"
        );
    }
    assert_premium(&filtered["profiles"][1], false, "prof-bl-1 has no gold");
    assert_eq!(filtered["users"], json!([]), "{filtered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lookup_refuses_over_1000_ids_and_bad_bodies_with_json_errors() {
    let daemon = Daemon::start(&[]);
    let post = |body: Vec<u8>, content_type: Option<&'static str>| {
        let daemon = &daemon;
        async move {
            let mut request = daemon.client.post(daemon.url("/access/lookup")).body(body);
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let resp = request.send().await.expect("an answer");
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let text = resp.text().await.expect("a body");
            (status, content_type, text)
        }
    };
    let ids = |n: usize, prefix: &str| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    };
    let json_body = |profiles: usize, users: usize| {
        serde_json::to_vec(&json!({
            "profile_ids": ids(profiles, "p"),
            "customer_user_ids": ids(users, "u"),
        }))
        .expect("JSON")
    };

    // 1,000 ids in all is the limit: answered.
    let (status, _, text) = post(json_body(600, 400), Some("application/json")).await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(answer["profiles"].as_array().map(Vec::len), Some(600));
    assert_eq!(answer["users"].as_array().map(Vec::len), Some(400));

    let refused = |(status, content_type, text): (u16, String, String), what: &str| {
        assert_eq!(status, 400, "{what}: {text}");
        assert!(
            content_type.starts_with("application/json"),
            "{what}: not a JSON error ({content_type}): {text}"
        );
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{what}: not a JSON error: {text}"));
        assert_eq!(body["error"], json!("bad_request"), "{what}: {text}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {text}"
        );
    };
    // One more, on either side: refused.
    refused(
        post(json_body(1001, 0), Some("application/json")).await,
        "1001 profiles",
    );
    refused(
        post(json_body(600, 401), Some("application/json")).await,
        "1001 ids",
    );
    refused(
        post(json_body(0, 1001), Some("application/json")).await,
        "1001 users",
    );
    // Not JSON, not the expected shape, not declared as JSON.
    refused(
        post(b"profile_ids=a,b".to_vec(), Some("application/json")).await,
        "not JSON",
    );
    refused(
        post(
            b"{\"profile_ids\": \"a\"}".to_vec(),
            Some("application/json"),
        )
        .await,
        "a string for a list",
    );
    refused(
        post(b"[\"a\"]".to_vec(), Some("application/json")).await,
        "a list for an object",
    );
    refused(
        post(b"{\"profile_ids\": [\"a\"]}".to_vec(), Some("text/plain")).await,
        "not declared as JSON",
    );
    refused(post(Vec::new(), None).await, "an empty body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_uses_the_weak_comparison_http_requires() {
    // A compressing proxy (nginx with gzip, say) turns `"x"` into `W/"x"`, and clients
    // send that back; RFC 9110 §13.1.2: If-None-Match compares weakly.
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-etag-weak")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;
    let path = "/profiles/prof-etag-weak/access";
    let tag = header(&get_raw(&daemon, path, None).await.1, "etag").to_owned();
    assert_eq!(get_raw(&daemon, path, Some("*")).await.0, 304);
    let weak = format!("W/{tag}");
    let (status, _, body) = get_raw(&daemon, path, Some(&weak)).await;
    assert_eq!(status, 304, "If-None-Match: {weak} got {status}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_token_guards_time_travel_explain_lookup_and_the_feed() {
    let daemon = Daemon::start(&["--read-token", "rt-history"]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-rt")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;
    let at = at(t - hours(1));
    let gets = [
        format!("/profiles/prof-rt/access?at={at}"),
        "/profiles/prof-rt/access/explain".to_owned(),
        "/changes?after=0".to_owned(),
    ];
    for path in &gets {
        daemon.get(path).await.expect_error(401, "unauthorized");
        daemon
            .get_with(path, Some("Bearer wrong"))
            .await
            .expect_error(401, "unauthorized");
        daemon
            .get_with(path, Some("Bearer rt-history"))
            .await
            .expect(200);
    }
    let lookup = |token: Option<&'static str>| {
        let daemon = &daemon;
        async move {
            let mut request = daemon
                .client
                .post(daemon.url("/access/lookup"))
                .json(&json!({"profile_ids": ["prof-rt"]}));
            if let Some(token) = token {
                request = request.header("authorization", token);
            }
            let resp = request.send().await.expect("an answer");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("a body"))
        }
    };
    let (status, body) = lookup(None).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("prof-rt"), "{body}");
    let (status, body) = lookup(Some("Bearer rt-history")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"premium\":true"), "{body}");
}
