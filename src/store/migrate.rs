//! The schema: created in a new file, checked in an existing one, and upgraded in
//! place, one version at a time.

use super::{StoreError, APPLICATION_ID, SCHEMA, SCHEMA_VERSION};
use rusqlite::Connection;

pub(super) fn migrate(conn: &Connection, path: &str) -> Result<(), StoreError> {
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
    if version < 4 {
        upgrade_to_4(conn, path)?;
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

/// Version 3 → 4: shared access and push. `entitlements` gets `shared_from` and
/// `sharing_group`, `access_changes` gets `shared_from`, and `sharing_links`, its
/// index, `upgrade_tasks`, `notify_state`, `notify_failed` and the view are created
/// as a new file has them. Rows
/// before were each their own (NULL is right for them).
///
/// Events stored before may already declare shared access: folding them needs the
/// configuration (`--product-levels`, `--sandbox`, `--event-names`), which an upgrade
/// does not have. So when one does, the upgrade leaves a 'rebuild' task, and the
/// daemon's next start (or `entitled rebuild`) rebuilds the projection under its
/// configuration before it warms the index, in one transaction that also clears the
/// task ([`super::finish_upgrade`]). Finding them reads every body once.
fn upgrade_to_4(conn: &Connection, path: &str) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    tracing::info!(path, "upgrading the schema from version 3 to 4");
    let steps = format!(
        "ALTER TABLE entitlements ADD COLUMN shared_from TEXT;
         ALTER TABLE entitlements ADD COLUMN sharing_group TEXT;
         ALTER TABLE access_changes ADD COLUMN shared_from TEXT;
         {index}
         {links}
         {tasks}
         {notify_state}
         {notify_failed}
         INSERT INTO upgrade_tasks (task, reason)
           SELECT 'rebuild', 'stored events declare shared access (schema version 4)'
           WHERE EXISTS (SELECT 1 FROM events
             WHERE body LIKE '%profiles_sharing_access_level%'
               AND json_valid(body)
               AND (json_array_length(body, '$.profiles_sharing_access_level') > 0
                 OR json_array_length(body,
                      '$.event_properties.profiles_sharing_access_level') > 0));
         DROP VIEW active_entitlements;
         {view}
         PRAGMA user_version = 4;",
        index = schema_statement("CREATE INDEX entitlements_by_sharing_group", ";"),
        links = schema_statement("CREATE TABLE sharing_links", ";"),
        tasks = schema_statement("CREATE TABLE upgrade_tasks", ";"),
        notify_state = schema_statement("CREATE TABLE notify_state", ";"),
        notify_failed = schema_statement("CREATE TABLE notify_failed", ";"),
        view = schema_statement("CREATE VIEW active_entitlements", ";"),
    );
    in_one_transaction(conn, &steps)?;
    tracing::info!(
        path,
        seconds = started.elapsed().as_secs_f64(),
        "schema upgraded to version 4"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{changes_after, open, record_change, ChangeReason, Synchronous};
    use crate::timestamp::Timestamp;
    use std::path::Path;

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
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
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
