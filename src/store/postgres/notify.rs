//! Push's store on PostgreSQL: the cursor (`notify_state`) and the parked changes
//! (`notify_failed`) as on SQLite, shared by every instance, and the *delivery lock*:
//! a session advisory lock that one instance's push connection holds while it
//! delivers. The others wait; when the holder dies (or its connection does), PostgreSQL
//! releases the lock and another instance takes over from the shared cursor. A change
//! in flight when that happens may be sent twice (same `webhook-id`), which
//! at-least-once allows; none is skipped (the cursor moves by compare-and-set).
//!
//! The connection is push's own, outside the pool: a session lock must not go back to
//! a pool with its connection.

use super::changes_after;
use crate::store::notify::{NotifyStore, Parked};
use crate::store::{AccessChange, StoreError};
use crate::timestamp::Timestamp;
use std::time::Duration;

/// The delivery lock's key ("entd" and 4).
const DELIVERY_LOCK: i64 = 0x656e_7464_0000_0004;

pub struct PgNotify {
    url: String,
    client: Option<postgres::Client>,
    /// Whether `client`'s session holds the delivery lock.
    delivering: bool,
}

impl PgNotify {
    pub fn new(url: &str) -> Self {
        PgNotify {
            url: url.to_owned(),
            client: None,
            delivering: false,
        }
    }

    /// Runs `f` on push's connection (made when missing); a broken connection is
    /// dropped, and with it the delivery lock. On a thread of its own: the callers are
    /// async (push's runtime, the HTTP routes), where the blocking client must not run.
    fn with<T: Send>(
        &mut self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.with_here(f))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn with_here<T>(
        &mut self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.client.is_none() {
            let mut config: postgres::Config = self.url.parse().map_err(|e| {
                StoreError::Unavailable(format!("{}: {e}", super::redact(&self.url)))
            })?;
            config.connect_timeout(Duration::from_secs(3));
            self.client = Some(config.connect(postgres::NoTls)?);
            self.delivering = false;
        }
        let client = self.client.as_mut().expect("connected above");
        let result = f(client);
        if result.is_err() && client.is_closed() {
            self.client = None;
            self.delivering = false;
        }
        result
    }
}

impl Drop for PgNotify {
    /// The blocking client closes its connection by running a runtime of its own, which
    /// panics on an async thread (where the daemon may drop push): closed on a thread.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

impl NotifyStore for PgNotify {
    fn start(&mut self) -> Result<i64, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO notify_state (id, delivered_seq) \
                 SELECT 1, coalesce(max(seq), 0) FROM access_changes \
                 ON CONFLICT (id) DO NOTHING",
                &[],
            )?;
            Ok(())
        })?;
        Ok(self.cursor()?.unwrap_or(0))
    }

    fn cursor(&mut self) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            Ok(
                c.query_opt("SELECT delivered_seq FROM notify_state WHERE id = 1", &[])?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn next_change(&mut self, after: i64, up_to: i64) -> Result<Option<AccessChange>, StoreError> {
        self.with(|c| Ok(changes_after(c, after, up_to, 1)?.pop()))
    }

    fn advance(&mut self, from: i64, seq: i64) -> Result<bool, StoreError> {
        self.with(|c| advance(c, from, seq))
    }

    fn park(&mut self, from: i64, parked: &Parked) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            if !advance(&mut tx, from, parked.seq)? {
                return Ok(());
            }
            tx.execute(
                "INSERT INTO notify_failed \
                 (seq, attempts, first_failed_at, last_failed_at, last_error) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (seq) DO UPDATE SET attempts = excluded.attempts, \
                 first_failed_at = excluded.first_failed_at, \
                 last_failed_at = excluded.last_failed_at, last_error = excluded.last_error",
                &[
                    &parked.seq,
                    &i64::from(parked.attempts),
                    &parked.first_failed_at.to_rfc3339(),
                    &parked.last_failed_at.to_rfc3339(),
                    &parked.last_error,
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn failed(&mut self, limit: u32) -> Result<Vec<(Parked, Option<AccessChange>)>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT seq, attempts, first_failed_at, last_failed_at, last_error \
                 FROM notify_failed ORDER BY seq LIMIT $1",
                &[&i64::from(limit)],
            )?;
            let time = |t: &str| Timestamp::parse_rfc3339(t).unwrap_or(Timestamp::from_micros(0));
            let mut parked = Vec::with_capacity(rows.len());
            for row in &rows {
                let seq: i64 = row.get(0);
                let change = changes_after(c, seq - 1, seq, 1)?.pop();
                parked.push((
                    Parked {
                        seq,
                        attempts: u32::try_from(row.get::<_, i64>(1)).unwrap_or(u32::MAX),
                        first_failed_at: time(row.get(2)),
                        last_failed_at: time(row.get(3)),
                        last_error: row.get(4),
                    },
                    change,
                ));
            }
            Ok(parked)
        })
    }

    fn failed_count(&mut self) -> Result<i64, StoreError> {
        self.with(|c| {
            Ok(c.query_one("SELECT count(*) FROM notify_failed", &[])?
                .get(0))
        })
    }

    fn replay(&mut self, from_seq: i64) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO notify_state (id, delivered_seq) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET delivered_seq = excluded.delivered_seq",
                &[&from_seq.saturating_sub(1).max(0)],
            )?;
            tx.execute("DELETE FROM notify_failed WHERE seq >= $1", &[&from_seq])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn newest_change(&mut self) -> Result<i64, StoreError> {
        self.with(|c| {
            Ok(
                c.query_one("SELECT coalesce(max(seq), 0) FROM access_changes", &[])?
                    .get(0),
            )
        })
    }

    fn may_deliver(&mut self) -> Result<bool, StoreError> {
        if self.delivering {
            // Still ours while the session lives; a dead one fails the next call.
            return Ok(true);
        }
        let taken: bool = self.with(|c| {
            Ok(
                c.query_one("SELECT pg_try_advisory_lock($1)", &[&DELIVERY_LOCK])?
                    .get(0),
            )
        })?;
        if taken {
            tracing::info!("push: this instance delivers (it holds the delivery lock)");
        }
        self.delivering = taken;
        Ok(taken)
    }
}

fn advance(c: &mut impl postgres::GenericClient, from: i64, seq: i64) -> Result<bool, StoreError> {
    Ok(c.execute(
        "UPDATE notify_state SET delivered_seq = $2 WHERE id = 1 AND delivered_seq = $1",
        &[&from, &seq],
    )? > 0)
}
