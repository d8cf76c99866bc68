//! Logs and metrics.
//!
//! Logs: `tracing` to stderr, text or JSON, level from `RUST_LOG` (default `info`).
//! Tokens and bodies are never logged; personal fields (email, IPs, device ids) are
//! never read at all.
//!
//! Metrics: every name entitled exports is in this file, recorded through the
//! `metrics` facade and rendered in Prometheus text format on `GET /metrics`.

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Logs on stderr, one JSON object a line when `json`, else text; the level comes from
/// `RUST_LOG` (default: info).
pub fn init_logs(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests run several daemons in one process) keeps the first.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process's Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("entitled_writer_batch_size".into()),
                    &BATCH_BUCKETS,
                )
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        describe();
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("entitled-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            });
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "entitled_webhook_requests_total",
        "Webhook requests by outcome: stored, duplicate, ignored (stored, touches no level), \
         verification, refused (by reason), unauthorized, failed"
    );
    describe_counter!("entitled_events_total", "Events stored, by canonical type");
    describe_histogram!(
        "entitled_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route, method and status"
    );
    describe_histogram!(
        "entitled_writer_batch_size",
        "Events per writer transaction"
    );
    describe_histogram!(
        "entitled_writer_commit_duration_seconds",
        Unit::Seconds,
        "Time for one writer transaction, begin to commit"
    );
    describe_counter!("entitled_lookups_total", "Access lookups served, by route");
    describe_gauge!("entitled_index_profiles", "Profiles in the in-memory index");
    describe_gauge!(
        "entitled_index_entitlements",
        "(profile, access level) rows in the in-memory index"
    );
    describe_gauge!(
        "entitled_active_entitlements",
        "Entitlements granting access at scrape time, by access level"
    );
    describe_gauge!(
        "entitled_database_size_bytes",
        Unit::Bytes,
        "Size of the database file and its WAL"
    );
    describe_gauge!(
        "entitled_newest_event_age_seconds",
        Unit::Seconds,
        "Seconds since the newest stored event was received"
    );
    describe_counter!(
        "entitled_adapty_requests_total",
        "Requests to Adapty's server-side API, by outcome (ok, not_found, unauthorized, \
         rate_limited, server_error, timeout, transport_error, unexpected, invalid_request)"
    );
    describe_counter!(
        "entitled_notify_deliveries_total",
        "Push deliveries by outcome: delivered (2xx), failed (an attempt; retried), parked \
         (given up after --notify-retry-for), skipped (not a --notify-access-levels level)"
    );
    describe_gauge!(
        "entitled_notify_pending",
        "Changes of the feed after the push cursor (not yet confirmed, parked or skipped)"
    );
    describe_gauge!(
        "entitled_notify_oldest_undelivered_seq",
        "The seq of the oldest change push has not yet confirmed (the one being delivered); 0 when caught up"
    );
    describe_gauge!(
        "entitled_notify_lag_seconds",
        Unit::Seconds,
        "Age of the oldest change push has not yet confirmed; 0 when caught up"
    );
    describe_counter!(
        "entitled_lapse_checks_total",
        "Checks of levels that lapsed while set to renew, by result: agreed (Adapty says \
         ended too), corrected (Adapty says held: a lost renewal), superseded (an event \
         answered first), failed"
    );
}

pub fn webhook(outcome: &'static str) {
    counter!("entitled_webhook_requests_total", "outcome" => outcome).increment(1);
}

pub fn webhook_refused(reason: &'static str) {
    counter!("entitled_webhook_requests_total", "outcome" => "refused", "reason" => reason)
        .increment(1);
}

pub fn event_stored(canonical_type: Option<&'static str>) {
    counter!("entitled_events_total", "type" => canonical_type.unwrap_or("unknown")).increment(1);
}

/// Records one request's latency. The handle of each (status, method, route) is looked
/// up in the registry once per worker thread and kept: building owned labels and
/// hashing them into the registry on every request was a twentieth of a lookup's CPU.
pub fn http_request(route: &str, method: &str, status: u16, seconds: f64) {
    type Handles = HashMap<Box<str>, Histogram, foldhash::fast::FixedState>;
    thread_local! {
        static HANDLES: RefCell<(String, Handles)> = RefCell::default();
    }
    HANDLES.with_borrow_mut(|(key, handles)| {
        // "200 GET /profiles/{profile_id}/access", without the formatting machinery.
        key.clear();
        for digit in [status / 100 % 10, status / 10 % 10, status % 10] {
            key.push(char::from(b'0' + digit as u8));
        }
        key.push(' ');
        key.push_str(method);
        key.push(' ');
        key.push_str(route);
        if let Some(handle) = handles.get(key.as_str()) {
            handle.record(seconds);
            return;
        }
        let handle = histogram!(
            "entitled_http_request_duration_seconds",
            "route" => route.to_owned(), "method" => method.to_owned(), "status" => status.to_string()
        );
        handle.record(seconds);
        handles.insert(key.as_str().into(), handle);
    });
}

pub fn writer_batch(size: usize, seconds: f64) {
    histogram!("entitled_writer_batch_size").record(size as f64);
    histogram!("entitled_writer_commit_duration_seconds").record(seconds);
}

/// Counts one access lookup; `route` is one of a few fixed names. Handles are kept per
/// thread, as in [`http_request`].
pub fn lookup(route: &'static str) {
    thread_local! {
        static HANDLES: RefCell<Vec<(&'static str, Counter)>> = const { RefCell::new(Vec::new()) };
    }
    HANDLES.with_borrow_mut(|handles| {
        if let Some((_, handle)) = handles.iter().find(|(name, _)| *name == route) {
            handle.increment(1);
            return;
        }
        let handle = counter!("entitled_lookups_total", "route" => route);
        handle.increment(1);
        handles.push((route, handle));
    });
}

/// The gauges computed at scrape time.
pub struct Snapshot<'a> {
    pub profiles: usize,
    pub entitlements: usize,
    pub active_by_level: &'a [(std::sync::Arc<str>, usize)],
    pub database_bytes: u64,
    pub newest_event_age_seconds: Option<f64>,
}

pub fn scrape(snapshot: Snapshot<'_>) -> String {
    gauge!("entitled_index_profiles").set(snapshot.profiles as f64);
    gauge!("entitled_index_entitlements").set(snapshot.entitlements as f64);
    for (level, count) in snapshot.active_by_level {
        gauge!("entitled_active_entitlements", "access_level" => level.to_string())
            .set(*count as f64);
    }
    gauge!("entitled_database_size_bytes").set(snapshot.database_bytes as f64);
    if let Some(age) = snapshot.newest_event_age_seconds {
        gauge!("entitled_newest_event_age_seconds").set(age);
    }
    let handle = metrics_handle();
    handle.run_upkeep();
    handle.render()
}
