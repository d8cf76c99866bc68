//! The one writer: a thread that owns the write connection, and a sync thread behind it.
//!
//! Handlers send an event with a oneshot for the answer. The writer takes the first
//! command, drains what else is waiting, and runs them all in one `BEGIN IMMEDIATE`
//! transaction with a savepoint per event (one failing event rolls back alone), and
//! commits once (group commit). It hands the committed batch to the sync thread and
//! starts on the next batch at once.
//!
//! The sync thread `fdatasync`s the WAL (once for every batch that is waiting), *then*
//! updates the index, wakes the change feed and answers. So an answer always means
//! "committed and on disk", and the index and `GET /changes` only ever show what is.
//! This is SQLite's `synchronous=FULL` (which syncs the WAL inside each `COMMIT`),
//! with the sync taken out of the writer's path: the writer's connection runs at
//! `synchronous=NORMAL` and the next batch's SQL runs during this batch's sync.
//! A commit that was written but not yet synced when the power goes is lost, and was
//! never acknowledged: Adapty sends it again.

use super::checkpoint::{Checkpointer, Thresholds};
use super::{record_change, ChangeReason, StoreError};
use crate::adapty::{self, ReceivedEvent};
use crate::index::{Change, Index};
use crate::projection::{self, Event, Rules};
use crate::status::Status;
use crate::telemetry;
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection, TransactionBehavior};
use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How many events one transaction takes at most.
pub const MAX_BATCH: usize = 512;
/// How many events may wait for the writer before handlers are told to come back.
pub const QUEUE_CAPACITY: usize = 4096;
/// How many committed batches may wait for the sync thread before the writer waits.
const SYNC_QUEUE: usize = 16;

/// What became of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored, and folded into the projection.
    Stored,
    /// Stored; it touches no access level (an unknown or annotation-only type, an
    /// ignored sandbox event, a consumable).
    Ignored,
    /// Its `profile_event_id` was stored before: nothing changed.
    Duplicate,
}

/// The writer's answer; the error is shared by every event of a failed batch.
pub type Reply = Result<Outcome, Arc<StoreError>>;

/// Re-reads a stored body as an event, for refolding a level from the log. In the
/// daemon and the tools it is [`adapty::Decoder`]; tests may decode otherwise.
pub trait Decode: Send + Sync {
    fn decode(&self, body: &str) -> Option<Event>;
}

impl Decode for adapty::Decoder {
    fn decode(&self, body: &str) -> Option<Event> {
        adapty::Decoder::decode(self, body)
    }
}

impl<F: Fn(&str) -> Option<Event> + Send + Sync> Decode for F {
    fn decode(&self, body: &str) -> Option<Event> {
        self(body)
    }
}

enum Command {
    Ingest {
        event: Box<ReceivedEvent>,
        reply: oneshot::Sender<Reply>,
    },
    /// Report what the clock changed (expiries) even when no event comes.
    Tick,
    /// Commit what was sent before, checkpoint, and stop.
    Stop,
}

/// The handlers' end of the writer. Cloning is cheap; the writer stops (after
/// committing everything already sent) when the last clone is dropped.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
}

/// Why an event was not handed to the writer.
#[derive(Debug)]
pub enum SendError {
    /// The queue stayed full: the store is slower than the load.
    Saturated,
    /// The writer has stopped (shutting down).
    Stopped,
}

impl WriterHandle {
    /// Queues an event, waiting at most until `deadline` for room.
    pub async fn send(
        &self,
        event: Box<ReceivedEvent>,
        deadline: tokio::time::Instant,
    ) -> Result<oneshot::Receiver<Reply>, SendError> {
        let (reply, answer) = oneshot::channel();
        match tokio::time::timeout_at(deadline, self.tx.send(Command::Ingest { event, reply }))
            .await
        {
            Ok(Ok(())) => Ok(answer),
            Ok(Err(_)) => Err(SendError::Stopped),
            Err(_) => Err(SendError::Saturated),
        }
    }

    /// Queues an event from a thread outside any runtime (`entitled import`).
    pub fn send_blocking(
        &self,
        event: Box<ReceivedEvent>,
    ) -> Result<oneshot::Receiver<Reply>, SendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .blocking_send(Command::Ingest { event, reply })
            .map_err(|_| SendError::Stopped)?;
        Ok(answer)
    }

    /// Stops the writer from a thread outside any runtime.
    pub fn stop_blocking(&self) {
        let _ = self.tx.blocking_send(Command::Stop);
    }

    /// Asks the writer to report what the clock changed; skipped when it is busy (the
    /// next batch reports it anyway).
    pub fn tick(&self) {
        let _ = self.tx.try_send(Command::Tick);
    }

    /// Asks the writer to commit everything sent before this call and stop; join its
    /// thread to wait for that.
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }
}

/// The writer's queue, before its thread starts: handlers may hold the handle (and
/// be told to come back) while the index warms.
pub fn queue() -> (WriterHandle, Queue) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    (WriterHandle { tx }, Queue(rx))
}

/// The receiving end of [`queue`].
pub struct Queue(mpsc::Receiver<Command>);

struct Ingest {
    event: Box<ReceivedEvent>,
    reply: oneshot::Sender<Reply>,
}

/// Everything the writer thread owns.
pub struct Writer {
    pub conn: Connection,
    pub index: Arc<Index>,
    pub status: Arc<Status>,
    pub rules: Arc<Rules>,
    pub decode: Arc<dyn Decode>,
}

impl Writer {
    /// Starts the writer thread on the queue, and the sync thread behind it.
    pub fn start(self, queue: Queue) -> std::io::Result<JoinHandle<()>> {
        let flusher = Flusher::new(&self.conn, self.index.clone(), self.status.clone())
            .map_err(std::io::Error::other)?;
        let (to_sync, committed) = std_mpsc::sync_channel(SYNC_QUEUE);
        let sync = std::thread::Builder::new()
            .name("entitled-sync".into())
            .spawn(move || flusher.run(committed))?;
        std::thread::Builder::new()
            .name("entitled-writer".into())
            .spawn(move || self.run(queue.0, to_sync, sync))
    }

    fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        to_sync: std_mpsc::SyncSender<Committed>,
        sync: JoinHandle<()>,
    ) {
        let checkpointer = Checkpointer::start(&mut self.conn, Thresholds::default())
            .inspect_err(|error| {
                tracing::warn!(%error, "checkpoints stay in the writer's commits");
            })
            .ok();
        let mut cache_final = self.size_cache();
        let mut batches = 0u32;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut stopping = false;
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            let mut tick = false;
            while let Some(command) = next.take() {
                match command {
                    Command::Ingest { event, reply } => batch.push(Ingest { event, reply }),
                    Command::Tick => tick = true,
                    Command::Stop => {
                        // Refuse new events; what is already queued still commits.
                        rx.close();
                        stopping = true;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() || tick {
                let committed = self.commit_batch(std::mem::take(&mut batch));
                batches = batches.wrapping_add(1);
                if !cache_final && batches.is_multiple_of(1024) {
                    cache_final = self.size_cache();
                }
                if to_sync.send(committed).is_err() {
                    // The sync thread is gone (it only ends when this sender drops, or
                    // by a panic): nothing more can be acknowledged.
                    tracing::error!("the sync thread stopped; the writer stops");
                    break;
                }
            }
            if stopping && rx.is_empty() {
                break;
            }
        }
        // The last batches are synced and answered, and the checkpoint thread stopped
        // (dropping it joins it), before the final checkpoint.
        drop(to_sync);
        let _ = sync.join();
        drop(checkpointer);
        // Fold the WAL into the main file so a copy of entitled.db alone is complete.
        // A reader (a backup, Litestream) can hold it back; that loses nothing.
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            });
        match checkpoint {
            Ok((0, _, _)) => tracing::info!("writer stopped; WAL checkpointed"),
            Ok((_, wal_pages, done)) => tracing::info!(
                wal_pages,
                checkpointed = done,
                "writer stopped; a reader kept part of the WAL (nothing is lost: it is replayed at next open)"
            ),
            Err(error) => tracing::warn!(%error, "writer stopped; WAL checkpoint failed (nothing is lost)"),
        }
    }

    /// Sizes the page cache for the file as it is now (see [`cache_kib`]); `true` once
    /// the size is final. A failure keeps the size it had: only speed depends on it.
    fn size_cache(&self) -> bool {
        let sized = (|| -> rusqlite::Result<bool> {
            let page_size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let kib = cache_kib(pages, page_size);
            self.conn.pragma_update(None, "cache_size", -kib)?;
            Ok(kib == super::CACHE_KIB)
        })();
        sized.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot size the writer's page cache");
            false
        })
    }

    /// One transaction: every event of the batch (a savepoint each), then what the
    /// clock changed; commit. What the commit means for the index, the change feed
    /// and the handlers is for [`Flusher::release`], once the commit is on disk.
    fn commit_batch(&mut self, batch: Vec<Ingest>) -> Committed {
        let started = Instant::now();
        let size = batch.len();
        let now = Timestamp::now();
        let mut effects = Effects::default();
        let result = (|| -> Result<Vec<Reply>, StoreError> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut replies = Vec::with_capacity(size);
            for command in &batch {
                let mut event_effects = Effects::default();
                // A savepoint each, through cached statements: rusqlite's `Savepoint`
                // prepares SAVEPOINT and RELEASE anew every time (~8k instructions).
                tx.prepare_cached("SAVEPOINT event")?.execute([])?;
                let reply = ingest(
                    &tx,
                    &command.event,
                    now,
                    &self.rules,
                    &*self.decode,
                    &mut event_effects,
                )
                .map_err(Arc::new);
                if reply.is_ok() {
                    effects.absorb(event_effects);
                } else {
                    tx.prepare_cached("ROLLBACK TO event")?.execute([])?;
                }
                tx.prepare_cached("RELEASE event")?.execute([])?;
                replies.push(reply);
            }
            report_clock(&tx, now, &mut effects)?;
            tx.commit()?;
            Ok(replies)
        })();
        let elapsed = started.elapsed();
        if size > 0 {
            telemetry::writer_batch(size, elapsed.as_secs_f64());
        }
        Committed {
            batch,
            result,
            effects,
            now,
            elapsed,
        }
    }
}

/// The writer's page cache, in KiB, for a file of `pages` pages of `page_size` bytes.
///
/// While the file is under 1 GiB, SQLite scans its whole page cache at each commit
/// that split a b-tree page: `balance_nonroot` renumbers pages through the
/// pending-byte page (the page at 1 GiB), and the commit then drops every cached page
/// numbered past the end of the file, bucket by bucket. Under ingest that scan was 11 %
/// of the daemon's CPU with 64 MiB of cache, and 4 % with 16 MiB (perf, `--only-ingest`).
/// Past 1 GiB there is no scan, and the inserts' index pages want the larger cache.
fn cache_kib(pages: i64, page_size: i64) -> i64 {
    let pending_byte_page = (1 << 30) / page_size.max(512) + 1;
    if pages >= pending_byte_page {
        super::CACHE_KIB
    } else {
        16 * 1024
    }
}

/// A transaction the writer has finished, on its way to the sync thread.
struct Committed {
    batch: Vec<Ingest>,
    result: Result<Vec<Reply>, StoreError>,
    effects: Effects,
    now: Timestamp,
    elapsed: Duration,
}

/// The sync thread's work: makes commits durable, then lets the rest of the daemon
/// see them.
struct Flusher {
    index: Arc<Index>,
    status: Arc<Status>,
    /// The WAL to `fdatasync`, when the configured durability is `synchronous=FULL`;
    /// `None` at NORMAL (the README says what that risks).
    wal: Option<Wal>,
}

struct Wal {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Flusher {
    /// Takes the `fdatasync` out of the writer's connection: at FULL (or EXTRA) it is
    /// set to NORMAL, and this thread syncs the WAL instead.
    fn new(
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
        Ok(Flusher { index, status, wal })
    }

    fn run(mut self, committed: std_mpsc::Receiver<Committed>) {
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
    fn sync(&mut self) {
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
    fn release(&self, committed: Committed) {
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

/// What a transaction changed that others must learn once it commits.
#[derive(Default)]
struct Effects {
    index: Vec<Change>,
    newest_change: Option<i64>,
    newest_event: Option<i64>,
}

impl Effects {
    fn absorb(&mut self, other: Effects) {
        self.index.extend(other.index);
        self.newest_change = self.newest_change.max(other.newest_change);
        self.newest_event = self.newest_event.max(other.newest_event);
    }
}

/// Stores one event and folds it in. `effects` collects what the index and the
/// change feed's watchers must learn once the transaction commits.
fn ingest(
    conn: &Connection,
    received: &ReceivedEvent,
    now: Timestamp,
    rules: &Rules,
    decode: &dyn Decode,
    effects: &mut Effects,
) -> Result<Outcome, StoreError> {
    let event = &received.event;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO events (profile_event_id, profile_id, customer_user_id, event_type, \
             canonical_type, event_datetime, received_at, environment, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (profile_id, profile_event_id) DO NOTHING",
        )?
        .execute(params![
            &*event.id,
            &*event.profile_id,
            event.customer_user_id.as_deref(),
            received.received_type,
            event.event_type.map(|t| t.name()),
            event.event_datetime.to_rfc3339(),
            now.to_rfc3339(),
            event.environment.as_deref(),
            received.body,
        ])?;
    if inserted == 0 {
        return Ok(Outcome::Duplicate);
    }
    effects.newest_event = Some(conn.last_insert_rowid());
    record_profile(conn, event, &mut effects.index)?;
    let (Some(level), Some(event_type)) = (rules.level_of(event), event.event_type) else {
        return Ok(Outcome::Ignored);
    };
    let saved = super::entitlement(conn, &event.profile_id, &level)?;
    let (saved, reported) = match saved {
        Some(row) => (Some(row.entitlement), row.reported_active),
        None => (None, false),
    };
    let next = projection::fold_arrival(saved.clone(), event, || {
        level_log(conn, event, &level, rules, decode)
    })?;
    let active_now = next.as_ref().is_some_and(|e| e.window.grants_at(now));
    if active_now != reported {
        let reason = ChangeReason::Event {
            event_type,
            profile_event_id: &event.id,
        };
        let expires_at = next.as_ref().and_then(|e| e.window.expires_at);
        let seq = record_change(
            conn,
            &event.profile_id,
            &level,
            active_now,
            reason,
            expires_at,
            now,
        )?;
        effects.newest_change = Some(seq);
    }
    if next == saved && active_now == reported {
        return Ok(Outcome::Stored);
    }
    match &next {
        Some(entitlement) => {
            super::save_entitlement(conn, &event.profile_id, &level, entitlement, active_now)?
        }
        None => {
            conn.prepare_cached(
                "DELETE FROM entitlements WHERE profile_id = ?1 AND access_level_id = ?2",
            )?
            .execute(params![&*event.profile_id, &*level])?;
        }
    }
    if next != saved {
        effects.index.push(Change::Level {
            profile_id: event.profile_id.clone(),
            access_level_id: level,
            entitlement: next,
        });
    }
    Ok(Outcome::Stored)
}

/// Reports the levels the clock flipped since the feed last spoke of them: an
/// `expires_at` passed, or a `starts_at` came, with no event.
fn report_clock(
    conn: &Connection,
    now: Timestamp,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    for row in super::due_for_clock(conn, now)? {
        let active = !row.reported_active;
        let reason = if active {
            ChangeReason::Started
        } else {
            ChangeReason::Expired
        };
        let seq = record_change(
            conn,
            &row.profile_id,
            &row.access_level_id,
            active,
            reason,
            row.entitlement.window.expires_at,
            now,
        )?;
        super::set_reported(conn, &row.profile_id, &row.access_level_id, active)?;
        effects.newest_change = Some(seq);
    }
    Ok(())
}

/// Every stored event of one level of `event`'s profile, `event` included, for
/// refolding the level when an event arrives out of order or the level has no saved
/// state. Only the other events are read back and parsed: `event` is parsed already,
/// and the first event of a new profile (the common case) reads nothing.
fn level_log(
    conn: &Connection,
    event: &Event,
    level: &str,
    rules: &Rules,
    decode: &dyn Decode,
) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT body FROM events WHERE profile_id = ?1 AND profile_event_id <> ?2",
    )?;
    let mut rows = stmt.query(params![&*event.profile_id, &*event.id])?;
    let mut events = vec![event.clone()];
    while let Some(row) = rows.next()? {
        let body: String = row.get(0)?;
        let logged = decode.decode(&body).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a stored event of profile {} no longer parses",
                event.profile_id
            ))
        })?;
        if rules.level_of(&logged).as_deref() == Some(level) {
            events.push(logged);
        }
    }
    Ok(events)
}

/// Keeps `profiles` current: every profile seen has a row, carrying the
/// `customer_user_id` of its newest event that had one (by `event_datetime`, then
/// `profile_event_id`), whatever order they came in.
fn record_profile(
    conn: &Connection,
    event: &Event,
    changes: &mut Vec<Change>,
) -> Result<(), StoreError> {
    let Some(customer_user_id) = &event.customer_user_id else {
        conn.prepare_cached(
            "INSERT INTO profiles (profile_id) VALUES (?1) ON CONFLICT DO NOTHING",
        )?
        .execute(params![&*event.profile_id])?;
        return Ok(());
    };
    let updated = conn
        .prepare_cached(
            "INSERT INTO profiles (profile_id, customer_user_id, customer_user_id_at, customer_user_id_event) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (profile_id) DO UPDATE SET \
               customer_user_id = excluded.customer_user_id, \
               customer_user_id_at = excluded.customer_user_id_at, \
               customer_user_id_event = excluded.customer_user_id_event \
             WHERE profiles.customer_user_id_at IS NULL \
                OR (excluded.customer_user_id_at, excluded.customer_user_id_event) \
                   > (profiles.customer_user_id_at, profiles.customer_user_id_event)",
        )?
        .execute(params![
            &*event.profile_id,
            &**customer_user_id,
            event.event_datetime.to_rfc3339(),
            &*event.id,
        ])?;
    if updated > 0 {
        changes.push(Change::CustomerUserId {
            profile_id: event.profile_id.clone(),
            customer_user_id: customer_user_id.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapty::{self, EventNames, Webhook};
    use crate::store::Synchronous;

    fn received(profile_id: &str, id: &str, at: &str) -> Box<ReceivedEvent> {
        let body = serde_json::json!({
            "profile_id": profile_id,
            "event_type": "subscription_renewed",
            "event_datetime": at,
            "event_properties": {
                "profile_event_id": id,
                "subscription_expires_at": "2031-04-05T09:10:11.000000+0000"
            }
        });
        match adapty::parse(body.to_string().as_bytes(), &EventNames::default()) {
            Ok(Webhook::Event(received)) => received,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_page_cache_grows_once_the_file_passes_1_gib() {
        let pages_in_1_gib = (1 << 30) / 4096;
        assert_eq!(cache_kib(1, 4096), 16 * 1024);
        assert_eq!(cache_kib(pages_in_1_gib, 4096), 16 * 1024);
        assert_eq!(cache_kib(pages_in_1_gib + 1, 4096), 64 * 1024);
        assert_eq!(cache_kib(20_000, 65536), 64 * 1024);
    }

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

    /// One failing event of a batch rolls back to its own savepoint: the others in the
    /// same transaction commit, and the failed one leaves no trace.
    #[test]
    fn a_failing_event_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        // Bodies of profile "poisoned" stop decoding after they are stored (as after a
        // bad upgrade), so refolding that profile fails.
        let decode: Arc<dyn Decode> = Arc::new(|body: &str| {
            (!body.contains("poisoned"))
                .then(|| adapty::Decoder::new(EventNames::default()).decode(body))
                .flatten()
        });
        let mut writer = Writer {
            conn: crate::store::open(&path, Synchronous::Full).unwrap().0,
            index: Arc::new(Index::new()),
            status: Arc::new(Status::new()),
            rules: Arc::new(Rules::default()),
            decode,
        };
        let mut flusher =
            Flusher::new(&writer.conn, writer.index.clone(), writer.status.clone()).unwrap();
        let mut run = |events: Vec<Box<ReceivedEvent>>| {
            let (mut batch, mut answers) = (Vec::new(), Vec::new());
            for event in events {
                let (reply, answer) = oneshot::channel();
                batch.push(Ingest { event, reply });
                answers.push(answer);
            }
            let committed = writer.commit_batch(batch);
            flusher.sync();
            flusher.release(committed);
            answers
                .into_iter()
                .map(|mut a| a.try_recv().unwrap().map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        };
        let later = "2031-03-06T09:10:11.000000+0000";
        let earlier = "2031-03-04T09:10:11.000000+0000";
        assert_eq!(
            run(vec![received("poisoned", "a", later)]),
            [Ok(Outcome::Stored)]
        );
        // "b" arrives out of order, so its level is refolded from the log: it fails.
        let replies = run(vec![
            received("poisoned", "b", earlier),
            received("healthy", "c", later),
        ]);
        assert!(replies[0]
            .as_ref()
            .is_err_and(|e| e.contains("no longer parses")));
        assert_eq!(replies[1], Ok(Outcome::Stored));
        let conn = rusqlite::Connection::open(&path).unwrap();
        let ids: Vec<String> = conn
            .prepare("SELECT profile_event_id FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, ["a", "c"]);
        let last: Vec<String> = conn
            .prepare("SELECT last_event_id FROM entitlements ORDER BY profile_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(last, ["c", "a"]);
    }
}
