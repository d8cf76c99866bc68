//! The SQL of each event, inside the writer's transaction: store it, keep its
//! profile current, fold it into its level (of every member of its sharing group),
//! and record what flipped; and the clock's report of what flipped with no event.

use super::sharing;
use super::writer::{Decode, Outcome};
use super::{record_change, ChangeReason, EntitlementRow, StoreError};
use crate::adapty::ReceivedEvent;
use crate::index::Change;
use crate::projection::{
    self, Entitlement, Event, EventType, GroupState, Groups, Membership, Rules,
};
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection};
use std::collections::BTreeSet;
use std::sync::Arc;

/// What a transaction changed that others must learn once it commits.
#[derive(Default)]
pub(super) struct Effects {
    pub(super) index: Vec<Change>,
    pub(super) newest_change: Option<i64>,
    pub(super) newest_event: Option<i64>,
    /// Levels set to renew that the clock just ended: worth asking Adapty about.
    pub(super) lapses: Vec<Lapse>,
}

/// A level that was set to renew and reached its `expires_at` with no newer event:
/// the renewal may have happened and its webhook been lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapse {
    pub profile_id: Arc<str>,
    pub access_level_id: Arc<str>,
    pub expires_at: Option<Timestamp>,
}

impl Effects {
    pub(super) fn absorb(&mut self, other: Effects) {
        self.lapses.extend(other.lapses);
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
    let at = (event.event_datetime, &*event.id);
    record_profile(
        conn,
        &event.profile_id,
        event.customer_user_id.as_ref(),
        at,
        effects,
    )?;
    let Some(event_type) = event.event_type else {
        return Ok(Outcome::Ignored);
    };
    match rules.level_of(event) {
        // A webhook touches one level (found once: the hot path).
        Some(level) => fold_level(conn, &level, event, event_type, now, rules, decode, effects)?,
        // An API snapshot: the levels it lists, and those the profile holds, each as
        // that level's fold sees it.
        None if event.api_levels.is_some() => {
            let mut levels: BTreeSet<Arc<str>> = rules.listed_levels(event).into_iter().collect();
            levels.extend(super::levels_of_profile(conn, &event.profile_id)?);
            for level in &levels {
                if let Some(view) = rules.view(event, level) {
                    fold_level(conn, level, &view, event_type, now, rules, decode, effects)?;
                }
            }
        }
        None => return Ok(Outcome::Ignored),
    }
    Ok(Outcome::Stored)
}

/// Folds an event (as `level`'s fold sees it) into that level of its profile, and of
/// every member of its sharing group.
#[allow(clippy::too_many_arguments)]
fn fold_level(
    conn: &Connection,
    level: &Arc<str>,
    event: &Event,
    event_type: EventType,
    now: Timestamp,
    rules: &Rules,
    decode: &dyn Decode,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let at = (event.event_datetime, &*event.id);
    let membership = projection::membership(event);
    let mut linked = false;
    if let Membership::Joins(shared) = membership {
        for other in shared {
            let user = other.customer_user_id.as_ref();
            record_profile(conn, &other.profile_id, user, at, effects)?;
        }
        linked = sharing::add_links(conn, level, event, shared)?;
    }
    let saved = super::entitlement(conn, &event.profile_id, level)?;
    let rows = match direct_fold(conn, level, event, membership, linked, saved.as_ref())? {
        Some(rows) => rows,
        None => refold(conn, level, event, rules, decode)?,
    };
    let mut saved = saved;
    for (profile_id, next) in rows {
        let saved_row = if profile_id == event.profile_id {
            saved.take()
        } else {
            super::entitlement(conn, &profile_id, level)?
        };
        let changed = Changed {
            profile_id: &profile_id,
            level,
            saved: saved_row,
            next,
        };
        changed.record(conn, event, event_type, now, effects)?;
    }
    Ok(())
}

/// Each profile an event may change, with its row after it (`None`: no state).
type Rows = Vec<(Arc<str>, Option<Entitlement>)>;

/// The rows an event changes, folded onto the saved state: when it sorts after every
/// event of its group's state and changes no membership (nearly every event). Every
/// member of the group gets the new state. `None`: the level must be refolded.
fn direct_fold(
    conn: &Connection,
    level: &str,
    event: &Event,
    membership: Membership<'_>,
    linked: bool,
    saved: Option<&EntitlementRow>,
) -> Result<Option<Rows>, StoreError> {
    let Some(saved) = saved else {
        return Ok(None);
    };
    let in_order = projection::order_key(event).is_some_and(|k| k > saved.entitlement.last_key());
    if linked || !in_order {
        return Ok(None);
    }
    let group = saved.entitlement.sharing_group.clone();
    let members = match &group {
        Some(group) => sharing::group_members(conn, level, group)?,
        None => vec![event.profile_id.clone()],
    };
    let state = GroupState::of_member(&event.profile_id, saved.entitlement.clone());
    let next = match membership {
        Membership::Stays => state.fold(event),
        Membership::Leaves if group.is_none() => state.fold(event),
        Membership::Joins(shared) if shared.iter().all(|s| members.contains(&s.profile_id)) => {
            match projection::sharing::declared([&state], event) {
                Some(next) => next,
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(
        members
            .into_iter()
            .map(|m| {
                let row = next.for_member(&m, group.as_ref());
                (m, Some(row))
            })
            .collect(),
    ))
}

/// The rows of every profile ever linked with the event's for its level, folded again
/// from the log: when the event arrived out of order, is the level's first, or makes
/// or ends a link.
fn refold(
    conn: &Connection,
    level: &Arc<str>,
    event: &Event,
    rules: &Rules,
    decode: &dyn Decode,
) -> Result<Rows, StoreError> {
    let component = sharing::component(conn, Some(level), &event.profile_id)?;
    let events = level_log(conn, &component.profiles, event, level, rules, decode)?;
    let groups = Groups::with_links(component.links_of(level)).fold_all(&events);
    Ok(component
        .profiles
        .into_iter()
        .map(|p| {
            let row = groups.state_of(&p);
            (p, row)
        })
        .collect())
}

/// One profile's level before and after an event.
struct Changed<'a> {
    profile_id: &'a Arc<str>,
    level: &'a Arc<str>,
    saved: Option<EntitlementRow>,
    next: Option<Entitlement>,
}

impl Changed<'_> {
    /// Saves the new state, records a flip in the change feed (a flip by another
    /// member's event says so), and tells the index.
    fn record(
        self,
        conn: &Connection,
        event: &Event,
        event_type: EventType,
        now: Timestamp,
        effects: &mut Effects,
    ) -> Result<(), StoreError> {
        let Changed {
            profile_id,
            level,
            saved,
            next,
        } = self;
        let (saved, reported) = match saved {
            Some(row) => (Some(row.entitlement), row.reported_active),
            None => (None, false),
        };
        let active_now = next.as_ref().is_some_and(|e| e.window.grants_at(now));
        if active_now != reported {
            let reason = ChangeReason::Event {
                event_type,
                profile_event_id: &event.id,
                shared_from: (event.profile_id != *profile_id).then_some(&*event.profile_id),
            };
            let expires_at = next.as_ref().and_then(|e| e.window.expires_at);
            let seq = record_change(conn, profile_id, level, active_now, reason, expires_at, now)?;
            effects.newest_change = Some(seq);
        }
        if next == saved && active_now == reported {
            return Ok(());
        }
        match &next {
            Some(entitlement) => {
                super::save_entitlement(conn, profile_id, level, entitlement, active_now)?
            }
            None => {
                conn.prepare_cached(
                    "DELETE FROM entitlements WHERE profile_id = ?1 AND access_level_id = ?2",
                )?
                .execute(params![&**profile_id, &**level])?;
            }
        }
        if next != saved {
            effects.index.push(Change::Level {
                profile_id: profile_id.clone(),
                access_level_id: level.clone(),
                entitlement: next,
            });
        }
        Ok(())
    }
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
        if !active && row.entitlement.will_renew {
            effects.lapses.push(Lapse {
                profile_id: Arc::from(row.profile_id.as_str()),
                access_level_id: Arc::from(row.access_level_id.as_str()),
                expires_at: row.entitlement.window.expires_at,
            });
        }
    }
    Ok(())
}

/// Every stored event of the level of these profiles, `event` included, for refolding
/// the level. Only the other events are read back and parsed: `event` is parsed
/// already, and the first event of a new profile (the common case) reads nothing.
fn level_log(
    conn: &Connection,
    profiles: &BTreeSet<Arc<str>>,
    event: &Event,
    level: &str,
    rules: &Rules,
    decode: &dyn Decode,
) -> Result<Vec<Event>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT profile_event_id, body FROM events WHERE profile_id = ?1")?;
    let mut events = vec![event.clone()];
    for profile_id in profiles {
        let mut rows = stmt.query(params![&**profile_id])?;
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            if *profile_id == event.profile_id && id == *event.id {
                continue;
            }
            let body: String = row.get(1)?;
            let logged = decode.decode(&body).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "a stored event of profile {profile_id} no longer parses"
                ))
            })?;
            if let Some(view) = rules.view(&logged, level) {
                events.push(view.into_owned());
            }
        }
    }
    Ok(events)
}

/// Keeps `profiles` current: every profile seen (as an event's own, or named by a
/// sharing declaration) has a row, carrying the `customer_user_id` said last (by
/// `event_datetime`, then `profile_event_id`), whatever order the events came in.
pub(super) fn record_profile(
    conn: &Connection,
    profile_id: &Arc<str>,
    customer_user_id: Option<&Arc<str>>,
    (at, event_id): (Timestamp, &str),
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let Some(customer_user_id) = customer_user_id else {
        conn.prepare_cached(
            "INSERT INTO profiles (profile_id) VALUES (?1) ON CONFLICT DO NOTHING",
        )?
        .execute(params![&**profile_id])?;
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
            &**profile_id,
            &**customer_user_id,
            at.to_rfc3339(),
            event_id,
        ])?;
    if updated > 0 {
        effects.index.push(Change::CustomerUserId {
            profile_id: profile_id.clone(),
            customer_user_id: customer_user_id.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The writer's incremental path against the projection: any arrival order of any
    //! events, sharing declarations among them, with duplicates, leaves the table
    //! `project` computes from the set.
    use super::*;
    use crate::projection::{project, ApiLevel, SandboxPolicy, SharedProfile, Snapshot};
    use crate::store::entitlements::{entitlement_row, ENTITLEMENT_COLUMNS};
    use crate::store::{open, Synchronous};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    const PROFILES: [&str; 4] = ["p1", "p2", "p3", "p4"];

    fn day(n: i64) -> Timestamp {
        Timestamp::from_micros(1_900_000_000_000_000 + n * 86_400_000_000)
    }

    fn arb_event(id: usize) -> impl Strategy<Value = Event> {
        use EventType as T;
        let types = prop::sample::select(vec![
            T::SubscriptionStarted,
            T::SubscriptionRenewed,
            T::SubscriptionExpired,
            T::SubscriptionRefunded,
            T::SubscriptionRenewalCancelled,
            T::BillingIssueDetected,
            T::AccessLevelUpdated,
            T::AccessLevelUpdated,
            T::AccessLevelUpdated,
            T::AdaptyApiSnapshot,
        ]);
        (
            types,
            0i64..6, // few days, so ties happen
            prop::sample::select(vec!["monthly", "yearly"]),
            prop::option::of(1i64..40),
            any::<bool>(), // snapshot active
            prop::sample::select(vec!["premium", "pro"]),
            prop::sample::select(PROFILES.to_vec()),
            prop::collection::vec(prop::sample::select(PROFILES.to_vec()), 0..3),
            any::<bool>(), // sandbox
        )
            .prop_map(
                move |(t, d, product, expiry, active, level, profile, shared, sandbox)| Event {
                    id: Arc::from(format!("e{id:03}")),
                    profile_id: Arc::from(profile),
                    customer_user_id: None,
                    event_type: Some(t),
                    event_datetime: day(d),
                    environment: Some(Arc::from(if sandbox { "Sandbox" } else { "Production" })),
                    store: Some(Arc::from("app_store")),
                    vendor_product_id: Some(Arc::from(product)),
                    subscription_expires_at: expiry.map(day),
                    cancellation_reason: None,
                    snapshot: (t == T::AccessLevelUpdated).then(|| Snapshot {
                        access_level_id: Arc::from(level),
                        is_active: active,
                        expires_at: expiry.map(day),
                        starts_at: None,
                        will_renew: active,
                        is_lifetime: false,
                        is_in_grace_period: false,
                        is_refund: !active,
                    }),
                    shared_with: if t == T::AccessLevelUpdated {
                        let mut listed: Vec<SharedProfile> = Vec::new();
                        for p in shared.into_iter().filter(|p| *p != profile) {
                            if listed.iter().all(|s| &*s.profile_id != p) {
                                listed.push(SharedProfile {
                                    profile_id: Arc::from(p),
                                    customer_user_id: None,
                                });
                            }
                        }
                        listed
                    } else {
                        Vec::new()
                    },
                    api_levels: (t == T::AdaptyApiSnapshot).then(|| {
                        // The profile as Adapty's API lists it: some levels, or none.
                        let listed: &[&str] = match (active, level) {
                            (true, "premium") => &["premium"],
                            (true, _) => &["premium", "pro"],
                            (false, "premium") => &["pro"],
                            (false, _) => &[],
                        };
                        listed
                            .iter()
                            .map(|l| ApiLevel {
                                snapshot: Snapshot {
                                    access_level_id: Arc::from(*l),
                                    is_active: true,
                                    expires_at: expiry.map(day),
                                    starts_at: None,
                                    will_renew: true,
                                    is_lifetime: expiry.is_none(),
                                    is_in_grace_period: false,
                                    is_refund: false,
                                },
                                store: Some(Arc::from("app_store")),
                                vendor_product_id: Some(Arc::from(product)),
                                environment: Some(Arc::from(if sandbox {
                                    "Sandbox"
                                } else {
                                    "Production"
                                })),
                            })
                            .collect()
                    }),
                },
            )
    }

    fn arb_events() -> impl Strategy<Value = Vec<Event>> {
        (1usize..20).prop_flat_map(|n| (0..n).map(arb_event).collect::<Vec<_>>())
    }

    /// The table after the events arrive in this order through [`ingest`].
    fn stored_after(
        arrivals: &[Event],
        rules: &Rules,
    ) -> BTreeMap<(Arc<str>, Arc<str>), Entitlement> {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _lock) = open(&dir.path().join("e.db"), Synchronous::Normal).unwrap();
        // Bodies are event ids; the decoder looks the event up.
        let by_id: HashMap<String, Event> = arrivals
            .iter()
            .map(|e| (e.id.to_string(), e.clone()))
            .collect();
        let decode = move |body: &str| by_id.get(body).cloned();
        for event in arrivals {
            let received = ReceivedEvent {
                event: event.clone(),
                received_type: event.event_type.unwrap().name().to_owned(),
                body: event.id.to_string(),
            };
            let mut effects = Effects::default();
            ingest(&conn, &received, day(3), rules, &decode, &mut effects).unwrap();
        }
        let mut stmt = conn
            .prepare(&format!("SELECT {ENTITLEMENT_COLUMNS} FROM entitlements"))
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut table = BTreeMap::new();
        while let Some(row) = rows.next().unwrap() {
            let row = entitlement_row(row).unwrap().unwrap();
            table.insert(
                (Arc::from(row.profile_id), Arc::from(row.access_level_id)),
                row.entitlement,
            );
        }
        table
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_table_is_the_projection_whatever_the_arrival_order(
            events in arb_events(),
            seed in any::<u64>(),
            duplicates in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            ignore_sandbox in any::<bool>(),
        ) {
            let rules = Rules::new(
                HashMap::new(),
                if ignore_sandbox { SandboxPolicy::Ignore } else { SandboxPolicy::Grant },
            );
            let expected = project(&events, &rules);
            let arrivals = crate::projection::testing::arrivals(&events, &duplicates, seed);
            prop_assert_eq!(stored_after(&arrivals, &rules), expected.clone());
            prop_assert_eq!(stored_after(&events, &rules), expected);
        }
    }
}
