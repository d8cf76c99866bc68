//! Adapty's server-side API (issue #19), against the fake in `fake_adapty.rs`, through
//! the real daemon and the real CLI:
//! - the fake itself plays every documented answer (200 with several levels, lifetime,
//!   `starts_at` ahead, 401, 404, 429 with `Retry-After`, 500, slow);
//! - a fetched profile is one stored `adapty_api_snapshot` event
//!   (`adapty-api:<profile_id>:<timestamp>`, Adapty's `timestamp` as its time, the raw
//!   answer in the body with its source), folded as an authoritative snapshot: a
//!   listed level is active until `expires_at` (null: lifetime) and from `starts_at`;
//!   an unlisted one ends; an older webhook does not override it, a newer one amends;
//! - `entitled sync`: a 1,000-user backfill on a stopped database, beside a running
//!   daemon (through its refresh routes), its summary and exit codes (0, 1 with the
//!   failed ids, 2 at once on 401), re-runs that change nothing;
//! - `POST /profiles/{id}/refresh`, `POST /users/{cuid}/refresh` and their errors
//!   (501 `adapty_api_off`, 404 `unknown_to_adapty`, 502 `adapty_unauthorized` /
//!   `adapty_unavailable`), 429 waited out, 5xx retried;
//! - verify before lapse: a lost renewal corrected, a true expiry confirmed (once),
//!   nothing asked for a level that was not going to renew or with the check off;
//! - `?wait_for=active&timeout=S`: answered at the webhook's arrival, at the timeout,
//!   and after asking Adapty once;
//! - the secret key in no log (at trace) and no `--help`.

use crate::fake_adapty::{FakeAdapty, Fault, Level, Request};
use crate::helpers::*;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::{Duration as StdDuration, Instant};

// ---- helpers ------------------------------------------------------------------------

/// A fresh secret key shaped like Adapty's.
fn secret_key() -> String {
    format!("secret_live_{}", uuid().replace('-', ""))
}

/// A fake Adapty with a fresh key.
fn fake() -> FakeAdapty {
    FakeAdapty::start(&secret_key())
}

/// `--adapty-secret-key K --adapty-api-url URL`.
fn adapty_flags(fake: &FakeAdapty) -> Vec<String> {
    vec![
        "--adapty-secret-key".to_owned(),
        fake.key().to_owned(),
        "--adapty-api-url".to_owned(),
        fake.url.clone(),
    ]
}

/// Starts the daemon with the fake's flags (when given) and `extra`.
fn daemon_with(fake: Option<&FakeAdapty>, extra: &[&str]) -> Daemon {
    daemon_with_env(fake, extra, &[])
}

fn daemon_with_env(fake: Option<&FakeAdapty>, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    let mut args: Vec<String> = fake.map(adapty_flags).unwrap_or_default();
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_with_env(&args, env)
}

/// A client that waits long enough for a daemon retrying Adapty with backoff.
fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(StdDuration::from_secs(90))
        .build()
        .expect("an HTTP client")
}

/// An answer with the one header these tests read, and how long it took.
struct Answer {
    resp: Resp,
    refresh: Option<String>,
    took: StdDuration,
}

async fn send(request: reqwest::RequestBuilder, what: String) -> Answer {
    let started = Instant::now();
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer: {e:?}"));
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let refresh = header("entitled-refresh");
    let content_type = header("content-type").unwrap_or_default();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{what}: {status} with an unreadable body: {e:?}"));
    let took = started.elapsed();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        resp: Resp {
            what,
            status,
            content_type,
            text,
            json,
        },
        refresh,
        took,
    }
}

/// `POST path` (a refresh route), with the read token when given.
async fn post(daemon: &Daemon, path: &str, read_token: Option<&str>) -> Answer {
    let mut request = patient_client().post(daemon.url(path));
    if let Some(token) = read_token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(request, format!("POST {path}")).await
}

/// `GET path`, with the read token when given, timed.
async fn get(daemon: &Daemon, path: &str, read_token: Option<&str>) -> Answer {
    let mut request = patient_client().get(daemon.url(path));
    if let Some(token) = read_token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(request, format!("GET {path}")).await
}

/// The `GET` access answer a refresh must equal (clock fields aside).
async fn access(daemon: &Daemon, path: &str, read_token: Option<&str>) -> Value {
    let answer = get(daemon, path, read_token).await;
    answer.resp.expect(200);
    answer.resp.json
}

/// A refresh that must succeed: 200, the `entitled-refresh` header as expected, and
/// the same JSON as the matching `GET …/access`.
#[track_caller]
fn assert_refreshed(answer: &Answer, expected: &str, access_now: &Value) {
    answer.resp.expect(200);
    assert_eq!(
        answer.refresh.as_deref(),
        Some(expected),
        "`entitled-refresh` header: {}",
        answer.resp
    );
    assert_eq!(
        without_clock(answer.resp.json.clone()),
        without_clock(access_now.clone()),
        "a refresh answers what the access route answers: {}",
        answer.resp
    );
}

/// The sum of every sample of a metric whose labels contain `label` (all when None).
async fn metric(daemon: &Daemon, name: &str, label: Option<&str>) -> f64 {
    let resp = daemon.get("/metrics").await;
    resp.expect(200);
    resp.text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.trim().rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            if metric != name || label.is_some_and(|l| !labels.contains(l)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// A level of an answer, insisting it is listed.
#[track_caller]
fn level<'a>(answer: &'a Value, id: &str) -> &'a Value {
    let level = &answer["access_levels"][id];
    assert!(level.is_object(), "no `{id}` level in: {answer}");
    level
}

/// `?at=` value.
fn at(t: DateTime<Utc>) -> String {
    out_time(t).replace(':', "%3A")
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("a timestamp in range")
}

/// A stored snapshot event, as the `events` table has it.
#[derive(Debug)]
struct Stored {
    profile_event_id: String,
    event_type: String,
    canonical_type: Option<String>,
    event_datetime: String,
    body: Value,
}

/// The snapshot events of a profile in the database, in arrival order.
fn snapshots(daemon: &Daemon, profile_id: &str) -> Vec<Stored> {
    let sql = "SELECT profile_event_id, event_type, canonical_type, event_datetime, body \
               FROM events WHERE profile_id = ?1 AND event_type = 'adapty_api_snapshot' \
               ORDER BY seq";
    daemon
        .rows(sql, &[profile_id])
        .into_iter()
        .map(|r| {
            let text = |v: &Value| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{sql}: {r:?}"))
                    .to_owned()
            };
            Stored {
                profile_event_id: text(&r[0]),
                event_type: text(&r[1]),
                canonical_type: r[2].as_str().map(str::to_owned),
                event_datetime: text(&r[3]),
                // Text in SQLite; kept as it came if a column holds JSON itself.
                body: match &r[4] {
                    Value::String(body) => {
                        serde_json::from_str(body).unwrap_or(Value::String(body.clone()))
                    }
                    other => other.clone(),
                },
            }
        })
        .collect()
}

/// The stored event is exactly the snapshot of Adapty's answer to `request`.
#[track_caller]
fn assert_stored_snapshot(stored: &Stored, request: &Request, source: &str) {
    let timestamp = request
        .timestamp
        .unwrap_or_else(|| panic!("the fake answered {} with no timestamp", request.status));
    let profile_id = request.profile_id.as_deref().expect("a profile");
    assert_eq!(
        stored.profile_event_id,
        format!("adapty-api:{profile_id}:{timestamp}"),
        "{stored:?}"
    );
    assert_eq!(stored.event_type, "adapty_api_snapshot", "{stored:?}");
    assert_eq!(
        stored.canonical_type.as_deref(),
        Some("adapty_api_snapshot"),
        "{stored:?}"
    );
    assert_eq!(
        stored.event_datetime,
        out_time(from_millis(timestamp)),
        "the event's time is Adapty's timestamp: {stored:?}"
    );
    assert_eq!(stored.body["source"], json!(source), "{stored:?}");
    let raw: Value = serde_json::from_str(&request.body).expect("the fake answers JSON");
    assert_eq!(
        stored.body["response"], raw,
        "the body keeps Adapty's answer as it came: {stored:?}"
    );
}

/// Polls (every 100 ms, up to `limit`) until the fake got `n` requests about a profile.
async fn until_requests(fake: &FakeAdapty, profile_id: &str, n: usize, limit: StdDuration) -> bool {
    poll_until(limit, StdDuration::from_millis(100), || async {
        fake.requests_for(profile_id).len() >= n
    })
    .await
}

// ---- the CLI ------------------------------------------------------------------------

/// Runs `entitled ARGS` with `env` set and `stdin` fed in, bounded to two minutes.
fn run(args: &[String], env: &[(&str, &str)], stdin: Option<Vec<u8>>) -> Run {
    let mut command = entitled();
    command.args(args).envs(env.iter().copied());
    run_bounded(command, args.join(" "), stdin, StdDuration::from_secs(120))
}

/// `sync --db DB --adapty-secret-key K --adapty-api-url URL EXTRA…`.
fn sync_args(db: &str, fake: &FakeAdapty, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["sync".to_owned(), "--db".to_owned(), db.to_owned()];
    args.extend(adapty_flags(fake));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// The counts of the `synced:` line.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    fetched: u64,
    changed: u64,
    unknown: u64,
    failed: u64,
}

#[track_caller]
fn summary(run: &Run) -> Summary {
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("synced:"))
        .unwrap_or_else(|| panic!("no line starting with `synced:` on stdout: {run}"));
    let words: Vec<&str> = line
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let count = |name: &str| -> u64 {
        words
            .windows(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair[1].parse().ok())
            .unwrap_or_else(|| panic!("no `{name} N` in the summary {line:?}: {run}"))
    };
    Summary {
        fetched: count("fetched"),
        changed: count("changed"),
        unknown: count("unknown"),
        failed: count("failed"),
    }
}

/// A fresh, stopped database: a daemon started and stopped on it (kept for its
/// directory and for starting again).
fn stopped_database(args: &[&str]) -> Daemon {
    let mut daemon = Daemon::start(args);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    daemon
}

// ---- the fake itself ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_adapty_plays_every_documented_answer() {
    let fake = fake();
    let t = now();
    fake.set_profile(
        "fk-1",
        Some("fk-user"),
        vec![
            Level::subscription("premium", t + days(30)),
            Level::lifetime("gold"),
            Level::subscription("future", t + days(60)).starting(t + days(1)),
        ],
    );
    let client = client();
    let url = format!("{}{}", fake.url, crate::fake_adapty::PROFILE_PATH);
    let ask = |headers: Vec<(&'static str, String)>| {
        let mut request = client.get(&url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move {
            let started = Instant::now();
            let response = request.send().await.expect("the fake answers");
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            let body: Value = response.json().await.expect("JSON");
            (status, retry_after, body, started.elapsed())
        }
    };
    let key = format!("Api-Key {}", fake.key());
    let by_profile = |id: &str| {
        vec![
            ("authorization", key.clone()),
            ("adapty-profile-id", id.to_owned()),
        ]
    };

    // 200 with several levels, lifetime and a future start among them.
    let before = Utc::now().timestamp_millis();
    let (status, _, body, _) = ask(by_profile("fk-1")).await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(data["profile_id"], json!("fk-1"), "{body}");
    assert_eq!(data["customer_user_id"], json!("fk-user"), "{body}");
    let timestamp = data["timestamp"].as_i64().expect("an integer timestamp");
    assert!(
        timestamp >= before && timestamp <= Utc::now().timestamp_millis(),
        "{body}"
    );
    for key in [
        "app_id",
        "total_revenue_usd",
        "segment_hash",
        "custom_attributes",
        "subscriptions",
        "non_subscriptions",
    ] {
        assert!(data.get(key).is_some(), "no `{key}`: {body}");
    }
    let levels = data["access_levels"].as_array().expect("an array");
    assert_eq!(levels.len(), 3, "{body}");
    let mut keys: Vec<&str> = levels[0]
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_level_id",
            "billing_issue_detected_at",
            "cancellation_reason",
            "environment",
            "expires_at",
            "is_in_grace_period",
            "is_lifetime",
            "is_refund",
            "offer",
            "originally_purchased_at",
            "purchased_at",
            "renewal_cancelled_at",
            "starts_at",
            "store",
            "store_base_plan_id",
            "store_original_transaction_id",
            "store_product_id",
            "store_transaction_id",
        ]
    );
    assert_eq!(
        levels[0]["expires_at"],
        json!(crate::fake_adapty::api_time(t + days(30))),
        "{body}"
    );
    assert!(
        levels[0]["expires_at"]
            .as_str()
            .is_some_and(|s| s.ends_with("+00:00") && s.contains('.')),
        "{body}"
    );
    assert_eq!(levels[1]["expires_at"], Value::Null, "lifetime: {body}");
    assert_eq!(levels[1]["is_lifetime"], json!(true), "{body}");
    assert_eq!(
        levels[2]["starts_at"],
        json!(crate::fake_adapty::api_time(t + days(1))),
        "{body}"
    );

    // By customer_user_id: the same profile.
    let (status, _, body, _) = ask(vec![
        ("authorization", key.clone()),
        ("adapty-customer-user-id", "fk-user".to_owned()),
    ])
    .await;
    assert_eq!((status, &body["data"]["profile_id"]), (200, &json!("fk-1")));

    // A fixed timestamp.
    fake.set_timestamp("fk-1", Some(1_735_037_423_123));
    let (_, _, body, _) = ask(by_profile("fk-1")).await;
    assert_eq!(body["data"]["timestamp"], json!(1_735_037_423_123_i64));
    fake.set_timestamp("fk-1", None);

    // 401: a wrong key, no key, or every request refused.
    let unauthorized = json!({
        "errors": [{"source": null, "errors": ["Invalid API key"]}],
        "error_code": "not_authenticated",
        "status_code": 401
    });
    let (status, _, body, _) = ask(vec![
        ("authorization", "Api-Key secret_live_wrong".to_owned()),
        ("adapty-profile-id", "fk-1".to_owned()),
    ])
    .await;
    assert_eq!((status, &body), (401, &unauthorized));
    let (status, _, body, _) = ask(vec![("adapty-profile-id", "fk-1".to_owned())]).await;
    assert_eq!((status, &body), (401, &unauthorized));
    fake.set_unauthorized(true);
    let (status, _, body, _) = ask(by_profile("fk-1")).await;
    assert_eq!((status, &body), (401, &unauthorized));
    fake.set_unauthorized(false);

    // 404, by either header.
    let (status, _, body, _) = ask(by_profile("fk-nobody")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error_code"],
        json!("profile_does_not_exist"),
        "{body}"
    );
    assert_eq!(body["status_code"], json!(404), "{body}");
    let (status, _, _, _) = ask(vec![
        ("authorization", key.clone()),
        ("adapty-customer-user-id", "fk-nobody".to_owned()),
    ])
    .await;
    assert_eq!(status, 404);

    // Both selectors: refused.
    let mut both = by_profile("fk-1");
    both.push(("adapty-customer-user-id", "fk-user".to_owned()));
    let (status, _, _, _) = ask(both).await;
    assert_eq!(status, 400);

    // Scripted faults, in order, then the normal answer again.
    fake.fail_next("fk-1", 1, Fault::TooManyRequests);
    fake.fail_next("fk-1", 1, Fault::ServerError);
    fake.fail_next("fk-1", 1, Fault::Slow(StdDuration::from_millis(300)));
    let (status, retry_after, body, _) = ask(by_profile("fk-1")).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("1")), "{body}");
    assert_eq!(body["status_code"], json!(429), "{body}");
    let (status, _, body, _) = ask(by_profile("fk-1")).await;
    assert_eq!(status, 500, "{body}");
    let (status, _, body, took) = ask(by_profile("fk-1")).await;
    assert_eq!(status, 200, "{body}");
    assert!(took >= StdDuration::from_millis(300), "slow: {took:?}");
    // The faults are used up: the normal answer.
    let (status, _, _, _) = ask(by_profile("fk-1")).await;
    assert_eq!(status, 200);
    // A fault scripted for a profile also meets a request by its user.
    fake.fail_next("fk-1", 1, Fault::ServerError);
    let (status, _, _, _) = ask(vec![
        ("authorization", key.clone()),
        ("adapty-customer-user-id", "fk-user".to_owned()),
    ])
    .await;
    assert_eq!(status, 500);

    // The levels are scriptable, and the fake counts and records.
    fake.set_levels("fk-1", vec![]);
    let (_, _, body, _) = ask(by_profile("fk-1")).await;
    assert_eq!(body["data"]["access_levels"], json!([]), "{body}");
    let requests = fake.requests_for("fk-1");
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 200, 401, 401, 401, 429, 500, 200, 200, 500, 200],
        "{}",
        fake.describe_requests()
    );
    // By user: the 200, the 500, and the request naming both.
    assert_eq!(fake.requests_for_user("fk-user").len(), 3);
    assert_eq!(fake.requests_total(), 15, "{}", fake.describe_requests());
    let last = requests.last().expect("a request");
    assert_eq!(last.header("Authorization"), Some(key.as_str()));
    assert_eq!(last.header("adapty-profile-id"), Some("fk-1"));
    assert_eq!(last.path, crate::fake_adapty::PROFILE_PATH);
    assert!(last.timestamp.is_some());
}

// ---- snapshots and the projection -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_authoritative_for_the_levels_it_lists_and_omits() {
    let fake = fake();
    let daemon = daemon_with(Some(&fake), &[]);
    let t = now();
    // Webhooks made premium and gold active.
    daemon
        .store_all(&[
            subscription_started("snap-1")
                .user("snap-user")
                .at(t - hours(2))
                .expires(t + days(30)),
            access_level_updated("snap-1", "gold", true, Some(t + days(10))).at(t - hours(1)),
        ])
        .await;
    assert!(daemon.active("snap-1", "premium").await);
    assert!(daemon.active("snap-1", "gold").await);

    // Adapty now lists gold (a later expiry), a lifetime vip, and a level starting in
    // three seconds; premium is gone.
    let starts = now() + secs(3);
    fake.set_profile(
        "snap-1",
        Some("snap-user"),
        vec![
            Level::subscription("gold", t + days(20)),
            Level::lifetime("vip"),
            Level::subscription("future", t + days(40)).starting(starts),
        ],
    );
    let answer = post(&daemon, "/profiles/snap-1/refresh", None).await;
    let now_answer = daemon.profile("snap-1").await;
    assert_refreshed(&answer, "changed", &now_answer);
    let a = &answer.resp.json;
    assert_eq!(a["premium"], json!(true), "{a}");
    assert_eq!(
        level(a, "premium")["active"],
        json!(false),
        "a level the snapshot does not list ends: {a}"
    );
    let gold = level(a, "gold");
    assert_eq!(gold["active"], json!(true), "{a}");
    assert_eq!(gold["expires_at"], json!(out_time(t + days(20))), "{a}");
    let vip = level(a, "vip");
    assert_eq!(vip["active"], json!(true), "lifetime: {a}");
    assert_eq!(vip["expires_at"], Value::Null, "lifetime: {a}");
    let future = level(a, "future");
    assert_eq!(future["starts_at"], json!(out_time(starts)), "{a}");
    if Utc::now() < starts - secs(1) {
        assert_eq!(future["active"], json!(false), "not before starts_at: {a}");
    }
    for id in ["premium", "gold", "vip", "future"] {
        assert_level_shape(level(a, id));
    }

    // One event, the snapshot of what the fake answered.
    let requests = fake.requests_for("snap-1");
    assert_eq!(requests.len(), 1, "{}", fake.describe_requests());
    assert_eq!(requests[0].header("adapty-profile-id"), Some("snap-1"));
    assert_eq!(requests[0].header("adapty-customer-user-id"), None);
    let stored = snapshots(&daemon, "snap-1");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_stored_snapshot(&stored[0], &requests[0], "refresh");

    // Time travel sees the webhooks' state before the snapshot's time.
    let snapshot_at = from_millis(requests[0].timestamp.expect("a timestamp"));
    let before = access(
        &daemon,
        &format!("/profiles/snap-1/access?at={}", at(snapshot_at - secs(1))),
        None,
    )
    .await;
    assert_eq!(level(&before, "premium")["active"], json!(true), "{before}");
    assert_eq!(
        level(&before, "gold")["expires_at"],
        json!(out_time(t + days(10))),
        "{before}"
    );

    // The future level starts by the clock, with no event.
    let started = poll_until(
        StdDuration::from_secs(10),
        StdDuration::from_millis(100),
        || async { daemon.active("snap-1", "future").await },
    )
    .await;
    assert!(
        started,
        "the level never started: {}",
        daemon.profile("snap-1").await
    );
    assert!(Utc::now() >= starts, "active before its starts_at {starts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_webhook_does_not_override_a_snapshot_and_a_newer_one_amends_it() {
    let fake = fake();
    let daemon = daemon_with(Some(&fake), &[]);
    let t = now();
    let renewed = t + days(30);
    // Adapty's answer dates from ten minutes ago.
    let snapshot_ms = (t - minutes(10)).timestamp_millis();
    fake.set_profile("ord-1", None, vec![Level::subscription("premium", renewed)]);
    fake.set_timestamp("ord-1", Some(snapshot_ms));
    let answer = post(&daemon, "/profiles/ord-1/refresh", None).await;
    answer.resp.expect(200);
    assert_eq!(
        level(&answer.resp.json, "premium")["active"],
        json!(true),
        "{}",
        answer.resp
    );
    assert_eq!(
        snapshots(&daemon, "ord-1")[0].profile_event_id,
        format!("adapty-api:ord-1:{snapshot_ms}")
    );

    // A refund from an hour ago arrives late: the snapshot already knew better.
    daemon
        .store(
            &subscription_refunded("ord-1")
                .at(t - hours(1))
                .expires(t - hours(1)),
        )
        .await;
    let a = daemon.profile("ord-1").await;
    assert_eq!(
        level(&a, "premium")["active"],
        json!(true),
        "an older webhook overrode the snapshot: {a}"
    );
    assert_eq!(
        level(&a, "premium")["expires_at"],
        json!(out_time(renewed)),
        "{a}"
    );

    // A renewal cancelled after the snapshot amends it (still active until expiry).
    daemon
        .store(&subscription_renewal_cancelled("ord-1").at(t - minutes(5)))
        .await;
    let a = daemon.profile("ord-1").await;
    assert_eq!(level(&a, "premium")["active"], json!(true), "{a}");
    assert_eq!(
        level(&a, "premium")["will_renew"],
        json!(false),
        "a newer webhook amends: {a}"
    );

    // A refund after the snapshot ends access.
    daemon
        .store(
            &subscription_refunded("ord-1")
                .at(t - minutes(1))
                .expires(t - minutes(1)),
        )
        .await;
    let a = daemon.profile("ord-1").await;
    assert_eq!(
        level(&a, "premium")["active"],
        json!(false),
        "a newer refund: {a}"
    );
    assert_eq!(a["premium"], json!(false), "{a}");

    // Refetching the same answer (same timestamp) stores nothing new.
    let answer = post(&daemon, "/profiles/ord-1/refresh", None).await;
    let now_answer = daemon.profile("ord-1").await;
    assert_refreshed(&answer, "unchanged", &now_answer);
    assert_eq!(snapshots(&daemon, "ord-1").len(), 1);
    assert_eq!(fake.requests_for("ord-1").len(), 2);
}

// ---- refresh --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_routes_fetch_fold_and_answer_like_the_access_routes() {
    let fake = fake();
    let token = "rd-refresh-token";
    let daemon = daemon_with(Some(&fake), &["--read-token", token]);
    let t = now();
    fake.set_profile(
        "ref-1",
        Some("ref-user"),
        vec![
            Level::subscription("premium", t + days(30)),
            Level::lifetime("gold"),
        ],
    );

    // The read token guards the route.
    let answer = post(&daemon, "/profiles/ref-1/refresh", None).await;
    answer.resp.expect_error(401, "unauthorized");
    let answer = post(&daemon, "/profiles/ref-1/refresh", Some("wrong")).await;
    answer.resp.expect_error(401, "unauthorized");
    assert_eq!(
        fake.requests_total(),
        0,
        "an unauthorized refresh asked Adapty"
    );

    let answer = post(&daemon, "/profiles/ref-1/refresh", Some(token)).await;
    let now_answer = access(&daemon, "/profiles/ref-1/access", Some(token)).await;
    assert_refreshed(&answer, "changed", &now_answer);
    let a = &answer.resp.json;
    assert_eq!(a["premium"], json!(true), "{a}");
    assert_eq!(a["customer_user_id"], json!("ref-user"), "{a}");
    assert_eq!(
        level(a, "premium")["expires_at"],
        json!(out_time(t + days(30))),
        "{a}"
    );
    assert_eq!(level(a, "gold")["active"], json!(true), "{a}");
    assert_eq!(level(a, "gold")["expires_at"], Value::Null, "{a}");
    let requests = fake.requests_for("ref-1");
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Api-Key {}", fake.key()).as_str())
    );
    assert_eq!(requests[0].header("adapty-profile-id"), Some("ref-1"));
    assert_eq!(requests[0].header("adapty-customer-user-id"), None);
    assert_stored_snapshot(&snapshots(&daemon, "ref-1")[0], &requests[0], "refresh");

    // Nothing changed at Adapty: unchanged (a new timestamp, the same access).
    let answer = post(&daemon, "/profiles/ref-1/refresh", Some(token)).await;
    let now_answer = access(&daemon, "/profiles/ref-1/access", Some(token)).await;
    assert_refreshed(&answer, "unchanged", &now_answer);

    // An unchanged answer with the same timestamp is a duplicate: no new event.
    fake.set_timestamp("ref-1", Some((t - secs(1)).timestamp_millis()));
    post(&daemon, "/profiles/ref-1/refresh", Some(token))
        .await
        .resp
        .expect(200);
    let stored_before = snapshots(&daemon, "ref-1").len();
    let answer = post(&daemon, "/profiles/ref-1/refresh", Some(token)).await;
    assert_eq!(
        answer.refresh.as_deref(),
        Some("unchanged"),
        "{}",
        answer.resp
    );
    assert_eq!(snapshots(&daemon, "ref-1").len(), stored_before);
    fake.set_timestamp("ref-1", None);

    // Adapty changed its mind: changed, and the access route agrees.
    fake.set_levels("ref-1", vec![Level::lifetime("gold")]);
    let answer = post(&daemon, "/profiles/ref-1/refresh", Some(token)).await;
    let now_answer = access(&daemon, "/profiles/ref-1/access", Some(token)).await;
    assert_refreshed(&answer, "changed", &now_answer);
    assert_eq!(
        level(&now_answer, "premium")["active"],
        json!(false),
        "{now_answer}"
    );

    // The users route asks by customer_user_id and answers like the users route.
    fake.set_profile(
        "ref-2",
        Some("ref-user-2"),
        vec![Level::subscription("premium", t + days(7))],
    );
    let answer = post(&daemon, "/users/ref-user-2/refresh", Some(token)).await;
    let now_answer = access(&daemon, "/users/ref-user-2/access", Some(token)).await;
    assert_refreshed(&answer, "changed", &now_answer);
    let a = &answer.resp.json;
    assert_eq!(a["customer_user_id"], json!("ref-user-2"), "{a}");
    assert_eq!(a["profile_ids"], json!(["ref-2"]), "{a}");
    assert_eq!(a["premium"], json!(true), "{a}");
    assert_eq!(level(a, "premium")["profile_id"], json!("ref-2"), "{a}");
    let requests = fake.requests_for_user("ref-user-2");
    assert_eq!(requests.len(), 1, "{}", fake.describe_requests());
    assert_eq!(requests[0].header("adapty-profile-id"), None);
    assert_stored_snapshot(&snapshots(&daemon, "ref-2")[0], &requests[0], "refresh");
    let answer = post(&daemon, "/users/ref-user-2/refresh", Some(token)).await;
    let now_answer = access(&daemon, "/users/ref-user-2/access", Some(token)).await;
    assert_refreshed(&answer, "unchanged", &now_answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_maps_adapty_failures_to_errors_and_waits_out_429() {
    let fake = fake();
    let daemon = daemon_with(Some(&fake), &[]);
    let t = now();
    fake.set_profile(
        "err-1",
        Some("err-user"),
        vec![Level::subscription("premium", t + days(30))],
    );

    // 404 from Adapty: unknown_to_adapty, by profile and by user.
    post(&daemon, "/profiles/err-nobody/refresh", None)
        .await
        .resp
        .expect_error(404, "unknown_to_adapty");
    post(&daemon, "/users/err-nobody-user/refresh", None)
        .await
        .resp
        .expect_error(404, "unknown_to_adapty");
    assert_eq!(daemon.profile("err-nobody").await["premium"], json!(false));

    // 429 with Retry-After: 1 is waited out, then the answer.
    fake.fail_next("err-1", 1, Fault::TooManyRequests);
    let answer = post(&daemon, "/profiles/err-1/refresh", None).await;
    answer.resp.expect(200);
    assert_eq!(answer.resp.json["premium"], json!(true), "{}", answer.resp);
    let requests = fake.requests_for("err-1");
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200],
        "{}",
        fake.describe_requests()
    );
    let waited = (requests[1].at - requests[0].at)
        .to_std()
        .expect("in order");
    assert!(
        waited >= StdDuration::from_millis(900),
        "Retry-After: 1 not honoured: retried after {waited:?}"
    );

    // A 500 is retried.
    fake.fail_next("err-1", 1, Fault::ServerError);
    let answer = post(&daemon, "/profiles/err-1/refresh", None).await;
    answer.resp.expect(200);
    assert_eq!(
        fake.requests_for("err-1")
            .iter()
            .skip(2)
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [500, 200]
    );

    // A slow answer is waited for.
    fake.fail_next("err-1", 1, Fault::Slow(StdDuration::from_millis(1500)));
    let answer = post(&daemon, "/profiles/err-1/refresh", None).await;
    answer.resp.expect(200);
    assert!(
        answer.took >= StdDuration::from_millis(1500),
        "{:?}",
        answer.took
    );
    assert_eq!(answer.resp.json["premium"], json!(true), "{}", answer.resp);

    // 5xx every time: adapty_unavailable, after retrying.
    fake.fail_next("err-1", 10_000, Fault::ServerError);
    let before = fake.requests_for("err-1").len();
    let answer = post(&daemon, "/profiles/err-1/refresh", None).await;
    answer.resp.expect_error(502, "adapty_unavailable");
    let tries = fake.requests_for("err-1").len() - before;
    assert!(tries >= 2, "a 500 was not retried ({tries} request)");
    fake.clear_faults("err-1");
    // The access answer is untouched by the failure.
    assert_eq!(daemon.profile("err-1").await["premium"], json!(true));

    // 401 from Adapty (a wrong key): adapty_unauthorized, by either route.
    fake.set_unauthorized(true);
    let answer = post(&daemon, "/profiles/err-1/refresh", None).await;
    answer.resp.expect_error(502, "adapty_unauthorized");
    assert!(!answer.resp.text.contains(fake.key()), "{}", answer.resp);
    post(&daemon, "/users/err-user/refresh", None)
        .await
        .resp
        .expect_error(502, "adapty_unauthorized");
    fake.set_unauthorized(false);

    // And it works again.
    post(&daemon, "/users/err-user/refresh", None)
        .await
        .resp
        .expect(200);
    let requests = metric(&daemon, "entitled_adapty_requests_total", None).await;
    assert!(
        requests >= 10.0,
        "entitled_adapty_requests_total = {requests}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_without_a_key_is_501_adapty_api_off() {
    let daemon = Daemon::start(&[]);
    daemon
        .store(&subscription_started("off-1").user("off-user"))
        .await;
    post(&daemon, "/profiles/off-1/refresh", None)
        .await
        .resp
        .expect_error(501, "adapty_api_off");
    post(&daemon, "/users/off-user/refresh", None)
        .await
        .resp
        .expect_error(501, "adapty_api_off");
    // Lookups are as before.
    assert!(daemon.active("off-1", "premium").await);
}

// ---- entitled sync ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_backfills_a_thousand_users_on_a_stopped_database_and_a_rerun_changes_nothing() {
    let fake = fake();
    let t = now();
    let user = |i: usize| format!("bf-user-{i:04}");
    let profile = |i: usize| format!("bf-prof-{i:04}");
    // Every 25th user is unknown to Adapty; the others have access: a monthly
    // subscription, a lifetime purchase, or premium and gold.
    let unknown = |i: usize| i % 25 == 7;
    let expiry = |i: usize| t + hours(i as i64 + 1);
    for i in (0..1000).filter(|&i| !unknown(i)) {
        let levels = match i % 5 {
            1 => vec![Level::lifetime("premium")],
            2 => vec![
                Level::subscription("premium", expiry(i)),
                Level::subscription("gold", expiry(i) + days(1)),
            ],
            _ => vec![Level::subscription("premium", expiry(i))],
        };
        fake.set_profile(&profile(i), Some(&user(i)), levels);
    }
    let mut daemon = stopped_database(&[]);
    let ids_file = daemon.dir().join("users.txt");
    let mut ids = String::new();
    for i in 0..1000 {
        if i % 100 == 50 {
            ids.push('\n'); // blank lines are ignored
        }
        ids.push_str(&user(i));
        ids.push('\n');
    }
    ids.push('\n');
    std::fs::write(&ids_file, ids).expect("the id file");
    let ids_path = ids_file.display().to_string();
    let args = sync_args(
        &daemon.db_arg(),
        &fake,
        &[
            "--customer-user-ids",
            &ids_path,
            "--concurrency",
            "16",
            "--rate",
            "1000",
        ],
    );

    let started = Instant::now();
    let first = run(&args, &[], None);
    let took = started.elapsed();
    assert_eq!(first.status.code(), Some(0), "{first}");
    assert_eq!(
        summary(&first),
        Summary {
            fetched: 960,
            changed: 960,
            unknown: 40,
            failed: 0
        },
        "{first}"
    );
    assert_eq!(fake.requests_total(), 1000, "one request a user");
    assert!(
        fake.requests()
            .iter()
            .all(|r| r.header("adapty-customer-user-id").is_some()
                && r.header("adapty-profile-id").is_none()),
        "by customer_user_id"
    );
    eprintln!("sync of 1,000 users took {took:?}");
    assert_eq!(
        daemon.count("SELECT count(*) FROM events WHERE event_type = 'adapty_api_snapshot'"),
        960
    );
    let request = &fake.requests_for(&profile(3))[0];
    assert_stored_snapshot(&snapshots(&daemon, &profile(3))[0], request, "sync");

    // Again: nothing changes.
    let second = run(&args, &[], None);
    assert_eq!(second.status.code(), Some(0), "{second}");
    assert_eq!(
        summary(&second),
        Summary {
            fetched: 960,
            changed: 0,
            unknown: 40,
            failed: 0
        },
        "{second}"
    );

    // The daemon started on the file answers as Adapty said.
    daemon.start_again();
    for i in (0..1000).step_by(23).chain([7, 32, 999]) {
        let a = daemon.user(&user(i)).await;
        if unknown(i) {
            assert_eq!(a["premium"], json!(false), "{a}");
            assert_eq!(a["profile_ids"], json!([]), "{a}");
            continue;
        }
        assert_eq!(a["premium"], json!(true), "user {i}: {a}");
        assert_eq!(a["profile_ids"], json!([profile(i)]), "{a}");
        let premium = level(&a, "premium");
        assert_eq!(premium["active"], json!(true), "{a}");
        match i % 5 {
            1 => assert_eq!(premium["expires_at"], Value::Null, "lifetime: {a}"),
            2 => {
                assert_eq!(premium["expires_at"], json!(out_time(expiry(i))), "{a}");
                assert_eq!(
                    level(&a, "gold")["expires_at"],
                    json!(out_time(expiry(i) + days(1))),
                    "{a}"
                );
            }
            _ => assert_eq!(premium["expires_at"], json!(out_time(expiry(i))), "{a}"),
        }
    }
    assert_eq!(
        daemon.count("SELECT count(DISTINCT profile_id) FROM active_entitlements"),
        960
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_beside_a_running_daemon_updates_its_answers_without_a_restart() {
    let fake = fake();
    let token = "rd-sync-token";
    let daemon = daemon_with(Some(&fake), &["--read-token", token]);
    let t = now();
    daemon
        .store(
            &subscription_started("bs-1")
                .at(t - days(1))
                .expires(t + days(5)),
        )
        .await;
    let before = access(&daemon, "/profiles/bs-1/access", Some(token)).await;
    assert_eq!(before["premium"], json!(true), "{before}");
    // Adapty knows better: bs-1 has nothing any more, bs-2 and bs-3 have access the
    // webhooks never told.
    fake.set_profile("bs-1", None, vec![]);
    fake.set_profile(
        "bs-2",
        Some("bs-user-2"),
        vec![Level::subscription("premium", t + days(30))],
    );
    fake.set_profile("bs-3", None, vec![Level::lifetime("premium")]);
    let users = daemon.dir().join("users.txt");
    std::fs::write(&users, "bs-user-2\n").expect("the id file");
    let users = users.display().to_string();
    let args: Vec<String> = [
        "sync",
        "--db",
        &daemon.db_arg(),
        "--profile-ids",
        "-",
        "--customer-user-ids",
        &users,
        "--read-token",
        token,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The key, the API and the daemon's address from the environment this time.
    let env = [
        ("ENTITLED_ADAPTY_SECRET_KEY", fake.key()),
        ("ENTITLED_ADAPTY_API_URL", fake.url.as_str()),
        ("ENTITLED_DAEMON_URL", daemon.base.as_str()),
    ];
    let stdin = b"bs-1\n\nbs-3\nbs-unknown\n".to_vec();
    let first = run(&args, &env, Some(stdin.clone()));
    assert_eq!(first.status.code(), Some(0), "{first}");
    assert_eq!(
        summary(&first),
        Summary {
            fetched: 3,
            changed: 3,
            unknown: 1,
            failed: 0
        },
        "{first}"
    );

    // The running daemon answers the new state at once: on SQLite sync wrote through
    // it; on PostgreSQL sync wrote itself, and the daemon's follower shows it within a
    // moment (the bound is a second).
    if daemon.on_postgres() {
        let shown = poll_until(
            StdDuration::from_secs(1),
            StdDuration::from_millis(10),
            || async {
                access(&daemon, "/profiles/bs-1/access", Some(token)).await["premium"]
                    == json!(false)
            },
        )
        .await;
        assert!(shown, "the daemon did not follow sync's writes within 1 s");
    }
    let a = access(&daemon, "/profiles/bs-1/access", Some(token)).await;
    assert_eq!(a["premium"], json!(false), "{a}");
    assert_eq!(level(&a, "premium")["active"], json!(false), "{a}");
    let a = access(&daemon, "/users/bs-user-2/access", Some(token)).await;
    assert_eq!(a["premium"], json!(true), "{a}");
    assert_eq!(
        level(&a, "premium")["expires_at"],
        json!(out_time(t + days(30))),
        "{a}"
    );
    let a = access(&daemon, "/profiles/bs-3/access", Some(token)).await;
    assert_eq!(a["premium"], json!(true), "{a}");
    // On SQLite through the daemon: it made the requests. On PostgreSQL sync is one
    // more writer beside the daemon, and fetched itself.
    let made = metric(&daemon, "entitled_adapty_requests_total", None).await;
    if daemon.on_postgres() {
        assert_eq!(
            made, 0.0,
            "the daemon made {made} requests: sync went through it"
        );
    } else {
        assert!(
            made >= 4.0,
            "the daemon made {made} requests: not through it"
        );
    }
    assert_eq!(fake.requests_total(), 4, "{}", fake.describe_requests());
    assert_eq!(snapshots(&daemon, "bs-1").len(), 1);

    // Again: nothing changes.
    let second = run(&args, &env, Some(stdin));
    assert_eq!(second.status.code(), Some(0), "{second}");
    assert_eq!(
        summary(&second),
        Summary {
            fetched: 3,
            changed: 0,
            unknown: 1,
            failed: 0
        },
        "{second}"
    );
    // And the daemon still serves.
    assert_eq!(
        access(&daemon, "/profiles/bs-3/access", Some(token)).await["premium"],
        json!(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_counts_unknown_and_failed_ids_lists_the_failed_and_exits_1() {
    let fake = fake();
    let t = now();
    for id in ["sf-ok", "sf-429", "sf-slow", "sf-500-once", "sf-down-7f3a"] {
        fake.set_profile(id, None, vec![Level::subscription("premium", t + days(3))]);
    }
    fake.fail_next("sf-429", 1, Fault::TooManyRequests);
    fake.fail_next("sf-slow", 1, Fault::Slow(StdDuration::from_millis(1000)));
    fake.fail_next("sf-500-once", 1, Fault::ServerError);
    fake.fail_next("sf-down-7f3a", 10_000, Fault::ServerError);
    let daemon = stopped_database(&[]);
    let args = sync_args(
        &daemon.db_arg(),
        &fake,
        &["--profile-ids", "-", "--concurrency", "2", "--rate", "50"],
    );
    let stdin = b"sf-ok\nsf-429\nsf-slow\nsf-500-once\nsf-gone\nsf-down-7f3a\n".to_vec();
    let result = run(&args, &[], Some(stdin));
    assert_eq!(result.status.code(), Some(1), "{result}");
    assert_eq!(
        summary(&result),
        Summary {
            fetched: 4,
            changed: 4,
            unknown: 1,
            failed: 1
        },
        "{result}"
    );
    assert!(
        result.stderr.contains("sf-down-7f3a"),
        "failed ids on stderr: {result}"
    );
    assert!(
        fake.requests_for("sf-down-7f3a").len() >= 2,
        "a 500 was not retried: {}",
        fake.describe_requests()
    );
    let throttled = fake.requests_for("sf-429");
    assert_eq!(
        throttled.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200]
    );
    let waited = (throttled[1].at - throttled[0].at)
        .to_std()
        .expect("in order");
    assert!(
        waited >= StdDuration::from_millis(900),
        "Retry-After: 1 not honoured: {waited:?}"
    );
    for id in ["sf-ok", "sf-429", "sf-slow", "sf-500-once"] {
        assert_eq!(snapshots(&daemon, id).len(), 1, "{id}: {result}");
    }
    assert_eq!(snapshots(&daemon, "sf-down-7f3a").len(), 0);
    assert_eq!(
        daemon.count("SELECT count(*) FROM active_entitlements"),
        4,
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_stops_at_once_with_exit_2_when_adapty_refuses_the_key() {
    let fake = fake();
    let t = now();
    let mut ids = String::new();
    for i in 0..200 {
        let id = format!("s401-{i:03}");
        fake.set_profile(&id, None, vec![Level::subscription("premium", t + days(3))]);
        ids.push_str(&id);
        ids.push('\n');
    }
    fake.set_unauthorized(true);
    let daemon = stopped_database(&[]);
    let args = sync_args(
        &daemon.db_arg(),
        &fake,
        &["--profile-ids", "-", "--concurrency", "4", "--rate", "100"],
    );
    let result = run(&args, &[], Some(ids.into_bytes()));
    assert_eq!(result.status.code(), Some(2), "{result}");
    let said = result.stderr.to_lowercase();
    assert!(
        ["secret key", "secret-key", "secret_key"]
            .iter()
            .any(|w| said.contains(w)),
        "the message should name the secret key: {result}"
    );
    assert!(
        !result.stderr.contains(fake.key()),
        "the key itself is shown: {result}"
    );
    assert!(
        !result.stdout.contains(fake.key()),
        "the key itself is shown: {result}"
    );
    let asked = fake.requests_total();
    assert!(asked <= 20, "not at once: {asked} requests for 200 ids");
    assert_eq!(
        daemon.count("SELECT count(*) FROM events WHERE event_type = 'adapty_api_snapshot'"),
        0
    );
}

// ---- verify before lapse ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_before_lapse_corrects_a_lost_renewal() {
    let fake = fake();
    let daemon = daemon_with(Some(&fake), &["--verify-before-lapse", "1s"]);
    let t = now();
    let expires = t + secs(2);
    let renewed = t + days(30);
    // The renewal webhook never came; Adapty knows.
    fake.set_profile("vl-1", None, vec![Level::subscription("premium", renewed)]);
    daemon
        .store(
            &subscription_started("vl-1")
                .at(t - days(30))
                .expires(expires),
        )
        .await;
    assert_eq!(
        level(&daemon.profile("vl-1").await, "premium")["will_renew"],
        json!(true)
    );

    let corrected = poll_until(
        StdDuration::from_secs(15),
        StdDuration::from_millis(100),
        || async {
            let a = daemon.profile("vl-1").await;
            a["premium"] == json!(true)
                && a["access_levels"]["premium"]["expires_at"] == json!(out_time(renewed))
        },
    )
    .await;
    assert!(
        corrected,
        "not corrected within 15 s: {}\nfake:\n{}\nlogs:\n{}",
        daemon.profile("vl-1").await,
        fake.describe_requests(),
        daemon.logs()
    );
    let requests = fake.requests_for("vl-1");
    assert_eq!(requests.len(), 1, "{}", fake.describe_requests());
    assert!(
        requests[0].at >= expires + chrono::Duration::milliseconds(900),
        "asked at {} before expiry {} + the 1 s delay",
        requests[0].at,
        expires
    );
    assert_stored_snapshot(&snapshots(&daemon, "vl-1")[0], &requests[0], "verify");
    let corrected = metric(
        &daemon,
        "entitled_lapse_checks_total",
        Some("result=\"corrected\""),
    )
    .await;
    assert!(corrected >= 1.0, "lapse checks corrected = {corrected}");
    let agreed = metric(
        &daemon,
        "entitled_lapse_checks_total",
        Some("result=\"agreed\""),
    )
    .await;
    assert_eq!(agreed, 0.0);
    assert!(metric(&daemon, "entitled_adapty_requests_total", None).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_before_lapse_confirms_a_true_expiry_once_and_skips_levels_not_renewing() {
    let fake = fake();
    let daemon = daemon_with(Some(&fake), &["--verify-before-lapse", "1s"]);
    let t = now();
    let expires = t + secs(2);
    // te-1 truly expired: Adapty lists no level.
    fake.set_profile("te-1", None, vec![]);
    // te-2 had turned renewal off: no check is due (were it asked, it would be
    // "corrected" to active).
    fake.set_profile(
        "te-2",
        None,
        vec![Level::subscription("premium", t + days(30))],
    );
    daemon
        .store_all(&[
            subscription_started("te-1")
                .at(t - days(30))
                .expires(expires),
            subscription_started("te-2")
                .at(t - days(30))
                .expires(expires),
            subscription_renewal_cancelled("te-2").at(t - days(1)),
        ])
        .await;

    assert!(
        until_requests(&fake, "te-1", 1, StdDuration::from_secs(15)).await,
        "no check within 15 s; logs:\n{}",
        daemon.logs()
    );
    let agreed = poll_until(
        StdDuration::from_secs(5),
        StdDuration::from_millis(100),
        || async {
            metric(
                &daemon,
                "entitled_lapse_checks_total",
                Some("result=\"agreed\""),
            )
            .await
                >= 1.0
        },
    )
    .await;
    assert!(agreed, "no agreed lapse check in /metrics");
    let a = daemon.profile("te-1").await;
    assert_eq!(a["premium"], json!(false), "{a}");
    assert_eq!(level(&a, "premium")["active"], json!(false), "{a}");
    assert_eq!(
        metric(
            &daemon,
            "entitled_lapse_checks_total",
            Some("result=\"corrected\"")
        )
        .await,
        0.0
    );
    // Once per level and expiry: a little longer, and still one request.
    tokio::time::sleep(StdDuration::from_millis(1500)).await;
    assert_eq!(
        fake.requests_for("te-1").len(),
        1,
        "{}",
        fake.describe_requests()
    );
    assert!(fake.requests_for("te-1")[0].at >= expires);
    assert_eq!(fake.requests_for("te-2").len(), 0, "will_renew was false");
    assert_eq!(daemon.profile("te-2").await["premium"], json!(false));
    assert_eq!(daemon.profile("te-1").await["premium"], json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_before_lapse_off_asks_nothing() {
    let fake = fake();
    let daemon = daemon_with(Some(&fake), &["--verify-before-lapse", "off"]);
    let t = now();
    let expires = t + secs(1);
    fake.set_profile(
        "vo-1",
        None,
        vec![Level::subscription("premium", t + days(30))],
    );
    daemon
        .store(
            &subscription_started("vo-1")
                .at(t - days(30))
                .expires(expires),
        )
        .await;
    let ended = poll_until(
        StdDuration::from_secs(10),
        StdDuration::from_millis(100),
        || async { !daemon.active("vo-1", "premium").await },
    )
    .await;
    assert!(ended);
    // What a 1 s check would have needed, and a margin.
    tokio::time::sleep(StdDuration::from_millis(2000)).await;
    assert_eq!(fake.requests_total(), 0, "{}", fake.describe_requests());
    assert!(!daemon.active("vo-1", "premium").await);
}

// ---- wait_for -------------------------------------------------------------------------------

/// Starts `GET path` in a task; its answer and how long it took.
fn start_get(daemon: &Daemon, path: &str) -> tokio::task::JoinHandle<Answer> {
    let request = patient_client().get(daemon.url(path));
    let what = format!("GET {path}");
    tokio::spawn(send(request, what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_answers_when_the_webhook_arrives() {
    let fake = fake();
    let daemon = daemon_with(Some(&fake), &[]);
    let t = now();
    let parked = start_get(&daemon, "/profiles/wf-1/access?wait_for=active&timeout=10");
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    assert!(!parked.is_finished(), "answered before anything was active");
    daemon
        .store(&subscription_started("wf-1").at(t).expires(t + days(30)))
        .await;
    let answer = parked.await.expect("the request task");
    answer.resp.expect(200);
    assert_eq!(answer.resp.json["premium"], json!(true), "{}", answer.resp);
    // It was still parked at 500 ms (asserted above); the request's own clock starts a
    // little after the test's, so its lower bound has slack.
    assert!(
        answer.took >= StdDuration::from_millis(400) && answer.took < StdDuration::from_secs(3),
        "answered after {:?}, not at the webhook's arrival",
        answer.took
    );
    // It came before the ~2 s at which Adapty would be asked.
    if answer.took < StdDuration::from_millis(1500) {
        assert_eq!(fake.requests_total(), 0, "{}", fake.describe_requests());
    }

    // Already active: at once.
    let answer = get(
        &daemon,
        "/profiles/wf-1/access?wait_for=active&timeout=10",
        None,
    )
    .await;
    answer.resp.expect(200);
    assert!(answer.took < StdDuration::from_secs(1), "{:?}", answer.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_answers_at_the_timeout_with_the_current_answer() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("wt-1")
                .at(t - days(40))
                .expires(t - days(10)),
        )
        .await;
    for path in [
        "/profiles/wt-1/access?wait_for=active&timeout=2",
        "/profiles/wt-nobody/access?wait_for=active&timeout=2",
    ] {
        let answer = get(&daemon, path, None).await;
        answer.resp.expect(200);
        assert_eq!(answer.resp.json["premium"], json!(false), "{}", answer.resp);
        assert!(
            answer.took >= StdDuration::from_millis(1900)
                && answer.took < StdDuration::from_secs(5),
            "{path}: answered after {:?}, not at the 2 s timeout",
            answer.took
        );
        let plain = daemon.get(path.split_once('?').expect("a query").0).await;
        assert_eq!(
            without_clock(answer.resp.json.clone()),
            without_clock(plain.json.clone()),
            "the current answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_on_the_users_route_waits_for_the_named_level() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let parked = start_get(
        &daemon,
        "/users/wl-user/access?wait_for=active&access_level=gold&timeout=10",
    );
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    // premium is not the level waited for.
    daemon
        .store(
            &subscription_started("wl-1")
                .user("wl-user")
                .at(t)
                .expires(t + days(30)),
        )
        .await;
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    assert!(!parked.is_finished(), "answered for another level");
    daemon
        .store(
            &access_level_updated("wl-1", "gold", true, Some(t + days(30)))
                .user("wl-user")
                .at(t),
        )
        .await;
    let answer = parked.await.expect("the request task");
    answer.resp.expect(200);
    let a = &answer.resp.json;
    assert_eq!(a["premium"], json!(true), "{a}");
    assert_eq!(
        a["access_levels"].as_object().map(|o| o.len()),
        Some(1),
        "narrowed to gold: {a}"
    );
    assert_eq!(level(a, "gold")["active"], json!(true), "{a}");
    assert!(answer.took < StdDuration::from_secs(3), "{:?}", answer.took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_asks_adapty_once_after_about_two_seconds() {
    let fake = fake();
    let daemon = daemon_with(Some(&fake), &[]);
    let t = now();
    // The purchase happened; its webhook is late. Adapty knows.
    fake.set_profile(
        "wa-1",
        Some("wa-user"),
        vec![Level::subscription("premium", t + days(30))],
    );
    let answer = get(
        &daemon,
        "/profiles/wa-1/access?wait_for=active&timeout=10",
        None,
    )
    .await;
    answer.resp.expect(200);
    assert_eq!(answer.resp.json["premium"], json!(true), "{}", answer.resp);
    assert!(
        answer.took >= StdDuration::from_millis(1500) && answer.took < StdDuration::from_secs(6),
        "answered after {:?}: Adapty is asked after ~2 s",
        answer.took
    );
    let requests = fake.requests_for("wa-1");
    assert_eq!(requests.len(), 1, "{}", fake.describe_requests());
    assert_stored_snapshot(&snapshots(&daemon, "wa-1")[0], &requests[0], "wait_for");

    // The users route; Adapty does not know the user: once, then the timeout.
    let answer = get(
        &daemon,
        "/users/wa-nobody/access?wait_for=active&timeout=4",
        None,
    )
    .await;
    answer.resp.expect(200);
    assert_eq!(answer.resp.json["premium"], json!(false), "{}", answer.resp);
    assert!(
        answer.took >= StdDuration::from_millis(3900),
        "answered after {:?}, before the timeout",
        answer.took
    );
    assert_eq!(
        fake.requests_for_user("wa-nobody").len(),
        1,
        "{}",
        fake.describe_requests()
    );
}

// ---- the key is a secret ----------------------------------------------------------------

/// Lines of `text` that contain the key.
fn leaks(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.contains(key))
        .map(|line| line.chars().take(400).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_key_never_reaches_the_logs_or_help() {
    let fake = fake();
    let key = fake.key().to_owned();
    let t = now();
    fake.set_profile(
        "sk-1",
        Some("sk-user"),
        vec![Level::subscription("premium", t + days(30))],
    );
    fake.set_profile(
        "sk-2",
        None,
        vec![Level::subscription("premium", t + days(30))],
    );

    // The key from the environment, logs at trace.
    let mut daemon = daemon_with_env(
        None,
        &["--verify-before-lapse", "1s"],
        &[
            ("RUST_LOG", "trace"),
            ("ENTITLED_ADAPTY_SECRET_KEY", key.as_str()),
            ("ENTITLED_ADAPTY_API_URL", fake.url.as_str()),
        ],
    );
    post(&daemon, "/profiles/sk-1/refresh", None)
        .await
        .resp
        .expect(200);
    post(&daemon, "/users/sk-user/refresh", None)
        .await
        .resp
        .expect(200);
    post(&daemon, "/profiles/sk-nobody/refresh", None)
        .await
        .resp
        .expect_error(404, "unknown_to_adapty");
    fake.fail_next("sk-1", 1, Fault::TooManyRequests);
    fake.fail_next("sk-1", 1, Fault::ServerError);
    post(&daemon, "/profiles/sk-1/refresh", None)
        .await
        .resp
        .expect(200);
    fake.set_unauthorized(true);
    let refused = post(&daemon, "/profiles/sk-1/refresh", None).await;
    refused.resp.expect_error(502, "adapty_unauthorized");
    assert!(
        leaks(&refused.resp.text, &key).is_empty(),
        "{}",
        refused.resp
    );
    fake.set_unauthorized(false);
    // A verify-before-lapse check. The clock reports a lapse only for a level it saw
    // active: expiring a second from now, not from the test's start (the refreshes
    // above took longer than that).
    let t = now();
    daemon
        .store(
            &subscription_started("sk-2")
                .at(t - days(30))
                .expires(t + secs(1)),
        )
        .await;
    assert!(until_requests(&fake, "sk-2", 1, StdDuration::from_secs(15)).await);
    let metrics = daemon.get("/metrics").await;
    assert!(leaks(&metrics.text, &key).is_empty(), "the key in /metrics");
    // Every request carried it, as Adapty wants it.
    let expected = format!("Api-Key {key}");
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some(expected.as_str())));
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let logs = daemon.logs();
    assert!(logs.lines().count() > 10, "trace logs expected:\n{logs}");
    let found = leaks(&logs, &key);
    assert!(
        found.is_empty(),
        "the secret key in the logs:\n{}",
        found.join("\n")
    );

    // The key as a flag, at trace.
    let mut daemon = daemon_with_env(Some(&fake), &[], &[("RUST_LOG", "trace")]);
    post(&daemon, "/profiles/sk-1/refresh", None)
        .await
        .resp
        .expect(200);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let found = leaks(&daemon.logs(), &key);
    assert!(
        found.is_empty(),
        "the secret key in the logs:\n{}",
        found.join("\n")
    );

    // `entitled sync` at trace, on the stopped file.
    let args = sync_args(&daemon.db_arg(), &fake, &["--profile-ids", "-"]);
    let result = run(
        &args,
        &[("RUST_LOG", "trace")],
        Some(b"sk-1\nsk-2\n".to_vec()),
    );
    assert_eq!(result.status.code(), Some(0), "{result}");
    assert!(leaks(&result.stdout, &key).is_empty(), "{result}");
    assert!(leaks(&result.stderr, &key).is_empty(), "{result}");

    // --help, with the key in the environment.
    for command in ["serve", "sync"] {
        let args = [command.to_owned(), "--help".to_owned()];
        let help = run(&args, &[("ENTITLED_ADAPTY_SECRET_KEY", key.as_str())], None);
        assert!(help.status.success(), "{help}");
        assert!(help.stdout.contains("--adapty-secret-key"), "{help}");
        assert!(help.stdout.contains("ENTITLED_ADAPTY_SECRET_KEY"), "{help}");
        assert!(help.stdout.contains("--adapty-api-url"), "{help}");
        let specific: &[&str] = if command == "serve" {
            &["--verify-before-lapse"]
        } else {
            &[
                "--daemon-url",
                "--customer-user-ids",
                "--profile-ids",
                "--concurrency",
                "--rate",
            ]
        };
        for flag in specific {
            assert!(help.stdout.contains(flag), "no {flag}: {help}");
        }
        assert!(
            leaks(&help.stdout, &key).is_empty(),
            "the key in `{command} --help`: {help}"
        );
        assert!(leaks(&help.stderr, &key).is_empty(), "{help}");
    }
}
