//! The integration tests of `entitled`: each test starts the real binary on a random
//! port with its database in its own temporary directory, and talks HTTP to it (and
//! reads the SQLite file read-only where the stored state is the point).

// serde_json::json! of a full Adapty body nests deeper than the default limit.
#![recursion_limit = "256"]

/// The store this binary's daemons run on: `false`, SQLite (a file in each test's
/// directory). The `postgres` binary (tests/postgres/main.rs) includes the suites that
/// do not depend on the file and runs them on PostgreSQL; helpers.rs reads this.
pub const POSTGRES: bool = false;

/// Tests (or their helpers) that only this SQLite binary has: they read the SQLite
/// file (`Daemon::sqlite`), run tools on its path, or check what only SQLite has. The
/// `postgres` binary defines this macro to drop them. Defined before the modules, so
/// that it is in scope in them.
macro_rules! sqlite_only {
    ($($item:item)*) => { $($item)* };
}

/// Items only the `postgres` binary has (the PostgreSQL harness's own tests): dropped
/// here, so that the SQLite suite neither needs nor starts a PostgreSQL server.
macro_rules! postgres_only {
    ($($item:item)*) => {};
}

mod adapty_api;
mod auth;
mod changes;
mod cli;
mod config;
mod crash;
mod deploy;
mod disk_full;
mod durability;
mod events;
mod expiry;
mod fake_adapty;
mod helpers;
mod history;
mod hostile;
mod layers;
mod locked;
mod malformed;
mod notify;
mod operations;
mod ordering;
mod overload;
mod pg_server;
mod receiver;
mod schema;
mod security;
mod sharing;
mod sharing_upgrade;
mod upgrade;
mod users;
