//! The command-line tools beside `serve`, working on the database file: `import`
//! (writes, so it refuses beside a running daemon), `access` and `events` (read-only,
//! safe beside one).

use crate::access::explain::{self, ExplainedEvent};
use crate::access::{self, LevelView};
use crate::adapty::{self, Webhook};
use crate::config::{
    AccessArgs, EventsArgs, ImportArgs, MigrateArgs, NotifyReplayArgs, NotifyStatusArgs,
};
use crate::index::Index;
use crate::status::Status;
use crate::store::reader::open_reader;
use crate::store::writer::{self, Outcome, Reply, Writer};
use crate::store::{self, StoreError};
use crate::timestamp::Timestamp;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::sync::Arc;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub lines: u64,
    pub stored: u64,
    pub ignored: u64,
    pub duplicate: u64,
    pub refused: BTreeMap<&'static str, u64>,
    /// Lines the store could not take (disk full, say): run the import again.
    pub failed: u64,
}

impl ImportSummary {
    /// Lines refused, whatever the reason.
    pub fn refused_count(&self) -> u64 {
        self.refused.values().sum()
    }
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let refused = self.refused_count();
        write!(
            f,
            "{} lines: {} stored ({} touching no access level), {} duplicate, {} refused",
            self.lines,
            self.stored + self.ignored,
            self.ignored,
            self.duplicate,
            refused
        )?;
        if refused > 0 {
            let reasons: Vec<String> = self
                .refused
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            write!(f, " ({})", reasons.join(", "))?;
        }
        if self.failed > 0 {
            write!(
                f,
                ", {} failed to store (run the import again)",
                self.failed
            )?;
        }
        Ok(())
    }
}

/// Events in flight to the writer at once: enough for full group commits.
const IN_FLIGHT: usize = 2048;

/// How many refused lines `import` names on stderr before it only counts them.
const REFUSALS_NAMED: u64 = 100;

pub fn import(args: ImportArgs) -> Result<ImportSummary, CliError> {
    let decoder = adapty::Decoder::new(args.projection.event_names.clone());
    let (handle, queue) = writer::queue();
    let (status, rules) = (Arc::new(Status::new()), Arc::new(args.projection.rules()));
    let decode = Arc::new(decoder.clone());
    // On PostgreSQL, beside running instances: their followers pick the events up.
    let (thread, _lock) = match store::postgres_url(&args.store.db) {
        Some(url) => {
            let thread = store::postgres::writer::Writer {
                pool: store::postgres::open(url, 2)?,
                status,
                rules,
                decode,
                follower: None,
                lapses: None,
            }
            .start(queue)?;
            (thread, None)
        }
        None => {
            let (conn, lock) = store::open(&args.store.db, args.store.synchronous.into())?;
            let thread = Writer {
                conn,
                index: Arc::new(Index::new()),
                status,
                rules,
                decode,
                lapses: None,
            }
            .start(queue)?;
            // Held until the writer's thread is joined, below.
            (thread, Some(lock))
        }
    };

    let (input, size): (Box<dyn Read>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let file = std::fs::File::open(&args.file)?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), size)
    };
    let progress = progress_bar(size, args.quiet);
    let mut summary = ImportSummary::default();
    let mut pending: VecDeque<oneshot::Receiver<Reply>> = VecDeque::new();
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    // Physical line numbers, blank lines counted, as an editor shows them.
    let mut number = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        number += 1;
        progress.inc(read as u64);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let refused = match adapty::parse(body, decoder.names()) {
            Err(error) => Some((error.code(), error.to_string())),
            Ok(Webhook::Verification { .. }) => Some((
                "not_an_event",
                "a verification request, not an event".to_owned(),
            )),
            Ok(Webhook::Event(received)) => {
                match handle.send_blocking(received) {
                    Ok(answer) => pending.push_back(answer),
                    Err(_) => summary.failed += 1,
                }
                None
            }
        };
        if let Some((code, message)) = refused {
            *summary.refused.entry(code).or_default() += 1;
            if summary.refused_count() <= REFUSALS_NAMED {
                progress.suspend(|| eprintln!("line {number}: refused ({code}): {message}"));
            }
        }
        while pending.len() >= IN_FLIGHT {
            if let Some(answer) = pending.pop_front() {
                tally(&mut summary, answer.blocking_recv());
            }
        }
    }
    for answer in pending {
        tally(&mut summary, answer.blocking_recv());
    }
    progress.finish_and_clear();
    if summary.refused_count() > REFUSALS_NAMED {
        eprintln!(
            "… and {} more refused lines (the summary counts them all)",
            summary.refused_count() - REFUSALS_NAMED
        );
    }
    handle.stop_blocking();
    drop(handle);
    let _ = thread.join();
    Ok(summary)
}

/// `entitled migrate`: the SQLite file into PostgreSQL (`store::postgres::copy`).
pub fn migrate(args: MigrateArgs) -> Result<store::postgres::copy::Copied, CliError> {
    use store::postgres::copy;
    let total = copy::events_in(&args.from)?;
    let pool = store::postgres::open(&args.to, 1)?;
    let progress = if args.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} events ({eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let decoder = adapty::Decoder::new(args.projection.event_names.clone());
    let copied = copy::migrate(
        &args.from,
        &pool,
        &args.projection.rules(),
        &decoder,
        &mut |n| progress.inc(n),
    )?;
    progress.finish_and_clear();
    Ok(copied)
}

fn tally(summary: &mut ImportSummary, reply: Result<Reply, oneshot::error::RecvError>) {
    match reply {
        Ok(Ok(Outcome::Stored)) => summary.stored += 1,
        Ok(Ok(Outcome::Ignored)) => summary.ignored += 1,
        Ok(Ok(Outcome::Duplicate)) => summary.duplicate += 1,
        Ok(Err(_)) | Err(_) => summary.failed += 1,
    }
}

fn progress_bar(size: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match size {
        Some(size) => ProgressBar::new(size).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    }
}

/// `entitled access`: the answer the HTTP API would give, from the file.
pub fn access(args: AccessArgs) -> Result<(), CliError> {
    let decoder = adapty::Decoder::new(args.projection.event_names.clone());
    let rules = Arc::new(args.projection.rules());
    let reader = open_reader(&args.db, decoder, rules)?;
    let at = args.at.unwrap_or_else(Timestamp::now);
    let level = args.access_level.as_deref();
    let (profile_ids, user) = match (&args.profile_id, &args.user) {
        (_, Some(user)) => (reader.profiles_of_user(user)?, Some(user.as_str())),
        (Some(profile_id), None) => (vec![profile_id.clone()], None),
        (None, None) => (Vec::new(), None),
    };
    let index = match args.at {
        Some(at) => reader.index_as_of(&profile_ids, at, i64::MAX)?,
        None => reader.index_now(&profile_ids)?,
    };
    let mut out = std::io::stdout().lock();
    match user {
        Some(user) => {
            let ids = profile_ids
                .iter()
                .map(|id| Arc::from(id.as_str()))
                .collect();
            let answer = access::user_answer(&index, user, ids, level, at);
            if args.json {
                write_json(&mut out, &answer)?;
            } else {
                let profiles: Vec<&str> = answer.profile_ids.iter().map(|id| &**id).collect();
                let who = format!(
                    "user {} (profiles: {})",
                    answer.customer_user_id,
                    profiles.join(", ")
                );
                write_access_table(&mut out, &who, answer.premium, at, &answer.access_levels)?;
            }
        }
        None => {
            let id = profile_ids.first().map(String::as_str).unwrap_or_default();
            let answer = access::profile_answer(&index, id, level, at);
            if args.json {
                write_json(&mut out, &answer)?;
            } else {
                let who = format!(
                    "profile {} (customer_user_id {})",
                    answer.profile_id,
                    answer.customer_user_id.as_deref().unwrap_or("-")
                );
                write_access_table(&mut out, &who, answer.premium, at, &answer.access_levels)?;
            }
        }
    }
    Ok(())
}

/// `--json`: the answer as the HTTP API's JSON, pretty, with keys sorted (through
/// `serde_json::Value`, whose maps sort: what these commands have always printed).
fn write_json(out: &mut impl Write, answer: &impl serde::Serialize) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, &serde_json::to_value(answer)?)?;
    writeln!(out)?;
    Ok(())
}

fn write_access_table(
    out: &mut impl Write,
    who: &str,
    premium: bool,
    checked_at: Timestamp,
    levels: &BTreeMap<Arc<str>, LevelView>,
) -> std::io::Result<()> {
    let premium = if premium { "PREMIUM" } else { "not premium" };
    writeln!(out, "{who}: {premium} at {checked_at}")?;
    if levels.is_empty() {
        return writeln!(out, "no access levels");
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let text = |s: &Option<Arc<str>>| s.as_deref().unwrap_or("-").to_owned();
    let mut rows = vec![[
        "access_level",
        "active",
        "expires_at",
        "will_renew",
        "is_lifetime",
        "in_grace_period",
        "is_refund",
        "vendor_product_id",
        "store",
        "environment",
        "shared_from",
    ]
    .map(str::to_owned)];
    for (level, view) in levels {
        rows.push([
            level.to_string(),
            yes_no(view.active),
            view.expires_at.map_or("-".to_owned(), |t| t.to_rfc3339()),
            yes_no(view.will_renew),
            yes_no(view.is_lifetime),
            yes_no(view.in_grace_period),
            yes_no(view.is_refund),
            text(&view.vendor_product_id),
            text(&view.store),
            text(&view.environment),
            text(&view.shared_from),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// `entitled events`: a profile's timeline, with what each event did.
pub fn events(args: EventsArgs) -> Result<(), CliError> {
    let decoder = adapty::Decoder::new(args.projection.event_names.clone());
    let reader = open_reader(&args.db, decoder, Arc::new(args.projection.rules()))?;
    let (logged, component) = reader.shared_events(&args.profile_id, i64::MAX)?;
    let explained = explain::explain_profile(
        &args.profile_id,
        &logged,
        &component.links,
        &args.projection.rules(),
        Timestamp::now(),
    );
    let mut out = std::io::stdout().lock();
    if args.json {
        return write_json(&mut out, &explained);
    }
    // One timeline across levels, by event_datetime, then arrival.
    let mut lines: Vec<(&str, String)> = Vec::new();
    fn line(event: &ExplainedEvent, effect: String) -> (&str, String) {
        let text = format!(
            "{}  {:<34} {:<38} {effect}",
            event.event_datetime, event.event_type, event.profile_event_id,
        );
        (event.event_datetime.as_str(), text)
    }
    for (level, explained_level) in &explained.access_levels {
        for event in &explained_level.events {
            let mut effect = if event.changed.is_empty() {
                format!("{level}: no change")
            } else {
                format!("{level}: {}", event.changed.join("; "))
            };
            if event.profile_id != args.profile_id {
                effect.push_str(&format!(
                    " (shared: an event of profile {})",
                    event.profile_id
                ));
            }
            lines.push(line(event, effect));
        }
    }
    for event in &explained.ignored_events {
        lines.push(line(event, "touches no access level".to_owned()));
    }
    lines.sort_by(|a, b| a.0.cmp(b.0));
    if lines.is_empty() {
        writeln!(out, "no events for profile {}", args.profile_id)?;
    }
    for (_, text) in lines {
        writeln!(out, "{text}")?;
    }
    Ok(())
}

/// `entitled notify status`: where push delivery stands on this file.
pub fn notify_status(args: NotifyStatusArgs) -> Result<(), CliError> {
    let mut store: Box<dyn store::notify::NotifyStore> = match store::postgres_url(&args.db) {
        Some(url) => Box::new(store::postgres::notify::PgNotify::new(url)),
        None => Box::new(store::open_read_only(&args.db)?),
    };
    let newest = store.newest_change()?;
    let mut out = std::io::stdout().lock();
    match store.cursor()? {
        None => writeln!(
            out,
            "push has not run on this database (start the daemon with --notify-url)\nnewest_seq {newest}"
        )?,
        Some(delivered) => writeln!(
            out,
            "delivered_seq {delivered}\nnewest_seq {newest}\npending {}\nfailed {}",
            (newest - delivered).max(0),
            store.failed_count()?
        )?,
    }
    Ok(())
}

/// `entitled notify replay --from-seq N`: on a stopped file, moves the cursor back;
/// beside a running daemon, asks it (`POST /notify/replay`).
pub fn notify_replay(args: NotifyReplayArgs) -> Result<String, CliError> {
    let from_seq = args.from_seq.max(1);
    // On PostgreSQL the cursor is shared: moved here, the delivering instance follows
    // it at its next read.
    if let Some(url) = store::postgres_url(&args.store.db) {
        use store::notify::NotifyStore;
        store::postgres::notify::PgNotify::new(url).replay(from_seq)?;
        return Ok(format!(
            "replay from seq {from_seq}: the instance that delivers sends them from its next read"
        ));
    }
    match store::open(&args.store.db, args.store.synchronous.into()) {
        Ok((mut conn, _lock)) => {
            store::notify::replay(&mut conn, from_seq)?;
            Ok(format!(
                "replay from seq {from_seq}: the daemon sends them at its next start with --notify-url"
            ))
        }
        Err(StoreError::InUse { .. }) => {
            let mut url = reqwest::Url::parse(&args.daemon.daemon_url)
                .map_err(|e| std::io::Error::other(format!("--daemon-url: {e}")))?;
            url.set_path("/notify/replay");
            url.set_query(Some(&format!("from_seq={from_seq}")));
            let token = args
                .daemon
                .read_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut request = reqwest::Client::new().post(url);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await.map_err(|e| {
                    std::io::Error::other(format!("the daemon: {}", e.without_url()))
                })?;
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.is_success() {
                    Ok(format!(
                        "replay from seq {from_seq}: asked the running daemon"
                    ))
                } else {
                    Err(
                        std::io::Error::other(format!("the daemon answered {status}: {body}"))
                            .into(),
                    )
                }
            })
        }
        Err(error) => Err(error.into()),
    }
}
