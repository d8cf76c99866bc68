//! Checkpoints off the writer's path.
//!
//! SQLite's own auto-checkpoint runs inside the `COMMIT` that pushed the WAL past
//! 1000 pages: it copies those pages into the main file and `fsync`s both files, and
//! every event of that batch (and every handler waiting for the next one) waits for
//! it. Here a thread of its own does that copying, on its own connection, while the
//! writer goes on committing.
//!
//! A checkpoint that runs beside the writer rarely catches up with it completely, and
//! SQLite only starts the WAL over from its beginning when a write transaction starts
//! on a fully copied WAL. So the writer keeps a last word: once the WAL holds
//! [`Thresholds::restart`] pages, its commit copies what the thread has not copied yet
//! (a few pages), and the next transaction starts the WAL over. Without that the WAL
//! grows for as long as events come, and every page of a growing file costs the
//! kernel a fresh page to zero (docs/performance.md#checkpoint-thread).
//!
//! The thread copies in big steps, and in small ones just before the writer's copy. A
//! copy writes each page once however many commits changed it since the last copy, so
//! fewer, bigger copies write fewer pages (the index pages of random event ids change
//! in most batches); the small steps at the end keep the writer's own copy, which one
//! batch waits for, small.
//!
//! Nothing here decides durability: every commit is in the WAL, and synced, before it
//! is acknowledged; a checkpoint only moves committed pages to the main file. A failed
//! or skipped checkpoint loses nothing.

use super::StoreError;
use super::Synchronous;
use rusqlite::wal::CheckpointMode;
use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

/// When to copy the WAL into the main file, in WAL pages (frames).
///
/// The defaults were measured against other steps: docs/performance.md#checkpoint-steps.
/// The WAL file then takes up to ~160 MiB of disk while entitled runs (it is truncated
/// when it stops).
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// The thread copies once this many pages wait. SQLite's auto-checkpoint copies at
    /// 1000.
    pub step: u32,
    /// Within `step` of `restart`, the thread copies once this many pages wait, so that
    /// the writer's own copy at `restart` is small.
    pub last_step: u32,
    /// The writer finishes the copy itself at this WAL length (160 MiB of 4 KiB pages),
    /// so the WAL starts over. That copy, and its two `fsync`s, hold up one batch.
    pub restart: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            step: 2500,
            last_step: 250,
            restart: 40_000,
        }
    }
}

impl Thresholds {
    /// How many pages wait before the thread copies, with the WAL `frames` long.
    fn step_at(&self, frames: u32) -> u32 {
        let step = if frames.saturating_add(self.step) >= self.restart {
            self.last_step
        } else {
            self.step
        };
        step.max(1)
    }
}

/// What the writer's commits tell the thread.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Checkpoints the thread has run.
    copies: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct State {
    /// The WAL's length in pages after the newest commit the thread was told of.
    frames: u32,
    /// How many times the WAL started over from its first page.
    restarts: u64,
    stopped: bool,
}

/// The checkpoint thread; stops and is joined on [`Checkpointer::stop`] (or drop).
pub struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on a connection of its own to the writer's file, then installs
    /// the WAL hook on the writer's connection (it replaces SQLite's auto-checkpoint
    /// there).
    pub fn start(
        writer: &mut Connection,
        thresholds: Thresholds,
    ) -> Result<Checkpointer, StoreError> {
        let path = super::open::database_file(writer)
            .ok_or_else(|| StoreError::Corrupt("the writer's database has no file".into()))?;
        // The thread's connection does the copying. At NORMAL, as at FULL, SQLite syncs
        // the WAL before a copy and the main file after it; FULL adds only the sync at
        // each commit, and this connection never commits.
        let conn = super::open::connect(path, Synchronous::Normal)?;
        let shared = Arc::new(Shared::default());
        let ours = shared.clone();
        let thread = std::thread::Builder::new()
            .name("entitled-checkpoint".into())
            .spawn(move || run(&conn, &ours, thresholds))
            .map_err(|e| StoreError::Corrupt(format!("cannot start the checkpoint thread: {e}")))?;
        let checkpointer = Checkpointer {
            shared: shared.clone(),
            thread: Some(thread),
        };
        let mut told = 0u32;
        writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames| {
            let frames = u32::try_from(frames).unwrap_or(0);
            // Wake the thread only when the WAL crossed a step or started over: a
            // wake-up at every commit is a context switch on the core the lookups use.
            let restarted = frames < told;
            let step = thresholds.step_at(frames);
            if restarted || frames / step > told / step {
                let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.frames = frames;
                state.restarts += u64::from(restarted);
                drop(state);
                shared.wake.notify_one();
            }
            told = frames;
            if frames >= thresholds.restart {
                // Busy when the thread is copying right now: the next commit tries again.
                if let Err(error) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    tracing::debug!(%error, "writer's checkpoint skipped");
                }
            }
            Ok(())
        }))?;
        Ok(checkpointer)
    }

    /// Stops the thread after the copy in progress, if any, and waits for it.
    pub fn stop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stopped = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// How many checkpoints the thread has run.
    #[cfg(test)]
    fn copies(&self) -> u64 {
        self.shared.copies.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(conn: &Connection, shared: &Shared, thresholds: Thresholds) {
    // How far into the WAL the last copy went, in the WAL as of `restarts`.
    let (mut copied, mut restarts) = (0u32, 0u64);
    loop {
        let frames = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if state.stopped {
                    return;
                }
                if state.restarts != restarts {
                    (copied, restarts) = (0, state.restarts);
                }
                // Past the restart threshold the copy is the writer's: a copy here would
                // hold the checkpoint lock and make the writer's fail (busy), over and
                // over, while the WAL grows.
                let frames = state.frames;
                if frames.saturating_sub(copied) >= thresholds.step_at(frames)
                    && frames < thresholds.restart
                {
                    break frames;
                }
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        shared.copies.fetch_add(1, Ordering::Relaxed);
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            // It may have copied past `frames`: what the writer committed meanwhile.
            Ok((_, done)) => copied = u32::try_from(done).unwrap_or(frames).max(frames),
            Err(error) => {
                // Busy (the writer's own copy), or a transient I/O error: the pages stay
                // in the WAL, nothing is lost; try again at the next step.
                tracing::debug!(%error, "checkpoint skipped");
                copied = frames;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn wal_len(path: &Path) -> u64 {
        std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    /// Commits `n` transactions of a few new pages each through `conn`.
    fn commit_pages(conn: &Connection, n: usize) {
        for i in 0..n {
            conn.execute(
                "INSERT INTO access_changes (profile_id, access_level_id, active, reason, changed_at) \
                 VALUES (?1, 'premium', 1, 'rebuild', '2031-01-01T00:00:00.000000Z')",
                [format!("{i:0>3000}")],
            )
            .unwrap();
        }
    }

    /// Big steps, then small ones in the last big step before the writer's copy; never
    /// a step of zero pages (the thread would copy at every wake-up).
    #[test]
    fn the_steps_shrink_just_before_the_writers_copy() {
        let thresholds = Thresholds {
            step: 100,
            last_step: 10,
            restart: 400,
        };
        let steps: Vec<u32> = [0, 150, 299, 300, 350, 399, 400, 5000]
            .into_iter()
            .map(|frames| thresholds.step_at(frames))
            .collect();
        assert_eq!(steps, [100, 100, 100, 10, 10, 10, 10, 10]);
        let zero = Thresholds {
            step: 0,
            last_step: 0,
            restart: 400,
        };
        assert_eq!(zero.step_at(0), 1);
        assert_eq!(zero.step_at(400), 1);
    }

    /// The thread copies the WAL into the main file while the writer keeps committing,
    /// with no copy of the writer's own (its restart threshold is never reached).
    #[test]
    fn the_thread_copies_the_wal_into_the_main_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let (mut writer, _lock) = super::super::open(&path, Synchronous::Normal).unwrap();
        let main_before = std::fs::metadata(&path).unwrap().len();
        let thresholds = Thresholds {
            step: 20,
            last_step: 20,
            restart: u32::MAX,
        };
        let mut checkpointer = Checkpointer::start(&mut writer, thresholds).unwrap();
        commit_pages(&writer, 200);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() < main_before + 100 * 4096 {
            assert!(
                std::time::Instant::now() < deadline,
                "the main file did not grow: nothing was checkpointed"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        checkpointer.stop();
    }

    /// A reader's snapshot (a backup, Litestream) stops every copy short of the WAL's
    /// end; the thread still copies once a step, not over and over.
    #[test]
    fn a_reader_holding_the_wal_back_does_not_make_the_thread_spin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let (mut writer, _lock) = super::super::open(&path, Synchronous::Normal).unwrap();
        commit_pages(&writer, 1);
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM access_changes", [], |r| r.get(0))
            .unwrap();
        let thresholds = Thresholds {
            step: 20,
            last_step: 20,
            restart: u32::MAX,
        };
        let checkpointer = Checkpointer::start(&mut writer, thresholds).unwrap();
        commit_pages(&writer, 200);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let frames = wal_len(&path) / (4096 + 24);
        // One copy a step crossed, and a few for the timing.
        let most = frames / 20 + 5;
        assert!(
            checkpointer.copies() <= most,
            "{} copies for {frames} WAL pages",
            checkpointer.copies()
        );
        reader.execute_batch("COMMIT").unwrap();
    }

    /// The WAL's length after `commits` transactions of a few pages each, with the
    /// thread copying beside the writer.
    fn wal_after_commits(thresholds: Thresholds, commits: usize) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        let (mut writer, _lock) = super::super::open(&path, Synchronous::Normal).unwrap();
        let _checkpointer = Checkpointer::start(&mut writer, thresholds).unwrap();
        commit_pages(&writer, commits);
        let count: i64 = writer
            .query_row("SELECT count(*) FROM access_changes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, commits as i64);
        wal_len(&path)
    }

    /// With the thread copying beside it, the writer's last word still starts the WAL
    /// over; without it, the WAL holds most of what was ever written. (6,000 commits:
    /// with 2,000 it failed once on a machine loaded three times over, the thread
    /// holding the copy while hundreds of commits grew the WAL before the writer's
    /// turn; the file keeps its largest size.)
    #[test]
    fn the_wal_starts_over_under_a_steady_stream_of_commits() {
        let (step, commits) = (10, 6000);
        let restarting = wal_after_commits(
            Thresholds {
                step,
                last_step: step,
                restart: 40,
            },
            commits,
        );
        let growing = wal_after_commits(
            Thresholds {
                step,
                last_step: step,
                restart: u32::MAX,
            },
            commits,
        );
        assert!(
            restarting * 3 < growing,
            "WAL {restarting} bytes, against {growing} with no restart"
        );
    }
}
