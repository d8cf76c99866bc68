//! Reading the log back: a profile's events, and the state as of an instant. For the
//! answers that need more than the in-memory index (time travel, explain) and for the
//! command-line tools. All read-only: safe beside a running daemon.

use super::entitlements::{entitlement_row, time, ENTITLEMENT_COLUMNS};
use super::sharing::{self, Component};
use super::writer::Decode;
use super::StoreError;
use crate::index::{Change, Index};
use crate::projection::{self, Event, Rules};
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::Arc;

/// An event as the log holds it.
pub struct LoggedEvent {
    pub seq: i64,
    /// `event_type` as received.
    pub received_type: String,
    pub received_at: Option<Timestamp>,
    pub event: Event,
}

/// Every stored event of a profile up to `seq` `up_to`, in arrival order. The daemon
/// passes the newest event it has synced and answered ([`crate::status::Status`]):
/// a read connection also sees commits still waiting for their `fdatasync`, which a
/// power cut could take back. Tools pass `i64::MAX`.
pub fn profile_events(
    conn: &Connection,
    profile_id: &str,
    up_to: i64,
    decode: &dyn Decode,
) -> Result<Vec<LoggedEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, event_type, received_at, body FROM events \
         WHERE profile_id = ?1 AND seq <= ?2 ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![profile_id, up_to])?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let body: String = row.get(3)?;
        events.push(LoggedEvent {
            seq,
            received_type: row.get(1)?,
            received_at: time(row.get(2)?)?,
            event: decode
                .decode(&body)
                .ok_or_else(|| StoreError::Corrupt(format!("event {seq} no longer parses")))?,
        });
    }
    Ok(events)
}

/// Every stored event of a profile and of every profile ever linked with it by a
/// sharing declaration (any level), up to `seq` `up_to`, in arrival order by profile;
/// and those links. What decides the profile's shared levels: explain and time travel
/// read it.
pub fn shared_events(
    conn: &Connection,
    profile_id: &str,
    up_to: i64,
    decode: &dyn Decode,
) -> Result<(Vec<LoggedEvent>, Component), StoreError> {
    let component = sharing::component(conn, None, &Arc::from(profile_id))?;
    let mut logged = Vec::new();
    for profile in &component.profiles {
        logged.extend(profile_events(conn, profile, up_to, decode)?);
    }
    Ok((logged, component))
}

/// The profiles that carry `customer_user_id` now.
pub fn profiles_of_user(
    conn: &Connection,
    customer_user_id: &str,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT profile_id FROM profiles WHERE customer_user_id = ?1 ORDER BY profile_id",
    )?;
    let ids = stmt.query_map(params![customer_user_id], |r| r.get(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}

/// An index of these profiles as they are now in the database (what the daemon's
/// index holds for them).
pub fn index_now(conn: &Connection, profile_ids: &[String]) -> Result<Index, StoreError> {
    let index = Index::new();
    let mut rows_of = conn.prepare_cached(&format!(
        "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements WHERE profile_id = ?1"
    ))?;
    let mut user_of =
        conn.prepare_cached("SELECT customer_user_id FROM profiles WHERE profile_id = ?1")?;
    for profile_id in profile_ids {
        let mut changes = Vec::new();
        let mut rows = rows_of.query(params![profile_id])?;
        while let Some(row) = rows.next()? {
            let row = entitlement_row(row)??;
            changes.push(Change::Level {
                profile_id: Arc::from(row.profile_id),
                access_level_id: Arc::from(row.access_level_id),
                entitlement: Some(row.entitlement),
            });
        }
        let user: Option<Option<String>> = user_of
            .query_row(params![profile_id], |r| r.get(0))
            .optional()?;
        if let Some(customer_user_id) = user.flatten() {
            changes.push(Change::CustomerUserId {
                profile_id: Arc::from(profile_id.as_str()),
                customer_user_id: Arc::from(customer_user_id),
            });
        }
        index.apply(changes);
    }
    Ok(index)
}

/// An index of these profiles as of `at`: what the events with `event_datetime` up to
/// `at` (and `seq` up to `up_to`, as [`profile_events`]) said, the customer_user_id
/// too, to be evaluated at `at`. A shared level is folded from its group's events,
/// the group as the declarations up to `at` made it.
pub fn index_as_of(
    conn: &Connection,
    profile_ids: &[String],
    at: Timestamp,
    up_to: i64,
    rules: &Rules,
    decode: &dyn Decode,
) -> Result<Index, StoreError> {
    index_of(profile_ids, at, rules, |profile_id| {
        shared_events(conn, profile_id, up_to, decode)
    })
}

/// [`index_as_of`] over any store: `shared_events` reads one profile's
/// ([`shared_events`]'s answer).
pub fn index_of(
    profile_ids: &[String],
    at: Timestamp,
    rules: &Rules,
    mut shared_events: impl FnMut(&str) -> Result<(Vec<LoggedEvent>, Component), StoreError>,
) -> Result<Index, StoreError> {
    let index = Index::new();
    for profile_id in profile_ids {
        let (logged, component) = shared_events(profile_id)?;
        index.apply(as_of(profile_id, logged, &component, at, rules));
    }
    Ok(index)
}

/// A profile's state as of `at`, from its events and those of its sharing component
/// ([`shared_events`]): what [`index_as_of`] puts in its index, whatever store read them.
pub fn as_of(
    profile_id: &str,
    logged: Vec<LoggedEvent>,
    component: &Component,
    at: Timestamp,
    rules: &Rules,
) -> Vec<Change> {
    let events: Vec<Event> = logged
        .into_iter()
        .map(|logged| logged.event)
        .filter(|event| event.event_datetime <= at)
        .collect();
    let mut changes: Vec<Change> =
        projection::project_with_links(&events, rules, Some(&component.links))
            .into_iter()
            .filter(|((profile, _), _)| **profile == *profile_id)
            .map(
                |((profile_id, access_level_id), entitlement)| Change::Level {
                    profile_id,
                    access_level_id,
                    entitlement: Some(entitlement),
                },
            )
            .collect();
    // Said by the profile's own events, or by a sharing declaration naming it.
    let users = events.iter().filter_map(|e| {
        let user = if *e.profile_id == *profile_id {
            e.customer_user_id.clone()
        } else {
            let named = e.shared_with.iter().find(|s| *s.profile_id == *profile_id);
            named.and_then(|s| s.customer_user_id.clone())
        };
        Some(((e.event_datetime, e.id.clone()), user?))
    });
    if let Some((_, customer_user_id)) = users.max_by(|a, b| a.0.cmp(&b.0)) {
        changes.push(Change::CustomerUserId {
            profile_id: Arc::from(profile_id),
            customer_user_id,
        });
    }
    changes
}
