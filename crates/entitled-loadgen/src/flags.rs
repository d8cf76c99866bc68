//! The command lines of the benchmark ([`Bench`]) and the soak ([`Soak`]): one clap
//! parser for both, the value checks they share, and the Markdown table of a command's
//! flags that the benchmark writes into BENCHMARKS.md ([`markdown_table`]).
//!
//! Users' scripts call these flags: the tests below pin every name and default.

use clap::builder::ArgAction;
use std::path::PathBuf;

/// The flags of `cargo run --release --example entitled-bench -- …`. `--help` prints
/// them, and BENCHMARKS.md carries the same table ([`markdown_table`]).
#[derive(Debug, clap::Parser)]
#[command(
    name = "entitled-bench",
    about = "The daemon over real HTTP on a real SQLite file; every figure a ratio against a baseline measured in the same run."
)]
pub struct Bench {
    /// Development run: 100,000 profiles, 5 s phases, smaller SQLite baselines; writes
    /// no report unless --out.
    #[arg(long)]
    pub quick: bool,
    /// Profiles in the start-up / lookup database, 4 events each [default: 1,000,000;
    /// --quick, --only-push-flood and --only-postgres: 100,000].
    #[arg(long, value_name = "N", value_parser = positive::<u64>)]
    pub profiles: Option<u64>,
    /// Measured seconds of each load phase (ingest: 1.5x), after a 2 s warm-up
    /// (--quick: 1 s) [default: 10; --quick: 5].
    #[arg(long, value_name = "S", value_parser = positive::<u64>)]
    pub seconds: Option<u64>,
    /// Client connections of the ingest and lookup phases.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = positive::<usize>)]
    pub connections: usize,
    /// Events per second ingested during the mixed phase.
    #[arg(long, value_name = "R", default_value_t = 1000.0, value_parser = positive::<f64>)]
    pub mixed_ingest_rate: f64,
    /// Do not `taskset` the daemon to core 0 and the client to core 1.
    #[arg(long)]
    pub no_pin: bool,
    /// Run only the ingest phase and its two SQLite baselines (no 1M-profile database),
    /// print their figures and write no report: for working on the write path.
    #[arg(long)]
    pub only_ingest: bool,
    /// With --only-ingest: the ingest phase against a daemon on a copy of the --profiles
    /// cached database (synced first, its indexes read into the OS page cache): ~10 %
    /// re-sends, of the rest half new events of cached profiles (dated after theirs),
    /// half new profiles' events. No SQLite baselines; one line printed; the copy is
    /// deleted afterwards. The daemon's log is kept in
    /// target/bench-data/ingest-on-preloaded.log (ENTITLED_BENCH_DAEMON_LOG sets its
    /// RUST_LOG).
    // Also refused beside the flags that conflict with --only-ingest, which clap counts
    // as meeting a `requires`.
    #[arg(
        long,
        requires = "only_ingest",
        conflicts_with_all = ["only_lookups", "only_mixed", "rerender"]
    )]
    pub ingest_on_preloaded: bool,
    /// Run only start-up and the lookups against the HTTP ceiling (closed-loop pairs, then
    /// both paced at half the ceiling), print their figures and write no report: for
    /// working on the read path.
    #[arg(long, conflicts_with = "only_ingest")]
    pub only_lookups: bool,
    /// Run only start-up (once), lookups alone (closed loop, then paced at half that
    /// rate) and the same beside a steady ingest, print their figures and write no
    /// report: for working on what ingest does to lookups. No HTTP ceiling.
    #[arg(long, conflicts_with_all = ["only_ingest", "only_lookups"])]
    pub only_mixed: bool,
    /// Run only `entitled sync` of --sync-profiles profiles against a fake of Adapty's
    /// API served by this benchmark (one `premium` level each), on a new database and
    /// then again (every answer a duplicate), against a client that fetches the same
    /// profiles and stores nothing; three rounds, print their figures and write no
    /// report: for the cost of a day-one backfill.
    #[arg(
        long,
        conflicts_with_all = ["only_ingest", "only_lookups", "only_mixed", "ingest_on_preloaded"]
    )]
    pub only_sync: bool,
    /// With --only-sync: how many profiles each sync fetches.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        requires = "only_sync",
        value_parser = positive::<u64>
    )]
    pub sync_profiles: u64,
    /// Run only the push flood: 10,000 purchase webhooks (one access gain each) ingested
    /// as fast as --connections closed-loop clients send them, while closed-loop lookups
    /// of --profiles cached profiles run beside them, against a daemon with --notify-url
    /// pointing at a receiver served by this benchmark and, alternately, the same daemon
    /// without it; three rounds of each, print their figures (lookups' throughput and p99
    /// with push over without, how long the receiver took to get all 10,000 changes) and
    /// write no report.
    #[arg(
        long,
        conflicts_with_all = ["only_ingest", "only_lookups", "only_mixed", "only_sync", "ingest_on_preloaded", "sync_profiles"]
    )]
    pub only_push_flood: bool,
    /// Run only the PostgreSQL mode, on a PostgreSQL server this benchmark starts
    /// (tests/api/pg_server.rs): ingest through two `entitled serve --db postgres://…`
    /// instances on one database (and through one), against one client inserting the
    /// same rows (the daemons' batch size, statements and COPY); follower lag (a webhook
    /// to one instance, the other polled until it shows it), idle and beside an ingest;
    /// lookups and start-up on --profiles profiles, PostgreSQL against SQLite (three
    /// alternating pairs); without --quick, start-up on 1,000,000 profiles too
    /// (PostgreSQL only). Prints its figures and writes the PostgreSQL section of the
    /// report (--out), keeping the rest of that file as it was; with --quick, writes
    /// nothing unless --out.
    #[arg(
        long,
        conflicts_with_all = ["only_ingest", "only_lookups", "only_mixed", "only_sync", "only_push_flood", "ingest_on_preloaded", "sync_profiles"]
    )]
    pub only_postgres: bool,
    /// With --only-ingest: make every fsync and fdatasync of this benchmark and of the
    /// daemon N microseconds longer, as on a slower disk (an LD_PRELOAD shim,
    /// examples/entitled-bench/slow_fsync.c, built with `cc`; the benchmark checks that
    /// the daemon loaded it) [default: none; the full run does one pass at 1000].
    #[arg(long, value_name = "N", requires = "only_ingest", value_parser = positive::<u64>)]
    pub fsync_delay_us: Option<u64>,
    /// With --only-ingest: also write the figures as JSON to this file (how the full run
    /// reads its pass on the slower disk).
    #[arg(long, requires = "only_ingest", hide = true)]
    pub figures_to: Option<PathBuf>,
    /// Where to write the report [default: BENCHMARKS.md for the full run, --rerender and
    /// --only-postgres (its section only); none for --quick and the other --only-* runs].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Measure nothing: write the report again from the figures that a full run saved
    /// at the end of FILE (the BENCHMARKS.md it wrote), in this version's layout.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["quick", "only_ingest", "only_lookups", "only_mixed", "only_sync", "only_push_flood", "only_postgres"]
    )]
    pub rerender: Option<PathBuf>,
}

/// The flags of `cargo run --release --example soak -- …`; `--help` prints them, and
/// the doc comment of examples/soak.rs has the same table.
#[derive(Debug, clap::Parser)]
#[command(
    name = "soak",
    about = "The release daemon under steady mixed load for a long time: does anything drift, and is every acknowledged event in the file?"
)]
pub struct Soak {
    /// How long the load runs (fractions allowed).
    #[arg(long, value_name = "M", default_value_t = 10.0, value_parser = finite_positive)]
    pub minutes: f64,
    /// Seconds between report rows.
    #[arg(long, value_name = "S", default_value_t = 30, value_parser = positive::<u64>)]
    pub report_every: u64,
    /// Webhooks per second, paced (open loop).
    #[arg(long, value_name = "R", default_value_t = 200.0, value_parser = finite_positive)]
    pub ingest_rate: f64,
    /// Lookups per second, paced (open loop).
    #[arg(long, value_name = "R", default_value_t = 1000.0, value_parser = finite_positive)]
    pub lookup_rate: f64,
    /// Percent of webhooks that resend an event already sent.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(0..=100)
    )]
    pub duplicates: u64,
    /// Client connections of each stream (ingest, lookups).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = positive::<usize>)]
    pub connections: usize,
    /// The daemon binary [default: `cargo build --release --bin entitled`].
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Keep the temporary directory (database, daemon log).
    #[arg(long)]
    pub keep: bool,
}

/// A flag's value that must be a positive number; `_` may group digits (`1_000_000`).
pub fn positive<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + Default,
{
    text.replace('_', "")
        .parse::<T>()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| format!("{text:?} is not a positive number"))
}

/// A positive number that is not infinite (`inf` parses as an `f64`).
pub fn finite_positive(text: &str) -> Result<f64, String> {
    positive::<f64>(text)
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| format!("{text:?} is not a positive number"))
}

/// The visible flags of `command` as a Markdown table (flag, default, meaning), from
/// the same definitions as its `--help`, so that the two cannot disagree. A default
/// clap does not know (an `Option` whose value depends on other flags) is written at
/// the end of the help as `[default: …]`, as clap prints its own.
pub fn markdown_table(command: &clap::Command) -> String {
    let mut table = String::from("| flag | default | meaning |\n|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || matches!(long, "help" | "version") {
            continue;
        }
        let takes_value = !matches!(
            arg.get_action(),
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
        );
        let mut flag = format!("`--{long}");
        if takes_value {
            for name in arg.get_value_names().unwrap_or_default() {
                flag.push(' ');
                flag.push_str(name);
            }
        }
        flag.push('`');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let (meaning, stated) = match help.rsplit_once(" [default: ") {
            Some((meaning, rest)) => {
                let stated = rest.trim_end_matches('.').trim_end_matches(']');
                (meaning.to_owned(), Some(stated.to_owned()))
            }
            None => (help, None),
        };
        let default = if !takes_value {
            "off".to_owned()
        } else if let Some(stated) = stated {
            stated
        } else {
            let values: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if values.is_empty() {
                "none".to_owned()
            } else {
                values.join(", ")
            }
        };
        table.push_str(&format!(
            "| {flag} | {} | {} |\n",
            cell(&default),
            cell(&meaning)
        ));
    }
    table
}

/// Text that stays inside one cell of a Markdown table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn definitions_are_consistent() {
        Bench::command().debug_assert();
        Soak::command().debug_assert();
    }

    #[test]
    fn bench_defaults() {
        let b = Bench::try_parse_from(["entitled-bench"]).unwrap();
        assert!(!b.quick && !b.no_pin && !b.only_ingest && !b.only_lookups && !b.only_mixed);
        assert!(!b.ingest_on_preloaded && !b.only_sync && !b.only_push_flood && !b.only_postgres);
        assert_eq!(b.sync_profiles, 10_000);
        assert_eq!(b.profiles, None);
        assert_eq!(b.seconds, None);
        assert_eq!(b.connections, 64);
        assert_eq!(b.mixed_ingest_rate, 1000.0);
        assert_eq!(b.fsync_delay_us, None);
        assert_eq!(b.figures_to, None);
        assert_eq!(b.out, None);
        assert_eq!(b.rerender, None);
    }

    #[test]
    fn bench_every_flag_by_name() {
        let b = Bench::try_parse_from([
            "entitled-bench",
            "--quick",
            "--profiles",
            "1_000",
            "--seconds",
            "3",
            "--connections",
            "8",
            "--mixed-ingest-rate",
            "250.5",
            "--no-pin",
            "--only-ingest",
            "--fsync-delay-us",
            "1000",
            "--figures-to",
            "f.json",
            "--out",
            "out.md",
        ])
        .unwrap();
        assert!(b.quick && b.no_pin && b.only_ingest);
        assert_eq!(b.profiles, Some(1000));
        assert_eq!(b.seconds, Some(3));
        assert_eq!(b.connections, 8);
        assert_eq!(b.mixed_ingest_rate, 250.5);
        assert_eq!(b.fsync_delay_us, Some(1000));
        assert_eq!(b.figures_to, Some(PathBuf::from("f.json")));
        assert_eq!(b.out, Some(PathBuf::from("out.md")));
        let b = Bench::try_parse_from([
            "entitled-bench",
            "--only-ingest",
            "--ingest-on-preloaded",
            "--profiles",
            "20000",
        ])
        .unwrap();
        assert!(b.only_ingest && b.ingest_on_preloaded);
        assert_eq!(b.profiles, Some(20_000));
        let b = Bench::try_parse_from(["entitled-bench", "--only-lookups"]).unwrap();
        assert!(b.only_lookups);
        let b = Bench::try_parse_from(["entitled-bench", "--only-mixed"]).unwrap();
        assert!(b.only_mixed);
        let b = Bench::try_parse_from(["entitled-bench", "--only-sync", "--sync-profiles", "500"])
            .unwrap();
        assert!(b.only_sync);
        assert_eq!(b.sync_profiles, 500);
        let b = Bench::try_parse_from([
            "entitled-bench",
            "--only-push-flood",
            "--profiles",
            "20000",
            "--seconds",
            "12",
        ])
        .unwrap();
        assert!(b.only_push_flood);
        assert_eq!(b.profiles, Some(20_000));
        assert_eq!(b.seconds, Some(12));
        let b = Bench::try_parse_from([
            "entitled-bench",
            "--only-postgres",
            "--profiles",
            "20000",
            "--seconds",
            "4",
            "--quick",
            "--out",
            "pg.md",
        ])
        .unwrap();
        assert!(b.only_postgres && b.quick);
        assert_eq!(b.profiles, Some(20_000));
        assert_eq!(b.out, Some(PathBuf::from("pg.md")));
        let b = Bench::try_parse_from(["entitled-bench", "--rerender", "BENCHMARKS.md"]).unwrap();
        assert_eq!(b.rerender, Some(PathBuf::from("BENCHMARKS.md")));
    }

    #[test]
    fn bench_refuses_what_makes_no_sense() {
        for args in [
            &["--only-ingest", "--only-lookups"][..],
            &["--only-mixed", "--only-ingest"],
            &["--fsync-delay-us", "1000"],
            &["--ingest-on-preloaded"],
            &["--ingest-on-preloaded", "--only-lookups"],
            &["--ingest-on-preloaded", "--only-mixed"],
            &["--ingest-on-preloaded", "--rerender", "B.md"],
            &["--figures-to", "f.json"],
            &["--only-sync", "--only-ingest"],
            &["--only-sync", "--only-lookups"],
            &["--only-sync", "--only-mixed"],
            &["--only-sync", "--rerender", "B.md"],
            &["--sync-profiles", "100"],
            &["--only-push-flood", "--only-ingest"],
            &["--only-push-flood", "--only-lookups"],
            &["--only-push-flood", "--only-mixed"],
            &["--only-push-flood", "--only-sync"],
            &["--only-push-flood", "--rerender", "B.md"],
            &["--only-push-flood", "--sync-profiles", "100"],
            &["--only-postgres", "--only-ingest"],
            &["--only-postgres", "--only-lookups"],
            &["--only-postgres", "--only-mixed"],
            &["--only-postgres", "--only-sync"],
            &["--only-postgres", "--only-push-flood"],
            &["--only-postgres", "--rerender", "B.md"],
            &["--only-postgres", "--sync-profiles", "100"],
            &["--only-sync", "--sync-profiles", "0"],
            &["--rerender", "B.md", "--quick"],
            &["--profiles", "0"],
            &["--connections", "-1"],
            &["--mixed-ingest-rate", "0"],
        ] {
            let line = std::iter::once("entitled-bench").chain(args.iter().copied());
            assert!(
                Bench::try_parse_from(line).is_err(),
                "{args:?} was accepted"
            );
        }
    }

    #[test]
    fn soak_defaults() {
        let s = Soak::try_parse_from(["soak"]).unwrap();
        assert_eq!(s.minutes, 10.0);
        assert_eq!(s.report_every, 30);
        assert_eq!(s.ingest_rate, 200.0);
        assert_eq!(s.lookup_rate, 1000.0);
        assert_eq!(s.duplicates, 5);
        assert_eq!(s.connections, 16);
        assert_eq!(s.bin, None);
        assert!(!s.keep);
    }

    #[test]
    fn soak_every_flag_by_name() {
        let s = Soak::try_parse_from([
            "soak",
            "--minutes",
            "0.1",
            "--report-every",
            "5",
            "--ingest-rate",
            "50",
            "--lookup-rate",
            "100",
            "--duplicates",
            "0",
            "--connections",
            "4",
            "--bin",
            "target/release/entitled",
            "--keep",
        ])
        .unwrap();
        assert_eq!(s.minutes, 0.1);
        assert_eq!(s.report_every, 5);
        assert_eq!(s.ingest_rate, 50.0);
        assert_eq!(s.lookup_rate, 100.0);
        assert_eq!(s.duplicates, 0);
        assert_eq!(s.connections, 4);
        assert_eq!(s.bin, Some(PathBuf::from("target/release/entitled")));
        assert!(s.keep);
        for args in [
            &["--minutes", "inf"][..],
            &["--minutes", "0"],
            &["--duplicates", "101"],
            &["--report-every", "0"],
        ] {
            let line = std::iter::once("soak").chain(args.iter().copied());
            assert!(Soak::try_parse_from(line).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn positive_numbers() {
        assert_eq!(positive::<u64>("1_000_000"), Ok(1_000_000));
        assert!(positive::<u64>("0").is_err());
        assert!(positive::<f64>("-0.5").is_err());
        assert!(positive::<f64>("NaN").is_err());
        assert_eq!(finite_positive("0.1"), Ok(0.1));
        assert!(finite_positive("inf").is_err());
    }

    #[test]
    fn the_table_has_each_visible_flag_once() {
        let table = markdown_table(&Bench::command());
        for row in [
            "| `--quick` | off | Development run:",
            "| `--profiles N` | 1,000,000; --quick, --only-push-flood and --only-postgres: 100,000 | Profiles in",
            "| `--seconds S` | 10; --quick: 5 | Measured seconds",
            "| `--connections N` | 64 | Client connections",
            "| `--mixed-ingest-rate R` | 1000 | Events per second",
            "| `--no-pin` | off |",
            "| `--ingest-on-preloaded` | off | With --only-ingest: the ingest phase",
            "| `--fsync-delay-us N` | none; the full run does one pass at 1000 |",
            "| `--out FILE` | BENCHMARKS.md for the full run",
            "| `--rerender FILE` | none |",
            "| `--only-sync` | off | Run only `entitled sync`",
            "| `--sync-profiles N` | 10000 | With --only-sync:",
            "| `--only-push-flood` | off | Run only the push flood:",
            "| `--only-postgres` | off | Run only the PostgreSQL mode,",
        ] {
            assert_eq!(table.matches(row).count(), 1, "{row:?} in\n{table}");
        }
        assert!(!table.contains("--figures-to"), "{table}");
        assert!(!table.contains("--help"), "{table}");
        assert_eq!(table.lines().count(), 2 + 17, "{table}");
    }
}
