//! `entitled sync`: day one (the subscribers an app had before entitled), and any
//! time webhooks were lost. Fetches each listed profile or user from Adapty's API and
//! folds it in.
//!
//! Two ways, picked by who holds the file:
//! - **A stopped file** (or a new one): sync opens it, warms an index, runs the one
//!   writer itself, and fetches with its own key.
//! - **Beside a running daemon** (the file's writer lock is held): sync asks the
//!   daemon to refresh each id (`POST /profiles/{id}/refresh`, `/users/{id}/refresh`),
//!   so the daemon fetches with its key, folds through its writer, and its index stays
//!   right. `--concurrency` and `--rate` pace these requests too.
//!
//! Either way an answer Adapty repeats is a duplicate event (its id is the profile and
//! Adapty's timestamp), so re-running is harmless; Ctrl-C stops asking, waits for what
//! is in flight, and commits everything fetched.

use super::{AdaptyApi, ApiError, Id, RefreshError, Refreshed, Refresher};
use crate::adapty::Decoder;
use crate::config::SyncArgs;
use crate::index::Index;
use crate::status::Status;
use crate::store::writer::{self, Writer};
use crate::store::{self, StoreError};
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;
use std::collections::BTreeSet;
use std::fmt;
use std::io::{BufRead, IsTerminal};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncSummary {
    pub asked: u64,
    /// Adapty answered, and the answer is folded in.
    pub fetched: u64,
    /// Of those, the ones whose access answer changed.
    pub changed: u64,
    /// Adapty knows no such profile or user (404).
    pub unknown: u64,
    /// Not fetched after retries, or not stored: listed on stderr; run sync again.
    pub failed: Vec<String>,
    /// Ctrl-C came before every id was asked.
    pub interrupted: bool,
}

impl fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "synced: {} asked, fetched {}, changed {}, unknown {}, failed {}",
            self.asked,
            self.fetched,
            self.changed,
            self.unknown,
            self.failed.len()
        )?;
        if self.interrupted {
            write!(f, " (interrupted: run it again for the rest)")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Adapty refused the key: nothing more is asked.
    #[error("Adapty refused the secret key (401): check --adapty-secret-key (ENTITLED_ADAPTY_SECRET_KEY)")]
    Unauthorized,
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How one id went.
enum Outcome {
    Fetched {
        changed: bool,
    },
    Unknown,
    Failed(String),
    /// Stop everything: the key is refused, or the daemon cannot fetch at all.
    Fatal(SyncError),
}

/// Where ids are sent.
#[derive(Clone)]
enum Via {
    Itself(Arc<Refresher>),
    Daemon {
        http: reqwest::Client,
        url: reqwest::Url,
        token: Option<Arc<str>>,
        api: Arc<AdaptyApi>,
    },
}

pub fn sync(args: SyncArgs) -> Result<SyncSummary, SyncError> {
    let ids = read_ids(&args)?;
    if ids.is_empty() {
        return Err(SyncError::Usage(
            "nothing to sync: give --profile-ids and/or --customer-user-ids".into(),
        ));
    }
    let key = args.adapty.adapty_secret_key.clone().ok_or_else(|| {
        SyncError::Usage(
            "sync needs Adapty's secret key: --adapty-secret-key (ENTITLED_ADAPTY_SECRET_KEY)"
                .into(),
        )
    })?;
    let api =
        AdaptyApi::new(&args.adapty.adapty_api_url, key, args.rate).map_err(SyncError::Usage)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // On PostgreSQL this command is one more writer beside the running instances (their
    // followers pick its writes up): no daemon to go through.
    if let Some(url) = store::postgres_url(&args.store.db) {
        let pool = store::postgres::open(url, 3)?;
        let index = Arc::new(Index::new());
        let (handle, queue) = writer::queue();
        let status = Arc::new(Status::new());
        let follower = store::postgres::follow::warm(&pool, url, index.clone(), status.clone())?;
        let thread = store::postgres::start(
            follower,
            &pool,
            status,
            Arc::new(args.projection.rules()),
            Arc::new(Decoder::new(args.projection.event_names.clone())),
            None,
            queue,
        )?;
        let refresher = Arc::new(Refresher::new(api, handle.clone(), index));
        let summary = runtime.block_on(run(ids, Via::Itself(refresher), &args));
        handle.stop_blocking();
        drop(handle);
        let _ = thread.join();
        return summary;
    }
    match store::open(&args.store.db, args.store.synchronous.into()) {
        Ok((conn, _lock)) => {
            let index = Arc::new(Index::new());
            let status = Arc::new(Status::new());
            store::warm_index(&conn, &index, &status)?;
            let decoder = Decoder::new(args.projection.event_names.clone());
            let (handle, queue) = writer::queue();
            let thread = Writer {
                conn,
                index: index.clone(),
                status,
                rules: Arc::new(args.projection.rules()),
                decode: Arc::new(decoder),
                lapses: None,
            }
            .start(queue)?;
            let refresher = Arc::new(Refresher::new(api, handle.clone(), index));
            let summary = runtime.block_on(run(ids, Via::Itself(refresher), &args));
            handle.stop_blocking();
            drop(handle);
            let _ = thread.join();
            summary
        }
        Err(StoreError::InUse { .. }) => {
            let url = reqwest::Url::parse(&args.daemon.daemon_url).map_err(|e| {
                SyncError::Usage(format!("--daemon-url {}: {e}", args.daemon.daemon_url))
            })?;
            eprintln!("a daemon holds the file: syncing through it at {url}");
            let http = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(120))
                .build()
                .map_err(|e| SyncError::Usage(e.to_string()))?;
            let token = args
                .daemon
                .read_token
                .as_ref()
                .map(|t| Arc::from(t.expose_secret()));
            let via = Via::Daemon {
                http,
                url,
                token,
                api,
            };
            runtime.block_on(run(ids, via, &args))
        }
        Err(error) => Err(error.into()),
    }
}

/// The ids of `--profile-ids` then `--customer-user-ids`, each once, blank lines
/// skipped.
fn read_ids(args: &SyncArgs) -> Result<Vec<Id>, SyncError> {
    let mut ids = Vec::new();
    let mut seen = BTreeSet::new();
    let sources = [
        (args.profile_ids.as_ref(), false),
        (args.customer_user_ids.as_ref(), true),
    ];
    if sources
        .iter()
        .filter(|(p, _)| p.is_some_and(|p| p.as_os_str() == "-"))
        .count()
        > 1
    {
        return Err(SyncError::Usage(
            "only one list can be read from `-`".into(),
        ));
    }
    for (path, users) in sources {
        let Some(path) = path else { continue };
        let input: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(std::fs::File::open(path).map_err(
                |e| SyncError::Usage(format!("cannot read {}: {e}", path.display())),
            )?))
        };
        for line in input.lines() {
            let line = line?;
            let id = line.trim();
            if id.is_empty() {
                continue;
            }
            let id = if users {
                Id::User(id.to_owned())
            } else {
                Id::Profile(id.to_owned())
            };
            if seen.insert(id.clone()) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

async fn run(ids: Vec<Id>, via: Via, args: &SyncArgs) -> Result<SyncSummary, SyncError> {
    let progress = if args.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ids.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut tasks: JoinSet<(Id, Outcome)> = JoinSet::new();
    let mut summary = SyncSummary::default();
    let mut fatal = None;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut ids = ids.into_iter();
    'asking: loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut interrupt => {
                summary.interrupted = true;
                break 'asking;
            }
        };
        // Tally what finished, and stop at a fatal answer.
        while let Some(done) = tasks.try_join_next() {
            if let Some(error) = tally(&mut summary, done, &progress) {
                fatal = Some(error);
                break 'asking;
            }
        }
        let Some(id) = ids.next() else { break };
        summary.asked += 1;
        let via = via.clone();
        tasks.spawn(async move {
            let outcome = ask(&via, &id).await;
            drop(slot);
            (id, outcome)
        });
    }
    if summary.interrupted {
        progress.suspend(|| {
            eprintln!(
                "interrupted: finishing the {} requests in flight",
                tasks.len()
            )
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Some(error) = tally(&mut summary, done, &progress) {
            fatal.get_or_insert(error);
        }
    }
    progress.finish_and_clear();
    for id in &summary.failed {
        eprintln!("failed: {id}");
    }
    match fatal {
        Some(error) => Err(error),
        None => Ok(summary),
    }
}

fn tally(
    summary: &mut SyncSummary,
    done: Result<(Id, Outcome), tokio::task::JoinError>,
    progress: &ProgressBar,
) -> Option<SyncError> {
    progress.inc(1);
    let (id, outcome) = match done {
        Ok(done) => done,
        Err(error) => {
            summary.failed.push(format!("(a task failed: {error})"));
            return None;
        }
    };
    match outcome {
        Outcome::Fetched { changed } => {
            summary.fetched += 1;
            summary.changed += u64::from(changed);
        }
        Outcome::Unknown => summary.unknown += 1,
        Outcome::Failed(why) => summary.failed.push(format!("{} ({why})", describe(&id))),
        Outcome::Fatal(error) => return Some(error),
    }
    None
}

fn describe(id: &Id) -> String {
    match id {
        Id::Profile(id) => format!("profile {id}"),
        Id::User(id) => format!("user {id}"),
    }
}

async fn ask(via: &Via, id: &Id) -> Outcome {
    match via {
        Via::Itself(refresher) => match refresher.refresh(id.who(), "sync").await {
            Ok(Refreshed::Folded { changed, .. }) => Outcome::Fetched { changed },
            Ok(Refreshed::Unknown) => Outcome::Unknown,
            Err(RefreshError::Api(ApiError::Unauthorized)) => {
                Outcome::Fatal(SyncError::Unauthorized)
            }
            Err(error) => Outcome::Failed(error.to_string()),
        },
        Via::Daemon {
            http,
            url,
            token,
            api,
        } => {
            // The daemon fetches; the pace is still this command's.
            api.pace().await;
            through_daemon(http, url, token.as_deref(), id).await
        }
    }
}

async fn through_daemon(
    http: &reqwest::Client,
    base: &reqwest::Url,
    token: Option<&str>,
    id: &Id,
) -> Outcome {
    let mut url = base.clone();
    let (kind, value) = match id {
        Id::Profile(id) => ("profiles", id),
        Id::User(id) => ("users", id),
    };
    match url.path_segments_mut() {
        Ok(mut segments) => {
            segments
                .pop_if_empty()
                .extend([kind, value.as_str(), "refresh"]);
        }
        Err(()) => {
            return Outcome::Fatal(SyncError::Usage(format!(
                "--daemon-url {base} is not a base URL"
            )))
        }
    }
    let mut request = http.post(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Outcome::Failed(error.without_url().to_string()),
    };
    let status = response.status().as_u16();
    let changed = response
        .headers()
        .get("entitled-refresh")
        .is_some_and(|v| v.as_bytes() == b"changed");
    let code = match status {
        200 => return Outcome::Fetched { changed },
        _ => response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|body| body.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_default(),
    };
    match (status, code.as_str()) {
        (404, "unknown_to_adapty") => Outcome::Unknown,
        (502, "adapty_unauthorized") => Outcome::Fatal(SyncError::Unauthorized),
        (501, _) => Outcome::Fatal(SyncError::Usage(
            "the daemon has no --adapty-secret-key: it cannot fetch from Adapty".into(),
        )),
        (401, _) => Outcome::Fatal(SyncError::Usage(
            "the daemon refused the read token: give --read-token (ENTITLED_READ_TOKEN)".into(),
        )),
        (404, _) => Outcome::Fatal(SyncError::Usage(
            "the daemon has no refresh route: is it this version of entitled?".into(),
        )),
        _ => Outcome::Failed(format!("the daemon answered {status} {code}")),
    }
}
