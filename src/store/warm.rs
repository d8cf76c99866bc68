//! The reads that warm the index at start-up: how many profiles, every level and
//! user in one scan, and the newest event and its received time, which the status
//! starts from.

use super::entitlements::time;
use super::StoreError;
use crate::index::LevelRow;
use crate::projection::AccessWindow;
use crate::timestamp::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row};

/// The newest `events.seq` (0: none).
pub fn newest_event(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?)
}

/// How many profiles the database knows: the index is sized for them up front.
pub fn profile_count(conn: &Connection) -> Result<usize, StoreError> {
    let count: i64 = conn.query_row("SELECT count(*) FROM profiles", [], |r| r.get(0))?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Runs `read` with SQLite reading the file through a memory map and a small page
/// cache, then puts both back: a full scan (warm-up) then costs page faults, not a
/// `pread` a page, and leaves no cache behind. The map is off for everything else,
/// since an I/O error under a map is a signal, not an error code. The bundled SQLite
/// maps at most its compile-time limit (2 GiB); past it, pages are read as usual, into
/// the cache, which a scan reads each page of once: at the writer's 64 MiB it filled
/// with pages nobody read again, and its memory stayed with the process (heaptrack: 69
/// MB of the 419 MB a 1M-profile warm-up left).
pub fn with_mmap<T>(
    conn: &Connection,
    read: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let cache_size: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
    conn.pragma_update(None, "cache_size", -2048)?;
    conn.pragma_update(None, "mmap_size", 1i64 << 40)?;
    let result = read();
    let unmapped = conn.pragma_update(None, "mmap_size", 0);
    let restored = conn.pragma_update(None, "cache_size", cache_size);
    // The scan's own error, if any, is the one worth reporting.
    let value = result?;
    unmapped?;
    restored?;
    Ok(value)
}

/// `received_at` of the newest stored event.
pub fn newest_received(conn: &Connection) -> Result<Option<Timestamp>, StoreError> {
    let newest: Option<String> = conn
        .query_row(
            "SELECT received_at FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    time(newest)
}

/// Column `i` of `row` as text, borrowed.
fn text<'r>(row: &'r Row<'_>, i: usize) -> Result<&'r str, StoreError> {
    Ok(row.get_ref(i)?.as_str().map_err(rusqlite::Error::from)?)
}

/// Column `i` of `row` as text or NULL, borrowed.
fn optional_text<'r>(row: &'r Row<'_>, i: usize) -> Result<Option<&'r str>, StoreError> {
    Ok(row
        .get_ref(i)?
        .as_str_or_null()
        .map_err(rusqlite::Error::from)?)
}

/// Column `i` of `row` as an instant or NULL.
fn optional_instant(row: &Row<'_>, i: usize) -> Result<Option<Timestamp>, StoreError> {
    optional_text(row, i)?
        .map(|t| {
            Timestamp::parse_rfc3339(t).ok_or_else(|| StoreError::Corrupt(format!("time {t}")))
        })
        .transpose()
}

/// A row of [`each_level_and_user`].
pub enum ProfileRow<'a> {
    Level(LevelRow<'a>),
    CustomerUserId(&'a str),
}

/// Warm-up's scan: every level in `entitlements` and every known `customer_user_id`,
/// merged in `profile_id` order, so a profile's rows come together: its levels (by
/// `access_level_id`), then its user. Both tables are keyed by `profile_id`, so this
/// is two sequential scans and no sort; rows are lent to `each`, never copied.
pub fn each_level_and_user(
    conn: &Connection,
    mut each: impl FnMut(&str, ProfileRow<'_>),
) -> Result<(), StoreError> {
    let mut levels = conn.prepare(
        "SELECT profile_id, access_level_id, is_active, expires_at, starts_at, will_renew, \
         is_lifetime, in_grace_period, is_refund, store, vendor_product_id, environment, \
         last_event_at FROM entitlements ORDER BY profile_id, access_level_id",
    )?;
    let mut users = conn.prepare(
        "SELECT profile_id, customer_user_id FROM profiles \
         WHERE customer_user_id IS NOT NULL ORDER BY profile_id",
    )?;
    let (mut levels, mut users) = (levels.query([])?, users.query([])?);
    let (mut level, mut user) = (levels.next()?, users.next()?);
    loop {
        // The next row in `profile_id` order; a profile's levels before its user.
        let level_next = match (level, user) {
            (Some(l), Some(u)) => text(l, 0)? <= text(u, 0)?,
            (l, _) => l.is_some(),
        };
        match (level_next, level, user) {
            (true, Some(row), _) => {
                let last_event_at = optional_instant(row, 12)?.ok_or_else(|| {
                    StoreError::Corrupt("entitlement without last_event_at".into())
                })?;
                let read = LevelRow {
                    access_level_id: text(row, 1)?,
                    window: AccessWindow {
                        is_active: row.get(2)?,
                        expires_at: optional_instant(row, 3)?,
                        starts_at: optional_instant(row, 4)?,
                        is_lifetime: row.get(6)?,
                    },
                    will_renew: row.get(5)?,
                    in_grace_period: row.get(7)?,
                    is_refund: row.get(8)?,
                    store: optional_text(row, 9)?,
                    vendor_product_id: optional_text(row, 10)?,
                    environment: optional_text(row, 11)?,
                    last_event_at,
                };
                each(text(row, 0)?, ProfileRow::Level(read));
                level = levels.next()?;
            }
            (false, _, Some(row)) => {
                each(text(row, 0)?, ProfileRow::CustomerUserId(text(row, 1)?));
                user = users.next()?;
            }
            // Both scans are done.
            _ => return Ok(()),
        }
    }
}
