//! Shared paid access (issue #18) meets files and tools: a version-3 file whose stored
//! events already declare shared access is upgraded to version 4 and rebuilt at the
//! daemon's next start (one without such events is not), and the CLI's `access` and
//! `events` show where a shared level comes from. Each test runs the real binary on a
//! file in its own directory.

use crate::helpers::*;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::path::Path;

/// The schema exactly as version 3 shipped it.
const SCHEMA_V3: &str = include_str!("../fixtures/schema-v3.sql");

/// The top-level field of a sharing declaration.
const SHARING: &str = "profiles_sharing_access_level";

/// What a version-3 daemon held for one holder A: its purchase and its
/// `access_level_updated` snapshot (with or without the sharing declaration listing
/// B, which version 3 stored and never read), and the rows it folded from them.
struct Version3 {
    t: DateTime<Utc>,
    a: String,
    b: String,
    user_a: String,
    user_b: String,
    started: Ev,
    snapshot: Ev,
}

impl Version3 {
    fn new(prefix: &str, declares: bool) -> Version3 {
        let t = now();
        let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
        let (user_a, user_b) = (format!("{prefix}-user-a"), format!("{prefix}-user-b"));
        let started = subscription_started(&a)
            .user(&user_a)
            .at(t - days(10))
            .expires(t + days(20))
            .id(&uuid());
        let mut snapshot = access_level_updated(&a, "premium", true, Some(t + days(20)))
            .user(&user_a)
            .at(t - days(9))
            .id(&uuid());
        if declares {
            snapshot = snapshot.top(
                SHARING,
                json!([{"profile_id": b, "customer_user_id": user_b}]),
            );
        }
        Version3 {
            t,
            a,
            b,
            user_a,
            user_b,
            started,
            snapshot,
        }
    }

    /// Writes `dir/entitled.db` as the version-3 daemon left it: both events, A's
    /// `profiles` row, A's `premium` row (the snapshot was the last event folded), and
    /// the change that reported A's purchase. B has nothing: version 3 never read
    /// the declaration.
    fn write(&self, dir: &Path) {
        let t = self.t;
        let conn = rusqlite::Connection::open(dir.join("entitled.db")).expect("a new file");
        conn.execute_batch(SCHEMA_V3).expect("the version-3 schema");
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .expect("WAL");
        assert_eq!(mode, "wal");
        for (seq, event, received) in [
            (1, &self.started, t - days(10) + secs(1)),
            (2, &self.snapshot, t - days(9) + secs(1)),
        ] {
            let at = event.0["event_datetime"]
                .as_str()
                .expect("event_datetime")
                .replace("+0000", "Z");
            conn.execute(
                "INSERT INTO events (seq, profile_event_id, profile_id, customer_user_id, \
                 event_type, canonical_type, event_datetime, received_at, environment, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, 'Production', ?8)",
                rusqlite::params![
                    seq,
                    event.event_id(),
                    event.profile_id(),
                    self.user_a,
                    event.event_type(),
                    at,
                    out_time(received),
                    event.0.to_string(),
                ],
            )
            .expect("an event");
        }
        conn.execute(
            "INSERT INTO profiles (profile_id, customer_user_id, customer_user_id_at, \
             customer_user_id_event) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                self.a,
                self.user_a,
                out_time(t - days(9)),
                self.snapshot.event_id()
            ],
        )
        .expect("A's profile");
        conn.execute(
            "INSERT INTO entitlements (profile_id, access_level_id, is_active, expires_at, \
             starts_at, will_renew, is_lifetime, in_grace_period, is_refund, store, \
             vendor_product_id, environment, last_event_id, last_event_type, last_event_at, \
             reported_active) \
             VALUES (?1, 'premium', 1, ?2, NULL, 1, 0, 0, 0, 'app_store', ?3, 'Production', \
             ?4, 'access_level_updated', ?5, 1)",
            rusqlite::params![
                self.a,
                out_time(t + days(20)),
                MONTHLY,
                self.snapshot.event_id(),
                out_time(t - days(9)),
            ],
        )
        .expect("A's premium");
        conn.execute(
            "INSERT INTO access_changes (seq, profile_id, access_level_id, active, reason, \
             profile_event_id, expires_at, changed_at, customer_user_id) \
             VALUES (1, ?1, 'premium', 1, 'subscription_started', ?2, ?3, ?4, ?5)",
            rusqlite::params![
                self.a,
                self.started.event_id(),
                out_time(t + days(20)),
                out_time(t - days(10) + secs(1)),
                self.user_a,
            ],
        )
        .expect("A's change");
    }

    /// A's `premium` as its version-3 row says it: what the upgraded daemon must still
    /// answer for A (with `shared_from` null: its own purchase).
    fn level_of_a(&self) -> Value {
        json!({
            "active": true,
            "expires_at": out_time(self.t + days(20)),
            "starts_at": null,
            "will_renew": true,
            "is_lifetime": false,
            "in_grace_period": false,
            "is_refund": false,
            "store": "app_store",
            "vendor_product_id": MONTHLY,
            "environment": "Production",
            "updated_at": out_time(self.t - days(9)),
            "shared_from": null,
        })
    }
}

/// Runs `entitled ARGS --db DB` to its end: (status, stdout, stderr).
fn cli(args: &[&str], db: &Path) -> (std::process::ExitStatus, String, String) {
    let out = entitled()
        .args(args)
        .arg("--db")
        .arg(db)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the binary runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `upgrade_tasks` rows of a file, as (task, reason).
fn upgrade_tasks(db: &Path) -> Vec<(String, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the file");
    let mut stmt = conn
        .prepare("SELECT task, reason FROM upgrade_tasks ORDER BY task")
        .expect("upgrade_tasks exists");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows");
    rows.map(|r| r.expect("a row")).collect()
}

/// What the schema upgrade alone leaves in a copy of the version-3 file: `entitled
/// import` of nothing opens (so upgrades) the file and never finishes the upgrade the
/// way `serve` does, so the task the upgrade left, if any, is still there.
fn tasks_the_upgrade_leaves(v3: &Version3) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().expect("a directory");
    v3.write(dir.path());
    let db = dir.path().join("entitled.db");
    let (status, stdout, stderr) = cli(&["import", "/dev/null", "--quiet"], &db);
    assert!(status.success(), "import: {status}\n{stdout}\n{stderr}");
    let version: i64 = rusqlite::Connection::open(&db)
        .expect("the file")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 4, "import upgraded the file: {stdout}\n{stderr}");
    upgrade_tasks(&db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_file_with_sharing_events_is_rebuilt_at_start() {
    let v3 = Version3::new("prof-shup", true);
    let (a, b) = (v3.a.as_str(), v3.b.as_str());

    // The upgrade itself leaves a rebuild for the start that has the configuration.
    let tasks = tasks_the_upgrade_leaves(&v3);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0].0, "rebuild", "{tasks:?}");

    let dir = tempfile::tempdir().expect("a directory");
    v3.write(dir.path());
    let mut daemon = Daemon::start_in(dir.path(), &[]);
    let logs = daemon.logs();
    assert!(logs.contains("schema upgraded to version 4"), "{logs}");
    assert!(
        logs.contains("rebuilding the projection, as the schema upgrade asked"),
        "{logs}"
    );
    assert!(logs.contains("rebuilt"), "{logs}");
    // Rebuilt before the index warmed (the index warms from the rebuilt table).
    let rebuilt_at = logs.find("rebuilding the projection").unwrap_or(0);
    let warmed_at = logs.find("index warmed").expect("an `index warmed` line");
    assert!(rebuilt_at < warmed_at, "{logs}");

    let conn = daemon.sqlite();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 4);
    assert_eq!(daemon.count("SELECT count(*) FROM upgrade_tasks"), 0);
    let links: Vec<(String, String, String, String)> = conn
        .prepare(
            "SELECT access_level_id, profile_id, shared_with, profile_event_id \
             FROM sharing_links ORDER BY profile_id, shared_with",
        )
        .expect("sharing_links")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("rows")
        .map(|r| r.expect("a row"))
        .collect();
    let declared = v3.snapshot.event_id();
    assert_eq!(
        links,
        vec![
            ("premium".into(), a.into(), b.into(), declared.clone()),
            ("premium".into(), b.into(), a.into(), declared.clone()),
        ],
        "the declaration's link, both ways"
    );
    drop(conn);

    // B, whom version 3 left with nothing, shares A's premium; A's answer is its own.
    let answer_b = daemon.profile(b).await;
    assert_eq!(answer_b["premium"], json!(true), "{answer_b}");
    let level_b = &answer_b["access_levels"]["premium"];
    assert_level_shape(level_b);
    let mut expected_b = v3.level_of_a();
    expected_b["shared_from"] = json!(a);
    assert_eq!(level_b, &expected_b, "{answer_b}");
    let answer_a = daemon.profile(a).await;
    assert_eq!(answer_a["premium"], json!(true), "{answer_a}");
    assert_eq!(
        answer_a["access_levels"]["premium"],
        v3.level_of_a(),
        "{answer_a}"
    );
    assert_eq!(daemon.user(&v3.user_a).await["premium"], json!(true));

    // The feed hears of B's gain, from the rebuild; A's access did not flip.
    let resp = daemon.get("/changes?after=1&limit=100").await;
    resp.expect(200);
    let changes = resp.json["changes"].as_array().cloned().unwrap_or_default();
    assert_eq!(changes.len(), 1, "{resp}");
    let gained = &changes[0];
    assert_eq!(gained["profile_id"], json!(b), "{resp}");
    assert_eq!(gained["access_level_id"], json!("premium"), "{resp}");
    assert_eq!(gained["active"], json!(true), "{resp}");
    assert_eq!(gained["reason"], json!("rebuild"), "{resp}");
    assert_eq!(
        gained["expires_at"],
        json!(out_time(v3.t + days(20))),
        "{resp}"
    );

    // Stopped, the file is what its events say.
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}\n{}", daemon.logs());
    let (status, stdout, stderr) = cli(&["rebuild", "--check"], &daemon.db());
    assert!(
        status.success(),
        "rebuild --check: {status}\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("matches"), "{stdout}\n{stderr}");

    // Started again: nothing left to upgrade or rebuild, and B still shares.
    daemon.start_again();
    let logs = daemon.logs();
    assert_eq!(
        logs.matches("schema upgraded to version 4").count(),
        1,
        "{logs}"
    );
    assert_eq!(
        logs.matches("rebuilding the projection").count(),
        1,
        "{logs}"
    );
    let level = daemon.level(b, "premium").await;
    assert_eq!(level, expected_b);

    // B's customer_user_id came with the declaration's list entry: a daemon that
    // received the declaration live records it, and answers by it.
    assert_eq!(
        daemon.profile(b).await["customer_user_id"],
        json!(v3.user_b),
        "B's customer_user_id from the declaration's list entry"
    );
    let user_b = daemon.user(&v3.user_b).await;
    assert_eq!(user_b["premium"], json!(true), "{user_b}");
    assert_eq!(user_b["profile_ids"], json!([b]), "{user_b}");
    assert_eq!(
        user_b["access_levels"]["premium"]["shared_from"],
        json!(a),
        "{user_b}"
    );
    // And the change that reported B's gain named the user, as a live declaration's
    // does.
    assert_eq!(
        gained["customer_user_id"],
        json!(v3.user_b),
        "the change of B's gain: {gained}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_file_without_sharing_events_needs_no_rebuild() {
    let v3 = Version3::new("prof-shup-none", false);
    let (a, b) = (v3.a.as_str(), v3.b.as_str());

    let tasks = tasks_the_upgrade_leaves(&v3);
    assert_eq!(tasks, vec![], "nothing declares shared access");

    let dir = tempfile::tempdir().expect("a directory");
    v3.write(dir.path());
    let mut daemon = Daemon::start_in(dir.path(), &[]);
    let logs = daemon.logs();
    assert!(logs.contains("schema upgraded to version 4"), "{logs}");
    assert!(!logs.contains("rebuilding the projection"), "{logs}");
    let version: i64 = daemon
        .sqlite()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 4);
    assert_eq!(daemon.count("SELECT count(*) FROM upgrade_tasks"), 0);
    assert_eq!(daemon.count("SELECT count(*) FROM sharing_links"), 0);

    // A answers what its version-3 row says, its own; B is unknown.
    let answer_a = daemon.profile(a).await;
    assert_eq!(
        without_clock(answer_a.clone()),
        json!({
            "profile_id": a,
            "customer_user_id": v3.user_a,
            "premium": true,
            "access_levels": {"premium": v3.level_of_a()},
        }),
        "{answer_a}"
    );
    assert_eq!(
        answer_a["valid_until"],
        json!(out_time(v3.t + days(20))),
        "{answer_a}"
    );
    let answer_b = daemon.profile(b).await;
    assert_eq!(answer_b["premium"], json!(false), "{answer_b}");
    assert_eq!(answer_b["access_levels"], json!({}), "{answer_b}");
    // No change was recorded past version 3's one.
    assert_eq!(daemon.count("SELECT count(*) FROM access_changes"), 1);
    let row: (Option<String>, Option<String>) = daemon
        .sqlite()
        .query_row(
            "SELECT shared_from, sharing_group FROM entitlements WHERE profile_id = ?1",
            [a],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("A's row");
    assert_eq!(row, (None, None), "A's row is its own, in no group");

    // The rows version 3 left are what the log folds to: nothing for a rebuild to do.
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}\n{}", daemon.logs());
    let (status, stdout, stderr) = cli(&["rebuild", "--check"], &daemon.db());
    assert!(
        status.success(),
        "rebuild --check: {status}\n{stdout}\n{stderr}"
    );
    assert!(stdout.starts_with("matches"), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 unchanged"), "{stdout}");

    daemon.start_again();
    let logs = daemon.logs();
    assert!(!logs.contains("rebuilding the projection"), "{logs}");
    assert_eq!(
        logs.matches("schema upgraded to version 4").count(),
        1,
        "{logs}"
    );
    assert_eq!(
        without_clock(daemon.profile(a).await),
        without_clock(answer_a)
    );
}

/// The cells of the `access_level` row of `entitled access`'s table, by header.
fn table_row(stdout: &str, level: &str) -> std::collections::BTreeMap<String, String> {
    let mut lines = stdout.lines().skip(1);
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_else(|| panic!("no table header: {stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(header.first(), Some(&"access_level"), "{stdout}");
    let row: Vec<&str> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&level))
        .unwrap_or_else(|| panic!("no `{level}` row: {stdout}"));
    assert_eq!(row.len(), header.len(), "one cell per column: {stdout}");
    header
        .into_iter()
        .zip(row)
        .map(|(h, c)| (h.to_owned(), c.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_shared_access() {
    let mut daemon = Daemon::start(&[]);
    let t = now();
    let (a, b) = ("prof-shcli-a", "prof-shcli-b");
    let bought = subscription_started(a)
        .user("user-shcli-a")
        .at(t - days(10))
        .expires(t + days(20));
    let sharing = access_level_updated(a, "premium", true, Some(t + days(20)))
        .user("user-shcli-a")
        .top(
            SHARING,
            json!([{"profile_id": b, "customer_user_id": "user-shcli-b"}]),
        )
        .at(t - days(9));
    daemon.store_all(&[bought.clone(), sharing.clone()]).await;
    let http_b = daemon.profile(b).await;
    assert_eq!(
        http_b["access_levels"]["premium"]["shared_from"],
        json!(a),
        "{http_b}"
    );
    let http_user_b = daemon.user("user-shcli-b").await;
    let explain_b = daemon.get(&format!("/profiles/{b}/access/explain")).await;
    explain_b.expect(200);
    let explain_b = explain_b.json.clone();
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}\n{}", daemon.logs());
    let db = daemon.db();

    // `access`, as a table: B's premium names A in `shared_from`; A's own says `-`.
    let (status, stdout, stderr) = cli(&["access", b], &db);
    assert!(status.success(), "access: {status}\n{stdout}\n{stderr}");
    assert!(stdout.contains("PREMIUM"), "{stdout}");
    let row = table_row(&stdout, "premium");
    assert_eq!(
        row.get("shared_from").map(String::as_str),
        Some(a),
        "{stdout}"
    );
    assert_eq!(
        row.get("active").map(String::as_str),
        Some("yes"),
        "{stdout}"
    );
    let (status, stdout, stderr) = cli(&["access", a], &db);
    assert!(status.success(), "access: {status}\n{stdout}\n{stderr}");
    let row = table_row(&stdout, "premium");
    assert_eq!(
        row.get("shared_from").map(String::as_str),
        Some("-"),
        "{stdout}"
    );
    let (status, stdout, stderr) = cli(&["access", "--user", "user-shcli-b"], &db);
    assert!(status.success(), "access: {status}\n{stdout}\n{stderr}");
    let row = table_row(&stdout, "premium");
    assert_eq!(
        row.get("shared_from").map(String::as_str),
        Some(a),
        "{stdout}"
    );

    // `access --json`: the HTTP answer, `shared_from` included.
    let (status, stdout, stderr) = cli(&["access", b, "--json"], &db);
    assert!(status.success(), "access: {status}\n{stdout}\n{stderr}");
    let json_b: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(
        json_b["access_levels"]["premium"]["shared_from"],
        json!(a),
        "{stdout}"
    );
    assert_eq!(without_clock(json_b), without_clock(http_b));
    let (status, stdout, stderr) = cli(&["access", "--user", "user-shcli-b", "--json"], &db);
    assert!(status.success(), "access: {status}\n{stdout}\n{stderr}");
    let json_user_b: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(without_clock(json_user_b), without_clock(http_user_b));

    // `events B`: A's events, each marked as another member's.
    let (status, stdout, stderr) = cli(&["events", b], &db);
    assert!(status.success(), "events: {status}\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 2, "one line per event of the group: {stdout}");
    let marker = format!("(shared: an event of profile {a})");
    for (line, event) in lines.iter().zip([&bought, &sharing]) {
        assert!(line.contains(&event.event_id()), "{line}\n{stdout}");
        assert!(
            line.trim_end().ends_with(&marker),
            "{marker:?}: {line}\n{stdout}"
        );
    }
    // `events A`: the same events, A's own, unmarked.
    let (status, stdout, stderr) = cli(&["events", a], &db);
    assert!(status.success(), "events: {status}\n{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "{stdout}"
    );
    assert!(!stdout.contains("(shared"), "{stdout}");

    // `events B --json`: the explain answer, each event with its profile.
    let (status, stdout, stderr) = cli(&["events", b, "--json"], &db);
    assert!(status.success(), "events: {status}\n{stdout}\n{stderr}");
    let explained: Value = serde_json::from_str(&stdout).expect("JSON");
    let premium = &explained["access_levels"]["premium"];
    assert_eq!(premium["shared_from"], json!(a), "{stdout}");
    let events: Vec<(Value, Value)> = premium["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no premium events: {stdout}"))
        .iter()
        .map(|e| (e["profile_event_id"].clone(), e["profile_id"].clone()))
        .collect();
    assert_eq!(
        events,
        vec![
            (json!(bought.event_id()), json!(a)),
            (json!(sharing.event_id()), json!(a)),
        ],
        "{stdout}"
    );
    let sans_checked_at = |mut v: Value| {
        v.as_object_mut().map(|o| o.remove("checked_at"));
        v
    };
    assert_eq!(sans_checked_at(explained), sans_checked_at(explain_b));
}
