//! Recomputes the projection from the event log: after a change of `--event-names`,
//! `--product-levels` or `--sandbox`, and as the check that the live table is what
//! the log says (the crash tests use it).

use super::entitlements::{entitlement_row, ENTITLEMENT_COLUMNS};
use super::history;
use super::ingest::{record_profile, Effects};
use super::writer::Decode;
use super::{record_change, save_entitlement, ChangeReason, StoreError};
use crate::projection::{self, membership, sharing, Entitlement, Event, Membership, Rules};
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Sharing links (each way) that `sharing_links` lacked or held in excess.
    pub relinked: u64,
}

impl Summary {
    pub fn differs(&self) -> bool {
        self.changed + self.added + self.removed + self.retyped + self.relinked > 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events of {} profiles; entitlements: {} unchanged, {} changed, {} added, {} removed; \
             {} events retyped; {} sharing links relinked",
            self.events,
            self.profiles,
            self.unchanged,
            self.changed,
            self.added,
            self.removed,
            self.retyped,
            self.relinked
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
    // The sharing links first: profiles linked are folded together, after the rest.
    let links = links_in_order(&tx, rules, decode, write)?;
    let clusters = Clusters::of(&links);
    summary.relinked = relink(&tx, &links, write)?;
    {
        let mut stmt = tx.prepare(
            "SELECT seq, profile_id, canonical_type, body FROM events ORDER BY profile_id, seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut profile: Option<String> = None;
        let mut events: Vec<Event> = Vec::new();
        let alone = HashMap::new();
        let fold_alone = |profile_id: &str, events: &[Event], summary: &mut Summary| {
            if clusters.of_profile.contains_key(profile_id) {
                return Ok(());
            }
            let folded = folded_of(profile_id, events, rules, &alone);
            reconcile(&tx, profile_id, folded, write, now, summary)
        };
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
                    fold_alone(&done, &events, &mut summary)?;
                }
                events.clear();
                profile = Some(profile_id);
                summary.profiles += 1;
            }
            events.push(event);
            summary.events += 1;
        }
        if let Some(done) = profile {
            fold_alone(&done, &events, &mut summary)?;
        }
    }
    for (members, links) in &clusters.clusters {
        let mut events = Vec::new();
        for member in members {
            events.extend(
                history::profile_events(&tx, member, i64::MAX, decode)?
                    .into_iter()
                    .map(|logged| logged.event),
            );
        }
        for member in members {
            let folded = folded_of(member, &events, rules, links);
            reconcile(&tx, member, folded, write, now, &mut summary)?;
        }
    }
    // Profiles with rows and no events at all (made by hand): the log folds them to
    // nothing, so their rows go, and the feed hears of it, as for any level removed.
    // (A profile that only a sharing declaration named has no events of its own: its
    // rows are its group's, folded above.)
    let orphans: Vec<String> = tx
        .prepare(
            "SELECT DISTINCT profile_id FROM entitlements \
             WHERE profile_id NOT IN (SELECT profile_id FROM events)",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for profile_id in &orphans {
        if !clusters.of_profile.contains_key(profile_id.as_str()) {
            reconcile(&tx, profile_id, BTreeMap::new(), write, now, &mut summary)?;
        }
    }
    summary.retyped = retype.len() as u64;
    if write {
        let mut update = tx.prepare("UPDATE events SET canonical_type = ?2 WHERE seq = ?1")?;
        for (seq, canonical) in &retype {
            update.execute(params![seq, canonical])?;
        }
        drop(update);
        tx.execute("DELETE FROM upgrade_tasks WHERE task = 'rebuild'", [])?;
        tx.commit()?;
    }
    Ok(summary)
}

/// Finishes what a schema upgrade left for a start with the configuration (see
/// `upgrade_tasks` in schema.sql): rebuilds the projection when the upgrade to version
/// 4 found stored events that declare shared access. Returns the rebuild's summary,
/// when one ran.
pub fn finish_upgrade(
    conn: &mut Connection,
    rules: &Rules,
    decode: &dyn Decode,
    now: Timestamp,
) -> Result<Option<Summary>, StoreError> {
    let pending: Option<String> = conn
        .query_row(
            "SELECT reason FROM upgrade_tasks WHERE task = 'rebuild'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let Some(reason) = pending else {
        return Ok(None);
    };
    tracing::info!(
        reason,
        "rebuilding the projection, as the schema upgrade asked"
    );
    let summary = rebuild(conn, rules, decode, true, now)?;
    tracing::info!(%summary, "rebuilt");
    Ok(Some(summary))
}

/// Links by level, both ways.
type Links = projection::LinksByLevel;
use crate::projection::sharing::LevelLink;

/// The levels of `profile_id` folded from `events` (its own, or its cluster's).
fn folded_of(
    profile_id: &str,
    events: &[Event],
    rules: &Rules,
    links: &Links,
) -> BTreeMap<Arc<str>, Entitlement> {
    projection::project_with_links(events, rules, Some(links))
        .into_iter()
        .filter(|((profile, _), _)| **profile == *profile_id)
        .map(|((_, level), e)| (level, e))
        .collect()
}

/// Every link the stored declarations make under `rules`, by level, in event order up
/// to the bound (the live writer checks the bound in arrival order: past it, the two
/// may differ, and this one wins). Only bodies that mention the field are parsed.
/// With `write`, the profiles a declaration names get their `profiles` row and
/// `customer_user_id`, as the writer gives them (a file from before version 4 lacks
/// them).
fn links_in_order(
    conn: &Connection,
    rules: &Rules,
    decode: &dyn Decode,
    write: bool,
) -> Result<Vec<LevelLink>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT seq, body FROM events WHERE body LIKE '%profiles_sharing_access_level%'",
    )?;
    let mut rows = stmt.query([])?;
    let mut declarations: Vec<Event> = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let body: String = row.get(1)?;
        let event = decode
            .decode(&body)
            .ok_or_else(|| StoreError::Corrupt(format!("event {seq} no longer parses")))?;
        if let (Some(_), Membership::Joins(shared)) = (rules.level_of(&event), membership(&event)) {
            if write {
                let at = (event.event_datetime, &*event.id);
                for other in shared {
                    let user = other.customer_user_id.as_ref();
                    record_profile(conn, &other.profile_id, user, at, &mut Effects::default())?;
                }
            }
            declarations.push(event);
        }
    }
    Ok(sharing::declared_links(&declarations, rules))
}

/// Makes `sharing_links` hold `links` (with `write`); returns how many links differ.
fn relink(conn: &Connection, links: &[LevelLink], write: bool) -> Result<u64, StoreError> {
    let mut wanted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for (level, a, b, _) in links {
        wanted.insert((level.to_string(), a.to_string(), b.to_string()));
        wanted.insert((level.to_string(), b.to_string(), a.to_string()));
    }
    let stored: BTreeSet<(String, String, String)> = conn
        .prepare("SELECT access_level_id, profile_id, shared_with FROM sharing_links")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let differ = wanted.symmetric_difference(&stored).count() as u64;
    if write && differ > 0 {
        conn.execute("DELETE FROM sharing_links", [])?;
        let mut insert = conn.prepare(
            "INSERT INTO sharing_links (profile_id, access_level_id, shared_with, profile_event_id) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )?;
        for (level, a, b, id) in links {
            insert.execute(params![&**a, &**level, &**b, &**id])?;
            insert.execute(params![&**b, &**level, &**a, &**id])?;
        }
    }
    Ok(differ)
}

/// The profiles linked for any level, in clusters (linked through any level), each
/// with its links.
struct Clusters {
    of_profile: HashMap<Arc<str>, usize>,
    clusters: Vec<(BTreeSet<Arc<str>>, Links)>,
}

impl Clusters {
    fn of(links: &[LevelLink]) -> Self {
        let mut of_profile: HashMap<Arc<str>, usize> = HashMap::new();
        let mut clusters: Vec<(BTreeSet<Arc<str>>, Links)> = Vec::new();
        for (level, a, b, _) in links {
            let ca = *of_profile.entry(a.clone()).or_insert_with(|| {
                clusters.push((BTreeSet::from([a.clone()]), Links::new()));
                clusters.len() - 1
            });
            let cb = *of_profile.entry(b.clone()).or_insert_with(|| {
                clusters.push((BTreeSet::from([b.clone()]), Links::new()));
                clusters.len() - 1
            });
            if ca != cb {
                let (members, moved_links) = std::mem::take(&mut clusters[cb]);
                for m in &members {
                    of_profile.insert(m.clone(), ca);
                }
                clusters[ca].0.extend(members);
                for (l, pairs) in moved_links {
                    clusters[ca].1.entry(l).or_default().extend(pairs);
                }
            }
            let pairs = clusters[ca].1.entry(level.clone()).or_default();
            pairs.insert((a.clone(), b.clone()));
            pairs.insert((b.clone(), a.clone()));
        }
        clusters.retain(|(members, _)| !members.is_empty());
        let of_profile = clusters
            .iter()
            .enumerate()
            .flat_map(|(i, (members, _))| members.iter().map(move |m| (m.clone(), i)))
            .collect();
        Clusters {
            of_profile,
            clusters,
        }
    }
}

/// Compares one profile's folded levels with its rows, and writes the difference.
/// A change of effective access it causes goes to the change feed as `rebuild`.
fn reconcile(
    conn: &Connection,
    profile_id: &str,
    folded: BTreeMap<Arc<str>, Entitlement>,
    write: bool,
    now: Timestamp,
    summary: &mut Summary,
) -> Result<(), StoreError> {
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
            shared_from: None,
            sharing_group: None,
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
