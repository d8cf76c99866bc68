//! SQLite side: the cached 1M-profile database (written directly, not POSTed) and the
//! two storage baselines of the ingest test (batched transactions: the storage
//! ceiling; one commit per event: the "commit per request" reference).

use entitled::adapty::{self, EventNames, Webhook};
use entitled::projection::{self, Event, Rules};
use entitled::store::Synchronous;
use entitled::timestamp::Timestamp;
use entitled_loadgen::gen::{self, GenEvent, EVENTS_PER_PROFILE};
use entitled_loadgen::procs::{self, Pinning, Result};
use rusqlite::{params, Connection};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bump when the generator or the schema changes: the cache key of the database.
pub const DATA_VERSION: &str = "v3";
/// The namespace of the profiles in the cached database.
pub const NS_DATASET: u64 = 1;
/// Profile ids the mixed test ingests into the cached database, deleted afterwards.
pub const MIXED_PREFIX: &str = "bench-mixed-";

/// The cached database for `profiles` profiles (and 4 events each): reuses
/// `target/bench-data/<key>/entitled.db` when complete, else builds it.
pub fn ensure_dataset(bin: &Path, data_dir: &Path, profiles: u64) -> Result<(PathBuf, bool)> {
    let dir = data_dir.join(format!("entitled-{profiles}p-{DATA_VERSION}"));
    let db = dir.join("entitled.db");
    let ready = dir.join("READY");
    if ready.exists() {
        let conn = Connection::open(&db)?;
        remove_mixed(&conn)?;
        let max_seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
        let count: i64 = conn.query_row("SELECT count(*) FROM profiles", [], |r| r.get(0))?;
        if max_seq as u64 == profiles * EVENTS_PER_PROFILE && count as u64 == profiles {
            return Ok((db, true));
        }
        eprintln!(
            "cached database {} is not as expected: rebuilding",
            db.display()
        );
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    // The daemon creates the file from its own schema.
    let none = Pinning { server_cpu: None };
    let mut daemon = procs::spawn_daemon(bin, &none, &db, 0, &dir.join("create.log"))?;
    daemon.wait_line(Duration::from_secs(60))?;
    daemon.stop()?;
    let started = Instant::now();
    fill(&db, profiles)?;
    std::fs::write(
        &ready,
        format!(
            "profiles {profiles}\nevents {}\nbuilt in {:.0} s\n",
            profiles * EVENTS_PER_PROFILE,
            started.elapsed().as_secs_f64()
        ),
    )?;
    Ok((db, false))
}

/// Reads every b-tree of the database but the `events` rows themselves into the OS page
/// cache: the indexes and tables that start-up scans and the writer's inserts look up,
/// as they are cached on a host that has been running entitled. The event bodies (15 of
/// the 17 GB) are only ever appended to. Reading the whole file did not do: this VM
/// drains its page cache at ~35 MB/s even with 23 GB free (2 GB read with `dd` were
/// 1.66 GB 25 s later), so by the mixed phase most of it was gone again.
pub fn warm_os_cache(db: &Path) -> Result<Duration> {
    let started = Instant::now();
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // The indexes of `events` as the schema has them (version 1 had two, 2 has one).
    let event_indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'events'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let by_index = event_indexes
        .iter()
        .map(|name| format!("SELECT count(*) FROM events INDEXED BY {name}"));
    for sql in by_index.chain(
        [
            "SELECT count(*) FROM profiles NOT INDEXED",
            "SELECT count(*) FROM profiles INDEXED BY profiles_by_customer_user_id \
         WHERE customer_user_id IS NOT NULL",
            "SELECT count(*) FROM entitlements NOT INDEXED",
            "SELECT count(*) FROM access_changes NOT INDEXED",
        ]
        .map(String::from),
    ) {
        let _: i64 = conn.query_row(&sql, [], |r| r.get(0))?;
    }
    Ok(started.elapsed())
}

/// Deletes what the mixed test ingested (idempotent).
pub fn remove_mixed(conn: &Connection) -> Result<()> {
    // Every id starting with the prefix sorts in [prefix, prefix with its last '-' → '.').
    let lo = MIXED_PREFIX;
    let hi = format!("{}.", &MIXED_PREFIX[..MIXED_PREFIX.len() - 1]);
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for table in ["events", "entitlements", "profiles", "access_changes"] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE profile_id >= ?1 AND profile_id < ?2"),
            params![lo, hi],
        )?;
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

struct ProfileRows {
    events: Vec<(GenEvent, String)>,
    entitlements: Vec<(String, projection::Entitlement)>,
}

fn profile_rows(p: u64, check: bool) -> Result<ProfileRows> {
    let events = gen::profile_events(NS_DATASET, p);
    let parsed: Vec<_> = events.iter().map(gen::to_event).collect();
    let bodies: Vec<String> = events.iter().map(gen::body).collect();
    if check {
        for (body, expected) in bodies.iter().zip(&parsed) {
            match adapty::parse(body.as_bytes(), &EventNames::default()) {
                Ok(Webhook::Event(received)) if received.event == *expected => {}
                other => {
                    return Err(format!(
                        "generated body does not parse as generated: {other:?}\n{body}"
                    )
                    .into())
                }
            }
        }
    }
    let entitlements = projection::project(parsed.iter(), &Rules::default())
        .into_iter()
        .map(|((_, level), e)| (level.to_string(), e))
        .collect();
    Ok(ProfileRows {
        events: events.into_iter().zip(bodies).collect(),
        entitlements,
    })
}

/// Writes `profiles` profiles: their events (realistic bodies), `profiles` rows and
/// `entitlements` rows folded by entitled's own projection. One thread renders, this
/// one inserts; no journal and no fsync while building (it is a cache: a crash
/// leaves no READY file and it is built again).
fn fill(db: &Path, profiles: u64) -> Result<()> {
    const CHUNK: u64 = 10_000;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<ProfileRows>>>(8);
    let producer = std::thread::spawn(move || {
        let mut start = 0;
        while start < profiles {
            let end = (start + CHUNK).min(profiles);
            let chunk = (start..end)
                .map(|p| profile_rows(p, p < 1000))
                .collect::<Result<Vec<_>>>();
            if tx.send(chunk).is_err() {
                return;
            }
            start = end;
        }
    });
    let mut conn = Connection::open(db)?;
    let _: String = conn.query_row("PRAGMA journal_mode = OFF", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -2000000;")?;
    let now = Timestamp::now();
    let started = Instant::now();
    let mut done = 0u64;
    let mut tx_rows = 0u64;
    let mut txn = conn.transaction()?;
    for chunk in rx {
        for rows in chunk? {
            insert_profile(&txn, &rows, now)?;
            done += 1;
        }
        tx_rows += CHUNK;
        if tx_rows >= 100_000 {
            txn.commit()?;
            txn = conn.transaction()?;
            tx_rows = 0;
            let rate = done as f64 / started.elapsed().as_secs_f64();
            eprintln!(
                "  database: {done}/{profiles} profiles ({:.0} profiles/s, ~{:.0} s left)",
                rate,
                (profiles - done) as f64 / rate
            );
        }
    }
    txn.commit()?;
    producer
        .join()
        .map_err(|_| "the generator thread panicked")?;
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA optimize")?;
    drop(conn);
    // Flush the gigabytes written without fsync now, so the kernel's writeback does not
    // run during the measurements.
    eprintln!("  database: flushing to disk");
    std::fs::File::open(db)?.sync_all()?;
    Ok(())
}

fn insert_profile(conn: &Connection, rows: &ProfileRows, now: Timestamp) -> Result<()> {
    let text = |t: i64| Timestamp::from_micros(t).to_rfc3339();
    let mut events = conn.prepare_cached(
        "INSERT INTO events (profile_event_id, profile_id, customer_user_id, event_type, \
         canonical_type, event_datetime, received_at, environment, body) \
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for (e, body) in &rows.events {
        events.execute(params![
            e.profile_event_id,
            e.profile_id,
            e.customer_user_id,
            e.kind.name(),
            text(e.at),
            text(e.at + 30_000_000),
            e.environment,
            body,
        ])?;
    }
    let (newest, _) = rows.events.last().ok_or("a profile with no events")?;
    let with_user = newest.customer_user_id.is_some();
    conn.prepare_cached(
        "INSERT INTO profiles (profile_id, customer_user_id, customer_user_id_at, \
         customer_user_id_event) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        newest.profile_id,
        newest.customer_user_id,
        with_user.then(|| text(newest.at)),
        with_user.then_some(&newest.profile_event_id),
    ])?;
    for (level, e) in &rows.entitlements {
        entitled::store::save_entitlement(
            conn,
            &newest.profile_id,
            level,
            e,
            e.window.grants_at(now),
        )?;
    }
    Ok(())
}

/// The rows of the ingest stream, for the storage baselines: unique events of the
/// ingest namespace with ~10 % re-sent, as the load client sends them, each with the
/// rows the daemon writes when it stores it.
pub struct Row {
    pub event: GenEvent,
    pub body: String,
    /// The row the daemon adds to `access_changes` when it stores this event (the first
    /// time it comes): the event's access level now granted (`true`) or no longer.
    pub flip: Option<bool>,
}

pub fn ingest_rows(namespace: u64, count: usize, seed: u64) -> Vec<Row> {
    let rules = Rules::default();
    let now = Timestamp::now();
    let mut rng = gen::Rng::new(seed);
    let mut unique = 0u64;
    // Per profile: its events so far; per (profile, level): what the feed last said.
    let mut logs: HashMap<String, Vec<Event>> = HashMap::new();
    let mut reported: HashMap<(String, Arc<str>), bool> = HashMap::new();
    (0..count)
        .map(|_| {
            let resent = unique > 0 && rng.percent(10);
            let i = if resent {
                rng.below(unique)
            } else {
                unique += 1;
                unique - 1
            };
            let event = gen::event(namespace, i);
            let body = gen::body(&event);
            let flip = if resent {
                None
            } else {
                flip(&event, &rules, now, &mut logs, &mut reported)
            };
            Row { event, body, flip }
        })
        .collect()
}

/// Folds `event` into its profile's log with entitled's own projection, as the daemon
/// does, and says whether its access level's access flipped.
fn flip(
    event: &GenEvent,
    rules: &Rules,
    now: Timestamp,
    logs: &mut HashMap<String, Vec<Event>>,
    reported: &mut HashMap<(String, Arc<str>), bool>,
) -> Option<bool> {
    let parsed = gen::to_event(event);
    let level = rules.level_of(&parsed)?;
    let log = logs.entry(event.profile_id.clone()).or_default();
    log.push(parsed);
    let active = projection::project(log.iter(), rules)
        .into_iter()
        .any(|((_, l), e)| l == level && e.window.grants_at(now));
    let said = reported
        .entry((event.profile_id.clone(), level))
        .or_insert(false);
    (active != *said).then(|| {
        *said = active;
        active
    })
}

fn insert_row(conn: &Connection, row: &Row) -> Result<()> {
    let e = &row.event;
    let text = |t: i64| Timestamp::from_micros(t).to_rfc3339();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO events (profile_event_id, profile_id, customer_user_id, event_type, \
             canonical_type, event_datetime, received_at, environment, body) \
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (profile_id, profile_event_id) DO NOTHING",
        )?
        .execute(params![
            e.profile_event_id,
            e.profile_id,
            e.customer_user_id,
            e.kind.name(),
            text(e.at),
            Timestamp::now().to_rfc3339(),
            e.environment,
            row.body,
        ])?;
    if inserted == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO profiles (profile_id, customer_user_id, customer_user_id_at, \
         customer_user_id_event) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (profile_id) DO UPDATE SET customer_user_id = excluded.customer_user_id, \
           customer_user_id_at = excluded.customer_user_id_at, \
           customer_user_id_event = excluded.customer_user_id_event \
         WHERE excluded.customer_user_id IS NOT NULL",
    )?
    .execute(params![
        e.profile_id,
        e.customer_user_id,
        e.customer_user_id.as_ref().map(|_| text(e.at)),
        e.customer_user_id.as_ref().map(|_| &e.profile_event_id),
    ])?;
    conn.prepare_cached(
        "INSERT INTO entitlements (profile_id, access_level_id, is_active, expires_at, starts_at, \
         will_renew, is_lifetime, in_grace_period, is_refund, store, vendor_product_id, environment, \
         last_event_id, last_event_type, last_event_at, reported_active) \
         VALUES (?1, 'premium', 1, ?2, NULL, 1, 0, 0, 0, ?3, ?4, ?5, ?6, ?7, ?8, 1) \
         ON CONFLICT (profile_id, access_level_id) DO UPDATE SET \
           is_active = excluded.is_active, expires_at = excluded.expires_at, \
           will_renew = excluded.will_renew, store = excluded.store, \
           vendor_product_id = excluded.vendor_product_id, environment = excluded.environment, \
           last_event_id = excluded.last_event_id, last_event_type = excluded.last_event_type, \
           last_event_at = excluded.last_event_at",
    )?
    .execute(params![
        e.profile_id,
        e.subscription_expires_at.map(text),
        e.store,
        e.product,
        e.environment,
        e.profile_event_id,
        e.kind.name(),
        text(e.at),
    ])?;
    if let Some(active) = row.flip {
        conn.prepare_cached(
            "INSERT INTO access_changes (profile_id, access_level_id, active, reason, \
             profile_event_id, expires_at, changed_at, customer_user_id) \
             VALUES (?1, 'premium', ?2, ?3, ?4, ?5, ?6, \
             (SELECT customer_user_id FROM profiles WHERE profile_id = ?1))",
        )?
        .execute(params![
            e.profile_id,
            active,
            e.kind.name(),
            e.profile_event_id,
            e.subscription_expires_at.map(text),
            Timestamp::now().to_rfc3339(),
        ])?;
    }
    Ok(())
}

/// The median time of a 4 KiB append and its `fdatasync`, of 21, in `dir`: what a sync
/// costs on this disk (what each commit of the commit-per-event loop waits for).
pub fn sync_latency(dir: &Path) -> Result<Duration> {
    use std::io::Write;
    let path = dir.join("sync-latency");
    let mut file = std::fs::File::create(&path)?;
    let page = [0u8; 4096];
    let mut times = Vec::with_capacity(21);
    for _ in 0..21 {
        let started = Instant::now();
        file.write_all(&page)?;
        file.sync_data()?;
        times.push(started.elapsed());
    }
    std::fs::remove_file(&path)?;
    times.sort();
    Ok(times[10])
}

/// Rows per second into a fresh database with entitled's schema and pragmas (WAL,
/// synchronous=FULL): `batch` rows a transaction, for at most `limit` (whole
/// transactions), over at most all `rows`.
pub fn baseline(db: &Path, rows: &[Row], batch: usize, limit: Duration) -> Result<(f64, usize)> {
    let (conn, _lock) = entitled::store::open(db, Synchronous::Full)?;
    let started = Instant::now();
    let mut done = 0;
    for chunk in rows.chunks(batch) {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for row in chunk {
            insert_row(&conn, row)?;
        }
        conn.execute_batch("COMMIT")?;
        done += chunk.len();
        if started.elapsed() >= limit {
            break;
        }
    }
    Ok((done as f64 / started.elapsed().as_secs_f64(), done))
}
