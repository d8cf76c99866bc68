//! soak: the release daemon under steady mixed load for a long time; does anything
//! drift (latency, errors, memory), and is every acknowledged event in the file?
//!
//! ```sh
//! cargo run --release --example soak -- --minutes 10
//! ```
//!
//! Flags (after `--`; `--help` prints the same, from `entitled_loadgen::flags::Soak`):
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--minutes M` | 10 | how long the load runs (fractions allowed) |
//! | `--report-every S` | 30 | seconds between report rows |
//! | `--ingest-rate R` | 200 | webhooks per second, paced (open loop) |
//! | `--lookup-rate R` | 1000 | lookups per second, paced (open loop) |
//! | `--duplicates P` | 5 | percent of webhooks that resend an event already sent |
//! | `--connections N` | 16 | client connections of each stream (ingest, lookups) |
//! | `--bin PATH` | build it | the daemon binary (default: `cargo build --release --bin entitled`) |
//! | `--keep` | off | keep the temporary directory (database, daemon log) |
//!
//! What it does: builds `target/release/entitled`, starts it on loopback with a new
//! database in a temporary directory, and runs two paced streams for the given time:
//! realistic Adapty webhooks (the benchmark's generator: ten 4-event flows over all
//! event types) of which some are resends of earlier ones, and profile and user
//! lookups of profiles already sent. Latency is measured from each request's scheduled
//! time, so a stall is charged to the daemon. Every `--report-every` seconds it prints
//! one row: elapsed time, requests, non-2xx answers and transport errors, p50/p99 of
//! each stream over that window, and the daemon's resident memory (VmRSS, and RssAnon,
//! its heap part: SQLite's mapped and cached file pages count in VmRSS too). At the end:
//! a summary, then the check that every event answered 200 is in the `events` table,
//! and `PRAGMA integrity_check`. Exit status 1 when an acknowledged event is missing,
//! the file is damaged, or the daemon does not stop cleanly on SIGTERM.
//!
//! Not run by `cargo test`; the machine should be otherwise quiet.

use entitled_loadgen::gen::{self, Rng};
use entitled_loadgen::procs::{self, Memory, Pinning, Result};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Namespace of generated ids (the benchmark uses 1–3).
const NS: u64 = 7;
/// A request not answered within this is counted as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---- measurements ---------------------------------------------------------------------------

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What one stream saw: over a report window, or over the whole run.
struct Tally {
    ok: u64,
    /// Answers that were not 2xx, by status.
    non_2xx: BTreeMap<u16, u64>,
    /// No answer: connection errors and timeouts.
    errors: u64,
    /// Ingest only: 200 "stored" and 200 "duplicate".
    stored: u64,
    duplicate: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            ok: 0,
            non_2xx: BTreeMap::new(),
            errors: 0,
            stored: 0,
            duplicate: 0,
            latency: histogram(),
        }
    }

    fn requests(&self) -> u64 {
        self.ok + self.non_2xx.values().sum::<u64>() + self.errors
    }

    fn failed(&self) -> u64 {
        self.non_2xx.values().sum::<u64>() + self.errors
    }

    fn ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn merge(&mut self, other: &Tally) {
        self.ok += other.ok;
        for (status, n) in &other.non_2xx {
            *self.non_2xx.entry(*status).or_default() += n;
        }
        self.errors += other.errors;
        self.stored += other.stored;
        self.duplicate += other.duplicate;
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
    }
}

/// A stream's current window, taken and reset by the reporter.
struct Stream {
    window: Mutex<Tally>,
}

impl Stream {
    fn record(&self, f: impl FnOnce(&mut Tally)) {
        f(&mut self.window.lock().expect("the tally lock"));
    }

    fn take(&self) -> Tally {
        std::mem::replace(
            &mut self.window.lock().expect("the tally lock"),
            Tally::new(),
        )
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---- the load -------------------------------------------------------------------------------

struct Shared {
    base: String,
    client: reqwest::Client,
    /// Next new event index of the namespace.
    next_event: AtomicU64,
    /// profile_event_ids answered 200 (stored or duplicate).
    acked: Mutex<Vec<String>>,
    ingest: Stream,
    lookups: Stream,
    start: Instant,
    end: Instant,
    /// Percent of webhooks that resend an earlier event.
    duplicates: u64,
}

/// One paced connection: request `k` is due at `start + offset + k × interval`; when
/// behind, requests go back to back and their latency counts from when they were due.
async fn paced(shared: Arc<Shared>, worker: usize, workers: usize, rate: f64, ingest: bool) {
    let interval = Duration::from_secs_f64(workers as f64 / rate);
    let offset = interval.mul_f64(worker as f64 / workers as f64);
    let mut rng = Rng::new(((worker as u64) << 1) | u64::from(ingest));
    for k in 0u32.. {
        let due = shared.start + offset + interval * k;
        if due >= shared.end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        if ingest {
            ingest_one(&shared, &mut rng, due).await;
        } else {
            lookup_one(&shared, &mut rng, due).await;
        }
    }
}

async fn ingest_one(shared: &Shared, rng: &mut Rng, due: Instant) {
    let sent_so_far = shared.next_event.load(Ordering::Relaxed);
    let index = if sent_so_far > 0 && rng.percent(shared.duplicates) {
        rng.below(sent_so_far)
    } else {
        shared.next_event.fetch_add(1, Ordering::Relaxed)
    };
    let event = gen::event(NS, index);
    let body = gen::body(&event);
    let result = shared
        .client
        .post(format!("{}/webhooks/adapty", shared.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let answer = match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            resp.json::<serde_json::Value>()
                .await
                .map(|body| (status, body))
        }
        Err(e) => Err(e),
    };
    let micros = due.elapsed().as_micros() as u64;
    let mut acked = false;
    shared.ingest.record(|t| {
        let _ = t.latency.record(micros.max(1));
        match &answer {
            Ok((200, body)) if body["profile_event_id"] == event.profile_event_id.as_str() => {
                t.ok += 1;
                acked = true;
                match body["status"].as_str() {
                    Some("duplicate") => t.duplicate += 1,
                    _ => t.stored += 1,
                }
            }
            // A 200 that names another event: count it as a failure, never as an ack.
            Ok((200, _)) => *t.non_2xx.entry(200).or_default() += 1,
            Ok((status, _)) => *t.non_2xx.entry(*status).or_default() += 1,
            Err(_) => t.errors += 1,
        }
    });
    if acked {
        shared
            .acked
            .lock()
            .expect("the acked lock")
            .push(event.profile_event_id);
    }
}

async fn lookup_one(shared: &Shared, rng: &mut Rng, due: Instant) {
    // A profile already sent (its first event), or an unknown one before any was.
    let profiles = shared.next_event.load(Ordering::Relaxed) / gen::EVENTS_PER_PROFILE;
    let p = rng.below(profiles.max(1));
    let path = if rng.percent(75) {
        format!("/profiles/{}/access", gen::profile_id(NS, p))
    } else {
        format!("/users/user-{NS}-{p}/access")
    };
    let result = shared
        .client
        .get(format!("{}{path}", shared.base))
        .send()
        .await;
    let answer = match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            resp.bytes().await.map(|_| status)
        }
        Err(e) => Err(e),
    };
    let micros = due.elapsed().as_micros() as u64;
    shared.lookups.record(|t| {
        let _ = t.latency.record(micros.max(1));
        match answer {
            Ok(200) => t.ok += 1,
            Ok(status) => *t.non_2xx.entry(status).or_default() += 1,
            Err(_) => t.errors += 1,
        }
    });
}

fn row(
    elapsed: Duration,
    ingest: &Tally,
    lookups: &Tally,
    window: Duration,
    memory: Memory,
) -> String {
    let per_s = |t: &Tally| t.requests() as f64 / window.as_secs_f64().max(1e-9);
    format!(
        "{:>7.0}s | {:>7} {:>6.0}/s {:>5} {:>8.2} {:>8.2} | {:>8} {:>6.0}/s {:>5} {:>8.2} {:>8.2} | {:>7.1} {:>7.1}",
        elapsed.as_secs_f64(),
        ingest.requests(),
        per_s(ingest),
        ingest.failed(),
        ingest.ms(0.5),
        ingest.ms(0.99),
        lookups.requests(),
        per_s(lookups),
        lookups.failed(),
        lookups.ms(0.5),
        lookups.ms(0.99),
        mib(memory.rss),
        mib(memory.anon)
    )
}

const HEADER: &str = "elapsed  |  ingest   rate    err  p50 ms   p99 ms |  lookups   rate   err  p50 ms   p99 ms |     RSS    anon (MiB)";

fn describe(name: &str, t: &Tally) -> String {
    let mut text = format!(
        "{name}: {} requests, {} ok, non-2xx {:?}, errors {}; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms",
        t.requests(),
        t.ok,
        t.non_2xx,
        t.errors,
        t.ms(0.5),
        t.ms(0.99),
        t.ms(0.999),
        t.latency.max() as f64 / 1000.0
    );
    if name == "ingest" {
        text.push_str(&format!("; {} stored, {} duplicate", t.stored, t.duplicate));
    }
    text
}

fn run() -> Result<bool> {
    let args = <entitled_loadgen::flags::Soak as clap::Parser>::parse();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => procs::build_daemon(&repo)?,
    };
    let dir = tempfile::Builder::new()
        .prefix("entitled-soak-")
        .tempdir()?;
    let db = dir.path().join("entitled.db");
    let log = dir.path().join("daemon.log");
    let mut server = procs::spawn_daemon(&bin, &Pinning { server_cpu: None }, &db, 0, &log)?;
    server.wait_line(Duration::from_secs(60))?;
    server.poll_ready(Duration::from_secs(60))?;
    let at_start = procs::memory(server.pid);
    println!(
        "soak: {} for {} min: ingest {}/s ({}% resends), lookups {}/s, {} connections each; database {}",
        bin.display(),
        args.minutes,
        args.ingest_rate,
        args.duplicates,
        args.lookup_rate,
        args.connections,
        db.display()
    );
    println!("{HEADER}");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let start = Instant::now() + Duration::from_millis(100);
    let shared = Arc::new(Shared {
        base: format!("http://{}", server.addr),
        client: reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(args.connections * 2)
            .build()?,
        next_event: AtomicU64::new(0),
        acked: Mutex::new(Vec::new()),
        ingest: Stream {
            window: Mutex::new(Tally::new()),
        },
        lookups: Stream {
            window: Mutex::new(Tally::new()),
        },
        start,
        end: start + Duration::from_secs_f64(args.minutes * 60.0),
        duplicates: args.duplicates,
    });

    let mut total_ingest = Tally::new();
    let mut total_lookups = Tally::new();
    let mut anon_highest = at_start.anon;
    runtime.block_on(async {
        let mut workers = Vec::new();
        for (rate, ingest) in [(args.ingest_rate, true), (args.lookup_rate, false)] {
            for w in 0..args.connections {
                workers.push(tokio::spawn(paced(
                    shared.clone(),
                    w,
                    args.connections,
                    rate,
                    ingest,
                )));
            }
        }
        let every = Duration::from_secs(args.report_every.max(1));
        let mut last = start;
        let mut next = start + every;
        loop {
            let finished = workers.iter().all(|w| w.is_finished());
            if !finished && next <= shared.end {
                tokio::time::sleep_until(next.into()).await;
            } else {
                for worker in workers.drain(..) {
                    worker.await.expect("a load worker");
                }
            }
            let now = Instant::now();
            let (ingest, lookups) = (shared.ingest.take(), shared.lookups.take());
            let now_memory = procs::memory(server.pid);
            anon_highest = anon_highest.max(now_memory.anon);
            // (The last window may be empty when the end fell on a report.)
            if ingest.requests() + lookups.requests() > 0 || !workers.is_empty() {
                println!(
                    "{}",
                    row(now - start, &ingest, &lookups, now - last, now_memory)
                );
            }
            total_ingest.merge(&ingest);
            total_lookups.merge(&lookups);
            last = now;
            next += every;
            if workers.is_empty() {
                break;
            }
        }
    });
    let elapsed = last_elapsed(start);
    let at_end = procs::memory(server.pid);

    // Every acknowledged event must be in the file (read while the daemon still runs:
    // acknowledged means committed).
    let acked: HashSet<String> = shared
        .acked
        .lock()
        .expect("the acked lock")
        .iter()
        .cloned()
        .collect();
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let stored: HashSet<String> = {
        let mut stmt = conn.prepare("SELECT profile_event_id FROM events")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<std::result::Result<_, _>>()?
    };
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    drop(conn);
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    let db_bytes = file_size(&db) + file_size(&db.with_extension("db-wal"));
    let stopped = server.stop();

    println!();
    println!("summary after {:.1} s:", elapsed.as_secs_f64());
    println!("  {}", describe("ingest", &total_ingest));
    println!("  {}", describe("lookups", &total_lookups));
    println!(
        "  daemon memory: RSS {:.1} MiB at start, {:.1} MiB at the end ({:.1} anonymous, {:.1} mapped files), peak {:.1} MiB; anonymous at start {:.1}, highest sampled {:.1} MiB",
        mib(at_start.rss),
        mib(at_end.rss),
        mib(at_end.anon),
        mib(at_end.file),
        mib(at_end.peak),
        mib(at_start.anon),
        mib(anon_highest)
    );
    println!(
        "  database: {} events, {:.1} MiB (with the WAL)",
        stored.len(),
        mib(db_bytes)
    );
    println!(
        "  acknowledged events: {} distinct, {} missing from the events table; integrity_check: {integrity}",
        acked.len(),
        lost.len()
    );
    let mut pass = true;
    if !lost.is_empty() {
        println!(
            "  FAIL: acknowledged but not stored, e.g. {:?}",
            &lost[..lost.len().min(5)]
        );
        pass = false;
    }
    if integrity != "ok" {
        println!("  FAIL: the database is damaged");
        pass = false;
    }
    if let Err(e) = stopped {
        println!("  FAIL: stopping the daemon: {e}");
        pass = false;
    }
    if args.keep {
        let kept = dir.keep();
        println!("  kept {}", kept.display());
    } else {
        println!(
            "  (the temporary directory is removed; --keep keeps the database and the daemon log)"
        );
    }
    println!("{}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

fn last_elapsed(start: Instant) -> Duration {
    Instant::now().saturating_duration_since(start)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
