//! The SQL of a batch of events on PostgreSQL, of the clock, and of a rebuild.
//!
//! **Locks.** Instances write concurrently, so a batch serialises with every other
//! transaction that touches the same profiles:
//! - it takes the *sharing* lock shared, then one advisory lock per profile, in the
//!   order of their keys (so two batches never wait for each other in a circle);
//! - an event of a profile that shares access, or that declares or ends sharing, would
//!   refold profiles it has not locked: it is deferred to a second transaction that
//!   takes the sharing lock exclusively (alone in the database for that moment; such
//!   events are rare);
//! - rows of the change feed are inserted last, under the *feed* lock held to COMMIT,
//!   so their `seq` values become visible in order: a reader paging the feed never
//!   sees seq 10 before seq 9 commits.
//!
//! **Fold.** Under those locks an event refolds its profile (and, in the exclusive
//! pass, every profile linked with it) from the stored log, as `project()` does: the
//! rows are the projection of the stored set whatever instance stored what, in
//! whatever order.

use super::{entitlement_row, Client, Prepared, ENTITLEMENT_COLUMNS};
use crate::adapty::ReceivedEvent;
use crate::projection::sharing::{self as rule, LinksByLevel};
use crate::projection::{self, membership, Entitlement, Event, Membership, Rules};
use crate::store::rebuild::Summary;
use crate::store::writer::{Decode, Outcome};
use crate::store::{EntitlementRow, Lapse, StoreError};
use crate::timestamp::Timestamp;
use postgres::Transaction;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Advisory lock keys ("entd" and a number; 1 is the migration's).
const SHARING_LOCK: i64 = 0x656e_7464_0000_0002;
const FEED_LOCK: i64 = 0x656e_7464_0000_0003;
/// The channel a commit that changed state notifies (followers listen to it).
pub const CHANNEL: &str = "entitled_changes";

/// What became of one event of a batch.
pub(super) enum Done {
    Outcome(Outcome),
    /// It touches sharing: the exclusive pass takes it.
    Deferred,
    /// It failed alone (its savepoint rolled back); the rest of the batch stands.
    Failed(StoreError),
}

/// A committed transaction: what became of each event, and its transaction id, which
/// the followers' horizon must pass before this instance's index shows it.
pub(super) struct Committed {
    pub(super) done: Vec<Done>,
    pub(super) xid: Option<i64>,
}

/// A row of the change feed, inserted at the end of the transaction.
struct FeedRow {
    profile_id: Arc<str>,
    access_level_id: Arc<str>,
    active: bool,
    reason: String,
    profile_event_id: Option<Arc<str>>,
    expires_at: Option<Timestamp>,
    shared_from: Option<Arc<str>>,
}

/// Why a row flipped, for the feed.
#[derive(Clone, Copy)]
enum Cause<'a> {
    Event(&'a Event),
    Rebuild,
}

/// Stores and folds a batch in one transaction. `exclusive`: the pass for events that
/// touch sharing (the sharing lock taken exclusively, nothing deferred).
///
/// The batch runs without savepoints (two round trips an event less); when an event
/// fails, the transaction is rolled back and the batch runs again with a savepoint per
/// event, so that the failing one is rolled back alone.
pub(super) fn ingest_batch(
    client: &mut Client,
    p: &mut Prepared,
    events: &[&ReceivedEvent],
    now: Timestamp,
    rules: &Rules,
    decode: &dyn Decode,
    exclusive: bool,
) -> Result<Committed, StoreError> {
    let batch = Batch {
        events,
        now,
        rules,
        decode,
        exclusive,
    };
    match batch.run(client, p, false)? {
        Some(committed) => Ok(committed),
        None => batch
            .run(client, p, true)?
            .ok_or_else(|| StoreError::Unavailable("a batch failed with savepoints".into())),
    }
}

struct Batch<'a> {
    events: &'a [&'a ReceivedEvent],
    now: Timestamp,
    rules: &'a Rules,
    decode: &'a dyn Decode,
    exclusive: bool,
}

impl Batch<'_> {
    /// One transaction; `None` when an event failed without `savepoints` (rolled back).
    fn run(
        &self,
        client: &mut Client,
        p: &mut Prepared,
        savepoints: bool,
    ) -> Result<Option<Committed>, StoreError> {
        let (now, rules, decode, exclusive) = (self.now, self.rules, self.decode, self.exclusive);
        let mut tx = client.transaction()?;
        if exclusive {
            p.execute(
                &mut tx,
                "SELECT pg_advisory_xact_lock($1)",
                &[&SHARING_LOCK],
            )?;
        } else {
            p.execute(
                &mut tx,
                "SELECT pg_advisory_xact_lock_shared($1)",
                &[&SHARING_LOCK],
            )?;
            let profiles: Vec<&str> = self.events.iter().map(|e| &*e.event.profile_id).collect();
            lock_profiles(&mut tx, p, &profiles)?;
        }
        let mut feed = Vec::new();
        let mut done = Vec::with_capacity(self.events.len());
        let mut wrote = false;
        for received in self.events {
            let mut rows = Vec::new();
            let result = if savepoints {
                let mut savepoint = tx.transaction()?;
                let result = ingest_one(
                    &mut savepoint,
                    p,
                    received,
                    now,
                    rules,
                    decode,
                    exclusive,
                    &mut rows,
                );
                match &result {
                    Ok(Done::Outcome(_)) => savepoint.commit()?,
                    // Rolled back alone, unless the connection is gone (then so is the rest).
                    _ => savepoint.rollback()?,
                }
                result
            } else {
                match ingest_one(
                    &mut tx, p, received, now, rules, decode, exclusive, &mut rows,
                ) {
                    // The transaction is aborted: run the batch again, with savepoints.
                    Err(_) => return Ok(None),
                    result => result,
                }
            };
            match result {
                Ok(Done::Outcome(outcome)) => {
                    wrote |= outcome != Outcome::Duplicate;
                    feed.extend(rows);
                    done.push(Done::Outcome(outcome));
                }
                Ok(other) => done.push(other),
                Err(error) => done.push(Done::Failed(error)),
            }
        }
        let xid = finish(&mut tx, p, &feed, now, wrote)?;
        tx.commit()?;
        Ok(Some(Committed { done, xid }))
    }
}

/// The end of every writing transaction: the feed's rows under the feed lock, the
/// followers' wake-up, and the transaction's id.
fn finish(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    feed: &[FeedRow],
    now: Timestamp,
    wrote: bool,
) -> Result<Option<i64>, StoreError> {
    if !feed.is_empty() {
        p.execute(tx, "SELECT pg_advisory_xact_lock($1)", &[&FEED_LOCK])?;
        let insert = p.get(
            tx,
            "INSERT INTO access_changes (profile_id, access_level_id, active, reason, \
             profile_event_id, expires_at, changed_at, customer_user_id, shared_from) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, \
             (SELECT customer_user_id FROM profiles WHERE profile_id = $1), $8)",
        )?;
        let changed_at = now.to_rfc3339();
        for row in feed {
            tx.execute(
                &insert,
                &[
                    &&*row.profile_id,
                    &&*row.access_level_id,
                    &row.active,
                    &row.reason,
                    &row.profile_event_id.as_deref(),
                    &row.expires_at.map(Timestamp::to_rfc3339),
                    &changed_at,
                    &row.shared_from.as_deref(),
                ],
            )?;
        }
    }
    if !wrote && feed.is_empty() {
        return Ok(None);
    }
    let xid: i64 = tx
        .query_one(
            "SELECT pg_current_xact_id()::text::bigint, pg_notify($1, '')",
            &[&CHANNEL],
        )?
        .get(0);
    Ok(Some(xid))
}

/// One advisory lock per profile, in key order: the order every writer takes them in.
fn lock_profiles(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    profiles: &[&str],
) -> Result<(), StoreError> {
    p.execute(tx,
        "SELECT pg_advisory_xact_lock(k) FROM \
         (SELECT DISTINCT hashtextextended(p, 0) AS k FROM unnest($1::text[]) AS p ORDER BY k) AS keys",
        &[&profiles],
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn ingest_one(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    received: &ReceivedEvent,
    now: Timestamp,
    rules: &Rules,
    decode: &dyn Decode,
    exclusive: bool,
    feed: &mut Vec<FeedRow>,
) -> Result<Done, StoreError> {
    let event = &received.event;
    if received.holds_nul() {
        return Err(StoreError::Unstorable(
            "a string of the event holds U+0000, which PostgreSQL's text cannot store".into(),
        ));
    }
    if !exclusive && touches_sharing(tx, p, event)? {
        return Ok(Done::Deferred);
    }
    let inserted = p.query_opt(
        tx,
        "INSERT INTO events (profile_event_id, profile_id, customer_user_id, event_type, \
         canonical_type, event_datetime, received_at, environment, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (profile_id, profile_event_id) DO NOTHING RETURNING seq",
        &[
            &&*event.id,
            &&*event.profile_id,
            &event.customer_user_id.as_deref(),
            &received.received_type,
            &event.event_type.map(|t| t.name()),
            &event.event_datetime.to_rfc3339(),
            &now.to_rfc3339(),
            &event.environment.as_deref(),
            &received.body,
        ],
    )?;
    if inserted.is_none() {
        return Ok(Done::Outcome(Outcome::Duplicate));
    }
    let at = (event.event_datetime, &*event.id);
    record_profile(
        tx,
        p,
        &event.profile_id,
        event.customer_user_id.as_ref(),
        at,
    )?;
    if event.event_type.is_none() {
        return Ok(Done::Outcome(Outcome::Ignored));
    }
    let levels: Vec<Arc<str>> = match rules.level_of(event) {
        Some(level) => vec![level],
        None if event.api_levels.is_some() => {
            let mut levels: BTreeSet<Arc<str>> = rules.listed_levels(event).into_iter().collect();
            levels.extend(levels_of_profile(tx, p, &event.profile_id)?);
            levels.into_iter().collect()
        }
        None => Vec::new(),
    };
    // (An API snapshot of a profile with no levels is stored and folded, as on SQLite.)
    if levels.is_empty() && event.api_levels.is_none() {
        return Ok(Done::Outcome(Outcome::Ignored));
    }
    let mut members = BTreeSet::from([event.profile_id.clone()]);
    let mut links = LinksByLevel::new();
    if exclusive {
        if let Membership::Joins(shared) = membership(event) {
            for other in shared {
                let user = other.customer_user_id.as_ref();
                record_profile(tx, p, &other.profile_id, user, at)?;
                members.insert(other.profile_id.clone());
            }
        }
        members = super::reader::component(tx, members)?.profiles;
    }
    let log = events_of(tx, p, &members, event, decode)?;
    if exclusive {
        links = relink(tx, p, &members, &log, rules)?;
        warn_of_refused_links(event, &levels, &links);
    }
    let folded = projection::project_with_links(&log, rules, Some(&links));
    for member in &members {
        for level in &levels {
            let next = folded.get(&(member.clone(), level.clone()));
            reconcile(tx, p, member, level, next, Cause::Event(event), now, feed)?;
        }
    }
    Ok(Done::Outcome(Outcome::Stored))
}

/// Whether the event declares or ends sharing, or its profile is linked with another.
fn touches_sharing(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    event: &Event,
) -> Result<bool, StoreError> {
    if membership(event) != Membership::Stays {
        return Ok(true);
    }
    Ok(p.query_one(
        tx,
        "SELECT EXISTS (SELECT 1 FROM sharing_links WHERE profile_id = $1)",
        &[&&*event.profile_id],
    )?
    .get(0))
}

/// A declaration's profiles that the bound on a group's size kept out: said once, when
/// the declaration arrives (as on SQLite).
fn warn_of_refused_links(event: &Event, levels: &[Arc<str>], links: &LinksByLevel) {
    let Membership::Joins(shared) = membership(event) else {
        return;
    };
    for level in levels {
        for other in shared {
            let pair = (event.profile_id.clone(), other.profile_id.clone());
            if other.profile_id != event.profile_id
                && !links.get(level).is_some_and(|l| l.contains(&pair))
            {
                tracing::warn!(
                    access_level_id = &**level,
                    profile_id = &*event.profile_id,
                    not_linked = &*other.profile_id,
                    profile_event_id = &*event.id,
                    limit = crate::projection::MAX_SHARING_GROUP,
                    "sharing group would pass the limit: the profile is not linked"
                );
            }
        }
    }
}

/// Every stored event of these profiles, `event` included: only the others are read
/// back and parsed (`event` is parsed already; the first event of a new profile, the
/// common case, reads nothing), as on SQLite (`store::ingest::level_log`).
fn events_of(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    profiles: &BTreeSet<Arc<str>>,
    event: &Event,
    decode: &dyn Decode,
) -> Result<Vec<Event>, StoreError> {
    let ids: Vec<&str> = profiles.iter().map(|p| &**p).collect();
    let rows = p.query(
        tx,
        "SELECT seq, body FROM events WHERE profile_id = ANY($1) \
         AND NOT (profile_id = $2 AND profile_event_id = $3) ORDER BY seq",
        &[&ids, &&*event.profile_id, &&*event.id],
    )?;
    let mut log = Vec::with_capacity(rows.len() + 1);
    log.push(event.clone());
    for row in &rows {
        let seq: i64 = row.get(0);
        log.push(
            decode
                .decode(row.get(1))
                .ok_or_else(|| StoreError::Corrupt(format!("event {seq} no longer parses")))?,
        );
    }
    Ok(log)
}

/// The links the declarations in `log` make, by level (in event order up to the bound,
/// as `entitled rebuild` computes them), written to `sharing_links` for `members`.
fn relink(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    members: &BTreeSet<Arc<str>>,
    log: &[Event],
    rules: &Rules,
) -> Result<LinksByLevel, StoreError> {
    let links = rule::declared_links(log, rules);
    let ids: Vec<&str> = members.iter().map(|p| &**p).collect();
    p.execute(
        tx,
        "DELETE FROM sharing_links WHERE profile_id = ANY($1)",
        &[&ids],
    )?;
    let insert = p.get(
        tx,
        "INSERT INTO sharing_links (profile_id, access_level_id, shared_with, profile_event_id) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )?;
    for (level, a, b, id) in &links {
        tx.execute(&insert, &[&&**a, &&**level, &&**b, &&**id])?;
        tx.execute(&insert, &[&&**b, &&**level, &&**a, &&**id])?;
    }
    Ok(rule::by_level(&links))
}

/// Keeps a profile's `customer_user_id` as its newest event says (ties by event id),
/// as on SQLite (`store::ingest::record_profile`).
fn record_profile(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    profile_id: &Arc<str>,
    customer_user_id: Option<&Arc<str>>,
    (at, event_id): (Timestamp, &str),
) -> Result<(), StoreError> {
    let Some(customer_user_id) = customer_user_id else {
        p.execute(
            tx,
            "INSERT INTO profiles (profile_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&&**profile_id],
        )?;
        return Ok(());
    };
    p.execute(tx,
        "INSERT INTO profiles (profile_id, customer_user_id, customer_user_id_at, customer_user_id_event) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (profile_id) DO UPDATE SET \
           customer_user_id = excluded.customer_user_id, \
           customer_user_id_at = excluded.customer_user_id_at, \
           customer_user_id_event = excluded.customer_user_id_event, \
           written_xid = pg_current_xact_id() \
         WHERE profiles.customer_user_id_at IS NULL \
            OR (excluded.customer_user_id_at, excluded.customer_user_id_event) \
               > (profiles.customer_user_id_at, profiles.customer_user_id_event)",
        &[
            &&**profile_id,
            &&**customer_user_id,
            &at.to_rfc3339(),
            &event_id,
        ],
    )?;
    Ok(())
}

fn levels_of_profile(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    profile_id: &str,
) -> Result<Vec<Arc<str>>, StoreError> {
    let rows = p.query(
        tx,
        "SELECT access_level_id FROM entitlements WHERE profile_id = $1",
        &[&profile_id],
    )?;
    Ok(rows
        .iter()
        .map(|r| Arc::from(r.get::<_, &str>(0)))
        .collect())
}

fn saved(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    profile_id: &str,
    level: &str,
) -> Result<Option<EntitlementRow>, StoreError> {
    p.query_opt(
        tx,
        &format!(
            "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
             WHERE profile_id = $1 AND access_level_id = $2"
        ),
        &[&profile_id, &level],
    )?
    .as_ref()
    .map(entitlement_row)
    .transpose()
}

/// Makes one row what the fold says, and queues the feed's row when effective access
/// flipped. Returns whether the row changed.
#[allow(clippy::too_many_arguments)]
fn reconcile(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    profile_id: &Arc<str>,
    level: &Arc<str>,
    next: Option<&Entitlement>,
    cause: Cause<'_>,
    now: Timestamp,
    feed: &mut Vec<FeedRow>,
) -> Result<bool, StoreError> {
    let saved = saved(tx, p, profile_id, level)?;
    let reported = saved.as_ref().is_some_and(|s| s.reported_active);
    let flip = |active: bool, expires_at: Option<Timestamp>| {
        let (reason, profile_event_id, shared_from) = match cause {
            Cause::Event(event) => {
                let name = event.event_type.map(|t| t.name()).unwrap_or("unknown");
                if event.profile_id == *profile_id {
                    (name.to_owned(), Some(event.id.clone()), None)
                } else {
                    (
                        format!("shared:{name}"),
                        Some(event.id.clone()),
                        Some(event.profile_id.clone()),
                    )
                }
            }
            Cause::Rebuild => ("rebuild".to_owned(), None, None),
        };
        FeedRow {
            profile_id: profile_id.clone(),
            access_level_id: level.clone(),
            active,
            reason,
            profile_event_id,
            expires_at,
            shared_from,
        }
    };
    match (saved, next) {
        (None, None) => Ok(false),
        (Some(row), Some(next)) if row.entitlement == *next => Ok(false),
        (_, Some(next)) => {
            let active = next.window.grants_at(now);
            if active != reported {
                feed.push(flip(active, next.window.expires_at));
            }
            save(tx, p, profile_id, level, next, active)?;
            Ok(true)
        }
        (Some(row), None) => {
            if reported {
                feed.push(flip(false, row.entitlement.window.expires_at));
            }
            p.execute(
                tx,
                "DELETE FROM entitlements WHERE profile_id = $1 AND access_level_id = $2",
                &[&&**profile_id, &&**level],
            )?;
            p.execute(
                tx,
                "INSERT INTO entitlements_removed (profile_id, access_level_id) VALUES ($1, $2)",
                &[&&**profile_id, &&**level],
            )?;
            Ok(true)
        }
    }
}

fn save(
    tx: &mut Transaction<'_>,
    p: &mut Prepared,
    profile_id: &str,
    level: &str,
    e: &Entitlement,
    reported_active: bool,
) -> Result<(), StoreError> {
    let text = |t: Option<Timestamp>| t.map(Timestamp::to_rfc3339);
    p.execute(tx,
        &format!(
            "INSERT INTO entitlements ({ENTITLEMENT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
             ON CONFLICT (profile_id, access_level_id) DO UPDATE SET \
             is_active = excluded.is_active, expires_at = excluded.expires_at, \
             starts_at = excluded.starts_at, will_renew = excluded.will_renew, \
             is_lifetime = excluded.is_lifetime, in_grace_period = excluded.in_grace_period, \
             is_refund = excluded.is_refund, store = excluded.store, \
             vendor_product_id = excluded.vendor_product_id, environment = excluded.environment, \
             last_event_id = excluded.last_event_id, last_event_type = excluded.last_event_type, \
             last_event_at = excluded.last_event_at, reported_active = excluded.reported_active, \
             shared_from = excluded.shared_from, sharing_group = excluded.sharing_group, \
             written_xid = pg_current_xact_id()"
        ),
        &[
            &profile_id,
            &level,
            &e.window.is_active,
            &text(e.window.expires_at),
            &text(e.window.starts_at),
            &e.will_renew,
            &e.window.is_lifetime,
            &e.in_grace_period,
            &e.is_refund,
            &e.store.as_deref(),
            &e.vendor_product_id.as_deref(),
            &e.environment.as_deref(),
            &&*e.last_event_id,
            &e.last_event_type.name(),
            &e.last_event_at.to_rfc3339(),
            &reported_active,
            &e.shared_from.as_deref(),
            &e.sharing_group.as_deref(),
        ],
    )?;
    Ok(())
}

/// The clock's report: levels whose effective access flipped with no event (past
/// `expires_at`, or past `starts_at`) get their feed row, once: every instance's clock
/// looks, and the conditional update under the profile's lock lets one of them write
/// it. Returns the lapses (levels set to renew that ended) this instance wrote, and the
/// transaction's id when it wrote.
pub(super) fn report_clock(
    client: &mut Client,
    p: &mut Prepared,
    now: Timestamp,
) -> Result<(Vec<Lapse>, Option<i64>), StoreError> {
    let now_text = now.to_rfc3339();
    let due_sql = format!(
        "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE reported_active AND NOT is_lifetime AND expires_at IS NOT NULL AND expires_at <= $1 \
         UNION ALL \
         SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE NOT reported_active AND is_active AND starts_at IS NOT NULL AND starts_at <= $1 \
         AND (is_lifetime OR expires_at IS NULL OR expires_at > $1)"
    );
    let due = |rows: Vec<postgres::Row>| -> Result<Vec<EntitlementRow>, StoreError> {
        let mut due = Vec::new();
        for row in &rows {
            let row = entitlement_row(row)?;
            if row.entitlement.window.grants_at(now) != row.reported_active {
                due.push(row);
            }
        }
        Ok(due)
    };
    let first = due(client.query(&due_sql, &[&now_text])?)?;
    if first.is_empty() {
        return Ok((Vec::new(), None));
    }
    let mut tx = client.transaction()?;
    p.execute(
        &mut tx,
        "SELECT pg_advisory_xact_lock_shared($1)",
        &[&SHARING_LOCK],
    )?;
    let profiles: Vec<&str> = first.iter().map(|r| &*r.profile_id).collect();
    lock_profiles(&mut tx, p, &profiles)?;
    let mut feed = Vec::new();
    let mut lapses = Vec::new();
    for row in first {
        let active = !row.reported_active;
        // Another instance's clock, or an event, may have got here first.
        let updated = p.execute(
            &mut tx,
            "UPDATE entitlements SET reported_active = $3, written_xid = pg_current_xact_id() \
             WHERE profile_id = $1 AND access_level_id = $2 AND reported_active = $4 \
             AND last_event_id = $5",
            &[
                &row.profile_id,
                &row.access_level_id,
                &active,
                &row.reported_active,
                &&*row.entitlement.last_event_id,
            ],
        )?;
        if updated == 0 {
            continue;
        }
        let expires_at = row.entitlement.window.expires_at;
        feed.push(FeedRow {
            profile_id: Arc::from(row.profile_id.as_str()),
            access_level_id: Arc::from(row.access_level_id.as_str()),
            active,
            reason: if active { "started" } else { "expired" }.to_owned(),
            profile_event_id: None,
            expires_at,
            shared_from: None,
        });
        if !active && row.entitlement.will_renew {
            lapses.push(Lapse {
                profile_id: Arc::from(row.profile_id.as_str()),
                access_level_id: Arc::from(row.access_level_id.as_str()),
                expires_at,
            });
        }
    }
    let xid = finish(&mut tx, p, &feed, now, false)?;
    tx.commit()?;
    Ok((lapses, xid))
}

/// `entitled rebuild` on PostgreSQL: every profile refolded from the log under `rules`
/// (its sharing links recomputed), the rows made to match (with `write`), alone in the
/// database for its duration (the sharing lock, exclusively). The summary counts as
/// SQLite's does.
pub fn rebuild(
    client: &mut Client,
    rules: &Rules,
    decode: &dyn Decode,
    write: bool,
    now: Timestamp,
) -> Result<Summary, StoreError> {
    let mut prepared = Prepared::default();
    let p = &mut prepared;
    let mut tx = client.transaction()?;
    p.execute(
        &mut tx,
        "SELECT pg_advisory_xact_lock($1)",
        &[&SHARING_LOCK],
    )?;
    let mut summary = Summary::default();
    let mut retype: Vec<(i64, Option<&'static str>)> = Vec::new();
    // Every profile with events or rows, each with its stored events.
    let mut logs: BTreeMap<Arc<str>, Vec<Event>> = BTreeMap::new();
    {
        let rows = p.query(
            &mut tx,
            "SELECT seq, profile_id, canonical_type, body FROM events ORDER BY profile_id, seq",
            &[],
        )?;
        for row in &rows {
            let seq: i64 = row.get(0);
            let event = decode
                .decode(row.get(3))
                .ok_or_else(|| StoreError::Corrupt(format!("event {seq} no longer parses")))?;
            let canonical = event.event_type.map(|t| t.name());
            if row.get::<_, Option<&str>>(2) != canonical {
                retype.push((seq, canonical));
            }
            logs.entry(Arc::from(row.get::<_, &str>(1)))
                .or_default()
                .push(event);
            summary.events += 1;
        }
    }
    summary.profiles = logs.len() as u64;
    for row in p.query(&mut tx, "SELECT DISTINCT profile_id FROM entitlements", &[])? {
        logs.entry(Arc::from(row.get::<_, &str>(0))).or_default();
    }
    // The links every declaration makes, and the clusters they join.
    let declared = rule::declared_links(logs.values().flatten(), rules);
    let links = rule::by_level(&declared);
    let mut wanted = BTreeSet::new();
    for (level, a, b, id) in declared {
        wanted.insert((level.clone(), a.clone(), b.clone(), id.clone()));
        wanted.insert((level, b, a, id));
    }
    let stored: BTreeSet<(Arc<str>, Arc<str>, Arc<str>)> = tx
        .query(
            "SELECT access_level_id, profile_id, shared_with FROM sharing_links",
            &[],
        )?
        .iter()
        .map(|r| {
            (
                r.get::<_, &str>(0).into(),
                r.get::<_, &str>(1).into(),
                r.get::<_, &str>(2).into(),
            )
        })
        .collect();
    let wanted_keys: BTreeSet<_> = wanted
        .iter()
        .map(|(l, a, b, _)| (l.clone(), a.clone(), b.clone()))
        .collect();
    summary.relinked = wanted_keys.symmetric_difference(&stored).count() as u64;
    if write && summary.relinked > 0 {
        p.execute(&mut tx, "DELETE FROM sharing_links", &[])?;
        for (level, a, b, id) in &wanted {
            p.execute(&mut tx,
                "INSERT INTO sharing_links (profile_id, access_level_id, shared_with, profile_event_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&&**a, &&**level, &&**b, &&**id],
            )?;
        }
    }
    let mut neighbours: BTreeMap<Arc<str>, BTreeSet<Arc<str>>> = BTreeMap::new();
    for pairs in links.values() {
        for (a, b) in pairs {
            neighbours.entry(a.clone()).or_default().insert(b.clone());
            logs.entry(a.clone()).or_default();
        }
    }
    let mut done: BTreeSet<Arc<str>> = BTreeSet::new();
    let profiles: Vec<Arc<str>> = logs.keys().cloned().collect();
    let mut feed = Vec::new();
    for profile in profiles {
        if done.contains(&profile) {
            continue;
        }
        // The profile's cluster: every profile linked with it, through any level.
        let mut cluster = BTreeSet::from([profile.clone()]);
        let mut next = vec![profile];
        while let Some(p) = next.pop() {
            for other in neighbours.get(&p).into_iter().flatten() {
                if cluster.insert(other.clone()) {
                    next.push(other.clone());
                }
            }
        }
        let events: Vec<Event> = cluster
            .iter()
            .flat_map(|p| logs.get(p).into_iter().flatten().cloned())
            .collect();
        let folded = projection::project_with_links(&events, rules, Some(&links));
        for member in &cluster {
            let mut levels: BTreeSet<Arc<str>> =
                levels_of_profile(&mut tx, p, member)?.into_iter().collect();
            levels.extend(
                folded
                    .keys()
                    .filter(|(p, _)| p == member)
                    .map(|(_, l)| l.clone()),
            );
            for level in &levels {
                let next = folded.get(&(member.clone(), level.clone()));
                let before = saved(&mut tx, p, member, level)?;
                match (&before, next) {
                    (Some(row), Some(next)) if row.entitlement == *next => summary.unchanged += 1,
                    (Some(_), Some(_)) => summary.changed += 1,
                    (None, Some(_)) => summary.added += 1,
                    (Some(_), None) => summary.removed += 1,
                    (None, None) => {}
                }
                if write {
                    reconcile(
                        &mut tx,
                        p,
                        member,
                        level,
                        next,
                        Cause::Rebuild,
                        now,
                        &mut feed,
                    )?;
                }
            }
            done.insert(member.clone());
        }
    }
    summary.retyped = retype.len() as u64;
    if write {
        for (seq, canonical) in &retype {
            p.execute(
                &mut tx,
                "UPDATE events SET canonical_type = $2 WHERE seq = $1",
                &[seq, canonical],
            )?;
        }
        finish(&mut tx, p, &feed, now, true)?;
        tx.commit()?;
    }
    Ok(summary)
}
