//! [`Reader`] on PostgreSQL: time travel, explain and the change feed, on the pool.

use super::{changes_after, checkout, Pool, ENTITLEMENT_COLUMNS};
use crate::adapty::Decoder;
use crate::index::Index;
use crate::projection::Rules;
use crate::store::history::{self, LoggedEvent};
use crate::store::reader::Reader;
use crate::store::sharing::Component;
use crate::store::writer::Decode;
use crate::store::{AccessChange, StoreError};
use crate::timestamp::Timestamp;
use postgres::GenericClient;
use std::collections::BTreeSet;
use std::sync::Arc;

pub struct PgReader {
    pool: Pool,
    decoder: Decoder,
    rules: Arc<Rules>,
}

impl PgReader {
    pub fn new(pool: Pool, decoder: Decoder, rules: Arc<Rules>) -> Self {
        PgReader {
            pool,
            decoder,
            rules,
        }
    }
}

/// `profiles` and every profile ever linked with them (through any level), with the
/// links: `store::sharing::component` on PostgreSQL.
pub(super) fn component(
    client: &mut impl GenericClient,
    profiles: BTreeSet<Arc<str>>,
) -> Result<Component, StoreError> {
    let mut next: Vec<Arc<str>> = profiles.iter().cloned().collect();
    let mut component = Component {
        profiles,
        ..Component::default()
    };
    while !next.is_empty() {
        let ids: Vec<&str> = next.iter().map(|p| &**p).collect();
        let rows = client.query(
            "SELECT profile_id, access_level_id, shared_with FROM sharing_links \
             WHERE profile_id = ANY($1)",
            &[&ids],
        )?;
        let mut found = Vec::new();
        for row in &rows {
            let (p, level, other): (&str, &str, &str) = (row.get(0), row.get(1), row.get(2));
            let other: Arc<str> = Arc::from(other);
            component
                .links
                .entry(Arc::from(level))
                .or_default()
                .insert((Arc::from(p), other.clone()));
            if component.profiles.insert(other.clone()) {
                found.push(other);
            }
        }
        next = found;
    }
    Ok(component)
}

/// Every stored event (up to `seq` `up_to`) of a profile and of every profile ever
/// linked with it, and those links: `history::shared_events` on PostgreSQL.
pub fn shared_events(
    client: &mut impl GenericClient,
    profile_id: &str,
    up_to: i64,
    decode: &dyn Decode,
) -> Result<(Vec<LoggedEvent>, Component), StoreError> {
    // No stored id holds U+0000 (ingest refuses it; `text` cannot): unknown.
    if profile_id.contains('\0') {
        let profiles = BTreeSet::from([Arc::from(profile_id)]);
        return Ok((
            Vec::new(),
            Component {
                profiles,
                ..Component::default()
            },
        ));
    }
    let component = component(client, BTreeSet::from([Arc::from(profile_id)]))?;
    let ids: Vec<&str> = component.profiles.iter().map(|p| &**p).collect();
    let rows = client.query(
        "SELECT seq, event_type, received_at, body FROM events \
         WHERE profile_id = ANY($1) AND seq <= $2 ORDER BY profile_id, seq",
        &[&ids, &up_to],
    )?;
    let mut logged = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq: i64 = row.get(0);
        logged.push(LoggedEvent {
            seq,
            received_type: row.get(1),
            received_at: super::time(row.get(2))?,
            event: decode
                .decode(row.get(3))
                .ok_or_else(|| StoreError::Corrupt(format!("event {seq} no longer parses")))?,
        });
    }
    Ok((logged, component))
}

/// The ids that may be stored (none holds U+0000).
fn known(ids: &[String]) -> Vec<&str> {
    ids.iter()
        .map(String::as_str)
        .filter(|id| !id.contains('\0'))
        .collect()
}

impl Reader for PgReader {
    fn shared_events(
        &self,
        profile_id: &str,
        up_to: i64,
    ) -> Result<(Vec<LoggedEvent>, Component), StoreError> {
        shared_events(
            &mut *checkout(&self.pool)?,
            profile_id,
            up_to,
            &self.decoder,
        )
    }

    fn index_as_of(
        &self,
        profile_ids: &[String],
        at: Timestamp,
        up_to: i64,
    ) -> Result<Index, StoreError> {
        let mut client = checkout(&self.pool)?;
        history::index_of(profile_ids, at, &self.rules, |profile_id| {
            shared_events(&mut *client, profile_id, up_to, &self.decoder)
        })
    }

    fn changes_after(
        &self,
        after: i64,
        up_to: i64,
        limit: u32,
    ) -> Result<Vec<AccessChange>, StoreError> {
        changes_after(&mut *checkout(&self.pool)?, after, up_to, limit)
    }

    fn profiles_of_user(&self, customer_user_id: &str) -> Result<Vec<String>, StoreError> {
        if customer_user_id.contains('\0') {
            return Ok(Vec::new());
        }
        let rows = checkout(&self.pool)?.query(
            "SELECT profile_id FROM profiles WHERE customer_user_id = $1 ORDER BY profile_id",
            &[&customer_user_id],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn index_now(&self, profile_ids: &[String]) -> Result<Index, StoreError> {
        let profile_ids: Vec<&str> = known(profile_ids);
        let mut client = checkout(&self.pool)?;
        let index = Index::new();
        let mut changes = Vec::new();
        for row in client.query(
            &format!("SELECT {ENTITLEMENT_COLUMNS} FROM entitlements WHERE profile_id = ANY($1)"),
            &[&profile_ids],
        )? {
            changes.push(super::follow::level_change(&row)?);
        }
        for row in client.query(
            "SELECT profile_id, customer_user_id FROM profiles \
             WHERE profile_id = ANY($1) AND customer_user_id IS NOT NULL",
            &[&profile_ids],
        )? {
            changes.push(super::follow::user_change(&row));
        }
        index.apply(changes);
        Ok(index)
    }

    /// The database's size as PostgreSQL counts it (0 while unreachable).
    fn disk_bytes(&self) -> u64 {
        checkout(&self.pool)
            .ok()
            .and_then(|mut c| {
                c.query_one("SELECT pg_database_size(current_database())", &[])
                    .ok()
            })
            .map_or(0, |row| row.get::<_, i64>(0).max(0) as u64)
    }
}
