//! The SQL of shared access: the links sharing declarations made (`sharing_links`),
//! the profiles a level's events must be refolded over, and a group's members now.
//! The rule itself is the projection's (`crate::projection::sharing`).

use super::StoreError;
use crate::projection::sharing::{Link, LinksByLevel};
use crate::projection::{Event, SharedProfile, MAX_SHARING_GROUP};
use rusqlite::{params, Connection};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// Every profile ever linked with some profiles, and the links between them: what
/// decides their groups.
#[derive(Default)]
pub struct Component {
    pub profiles: BTreeSet<Arc<str>>,
    /// Each link both ways, by access level.
    pub links: LinksByLevel,
}

impl Component {
    /// The links of one level.
    pub fn links_of(&self, level: &str) -> HashSet<Link> {
        self.links.get(level).cloned().unwrap_or_default()
    }
}

/// Every profile ever linked with `profile` for `level` (or for any level, when
/// `None`), itself included. For one level at most [`MAX_SHARING_GROUP`], since
/// [`add_links`] makes no link past that.
pub fn component(
    conn: &Connection,
    level: Option<&str>,
    profile: &Arc<str>,
) -> Result<Component, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT access_level_id, shared_with FROM sharing_links \
         WHERE profile_id = ?1 AND (?2 IS NULL OR access_level_id = ?2)",
    )?;
    let mut found = Component {
        profiles: BTreeSet::from([profile.clone()]),
        links: LinksByLevel::new(),
    };
    let mut next = vec![profile.clone()];
    while let Some(p) = next.pop() {
        let mut rows = stmt.query(params![&*p, level])?;
        while let Some(row) = rows.next()? {
            let link_level: Arc<str> = Arc::from(row.get::<_, String>(0)?);
            let other: Arc<str> = Arc::from(row.get::<_, String>(1)?);
            found
                .links
                .entry(link_level)
                .or_default()
                .insert((p.clone(), other.clone()));
            if found.profiles.insert(other.clone()) {
                next.push(other);
            }
        }
    }
    Ok(found)
}

/// Records the links of a sharing declaration; whether any is new (the group must
/// then be refolded). A link that would make a group larger than
/// [`MAX_SHARING_GROUP`] is not made: a warning names the profile left out.
pub(super) fn add_links(
    conn: &Connection,
    level: &str,
    event: &Event,
    shared: &[SharedProfile],
) -> Result<bool, StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO sharing_links (profile_id, access_level_id, shared_with, profile_event_id) \
         VALUES (?2, ?1, ?3, ?4) ON CONFLICT DO NOTHING",
    )?;
    let mut own = component(conn, Some(level), &event.profile_id)?.profiles;
    let mut added = false;
    for other in shared {
        let (a, b) = (&event.profile_id, &other.profile_id);
        if own.contains(b) {
            // Already in the component: the direct link still counts (a group both
            // were in may have split since).
            for (a, b) in [(a, b), (b, a)] {
                added |= insert.execute(params![level, &**a, &**b, &*event.id])? > 0;
            }
            continue;
        }
        let theirs = component(conn, Some(level), &other.profile_id)?.profiles;
        if own.len() + theirs.len() > MAX_SHARING_GROUP {
            tracing::warn!(
                access_level_id = level,
                profile_id = &*event.profile_id,
                not_linked = &*other.profile_id,
                profile_event_id = &*event.id,
                limit = MAX_SHARING_GROUP,
                "sharing group would pass the limit: the profile is not linked, and \
                 answers from its own events"
            );
            continue;
        }
        for (a, b) in [(a, b), (b, a)] {
            insert.execute(params![level, &**a, &**b, &*event.id])?;
        }
        own.extend(theirs);
        added = true;
    }
    Ok(added)
}

/// The members of a sharing group now (`entitlements.sharing_group`).
pub(super) fn group_members(
    conn: &Connection,
    level: &str,
    group: &str,
) -> Result<Vec<Arc<str>>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT profile_id FROM entitlements WHERE access_level_id = ?1 AND sharing_group = ?2",
    )?;
    let rows = stmt.query_map(params![level, group], |r| r.get::<_, String>(0))?;
    Ok(rows.map(|r| r.map(Arc::from)).collect::<Result<_, _>>()?)
}
