//! A database written by an older entitled: the daemon upgrades its schema at start,
//! keeps every event with its `seq`, and deduplicates and folds against them.

use crate::helpers::*;
use serde_json::json;

/// The schema as version 1 shipped it (`schema.sql` before version 2).
const SCHEMA_V1: &str = include_str!("../fixtures/schema-v1.sql");

/// `(type, name, table, sql)` of every schema object, as `sqlite3 .schema` shows them,
/// the sql without its comments and white space: a column added by `ALTER TABLE` (the
/// upgrade to version 3) is written without schema.sql's comments and line breaks.
fn schema_of(conn: &rusqlite::Connection) -> Vec<(String, String, String, Option<String>)> {
    let mut stmt = conn
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|row| {
            let (kind, name, table, sql): (String, String, String, Option<String>) = row.unwrap();
            (
                kind,
                name,
                table,
                sql.map(|s| without_comments_and_space(&s)),
            )
        })
        .collect()
}

fn without_comments_and_space(sql: &str) -> String {
    sql.lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .flat_map(str::chars)
        .filter(|c| !c.is_whitespace())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_file_is_upgraded_at_start_and_its_events_still_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("entitled.db");
    let t = now();
    let profile = "prof-schema-v1";
    // What a version-1 daemon stored: a purchase, and its refund five days later.
    let started = subscription_started(profile)
        .product(MONTHLY)
        .at(t - days(10))
        .expires(t + days(20))
        .id(&uuid());
    let refunded = subscription_refunded(profile)
        .product(MONTHLY)
        .at(t - days(2))
        .expires(t - days(2))
        .id(&uuid());
    // And another profile's event that touches no level (v1 left no row to check).
    let other = Ev::new("trial_active", "prof-schema-v1-other")
        .at(t - days(1))
        .id(&uuid());
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        for (seq, event) in [(1, &started), (2, &refunded), (7, &other)] {
            let at = event.0["event_datetime"]
                .as_str()
                .unwrap()
                .replace("+0000", "Z");
            conn.execute(
                "INSERT INTO events (seq, profile_event_id, profile_id, event_type, \
                 canonical_type, event_datetime, received_at, environment, body) \
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, 'Production', ?7)",
                rusqlite::params![
                    seq,
                    event.event_id(),
                    event.profile_id(),
                    event.event_type(),
                    at,
                    out_time(t - days(1)),
                    event.0.to_string(),
                ],
            )
            .unwrap();
        }
    }

    let mut daemon = Daemon::start_in(dir.path(), &[]);
    assert!(
        daemon.logs().contains("schema upgraded to version 2")
            && daemon.logs().contains("schema upgraded to version 3")
            && daemon.logs().contains("schema upgraded to version 4"),
        "{}",
        daemon.logs()
    );
    let conn = daemon.sqlite();
    assert_eq!(
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        4
    );
    let kept: Vec<(i64, String)> = conn
        .prepare("SELECT seq, profile_event_id FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        kept,
        [
            (1, started.event_id()),
            (2, refunded.event_id()),
            (7, other.event_id())
        ]
    );
    // The upgraded file is what a new file is: same tables, indexes and text.
    let fresh = Daemon::start(&[]);
    assert_eq!(schema_of(&conn), schema_of(&fresh.sqlite()));
    drop(conn);

    // A stored event sent again is a duplicate...
    let answer = daemon.webhook(&started.0, None).await;
    answer.expect(200);
    assert_eq!(answer.json["status"], json!("duplicate"), "{answer}");
    // ... and a late event is folded with the stored ones: the renewal cancelled
    // between purchase and refund leaves the refund the newest word.
    let cancelled = subscription_renewal_cancelled(profile)
        .product(MONTHLY)
        .at(t - days(5))
        .expires(t + days(20))
        .id(&uuid());
    daemon.store(&cancelled).await;
    let level = daemon.level(profile, "premium").await;
    assert_eq!(level["active"], json!(false), "{level}");
    assert_eq!(level["is_refund"], json!(true), "{level}");
    assert_eq!(level["updated_at"], json!(out_time(t - days(2))), "{level}");
    // New events take the next seq.
    assert_eq!(daemon.count("SELECT max(seq) FROM events"), 8);

    // Starting again upgrades nothing, and the log folds to what the table holds.
    daemon.restart();
    assert_eq!(daemon.logs().matches("schema upgraded").count(), 3);
    assert!(daemon.stop().success());
    let check = entitled()
        .args(["rebuild", "--check", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}");
    assert!(stdout.starts_with("matches"), "{stdout}");
    assert!(stdout.contains("4 events"), "{stdout}");
}
