//! The load client: N keep-alive HTTP/1.1 connections (hyper), closed loop (each
//! connection sends its next request when the previous answer arrived) or paced
//! (open loop at a fixed total rate; latency counted from the *scheduled* send time,
//! so a slow answer that delays the next request is charged to the server, not hidden:
//! no coordinated omission).
//!
//! Everything runs on one current-thread tokio runtime in this process, which is
//! pinned to its own core. Paced, one task keeps the schedule: it sleeps on tokio's
//! timer (millisecond resolution) until ~2 ms before the next send time, yields until
//! the exact instant, and hands each due send time to its connection, round robin, over
//! a channel. A connection still busy with its previous request queues it, and the wait
//! counts in its latency. How late the pacer woke is recorded too: it is the client
//! core's own hiccups, which every paced latency includes.

use bytes::Bytes;
use entitled_loadgen::gen::Rng;
use entitled_loadgen::procs::{self, Result};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One request to send.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub body: Bytes,
}

/// Makes the next request; called with the connection's own random generator.
pub type MakeRequest = Arc<dyn Fn(&mut Rng) -> Req + Send + Sync>;

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Closed,
    /// Total requests per second over all connections.
    Paced(f64),
}

#[derive(Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    pub connections: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub mode: Mode,
    pub seed: u64,
}

/// What one load phase measured: latencies of the requests started (or, paced,
/// scheduled) inside the measurement window; throughput from the 2xx answers that
/// arrived inside it.
pub struct Stats {
    pub ok: u64,
    pub completed: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub stored: u64,
    pub duplicate: u64,
    pub window: Duration,
    /// Latency in nanoseconds.
    pub hist: Histogram<u64>,
    /// CPU use of the server process over the window, in cores (1.0 = one core busy).
    pub server_cpu: f64,
    /// CPU use of this process (the client) over the window, in cores.
    pub client_cpu: f64,
    /// Each core's time stolen by the host over the window (`/proc/stat`).
    pub stolen: Vec<Duration>,
    /// CPU use of every other process over the window, in cores, and the biggest
    /// user among them: what else the machine ran (on the VM of BENCHMARKS.md, the
    /// kernel's `kdamond`, in bursts).
    pub others_cpu: f64,
    pub others_top: Option<(String, f64)>,
    /// Paced: how late the pacer woke for its send times in the window, in nanoseconds
    /// (the client core's own hiccups); every paced latency includes it.
    pub pacer_late: Option<Histogram<u64>>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64()
    }

    /// A latency quantile, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }

    pub fn summary(&self) -> String {
        format!(
            "{:>9.0}/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.1} ms  ok {} non-2xx {} errors {}  cpu server {:.2} client {:.2}  stolen {:?}",
            self.rate(),
            self.ms(0.5),
            self.ms(0.99),
            self.ms(0.999),
            self.hist.max() as f64 / 1e6,
            self.ok,
            self.non_2xx,
            self.errors,
            self.server_cpu,
            self.client_cpu,
            self.stolen
        ) + &format!("  others {}", self.others())
            + &self
                .pacer_late
                .as_ref()
                .map(|h| format!("  pacer late: {}", stalls(h)))
                .unwrap_or_default()
    }

    /// "0.03 (kdamond.0 0.02)": other processes' CPU in cores, and the biggest user.
    pub fn others(&self) -> String {
        match &self.others_top {
            Some((name, cores)) => format!("{:.2} ({name} {cores:.2})", self.others_cpu),
            None => format!("{:.2}", self.others_cpu),
        }
    }
}

/// "3 ≥ 1 ms, 14 ms in all, longest 4.4 ms": the lateness of the wake-ups at least
/// 1 ms late (below that it is timer slack and the yield loop, not a stall).
pub fn stalls(late: &Histogram<u64>) -> String {
    let (mut count, mut total) = (0, 0.0);
    for v in late.iter_recorded() {
        if v.value_iterated_to() >= 1_000_000 {
            count += v.count_at_value();
            total += v.value_iterated_to() as f64 * v.count_at_value() as f64;
        }
    }
    format!(
        "{count} ≥ 1 ms, {:.0} ms in all, longest {:.1} ms",
        total / 1e6,
        late.max() as f64 / 1e6
    )
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default)]
struct Partial {
    ok: u64,
    completed: u64,
    non_2xx: u64,
    errors: u64,
    stored: u64,
    duplicate: u64,
}

pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The pacer: sends the `k`-th send time (`start + k / rate`, before `end`) to
/// connection `k % n` when it is due. A connection still busy with its previous request
/// queues it, and the wait counts in its latency. Returns how late it woke for the send
/// times in `[measure_from, end)`.
async fn pace(
    rate: f64,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    slots: Vec<mpsc::UnboundedSender<Instant>>,
) -> Histogram<u64> {
    let mut late = histogram();
    let at = |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
    let mut k = 0;
    loop {
        let next = at(k);
        if next >= end {
            return late;
        }
        wait_until(next).await;
        let now = Instant::now();
        if next >= measure_from {
            let ns = now.saturating_duration_since(next).as_nanos() as u64;
            let _ = late.record(ns.max(1_000));
        }
        while at(k) <= now && at(k) < end {
            // A connection that gave up (far behind schedule) has dropped its receiver.
            let _ = slots[(k % slots.len() as u64) as usize].send(at(k));
            k += 1;
        }
    }
}

/// Sleeps on tokio's timer (millisecond resolution) until ~2 ms before `t`, then yields
/// until `t`.
async fn wait_until(t: Instant) {
    let now = Instant::now();
    if t > now + Duration::from_millis(3) {
        tokio::time::sleep_until((t - Duration::from_millis(2)).into()).await;
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs one load phase against `server_pid` (for its CPU time).
pub async fn run(spec: Spec, make: MakeRequest, server_pid: u32) -> Result<Stats> {
    let mut senders = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        senders.push(connect(spec.addr).await?);
    }
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.measure;
    let host = spec.addr.to_string();
    let (receivers, pacer) = match spec.mode {
        Mode::Closed => (None, None),
        Mode::Paced(rate) => {
            let (senders, receivers): (Vec<_>, Vec<_>) = (0..spec.connections)
                .map(|_| mpsc::unbounded_channel())
                .unzip();
            let pacer = tokio::spawn(pace(rate, start, measure_from, end, senders));
            (Some(receivers), Some(pacer))
        }
    };
    let mut receivers = receivers.map(Vec::into_iter);
    let mut tasks = Vec::with_capacity(spec.connections);
    for (c, sender) in senders.into_iter().enumerate() {
        let make = make.clone();
        let host = host.clone();
        let addr = spec.addr;
        let spec_measure = spec.measure;
        let mut slots = receivers.as_mut().and_then(Iterator::next);
        let mut rng = Rng::new(spec.seed.wrapping_mul(1000).wrapping_add(c as u64));
        tasks.push(tokio::spawn(async move {
            let mut sender = sender;
            let mut partial = Partial::default();
            let mut hist = histogram();
            loop {
                let scheduled = match &mut slots {
                    None if Instant::now() >= end => break,
                    None => None,
                    Some(slots) => match slots.recv().await {
                        // The pacer is done and this connection has sent all it was given.
                        None => break,
                        // Far behind schedule (overloaded): stop rather than run on.
                        Some(_) if Instant::now() >= end + spec_measure => break,
                        Some(t) => Some(t),
                    },
                };
                let req = make(&mut rng);
                let sent = Instant::now();
                let from = scheduled.unwrap_or(sent);
                let counted = from >= measure_from;
                let outcome = async {
                    sender.ready().await?;
                    let request = Request::builder()
                        .method(req.method)
                        .uri(req.path)
                        .header(hyper::header::HOST, &host)
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(req.body))?;
                    let response = sender.send_request(request).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, procs::Error>((status, body))
                }
                .await;
                let done = Instant::now();
                match outcome {
                    Ok((status, body)) => {
                        if status.is_success() && done >= measure_from && done <= end {
                            partial.completed += 1;
                        }
                        if !counted {
                            continue;
                        }
                        if status.is_success() {
                            partial.ok += 1;
                            if contains(&body, b"\"status\":\"stored\"") {
                                partial.stored += 1;
                            } else if contains(&body, b"\"status\":\"duplicate\"") {
                                partial.duplicate += 1;
                            }
                            let ns = done.saturating_duration_since(from).as_nanos() as u64;
                            let _ = hist.record(ns.max(1_000));
                        } else {
                            partial.non_2xx += 1;
                        }
                    }
                    Err(_) => {
                        if counted {
                            partial.errors += 1;
                        }
                        // Reconnect; the server may have closed the connection.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        match connect(addr).await {
                            Ok(s) => sender = s,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
            }
            (partial, hist)
        }));
    }
    // CPU time of both processes over the measurement window.
    let ticks = procs::clock_ticks();
    let not_others = [server_pid, std::process::id()];
    tokio::time::sleep_until(measure_from.into()).await;
    let (server0, client0, steal0, others0, t0) = (
        procs::cpu_ticks(Some(server_pid)),
        procs::cpu_ticks(None),
        procs::steal_ticks(),
        procs::others_cpu_ticks(&not_others),
        Instant::now(),
    );
    tokio::time::sleep_until(end.into()).await;
    let (server1, client1, steal1, others1, t1) = (
        procs::cpu_ticks(Some(server_pid)),
        procs::cpu_ticks(None),
        procs::steal_ticks(),
        procs::others_cpu_ticks(&not_others),
        Instant::now(),
    );
    let (others, others_top) = procs::others_used(&others0, &others1);
    let cores = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / ticks / (t1 - t0).as_secs_f64();
    let mut stats = Stats {
        ok: 0,
        completed: 0,
        non_2xx: 0,
        errors: 0,
        stored: 0,
        duplicate: 0,
        window: spec.measure,
        hist: histogram(),
        server_cpu: cores(server0, server1),
        client_cpu: cores(client0, client1),
        stolen: steal0
            .iter()
            .zip(&steal1)
            .map(|(a, b)| Duration::from_secs_f64(b.saturating_sub(*a) as f64 / ticks))
            .collect(),
        others_cpu: cores(0, others),
        others_top: others_top.map(|(name, ticks)| (name, cores(0, ticks))),
        pacer_late: None,
    };
    for task in tasks {
        let (p, h) = task.await?;
        stats.ok += p.ok;
        stats.completed += p.completed;
        stats.non_2xx += p.non_2xx;
        stats.errors += p.errors;
        stats.stored += p.stored;
        stats.duplicate += p.duplicate;
        stats.hist.add(&h)?;
    }
    if let Some(pacer) = pacer {
        stats.pacer_late = Some(pacer.await?);
    }
    Ok(stats)
}
