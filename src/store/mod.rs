//! The store: the event log and the projection's tables, on SQLite today.
//! One writer thread ([`writer`]) owns the write connection; nothing else writes.
//!
//! What the rest of the daemon asks of a store, and so what a second backend
//! (PostgreSQL) must provide, is five verbs, each behind its own type:
//! - **write a batch of events**: the [`writer::WriterHandle`] queue; [`writer::Writer`]
//!   is SQLite's consumer of it (group commit, then the sync thread, then release);
//! - **read a profile's events** and **page the change feed**: the
//!   [`reader::Reader`] trait, [`reader::SqliteReader`] its implementation;
//! - **warm the index**: [`warm_index`];
//! - **rebuild**: [`rebuild::rebuild`].
//!
//! Nothing above the store names a SQLite type but start-up, which opens the file.
//!
//! The rooms:
//! - `open`: opening a database, its pragmas, the [`WriterLock`], syncing a WAL;
//! - `migrate`: the schema, created or upgraded in place;
//! - `entitlements`: the rows of `entitlements`, and the clock's query of them;
//! - `changes`: the change feed's table, `access_changes`;
//! - `warm`: the reads that warm the index at start-up;
//! - [`writer`]: the writer thread and its queue; `ingest`: the SQL of each event;
//!   `sync`: the thread that makes commits durable and then releases them;
//! - [`checkpoint`], [`history`], [`rebuild`]: the checkpoint thread, a level's
//!   stored history, and `entitled rebuild`;
//! - [`reader`]: the read side beyond the index, a small pool of read connections.

pub mod checkpoint;
pub mod history;
pub mod notify;
pub mod postgres;
pub mod reader;
pub mod rebuild;
pub mod writer;

mod changes;
mod entitlements;
mod ingest;
mod migrate;
mod open;
pub mod sharing;
mod sync;
mod warm;

pub use changes::{changes_after, newest_change, record_change, AccessChange, ChangeReason};
pub use entitlements::{
    due_for_clock, entitlement, levels_of_profile, save_entitlement, set_reported, EntitlementRow,
};
pub use ingest::Lapse;
pub use open::{connect, open, open_read_only, WriterLock};
pub use warm::{
    each_level_and_user, newest_event, newest_received, profile_count, warm_index, with_mmap,
    ProfileRow,
};

use std::time::Duration;

/// The `--db` value as a PostgreSQL URL, when it is one (`postgres://`, `postgresql://`);
/// anything else is a SQLite file.
pub fn postgres_url(db: &std::path::Path) -> Option<&str> {
    db.to_str().filter(|db| postgres::is_url(db))
}

/// The schema, as people read it at the repo root.
pub const SCHEMA: &str = include_str!("../../schema.sql");
/// `PRAGMA application_id` of an entitled database ("entd").
pub const APPLICATION_ID: i64 = 0x656e_7464;
/// `PRAGMA user_version` that [`SCHEMA`] creates.
pub const SCHEMA_VERSION: i64 = 4;
/// The page cache, in KiB (SQLite's default: 2 MiB): the writer's inserts touch the
/// index pages of `events`, which on a database of millions of events no longer fit in
/// 2 MiB. The cache fills only as pages are read. (The writer takes less while the file
/// is under 1 GiB: see `writer::cache_kib`.)
pub const CACHE_KIB: i64 = 64 * 1024;
/// How long a write waits for a lock another process holds (a person's `sqlite3`
/// in a write transaction) before the request answers 503 and Adapty retries.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's `synchronous` for the writer: `Full` makes every acknowledged commit
/// survive power loss (the sync thread syncs the WAL before answering); `Normal`
/// survives a crash of the process only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not an entitled database (application_id {found}); refusing to touch it")]
    ForeignFile { path: String, found: i64 },
    #[error("{path} has schema version {found}, newer than this entitled ({SCHEMA_VERSION}); upgrade entitled")]
    NewerSchema { path: String, found: i64 },
    #[error("{path} does not exist (check --db): there is nothing to rebuild")]
    NoDatabase { path: String },
    #[error("{path} is in use by a running entitled (stop it first, or use a read-only command)")]
    InUse { path: String },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot upgrade the schema of {path}: {reason}")]
    Upgrade { path: String, reason: String },
    #[error("cannot sync {path}: {source}")]
    Sync {
        path: String,
        source: std::io::Error,
    },
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The event can never be stored in this store (PostgreSQL's `text` cannot hold
    /// U+0000): the webhook is refused with a 400, which Adapty does not retry.
    #[error("this event cannot be stored: {0}")]
    Unstorable(String),
    #[error("cannot read the database now: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] ::postgres::Error),
}
