//! Push: every change of the feed (`access_changes`: gains, losses, the clock's silent
//! expiries, sharing flips) POSTed to `--notify-url`, signed the Standard Webhooks way,
//! at least once, in feed order.
//!
//! One change a request, the next once the previous is confirmed (a 2xx) or parked:
//! feed order is then order per profile too, and `webhook-id` (`chg_<seq>`) is the same
//! on every retry, so a receiver can drop a repeat. A failure is retried with a
//! doubling backoff (1 s, 2 s, … at most 10 min, with jitter) until
//! `--notify-retry-for` has passed since its first failure; then the change is parked
//! (`notify_failed`, `GET /notify/failed`) and delivery goes on. `replay` sends changes
//! again from a `seq`.
//!
//! Delivery runs on a thread of its own with its own connection ([`crate::store::notify`]
//! says why): a slow or dead receiver costs ingestion and lookups nothing, and memory
//! holds one change at a time. The cursor is in the database, so a restart resumes
//! after the last confirmed change (docs/reliability.md#push).

mod signer;

pub use signer::Signer;

use crate::access::change::{AccessChange, PushMessage};
use crate::status::Status;
use crate::store::notify::{self, NotifyStore};
use crate::store::{self, StoreError};
use crate::timestamp::Timestamp;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// One delivery may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait after a failure; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// What `--notify-*` configure.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: reqwest::Url,
    pub signer: Signer,
    /// Only these levels' changes are sent; all when empty.
    pub access_levels: HashSet<String>,
    pub retry_for: Duration,
}

/// The delivery, shared between its thread and the HTTP routes.
pub struct Notifier {
    settings: Settings,
    /// The cursor and the feed: SQLite's own connection, or PostgreSQL's (which also
    /// says whether this instance is the one that delivers).
    store: Mutex<Box<dyn NotifyStore>>,
    status: Arc<Status>,
    /// Woken by a replay, so that a delivery in backoff starts over at once.
    replayed: Notify,
    replay_pending: AtomicBool,
    /// `changed_at` (µs) of the oldest change not yet confirmed; 0 when caught up.
    oldest_pending: AtomicI64,
    /// The cursor as the delivery last read it, for `/metrics`.
    cursor: AtomicI64,
}

impl Notifier {
    /// The delivery, on its store's connection; [`Notifier::start`] makes the cursor.
    pub fn new(store: Box<dyn NotifyStore>, settings: Settings, status: Arc<Status>) -> Arc<Self> {
        Arc::new(Notifier {
            settings,
            store: Mutex::new(store),
            status,
            replayed: Notify::new(),
            replay_pending: AtomicBool::new(false),
            oldest_pending: AtomicI64::new(0),
            cursor: AtomicI64::new(0),
        })
    }

    /// Makes the cursor (at the newest change, the first time: history is not sent)
    /// and starts the delivery thread. Called before the daemon takes events. The
    /// thread ends at shutdown (a delivery in flight is sent again at the next start,
    /// unless it was confirmed first).
    pub fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        let cursor = self.with_store(|store| store.start())?;
        self.cursor.store(cursor, Ordering::Release);
        tracing::info!(url = %self.settings.url, delivered_seq = cursor, "push is on");
        let notifier = self.clone();
        std::thread::Builder::new()
            .name("entitled-notify".into())
            .spawn(move || {
                yield_to_lookups();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "push cannot start its runtime; nothing is sent");
                        return;
                    }
                };
                runtime.block_on(notifier.run());
            })
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(format!("push's thread: {e}")))
    }

    fn with_store<T>(
        &self,
        f: impl FnOnce(&mut dyn NotifyStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut **store)
    }

    /// The parked changes, oldest first.
    pub fn failed(
        &self,
        limit: u32,
    ) -> Result<Vec<(notify::Parked, Option<AccessChange>)>, StoreError> {
        self.with_store(|store| {
            Ok(store
                .failed(limit)?
                .into_iter()
                .map(|(parked, change)| (parked, change.map(AccessChange::from)))
                .collect())
        })
    }

    /// Sends every change from `from_seq` on again, the parked ones too.
    pub fn replay(&self, from_seq: i64) -> Result<(), StoreError> {
        self.with_store(|store| store.replay(from_seq))?;
        self.replay_pending.store(true, Ordering::Release);
        self.replayed.notify_one();
        tracing::info!(from_seq, "push: replay asked");
        Ok(())
    }

    /// Changes of the feed after the cursor (not yet confirmed, parked or skipped), as
    /// of now: it grows while a change is retried.
    pub fn pending(&self) -> i64 {
        (self.status.newest_change() - self.cursor.load(Ordering::Acquire)).max(0)
    }

    /// The `seq` of the oldest change not yet confirmed (the one being delivered); 0
    /// when caught up.
    pub fn oldest_undelivered(&self) -> i64 {
        match self.pending() {
            0 => 0,
            _ => self.cursor.load(Ordering::Acquire) + 1,
        }
    }

    /// Seconds since the oldest change not yet confirmed was recorded; 0 when caught up.
    pub fn lag_seconds(&self, now: Timestamp) -> f64 {
        match self.oldest_pending.load(Ordering::Acquire) {
            0 => 0.0,
            at => ((now.as_micros() - at) as f64 / 1e6).max(0.0),
        }
    }

    async fn run(self: Arc<Self>) {
        let http = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
            Ok(http) => http,
            Err(error) => {
                tracing::error!(%error, "push cannot build its HTTP client; nothing is sent");
                return;
            }
        };
        let mut changes = self.status.watch_changes();
        loop {
            if self.status.is_stopped() {
                return;
            }
            // On PostgreSQL one instance delivers; the others wait their turn.
            match self.with_store(|store| store.may_deliver()) {
                Ok(true) => {}
                Ok(false) => {
                    self.oldest_pending.store(0, Ordering::Release);
                    self.idle(STANDBY_POLL).await;
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "push cannot reach the store; retrying in 5 s");
                    self.idle(Duration::from_secs(5)).await;
                    continue;
                }
            }
            self.replay_pending.store(false, Ordering::Release);
            let newest = *changes.borrow_and_update();
            let next = self.with_store(|store| {
                let cursor = store.cursor()?.unwrap_or(0);
                let next = store.next_change(cursor, newest)?;
                Ok((cursor, next))
            });
            let (cursor, change) = match next {
                Ok((cursor, change)) => (cursor, change),
                Err(error) => {
                    tracing::error!(%error, "push cannot read the change feed; retrying in 5 s");
                    self.idle(Duration::from_secs(5)).await;
                    continue;
                }
            };
            self.cursor.store(cursor, Ordering::Release);
            let Some(change) = change else {
                self.oldest_pending.store(0, Ordering::Release);
                // Also each second: on PostgreSQL a replay may come from another
                // instance or the tool, which move the shared cursor without waking us.
                tokio::select! {
                    _ = changes.changed() => {}
                    () = self.replayed.notified() => {}
                    () = tokio::time::sleep(STANDBY_POLL) => {}
                }
                continue;
            };
            let recorded =
                Timestamp::parse_rfc3339(&change.changed_at).map_or(0, Timestamp::as_micros);
            self.oldest_pending
                .store(recorded.max(1), Ordering::Release);
            if !self.wanted(&change) {
                self.confirm(cursor, change.seq, "skipped");
                continue;
            }
            self.deliver(&http, cursor, change).await;
        }
    }

    /// Waits `wait`, or less when stopping.
    async fn idle(&self, wait: Duration) {
        let mut stopping = self.status.watch_changes();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = async { while !self.status.is_stopped() { if stopping.changed().await.is_err() { break } } } => {}
        }
    }

    fn wanted(&self, change: &store::AccessChange) -> bool {
        self.settings.access_levels.is_empty()
            || self
                .settings
                .access_levels
                .contains(&change.access_level_id)
    }

    /// Moves the cursor from `from` past `seq` (unless a replay moved it meanwhile).
    fn confirm(&self, from: i64, seq: i64, outcome: &'static str) {
        counted(outcome);
        if let Err(error) = self.with_store(|store| store.advance(from, seq)) {
            // Not moved: the change is sent again, which at-least-once allows.
            tracing::error!(seq, %error, "push cannot record a delivery; it will be sent again");
        }
    }

    /// Delivers one change: returns once it is confirmed, parked, or a replay or the
    /// shutdown came first.
    async fn deliver(&self, http: &reqwest::Client, cursor: i64, change: store::AccessChange) {
        let seq = change.seq;
        let id = format!("chg_{seq}");
        let data = AccessChange::from(change);
        let mut first_failed: Option<Timestamp> = None;
        let mut attempts = 0u32;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let now = Timestamp::now();
            let body = serde_json::to_vec(&PushMessage::new(&data, now)).unwrap_or_default();
            let unix = now.as_micros().div_euclid(1_000_000);
            let sent = http
                .post(self.settings.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", unix.to_string())
                .header(
                    "webhook-signature",
                    self.settings.signer.sign(&id, unix, &body),
                )
                .body(body)
                .send()
                .await;
            let error = match sent {
                Ok(response) if response.status().is_success() => {
                    self.confirm(cursor, seq, "delivered");
                    return;
                }
                Ok(response) => format!("the receiver answered {}", response.status()),
                Err(error) if error.is_timeout() => "no answer within 10 s".to_owned(),
                Err(error) => error.without_url().to_string(),
            };
            attempts += 1;
            counted("failed");
            let first = *first_failed.get_or_insert(now);
            let failing_for =
                Duration::from_micros((now.as_micros() - first.as_micros()).max(0) as u64);
            if failing_for >= self.settings.retry_for {
                let parked = notify::Parked {
                    seq,
                    attempts,
                    first_failed_at: first,
                    last_failed_at: now,
                    last_error: error.clone(),
                };
                match self.with_store(|store| store.park(cursor, &parked)) {
                    Ok(()) => counted("parked"),
                    Err(store_error) => {
                        tracing::error!(seq, %store_error, "push cannot park a change")
                    }
                }
                tracing::warn!(seq, attempts, %error, "push gave up on a change after --notify-retry-for; parked (GET /notify/failed, replay sends it again)");
                return;
            }
            let wait = jitter(backoff).min(self.settings.retry_for.saturating_sub(failing_for));
            tracing::warn!(seq, attempts, %error, retry_in_ms = wait.as_millis() as u64, "push delivery failed; retrying");
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let mut stopping = self.status.watch_changes();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.replayed.notified() => {}
                _ = async { while !self.status.is_stopped() { if stopping.changed().await.is_err() { break } } } => {}
            }
            if self.status.is_stopped() || self.replay_pending.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

/// How often an instance that does not deliver (PostgreSQL: another holds the
/// delivery lock) asks again: how long a dead deliverer's changes wait, at most.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// The nice value of the push thread: below lookups and ingestion when the CPU is
/// short (a flood of 10,000 changes on one core took 41 % of the lookups' throughput
/// at the same priority: docs/performance.md#push-flood), and still a tenth of a busy
/// core, so a backlog drains.
const PUSH_NICE: i32 = 10;

/// Lowers this thread's CPU priority (Linux: a thread's nice value is its own). A
/// failure only means push competes at the daemon's priority.
fn yield_to_lookups() {
    let tid = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(tid), PUSH_NICE) {
        tracing::debug!(%error, "push keeps the daemon's CPU priority");
    }
}

/// `wait` ± 25 %, so that many daemons (or one's retries) do not beat in step.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(rand::random_range(0.75..1.25))
}

fn counted(outcome: &'static str) {
    metrics::counter!("entitled_notify_deliveries_total", "outcome" => outcome).increment(1);
}
