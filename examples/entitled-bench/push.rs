//! `--only-push-flood`: does a flood of changes to push (`--notify-url`) slow lookups?
//!
//! This process serves the **receiver**, the app's backend: a thread of its own (on the
//! client's core when pinned) that answers 200 to any POST and keeps each one's
//! `webhook-id` and arrival time. Then [`ROUNDS`] rounds, each a pair run on the
//! cached `--profiles` database (the order alternates: B then A, A then B, …):
//! - **A**: the daemon with `--notify-url` (the receiver) and `--notify-secret`;
//! - **B**, the baseline: the same daemon without them.
//!
//! In both, closed-loop lookups of cached profiles (the bench's lookup client,
//! `--connections` connections) run for a warm-up and a `--seconds` window; when the
//! window opens, [`FLOOD`] purchase webhooks of new profiles (each a gain: one change
//! row) are POSTed as fast as `--connections` closed-loop connections of the bench's
//! ingest client send them. In A the bench then waits until the receiver has all
//! [`FLOOD`] changes: the drain time is from the first webhook sent to the last change
//! received. The window is the same length in A and B, so A's lookups pay for the
//! delivery done inside it and B's run without it. After each daemon stops, the bench
//! checks the change rows (one gain per webhook) and, in A, that the receiver got
//! exactly the [`FLOOD`] `webhook-id`s of those rows, each once, in increasing order;
//! then it deletes the flood's rows and the push cursor, so every round starts from
//! the same file. Timings never run under `cargo test`.

use crate::load::{self, Mode, Spec};
use crate::storage;
use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use entitled::projection::EventType;
use entitled_loadgen::gen;
use entitled_loadgen::procs::{self, Pinning, Result, Server};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rounds of (A, B); this VM drifts by ±15 % within minutes.
pub const ROUNDS: usize = 3;
/// Webhooks (and so changes) in one flood.
pub const FLOOD: u64 = 10_000;
/// The signing secret given to the daemon (`whsec_` + base64 of 32 bytes).
const SECRET: &str = "whsec_ZW50aXRsZWQtYmVuY2gtcHVzaC1mbG9vZC1zZWNyZXQ=";
/// How long the receiver may take to get every change after the flood starts.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);
/// Namespace of the flood's generated events; round `r`'s run `k` uses `+ 2r + k`.
const NS_PUSH: u64 = 40;

/// What the receiver got.
#[derive(Default)]
struct Received {
    /// `webhook-id`s as `seq` (`chg_<seq>`; -1 for anything else), in arrival order.
    ids: Vec<i64>,
    /// When the last one arrived.
    last: Option<Instant>,
}

/// The receiver, serving until dropped.
struct Receiver {
    url: String,
    handle: ServerHandle,
    got: Arc<Mutex<Received>>,
    count: Arc<AtomicU64>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

impl Receiver {
    /// Forgets what it received.
    fn reset(&self) {
        *self.got.lock().unwrap_or_else(|e| e.into_inner()) = Received::default();
        self.count.store(0, Ordering::SeqCst);
    }

    fn take(&self) -> Received {
        std::mem::take(&mut *self.got.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Shared {
    got: Arc<Mutex<Received>>,
    count: Arc<AtomicU64>,
}

async fn receive(req: HttpRequest, _body: Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let seq = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("chg_"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    {
        let mut got = shared.got.lock().unwrap_or_else(|e| e.into_inner());
        got.ids.push(seq);
        got.last = Some(Instant::now());
    }
    shared.count.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().finish()
}

/// Starts the receiver on `127.0.0.1:0` in a thread of this process (as sync.rs's fake
/// Adapty: actix's default worker count under this process's affinity).
fn start_receiver() -> Result<Receiver> {
    let got = Arc::new(Mutex::new(Received::default()));
    let count = Arc::new(AtomicU64::new(0));
    let shared = web::Data::new(Shared {
        got: got.clone(),
        count: count.clone(),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("push-receiver".into())
        .spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let bound = HttpServer::new(move || {
                    App::new()
                        .app_data(shared.clone())
                        .default_service(web::post().to(receive))
                })
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
    Ok(Receiver {
        url: format!("http://{addr}/entitled-changes"),
        handle,
        got,
        count,
    })
}

/// The flood's profile ids: deleted after each run with the mixed phase's rows.
fn flood_profile(namespace: u64, p: u64) -> String {
    format!("{}push-{namespace}-{p}", storage::MIXED_PREFIX)
}

/// Webhook `i` of a flood: a `subscription_started` of a monthly premium product (no
/// access-level snapshot) for a new profile, dated in 2031 so that it neither
/// expires during the run nor is older than anything the profile has: one gain.
fn purchase(namespace: u64, i: u64) -> Bytes {
    let mut e =
        gen::profile_events_with_id(namespace, i, flood_profile(namespace, i)).swap_remove(0);
    e.kind = EventType::SubscriptionStarted;
    e.product = "com.example.app.premium.monthly";
    e.subscription_expires_at = Some(e.at + 30 * 24 * 3600 * 1_000_000);
    e.cancellation_reason = None;
    e.alu = None;
    e.environment = "Production";
    Bytes::from(gen::body(&e))
}

/// What one flood took.
struct Flood {
    /// When the first webhook was sent.
    started: Instant,
    /// From the first webhook sent to the last answer.
    took: Duration,
    hist: Histogram<u64>,
}

/// POSTs the [`FLOOD`] prepared `bodies` over `connections` closed-loop keep-alive
/// connections (the ingest client's, [`load::connect`]); each must be answered 2xx
/// `stored`. Connects first, then waits until `start`.
async fn flood(
    addr: SocketAddr,
    connections: usize,
    bodies: Arc<Vec<Bytes>>,
    start: Instant,
) -> Result<Flood> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(load::connect(addr).await?);
    }
    tokio::time::sleep_until(start.into()).await;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let host = addr.to_string();
    let mut tasks = Vec::with_capacity(connections);
    for mut sender in senders {
        let (next, bodies, host) = (next.clone(), bodies.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = load::histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(body) = bodies.get(i) else {
                    return Ok::<_, procs::Error>(hist);
                };
                let sent = Instant::now();
                sender.ready().await?;
                let request = Request::builder()
                    .method(Method::POST)
                    .uri("/webhooks/adapty")
                    .header(hyper::header::HOST, &host)
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let answer = response.into_body().collect().await?.to_bytes();
                if !status.is_success()
                    || !answer.windows(17).any(|w| w == b"\"status\":\"stored\"")
                {
                    return Err(format!(
                        "webhook {i}: {status} {}",
                        String::from_utf8_lossy(&answer)
                    )
                    .into());
                }
                let ns = sent.elapsed().as_nanos() as u64;
                let _ = hist.record(ns.max(1_000));
            }
        }));
    }
    let mut hist = load::histogram();
    for task in tasks {
        hist.add(&task.await??)?;
    }
    Ok(Flood {
        started,
        took: started.elapsed(),
        hist,
    })
}

/// One run: the daemon with push (A) or without (B).
struct Run {
    lookups: load::Stats,
    flood: Flood,
    /// A: from the first webhook sent to the last change received.
    drain: Option<Duration>,
}

impl Run {
    fn line(&self) -> String {
        let drain = match self.drain {
            Some(d) => format!(
                "; push: {FLOOD} changes received {:.2} s after the first webhook ({:.0}/s), \
                 {:.2} s after the last answer",
                d.as_secs_f64(),
                FLOOD as f64 / d.as_secs_f64(),
                (d.as_secs_f64() - self.flood.took.as_secs_f64()).max(0.0),
            ),
            None => String::new(),
        };
        format!(
            "lookups {}\n      flood: {FLOOD} webhooks in {:.2} s ({:.0}/s, p50 {:.2} ms, p99 {:.2} ms){drain}",
            self.lookups.summary(),
            self.flood.took.as_secs_f64(),
            FLOOD as f64 / self.flood.took.as_secs_f64(),
            self.flood.hist.value_at_quantile(0.5) as f64 / 1e6,
            self.flood.hist.value_at_quantile(0.99) as f64 / 1e6,
        )
    }
}

/// Where the run happens and with what.
pub struct Setup<'a> {
    pub bin: &'a Path,
    pub pin: &'a Pinning,
    pub db: &'a Path,
    pub dir: &'a Path,
    pub profiles: u64,
    pub connections: usize,
    pub warmup: Duration,
    pub window: Duration,
    pub lookups: load::MakeRequest,
}

/// The flood's change rows (`seq`, all gains?) in the file, in order.
fn flood_changes(conn: &rusqlite::Connection) -> Result<(Vec<i64>, bool)> {
    let lo = storage::MIXED_PREFIX;
    let hi = format!("{}.", &lo[..lo.len() - 1]);
    let mut stmt = conn.prepare(
        "SELECT seq, active FROM access_changes \
         WHERE profile_id >= ?1 AND profile_id < ?2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(rusqlite::params![lo, hi], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    let (mut seqs, mut gains) = (Vec::new(), true);
    for row in rows {
        let (seq, active) = row?;
        seqs.push(seq);
        gains &= active == 1;
    }
    Ok((seqs, gains))
}

/// Deletes the flood's rows, the push cursor and any parked change: the file as cached.
fn reset_file(db: &Path) -> Result<()> {
    let conn = rusqlite::Connection::open(db)?;
    storage::remove_mixed(&conn)?;
    conn.execute_batch("DELETE FROM notify_state; DELETE FROM notify_failed;")?;
    Ok(())
}

fn one_run(
    runtime: &tokio::runtime::Runtime,
    setup: &Setup,
    receiver: &Receiver,
    push: bool,
    namespace: u64,
    seed: u64,
) -> Result<Run> {
    reset_file(setup.db)?;
    storage::warm_os_cache(setup.db)?;
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..FLOOD).map(|i| purchase(namespace, i)).collect());
    receiver.reset();
    let extra: Vec<String> = if push {
        vec![
            "--notify-url".into(),
            receiver.url.clone(),
            "--notify-secret".into(),
            SECRET.into(),
        ]
    } else {
        Vec::new()
    };
    let name = if push { "a" } else { "b" };
    let log = setup.dir.join(format!("push-{name}-{seed}.log"));
    let mut daemon: Server = procs::spawn_daemon_with(
        setup.bin,
        setup.pin,
        setup.db,
        procs::free_port()?,
        &log,
        &extra,
    )?;
    daemon.poll_ready(Duration::from_secs(120))?;
    daemon.wait_line(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(200));
    let spec = Spec {
        addr: daemon.addr,
        connections: setup.connections,
        warmup: setup.warmup,
        measure: setup.window,
        mode: Mode::Closed,
        seed,
    };
    let count = receiver.count.clone();
    let (lookups, flooded) = runtime.block_on(async {
        let start = Instant::now() + setup.warmup;
        let flood_and_drain = async {
            let flooded = flood(daemon.addr, setup.connections, bodies, start).await?;
            if !push {
                return Ok::<_, procs::Error>(flooded);
            }
            let deadline = Instant::now() + DRAIN_LIMIT;
            while count.load(Ordering::SeqCst) < FLOOD {
                if Instant::now() > deadline {
                    return Err(format!(
                        "the receiver got {} of {FLOOD} changes within {DRAIN_LIMIT:?}",
                        count.load(Ordering::SeqCst)
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(flooded)
        };
        tokio::join!(
            load::run(spec, setup.lookups.clone(), daemon.pid),
            flood_and_drain
        )
    });
    let (lookups, flooded) = (lookups?, flooded?);
    // Anything sent twice or late would arrive within this.
    if push {
        std::thread::sleep(Duration::from_millis(500));
    }
    daemon.stop()?;
    let received = receiver.take();
    let conn = rusqlite::Connection::open(setup.db)?;
    let (seqs, gains) = flood_changes(&conn)?;
    drop(conn);
    if seqs.len() as u64 != FLOOD || !gains {
        return Err(format!(
            "{} change rows for the {FLOOD} webhooks (all gains: {gains}); the daemon's log: {}",
            seqs.len(),
            log.display()
        )
        .into());
    }
    let drain = if push {
        let increasing = received.ids.windows(2).all(|w| w[0] < w[1]);
        if received.ids != seqs {
            return Err(format!(
                "the receiver got {} POSTs (in increasing order: {increasing}), first {:?}, \
                 last {:?}; the flood's changes are seq {}..={}",
                received.ids.len(),
                received.ids.first(),
                received.ids.last(),
                seqs[0],
                seqs[seqs.len() - 1]
            )
            .into());
        }
        let last = received.last.ok_or("nothing received")?;
        Some(last.saturating_duration_since(flooded.started))
    } else {
        if !received.ids.is_empty() {
            return Err(format!(
                "the receiver got {} POSTs from the daemon without --notify-url",
                received.ids.len()
            )
            .into());
        }
        None
    };
    reset_file(setup.db)?;
    Ok(Run {
        lookups,
        flood: flooded,
        drain,
    })
}

/// The middle value of three or more (sorted copy).
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

/// `--only-push-flood`: [`ROUNDS`] pairs of runs (A with push, B without, the order
/// alternating), printed on stderr as they go; one line of figures on stdout.
pub fn run(setup: &Setup) -> Result<()> {
    let load_before = crate::load_avg();
    let receiver = start_receiver()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    eprintln!(
        "\n== push flood, {ROUNDS} rounds: {FLOOD} purchase webhooks on {} connections beside \
         closed-loop lookups of {} profiles on {} connections ({:.0} s warm-up, {:.0} s window \
         from the first webhook), A: --notify-url {}, B: without",
        setup.connections,
        setup.profiles,
        setup.connections,
        setup.warmup.as_secs_f64(),
        setup.window.as_secs_f64(),
        receiver.url
    );
    let mut pairs: Vec<(Run, Run)> = Vec::new();
    for round in 0..ROUNDS as u64 {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let (mut a, mut b) = (None, None);
        for (k, push) in order.into_iter().enumerate() {
            let namespace = NS_PUSH + 2 * round + k as u64;
            let seed = 300 + 10 * round + k as u64;
            let run = one_run(&runtime, setup, &receiver, push, namespace, seed)?;
            eprintln!(
                "round {} {}: {}",
                round + 1,
                if push { "A (push)" } else { "B (no push)" },
                run.line()
            );
            if push {
                if let Some(d) = run.drain {
                    if d > setup.window {
                        eprintln!(
                            "      note: the drain ({:.2} s) outlasted the {:.0} s window",
                            d.as_secs_f64(),
                            setup.window.as_secs_f64()
                        );
                    }
                }
                eprintln!(
                    "      receiver: {FLOOD} POSTs, {FLOOD} distinct webhook-ids, increasing, \
                     the flood's change rows' seqs exactly"
                );
                a = Some(run);
            } else {
                b = Some(run);
            }
        }
        let (a, b) = (a.ok_or("no A run")?, b.ok_or("no B run")?);
        eprintln!(
            "round {}: A/B lookups/s {:.3}, p50 {:.2}, p99 {:.2}",
            round + 1,
            a.lookups.rate() / b.lookups.rate(),
            a.lookups.ms(0.5) / b.lookups.ms(0.5),
            a.lookups.ms(0.99) / b.lookups.ms(0.99)
        );
        pairs.push((a, b));
    }
    let of = |f: &dyn Fn(&(Run, Run)) -> f64| pairs.iter().map(f).collect::<Vec<f64>>();
    let rate = of(&|(a, b)| a.lookups.rate() / b.lookups.rate());
    let p50 = of(&|(a, b)| a.lookups.ms(0.5) / b.lookups.ms(0.5));
    let p99 = of(&|(a, b)| a.lookups.ms(0.99) / b.lookups.ms(0.99));
    let drain = of(&|(a, _)| a.drain.map_or(f64::NAN, |d| d.as_secs_f64()));
    let flood_a = of(&|(a, _)| a.flood.took.as_secs_f64());
    let flood_b = of(&|(_, b)| b.flood.took.as_secs_f64());
    let rate_a = of(&|(a, _)| a.lookups.rate());
    let rate_b = of(&|(_, b)| b.lookups.rate());
    let p99_a = of(&|(a, _)| a.lookups.ms(0.99));
    let p99_b = of(&|(_, b)| b.lookups.ms(0.99));
    println!(
        "push flood of {FLOOD} changes, lookups over the {:.0} s window from the first webhook, \
         with push (A) / without (B), median of {ROUNDS} rounds: lookups/s {:.3} (rounds {}), \
         p50 {:.2} (rounds {}), p99 {:.2} (rounds {}); A {:.0} lookups/s, p99 {:.2} ms (rounds \
         {}); B {:.0} lookups/s, p99 {:.2} ms (rounds {}); push: {FLOOD} changes delivered in \
         {:.2} s, {:.0} changes/s (rounds {} s), each time exactly {FLOOD} distinct webhook-ids in \
         increasing order; the ingest of the {FLOOD} webhooks took {:.2} s with push (rounds {}), \
         {:.2} s without (rounds {}); load {load_before} before, {} after",
        setup.window.as_secs_f64(),
        median(rate.clone()),
        list(&rate, 3),
        median(p50.clone()),
        list(&p50, 2),
        median(p99.clone()),
        list(&p99, 2),
        median(rate_a.clone()),
        median(p99_a.clone()),
        list(&p99_a, 2),
        median(rate_b.clone()),
        median(p99_b.clone()),
        list(&p99_b, 2),
        median(drain.clone()),
        FLOOD as f64 / median(drain.clone()),
        list(&drain, 2),
        median(flood_a.clone()),
        list(&flood_a, 2),
        median(flood_b.clone()),
        list(&flood_b, 2),
        crate::load_avg(),
    );
    Ok(())
}
