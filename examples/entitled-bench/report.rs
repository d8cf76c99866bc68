//! The table on stdout and BENCHMARKS.md: generated output only, the figures of one
//! run and how to run it. What they mean is docs/performance.md, kept by hand.
//!
//! The figures are saved at the end of the file, so that a new layout can be written
//! from them without a new run (`--rerender`).

use crate::load::{stalls, Stats};
use crate::MixedPair;
use clap::CommandFactory;
use entitled_loadgen::flags::{self, Bench};
use entitled_loadgen::procs::Result;
use std::fmt::Write as _;
use std::time::Duration;

/// One line of the table: a measurement, its same-run baseline, the ratio, the target.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub name: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub pass: Option<bool>,
}

/// Everything BENCHMARKS.md says about a run, as text already formatted: what is
/// saved in the file and read back by `--rerender`.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// When the run ended, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// `git rev-parse --short=12 HEAD` when the run started, and whether the tree had
    /// uncommitted changes; `None` for runs from before it was recorded.
    pub commit: Option<String>,
    pub command: String,
    pub load_before: String,
    pub load_after: String,
    pub dataset: String,
    pub pinning: String,
    pub daemon_threads: usize,
    pub connections: usize,
    pub seconds: u64,
    pub machine: String,
    pub checks: Vec<Check>,
    pub details: Vec<String>,
    /// The PostgreSQL mode's section (`--only-postgres`): a run of its own, which writes
    /// only this and keeps the rest; a full run keeps the section of the file it
    /// replaces. `None` in files from before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSection>,
    /// What the checks are computed from, not shown as such.
    #[serde(skip)]
    pub lookup_body: usize,
    #[serde(skip)]
    pub startup_empty: Option<Duration>,
    #[serde(skip)]
    pub rss_after_lookups: u64,
}

/// The comment at the end of the file that holds the saved figures opens and closes so.
const FIGURES_START: &str = "<!-- The figures of this run, which `--rerender` reads:\n";
const FIGURES_END: &str = "\n-->\n";

/// The PostgreSQL section of BENCHMARKS.md: one `--only-postgres` run, with its own
/// date, commit and machine, since it is not measured with the rest.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct PostgresSection {
    pub date: String,
    pub commit: Option<String>,
    pub command: String,
    pub machine: String,
    pub load_before: String,
    pub load_after: String,
    /// The server: version, where it ran, its settings.
    pub server: String,
    /// How the processes were placed on cores, phase by phase.
    pub pinning: String,
    pub load: String,
    pub checks: Vec<Check>,
    pub details: Vec<String>,
}

/// The figures of an `--only-ingest` run, as a re-run of this example on the slower
/// disk hands them back (`--figures-to`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct IngestFigures {
    pub events_per_s: f64,
    pub p99_ms: f64,
    pub ceiling: f64,
    pub per_event: f64,
    pub sync_ms: f64,
}

pub fn ms(d: f64) -> String {
    if d < 10.0 {
        format!("{d:.3} ms")
    } else {
        format!("{d:.1} ms")
    }
}

/// The ratios of alternating pairs, as the report lists them: "0.76, 0.87, 0.91".
pub fn ratio_list(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn latencies(s: &Stats) -> String {
    format!(
        "p50 {} / p99 {} / p99.9 {}",
        ms(s.ms(0.5)),
        ms(s.ms(0.99)),
        ms(s.ms(0.999))
    )
}

/// One row of the table of every phase.
pub fn detail(name: &str, s: &Stats) -> String {
    let stolen = if s.stolen.is_empty() {
        "–".to_owned()
    } else {
        s.stolen
            .iter()
            .map(|d| format!("{}", d.as_millis()))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let pacer = s.pacer_late.as_ref().map_or_else(|| "–".to_owned(), stalls);
    format!(
        "| {name} | {:.0} | {} | {} | {} | {} | {:.1} ms | {} / {} | {:.2} | {:.2} | {stolen} | {} | {pacer} |",
        s.rate(),
        ms(s.ms(0.5)),
        ms(s.ms(0.99)),
        ms(s.ms(0.999)),
        ms(s.ms(0.9999)),
        s.hist.max() as f64 / 1e6,
        s.non_2xx,
        s.errors,
        s.server_cpu,
        s.client_cpu,
        s.others()
    )
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn ingest(
        &mut self,
        s: &Stats,
        startup_empty: Duration,
        ceiling: f64,
        ceiling_rows: usize,
        per_event: f64,
        per_event_rows: usize,
        sync: Duration,
    ) {
        let rate = s.rate();
        self.checks.push(Check {
            name: "Ingest throughput vs storage ceiling".into(),
            value: format!(
                "{rate:.0} events/s ({} stored, {} duplicate)",
                s.stored, s.duplicate
            ),
            baseline: format!("{ceiling:.0} rows/s (rusqlite, 1000/tx, {ceiling_rows} rows)"),
            ratio: format!("{:.2}", rate / ceiling),
            target: "≥ 0.50".into(),
            pass: Some(rate / ceiling >= 0.5),
        });
        self.checks.push(Check {
            name: "Ingest throughput vs commit per event".into(),
            value: format!("{rate:.0} events/s"),
            baseline: format!(
                "{per_event:.0} rows/s (rusqlite, 1 commit each, {per_event_rows} rows; \
                 this disk's 4 KiB write + fdatasync: {})",
                ms(sync.as_secs_f64() * 1e3)
            ),
            ratio: format!("{:.1}×", rate / per_event),
            target: "≥ 5×".into(),
            pass: Some(rate / per_event >= 5.0),
        });
        self.checks.push(Check {
            name: "Ingest latency at 64 connections".into(),
            value: latencies(s),
            baseline: "–".into(),
            ratio: "–".into(),
            target: "p99 < 100 ms".into(),
            pass: Some(s.ms(0.99) < 100.0),
        });
        self.details.push(detail("ingest (closed loop)", s));
        self.startup_empty = Some(startup_empty);
    }

    pub fn startup(&mut self, startups: &[Duration], rss: &[u64], empty_rss: u64, profiles: u64) {
        let mut sorted: Vec<Duration> = startups.to_vec();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        let empty = self.startup_empty.unwrap_or_default();
        self.checks.push(Check {
            name: "Start-up to /readyz 200".into(),
            value: format!(
                "{:.2} s with {profiles} profiles (median of {}: {})",
                median.as_secs_f64(),
                startups.len(),
                startups
                    .iter()
                    .map(|d| format!("{:.2}", d.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            baseline: format!("{:.3} s (empty database)", empty.as_secs_f64()),
            ratio: format!(
                "{:.0}×",
                median.as_secs_f64() / empty.as_secs_f64().max(1e-6)
            ),
            target: "< 5 s".into(),
            pass: Some(median < Duration::from_secs(5)),
        });
        let mut sorted_rss = rss.to_vec();
        sorted_rss.sort();
        let rss_median = sorted_rss[sorted_rss.len() / 2];
        let per_profile = rss_median.saturating_sub(empty_rss) as f64 / profiles as f64;
        self.checks.push(Check {
            name: "Resident memory per profile".into(),
            value: format!(
                "{per_profile:.0} B/profile (VmRSS {:.1} MB)",
                rss_median as f64 / 1e6
            ),
            baseline: format!("{:.1} MB (VmRSS, empty database)", empty_rss as f64 / 1e6),
            ratio: format!("{:.1}×", rss_median as f64 / empty_rss as f64),
            target: "< 300 B/profile".into(),
            pass: Some(per_profile < 300.0),
        });
    }

    pub fn lookup(
        &mut self,
        ceiling: &Stats,
        ceiling_paced: &Stats,
        lookup: &Stats,
        lookup_paced: &Stats,
        pair_ratios: &[f64],
        rss_after: u64,
    ) {
        let pairs = ratio_list(pair_ratios);
        self.checks.push(Check {
            name: "Lookup throughput vs HTTP ceiling".into(),
            value: format!(
                "{:.0} req/s ({}); the median of {} alternating pairs, ratios {pairs}",
                lookup.rate(),
                latencies(lookup),
                pair_ratios.len()
            ),
            baseline: format!(
                "{:.0} req/s (constant {}-byte body; {})",
                ceiling.rate(),
                self.lookup_body,
                latencies(ceiling)
            ),
            ratio: format!("{:.2}", lookup.rate() / ceiling.rate()),
            target: "≥ 0.80".into(),
            pass: Some(lookup.rate() / ceiling.rate() >= 0.8),
        });
        self.checks.push(Check {
            name: "Lookup p99 at 50 % of the ceiling rate".into(),
            value: format!(
                "{} at {:.0} req/s ({})",
                ms(lookup_paced.ms(0.99)),
                lookup_paced.rate(),
                latencies(lookup_paced)
            ),
            baseline: format!(
                "{} (HTTP ceiling at the same rate)",
                ms(ceiling_paced.ms(0.99))
            ),
            ratio: format!("{:.2}", lookup_paced.ms(0.99) / ceiling_paced.ms(0.99)),
            target: "p99 < 1 ms".into(),
            pass: Some(lookup_paced.ms(0.99) < 1.0),
        });
        self.details.push(detail(
            "HTTP ceiling (closed loop, the median pair)",
            ceiling,
        ));
        self.details
            .push(detail("HTTP ceiling (paced, 50 %)", ceiling_paced));
        self.details
            .push(detail("lookup (closed loop, the median pair)", lookup));
        self.details
            .push(detail("lookup (paced, 50 % of ceiling)", lookup_paced));
        self.rss_after_lookups = rss_after;
    }

    pub fn mixed(
        &mut self,
        paced: &MixedPair,
        paced_ratios: &[f64],
        closed: &MixedPair,
        closed_ratios: &[f64],
        rate: f64,
    ) {
        for (name, pair, ratios, baseline) in [
            (
                "Lookup p99 while ingesting (lookups paced at a sustainable rate)",
                paced,
                paced_ratios,
                format!("lookups alone at {:.0} req/s", paced.alone.rate()),
            ),
            (
                "Lookup p99 while ingesting (closed loop)",
                closed,
                closed_ratios,
                "lookups alone, closed loop".to_string(),
            ),
        ] {
            let list = ratio_list(ratios);
            self.checks.push(Check {
                name: name.into(),
                value: format!(
                    "{} at {:.0} req/s, ingest {:.0}/s (p99 {}); the median of {} alternating \
                     pairs, ratios {list}",
                    ms(pair.beside.ms(0.99)),
                    pair.beside.rate(),
                    pair.ingest.rate(),
                    ms(pair.ingest.ms(0.99)),
                    ratios.len()
                ),
                baseline: format!("{} ({baseline})", ms(pair.alone.ms(0.99))),
                ratio: format!("{:.2}×", pair.ratio()),
                target: "≤ 2×".into(),
                pass: Some(pair.ratio() <= 2.0),
            });
        }
        for (mode, pair) in [
            (format!("paced {:.0}/s", paced.alone.rate()), paced),
            ("closed loop".to_string(), closed),
        ] {
            self.details.push(detail(
                &format!("mixed, the median pair: lookups {mode} alone"),
                &pair.alone,
            ));
            self.details.push(detail(
                &format!("mixed, the median pair: lookups {mode} + ingest {rate:.0}/s"),
                &pair.beside,
            ));
            self.details.push(detail(
                "mixed, the median pair: the ingest beside them",
                &pair.ingest,
            ));
        }
    }

    /// The ingest phase and its baselines again on a slower disk (`--fsync-delay-us`):
    /// what the commit-per-event target needs of the disk. No verdict: not this disk.
    pub fn slower_disk(&mut self, delay_us: u64, f: &IngestFigures) {
        self.checks.push(Check {
            name: "Ingest throughput vs commit per event, on an emulated slower disk".into(),
            value: format!(
                "{:.0} events/s (p99 {}); storage ceiling {:.0} rows/s ({:.2})",
                f.events_per_s,
                ms(f.p99_ms),
                f.ceiling,
                f.events_per_s / f.ceiling
            ),
            baseline: format!(
                "{:.0} rows/s (1 commit each; every fsync {delay_us} µs longer: a 4 KiB \
                 write + fdatasync {})",
                f.per_event,
                ms(f.sync_ms)
            ),
            ratio: format!("{:.1}×", f.events_per_s / f.per_event),
            target: "≥ 5× (on that disk)".into(),
            pass: None,
        });
    }

    pub fn table(&self) -> String {
        checks_table(&self.checks)
    }

    pub fn details_table(&self) -> String {
        details_table(&self.details)
    }

    /// BENCHMARKS.md: the run, its table of targets with verdicts, every phase, how to
    /// run it (the flags from the same definitions as `--help`), and the figures saved
    /// for `--rerender`. Nothing kept by hand: that is docs/performance.md.
    pub fn markdown(&self) -> Result<String> {
        let commit = self
            .commit
            .as_deref()
            .unwrap_or("not recorded (the run predates this field)");
        // serde_json leaves `>` alone, and "-->" can only occur inside a string, where
        // `\u003e` reads back as the same `>`.
        let figures = serde_json::to_string_pretty(self)?.replace("-->", "--\\u003e");
        let this_run = if self.checks.is_empty() {
            "## This run\n\nNo full run is recorded in this file.\n\n".to_owned()
        } else {
            self.this_run(commit)
        };
        let postgres = self
            .postgres
            .as_ref()
            .map(|p| p.markdown() + "\n")
            .unwrap_or_default();
        Ok(format!(
            "# Benchmarks\n\n\
             <!-- Written by `cargo run --release --example entitled-bench` \
             (examples/entitled-bench/report.rs); not edited by hand. -->\n\n\
             The figures of one run of `cargo run --release --example entitled-bench`: the \
             daemon over real HTTP on a real SQLite file, every figure against a baseline \
             measured in the same run, because absolute times drift on shared machines; and \
             of one run of its PostgreSQL mode (`-- --only-postgres`), in a section of its \
             own. What each figure means, how it is measured and what was tried: \
             [docs/performance.md](docs/performance.md).\n\n\
             {this_run}\
             {postgres}\
             ## How to run it\n\n\
             ```sh\n\
             cargo run --release --example entitled-bench                # full run, writes BENCHMARKS.md\n\
             cargo run --release --example entitled-bench -- --quick     # 100k profiles, 5 s phases, writes nothing\n\
             cargo run --release --example entitled-bench -- --only-postgres  # the PostgreSQL section only (~5 min)\n\
             cargo run --release --example entitled-bench -- --help      # the flags (the table below)\n\
             cargo run --example entitled-bench -- --rerender BENCHMARKS.md  # this file in a new layout, from its saved figures\n\
             cargo bench --bench projection                              # parser / projection micro-benchmarks\n\
             cargo run --release --example soak -- --minutes 10          # steady mixed load: drift, and no acknowledged event lost\n\
             ```\n\n\
             The first full run builds the 1M-profile database in `target/bench-data/` (~18 GB) \
             and reuses it after. No timing runs under `cargo test`.\n\n\
             {flags}\n\
             {FIGURES_START}{figures}{FIGURES_END}",
            flags = flags::markdown_table(&Bench::command()),
        ))
    }

    /// The "This run" part: the full run's conditions, its checks and every phase.
    fn this_run(&self, commit: &str) -> String {
        format!(
            "## This run\n\n\
             - date: {date}\n\
             - commit: {commit}\n\
             - command: `{cmd}`\n\
             - machine: {machine}\n\
             - load average (1/5/15 min) before: {before}; after: {after}\n\
             - pinning: {pinning}; the daemon had {threads} threads, actix workers = \
             `available_parallelism()` under its affinity (1 when pinned to one core), \
             and the HTTP-ceiling server the same\n\
             - database for start-up and lookups: {dataset}\n\
             - load: {conns} keep-alive HTTP/1.1 connections (hyper), {secs} s measured \
             per phase (ingest {ingest_secs} s) after a warm-up; latency from the scheduled send \
             time in paced phases\n\n\
             {table}\n\
             ### Every phase\n\n\
             {details}\n",
            date = self.date,
            cmd = self.command,
            machine = self.machine,
            before = self.load_before,
            after = self.load_after,
            pinning = self.pinning,
            threads = self.daemon_threads,
            dataset = self.dataset,
            conns = self.connections,
            secs = self.seconds,
            ingest_secs = self.seconds as f64 * 1.5,
            table = self.table(),
            details = self.details_table(),
        )
    }

    /// The figures saved at the end of a BENCHMARKS.md that [`Report::markdown`] wrote.
    pub fn saved_in(markdown: &str) -> Result<Report> {
        let start = markdown
            .rfind(FIGURES_START)
            .ok_or("no saved figures (a report from before --rerender, or not this tool's)")?
            + FIGURES_START.len();
        let len = markdown[start..]
            .find(FIGURES_END)
            .ok_or("the saved figures are cut short")?;
        Ok(serde_json::from_str(&markdown[start..start + len])?)
    }
}

/// The table of checks: a measurement, its same-run baseline, the ratio, the target.
pub fn checks_table(checks: &[Check]) -> String {
    let mut t = String::new();
    t.push_str("| measurement | result | baseline (same run) | ratio | target | |\n");
    t.push_str("|---|---|---|---|---|---|\n");
    for c in checks {
        let verdict = match c.pass {
            Some(true) => "PASS",
            Some(false) => "**FAIL**",
            None => "",
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {verdict} |",
            c.name, c.value, c.baseline, c.ratio, c.target
        );
    }
    t
}

/// The table of every phase, from the rows [`detail`] wrote.
pub fn details_table(details: &[String]) -> String {
    let mut t = String::from(
        "| phase | req/s | p50 | p99 | p99.9 | p99.99 | max | non-2xx / errors | server CPU (cores) | client CPU (cores) | stolen by the host (ms, core 0 / 1) | other processes' CPU (cores; the biggest) | pacer late (paced phases) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for d in details {
        t.push_str(d);
        t.push('\n');
    }
    t
}

impl PostgresSection {
    /// The section, from its `##` heading to the end of its table of phases.
    pub fn markdown(&self) -> String {
        format!(
            "## PostgreSQL (`--only-postgres`)\n\n\
             The figures of one run of `{cmd}`, measured apart from the rest of this file: \
             `entitled serve --db postgres://…` over real HTTP on a real PostgreSQL server \
             that the benchmark starts itself, every figure against a baseline measured in \
             the same run on the same server. What each figure means: \
             [docs/performance.md](docs/performance.md#postgresql-several-instances-on-one-database).\n\n\
             - date: {date}\n\
             - commit: {commit}\n\
             - command: `{cmd}`\n\
             - machine: {machine}\n\
             - load average (1/5/15 min) before: {before}; after: {after}\n\
             - server: {server}\n\
             - pinning: {pinning}\n\
             - load: {load}\n\n\
             {table}\n\
             ### Every phase (PostgreSQL)\n\n\
             {details}",
            cmd = self.command,
            date = self.date,
            commit = self.commit.as_deref().unwrap_or("not recorded"),
            machine = self.machine,
            before = self.load_before,
            after = self.load_after,
            server = self.server,
            pinning = self.pinning,
            load = self.load,
            table = checks_table(&self.checks),
            details = details_table(&self.details),
        )
    }
}

/// The commit the run measures: `git rev-parse --short=12 HEAD`, and whether tracked
/// files differ from it. `None` outside a git work tree.
pub fn commit(repo: &std::path::Path) -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    Some(
        match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if changes.is_empty() => head,
            Some(_) => format!("{head}, with uncommitted changes"),
            None => format!("{head} (status unknown)"),
        },
    )
}

/// nproc, CPU model, memory, kernel, rustc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::process::Command::new("nproc")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let online = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or_else(|| "?".into(), |kb| format!("{:.1} GB", kb / 1e6));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc =
        std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .arg("-V")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .unwrap_or_default();
    format!(
        "{online} CPUs ({model}), nproc {}, {mem} RAM, Linux {}, {}",
        nproc.trim(),
        kernel.trim(),
        rustc.trim()
    )
}
