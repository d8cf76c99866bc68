//! Warming the index at start-up ([`warm_index`]) and the reads it takes: how many
//! profiles, every level and user in one scan, and the newest event and its received
//! time, which the status starts from.

use super::entitlements::time;
use super::StoreError;
use crate::index::{AssembledProfile, Index, LevelRow, ProfileAssembler};
use crate::projection::AccessWindow;
use crate::status::Status;
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
/// a cache kept small here, since a scan reads each page once (measured:
/// docs/performance.md#memory-per-profile).
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
         last_event_at, shared_from FROM entitlements ORDER BY profile_id, access_level_id",
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
                    shared_from: optional_text(row, 13)?,
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

/// Loads committed state into the index: this thread reads SQLite and assembles whole
/// profiles while a second one puts them in the map, whose random inserts miss the CPU
/// cache (on two cores the two overlap: docs/performance.md#warm-up-by-whole-profiles).
pub fn warm_index(
    conn: &rusqlite::Connection,
    index: &Index,
    status: &Status,
) -> Result<(), StoreError> {
    status.record_commit(newest_received(conn)?);
    // GET /changes reads the feed only when this says there is something past the
    // cursor: without it, a restarted daemon would answer "nothing new" until the
    // next change.
    status.record_change(super::newest_change(conn)?);
    status.release_events(newest_event(conn)?);
    // Small chunks: profiles in flight are freed after warm-up but their memory stays
    // with the process (10,000-row chunks left ~10 MB more resident on 100k profiles).
    const CHUNK: usize = 1_000;
    let (chunks, received) = std::sync::mpsc::sync_channel::<Vec<AssembledProfile>>(4);
    std::thread::scope(|scope| {
        let filler = scope.spawn(move || {
            for (profile_id, profile) in received.into_iter().flatten() {
                index.insert_profile(profile_id, profile);
            }
        });
        let read = with_mmap(conn, || {
            let mut assembler = ProfileAssembler::default();
            let mut profiles = Vec::with_capacity(CHUNK);
            let flush = |profiles: &mut Vec<AssembledProfile>| {
                // The filler only stops early by panicking, which the join reports.
                let _ = chunks.send(std::mem::replace(profiles, Vec::with_capacity(CHUNK)));
            };
            each_level_and_user(conn, |profile_id, row| {
                let finished = match row {
                    ProfileRow::Level(level) => assembler.level(index, profile_id, &level),
                    ProfileRow::CustomerUserId(user) => {
                        assembler.customer_user_id(profile_id, user)
                    }
                };
                profiles.extend(finished);
                if profiles.len() >= CHUNK {
                    flush(&mut profiles);
                }
            })?;
            profiles.extend(assembler.finish());
            flush(&mut profiles);
            Ok(())
        });
        drop(chunks);
        match filler.join() {
            Ok(()) => read,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Change;
    use crate::projection::{Entitlement, EventType};
    use std::sync::Arc;

    /// Warm-up assembles whole profiles from two scans merged by `profile_id`; the
    /// writer applies changes one at a time. From the same rows, both must build the
    /// same index: ids that sort differently as bytes and as numbers ("p10" < "p2"),
    /// non-ASCII ids, profiles with levels and no user, a user and no levels, several
    /// levels, a profile with neither, and two profiles sharing a user.
    #[test]
    fn warm_up_builds_what_applying_the_rows_builds() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _lock) =
            crate::store::open(&dir.path().join("e.db"), crate::store::Synchronous::Normal)
                .unwrap();
        let applied = Index::new();
        let profiles = [
            "p1",
            "p10",
            "p2",
            "p9",
            "é-profile",
            "z",
            "p1-only-user",
            "nothing",
        ];
        for (n, profile_id) in profiles.into_iter().enumerate() {
            let levels = match profile_id {
                "p1-only-user" | "nothing" => &[][..],
                "p2" => &["premium", "gold", "a-level"][..],
                "z" => &["premium", "ü-level"][..],
                _ => &["premium"][..],
            };
            for (k, level) in levels.iter().enumerate() {
                let at = |days: i64| {
                    Some(Timestamp::from_micros(
                        1_900_000_000_000_000 + days * 86_400_000_000,
                    ))
                };
                let entitlement = Entitlement {
                    window: AccessWindow {
                        is_active: n % 2 == 0,
                        is_lifetime: k == 1,
                        expires_at: (k != 1).then(|| at(n as i64)).flatten(),
                        starts_at: (n == 3).then(|| at(-1)).flatten(),
                    },
                    will_renew: k == 0,
                    in_grace_period: n == 2,
                    is_refund: n == 5,
                    store: (n != 4).then(|| Arc::from(["app_store", "play_store"][k % 2])),
                    vendor_product_id: Some(Arc::from(format!("product-{}", n % 3))),
                    environment: (k == 0).then(|| Arc::from("Production")),
                    last_event_id: Arc::from(format!("e-{n}-{k}")),
                    last_event_type: EventType::SubscriptionStarted,
                    last_event_at: at(-(n as i64)).unwrap(),
                    shared_from: None,
                    sharing_group: None,
                };
                crate::store::save_entitlement(&conn, profile_id, level, &entitlement, false)
                    .unwrap();
                applied.apply([Change::Level {
                    profile_id: profile_id.into(),
                    access_level_id: (*level).into(),
                    entitlement: Some(entitlement),
                }]);
            }
            let user = match profile_id {
                "p10" | "p2" => Some("shared-user"),
                "p9" | "nothing" => None,
                other => Some(other),
            };
            conn.execute(
                "INSERT INTO profiles (profile_id, customer_user_id) VALUES (?1, ?2)",
                rusqlite::params![profile_id, user],
            )
            .unwrap();
            if let Some(user) = user {
                applied.apply([Change::CustomerUserId {
                    profile_id: profile_id.into(),
                    customer_user_id: user.into(),
                }]);
            }
        }

        let warmed = Index::new();
        warm_index(&conn, &warmed, &Status::new()).unwrap();

        assert_eq!(warmed.profile_count(), applied.profile_count());
        assert_eq!(
            warmed.profile_count(),
            profiles.len() - 1,
            "\"nothing\" has no level and no user, so no entry"
        );
        for profile_id in profiles {
            let read = |index: &Index| index.with_profile(profile_id, |p| p.cloned());
            assert_eq!(read(&warmed), read(&applied), "{profile_id}");
        }
        assert_eq!(warmed.with_profile("p2", |p| p.unwrap().levels.len()), 3);
        for user in ["shared-user", "p1", "z", "p1-only-user", "p9"] {
            assert_eq!(
                warmed.profiles_of_user(user),
                applied.profiles_of_user(user),
                "{user}"
            );
        }
        assert_eq!(warmed.profiles_of_user("shared-user").len(), 2);
    }
}
