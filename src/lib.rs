//! entitled: Adapty subscription webhooks in, "is this user premium right now?" out.
//!
//! The data flows one way, and each module owns one step:
//! HTTP ([`http`]) → wire format ([`adapty`]) → projection ([`projection`], pure) →
//! store ([`store`], one writer) → index ([`index`], committed state in memory) → HTTP.

pub mod access;
pub mod adapty;
pub mod cli;
pub mod config;
pub mod http;
pub mod index;
pub mod notify;
pub mod projection;
pub mod refresh;
mod startup;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod timestamp;

use config::RebuildArgs;
use timestamp::Timestamp;

pub use startup::{serve, ServeError};

/// `entitled rebuild`: folds the whole event log again under the given configuration.
/// With `check`, writes nothing and reports whether the table differs.
pub fn rebuild(args: RebuildArgs) -> Result<store::rebuild::Summary, store::StoreError> {
    let decoder = adapty::Decoder::new(args.projection.event_names.clone());
    let rules = args.projection.rules();
    // On PostgreSQL, beside running instances: it holds the sharing lock alone while it
    // runs (their writes wait), and their followers pick the result up.
    if let Some(url) = store::postgres_url(&args.store.db) {
        let pool = store::postgres::open(url, 1)?;
        let mut client = store::postgres::checkout(&pool)?;
        return store::postgres::rebuild(
            &mut client,
            &rules,
            &decoder,
            !args.check,
            Timestamp::now(),
        );
    }
    // Opening would create the file: a typo in --db would "match" an empty database.
    if !args.store.db.exists() {
        return Err(store::StoreError::NoDatabase {
            path: args.store.db.display().to_string(),
        });
    }
    let (mut conn, _lock) = store::open(&args.store.db, args.store.synchronous.into())?;
    store::rebuild::rebuild(&mut conn, &rules, &decoder, !args.check, Timestamp::now())
}
