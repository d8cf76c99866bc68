//! The SQL of each event, inside the writer's transaction: store it, keep its
//! profile current, refold its level, and record what flipped; and the clock's
//! report of what flipped with no event.

use super::writer::{Decode, Outcome};
use super::{record_change, ChangeReason, StoreError};
use crate::adapty::ReceivedEvent;
use crate::index::Change;
use crate::projection::{self, Event, Rules};
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection};

/// What a transaction changed that others must learn once it commits.
#[derive(Default)]
pub(super) struct Effects {
    pub(super) index: Vec<Change>,
    pub(super) newest_change: Option<i64>,
    pub(super) newest_event: Option<i64>,
}

impl Effects {
    pub(super) fn absorb(&mut self, other: Effects) {
        self.index.extend(other.index);
        self.newest_change = self.newest_change.max(other.newest_change);
        self.newest_event = self.newest_event.max(other.newest_event);
    }
}

/// Stores one event and folds it in. `effects` collects what the index and the
/// change feed's watchers must learn once the transaction commits.
pub(super) fn ingest(
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
pub(super) fn report_clock(
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
