//! Operations: what an operator (a load balancer, Prometheus, systemd, a log pipeline)
//! relies on, checked against the real binary.
//!
//! - `/healthz` is 200 while the process serves, even while storage fails; `/readyz`
//!   is 200 when the database takes writes and 503 with a reason once a write failed.
//!   The failure is provoked for real: the test holds SQLite's write lock
//!   (`BEGIN IMMEDIATE` on its own connection) past the writer's 5 s busy timeout, so
//!   the webhook answers 503; after the lock is released and an event commits,
//!   `/readyz` is 200 again. The other 503 (start-up, while the index warms) is not
//!   tested: it lasts milliseconds on any database a test can build in seconds, and
//!   only a race could observe it.
//! - `/metrics` after a known workload (stored, duplicate, ignored, verification,
//!   refused by reason, unauthorized; lookups by route): exact counter values, latency
//!   by route *pattern*, writer batches, index and database gauges; every line of the
//!   exposition parses, names carry `entitled_`, counters end in `_total`.
//! - `/openapi.json` lists every route the daemon serves, and serves every route it
//!   lists (both directions).
//! - Logs: a fresh `x-request-id` per response, also in the log line of the request;
//!   text by default; `--log-format json` and `ENTITLED_LOG_FORMAT=json` make every
//!   stderr line a JSON object; tokens, bodies and personal fields never appear, even
//!   at `RUST_LOG=trace` (that test spawns the binary itself: the harness removes
//!   `RUST_LOG`).
//!   A start-up failure (the address is taken) is a JSON line too.
//! - SIGTERM and SIGINT during concurrent ingestion (16 senders): exit 0, every
//!   acknowledged event in the file, the WAL checkpointed, and the restarted daemon
//!   answers accordingly. And a webhook certainly in flight at the signal (the daemon
//!   answered its `Expect: 100-continue`) is finished: answered 200 and stored.

use crate::helpers::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::Stdio;
use std::time::{Duration as StdDuration, Instant};

// ---- liveness and readiness ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200_while_serving() {
    let daemon = Daemon::start(&[]);
    let health = daemon.get("/healthz").await;
    health.expect(200);
    assert_eq!(health.json, json!({"status": "ok"}), "{health}");
    let ready = daemon.get("/readyz").await;
    ready.expect(200);
    assert_eq!(ready.json, json!({"status": "ok"}), "{ready}");

    // Still after a write: a commit keeps it ready.
    daemon
        .store(&subscription_started("prof-ops-ready").expires(now() + days(30)))
        .await;
    daemon.get("/readyz").await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_makes_readyz_503_with_a_reason_until_an_event_commits() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(&subscription_started("prof-lock-1").expires(t + days(30)))
        .await;
    daemon.get("/readyz").await.expect(200);

    // Someone's `sqlite3` inside `BEGIN IMMEDIATE`: the write lock, held.
    let holder = rusqlite::Connection::open(daemon.db()).expect("a read-write connection");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("the write lock");

    // The writer waits its busy timeout (5 s), then the webhook answers 503.
    let blocked = daemon
        .webhook(
            &subscription_started("prof-lock-2").expires(t + days(30)).0,
            None,
        )
        .await;
    blocked.expect_error(503, "store_unavailable");

    let ready = daemon.get("/readyz").await;
    ready.expect(503);
    assert_eq!(ready.json["status"], json!("unavailable"), "{ready}");
    let reason = ready.json["reason"].as_str().unwrap_or_default();
    assert!(
        reason.to_lowercase().contains("lock"),
        "/readyz must say why it is not ready (the database is locked): {ready}"
    );
    // Liveness is not readiness: the process is fine, restarting it would not help.
    daemon.get("/healthz").await.expect(200);
    // Reads go on from memory.
    assert!(daemon.active("prof-lock-1", "premium").await);
    let m = scrape(&daemon).await;
    assert_eq!(
        m.value("entitled_webhook_requests_total", &[("outcome", "failed")]),
        Some(1.0),
        "the 503 is counted as outcome=failed:\n{}",
        m.text
    );

    holder.execute_batch("ROLLBACK").expect("release the lock");
    drop(holder);

    let after = subscription_started("prof-lock-3").expires(t + days(30));
    daemon.store(&after).await;
    let ready = daemon.get("/readyz").await;
    ready.expect(200);
    assert_eq!(ready.json, json!({"status": "ok"}), "{ready}");
    assert!(daemon.stored_ids().contains(&after.event_id()));
}

// ---- metrics --------------------------------------------------------------------------

/// One sample of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` answer; parsing panics on any line that is not `# HELP`,
/// `# TYPE`, or `name{labels} value`.
#[derive(Debug)]
struct Exposition {
    text: String,
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut types = BTreeMap::new();
        let mut helps = BTreeSet::new();
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(valid_name(name), "line {n}: bad HELP name: {line}");
                assert!(!help.trim().is_empty(), "line {n}: empty HELP: {line}");
                helps.insert(name.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("line {n}: TYPE without a type: {line}"));
                assert!(valid_name(name), "line {n}: bad TYPE name: {line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "line {n}: unknown type: {line}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "line {n}: a second TYPE for {name}"
                );
                continue;
            }
            assert!(
                !line.starts_with('#'),
                "line {n}: a comment that is neither HELP nor TYPE: {line}"
            );
            samples
                .push(parse_sample(line).unwrap_or_else(|why| panic!("line {n}: {why}: {line:?}")));
        }
        Exposition {
            text: text.to_owned(),
            types,
            helps,
            samples,
        }
    }

    /// The value of the sample with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// The value, insisting it is there.
    #[track_caller]
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics:\n{}", self.text))
    }

    /// Every sample of `name`, as (labels, value).
    fn all(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (&s.labels, s.value))
            .collect()
    }

    /// The family a sample belongs to (a histogram's `_bucket`, `_sum`, `_count`).
    fn family_of(&self, sample: &str) -> Option<&str> {
        if self.types.contains_key(sample) {
            return self.types.get_key_value(sample).map(|(k, _)| k.as_str());
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if matches!(
                    self.types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                ) {
                    return self.types.get_key_value(base).map(|(k, _)| k.as_str());
                }
            }
        }
        None
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{key="value",...} value [timestamp]`, with Prometheus' label escapes.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        loop {
            // A label name, `=`, a quoted value; then `,` or `}`.
            let Some(&(start, c)) = chars.peek() else {
                return Err("unterminated labels".into());
            };
            if c == '}' {
                rest = &after_brace[start + 1..];
                break;
            }
            let mut key_end = start;
            while let Some(&(i, c)) = chars.peek() {
                if c == '=' {
                    key_end = i;
                    break;
                }
                chars.next();
            }
            let key = &after_brace[start..key_end];
            if !valid_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            chars.next(); // '='
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            match chars.peek().map(|&(_, c)| c) {
                Some(',') => {
                    chars.next();
                }
                Some('}') => {}
                other => return Err(format!("after a label: {other:?}")),
            }
        }
    }
    let mut fields = rest.trim_start_matches(' ').split(' ');
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|e| format!("value {v:?} is no number: {e}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|e| format!("timestamp {timestamp:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the value".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `GET /metrics`, checked to be Prometheus text, parsed.
async fn scrape(daemon: &Daemon) -> Exposition {
    let resp = daemon.get("/metrics").await;
    resp.expect(200);
    assert!(
        resp.content_type.starts_with("text/plain"),
        "/metrics must be text/plain (Prometheus text format), not {:?}",
        resp.content_type
    );
    Exposition::parse(&resp.text)
}

const METRICS_TOKEN: &str = "tok-ops-metrics";

/// What [`known_workload`] did.
struct Workload {
    /// Active premium (p1, p2), active gold (p3), expired premium (p4).
    profiles: [String; 4],
    user: String,
}

/// A known set of webhooks and lookups, on a daemon started with
/// `--webhook-token METRICS_TOKEN`:
/// - stored 4 (2 subscription_started, 1 subscription_renewed, 1 access_level_updated),
/// - duplicate 1, ignored 2 (an unknown type, `trial_active`), verification 1,
/// - refused: invalid_json 2, missing_field 1; unauthorized 2 (none, wrong);
/// - lookups: profile 2, user 1, batch 1; one 404 under `/profiles/<id>/`.
async fn known_workload(daemon: &Daemon) -> Workload {
    let t = now();
    let tag = uuid();
    let p = |n: u32| format!("prof-met-{n}-{tag}");
    let profiles = [p(1), p(2), p(3), p(4)];
    let user = format!("user-met-{tag}");
    let token = Some(METRICS_TOKEN);

    let first = subscription_started(&profiles[0])
        .user(&user)
        .expires(t + days(30));
    daemon.store_with(&first, token).await;
    daemon
        .store_with(
            &subscription_renewed(&profiles[1]).expires(t + days(30)),
            token,
        )
        .await;
    daemon
        .store_with(
            &access_level_updated(&profiles[2], "gold", true, Some(t + days(10))),
            token,
        )
        .await;
    daemon
        .store_with(
            &subscription_started(&profiles[3])
                .at(t - days(40))
                .expires(t - days(10)),
            token,
        )
        .await;

    let dup = daemon.webhook(&first.0, token).await;
    dup.expect(200);
    assert_eq!(dup.json["status"], json!("duplicate"), "{dup}");
    daemon
        .store_with(&Ev::new("made_up_event_type", &profiles[0]), token)
        .await;
    daemon
        .store_with(&Ev::new("trial_active", &profiles[1]), token)
        .await;
    let verify = daemon.webhook(&json!({}), token).await;
    verify.expect(200);
    assert_eq!(verify.json, json!({}), "{verify}");

    daemon
        .webhook_raw(b"not json".to_vec(), token)
        .await
        .expect_error(400, "invalid_json");
    daemon
        .webhook_raw(b"{\"profile_id\": ".to_vec(), token)
        .await
        .expect_error(400, "invalid_json");
    daemon
        .webhook(
            &subscription_started(&profiles[0]).drop_top("event_type").0,
            token,
        )
        .await
        .expect_error(400, "missing_field");
    daemon
        .webhook(&subscription_started(&profiles[0]).0, None)
        .await
        .expect_error(401, "unauthorized");
    daemon
        .webhook(
            &subscription_started(&profiles[0]).0,
            Some("tok-ops-metrics-wrong"),
        )
        .await
        .expect_error(401, "unauthorized");

    assert!(daemon.active(&profiles[0], "premium").await);
    assert!(daemon.active(&profiles[1], "premium").await);
    assert_eq!(daemon.user(&user).await["premium"], json!(true));
    let batch = daemon
        .client
        .post(daemon.url("/access/lookup"))
        .json(&json!({"profile_ids": [&profiles[2], &profiles[3]]}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(batch.status().as_u16(), 200);
    daemon
        .get(&format!("/profiles/{}/nothing-here", profiles[3]))
        .await
        .expect_error(404, "not_found");

    Workload { profiles, user }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_webhooks_by_outcome_and_reason_events_by_type_and_lookups_by_route() {
    let daemon = Daemon::start(&["--webhook-token", METRICS_TOKEN]);
    known_workload(&daemon).await;
    let m = scrape(&daemon).await;

    let webhooks = "entitled_webhook_requests_total";
    for (labels, expected) in [
        (vec![("outcome", "stored")], 4.0),
        (vec![("outcome", "duplicate")], 1.0),
        (vec![("outcome", "ignored")], 2.0),
        (vec![("outcome", "verification")], 1.0),
        (
            vec![("outcome", "refused"), ("reason", "invalid_json")],
            2.0,
        ),
        (
            vec![("outcome", "refused"), ("reason", "missing_field")],
            1.0,
        ),
        (vec![("outcome", "unauthorized")], 2.0),
    ] {
        assert_eq!(
            m.get(webhooks, &labels),
            expected,
            "{webhooks}{labels:?}:\n{}",
            m.text
        );
    }
    // Nothing else: no `failed`, no other reason, no odd label.
    let total: f64 = m.all(webhooks).iter().map(|(_, v)| v).sum();
    assert_eq!(total, 13.0, "webhook requests in all:\n{}", m.text);

    let events = "entitled_events_total";
    for (kind, expected) in [
        ("subscription_started", 2.0),
        ("subscription_renewed", 1.0),
        ("access_level_updated", 1.0),
        ("trial_active", 1.0),
        ("unknown", 1.0),
    ] {
        assert_eq!(
            m.get(events, &[("type", kind)]),
            expected,
            "{events}{{type={kind}}}:\n{}",
            m.text
        );
    }
    let total: f64 = m.all(events).iter().map(|(_, v)| v).sum();
    assert_eq!(
        total, 6.0,
        "events stored (the duplicate is not a new event):\n{}",
        m.text
    );

    let lookups = "entitled_lookups_total";
    for (route, expected) in [("profile", 2.0), ("user", 1.0), ("batch", 1.0)] {
        assert_eq!(
            m.get(lookups, &[("route", route)]),
            expected,
            "{lookups}{{route={route}}}:\n{}",
            m.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_time_requests_by_route_pattern_and_writer_batches() {
    let daemon = Daemon::start(&["--webhook-token", METRICS_TOKEN]);
    let work = known_workload(&daemon).await;
    let m = scrape(&daemon).await;

    let latency = "entitled_http_request_duration_seconds";
    assert_eq!(
        m.types.get(latency).map(String::as_str),
        Some("histogram"),
        "{latency} is a histogram:\n{}",
        m.text
    );
    let count = |route: &str, method: &str, status: &str| {
        m.get(
            &format!("{latency}_count"),
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(count("/webhooks/adapty", "POST", "200"), 8.0);
    assert_eq!(count("/webhooks/adapty", "POST", "400"), 3.0);
    assert_eq!(count("/webhooks/adapty", "POST", "401"), 2.0);
    assert_eq!(count("/profiles/{profile_id}/access", "GET", "200"), 2.0);
    assert_eq!(count("/users/{customer_user_id}/access", "GET", "200"), 1.0);
    assert_eq!(count("/access/lookup", "POST", "200"), 1.0);
    // Each series is a whole histogram: buckets up to +Inf equal to the count.
    let inf = m.get(
        &format!("{latency}_bucket"),
        &[
            ("route", "/webhooks/adapty"),
            ("method", "POST"),
            ("status", "200"),
            ("le", "+Inf"),
        ],
    );
    assert_eq!(inf, 8.0, "{}", m.text);

    // Route labels are patterns: never a raw path with an id in it.
    let served = [
        "/webhooks/adapty",
        "/profiles/{profile_id}/access",
        "/users/{customer_user_id}/access",
        "/access/lookup",
        "/profiles/{profile_id}/access/explain",
        "/changes",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "unmatched",
    ];
    let mut routes = BTreeSet::new();
    for sample in &m.samples {
        if sample.name.starts_with(latency) {
            let route = sample.labels.get("route").cloned().unwrap_or_default();
            routes.insert(route);
        }
    }
    for route in &routes {
        assert!(
            served.contains(&route.as_str()),
            "route label {route:?} is not a route pattern:\n{}",
            m.text
        );
    }
    for id in work.profiles.iter().chain([&work.user]) {
        assert!(
            !m.text.contains(id.as_str()),
            "an id ({id}) is in /metrics: unbounded label values"
        );
    }

    // The writer saw 7 events (4 stored, 1 duplicate, 2 ignored), in at most 7
    // transactions; each transaction is timed.
    let batches = m.get("entitled_writer_batch_size_count", &[]);
    assert_eq!(
        m.get("entitled_writer_batch_size_sum", &[]),
        7.0,
        "{}",
        m.text
    );
    assert!(
        (1.0..=7.0).contains(&batches),
        "{batches} batches:\n{}",
        m.text
    );
    assert_eq!(
        m.get("entitled_writer_commit_duration_seconds_count", &[]),
        batches,
        "one commit time per batch:\n{}",
        m.text
    );
    assert!(m.get("entitled_writer_commit_duration_seconds_sum", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_gauge_the_index_active_entitlements_the_file_and_the_newest_event() {
    let daemon = Daemon::start(&["--webhook-token", METRICS_TOKEN]);
    known_workload(&daemon).await;
    let m = scrape(&daemon).await;

    assert_eq!(m.get("entitled_index_profiles", &[]), 4.0, "{}", m.text);
    assert_eq!(m.get("entitled_index_entitlements", &[]), 4.0, "{}", m.text);
    // p4's premium has expired: in the index, not active.
    assert_eq!(
        m.get(
            "entitled_active_entitlements",
            &[("access_level", "premium")]
        ),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.get("entitled_active_entitlements", &[("access_level", "gold")]),
        1.0,
        "{}",
        m.text
    );
    assert!(m.get("entitled_database_size_bytes", &[]) > 0.0);
    let age = m.get("entitled_newest_event_age_seconds", &[]);
    // Seconds, not microseconds or an epoch: the events were stored moments ago
    // (a coarse bound: a slow machine takes seconds, not ten minutes).
    assert!(
        (0.0..600.0).contains(&age),
        "newest event age {age} s:\n{}",
        m.text
    );

    // The gauges follow the index, scrape by scrape.
    let t = now();
    let profile = format!("prof-met-g-{}", uuid());
    daemon
        .store_with(
            &subscription_started(&profile).expires(t + days(3)),
            Some(METRICS_TOKEN),
        )
        .await;
    let m = scrape(&daemon).await;
    assert_eq!(m.get("entitled_index_profiles", &[]), 5.0, "{}", m.text);
    assert_eq!(
        m.get(
            "entitled_active_entitlements",
            &[("access_level", "premium")]
        ),
        3.0,
        "{}",
        m.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_line_parses_with_entitled_names_and_counters_ending_in_total() {
    let daemon = Daemon::start(&["--webhook-token", METRICS_TOKEN]);
    known_workload(&daemon).await;
    // Parsing already refused any line that is not HELP, TYPE or a sample.
    let m = scrape(&daemon).await;

    for family in [
        "entitled_webhook_requests_total",
        "entitled_events_total",
        "entitled_http_request_duration_seconds",
        "entitled_writer_batch_size",
        "entitled_writer_commit_duration_seconds",
        "entitled_lookups_total",
        "entitled_index_profiles",
        "entitled_index_entitlements",
        "entitled_active_entitlements",
        "entitled_database_size_bytes",
        "entitled_newest_event_age_seconds",
    ] {
        assert!(
            m.types.contains_key(family),
            "no `# TYPE {family}`:\n{}",
            m.text
        );
    }
    for (family, kind) in &m.types {
        assert!(
            family.starts_with("entitled_"),
            "{family} lacks the entitled_ prefix"
        );
        assert!(m.helps.contains(family), "{family} has no # HELP");
        if kind == "counter" {
            assert!(
                family.ends_with("_total"),
                "counter {family} must end in _total"
            );
        } else {
            assert!(
                !family.ends_with("_total"),
                "{family} ends in _total but is a {kind}"
            );
        }
    }
    for help in &m.helps {
        assert!(m.types.contains_key(help), "# HELP {help} without # TYPE");
    }
    for sample in &m.samples {
        assert!(
            sample.name.starts_with("entitled_"),
            "{} lacks the entitled_ prefix",
            sample.name
        );
        let family = m.family_of(&sample.name);
        assert!(
            family.is_some(),
            "sample {} belongs to no # TYPE",
            sample.name
        );
        assert!(
            sample.value.is_finite() || sample.labels.contains_key("le"),
            "{} = {}",
            sample.name,
            sample.value
        );
        if m.types.get(family.unwrap_or_default()).map(String::as_str) == Some("counter") {
            assert!(sample.value >= 0.0, "negative counter {sample:?}");
        }
    }
}

// ---- the OpenAPI document -----------------------------------------------------------

/// Every route the daemon serves: (method, path), as the OpenAPI document spells them.
const ROUTES: [(&str, &str); 10] = [
    ("post", "/webhooks/adapty"),
    ("get", "/profiles/{profile_id}/access"),
    ("get", "/profiles/{profile_id}/access/explain"),
    ("get", "/users/{customer_user_id}/access"),
    ("post", "/access/lookup"),
    ("get", "/changes"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_served_route_and_every_listed_route_is_served() {
    let daemon = Daemon::start(&[]);
    daemon
        .store(&subscription_started("prof-openapi").expires(now() + days(30)))
        .await;
    let doc = daemon.get("/openapi.json").await;
    doc.expect(200);
    let version = doc.json["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "not OpenAPI 3: {version:?}");
    assert!(doc.json["info"]["title"].is_string(), "no info.title");
    let paths = doc.json["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("no `paths` object: {doc}"));

    let methods = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut listed = BTreeSet::new();
    for (path, item) in paths {
        for method in methods {
            if let Some(operation) = item.get(method) {
                listed.insert((method.to_owned(), path.clone()));
                // Every `{name}` in the path is declared as a path parameter.
                for name in path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                {
                    let declared = operation["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .chain(item["parameters"].as_array().into_iter().flatten())
                        .any(|p| p["in"] == json!("path") && p["name"] == json!(name));
                    assert!(declared, "{method} {path}: `{name}` is not declared");
                }
            }
        }
    }

    // Served ⊆ listed.
    for (method, path) in ROUTES {
        assert!(
            listed.contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} is served but not in /openapi.json; it lists {listed:?}"
        );
    }

    // Listed ⊆ served: a request to each, ids filled in, is routed (not our 404).
    let client = client();
    for (method, path) in &listed {
        let filled = path
            .replace("{profile_id}", "prof-openapi")
            .replace("{customer_user_id}", "user-openapi");
        let filled = if filled == "/notify/replay" {
            format!("{filled}?from_seq=1")
        } else {
            filled
        };
        assert!(!filled.contains('{'), "unknown path parameter in {path}");
        let url = daemon.url(&filled);
        let request = match method.as_str() {
            "get" => client.get(&url),
            "post" => client
                .post(&url)
                .header("content-type", "application/json")
                .body("{}"),
            other => panic!("{other} {path}: the daemon serves no {other} route"),
        };
        let response = request.send().await.expect("an answer");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let not_found = status == 404
            && serde_json::from_str::<Value>(&body).is_ok_and(|b| b["error"] == json!("not_found"));
        assert!(
            !not_found && status != 405,
            "{method} {path} is in /openapi.json but {filled} answers {status} {body}"
        );
        // A route of Adapty's API or of push answers 501 (`adapty_api_off`,
        // `notify_off`) when not configured: served.
        let off = status == 501
            && serde_json::from_str::<Value>(&body).is_ok_and(|b| {
                b["error"] == json!("adapty_api_off") || b["error"] == json!("notify_off")
            });
        assert!(
            status < 500 || off,
            "{method} {filled} answers {status} {body}"
        );
    }

    // The check above has teeth: an unserved path and a wrong method are our 404.
    daemon
        .get("/profiles/prof-openapi/nothing")
        .await
        .expect_error(404, "not_found");
    daemon
        .get("/webhooks/adapty")
        .await
        .expect_error(404, "not_found");
}

// ---- logs -----------------------------------------------------------------------------

/// The log lines of a harness daemon, without the harness' `--- start N ---` markers.
fn log_lines(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| !(l.starts_with("--- start ") && l.ends_with(" ---")))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// POSTs raw bytes and returns (status, x-request-id).
async fn post_for_id(url: &str, body: &'static str) -> (u16, String) {
    let response = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("an answer");
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status().as_u16(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_its_own_request_id_which_the_log_repeats() {
    let mut daemon = Daemon::start(&[]);
    let t = now();
    let stored = subscription_started("prof-rid").expires(t + days(30));
    let mut ids = Vec::new();
    let client = client();
    for n in 0..20 {
        let request = match n % 4 {
            0 => client.get(daemon.url("/healthz")),
            1 => client.get(daemon.url("/profiles/prof-rid/access")),
            2 => client.get(daemon.url("/no/such/route")),
            _ => client
                .post(daemon.url("/webhooks/adapty"))
                .header("content-type", "application/json")
                .body(stored.0.to_string()),
        };
        let response = request.send().await.expect("an answer");
        let id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("request {n}: no x-request-id header"))
            .to_owned();
        assert!(!id.trim().is_empty(), "request {n}: an empty x-request-id");
        ids.push(id);
    }
    let distinct: HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "request ids repeat: {ids:?}");

    // A refused request is logged at info, with the id the client saw.
    let (status, refused_id) = post_for_id(&daemon.url("/webhooks/adapty"), "not json").await;
    assert_eq!(status, 400);
    assert!(!refused_id.is_empty(), "no x-request-id on a 400");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let logs = daemon.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(&refused_id) && l.contains("request refused")),
        "no log line carries request id {refused_id} of the refused request:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_text_by_default() {
    let mut daemon = Daemon::start(&[]);
    let (status, id) = post_for_id(&daemon.url("/webhooks/adapty"), "not json").await;
    assert_eq!(status, 400);
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let logs = daemon.logs();
    let lines = log_lines(&logs);
    assert!(lines.len() >= 3, "too few log lines to judge:\n{logs}");
    for line in &lines {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "a JSON line in the default (text) format: {line}"
        );
    }
    // A text line: level, then `key=value` fields, the request id among them.
    assert!(
        lines.iter().any(|l| l.contains(" INFO ")
            && l.contains("request refused")
            && (l.contains(&format!("request_id={id}"))
                || l.contains(&format!("request_id=\"{id}\"")))),
        "no text line `INFO … request refused … request_id={id}`:\n{logs}"
    );
}

/// Every line is a JSON object with a timestamp, a level and fields; the refused
/// request's line carries its request id.
#[track_caller]
fn assert_json_lines(logs: &str, request_id: &str) {
    let lines = log_lines(logs);
    assert!(lines.len() >= 3, "too few log lines to judge:\n{logs}");
    let mut found_id = false;
    for line in &lines {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}\nall:\n{logs}"));
        let object = value
            .as_object()
            .unwrap_or_else(|| panic!("a stderr line is JSON but not an object: {line}"));
        for key in ["timestamp", "level", "fields"] {
            assert!(object.contains_key(key), "no `{key}` in {line}");
        }
        found_id |= line.contains(request_id);
    }
    assert!(
        found_id,
        "no JSON line carries request id {request_id}:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_makes_every_stderr_line_a_json_object() {
    // The flag, through the harness.
    let mut daemon = Daemon::start(&["--log-format", "json"]);
    daemon
        .store(&subscription_started("prof-json-log").expires(now() + days(30)))
        .await;
    let (status, id) = post_for_id(&daemon.url("/webhooks/adapty"), "not json").await;
    assert_eq!(status, 400);
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    assert_json_lines(&daemon.logs(), &id);

    // The environment variable.
    let mut spawned = Daemon::start_with_env(&[], &[("ENTITLED_LOG_FORMAT", "json")]);
    let (status, id) = post_for_id(&spawned.url("/webhooks/adapty"), "not json").await;
    assert_eq!(status, 400);
    let status = spawned.stop();
    assert!(status.success(), "{status}");
    assert_json_lines(&spawned.logs(), &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_failure_is_a_json_line_too_with_log_format_json() {
    // The address is taken: `serve` fails after logging is set up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = entitled()
        .arg("serve")
        .args(["--listen", &addr, "--log-format", "json", "--db"])
        .arg(dir.path().join("entitled.db"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    assert!(!output.status.success(), "serve on a taken port exited 0");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&addr),
        "the failure names the address:\n{stderr}"
    );
    for line in log_lines(&stderr) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            "with --log-format json, a stderr line is not a JSON object: {line}"
        );
    }
}

/// Lines of `logs` that contain any of `secrets`, with which one.
fn leaks(logs: &str, secrets: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for line in logs.lines() {
        for (what, secret) in secrets {
            if line.contains(secret) {
                let shown: String = line.chars().take(400).collect();
                found.push(format!("{what} ({secret}) in: {shown}"));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_bodies_and_emails_never_reach_the_logs_even_at_trace() {
    let tag = uuid();
    let webhook_token = format!("wh-secret-{tag}");
    let previous_token = format!("prev-secret-{tag}");
    let sandbox_token = format!("sb-secret-{tag}");
    let read_token = format!("rd-secret-{tag}");
    let marker = format!("BODY-MARKER-{tag}");
    let email = format!("marker.{}@example.com", tag.replace('-', ""));
    let mut daemon = Daemon::start_with_env(
        &[
            "--webhook-token",
            &webhook_token,
            "--previous-webhook-token",
            &previous_token,
            "--sandbox-webhook-token",
            &sandbox_token,
            "--read-token",
            &read_token,
        ],
        &[("RUST_LOG", "trace")],
    );
    let client = client();
    let webhook = daemon.url("/webhooks/adapty");
    let post = |body: String, authorization: String| {
        let request = client
            .post(&webhook)
            .header("content-type", "application/json")
            .header("authorization", authorization)
            .body(body);
        async move {
            let response = request.send().await.expect("an answer");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };
    let t = now();
    let profile = format!("prof-secret-{tag}");
    let with_marker = |ev: Ev| ev.top("email", json!(email)).prop("note", json!(marker));

    let stored = with_marker(subscription_started(&profile).expires(t + days(30)));
    let cases: Vec<(String, String, u16)> = vec![
        (stored.0.to_string(), webhook_token.clone(), 200),
        (
            with_marker(subscription_renewed(&profile).expires(t + days(60)))
                .0
                .to_string(),
            previous_token.clone(),
            200,
        ),
        (
            with_marker(trial_started(&profile).sandbox()).0.to_string(),
            sandbox_token.clone(),
            200,
        ),
        // Refused, each with the marker somewhere in the body.
        (
            with_marker(subscription_started(&profile)).0.to_string(),
            sandbox_token.clone(),
            403,
        ),
        (
            format!("{{\"note\": \"{marker}\", \"email\": \"{email}\""),
            webhook_token.clone(),
            400,
        ),
        (format!("\"{marker} {email}\""), webhook_token.clone(), 400),
        (
            with_marker(access_level_updated(&profile, "premium", true, None))
                .prop("is_active", json!(marker))
                .0
                .to_string(),
            webhook_token.clone(),
            400,
        ),
        (
            with_marker(subscription_started(&profile))
                .top("event_datetime", json!(marker))
                .0
                .to_string(),
            webhook_token.clone(),
            400,
        ),
        (
            with_marker(subscription_started(&profile))
                .top("profile_id", json!([marker, email]))
                .0
                .to_string(),
            webhook_token.clone(),
            400,
        ),
        // The read token is no webhook token.
        (stored.0.to_string(), read_token.clone(), 401),
        (
            json!({"adapty_check": marker}).to_string(),
            webhook_token.clone(),
            200,
        ),
    ];
    for (n, (body, authorization, expected)) in cases.into_iter().enumerate() {
        let (status, text) = post(body, authorization).await;
        assert_eq!(status, expected, "case {n}: {text}");
    }

    let read = |path: &str, authorization: &str| {
        client
            .get(daemon.url(path))
            .header("authorization", format!("Bearer {authorization}"))
            .send()
    };
    let response = read(&format!("/profiles/{profile}/access"), &read_token)
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 200);
    // A webhook token is no read token.
    let response = read(&format!("/profiles/{profile}/access"), &webhook_token)
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 401);
    let lookup = |body: String| {
        client
            .post(daemon.url("/access/lookup"))
            .header("authorization", format!("Bearer {read_token}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let ok = lookup(json!({"profile_ids": [&profile], "customer_user_ids": [&email]}).to_string())
        .await
        .expect("an answer");
    assert_eq!(ok.status().as_u16(), 200);
    let refused = lookup(json!({"customer_user_ids": email, "note": marker}).to_string())
        .await
        .expect("an answer");
    assert_eq!(refused.status().as_u16(), 400);

    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let logs = daemon.logs();
    // RUST_LOG=trace took effect (else this test would prove nothing).
    assert!(
        logs.lines().any(|l| l.contains("TRACE")),
        "no TRACE line: did RUST_LOG=trace reach the daemon?\n{logs}"
    );
    let found = leaks(
        &logs,
        &[
            ("the webhook token", &webhook_token),
            ("the previous webhook token", &previous_token),
            ("the sandbox token", &sandbox_token),
            ("the read token", &read_token),
            ("a body", &marker),
            ("an email", &email),
        ],
    );
    assert!(
        found.is_empty(),
        "secrets in the logs at RUST_LOG=trace:\n{}",
        found.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_fields_never_reach_the_info_log() {
    // The harness runs at the default level, info. Ev bodies carry Adapty's personal
    // fields: email, IP addresses, device ids.
    let mut daemon = Daemon::start(&[]);
    let t = now();
    let email = "jane.doe@example.com";
    let profile = "prof-pii";
    let user = "jane.doe.pii@example.com";
    let event = subscription_started(profile)
        .user(user)
        .expires(t + days(30));
    assert_eq!(event.0["email"], json!(email));
    daemon.store(&event).await;
    // Refused bodies, whose errors are logged at info.
    daemon
        .webhook(&event.clone().top("event_datetime", json!(email)).0, None)
        .await
        .expect_error(400, "invalid_field");
    daemon
        .webhook(&event.clone().top("profile_id", json!([email])).0, None)
        .await
        .expect_error(400, "invalid_field");
    // A customer user id that is an email, on the read side, in a refused request.
    daemon
        .get(&format!("/users/{user}/access?at=yesterday"))
        .await
        .expect_error(400, "bad_request");
    let refused = daemon
        .client
        .post(daemon.url("/access/lookup"))
        .json(&json!({"customer_user_ids": user}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status().as_u16(), 400);

    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let logs = daemon.logs();
    assert!(
        logs.contains("request refused"),
        "the refusals were not logged at all (is the level info?):\n{logs}"
    );
    let found = leaks(
        &logs,
        &[
            ("the email", email),
            ("a customer user id (an email)", user),
            ("the IP address", "10.168.1.1"),
            ("the device id", "5B1F4F0B-3C2A-4E1D-9C7A-2D3E4F5A6B7C"),
            ("the user agent", "AppleWebKit"),
        ],
    );
    assert!(
        found.is_empty(),
        "personal fields in the info log:\n{}",
        found.join("\n")
    );
}

// ---- shutdown -------------------------------------------------------------------------

/// Whether process `pid` has exited (a zombie, not yet reaped by the harness).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// 16 tasks post distinct events in a loop; after 150 acknowledgements the daemon
/// gets `signal`. It must exit 0, in bounded time, with every acknowledged event in
/// the file and the WAL checkpointed; restarted, it answers for every one of them.
async fn signal_during_concurrent_ingestion(signal: &str) {
    const TASKS: usize = 16;
    const SIGNAL_AFTER: usize = 150;
    // A bound on the runaway case only: 16 senders can keep at most 16 requests in
    // flight, and --shutdown-timeout (10 s) bounds how long they may take.
    const EXIT_WITHIN: StdDuration = StdDuration::from_secs(30);

    let mut daemon = Daemon::start(&[]);
    let t = now();
    let tag = uuid();
    let senders = Senders::until_acked(&daemon, TASKS, 100_000, SIGNAL_AFTER, move |task, n| {
        subscription_started(&format!("prof-sig-{tag}-{task}-{n}"))
            .at(t - minutes(1))
            .expires(t + days(30))
    })
    .await;

    let pid = daemon.pid();
    let signalled = Instant::now();
    send_signal(pid, signal);
    let exited = poll_until(EXIT_WITHIN, StdDuration::from_millis(20), || async {
        has_exited(pid)
    })
    .await;
    assert!(
        exited,
        "SIG{signal}: no exit within {EXIT_WITHIN:?}; logs:\n{}",
        daemon.logs()
    );
    eprintln!(
        "SIG{signal}: exited {:?} after the signal",
        signalled.elapsed()
    );
    // Reap it: `stop` sends SIGTERM to the zombie (no effect) and collects the status.
    let status = daemon.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "SIG{signal} ended the daemon with {status}; logs:\n{}",
        daemon.logs()
    );
    let acked = senders.finish().await;
    assert!(acked.len() >= SIGNAL_AFTER, "{} acked", acked.len());
    eprintln!("SIG{signal}: {} events acknowledged", acked.len());

    // The WAL was checkpointed into the main file: a copy of entitled.db alone is whole.
    let wal = daemon.db().with_extension("db-wal");
    let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_bytes, 0, "{} left after a clean stop", wal.display());

    let stored = daemon.stored_ids();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(_, id)| !stored.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not in the file: {lost:?}"
    );
    let events = daemon.events_count();

    daemon.start_again();
    assert_eq!(
        daemon.events_count(),
        events,
        "a restart changed the event log"
    );
    for chunk in acked.chunks(1000) {
        let ids: Vec<&str> = chunk.iter().map(|(p, _)| p.as_str()).collect();
        let response = daemon
            .client
            .post(daemon.url("/access/lookup"))
            .json(&json!({"profile_ids": ids}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(response.status().as_u16(), 200);
        let answer: Value = response.json().await.expect("JSON");
        let profiles = answer["profiles"].as_array().expect("profiles");
        assert_eq!(profiles.len(), ids.len());
        for (profile, answer) in ids.iter().zip(profiles) {
            assert_eq!(answer["profile_id"], json!(profile), "{answer}");
            assert_eq!(
                answer["premium"],
                json!(true),
                "acknowledged before SIG{signal}, not premium after the restart: {answer}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_concurrent_ingestion_exits_0_keeping_every_acknowledged_event() {
    signal_during_concurrent_ingestion("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_concurrent_ingestion_exits_0_keeping_every_acknowledged_event() {
    signal_during_concurrent_ingestion("INT").await;
}

/// Reads one HTTP/1.1 response (headers and a `content-length` body) from `stream`;
/// what arrived when the connection ended first.
fn read_response(stream: &mut std::net::TcpStream) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                return Ok(text);
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) => return Err(format!("the connection closed after {text:?}")),
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e) => return Err(format!("{e} after {text:?}")),
        }
    }
}

/// A webhook in flight when the signal comes is answered and stored. "In flight" is
/// made certain with `Expect: 100-continue`: the daemon's `100 Continue` says it has
/// parsed the request and called the handler, which now waits for the body; then the
/// signal, then the body. The answer must come (200 stored), the exit be 0, and the
/// event be in the file. A forced shutdown drops the connection instead.
fn webhook_in_flight_across(signal: &str) {
    use std::io::Write;
    let mut daemon = Daemon::start(&[]);
    let addr = daemon
        .base
        .strip_prefix("http://")
        .expect("an http:// base")
        .to_owned();
    let event =
        subscription_started(&format!("prof-inflight-{}", uuid())).expires(now() + days(30));
    let body = event.0.to_string();
    let mut stream = std::net::TcpStream::connect(&addr).expect("a connection");
    stream
        .set_read_timeout(Some(StdDuration::from_secs(20)))
        .expect("a read timeout");
    let head = format!(
        "POST /webhooks/adapty HTTP/1.1\r\nHost: entitled\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("the request head");
    let interim = read_response(&mut stream).expect("an interim answer");
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue"),
        "expected 100 Continue, got {interim:?}"
    );

    let pid = daemon.pid();
    send_signal(pid, signal);
    // The peer may already be gone (the failure this test is about): report it below.
    let sent = stream.write_all(body.as_bytes());
    let answer = read_response(&mut stream);

    let started = Instant::now();
    while !has_exited(pid) {
        assert!(
            started.elapsed() < StdDuration::from_secs(30),
            "SIG{signal}: no exit within 30 s"
        );
        std::thread::sleep(StdDuration::from_millis(20));
    }
    let status = daemon.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "SIG{signal}: {status}\n{}",
        daemon.logs()
    );
    let answer = answer.unwrap_or_else(|e| {
        panic!(
            "SIG{signal} dropped a webhook in flight instead of finishing it \
             (body sent: {sent:?}): {e}\nlogs:\n{}",
            daemon.logs()
        )
    });
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"stored\""),
        "SIG{signal}: the webhook in flight got {answer}"
    );
    assert!(
        daemon.stored_ids().contains(&event.event_id()),
        "answered 200 but not in the file"
    );
}

#[test]
fn a_webhook_in_flight_at_sigterm_is_answered_and_stored() {
    webhook_in_flight_across("TERM");
}

#[test]
fn a_webhook_in_flight_at_sigint_is_answered_and_stored() {
    webhook_in_flight_across("INT");
}
