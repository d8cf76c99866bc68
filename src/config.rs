//! Configuration: one clap struct per subcommand, every flag with an `ENTITLED_*`
//! environment twin. `entitled serve --help` is the reference; README agrees with it.

use crate::adapty::EventNames;
use crate::projection::{self, Rules};
use crate::store;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "entitled",
    version,
    about = "Adapty webhooks in, \"is this user premium right now?\" out."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: receive webhooks, answer access lookups.
    Serve(ServeArgs),
    /// Recompute the entitlements from the event log (after changing --event-names,
    /// --product-levels or --sandbox), in one transaction. Refuses while a daemon runs
    /// on the SQLite file (its in-memory index would not know); on PostgreSQL it runs
    /// beside the instances, which follow what it writes.
    Rebuild(RebuildArgs),
    /// Backfill from JSON Lines of webhook bodies: the same validation, dedup and
    /// folding as the endpoint; re-running it is harmless. Refuses while a daemon runs
    /// on the SQLite file; on PostgreSQL it runs beside the instances.
    Import(ImportArgs),
    /// Move an installation from its SQLite file to PostgreSQL: copies the event log
    /// (and the feed, profiles, entitlements), then rebuilds there. Re-running it copies
    /// only what is new; safe beside the daemon that writes the file.
    Migrate(MigrateArgs),
    /// The access answer from the database file, without a running daemon.
    Access(AccessArgs),
    /// A profile's event timeline, one line per event, with the effect each had.
    Events(EventsArgs),
    /// Push delivery of the change feed (--notify-url): where it stands, and replay.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Fetch profiles from Adapty's server-side API and fold them in (day one, or after
    /// lost webhooks). Beside a running daemon it goes through the daemon's refresh
    /// routes; on a stopped file it writes itself. Re-running it is harmless.
    Sync(SyncArgs),
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// The cursor, the newest change, the parked changes.
    Status(NotifyStatusArgs),
    /// Send every change from `--from-seq` on again (the parked ones too). Beside a
    /// running daemon it goes through `POST /notify/replay`.
    Replay(NotifyReplayArgs),
}

#[derive(Debug, Clone, Args)]
pub struct NotifyStatusArgs {
    /// The SQLite file.
    #[arg(long, env = "ENTITLED_DB", default_value = "entitled.db")]
    pub db: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct NotifyReplayArgs {
    /// The first change (`seq`) to send again.
    #[arg(long)]
    pub from_seq: i64,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// A command that goes through the running daemon when it holds the file.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// The running daemon to go through when it holds the file.
    #[arg(
        long,
        env = "ENTITLED_DAEMON_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub daemon_url: String,

    /// The daemon's --read-token, when it has one.
    #[arg(long, env = "ENTITLED_READ_TOKEN", value_parser = secret, hide_env_values = true)]
    pub read_token: Option<SecretString>,
}

/// Push: every change of the feed POSTed to one URL, signed the Standard Webhooks way.
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// Where to POST each change of the feed (gains, losses, silent expiries). One
    /// endpoint; fan out behind it to reach several.
    #[arg(long, env = "ENTITLED_NOTIFY_URL", requires = "notify_secret")]
    pub notify_url: Option<reqwest::Url>,

    /// The signing secret, `whsec_<base64>` (Standard Webhooks), e.g.
    /// `whsec_$(openssl rand -base64 32)`. Required with --notify-url. Never logged.
    #[arg(long, env = "ENTITLED_NOTIFY_SECRET", value_parser = notify_secret, hide_env_values = true)]
    pub notify_secret: Option<SecretString>,

    /// Send only the changes of these access levels (`a,b`); all when unset.
    #[arg(long, env = "ENTITLED_NOTIFY_ACCESS_LEVELS", value_delimiter = ',')]
    pub notify_access_levels: Vec<String>,

    /// How long a change's delivery is retried before it is parked.
    #[arg(long, env = "ENTITLED_NOTIFY_RETRY_FOR", value_parser = humantime::parse_duration, default_value = "24h")]
    pub notify_retry_for: std::time::Duration,
}

fn notify_secret(value: &str) -> Result<SecretString, String> {
    use base64::Engine;
    let key = value
        .trim()
        .strip_prefix("whsec_")
        .ok_or("the secret must start with `whsec_` (Standard Webhooks)")?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if bytes.len() >= 16 => Ok(SecretString::from(value.trim())),
        Ok(_) => Err("the secret's key must be at least 16 bytes (24 base64 characters)".into()),
        Err(_) => Err("after `whsec_`, the secret must be base64".into()),
    }
}

/// Adapty's server-side API: off without a key.
#[derive(Debug, Clone, Args)]
pub struct AdaptyArgs {
    /// The app's secret API key (`secret_live_…`, Adapty dashboard: App settings →
    /// General → API keys). Sent as `Authorization: Api-Key …`; never logged.
    #[arg(long, env = "ENTITLED_ADAPTY_SECRET_KEY", value_parser = secret, hide_env_values = true)]
    pub adapty_secret_key: Option<SecretString>,

    /// The API's base URL (tests point it at a local fake).
    #[arg(
        long,
        env = "ENTITLED_ADAPTY_API_URL",
        default_value = "https://api.adapty.io"
    )]
    pub adapty_api_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// Profile ids to fetch, one a line (a file, or `-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub profile_ids: Option<PathBuf>,

    /// Your own user ids (customer_user_id) to fetch, one a line (a file, or `-`).
    #[arg(long, value_name = "FILE")]
    pub customer_user_ids: Option<PathBuf>,

    /// Requests to Adapty in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// Requests to Adapty a second, at most.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,

    #[command(flatten)]
    pub daemon: DaemonArgs,

    #[command(flatten)]
    pub adapty: AdaptyArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub projection: ProjectionArgs,

    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
}

/// `--verify-before-lapse`: `off`, or how long after a renewing level's expiry to ask
/// Adapty about it (`30s`, `5m`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyBeforeLapse {
    Off,
    After(std::time::Duration),
}

fn verify_before_lapse(value: &str) -> Result<VerifyBeforeLapse, String> {
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(VerifyBeforeLapse::Off);
    }
    humantime::parse_duration(value.trim())
        .map(VerifyBeforeLapse::After)
        .map_err(|e| format!("'{value}' is neither `off` nor a duration such as 5m: {e}"))
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// A file of JSON Lines (one webhook body a line), or `-` for standard input.
    pub file: PathBuf,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub projection: ProjectionArgs,

    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["profile_id", "user"])))]
pub struct AccessArgs {
    /// Adapty's profile id.
    pub profile_id: Option<String>,

    /// Your own user id instead: all the profiles that carry it.
    #[arg(long, value_name = "CUSTOMER_USER_ID")]
    pub user: Option<String>,

    /// As of this instant (RFC 3339, or Adapty's +0000 shape).
    #[arg(long, value_parser = instant)]
    pub at: Option<crate::timestamp::Timestamp>,

    /// This access level only.
    #[arg(long)]
    pub access_level: Option<String>,

    /// The answer as JSON, as the HTTP API gives it.
    #[arg(long)]
    pub json: bool,

    /// The SQLite file.
    #[arg(long, env = "ENTITLED_DB", default_value = "entitled.db")]
    pub db: PathBuf,

    #[command(flatten)]
    pub projection: ProjectionArgs,
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Adapty's profile id.
    pub profile_id: String,

    /// The explanation as JSON, as `GET /profiles/{id}/access/explain` gives it.
    #[arg(long)]
    pub json: bool,

    /// The SQLite file.
    #[arg(long, env = "ENTITLED_DB", default_value = "entitled.db")]
    pub db: PathBuf,

    #[command(flatten)]
    pub projection: ProjectionArgs,
}

fn instant(value: &str) -> Result<crate::timestamp::Timestamp, String> {
    crate::adapty::datetime::parse(value)
        .ok_or_else(|| format!("'{value}' is not a datetime such as 2031-03-05T09:10:11Z"))
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The SQLite file to copy from (read only).
    #[arg(long)]
    pub from: PathBuf,

    /// The PostgreSQL database to copy to: a `postgres://` or `postgresql://` URL.
    #[arg(long, value_parser = postgres_url_arg)]
    pub to: String,

    #[command(flatten)]
    pub projection: ProjectionArgs,

    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
}

fn postgres_url_arg(value: &str) -> Result<String, String> {
    if crate::store::postgres::is_url(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "'{value}' is not a postgres:// or postgresql:// URL"
        ))
    }
}

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub projection: ProjectionArgs,

    /// Write nothing; exit 1 when the table differs from what the log says.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. The default is loopback: put a TLS proxy in front.
    #[arg(long, env = "ENTITLED_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub store: StoreArgs,

    /// The exact `Authorization` value Adapty sends to the production endpoint.
    /// Unset (and no sandbox token): the webhook is open, with a warning at start.
    #[arg(long, env = "ENTITLED_WEBHOOK_TOKEN", value_parser = secret, hide_env_values = true)]
    pub webhook_token: Option<SecretString>,

    /// The exact `Authorization` value Adapty sends to the sandbox endpoint. A request
    /// it authorizes may carry sandbox events only.
    #[arg(long, env = "ENTITLED_SANDBOX_WEBHOOK_TOKEN", value_parser = secret, hide_env_values = true)]
    pub sandbox_webhook_token: Option<SecretString>,

    /// A second production token, accepted as well: set the new one as
    /// --webhook-token and the old one here while Adapty's dashboard is switched over.
    #[arg(long, env = "ENTITLED_PREVIOUS_WEBHOOK_TOKEN", value_parser = secret, hide_env_values = true)]
    pub previous_webhook_token: Option<SecretString>,

    /// A second sandbox token, accepted as well, for rotating the sandbox token.
    #[arg(long, env = "ENTITLED_PREVIOUS_SANDBOX_WEBHOOK_TOKEN", value_parser = secret, hide_env_values = true)]
    pub previous_sandbox_webhook_token: Option<SecretString>,

    /// Token the read API requires as `Authorization: Bearer <token>`. Unset: reads
    /// are open (the default listen address is loopback).
    #[arg(long, env = "ENTITLED_READ_TOKEN", value_parser = secret, hide_env_values = true)]
    pub read_token: Option<SecretString>,

    #[command(flatten)]
    pub adapty: AdaptyArgs,

    /// With an Adapty key: when a level set to renew passes its expires_at with no
    /// newer event, ask Adapty about the profile this long after (`off` to never).
    #[arg(long, env = "ENTITLED_VERIFY_BEFORE_LAPSE", value_parser = verify_before_lapse, default_value = "5m")]
    pub verify_before_lapse: VerifyBeforeLapse,

    #[command(flatten)]
    pub notify: NotifyArgs,

    #[command(flatten)]
    pub projection: ProjectionArgs,

    /// Seconds to let requests in flight finish after SIGTERM or SIGINT; the writer
    /// then commits what it holds.
    #[arg(long, env = "ENTITLED_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,

    /// Log format on stderr; the level comes from RUST_LOG (default: info).
    #[arg(long, env = "ENTITLED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where the database is and how hard it holds on to a commit.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The SQLite file; created with schema.sql when missing. A `postgres://` or
    /// `postgresql://` URL selects PostgreSQL instead (schema.postgres.sql; several
    /// instances may share it: docs/scaling.md).
    #[arg(long, env = "ENTITLED_DB", default_value = "entitled.db")]
    pub db: PathBuf,

    /// SQLite `synchronous` (ignored on PostgreSQL). `full` (default) survives power loss with every
    /// acknowledged event; `normal` survives a crash of the process but may lose the
    /// last commits on power loss, and Adapty never resends what we acknowledged.
    #[arg(long, env = "ENTITLED_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Full)]
    pub synchronous: Synchronous,
}

/// What decides how events become access: the same events under other values here
/// give other entitlements (a later `rebuild` recomputes them).
#[derive(Debug, Clone, Args)]
pub struct ProjectionArgs {
    /// Renamed Adapty events back to canonical ones: `custom=canonical,...`.
    #[arg(long, env = "ENTITLED_EVENT_NAMES", value_parser = event_names, default_value = "")]
    pub event_names: EventNames,

    /// Which access level each product grants: `product_id=level,...`. Subscription
    /// products not listed grant `premium`; one-time purchases grant lifetime access
    /// only when listed (so consumables grant nothing).
    #[arg(long, env = "ENTITLED_PRODUCT_LEVELS", value_parser = product_levels, default_value = "")]
    pub product_levels: ProductLevels,

    /// `grant`: sandbox events count like production ones. `ignore`: they are kept in
    /// the event log but change no access.
    #[arg(long, env = "ENTITLED_SANDBOX", value_enum, default_value_t = SandboxPolicy::Grant)]
    pub sandbox: SandboxPolicy,
}

impl ProjectionArgs {
    pub fn rules(&self) -> Rules {
        Rules::new(self.product_levels.0.clone(), self.sandbox.into())
    }
}

/// `--synchronous`: the store's [`store::Synchronous`], as the flag spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Synchronous {
    Full,
    Normal,
}

impl From<Synchronous> for store::Synchronous {
    fn from(value: Synchronous) -> Self {
        match value {
            Synchronous::Full => store::Synchronous::Full,
            Synchronous::Normal => store::Synchronous::Normal,
        }
    }
}

/// `--sandbox`: the projection's [`projection::SandboxPolicy`], as the flag spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SandboxPolicy {
    /// Sandbox events grant access like production ones.
    Grant,
    /// Sandbox events are stored in the log but change no access.
    Ignore,
}

impl From<SandboxPolicy> for projection::SandboxPolicy {
    fn from(value: SandboxPolicy) -> Self {
        match value {
            SandboxPolicy::Grant => projection::SandboxPolicy::Grant,
            SandboxPolicy::Ignore => projection::SandboxPolicy::Ignore,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--product-levels`, parsed.
#[derive(Debug, Clone, Default)]
pub struct ProductLevels(pub HashMap<Arc<str>, Arc<str>>);

fn secret(value: &str) -> Result<SecretString, String> {
    if value.trim().is_empty() {
        return Err("a token must not be empty (leave the flag out to disable it)".into());
    }
    Ok(SecretString::from(value))
}

/// `a=b,c=d` into pairs; empty input is no pairs.
fn pairs(value: &str) -> Result<Vec<(&str, &str)>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                Ok((k.trim(), v.trim()))
            }
            _ => Err(format!("'{item}' is not of the form name=value")),
        })
        .collect()
}

fn event_names(value: &str) -> Result<EventNames, String> {
    EventNames::new(pairs(value)?)
}

fn product_levels(value: &str) -> Result<ProductLevels, String> {
    let mut map = HashMap::new();
    for (product, level) in pairs(value)? {
        if map.insert(Arc::from(product), Arc::from(level)).is_some() {
            return Err(format!("product '{product}' is listed twice"));
        }
    }
    Ok(ProductLevels(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["entitled", "serve"]
            .into_iter()
            .chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Serve(args) => args,
            other => panic!("parsed as {other:?}"),
        })
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        // Parsed with every `env` of `serve` switched off: an ENTITLED_* variable the
        // developer exported is not a default.
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command().mut_subcommand("serve", |s| s.mut_args(|a| a.env(None)));
        let matches = command.try_get_matches_from(["entitled", "serve"]).unwrap();
        let args = match Cli::from_arg_matches(&matches).unwrap().command {
            Command::Serve(args) => args,
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(args.store.db, PathBuf::from("entitled.db"));
        assert_eq!(args.store.synchronous, Synchronous::Full);
        assert_eq!(args.projection.sandbox, SandboxPolicy::Grant);
        assert!(args.webhook_token.is_none() && args.read_token.is_none());
    }

    #[test]
    fn parses_the_maps() {
        let args = serve(&[
            "--product-levels",
            "com.app.pro_yearly=pro, coins_100=coins",
            "--event-names",
            "my_renewal=subscription_renewed",
        ])
        .unwrap();
        let levels = &args.projection.product_levels.0;
        assert_eq!(levels.get("com.app.pro_yearly").map(|l| &**l), Some("pro"));
        assert_eq!(levels.len(), 2);
    }

    #[test]
    fn bad_values_are_errors_that_say_what_is_wrong() {
        for (args, says) in [
            (vec!["--listen", "localhost"], "--listen"),
            (vec!["--product-levels", "monthly"], "name=value"),
            (vec!["--product-levels", "a=x,a=y"], "listed twice"),
            (
                vec!["--event-names", "x=not_a_type"],
                "not an Adapty event type",
            ),
            (vec!["--sandbox", "maybe"], "--sandbox"),
            (vec!["--webhook-token", " "], "must not be empty"),
        ] {
            let err = serve(&args).unwrap_err().to_string();
            assert!(err.contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let args = serve(&["--webhook-token", "hunter2-secret"]).unwrap();
        assert!(!format!("{args:?}").contains("hunter2-secret"));
    }
}
