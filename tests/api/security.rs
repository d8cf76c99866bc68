//! Security: each token opens its own routes and nothing else, near misses of every
//! token are refused everywhere, and input never becomes SQL.
//!
//! - Tokens (beyond tests/api/auth.rs, which covers the basic crossings): one daemon
//!   with production, previous production, sandbox, previous sandbox and read tokens
//!   all different. Every read route (profile, user, `?at=`, explain, batch lookup,
//!   change feed) refuses every webhook token, bare or `Bearer `-prefixed, and the
//!   webhook refuses the read token. Then near misses of each token (a prefix, the
//!   token plus a suffix, case changes, a `Bearer ` prefix on a webhook token, a
//!   lookalike character, the token twice, an empty header, a bare `Bearer `) are 401
//!   on the routes that token would open, and nothing is stored; a proptest adds
//!   random header values.
//! - Injection: profile ids, customer user ids, event ids, access level ids and
//!   product ids full of quotes, `'; DROP TABLE events; --`, LIKE wildcards, NULs
//!   (`\u0000` in JSON), unicode look-alikes (NFC and NFD of one word, case twins),
//!   whitespace, path characters, and very long strings are stored exactly (the
//!   columns and the raw body, read from the SQLite file), looked up exactly through
//!   every read route (the in-memory index, and the database through `?at=`, explain
//!   and the change feed), told apart from their near twins, and still exactly so
//!   after a restart (the index warmed from the file); the schema and row counts are
//!   intact and `PRAGMA integrity_check` says ok.
//!
//! On PostgreSQL (the `postgres` binary) the token tests and the level and product ids
//! run; the hostile ids test reads the SQLite file, and is SQLite's only.

use crate::helpers::*;
use crate::hostile::encode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

const HOOK: &str = "hook-9f2c41d7e0b3a8c5";
const HOOK_OLD: &str = "hook-old-5b7e2a90c1d4f386";
const SANDBOX: &str = "sandbox-3e8a1f6c92d0b745";
const SANDBOX_OLD: &str = "sandbox-old-a4c7e19b3f02d658";
const READ: &str = "read-7d1b5e3a9c0f2e84";

fn guarded_daemon() -> Daemon {
    Daemon::start(&[
        "--webhook-token",
        HOOK,
        "--previous-webhook-token",
        HOOK_OLD,
        "--sandbox-webhook-token",
        SANDBOX,
        "--previous-sandbox-webhook-token",
        SANDBOX_OLD,
        "--read-token",
        READ,
    ])
}

/// A request to one read route with an optional `Authorization` value: (status, body).
async fn read_route(daemon: &Daemon, route: usize, authorization: Option<&str>) -> (u16, Value) {
    let at = out_time(now() + secs(1));
    let mut request = match route {
        0 => daemon.client.get(daemon.url("/profiles/prof-sec-1/access")),
        1 => daemon.client.get(daemon.url("/users/user-sec-1/access")),
        2 => daemon
            .client
            .get(daemon.url(&format!("/profiles/prof-sec-1/access?at={}", encode(&at)))),
        3 => daemon
            .client
            .get(daemon.url("/profiles/prof-sec-1/access/explain")),
        4 => daemon
            .client
            .post(daemon.url("/access/lookup"))
            .json(&json!({"profile_ids": ["prof-sec-1"], "customer_user_ids": ["user-sec-1"]})),
        _ => daemon.client.get(daemon.url("/changes")),
    };
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let resp = request.send().await.expect("an answer");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

const READ_ROUTES: [&str; 6] = [
    "GET /profiles/{id}/access",
    "GET /users/{id}/access",
    "GET /profiles/{id}/access?at=",
    "GET /profiles/{id}/access/explain",
    "POST /access/lookup",
    "GET /changes",
];

/// Asserts every read route answers 401 `unauthorized` to `authorization`.
async fn reads_refuse(daemon: &Daemon, authorization: Option<&str>, why: &str) {
    for (route, name) in READ_ROUTES.iter().enumerate() {
        let (status, body) = read_route(daemon, route, authorization).await;
        assert_eq!(
            (status, &body["error"]),
            (401, &json!("unauthorized")),
            "{name} with {why} ({authorization:?}): {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_opens_its_own_routes_only() {
    let daemon = guarded_daemon();
    daemon
        .store_with(
            &subscription_started("prof-sec-1").user("user-sec-1"),
            Some(HOOK),
        )
        .await;
    daemon
        .store_with(
            &subscription_renewed("prof-sec-2").sandbox(),
            Some(SANDBOX_OLD),
        )
        .await;

    // The read token opens every read route.
    for (route, name) in READ_ROUTES.iter().enumerate() {
        let (status, body) = read_route(&daemon, route, Some(&format!("Bearer {READ}"))).await;
        assert_eq!(status, 200, "{name} with the read token: {body}");
    }
    // No webhook token opens any, bare or as a bearer token: not the sandbox ones either.
    for token in [HOOK, HOOK_OLD, SANDBOX, SANDBOX_OLD] {
        reads_refuse(&daemon, Some(token), "a webhook token").await;
        reads_refuse(
            &daemon,
            Some(&format!("Bearer {token}")),
            "a webhook token as bearer",
        )
        .await;
    }
    reads_refuse(&daemon, None, "no header").await;

    // Every webhook token opens the webhook; the read token does not, in any form.
    for token in [HOOK, HOOK_OLD, SANDBOX, SANDBOX_OLD] {
        daemon
            .webhook(&json!({"adapty_check": "c"}), Some(token))
            .await
            .expect(200);
    }
    for value in [READ.to_owned(), format!("Bearer {READ}")] {
        for body in [
            json!({}),
            subscription_started("prof-sec-3").0,
            subscription_started("prof-sec-3").sandbox().0,
        ] {
            daemon
                .webhook(&body, Some(&value))
                .await
                .expect_error(401, "unauthorized");
        }
    }
    // The previous sandbox token is still only a sandbox token.
    daemon
        .webhook(&subscription_started("prof-sec-4").0, Some(SANDBOX_OLD))
        .await
        .expect_error(403, "sandbox_token_for_production");
    assert_eq!(
        daemon.events_count(),
        2,
        "a refused request stored an event"
    );
}

/// Near misses of `token`: none of them is the token.
fn near_misses(token: &str) -> Vec<String> {
    let half = &token[..token.len() / 2];
    let mut swapped_case: Vec<char> = token.chars().collect();
    swapped_case[0] = swapped_case[0].to_ascii_uppercase();
    vec![
        String::new(),
        token[..token.len() - 1].to_owned(),
        half.to_owned(),
        format!("{token}x"),
        format!("{token}{token}"),
        format!("{token},{token}"),
        token.to_uppercase(),
        swapped_case.into_iter().collect(),
        // The last character changed.
        format!("{}_", &token[..token.len() - 1]),
        format!("x{token}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_misses_of_every_token_are_401_and_store_nothing() {
    let daemon = guarded_daemon();
    daemon
        .store_with(
            &subscription_started("prof-sec-1").user("user-sec-1"),
            Some(HOOK),
        )
        .await;

    let sandbox_event = subscription_started("prof-sec-near").sandbox();
    let mut refused = 0;
    for token in [HOOK, HOOK_OLD, SANDBOX, SANDBOX_OLD] {
        let mut values = near_misses(token);
        values.push(format!("Bearer {token}"));
        values.push(format!("bearer {token}"));
        for value in &values {
            // A header value reqwest cannot send is not a near miss we can try.
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                continue;
            }
            for body in [json!({}), sandbox_event.0.clone()] {
                let resp = daemon.webhook(&body, Some(value)).await;
                assert_eq!(resp.status, 401, "{value:?} (near {token:?}): {resp}");
                resp.expect_error(401, "unauthorized");
                refused += 1;
            }
        }
    }
    let mut values: Vec<String> = near_misses(READ)
        .into_iter()
        .map(|v| format!("Bearer {v}"))
        .collect();
    values.extend([
        READ.to_owned(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        format!("Bearer  {READ}"),
        format!("Basic {READ}"),
        format!("Token {READ}"),
        format!("Bearer{READ}"),
        format!("{READ} Bearer"),
        format!("Bearer {READ} {READ}"),
    ]);
    for value in &values {
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            continue;
        }
        reads_refuse(&daemon, Some(value), "a near miss of the read token").await;
        refused += 1;
    }
    assert!(refused > 60, "only {refused} near misses were tried");
    assert_eq!(daemon.events_count(), 1, "a near miss stored an event");
    let answer = daemon
        .get_with(
            "/profiles/prof-sec-near/access",
            Some(&format!("Bearer {READ}")),
        )
        .await;
    answer.expect(200);
    assert_eq!(answer.json["access_levels"], json!({}), "{answer}");
}

#[test]
fn random_authorization_values_open_nothing() {
    let daemon = guarded_daemon();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let tokens = [HOOK, HOOK_OLD, SANDBOX, SANDBOX_OLD];
    let strategy = prop_oneof![
        "[ -~]{0,48}",
        // Random text around a real token.
        (
            prop::sample::select(tokens.to_vec()),
            "[ -~]{0,4}",
            "[ -~]{0,4}"
        )
            .prop_map(|(t, a, b)| format!("{a}{t}{b}")),
    ]
    .prop_filter("not a token", move |v| {
        let v = v.trim();
        !tokens.contains(&v) && v != format!("Bearer {READ}")
    });
    let config = Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let result = TestRunner::new(config).run(&strategy, |value| {
        rt.block_on(async {
            let resp = daemon.webhook(&json!({}), Some(&value)).await;
            prop_assert_eq!(resp.status, 401, "webhook with {:?}: {}", value, resp);
            let (status, body) = read_route(&daemon, 0, Some(&value)).await;
            prop_assert_eq!(status, 401, "read with {:?}: {}", value, body);
            Ok(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    assert_eq!(daemon.events_count(), 0);
}

// The file is read with ids that hold NULs, which PostgreSQL's text cannot take as
// parameters: SQLite only for now.
sqlite_only! {
// ---- no SQL built from input ----------------------------------------------------------------

/// Ids made to break SQL built from strings, path handling, or unicode handling.
fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "'; DROP TABLE events; --",
        "\"; DROP TABLE entitlements; --",
        "' OR '1'='1",
        "Robert'); DROP TABLE profiles;--",
        "1; DELETE FROM events WHERE 1=1",
        "%' OR profile_id LIKE '%",
        "%",
        "_",
        "\\' \\\" \\\\",
        "a\u{0}b",
        "\u{0}\u{0}",
        "'\u{0}; DROP TABLE events; --",
        "日本語のプロフィール",
        "emoji 🎉👍🏽",
        "\u{202e}override",
        "zero\u{200b}width",
        "caf\u{e9}",
        "cafe\u{301}",
        "Case-Twin",
        "case-twin",
        "   padded   ",
        "a/b/../c",
        "a?b=c&d=e",
        "a#fragment",
        "50%25",
        "+plus+",
        "semi;colon",
        "tab\there",
        "new\nline",
        "x'); ATTACH DATABASE '/tmp/pwned.db' AS p; --",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push("'".repeat(4000));
    ids.push("\"; DROP TABLE events; --".repeat(200));
    ids
}

/// (profile_id, customer_user_id, body) of the stored event with this id.
fn stored_row(daemon: &Daemon, event_id: &str) -> Option<(String, Option<String>, String)> {
    use rusqlite::OptionalExtension;
    daemon
        .sqlite()
        .query_row(
            "SELECT profile_id, customer_user_id, body FROM events WHERE profile_event_id = ?1",
            [event_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .expect("a query")
}

fn schema(daemon: &Daemon) -> Vec<(String, String)> {
    let conn = daemon.sqlite();
    let mut stmt = conn
        .prepare("SELECT type, name FROM sqlite_master ORDER BY type, name")
        .expect("a query");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows");
    rows.map(|r| r.expect("a row")).collect()
}

/// Each id's lookups through every read route answer for exactly that id.
async fn assert_looked_up_exactly(daemon: &Daemon, ids: &[String], when: &str) {
    let at = out_time(now() + secs(1));
    for id in ids {
        let enc = encode(id);
        let answer = profile_exact(daemon, &enc, id, when).await;
        assert_eq!(answer["customer_user_id"], json!(id), "{when}: {answer}");
        assert_eq!(answer["premium"], json!(true), "{when}: {answer}");

        let resp = daemon.get(&format!("/users/{enc}/access")).await;
        resp.expect(200);
        assert_eq!(resp.json["customer_user_id"], json!(id), "{when}: {resp}");
        assert_eq!(resp.json["profile_ids"], json!([id]), "{when}: {resp}");
        assert_eq!(resp.json["premium"], json!(true), "{when}: {resp}");

        // From the database: time travel and explain read the event log by this id.
        let resp = daemon
            .get(&format!("/profiles/{enc}/access?at={}", encode(&at)))
            .await;
        resp.expect(200);
        assert_eq!(resp.json["profile_id"], json!(id), "{when}: {resp}");
        assert_eq!(resp.json["premium"], json!(true), "{when} ?at=: {resp}");
        let resp = daemon.get(&format!("/profiles/{enc}/access/explain")).await;
        resp.expect(200);
        assert_eq!(resp.json["profile_id"], json!(id), "{when}: {resp}");
        assert_eq!(
            resp.json["access_levels"]["premium"]["events"][0]["profile_event_id"],
            json!(id),
            "{when}: explain: {resp}"
        );
    }
    // All at once, in the order asked.
    let resp = daemon
        .client
        .post(daemon.url("/access/lookup"))
        .json(&json!({"profile_ids": ids, "customer_user_ids": ids}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("JSON");
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(body["profiles"][n]["profile_id"], json!(id), "{when}");
        assert_eq!(
            body["profiles"][n]["premium"],
            json!(true),
            "{when}: {id:?}"
        );
        assert_eq!(body["users"][n]["customer_user_id"], json!(id), "{when}");
        assert_eq!(
            body["users"][n]["profile_ids"],
            json!([id]),
            "{when}: {id:?}"
        );
    }
}

/// `GET /profiles/{encoded}/access`, insisting on 200 and on the id answered.
async fn profile_exact(daemon: &Daemon, encoded: &str, id: &str, when: &str) -> Value {
    let resp = daemon.get(&format!("/profiles/{encoded}/access")).await;
    resp.expect(200);
    assert_eq!(resp.json["profile_id"], json!(id), "{when}: {resp}");
    resp.json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_are_stored_and_looked_up_exactly() {
    let mut daemon = Daemon::start(&[]);
    let tables_before = schema(&daemon);
    assert!(
        tables_before.iter().any(|(_, name)| name == "events"),
        "{tables_before:?}"
    );
    let ids = hostile_ids();
    let t = now();
    let mut sent = Vec::new();
    for id in &ids {
        let event = subscription_started(id)
            .user(id)
            .id(id)
            .at(t - hours(1))
            .expires(t + days(30));
        let body = event.0.to_string();
        let resp = daemon.webhook_raw(body.clone().into_bytes(), None).await;
        resp.expect(200);
        assert_eq!(
            resp.json,
            json!({"status": "stored", "profile_event_id": id}),
            "{resp}"
        );
        sent.push(body);
    }
    // A very long id: past any path length, looked up in a batch and in the file.
    let long: String = "'; DROP TABLE events; -- ü\u{0}\"".repeat(1500);
    let long_event = subscription_started(&long)
        .user(&long)
        .at(t - hours(1))
        .expires(t + days(30));
    daemon.store(&long_event).await;

    // Each one again is a duplicate: dedup compares the exact id.
    for (id, body) in ids.iter().zip(&sent) {
        let resp = daemon.webhook_raw(body.clone().into_bytes(), None).await;
        resp.expect(200);
        assert_eq!(resp.json["status"], json!("duplicate"), "{id:?}: {resp}");
    }

    // The file holds each exactly: columns and the raw body.
    for (id, body) in ids.iter().zip(&sent) {
        let row = stored_row(&daemon, id).unwrap_or_else(|| panic!("{id:?} is not stored"));
        assert_eq!(row, (id.clone(), Some(id.clone()), body.clone()), "{id:?}");
        let users: Vec<Option<String>> = {
            let conn = daemon.sqlite();
            let mut stmt = conn
                .prepare("SELECT customer_user_id FROM profiles WHERE profile_id = ?1")
                .expect("a query");
            let rows = stmt.query_map([id], |r| r.get(0)).expect("rows");
            rows.map(|r| r.expect("a row")).collect()
        };
        assert_eq!(users, vec![Some(id.clone())], "profiles row of {id:?}");
    }
    let long_row = stored_row(&daemon, &long_event.event_id()).expect("the long one is stored");
    assert_eq!((long_row.0, long_row.1), (long.clone(), Some(long.clone())));

    // Tables intact: same schema, every row there, no damage.
    let expected = ids.len() as i64 + 1;
    let check = |daemon: &Daemon| {
        assert_eq!(schema(daemon), tables_before, "the schema changed");
        assert_eq!(daemon.events_count(), expected);
        assert_eq!(daemon.count("SELECT count(*) FROM profiles"), expected);
        assert_eq!(daemon.count("SELECT count(*) FROM entitlements"), expected);
        let integrity: String = daemon
            .sqlite()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(integrity, "ok");
    };
    check(&daemon);

    assert_looked_up_exactly(&daemon, &ids, "while running").await;
    let resp = daemon
        .client
        .post(daemon.url("/access/lookup"))
        .json(&json!({"profile_ids": [long], "customer_user_ids": [long]}))
        .send()
        .await
        .expect("an answer");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["profiles"][0]["profile_id"], json!(long));
    assert_eq!(body["profiles"][0]["premium"], json!(true));
    assert_eq!(body["users"][0]["profile_ids"], json!([long]));

    // The change feed reports each gain under its exact id.
    let resp = daemon.get("/changes?limit=1000").await;
    resp.expect(200);
    let fed: Vec<&Value> = resp.json["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| &c["profile_id"])
        .collect();
    for id in ids.iter().chain([&long]) {
        assert!(
            fed.contains(&&json!(id)),
            "{id:?} is not in the change feed"
        );
    }

    // Unknown near twins stay unknown (no LIKE, no case folding, no normalisation).
    for twin in [
        "'; DROP TABLE events; -",
        "CASE-TWIN",
        "cafe",
        "a",
        "%%",
        "padded",
    ] {
        let answer = profile_exact(&daemon, &encode(twin), twin, "twin").await;
        assert_eq!(answer["access_levels"], json!({}), "{twin:?}: {answer}");
    }

    // After a restart the index is warmed from the file: still exact.
    daemon.restart();
    check(&daemon);
    assert_looked_up_exactly(&daemon, &ids, "after a restart").await;
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_level_and_product_ids_are_kept_exactly() {
    let mut daemon = Daemon::start(&[]);
    let t = now();
    let all = [
        "'; DROP TABLE entitlements; --",
        "pre%mium",
        "\u{0}gold",
        "Premium",
        "premium",
    ];
    // PostgreSQL's `text` cannot hold U+0000: there such an event is refused with a 400
    // (Adapty does not retry it), and nothing of it is stored.
    let storable = |level: &&str| !(daemon.on_postgres() && level.contains('\0'));
    if daemon.on_postgres() {
        let nul = access_level_updated("prof-sec-levels", "\u{0}gold", true, Some(t + days(1)));
        daemon
            .webhook(&nul.0, None)
            .await
            .expect_error(400, "bad_request");
        assert_eq!(daemon.events_count(), 0);
    }
    let levels: Vec<&str> = all.iter().copied().filter(storable).collect();
    for (n, level) in levels.iter().enumerate() {
        daemon
            .store(
                &access_level_updated("prof-sec-levels", level, true, Some(t + days(n as i64 + 1)))
                    .product(&format!("com.app.'{n}\"; DELETE FROM events; --"))
                    .at(t - minutes(10 - n as i64)),
            )
            .await;
    }
    let check = |answer: &Value| {
        let got: Vec<&String> = answer["access_levels"]
            .as_object()
            .expect("levels")
            .keys()
            .collect();
        let mut want: Vec<&str> = levels.clone();
        want.sort();
        assert_eq!(got, want, "{answer}");
        for (n, level) in levels.iter().enumerate() {
            assert_eq!(
                answer["access_levels"][level]["vendor_product_id"],
                json!(format!("com.app.'{n}\"; DELETE FROM events; --")),
                "{answer}"
            );
            assert_eq!(
                answer["access_levels"][level]["active"],
                json!(true),
                "{answer}"
            );
        }
    };
    check(&daemon.profile("prof-sec-levels").await);
    // One level at a time through the query string.
    for &level in &levels {
        let resp = daemon
            .get(&format!(
                "/profiles/prof-sec-levels/access?access_level={}",
                encode(level)
            ))
            .await;
        resp.expect(200);
        let got: Vec<&String> = resp.json["access_levels"]
            .as_object()
            .expect("levels")
            .keys()
            .collect();
        assert_eq!(got, vec![level], "{resp}");
    }
    assert_eq!(
        daemon.count("SELECT count(*) FROM entitlements"),
        levels.len() as i64
    );
    assert_eq!(daemon.events_count(), levels.len() as i64);
    daemon.restart();
    check(&daemon.profile("prof-sec-levels").await);
}
