//! `entitled migrate --from entitled.db --to postgres://…`: an installation moves from
//! its SQLite file to PostgreSQL. What is copied, and how a second run behaves:
//! - `events`, with their `seq` (so explain and `?at=` name the same events), in
//!   chunks; an event already there (same `(profile_id, profile_event_id)`) is skipped,
//!   and one whose `seq` another event took (PostgreSQL already received webhooks) gets
//!   a new one;
//! - `profiles`, `entitlements` (with what the feed last said of each) and
//!   `access_changes` with their `seq`, so a consumer of `GET /changes` keeps its
//!   cursor, and push's cursor and parked changes, so push goes on where it stopped;
//!   rows already there are kept;
//! - then the projection is rebuilt on PostgreSQL under the configuration given, as
//!   `entitled rebuild` does (it finds nothing to change when the configuration is the
//!   one the file was folded with).
//!
//! The file is read through a read-only connection: safe beside the daemon that writes
//! it. Run it once beside the daemon, stop the daemon, run it again (it copies only what
//! arrived in between), then start instances on PostgreSQL.

use super::{checkout, ingest, Pool};
use crate::projection::Rules;
use crate::store::rebuild::Summary;
use crate::store::writer::Decode;
use crate::store::{open_read_only, StoreError};
use crate::timestamp::Timestamp;
use rusqlite::OptionalExtension;
use std::path::Path;

/// Events copied in one transaction.
const CHUNK: i64 = 2_000;

/// What a migration did.
#[derive(Debug, Default)]
pub struct Copied {
    pub events: u64,
    pub events_new: u64,
    pub changes_new: u64,
    pub rebuild: Summary,
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} events read, {} new on PostgreSQL; {} change-feed rows new; rebuild: {}",
            self.events, self.events_new, self.changes_new, self.rebuild
        )
    }
}

/// How many events the file holds (for a progress bar's length).
pub fn events_in(from: &Path) -> Result<u64, StoreError> {
    let conn = open_read_only(from)?;
    let n: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    Ok(n as u64)
}

/// Copies `from` into the database of `pool` and rebuilds there; `progress` hears how
/// many events each chunk copied.
pub fn migrate(
    from: &Path,
    pool: &Pool,
    rules: &Rules,
    decode: &dyn Decode,
    progress: &mut dyn FnMut(u64),
) -> Result<Copied, StoreError> {
    let sqlite = open_read_only(from)?;
    let mut pg = checkout(pool)?;
    let mut copied = Copied::default();
    let mut after = 0i64;
    loop {
        let mut stmt = sqlite.prepare_cached(
            "SELECT seq, profile_event_id, profile_id, customer_user_id, event_type, \
             canonical_type, event_datetime, received_at, environment, body \
             FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        type Row = (
            i64,
            String,
            String,
            Option<String>,
            String,
            Option<String>,
            String,
            String,
            Option<String>,
            String,
        );
        let rows: Vec<Row> = stmt
            .query_map([after, CHUNK], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        let mut tx = pg.transaction()?;
        let with_seq = tx.prepare(
            "INSERT INTO events (seq, profile_event_id, profile_id, customer_user_id, event_type, \
             canonical_type, event_datetime, received_at, environment, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )?;
        let without_seq = tx.prepare(
            "INSERT INTO events (profile_event_id, profile_id, customer_user_id, event_type, \
             canonical_type, event_datetime, received_at, environment, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (profile_id, profile_event_id) DO NOTHING",
        )?;
        for r in &rows {
            let mut n = tx.execute(
                &with_seq,
                &[&r.0, &r.1, &r.2, &r.3, &r.4, &r.5, &r.6, &r.7, &r.8, &r.9],
            )?;
            if n == 0 {
                // Already there, or its seq is taken by another event: then it is new.
                n = tx.execute(
                    &without_seq,
                    &[&r.1, &r.2, &r.3, &r.4, &r.5, &r.6, &r.7, &r.8, &r.9],
                )?;
            }
            copied.events_new += n;
        }
        tx.commit()?;
        copied.events += rows.len() as u64;
        progress(rows.len() as u64);
    }
    let mut tx = pg.transaction()?;
    {
        let mut stmt = sqlite.prepare(
            "SELECT profile_id, customer_user_id, customer_user_id_at, customer_user_id_event \
             FROM profiles",
        )?;
        let insert = tx.prepare(
            "INSERT INTO profiles (profile_id, customer_user_id, customer_user_id_at, \
             customer_user_id_event) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let row: (String, Option<String>, Option<String>, Option<String>) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            tx.execute(&insert, &[&row.0, &row.1, &row.2, &row.3])?;
        }
    }
    {
        let mut stmt = sqlite.prepare(&format!(
            "SELECT {} FROM entitlements",
            super::ENTITLEMENT_COLUMNS
        ))?;
        let insert = tx.prepare(&format!(
            "INSERT INTO entitlements ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18) ON CONFLICT DO NOTHING",
            super::ENTITLEMENT_COLUMNS
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let text = |i| r.get::<_, Option<String>>(i);
            let flag = |i| r.get::<_, bool>(i);
            let (p, l) = (r.get::<_, String>(0)?, r.get::<_, String>(1)?);
            let (active, expires, starts) = (flag(2)?, text(3)?, text(4)?);
            let (renew, lifetime, grace, refund) = (flag(5)?, flag(6)?, flag(7)?, flag(8)?);
            let (store, product, env) = (text(9)?, text(10)?, text(11)?);
            let (last_id, last_type) = (r.get::<_, String>(12)?, r.get::<_, String>(13)?);
            let (last_at, reported) = (r.get::<_, String>(14)?, flag(15)?);
            let (shared_from, group) = (text(16)?, text(17)?);
            tx.execute(
                &insert,
                &[
                    &p,
                    &l,
                    &active,
                    &expires,
                    &starts,
                    &renew,
                    &lifetime,
                    &grace,
                    &refund,
                    &store,
                    &product,
                    &env,
                    &last_id,
                    &last_type,
                    &last_at,
                    &reported,
                    &shared_from,
                    &group,
                ],
            )?;
        }
    }
    {
        let mut stmt = sqlite.prepare(&format!(
            "SELECT {} FROM access_changes ORDER BY seq",
            super::CHANGE_COLUMNS
        ))?;
        let insert = tx.prepare(&format!(
            "INSERT INTO access_changes ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT DO NOTHING",
            super::CHANGE_COLUMNS
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (seq, p, user, l) = (
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
            );
            let (active, reason) = (r.get::<_, bool>(4)?, r.get::<_, String>(5)?);
            let (event, expires) = (
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
            );
            let (at, from) = (r.get::<_, String>(8)?, r.get::<_, Option<String>>(9)?);
            copied.changes_new += tx.execute(
                &insert,
                &[
                    &seq, &p, &user, &l, &active, &reason, &event, &expires, &at, &from,
                ],
            )?;
        }
    }
    // Push's cursor and parked changes (the feed's seq values are the file's): the
    // instance that delivers goes on where the SQLite daemon stopped.
    {
        let cursor: Option<i64> = sqlite
            .query_row(
                "SELECT delivered_seq FROM notify_state WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(cursor) = cursor {
            tx.execute(
                "INSERT INTO notify_state (id, delivered_seq) VALUES (1, $1) \
                 ON CONFLICT (id) DO NOTHING",
                &[&cursor],
            )?;
        }
        let mut stmt = sqlite.prepare(
            "SELECT seq, attempts, first_failed_at, last_failed_at, last_error FROM notify_failed",
        )?;
        let insert = tx.prepare(
            "INSERT INTO notify_failed (seq, attempts, first_failed_at, last_failed_at, \
             last_error) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (seq, attempts) = (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?);
            let (first, last, error) = (
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            );
            tx.execute(&insert, &[&seq, &attempts, &first, &last, &error])?;
        }
    }
    // The sequences go on after what was copied.
    // (Never backwards: running instances may hold values past the table's newest.)
    tx.batch_execute(
        "SELECT setval('events_seq_seq', \
                greatest((SELECT max(seq) FROM events), \
                         (SELECT last_value FROM events_seq_seq), 1)); \
         SELECT setval('access_changes_seq_seq', \
                greatest((SELECT max(seq) FROM access_changes), \
                         (SELECT last_value FROM access_changes_seq_seq), 1));",
    )?;
    tx.commit()?;
    copied.rebuild = ingest::rebuild(&mut pg, rules, decode, true, Timestamp::now())?;
    Ok(copied)
}
