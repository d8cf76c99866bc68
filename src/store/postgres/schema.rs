//! The schema on PostgreSQL: created in an empty database, checked in an existing one,
//! upgraded in place; all under one advisory lock, so that instances starting together
//! migrate one after the other (the second finds the work done).

use super::SCHEMA;
use crate::store::StoreError;

/// The version `schema.postgres.sql` creates (`entitled_schema.version`).
pub const SCHEMA_VERSION: i32 = 2;

/// The advisory lock key of migrations ("entd" and 1).
const MIGRATION_LOCK: i64 = 0x656e_7464_0000_0001;

pub(super) fn migrate(client: &mut postgres::Client, name: &str) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let ours: bool = tx
        .query_one("SELECT to_regclass('entitled_schema') IS NOT NULL", &[])?
        .get(0);
    if !ours {
        let theirs: i64 = tx
            .query_one(
                "SELECT count(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() \
                 AND table_name IN ('events', 'profiles', 'entitlements', 'access_changes')",
                &[],
            )?
            .get(0);
        if theirs > 0 {
            return Err(StoreError::Upgrade {
                path: name.to_owned(),
                reason: "it has tables named like entitled's but no entitled_schema: \
                         not an entitled database; refusing to touch it"
                    .into(),
            });
        }
        tx.batch_execute(SCHEMA)?;
        tx.commit()?;
        tracing::info!(db = name, version = SCHEMA_VERSION, "created the schema");
        return Ok(());
    }
    let version: i32 = tx
        .query_one("SELECT version FROM entitled_schema", &[])?
        .get(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::Upgrade {
            path: name.to_owned(),
            reason: format!(
                "its schema version {version} is newer than this entitled's \
                 ({SCHEMA_VERSION}); upgrade entitled"
            ),
        });
    }
    // One version at a time, in this transaction.
    if version < 2 {
        // Push's cursor and parked changes.
        tx.batch_execute(schema_statement("CREATE TABLE notify_state"))?;
        tx.batch_execute(schema_statement("CREATE TABLE notify_failed"))?;
        tx.execute("UPDATE entitled_schema SET version = 2", &[])?;
        tracing::info!(
            db = name,
            "upgraded the schema to version 2 (push's tables)"
        );
    }
    tx.commit()?;
    Ok(())
}

/// The statement of [`SCHEMA`] that starts with `head`, through the first `);` after
/// it: an upgrade creates what a new database gets, from the one text.
fn schema_statement(head: &str) -> &'static str {
    let start = SCHEMA
        .find(head)
        .unwrap_or_else(|| panic!("schema.postgres.sql has no `{head}`"));
    let length = SCHEMA[start..]
        .find(");")
        .unwrap_or_else(|| panic!("schema.postgres.sql's `{head}` does not end in `);`"));
    &SCHEMA[start..start + length + 2]
}
