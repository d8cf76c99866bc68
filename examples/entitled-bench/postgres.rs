//! `--only-postgres`: the PostgreSQL store (issue #20), on a real server this process
//! starts with the test harness's own code (tests/api/pg_server.rs, included as is:
//! `initdb` in a temporary directory, `postgres` on 127.0.0.1, fsync on, the server
//! gone when this process ends). In order:
//!
//! 1. **Ingest through one instance**, then **through two**: `entitled serve --db
//!    postgres://…` (the release binary) on a fresh database each time; the bench's
//!    ingest client (`--connections` closed-loop connections, split evenly over the
//!    instances, all drawing from one stream of realistic webhooks with ~10 % re-sent,
//!    so a re-send may reach the other instance) for a warm-up and 1.5 × `--seconds`.
//!    Each instance's `/metrics` gives its mean batch (events a transaction) and commit
//!    time over the phase; PostgreSQL's processes' CPU is read from `/proc`.
//! 2. **Follower lag**, on those two instances: a purchase webhook of a new profile is
//!    POSTed to A and, once A answered 2xx, B is asked for the profile back to back on
//!    one keep-alive connection until its answer grants `premium`; the lag is from A's
//!    2xx to that answer. [`LAG_SAMPLES`] one after another on the idle pair, then as
//!    many as fit in a `--seconds` window beside a paced ingest of half the two
//!    instances' rate, spread over both.
//! 3. **The ceiling**, on the same server, each variant on a fresh database with
//!    entitled's schema, one client (this process) inserting the rows the daemon
//!    writes for the same stream (the `events` row with its body, the `profiles` and
//!    `entitlements` upserts, the `access_changes` row when the event flips its level),
//!    for at most `--seconds`: with one statement a row, each prepared once, in
//!    transactions of the instances' mean batch (the "same batch size": the ceiling);
//!    with COPY at that batch; with statements 1000 a transaction (the SQLite bench's
//!    storage ceiling's size). And, not a ceiling, the same statements sent the way
//!    the store's writer sends its own (each prepared again at its use, a savepoint an
//!    event), at that batch: what the protocol's round trips cost the same rows.
//! 4. **Lookups and start-up**, pinned as the SQLite bench pins them (the daemon on
//!    core 0, the client on core 1): `--profiles` profiles loaded into a fresh
//!    PostgreSQL database (the cached SQLite dataset's `profiles` and `entitlements`
//!    rows, generated and folded the same way, with COPY; no events, which neither
//!    warm-up nor lookups read), against a SQLite daemon on the cached dataset. Three
//!    alternating pairs; in each, a start timed to `/readyz` 200, then closed-loop
//!    lookups. The first pair also checks that both answer a sample of profiles alike.
//!    The full run (not `--quick`) then starts one instance three times on [`LARGE`]
//!    profiles loaded the same way (PostgreSQL only: that SQLite dataset is 17 GB).
//!
//! Prints every phase on stderr and the table on stdout, and writes the PostgreSQL
//! section of the report (report.rs, [`PostgresSection`]). Timings never run under
//! `cargo test`.

use crate::load::{self, Mode, Spec, Stats};
use crate::report::{self, ms, Check, PostgresSection, Report};
use crate::storage::{self, Row};
use bytes::Bytes;
use entitled::projection::{self, EventType, Rules};
use entitled::timestamp::Timestamp;
use entitled_loadgen::gen;
use entitled_loadgen::procs::{self, Pinning, Result, Server};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The test crate's `postgres_only!` drops the harness's own tests, as its SQLite
/// binary does: pg_server.rs is included as it is.
macro_rules! postgres_only {
    ($($item:item)*) => {};
}

#[path = "../../tests/api/pg_server.rs"]
mod pg_server;

/// Webhooks of the follower-lag samples, idle and beside the ingest, and of that ingest.
const NS_LAG: u64 = 60;
const NS_LAG_LOADED: u64 = 61;
const NS_BESIDE: u64 = 62;
/// Follower-lag samples on the idle pair (`--quick`: a fifth).
const LAG_SAMPLES: usize = 500;
/// How long B may take to show a webhook A answered before the sample fails.
const SEEN_LIMIT: Duration = Duration::from_secs(5);
/// The follower's poll interval when no NOTIFY wakes it (src/store/postgres/follow.rs).
const POLL_MS: u64 = 100;
/// Pairs of (SQLite, PostgreSQL) lookups and start-ups, the order alternating.
const PAIRS: usize = 3;
/// Rows a transaction of the ceiling that the SQLite bench's storage ceiling also uses.
const BIG_BATCH: usize = 1000;
/// Profiles of the PostgreSQL-only start-up of the full run (not `--quick`): what
/// docs/scaling.md quotes; the SQLite dataset of that size is 17 GB, so no pair.
const LARGE: u64 = 1_000_000;
/// Profiles whose answers the first pair compares between the two stores.
const COMPARED: u64 = 200;

/// Where the run happens and with what.
pub struct Setup<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub profiles: u64,
    pub connections: usize,
    pub warmup: Duration,
    pub window: Duration,
    pub quick: bool,
    pub pin: bool,
    pub dataset: &'a Path,
    pub out: Option<PathBuf>,
    pub command: String,
}

/// The postmaster and its children: PostgreSQL's CPU, apart from the daemons'.
struct Postmaster(u32);

impl Postmaster {
    fn of(server: &pg_server::PgServer) -> Result<Postmaster> {
        let pid_file = server.dir().join("data/postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .map_err(|e| format!("{}: {e}", pid_file.display()))?;
        let pid = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| format!("{}: no pid", pid_file.display()))?;
        Ok(Postmaster(pid))
    }

    /// CPU ticks so far of the postmaster and every process it started that is alive.
    fn ticks(&self) -> u64 {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        dir.filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = stat.rsplit_once(") ")?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let parent: u32 = fields.get(1)?.parse().ok()?;
            (pid == self.0 || parent == self.0).then(|| {
                let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
                tick(11).unwrap_or(0) + tick(12).unwrap_or(0)
            })
        })
        .sum()
    }
}

/// What an instance's `/metrics` says of its writer so far.
#[derive(Clone, Copy, Default)]
struct Writer {
    batches: f64,
    events: f64,
    commit_seconds: f64,
}

impl Writer {
    fn read(addr: SocketAddr) -> Result<Writer> {
        let (status, _, body) = procs::http_get(addr, "/metrics")?;
        if status != 200 {
            return Err(format!("GET /metrics: {status}").into());
        }
        let text = String::from_utf8_lossy(&body);
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Ok(Writer {
            batches: value("entitled_writer_batch_size_count"),
            events: value("entitled_writer_batch_size_sum"),
            commit_seconds: value("entitled_writer_commit_duration_seconds_sum"),
        })
    }

    fn since(self, before: Writer) -> Writer {
        Writer {
            batches: self.batches - before.batches,
            events: self.events - before.events,
            commit_seconds: self.commit_seconds - before.commit_seconds,
        }
    }

    fn mean_batch(&self) -> f64 {
        self.events / self.batches.max(1.0)
    }

    fn mean_commit_ms(&self) -> f64 {
        self.commit_seconds * 1e3 / self.batches.max(1.0)
    }
}

/// One ingest phase over one or more instances.
struct Ingest {
    stats: Vec<Stats>,
    writers: Vec<Writer>,
    /// PostgreSQL's processes over the window, in cores.
    pg_cpu: f64,
}

impl Ingest {
    fn rate(&self) -> f64 {
        self.stats.iter().map(Stats::rate).sum()
    }

    fn hist(&self) -> Result<Histogram<u64>> {
        let mut all = load::histogram();
        for s in &self.stats {
            all.add(&s.hist)?;
        }
        Ok(all)
    }

    fn sum(&self, f: impl Fn(&Stats) -> u64) -> u64 {
        self.stats.iter().map(f).sum()
    }

    fn daemons_cpu(&self) -> f64 {
        self.stats.iter().map(|s| s.server_cpu).sum()
    }

    /// The mean events a commit over every instance.
    fn mean_batch(&self) -> f64 {
        let (events, batches) = self
            .writers
            .iter()
            .fold((0.0, 0.0), |(e, b), w| (e + w.events, b + w.batches));
        events / f64::max(batches, 1.0)
    }

    fn line(&self) -> Result<String> {
        let hist = self.hist()?;
        let q = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
        let writers: Vec<String> = self
            .writers
            .iter()
            .map(|w| {
                format!(
                    "{:.0} commits of {:.1} events, {:.2} ms each",
                    w.batches,
                    w.mean_batch(),
                    w.mean_commit_ms()
                )
            })
            .collect();
        Ok(format!(
            "{:.0} events/s ({}), p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; stored {}, \
             duplicate {}, non-2xx {}, errors {}; daemons' CPU {:.2}, PostgreSQL's {:.2} \
             cores; writers: {}",
            self.rate(),
            self.stats
                .iter()
                .map(|s| format!("{:.0}/s", s.rate()))
                .collect::<Vec<_>>()
                .join(" + "),
            q(0.5),
            q(0.99),
            q(0.999),
            self.sum(|s| s.stored),
            self.sum(|s| s.duplicate),
            self.sum(|s| s.non_2xx),
            self.sum(|s| s.errors),
            self.daemons_cpu(),
            self.pg_cpu,
            writers.join("; "),
        ))
    }
}

/// Runs `make`'s webhooks against every daemon at once, `connections` split evenly (a
/// paced `mode`'s rate too), all drawing from the one stream. With `lag`, samples the
/// follower lag from `lag.0` to `lag.1` through the measured window.
#[allow(clippy::too_many_arguments)]
async fn ingest_load(
    daemons: &[(SocketAddr, u32)],
    connections: usize,
    warmup: Duration,
    measure: Duration,
    mode: Mode,
    make: load::MakeRequest,
    seed: u64,
    pg: &Postmaster,
    lag: Option<(SocketAddr, SocketAddr, u64)>,
) -> Result<(Vec<Stats>, f64, Option<Lag>)> {
    let n = daemons.len();
    let mut tasks = Vec::new();
    for (k, &(addr, pid)) in daemons.iter().enumerate() {
        let spec = Spec {
            addr,
            connections: (connections / n).max(1),
            warmup,
            measure,
            mode: match mode {
                Mode::Closed => Mode::Closed,
                Mode::Paced(rate) => Mode::Paced(rate / n as f64),
            },
            seed: seed + k as u64,
        };
        tasks.push(tokio::spawn(load::run(spec, make.clone(), pid)));
    }
    let from = Instant::now() + warmup;
    let to = from + measure;
    let ticks = procs::clock_ticks();
    let cpu = async {
        tokio::time::sleep_until(from.into()).await;
        let (t0, c0) = (Instant::now(), pg.ticks());
        tokio::time::sleep_until(to.into()).await;
        let (t1, c1) = (Instant::now(), pg.ticks());
        c1.saturating_sub(c0) as f64 / ticks / (t1 - t0).as_secs_f64()
    };
    let sampled = async {
        match lag {
            Some((a, b, namespace)) => {
                Some(follower_lag(a, b, namespace, usize::MAX, from, Some(to)).await)
            }
            None => None,
        }
    };
    let (pg_cpu, lag) = tokio::join!(cpu, sampled);
    let mut stats = Vec::new();
    for task in tasks {
        stats.push(task.await??);
    }
    Ok((stats, pg_cpu, lag.transpose()?))
}

/// An ingest phase on `daemons`, with their writers' figures over it.
#[allow(clippy::too_many_arguments)]
fn ingest(
    runtime: &tokio::runtime::Runtime,
    daemons: &[&Server],
    connections: usize,
    warmup: Duration,
    measure: Duration,
    mode: Mode,
    make: load::MakeRequest,
    seed: u64,
    pg: &Postmaster,
    lag: Option<u64>,
) -> Result<(Ingest, Option<Lag>)> {
    let before: Vec<Writer> = daemons
        .iter()
        .map(|d| Writer::read(d.addr))
        .collect::<Result<_>>()?;
    let addrs: Vec<(SocketAddr, u32)> = daemons.iter().map(|d| (d.addr, d.pid)).collect();
    let lag = lag.map(|namespace| (daemons[0].addr, daemons[1].addr, namespace));
    let (stats, pg_cpu, lag) = runtime.block_on(ingest_load(
        &addrs,
        connections,
        warmup,
        measure,
        mode,
        make,
        seed,
        pg,
        lag,
    ))?;
    let writers = daemons
        .iter()
        .zip(before)
        .map(|(d, b)| Ok(Writer::read(d.addr)?.since(b)))
        .collect::<Result<_>>()?;
    Ok((
        Ingest {
            stats,
            writers,
            pg_cpu,
        },
        lag,
    ))
}

// ---- follower lag -----------------------------------------------------------------

/// What the follower-lag samples measured.
struct Lag {
    /// A's answer to the webhook, from the send to its 2xx (ns).
    post: Histogram<u64>,
    /// From A's 2xx to B's first answer that grants the level (ns).
    seen: Histogram<u64>,
    /// Samples whose first GET to B already granted it.
    at_first_poll: u64,
    /// GETs to B, in all.
    polls: u64,
    /// Every sample: seconds since the first was sent, and its lag in ms.
    samples: Vec<(f64, f64)>,
}

impl Lag {
    fn count(&self) -> u64 {
        self.seen.len()
    }

    fn q(&self, q: f64) -> f64 {
        self.seen.value_at_quantile(q) as f64 / 1e6
    }

    fn max(&self) -> f64 {
        self.seen.max() as f64 / 1e6
    }

    /// The five slowest samples: "41.6 ms at 3.2 s, …".
    fn slowest(&self) -> String {
        let mut by_lag = self.samples.clone();
        by_lag.sort_by(|a, b| b.1.total_cmp(&a.1));
        by_lag
            .iter()
            .take(5)
            .map(|(at, lag)| format!("{} at {at:.2} s", ms(*lag)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn line(&self) -> String {
        format!(
            "{} samples: lag p50 {} / p99 {} / max {} ({} shown at B's first poll, {:.1} \
             polls a sample; slowest {}); A's 2xx p50 {} / p99 {}",
            self.count(),
            ms(self.q(0.5)),
            ms(self.q(0.99)),
            ms(self.max()),
            self.at_first_poll,
            self.polls as f64 / self.count().max(1) as f64,
            self.slowest(),
            ms(self.post.value_at_quantile(0.5) as f64 / 1e6),
            ms(self.post.value_at_quantile(0.99) as f64 / 1e6),
        )
    }
}

/// A `subscription_started` of a monthly premium product for a new profile, dated in
/// 2031 (nothing expires during the run): a gain of `premium` (as push.rs's flood).
fn purchase(namespace: u64, i: u64) -> (String, Bytes) {
    let profile = format!("pg-lag-{namespace}-{i}");
    let mut e = gen::profile_events_with_id(namespace, i, profile.clone()).swap_remove(0);
    e.kind = EventType::SubscriptionStarted;
    e.product = "com.example.app.premium.monthly";
    e.subscription_expires_at = Some(e.at + 30 * 24 * 3600 * 1_000_000);
    e.cancellation_reason = None;
    e.alu = None;
    e.environment = "Production";
    (profile, Bytes::from(gen::body(&e)))
}

/// One request on a keep-alive connection: status and body.
async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &str,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(u16, Bytes)> {
    sender.ready().await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Up to `most` samples, one after another from `start` (until `until`): a new
/// profile's purchase POSTed to `a`, then `b` asked back to back until it grants it.
async fn follower_lag(
    a: SocketAddr,
    b: SocketAddr,
    namespace: u64,
    most: usize,
    start: Instant,
    until: Option<Instant>,
) -> Result<Lag> {
    let (mut to_a, mut to_b) = (load::connect(a).await?, load::connect(b).await?);
    let (host_a, host_b) = (a.to_string(), b.to_string());
    let mut lag = Lag {
        post: load::histogram(),
        seen: load::histogram(),
        at_first_poll: 0,
        polls: 0,
        samples: Vec::new(),
    };
    tokio::time::sleep_until(start.into()).await;
    for i in 0..most as u64 {
        if until.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        let (profile, body) = purchase(namespace, i);
        let sent = Instant::now();
        let (status, answer) =
            call(&mut to_a, &host_a, Method::POST, "/webhooks/adapty", body).await?;
        let acked = Instant::now();
        if !(200..300).contains(&status) || !contains(&answer, b"\"status\":\"stored\"") {
            return Err(format!(
                "the webhook of {profile} to {a}: {status} {}",
                String::from_utf8_lossy(&answer)
            )
            .into());
        }
        let path = format!("/profiles/{profile}/access");
        let mut polls = 0;
        loop {
            let (status, answer) =
                call(&mut to_b, &host_b, Method::GET, &path, Bytes::new()).await?;
            polls += 1;
            if status == 200 && contains(&answer, b"\"premium\":true") {
                break;
            }
            if acked.elapsed() > SEEN_LIMIT {
                return Err(format!(
                    "{b} did not show {profile} within {SEEN_LIMIT:?} of {a}'s 2xx: {status} {}",
                    String::from_utf8_lossy(&answer)
                )
                .into());
            }
        }
        let seen = acked.elapsed();
        let _ = lag.seen.record((seen.as_nanos() as u64).max(1_000));
        lag.samples
            .push(((sent - start).as_secs_f64(), seen.as_secs_f64() * 1e3));
        let _ = lag
            .post
            .record(((acked - sent).as_nanos() as u64).max(1_000));
        lag.polls += polls;
        if polls == 1 {
            lag.at_first_poll += 1;
        }
    }
    Ok(lag)
}

// ---- the ceiling --------------------------------------------------------------------

fn text(micros: i64) -> String {
    Timestamp::from_micros(micros).to_rfc3339()
}

/// A fresh database with entitled's schema (as a daemon creates it); its URL.
fn schema_database(server: &pg_server::PgServer) -> Result<String> {
    let url = server.fresh_database();
    drop(entitled::store::postgres::open(&url, 1)?);
    Ok(url)
}

/// A statement of a ceiling: prepared once, or sent as text and so prepared again at
/// each use (the `postgres` crate's `query(&str)` sends Parse/Describe and waits, then
/// Bind/Execute: two round trips), as the store's writer sends its statements.
enum Sql {
    Prepared(postgres::Statement),
    Text(String),
}

impl Sql {
    fn new(client: &mut postgres::Client, sql: &str, prepared: bool) -> Result<Sql> {
        Ok(if prepared {
            Sql::Prepared(client.prepare(sql)?)
        } else {
            Sql::Text(sql.to_owned())
        })
    }

    fn query_opt(
        &self,
        tx: &mut postgres::Transaction<'_>,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<postgres::Row>> {
        Ok(match self {
            Sql::Prepared(statement) => tx.query_opt(statement, params)?,
            Sql::Text(sql) => tx.query_opt(sql.as_str(), params)?,
        })
    }

    fn execute(
        &self,
        tx: &mut postgres::Transaction<'_>,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        Ok(match self {
            Sql::Prepared(statement) => tx.execute(statement, params)?,
            Sql::Text(sql) => tx.execute(sql.as_str(), params)?,
        })
    }
}

/// How a statements ceiling sends its statements.
#[derive(Clone, Copy, PartialEq)]
enum Sent {
    /// Each prepared once, in one transaction of `batch` events: the ceiling.
    Prepared,
    /// As the store's writer sent them before 83a5a5a: each prepared at its use, and
    /// each event under a savepoint of its own. Not a ceiling: what that cost the same
    /// rows (the writer now prepares once, and takes savepoints only after a failure).
    AsTheWriter,
}

/// The statements that write one event's rows.
struct RowSql {
    event: Sql,
    profile: Sql,
    entitlement: Sql,
    change: Sql,
}

impl RowSql {
    fn new(client: &mut postgres::Client, prepared: bool) -> Result<RowSql> {
        Ok(RowSql {
            event: Sql::new(
                client,
                "INSERT INTO events (profile_event_id, profile_id, customer_user_id, event_type, \
                 canonical_type, event_datetime, received_at, environment, body) \
                 VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8) \
                 ON CONFLICT (profile_id, profile_event_id) DO NOTHING RETURNING seq",
                prepared,
            )?,
            profile: Sql::new(
                client,
                "INSERT INTO profiles (profile_id, customer_user_id, customer_user_id_at, \
                 customer_user_id_event) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (profile_id) DO UPDATE SET \
                   customer_user_id = excluded.customer_user_id, \
                   customer_user_id_at = excluded.customer_user_id_at, \
                   customer_user_id_event = excluded.customer_user_id_event, \
                   written_xid = pg_current_xact_id() \
                 WHERE excluded.customer_user_id IS NOT NULL",
                prepared,
            )?,
            entitlement: Sql::new(
                client,
                &format!(
                    "INSERT INTO entitlements (profile_id, access_level_id, is_active, expires_at, \
                     starts_at, will_renew, is_lifetime, in_grace_period, is_refund, store, \
                     vendor_product_id, environment, last_event_id, last_event_type, \
                     last_event_at, reported_active) \
                     VALUES ($1, 'premium', true, $2, NULL, true, false, false, false, $3, $4, \
                     $5, $6, $7, $8, true) {ENTITLEMENT_UPSERT}"
                ),
                prepared,
            )?,
            change: Sql::new(
                client,
                "INSERT INTO access_changes (profile_id, access_level_id, active, reason, \
                 profile_event_id, expires_at, changed_at, customer_user_id) \
                 VALUES ($1, 'premium', $2, $3, $4, $5, $6, \
                 (SELECT customer_user_id FROM profiles WHERE profile_id = $1))",
                prepared,
            )?,
        })
    }

    /// One event's rows: the event (a re-send stops there), its profile and
    /// entitlement, and its change row when it flips the level.
    fn insert(&self, tx: &mut postgres::Transaction<'_>, row: &Row) -> Result<()> {
        let e = &row.event;
        let (at, now) = (text(e.at), Timestamp::now().to_rfc3339());
        let inserted = self.event.query_opt(
            tx,
            &[
                &e.profile_event_id,
                &e.profile_id,
                &e.customer_user_id,
                &e.kind.name(),
                &at,
                &now,
                &e.environment,
                &row.body,
            ],
        )?;
        if inserted.is_none() {
            return Ok(());
        }
        let with_user = e.customer_user_id.is_some();
        self.profile.execute(
            tx,
            &[
                &e.profile_id,
                &e.customer_user_id,
                &with_user.then(|| at.clone()),
                &with_user.then_some(&e.profile_event_id),
            ],
        )?;
        let expires = e.subscription_expires_at.map(text);
        self.entitlement.execute(
            tx,
            &[
                &e.profile_id,
                &expires,
                &e.store,
                &e.product,
                &e.environment,
                &e.profile_event_id,
                &e.kind.name(),
                &at,
            ],
        )?;
        if let Some(active) = row.flip {
            self.change.execute(
                tx,
                &[
                    &e.profile_id,
                    &active,
                    &e.kind.name(),
                    &e.profile_event_id,
                    &expires,
                    &now,
                ],
            )?;
        }
        Ok(())
    }
}

/// Rows a second of one client inserting the rows of `rows` (events, profiles,
/// entitlements, changes; as the SQLite bench's storage ceiling) one statement a row,
/// `batch` events a transaction, for at most `limit` (whole transactions).
fn ceiling_statements(
    url: &str,
    rows: &[Row],
    batch: usize,
    sent: Sent,
    limit: Duration,
) -> Result<(f64, usize)> {
    let mut client = pg_server::connect(url)?;
    let sql = RowSql::new(&mut client, sent == Sent::Prepared)?;
    let started = Instant::now();
    let mut done = 0;
    for chunk in rows.chunks(batch) {
        let mut tx = client.transaction()?;
        for row in chunk {
            match sent {
                Sent::Prepared => sql.insert(&mut tx, row)?,
                Sent::AsTheWriter => {
                    let mut savepoint = tx.transaction()?;
                    sql.insert(&mut savepoint, row)?;
                    savepoint.commit()?;
                }
            }
        }
        tx.commit()?;
        done += chunk.len();
        if started.elapsed() >= limit {
            break;
        }
    }
    Ok((done as f64 / started.elapsed().as_secs_f64(), done))
}

/// The `ON CONFLICT` of the ceilings' entitlement upserts: the columns they set.
const ENTITLEMENT_UPSERT: &str = "ON CONFLICT (profile_id, access_level_id) DO UPDATE SET \
     is_active = excluded.is_active, expires_at = excluded.expires_at, \
     will_renew = excluded.will_renew, store = excluded.store, \
     vendor_product_id = excluded.vendor_product_id, environment = excluded.environment, \
     last_event_id = excluded.last_event_id, last_event_type = excluded.last_event_type, \
     last_event_at = excluded.last_event_at, written_xid = pg_current_xact_id()";

/// The same rows the fastest way one client has, `batch` events a transaction: the new
/// events (re-sends dropped by the client) and the change rows with binary COPY, the
/// profiles and entitlements with one multi-row upsert each (a profile's last event of
/// the batch: a row is upserted once a statement).
fn ceiling_copy(url: &str, rows: &[Row], batch: usize, limit: Duration) -> Result<(f64, usize)> {
    let mut client = pg_server::connect(url)?;
    let profiles = client.prepare(
        "INSERT INTO profiles (profile_id, customer_user_id, customer_user_id_at, \
         customer_user_id_event) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
         ON CONFLICT (profile_id) DO UPDATE SET customer_user_id = excluded.customer_user_id, \
           customer_user_id_at = excluded.customer_user_id_at, \
           customer_user_id_event = excluded.customer_user_id_event, \
           written_xid = pg_current_xact_id() \
         WHERE excluded.customer_user_id IS NOT NULL",
    )?;
    let entitlements = client.prepare(&format!(
        "INSERT INTO entitlements (profile_id, access_level_id, is_active, expires_at, starts_at, \
         will_renew, is_lifetime, in_grace_period, is_refund, store, vendor_product_id, environment, \
         last_event_id, last_event_type, last_event_at, reported_active) \
         SELECT p, 'premium', true, x, NULL, true, false, false, false, s, v, en, id, k, a, true \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::text[]) AS t(p, x, s, v, en, id, k, a) \
         {ENTITLEMENT_UPSERT}"
    ))?;
    let text_columns = [Type::TEXT; 9];
    let change_columns = [
        Type::TEXT,
        Type::TEXT,
        Type::BOOL,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
    ];
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let started = Instant::now();
    let mut done = 0;
    for chunk in rows.chunks(batch) {
        let fresh: Vec<&Row> = chunk
            .iter()
            .filter(|r| seen.insert((&r.event.profile_id, &r.event.profile_event_id)))
            .collect();
        let now = Timestamp::now().to_rfc3339();
        let mut tx = client.transaction()?;
        let mut events = BinaryCopyInWriter::new(
            tx.copy_in(
                "COPY events (profile_event_id, profile_id, customer_user_id, event_type, \
                 canonical_type, event_datetime, received_at, environment, body) \
                 FROM STDIN (FORMAT binary)",
            )?,
            &text_columns,
        );
        for row in &fresh {
            let e = &row.event;
            events.write(&[
                &e.profile_event_id,
                &e.profile_id,
                &e.customer_user_id,
                &e.kind.name(),
                &e.kind.name(),
                &text(e.at),
                &now,
                &e.environment,
                &row.body,
            ])?;
        }
        events.finish()?;
        // A profile's last event of the batch, in first-seen order.
        let mut last: HashMap<&str, &Row> = HashMap::new();
        let mut order = Vec::new();
        for row in &fresh {
            if last.insert(&row.event.profile_id, row).is_none() {
                order.push(&*row.event.profile_id);
            }
        }
        let newest: Vec<&Row> = order.iter().map(|p| last[p]).collect();
        let column = |f: &dyn Fn(&Row) -> Option<String>| -> Vec<Option<String>> {
            newest.iter().map(|r| f(r)).collect()
        };
        let ids = column(&|r| Some(r.event.profile_id.clone()));
        let users = column(&|r| r.event.customer_user_id.clone());
        let user_at = column(&|r| r.event.customer_user_id.as_ref().map(|_| text(r.event.at)));
        let user_event = column(&|r| {
            r.event
                .customer_user_id
                .as_ref()
                .map(|_| r.event.profile_event_id.clone())
        });
        tx.execute(&profiles, &[&ids, &users, &user_at, &user_event])?;
        tx.execute(
            &entitlements,
            &[
                &ids,
                &column(&|r| r.event.subscription_expires_at.map(text)),
                &column(&|r| Some(r.event.store.to_owned())),
                &column(&|r| Some(r.event.product.to_owned())),
                &column(&|r| Some(r.event.environment.to_owned())),
                &column(&|r| Some(r.event.profile_event_id.clone())),
                &column(&|r| Some(r.event.kind.name().to_owned())),
                &column(&|r| Some(text(r.event.at))),
            ],
        )?;
        let mut changes = BinaryCopyInWriter::new(
            tx.copy_in(
                "COPY access_changes (profile_id, access_level_id, active, reason, \
                 profile_event_id, expires_at, changed_at, customer_user_id) \
                 FROM STDIN (FORMAT binary)",
            )?,
            &change_columns,
        );
        for row in &fresh {
            let e = &row.event;
            if let Some(active) = row.flip {
                changes.write(&[
                    &e.profile_id,
                    &"premium",
                    &active,
                    &e.kind.name(),
                    &e.profile_event_id,
                    &e.subscription_expires_at.map(text),
                    &now,
                    &e.customer_user_id,
                ])?;
            }
        }
        changes.finish()?;
        tx.commit()?;
        done += chunk.len();
        if started.elapsed() >= limit {
            break;
        }
    }
    Ok((done as f64 / started.elapsed().as_secs_f64(), done))
}

/// Writes every dirty buffer out, so that each phase starts from a clean server.
fn checkpoint(admin: &str) -> Result<()> {
    pg_server::connect(admin)?.batch_execute("CHECKPOINT")?;
    Ok(())
}

/// One ceiling measured: its rows a second and how many it wrote.
struct Ceiling {
    name: String,
    rate: f64,
    rows: usize,
}

// ---- lookups and start-up -----------------------------------------------------------

/// Loads the cached SQLite dataset's `profiles` and `entitlements` rows (generated and
/// folded as storage.rs generates them) into the database of `url`, with COPY. No
/// events: neither the warm-up nor a lookup reads them.
fn load_dataset(url: &str, profiles: u64) -> Result<Duration> {
    let started = Instant::now();
    drop(entitled::store::postgres::open(url, 1)?);
    let rules = Rules::default();
    let now = Timestamp::now();
    let mut client = pg_server::connect(url)?;
    let mut tx = client.transaction()?;
    let mut profile_rows = Vec::with_capacity(profiles as usize);
    {
        let mut entitlements = BinaryCopyInWriter::new(
            tx.copy_in(
                "COPY entitlements (profile_id, access_level_id, is_active, expires_at, \
                 starts_at, will_renew, is_lifetime, in_grace_period, is_refund, store, \
                 vendor_product_id, environment, last_event_id, last_event_type, \
                 last_event_at, reported_active, shared_from, sharing_group) \
                 FROM STDIN (FORMAT binary)",
            )?,
            &[
                Type::TEXT,
                Type::TEXT,
                Type::BOOL,
                Type::TEXT,
                Type::TEXT,
                Type::BOOL,
                Type::BOOL,
                Type::BOOL,
                Type::BOOL,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::BOOL,
                Type::TEXT,
                Type::TEXT,
            ],
        );
        let time = |t: Option<Timestamp>| t.map(Timestamp::to_rfc3339);
        for p in 0..profiles {
            let events = gen::profile_events(storage::NS_DATASET, p);
            let parsed: Vec<_> = events.iter().map(gen::to_event).collect();
            for ((profile, level), e) in projection::project(parsed.iter(), &rules) {
                entitlements.write(&[
                    &&*profile,
                    &&*level,
                    &e.window.is_active,
                    &time(e.window.expires_at),
                    &time(e.window.starts_at),
                    &e.will_renew,
                    &e.window.is_lifetime,
                    &e.in_grace_period,
                    &e.is_refund,
                    &e.store.as_deref(),
                    &e.vendor_product_id.as_deref(),
                    &e.environment.as_deref(),
                    &&*e.last_event_id,
                    &e.last_event_type.name(),
                    &e.last_event_at.to_rfc3339(),
                    &e.window.grants_at(now),
                    &e.shared_from.as_deref(),
                    &e.sharing_group.as_deref(),
                ])?;
            }
            let newest = events.last().ok_or("a profile with no events")?;
            let with_user = newest.customer_user_id.is_some();
            profile_rows.push((
                newest.profile_id.clone(),
                newest.customer_user_id.clone(),
                with_user.then(|| text(newest.at)),
                with_user.then(|| newest.profile_event_id.clone()),
            ));
        }
        entitlements.finish()?;
    }
    let mut rows = BinaryCopyInWriter::new(
        tx.copy_in(
            "COPY profiles (profile_id, customer_user_id, customer_user_id_at, \
             customer_user_id_event) FROM STDIN (FORMAT binary)",
        )?,
        &[Type::TEXT; 4],
    );
    for (id, user, at, event) in &profile_rows {
        rows.write(&[id, user, at, event])?;
    }
    rows.finish()?;
    tx.commit()?;
    client.batch_execute("VACUUM ANALYZE entitlements, profiles")?;
    Ok(started.elapsed())
}

/// A daemon started and ready: how long to `/readyz` 200, the warm-up it logged, and
/// its resident memory once ready.
struct Started {
    took: Duration,
    warmed_ms: Option<u64>,
    rss: u64,
}

fn start(bin: &Path, pin: &Pinning, db: &Path, log: &Path) -> Result<(Server, Started)> {
    let spawned = Instant::now();
    let mut daemon = procs::spawn_daemon(bin, pin, db, procs::free_port()?, log)?;
    let took = daemon.poll_ready(Duration::from_secs(300))? - spawned;
    daemon.wait_line(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(200));
    let rss = procs::rss_bytes(daemon.pid)?;
    let warmed_ms = std::fs::read_to_string(log).ok().and_then(|text| {
        let line = text.lines().find(|l| l.contains("index warmed"))?;
        let (_, rest) = line.split_once("elapsed_ms=")?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    Ok((
        daemon,
        Started {
            took,
            warmed_ms,
            rss,
        },
    ))
}

/// The answers of [`COMPARED`] profiles spread over the dataset, without `checked_at`.
fn answers(addr: SocketAddr, profiles: u64) -> Result<Vec<serde_json::Value>> {
    let step = (profiles / COMPARED).max(1);
    (0..profiles.min(COMPARED))
        .map(|k| {
            let id = gen::profile_id(storage::NS_DATASET, k * step);
            let (status, _, body) = procs::http_get(addr, &format!("/profiles/{id}/access"))?;
            if status != 200 {
                return Err(format!("GET /profiles/{id}/access: {status}").into());
            }
            let mut answer: serde_json::Value = serde_json::from_slice(&body)?;
            if let Some(object) = answer.as_object_mut() {
                object.remove("checked_at");
            }
            Ok(answer)
        })
        .collect()
}

/// One side of a lookup pair.
struct Side {
    started: Started,
    lookups: Stats,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---- the run --------------------------------------------------------------------------

/// `--only-postgres`: every phase of the module's documentation, in that order.
pub fn run(setup: &Setup) -> Result<()> {
    let load_before = crate::load_avg();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let commit = report::commit(&repo);
    // Before the lookups pin this process: nproc says what one core allows then.
    let machine = report::machine();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let unpinned = Pinning { server_cpu: None };

    eprintln!("\n== PostgreSQL: starting a server (tests/api/pg_server.rs)");
    let server = pg_server::PgServer::dedicated();
    let pg = Postmaster::of(&server)?;
    let admin = server.url("postgres");
    let show = |name: &str| -> Result<String> {
        let mut client = pg_server::connect(&admin)?;
        Ok(client.query_one(&format!("SHOW {name}"), &[])?.get(0))
    };
    let sync = storage::sync_latency(setup.dir)?;
    let described = format!(
        "PostgreSQL {} started by the benchmark (tests/api/pg_server.rs: `initdb` in a \
         temporary directory on the same disk, whose 4 KiB write + fdatasync took {:.3} ms), \
         reached over TCP on 127.0.0.1; fsync {}, synchronous_commit {}, shared_buffers {}, \
         max_connections {}, the other settings initdb's defaults; no standby",
        show("server_version")?,
        sync.as_secs_f64() * 1e3,
        show("fsync")?,
        show("synchronous_commit")?,
        show("shared_buffers")?,
        show("max_connections")?,
    );
    eprintln!("server: {described}");
    let conns = setup.connections;
    let ingest_window = setup.window.mul_f64(1.5);

    // ---- 1. Ingest through one instance, then two ------------------------------------
    let one_url = server.fresh_database();
    checkpoint(&admin)?;
    eprintln!(
        "\n== ingest through one instance: {conns} connections, a fresh database ({} s)",
        ingest_window.as_secs_f64()
    );
    let mut solo = procs::spawn_daemon(
        setup.bin,
        &unpinned,
        Path::new(&one_url),
        procs::free_port()?,
        &setup.dir.join("ingest-one.log"),
    )?;
    solo.poll_ready(Duration::from_secs(60))?;
    solo.wait_line(Duration::from_secs(10))?;
    let (one, _) = ingest(
        &runtime,
        &[&solo],
        conns,
        setup.warmup,
        ingest_window,
        Mode::Closed,
        crate::ingest_requests(crate::NS_INGEST, None),
        11,
        &pg,
        None,
    )?;
    solo.stop()?;
    eprintln!("one instance: {}", one.line()?);

    let two_url = server.fresh_database();
    checkpoint(&admin)?;
    eprintln!(
        "\n== ingest through two instances: {conns} connections ({} to each), one fresh \
         database",
        conns / 2
    );
    let mut a = procs::spawn_daemon(
        setup.bin,
        &unpinned,
        Path::new(&two_url),
        procs::free_port()?,
        &setup.dir.join("ingest-a.log"),
    )?;
    let mut b = procs::spawn_daemon(
        setup.bin,
        &unpinned,
        Path::new(&two_url),
        procs::free_port()?,
        &setup.dir.join("ingest-b.log"),
    )?;
    for d in [&mut a, &mut b] {
        d.poll_ready(Duration::from_secs(60))?;
        d.wait_line(Duration::from_secs(10))?;
    }
    let (two, _) = ingest(
        &runtime,
        &[&a, &b],
        conns,
        setup.warmup,
        ingest_window,
        Mode::Closed,
        crate::ingest_requests(crate::NS_INGEST, None),
        13,
        &pg,
        None,
    )?;
    eprintln!("two instances: {}", two.line()?);

    // ---- 2. Follower lag, idle and beside an ingest -------------------------------------
    let samples = if setup.quick {
        LAG_SAMPLES / 5
    } else {
        LAG_SAMPLES
    };
    eprintln!("\n== follower lag: {samples} webhooks to A, B polled until it shows each");
    let idle = runtime.block_on(follower_lag(
        a.addr,
        b.addr,
        NS_LAG,
        samples,
        Instant::now(),
        None,
    ))?;
    eprintln!("idle: {}", idle.line());
    let beside_rate = (two.rate() / 2.0).round().max(1.0);
    eprintln!(
        "\n== follower lag beside an ingest paced at {beside_rate:.0} events/s over both \
         instances ({} s window)",
        setup.window.as_secs_f64()
    );
    let (beside, loaded) = ingest(
        &runtime,
        &[&a, &b],
        conns,
        setup.warmup,
        setup.window,
        Mode::Paced(beside_rate),
        crate::ingest_requests(NS_BESIDE, None),
        17,
        &pg,
        Some(NS_LAG_LOADED),
    )?;
    let loaded = loaded.ok_or("no lag samples beside the ingest")?;
    eprintln!("ingest beside: {}", beside.line()?);
    eprintln!("lag beside it: {}", loaded.line());
    a.stop()?;
    b.stop()?;

    // ---- 3. The ceiling -----------------------------------------------------------------
    let batch = (two.mean_batch().round() as usize).max(1);
    let count = if setup.quick { 30_000 } else { 200_000 };
    eprintln!(
        "\n== ceiling: one client, the same stream's rows ({count} generated), at most {} s \
         each",
        setup.window.as_secs_f64()
    );
    let rows = storage::ingest_rows(crate::NS_INGEST, count, 11);
    let mut ceilings = Vec::new();
    for (name, way, size) in [
        (
            format!(
                "one statement a row, each prepared once, {batch} events a transaction (the \
                 two instances' mean)"
            ),
            Some(Sent::Prepared),
            batch,
        ),
        (
            format!(
                "COPY of the events and change rows, one multi-row upsert of the profiles and \
                 one of the entitlements, {batch} events a transaction"
            ),
            None,
            batch,
        ),
        (
            format!("one statement a row, each prepared once, {BIG_BATCH} events a transaction"),
            Some(Sent::Prepared),
            BIG_BATCH,
        ),
        (
            format!(
                "not a ceiling: the same statements sent as the writer sent its own before \
                 83a5a5a, each prepared at its use, a savepoint an event, {batch} events a \
                 transaction"
            ),
            Some(Sent::AsTheWriter),
            batch,
        ),
    ] {
        let url = schema_database(&server)?;
        checkpoint(&admin)?;
        let (rate, rows) = match way {
            Some(sent) => ceiling_statements(&url, &rows, size, sent, setup.window)?,
            None => ceiling_copy(&url, &rows, size, setup.window)?,
        };
        eprintln!("ceiling, {name}: {rate:.0} rows/s over {rows} rows");
        ceilings.push(Ceiling { name, rate, rows });
    }
    drop(rows);

    // ---- 4. Lookups and start-up, PostgreSQL against SQLite -------------------------------
    let looked = lookups(setup, &server, &runtime)?;
    let pinning = &looked.pinning;

    // ---- the report -------------------------------------------------------------------
    let section = PostgresSection {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        commit,
        command: setup.command.clone(),
        machine,
        load_before,
        load_after: crate::load_avg(),
        server: described,
        pinning: format!(
            "ingest, ceilings and follower lag unpinned (the instances, PostgreSQL and this \
             process, the load client and the ceiling's client, share the machine's cores); \
             lookups and start-up: {pinning}; PostgreSQL, started before, unpinned"
        ),
        load: format!(
            "{conns} keep-alive HTTP/1.1 connections (hyper), split evenly over the instances; \
             ingest {:.0} s measured after a {:.0} s warm-up, lookups and the ingest beside \
             the follower-lag samples {:.0} s",
            ingest_window.as_secs_f64(),
            setup.warmup.as_secs_f64(),
            setup.window.as_secs_f64()
        ),
        checks: checks(
            &one,
            &two,
            &ceilings,
            &idle,
            &beside,
            beside_rate,
            &loaded,
            &looked,
            setup.profiles,
        )?,
        details: details(&one, &two, &beside, &looked.pairs),
    };
    let table = report::checks_table(&section.checks);
    println!("\n{table}");
    if let Some(out) = &setup.out {
        let mut whole = match std::fs::read_to_string(out) {
            Ok(text) => Report::saved_in(&text).map_err(|e| format!("{}: {e}", out.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Report::default(),
            Err(e) => return Err(format!("{}: {e}", out.display()).into()),
        };
        whole.postgres = Some(section);
        std::fs::write(out, whole.markdown()?)?;
        eprintln!("wrote the PostgreSQL section of {}", out.display());
    }
    Ok(())
}

/// Starts of one PostgreSQL instance on [`LARGE`] profiles, pinned as the lookups' are.
fn large_start(
    setup: &Setup,
    server: &pg_server::PgServer,
    pin: &Pinning,
) -> Result<(Vec<Started>, Duration)> {
    let url = server.fresh_database();
    eprintln!("\n== start-up on {LARGE} profiles (PostgreSQL only)");
    let loaded_in = load_dataset(&url, LARGE)?;
    eprintln!(
        "PostgreSQL: {LARGE} profiles' rows loaded in {:.1} s",
        loaded_in.as_secs_f64()
    );
    checkpoint(&server.url("postgres"))?;
    let mut starts = Vec::new();
    for k in 0..PAIRS {
        let log = setup.dir.join(format!("large-{k}.log"));
        let (daemon, started) = start(setup.bin, pin, Path::new(&url), &log)?;
        daemon.stop()?;
        eprintln!(
            "start {}: {} to /readyz 200 (warm-up logged {} ms), VmRSS {:.1} MB",
            k + 1,
            secs(started.took),
            started
                .warmed_ms
                .map_or_else(|| "?".to_owned(), |m| m.to_string()),
            started.rss as f64 / 1e6
        );
        starts.push(started);
    }
    let dropped = format!(
        "DROP DATABASE \"{}\"",
        url.rsplit('/').next().unwrap_or_default()
    );
    pg_server::connect(&server.url("postgres"))?.batch_execute(&dropped)?;
    Ok((starts, loaded_in))
}

/// What the lookup pairs measured.
struct Lookups {
    pairs: Vec<(Side, Side)>,
    /// How long the PostgreSQL rows took to load.
    loaded_in: Duration,
    pinning: String,
    /// The full run's starts on [`LARGE`] profiles, and how long their rows took to load.
    large: Option<(Vec<Started>, Duration)>,
}

/// Phase 4: `--profiles` profiles loaded into a fresh database, then [`PAIRS`]
/// alternating pairs of a SQLite and a PostgreSQL daemon, each started (timed) and
/// loaded with closed-loop lookups; pins this process to the client's core first.
fn lookups(
    setup: &Setup,
    server: &pg_server::PgServer,
    runtime: &tokio::runtime::Runtime,
) -> Result<Lookups> {
    let (pin, pinning) = Pinning::apply(setup.pin);
    eprintln!("\n== lookups and start-up on {} profiles", setup.profiles);
    eprintln!("pinning: {pinning}");
    let data_url = server.fresh_database();
    let loaded_in = load_dataset(&data_url, setup.profiles)?;
    eprintln!(
        "PostgreSQL: {} profiles' rows loaded in {:.1} s",
        setup.profiles,
        loaded_in.as_secs_f64()
    );
    checkpoint(&server.url("postgres"))?;
    storage::warm_os_cache(setup.dataset)?;
    let mut pairs: Vec<(Side, Side)> = Vec::new();
    let mut first_answers: Option<(bool, Vec<serde_json::Value>)> = None;
    for k in 0..PAIRS {
        let order = if k % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let (mut sqlite, mut pgside) = (None, None);
        for on_pg in order {
            let (db, name) = if on_pg {
                (Path::new(data_url.as_str()), "postgres")
            } else {
                (setup.dataset, "sqlite")
            };
            let (daemon, started) = start(
                setup.bin,
                &pin,
                db,
                &setup.dir.join(format!("lookups-{name}-{k}.log")),
            )?;
            if k == 0 {
                let got = answers(daemon.addr, setup.profiles)?;
                match &first_answers {
                    None => first_answers = Some((on_pg, got)),
                    Some((_, other)) if *other == got => {
                        eprintln!(
                            "the {} profiles compared answer alike on both stores",
                            got.len()
                        )
                    }
                    Some((_, other)) => {
                        let at = other.iter().zip(&got).position(|(x, y)| x != y);
                        return Err(format!(
                            "SQLite and PostgreSQL answer differently: {:?} against {:?}",
                            at.map(|i| &other[i]),
                            at.map(|i| &got[i])
                        )
                        .into());
                    }
                }
            }
            let lookups = runtime.block_on(load::run(
                Spec {
                    addr: daemon.addr,
                    connections: setup.connections,
                    warmup: setup.warmup,
                    measure: setup.window,
                    mode: Mode::Closed,
                    seed: 23 + 10 * k as u64,
                },
                crate::lookup_requests(setup.profiles),
                daemon.pid,
            ))?;
            daemon.stop()?;
            eprintln!(
                "pair {} {name}: start-up {} (warm-up logged {} ms), VmRSS {:.1} MB; lookups {}",
                k + 1,
                secs(started.took),
                started
                    .warmed_ms
                    .map_or_else(|| "?".to_owned(), |m| m.to_string()),
                started.rss as f64 / 1e6,
                lookups.summary()
            );
            let side = Side { started, lookups };
            if on_pg {
                pgside = Some(side);
            } else {
                sqlite = Some(side);
            }
        }
        let (s, p) = (
            sqlite.ok_or("no SQLite side")?,
            pgside.ok_or("no PostgreSQL side")?,
        );
        eprintln!(
            "pair {}: lookups/s PostgreSQL / SQLite {:.3}, start-up {:.2}",
            k + 1,
            p.lookups.rate() / s.lookups.rate(),
            p.started.took.as_secs_f64() / s.started.took.as_secs_f64()
        );
        pairs.push((s, p));
    }

    let large = if setup.quick || setup.profiles >= LARGE {
        None
    } else {
        Some(large_start(setup, server, &pin)?)
    };
    Ok(Lookups {
        pairs,
        loaded_in,
        pinning,
        large,
    })
}

#[allow(clippy::too_many_arguments)]
fn checks(
    one: &Ingest,
    two: &Ingest,
    ceilings: &[Ceiling],
    idle: &Lag,
    beside: &Ingest,
    beside_rate: f64,
    loaded: &Lag,
    looked: &Lookups,
    profiles: u64,
) -> Result<Vec<Check>> {
    let (pairs, loaded_in) = (&looked.pairs, looked.loaded_in);
    let mut checks = Vec::new();
    let hist = two.hist()?;
    let q = |h: &Histogram<u64>, q: f64| ms(h.value_at_quantile(q) as f64 / 1e6);
    let writers = |i: &Ingest| {
        i.writers
            .iter()
            .map(|w| format!("{:.1} events ({})", w.mean_batch(), ms(w.mean_commit_ms())))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let two_value = format!(
        "{:.0} events/s ({}; {} stored, {} duplicate, {} non-2xx); a commit held {} on \
         average; CPU: the instances {:.2}, PostgreSQL {:.2} cores",
        two.rate(),
        two.stats
            .iter()
            .map(|s| format!("{:.0}/s", s.rate()))
            .collect::<Vec<_>>()
            .join(" + "),
        two.sum(|s| s.stored),
        two.sum(|s| s.duplicate),
        two.sum(|s| s.non_2xx + s.errors),
        writers(two),
        two.daemons_cpu(),
        two.pg_cpu,
    );
    for (k, c) in ceilings.iter().enumerate() {
        checks.push(Check {
            name: match k {
                0 => "Ingest through two instances vs the ceiling: one client writing the same \
                      rows at the same batch"
                    .into(),
                3 => {
                    "Ingest through two instances vs the same rows sent the writer's old way".into()
                }
                _ => "Ingest through two instances vs the same rows written otherwise".into(),
            },
            value: if k == 0 {
                two_value.clone()
            } else {
                format!("{:.0} events/s", two.rate())
            },
            baseline: format!("{:.0} rows/s ({}; {} rows)", c.rate, c.name, c.rows),
            ratio: format!("{:.2}", two.rate() / c.rate),
            target: "–".into(),
            pass: None,
        });
    }
    if let Some(c) = ceilings.first() {
        checks.push(Check {
            name: "Ingest through one instance vs the same ceiling".into(),
            value: format!(
                "{:.0} events/s ({} stored, {} duplicate, {} non-2xx); a commit held {} on \
                 average; CPU: the instance {:.2}, PostgreSQL {:.2} cores",
                one.rate(),
                one.sum(|s| s.stored),
                one.sum(|s| s.duplicate),
                one.sum(|s| s.non_2xx + s.errors),
                writers(one),
                one.daemons_cpu(),
                one.pg_cpu,
            ),
            baseline: format!("{:.0} rows/s ({})", c.rate, c.name),
            ratio: format!("{:.2}", one.rate() / c.rate),
            target: "–".into(),
            pass: None,
        });
    }
    checks.push(Check {
        name: "Ingest through two instances vs one".into(),
        value: format!("{:.0} events/s", two.rate()),
        baseline: format!(
            "{:.0} events/s (one instance, the same connections)",
            one.rate()
        ),
        ratio: format!("{:.2}×", two.rate() / one.rate()),
        target: "–".into(),
        pass: None,
    });
    let one_hist = one.hist()?;
    let p99 = hist.value_at_quantile(0.99) as f64 / 1e6;
    checks.push(Check {
        name: "Ingest latency through two instances".into(),
        value: format!(
            "p50 {} / p99 {} / p99.9 {}",
            q(&hist, 0.5),
            q(&hist, 0.99),
            q(&hist, 0.999)
        ),
        baseline: format!(
            "one instance: p50 {} / p99 {} / p99.9 {}",
            q(&one_hist, 0.5),
            q(&one_hist, 0.99),
            q(&one_hist, 0.999)
        ),
        ratio: "–".into(),
        target: "p99 < 100 ms".into(),
        pass: Some(p99 < 100.0),
    });
    let bound = format!(
        "without NOTIFY: up to the {POLL_MS} ms poll and a read (not measured); A's own 2xx \
         (which waits for A's index) p50 {} / p99 {}",
        q(&idle.post, 0.5),
        q(&idle.post, 0.99)
    );
    for (name, lag, baseline) in [
        ("Follower lag, idle: A's 2xx to B showing it", idle, bound),
        (
            "Follower lag beside an ingest",
            loaded,
            format!(
                "the ingest paced at {:.0} events/s over both ({:.0} done; p99 {}); A's own 2xx \
                 p50 {} / p99 {}",
                beside_rate,
                beside.rate(),
                q(&beside.hist()?, 0.99),
                q(&loaded.post, 0.5),
                q(&loaded.post, 0.99)
            ),
        ),
    ] {
        checks.push(Check {
            name: name.into(),
            value: format!(
                "p50 {} / p99 {} / max {} over {} webhooks ({} shown at B's first poll)",
                ms(lag.q(0.5)),
                ms(lag.q(0.99)),
                ms(lag.max()),
                lag.count(),
                lag.at_first_poll
            ),
            baseline,
            ratio: "–".into(),
            target: "p99 < 1 s".into(),
            pass: Some(lag.q(0.99) < 1000.0),
        });
    }
    let mut sorted: Vec<&(Side, Side)> = pairs.iter().collect();
    let ratio = |(s, p): &&(Side, Side)| p.lookups.rate() / s.lookups.rate();
    sorted.sort_by(|x, y| ratio(x).total_cmp(&ratio(y)));
    let ratios: Vec<f64> = sorted.iter().map(ratio).collect();
    let (s, p) = sorted[sorted.len() / 2];
    checks.push(Check {
        name: "Lookups on one PostgreSQL instance vs one SQLite daemon".into(),
        value: format!(
            "{:.0} req/s ({}); {profiles} profiles; the median of {} alternating pairs, \
             ratios {}",
            p.lookups.rate(),
            report::latencies(&p.lookups),
            ratios.len(),
            report::ratio_list(&ratios)
        ),
        baseline: format!(
            "{:.0} req/s (SQLite, the cached dataset; {})",
            s.lookups.rate(),
            report::latencies(&s.lookups)
        ),
        ratio: format!("{:.2}", p.lookups.rate() / s.lookups.rate()),
        target: "≈ 1 (no lookup reads the database)".into(),
        pass: None,
    });
    let times = |f: &dyn Fn(&(Side, Side)) -> &Started| -> Vec<f64> {
        pairs
            .iter()
            .map(|pair| f(pair).took.as_secs_f64())
            .collect()
    };
    let (pg_times, sqlite_times) = (times(&|(_, p)| &p.started), times(&|(s, _)| &s.started));
    let warmed = |f: &dyn Fn(&(Side, Side)) -> &Started| -> String {
        pairs
            .iter()
            .map(|pair| {
                f(pair)
                    .warmed_ms
                    .map_or_else(|| "?".to_owned(), |m| m.to_string())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    checks.push(Check {
        name: "Start-up to /readyz 200".into(),
        value: format!(
            "{:.2} s with {profiles} profiles on PostgreSQL (median of {}: {}; the warm-up \
             logged {} ms; the rows loaded with COPY in {:.1} s)",
            median(pg_times.clone()),
            pg_times.len(),
            list(&pg_times, 2),
            warmed(&|(_, p)| &p.started),
            loaded_in.as_secs_f64()
        ),
        baseline: format!(
            "{:.2} s (SQLite, the same profiles; {}; logged {} ms)",
            median(sqlite_times.clone()),
            list(&sqlite_times, 2),
            warmed(&|(s, _)| &s.started)
        ),
        ratio: format!(
            "{:.2}",
            median(pg_times.clone()) / median(sqlite_times.clone())
        ),
        target: "–".into(),
        pass: None,
    });
    let rss = |f: &dyn Fn(&(Side, Side)) -> &Started| -> f64 {
        median(pairs.iter().map(|pair| f(pair).rss as f64).collect())
    };
    let (pg_rss, sqlite_rss) = (rss(&|(_, p)| &p.started), rss(&|(s, _)| &s.started));
    checks.push(Check {
        name: "Resident memory once ready".into(),
        value: format!(
            "{:.1} MB (VmRSS, PostgreSQL, {profiles} profiles)",
            pg_rss / 1e6
        ),
        baseline: format!("{:.1} MB (SQLite)", sqlite_rss / 1e6),
        ratio: format!("{:.2}", pg_rss / sqlite_rss),
        target: "–".into(),
        pass: None,
    });
    if let Some((starts, large_loaded_in)) = &looked.large {
        let took: Vec<f64> = starts.iter().map(|s| s.took.as_secs_f64()).collect();
        let logged = starts
            .iter()
            .map(|s| {
                s.warmed_ms
                    .map_or_else(|| "?".to_owned(), |m| m.to_string())
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rss = median(starts.iter().map(|s| s.rss as f64).collect());
        checks.push(Check {
            name: format!("Start-up to /readyz 200 with {LARGE} profiles (PostgreSQL only)"),
            value: format!(
                "{:.2} s (median of {}: {}; the warm-up logged {logged} ms; VmRSS {:.1} MB; \
                 the rows loaded with COPY in {:.0} s)",
                median(took.clone()),
                took.len(),
                list(&took, 2),
                rss / 1e6,
                large_loaded_in.as_secs_f64()
            ),
            baseline: format!(
                "{:.2} s ({profiles} profiles on PostgreSQL, above)",
                median(pg_times.clone())
            ),
            ratio: format!("{:.1}×", median(took) / median(pg_times.clone())),
            target: "< 5 s (the SQLite target)".into(),
            pass: None,
        });
    }
    Ok(checks)
}

fn details(one: &Ingest, two: &Ingest, beside: &Ingest, pairs: &[(Side, Side)]) -> Vec<String> {
    let mut rows = Vec::new();
    for s in &one.stats {
        rows.push(report::detail("ingest, one instance (closed loop)", s));
    }
    for (s, name) in two.stats.iter().zip(["A", "B"]) {
        rows.push(report::detail(
            &format!("ingest, two instances: {name} (closed loop)"),
            s,
        ));
    }
    for (s, name) in beside.stats.iter().zip(["A", "B"]) {
        rows.push(report::detail(
            &format!("ingest beside the follower-lag samples: {name} (paced)"),
            s,
        ));
    }
    let mut sorted: Vec<&(Side, Side)> = pairs.iter().collect();
    let ratio = |(s, p): &&(Side, Side)| p.lookups.rate() / s.lookups.rate();
    sorted.sort_by(|x, y| ratio(x).total_cmp(&ratio(y)));
    let (s, p) = sorted[sorted.len() / 2];
    rows.push(report::detail(
        "lookups, SQLite (closed loop, the median pair)",
        &s.lookups,
    ));
    rows.push(report::detail(
        "lookups, PostgreSQL (closed loop, the median pair)",
        &p.lookups,
    ));
    rows
}
