//! What entitled's load tools share: `examples/entitled-bench` (the benchmark that
//! writes BENCHMARKS.md), `examples/soak.rs` (hours of steady mixed load) and
//! `benches/projection.rs` (divan micro-benchmarks).
//!
//! - [`gen`]: realistic Adapty webhooks, a pure function of a namespace and an index,
//!   so every tool sends, stores and checks the same events without keeping them.
//! - [`procs`]: build and start the release daemon, wait for it, stop it with SIGTERM,
//!   and read what `/proc` says about it (CPU time, resident memory).
//! - [`flags`]: the command lines of the benchmark and of the soak, one clap parser for
//!   both, with the value checks they share and the Markdown table the benchmark's
//!   report prints of its own flags.
//!
//! A workspace member, not a module included by path into each example: the root
//! package's `cargo test` and `cargo clippy --all-targets` build and lint it (it is a
//! default member), and its tests pin the flags' names and defaults, which users'
//! scripts depend on.

pub mod flags;
pub mod gen;
pub mod procs;
