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
//!
//! Here: the queue, the handles' end of it, and the writer thread. Each event's SQL is
//! in `ingest`; the sync thread is in `sync`.

use super::checkpoint::{Checkpointer, Thresholds};
use super::ingest::{ingest, report_clock, Effects};
use super::sync::{Committed, Flusher};
use super::StoreError;
use crate::adapty::{self, ReceivedEvent};
use crate::index::Index;
use crate::projection::{Event, Rules};
use crate::status::Status;
use crate::telemetry;
use crate::timestamp::Timestamp;
use rusqlite::{Connection, TransactionBehavior};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;
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

pub(super) enum Command {
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
pub struct Queue(pub(super) mpsc::Receiver<Command>);

pub(super) struct Ingest {
    pub(super) event: Box<ReceivedEvent>,
    pub(super) reply: oneshot::Sender<Reply>,
}

/// Everything the writer thread owns.
pub struct Writer {
    pub conn: Connection,
    pub index: Arc<Index>,
    pub status: Arc<Status>,
    pub rules: Arc<Rules>,
    pub decode: Arc<dyn Decode>,
    /// Where levels that lapsed while set to renew are sent once committed.
    pub lapses: Option<tokio::sync::mpsc::UnboundedSender<super::Lapse>>,
}

impl Writer {
    /// Starts the writer thread on the queue, and the sync thread behind it.
    pub fn start(self, queue: Queue) -> std::io::Result<JoinHandle<()>> {
        let mut flusher = Flusher::new(&self.conn, self.index.clone(), self.status.clone())
            .map_err(std::io::Error::other)?;
        flusher.lapses = self.lapses.clone();
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
/// numbered past the end of the file, bucket by bucket: docs/performance.md#writer-cache-size.
/// Past 1 GiB there is no scan, and the inserts' index pages want the larger cache.
fn cache_kib(pages: i64, page_size: i64) -> i64 {
    let pending_byte_page = (1 << 30) / page_size.max(512) + 1;
    if pages >= pending_byte_page {
        super::CACHE_KIB
    } else {
        16 * 1024
    }
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
            lapses: None,
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
