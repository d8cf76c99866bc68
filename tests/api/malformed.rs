//! Group 8: refusals, lenient parsing, oversized bodies, unknown routes, bad flags.

use crate::helpers::*;
use serde_json::{json, Value};

/// A body from `event` with the field at `path` set to `value`.
fn with(event: &Ev, path: &[&str], value: Value) -> Value {
    let mut body = event.0.clone();
    let mut at = &mut body;
    for key in &path[..path.len() - 1] {
        at = &mut at[*key];
    }
    at[path[path.len() - 1]] = value;
    body
}

/// A body from `event` without the field, at the top level and in event_properties.
fn without(event: &Ev, key: &str) -> Value {
    event.clone().drop_top(key).drop_prop(key).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_400_with_a_code_and_store_nothing() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let started = subscription_started("prof-bad-1")
        .at(t - days(1))
        .expires(t + days(29));
    let alu =
        access_level_updated("prof-bad-1", "premium", true, Some(t + days(29))).at(t - days(1));

    let raw: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"this is not json".to_vec(), "invalid_json"),
        (
            "truncated JSON",
            br#"{"profile_id": "p", "event_type": "#.to_vec(),
            "invalid_json",
        ),
        ("empty body", Vec::new(), "invalid_json"),
        ("not UTF-8", vec![0xff, 0xfe, b'{', b'}'], "invalid_json"),
        ("an array", b"[1, 2, 3]".to_vec(), "not_an_object"),
        (
            "a string",
            br#""subscription_started""#.to_vec(),
            "not_an_object",
        ),
        ("a number", b"42".to_vec(), "not_an_object"),
        ("null", b"null".to_vec(), "not_an_object"),
    ];
    for (what, body, code) in raw {
        let resp = daemon.webhook_raw(body, None).await;
        assert_eq!(resp.status, 400, "{what}: {resp}");
        assert_eq!(resp.json["error"], json!(code), "{what}: {resp}");
        resp.expect_error(400, code);
    }

    let shaped: Vec<(&str, Value, &str)> = vec![
        (
            "no profile_id",
            without(&started, "profile_id"),
            "missing_field",
        ),
        (
            "no event_type",
            without(&started, "event_type"),
            "missing_field",
        ),
        (
            "no event_datetime",
            without(&started, "event_datetime"),
            "missing_field",
        ),
        (
            "null profile_id",
            with(
                &started.clone().prop("profile_id", Value::Null),
                &["profile_id"],
                Value::Null,
            ),
            "missing_field",
        ),
        (
            "numeric profile_id",
            with(&started, &["profile_id"], json!(5)),
            "invalid_field",
        ),
        (
            "numeric event_type",
            with(&started, &["event_type"], json!(7)),
            "invalid_field",
        ),
        (
            "numeric subscription_expires_at",
            with(
                &started,
                &["event_properties", "subscription_expires_at"],
                json!(12),
            ),
            "invalid_field",
        ),
        (
            "unparseable subscription_expires_at",
            with(
                &started,
                &["event_properties", "subscription_expires_at"],
                json!("next month"),
            ),
            "invalid_field",
        ),
        (
            "unparseable event_datetime",
            with(&started, &["event_datetime"], json!("yesterday")),
            "invalid_field",
        ),
        (
            "string is_active",
            with(&alu, &["event_properties", "is_active"], json!("yes")),
            "invalid_field",
        ),
        (
            "numeric expires_at",
            with(
                &alu,
                &["event_properties", "expires_at"],
                json!(1_700_000_000),
            ),
            "invalid_field",
        ),
        (
            "object access_level_id",
            with(
                &alu,
                &["event_properties", "access_level_id"],
                json!({"id": "premium"}),
            ),
            "invalid_field",
        ),
    ];
    for (what, body, code) in shaped {
        let resp = daemon.webhook(&body, None).await;
        assert_eq!(resp.status, 400, "{what}: {resp}");
        assert_eq!(resp.json["error"], json!(code), "{what}: {resp}");
        resp.expect_error(400, code);
    }

    assert_eq!(daemon.events_count(), 0, "a refused body is not stored");
    let answer = daemon.profile("prof-bad-1").await;
    assert_eq!(answer["access_levels"], json!({}), "{answer}");

    // The daemon is fine afterwards.
    daemon.store(&started).await;
    assert!(daemon.active("prof-bad-1", "premium").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parsing_is_lenient_where_adapty_varies() {
    let daemon = Daemon::start(&[]);
    let t = chrono::DateTime::from_timestamp(now().timestamp(), 0).expect("whole seconds");
    let exp = t + days(10);
    let ymdhms = |d: chrono::DateTime<chrono::Utc>| d.format("%Y-%m-%dT%H:%M:%S").to_string();

    // Each datetime shape for subscription_expires_at, on its own profile.
    let shapes = [
        format!("{}.123456+0000", ymdhms(exp)),
        format!("{}.123456+00:00", ymdhms(exp)),
        format!("{}.123456Z", ymdhms(exp)),
        format!("{}.123456000Z", ymdhms(exp)),
        format!("{}.123456789+0000", ymdhms(exp)),
    ];
    for (n, shape) in shapes.iter().enumerate() {
        let profile = format!("prof-len-dt-{n}");
        daemon
            .store(
                &subscription_started(&profile)
                    .at(t - days(1))
                    .prop("subscription_expires_at", json!(shape)),
            )
            .await;
        let level = daemon.level(&profile, "premium").await;
        assert_eq!(
            level["expires_at"],
            json!(format!("{}.123456Z", ymdhms(exp))),
            "{shape}: {level}"
        );
        assert_eq!(level["active"], json!(true), "{shape}: {level}");
    }
    for (n, (shape, want)) in [
        (format!("{}+0000", ymdhms(exp)), ".000000Z"),
        (format!("{}Z", ymdhms(exp)), ".000000Z"),
        (format!("{}.1+00:00", ymdhms(exp)), ".100000Z"),
        (format!("{}.123+0000", ymdhms(exp)), ".123000Z"),
    ]
    .iter()
    .enumerate()
    {
        let profile = format!("prof-len-frac-{n}");
        daemon
            .store(
                &subscription_started(&profile)
                    .at(t - days(1))
                    .prop("subscription_expires_at", json!(shape)),
            )
            .await;
        let level = daemon.level(&profile, "premium").await;
        assert_eq!(
            level["expires_at"],
            json!(format!("{}{want}", ymdhms(exp))),
            "{shape}: {level}"
        );
    }
    // event_datetime in another shape, too.
    daemon
        .store(
            &subscription_started("prof-len-evdt")
                .top("event_datetime", json!(format!("{}Z", ymdhms(t - days(1)))))
                .expires(exp),
        )
        .await;
    let level = daemon.level("prof-len-evdt", "premium").await;
    assert_eq!(
        level["updated_at"],
        json!(format!("{}.000000Z", ymdhms(t - days(1)))),
        "{level}"
    );

    // Unknown fields, explicit nulls, money as integers, paywall_revision a number.
    let noisy = subscription_started("prof-len-noise")
        .at(t - days(1))
        .expires(exp)
        .top(
            "brand_new_envelope_field",
            json!({"nested": [1, 2, {"x": null}]}),
        )
        .top("email", Value::Null)
        .top("idfv", Value::Null)
        .top("attributions", Value::Null)
        .top("user_attributes", Value::Null)
        .top(
            "profiles_sharing_access_level",
            json!([{"profile_id": "other", "customer_user_id": null}]),
        )
        .prop("price_usd", json!(10))
        .prop("proceeds_usd", json!(8))
        .prop("net_revenue_usd", Value::Null)
        .prop("paywall_revision", json!(7))
        .prop("transaction_id", json!(""))
        .prop("ip_address", json!("not-an-ip"))
        .prop("cancellation_reason", Value::Null)
        .prop("some_new_property", json!(true));
    daemon.store(&noisy).await;
    assert!(daemon.active("prof-len-noise", "premium").await);

    // Fields missing from event_properties are read from the top level.
    let top_level_alu = Ev::new("access_level_updated", "prof-len-top")
        .at(t - days(1))
        .top("access_level_id", json!("premium"))
        .top("is_active", json!(true))
        .top("expires_at", json!(adapty_time(exp)))
        .top("will_renew", json!(true))
        .top("is_lifetime", json!(false))
        .drop_prop("subscription_expires_at");
    daemon.store(&top_level_alu).await;
    let level = daemon.level("prof-len-top", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["expires_at"], json!(out_time(exp)), "{level}");

    let top_level_grant = subscription_renewed("prof-len-top2")
        .at(t - days(1))
        .drop_prop("subscription_expires_at")
        .top("subscription_expires_at", json!(adapty_time(exp)));
    daemon.store(&top_level_grant).await;
    let level = daemon.level("prof-len-top2", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["expires_at"], json!(out_time(exp)), "{level}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_a_400_not_a_5xx() {
    let daemon = Daemon::start(&[]);
    let padding = "x".repeat(300 * 1024);
    let big = subscription_started("prof-big-1").top("padding", json!(padding));
    let resp = daemon.webhook(&big.0, None).await;
    resp.expect_error(400, "body_too_large");
    assert_eq!(daemon.events_count(), 0);
    // Still serving.
    let small = subscription_started("prof-big-1");
    daemon.store(&small).await;
    assert_eq!(daemon.events_count(), 1);

    // A body a little under the limit is fine.
    let padding = "y".repeat(200 * 1024);
    daemon
        .store(&subscription_started("prof-big-2").top("padding", json!(padding)))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_a_json_404() {
    let daemon = Daemon::start(&[]);
    for path in [
        "/",
        "/nope",
        "/profiles",
        "/profiles/p/elsewhere",
        "/webhooks/stripe",
    ] {
        daemon.get(path).await.expect_error(404, "not_found");
    }
    let resp = daemon
        .client
        .post(daemon.url("/webhooks/adapty/extra"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"], json!("not_found"), "{body}");
}

#[test]
fn bad_flag_values_stop_the_daemon_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--sandbox", "maybe"], "sandbox"),
        (&["--synchronous", "sometimes"], "synchronous"),
        (&["--log-format", "xml"], "log-format"),
        (
            &["--event-names", "my_renewal=not_a_real_event"],
            "event-names",
        ),
        (&["--event-names", "no_equals_sign"], "event-names"),
        (
            &["--product-levels", "com.a=pro,com.a=gold"],
            "product-levels",
        ),
        (&["--webhook-token", ""], "webhook-token"),
        (&["--listen", "not-an-address"], "listen"),
        (&["--no-such-flag"], "no-such-flag"),
    ];
    for (args, names) in cases {
        let (status, stdout, stderr) = serve_expecting_failure(args);
        assert!(
            !status.success(),
            "{args:?} should fail; exit {status}; stderr: {stderr}"
        );
        assert!(
            !stdout.contains("entitled listening on"),
            "{args:?} printed the listening line: {stdout}"
        );
        let first = stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            !first.is_empty(),
            "{args:?}: no message on stderr (exit {status})"
        );
        let mentions =
            stderr.contains(names) || stderr.contains(&names.replace('-', "_").to_uppercase());
        assert!(
            mentions,
            "{args:?}: the message should name `{names}`; stderr:\n{stderr}"
        );
    }
}
