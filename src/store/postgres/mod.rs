//! The store on PostgreSQL (`--db postgres://…`): many entitled instances on one
//! database, none of them special. The same five verbs as on SQLite (`store/mod.rs`),
//! each in its own room:
//! - `schema`: the schema (`schema.postgres.sql`), created or upgraded at start under an
//!   advisory lock, so two instances starting at once do not both migrate;
//! - [`writer`]: this instance's writer thread, a consumer of the same
//!   [`WriterHandle`](super::writer::WriterHandle) queue as SQLite's: group commit, a
//!   per-profile lock, the raw event and its effect in one transaction;
//! - `ingest`: the SQL of a batch and of the clock;
//! - [`follow`]: warming the index, and keeping it following what every instance
//!   commits;
//! - [`reader`]: the [`Reader`](super::reader::Reader) (time travel, explain, the change
//!   feed) on a pool of connections.
//!
//! The driver is the `postgres` crate, the blocking facade of `tokio-postgres` (the
//! same protocol code, one maintainer), with an r2d2 pool: every caller of the store is
//! already a blocking thread (the writer, the follower, the read pool behind
//! `web::block`, the command-line tools), so an async client would need a runtime of
//! its own in each of them.
//!
//! The fold is the projection's, as `entitled rebuild` runs it: an event refolds its
//! profile (with every profile it shares access with) from the log, so whatever
//! instance stores an event, the rows are `project()` of the stored set.

pub mod copy;
pub mod follow;
pub mod notify;
pub mod reader;
pub mod writer;

mod ingest;
mod schema;

pub use ingest::rebuild;
pub use schema::SCHEMA_VERSION;

use super::{AccessChange, EntitlementRow, StoreError};
use crate::projection::{AccessWindow, Entitlement, EventType};
use crate::timestamp::Timestamp;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use std::sync::Arc;
use std::time::Duration;

/// The schema, as people read it at the repo root.
pub const SCHEMA: &str = include_str!("../../../schema.postgres.sql");

/// A pool of connections to one database.
pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
pub type Client = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// Whether `--db` names a PostgreSQL database (a `postgres://` or `postgresql://` URL)
/// rather than a SQLite file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// How long a connection may take to open, and a caller to wait for one from the pool:
/// short, so that while PostgreSQL is down a webhook hears 503 well within its own
/// deadline (8 s) and Adapty retries.
const CONNECT_WITHIN: Duration = Duration::from_secs(3);

/// A pool of at most `size` connections to `url`. Opens none: an unreachable database
/// is an error of the first use, not of start-up, so a daemon can start (and answer
/// lookups from a warmed index later) while PostgreSQL restarts.
pub fn pool(url: &str, size: u32) -> Result<Pool, StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", redact(url))))?;
    config.connect_timeout(CONNECT_WITHIN);
    if config.get_application_name().is_none() {
        config.application_name("entitled");
    }
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        // A connection to a database that restarted is dead: test it before use, so
        // the first request after an outage is not the one that finds out.
        .test_on_check_out(true)
        .connection_timeout(CONNECT_WITHIN)
        .build_unchecked(PostgresConnectionManager::new(config, NoTls)))
}

/// Opens the database: a pool, and the schema created or upgraded.
pub fn open(url: &str, size: u32) -> Result<Pool, StoreError> {
    let pool = pool(url, size)?;
    migrate(&pool, url)?;
    Ok(pool)
}

/// Creates or upgrades the schema (under the migration lock).
pub fn migrate(pool: &Pool, url: &str) -> Result<(), StoreError> {
    schema::migrate(&mut *checkout(pool)?, &redact(url))
}

/// Whether an error may pass by itself (the database unreachable, a connection cut):
/// worth trying again, unlike a foreign or newer schema.
pub fn is_transient(error: &StoreError) -> bool {
    matches!(error, StoreError::Unavailable(_) | StoreError::Postgres(_))
}

/// Starts this process's writer on `queue` and the follower (warmed by
/// [`follow::warm`]) that keeps the index on what every instance commits: what `serve`
/// and `sync` run on PostgreSQL. Returns the writer's thread (it stops, after
/// committing what was sent, at the queue's `Stop`).
pub fn start(
    follower: follow::Follower,
    pool: &Pool,
    status: Arc<crate::status::Status>,
    rules: Arc<crate::projection::Rules>,
    decode: Arc<dyn super::writer::Decode>,
    lapses: Option<tokio::sync::mpsc::UnboundedSender<super::Lapse>>,
    queue: super::writer::Queue,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    let thread_error = |e: std::io::Error| StoreError::Unavailable(format!("a thread: {e}"));
    let writer = writer::Writer {
        pool: pool.clone(),
        status,
        rules,
        decode,
        follower: Some(follower.waiter()),
        lapses,
    }
    .start(queue)
    .map_err(thread_error)?;
    follower.start().map_err(thread_error)?;
    Ok(writer)
}

/// A connection from the pool, or why there is none (the database is unreachable).
pub fn checkout(pool: &Pool) -> Result<Client, StoreError> {
    pool.get()
        .map_err(|e| StoreError::Unavailable(format!("no connection to PostgreSQL: {e}")))
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:…{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Statements prepared once per connection and kept: a statement sent as text is
/// prepared again at each call, a round trip more (the benchmark counted 18 round trips
/// an event before this; docs/performance.md#postgresql). A cache belongs to one
/// connection: whoever replaces the connection replaces the cache.
#[derive(Default)]
pub struct Prepared(std::collections::HashMap<String, postgres::Statement>);

type Params<'a> = &'a [&'a (dyn postgres::types::ToSql + Sync)];

impl Prepared {
    pub fn get(
        &mut self,
        c: &mut impl postgres::GenericClient,
        sql: &str,
    ) -> Result<postgres::Statement, StoreError> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = c.prepare(sql)?;
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub fn execute(
        &mut self,
        c: &mut impl postgres::GenericClient,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64, StoreError> {
        let statement = self.get(c, sql)?;
        Ok(c.execute(&statement, params)?)
    }

    pub fn query(
        &mut self,
        c: &mut impl postgres::GenericClient,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let statement = self.get(c, sql)?;
        Ok(c.query(&statement, params)?)
    }

    pub fn query_one(
        &mut self,
        c: &mut impl postgres::GenericClient,
        sql: &str,
        params: Params<'_>,
    ) -> Result<postgres::Row, StoreError> {
        let statement = self.get(c, sql)?;
        Ok(c.query_one(&statement, params)?)
    }

    pub fn query_opt(
        &mut self,
        c: &mut impl postgres::GenericClient,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<postgres::Row>, StoreError> {
        let statement = self.get(c, sql)?;
        Ok(c.query_opt(&statement, params)?)
    }
}

/// The columns of an `entitlements` row, in the order [`entitlement_row`] reads.
const ENTITLEMENT_COLUMNS: &str = "profile_id, access_level_id, is_active, expires_at, starts_at, \
     will_renew, is_lifetime, in_grace_period, is_refund, store, vendor_product_id, environment, \
     last_event_id, last_event_type, last_event_at, reported_active, shared_from, sharing_group";

fn time(text: Option<String>) -> Result<Option<Timestamp>, StoreError> {
    super::entitlements::time(text)
}

/// One row of [`ENTITLEMENT_COLUMNS`].
fn entitlement_row(row: &postgres::Row) -> Result<EntitlementRow, StoreError> {
    let arc = |s: Option<String>| s.map(Arc::from);
    let last_type: String = row.try_get(13)?;
    Ok(EntitlementRow {
        profile_id: row.try_get(0)?,
        access_level_id: row.try_get(1)?,
        entitlement: Entitlement {
            window: AccessWindow {
                is_active: row.try_get(2)?,
                expires_at: time(row.try_get(3)?)?,
                starts_at: time(row.try_get(4)?)?,
                is_lifetime: row.try_get(6)?,
            },
            will_renew: row.try_get(5)?,
            in_grace_period: row.try_get(7)?,
            is_refund: row.try_get(8)?,
            store: arc(row.try_get(9)?),
            vendor_product_id: arc(row.try_get(10)?),
            environment: arc(row.try_get(11)?),
            last_event_id: Arc::from(row.try_get::<_, String>(12)?),
            last_event_type: EventType::from_name(&last_type)
                .ok_or_else(|| StoreError::Corrupt(format!("event type {last_type}")))?,
            last_event_at: time(Some(row.try_get(14)?))?.unwrap_or(Timestamp::from_micros(0)),
            shared_from: arc(row.try_get(16)?),
            sharing_group: arc(row.try_get(17)?),
        },
        reported_active: row.try_get(15)?,
    })
}

/// One row of `access_changes`.
fn change_row(r: &postgres::Row) -> Result<AccessChange, StoreError> {
    Ok(AccessChange {
        seq: r.try_get(0)?,
        profile_id: r.try_get(1)?,
        customer_user_id: r.try_get(2)?,
        access_level_id: r.try_get(3)?,
        active: r.try_get(4)?,
        reason: r.try_get(5)?,
        profile_event_id: r.try_get(6)?,
        expires_at: r.try_get(7)?,
        changed_at: r.try_get(8)?,
        shared_from: r.try_get(9)?,
    })
}

const CHANGE_COLUMNS: &str = "seq, profile_id, customer_user_id, access_level_id, active, reason, \
     profile_event_id, expires_at, changed_at, shared_from";

/// The change feed after `after`, oldest first, at most `limit`.
fn changes_after(
    client: &mut impl postgres::GenericClient,
    after: i64,
    up_to: i64,
    limit: u32,
) -> Result<Vec<AccessChange>, StoreError> {
    let rows = client.query(
        &format!(
            "SELECT {CHANGE_COLUMNS} FROM access_changes \
             WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
        ),
        &[&after, &up_to, &i64::from(limit)],
    )?;
    rows.iter().map(change_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_selects_postgres_and_anything_else_is_a_file() {
        assert!(is_url("postgres://u@h/db"));
        assert!(is_url("postgresql://u:p@h:5432/db"));
        assert!(!is_url("entitled.db"));
        assert!(!is_url("/var/lib/entitled/postgres.db"));
        assert!(!is_url("./postgres://weird"));
    }

    #[test]
    fn the_password_never_reaches_a_message() {
        assert_eq!(
            redact("postgres://entitled:s3cret@db.internal:5432/entitled"),
            "postgres://entitled:…@db.internal:5432/entitled"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
