//! The sync thread behind the writer (the [`writer`](super::writer) module says what it
//! does and why): makes each committed batch durable, then lets the index, the change
//! feed and the handlers see it.

use super::ingest::{Effects, Lapse};
use super::writer::{Ingest, Outcome, Reply};
use super::StoreError;
use crate::index::Index;
use crate::status::Status;
use crate::telemetry;
use crate::timestamp::Timestamp;
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

/// A transaction the writer has finished, on its way to the sync thread.
pub(super) struct Committed {
    pub(super) batch: Vec<Ingest>,
    pub(super) result: Result<Vec<Reply>, StoreError>,
    pub(super) effects: Effects,
    pub(super) now: Timestamp,
    pub(super) elapsed: Duration,
}

/// The sync thread's work: makes commits durable, then lets the rest of the daemon
/// see them.
pub(super) struct Flusher {
    index: Arc<Index>,
    status: Arc<Status>,
    /// Where the clock's lapses go, once committed (verify-before-lapse), if anywhere.
    pub(super) lapses: Option<tokio::sync::mpsc::UnboundedSender<Lapse>>,
    /// The WAL to `fdatasync`, when the configured durability is `synchronous=FULL`;
    /// `None` at NORMAL (docs/reliability.md says what that risks).
    wal: Option<Wal>,
}

struct Wal {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Flusher {
    /// Takes the `fdatasync` out of the writer's connection: at FULL (or EXTRA) it is
    /// set to NORMAL, and this thread syncs the WAL instead.
    pub(super) fn new(
        conn: &Connection,
        index: Arc<Index>,
        status: Arc<Status>,
    ) -> Result<Flusher, StoreError> {
        let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        let wal = match (synchronous >= 2, super::open::database_file(conn)) {
            (true, Some(path)) => {
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                Some(Wal {
                    path: super::open::wal_path(path),
                    file: None,
                })
            }
            // An in-memory database has nothing to sync.
            _ => None,
        };
        Ok(Flusher {
            index,
            status,
            lapses: None,
            wal,
        })
    }

    pub(super) fn run(mut self, committed: std_mpsc::Receiver<Committed>) {
        while let Ok(first) = committed.recv() {
            let mut ready = vec![first];
            ready.extend(committed.try_iter());
            if ready.iter().any(|c| c.result.is_ok()) {
                self.sync();
            }
            for c in ready {
                self.release(c);
            }
        }
    }

    /// One `fdatasync` of the WAL covers every commit written before it.
    pub(super) fn sync(&mut self) {
        let Some(wal) = &mut self.wal else {
            return;
        };
        let synced = match &wal.file {
            Some(file) => file.sync_data(),
            // This process may have created the WAL: its first sync takes the directory
            // entry too, or the events acknowledged here would hang on an entry not yet
            // on disk.
            None => super::open::open_and_sync_wal(&wal.path).map(|file| wal.file = Some(file)),
        };
        if let Err(error) = synced {
            // After a failed fsync the kernel may have dropped the pages it could not
            // write while SQLite still counts them committed: going on could answer
            // from rows the disk does not have. Stop at once, unanswered; the restart
            // reads what the disk holds, and Adapty sends the rest again.
            tracing::error!(
                wal = %wal.path.display(),
                %error,
                "cannot sync the WAL; stopping before anything is acknowledged"
            );
            std::process::abort();
        }
    }

    /// The index, the change feed's watchers, the answers.
    pub(super) fn release(&self, committed: Committed) {
        let Committed {
            batch,
            result,
            effects,
            now,
            elapsed,
        } = committed;
        let size = batch.len();
        match result {
            Ok(replies) => {
                self.index.apply(effects.index);
                if let Some(lapses) = &self.lapses {
                    for lapse in effects.lapses {
                        let _ = lapses.send(lapse);
                    }
                }
                let stored = replies
                    .iter()
                    .filter(|r| matches!(r, Ok(Outcome::Stored | Outcome::Ignored)))
                    .count();
                // Only a transaction that wrote proves the disk takes writes again: the
                // clock's empty ticks commit even on a full disk.
                if stored > 0 || effects.newest_change.is_some() {
                    self.status.record_commit((stored > 0).then_some(now));
                }
                if let Some(seq) = effects.newest_change {
                    self.status.record_change(seq);
                }
                if let Some(seq) = effects.newest_event {
                    self.status.release_events(seq);
                }
                if size > 0 {
                    tracing::debug!(
                        size,
                        stored,
                        elapsed_ms = elapsed.as_secs_f64() * 1e3,
                        "batch committed"
                    );
                }
                for (command, reply) in batch.into_iter().zip(replies) {
                    match &reply {
                        Ok(Outcome::Stored | Outcome::Ignored) => telemetry::event_stored(
                            command.event.event.event_type.map(|t| t.name()),
                        ),
                        Ok(Outcome::Duplicate) => {}
                        Err(error) => tracing::error!(
                            profile_event_id = %command.event.event.id,
                            error = %error,
                            "event not stored"
                        ),
                    }
                    // The handler may have given up waiting; the event is stored anyway.
                    let _ = command.reply.send(reply);
                }
            }
            Err(error) => {
                tracing::error!(size, error = %error, "batch rolled back; Adapty will retry");
                self.status.record_failure(error.to_string());
                let error = Arc::new(error);
                for command in batch {
                    let _ = command.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Synchronous;

    /// At FULL the sync leaves the writer's `COMMIT` for the sync thread; at NORMAL
    /// nobody syncs the WAL at commit.
    #[test]
    fn full_durability_is_the_sync_threads_job() {
        let dir = tempfile::tempdir().unwrap();
        let synchronous = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap()
        };
        let path = dir.path().join("full.db");
        let (conn, _lock) = crate::store::open(&path, Synchronous::Full).unwrap();
        let flusher = Flusher::new(&conn, Arc::new(Index::new()), Arc::new(Status::new())).unwrap();
        assert_eq!(synchronous(&conn), 1); // NORMAL
        let wal = flusher.wal.expect("at FULL the sync thread syncs the WAL");
        assert_eq!(wal.path, dir.path().join("full.db-wal"));

        let (conn, _lock) =
            crate::store::open(&dir.path().join("normal.db"), Synchronous::Normal).unwrap();
        let flusher = Flusher::new(&conn, Arc::new(Index::new()), Arc::new(Status::new())).unwrap();
        assert_eq!(synchronous(&conn), 1);
        assert!(flusher.wal.is_none());
    }
}
