//! SQLite: the schema, the pragmas, and the rows of `entitlements` and `profiles`.
//! One writer thread ([`writer`]) owns the write connection; nothing else writes.

pub mod checkpoint;
pub mod history;
pub mod reader;
pub mod rebuild;
pub mod writer;

use crate::index::LevelRow;
use crate::projection::{AccessWindow, Entitlement, EventType};
use crate::timestamp::Timestamp;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The schema, as people read it at the repo root.
pub const SCHEMA: &str = include_str!("../../schema.sql");
/// `PRAGMA application_id` of an entitled database ("entd").
pub const APPLICATION_ID: i64 = 0x656e_7464;
/// `PRAGMA user_version` that [`SCHEMA`] creates.
pub const SCHEMA_VERSION: i64 = 3;
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
    #[error("cannot read the database now: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Holds the database for one writing process (the daemon, `rebuild`, `import`):
/// an advisory `flock` on the file itself, released when the guard drops or the
/// process dies. SQLite's own locks are separate; readers never take this one.
#[derive(Debug)]
pub struct WriterLock(#[allow(dead_code)] std::fs::File);

/// Creates the file when missing (empty: SQLite takes a 0-byte file for a new
/// database), so the lock comes before SQLite touches it.
fn lock_for_writing(path: &Path) -> Result<WriterLock, StoreError> {
    let display = || path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| StoreError::Lock {
            path: display(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(WriterLock(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse { path: display() }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Lock {
            path: display(),
            source,
        }),
    }
}

/// Opens an existing database for reading only: safe beside a running daemon.
pub fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let application_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if application_id != APPLICATION_ID {
        return Err(StoreError::ForeignFile {
            path: path.display().to_string(),
            found: application_id,
        });
    }
    Ok(conn)
}

/// Opens (creating if missing) the database for the one process that writes it, sets
/// the pragmas, takes the [`WriterLock`], and creates, checks or upgrades the schema.
/// The lock comes before the schema: an upgrade must not rewrite `events` under a
/// running daemon.
pub fn open(path: &Path, synchronous: Synchronous) -> Result<(Connection, WriterLock), StoreError> {
    // Locked before SQLite touches the file: a second entitled must not switch it to
    // WAL in the middle of an upgrade.
    let lock = lock_for_writing(path)?;
    let conn = connect(path, synchronous)?;
    migrate(&conn, &path.display().to_string())?;
    sync_wal(&conn)?;
    Ok((conn, lock))
}

/// `fdatasync`s the WAL a previous process left, if any. One killed between a commit
/// and its sync (the sync thread's) leaves committed pages in the OS page cache only:
/// this process must not serve them (in the index, in `GET /changes`) before they are
/// on disk, or a power cut could take back what it said.
fn sync_wal(conn: &Connection) -> Result<(), StoreError> {
    let Some(file) = database_file(conn) else {
        return Ok(()); // in memory: nothing to sync
    };
    let wal = wal_path(file);
    let synced = match open_and_sync_wal(&wal) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    synced.map_err(|source| StoreError::Sync {
        path: wal.display().to_string(),
        source,
    })
}

/// Opens the WAL at `wal`, `fdatasync`s it, and syncs its directory entry (a WAL this
/// process created needs it; SQLite's own first sync of a new WAL does the same, which
/// at NORMAL comes only with the first checkpoint). For the start-up sync and the sync
/// thread's first.
pub(crate) fn open_and_sync_wal(wal: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new().write(true).open(wal)?;
    file.sync_data()?;
    sync_directory_of(wal);
    Ok(file)
}

/// `fsync`s the directory that holds `file`, so that its entry (a file just created)
/// is on disk. Best effort, as SQLite's own directory sync: some file systems cannot
/// sync a directory (`EINVAL`), and a directory may not be readable; that is logged,
/// never fatal.
fn sync_directory_of(file: &Path) {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Err(error) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), %error, "cannot sync the directory of the WAL");
    }
}

/// The file SQLite opened for `conn`, as SQLite resolved it (absolute, symlinks
/// followed): where its WAL really is. `None` in memory.
pub(crate) fn database_file(conn: &Connection) -> Option<&Path> {
    conn.path().filter(|p| !p.is_empty()).map(Path::new)
}

/// SQLite's WAL file of the database at `db` (a path from [`database_file`]: with the
/// path as the user gave it, a symlinked database's WAL would be looked for beside the
/// link).
pub(crate) fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// A read-write connection with entitled's pragmas, for a process that holds (or is
/// about to take) the [`WriterLock`]: the writer's, and the checkpoint thread's.
pub(crate) fn connect(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.pragma_update(
        None,
        "synchronous",
        match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    Ok(conn)
}

fn migrate(conn: &Connection, path: &str) -> Result<(), StoreError> {
    let application_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    if application_id == 0 && version == 0 && tables == 0 {
        conn.execute_batch(&format!("BEGIN IMMEDIATE;\n{SCHEMA}\nCOMMIT;"))?;
        return Ok(());
    }
    if application_id != APPLICATION_ID {
        return Err(StoreError::ForeignFile {
            path: path.to_owned(),
            found: application_id,
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: version,
        });
    }
    // One step a version, each in a transaction of its own.
    if version < 2 {
        upgrade_to_2(conn, path)?;
    }
    if version < 3 {
        upgrade_to_3(conn, path)?;
    }
    Ok(())
}

/// Version 1 → 2: `events` deduplicates on `(profile_id, profile_event_id)`, one index
/// where version 1 had a unique `profile_event_id` and `(profile_id, event_datetime)`;
/// and the clock's index of levels waiting for their start is keyed by their end.
/// The column's `UNIQUE` is an index SQLite drops only with its table, so the rows are
/// copied into a new `events` (same columns, same `seq`s) in one transaction: a crash
/// leaves version 1 as it was.
///
/// The copy runs in rollback-journal mode, not WAL: one transaction the size of the
/// table would pass through the WAL whole, and dropping the old table then looks up
/// each of its pages in a WAL of millions of frames (a 17.7 GB file had not finished
/// in 9 minutes that way). In journal mode the new pages go straight into the file
/// and only the few pages that existed before are journaled. It needs free disk of
/// about the table's size: the old pages stay in the file, as free pages that new
/// events fill. Leaving WAL mode needs no other connection that has read the file:
/// with one (a person's `sqlite3`), the upgrade stops with an error and changes
/// nothing. Indexes, triggers and views a person added on `events` go with the old
/// table (deploy/README.md says so).
fn upgrade_to_2(conn: &Connection, path: &str) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let events: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    tracing::info!(
        path,
        events,
        "upgrading the schema from version 1 to 2: copying the events table once"
    );
    // Journal mode at NORMAL may corrupt the file on a power cut; FULL may not. Set
    // before leaving WAL, so that the switch itself is written at FULL too.
    let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let upgraded = copy_in_journal_mode(conn, path);
    conn.pragma_update(None, "synchronous", synchronous)?;
    upgraded?;
    tracing::info!(
        path,
        events,
        seconds = started.elapsed().as_secs_f64(),
        "schema upgraded to version 2"
    );
    Ok(())
}

/// Leaves WAL mode, copies, and comes back to WAL, which every error path does too.
fn copy_in_journal_mode(conn: &Connection, path: &str) -> Result<(), StoreError> {
    let upgrade_error = |reason: String| StoreError::Upgrade {
        path: path.to_owned(),
        reason,
    };
    let mode = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| {
        r.get::<_, String>(0)
    });
    if !mode
        .as_deref()
        .is_ok_and(|m| m.eq_ignore_ascii_case("delete"))
    {
        return Err(upgrade_error(format!(
            "cannot leave WAL mode for it ({}): close every other connection to the file \
             (a `sqlite3` session, say) and start again",
            match mode {
                Ok(mode) => format!("journal_mode stayed {mode}"),
                Err(error) => error.to_string(),
            }
        )));
    }
    let copied = copy_events_to_2(conn);
    let wal = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0));
    copied?;
    let wal = wal?;
    if !wal.eq_ignore_ascii_case("wal") {
        return Err(upgrade_error(format!(
            "upgraded, but journal_mode stayed {wal}, not wal"
        )));
    }
    Ok(())
}

/// The one transaction of [`upgrade_to_2`]; rolled back whole on any error.
fn copy_events_to_2(conn: &Connection) -> Result<(), StoreError> {
    const COLUMNS: &str = "seq, profile_event_id, profile_id, customer_user_id, event_type, \
         canonical_type, event_datetime, received_at, environment, body";
    let steps = format!(
        "DROP INDEX events_by_profile;
         ALTER TABLE events RENAME TO events_v1;
         {table}
         INSERT INTO events ({COLUMNS}) SELECT {COLUMNS} FROM events_v1 ORDER BY seq;
         DROP TABLE events_v1;
         {index}
         DROP INDEX entitlements_unreported_by_start;
         {by_end}
         PRAGMA user_version = 2;",
        table = schema_statement("CREATE TABLE events (", ") STRICT;"),
        index = schema_statement("CREATE UNIQUE INDEX events_by_profile ", ";"),
        by_end = schema_statement("CREATE INDEX entitlements_unreported_by_end ", ";"),
    );
    in_one_transaction(conn, &steps)
}

/// Version 2 → 3: `access_changes` keeps the profile's `customer_user_id` as it was
/// when the change was recorded. The feed used to join the live `profiles` row, so a
/// change recorded while a profile was X's read as Y's once the profile moved to Y
/// (a consumer revoking by user would revoke the wrong one), and a `customer_user_id`
/// committed but not yet synced could show beside a released change. Rows recorded
/// before take the profile's current one: what the feed said of them until now. One
/// transaction in WAL mode; the table is not copied, but the fill rewrites its pages
/// through the WAL (deploy/README.md says what that needs).
fn upgrade_to_3(conn: &Connection, path: &str) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    tracing::info!(path, "upgrading the schema from version 2 to 3");
    in_one_transaction(
        conn,
        "ALTER TABLE access_changes ADD COLUMN customer_user_id TEXT;
         UPDATE access_changes SET customer_user_id = (
             SELECT p.customer_user_id FROM profiles AS p
             WHERE p.profile_id = access_changes.profile_id);
         PRAGMA user_version = 3;",
    )?;
    tracing::info!(
        path,
        seconds = started.elapsed().as_secs_f64(),
        "schema upgraded to version 3"
    );
    Ok(())
}

/// Runs `steps` in one `BEGIN IMMEDIATE` transaction, rolled back whole on any error.
fn in_one_transaction(conn: &Connection, steps: &str) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = conn
        .execute_batch(steps)
        .and_then(|()| conn.execute_batch("COMMIT"));
    if let Err(error) = done {
        // SQLite may have rolled back already (an I/O error, a full disk): the step's
        // error is the one to report either way.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(error.into());
    }
    Ok(())
}

/// The statement of [`SCHEMA`] that starts with `head`, through the first `end` after
/// it: upgrades create what a new file gets, from the one text.
fn schema_statement(head: &str, end: &str) -> &'static str {
    let start = SCHEMA
        .find(head)
        .unwrap_or_else(|| panic!("schema.sql has no `{head}`"));
    let length = SCHEMA[start..]
        .find(end)
        .unwrap_or_else(|| panic!("schema.sql's `{head}` does not end in `{end}`"));
    &SCHEMA[start..start + length + end.len()]
}

pub(crate) fn time(text: Option<String>) -> Result<Option<Timestamp>, StoreError> {
    text.map(|t| {
        Timestamp::parse_rfc3339(&t).ok_or_else(|| StoreError::Corrupt(format!("time {t}")))
    })
    .transpose()
}

const ENTITLEMENT_COLUMNS: &str = "profile_id, access_level_id, is_active, expires_at, starts_at, \
     will_renew, is_lifetime, in_grace_period, is_refund, store, vendor_product_id, environment, \
     last_event_id, last_event_type, last_event_at, reported_active";

/// One `entitlements` row, with its key.
pub struct EntitlementRow {
    pub profile_id: String,
    pub access_level_id: String,
    pub entitlement: Entitlement,
    /// What the change feed last said of the level: active or not.
    pub reported_active: bool,
}

fn entitlement_row(row: &Row<'_>) -> rusqlite::Result<Result<EntitlementRow, StoreError>> {
    let arc = |s: Option<String>| s.map(Arc::from);
    let last_type: String = row.get(13)?;
    let parsed = (|| {
        Ok(EntitlementRow {
            profile_id: row.get(0)?,
            access_level_id: row.get(1)?,
            entitlement: Entitlement {
                window: AccessWindow {
                    is_active: row.get(2)?,
                    expires_at: time(row.get(3)?)?,
                    starts_at: time(row.get(4)?)?,
                    is_lifetime: row.get(6)?,
                },
                will_renew: row.get(5)?,
                in_grace_period: row.get(7)?,
                is_refund: row.get(8)?,
                store: arc(row.get(9)?),
                vendor_product_id: arc(row.get(10)?),
                environment: arc(row.get(11)?),
                last_event_id: Arc::from(row.get::<_, String>(12)?),
                last_event_type: EventType::from_name(&last_type)
                    .ok_or_else(|| StoreError::Corrupt(format!("event type {last_type}")))?,
                last_event_at: time(Some(row.get(14)?))?.unwrap_or(Timestamp::from_micros(0)),
            },
            reported_active: row.get(15)?,
        })
    })();
    Ok(parsed)
}

/// The saved state of one level, if any.
pub fn entitlement(
    conn: &Connection,
    profile_id: &str,
    access_level_id: &str,
) -> Result<Option<EntitlementRow>, StoreError> {
    let sql = format!(
        "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements WHERE profile_id = ?1 AND access_level_id = ?2"
    );
    let row = conn
        .prepare_cached(&sql)?
        .query_row(params![profile_id, access_level_id], entitlement_row)
        .optional()?;
    row.transpose()
}

pub fn save_entitlement(
    conn: &Connection,
    profile_id: &str,
    access_level_id: &str,
    e: &Entitlement,
    reported_active: bool,
) -> Result<(), StoreError> {
    let text = |t: Option<Timestamp>| t.map(Timestamp::to_rfc3339);
    let sql = format!(
        "INSERT OR REPLACE INTO entitlements ({ENTITLEMENT_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
    );
    conn.prepare_cached(&sql)?.execute(params![
        profile_id,
        access_level_id,
        e.window.is_active,
        text(e.window.expires_at),
        text(e.window.starts_at),
        e.will_renew,
        e.window.is_lifetime,
        e.in_grace_period,
        e.is_refund,
        e.store.as_deref(),
        e.vendor_product_id.as_deref(),
        e.environment.as_deref(),
        &*e.last_event_id,
        e.last_event_type.name(),
        e.last_event_at.to_rfc3339(),
        reported_active,
    ])?;
    Ok(())
}

/// Why a level's effective access flipped, for the change feed.
#[derive(Clone, Copy, Debug)]
pub enum ChangeReason<'a> {
    /// An event did it.
    Event {
        event_type: EventType,
        profile_event_id: &'a str,
    },
    /// `expires_at` passed with no event.
    Expired,
    /// `starts_at` came with no event.
    Started,
    /// `entitled rebuild` under another configuration.
    Rebuild,
}

/// Appends to `access_changes`; returns the change's `seq`.
pub fn record_change(
    conn: &Connection,
    profile_id: &str,
    access_level_id: &str,
    active: bool,
    reason: ChangeReason<'_>,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<i64, StoreError> {
    let (reason, event_id) = match reason {
        ChangeReason::Event {
            event_type,
            profile_event_id,
        } => (event_type.name(), Some(profile_event_id)),
        ChangeReason::Expired => ("expired", None),
        ChangeReason::Started => ("started", None),
        ChangeReason::Rebuild => ("rebuild", None),
    };
    // The profile's `customer_user_id` as this transaction has it: the event that made
    // the change has already updated the profile.
    conn.prepare_cached(
        "INSERT INTO access_changes (profile_id, access_level_id, active, reason, \
         profile_event_id, expires_at, changed_at, customer_user_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
         (SELECT customer_user_id FROM profiles WHERE profile_id = ?1))",
    )?
    .execute(params![
        profile_id,
        access_level_id,
        active,
        reason,
        event_id,
        expires_at.map(Timestamp::to_rfc3339),
        now.to_rfc3339(),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// One row of `access_changes` (schema.sql says what each column holds).
#[derive(Debug, Clone)]
pub struct AccessChange {
    pub seq: i64,
    pub profile_id: String,
    pub customer_user_id: Option<String>,
    pub access_level_id: String,
    pub active: bool,
    pub reason: String,
    pub profile_event_id: Option<String>,
    pub expires_at: Option<String>,
    pub changed_at: String,
}

/// The changes after `after` and at most `up_to` (what the writer has released),
/// oldest first, at most `limit`.
pub fn changes_after(
    conn: &Connection,
    after: i64,
    up_to: i64,
    limit: u32,
) -> Result<Vec<AccessChange>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, profile_id, customer_user_id, access_level_id, active, reason, \
         profile_event_id, expires_at, changed_at \
         FROM access_changes WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, up_to, limit], |r| {
        Ok(AccessChange {
            seq: r.get(0)?,
            profile_id: r.get(1)?,
            customer_user_id: r.get(2)?,
            access_level_id: r.get(3)?,
            active: r.get(4)?,
            reason: r.get(5)?,
            profile_event_id: r.get(6)?,
            expires_at: r.get(7)?,
            changed_at: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest `access_changes.seq`, 0 when none.
pub fn newest_change(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT coalesce(max(seq), 0) FROM access_changes",
        [],
        |r| r.get(0),
    )?)
}

/// The newest `events.seq` (0: none).
pub fn newest_event(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?)
}

/// The levels whose effective access the clock has flipped since the feed last said:
/// reported active but past `expires_at`, or reported inactive but past `starts_at`
/// and not yet ended. Each part is a range of a partial index (schema.sql), so a tick
/// reads the levels due and the few with a start ahead, not every level ever ended.
pub fn due_for_clock(conn: &Connection, now: Timestamp) -> Result<Vec<EntitlementRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&due_for_clock_sql())?;
    let mut rows = stmt.query(params![now.to_rfc3339()])?;
    let mut due = Vec::new();
    while let Some(row) = rows.next()? {
        let row = entitlement_row(row)??;
        if row.entitlement.window.grants_at(now) != row.reported_active {
            due.push(row);
        }
    }
    Ok(due)
}

/// The query of [`due_for_clock`] (`?1`: now).
fn due_for_clock_sql() -> String {
    format!(
        "SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE reported_active = 1 AND is_lifetime = 0 AND expires_at IS NOT NULL \
         AND expires_at <= ?1 \
         UNION ALL \
         SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE reported_active = 0 AND is_active = 1 AND starts_at IS NOT NULL \
         AND starts_at <= ?1 AND is_lifetime = 0 AND expires_at > ?1 \
         UNION ALL \
         SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE reported_active = 0 AND is_active = 1 AND starts_at IS NOT NULL \
         AND starts_at <= ?1 AND is_lifetime = 0 AND expires_at IS NULL \
         UNION ALL \
         SELECT {ENTITLEMENT_COLUMNS} FROM entitlements \
         WHERE reported_active = 0 AND is_active = 1 AND starts_at IS NOT NULL \
         AND starts_at <= ?1 AND is_lifetime = 1"
    )
}

/// Sets what the feed last said of a level.
pub fn set_reported(
    conn: &Connection,
    profile_id: &str,
    access_level_id: &str,
    active: bool,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE entitlements SET reported_active = ?3 WHERE profile_id = ?1 AND access_level_id = ?2",
    )?
    .execute(params![profile_id, access_level_id, active])?;
    Ok(())
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
/// the cache, which a scan reads each page of once: at the writer's 64 MiB it filled
/// with pages nobody read again, and its memory stayed with the process (heaptrack: 69
/// MB of the 419 MB a 1M-profile warm-up left).
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
         last_event_at FROM entitlements ORDER BY profile_id, access_level_id",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /changes` reads up to what the writer has released, not what is committed.
    #[test]
    fn changes_after_stops_at_the_released_seq() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _lock) = open(&dir.path().join("e.db"), Synchronous::Normal).unwrap();
        let now = Timestamp::from_micros(1_900_000_000_000_000);
        for active in [true, false, true] {
            record_change(
                &conn,
                "p",
                "premium",
                active,
                ChangeReason::Rebuild,
                None,
                now,
            )
            .unwrap();
        }
        let seqs = |after, up_to| -> Vec<i64> {
            changes_after(&conn, after, up_to, 100)
                .unwrap()
                .iter()
                .map(|c| c.seq)
                .collect()
        };
        assert_eq!(seqs(0, 3), [1, 2, 3]);
        assert_eq!(seqs(0, 2), [1, 2]);
        assert_eq!(seqs(1, 2), [2]);
        assert!(seqs(2, 2).is_empty());
    }

    #[test]
    fn a_new_file_gets_the_schema_and_the_durable_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, lock) = open(&dir.path().join("e.db"), Synchronous::Full).unwrap();
        let pragma = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "Text(\"wal\")");
        assert_eq!(pragma("synchronous"), "Integer(2)"); // FULL
        assert_eq!(pragma("busy_timeout"), "Integer(5000)");
        assert_eq!(pragma("cache_size"), "Integer(-65536)");
        assert_eq!(
            pragma("application_id"),
            format!("Integer({APPLICATION_ID})")
        );
        assert_eq!(pragma("user_version"), format!("Integer({SCHEMA_VERSION})"));
        drop((conn, lock));
        // Opening again leaves it as it is.
        open(&dir.path().join("e.db"), Synchronous::Normal).unwrap();
    }

    #[test]
    fn the_wal_is_found_beside_the_file_a_symlink_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let target = dir.path().join("data").join("real.db");
        let link = dir.path().join("entitled.db");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let (conn, _lock) = open(&link, Synchronous::Full).unwrap();
        conn.execute_batch("INSERT INTO profiles (profile_id) VALUES ('p')")
            .unwrap();
        let file = database_file(&conn).unwrap().to_owned();
        assert_eq!(file, target.canonicalize().unwrap());
        // What the syncs open is the WAL SQLite writes, not a name beside the link.
        assert!(wal_path(&file).exists());
        assert!(!wal_path(&link).exists());
    }

    /// A file as version 1 of the schema made it, with one event, on a connection that
    /// stays open.
    fn version_1_file(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(include_str!("../../tests/fixtures/schema-v1.sql"))
            .unwrap();
        conn.execute_batch(
            "INSERT INTO events (profile_event_id, profile_id, event_type, event_datetime, \
             received_at, body) VALUES ('e1', 'p1', 't', 'a', 'b', '{}')",
        )
        .unwrap();
        conn
    }

    fn user_version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    /// An upgrade that fails part way leaves the file as it was: still version 1, every
    /// object and row in place, so the next start can try again.
    #[test]
    fn a_failed_upgrade_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let v1 = version_1_file(&path);
        v1.execute_batch("CREATE TABLE events_v1 (x); -- someone's table, in the upgrade's way")
            .unwrap();
        let objects = |conn: &Connection| -> Vec<String> {
            conn.prepare("SELECT type || ' ' || name || ' ' || ifnull(sql, '') FROM sqlite_schema ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let before = objects(&v1);
        assert!(before
            .iter()
            .any(|o| o.starts_with("index events_by_profile")));

        let err = open(&path, Synchronous::Full).unwrap_err();
        assert!(err.to_string().contains("events_v1"), "{err}");
        assert_eq!(objects(&v1), before);
        assert_eq!(user_version(&v1), 1);
        let id: String = v1
            .query_row("SELECT profile_event_id FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(id, "e1");
    }

    /// Version 2 → 3: each change recorded before gets its profile's `customer_user_id`
    /// (what the feed said of it until then); one with no profile row, none.
    #[test]
    fn a_version_2_file_gets_the_user_of_each_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        {
            let v2 = Connection::open(&path).unwrap();
            v2.execute_batch(include_str!("../../tests/fixtures/schema-v2.sql"))
                .unwrap();
            v2.execute_batch(
                "PRAGMA journal_mode = WAL;
                 INSERT INTO profiles (profile_id, customer_user_id) VALUES ('p1', 'user-1');
                 INSERT INTO access_changes (profile_id, access_level_id, active, reason, \
                   changed_at) VALUES ('p1', 'premium', 1, 'subscription_started', 't'), \
                   ('p2', 'premium', 1, 'subscription_started', 't');",
            )
            .unwrap();
        }
        let (conn, _lock) = open(&path, Synchronous::Full).unwrap();
        assert_eq!(user_version(&conn), 3);
        let users: Vec<(String, Option<String>)> = conn
            .prepare("SELECT profile_id, customer_user_id FROM access_changes ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            users,
            [("p1".into(), Some("user-1".into())), ("p2".into(), None)]
        );
        // A change recorded now takes the profile's user of this moment, and keeps it.
        let seq = record_change(
            &conn,
            "p1",
            "premium",
            false,
            ChangeReason::Expired,
            None,
            Timestamp::from_micros(0),
        )
        .unwrap();
        conn.execute_batch("UPDATE profiles SET customer_user_id = 'user-2'")
            .unwrap();
        let change = changes_after(&conn, seq - 1, seq, 1).unwrap().remove(0);
        assert_eq!(change.customer_user_id.as_deref(), Some("user-1"));
    }

    /// The upgrade leaves WAL mode, which another connection on the file prevents: it
    /// stops with an error saying so and changes nothing; once that one closes, the
    /// next open upgrades.
    #[test]
    fn an_upgrade_waits_for_other_connections_to_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let other = version_1_file(&path);
        let _wal: String = other
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        // As a person's `sqlite3` session that has looked at the file.
        let _events: i64 = other
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();

        let err = open(&path, Synchronous::Full).unwrap_err();
        assert!(matches!(err, StoreError::Upgrade { .. }), "{err}");
        assert!(
            err.to_string().contains("close every other connection"),
            "{err}"
        );
        assert_eq!(user_version(&other), 1);

        drop(other);
        let (conn, _lock) = open(&path, Synchronous::Full).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// The clock's query reads ranges of partial indexes, never a whole table, and a
    /// level that started and then ended with no event (it stays `is_active = 1`) is
    /// outside the range it reads for starts.
    #[test]
    fn the_clock_reads_only_index_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, _lock) = open(&dir.path().join("e.db"), Synchronous::Normal).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", due_for_clock_sql()))
            .unwrap()
            .query_map([Timestamp::from_micros(0).to_rfc3339()], |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let searches: Vec<&String> = plan.iter().filter(|d| d.starts_with("SEARCH")).collect();
        assert!(plan.iter().all(|d| !d.starts_with("SCAN")), "{plan:#?}");
        assert_eq!(searches.len(), 4, "{plan:#?}");
        assert!(
            searches
                .iter()
                .any(|d| d.contains("entitlements_unreported_by_end")
                    && d.contains("is_lifetime=? AND expires_at>?")),
            "{plan:#?}"
        );
    }

    #[test]
    fn refuses_a_foreign_or_newer_file() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(matches!(
            open(&foreign, Synchronous::Full),
            Err(StoreError::ForeignFile { .. })
        ));
        let newer = dir.path().join("newer.db");
        drop(open(&newer, Synchronous::Full).unwrap());
        Connection::open(&newer)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        let err = open(&newer, Synchronous::Full).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
