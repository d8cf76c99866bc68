//! Opening a database: the one writer's [`WriterLock`], the pragmas of each kind of
//! connection, and the syncs of a WAL and its directory.

use super::migrate::migrate;
use super::{StoreError, Synchronous, APPLICATION_ID, BUSY_TIMEOUT, CACHE_KIB};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

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
/// about to take) the [`WriterLock`]: the writer's, the checkpoint thread's, and the
/// push delivery's (its own two tables).
pub fn connect(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SCHEMA_VERSION;

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
}
