//! The command-line tools beside `serve`, run as the real binary on the daemon's own
//! database file: `rebuild` (check, rewrite under new flags, refusal beside a running
//! daemon), `import` (file and stdin, its summary, idempotence, refusals), and the
//! read-only `access` and `events` (equal to the HTTP answers, safe while the daemon
//! runs). Where a tool writes, a daemon started on the file afterwards must answer
//! accordingly.

use crate::helpers::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration as StdDuration;

impl Run {
    #[track_caller]
    fn success(&self) -> &Self {
        assert!(self.status.success(), "expected success: {self}");
        self
    }

    #[track_caller]
    fn failure(&self) -> &Self {
        assert!(!self.status.success(), "expected a failure: {self}");
        assert!(
            self.status.code().is_some(),
            "it died of a signal, not an exit: {self}"
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }
}

/// Runs `entitled ARGS --db DB` (with `stdin` fed in), bounded to a minute.
fn entitled(args: &[&str], db: &Path, stdin: Option<Vec<u8>>) -> Run {
    let what = format!("{} --db {}", args.join(" "), db.display());
    let mut command = crate::helpers::entitled();
    command.args(args).arg("--db").arg(db);
    run_bounded(command, what, stdin, StdDuration::from_secs(60))
}

/// The levels of a profile in the file, as (level, is_active).
fn levels_in_file(daemon: &Daemon, profile_id: &str) -> Vec<(String, bool)> {
    let conn = daemon.sqlite();
    let mut stmt = conn
        .prepare(
            "SELECT access_level_id, is_active FROM entitlements WHERE profile_id = ?1 \
             ORDER BY access_level_id",
        )
        .expect("a query");
    let rows = stmt
        .query_map([profile_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows");
    rows.map(|r| r.expect("a row")).collect()
}

/// Every row of `entitlements`, as text, for "nothing changed" comparisons.
fn entitlements_dump(daemon: &Daemon) -> Vec<String> {
    let conn = daemon.sqlite();
    let mut stmt = conn
        .prepare("SELECT * FROM entitlements ORDER BY profile_id, access_level_id")
        .expect("a query");
    let columns = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            let mut cells = Vec::new();
            for i in 0..columns {
                cells.push(format!("{:?}", r.get::<_, rusqlite::types::Value>(i)?));
            }
            Ok(cells.join("|"))
        })
        .expect("rows");
    rows.map(|r| r.expect("a row")).collect()
}

/// Replaces `to`'s database with a copy of `from`'s (both daemons stopped).
fn copy_database(from: &Daemon, to: &Daemon) {
    for suffix in ["", "-wal", "-shm"] {
        let source = format!("{}{suffix}", from.db().display());
        let target = format!("{}{suffix}", to.db().display());
        if Path::new(&source).exists() {
            std::fs::copy(&source, &target).expect("copying the database");
        } else if Path::new(&target).exists() {
            std::fs::remove_file(&target).expect("removing a stale journal");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_check_matches_and_a_rebuild_under_new_product_levels_is_what_a_daemon_answers() {
    let mut built = Daemon::start(&[]);
    let t = now();
    built
        .store_all(&[
            subscription_started("prof-rb-month")
                .user("user-rb")
                .at(t - days(3))
                .expires(t + days(27)),
            subscription_renewal_cancelled("prof-rb-month").at(t - days(2)),
            subscription_started("prof-rb-year")
                .product(YEARLY)
                .user("user-rb")
                .at(t - days(2))
                .expires(t + days(363)),
            subscription_started("prof-rb-gone")
                .at(t - days(9))
                .expires(t + days(21)),
            subscription_refunded("prof-rb-gone").at(t - days(1)),
            access_level_updated("prof-rb-gold", "gold", true, Some(t + days(5))).at(t - hours(2)),
            Ev::new("trial_active", "prof-rb-month").at(t - hours(1)),
        ])
        .await;
    let status = built.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let db = built.db();
    let before = entitlements_dump(&built);
    let changes_before = built.count("SELECT count(*) FROM access_changes");

    // What the live daemon built is what the log says.
    let check = entitled(&["rebuild", "--check"], &db, None);
    check.success();
    assert!(check.stdout.starts_with("matches"), "{check}");
    assert!(check.stdout.contains("7 events"), "{check}");

    // Under another mapping the check differs (exit 1) and writes nothing.
    let yearly_gold = format!("{YEARLY}=gold");
    let flags = ["--product-levels", yearly_gold.as_str()];
    let check = entitled(&["rebuild", "--check", flags[0], flags[1]], &db, None);
    assert_eq!(check.status.code(), Some(1), "{check}");
    assert!(check.stdout.starts_with("differs"), "{check}");
    assert_eq!(entitlements_dump(&built), before, "--check wrote: {check}");

    // The rebuild itself: the yearly profile moves from premium to gold.
    let rebuilt = entitled(&["rebuild", flags[0], flags[1]], &db, None);
    rebuilt.success();
    assert!(rebuilt.stdout.starts_with("rebuilt"), "{rebuilt}");
    assert!(
        rebuilt.stdout.contains("1 added") && rebuilt.stdout.contains("1 removed"),
        "{rebuilt}"
    );
    assert_eq!(
        levels_in_file(&built, "prof-rb-year"),
        vec![("gold".to_owned(), true)]
    );
    assert_eq!(
        levels_in_file(&built, "prof-rb-month"),
        vec![("premium".to_owned(), true)]
    );
    // The feed reports what the rebuild flipped: premium lost, gold gained.
    let conn = built.sqlite();
    let mut stmt = conn
        .prepare(
            "SELECT profile_id, access_level_id, active, reason FROM access_changes \
             WHERE seq > ?1 ORDER BY access_level_id",
        )
        .expect("a query");
    let rebuild_changes: Vec<(String, String, bool, String)> = stmt
        .query_map([changes_before], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .expect("rows")
        .map(|r| r.expect("a row"))
        .collect();
    drop(stmt);
    drop(conn);
    assert_eq!(
        rebuild_changes,
        vec![
            ("prof-rb-year".into(), "gold".into(), true, "rebuild".into()),
            (
                "prof-rb-year".into(),
                "premium".into(),
                false,
                "rebuild".into()
            ),
        ]
    );

    // Checked with the same flags it matches; with the old ones it no longer does.
    let check = entitled(&["rebuild", "--check", flags[0], flags[1]], &db, None);
    check.success();
    assert!(check.stdout.starts_with("matches"), "{check}");
    let check = entitled(&["rebuild", "--check"], &db, None);
    assert_eq!(check.status.code(), Some(1), "{check}");
    // A second rebuild with the same flags changes nothing.
    let again = entitled(&["rebuild", flags[0], flags[1]], &db, None);
    again.success();
    assert!(
        again.stdout.contains("0 changed, 0 added, 0 removed"),
        "{again}"
    );

    // A daemon started with the new flags on this file answers per the new mapping.
    let mut daemon = Daemon::start(&flags);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    copy_database(&built, &daemon);
    daemon.start_again();
    let year = daemon.profile("prof-rb-year").await;
    assert_eq!(year["premium"], json!(true), "{year}");
    let levels: Vec<&String> = year["access_levels"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(levels, vec!["gold"], "{year}");
    assert!(daemon.active("prof-rb-month", "premium").await);
    assert!(!daemon.active("prof-rb-gone", "premium").await);
    assert!(daemon.active("prof-rb-gold", "gold").await);
    // New events follow the new mapping too.
    daemon
        .store(
            &subscription_renewed("prof-rb-year")
                .product(YEARLY)
                .at(t - hours(1))
                .expires(t + days(728)),
        )
        .await;
    let year = daemon.level("prof-rb-year", "gold").await;
    assert_eq!(year["expires_at"], json!(out_time(t + days(728))), "{year}");
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let check = entitled(
        &["rebuild", "--check", flags[0], flags[1]],
        &daemon.db(),
        None,
    );
    check.success();
    assert!(check.stdout.starts_with("matches"), "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_and_import_refuse_while_a_daemon_runs_on_the_file() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let event = subscription_started("prof-rb-busy")
        .at(t - days(1))
        .expires(t + days(29));
    daemon.store(&event).await;
    let before = entitlements_dump(&daemon);

    let lines = format!(
        "{}\n",
        subscription_started("prof-rb-busy-2")
            .at(t - days(1))
            .expires(t + days(29))
            .0
    );
    let file = daemon.dir().join("busy.jsonl");
    std::fs::write(&file, &lines).expect("writing the import file");
    let file = file.to_str().expect("a UTF-8 path");
    for args in [
        vec!["rebuild"],
        vec!["rebuild", "--check"],
        vec![
            "rebuild",
            "--product-levels",
            "com.example.premium.yearly=gold",
        ],
        vec!["import", file],
        vec!["import", "-"],
    ] {
        let run = entitled(&args, &daemon.db(), Some(lines.clone().into_bytes()));
        run.failure();
        assert!(
            run.stderr.contains("in use by a running entitled"),
            "no clear message: {run}"
        );
    }
    // Nothing was written, and the daemon goes on.
    assert_eq!(entitlements_dump(&daemon), before);
    assert_eq!(daemon.events_count(), 1);
    assert!(daemon.active("prof-rb-busy", "premium").await);
    daemon
        .store(&subscription_renewal_cancelled("prof-rb-busy").at(t - hours(1)))
        .await;
    assert_eq!(daemon.events_count(), 2);
}

/// The import file of the import tests: (its text, what a good import answers).
fn import_file(t: chrono::DateTime<chrono::Utc>) -> (String, Vec<Ev>) {
    let bought = subscription_started("prof-imp-1")
        .user("user-imp")
        .at(t - days(3))
        .expires(t + days(27));
    let other = subscription_started("prof-imp-2")
        .at(t - days(5))
        .expires(t + days(25));
    let refund = subscription_refunded("prof-imp-2").at(t - days(1));
    let annotation = Ev::new("trial_active", "prof-imp-1").at(t - days(2));
    let lines = [
        bought.0.to_string(),                                      // 1
        other.0.to_string(),                                       // 2
        refund.0.to_string(),                                      // 3
        bought.0.to_string(),                                      // 4: a duplicate
        "{not json".to_owned(),                                    // 5: invalid_json
        String::new(),                                             // 6: blank, skipped
        json!({"event_type": "subscription_started"}).to_string(), // 7: missing_field
        "{}".to_owned(),                                           // 8: a verification, no event
        annotation.0.to_string(),                                  // 9: stored, no effect
        "[1, 2]".to_owned(),                                       // 10: not_an_object
    ];
    (
        format!("{}\n", lines.join("\n")),
        vec![bought, other, refund, annotation],
    )
}

#[track_caller]
fn assert_summary(run: &Run, pieces: &[&str]) {
    for piece in pieces {
        assert!(
            run.stdout.contains(piece),
            "the summary lacks {piece:?}: {run}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_stores_once_counts_what_it_refused_and_a_daemon_answers_from_it() {
    let mut daemon = Daemon::start(&[]);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let t = now();
    let (text, events) = import_file(t);
    let file = daemon.dir().join("backfill.jsonl");
    std::fs::write(&file, &text).expect("writing the import file");
    let file = file.to_str().expect("a UTF-8 path").to_owned();

    let first = entitled(&["import", &file], &daemon.db(), None);
    first.success();
    assert_summary(
        &first,
        &[
            "9 lines",
            "4 stored (1 touching no access level)",
            "1 duplicate",
            "4 refused",
            "invalid_json: 1",
            "missing_field: 1",
            "not_an_event: 1",
            "not_an_object: 1",
        ],
    );
    let stored = daemon.stored_ids();
    let expected: std::collections::HashSet<String> = events.iter().map(Ev::event_id).collect();
    assert_eq!(stored, expected);
    // Byte for byte, as the endpoint stores.
    assert_eq!(
        daemon.stored_body(&events[0].profile_id(), &events[0].event_id()),
        Some(events[0].0.to_string())
    );
    let dump = entitlements_dump(&daemon);
    let changes = daemon.count("SELECT count(*) FROM access_changes");

    // Again: nothing new.
    let second = entitled(&["import", &file], &daemon.db(), None);
    second.success();
    assert_summary(
        &second,
        &["9 lines", "0 stored", "5 duplicate", "4 refused"],
    );
    assert_eq!(daemon.stored_ids(), expected);
    assert_eq!(entitlements_dump(&daemon), dump);
    assert_eq!(daemon.count("SELECT count(*) FROM access_changes"), changes);

    // A daemon on the file answers from the imported events.
    daemon.start_again();
    let one = daemon.profile("prof-imp-1").await;
    assert_eq!(one["premium"], json!(true), "{one}");
    assert_eq!(one["customer_user_id"], json!("user-imp"), "{one}");
    assert_eq!(
        one["access_levels"]["premium"]["expires_at"],
        json!(out_time(t + days(27))),
        "{one}"
    );
    let two = daemon.profile("prof-imp-2").await;
    assert_eq!(two["premium"], json!(false), "{two}");
    assert_eq!(
        two["access_levels"]["premium"]["is_refund"],
        json!(true),
        "{two}"
    );
    let user = daemon.user("user-imp").await;
    assert_eq!(user["premium"], json!(true), "{user}");
    // The import's flips are in the change feed the daemon serves, in line order.
    let feed = daemon.get("/changes?after=0").await;
    feed.expect(200);
    let flips: Vec<(&str, bool, &str)> = feed.json["changes"]
        .as_array()
        .map(|changes| {
            changes
                .iter()
                .map(|c| {
                    (
                        c["profile_id"].as_str().unwrap_or_default(),
                        c["active"].as_bool().unwrap_or_default(),
                        c["reason"].as_str().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        flips,
        vec![
            ("prof-imp-1", true, "subscription_started"),
            ("prof-imp-2", true, "subscription_started"),
            ("prof-imp-2", false, "subscription_refunded"),
        ],
        "{feed}"
    );
    // And the endpoint knows them as duplicates.
    let resp = daemon.webhook(&events[2].0, None).await;
    resp.expect(200);
    assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    entitled(&["rebuild", "--check"], &daemon.db(), None).success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_from_stdin_is_the_same_as_from_a_file() {
    let mut daemon = Daemon::start(&[]);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let t = now();
    let (text, events) = import_file(t);
    let first = entitled(
        &["import", "-"],
        &daemon.db(),
        Some(text.clone().into_bytes()),
    );
    first.success();
    assert_summary(
        &first,
        &[
            "9 lines",
            "4 stored (1 touching no access level)",
            "1 duplicate",
            "4 refused",
        ],
    );
    let expected: std::collections::HashSet<String> = events.iter().map(Ev::event_id).collect();
    assert_eq!(daemon.stored_ids(), expected);
    let second = entitled(&["import", "-"], &daemon.db(), Some(text.into_bytes()));
    second.success();
    assert_summary(&second, &["0 stored", "5 duplicate"]);

    daemon.start_again();
    assert!(daemon.active("prof-imp-1", "premium").await);
    assert!(!daemon.active("prof-imp-2", "premium").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_names_the_line_of_each_refused_body() {
    let mut daemon = Daemon::start(&[]);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let (text, _) = import_file(now());
    let file = daemon.dir().join("backfill.jsonl");
    std::fs::write(&file, &text).expect("writing the import file");
    let run = entitled(
        &["import", file.to_str().expect("a UTF-8 path")],
        &daemon.db(),
        None,
    );
    // Refused lines are not fatal: the good ones were stored.
    run.success();
    assert_eq!(daemon.events_count(), 4, "{run}");
    // Whoever backfills must be able to find what was refused: lines 5, 7, 8 and 10
    // of the file (the blank line 6 counts as a line of the file).
    let output = format!("{}\n{}", run.stdout, run.stderr).to_lowercase();
    for line in [5, 7, 8, 10] {
        assert!(
            output.contains(&format!("line {line}")),
            "refused line {line} is not named: {run}"
        );
    }
    assert!(
        !output.contains("line 1:") && !output.contains("line 9"),
        "a stored line was reported: {run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_on_the_file_equals_the_http_answers_while_the_daemon_runs() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store_all(&[
            subscription_started("prof-acc-1")
                .user("user-acc")
                .at(t - days(10))
                .expires(t + days(20)),
            subscription_refunded("prof-acc-1").at(t - days(5)),
            subscription_started("prof-acc-2")
                .user("user-acc")
                .at(t - days(2))
                .expires(t + days(28)),
            access_level_updated("prof-acc-3", "gold", true, Some(t + days(5))).at(t - hours(3)),
        ])
        .await;
    let db = daemon.db();
    let then = out_time(t - days(7));

    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["prof-acc-1"], "/profiles/prof-acc-1/access".into()),
        (vec!["prof-acc-2"], "/profiles/prof-acc-2/access".into()),
        (vec!["prof-acc-3"], "/profiles/prof-acc-3/access".into()),
        (
            vec!["prof-acc-none"],
            "/profiles/prof-acc-none/access".into(),
        ),
        (vec!["--user", "user-acc"], "/users/user-acc/access".into()),
        (
            vec!["--user", "user-none"],
            "/users/user-none/access".into(),
        ),
        (
            vec!["prof-acc-3", "--access-level", "premium"],
            "/profiles/prof-acc-3/access?access_level=premium".into(),
        ),
    ];
    for (args, path) in &cases {
        let mut full = vec!["access"];
        full.extend(args);
        full.push("--json");
        let run = entitled(&full, &db, None);
        run.success();
        let http = daemon.get(path).await;
        http.expect(200);
        let mut cli = run.json();
        let mut web = http.json.clone();
        for answer in [&mut cli, &mut web] {
            answer.as_object_mut().map(|o| o.remove("checked_at"));
        }
        assert_eq!(cli, web, "{run}\nvs {http}");
    }
    // As of an instant: the whole answer, checked_at included (it is the instant).
    for (args, path) in [
        (
            vec!["prof-acc-1"],
            format!("/profiles/prof-acc-1/access?at={then}"),
        ),
        (
            vec!["--user", "user-acc"],
            format!("/users/user-acc/access?at={then}"),
        ),
    ] {
        let mut full = vec!["access"];
        full.extend(args);
        full.extend(["--json", "--at", then.as_str()]);
        let run = entitled(&full, &db, None);
        run.success();
        let http = daemon.get(&path).await;
        http.expect(200);
        assert_eq!(run.json(), http.json, "{run}\nvs {http}");
        assert_eq!(run.json()["premium"], json!(true), "{run}");
    }

    // The table form says the same, for people.
    let run = entitled(&["access", "prof-acc-2"], &db, None);
    run.success();
    assert!(
        run.stdout.contains("PREMIUM") && run.stdout.contains("premium"),
        "{run}"
    );
    let run = entitled(&["access", "prof-acc-1"], &db, None);
    run.success();
    assert!(run.stdout.contains("not premium"), "{run}");
    // A bad --at is refused with a message, not a wrong answer.
    let run = entitled(&["access", "prof-acc-1", "--at", "yesterday"], &db, None);
    run.failure();
    assert!(run.stderr.contains("yesterday"), "{run}");

    // It reads what the daemon committed since (WAL, no restart in between).
    daemon
        .store(
            &subscription_started("prof-acc-1")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;
    let run = entitled(&["access", "prof-acc-1", "--json"], &db, None);
    run.success();
    assert_eq!(run.json()["premium"], json!(true), "{run}");
    assert!(daemon.active("prof-acc-1", "premium").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_prints_the_timeline_with_each_event_s_effect_while_the_daemon_runs() {
    let daemon = Daemon::start(&[]);
    let t = now();
    let started = subscription_started("prof-ev")
        .at(t - days(10))
        .expires(t + days(20));
    let cancelled = subscription_renewal_cancelled("prof-ev").at(t - days(5));
    let gold = access_level_updated("prof-ev", "gold", true, Some(t + days(5))).at(t - days(4));
    let annotation = Ev::new("trial_active", "prof-ev").at(t - days(3));
    let noop = subscription_renewal_cancelled("prof-ev").at(t - days(2));
    // Arrival order is not timeline order.
    daemon
        .store_all(&[
            annotation.clone(),
            cancelled.clone(),
            gold.clone(),
            noop.clone(),
            started.clone(),
        ])
        .await;
    let db = daemon.db();

    let run = entitled(&["events", "prof-ev"], &db, None);
    run.success();
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 5, "one line per event: {run}");
    let expected = [
        (
            &started,
            "subscription_started",
            format!("premium: created: active until {}", out_time(t + days(20))),
        ),
        (
            &cancelled,
            "subscription_renewal_cancelled",
            "premium: will_renew: true → false".to_owned(),
        ),
        (
            &gold,
            "access_level_updated",
            format!("gold: created: active until {}", out_time(t + days(5))),
        ),
        (
            &annotation,
            "trial_active",
            "touches no access level".to_owned(),
        ),
        (
            &noop,
            "subscription_renewal_cancelled",
            "premium: no change".to_owned(),
        ),
    ];
    for (line, (event, event_type, effect)) in lines.iter().zip(&expected) {
        let at = event.0["event_datetime"].as_str().expect("a datetime");
        let at = chrono::DateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S%.f%z")
            .expect("Adapty's shape")
            .with_timezone(&chrono::Utc);
        assert!(line.starts_with(&out_time(at)), "time first: {line}\n{run}");
        assert!(line.contains(event_type), "type: {line}\n{run}");
        assert!(line.contains(&event.event_id()), "id: {line}\n{run}");
        assert!(
            line.trim_end().ends_with(effect.as_str()),
            "effect {effect:?}: {line}\n{run}"
        );
    }

    // --json is the explain route's answer.
    let run = entitled(&["events", "prof-ev", "--json"], &db, None);
    run.success();
    let mut cli = run.json();
    let mut web = daemon
        .get("/profiles/prof-ev/access/explain")
        .await
        .json
        .clone();
    for answer in [&mut cli, &mut web] {
        answer.as_object_mut().map(|o| o.remove("checked_at"));
    }
    assert_eq!(cli, web);

    // An unknown profile: said so, not an error.
    let run = entitled(&["events", "prof-ev-nobody"], &db, None);
    run.success();
    assert!(
        run.stdout.contains("no events for profile prof-ev-nobody"),
        "{run}"
    );

    // It sees what the daemon commits meanwhile.
    daemon
        .store(&subscription_refunded("prof-ev").at(t - days(1)))
        .await;
    let run = entitled(&["events", "prof-ev"], &db, None);
    run.success();
    let last = run.stdout.lines().rfind(|l| !l.trim().is_empty());
    assert!(
        last.is_some_and(
            |l| l.contains("subscription_refunded") && l.contains("active: true → false")
        ),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_on_a_missing_file_fails_and_creates_nothing() {
    // A typo in --db must not pass the check (on a new, empty database) nor leave a
    // stray file behind: `--check` writes nothing.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("typo.db");
    for args in [vec!["rebuild", "--check"], vec!["rebuild"]] {
        let run = entitled(&args, &missing, None);
        run.failure();
        assert!(
            run.stderr.contains("typo.db"),
            "the message should name the file: {run}"
        );
        assert!(
            !missing.exists(),
            "`entitled {}` created {}: {run}",
            args.join(" "),
            missing.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_under_new_event_names_retypes_and_grants_what_the_renamed_events_say() {
    // Events renamed in Adapty's dashboard arrived before --event-names said so: they
    // were stored and touched nothing. A rebuild with the map gives them their effect.
    let mut built = Daemon::start(&[]);
    let t = now();
    let renamed = Ev::new("my_purchase", "prof-rb-named")
        .user("user-rb-named")
        .at(t - days(2))
        .expires(t + days(28));
    built.store(&renamed).await;
    assert_eq!(
        built.profile("prof-rb-named").await["premium"],
        json!(false),
        "an unknown name must not grant"
    );
    let status = built.stop();
    assert!(status.success(), "SIGTERM: {status}");
    let db = built.db();
    let flags = ["--event-names", "my_purchase=subscription_started"];

    let check = entitled(&["rebuild", "--check", flags[0], flags[1]], &db, None);
    assert_eq!(check.status.code(), Some(1), "{check}");
    assert!(check.stdout.contains("1 events retyped"), "{check}");
    let rebuilt = entitled(&["rebuild", flags[0], flags[1]], &db, None);
    rebuilt.success();
    assert!(
        rebuilt.stdout.contains("1 added") && rebuilt.stdout.contains("1 events retyped"),
        "{rebuilt}"
    );
    assert_eq!(
        built.count(
            "SELECT count(*) FROM events WHERE event_type = 'my_purchase' \
             AND canonical_type = 'subscription_started'"
        ),
        1
    );
    assert_eq!(
        levels_in_file(&built, "prof-rb-named"),
        vec![("premium".to_owned(), true)]
    );
    entitled(&["rebuild", "--check", flags[0], flags[1]], &db, None).success();

    let mut daemon = Daemon::start(&flags);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM: {status}");
    copy_database(&built, &daemon);
    daemon.start_again();
    let answer = daemon.user("user-rb-named").await;
    assert_eq!(answer["premium"], json!(true), "{answer}");
    let feed = daemon.get("/changes?after=0").await;
    feed.expect(200);
    let changes = feed.json["changes"].as_array().cloned().unwrap_or_default();
    assert_eq!(changes.len(), 1, "{feed}");
    assert_eq!(changes[0]["reason"], json!("rebuild"), "{feed}");
    assert_eq!(changes[0]["active"], json!(true), "{feed}");
    assert_eq!(changes[0]["profile_id"], json!("prof-rb-named"), "{feed}");
    // The CLI's timeline, under the same map, names the effect.
    let run = entitled(
        &["events", "prof-rb-named", flags[0], flags[1]],
        &daemon.db(),
        None,
    );
    run.success();
    assert!(
        run.stdout.contains("premium: created: active until"),
        "{run}"
    );
}
