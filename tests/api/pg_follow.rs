//! What only PostgreSQL has (the `postgres` binary only):
//! - the follower's horizon: a transaction that took its id before another instance's
//!   commit and commits after it (a writer whose sequence value or id commits out of
//!   order) is not skipped, and what it wrote is not shown before it commits;
//! - two instances starting at once on an empty database: one migrates, both serve;
//! - `entitled migrate` from a SQLite daemon's file: the answers, the change feed and
//!   its cursor carry over; a second run copies nothing twice and what arrived since;
//! - the tools on a URL: `rebuild --check`, `access`, `events`, `import` beside running
//!   instances;
//! - a silent expiry, seen by every instance's clock, reaches the change feed once;
//! - an instance started while PostgreSQL is down waits for it, then serves;
//! - a database of schema version 1 is upgraded at start (push's tables).

use crate::helpers::*;
use crate::pg_server;
use serde_json::{json, Value};
use std::sync::mpsc;
use std::time::{Duration as StdDuration, Instant};

/// Polls until `condition` holds for `profile` on `daemon` (bounded), or panics.
async fn until(daemon: &Daemon, profile: &str, what: &str, condition: impl Fn(&Value) -> bool) {
    let started = Instant::now();
    loop {
        let answer = daemon.profile(profile).await;
        if condition(&answer) {
            return;
        }
        assert!(
            started.elapsed() < StdDuration::from_secs(5),
            "{profile}: not {what} within 5 s: {answer}\n{}",
            daemon.logs()
        );
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
}

fn will_renew(answer: &Value) -> Value {
    answer["access_levels"]["premium"]["will_renew"].clone()
}

/// A transaction on its own thread: it takes its id (and writes) now, and commits when
/// told.
struct HeldTransaction {
    commit: mpsc::Sender<()>,
    done: std::thread::JoinHandle<()>,
}

impl HeldTransaction {
    fn begin(url: &str, sql: &'static str) -> HeldTransaction {
        let url = url.to_owned();
        let (commit, told) = mpsc::channel();
        let (began, begun) = mpsc::channel();
        let done = std::thread::spawn(move || {
            let mut client = pg_server::connect(&url).expect("a connection");
            let mut tx = client.transaction().expect("BEGIN");
            tx.batch_execute(sql).expect("the held write");
            began.send(()).expect("the test waits");
            told.recv().expect("told to commit");
            tx.commit().expect("COMMIT");
        });
        begun
            .recv_timeout(StdDuration::from_secs(10))
            .expect("the held transaction began");
        HeldTransaction { commit, done }
    }

    fn commit(self) {
        self.commit.send(()).expect("the thread waits");
        self.done.join().expect("the held transaction committed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_ends_after_a_later_one_is_neither_skipped_nor_shown_early() {
    // A server of its own: the held transaction holds back the horizon of every
    // database of its cluster (docs/scaling.md), which would slow the other tests.
    let server = pg_server::PgServer::dedicated();
    let a = Daemon::start_on(&server.fresh_database(), &[]);
    let b = Daemon::start_beside(&a, &[]);
    let t = now();
    a.store(
        &subscription_started("held-q")
            .at(t - minutes(5))
            .expires(t + days(30)),
    )
    .await;
    until(&b, "held-q", "known", |v| will_renew(v) == json!(true)).await;

    // An early transaction takes its id and writes q's row (as another writer would),
    // and stays open while instance A commits r's event: A's transaction has the later
    // id and commits first.
    let early = HeldTransaction::begin(
        &a.db_arg(),
        "UPDATE entitlements SET will_renew = false, written_xid = pg_current_xact_id() \
         WHERE profile_id = 'held-q'",
    );
    let sent = Instant::now();
    a.store(
        &subscription_started("held-r")
            .at(t - minutes(1))
            .expires(t + days(30)),
    )
    .await;
    // A's answer waited (bounded) for its own follower, which the open transaction
    // holds back: the 2xx still came, the event being committed.
    assert!(sent.elapsed() < StdDuration::from_secs(5));
    // Nothing uncommitted is shown, on either instance.
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    for daemon in [&a, &b] {
        assert_eq!(
            will_renew(&daemon.profile("held-q").await),
            json!(true),
            "an uncommitted write is shown"
        );
    }
    early.commit();
    // The early commit is not skipped although a later id committed before it; and r,
    // held back behind it, is shown too.
    for daemon in [&a, &b] {
        until(daemon, "held-q", "following the early commit", |v| {
            will_renew(v) == json!(false)
        })
        .await;
        until(daemon, "held-r", "known", |v| {
            v["access_levels"]["premium"]["active"] == json!(true)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_on_an_empty_database_both_serve() {
    let url = pg_server::shared().fresh_database();
    let starts: Vec<std::thread::JoinHandle<Daemon>> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Daemon::start_on(&url, &[]))
        })
        .collect();
    let daemons: Vec<Daemon> = starts
        .into_iter()
        .map(|s| s.join().expect("an instance started"))
        .collect();
    let version = pg_server::with_client(&url, |c| {
        let rows = c
            .query("SELECT version FROM entitled_schema", &[])
            .expect("the schema's version");
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>()
    });
    assert_eq!(version, vec![2], "one schema, migrated once");
    let t = now();
    daemons[2]
        .store(&subscription_started("together").at(t - minutes(1)))
        .await;
    for daemon in &daemons {
        until(daemon, "together", "known", |v| v["premium"] == json!(true)).await;
    }
}

/// `entitled <args>`, bounded; the run's output.
fn tool(args: &[&str]) -> Run {
    let mut command = entitled();
    command.args(args);
    run_bounded(
        command,
        format!("entitled {}", args.join(" ")),
        None,
        StdDuration::from_secs(60),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_sqlite_installation_and_can_run_again() {
    let dir = tempfile::tempdir().expect("a directory");
    let file = dir.path().join("entitled.db");
    let file_arg = file.display().to_string();
    let mut sqlite = Daemon::start_on(&file_arg, &[]);
    let t = now();
    sqlite
        .store_all(&[
            subscription_started("mig-1")
                .user("mig-user")
                .at(t - days(3))
                .expires(t + days(27)),
            subscription_started("mig-2")
                .at(t - days(40))
                .expires(t - days(10)),
            subscription_started("mig-3")
                .at(t - days(2))
                .expires(t + days(28)),
            subscription_renewal_cancelled("mig-3")
                .at(t - days(1))
                .expires(t + days(28)),
        ])
        .await;
    let before: Vec<Value> = {
        let mut answers = Vec::new();
        for id in ["mig-1", "mig-2", "mig-3"] {
            answers.push(without_clock(sqlite.profile(id).await));
        }
        answers
    };
    let feed = sqlite.get("/changes?after=0").await;
    feed.expect(200);

    // The first run beside the running daemon.
    let url = pg_server::shared().fresh_database();
    let first = tool(&["migrate", "--from", &file_arg, "--to", &url, "--quiet"]);
    assert!(first.status.success(), "{first}");
    assert!(
        first.stdout.contains("4 events read, 4 new"),
        "{}",
        first.stdout
    );

    // One more event reaches the file; then the daemon stops and the second run copies
    // only that one.
    sqlite
        .store(&subscription_started("mig-4").at(t - hours(1)))
        .await;
    let feed_after = sqlite.get("/changes?after=0").await;
    sqlite.stop();
    // Push had delivered up to seq 2 on the file: the cursor moves with the rest.
    rusqlite::Connection::open(&file)
        .and_then(|c| {
            c.execute(
                "INSERT INTO notify_state (id, delivered_seq) VALUES (1, 2)",
                [],
            )
        })
        .expect("a push cursor in the file");
    let second = tool(&["migrate", "--from", &file_arg, "--to", &url, "--quiet"]);
    assert!(second.status.success(), "{second}");
    assert!(
        second.stdout.contains("5 events read, 1 new"),
        "{}",
        second.stdout
    );
    assert!(
        second.stdout.contains("0 changed, 0 added, 0 removed"),
        "{}",
        second.stdout
    );

    let cursor = pg_server::with_client(&url, |c| {
        c.query_one("SELECT delivered_seq FROM notify_state", &[])
            .expect("push's cursor")
            .get::<_, i64>(0)
    });
    assert_eq!(cursor, 2);
    // An instance on PostgreSQL answers as the file did, and the feed keeps its seq.
    let pg = Daemon::start_on(&url, &[]);
    for (id, answer) in ["mig-1", "mig-2", "mig-3"].iter().zip(&before) {
        assert_eq!(&without_clock(pg.profile(id).await), answer, "{id}");
    }
    let moved = pg.get("/changes?after=0").await;
    moved.expect(200);
    assert_eq!(moved.json["changes"], feed_after.json["changes"]);
    assert!(feed.json["changes"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
    // A consumer's cursor goes on: the next change has the next seq.
    let cursor = moved.json["next_after"].as_i64().expect("a cursor");
    pg.store(&subscription_started("mig-5").at(t - minutes(1)))
        .await;
    // (The 2xx waited for this instance's follower, but only up to 2 s: on a busy
    // cluster the feed may show it a moment later.)
    let mut next = pg.get(&format!("/changes?after={cursor}")).await;
    let started = Instant::now();
    while next.json["changes"].as_array().is_some_and(Vec::is_empty)
        && started.elapsed() < StdDuration::from_secs(5)
    {
        tokio::time::sleep(StdDuration::from_millis(20)).await;
        next = pg.get(&format!("/changes?after={cursor}")).await;
    }
    next.expect(200);
    assert_eq!(next.json["changes"][0]["seq"], json!(cursor + 1), "{next}");
    assert_eq!(
        next.json["changes"][0]["profile_id"],
        json!("mig-5"),
        "{next}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_work_on_a_url_beside_running_instances() {
    let a = Daemon::start(&[]);
    let url = a.db_arg();
    let t = now();
    a.store(
        &subscription_started("tool-1")
            .user("tool-user")
            .at(t - days(1)),
    )
    .await;

    let access = tool(&["access", "--db", &url, "--user", "tool-user", "--json"]);
    assert!(access.status.success(), "{access}");
    let answer: Value = serde_json::from_str(&access.stdout).expect("JSON");
    assert_eq!(answer["premium"], json!(true), "{answer}");
    assert_eq!(answer["profile_ids"], json!(["tool-1"]), "{answer}");

    let events = tool(&["events", "--db", &url, "tool-1"]);
    assert!(events.status.success(), "{events}");
    assert!(
        events.stdout.contains("subscription_started"),
        "{}",
        events.stdout
    );

    let check = tool(&["rebuild", "--check", "--db", &url]);
    assert!(check.status.success(), "{check}");
    assert!(check.stdout.starts_with("matches:"), "{}", check.stdout);

    // import beside the running instance: it follows what import wrote.
    let lines = format!("{}\n", subscription_started("tool-2").at(t - hours(2)).0);
    let file = a.dir().join("import.jsonl");
    std::fs::write(&file, lines).expect("the import file");
    let import = tool(&["import", "--db", &url, &file.display().to_string()]);
    assert!(import.status.success(), "{import}");
    until(&a, "tool-2", "imported", |v| v["premium"] == json!(true)).await;

    // A product mapped to another level: the check differs, the rebuild moves it, and
    // the running instance follows.
    let product = format!("{MONTHLY}=gold");
    let differs = tool(&[
        "rebuild",
        "--check",
        "--db",
        &url,
        "--product-levels",
        &product,
    ]);
    assert_eq!(differs.status.code(), Some(1), "{differs}");
    let rebuilt = tool(&["rebuild", "--db", &url, "--product-levels", &product]);
    assert!(rebuilt.status.success(), "{rebuilt}");
    until(&a, "tool-1", "rebuilt to gold", |v| {
        v["access_levels"]["gold"]["active"] == json!(true)
            && v["access_levels"]["premium"].is_null()
    })
    .await;

    // Push's tool reads the shared cursor (push has not run on this database).
    let notify = tool(&["notify", "status", "--db", &url]);
    assert!(notify.status.success(), "{notify}");
    assert!(
        notify.stdout.contains("push has not run"),
        "{}",
        notify.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_expiry_reaches_the_feed_once_whatever_the_instances() {
    let a = Daemon::start(&[]);
    let b = Daemon::start_beside(&a, &[]);
    let c = Daemon::start_beside(&a, &[]);
    let t = now();
    let ends = t + secs(2);
    a.store(
        &subscription_started("expires-once")
            .at(t - minutes(1))
            .expires(ends),
    )
    .await;
    // Every instance's clock looks each second; each answers the expiry at read time.
    for daemon in [&a, &b, &c] {
        until(daemon, "expires-once", "expired", |v| {
            v["premium"] == json!(false)
        })
        .await;
    }
    // Three more ticks of every clock: still one `expired` row.
    tokio::time::sleep(StdDuration::from_secs(3)).await;
    let expired = a.count(
        "SELECT count(*) FROM access_changes \
         WHERE profile_id = 'expires-once' AND reason = 'expired'",
    );
    assert_eq!(expired, 1, "the feed's expired row, written once");
    for daemon in [&a, &b, &c] {
        let feed = daemon.get("/changes?after=0").await;
        feed.expect(200);
        let reasons: Vec<&str> = feed.json["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|c| c["profile_id"] == json!("expires-once"))
            .filter_map(|c| c["reason"].as_str())
            .collect();
        assert_eq!(reasons, ["subscription_started", "expired"], "{feed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_while_postgresql_is_down_serves_once_it_is_up() {
    let mut server = pg_server::PgServer::dedicated();
    let url = server.fresh_database();
    server.stop();
    let starting = {
        let url = url.clone();
        std::thread::spawn(move || Daemon::start_on(&url, &[]))
    };
    // It keeps trying (and says why in its log) instead of exiting.
    tokio::time::sleep(StdDuration::from_secs(3)).await;
    assert!(
        !starting.is_finished(),
        "the daemon gave up (or got ready) without PostgreSQL"
    );
    server.start();
    let daemon = starting
        .join()
        .expect("the daemon started once PostgreSQL was up");
    assert!(
        daemon.logs().contains("cannot reach PostgreSQL"),
        "{}",
        daemon.logs()
    );
    daemon.get("/readyz").await.expect(200);
    let t = now();
    daemon
        .store(&subscription_started("late-start").at(t - minutes(1)))
        .await;
    assert!(daemon.active("late-start", "premium").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_upgraded_at_start() {
    let url = pg_server::shared().fresh_database();
    let t = now();
    let event = subscription_started("v1-profile").at(t - hours(1));
    let body = event.0.to_string();
    let at = out_time(t - hours(1));
    pg_server::with_client(&url, |c| {
        c.batch_execute(include_str!("../fixtures/postgres-schema-v1.sql"))
            .expect("the version 1 schema");
        c.execute(
            "INSERT INTO events (profile_event_id, profile_id, event_type, canonical_type, \
             event_datetime, received_at, body) \
             VALUES ($1, 'v1-profile', 'subscription_started', 'subscription_started', $2, $2, $3)",
            &[&event.event_id(), &at, &body],
        )
        .expect("an event of version 1");
    });
    let daemon = Daemon::start_on(&url, &[]);
    let (version, push_tables) = pg_server::with_client(&url, |c| {
        let version: i32 = c
            .query_one("SELECT version FROM entitled_schema", &[])
            .expect("the version")
            .get(0);
        let tables: i64 = c
            .query_one(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_name IN ('notify_state', 'notify_failed')",
                &[],
            )
            .expect("the tables")
            .get(0);
        (version, tables)
    });
    assert_eq!((version, push_tables), (2, 2));
    // What version 1 stored is still there: a rebuild folds it.
    assert_eq!(daemon.events_count(), 1);
    let rebuilt = tool(&["rebuild", "--db", &url]);
    assert!(rebuilt.status.success(), "{rebuilt}");
    assert!(rebuilt.stdout.contains("1 added"), "{}", rebuilt.stdout);
    until(&daemon, "v1-profile", "rebuilt", |v| {
        v["premium"] == json!(true)
    })
    .await;
}
