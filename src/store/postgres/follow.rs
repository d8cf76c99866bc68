//! Every instance's index follows the database: warmed at start, then kept current with
//! what any instance commits.
//!
//! **The horizon.** Each row a writer inserts or updates carries the writing
//! transaction's id (`written_xid`). The follower reads, in one snapshot, the oldest
//! transaction id still running (`pg_snapshot_xmin`, the *horizon*) and every row
//! written by a transaction between the last horizon and this one. Every transaction
//! below the horizon has ended, so those rows are final: nothing committed is skipped,
//! even when transactions commit out of the order of their ids or sequence values, and
//! nothing uncommitted is read. The cost: a transaction that runs long anywhere in the
//! cluster holds the horizon back, and followers (and this instance's answers, which
//! wait for it up to [`ANSWER_WITHIN`](super::writer::ANSWER_WITHIN)) with it.
//!
//! **Waking.** The follower reads every [`INTERVAL`]; a commit's `NOTIFY` (heard by a
//! listening connection of its own) or this instance's writer wakes it sooner.
//! Correctness never depends on a notification arriving.
//!
//! While the database is unreachable, `/readyz` says so and the index keeps answering
//! what it holds; the follower reconnects on its own.

use super::{checkout, entitlement_row, Client, Pool, Prepared, ENTITLEMENT_COLUMNS};
use crate::index::{Change, Index};
use crate::status::Status;
use crate::store::writer::Reply;
use crate::store::StoreError;
use crate::timestamp::Timestamp;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often the follower reads when nothing wakes it.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// Answers a writer committed, waiting for the index to show the commit.
pub struct Pending {
    /// The transaction's id; `None` when it wrote nothing (duplicates).
    pub xid: Option<i64>,
    pub replies: Vec<(oneshot::Sender<Reply>, Reply)>,
    pub since: Instant,
}

impl Pending {
    /// Sends the answers now.
    pub fn answer(self) {
        for (reply, answer) in self.replies {
            let _ = reply.send(answer);
        }
    }
}

enum Wake {
    Committed(Pending),
    Notified,
}

/// The writer's (and the listener's) way to the follower.
#[derive(Clone)]
pub struct Waiter(Sender<Wake>);

impl Waiter {
    /// Sends the answers once the index shows `pending.xid`.
    pub fn answer_when_shown(&self, pending: Pending) {
        if let Err(mpsc::SendError(Wake::Committed(pending))) =
            self.0.send(Wake::Committed(pending))
        {
            // No follower (stopping): the commits stand; answer now.
            pending.answer();
        }
    }

    /// Something committed: read now.
    pub fn wake(&self) {
        let _ = self.0.send(Wake::Notified);
    }
}

/// The follower, before its thread starts.
pub struct Follower {
    pool: Pool,
    url: String,
    index: Arc<Index>,
    status: Arc<Status>,
    horizon: i64,
    wakes: Receiver<Wake>,
    waiter: Waiter,
}

/// Loads committed state into the index and returns the follower that keeps it
/// current from there.
pub fn warm(
    pool: &Pool,
    url: &str,
    index: Arc<Index>,
    status: Arc<Status>,
) -> Result<Follower, StoreError> {
    let mut client = checkout(pool)?;
    let mut prepared = Prepared::default();
    let (mut tx, horizon) = at_horizon(&mut client, &mut prepared)?;
    // Streamed, and applied a chunk at a time: a million rows are never all in memory.
    const CHUNK: usize = 10_000;
    let no_params: [&(dyn postgres::types::ToSql + Sync); 0] = [];
    let mut changes = Vec::with_capacity(CHUNK);
    let sql = format!("SELECT {ENTITLEMENT_COLUMNS} FROM entitlements");
    let mut rows = tx.query_raw(&sql, no_params)?;
    while let Some(row) = rows.next()? {
        changes.push(level_change(&row)?);
        if changes.len() == CHUNK {
            index.apply(changes.drain(..));
        }
    }
    drop(rows);
    let users =
        "SELECT profile_id, customer_user_id FROM profiles WHERE customer_user_id IS NOT NULL";
    let mut rows = tx.query_raw(users, no_params)?;
    while let Some(row) = rows.next()? {
        changes.push(user_change(&row));
        if changes.len() == CHUNK {
            index.apply(changes.drain(..));
        }
    }
    drop(rows);
    index.apply(changes);
    let marks = Marks::read(&mut tx, &mut prepared)?;
    tx.commit()?;
    marks.record(&status);
    let (to, wakes) = mpsc::channel();
    Ok(Follower {
        pool: pool.clone(),
        url: url.to_owned(),
        index,
        status,
        horizon,
        wakes,
        waiter: Waiter(to),
    })
}

/// A read-only snapshot, and the horizon in it: the oldest transaction id still running
/// (every smaller one has ended, and what it wrote is in the snapshot).
fn at_horizon<'c>(
    client: &'c mut Client,
    p: &mut Prepared,
) -> Result<(postgres::Transaction<'c>, i64), StoreError> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let horizon: i64 = p
        .query_one(
            &mut tx,
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            &[],
        )?
        .get(0);
    Ok((tx, horizon))
}

/// The newest event, change and arrival the database holds: what `GET /changes`, time
/// travel and `/metrics` are told.
struct Marks {
    newest_change: i64,
    newest_event: i64,
    newest_received: Option<Timestamp>,
}

impl Marks {
    fn read(tx: &mut postgres::Transaction<'_>, p: &mut Prepared) -> Result<Marks, StoreError> {
        let row = p.query_one(
            tx,
            "SELECT (SELECT coalesce(max(seq), 0) FROM access_changes), \
                    (SELECT coalesce(max(seq), 0) FROM events), \
                    (SELECT received_at FROM events ORDER BY seq DESC LIMIT 1)",
            &[],
        )?;
        Ok(Marks {
            newest_change: row.get(0),
            newest_event: row.get(1),
            newest_received: super::time(row.get(2))?,
        })
    }

    fn record(&self, status: &Status) {
        status.record_commit(self.newest_received);
        status.release_events(self.newest_event);
        status.record_change(self.newest_change);
    }
}

pub(super) fn level_change(row: &postgres::Row) -> Result<Change, StoreError> {
    let row = entitlement_row(row)?;
    Ok(Change::Level {
        profile_id: Arc::from(row.profile_id),
        access_level_id: Arc::from(row.access_level_id),
        entitlement: Some(row.entitlement),
    })
}

pub(super) fn user_change(row: &postgres::Row) -> Change {
    Change::CustomerUserId {
        profile_id: Arc::from(row.get::<_, &str>(0)),
        customer_user_id: Arc::from(row.get::<_, &str>(1)),
    }
}

impl Follower {
    /// The writer's way to this follower.
    pub fn waiter(&self) -> Waiter {
        self.waiter.clone()
    }

    /// Starts the follower thread and the listening thread that wakes it.
    pub fn start(self) -> std::io::Result<JoinHandle<()>> {
        let (url, waiter) = (self.url.clone(), self.waiter.clone());
        std::thread::Builder::new()
            .name("entitled-listen".into())
            .spawn(move || listen(&url, &waiter))?;
        std::thread::Builder::new()
            .name("entitled-follow".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let mut client: Option<(Client, Prepared)> = None;
        let mut pending: Vec<Pending> = Vec::new();
        let mut failing = false;
        loop {
            match self.wakes.recv_timeout(INTERVAL) {
                Ok(wake) => self.take(wake, &mut pending),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while let Ok(wake) = self.wakes.try_recv() {
                self.take(wake, &mut pending);
            }
            match self.follow(&mut client) {
                Ok(()) => {
                    if failing {
                        tracing::info!("PostgreSQL is reachable again; following");
                        failing = false;
                    }
                }
                Err(error) => {
                    if !failing {
                        tracing::error!(%error, "cannot read PostgreSQL; the index keeps what it holds");
                        failing = true;
                    }
                    self.status.record_failure(error.to_string());
                    client = None;
                }
            }
            let horizon = self.horizon;
            pending.retain_mut(|p| {
                let shown = p.xid.is_none_or(|xid| xid < horizon);
                if shown || p.since.elapsed() > super::writer::ANSWER_WITHIN {
                    for (reply, answer) in p.replies.drain(..) {
                        let _ = reply.send(answer);
                    }
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Keeps answers until the index shows their commit; answers at once those whose
    /// transaction wrote nothing (or failed).
    fn take(&self, wake: Wake, pending: &mut Vec<Pending>) {
        match wake {
            Wake::Committed(p) if p.xid.is_none() => p.answer(),
            Wake::Committed(p) => pending.push(p),
            Wake::Notified => {}
        }
    }

    /// Reads what transactions that ended since the last read wrote, and applies it.
    fn follow(&mut self, client: &mut Option<(Client, Prepared)>) -> Result<(), StoreError> {
        let (conn, p) = match client {
            Some(conn) => conn,
            None => client.insert((checkout(&self.pool)?, Prepared::default())),
        };
        let (mut tx, horizon) = at_horizon(conn, p)?;
        if horizon < self.horizon {
            // Transaction ids went back: the database was restored from a backup (or
            // replaced). Read every row again, as at warm-up.
            tracing::warn!(
                was = self.horizon,
                now = horizon,
                "PostgreSQL's transaction ids went back (a restored database?): reading every row again"
            );
            self.horizon = 0;
        }
        if horizon == self.horizon {
            tx.commit()?;
            self.status.record_commit(None);
            return Ok(());
        }
        let window: [&(dyn postgres::types::ToSql + Sync); 2] = [&self.horizon, &horizon];
        let within =
            "written_xid >= $1::bigint::text::xid8 AND written_xid < $2::bigint::text::xid8";
        let mut changes = Vec::new();
        for row in p.query(
            &mut tx,
            &format!("SELECT profile_id, access_level_id FROM entitlements_removed WHERE {within}"),
            &window,
        )? {
            changes.push(Change::Level {
                profile_id: Arc::from(row.get::<_, &str>(0)),
                access_level_id: Arc::from(row.get::<_, &str>(1)),
                entitlement: None,
            });
        }
        for row in p.query(
            &mut tx,
            &format!("SELECT {ENTITLEMENT_COLUMNS} FROM entitlements WHERE {within}"),
            &window,
        )? {
            changes.push(level_change(&row)?);
        }
        for row in p.query(
            &mut tx,
            &format!(
                "SELECT profile_id, customer_user_id FROM profiles \
                 WHERE {within} AND customer_user_id IS NOT NULL"
            ),
            &window,
        )? {
            changes.push(user_change(&row));
        }
        let marks = Marks::read(&mut tx, p)?;
        tx.commit()?;
        let changed = !changes.is_empty();
        self.index.apply(changes);
        marks.record(&self.status);
        // The feed's newest row may have been recorded at an earlier read, before this
        // one brought the rows of its transaction: wake whoever waits on the index.
        if changed {
            self.status.index_changed();
        }
        self.horizon = horizon;
        Ok(())
    }
}

/// Wakes the follower at every commit any instance notifies; reconnects after an error.
fn listen(url: &str, waiter: &Waiter) {
    loop {
        let listened = (|| -> Result<(), postgres::Error> {
            let mut client = url.parse::<postgres::Config>()?.connect(postgres::NoTls)?;
            client.batch_execute(&format!("LISTEN {}", super::ingest::CHANNEL))?;
            let mut notifications = client.notifications();
            let mut each = notifications.blocking_iter();
            while each.next()?.is_some() {
                waiter.wake();
            }
            Ok(())
        })();
        if let Err(error) = listened {
            tracing::debug!(%error, "LISTEN failed; the follower reads on its interval meanwhile");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
