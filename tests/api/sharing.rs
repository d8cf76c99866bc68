//! Shared paid access (issue #18): under Adapty's default "Sharing paid access between
//! user accounts", an `access_level_updated` with the top-level field
//! `profiles_sharing_access_level` links its profile with every listed profile for that
//! level (in either documented shape: addressed to the holder listing the new profile,
//! or addressed to the new profile listing the others). Linked profiles form a group
//! per level, and every member answers with the state folded from all the group's
//! events; an inactive snapshot without the list ends a member's link. Each test
//! drives the real daemon over HTTP (and reads the database, or runs the CLI, where
//! the stored state is the point). On PostgreSQL too, but the test of the SQLite file.

use crate::helpers::*;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Duration as StdDuration;

/// The top-level field of a sharing declaration.
const SHARING: &str = "profiles_sharing_access_level";

/// An `access_level_updated` on `profile`, active until `expires_at`, declaring that
/// `with` (`(profile_id, customer_user_id)`) share `level` with it.
fn declaration(
    profile: &str,
    level: &str,
    expires_at: DateTime<Utc>,
    with: &[(&str, Option<&str>)],
) -> Ev {
    let list: Vec<Value> = with
        .iter()
        .map(|(profile_id, user)| json!({"profile_id": profile_id, "customer_user_id": user}))
        .collect();
    access_level_updated(profile, level, true, Some(expires_at)).top(SHARING, json!(list))
}

/// A `premium` declaration.
fn claim(profile: &str, expires_at: DateTime<Utc>, with: &[(&str, Option<&str>)]) -> Ev {
    declaration(profile, "premium", expires_at, with)
}

/// A level's `shared_from`, insisting the key is there (null or a profile id).
#[track_caller]
fn shared_from(level: &Value) -> Value {
    let object = level
        .as_object()
        .unwrap_or_else(|| panic!("a level is an object: {level}"));
    let value = object
        .get("shared_from")
        .unwrap_or_else(|| panic!("a level lacks `shared_from`: {level}"))
        .clone();
    assert!(
        value.is_null() || value.is_string(),
        "`shared_from` is a profile id or null: {level}"
    );
    value
}

/// A level without its `shared_from`: what the members of a group have in common.
fn sans_shared_from(level: &Value) -> Value {
    let mut level = level.clone();
    if let Some(object) = level.as_object_mut() {
        object.remove("shared_from");
    }
    level
}

/// `GET path`, insisting on 200 JSON.
async fn answer(daemon: &Daemon, path: &str) -> Value {
    let resp = daemon.get(path).await;
    resp.expect(200);
    resp.json.clone()
}

/// A profile's answer as of `at`.
async fn profile_at(daemon: &Daemon, profile_id: &str, at: DateTime<Utc>) -> Value {
    answer(
        daemon,
        &format!("/profiles/{profile_id}/access?at={}", out_time(at)),
    )
    .await
}

/// Each member's `level` now, asserting every member lists it and all of them answer
/// alike but for `shared_from` (which each must carry). In `members`' order.
async fn members_agree(daemon: &Daemon, level: &str, members: &[&str]) -> Vec<Value> {
    let mut levels = Vec::new();
    for member in members {
        let answer = daemon.profile(member).await;
        let got = answer["access_levels"][level].clone();
        assert!(got.is_object(), "{member} has no `{level}` level: {answer}");
        levels.push(got);
    }
    for (member, got) in members.iter().zip(&levels).skip(1) {
        assert_eq!(
            sans_shared_from(got),
            sans_shared_from(&levels[0]),
            "{member} and {} (one sharing group) answer `{level}` differently",
            members[0]
        );
    }
    for got in &levels {
        assert_level_shape(got);
        shared_from(got);
    }
    levels
}

/// Every change after `after`.
async fn changes_after(daemon: &Daemon, after: i64) -> Vec<Value> {
    let resp = daemon
        .get(&format!("/changes?after={after}&limit=1000"))
        .await;
    resp.expect(200);
    resp.json["changes"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no `changes` array: {resp}"))
}

/// `POST /access/lookup`, insisting on 200 JSON.
async fn lookup(daemon: &Daemon, body: &Value) -> Value {
    let resp = daemon
        .client
        .post(daemon.url("/access/lookup"))
        .json(body)
        .send()
        .await
        .expect("an answer");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("a body");
    assert_eq!(status, 200, "POST /access/lookup: {text}");
    serde_json::from_str(&text).expect("JSON")
}

/// Runs `entitled ARGS --db DB` to its end: (status, stdout, stderr).
fn cli(args: &[&str], db: &str) -> (std::process::ExitStatus, String, String) {
    let out = entitled()
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .expect("the binary runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- holder buys, B claims --------------------------------------------------------

/// Shape 1: the declaration is addressed to the holder and lists the new profile,
/// which never gets an event of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_addressed_to_the_holder_shares_the_level_with_the_listed_profile() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let (a, b) = ("prof-sh1-a", "prof-sh1-b");
    daemon
        .store_all(&[
            subscription_started(a)
                .user("user-sh1-a")
                .at(t - days(10))
                .expires(t + days(20)),
            claim(a, t + days(20), &[(b, Some("user-sh1-b"))])
                .user("user-sh1-a")
                .at(t - days(9)),
        ])
        .await;

    let levels = members_agree(&daemon, "premium", &[a, b]).await;
    let level = &levels[1];
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(20))),
        "{level}"
    );
    assert_eq!(level["updated_at"], json!(out_time(t - days(9))), "{level}");
    assert_eq!(shared_from(&levels[0]), json!(null), "A's own: {levels:?}");
    assert_eq!(shared_from(&levels[1]), json!(a), "B's from A: {levels:?}");

    let answer_b = daemon.profile(b).await;
    assert_eq!(answer_b["premium"], json!(true), "{answer_b}");
    assert_eq!(
        answer_b["customer_user_id"],
        json!("user-sh1-b"),
        "B's customer_user_id comes from the list entry: {answer_b}"
    );
    assert_eq!(daemon.profile(a).await["premium"], json!(true));

    // B's own user id answers premium, though nothing was ever addressed to B.
    let user = daemon.user("user-sh1-b").await;
    assert_eq!(user["premium"], json!(true), "{user}");
    assert_eq!(user["profile_ids"], json!([b]), "{user}");
    let level = &user["access_levels"]["premium"];
    assert_eq!(level["profile_id"], json!(b), "{user}");
    assert_eq!(shared_from(level), json!(a), "{user}");
}

/// Shape 2: the declaration is addressed to the new profile and lists the others
/// sharing the level (here the holder and a third profile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_addressed_to_the_new_profile_shares_the_level_with_every_listed_profile() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let (a, b, c) = ("prof-sh2-a", "prof-sh2-b", "prof-sh2-c");
    daemon
        .store_all(&[
            subscription_started(a)
                .user("user-sh2-a")
                .at(t - days(10))
                .expires(t + days(20)),
            claim(
                b,
                t + days(20),
                &[(a, Some("user-sh2-a")), (c, Some("user-sh2-c"))],
            )
            .user("user-sh2-b")
            .at(t - days(9)),
        ])
        .await;

    // All three fold the same events: the holder's purchase and B's claim.
    let levels = members_agree(&daemon, "premium", &[a, b, c]).await;
    let level = &levels[0];
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(20))),
        "{level}"
    );
    assert_eq!(
        level["updated_at"],
        json!(out_time(t - days(9))),
        "the holder's level folds B's claim too: {level}"
    );
    // C has no event at all: its state is someone else's.
    let from_c = shared_from(&levels[2]);
    assert!(
        from_c == json!(a) || from_c == json!(b),
        "C's state comes from A or B: {levels:?}"
    );
    for (profile, user) in [(a, "user-sh2-a"), (b, "user-sh2-b"), (c, "user-sh2-c")] {
        let answer = daemon.user(user).await;
        assert_eq!(answer["premium"], json!(true), "{answer}");
        assert_eq!(
            answer["access_levels"]["premium"]["profile_id"],
            json!(profile),
            "{answer}"
        );
    }

    // Once the holder renews, every member answers with its renewal, from A.
    daemon
        .store(
            &subscription_renewed(a)
                .user("user-sh2-a")
                .at(t - days(1))
                .expires(t + days(50)),
        )
        .await;
    let levels = members_agree(&daemon, "premium", &[a, b, c]).await;
    assert_eq!(
        levels[1]["expires_at"],
        json!(out_time(t + days(50))),
        "{levels:?}"
    );
    assert_eq!(shared_from(&levels[0]), json!(null), "{levels:?}");
    assert_eq!(shared_from(&levels[1]), json!(a), "{levels:?}");
    assert_eq!(shared_from(&levels[2]), json!(a), "{levels:?}");
}

// ---- the holder's lifecycle ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_of_the_holder_extends_every_member_past_the_claim_s_expiry() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let claimed_until = t - days(5);
    let renewed_until = t + days(25);
    // (case, shape 1 (addressed to A) or 2 (addressed to B), lifecycle, snapshot)
    let cases = [
        ("lifecycle renewal, claim on A", 1, true, false),
        ("snapshot on A only, claim on B", 2, false, true),
        ("both at one instant, claim on A", 1, true, true),
        ("lifecycle renewal, claim on B", 2, true, false),
    ];
    for (n, (what, shape, lifecycle, snapshot)) in cases.into_iter().enumerate() {
        let a = format!("prof-shren-{n}-a");
        let b = format!("prof-shren-{n}-b");
        let mut events = vec![subscription_started(&a)
            .at(t - days(35))
            .expires(claimed_until)];
        events.push(if shape == 1 {
            claim(&a, claimed_until, &[(&b, None)]).at(t - days(20))
        } else {
            claim(&b, claimed_until, &[(&a, None)]).at(t - days(20))
        });
        if lifecycle {
            events.push(
                subscription_renewed(&a)
                    .at(claimed_until)
                    .expires(renewed_until),
            );
        }
        if snapshot {
            // Adapty's snapshot of the renewal, on the holder only, without the list.
            events.push(
                access_level_updated(&a, "premium", true, Some(renewed_until)).at(claimed_until),
            );
        }
        daemon.store_all(&events).await;

        let levels = members_agree(&daemon, "premium", &[&a, &b]).await;
        let level = &levels[1];
        assert_eq!(level["active"], json!(true), "{what}: B: {level}");
        assert_eq!(
            level["expires_at"],
            json!(out_time(renewed_until)),
            "{what}: B has A's new expires_at: {level}"
        );
        assert_eq!(shared_from(&levels[0]), json!(null), "{what}: {levels:?}");
        assert_eq!(shared_from(&levels[1]), json!(a), "{what}: {levels:?}");
        assert_eq!(daemon.profile(&b).await["premium"], json!(true), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_or_expiry_of_the_holder_ends_every_member_at_the_same_instant() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let ended = t - hours(1);
    for (n, (what, shape)) in [
        ("refund, claim on A", 1),
        ("refund, claim on B", 2),
        ("expiry, claim on A", 1),
        ("expiry, claim on B", 2),
    ]
    .into_iter()
    .enumerate()
    {
        let refund = what.starts_with("refund");
        let a = format!("prof-shend-{n}-a");
        let b = format!("prof-shend-{n}-b");
        let sharing = if shape == 1 {
            claim(&a, t + days(20), &[(&b, None)])
        } else {
            claim(&b, t + days(20), &[(&a, None)])
        };
        let end = if refund {
            subscription_refunded(&a).at(ended).expires(ended)
        } else {
            subscription_expired(&a).at(ended).expires(ended)
        };
        daemon
            .store_all(&[
                subscription_started(&a)
                    .at(t - days(10))
                    .expires(t + days(20)),
                sharing.at(t - days(9)),
            ])
            .await;
        assert!(daemon.active(&b, "premium").await, "{what}: before the end");
        daemon.store(&end).await;

        let levels = members_agree(&daemon, "premium", &[&a, &b]).await;
        let level = &levels[1];
        assert_eq!(level["active"], json!(false), "{what}: B: {level}");
        assert_eq!(level["is_refund"], json!(refund), "{what}: B: {level}");
        assert_eq!(
            level["updated_at"],
            json!(out_time(ended)),
            "{what}: {level}"
        );
        assert_eq!(shared_from(&levels[1]), json!(a), "{what}: {levels:?}");
        assert_eq!(daemon.profile(&b).await["premium"], json!(false), "{what}");

        // The same instant for both: premium a microsecond before, not at it.
        for profile in [&a, &b] {
            let before =
                profile_at(&daemon, profile, ended - chrono::Duration::microseconds(1)).await;
            assert_eq!(
                before["premium"],
                json!(true),
                "{what}: {profile} before: {before}"
            );
            let at = profile_at(&daemon, profile, ended).await;
            assert_eq!(
                at["premium"],
                json!(false),
                "{what}: {profile} at the end: {at}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_claims_makes_one_group_that_answers_alike() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let (a, b, c) = ("prof-shch-a", "prof-shch-b", "prof-shch-c");
    daemon
        .store_all(&[
            subscription_started(a)
                .at(t - days(10))
                .expires(t + days(20)),
            claim(a, t + days(20), &[(b, None)]).at(t - days(9)),
            // B's later claim lists C: A, B and C share the level.
            claim(b, t + days(20), &[(c, Some("user-shch-c"))]).at(t - days(8)),
        ])
        .await;
    let levels = members_agree(&daemon, "premium", &[a, b, c]).await;
    assert_eq!(levels[2]["active"], json!(true), "{levels:?}");
    assert!(
        shared_from(&levels[2]).is_string(),
        "C has no event: its state is shared: {levels:?}"
    );
    assert_eq!(daemon.user("user-shch-c").await["premium"], json!(true));

    // A renews: all three, from A.
    daemon
        .store(
            &subscription_renewed(a)
                .at(t - days(1))
                .expires(t + days(50)),
        )
        .await;
    let levels = members_agree(&daemon, "premium", &[a, b, c]).await;
    assert_eq!(
        levels[2]["expires_at"],
        json!(out_time(t + days(50))),
        "C has A's renewal: {levels:?}"
    );
    assert_eq!(shared_from(&levels[0]), json!(null), "{levels:?}");
    assert_eq!(shared_from(&levels[1]), json!(a), "{levels:?}");
    assert_eq!(shared_from(&levels[2]), json!(a), "{levels:?}");

    // A is refunded: all three lose access.
    daemon
        .store(
            &subscription_refunded(a)
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    let levels = members_agree(&daemon, "premium", &[a, b, c]).await;
    assert_eq!(levels[2]["active"], json!(false), "{levels:?}");
    assert_eq!(levels[2]["is_refund"], json!(true), "{levels:?}");
    for profile in [a, b, c] {
        assert_eq!(
            daemon.profile(profile).await["premium"],
            json!(false),
            "{profile}"
        );
    }
    assert_eq!(daemon.user("user-shch-c").await["premium"], json!(false));
}

// ---- transfer, and the end of a link ------------------------------------------------

/// Adapty's "Transfer access to new user": the old profile gets an inactive snapshot,
/// the new one an active one, `profiles_sharing_access_level` null (or absent, or
/// empty). Nothing links them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_mode_moves_access_and_never_gives_it_back_to_the_old_profile() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let moved = t - days(5);
    let variants: [(&str, Option<Value>); 3] = [
        ("null", Some(Value::Null)),
        ("absent", None),
        ("empty", Some(json!([]))),
    ];
    let mut n = 0;
    for (list, field) in &variants {
        for off_first in [true, false] {
            n += 1;
            let what = format!("list {list}, A's snapshot first: {off_first}");
            let a = format!("prof-shtr-{n}-a");
            let b = format!("prof-shtr-{n}-b");
            let with_field = |event: Ev| match field {
                Some(value) => event.top(SHARING, value.clone()),
                None => event.drop_top(SHARING),
            };
            let off = with_field(
                access_level_updated(&a, "premium", false, Some(moved))
                    .prop("will_renew", json!(false))
                    .at(moved),
            );
            let on =
                with_field(access_level_updated(&b, "premium", true, Some(t + days(20))).at(moved));
            daemon
                .store(
                    &subscription_started(&a)
                        .at(t - days(10))
                        .expires(t + days(20)),
                )
                .await;
            if off_first {
                daemon.store_all(&[off, on]).await;
            } else {
                daemon.store_all(&[on, off]).await;
            }
            assert!(
                !daemon.active(&a, "premium").await,
                "{what}: A after the move"
            );
            assert!(
                daemon.active(&b, "premium").await,
                "{what}: B after the move"
            );

            // Later events fire on B: they grant A nothing. And a renewal of A from
            // before the transfer, arriving late, does not give A access back.
            daemon
                .store_all(&[
                    subscription_renewed(&b)
                        .at(t - days(1))
                        .expires(t + days(50)),
                    subscription_renewed(&a)
                        .at(t - days(7))
                        .expires(t + days(23)),
                ])
                .await;
            let answer_a = daemon.profile(&a).await;
            assert_eq!(answer_a["premium"], json!(false), "{what}: {answer_a}");
            let level_a = &answer_a["access_levels"]["premium"];
            assert_eq!(level_a["active"], json!(false), "{what}: {answer_a}");
            assert_eq!(shared_from(level_a), json!(null), "{what}: {answer_a}");
            let level_b = daemon.level(&b, "premium").await;
            assert_eq!(level_b["active"], json!(true), "{what}: {level_b}");
            assert_eq!(
                level_b["expires_at"],
                json!(out_time(t + days(50))),
                "{what}: {level_b}"
            );
            assert_eq!(
                shared_from(&level_b),
                json!(null),
                "{what}: B's own: {level_b}"
            );
        }
    }
}

/// A member that gets an inactive snapshot without the list leaves the group: that
/// event is folded into the group first, then neither side's later events touch the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_snapshot_without_the_list_ends_the_link_both_ways() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let (a, b) = ("prof-shleave-a", "prof-shleave-b");
    let left = t - days(5);
    daemon
        .store_all(&[
            subscription_started(a)
                .at(t - days(10))
                .expires(t + days(20)),
            claim(a, t + days(20), &[(b, None)]).at(t - days(9)),
        ])
        .await;
    let level_b = daemon.level(b, "premium").await;
    assert_eq!(level_b["active"], json!(true), "linked: {level_b}");
    assert_eq!(shared_from(&level_b), json!(a), "{level_b}");

    // The purchase moves to B (transfer after sharing): A's inactive snapshot, then
    // B's active one, neither with the list.
    daemon
        .store_all(&[
            access_level_updated(a, "premium", false, Some(left))
                .prop("will_renew", json!(false))
                .at(left),
            access_level_updated(b, "premium", true, Some(t + days(20))).at(left + secs(1)),
        ])
        .await;
    assert!(!daemon.active(a, "premium").await, "A left with its access");
    let level_b = daemon.level(b, "premium").await;
    assert_eq!(level_b["active"], json!(true), "{level_b}");
    assert_eq!(shared_from(&level_b), json!(null), "B's own now: {level_b}");

    // B renews: A gets nothing. A renewal of A from before it left, arriving late,
    // gives A nothing back and does not touch B.
    daemon
        .store_all(&[
            subscription_renewed(b)
                .at(t - days(1))
                .expires(t + days(50)),
            subscription_renewed(a)
                .at(t - days(7))
                .expires(t + days(23)),
        ])
        .await;
    assert!(!daemon.active(a, "premium").await, "B's renewal reached A");
    let level_b = daemon.level(b, "premium").await;
    assert_eq!(
        level_b["expires_at"],
        json!(out_time(t + days(50))),
        "{level_b}"
    );

    // A buys again on its own: B's level is not cut to A's shorter period, and A's
    // refund does not end B.
    daemon
        .store(
            &subscription_started(a)
                .at(t - hours(2))
                .expires(t + days(30)),
        )
        .await;
    let level_a = daemon.level(a, "premium").await;
    assert_eq!(level_a["active"], json!(true), "{level_a}");
    assert_eq!(
        level_a["expires_at"],
        json!(out_time(t + days(30))),
        "{level_a}"
    );
    assert_eq!(shared_from(&level_a), json!(null), "{level_a}");
    let level_b = daemon.level(b, "premium").await;
    assert_eq!(
        level_b["expires_at"],
        json!(out_time(t + days(50))),
        "A's purchase after it left reached B: {level_b}"
    );
    daemon
        .store(
            &subscription_refunded(a)
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    assert!(!daemon.active(a, "premium").await);
    let level_b = daemon.level(b, "premium").await;
    assert_eq!(
        level_b["active"],
        json!(true),
        "A's refund after it left ended B: {level_b}"
    );
    assert_eq!(level_b["is_refund"], json!(false), "{level_b}");
    assert_eq!(shared_from(&level_b), json!(null), "{level_b}");
}

// ---- B's own purchases --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_s_own_purchase_of_another_level_stays_its_own() {
    let yearly_gold = format!("{YEARLY}=gold");
    let daemon = Daemon::start(&["--product-levels", &yearly_gold]);
    let t = now();
    let (a, b) = ("prof-shown-a", "prof-shown-b");
    daemon
        .store_all(&[
            subscription_started(a)
                .at(t - days(10))
                .expires(t + days(20)),
            claim(a, t + days(20), &[(b, None)]).at(t - days(9)),
            subscription_started(b)
                .product(YEARLY)
                .at(t - days(3))
                .expires(t + days(362)),
        ])
        .await;
    let answer_b = daemon.profile(b).await;
    let premium = &answer_b["access_levels"]["premium"];
    assert_eq!(premium["active"], json!(true), "{answer_b}");
    assert_eq!(shared_from(premium), json!(a), "{answer_b}");
    let gold = &answer_b["access_levels"]["gold"];
    assert_eq!(gold["active"], json!(true), "{answer_b}");
    assert_eq!(shared_from(gold), json!(null), "{answer_b}");

    // A's refund ends the shared level only.
    daemon
        .store(
            &subscription_refunded(a)
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    let answer_b = daemon.profile(b).await;
    let premium = &answer_b["access_levels"]["premium"];
    assert_eq!(premium["active"], json!(false), "{answer_b}");
    assert_eq!(premium["is_refund"], json!(true), "{answer_b}");
    assert_eq!(shared_from(premium), json!(a), "{answer_b}");
    let gold = &answer_b["access_levels"]["gold"];
    assert_eq!(gold["active"], json!(true), "{answer_b}");
    assert_eq!(
        gold["expires_at"],
        json!(out_time(t + days(362))),
        "{answer_b}"
    );
    assert_eq!(gold["vendor_product_id"], json!(YEARLY), "{answer_b}");
    assert_eq!(shared_from(gold), json!(null), "{answer_b}");
    assert_eq!(
        answer_b["premium"],
        json!(true),
        "B still has gold: {answer_b}"
    );

    // B's other level is not A's: groups are per level.
    let answer_a = daemon.profile(a).await;
    let levels: Vec<&String> = answer_a["access_levels"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(levels, vec!["premium"], "{answer_a}");
    assert_eq!(answer_a["premium"], json!(false), "{answer_a}");
}

/// B's purchase of the shared level from its own store account joins the group's
/// fold: the product rule decides (another product's shorter grant does not shorten
/// the level; another product's refund does not end it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_s_own_purchase_of_the_same_level_joins_the_group_under_the_product_rule() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let (a, b) = ("prof-shsame-a", "prof-shsame-b");
    daemon
        .store_all(&[
            subscription_started(a)
                .product(MONTHLY)
                .at(t - days(10))
                .expires(t + days(20)),
            claim(a, t + days(20), &[(b, None)]).at(t - days(9)),
            subscription_started(b)
                .product(YEARLY)
                .at(t - days(3))
                .expires(t + days(362)),
            // A's monthly renews, ending long before B's yearly ...
            subscription_renewed(a)
                .product(MONTHLY)
                .at(t - days(2))
                .expires(t + days(50)),
        ])
        .await;
    let levels = members_agree(&daemon, "premium", &[a, b]).await;
    for level in &levels {
        assert_eq!(level["active"], json!(true), "{levels:?}");
        assert_eq!(level["vendor_product_id"], json!(YEARLY), "{levels:?}");
        assert_eq!(
            level["expires_at"],
            json!(out_time(t + days(362))),
            "a shorter grant of another product shortened the level: {levels:?}"
        );
    }

    // ... and is refunded: the level, held by B's yearly, goes on for both.
    daemon
        .store(
            &subscription_refunded(a)
                .product(MONTHLY)
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    let levels = members_agree(&daemon, "premium", &[a, b]).await;
    for level in &levels {
        assert_eq!(level["active"], json!(true), "{levels:?}");
        assert_eq!(level["is_refund"], json!(false), "{levels:?}");
        assert_eq!(level["vendor_product_id"], json!(YEARLY), "{levels:?}");
        assert_eq!(
            level["expires_at"],
            json!(out_time(t + days(362))),
            "{levels:?}"
        );
    }
    assert_eq!(daemon.profile(a).await["premium"], json!(true));
    assert_eq!(daemon.profile(b).await["premium"], json!(true));
}

// ---- sandbox ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_ignore_makes_a_sandbox_claim_link_and_grant_nothing() {
    let daemon = Daemon::start(&["--sandbox", "ignore"]);
    let t = now();
    let bought = |profile: &str| {
        subscription_started(profile)
            .at(t - days(10))
            .expires(t + days(20))
    };
    // Shape 1 and shape 2 from the sandbox, and a production claim beside them (so
    // that "nothing" below is not only a daemon that ignores every claim).
    let (a1, b1) = ("prof-shsb-1a", "prof-shsb-1b");
    let (a2, b2) = ("prof-shsb-2a", "prof-shsb-2b");
    let (a3, b3) = ("prof-shsb-3a", "prof-shsb-3b");
    daemon
        .store_all(&[
            bought(a1),
            claim(a1, t + days(20), &[(b1, Some("user-shsb-1b"))])
                .sandbox()
                .at(t - days(9)),
            bought(a2),
            claim(b2, t + days(20), &[(a2, None)])
                .sandbox()
                .at(t - days(9)),
            bought(a3),
            claim(a3, t + days(20), &[(b3, None)]).at(t - days(9)),
        ])
        .await;
    assert!(daemon.active(b3, "premium").await, "the production claim");

    // The holders renew in production: still nothing for the sandbox claimants.
    for holder in [a1, a2, a3] {
        daemon
            .store(
                &subscription_renewed(holder)
                    .at(t - days(1))
                    .expires(t + days(50)),
            )
            .await;
    }
    for profile in [b1, b2] {
        let answer = daemon.profile(profile).await;
        assert_eq!(answer["premium"], json!(false), "{profile}: {answer}");
        assert_eq!(answer["access_levels"], json!({}), "{profile}: {answer}");
    }
    assert_eq!(daemon.user("user-shsb-1b").await["premium"], json!(false));
    // The holders' own levels are their own, untouched by the sandbox claims.
    for holder in [a1, a2] {
        let level = daemon.level(holder, "premium").await;
        assert_eq!(level["active"], json!(true), "{holder}: {level}");
        assert_eq!(
            level["environment"],
            json!("Production"),
            "{holder}: {level}"
        );
        assert_eq!(
            level["expires_at"],
            json!(out_time(t + days(50))),
            "{level}"
        );
        assert_eq!(shared_from(&level), json!(null), "{holder}: {level}");
    }
    let level = daemon.level(b3, "premium").await;
    assert_eq!(
        level["expires_at"],
        json!(out_time(t + days(50))),
        "{level}"
    );
    assert_eq!(shared_from(&level), json!(a3), "{level}");

    // A holder's refund ends only the production sharer; the sandbox ones stay empty.
    for holder in [a1, a2, a3] {
        daemon
            .store(&subscription_refunded(holder).at(t - hours(1)))
            .await;
    }
    assert!(!daemon.active(b3, "premium").await);
    for profile in [b1, b2] {
        assert_eq!(daemon.profile(profile).await["access_levels"], json!({}));
    }
}

// ---- read paths ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_path_agrees_on_a_shared_level() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let (a, b, loner) = ("prof-shrp-a", "prof-shrp-b", "prof-shrp-loner");
    let claimed_until = t - days(5);
    let renewed_until = t + days(25);
    daemon
        .store_all(&[
            subscription_started(a)
                .user("user-shrp-a")
                .at(t - days(35))
                .expires(claimed_until),
            claim(a, claimed_until, &[(b, Some("user-shrp-b"))])
                .user("user-shrp-a")
                .at(t - days(20)),
            subscription_renewed(a)
                .user("user-shrp-a")
                .at(claimed_until)
                .expires(renewed_until),
            subscription_started(loner)
                .user("user-shrp-loner")
                .at(t - days(1))
                .expires(t + days(29)),
        ])
        .await;

    // The profile route.
    let answer_b = daemon.profile(b).await;
    assert_eq!(answer_b["premium"], json!(true), "{answer_b}");
    let level_b = &answer_b["access_levels"]["premium"];
    assert_level_shape(level_b);
    assert_eq!(
        level_b["expires_at"],
        json!(out_time(renewed_until)),
        "{answer_b}"
    );
    assert_eq!(shared_from(level_b), json!(a), "{answer_b}");
    assert_eq!(
        answer_b["valid_until"],
        json!(out_time(renewed_until)),
        "{answer_b}"
    );
    assert_eq!(
        answer_b["customer_user_id"],
        json!("user-shrp-b"),
        "{answer_b}"
    );
    // Levels that are their own say so: the holder's, and one with no sharing at all.
    for own in [a, loner] {
        let level = daemon.level(own, "premium").await;
        assert_eq!(level["active"], json!(true), "{own}: {level}");
        assert_eq!(shared_from(&level), json!(null), "{own}: {level}");
    }

    // The users route, by B's id from the list entry, and by A's.
    let user_b = daemon.user("user-shrp-b").await;
    assert_eq!(user_b["premium"], json!(true), "{user_b}");
    assert_eq!(user_b["profile_ids"], json!([b]), "{user_b}");
    let level = &user_b["access_levels"]["premium"];
    assert_eq!(level["profile_id"], json!(b), "{user_b}");
    assert_eq!(shared_from(level), json!(a), "{user_b}");
    assert_eq!(
        level["expires_at"],
        json!(out_time(renewed_until)),
        "{user_b}"
    );
    let user_a = daemon.user("user-shrp-a").await;
    assert_eq!(
        user_a["access_levels"]["premium"]["profile_id"],
        json!(a),
        "{user_a}"
    );
    assert_eq!(
        shared_from(&user_a["access_levels"]["premium"]),
        json!(null),
        "{user_a}"
    );

    // The batch answers as the single lookups do.
    let profile_ids = [b, "prof-shrp-unknown", a, loner];
    let user_ids = ["user-shrp-b", "user-shrp-a", "user-shrp-unknown"];
    let batch = lookup(
        &daemon,
        &json!({"profile_ids": profile_ids, "customer_user_ids": user_ids}),
    )
    .await;
    for (n, id) in profile_ids.into_iter().enumerate() {
        let single = daemon.profile(id).await;
        assert_eq!(
            without_clock(batch["profiles"][n].clone()),
            without_clock(single),
            "batch vs single for {id}: {batch}"
        );
    }
    for (n, id) in user_ids.into_iter().enumerate() {
        let single = daemon.user(id).await;
        assert_eq!(
            without_clock(batch["users"][n].clone()),
            without_clock(single),
            "batch vs single for {id}: {batch}"
        );
    }
    assert_eq!(
        shared_from(&batch["profiles"][0]["access_levels"]["premium"]),
        json!(a)
    );

    // Time travel: before the claim B had nothing; after it, the claim's period; after
    // the renewal, the renewal's.
    let before_claim = profile_at(&daemon, b, t - days(25)).await;
    assert_eq!(
        before_claim["premium"],
        json!(false),
        "before the claim: {before_claim}"
    );
    let claimed = profile_at(&daemon, b, t - days(10)).await;
    assert_eq!(
        claimed["premium"],
        json!(true),
        "after the claim: {claimed}"
    );
    let level = &claimed["access_levels"]["premium"];
    assert_eq!(
        level["expires_at"],
        json!(out_time(claimed_until)),
        "{claimed}"
    );
    assert_eq!(shared_from(level), json!(a), "{claimed}");
    let renewed = profile_at(&daemon, b, t - days(1)).await;
    assert_eq!(
        renewed["premium"],
        json!(true),
        "after the renewal: {renewed}"
    );
    let level = &renewed["access_levels"]["premium"];
    assert_eq!(
        level["expires_at"],
        json!(out_time(renewed_until)),
        "{renewed}"
    );
    assert_eq!(shared_from(level), json!(a), "{renewed}");
    let user_then = answer(
        &daemon,
        &format!("/users/user-shrp-b/access?at={}", out_time(t - days(10))),
    )
    .await;
    assert_eq!(user_then["premium"], json!(true), "{user_then}");
    assert_eq!(
        user_then["access_levels"]["premium"]["expires_at"],
        json!(out_time(claimed_until)),
        "{user_then}"
    );

    // An event of A changes B's answer, and so its ETag (the index updated B too).
    let path = format!("/profiles/{b}/access");
    let etag = |resp: &reqwest::Response| {
        resp.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no ETag: {:?}", resp.headers()))
            .to_owned()
    };
    let first = daemon
        .client
        .get(daemon.url(&path))
        .send()
        .await
        .expect("an answer");
    let tag = etag(&first);
    daemon
        .store(
            &subscription_renewal_cancelled(a)
                .user("user-shrp-a")
                .at(t - hours(1)),
        )
        .await;
    let second = daemon
        .client
        .get(daemon.url(&path))
        .header("if-none-match", &tag)
        .send()
        .await
        .expect("an answer");
    assert_eq!(second.status().as_u16(), 200, "B's answer did not change");
    assert_ne!(etag(&second), tag);
    let body: Value = second.json().await.expect("JSON");
    assert_eq!(
        body["access_levels"]["premium"]["will_renew"],
        json!(false),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_of_a_member_names_the_profile_and_events_its_state_comes_from() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let (a, b) = ("prof-shex-a", "prof-shex-b");
    let started = subscription_started(a)
        .at(t - days(35))
        .expires(t - days(5));
    let sharing = claim(a, t - days(5), &[(b, None)]).at(t - days(20));
    let renewed = subscription_renewed(a)
        .at(t - days(5))
        .expires(t + days(25));
    // Arrival order is not fold order.
    daemon
        .store_all(&[renewed.clone(), sharing.clone(), started.clone()])
        .await;

    let explained = answer(&daemon, &format!("/profiles/{b}/access/explain")).await;
    assert_eq!(explained["profile_id"], json!(b), "{explained}");
    let premium = &explained["access_levels"]["premium"];
    assert!(
        premium.is_object(),
        "B's explain has no premium: {explained}"
    );
    assert_eq!(premium["shared_from"], json!(a), "{explained}");
    let events = premium["events"].as_array().expect("premium events");
    let listed: Vec<(Value, Value)> = events
        .iter()
        .map(|e| (e["profile_event_id"].clone(), e["profile_id"].clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (json!(started.event_id()), json!(a)),
            (json!(sharing.event_id()), json!(a)),
            (json!(renewed.event_id()), json!(a)),
        ],
        "the group's events in fold order, each with its profile: {explained}"
    );
    assert_eq!(
        premium["expires_at_set_by"],
        json!(renewed.event_id()),
        "{explained}"
    );
    assert_eq!(
        premium["state"],
        daemon.level(b, "premium").await,
        "explain's state vs the access route"
    );
    assert_eq!(explained["ignored_events"], json!([]), "{explained}");

    // The holder's explain: the same events, its own.
    let explained = answer(&daemon, &format!("/profiles/{a}/access/explain")).await;
    let premium = &explained["access_levels"]["premium"];
    assert_eq!(premium["shared_from"], json!(null), "{explained}");
    let owners: Vec<&Value> = premium["events"]
        .as_array()
        .expect("premium events")
        .iter()
        .map(|e| &e["profile_id"])
        .collect();
    assert_eq!(owners, vec![&json!(a); 3], "{explained}");
}

// ---- the change feed ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_reports_each_member_s_flip_with_the_holder_s_event() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let (a, b) = ("prof-shcf-a", "prof-shcf-b");
    let bought = subscription_started(a)
        .user("user-shcf-a")
        .at(t - days(10))
        .expires(t + days(20));
    let sharing = claim(a, t + days(20), &[(b, Some("user-shcf-b"))])
        .user("user-shcf-a")
        .at(t - days(9));
    daemon.store_all(&[bought.clone(), sharing.clone()]).await;

    let changes = changes_after(&daemon, 0).await;
    assert_eq!(changes.len(), 2, "A's purchase, B's gain: {changes:?}");
    let own = &changes[0];
    assert_eq!(own["profile_id"], json!(a), "{own}");
    assert_eq!(own["active"], json!(true), "{own}");
    assert_eq!(own["reason"], json!("subscription_started"), "{own}");
    assert_eq!(own["profile_event_id"], json!(bought.event_id()), "{own}");
    assert_eq!(shared_from(own), json!(null), "{own}");
    let gained = &changes[1];
    assert_eq!(gained["profile_id"], json!(b), "{gained}");
    assert_eq!(gained["customer_user_id"], json!("user-shcf-b"), "{gained}");
    assert_eq!(gained["access_level_id"], json!("premium"), "{gained}");
    assert_eq!(gained["active"], json!(true), "{gained}");
    assert_eq!(
        gained["reason"],
        json!("shared:access_level_updated"),
        "{gained}"
    );
    assert_eq!(
        gained["profile_event_id"],
        json!(sharing.event_id()),
        "{gained}"
    );
    assert_eq!(
        gained["expires_at"],
        json!(out_time(t + days(20))),
        "{gained}"
    );
    assert_eq!(shared_from(gained), json!(a), "{gained}");
    let after = gained["seq"].as_i64().expect("seq");

    // A's refund: A's own row, and B's row naming A's event.
    let refund = subscription_refunded(a)
        .user("user-shcf-a")
        .at(t - hours(1))
        .expires(t - hours(1));
    daemon.store(&refund).await;
    let mut lost = changes_after(&daemon, after).await;
    assert_eq!(lost.len(), 2, "one refund, two members: {lost:?}");
    lost.sort_by_key(|c| c["profile_id"].as_str().unwrap_or_default().to_owned());
    let (lost_a, lost_b) = (&lost[0], &lost[1]);
    assert_eq!(lost_a["profile_id"], json!(a), "{lost_a}");
    assert_eq!(lost_a["active"], json!(false), "{lost_a}");
    assert_eq!(lost_a["reason"], json!("subscription_refunded"), "{lost_a}");
    assert_eq!(
        lost_a["profile_event_id"],
        json!(refund.event_id()),
        "{lost_a}"
    );
    assert_eq!(shared_from(lost_a), json!(null), "{lost_a}");
    assert_eq!(lost_b["profile_id"], json!(b), "{lost_b}");
    assert_eq!(lost_b["customer_user_id"], json!("user-shcf-b"), "{lost_b}");
    assert_eq!(lost_b["access_level_id"], json!("premium"), "{lost_b}");
    assert_eq!(lost_b["active"], json!(false), "{lost_b}");
    assert_eq!(
        lost_b["reason"],
        json!("shared:subscription_refunded"),
        "{lost_b}"
    );
    assert_eq!(
        lost_b["profile_event_id"],
        json!(refund.event_id()),
        "{lost_b}"
    );
    assert_eq!(shared_from(lost_b), json!(a), "{lost_b}");

    // Sent again: nothing more.
    let resp = daemon.webhook(&refund.0, None).await;
    assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
    let all = changes_after(&daemon, 0).await;
    assert_eq!(all.len(), 4, "{all:?}");

    // The table says the same, `shared_from` included.
    let sql = "SELECT seq, profile_id, active, reason, profile_event_id, shared_from \
               FROM access_changes ORDER BY seq";
    type Row = (i64, String, bool, String, Option<String>, Option<String>);
    let table: Vec<Row> = daemon
        .rows(sql, &[])
        .into_iter()
        .map(|r| {
            let text = |v: &Value| v.as_str().map(str::to_owned);
            (
                r[0].as_i64().unwrap_or_else(|| panic!("{sql}: {r:?}")),
                text(&r[1]).unwrap_or_else(|| panic!("{sql}: {r:?}")),
                truthy(&r[2]),
                text(&r[3]).unwrap_or_else(|| panic!("{sql}: {r:?}")),
                text(&r[4]),
                text(&r[5]),
            )
        })
        .collect();
    let feed: Vec<Row> = all
        .iter()
        .map(|c| {
            (
                c["seq"].as_i64().expect("seq"),
                c["profile_id"].as_str().expect("profile_id").to_owned(),
                c["active"].as_bool().expect("active"),
                c["reason"].as_str().expect("reason").to_owned(),
                c["profile_event_id"].as_str().map(str::to_owned),
                c["shared_from"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(feed, table, "the feed and the table differ");
}

sqlite_only! {
// ---- the file -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_file_shows_who_shares_with_whom() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let (a, b, loner) = ("prof-shsq-a", "prof-shsq-b", "prof-shsq-loner");
    let sharing = claim(a, t + days(20), &[(b, Some("user-shsq-b"))])
        .user("user-shsq-a")
        .at(t - days(9));
    daemon
        .store_all(&[
            subscription_started(a)
                .user("user-shsq-a")
                .at(t - days(10))
                .expires(t + days(20)),
            sharing.clone(),
            subscription_started(loner)
                .at(t - days(1))
                .expires(t + days(29)),
        ])
        .await;
    assert!(daemon.active(b, "premium").await, "B shares A's premium");

    let conn = daemon.sqlite();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 4, "the schema version");

    let query = |sql: &str| -> Vec<Vec<rusqlite::types::Value>> {
        let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let columns = stmt.column_count();
        stmt.query_map([], |r| {
            (0..columns)
                .map(|i| r.get::<_, rusqlite::types::Value>(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .map(|r| r.expect("a row"))
        .collect()
    };
    use rusqlite::types::Value as Sql;
    let text = |s: &str| Sql::Text(s.to_owned());

    // entitlements: B's row names A; A and B share a group; the loner has none.
    let rows = query(
        "SELECT profile_id, shared_from, sharing_group FROM entitlements \
         WHERE access_level_id = 'premium' ORDER BY profile_id",
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    let (row_a, row_b, row_loner) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(row_a[0], text(a), "{rows:?}");
    assert_eq!(row_a[1], Sql::Null, "A's own: {rows:?}");
    assert_ne!(row_a[2], Sql::Null, "A is in a group: {rows:?}");
    assert_eq!(row_b[0], text(b), "{rows:?}");
    assert_eq!(row_b[1], text(a), "B's from A: {rows:?}");
    assert_eq!(row_b[2], row_a[2], "one group: {rows:?}");
    assert_eq!(row_loner[0], text(loner), "{rows:?}");
    assert_eq!(row_loner[1..], [Sql::Null, Sql::Null], "alone: {rows:?}");

    // The view a person reads at the prompt.
    let rows = query(
        "SELECT profile_id, customer_user_id, shared_from FROM active_entitlements \
         WHERE access_level_id = 'premium' ORDER BY profile_id",
    );
    assert_eq!(
        rows,
        vec![
            vec![text(a), text("user-shsq-a"), Sql::Null],
            vec![text(b), text("user-shsq-b"), text(a)],
            vec![text(loner), Sql::Null, Sql::Null],
        ]
    );

    // The declared link, both ways, with the event that declared it.
    let rows = query(
        "SELECT access_level_id, profile_id, shared_with, profile_event_id FROM sharing_links \
         ORDER BY profile_id, shared_with",
    );
    assert_eq!(
        rows,
        vec![
            vec![text("premium"), text(a), text(b), text(&sharing.event_id())],
            vec![text("premium"), text(b), text(a), text(&sharing.event_id())],
        ]
    );

    // The feed's table names where a shared change came from.
    let rows = query("SELECT profile_id, shared_from FROM access_changes ORDER BY seq");
    assert_eq!(
        rows,
        vec![
            vec![text(a), Sql::Null],
            vec![text(b), text(a)],
            vec![text(loner), Sql::Null],
        ]
    );
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_sharing_events_reports_nothing_to_change() {
    let mut daemon = Daemon::start(&[]);
    let t = now();
    let bought = |profile: &str| {
        subscription_started(profile)
            .at(t - days(10))
            .expires(t + days(20))
    };
    let p = |name: &str| format!("prof-shrb-{name}");
    let (a1, b1, c1) = (p("a1"), p("b1"), p("c1"));
    let (a2, b2) = (p("a2"), p("b2"));
    let (a3, b3) = (p("a3"), p("b3"));
    let (a4, b4) = (p("a4"), p("b4"));
    daemon
        .store_all(&[
            // A chain, renewed.
            bought(&a1),
            claim(&a1, t + days(20), &[(&b1, Some("user-shrb-b1"))]).at(t - days(9)),
            claim(&b1, t + days(20), &[(&c1, None)]).at(t - days(8)),
            subscription_renewed(&a1)
                .at(t - days(1))
                .expires(t + days(50)),
            // Shape 2, refunded.
            bought(&a2),
            claim(&b2, t + days(20), &[(&a2, None)]).at(t - days(9)),
            subscription_refunded(&a2).at(t - hours(2)),
            // A link that ended (the holder left), then B renewed.
            bought(&a3),
            claim(&a3, t + days(20), &[(&b3, None)]).at(t - days(9)),
            access_level_updated(&a3, "premium", false, Some(t - days(5)))
                .prop("will_renew", json!(false))
                .at(t - days(5)),
            access_level_updated(&b3, "premium", true, Some(t + days(20)))
                .at(t - days(5) + secs(1)),
            subscription_renewed(&b3)
                .at(t - days(1))
                .expires(t + days(50)),
            // B's own purchase of the same level inside a group.
            bought(&a4),
            claim(&a4, t + days(20), &[(&b4, None)]).at(t - days(9)),
            subscription_started(&b4)
                .product(YEARLY)
                .at(t - days(3))
                .expires(t + days(362)),
        ])
        .await;
    // The file holds shared state (else the check below proves nothing).
    let level = daemon.level(&c1, "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(shared_from(&level), json!(a1), "{level}");

    let profiles = [&a1, &b1, &c1, &a2, &b2, &a3, &b3, &a4, &b4];
    let mut before = Vec::new();
    for profile in profiles {
        before.push(without_clock(daemon.profile(profile).await));
    }
    let user_before = without_clock(daemon.user("user-shrb-b1").await);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let changes_before = daemon.count("SELECT count(*) FROM access_changes");

    let (status, stdout, stderr) = cli(&["rebuild", "--check"], &daemon.db_arg());
    assert!(
        status.success(),
        "rebuild --check: {status}\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("matches"), "{stdout}\n{stderr}");
    let (status, stdout, stderr) = cli(&["rebuild"], &daemon.db_arg());
    assert!(status.success(), "rebuild: {status}\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("0 changed, 0 added, 0 removed"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        daemon.count("SELECT count(*) FROM access_changes"),
        changes_before,
        "the rebuild reported flips"
    );

    // A daemon on the rebuilt file answers as before.
    daemon.start_again();
    for (profile, was) in profiles.into_iter().zip(before) {
        assert_eq!(
            without_clock(daemon.profile(profile).await),
            was,
            "{profile} after the rebuild"
        );
    }
    assert_eq!(
        without_clock(daemon.user("user-shrb-b1").await),
        user_before
    );
}

// ---- order and duplicates -----------------------------------------------------------

/// A holder, a claim on it (shape 1), a claim by a third profile listing both
/// (shape 2), a fourth profile that joins and leaves, a renewal and a renewal-cancel,
/// for profiles `{prefix}a` … `{prefix}d`.
fn sharing_scenario(prefix: &str, t: DateTime<Utc>) -> Vec<Ev> {
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|x| format!("{prefix}{x}"));
    let user_b = format!("{prefix}user-b");
    vec![
        subscription_started(&a)
            .at(t - days(35))
            .expires(t - days(5)),
        claim(&a, t - days(5), &[(&b, Some(&user_b))]).at(t - days(20)),
        claim(&c, t - days(5), &[(&a, None), (&b, Some(&user_b))]).at(t - days(15)),
        claim(&d, t - days(5), &[(&a, None)]).at(t - days(12)),
        access_level_updated(&d, "premium", false, Some(t - days(8)))
            .prop("will_renew", json!(false))
            .at(t - days(8)),
        subscription_renewed(&a)
            .at(t - days(5))
            .expires(t + days(25)),
        subscription_renewal_cancelled(&a).at(t - days(2)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_arrival_order_and_any_duplicates_of_a_sharing_scenario_give_the_same_answers() {
    let daemon = Daemon::start(&[]);
    let t = now();
    // In order, reversed, and four shuffles; each on its own profiles.
    let arrange = |events: Vec<Ev>, n: usize| -> Vec<Ev> {
        match n {
            0 => events,
            1 => events.into_iter().rev().collect(),
            seed => shuffled(&events, seed as u64),
        }
    };
    let mut answers: Vec<(usize, Vec<Value>)> = Vec::new();
    for n in 0..6 {
        let prefix = format!("prof-shperm-{n}-");
        let events = arrange(sharing_scenario(&prefix, t), n);
        for (i, event) in events.iter().enumerate() {
            daemon.store(event).await;
            // Retries in the middle: an earlier event again.
            if (i + n) % 2 == 1 {
                let again = &events[i / 2];
                let resp = daemon.webhook(&again.0, None).await;
                resp.expect(200);
                assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
            }
        }
        // And everything once more, backwards.
        for event in events.iter().rev() {
            let resp = daemon.webhook(&event.0, None).await;
            resp.expect(200);
            assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
        }
        // Each answer, with this order's ids made the same for all orders.
        let normalize = |answer: Value| -> Value {
            serde_json::from_str(
                &without_clock(answer)
                    .to_string()
                    .replace(&prefix, "prof-shperm-N-"),
            )
            .expect("JSON")
        };
        let mut got = Vec::new();
        for x in ["a", "b", "c", "d"] {
            got.push(normalize(daemon.profile(&format!("{prefix}{x}")).await));
        }
        got.push(normalize(daemon.user(&format!("{prefix}user-b")).await));
        answers.push((n, got));
    }

    // What every order must answer: A, B and C alike, from A's renewal, not renewing;
    // D left before it.
    let (_, first) = &answers[0];
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|x| format!("prof-shperm-N-{x}"));
    for (n, answer) in first[..3].iter().enumerate() {
        let level = &answer["access_levels"]["premium"];
        assert_eq!(answer["premium"], json!(true), "{answer}");
        assert_eq!(
            level["expires_at"],
            json!(out_time(t + days(25))),
            "{answer}"
        );
        assert_eq!(level["will_renew"], json!(false), "{answer}");
        assert_eq!(
            level["updated_at"],
            json!(out_time(t - days(2))),
            "{answer}"
        );
        let from = if n == 0 { json!(null) } else { json!(a) };
        assert_eq!(shared_from(level), from, "{answer}");
    }
    assert_eq!(
        sans_shared_from(&first[1]["access_levels"]["premium"]),
        sans_shared_from(&first[2]["access_levels"]["premium"]),
        "{b} and {c}"
    );
    assert_eq!(first[3]["premium"], json!(false), "{d} left: {}", first[3]);
    assert_eq!(first[4]["premium"], json!(true), "B's user: {}", first[4]);
    for (n, got) in &answers[1..] {
        for (which, (answer, expected)) in got.iter().zip(first).enumerate() {
            assert_eq!(
                answer, expected,
                "order {n} answers otherwise than order 0 (answer {which} of a, b, c, d, B's user)"
            );
        }
    }
}

// ---- the bound on a group ------------------------------------------------------------

/// Whether a warning line of the log speaks of a sharing group.
fn warned_of_a_group(logs: &str) -> bool {
    logs.lines()
        .any(|line| line.contains("WARN") && line.contains("sharing group"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_past_100_profiles_refuses_further_links_with_a_warning() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let members = |holder: &str, n: usize| -> Vec<String> {
        (1..=n).map(|i| format!("{holder}-m{i}")).collect()
    };
    let premium_count = |batch: &Value| {
        batch["profiles"]
            .as_array()
            .expect("profiles")
            .iter()
            .filter(|p| p["premium"] == json!(true))
            .count()
    };

    // 100 profiles in all: allowed, every one premium, no warning.
    let full = "prof-shcap-full";
    let others = members(full, 99);
    let with: Vec<(&str, Option<&str>)> = others.iter().map(|m| (m.as_str(), None)).collect();
    daemon
        .store_all(&[
            subscription_started(full)
                .at(t - days(10))
                .expires(t + days(20)),
            claim(full, t + days(20), &with).at(t - days(9)),
        ])
        .await;
    let mut ids = vec![full.to_owned()];
    ids.extend(others);
    let batch = lookup(&daemon, &json!({"profile_ids": ids})).await;
    assert_eq!(premium_count(&batch), 100, "a group of 100 is allowed");
    assert!(
        !warned_of_a_group(&daemon.logs()),
        "a warning for a group of 100: {}",
        daemon.logs()
    );

    // 101: refused past the bound, with a log line; the holder keeps its own access.
    let over = "prof-shcap-over";
    let others = members(over, 100);
    let with: Vec<(&str, Option<&str>)> = others.iter().map(|m| (m.as_str(), None)).collect();
    daemon
        .store_all(&[
            subscription_started(over)
                .at(t - days(10))
                .expires(t + days(20)),
            claim(over, t + days(20), &with).at(t - days(9)),
        ])
        .await;
    let warned = poll_until(
        StdDuration::from_secs(5),
        StdDuration::from_millis(100),
        || async { warned_of_a_group(&daemon.logs()) },
    )
    .await;
    assert!(warned, "no `sharing group` warning: {}", daemon.logs());
    let mut ids = vec![over.to_owned()];
    ids.extend(others);
    let batch = lookup(&daemon, &json!({"profile_ids": ids})).await;
    let count = premium_count(&batch);
    assert!(
        count <= 100,
        "{count} profiles share one level past the bound"
    );
    assert_eq!(batch["profiles"][0]["premium"], json!(true), "the holder");
}
