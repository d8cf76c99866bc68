//! The integration tests of `entitled`: each test starts the real binary on a random
//! port with its database in its own temporary directory, and talks HTTP to it (and
//! reads the SQLite file read-only where the stored state is the point).

// serde_json::json! of a full Adapty body nests deeper than the default limit.
#![recursion_limit = "256"]

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
mod receiver;
mod schema;
mod security;
mod sharing;
mod sharing_upgrade;
mod upgrade;
mod users;
