//! The SQL of push (`--notify-url`): the delivery cursor (`notify_state`) and the
//! parked changes (`notify_failed`). Written by the delivery task on a connection of
//! its own at `synchronous=NORMAL` (a cursor update survives a crash of the process,
//! and costs no `fsync`: a power cut can take back the last few, which are then sent
//! again), so a slow receiver never waits on the writer nor the writer on it.

use super::{changes_after, AccessChange, StoreError};
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// What push asks of a store: the cursor, the feed after it, parking and replaying.
/// SQLite's is a connection of push's own (the functions below); PostgreSQL's
/// (`store::postgres::notify`) also decides which instance delivers.
pub trait NotifyStore: Send {
    /// Makes the cursor (at the newest change, the first time) and returns it.
    fn start(&mut self) -> Result<i64, StoreError>;
    /// Where delivery stands; `None` before the first start with a URL.
    fn cursor(&mut self) -> Result<Option<i64>, StoreError>;
    /// The first change after `after`, at most `up_to`.
    fn next_change(&mut self, after: i64, up_to: i64) -> Result<Option<AccessChange>, StoreError>;
    /// Moves the cursor from `from` to `seq`, unless it moved meanwhile (a replay).
    fn advance(&mut self, from: i64, seq: i64) -> Result<bool, StoreError>;
    fn park(&mut self, from: i64, parked: &Parked) -> Result<(), StoreError>;
    fn failed(&mut self, limit: u32) -> Result<Vec<(Parked, Option<AccessChange>)>, StoreError>;
    fn failed_count(&mut self) -> Result<i64, StoreError>;
    fn replay(&mut self, from_seq: i64) -> Result<(), StoreError>;
    /// The newest change of the feed (0 when none), for `entitled notify status`.
    fn newest_change(&mut self) -> Result<i64, StoreError>;
    /// Whether this process delivers now: always on SQLite (one daemon a file); on
    /// PostgreSQL, the one instance that holds the delivery lock.
    fn may_deliver(&mut self) -> Result<bool, StoreError> {
        Ok(true)
    }
}

impl NotifyStore for Connection {
    fn start(&mut self) -> Result<i64, StoreError> {
        start(self)
    }
    fn cursor(&mut self) -> Result<Option<i64>, StoreError> {
        cursor(self)
    }
    fn next_change(&mut self, after: i64, up_to: i64) -> Result<Option<AccessChange>, StoreError> {
        Ok(changes_after(self, after, up_to, 1)?.pop())
    }
    fn advance(&mut self, from: i64, seq: i64) -> Result<bool, StoreError> {
        advance(self, from, seq)
    }
    fn park(&mut self, from: i64, parked: &Parked) -> Result<(), StoreError> {
        park(self, from, parked)
    }
    fn failed(&mut self, limit: u32) -> Result<Vec<(Parked, Option<AccessChange>)>, StoreError> {
        failed(self, limit)
    }
    fn failed_count(&mut self) -> Result<i64, StoreError> {
        failed_count(self)
    }
    fn replay(&mut self, from_seq: i64) -> Result<(), StoreError> {
        replay(self, from_seq)
    }
    fn newest_change(&mut self) -> Result<i64, StoreError> {
        super::newest_change(self)
    }
}

/// Where delivery stands; `None` before the first start with a URL.
pub fn cursor(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT delivered_seq FROM notify_state WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

/// The cursor, made at the newest change when there is none yet (history is sent
/// only on replay).
pub fn start(conn: &Connection) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO notify_state (id, delivered_seq) \
         SELECT 1, coalesce(max(seq), 0) FROM access_changes WHERE 1 \
         ON CONFLICT (id) DO NOTHING",
        [],
    )?;
    Ok(cursor(conn)?.unwrap_or(0))
}

/// Every change up to `seq` is confirmed (or parked, or skipped): moves the cursor
/// from `from` to `seq`, unless a replay moved it meanwhile (then `false`, and the
/// replay's cursor stands).
pub fn advance(conn: &Connection, from: i64, seq: i64) -> Result<bool, StoreError> {
    let moved = conn
        .prepare_cached(
            "UPDATE notify_state SET delivered_seq = ?2 WHERE id = 1 AND delivered_seq = ?1",
        )?
        .execute(params![from, seq])?;
    Ok(moved > 0)
}

/// One change's failed delivery, given up on.
#[derive(Debug, Clone)]
pub struct Parked {
    pub seq: i64,
    pub attempts: u32,
    pub first_failed_at: Timestamp,
    pub last_failed_at: Timestamp,
    pub last_error: String,
}

/// Parks a change and moves the cursor past it (from `from`, as [`advance`]), in one
/// transaction; nothing when a replay moved the cursor meanwhile.
pub fn park(conn: &mut Connection, from: i64, parked: &Parked) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !advance(&tx, from, parked.seq)? {
        return Ok(());
    }
    tx.execute(
        "INSERT OR REPLACE INTO notify_failed \
         (seq, attempts, first_failed_at, last_failed_at, last_error) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            parked.seq,
            parked.attempts,
            parked.first_failed_at.to_rfc3339(),
            parked.last_failed_at.to_rfc3339(),
            parked.last_error,
        ],
    )?;
    tx.commit()?;
    Ok(())
}

/// The parked changes, oldest first, each with its change row (`None` if the row is
/// gone: never, the feed is append-only).
pub fn failed(
    conn: &Connection,
    limit: u32,
) -> Result<Vec<(Parked, Option<AccessChange>)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT seq, attempts, first_failed_at, last_failed_at, last_error \
         FROM notify_failed ORDER BY seq LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut parked = Vec::new();
    for row in rows {
        let (seq, attempts, first, last, last_error) = row?;
        let time = |t: &str| Timestamp::parse_rfc3339(t).unwrap_or(Timestamp::from_micros(0));
        let change = changes_after(conn, seq - 1, seq, 1)?.pop();
        parked.push((
            Parked {
                seq,
                attempts,
                first_failed_at: time(&first),
                last_failed_at: time(&last),
                last_error,
            },
            change,
        ));
    }
    Ok(parked)
}

/// How many changes are parked.
pub fn failed_count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT count(*) FROM notify_failed", [], |r| r.get(0))?)
}

/// Sends every change from `from_seq` on again: the cursor goes back before it, and
/// the parked ones from it leave the failed list (they are sent again).
pub fn replay(conn: &mut Connection, from_seq: i64) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO notify_state (id, delivered_seq) VALUES (1, ?1) \
         ON CONFLICT (id) DO UPDATE SET delivered_seq = excluded.delivered_seq",
        params![from_seq.saturating_sub(1).max(0)],
    )?;
    tx.execute(
        "DELETE FROM notify_failed WHERE seq >= ?1",
        params![from_seq],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open, record_change, ChangeReason, Synchronous};

    #[test]
    fn the_cursor_starts_at_the_newest_change_parks_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, _lock) = open(&dir.path().join("e.db"), Synchronous::Normal).unwrap();
        let now = Timestamp::from_micros(1_900_000_000_000_000);
        for active in [true, false, true] {
            record_change(
                &conn,
                "p",
                "premium",
                active,
                ChangeReason::Rebuild,
                None,
                now,
            )
            .unwrap();
        }
        assert_eq!(cursor(&conn).unwrap(), None);
        assert_eq!(start(&conn).unwrap(), 3, "history is not sent");
        assert_eq!(start(&conn).unwrap(), 3, "a second start keeps the cursor");
        let parked = Parked {
            seq: 4,
            attempts: 3,
            first_failed_at: now,
            last_failed_at: now,
            last_error: "500".into(),
        };
        record_change(
            &conn,
            "p",
            "premium",
            false,
            ChangeReason::Expired,
            None,
            now,
        )
        .unwrap();
        park(&mut conn, 2, &parked).unwrap();
        assert_eq!(
            cursor(&conn).unwrap(),
            Some(3),
            "moved meanwhile: not parked"
        );
        assert_eq!(failed_count(&conn).unwrap(), 0);
        park(&mut conn, 3, &parked).unwrap();
        assert_eq!(cursor(&conn).unwrap(), Some(4));
        let listed = failed(&conn, 10).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].1.as_ref().map(|c| c.reason.as_str()),
            Some("expired")
        );
        replay(&mut conn, 2).unwrap();
        assert_eq!(cursor(&conn).unwrap(), Some(1));
        assert_eq!(failed_count(&conn).unwrap(), 0);
    }
}
