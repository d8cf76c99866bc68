//! The schema on PostgreSQL: created in an empty database, checked in an existing one,
//! upgraded in place; all under one advisory lock, so that instances starting together
//! migrate one after the other (the second finds the work done).

use super::SCHEMA;
use crate::store::StoreError;

/// The version `schema.postgres.sql` creates (`entitled_schema.version`).
pub const SCHEMA_VERSION: i32 = 1;

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
    // Upgrades go here, one version at a time, in this transaction (version 1 is the
    // first).
    tx.commit()?;
    Ok(())
}
