//! The daemon's own state, as `/readyz` and `/metrics` report it.

use crate::timestamp::Timestamp;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub struct Status {
    warmed: AtomicBool,
    stopped: AtomicBool,
    /// The last write's failure, cleared by the next commit.
    store_failure: Mutex<Option<String>>,
    /// `received_at` of the newest stored event, in microseconds; 0: none.
    newest_received: AtomicI64,
}

impl Status {
    pub fn new() -> Self {
        Self::default()
    }

    /// The index holds every committed row: reads may be answered.
    pub fn set_warmed(&self) {
        self.warmed.store(true, Ordering::Release);
    }

    pub fn is_warmed(&self) -> bool {
        self.warmed.load(Ordering::Acquire)
    }

    pub fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }

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

    /// `Ok` when the database is open and its last write succeeded and the index is
    /// warm; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopped.load(Ordering::Acquire) {
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
            Some(failure) => Err(format!("the last write failed: {failure}")),
            None => Ok(()),
        }
    }
}
