//! Group 1: verification requests, webhook tokens, the read token.

use crate::helpers::*;
use serde_json::{json, Value};
use std::time::Duration as StdDuration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_answers_both_generations() {
    let daemon = Daemon::start(&[]);
    let resp = daemon.webhook(&json!({}), None).await;
    resp.expect(200);
    assert_eq!(resp.json, json!({}), "{resp}");

    let resp = daemon.webhook(&json!({"adapty_check": "abc"}), None).await;
    resp.expect(200);
    assert_eq!(resp.json, json!({"adapty_check_response": "abc"}), "{resp}");

    let resp = daemon
        .webhook(&json!({"adapty_check": "9f1c-ÄÖ-\"quoted\""}), None)
        .await;
    resp.expect(200);
    assert_eq!(
        resp.json,
        json!({"adapty_check_response": "9f1c-ÄÖ-\"quoted\""}),
        "{resp}"
    );
    // Neither event_type nor profile_id: a verification request, whatever else it holds.
    let resp = daemon
        .webhook(
            &json!({"event_properties": {"note": "ping"}, "extra": 1}),
            None,
        )
        .await;
    resp.expect(200);
    assert_eq!(daemon.events_count(), 0, "a verification is not an event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_token_is_required_and_exact() {
    let daemon = Daemon::start(&["--webhook-token", "prod-secret-1"]);
    let event = subscription_started("prof-auth-1").user("auth-user");
    for wrong in [
        None,
        Some("wrong"),
        Some("Bearer prod-secret-1"),
        // (Surrounding whitespace is not part of an HTTP field value: not tried.)
        Some("prod-secret-1x"),
        Some("prod-secret-"),
        Some("PROD-SECRET-1"),
    ] {
        let resp = daemon.webhook(&event.0, wrong).await;
        assert_eq!(resp.status, 401, "Authorization {wrong:?}: {resp}");
        resp.expect_error(401, "unauthorized");
    }
    // Verification needs the token as well.
    daemon
        .webhook(&json!({}), None)
        .await
        .expect_error(401, "unauthorized");
    daemon
        .webhook(&json!({"adapty_check": "x"}), Some("nope"))
        .await
        .expect_error(401, "unauthorized");

    // Nothing was stored by any refusal.
    assert_eq!(daemon.events_count(), 0);
    let answer = daemon.profile("prof-auth-1").await;
    assert_eq!(answer["premium"], json!(false), "{answer}");
    assert_eq!(answer["access_levels"], json!({}), "{answer}");

    // The right token works for verification and events.
    let resp = daemon.webhook(&json!({}), Some("prod-secret-1")).await;
    resp.expect(200);
    assert_eq!(resp.json, json!({}));
    daemon.store_with(&event, Some("prod-secret-1")).await;
    assert!(daemon.active("prof-auth-1", "premium").await);
    assert_eq!(daemon.events_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_token_delivers_sandbox_events_only() {
    let daemon = Daemon::start(&[
        "--webhook-token",
        "prod-token",
        "--sandbox-webhook-token",
        "sandbox-token",
    ]);
    // Production token, production event.
    let prod = subscription_started("prof-sbx-prod");
    daemon.store_with(&prod, Some("prod-token")).await;
    // Sandbox token, sandbox event.
    let sandbox = subscription_started("prof-sbx-sand").sandbox();
    daemon.store_with(&sandbox, Some("sandbox-token")).await;
    // The production token may deliver sandbox events too (Adapty's test purchases
    // through the production URL are not forbidden by the contract): not asserted.

    // Sandbox token on a Production event: 403, not stored.
    let leaked = subscription_started("prof-sbx-leak");
    daemon
        .webhook(&leaked.0, Some("sandbox-token"))
        .await
        .expect_error(403, "sandbox_token_for_production");
    // Sandbox token on an event that does not say it is a sandbox one: 403 too, or
    // `--sandbox ignore` would count it. Environment missing, null, or another value;
    // "sandbox" in any case is a sandbox event.
    let unmarked = [
        subscription_started("prof-sbx-unmarked-1").drop_prop("environment"),
        subscription_started("prof-sbx-unmarked-2").prop("environment", Value::Null),
        subscription_started("prof-sbx-unmarked-3").prop("environment", json!("live")),
    ];
    for event in &unmarked {
        let resp = daemon.webhook(&event.0, Some("sandbox-token")).await;
        resp.expect_error(403, "sandbox_token_for_unmarked_event");
    }
    let lowercase = subscription_started("prof-sbx-lower").prop("environment", json!("sandbox"));
    daemon.store_with(&lowercase, Some("sandbox-token")).await;
    // Sandbox token verification works.
    daemon
        .webhook(&json!({"adapty_check": "s"}), Some("sandbox-token"))
        .await
        .expect(200);
    // Missing token: 401 even with both set.
    daemon
        .webhook(&subscription_started("prof-sbx-none").sandbox().0, None)
        .await
        .expect_error(401, "unauthorized");

    assert!(daemon.active("prof-sbx-prod", "premium").await);
    let level = daemon.level("prof-sbx-sand", "premium").await;
    assert_eq!(level["active"], json!(true), "{level}");
    assert_eq!(level["environment"], json!("Sandbox"), "{level}");
    let answer = daemon.profile("prof-sbx-leak").await;
    assert_eq!(answer["access_levels"], json!({}), "{answer}");
    assert_eq!(daemon.events_count(), 3);
    let ids = daemon.stored_ids();
    assert!(ids.contains(&prod.event_id()) && ids.contains(&sandbox.event_id()));
    assert!(ids.contains(&lowercase.event_id()));
    assert!(!ids.contains(&leaked.event_id()));
    for event in &unmarked {
        assert!(!ids.contains(&event.event_id()), "{}", event.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_token_alone_guards_the_webhook() {
    let daemon = Daemon::start(&["--sandbox-webhook-token", "only-sandbox"]);
    daemon
        .webhook(&subscription_started("prof-so-1").sandbox().0, None)
        .await
        .expect_error(401, "unauthorized");
    daemon
        .webhook(&subscription_started("prof-so-1").0, Some("only-sandbox"))
        .await
        .expect_error(403, "sandbox_token_for_production");
    daemon
        .store_with(
            &subscription_started("prof-so-1").sandbox(),
            Some("only-sandbox"),
        )
        .await;
    assert_eq!(daemon.events_count(), 1);
    // A sandbox token alone guards the webhook: no warning that it is open.
    assert!(
        !daemon.logs().contains(OPEN_WEBHOOK_WARNING),
        "{}",
        daemon.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_token_guards_reads_and_tokens_do_not_cross() {
    let daemon = Daemon::start(&[
        "--webhook-token",
        "hook-token",
        "--read-token",
        "read-token",
    ]);
    daemon
        .store_with(
            &subscription_started("prof-read-1").user("reader-1"),
            Some("hook-token"),
        )
        .await;

    for path in ["/profiles/prof-read-1/access", "/users/reader-1/access"] {
        for wrong in [
            None,
            Some("Bearer wrong"),
            Some("read-token"),
            Some("Bearer hook-token"),
            Some("hook-token"),
            Some("Bearer read-token-x"),
        ] {
            daemon
                .get_with(path, wrong)
                .await
                .expect_error(401, "unauthorized");
        }
        let resp = daemon.get_with(path, Some("Bearer read-token")).await;
        resp.expect(200);
        assert_eq!(resp.json["premium"], json!(true), "{resp}");
    }

    // The read token does not open the webhook.
    for wrong in [Some("read-token"), Some("Bearer read-token")] {
        daemon
            .webhook(&json!({}), wrong)
            .await
            .expect_error(401, "unauthorized");
        daemon
            .webhook(&subscription_started("prof-read-2").0, wrong)
            .await
            .expect_error(401, "unauthorized");
    }
    assert_eq!(daemon.events_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_webhook_and_reads_are_open() {
    let daemon = Daemon::start(&[]);
    // Any Authorization value is ignored when no token is configured.
    daemon
        .store_with(&subscription_started("prof-open-1"), Some("whatever"))
        .await;
    daemon.store(&subscription_started("prof-open-2")).await;
    daemon
        .get_with("/profiles/prof-open-1/access", Some("Bearer anything"))
        .await
        .expect(200);
    assert!(daemon.active("prof-open-2", "premium").await);
    // And it said so, loudly, at start.
    let warned = poll_until(
        StdDuration::from_secs(5),
        StdDuration::from_millis(50),
        || async { daemon.logs().contains(OPEN_WEBHOOK_WARNING) },
    )
    .await;
    assert!(warned, "no warning of the open webhook:\n{}", daemon.logs());
}

/// What the daemon logs at start when the webhook takes any caller.
const OPEN_WEBHOOK_WARNING: &str = "NO WEBHOOK TOKEN IS SET";
