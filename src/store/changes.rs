//! The change feed's table, `access_changes`: appended to as levels flip, read by
//! `GET /changes` up to what the writer has released.

use super::StoreError;
use crate::projection::EventType;
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection};

/// Why a level's effective access flipped, for the change feed.
#[derive(Clone, Copy, Debug)]
pub enum ChangeReason<'a> {
    /// An event did it.
    Event {
        event_type: EventType,
        profile_event_id: &'a str,
        /// The member of the profile's sharing group whose event it was, when not the
        /// profile itself: the reason reads `shared:<type>`.
        shared_from: Option<&'a str>,
    },
    /// `expires_at` passed with no event.
    Expired,
    /// `starts_at` came with no event.
    Started,
    /// `entitled rebuild` under another configuration.
    Rebuild,
}

/// Appends to `access_changes`; returns the change's `seq`.
pub fn record_change(
    conn: &Connection,
    profile_id: &str,
    access_level_id: &str,
    active: bool,
    reason: ChangeReason<'_>,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<i64, StoreError> {
    let (reason, event_id, shared_from) = match reason {
        ChangeReason::Event {
            event_type,
            profile_event_id,
            shared_from: None,
        } => (event_type.name().to_owned(), Some(profile_event_id), None),
        ChangeReason::Event {
            event_type,
            profile_event_id,
            shared_from: Some(from),
        } => (
            format!("shared:{}", event_type.name()),
            Some(profile_event_id),
            Some(from),
        ),
        ChangeReason::Expired => ("expired".to_owned(), None, None),
        ChangeReason::Started => ("started".to_owned(), None, None),
        ChangeReason::Rebuild => ("rebuild".to_owned(), None, None),
    };
    // The profile's `customer_user_id` as this transaction has it: the event that made
    // the change has already updated the profile.
    conn.prepare_cached(
        "INSERT INTO access_changes (profile_id, access_level_id, active, reason, \
         profile_event_id, expires_at, changed_at, customer_user_id, shared_from) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
         (SELECT customer_user_id FROM profiles WHERE profile_id = ?1), ?8)",
    )?
    .execute(params![
        profile_id,
        access_level_id,
        active,
        reason,
        event_id,
        expires_at.map(Timestamp::to_rfc3339),
        now.to_rfc3339(),
        shared_from,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// One row of `access_changes` (schema.sql says what each column holds).
#[derive(Debug, Clone)]
pub struct AccessChange {
    pub seq: i64,
    pub profile_id: String,
    pub customer_user_id: Option<String>,
    pub access_level_id: String,
    pub active: bool,
    pub reason: String,
    pub profile_event_id: Option<String>,
    pub expires_at: Option<String>,
    pub changed_at: String,
    /// The member whose event did it, when not this profile.
    pub shared_from: Option<String>,
}

/// The changes after `after` and at most `up_to` (what the writer has released),
/// oldest first, at most `limit`.
pub fn changes_after(
    conn: &Connection,
    after: i64,
    up_to: i64,
    limit: u32,
) -> Result<Vec<AccessChange>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, profile_id, customer_user_id, access_level_id, active, reason, \
         profile_event_id, expires_at, changed_at, shared_from \
         FROM access_changes WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, up_to, limit], |r| {
        Ok(AccessChange {
            seq: r.get(0)?,
            profile_id: r.get(1)?,
            customer_user_id: r.get(2)?,
            access_level_id: r.get(3)?,
            active: r.get(4)?,
            reason: r.get(5)?,
            profile_event_id: r.get(6)?,
            expires_at: r.get(7)?,
            changed_at: r.get(8)?,
            shared_from: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest `access_changes.seq`, 0 when none.
pub fn newest_change(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT coalesce(max(seq), 0) FROM access_changes",
        [],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open, Synchronous};

    /// `GET /changes` reads up to what the writer has released, not what is committed.
    #[test]
    fn changes_after_stops_at_the_released_seq() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _lock) = open(&dir.path().join("e.db"), Synchronous::Normal).unwrap();
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
        let seqs = |after, up_to| -> Vec<i64> {
            changes_after(&conn, after, up_to, 100)
                .unwrap()
                .iter()
                .map(|c| c.seq)
                .collect()
        };
        assert_eq!(seqs(0, 3), [1, 2, 3]);
        assert_eq!(seqs(0, 2), [1, 2]);
        assert_eq!(seqs(1, 2), [2]);
        assert!(seqs(2, 2).is_empty());
    }
}
