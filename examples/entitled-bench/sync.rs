//! `--only-sync`: what `entitled sync` costs per profile, against a client that fetches
//! the same profiles and stores nothing.
//!
//! This process serves a fake of Adapty's server-side API (`GET
//! /api/v2/server-side-api/profile/`, the documented 200 shape with one `premium`
//! level, the same answer and `timestamp` for a profile every time; 401 without the
//! key), on the client's core. Then, [`ROUNDS`] times, each a child process under the
//! daemon's `taskset`:
//! 1. the **fetch loop** (the baseline): this example re-executed with `--fetch-loop`,
//!    the same GETs at the same concurrency with reqwest, reading each body and
//!    storing nothing;
//! 2. the release `entitled sync --profile-ids FILE` on a new database: every answer is
//!    stored and folded (summary `changed N`);
//! 3. the same again on that database: every answer a duplicate (`changed 0`).
//!
//! Each is timed from spawn to exit (process start included, for all three), and its
//! summary and the stored rows are checked. Timings never run under `cargo test`.

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use entitled_loadgen::gen;
use entitled_loadgen::procs::{self, Pinning, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Adapty's profile route.
const PROFILE_PATH: &str = "/api/v2/server-side-api/profile/";
/// The secret key the fake accepts (`Authorization: Api-Key …`).
const KEY: &str = "bench-secret-key";
/// Requests in flight, for sync (`--concurrency`) and the fetch loop alike.
pub const CONCURRENCY: u32 = 16;
/// sync's `--rate`, its highest: the limiter (a burst of this many, then this many a
/// second) is not what is measured.
const RATE: u32 = 10_000;
/// Rounds of (fetch loop, sync, sync again); this VM drifts by ±15 % within minutes.
pub const ROUNDS: usize = 3;
/// Adapty's `timestamp` in every answer (2026-11-01 00:00 UTC): fixed, so that the
/// second sync fetches what is already stored.
const TIMESTAMP_MS: i64 = 1_793_491_200_000;
/// Namespace of the generated profile ids.
const NS_SYNC: u64 = 9;
/// How long one child may take.
const CHILD_LIMIT: Duration = Duration::from_secs(600);

/// The fake Adapty, serving until dropped.
struct Fake {
    url: String,
    handle: ServerHandle,
}

impl Drop for Fake {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// Starts the fake on `127.0.0.1:0` in a thread of this process (on this process's
/// core when pinned; actix's default worker count under that affinity).
fn start_fake() -> Result<Fake> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fake-adapty".into())
        .spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let bound =
                    HttpServer::new(|| App::new().route(PROFILE_PATH, web::get().to(profile)))
                        .backlog(1024)
                        .disable_signals()
                        .shutdown_timeout(0)
                        .bind(("127.0.0.1", 0));
                let server = match bound {
                    Ok(server) => server,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let addr = server.addrs()[0];
                let server = server.run();
                let _ = tx.send(Ok((addr, server.handle())));
                let _ = server.await;
            });
        })?;
    let (addr, handle) = rx.recv_timeout(Duration::from_secs(10))??;
    Ok(Fake {
        url: format!("http://{addr}"),
        handle,
    })
}

/// The 200 answer for a profile, in the shape Adapty documents (the same as the fake
/// of tests/api/fake_adapty.rs): one App Store subscription granting `premium` until
/// 2031, bought the day before `timestamp`.
fn profile_body(profile_id: &str) -> String {
    let id = serde_json::Value::from(profile_id);
    format!(
        r#"{{"data":{{"app_id":"6a1b2c3d-0000-4000-8000-00000000fa4e","profile_id":{id},"customer_user_id":null,"total_revenue_usd":0,"segment_hash":"8f2b3c1e4d5a6b7c","timestamp":{TIMESTAMP_MS},"custom_attributes":[],"access_levels":[{{"access_level_id":"premium","store":"app_store","store_product_id":"com.example.premium.monthly","store_base_plan_id":null,"store_transaction_id":"2000000598765432","store_original_transaction_id":"2000000500000001","offer":null,"environment":"Production","starts_at":null,"purchased_at":"2026-10-31T00:00:00.000000+00:00","originally_purchased_at":"2026-09-01T00:00:00.000000+00:00","expires_at":"2031-01-01T00:00:00.000000+00:00","renewal_cancelled_at":null,"billing_issue_detected_at":null,"is_in_grace_period":false,"cancellation_reason":null,"is_refund":false,"is_lifetime":false}}],"subscriptions":[],"non_subscriptions":[]}}}}"#
    )
}

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    HttpResponse::build(status)
        .content_type("application/json")
        .body(format!(
            r#"{{"errors":[{{"source":null,"errors":["{message}"]}}],"error_code":"{code}","status_code":{}}}"#,
            status.as_u16()
        ))
}

async fn profile(req: HttpRequest) -> HttpResponse {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    if header("authorization").and_then(|h| h.strip_prefix("Api-Key ")) != Some(KEY) {
        return error(401, "not_authenticated", "Invalid API key");
    }
    match header("adapty-profile-id") {
        Some(id) => HttpResponse::Ok()
            .content_type("application/json")
            .body(profile_body(id)),
        None => error(
            400,
            "bad_request",
            "This fake answers by adapty-profile-id only",
        ),
    }
}

/// `--fetch-loop URL FILE CONCURRENCY`: the baseline. The same GETs as sync, with a
/// client built as sync builds its own (reqwest, 10 s timeout) on the same kind of
/// runtime, at most CONCURRENCY in flight; reads each body, stores nothing. Prints
/// `fetched N` and fails if any answer was not a 200.
pub fn fetch_loop(url: &str, ids: &Path, concurrency: usize) -> Result<()> {
    let ids: Vec<String> = std::fs::read_to_string(ids)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let url: Arc<str> = format!("{}{PROFILE_PATH}", url.trim_end_matches('/')).into();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent("entitled-bench")
        .build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (ok, failed) = runtime.block_on(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            let slot = slots.clone().acquire_owned().await?;
            let (http, url) = (http.clone(), url.clone());
            tasks.spawn(async move {
                let answer = http
                    .get(&*url)
                    .header("authorization", format!("Api-Key {KEY}"))
                    .header("adapty-profile-id", id)
                    .send()
                    .await;
                let ok = match answer {
                    Ok(response) => {
                        let status = response.status();
                        response.text().await.is_ok() && status == 200
                    }
                    Err(_) => false,
                };
                drop(slot);
                ok
            });
        }
        let (mut ok, mut failed) = (0u64, 0u64);
        while let Some(done) = tasks.join_next().await {
            if done.unwrap_or(false) {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        Ok::<_, procs::Error>((ok, failed))
    })?;
    println!("fetched {ok}, failed {failed}");
    if failed > 0 {
        return Err(format!("{failed} requests did not get a 200").into());
    }
    Ok(())
}

/// One child's run: wall time from spawn to exit, its CPU time, and the fake's (this
/// process's) CPU time meanwhile.
struct Timed {
    wall: Duration,
    cpu: f64,
    fake_cpu: f64,
}

impl Timed {
    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.wall.as_secs_f64()
    }

    /// Wall milliseconds per profile.
    fn ms_each(&self, n: u64) -> f64 {
        self.wall.as_secs_f64() * 1e3 / n as f64
    }

    fn line(&self, n: u64) -> String {
        format!(
            "{:.3} s, {:.0} profiles/s, {:.3} ms a profile; CPU {:.2} s ({:.0} µs a profile), \
             the fake's {:.2} s",
            self.wall.as_secs_f64(),
            self.rate(n),
            self.ms_each(n),
            self.cpu,
            self.cpu * 1e6 / n as f64,
            self.fake_cpu
        )
    }
}

/// Runs `cmd` to its end; fails unless it exits 0 and its stdout has `expect`.
fn timed(mut cmd: Command, log: &Path, expect: &str) -> Result<Timed> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?);
    let ticks = procs::clock_ticks();
    let (children, fake) = (procs::children_cpu_ticks(), procs::cpu_ticks(None));
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let deadline = started + CHILD_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            return Err(format!("{cmd:?} took over {CHILD_LIMIT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let wall = started.elapsed();
    let cpu = procs::children_cpu_ticks().saturating_sub(children) as f64 / ticks;
    let fake_cpu = procs::cpu_ticks(None).saturating_sub(fake) as f64 / ticks;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout)?;
    }
    if !status.success() || !stdout.contains(expect) {
        return Err(format!(
            "{cmd:?}: {status}, printed {:?} where {expect:?} was expected (its log: {})",
            stdout.trim(),
            log.display()
        )
        .into());
    }
    Ok(Timed {
        wall,
        cpu,
        fake_cpu,
    })
}

/// One round's three runs.
struct Round {
    fetch: Timed,
    sync: Timed,
    again: Timed,
}

impl Round {
    fn first_ratio(&self) -> f64 {
        self.sync.wall.as_secs_f64() / self.fetch.wall.as_secs_f64()
    }

    fn again_ratio(&self) -> f64 {
        self.again.wall.as_secs_f64() / self.fetch.wall.as_secs_f64()
    }
}

/// The middle value of three or more (sorted copy).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--only-sync`: [`ROUNDS`] rounds of the fetch loop, sync on a new database, and sync
/// again, in `dir`; prints every run on stderr and one line of figures on stdout.
pub fn run(bin: &Path, pin: &Pinning, dir: &Path, profiles: u64) -> Result<()> {
    let load_before = crate::load_avg();
    let fake = start_fake()?;
    let ids = dir.join("sync-profile-ids");
    let mut text = String::new();
    for p in 0..profiles {
        text.push_str(&gen::profile_id(NS_SYNC, p));
        text.push('\n');
    }
    std::fs::write(&ids, text)?;
    eprintln!(
        "\n== sync of {profiles} profiles from a fake Adapty at {} (concurrency {CONCURRENCY}, \
         --rate {RATE}), {ROUNDS} rounds: the fetch loop, sync on a new database, sync again",
        fake.url
    );
    let exe = std::env::current_exe()?;
    let sync = |db: &Path| {
        let mut cmd = pin.command(bin);
        cmd.arg("sync")
            .arg("--db")
            .arg(db)
            .arg("--profile-ids")
            .arg(&ids)
            .args(["--adapty-secret-key", KEY, "--adapty-api-url", &fake.url])
            .args(["--rate", &RATE.to_string()])
            .args(["--concurrency", &CONCURRENCY.to_string()])
            .arg("--quiet");
        // The daemon's own defaults (durability FULL), whatever this shell exports.
        for var in [
            "RUST_LOG",
            "ENTITLED_DB",
            "ENTITLED_SYNCHRONOUS",
            "ENTITLED_EVENT_NAMES",
            "ENTITLED_PRODUCT_LEVELS",
            "ENTITLED_ADAPTY_SECRET_KEY",
            "ENTITLED_ADAPTY_API_URL",
            "ENTITLED_DAEMON_URL",
            "ENTITLED_READ_TOKEN",
        ] {
            cmd.env_remove(var);
        }
        cmd
    };
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let mut cmd = pin.command(&exe);
        cmd.arg("--fetch-loop")
            .arg(&fake.url)
            .arg(&ids)
            .arg(CONCURRENCY.to_string());
        let fetch = timed(
            cmd,
            &dir.join(format!("fetch-{round}.log")),
            &format!("fetched {profiles}, failed 0"),
        )?;
        eprintln!("round {round}: fetch loop: {}", fetch.line(profiles));
        let db = dir.join(format!("sync-{round}.db"));
        let first = timed(
            sync(&db),
            &dir.join(format!("sync-{round}.log")),
            &format!("fetched {profiles}, changed {profiles}, unknown 0, failed 0"),
        )?;
        eprintln!("round {round}: sync:       {}", first.line(profiles));
        let again = timed(
            sync(&db),
            &dir.join(format!("sync-{round}-again.log")),
            &format!("fetched {profiles}, changed 0, unknown 0, failed 0"),
        )?;
        eprintln!("round {round}: sync again: {}", again.line(profiles));
        let conn = rusqlite::Connection::open(&db)?;
        let (events, premium): (i64, i64) = conn.query_row(
            "SELECT (SELECT count(*) FROM events), \
                    (SELECT count(*) FROM entitlements WHERE access_level_id = 'premium')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if u64::try_from(events) != Ok(profiles) || u64::try_from(premium) != Ok(profiles) {
            return Err(format!(
                "{}: {events} events and {premium} premium entitlements, not {profiles}",
                db.display()
            )
            .into());
        }
        drop(conn);
        let round = Round {
            fetch,
            sync: first,
            again,
        };
        eprintln!(
            "round {}: sync {:.2}× the fetch loop, again {:.2}×",
            rounds.len() + 1,
            round.first_ratio(),
            round.again_ratio()
        );
        rounds.push(round);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }
    let firsts: Vec<f64> = rounds.iter().map(Round::first_ratio).collect();
    let agains: Vec<f64> = rounds.iter().map(Round::again_ratio).collect();
    let each = |f: &dyn Fn(&Round) -> &Timed| {
        let ms: Vec<f64> = rounds.iter().map(|r| f(r).ms_each(profiles)).collect();
        let rate: Vec<f64> = rounds.iter().map(|r| f(r).rate(profiles)).collect();
        format!(
            "{:.3} ms a profile, {:.0} profiles/s (median of {ROUNDS}; ms {})",
            median(ms.clone()),
            median(rate),
            ms.iter()
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    println!(
        "sync of {profiles} profiles at concurrency {CONCURRENCY}: {}, {:.2}× the fetch loop \
         (rounds {}); again, all duplicates: {}, {:.2}× (rounds {}); the fetch loop: {}; \
         load {load_before} before, {} after",
        each(&|r| &r.sync),
        median(firsts.clone()),
        list(&firsts),
        each(&|r| &r.again),
        median(agains.clone()),
        list(&agains),
        each(&|r| &r.fetch),
        crate::load_avg(),
    );
    Ok(())
}
