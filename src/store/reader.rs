//! The store's read side beyond the in-memory index: the event log (time travel,
//! explain) and the change feed. [`Reader`] is the interface the HTTP layer holds;
//! [`SqliteReader`] is its one implementation today, a small pool of read-only
//! connections (r2d2), so a request reuses a connection instead of opening the file.
//!
//! The methods block (SQLite reads do); a caller on an async runtime runs them on its
//! blocking pool. They read only what the writer has released (`up_to`): a row
//! committed but not yet on disk could vanish with the power.

use super::history::{self, LoggedEvent};
use super::open::{database_file, wal_path};
use super::sharing::Component;
use super::{changes_after, open_read_only, AccessChange, StoreError};
use crate::adapty::Decoder;
use crate::index::Index;
use crate::projection::Rules;
use crate::timestamp::Timestamp;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What the read API asks of the store.
pub trait Reader: Send + Sync {
    /// A profile's stored events up to `up_to` (an `events.seq`), with those of every
    /// profile linked with it by sharing, and the links ([`history::shared_events`]).
    fn shared_events(
        &self,
        profile_id: &str,
        up_to: i64,
    ) -> Result<(Vec<LoggedEvent>, Component), StoreError>;

    /// The state of these profiles as of `at`, folded from the log up to `up_to`.
    fn index_as_of(
        &self,
        profile_ids: &[String],
        at: Timestamp,
        up_to: i64,
    ) -> Result<Index, StoreError>;

    /// One page of the change feed: after `after`, at most `up_to`, at most `limit`.
    fn changes_after(
        &self,
        after: i64,
        up_to: i64,
        limit: u32,
    ) -> Result<Vec<AccessChange>, StoreError>;

    /// How many bytes the store takes on disk (the database file and its WAL), for
    /// `/metrics`; 0 when unknown.
    fn disk_bytes(&self) -> u64;

    /// The profiles that carry `customer_user_id` now, sorted (`entitled access --user`).
    fn profiles_of_user(&self, customer_user_id: &str) -> Result<Vec<String>, StoreError>;

    /// These profiles as the table holds them now (`entitled access`).
    fn index_now(&self, profile_ids: &[String]) -> Result<Index, StoreError>;
}

/// The reader of `--db`: PostgreSQL for a `postgres://` URL, else the SQLite file (which
/// must exist). For the read-only tools (`access`, `events`), safe beside running
/// daemons.
pub fn open_reader(
    db: &Path,
    decoder: Decoder,
    rules: Arc<Rules>,
) -> Result<Box<dyn Reader>, StoreError> {
    match db.to_str().filter(|db| super::postgres::is_url(db)) {
        Some(url) => Ok(Box::new(super::postgres::reader::PgReader::new(
            super::postgres::pool(url, 2)?,
            decoder,
            rules,
        ))),
        None => Ok(Box::new(SqliteReader::open(db, decoder, rules)?)),
    }
}

/// At most this many read connections at once: reads are rare (time travel, explain,
/// the change feed), and each holds SQLite's page cache.
const POOL_SIZE: u32 = 4;

/// [`Reader`] on a SQLite file.
pub struct SqliteReader {
    pool: r2d2::Pool<ReadOnly>,
    decoder: Decoder,
    rules: Arc<Rules>,
    /// The file and its WAL as SQLite resolved them (symlinks followed).
    files: [PathBuf; 2],
}

impl SqliteReader {
    /// Opens one connection now (so a missing or foreign file is an error at start),
    /// more as requests need them.
    pub fn open(path: &Path, decoder: Decoder, rules: Arc<Rules>) -> Result<Self, StoreError> {
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            // A connection to a local file does not go stale: no `SELECT` before each
            // read (a failed read is a 503 either way).
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(5))
            .build(ReadOnly(path.to_owned()))
            .map_err(pool_error)?;
        let file = {
            let conn = pool.get().map_err(pool_error)?;
            database_file(&conn).map_or_else(|| path.to_owned(), Path::to_owned)
        };
        let wal = wal_path(&file);
        Ok(SqliteReader {
            pool,
            decoder,
            rules,
            files: [file, wal],
        })
    }

    fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.pool.get().map_err(pool_error)?;
        read(&conn)
    }
}

impl Reader for SqliteReader {
    fn shared_events(
        &self,
        profile_id: &str,
        up_to: i64,
    ) -> Result<(Vec<LoggedEvent>, Component), StoreError> {
        self.with(|conn| history::shared_events(conn, profile_id, up_to, &self.decoder))
    }

    fn index_as_of(
        &self,
        profile_ids: &[String],
        at: Timestamp,
        up_to: i64,
    ) -> Result<Index, StoreError> {
        self.with(|conn| {
            history::index_as_of(conn, profile_ids, at, up_to, &self.rules, &self.decoder)
        })
    }

    fn changes_after(
        &self,
        after: i64,
        up_to: i64,
        limit: u32,
    ) -> Result<Vec<AccessChange>, StoreError> {
        self.with(|conn| changes_after(conn, after, up_to, limit))
    }

    fn profiles_of_user(&self, customer_user_id: &str) -> Result<Vec<String>, StoreError> {
        self.with(|conn| history::profiles_of_user(conn, customer_user_id))
    }

    fn index_now(&self, profile_ids: &[String]) -> Result<Index, StoreError> {
        self.with(|conn| history::index_now(conn, profile_ids))
    }

    fn disk_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum()
    }
}

fn pool_error(error: r2d2::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// r2d2's manager for [`open_read_only`] connections.
#[derive(Debug)]
struct ReadOnly(PathBuf);

impl r2d2::ManageConnection for ReadOnly {
    type Connection = Connection;
    type Error = StoreError;

    fn connect(&self) -> Result<Connection, StoreError> {
        open_read_only(&self.0)
    }

    /// Only asked for with `test_on_check_out`, which this pool turns off.
    fn is_valid(&self, conn: &mut Connection) -> Result<(), StoreError> {
        Ok(conn.execute_batch("")?)
    }

    fn has_broken(&self, _: &mut Connection) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{open, Synchronous};

    /// `/metrics` counts the WAL SQLite writes: beside the file a symlink names, not
    /// beside the link (where the size used to be looked for, and found missing).
    #[test]
    fn disk_bytes_counts_the_wal_beside_the_linked_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("data").join("e.db");
        std::fs::create_dir(real.parent().unwrap()).unwrap();
        let link = dir.path().join("e.db");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (writer, _lock) = open(&link, Synchronous::Normal).unwrap();
        writer
            .execute("INSERT INTO profiles (profile_id) VALUES ('p1')", [])
            .unwrap();
        let wal = std::fs::metadata(wal_path(&real)).unwrap().len();
        assert!(wal > 0, "the insert is in the WAL");
        let reader =
            SqliteReader::open(&link, Decoder::default(), Arc::new(Rules::default())).unwrap();
        let file = std::fs::metadata(&real).unwrap().len();
        assert_eq!(reader.disk_bytes(), file + wal);
        assert!(reader.changes_after(0, i64::MAX, 10).unwrap().is_empty());
    }
}
