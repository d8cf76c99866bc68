//! The daemon's own state, as `/readyz` and `/metrics` report it.

use crate::timestamp::Timestamp;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::sync::watch;

pub struct Status {
    warmed: AtomicBool,
    stopped: AtomicBool,
    /// The last write's failure, cleared by the next commit.
    store_failure: Mutex<Option<String>>,
    /// `received_at` of the newest stored event, in microseconds; 0: none.
    newest_received: AtomicI64,
    /// The newest committed `access_changes.seq`: long-polls wait on it.
    newest_change: watch::Sender<i64>,
    /// The newest `events.seq` synced and answered: what reads of the log may show.
    released_event: AtomicI64,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            warmed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            store_failure: Mutex::new(None),
            newest_received: AtomicI64::new(0),
            newest_change: watch::Sender::new(0),
            released_event: AtomicI64::new(0),
        }
    }
}

impl Status {
    pub fn new() -> Self {
        Self::default()
    }

    /// A change was committed to the feed.
    pub fn record_change(&self, seq: i64) {
        self.newest_change.send_if_modified(|newest| {
            let newer = seq > *newest;
            *newest = (*newest).max(seq);
            newer
        });
    }

    /// The index changed without a newer feed row: wakes the watchers all the same
    /// (`wait_for` re-reads the index). PostgreSQL's follower needs it: it may see a feed
    /// row committed by a transaction whose rows its index shows only at a later read.
    pub fn index_changed(&self) {
        self.newest_change.send_modify(|_| {});
    }

    /// Events up to `seq` are on disk and answered.
    pub fn release_events(&self, seq: i64) {
        self.released_event.fetch_max(seq, Ordering::AcqRel);
    }

    /// The newest `events.seq` on disk and answered (0: none).
    pub fn released_event(&self) -> i64 {
        self.released_event.load(Ordering::Acquire)
    }

    /// The newest `access_changes.seq` committed and released.
    pub fn newest_change(&self) -> i64 {
        *self.newest_change.borrow()
    }

    /// Wakes when a change newer than the one seen is committed.
    pub fn watch_changes(&self) -> watch::Receiver<i64> {
        self.newest_change.subscribe()
    }

    /// The index holds every committed row: reads may be answered.
    pub fn set_warmed(&self) {
        self.warmed.store(true, Ordering::Release);
    }

    pub fn is_warmed(&self) -> bool {
        self.warmed.load(Ordering::Acquire)
    }

    /// Shutdown has begun: not ready, and every long poll is woken to answer now
    /// rather than hold the drain up for its whole wait.
    pub fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
        self.newest_change.send_modify(|_| {});
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// A transaction that wrote has committed: the store takes writes, whatever failed
    /// before.
    pub fn record_commit(&self, newest_received: Option<Timestamp>) {
        if let Some(t) = newest_received {
            self.newest_received
                .fetch_max(t.as_micros(), Ordering::AcqRel);
        }
        *self
            .store_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub fn record_failure(&self, failure: String) {
        *self
            .store_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(failure);
    }

    pub fn newest_received(&self) -> Option<Timestamp> {
        match self.newest_received.load(Ordering::Acquire) {
            0 => None,
            micros => Some(Timestamp::from_micros(micros)),
        }
    }

    /// `Ok` when the database is open, its last write (and, on PostgreSQL, the follower's
    /// last read) succeeded, and the index is warm; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_stopped() {
            return Err("shutting down".into());
        }
        if !self.is_warmed() {
            return Err("warming the index from the database".into());
        }
        match &*self
            .store_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(failure) => Err(format!("the store failed: {failure}")),
            None => Ok(()),
        }
    }
}
