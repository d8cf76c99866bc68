//! This instance's writer on PostgreSQL: the consumer of the same queue handlers send
//! to on SQLite ([`WriterHandle`](crate::store::writer::WriterHandle)).
//!
//! It takes the first command, drains what else waits (up to
//! [`MAX_BATCH`](crate::store::writer::MAX_BATCH)), and writes the events in one
//! transaction (group commit; `ingest` says what it locks). An event that touches
//! sharing waits for a second transaction that holds the sharing lock alone. Once the
//! commit returns, the answers go to the follower, which sends them when its index
//! shows the commit, so a client that reads after the 2xx reads what it wrote; a
//! follower that cannot read sends them anyway after [`ANSWER_WITHIN`]: they are
//! committed.
//!
//! A failed transaction (the database unreachable, a deadlock past the retries) answers
//! every event of the batch with the error: the handlers say 503, and Adapty retries.

use super::follow::{Pending, Waiter};
use super::ingest::{self, Done};
use super::{checkout, Client, Pool, Prepared};
use crate::adapty::ReceivedEvent;
use crate::projection::Rules;
use crate::status::Status;
use crate::store::writer::{Command, Decode, Ingest, Outcome, Queue, Reply, MAX_BATCH};
use crate::store::{Lapse, StoreError};
use crate::telemetry;
use crate::timestamp::Timestamp;
use postgres::error::SqlState;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The writer's connection, with the statements prepared on it.
type Conn = (Client, Prepared);

/// How long an answer waits for the follower to show its commit, at most.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// How many times a transaction that PostgreSQL chose as a deadlock's victim is tried.
const ATTEMPTS: u32 = 3;

/// Everything the writer thread owns.
pub struct Writer {
    pub pool: Pool,
    pub status: Arc<Status>,
    pub rules: Arc<Rules>,
    pub decode: Arc<dyn Decode>,
    /// The follower that answers once the index shows a commit; `None` (a tool with no
    /// index): answer at commit.
    pub follower: Option<Waiter>,
    /// Where levels that lapsed while set to renew go once committed (when this
    /// instance's clock wrote their `expired` row).
    pub lapses: Option<tokio::sync::mpsc::UnboundedSender<Lapse>>,
}

impl Writer {
    pub fn start(self, queue: Queue) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("entitled-writer".into())
            .spawn(move || self.run(queue))
    }

    fn run(self, mut queue: Queue) {
        let mut client: Option<Conn> = None;
        while let Some(first) = queue.0.blocking_recv() {
            let (mut batch, mut tick, mut stop) = (Vec::new(), false, false);
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Ingest { event, reply } => batch.push(Ingest { event, reply }),
                    Command::Tick => tick = true,
                    Command::Stop => stop = true,
                }
                if batch.len() < MAX_BATCH && !stop {
                    next = queue.0.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.write(&mut client, batch);
            }
            if tick {
                self.clock(&mut client);
            }
            if stop {
                break;
            }
        }
    }

    fn write(&self, client: &mut Option<Conn>, batch: Vec<Ingest>) {
        let started = Instant::now();
        let now = Timestamp::now();
        let events: Vec<&ReceivedEvent> = batch.iter().map(|i| &*i.event).collect();
        let mut answers: Vec<Option<Reply>> = vec![None; batch.len()];
        let mut xids = Vec::new();
        let first = self.attempt(client, &events, now, false);
        let outcome = first.and_then(|committed| {
            xids.extend(committed.xid);
            let mut deferred = Vec::new();
            for (i, done) in committed.done.into_iter().enumerate() {
                match done {
                    Done::Deferred => deferred.push(i),
                    done => answers[i] = Some(reply_of(done)),
                }
            }
            if deferred.is_empty() {
                return Ok(());
            }
            let sharing: Vec<&ReceivedEvent> = deferred.iter().map(|&i| events[i]).collect();
            let committed = self.attempt(client, &sharing, now, true)?;
            xids.extend(committed.xid);
            for (&i, done) in deferred.iter().zip(committed.done) {
                answers[i] = Some(reply_of(done));
            }
            Ok(())
        });
        let failure = outcome.err().map(|error| {
            tracing::error!(%error, events = batch.len(), "a PostgreSQL transaction failed; answering 503");
            self.status.record_failure(error.to_string());
            *client = None;
            Arc::new(error)
        });
        if failure.is_none() {
            self.status.record_commit(Some(now));
        }
        telemetry::writer_batch(batch.len(), started.elapsed().as_secs_f64());
        for (ingest, answer) in batch.iter().zip(&answers) {
            if let Some(Ok(Outcome::Stored | Outcome::Ignored)) = answer {
                telemetry::event_stored(ingest.event.event.event_type.map(|t| t.name()));
            }
        }
        let replies = batch
            .into_iter()
            .zip(answers)
            .map(|(ingest, answer)| {
                let answer = match (answer, &failure) {
                    (Some(answer), _) => answer,
                    (None, Some(error)) => Err(error.clone()),
                    (None, None) => Err(Arc::new(StoreError::Unavailable(
                        "the batch ended without an answer".into(),
                    ))),
                };
                (ingest.reply, answer)
            })
            .collect();
        let pending = Pending {
            xid: xids.into_iter().max(),
            replies,
            since: Instant::now(),
        };
        match &self.follower {
            Some(follower) => follower.answer_when_shown(pending),
            None => pending.answer(),
        }
    }

    /// One transaction, tried again when PostgreSQL broke a deadlock by failing it.
    fn attempt(
        &self,
        client: &mut Option<Conn>,
        events: &[&ReceivedEvent],
        now: Timestamp,
        exclusive: bool,
    ) -> Result<ingest::Committed, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let (conn, prepared) = match client {
                Some(conn) => conn,
                None => client.insert((checkout(&self.pool)?, Prepared::default())),
            };
            let result = ingest::ingest_batch(
                conn,
                prepared,
                events,
                now,
                &self.rules,
                &*self.decode,
                exclusive,
            );
            match result {
                Err(StoreError::Postgres(e))
                    if tries < ATTEMPTS
                        && matches!(
                            e.code(),
                            Some(&SqlState::T_R_DEADLOCK_DETECTED)
                                | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                        ) =>
                {
                    tracing::warn!(error = %e, "retrying a batch PostgreSQL failed to break a deadlock");
                }
                other => return other,
            }
        }
    }

    fn clock(&self, client: &mut Option<Conn>) {
        let (conn, prepared) = match client {
            Some(conn) => conn,
            None => match checkout(&self.pool) {
                Ok(conn) => client.insert((conn, Prepared::default())),
                // The follower reports the outage; the next tick tries again.
                Err(_) => return,
            },
        };
        match ingest::report_clock(conn, prepared, Timestamp::now()) {
            Ok((lapses, xid)) => {
                if let (Some(follower), Some(_)) = (&self.follower, xid) {
                    follower.wake();
                }
                if let Some(to) = &self.lapses {
                    for lapse in lapses {
                        let _ = to.send(lapse);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "the clock's report failed; the next tick tries again");
                *client = None;
            }
        }
    }
}

fn reply_of(done: Done) -> Reply {
    match done {
        Done::Outcome(outcome) => Ok(outcome),
        Done::Failed(error) => Err(Arc::new(error)),
        Done::Deferred => Err(Arc::new(StoreError::Unavailable(
            "an event was deferred by the exclusive pass".into(),
        ))),
    }
}
