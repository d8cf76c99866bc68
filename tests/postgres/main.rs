//! The integration tests again, with every daemon on PostgreSQL: the same suite files
//! as the `api` binary (tests/api/, included by path, not copied), each daemon on a
//! database of its own on a server the harness starts itself (tests/api/pg_server.rs;
//! `.ci/run` installs Debian's `postgresql` when its programs are missing). helpers.rs
//! reads [`POSTGRES`] to pass `--db postgres://…` and to read rows over the `postgres`
//! client with the same SQL. Beside them, multi.rs: several daemons on one database;
//! pg_follow.rs: the follower's horizon, migrations at start, `migrate`, the tools;
//! pg_property.rs: the store's property test (the table is `project()` of the stored
//! events) with random events sent to two instances at once.
//!
//! Included: the suites that test behaviour over HTTP: adapty_api, auth, changes,
//! config, durability, events, expiry, history, hostile, malformed, notify (push, with
//! the delivery lock: one instance delivers), ordering, security, sharing, upgrade,
//! users. Their tests that need the SQLite file itself are wrapped in
//! `sqlite_only!`, which this binary drops:
//! - durability: `the_database_is_readable_while_the_daemon_runs` (a read transaction
//!   on the file beside the writer, SQLite's WAL); its kill -9 test skips `PRAGMA
//!   integrity_check` on PostgreSQL;
//! - security: `hostile_ids_are_stored_and_looked_up_exactly` (reads the file back with
//!   ids holding NULs, which PostgreSQL's `text` cannot take as parameters; hostile.rs
//!   still sends NULs over HTTP here);
//! - sharing: `the_sqlite_file_shows_who_shares_with_whom` (`PRAGMA user_version`).
//!
//! The CLI tools in adapty_api (`sync`) and sharing (`rebuild`) get the daemon's
//! `--db` (`Daemon::db_arg`): here the URL.
//!
//! Excluded, and why:
//! - cli, schema, sharing_upgrade, locked: the SQLite file itself (tools run on the
//!   file, files written by older versions, another process holding its locks);
//! - crash: its rounds read the file (`PRAGMA integrity_check`) between kills
//!   (durability.rs and multi.rs kill daemons here);
//! - disk_full: a SQLite file on a small tmpfs (multi.rs's server restart is the
//!   PostgreSQL counterpart);
//! - operations: provokes storage errors through SQLite's write lock and reads its WAL
//!   file beside its HTTP tests;
//! - overload, deploy, layers: nothing of the store (slow clients, the deployment
//!   files, the module graph): once, in `api`, is enough.

// serde_json::json! of a full Adapty body nests deeper than the default limit.
#![recursion_limit = "256"]

/// The store this binary's daemons run on: `true`, PostgreSQL (a new database on the
/// harness's server for each daemon). helpers.rs reads this.
pub const POSTGRES: bool = true;

/// Tests that only the SQLite binary has (they read the SQLite file): dropped here.
macro_rules! sqlite_only {
    ($($item:item)*) => {};
}

/// Items only this binary has (the PostgreSQL harness's own tests).
macro_rules! postgres_only {
    ($($item:item)*) => { $($item)* };
}

#[path = "../api/fake_adapty.rs"]
mod fake_adapty;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/multi.rs"]
mod multi;
#[path = "../api/notify.rs"]
mod notify;
#[path = "../api/pg_follow.rs"]
mod pg_follow;
#[path = "../api/pg_property.rs"]
mod pg_property;
#[path = "../api/pg_server.rs"]
mod pg_server;
#[path = "../api/receiver.rs"]
mod receiver;

#[path = "../api/adapty_api.rs"]
mod adapty_api;
#[path = "../api/auth.rs"]
mod auth;
#[path = "../api/changes.rs"]
mod changes;
#[path = "../api/config.rs"]
mod config;
#[path = "../api/durability.rs"]
mod durability;
#[path = "../api/events.rs"]
mod events;
#[path = "../api/expiry.rs"]
mod expiry;
#[path = "../api/history.rs"]
mod history;
#[path = "../api/hostile.rs"]
mod hostile;
#[path = "../api/malformed.rs"]
mod malformed;
#[path = "../api/ordering.rs"]
mod ordering;
#[path = "../api/security.rs"]
mod security;
#[path = "../api/sharing.rs"]
mod sharing;
#[path = "../api/upgrade.rs"]
mod upgrade;
#[path = "../api/users.rs"]
mod users;
