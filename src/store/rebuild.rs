//! Recomputes the projection from the event log: after a change of `--event-names`,
//! `--product-levels` or `--sandbox`, and as the check that the live table is what
//! the log says (the crash tests use it).

use super::entitlements::{entitlement_row, ENTITLEMENT_COLUMNS};
use super::writer::Decode;
use super::{record_change, save_entitlement, ChangeReason, StoreError};
use crate::projection::{self, Entitlement, Event, Rules};
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection, TransactionBehavior};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// What a rebuild found (and, unless checking, changed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub profiles: u64,
    pub unchanged: u64,
    pub changed: u64,
    pub added: u64,
    pub removed: u64,
    /// Events whose `canonical_type` the current `--event-names` names otherwise.
    pub retyped: u64,
}

impl Summary {
    pub fn differs(&self) -> bool {
        self.changed + self.added + self.removed + self.retyped > 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events of {} profiles; entitlements: {} unchanged, {} changed, {} added, {} removed; \
             {} events retyped",
            self.events,
            self.profiles,
            self.unchanged,
            self.changed,
            self.added,
            self.removed,
            self.retyped
        )
    }
}

/// Folds every profile's events again under `rules` and compares with `entitlements`.
/// With `write`, makes the table (and `events.canonical_type`) match, in one
/// transaction; without, only counts. The caller holds the writer lock.
pub fn rebuild(
    conn: &mut Connection,
    rules: &Rules,
    decode: &dyn Decode,
    write: bool,
    now: Timestamp,
) -> Result<Summary, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut summary = Summary::default();
    let mut retype: Vec<(i64, Option<&'static str>)> = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT seq, profile_id, canonical_type, body FROM events ORDER BY profile_id, seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut profile: Option<String> = None;
        let mut events: Vec<Event> = Vec::new();
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let profile_id: String = row.get(1)?;
            let stored_type: Option<String> = row.get(2)?;
            let body: String = row.get(3)?;
            let event = decode
                .decode(&body)
                .ok_or_else(|| StoreError::Corrupt(format!("event {seq} no longer parses")))?;
            let canonical = event.event_type.map(|t| t.name());
            if stored_type.as_deref() != canonical {
                retype.push((seq, canonical));
            }
            if profile.as_deref() != Some(&profile_id) {
                if let Some(done) = profile.take() {
                    reconcile(&tx, &done, &events, rules, write, now, &mut summary)?;
                }
                events.clear();
                profile = Some(profile_id);
                summary.profiles += 1;
            }
            events.push(event);
            summary.events += 1;
        }
        if let Some(done) = profile {
            reconcile(&tx, &done, &events, rules, write, now, &mut summary)?;
        }
    }
    // Profiles with rows and no events at all (made by hand): the log folds them to
    // nothing, so their rows go, and the feed hears of it, as for any level removed.
    let orphans: Vec<String> = tx
        .prepare(
            "SELECT DISTINCT profile_id FROM entitlements \
             WHERE profile_id NOT IN (SELECT profile_id FROM events)",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for profile_id in &orphans {
        reconcile(&tx, profile_id, &[], rules, write, now, &mut summary)?;
    }
    summary.retyped = retype.len() as u64;
    if write {
        let mut update = tx.prepare("UPDATE events SET canonical_type = ?2 WHERE seq = ?1")?;
        for (seq, canonical) in &retype {
            update.execute(params![seq, canonical])?;
        }
        drop(update);
        tx.commit()?;
    }
    Ok(summary)
}

/// Compares one profile's folded levels with its rows, and writes the difference.
/// A change of effective access it causes goes to the change feed as `rebuild`.
fn reconcile(
    conn: &Connection,
    profile_id: &str,
    events: &[Event],
    rules: &Rules,
    write: bool,
    now: Timestamp,
    summary: &mut Summary,
) -> Result<(), StoreError> {
    let folded: BTreeMap<Arc<str>, Entitlement> = projection::project(events, rules)
        .into_iter()
        .map(|((_, level), e)| (level, e))
        .collect();
    let mut stored: BTreeMap<String, (Entitlement, bool)> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements WHERE profile_id = ?1"
    ))?;
    let mut rows = stmt.query(params![profile_id])?;
    while let Some(row) = rows.next()? {
        let row = entitlement_row(row)??;
        stored.insert(row.access_level_id, (row.entitlement, row.reported_active));
    }
    for (level, entitlement) in &folded {
        let reported = match stored.remove(&**level) {
            Some((old, _)) if old == *entitlement => {
                summary.unchanged += 1;
                continue;
            }
            Some((_, reported)) => {
                summary.changed += 1;
                reported
            }
            None => {
                summary.added += 1;
                false
            }
        };
        if write {
            let active = entitlement.window.grants_at(now);
            if active != reported {
                let expires_at = entitlement.window.expires_at;
                record_change(
                    conn,
                    profile_id,
                    level,
                    active,
                    ChangeReason::Rebuild,
                    expires_at,
                    now,
                )?;
            }
            save_entitlement(conn, profile_id, level, entitlement, active)?;
        }
    }
    for (level, (old, reported)) in &stored {
        summary.removed += 1;
        if write {
            if *reported {
                let expires_at = old.window.expires_at;
                record_change(
                    conn,
                    profile_id,
                    level,
                    false,
                    ChangeReason::Rebuild,
                    expires_at,
                    now,
                )?;
            }
            conn.execute(
                "DELETE FROM entitlements WHERE profile_id = ?1 AND access_level_id = ?2",
                params![profile_id, level],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::AccessWindow;
    use crate::store::Synchronous;

    /// Rows of a profile with no events (made by hand) go, and the feed hears that the
    /// one it called active no longer is, as for any level a rebuild removes.
    #[test]
    fn hand_made_rows_go_and_the_feed_hears_of_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, _lock) =
            super::super::open(&dir.path().join("e.db"), Synchronous::Normal).unwrap();
        let now = Timestamp::from_micros(1_900_000_000_000_000);
        let ends = Timestamp::from_micros(1_900_100_000_000_000);
        let entitlement = Entitlement {
            window: AccessWindow {
                is_active: true,
                is_lifetime: false,
                expires_at: Some(ends),
                starts_at: None,
            },
            will_renew: true,
            in_grace_period: false,
            is_refund: false,
            store: None,
            vendor_product_id: None,
            environment: None,
            last_event_id: Arc::from("e-1"),
            last_event_type: crate::projection::EventType::SubscriptionStarted,
            last_event_at: now,
        };
        save_entitlement(&conn, "by-hand", "premium", &entitlement, true).unwrap();
        save_entitlement(&conn, "by-hand", "gold", &entitlement, false).unwrap();

        let decode = |_: &str| None::<Event>;
        let summary = rebuild(&mut conn, &Rules::default(), &decode, true, now).unwrap();
        assert_eq!(summary.removed, 2);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM entitlements", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
        let changes = super::super::changes_after(&conn, 0, i64::MAX, 10).unwrap();
        assert_eq!(
            changes.len(),
            1,
            "one change, for the level reported active"
        );
        assert_eq!(changes[0].profile_id, "by-hand");
        assert_eq!(changes[0].access_level_id, "premium");
        assert!(!changes[0].active);
        assert_eq!(changes[0].reason, "rebuild");
        assert_eq!(changes[0].expires_at.as_deref(), Some(&*ends.to_rfc3339()));
    }
}
