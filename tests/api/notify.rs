//! Pushing access changes (issue #21): with `--notify-url` and `--notify-secret`, the
//! daemon POSTs every row of the change feed to the app's backend, one change per
//! request, in feed order, signed the Standard Webhooks way, each sent only once the
//! one before is confirmed (2xx) or parked. Each test drives the real daemon against
//! the local receiver of `receiver.rs` and checks what arrived:
//! - every change arrives once, in order, its `data` exactly the `GET /changes` row,
//!   its signature verified here with the `hmac` crate (not the daemon's signer);
//!   gains, losses, a refund, a silent expiry and sharing flips alike;
//! - the first start sends no history (`replay` does); `--notify-access-levels` skips
//!   the other levels without parking them;
//! - failures (500, a closed connection, a 10 s timeout, a receiver that is down) are
//!   retried with the same `webhook-id`, later changes waiting behind; after
//!   `--notify-retry-for` the change is parked (`GET /notify/failed`) and delivery
//!   moves on; `POST /notify/replay` sends again;
//! - restarts (SIGTERM, SIGKILL) resume after the last confirmed change and re-send at
//!   most the one in flight;
//! - a hanging receiver slows neither lookups, nor ingestion, nor `/readyz`;
//! - without a URL the routes are 501 `notify_off`; a URL without a well-formed secret
//!   refuses to start; the secret never reaches the logs at trace;
//! - `entitled notify status|replay` on a stopped file and beside a running daemon.

use crate::helpers::*;
use crate::receiver::{Received, Receiver, Reply, PATH};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration as StdDuration, Instant};

// ---- the signature, checked independently --------------------------------------------

/// A fresh secret in the Standard Webhooks shape: `whsec_` and 32 random-looking bytes
/// in base64.
fn new_secret() -> String {
    let bytes = Sha256::digest(format!("notify-secret-{}", uuid()).as_bytes());
    format!("whsec_{}", BASE64.encode(bytes))
}

/// Verifies a request's `webhook-signature` the Standard Webhooks way, with the `hmac`
/// and `base64` crates: the key is the base64 after `whsec_`; the signed content is
/// `<webhook-id>.<webhook-timestamp>.<body>`; the header lists space-separated
/// `v1,<base64 of HMAC-SHA256>` entries, one of which must match.
fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
) -> Result<(), String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| "the secret lacks `whsec_`".to_owned())?;
    let key = BASE64
        .decode(encoded)
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    if header.split(' ').any(|entry| entry == expected) {
        Ok(())
    } else {
        Err(format!(
            "no signature matches: header {header:?}, expected {expected:?}"
        ))
    }
}

/// [`verify`] on a received request.
fn verify_request(secret: &str, request: &Received) -> Result<(), String> {
    let header = |name: &str| {
        request
            .header(name)
            .ok_or_else(|| format!("no `{name}` header"))
    };
    verify(
        secret,
        header("webhook-id")?,
        header("webhook-timestamp")?,
        &request.body,
        header("webhook-signature")?,
    )
}

/// The verifier itself: the Standard Webhooks specification's example passes, and a
/// wrong key, id, timestamp or body fails. Without this the checks below could pass
/// vacuously.
#[test]
fn the_independent_verifier_accepts_the_standard_webhooks_example_only() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (id, ts, body) = (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#.as_slice(),
    );
    let header = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    verify(secret, id, ts, body, header).expect("the specification's example");
    verify(secret, id, ts, body, &format!("v1,bm9wZQ== {header}"))
        .expect("one matching entry of several");
    assert!(verify(&new_secret(), id, ts, body, header).is_err());
    assert!(verify(secret, "msg_other", ts, body, header).is_err());
    assert!(verify(secret, id, "1614265331", body, header).is_err());
    assert!(verify(secret, id, ts, br#"{"test": 2432232315}"#, header).is_err());
    assert!(verify(secret, id, ts, body, &header.replace("v1,", "v2,")).is_err());
}

/// The receiver itself, driven by a plain client: each reply as scripted (a status,
/// slow, a hang the client times out on, a close without an answer), the rules by
/// `webhook-id` and by body, keep-alive, and down (refused) then up on the same port.
/// Without this the tests below could blame the daemon for the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_plays_every_reply() {
    let receiver = Receiver::start();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(StdDuration::from_millis(800))
        .build()
        .expect("a client");
    let send = |id: &str, body: &str| {
        client
            .post(&receiver.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .body(body.to_owned())
            .send()
    };
    let status = |r: reqwest::Result<reqwest::Response>| r.map(|r| r.status().as_u16());

    assert_eq!(status(send("chg_1", "{}").await).ok(), Some(200));
    receiver.script(&[
        Reply::Status(500),
        Reply::Close,
        Reply::Hang,
        Reply::Slow(StdDuration::from_millis(300)),
    ]);
    assert_eq!(status(send("chg_2", "{}").await).ok(), Some(500));
    assert!(
        status(send("chg_3", "{}").await).is_err(),
        "closed: no answer"
    );
    let started = Instant::now();
    let hung = send("chg_4", "{}").await;
    assert!(
        hung.as_ref().err().is_some_and(|e| e.is_timeout()),
        "a hang times the client out: {hung:?}"
    );
    assert!(started.elapsed() >= StdDuration::from_millis(700));
    let started = Instant::now();
    assert_eq!(status(send("chg_5", "{}").await).ok(), Some(200));
    assert!(started.elapsed() >= StdDuration::from_millis(300), "slow");
    receiver.reply_to_id("chg_6", Reply::Status(503));
    receiver.reply_to_body("needle", Reply::Status(502));
    assert_eq!(status(send("chg_6", "{}").await).ok(), Some(503));
    assert_eq!(status(send("chg_6", "{}").await).ok(), Some(503));
    assert_eq!(
        status(send("chg_7", r#"{"a":"needle"}"#).await).ok(),
        Some(502)
    );
    receiver.clear_id("chg_6");
    receiver.clear_body("needle");
    assert_eq!(
        status(send("chg_6", r#"{"a":"needle"}"#).await).ok(),
        Some(200)
    );

    receiver.down();
    let refused = send("chg_8", "{}").await;
    assert!(
        refused.as_ref().err().is_some_and(|e| e.is_connect()),
        "down: the connection is refused: {refused:?}"
    );
    receiver.up();
    assert_eq!(status(send("chg_9", "{}").await).ok(), Some(200));

    let requests = receiver.requests();
    let ids: Vec<&str> = requests.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(
        ids,
        [
            "chg_1", "chg_2", "chg_3", "chg_4", "chg_5", "chg_6", "chg_6", "chg_7", "chg_6",
            "chg_9"
        ],
        "{}",
        receiver.describe()
    );
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, PATH);
    assert_eq!(requests[7].body_text(), r#"{"a":"needle"}"#);
    assert_eq!(requests[7].seq(), Some(7));
    assert!(requests[0].confirmed() && !requests[1].confirmed() && !requests[2].confirmed());
    assert!(!requests[3].confirmed() && requests[4].confirmed());
}

// ---- the daemon, the feed, the metrics --------------------------------------------------

/// `--notify-url URL --notify-secret SECRET EXTRA…`.
fn notify_args(receiver: &Receiver, secret: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--notify-url".to_owned(),
        receiver.url.clone(),
        "--notify-secret".to_owned(),
        secret.to_owned(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Starts the daemon pushing to `receiver` with `secret`, plus `extra` flags.
fn pushing(receiver: &Receiver, secret: &str, extra: &[&str]) -> Daemon {
    let args = notify_args(receiver, secret, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&args)
}

fn bearer(token: Option<&str>) -> Option<String> {
    token.map(|t| format!("Bearer {t}"))
}

/// `GET path` with an optional read token.
async fn get(daemon: &Daemon, path: &str, token: Option<&str>) -> Resp {
    daemon.get_with(path, bearer(token).as_deref()).await
}

/// `POST path` (no body) with an optional read token.
async fn post(daemon: &Daemon, path: &str, token: Option<&str>) -> Resp {
    let mut request = daemon.client.post(daemon.url(path));
    if let Some(value) = bearer(token) {
        request = request.header("authorization", value);
    }
    Resp::read(request.send().await, &format!("POST {path}")).await
}

/// Every change of the feed, in order.
async fn feed(daemon: &Daemon, token: Option<&str>) -> Vec<Value> {
    let resp = get(daemon, "/changes?after=0&limit=1000", token).await;
    resp.expect(200);
    resp.json["changes"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no `changes` array: {resp}"))
}

fn seq_of(change: &Value) -> i64 {
    change["seq"]
        .as_i64()
        .unwrap_or_else(|| panic!("a change without an integer seq: {change}"))
}

fn seqs(changes: &[Value]) -> Vec<i64> {
    changes.iter().map(seq_of).collect()
}

/// The feed's rows by seq.
async fn rows(daemon: &Daemon, token: Option<&str>) -> HashMap<i64, Value> {
    feed(daemon, token)
        .await
        .into_iter()
        .map(|c| (seq_of(&c), c))
        .collect()
}

/// The newest seq of the feed (0 when empty).
async fn newest(daemon: &Daemon, token: Option<&str>) -> i64 {
    feed(daemon, token).await.last().map(seq_of).unwrap_or(0)
}

/// `GET /notify/failed`, insisting on 200 and its shape; the list.
async fn failed(daemon: &Daemon, token: Option<&str>) -> Vec<Value> {
    let resp = get(daemon, "/notify/failed", token).await;
    resp.expect(200);
    resp.json["failed"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no `failed` array: {resp}"))
}

/// The sum of every sample of a metric whose labels contain `label` (all when None);
/// None when the metric is not exposed at all.
async fn metric(daemon: &Daemon, name: &str, label: Option<&str>) -> Option<f64> {
    let resp = daemon.get("/metrics").await;
    resp.expect(200);
    let mut found = None;
    for line in resp.text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.trim().rsplit_once(' ') else {
            continue;
        };
        let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
        if metric != name || label.is_some_and(|l| !labels.contains(l)) {
            continue;
        }
        if let Ok(value) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// `entitled_notify_deliveries_total{outcome="…"}` (0 when not exposed yet).
async fn deliveries(daemon: &Daemon, outcome: &str) -> f64 {
    metric(
        daemon,
        "entitled_notify_deliveries_total",
        Some(&format!("outcome=\"{outcome}\"")),
    )
    .await
    .unwrap_or(0.0)
}

/// `delivered_seq` of the `notify_state` table in the database (None: no row yet).
fn delivered_seq(daemon: &Daemon) -> Option<i64> {
    let seq = daemon.count("SELECT coalesce(max(delivered_seq), -1) FROM notify_state");
    (seq >= 0).then_some(seq)
}

/// Polls (every 50 ms, up to `limit`) until `condition` holds on the receiver.
async fn until_received(
    receiver: &Receiver,
    limit: StdDuration,
    condition: impl Fn(&[Received]) -> bool,
) -> bool {
    poll_until(limit, StdDuration::from_millis(50), || {
        let requests = receiver.requests();
        let held = condition(&requests);
        async move { held }
    })
    .await
}

/// Whether every seq of `wanted` has a request answered 2xx.
fn all_confirmed(requests: &[Received], wanted: &[i64]) -> bool {
    wanted.iter().all(|seq| {
        requests
            .iter()
            .any(|r| r.seq() == Some(*seq) && r.confirmed())
    })
}

async fn until_confirmed(receiver: &Receiver, wanted: &[i64], limit: StdDuration) -> bool {
    until_received(receiver, limit, |requests| all_confirmed(requests, wanted)).await
}

/// The seqs of the requests answered 2xx, in arrival order.
fn confirmed_seqs(requests: &[Received]) -> Vec<i64> {
    requests
        .iter()
        .filter(|r| r.confirmed())
        .map(|r| r.seq().unwrap_or(-1))
        .collect()
}

/// The seqs of every request, in arrival order.
fn request_seqs(requests: &[Received]) -> Vec<i64> {
    requests.iter().map(|r| r.seq().unwrap_or(-1)).collect()
}

/// Checks one delivery against the contract: a signed POST of JSON to the URL, the
/// `webhook-id` naming the row's seq, recent timestamps, the body
/// `{"type":"access.changed","timestamp":…,"data":<the row>}`.
#[track_caller]
fn assert_delivery(secret: &str, request: &Received, row: &Value) {
    let seq = seq_of(row);
    assert_eq!(request.method, "POST", "{request}");
    assert_eq!(request.path, PATH, "{request}");
    let content_type = request.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}: {request}"
    );
    assert_eq!(
        request.webhook_id(),
        format!("chg_{seq}"),
        "the webhook-id names the change: {request}"
    );
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("webhook-timestamp is not unix seconds: {request}"));
    assert!(
        (timestamp - request.at.timestamp()).abs() <= 10,
        "webhook-timestamp {timestamp} is not the time of sending ({}): {request}",
        request.at
    );
    verify_request(secret, request).unwrap_or_else(|e| {
        panic!(
            "bad signature ({e}) on {request}\nbody: {}",
            request.body_text()
        )
    });
    let body = request.json();
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("the body is not a JSON object: {}", request.body_text()));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "timestamp", "type"], "{body}");
    assert_eq!(body["type"], json!("access.changed"), "{body}");
    let sent: DateTime<Utc> = body["timestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("`timestamp` is not RFC 3339: {body}"))
        .with_timezone(&Utc);
    assert!(
        (sent.timestamp() - timestamp).abs() <= 2,
        "the body's timestamp {sent} and the header's {timestamp} disagree: {body}"
    );
    assert_eq!(
        &body["data"], row,
        "`data` must be exactly the GET /changes row"
    );
}

/// Asserts every request verifies and carries the feed's row of its seq.
#[track_caller]
fn assert_deliveries(secret: &str, requests: &[Received], rows: &HashMap<i64, Value>) {
    for request in requests {
        let seq = request
            .seq()
            .unwrap_or_else(|| panic!("a webhook-id not shaped `chg_<seq>`: {request}"));
        let row = rows
            .get(&seq)
            .unwrap_or_else(|| panic!("a delivery of seq {seq}, not in the feed: {request}"));
        assert_delivery(secret, request, row);
    }
}

/// The lines of the logs that mention a failed delivery of status `status`.
fn failure_lines(logs: &str, status: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains(status))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("notify") || l.contains("deliver") || l.contains("webhook")
        })
        .map(str::to_owned)
        .collect()
}

const SECOND: StdDuration = StdDuration::from_secs(1);

// ---- 1. every change, in order, signed ------------------------------------------------

/// A gain, a loss, a refund and sharing flips: every row of the feed arrives exactly
/// once (the receiver answers 200), in seq order, each verified, its `data` equal to
/// the row; then nothing is pending, nothing failed, the cursor is the newest seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_once_in_order_signed_with_its_feed_row() {
    let receiver = Receiver::start();
    let secret = new_secret();
    let daemon = pushing(&receiver, &secret, &[]);
    let t = now();
    let (a, b, c) = ("nt-all-a", "nt-all-b", "nt-all-c");
    daemon
        .store_all(&[
            // A: a gain, then a loss by expiry.
            subscription_started(a)
                .user("nt-user-a")
                .at(t - hours(3))
                .expires(t + days(30)),
            subscription_expired(a)
                .user("nt-user-a")
                .at(t - hours(1))
                .expires(t - hours(1)),
            // B buys and shares with C: C gains by sharing; B's refund takes both.
            subscription_started(b)
                .user("nt-user-b")
                .at(t - days(10))
                .expires(t + days(20)),
            access_level_updated(b, "premium", true, Some(t + days(20)))
                .top(
                    "profiles_sharing_access_level",
                    json!([{"profile_id": c, "customer_user_id": "nt-user-c"}]),
                )
                .user("nt-user-b")
                .at(t - days(9)),
            subscription_refunded(b)
                .user("nt-user-b")
                .at(t - hours(2))
                .expires(t - hours(2)),
        ])
        .await;

    let changes = feed(&daemon, None).await;
    let reasons: Vec<&str> = changes
        .iter()
        .map(|c| c["reason"].as_str().unwrap_or_default())
        .collect();
    assert!(
        changes.len() >= 6,
        "the flows made too few changes: {changes:?}"
    );
    assert!(
        reasons.contains(&"subscription_refunded"),
        "no refund: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("shared:")),
        "no sharing flip: {reasons:?}"
    );
    assert!(
        changes.iter().any(|c| c["active"] == json!(true)),
        "{changes:?}"
    );
    assert!(
        changes.iter().any(|c| c["active"] == json!(false)),
        "{changes:?}"
    );
    let wanted = seqs(&changes);

    assert!(
        until_confirmed(&receiver, &wanted, 20 * SECOND).await,
        "not every change arrived within 20 s; feed {wanted:?}; received:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    let requests = receiver.requests();
    assert_eq!(
        request_seqs(&requests),
        wanted,
        "each change once, in feed order:\n{}",
        receiver.describe()
    );
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);
    // A new signature per request: the id differs, so must the signature.
    let signatures: std::collections::HashSet<&str> = requests
        .iter()
        .filter_map(|r| r.header("webhook-signature"))
        .collect();
    assert_eq!(signatures.len(), requests.len(), "{}", receiver.describe());

    // Confirmed: the cursor is durable at the newest seq, nothing is pending.
    let last = *wanted.last().expect("changes");
    let caught_up = poll_until(5 * SECOND, StdDuration::from_millis(50), || async {
        delivered_seq(&daemon) == Some(last)
            && metric(&daemon, "entitled_notify_pending", None).await == Some(0.0)
    })
    .await;
    assert!(
        caught_up,
        "notify_state.delivered_seq {:?} (want {last}), entitled_notify_pending {:?}",
        delivered_seq(&daemon),
        metric(&daemon, "entitled_notify_pending", None).await
    );
    assert!(
        deliveries(&daemon, "delivered").await >= wanted.len() as f64,
        "entitled_notify_deliveries_total{{outcome=\"delivered\"}}"
    );
    assert_eq!(deliveries(&daemon, "failed").await, 0.0);
    assert!(
        metric(&daemon, "entitled_notify_lag_seconds", None)
            .await
            .is_some(),
        "no entitled_notify_lag_seconds on /metrics"
    );
    assert_eq!(failed(&daemon, None).await, Vec::<Value>::new());
}

/// The first start with a URL begins at the newest change then: the history made
/// before is not sent, the next change is. `POST /notify/replay?from_seq=1` sends the
/// history, in order, followed by what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_sends_no_history_and_replay_sends_it() {
    let receiver = Receiver::start();
    let secret = new_secret();
    let t = now();
    // (On PostgreSQL `plain` owns the database: it stays, stopped, to the end.)
    let mut plain = Daemon::start(&[]);
    plain
        .store_all(&[
            subscription_started("nt-hist-1").at(t - hours(2)),
            subscription_started("nt-hist-2").at(t - hours(1)),
        ])
        .await;
    assert_eq!(feed(&plain, None).await.len(), 2);
    assert!(plain.stop().success());
    let args = notify_args(&receiver, &secret, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_on(&plain.db_arg(), &args);
    let history = seqs(&feed(&daemon, None).await);
    daemon
        .store(&subscription_started("nt-hist-3").at(t - minutes(5)))
        .await;
    let all = seqs(&feed(&daemon, None).await);
    assert_eq!(all.len(), 3, "{all:?}");
    let new = all[2];
    assert!(
        until_confirmed(&receiver, &[new], 10 * SECOND).await,
        "the change after the start did not arrive:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    // The cursor is past it: the history will not come later either.
    assert!(
        poll_until(5 * SECOND, StdDuration::from_millis(50), || async {
            delivered_seq(&daemon) == Some(new)
        })
        .await,
        "delivered_seq {:?}, want {new}",
        delivered_seq(&daemon)
    );
    assert_eq!(
        request_seqs(&receiver.requests()),
        vec![new],
        "history was sent on the first start:\n{}",
        receiver.describe()
    );

    let resp = post(
        &daemon,
        &format!("/notify/replay?from_seq={}", history[0]),
        None,
    )
    .await;
    resp.expect(200);
    assert_eq!(resp.json, json!({"from_seq": history[0]}), "{resp}");
    assert!(
        until_received(&receiver, 10 * SECOND, |r| confirmed_seqs(r).len() >= 4).await,
        "the replay did not arrive:\n{}",
        receiver.describe()
    );
    let requests = receiver.requests();
    assert_eq!(
        request_seqs(&requests),
        vec![new, history[0], history[1], new],
        "the replay sends from `from_seq` on, in order:\n{}",
        receiver.describe()
    );
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);
}

// ---- 2. the level filter ----------------------------------------------------------------

/// `--notify-access-levels premium,gold`: changes of those levels are sent, in order;
/// changes of `vip` are skipped (counted, never parked, the cursor moves past them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_access_levels_are_sent_and_the_others_are_skipped() {
    let receiver = Receiver::start();
    let secret = new_secret();
    let daemon = pushing(
        &receiver,
        &secret,
        &["--notify-access-levels", "premium,gold"],
    );
    let t = now();
    daemon
        .store_all(&[
            access_level_updated("nt-lv-1", "vip", true, Some(t + days(30))).at(t - hours(5)),
            subscription_started("nt-lv-1").at(t - hours(4)),
            access_level_updated("nt-lv-2", "gold", true, Some(t + days(30))).at(t - hours(3)),
            access_level_updated("nt-lv-2", "vip", true, Some(t + days(30))).at(t - hours(2)),
            access_level_updated("nt-lv-2", "gold", false, Some(t - hours(1))).at(t - hours(1)),
            access_level_updated("nt-lv-1", "vip", false, Some(t - minutes(30)))
                .at(t - minutes(30)),
        ])
        .await;
    let changes = feed(&daemon, None).await;
    let level = |c: &Value| c["access_level_id"].as_str().unwrap_or_default().to_owned();
    let sent: Vec<i64> = changes
        .iter()
        .filter(|c| level(c) != "vip")
        .map(seq_of)
        .collect();
    let skipped = changes.iter().filter(|c| level(c) == "vip").count();
    assert_eq!(sent.len(), 3, "premium +, gold +, gold -: {changes:?}");
    assert_eq!(skipped, 3, "vip +, vip +, vip -: {changes:?}");
    let last = seq_of(changes.last().expect("changes"));
    assert_eq!(level(changes.last().expect("changes")), "vip");

    assert!(
        until_confirmed(&receiver, &sent, 15 * SECOND).await,
        "the premium and gold changes did not all arrive:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    // The skipped ones move the cursor too (the last change is a vip one).
    assert!(
        poll_until(5 * SECOND, StdDuration::from_millis(50), || async {
            delivered_seq(&daemon) == Some(last)
                && deliveries(&daemon, "skipped").await >= skipped as f64
        })
        .await,
        "delivered_seq {:?} (want {last}), skipped {}",
        delivered_seq(&daemon),
        deliveries(&daemon, "skipped").await
    );
    let requests = receiver.requests();
    assert_eq!(
        request_seqs(&requests),
        sent,
        "only premium and gold, in order:\n{}",
        receiver.describe()
    );
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);
    assert_eq!(
        failed(&daemon, None).await,
        Vec::<Value>::new(),
        "skipped, not parked"
    );
    assert_eq!(deliveries(&daemon, "parked").await, 0.0);
    assert_eq!(
        metric(&daemon, "entitled_notify_pending", None).await,
        Some(0.0)
    );
}

// ---- 3. retries ---------------------------------------------------------------------------

/// The receiver answers 500, then closes the connection without an answer, then 200:
/// the change is retried (same `webhook-id`, the same `data`, a fresh valid signature
/// each time, a backoff between tries) and delivered; the changes after it wait
/// behind it and then arrive in order. A log line names the 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_the_same_id_and_later_changes_wait() {
    let receiver = Receiver::start();
    receiver.script(&[Reply::Status(500), Reply::Close]);
    let secret = new_secret();
    let daemon = pushing(&receiver, &secret, &[]);
    let t = now();
    daemon
        .store(&subscription_started("nt-retry-1").at(t - hours(3)))
        .await;
    assert!(
        until_received(&receiver, 10 * SECOND, |r| !r.is_empty()).await,
        "no first attempt within 10 s; logs:\n{}",
        daemon.logs()
    );
    // Stored while the first one is failing: they wait behind it.
    daemon
        .store_all(&[
            subscription_started("nt-retry-2").at(t - hours(2)),
            subscription_started("nt-retry-3").at(t - hours(1)),
        ])
        .await;
    let wanted = seqs(&feed(&daemon, None).await);
    assert_eq!(wanted.len(), 3, "{wanted:?}");
    assert!(
        until_confirmed(&receiver, &wanted, 20 * SECOND).await,
        "not delivered within 20 s:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    let requests = receiver.requests();
    assert_eq!(
        request_seqs(&requests),
        vec![wanted[0], wanted[0], wanted[0], wanted[1], wanted[2]],
        "three tries of the first, then the others in order:\n{}",
        receiver.describe()
    );
    assert_eq!(
        requests.iter().map(|r| r.reply).collect::<Vec<_>>()[..3],
        [Reply::Status(500), Reply::Close, Reply::Status(200)]
    );
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);
    assert!(
        requests[..3]
            .iter()
            .all(|r| r.json()["data"] == requests[0].json()["data"]),
        "a retry carries the same change"
    );
    for pair in requests[..3].windows(2) {
        let gap = pair[1].instant - pair[0].instant;
        assert!(
            gap >= StdDuration::from_millis(300),
            "a retry {gap:?} after the failure: no backoff?\n{}",
            receiver.describe()
        );
    }
    assert!(deliveries(&daemon, "failed").await >= 2.0);
    assert!(deliveries(&daemon, "delivered").await >= 3.0);
    assert_eq!(deliveries(&daemon, "parked").await, 0.0);
    let logs = daemon.logs();
    assert!(
        !failure_lines(&logs, "500").is_empty(),
        "no log line names the 500 of a failed delivery:\n{logs}"
    );
}

// ---- 4. parking and replay -----------------------------------------------------------------

/// With `--notify-retry-for 3s`, a change the receiver always answers 500 is retried
/// for three seconds, then parked: `GET /notify/failed` lists it (attempts, times, the
/// error, the row) behind the read token, and the next change is delivered. Once the
/// receiver takes it, `POST /notify/replay?from_seq=<its seq>` sends it and what
/// follows again, in order, and the failed list empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_failing_past_retry_for_is_parked_then_replayed() {
    let token = "nt-park-read-token";
    let receiver = Receiver::start();
    let secret = new_secret();
    let daemon = pushing(
        &receiver,
        &secret,
        &["--notify-retry-for", "3s", "--read-token", token],
    );
    let t = now();
    receiver.reply_to_body("nt-park-1", Reply::Status(500));
    daemon
        .store(&subscription_started("nt-park-1").at(t - hours(3)))
        .await;
    let first = newest(&daemon, Some(token)).await;
    let first_id = format!("chg_{first}");
    daemon
        .store(&subscription_started("nt-park-2").at(t - hours(2)))
        .await;
    let second = newest(&daemon, Some(token)).await;
    assert!(second > first);

    let parked = poll_until(20 * SECOND, StdDuration::from_millis(100), || async {
        !failed(&daemon, Some(token)).await.is_empty()
    })
    .await;
    assert!(
        parked,
        "nothing parked within 20 s:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    assert!(
        until_confirmed(&receiver, &[second], 10 * SECOND).await,
        "the next change was not delivered after the park:\n{}",
        receiver.describe()
    );
    let list = failed(&daemon, Some(token)).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    let tries = receiver.requests_for(&first_id);
    assert_eq!(entry["seq"], json!(first), "{entry}");
    let attempts = entry["attempts"].as_i64().unwrap_or_default();
    assert!(attempts >= 2, "parked after {attempts} attempt(s): {entry}");
    assert_eq!(
        attempts as usize,
        tries.len(),
        "`attempts` and the requests the receiver saw: {entry}\n{}",
        receiver.describe()
    );
    let time = |key: &str| -> DateTime<Utc> {
        entry[key]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .unwrap_or_else(|| panic!("`{key}` is not RFC 3339: {entry}"))
            .with_timezone(&Utc)
    };
    assert!(
        time("last_failed_at") - time("first_failed_at") >= chrono::Duration::seconds(1),
        "parked without waiting out a backoff: {entry}"
    );
    let error = entry["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("500"),
        "`last_error` names the status: {entry}"
    );
    let feed_rows = rows(&daemon, Some(token)).await;
    assert_eq!(
        entry["change"], feed_rows[&first],
        "the parked change's row"
    );
    // It was retried for the window before the next one went.
    let next = receiver.requests_for(&format!("chg_{second}"));
    let last_try = tries.last().expect("tries").instant;
    assert!(
        next[0].instant >= last_try,
        "the next change went before the park:\n{}",
        receiver.describe()
    );
    assert!(
        next[0].instant - tries[0].instant >= StdDuration::from_secs(2),
        "parked {:?} after the first failure, with --notify-retry-for 3s:\n{}",
        next[0].instant - tries[0].instant,
        receiver.describe()
    );
    assert!(deliveries(&daemon, "parked").await >= 1.0);
    assert!(deliveries(&daemon, "failed").await >= attempts as f64);
    get(&daemon, "/readyz", None).await.expect(200);

    // The read token guards both routes.
    get(&daemon, "/notify/failed", None).await.expect(401);
    post(&daemon, &format!("/notify/replay?from_seq={first}"), None)
        .await
        .expect(401);

    // The receiver takes it now: replay from it.
    receiver.clear_body("nt-park-1");
    let before = receiver.count();
    let resp = post(
        &daemon,
        &format!("/notify/replay?from_seq={first}"),
        Some(token),
    )
    .await;
    resp.expect(200);
    assert_eq!(resp.json, json!({"from_seq": first}), "{resp}");
    assert!(
        until_received(&receiver, 10 * SECOND, |r| {
            r.len() >= before + 2 && all_confirmed(&r[before..], &[first, second])
        })
        .await,
        "the replay did not arrive:\n{}",
        receiver.describe()
    );
    daemon
        .store(&subscription_started("nt-park-3").at(t - hours(1)))
        .await;
    let third = newest(&daemon, Some(token)).await;
    assert!(
        until_confirmed(&receiver, &[third], 10 * SECOND).await,
        "the change after the replay:\n{}",
        receiver.describe()
    );
    let requests = receiver.requests();
    assert_eq!(
        request_seqs(&requests[before..]),
        vec![first, second, third],
        "the replay, in order, then the next:\n{}",
        receiver.describe()
    );
    assert_deliveries(&secret, &requests, &rows(&daemon, Some(token)).await);
    assert_eq!(
        failed(&daemon, Some(token)).await,
        Vec::<Value>::new(),
        "the replayed change left the failed list"
    );
}

// ---- 5. restarts ----------------------------------------------------------------------------

/// Three changes confirmed, two failing (503) when the daemon gets SIGTERM: after the
/// restart the two arrive, in order, and the three are never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_after_the_last_confirmed_change() {
    let receiver = Receiver::start();
    let secret = new_secret();
    let mut daemon = pushing(&receiver, &secret, &[]);
    let t = now();
    for n in 1..=3 {
        daemon
            .store(&subscription_started(&format!("nt-term-{n}")).at(t - hours(6 - n)))
            .await;
    }
    let confirmed = seqs(&feed(&daemon, None).await);
    assert!(
        until_confirmed(&receiver, &confirmed, 15 * SECOND).await,
        "{}",
        receiver.describe()
    );
    let last = *confirmed.last().expect("changes");
    assert!(
        poll_until(5 * SECOND, StdDuration::from_millis(50), || async {
            delivered_seq(&daemon) == Some(last)
        })
        .await,
        "notify_state.delivered_seq {:?}, want {last}",
        delivered_seq(&daemon)
    );

    receiver.set_default(Reply::Status(503));
    for n in 4..=5 {
        daemon
            .store(&subscription_started(&format!("nt-term-{n}")).at(t - hours(6 - n)))
            .await;
    }
    let all = seqs(&feed(&daemon, None).await);
    let pending = all[3..].to_vec();
    assert!(
        until_received(&receiver, 10 * SECOND, |r| r
            .iter()
            .any(|r| r.seq() == Some(pending[0])))
        .await,
        "{}",
        receiver.describe()
    );
    daemon.restart();
    receiver.set_default(Reply::Status(200));
    assert!(
        until_confirmed(&receiver, &pending, 20 * SECOND).await,
        "the pending changes did not arrive after the restart:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    let requests = receiver.requests();
    for seq in &confirmed {
        let count = requests.iter().filter(|r| r.seq() == Some(*seq)).count();
        assert_eq!(
            count,
            1,
            "confirmed change {seq} was sent again:\n{}",
            receiver.describe()
        );
    }
    assert_eq!(confirmed_seqs(&requests), all, "{}", receiver.describe());
    let order = request_seqs(&requests);
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {order:?}"
    );
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);
    assert!(
        poll_until(5 * SECOND, StdDuration::from_millis(50), || async {
            delivered_seq(&daemon) == all.last().copied()
        })
        .await
    );
}

/// SIGKILL while deliveries are under way (the receiver answers each after 300 ms):
/// after the restart every change arrives; at most one `webhook-id` (the one in
/// flight) came twice, and the new process sends in order from the first unconfirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_delivery_resends_at_most_the_change_in_flight() {
    let receiver = Receiver::start();
    receiver.set_default(Reply::Slow(StdDuration::from_millis(300)));
    let secret = new_secret();
    let mut daemon = pushing(&receiver, &secret, &[]);
    let t = now();
    for n in 1..=6 {
        daemon
            .store(&subscription_started(&format!("nt-kill-{n}")).at(t - hours(8 - n)))
            .await;
    }
    let all = seqs(&feed(&daemon, None).await);
    assert_eq!(all.len(), 6);
    assert!(
        until_received(&receiver, 10 * SECOND, |r| r.len() >= 2).await,
        "{}",
        receiver.describe()
    );
    daemon.crash();
    let restarted_at = Instant::now();
    receiver.set_default(Reply::Status(200));
    daemon.start_again();
    daemon
        .store(&subscription_started("nt-kill-7").at(t - hours(1)))
        .await;
    let all = seqs(&feed(&daemon, None).await);
    assert_eq!(all.len(), 7);
    assert!(
        until_confirmed(&receiver, &all, 20 * SECOND).await,
        "not everything arrived after the crash:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    let requests = receiver.requests();
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for request in &requests {
        *counts.entry(request.seq().unwrap_or(-1)).or_default() += 1;
    }
    let twice: Vec<i64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(seq, _)| *seq)
        .collect();
    assert!(
        twice.len() <= 1 && counts.values().all(|n| *n <= 2),
        "more than the one in flight was sent again: {twice:?}\n{}",
        receiver.describe()
    );
    let before: Vec<i64> = request_seqs(
        &requests
            .iter()
            .filter(|r| r.instant < restarted_at)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let after: Vec<i64> = request_seqs(
        &requests
            .iter()
            .filter(|r| r.instant >= restarted_at)
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert!(
        before.windows(2).all(|w| w[0] < w[1]) && after.windows(2).all(|w| w[0] < w[1]),
        "out of order around the crash: before {before:?}, after {after:?}"
    );
    assert_eq!(
        after.last().copied(),
        all.last().copied(),
        "{}",
        receiver.describe()
    );
    // The new process resumed at the first change it had not confirmed: nothing it had
    // confirmed came again but possibly the last one before the kill.
    if let Some(first_after) = after.first() {
        assert!(
            before.iter().filter(|s| *s >= first_after).count() <= 1,
            "resumed at {first_after}, before the kill {before:?}"
        );
    }
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);
    assert!(
        poll_until(5 * SECOND, StdDuration::from_millis(50), || async {
            delivered_seq(&daemon) == all.last().copied()
        })
        .await,
        "delivered_seq {:?}",
        delivered_seq(&daemon)
    );
}

// ---- 6. a receiver down for a while --------------------------------------------------------

/// The receiver stops listening (connection refused) while changes are made, for a few
/// failed tries, then comes back: everything arrives, in order, once; meanwhile
/// `/readyz` stays 200 and lookups answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_everything_when_it_is_back() {
    let receiver = Receiver::start();
    let secret = new_secret();
    let daemon = pushing(&receiver, &secret, &[]);
    receiver.down();
    let t = now();
    daemon
        .store(
            &subscription_started("nt-down-1")
                .user("nt-down-user")
                .at(t - hours(3)),
        )
        .await;
    assert!(
        poll_until(10 * SECOND, StdDuration::from_millis(50), || async {
            deliveries(&daemon, "failed").await >= 1.0
        })
        .await,
        "no failed delivery counted while the receiver refuses connections; logs:\n{}",
        daemon.logs()
    );
    daemon
        .store_all(&[
            subscription_started("nt-down-2").at(t - hours(2)),
            subscription_started("nt-down-3").at(t - hours(1)),
        ])
        .await;
    get(&daemon, "/readyz", None).await.expect(200);
    assert!(daemon.active("nt-down-1", "premium").await);
    assert!(
        poll_until(10 * SECOND, StdDuration::from_millis(50), || async {
            deliveries(&daemon, "failed").await >= 2.0
        })
        .await,
        "no retry counted while down"
    );
    get(&daemon, "/readyz", None).await.expect(200);
    assert_eq!(receiver.count(), 0, "{}", receiver.describe());
    // The metrics show the backlog: three changes after the cursor, the oldest waiting
    // for over a second.
    let backlog = poll_until(3 * SECOND, StdDuration::from_millis(50), || async {
        metric(&daemon, "entitled_notify_pending", None).await == Some(3.0)
            && metric(&daemon, "entitled_notify_lag_seconds", None)
                .await
                .is_some_and(|lag| lag >= 1.0)
    })
    .await;
    assert!(
        backlog,
        "while down with three changes undelivered: entitled_notify_pending {:?} (want 3), \
         entitled_notify_lag_seconds {:?} (want >= 1)",
        metric(&daemon, "entitled_notify_pending", None).await,
        metric(&daemon, "entitled_notify_lag_seconds", None).await
    );

    receiver.up();
    let wanted = seqs(&feed(&daemon, None).await);
    assert!(
        until_confirmed(&receiver, &wanted, 30 * SECOND).await,
        "not everything arrived after the receiver came back:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    let requests = receiver.requests();
    assert_eq!(request_seqs(&requests), wanted, "{}", receiver.describe());
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);
    assert_eq!(failed(&daemon, None).await, Vec::<Value>::new());
}

// ---- 7. the silent expiry --------------------------------------------------------------------

/// A subscription stored expiring three seconds later: its silent expiry (`reason:
/// "expired"`, no event) is pushed within two seconds of `expires_at`, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_expiry_is_pushed_within_two_seconds_of_expires_at() {
    let receiver = Receiver::start();
    let secret = new_secret();
    let daemon = pushing(&receiver, &secret, &[]);
    let t = now();
    let ends = t + secs(3);
    daemon
        .store(
            &subscription_started("nt-exp-1")
                .user("nt-exp-user")
                .at(t - days(30))
                .expires(ends),
        )
        .await;
    let gained = newest(&daemon, None).await;
    assert!(
        until_confirmed(&receiver, &[gained], 5 * SECOND).await,
        "{}",
        receiver.describe()
    );
    let is_expiry = |r: &Received| r.json()["data"]["reason"] == json!("expired");
    assert!(
        until_received(&receiver, 15 * SECOND, |r| r.iter().any(is_expiry)).await,
        "no expiry pushed within 12 s of expires_at:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    let requests = receiver.requests();
    let expiry = requests.iter().find(|r| is_expiry(r)).expect("the expiry");
    let late = expiry.at - ends;
    assert!(
        expiry.at >= ends,
        "the expiry was pushed before expires_at ({ends}): {expiry}"
    );
    assert!(
        late <= chrono::Duration::seconds(2),
        "the expiry arrived {late} after expires_at: {expiry}"
    );
    let data = &expiry.json()["data"];
    assert_eq!(data["profile_id"], json!("nt-exp-1"), "{data}");
    assert_eq!(data["customer_user_id"], json!("nt-exp-user"), "{data}");
    assert_eq!(data["active"], json!(false), "{data}");
    assert_eq!(data["profile_event_id"], json!(null), "{data}");
    assert_eq!(data["expires_at"], json!(out_time(ends)), "{data}");
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);
    assert_eq!(request_seqs(&requests).len(), 2, "{}", receiver.describe());
}

// ---- 8. a hanging or slow receiver -----------------------------------------------------------

/// The receiver holds a request without answering: lookups, ingestion and `/readyz`
/// answer meanwhile; the request times out (10 s) and is retried with the same id; a
/// receiver answering 200 after 1.5 s is a confirmation, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_blocks_neither_lookups_nor_ingestion() {
    let receiver = Receiver::start();
    receiver.script(&[Reply::Hang]);
    let secret = new_secret();
    let daemon = pushing(&receiver, &secret, &[]);
    let t = now();
    daemon
        .store(
            &subscription_started("nt-hang-1")
                .user("nt-hang-user")
                .at(t - hours(3)),
        )
        .await;
    let first = newest(&daemon, None).await;
    assert!(
        until_received(&receiver, 10 * SECOND, |r| !r.is_empty()).await,
        "{}",
        receiver.describe()
    );

    // The receiver is hanging now.
    for path in [
        "/profiles/nt-hang-1/access",
        "/users/nt-hang-user/access",
        "/readyz",
    ] {
        let started = Instant::now();
        let resp = get(&daemon, path, None).await;
        let took = started.elapsed();
        resp.expect(200);
        assert!(
            took < 2 * SECOND,
            "{path} took {took:?} while the receiver hangs"
        );
    }
    let started = Instant::now();
    daemon
        .store(&subscription_started("nt-hang-2").at(t - hours(2)))
        .await;
    let took = started.elapsed();
    assert!(
        took < 2 * SECOND,
        "a webhook took {took:?} while the receiver hangs"
    );
    let second = newest(&daemon, None).await;
    assert!(daemon.active("nt-hang-2", "premium").await);
    assert!(
        receiver.requests_for(&format!("chg_{second}")).is_empty(),
        "the next change went while the first hangs:\n{}",
        receiver.describe()
    );

    assert!(
        until_confirmed(&receiver, &[first, second], 30 * SECOND).await,
        "not delivered after the timeout:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    let tries = receiver.requests_for(&format!("chg_{first}"));
    assert_eq!(tries.len(), 2, "{}", receiver.describe());
    let waited = tries[1].instant - tries[0].instant;
    assert!(
        waited >= StdDuration::from_secs(9),
        "retried {waited:?} after a request that never got an answer: a timeout under 10 s"
    );
    assert!(deliveries(&daemon, "failed").await >= 1.0);

    // Slow but within the timeout: one request, confirmed.
    receiver.set_default(Reply::Slow(StdDuration::from_millis(1500)));
    let failed_before = deliveries(&daemon, "failed").await;
    daemon
        .store(&subscription_started("nt-hang-3").at(t - hours(1)))
        .await;
    let third = newest(&daemon, None).await;
    let started = Instant::now();
    let resp = get(&daemon, "/profiles/nt-hang-3/access", None).await;
    resp.expect(200);
    assert!(started.elapsed() < 2 * SECOND);
    assert!(
        until_confirmed(&receiver, &[third], 10 * SECOND).await,
        "{}",
        receiver.describe()
    );
    // Give a wrongly counted failure its retry's time to show.
    tokio::time::sleep(StdDuration::from_millis(1500)).await;
    assert_eq!(
        receiver.requests_for(&format!("chg_{third}")).len(),
        1,
        "a slow 200 was retried:\n{}",
        receiver.describe()
    );
    assert_eq!(deliveries(&daemon, "failed").await, failed_before);
    let requests = receiver.requests();
    assert_eq!(
        request_seqs(&requests),
        vec![first, first, second, third],
        "{}",
        receiver.describe()
    );
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);
}

// ---- 9. configuration, secrecy, the CLI -------------------------------------------------------

/// Without `--notify-url` the notify routes are 501 `notify_off`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_url_the_notify_routes_are_501_notify_off() {
    let daemon = Daemon::start(&[]);
    get(&daemon, "/notify/failed", None)
        .await
        .expect_error(501, "notify_off");
    post(&daemon, "/notify/replay?from_seq=1", None)
        .await
        .expect_error(501, "notify_off");
}

/// A URL without a secret, or with one not shaped `whsec_<base64>`, refuses to start
/// with a message naming `--notify-secret`.
#[test]
fn a_url_without_a_well_formed_secret_refuses_to_start() {
    let receiver = Receiver::start();
    let cases: [(&str, Vec<&str>); 3] = [
        ("no secret", vec!["--notify-url", receiver.url.as_str()]),
        (
            "a secret without whsec_",
            vec![
                "--notify-url",
                receiver.url.as_str(),
                "--notify-secret",
                "c2VjcmV0LWJ1dC1ub3QtcHJlZml4ZWQ=",
            ],
        ),
        (
            "a secret that is not base64",
            vec![
                "--notify-url",
                receiver.url.as_str(),
                "--notify-secret",
                "whsec_not*base64!at@all",
            ],
        ),
    ];
    for (why, args) in cases {
        let (status, _, stderr) = serve_expecting_failure(&args);
        assert!(!status.success(), "{why}: started ({status})");
        assert!(status.code().is_some(), "{why}: died of a signal: {status}");
        assert!(
            stderr.contains("--notify-secret"),
            "{why}: the message does not name --notify-secret:\n{stderr}"
        );
    }
    assert_eq!(receiver.count(), 0);
}

/// Configured through the environment alone (`ENTITLED_NOTIFY_URL`, `_SECRET`,
/// `_ACCESS_LEVELS`, `_RETRY_FOR`) at `RUST_LOG=trace`: a vip change is skipped, a
/// premium change failing (500) is parked after three seconds, the next is delivered;
/// a log line names the 500; neither the secret nor its key appears in the logs, nor
/// in `serve --help` with the variable set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_configuration_works_and_the_secret_never_reaches_the_logs() {
    let receiver = Receiver::start();
    let secret = new_secret();
    let key = secret.trim_start_matches("whsec_").to_owned();
    let env = [
        ("RUST_LOG", "trace"),
        ("ENTITLED_NOTIFY_URL", receiver.url.as_str()),
        ("ENTITLED_NOTIFY_SECRET", secret.as_str()),
        ("ENTITLED_NOTIFY_ACCESS_LEVELS", "premium"),
        ("ENTITLED_NOTIFY_RETRY_FOR", "3s"),
    ];
    receiver.reply_to_body("nt-env-1", Reply::Status(500));
    let daemon = Daemon::start_with_env(&[], &env);
    let t = now();
    daemon
        .store(&access_level_updated("nt-env-1", "vip", true, Some(t + days(9))).at(t - hours(3)))
        .await;
    daemon
        .store(&subscription_started("nt-env-1").at(t - hours(2)))
        .await;
    let failing = newest(&daemon, None).await;
    daemon
        .store(&subscription_started("nt-env-2").at(t - hours(1)))
        .await;
    let next = newest(&daemon, None).await;
    assert!(
        until_confirmed(&receiver, &[next], 20 * SECOND).await,
        "not parked and moved on within 20 s (ENTITLED_NOTIFY_RETRY_FOR=3s):\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    let list = failed(&daemon, None).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["seq"], json!(failing), "{list:?}");
    let requests = receiver.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.json()["data"]["access_level_id"] == json!("premium")),
        "a vip change was sent with ENTITLED_NOTIFY_ACCESS_LEVELS=premium:\n{}",
        receiver.describe()
    );
    assert_deliveries(&secret, &requests, &rows(&daemon, None).await);

    let logs = daemon.logs();
    assert!(
        logs.lines().count() > 20,
        "RUST_LOG=trace logged almost nothing:\n{logs}"
    );
    assert!(
        !failure_lines(&logs, "500").is_empty(),
        "no log line names the 500 of a failed delivery"
    );
    for (what, needle) in [("the secret", secret.as_str()), ("its key", key.as_str())] {
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains(needle)).collect();
        assert!(leaks.is_empty(), "{what} is in the logs: {leaks:?}");
    }
    let help = entitled()
        .args(["serve", "--help"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("serve --help runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&help.stdout),
        String::from_utf8_lossy(&help.stderr)
    );
    assert!(text.contains("--notify-secret"), "{text}");
    assert!(
        !text.contains(&key),
        "the secret is in `serve --help`:\n{text}"
    );
}

/// Runs `entitled ARGS` with `env`, bounded to a minute.
fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = entitled();
    command.args(args).envs(env.iter().copied());
    run_bounded(command, args.join(" "), None, StdDuration::from_secs(60))
}

/// `entitled notify status --db DB`: the numbers after `delivered_seq`, `newest_seq`
/// and `failed`.
#[track_caller]
fn notify_status(db: &str) -> (i64, i64, i64) {
    let run = run(&["notify", "status", "--db", db], &[]);
    assert!(run.status.success(), "{run}");
    let words: Vec<&str> = run
        .stdout
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let number = |name: &str| -> i64 {
        words
            .windows(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair[1].parse().ok())
            .unwrap_or_else(|| panic!("no `{name} N` in the status: {run}"))
    };
    (
        number("delivered_seq"),
        number("newest_seq"),
        number("failed"),
    )
}

/// On a stopped file: `notify status` counts the cursor, the newest change and the
/// parked ones; `notify replay --from-seq N` sets the cursor to N-1 and clears the
/// parked ones from N, and the next start sends from N. Beside a running daemon,
/// `notify replay` goes through its `POST /notify/replay` (`ENTITLED_DAEMON_URL`, the
/// read token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_cli_reports_and_replays_on_a_stopped_file_and_beside_the_daemon() {
    let token = "nt-cli-read-token";
    let receiver = Receiver::start();
    let secret = new_secret();
    let mut daemon = pushing(
        &receiver,
        &secret,
        &["--notify-retry-for", "3s", "--read-token", token],
    );
    let t = now();
    receiver.reply_to_body("nt-cli-2", Reply::Status(500));
    daemon
        .store_all(&[
            subscription_started("nt-cli-1").at(t - hours(3)),
            subscription_started("nt-cli-2").at(t - hours(2)),
            subscription_started("nt-cli-3").at(t - hours(1)),
        ])
        .await;
    let all = seqs(&feed(&daemon, Some(token)).await);
    assert_eq!(all.len(), 3);
    let (s1, s2, s3) = (all[0], all[1], all[2]);
    assert!(
        until_confirmed(&receiver, &[s1, s3], 20 * SECOND).await,
        "{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    assert!(
        poll_until(5 * SECOND, StdDuration::from_millis(50), || async {
            delivered_seq(&daemon) == Some(s3)
        })
        .await
    );
    assert_eq!(failed(&daemon, Some(token)).await.len(), 1);
    assert!(daemon.stop().success());

    assert_eq!(
        notify_status(&daemon.db_arg()),
        (s3, s3, 1),
        "delivered, newest, failed"
    );
    let db = daemon.db_arg();
    let replay = run(
        &[
            "notify",
            "replay",
            "--from-seq",
            &s2.to_string(),
            "--db",
            &db,
        ],
        &[],
    );
    assert!(replay.status.success(), "{replay}");
    assert_eq!(
        notify_status(&daemon.db_arg()),
        (s2 - 1, s3, 0),
        "after the replay: the cursor at from_seq - 1, nothing parked"
    );
    assert_eq!(delivered_seq(&daemon), Some(s2 - 1));
    assert_eq!(daemon.count("SELECT count(*) FROM notify_failed"), 0);

    // The next start sends from s2.
    receiver.clear_body("nt-cli-2");
    let before = receiver.count();
    daemon.start_again();
    assert!(
        until_received(&receiver, 10 * SECOND, |r| {
            r.len() >= before + 2 && all_confirmed(&r[before..], &[s2, s3])
        })
        .await,
        "{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    assert_eq!(
        request_seqs(&receiver.requests()[before..]),
        vec![s2, s3],
        "{}",
        receiver.describe()
    );

    // Beside the running daemon: through its route.
    let before = receiver.count();
    let replay = run(
        &[
            "notify",
            "replay",
            "--from-seq",
            &s1.to_string(),
            "--db",
            &db,
            "--read-token",
            token,
        ],
        &[("ENTITLED_DAEMON_URL", daemon.base.as_str())],
    );
    assert!(replay.status.success(), "{replay}");
    assert!(
        until_received(&receiver, 10 * SECOND, |r| {
            r.len() >= before + 3 && all_confirmed(&r[before..], &[s1, s2, s3])
        })
        .await,
        "the replay through the daemon did not arrive:\n{}\nlogs:\n{}",
        receiver.describe(),
        daemon.logs()
    );
    let requests = receiver.requests();
    assert_eq!(
        request_seqs(&requests[before..]),
        vec![s1, s2, s3],
        "{}",
        receiver.describe()
    );
    assert_deliveries(&secret, &requests, &rows(&daemon, Some(token)).await);
}

postgres_only! {
    /// Two instances with push on one PostgreSQL database: one delivers (the delivery
    /// lock), every change arrives once and in order whichever instance stored it; after
    /// `kill -9` of the one delivering, the other takes over from the shared cursor and
    /// nothing is skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_push_each_change_once_and_one_takes_over_from_a_dead_one() {
        const DELIVERS: &str = "this instance delivers";
        let receiver = Receiver::start();
        let secret = new_secret();
        let args = notify_args(&receiver, &secret, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut a = Daemon::start(&args);
        let mut b = Daemon::start_beside(&a, &args);
        let t = now();
        for (n, daemon) in [&a, &b, &a, &b].into_iter().enumerate() {
            daemon
                .store(&subscription_started(&format!("nt-two-{n}")).at(t - minutes(9 - n as i64)))
                .await;
        }
        assert!(
            poll_until(5 * SECOND, StdDuration::from_millis(20), || async {
                feed(&a, None).await.len() == 4
            })
            .await
        );
        let all = seqs(&feed(&a, None).await);
        assert!(
            until_confirmed(&receiver, &all, 10 * SECOND).await,
            "{}\nA:\n{}\nB:\n{}",
            receiver.describe(),
            a.logs(),
            b.logs()
        );
        assert_eq!(request_seqs(&receiver.requests()), all, "each once, in order");
        let a_delivers = a.logs().contains(DELIVERS);
        assert_ne!(a_delivers, b.logs().contains(DELIVERS), "exactly one delivers");

        let (dead, alive) = if a_delivers { (&mut a, &b) } else { (&mut b, &a) };
        dead.crash();
        for n in 4..6 {
            alive
                .store(&subscription_started(&format!("nt-two-{n}")).at(t - minutes(2)))
                .await;
        }
        let after = seqs(&feed(alive, None).await);
        assert_eq!(after.len(), 6);
        assert!(
            until_confirmed(&receiver, &after, 15 * SECOND).await,
            "the survivor did not take over:\n{}\nlogs:\n{}",
            receiver.describe(),
            alive.logs()
        );
        assert!(alive.logs().contains(DELIVERS), "{}", alive.logs());
        // At least once: the change in flight when the deliverer died (confirmed by the
        // receiver, its cursor not yet moved) may come again, right after itself.
        let seen = request_seqs(&receiver.requests());
        let mut once = seen.clone();
        once.dedup();
        assert_eq!(once, after, "in order, nothing skipped: {seen:?}");
        assert!(seen.len() <= after.len() + 1, "more than the change in flight again: {seen:?}");
    }
}
