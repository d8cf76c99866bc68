//! The rows of `entitlements`: one a level of a profile, as the fold left it and as
//! the change feed last reported it; and the clock's query of them.

use super::StoreError;
use crate::projection::{AccessWindow, Entitlement, EventType};
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::sync::Arc;

pub(crate) fn time(text: Option<String>) -> Result<Option<Timestamp>, StoreError> {
    text.map(|t| {
        Timestamp::parse_rfc3339(&t).ok_or_else(|| StoreError::Corrupt(format!("time {t}")))
    })
    .transpose()
}

pub(super) const ENTITLEMENT_COLUMNS: &str =
    "profile_id, access_level_id, is_active, expires_at, starts_at, \
     will_renew, is_lifetime, in_grace_period, is_refund, store, vendor_product_id, environment, \
     last_event_id, last_event_type, last_event_at, reported_active, shared_from, sharing_group";

/// One `entitlements` row, with its key.
pub struct EntitlementRow {
    pub profile_id: String,
    pub access_level_id: String,
    pub entitlement: Entitlement,
    /// What the change feed last said of the level: active or not.
    pub reported_active: bool,
}

pub(super) fn entitlement_row(
    row: &Row<'_>,
) -> rusqlite::Result<Result<EntitlementRow, StoreError>> {
    let arc = |s: Option<String>| s.map(Arc::from);
    let last_type: String = row.get(13)?;
    let parsed = (|| {
        Ok(EntitlementRow {
            profile_id: row.get(0)?,
            access_level_id: row.get(1)?,
            entitlement: Entitlement {
                window: AccessWindow {
                    is_active: row.get(2)?,
                    expires_at: time(row.get(3)?)?,
                    starts_at: time(row.get(4)?)?,
                    is_lifetime: row.get(6)?,
                },
                will_renew: row.get(5)?,
                in_grace_period: row.get(7)?,
                is_refund: row.get(8)?,
                store: arc(row.get(9)?),
                vendor_product_id: arc(row.get(10)?),
                environment: arc(row.get(11)?),
                last_event_id: Arc::from(row.get::<_, String>(12)?),
                last_event_type: EventType::from_name(&last_type)
                    .ok_or_else(|| StoreError::Corrupt(format!("event type {last_type}")))?,
                last_event_at: time(Some(row.get(14)?))?.unwrap_or(Timestamp::from_micros(0)),
                shared_from: arc(row.get(16)?),
                sharing_group: arc(row.get(17)?),
            },
            reported_active: row.get(15)?,
        })
    })();
    Ok(parsed)
}

/// The saved state of one level, if any.
pub fn entitlement(
    conn: &Connection,
    profile_id: &str,
    access_level_id: &str,
) -> Result<Option<EntitlementRow>, StoreError> {
    let sql = format!(
        "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements WHERE profile_id = ?1 AND access_level_id = ?2"
    );
    let row = conn
        .prepare_cached(&sql)?
        .query_row(params![profile_id, access_level_id], entitlement_row)
        .optional()?;
    row.transpose()
}

pub fn save_entitlement(
    conn: &Connection,
    profile_id: &str,
    access_level_id: &str,
    e: &Entitlement,
    reported_active: bool,
) -> Result<(), StoreError> {
    let text = |t: Option<Timestamp>| t.map(Timestamp::to_rfc3339);
    let sql = format!(
        "INSERT OR REPLACE INTO entitlements ({ENTITLEMENT_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
    );
    conn.prepare_cached(&sql)?.execute(params![
        profile_id,
        access_level_id,
        e.window.is_active,
        text(e.window.expires_at),
        text(e.window.starts_at),
        e.will_renew,
        e.window.is_lifetime,
        e.in_grace_period,
        e.is_refund,
        e.store.as_deref(),
        e.vendor_product_id.as_deref(),
        e.environment.as_deref(),
        &*e.last_event_id,
        e.last_event_type.name(),
        e.last_event_at.to_rfc3339(),
        reported_active,
        e.shared_from.as_deref(),
        e.sharing_group.as_deref(),
    ])?;
    Ok(())
}

/// The levels a profile has a row for.
pub fn levels_of_profile(conn: &Connection, profile_id: &str) -> Result<Vec<Arc<str>>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT access_level_id FROM entitlements WHERE profile_id = ?1")?;
    let rows = stmt.query_map(params![profile_id], |r| r.get::<_, String>(0))?;
    Ok(rows.map(|r| r.map(Arc::from)).collect::<Result<_, _>>()?)
}

/// The levels whose effective access the clock has flipped since the feed last said:
/// reported active but past `expires_at`, or reported inactive but past `starts_at`
/// and not yet ended. Each part is a range of a partial index (schema.sql), so a tick
/// reads the levels due and the few with a start ahead, not every level ever ended.
pub fn due_for_clock(conn: &Connection, now: Timestamp) -> Result<Vec<EntitlementRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&due_for_clock_sql())?;
    let mut rows = stmt.query(params![now.to_rfc3339()])?;
    let mut due = Vec::new();
    while let Some(row) = rows.next()? {
        let row = entitlement_row(row)??;
        if row.entitlement.window.grants_at(now) != row.reported_active {
            due.push(row);
        }
    }
    Ok(due)
}

/// The query of [`due_for_clock`] (`?1`: now).
fn due_for_clock_sql() -> String {
    format!(
        "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE reported_active = 1 AND is_lifetime = 0 AND expires_at IS NOT NULL \
         AND expires_at <= ?1 \
         UNION ALL \
         SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE reported_active = 0 AND is_active = 1 AND starts_at IS NOT NULL \
         AND starts_at <= ?1 AND is_lifetime = 0 AND expires_at > ?1 \
         UNION ALL \
         SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE reported_active = 0 AND is_active = 1 AND starts_at IS NOT NULL \
         AND starts_at <= ?1 AND is_lifetime = 0 AND expires_at IS NULL \
         UNION ALL \
         SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE reported_active = 0 AND is_active = 1 AND starts_at IS NOT NULL \
         AND starts_at <= ?1 AND is_lifetime = 1"
    )
}

/// Sets what the feed last said of a level.
pub fn set_reported(
    conn: &Connection,
    profile_id: &str,
    access_level_id: &str,
    active: bool,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE entitlements SET reported_active = ?3 WHERE profile_id = ?1 AND access_level_id = ?2",
    )?
    .execute(params![profile_id, access_level_id, active])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open, Synchronous};

    /// The clock's query reads ranges of partial indexes, never a whole table, and a
    /// level that started and then ended with no event (it stays `is_active = 1`) is
    /// outside the range it reads for starts.
    #[test]
    fn the_clock_reads_only_index_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _lock) = open(&dir.path().join("e.db"), Synchronous::Normal).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", due_for_clock_sql()))
            .unwrap()
            .query_map([Timestamp::from_micros(0).to_rfc3339()], |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let searches: Vec<&String> = plan.iter().filter(|d| d.starts_with("SEARCH")).collect();
        assert!(plan.iter().all(|d| !d.starts_with("SCAN")), "{plan:#?}");
        assert_eq!(searches.len(), 4, "{plan:#?}");
        assert!(
            searches
                .iter()
                .any(|d| d.contains("entitlements_unreported_by_end")
                    && d.contains("is_lifetime=? AND expires_at>?")),
            "{plan:#?}"
        );
    }
}
