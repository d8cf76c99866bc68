//! Groups 9 and 10: restarts, reading the file while the daemon runs, kill -9.
//! On PostgreSQL too, but reading the file (SQLite's WAL beside the writer) and its
//! `PRAGMA integrity_check`.

use crate::helpers::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_answers_the_same() {
    let levels = format!("{LIFETIME}=premium");
    let mut daemon = Daemon::start(&["--product-levels", &levels, "--read-token", "rt"]);
    let t = now();
    daemon
        .store_all(&[
            subscription_started("prof-rs-1")
                .user("rs-user")
                .at(t - days(2))
                .expires(t + days(28)),
            subscription_renewal_cancelled("prof-rs-1").at(t - days(1)),
            access_level_updated("prof-rs-2", "gold", true, Some(t + days(5)))
                .user("rs-user")
                .at(t - days(1)),
            non_subscription_purchase("prof-rs-3").at(t - days(9)),
            subscription_started("prof-rs-4")
                .at(t - days(9))
                .expires(t + days(21)),
            subscription_refunded("prof-rs-4")
                .at(t - days(1))
                .expires(t - days(1)),
        ])
        .await;

    let read = |daemon: &Daemon, path: String| {
        let daemon_url = daemon.url(&path);
        let client = daemon.client.clone();
        async move {
            let resp = client
                .get(&daemon_url)
                .header("authorization", "Bearer rt")
                .send()
                .await
                .expect("an answer");
            assert_eq!(resp.status().as_u16(), 200, "{path}");
            without_clock(resp.json().await.expect("JSON"))
        }
    };
    let paths: Vec<String> = vec![
        "/profiles/prof-rs-1/access".into(),
        "/profiles/prof-rs-2/access".into(),
        "/profiles/prof-rs-3/access".into(),
        "/profiles/prof-rs-4/access".into(),
        "/users/rs-user/access".into(),
    ];
    let mut before = Vec::new();
    for path in &paths {
        before.push(read(&daemon, path.clone()).await);
    }
    assert_eq!(before[0]["premium"], json!(true), "{}", before[0]);
    assert_eq!(before[2]["premium"], json!(true), "{}", before[2]);
    assert_eq!(before[3]["premium"], json!(false), "{}", before[3]);
    let events_before = daemon.events_count();

    daemon.restart();

    for (path, before) in paths.iter().zip(&before) {
        let after = read(&daemon, path.clone()).await;
        assert_eq!(&after, before, "{path} changed over a restart");
    }
    assert_eq!(daemon.events_count(), events_before);
    // Dedup survives the restart: an id this profile already has.
    let rows = daemon.rows(
        "SELECT profile_event_id FROM events WHERE profile_id = 'prof-rs-1' LIMIT 1",
        &[],
    );
    let stored_id = rows[0][0]
        .as_str()
        .expect("an event of prof-rs-1")
        .to_owned();
    let resp = daemon
        .webhook(&subscription_expired("prof-rs-1").id(&stored_id).0, None)
        .await;
    resp.expect(200);
    assert_eq!(resp.json["status"], json!("duplicate"), "{resp}");
    // And it keeps ingesting.
    daemon
        .store(
            &subscription_started("prof-rs-5")
                .at(t)
                .expires(t + days(30)),
        )
        .await;
    assert_eq!(daemon.events_count(), events_before + 1);
}

sqlite_only! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_readable_while_the_daemon_runs() {
    let daemon = Daemon::start(&[]);
    let t = now();
    daemon
        .store(
            &subscription_started("prof-sql-1")
                .user("sql-user")
                .at(t - days(1))
                .expires(t + days(29)),
        )
        .await;
    daemon
        .store(
            &subscription_started("prof-sql-2")
                .at(t - days(40))
                .expires(t - days(10)),
        )
        .await;
    assert_eq!(daemon.events_count(), 2);

    // A person's long read transaction does not block ingestion (WAL).
    let reader = daemon.sqlite();
    reader.execute_batch("BEGIN").expect("BEGIN");
    let seen: i64 = reader
        .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
        .expect("count");
    assert_eq!(seen, 2);
    daemon
        .store(&subscription_renewal_cancelled("prof-sql-1").at(t - hours(1)))
        .await;
    reader.execute_batch("COMMIT").expect("COMMIT");
    assert_eq!(daemon.events_count(), 3);

    let rows: Vec<ActiveRow> = {
        let conn = daemon.sqlite();
        let mut stmt = conn
            .prepare(
                "SELECT profile_id, customer_user_id, access_level_id, expires_at, will_renew \
                 FROM active_entitlements ORDER BY profile_id",
            )
            .expect("the view");
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("rows");
        rows.map(|r| r.expect("a row")).collect()
    };
    assert_eq!(
        rows,
        vec![(
            "prof-sql-1".to_owned(),
            Some("sql-user".to_owned()),
            "premium".to_owned(),
            Some(out_time(t + days(29))),
            0
        )]
    );
    assert_eq!(daemon.count("SELECT count(*) FROM entitlements"), 2);
    let (event_type, environment, datetime): (String, Option<String>, String) = daemon
        .sqlite()
        .query_row(
            "SELECT event_type, environment, event_datetime FROM events WHERE profile_id = 'prof-sql-2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("the event row");
    assert_eq!(event_type, "subscription_started");
    assert_eq!(environment.as_deref(), Some("Production"));
    assert_eq!(datetime, out_time(t - days(40)));
}

/// profile_id, customer_user_id, access_level_id, expires_at, will_renew.
type ActiveRow = (String, Option<String>, String, Option<String>, i64);
}

/// Concurrent ingestion killed with SIGKILL: every event that got its 200 is in the
/// file after a restart, with its effect, and the file is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_ingestion_loses_no_acknowledged_event() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    const KILL_AFTER: usize = 150;

    let mut daemon = Daemon::start(&[]);
    let t = now();
    let senders = Senders::until_acked(&daemon, TASKS, PER_TASK, KILL_AFTER, move |task, n| {
        subscription_started(&format!("prof-k9-{task}-{n}"))
            .user(&format!("k9-user-{task}"))
            .at(t - minutes(1))
            .expires(t + days(30))
    })
    .await;
    daemon.crash();
    let acked = senders.finish().await;
    assert!(acked.len() >= KILL_AFTER, "{} acked", acked.len());
    eprintln!("acknowledged before and around the kill: {}", acked.len());

    daemon.start_again();
    if !daemon.on_postgres() {
        let integrity: String = daemon
            .sqlite()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(integrity, "ok");
    }

    let stored = daemon.stored_ids();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(_, id)| !stored.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    for (profile, id) in &acked {
        let answer = daemon.profile(profile).await;
        assert_eq!(
            answer["premium"],
            json!(true),
            "the effect of acknowledged {id} is gone: {answer}"
        );
    }
    // Every stored event (acknowledged or not) has its entitlement: event and effect
    // commit together.
    let without_effect = daemon.count(
        "SELECT count(*) FROM events e WHERE NOT EXISTS \
         (SELECT 1 FROM entitlements n WHERE n.profile_id = e.profile_id)",
    );
    assert_eq!(without_effect, 0, "events stored without their effect");

    // Ingestion goes on after the crash.
    daemon
        .store(&subscription_started("prof-k9-after").expires(t + days(30)))
        .await;
}
