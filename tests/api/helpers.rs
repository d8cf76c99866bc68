//! Test support: the real `entitled` binary as a child process (random port, database
//! in a temporary directory, or on PostgreSQL), an HTTP client whose assertions show
//! status and body, read-only access to the stored rows, and Adapty-shaped payload
//! builders.
//!
//! Two test binaries include this file: `api` (its daemons on SQLite) and `postgres`
//! (the same suites, their daemons on PostgreSQL); `crate::POSTGRES` says which. On
//! PostgreSQL each daemon gets a database of its own on the harness's server
//! (`pg_server.rs`), and the row readers (`count`, `rows`, `stored_ids`, …) query it
//! with the same SQL; reading the SQLite file (`sqlite`, `db`) panics there.

#![allow(dead_code)]

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// The daemon binary Cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_entitled");

/// A command for [`BIN`] that inherits no `ENTITLED_*` variable and no `RUST_LOG` from
/// whoever runs the tests: a token or a map exported in a developer's shell would
/// change what every test sees.
pub fn entitled() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ENTITLED_") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

/// How long the daemon may take to print its listening line.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a SIGTERM may take to stop it.
const STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

// ---- the daemon -------------------------------------------------------------------

/// A running `entitled serve`; SIGKILLed and reaped when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, as the listening line said.
    pub base: String,
    /// Its logs, and its SQLite file unless it is elsewhere (see `store`).
    dir: PathBuf,
    /// Its database: the same on every start.
    store: Store,
    _temp: tempfile::TempDir,
    args: Vec<String>,
    /// Environment variables of every start; nothing else `RUST_LOG`- or
    /// `ENTITLED_`-named is inherited from whoever runs the tests.
    env: Vec<(String, String)>,
    starts: u32,
    pub client: reqwest::Client,
}

/// Where a daemon keeps its data.
#[derive(Clone, Debug)]
enum Store {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database; `owned`: made for this daemon, dropped with it.
    Postgres { url: String, owned: bool },
}

impl Store {
    /// What `--db` takes: `postgres://` or `postgresql://` is PostgreSQL, anything
    /// else a SQLite path (the daemon's rule).
    fn parse(db: &str) -> Store {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            Store::Postgres {
                url: db.to_owned(),
                owned: false,
            }
        } else {
            Store::Sqlite(PathBuf::from(db))
        }
    }

    /// This binary's store for a daemon with its files in `dir`: a new database on
    /// the shared PostgreSQL server, or `dir/entitled.db`.
    fn default_in(dir: &Path) -> Store {
        if crate::POSTGRES {
            Store::Postgres {
                url: crate::pg_server::shared().fresh_database(),
                owned: true,
            }
        } else {
            Store::Sqlite(dir.join("entitled.db"))
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("entitled-test-")
        .tempdir()
        .expect("a temporary directory")
}

impl Daemon {
    /// Starts the daemon on a new database in a new temporary directory.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_with_env(args, &[])
    }

    /// The same, with environment variables set (`RUST_LOG`, `ENTITLED_*`).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let temp = temp_dir();
        Self::launch(temp.path().to_owned(), temp, args, env, None)
    }

    /// Starts the daemon on the database `db` (`--db`: a `postgres://` URL or a SQLite
    /// path) that the test made and keeps; its logs go to a new temporary directory.
    pub fn start_on(db: &str, args: &[&str]) -> Daemon {
        let temp = temp_dir();
        Self::launch(
            temp.path().to_owned(),
            temp,
            args,
            &[],
            Some(Store::parse(db)),
        )
    }

    /// Starts a second daemon on `other`'s database, beside it (two instances behind
    /// one load balancer). PostgreSQL only: two daemons on one SQLite file is not a
    /// supported deployment, and this panics. `other` owns the database (it is dropped
    /// with `other`): keep `other` alive, running or not, while this one runs.
    pub fn start_beside(other: &Daemon, args: &[&str]) -> Daemon {
        match &other.store {
            Store::Postgres { url, .. } => Self::start_on(&url.clone(), args),
            Store::Sqlite(path) => panic!(
                "start_beside: {} is a SQLite file, and two daemons on one SQLite file is \
                 not supported (only the postgres test binary runs instances side by side)",
                path.display()
            ),
        }
    }

    fn launch(
        dir: PathBuf,
        temp: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
        store: Option<Store>,
    ) -> Daemon {
        let owned = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let store = store.unwrap_or_else(|| Store::default_in(&dir));
        let mut daemon = Daemon {
            child: None,
            base: String::new(),
            dir,
            store,
            _temp: temp,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: owned(env),
            starts: 0,
            client: client(),
        };
        daemon.spawn();
        daemon
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The SQLite database file. Panics on PostgreSQL, which has no file: give
    /// [`Daemon::db_arg`] to the CLI, and read rows with `count`, `rows` and the like.
    pub fn db(&self) -> PathBuf {
        match &self.store {
            Store::Sqlite(path) => path.clone(),
            Store::Postgres { url, .. } => panic!(
                "this daemon's database is on PostgreSQL ({url}): there is no SQLite file \
                 (db_arg() is its --db; a test that needs the file belongs in sqlite_only!)"
            ),
        }
    }

    /// Its `--db` value: the SQLite path, or the PostgreSQL URL.
    pub fn db_arg(&self) -> String {
        match &self.store {
            Store::Sqlite(path) => path.display().to_string(),
            Store::Postgres { url, .. } => url.clone(),
        }
    }

    /// Whether its database is on PostgreSQL.
    pub fn on_postgres(&self) -> bool {
        matches!(self.store, Store::Postgres { .. })
    }

    /// Everything the daemon wrote on stderr, over all its starts.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for n in 1..=self.starts {
            let path = self.dir.join(format!("stderr-{n}.log"));
            all.push_str(&format!("--- start {n} ---\n"));
            all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        all
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let stderr = std::fs::File::create(self.dir.join(format!("stderr-{}.log", self.starts)))
            .expect("a log file");
        let db: std::ffi::OsString = match &self.store {
            Store::Sqlite(path) => path.into(),
            Store::Postgres { url, .. } => url.into(),
        };
        let mut child = entitled()
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--db")
            .arg(db)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the daemon binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reads every stdout line for the life of the child (so it never blocks on a
        // full pipe) and reports the listening line.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("entitled listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(READY_WITHIN) {
            Ok(url) => {
                assert!(
                    url.starts_with("http://127.0.0.1:"),
                    "odd listening line: {url}"
                );
                self.base = url;
                self.child = Some(child);
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "the daemon printed no listening line within {READY_WITHIN:?} ({status:?}); stderr:\n{}",
                    self.logs()
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running daemon").id()
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running daemon");
        send_signal(child.id(), "TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("waitpid") {
                return status;
            }
            if started.elapsed() > STOP_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not stop within {STOP_WITHIN:?} of SIGTERM; stderr:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash. Reaps the child.
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("a running daemon");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// Starts again on the same database with the same flags (after `stop` or `crash`).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        self.spawn();
    }

    /// SIGTERM, insist on a clean exit, and start again on the same file.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "SIGTERM ended the daemon with {status}; stderr:\n{}",
            self.logs()
        );
        self.start_again();
    }

    // ---- HTTP ----------------------------------------------------------------------

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a webhook body (serialised JSON) with an optional `Authorization` value.
    pub async fn webhook(&self, body: &Value, authorization: Option<&str>) -> Resp {
        self.webhook_raw(body.to_string().into_bytes(), authorization)
            .await
    }

    /// POSTs raw bytes to the webhook.
    pub async fn webhook_raw(&self, body: Vec<u8>, authorization: Option<&str>) -> Resp {
        let mut request = self
            .client
            .post(self.url("/webhooks/adapty"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        Resp::read(request.send().await, "POST /webhooks/adapty").await
    }

    /// POSTs an event (no token) and insists on `200 {"status":"stored"}`.
    pub async fn store(&self, event: &Ev) {
        self.store_with(event, None).await;
    }

    pub async fn store_with(&self, event: &Ev, authorization: Option<&str>) {
        let resp = self.webhook(&event.0, authorization).await;
        resp.expect(200);
        assert_eq!(
            resp.json,
            json!({"status": "stored", "profile_event_id": event.event_id()}),
            "storing a {} event: {resp}",
            event.event_type()
        );
    }

    /// Stores each event in turn.
    pub async fn store_all(&self, events: &[Ev]) {
        for event in events {
            self.store(event).await;
        }
    }

    /// GET with an optional `Authorization` value.
    pub async fn get_with(&self, path: &str, authorization: Option<&str>) -> Resp {
        let mut request = self.client.get(self.url(path));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        Resp::read(request.send().await, &format!("GET {path}")).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.get_with(path, None).await
    }

    /// `GET /profiles/{id}/access`, insisting on 200 JSON.
    pub async fn profile(&self, profile_id: &str) -> Value {
        let resp = self.get(&format!("/profiles/{profile_id}/access")).await;
        resp.expect(200);
        assert_eq!(resp.json["profile_id"], json!(profile_id), "{resp}");
        resp.json
    }

    /// `GET /users/{id}/access`, insisting on 200 JSON.
    pub async fn user(&self, customer_user_id: &str) -> Value {
        let resp = self.get(&format!("/users/{customer_user_id}/access")).await;
        resp.expect(200);
        assert_eq!(
            resp.json["customer_user_id"],
            json!(customer_user_id),
            "{resp}"
        );
        resp.json
    }

    /// One level of a profile's answer (`null` when the profile has no such level).
    pub async fn level(&self, profile_id: &str, level: &str) -> Value {
        self.profile(profile_id).await["access_levels"][level].clone()
    }

    /// Whether `level` is active for the profile now (the level must be listed).
    pub async fn active(&self, profile_id: &str, level: &str) -> bool {
        let answer = self.profile(profile_id).await;
        match &answer["access_levels"][level]["active"] {
            Value::Bool(b) => *b,
            // A missing level would make "not active" pass vacuously.
            Value::Null => panic!("the profile has no `{level}` level: {answer}"),
            other => panic!("`active` is {other}, not a bool: {answer}"),
        }
    }

    // ---- the database ----------------------------------------------------------------

    /// A read-only connection to the daemon's file, as a person's `sqlite3` would be.
    /// Panics on PostgreSQL (see [`Daemon::db`]).
    pub fn sqlite(&self) -> rusqlite::Connection {
        if let Store::Postgres { url, .. } = &self.store {
            panic!(
                "sqlite(): this daemon's database is on PostgreSQL ({url}), not a SQLite \
                 file: read it with count/rows/stored_ids, or wrap the test in sqlite_only!"
            );
        }
        let conn = rusqlite::Connection::open_with_flags(
            self.db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap_or_else(|e| panic!("opening {} read-only: {e}", self.db().display()));
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .expect("busy timeout");
        conn
    }

    /// `SELECT count(*) …` (or any one-integer query).
    pub fn count(&self, sql: &str) -> i64 {
        if let Store::Postgres { url, .. } = &self.store {
            let rows = pg_rows(url, sql, &[]);
            return rows
                .first()
                .and_then(|row| row.first())
                .and_then(Value::as_i64)
                .unwrap_or_else(|| panic!("{sql}: not one integer: {rows:?}"));
        }
        self.sqlite()
            .query_row(sql, [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Every row of a query, each column as JSON: NULL, an integer or a float, text
    /// (a blob or `bytea` as lossy text); on PostgreSQL also a bool, a `json`/`jsonb`
    /// value, and a timestamp in the daemon's output shape ([`out_time`]).
    /// `params` bind `?1`, `?2`, … (`$1`, … on PostgreSQL: `?N` is translated).
    pub fn rows(&self, sql: &str, params: &[&str]) -> Vec<Vec<Value>> {
        match &self.store {
            Store::Postgres { url, .. } => pg_rows(url, sql, params),
            Store::Sqlite(_) => {
                let conn = self.sqlite();
                let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let columns = stmt.column_count();
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params), |row| {
                        (0..columns)
                            .map(|i| row.get_ref(i).map(sqlite_json))
                            .collect::<rusqlite::Result<Vec<Value>>>()
                    })
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.map(|row| row.unwrap_or_else(|e| panic!("{sql}: {e}")))
                    .collect()
            }
        }
    }

    pub fn events_count(&self) -> i64 {
        self.count("SELECT count(*) FROM events")
    }

    /// Every stored `profile_event_id`.
    pub fn stored_ids(&self) -> std::collections::HashSet<String> {
        if let Store::Postgres { url, .. } = &self.store {
            return pg_rows(url, "SELECT profile_event_id FROM events", &[])
                .into_iter()
                .map(|row| match &row[0] {
                    Value::String(id) => id.clone(),
                    other => panic!("a profile_event_id that is not text: {other}"),
                })
                .collect();
        }
        let conn = self.sqlite();
        let mut stmt = conn
            .prepare("SELECT profile_event_id FROM events")
            .expect("a query");
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .expect("rows");
        rows.map(|id| id.expect("an id")).collect()
    }

    /// The stored body of one event of a profile, if stored (events are unique by
    /// `(profile_id, profile_event_id)`).
    pub fn stored_body(&self, profile_id: &str, profile_event_id: &str) -> Option<String> {
        use rusqlite::OptionalExtension;
        if let Store::Postgres { url, .. } = &self.store {
            let rows = pg_rows(
                url,
                "SELECT body FROM events WHERE profile_id = ?1 AND profile_event_id = ?2",
                &[profile_id, profile_event_id],
            );
            // A `json`/`jsonb` column would not keep the bytes: shown re-serialised,
            // it fails the tests that compare them.
            return rows.into_iter().next().map(|row| match &row[0] {
                Value::String(body) => body.clone(),
                other => other.to_string(),
            });
        }
        self.sqlite()
            .query_row(
                "SELECT body FROM events WHERE profile_id = ?1 AND profile_event_id = ?2",
                [profile_id, profile_event_id],
                |row| row.get(0),
            )
            .optional()
            .expect("a query")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Its own database goes with it, as its temporary directory does.
        if let Store::Postgres { url, owned: true } = &self.store {
            crate::pg_server::drop_database(url);
        }
    }
}

/// A SQLite value as JSON (see [`Daemon::rows`]).
fn sqlite_json(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
            Value::String(String::from_utf8_lossy(bytes).into_owned())
        }
    }
}

/// A boolean column as [`Daemon::rows`] reads it: SQLite's integer (non-zero is true,
/// as rusqlite reads a bool), PostgreSQL's `boolean`.
#[track_caller]
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Number(n) if n.is_i64() => n.as_i64() != Some(0),
        other => panic!("not a boolean column: {other}"),
    }
}

/// [`Daemon::rows`] on PostgreSQL: `?N` placeholders become `$N`, parameters are text.
fn pg_rows(url: &str, sql: &str, params: &[&str]) -> Vec<Vec<Value>> {
    let mut translated = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        let numbered = c == '?' && chars.peek().is_some_and(char::is_ascii_digit);
        translated.push(if numbered { '$' } else { c });
    }
    crate::pg_server::with_client(url, |client| {
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let rows = client
            .query(translated.as_str(), &params)
            .unwrap_or_else(|e| panic!("{translated}: {e}"));
        rows.iter()
            .map(|row| (0..row.len()).map(|i| pg_json(row, i)).collect())
            .collect()
    })
}

/// One PostgreSQL column as JSON (see [`Daemon::rows`]).
fn pg_json(row: &postgres::Row, i: usize) -> Value {
    use postgres::types::Type;
    let column = &row.columns()[i];
    let ty = column.type_();
    let value: Option<Value> = if *ty == Type::BOOL {
        row.get::<_, Option<bool>>(i).map(Value::from)
    } else if *ty == Type::INT2 {
        row.get::<_, Option<i16>>(i).map(Value::from)
    } else if *ty == Type::INT4 {
        row.get::<_, Option<i32>>(i).map(Value::from)
    } else if *ty == Type::INT8 {
        row.get::<_, Option<i64>>(i).map(Value::from)
    } else if *ty == Type::OID {
        row.get::<_, Option<u32>>(i).map(Value::from)
    } else if *ty == Type::FLOAT4 {
        row.get::<_, Option<f32>>(i).map(|f| json!(f))
    } else if *ty == Type::FLOAT8 {
        row.get::<_, Option<f64>>(i).map(|f| json!(f))
    } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
        row.get::<_, Option<String>>(i).map(Value::String)
    } else if *ty == Type::JSON || *ty == Type::JSONB {
        row.get::<_, Option<Value>>(i)
    } else if *ty == Type::TIMESTAMPTZ {
        row.get::<_, Option<DateTime<Utc>>>(i)
            .map(|t| Value::String(out_time(t)))
    } else if *ty == Type::TIMESTAMP {
        row.get::<_, Option<chrono::NaiveDateTime>>(i)
            .map(|t| Value::String(out_time(t.and_utc())))
    } else if *ty == Type::BYTEA {
        row.get::<_, Option<Vec<u8>>>(i)
            .map(|b| Value::String(String::from_utf8_lossy(&b).into_owned()))
    } else {
        panic!(
            "rows(): column `{}` is of type {ty}, which the harness does not read (yet)",
            column.name()
        )
    };
    value.unwrap_or(Value::Null)
}

/// A webhook's answer, with the `Retry-After` a 503 must carry.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub text: String,
    pub json: Value,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (Retry-After {:?}) {}",
            self.status, self.retry_after, self.text
        )
    }
}

/// POSTs an event to `url`; `Err` when there is no answer at all. Waits up to 30 s: a
/// daemon that holds a webhook while its database is away must still answer.
pub async fn post_webhook(
    client: &reqwest::Client,
    url: &str,
    event: &Ev,
) -> Result<Answer, String> {
    let resp = client
        .post(url)
        .timeout(std::time::Duration::from_secs(30))
        .header("content-type", "application/json")
        .body(event.0.to_string())
        .send()
        .await
        .map_err(|e| format!("POST {}: no answer: {e}", event.event_id()))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        retry_after,
        text,
        json,
    })
}

/// A client for the tests: no proxies, a bound on every request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("an HTTP client")
}

/// Sends a signal by name with kill(1): the package forbids `unsafe` (and so
/// `libc::kill`) in every target.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Runs `entitled serve` with extra flags on a fresh database, expecting it to refuse
/// to start: returns (exit status, stdout, stderr). Bounded: a daemon that starts
/// anyway is killed once it prints its listening line.
pub fn serve_expecting_failure(args: &[&str]) -> (ExitStatus, String, String) {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let (db, _drop): (std::ffi::OsString, Option<DropDatabase>) =
        match Store::default_in(temp.path()) {
            Store::Sqlite(path) => (path.into(), None),
            Store::Postgres { url, .. } => (url.clone().into(), Some(DropDatabase(url))),
        };
    let mut child = entitled()
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the daemon binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("entitled listening on ") {
                let _ = tx.send(Some(text.clone()));
            }
        }
        let _ = tx.send(None);
        text
    });
    let out = match rx.recv_timeout(READY_WITHIN) {
        Ok(Some(text)) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`entitled serve {}` started anyway: {text}", args.join(" "));
        }
        Ok(None) => String::new(),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`entitled serve {}` neither started nor exited",
                args.join(" ")
            );
        }
    };
    let status = child.wait().expect("waitpid");
    let err = err_reader.join().expect("stderr reader");
    (status, out, err)
}

/// Drops a PostgreSQL database when dropped.
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        crate::pg_server::drop_database(&self.0);
    }
}

/// Polls `condition` every `step` until it holds or `limit` passes; whether it held.
pub async fn poll_until<F, Fut>(
    limit: std::time::Duration,
    step: std::time::Duration,
    mut condition: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(step).await;
    }
}

// ---- responses ----------------------------------------------------------------------

/// A response: status, body text, and the body as JSON (`null` when it is not JSON).
pub struct Resp {
    pub what: String,
    pub status: u16,
    pub content_type: String,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub async fn read(result: reqwest::Result<reqwest::Response>, what: &str) -> Resp {
        let response = result.unwrap_or_else(|e| panic!("{what}: no answer: {e:?}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: {status} with an unreadable body: {e:?}"));
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            what: what.to_owned(),
            status,
            content_type,
            text,
            json,
        }
    }

    /// Asserts the status; the failure message shows the request, status and body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "expected {status}, got: {self}");
        self
    }

    /// Asserts a JSON error answer `{"error": code, "message": <non-empty text>}`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        self.expect(status);
        assert_eq!(self.json["error"], json!(code), "wrong error code: {self}");
        assert!(
            self.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "an error needs a human message: {self}"
        );
        assert!(
            self.content_type.starts_with("application/json"),
            "an error must be JSON (content-type {:?}): {self}",
            self.content_type
        );
        self
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {}", self.what, self.status, self.text)
    }
}

/// An answer without its clock-dependent fields, for before/after comparisons.
pub fn without_clock(mut answer: Value) -> Value {
    if let Some(object) = answer.as_object_mut() {
        object.remove("checked_at");
        object.remove("valid_until");
    }
    answer
}

// ---- time -------------------------------------------------------------------------

/// Now, to the microsecond (what the daemon keeps).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn days(n: i64) -> Duration {
    Duration::days(n)
}

pub fn hours(n: i64) -> Duration {
    Duration::hours(n)
}

pub fn minutes(n: i64) -> Duration {
    Duration::minutes(n)
}

pub fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

/// Adapty's shape: six fraction digits and `+0000` (no colon).
pub fn adapty_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+0000").to_string()
}

/// The daemon's output shape: RFC 3339 UTC, six fraction digits, `Z`.
pub fn out_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

// ---- payloads -----------------------------------------------------------------------

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A fresh uuid-shaped id, unique within the test run.
pub fn uuid() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = Utc::now().timestamp_subsec_nanos() as u64;
    let pid = std::process::id() as u64;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (nanos ^ (pid << 7)) as u32,
        (n >> 16) & 0xffff,
        n & 0xfff,
        (pid & 0xfff),
        n.wrapping_mul(0x9e37_79b9) & 0xffff_ffff_ffff
    )
}

/// Products the tests use.
pub const MONTHLY: &str = "com.example.premium.monthly";
pub const YEARLY: &str = "com.example.premium.yearly";
pub const LIFETIME: &str = "com.example.lifetime";
pub const COINS: &str = "com.example.coins.100";

/// A webhook body shaped like Adapty's, built up field by field.
#[derive(Clone, Debug)]
pub struct Ev(pub Value);

impl Ev {
    /// The common envelope and `event_properties` every Adapty event carries, for a
    /// production App Store purchase of [`MONTHLY`] happening now and paid until
    /// now + 30 days.
    pub fn new(event_type: &str, profile_id: &str) -> Ev {
        let at = now();
        let id = uuid();
        Ev(json!({
            "profile_id": profile_id,
            "customer_user_id": null,
            "idfv": "5B1F4F0B-3C2A-4E1D-9C7A-2D3E4F5A6B7C",
            "idfa": null,
            "advertising_id": "",
            "profile_install_datetime": adapty_time(at - days(90)),
            "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            "email": "jane.doe@example.com",
            "event_type": event_type,
            "event_datetime": adapty_time(at),
            "event_api_version": 1,
            "play_store_purchase_token": null,
            "attributions": {
                "appsflyer": {
                    "ad_set": "Keywords 1.12",
                    "status": "non_organic",
                    "channel": "Google Ads",
                    "ad_group": null,
                    "campaign": "Social media influencers - Rest of the world",
                    "creative": null,
                    "created_at": adapty_time(at - days(90)),
                    "network_user_id": "1675870296123-1234567"
                }
            },
            "user_attributes": {"Favourite_color": "Violet", "Pet_name": "Fluffy", "age": "31"},
            "integration_ids": {"firebase_app_instance_id": "3D45A1B2C3D4E5F6", "amplitude_user_id": null},
            "profiles_sharing_access_level": null,
            "event_properties": {
                "profile_event_id": id,
                "profile_id": profile_id,
                "event_datetime": adapty_time(at),
                "store": "app_store",
                "environment": "Production",
                "vendor_product_id": MONTHLY,
                "base_plan_id": null,
                "transaction_id": "2000000512345678",
                "original_transaction_id": "2000000500000001",
                "purchase_date": adapty_time(at),
                "original_purchase_date": adapty_time(at - days(60)),
                "subscription_expires_at": adapty_time(at + days(30)),
                "currency": "USD",
                "price_local": 9.99,
                "price_usd": 9.99,
                "proceeds_local": 8.49,
                "proceeds_usd": 8.49,
                "net_revenue_local": 7.72,
                "net_revenue_usd": 7.72,
                "tax_amount_local": 0.77,
                "tax_amount_usd": 0.77,
                "cancellation_reason": null,
                "trial_duration": null,
                "promotional_offer_id": null,
                "store_offer_category": null,
                "store_offer_discount_type": null,
                "store_country": "US",
                "country": "US",
                "ip_address": "10.168.1.1",
                "consecutive_payments": 2,
                "rate_after_first_year": false,
                "profile_has_access_level": true,
                "profile_total_revenue_usd": 29.97,
                "profile_country": "US",
                "profile_ip_address": "10.168.1.1",
                "developer_id": "onboarding_placement",
                "ab_test_name": "spring_sale",
                "ab_test_revision": 1,
                "paywall_name": "UsedPaywall",
                "paywall_revision": "1",
                "variation_id": "00000000-0000-0000-0000-000000000000",
                "event_properties_version": 2
            }
        }))
    }

    /// The profile_event_id.
    pub fn event_id(&self) -> String {
        self.0["event_properties"]["profile_event_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn event_type(&self) -> String {
        self.0["event_type"].as_str().unwrap_or_default().to_owned()
    }

    pub fn profile_id(&self) -> String {
        self.0["profile_id"].as_str().unwrap_or_default().to_owned()
    }

    /// Sets a field of `event_properties`.
    pub fn prop(mut self, key: &str, value: Value) -> Ev {
        self.0["event_properties"][key] = value;
        self
    }

    /// Sets a top-level field.
    pub fn top(mut self, key: &str, value: Value) -> Ev {
        self.0[key] = value;
        self
    }

    /// Removes a field of `event_properties`.
    pub fn drop_prop(mut self, key: &str) -> Ev {
        if let Some(props) = self.0["event_properties"].as_object_mut() {
            props.remove(key);
        }
        self
    }

    /// Removes a top-level field.
    pub fn drop_top(mut self, key: &str) -> Ev {
        if let Some(object) = self.0.as_object_mut() {
            object.remove(key);
        }
        self
    }

    pub fn id(self, id: &str) -> Ev {
        self.prop("profile_event_id", json!(id))
    }

    /// When it happened (top level and `event_properties`), with the purchase date.
    pub fn at(self, t: DateTime<Utc>) -> Ev {
        self.top("event_datetime", json!(adapty_time(t)))
            .prop("event_datetime", json!(adapty_time(t)))
            .prop("purchase_date", json!(adapty_time(t)))
    }

    pub fn product(self, product: &str) -> Ev {
        self.prop("vendor_product_id", json!(product))
    }

    /// `subscription_expires_at`.
    pub fn expires(self, t: DateTime<Utc>) -> Ev {
        self.prop("subscription_expires_at", json!(adapty_time(t)))
    }

    pub fn user(self, customer_user_id: &str) -> Ev {
        self.top("customer_user_id", json!(customer_user_id))
    }

    pub fn sandbox(self) -> Ev {
        self.prop("environment", json!("Sandbox"))
    }

    pub fn store_name(self, store: &str) -> Ev {
        self.prop("store", json!(store))
    }

    pub fn reason(self, reason: &str) -> Ev {
        self.prop("cancellation_reason", json!(reason))
    }

    /// Money as Adapty sends it on a refund: negative amounts.
    fn refund_money(self) -> Ev {
        self.prop("price_local", json!(-9.99))
            .prop("price_usd", json!(-9.99))
            .prop("proceeds_local", json!(-8.49))
            .prop("proceeds_usd", json!(-8.49))
            .prop("net_revenue_local", json!(-7.72))
            .prop("net_revenue_usd", json!(-7.72))
            .prop("tax_amount_local", json!(-0.77))
            .prop("tax_amount_usd", json!(-0.77))
    }

    /// A free trial: no money.
    fn free(self) -> Ev {
        self.prop("price_local", Value::Null)
            .prop("price_usd", Value::Null)
            .prop("proceeds_local", Value::Null)
            .prop("proceeds_usd", Value::Null)
            .prop("net_revenue_local", Value::Null)
            .prop("net_revenue_usd", Value::Null)
            .prop("tax_amount_local", Value::Null)
            .prop("tax_amount_usd", Value::Null)
            .prop("trial_duration", json!("3 days"))
            .prop("store_offer_category", json!("introductory"))
            .prop("store_offer_discount_type", json!("free_trial"))
    }
}

// One builder per Adapty event type: the event happening now, for [`MONTHLY`], with
// `subscription_expires_at` as Adapty sets it for that type (override with `.at`,
// `.expires`, `.product`).

pub fn subscription_started(profile_id: &str) -> Ev {
    Ev::new("subscription_started", profile_id).prop("consecutive_payments", json!(1))
}

pub fn subscription_renewed(profile_id: &str) -> Ev {
    Ev::new("subscription_renewed", profile_id).prop("consecutive_payments", json!(3))
}

pub fn trial_started(profile_id: &str) -> Ev {
    let at = now();
    Ev::new("trial_started", profile_id)
        .free()
        .expires(at + days(3))
}

pub fn trial_converted(profile_id: &str) -> Ev {
    Ev::new("trial_converted", profile_id).prop("trial_duration", json!("3 days"))
}

pub fn trial_expired(profile_id: &str) -> Ev {
    Ev::new("trial_expired", profile_id)
        .free()
        .reason("voluntarily_cancelled")
        .expires(now())
}

pub fn subscription_expired(profile_id: &str) -> Ev {
    Ev::new("subscription_expired", profile_id)
        .reason("voluntarily_cancelled")
        .expires(now())
}

pub fn subscription_renewal_cancelled(profile_id: &str) -> Ev {
    Ev::new("subscription_renewal_cancelled", profile_id).reason("voluntarily_cancelled")
}

pub fn subscription_renewal_reactivated(profile_id: &str) -> Ev {
    Ev::new("subscription_renewal_reactivated", profile_id)
}

pub fn trial_renewal_cancelled(profile_id: &str) -> Ev {
    Ev::new("trial_renewal_cancelled", profile_id)
        .free()
        .reason("voluntarily_cancelled")
}

pub fn trial_renewal_reactivated(profile_id: &str) -> Ev {
    Ev::new("trial_renewal_reactivated", profile_id).free()
}

pub fn subscription_refunded(profile_id: &str) -> Ev {
    Ev::new("subscription_refunded", profile_id)
        .refund_money()
        .reason("customer_support")
        .expires(now())
}

pub fn billing_issue_detected(profile_id: &str) -> Ev {
    Ev::new("billing_issue_detected", profile_id)
        .reason("billing_error")
        .prop("price_usd", Value::Null)
        .prop("proceeds_usd", Value::Null)
}

pub fn entered_grace_period(profile_id: &str) -> Ev {
    Ev::new("entered_grace_period", profile_id)
        .reason("billing_error")
        .expires(now() + days(6))
}

pub fn subscription_paused(profile_id: &str) -> Ev {
    Ev::new("subscription_paused", profile_id)
        .store_name("play_store")
        .top(
            "play_store_purchase_token",
            json!({
                "product_id": MONTHLY,
                "purchase_token": "opaque-token.AO-J1OwBoGmOZp",
                "is_subscription": true
            }),
        )
}

pub fn subscription_deferred(profile_id: &str) -> Ev {
    Ev::new("subscription_deferred", profile_id).store_name("play_store")
}

/// A one-time purchase of [`LIFETIME`] (no expiry).
pub fn non_subscription_purchase(profile_id: &str) -> Ev {
    Ev::new("non_subscription_purchase", profile_id)
        .product(LIFETIME)
        .prop("subscription_expires_at", Value::Null)
        .prop("price_usd", json!(49))
        .prop("price_local", json!(49))
        .prop("proceeds_usd", json!(41.65))
}

pub fn non_subscription_purchase_refunded(profile_id: &str) -> Ev {
    Ev::new("non_subscription_purchase_refunded", profile_id)
        .product(LIFETIME)
        .prop("subscription_expires_at", Value::Null)
        .refund_money()
        .reason("customer_support")
}

/// `access_level_updated`: Adapty's snapshot of one level (fields in
/// `event_properties`, as in every real sample).
pub fn access_level_updated(
    profile_id: &str,
    level: &str,
    is_active: bool,
    expires_at: Option<DateTime<Utc>>,
) -> Ev {
    let at = now();
    Ev::new("access_level_updated", profile_id)
        .prop("access_level_id", json!(level))
        .prop("is_active", json!(is_active))
        .prop("expires_at", json!(expires_at.map(adapty_time)))
        .prop("starts_at", Value::Null)
        .prop("will_renew", json!(is_active))
        .prop("is_lifetime", json!(false))
        .prop("is_in_grace_period", json!(false))
        .prop("is_refund", json!(false))
        .prop("activated_at", json!(adapty_time(at - days(60))))
        .prop("renewed_at", json!(adapty_time(at - days(400))))
        .prop("billing_issue_detected_at", Value::Null)
        .prop("active_introductory_offer_type", Value::Null)
        .prop("active_promotional_offer_type", Value::Null)
        .prop("active_promotional_offer_id", Value::Null)
        .prop(
            "subscription_expires_at",
            json!(expires_at.map(adapty_time)),
        )
}

/// A deterministic shuffle (the same seed, the same order), for arrival orders.
pub fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut items = items.to_vec();
    let mut state = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(0x2545_f491_4f6c_dd1d);
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        items.swap(i, (state >> 33) as usize % (i + 1));
    }
    items
}

/// Every permutation of `items` (for small flows).
pub fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first.clone());
            all.push(tail);
        }
    }
    all
}

/// Asserts the exact shape of one level in an access answer.
#[track_caller]
pub fn assert_level_shape(level: &Value) {
    let object = level
        .as_object()
        .unwrap_or_else(|| panic!("a level is an object: {level}"));
    for key in [
        "active",
        "expires_at",
        "starts_at",
        "will_renew",
        "is_lifetime",
        "in_grace_period",
        "is_refund",
        "store",
        "vendor_product_id",
        "environment",
        "updated_at",
        "shared_from",
    ] {
        assert!(object.contains_key(key), "a level lacks `{key}`: {level}");
    }
    for key in [
        "active",
        "will_renew",
        "is_lifetime",
        "in_grace_period",
        "is_refund",
    ] {
        assert!(object[key].is_boolean(), "`{key}` must be a bool: {level}");
    }
}

// ---- the daemon in a directory the test chose -----------------------------------------

impl Daemon {
    /// Starts the daemon with its database (`dir/entitled.db`; on PostgreSQL a new
    /// database, as [`Daemon::start`]) and its stderr logs (`dir/stderr-N.log`) in
    /// `dir`, a directory the test made, such as a small filesystem it mounted. The
    /// caller keeps `dir` alive and cleans it up; the daemon only writes there.
    pub fn start_in(dir: &Path, args: &[&str]) -> Daemon {
        Self::launch(dir.to_owned(), temp_dir(), args, &[], None)
    }
}

// ---- concurrent ingestion ------------------------------------------------------------

/// Concurrent webhook senders, for tests that break the daemon while it ingests. Each
/// posts the events `event(task, n)` one after the other until an answer is not a
/// 200 (the daemon is gone or stopping) or `per_task` are sent, and records every
/// acknowledged `(profile_id, profile_event_id)`.
pub struct Senders {
    acked: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Senders {
    /// Starts `tasks` senders and returns once `acks` events are acknowledged (panics,
    /// with the daemon's logs, if that takes over a minute).
    pub async fn until_acked(
        daemon: &Daemon,
        tasks: usize,
        per_task: usize,
        acks: usize,
        event: impl Fn(usize, usize) -> Ev + Send + Sync + 'static,
    ) -> Senders {
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Arc, Mutex};
        let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let enough = Arc::new(tokio::sync::Notify::new());
        let event = Arc::new(event);
        let mut handles = Vec::new();
        for task in 0..tasks {
            let (client, url) = (client(), daemon.url("/webhooks/adapty"));
            let (acked, count, enough, event) =
                (acked.clone(), count.clone(), enough.clone(), event.clone());
            handles.push(tokio::spawn(async move {
                for n in 0..per_task {
                    let event = event(task, n);
                    let Ok(resp) = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(event.0.to_string())
                        .send()
                        .await
                    else {
                        break;
                    };
                    if resp.status().as_u16() != 200 {
                        break;
                    }
                    let Ok(body) = resp.json::<Value>().await else {
                        break;
                    };
                    assert_eq!(body["status"], json!("stored"), "{body}");
                    acked
                        .lock()
                        .expect("lock")
                        .push((event.profile_id(), event.event_id()));
                    if count.fetch_add(1, Ordering::SeqCst) + 1 == acks {
                        enough.notify_one();
                    }
                }
            }));
        }
        tokio::time::timeout(std::time::Duration::from_secs(60), enough.notified())
            .await
            .unwrap_or_else(|_| panic!("not {acks} acks within 60 s; logs:\n{}", daemon.logs()));
        Senders {
            acked,
            tasks: handles,
        }
    }

    /// Waits for every sender to stop; what was acknowledged, in order.
    pub async fn finish(self) -> Vec<(String, String)> {
        for task in self.tasks {
            task.await.expect("a sender task");
        }
        let acked = self.acked.lock().expect("lock").clone();
        acked
    }
}

/// What one run of the binary gave.
pub struct Run {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`entitled {}` -> {}\nstdout:\n{}\nstderr:\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `command` (the binary with its arguments and environment set; `what` says
/// which, for messages), feeding it `stdin`, and waits at most `limit`.
pub fn run_bounded(
    mut command: Command,
    what: String,
    stdin: Option<Vec<u8>>,
    limit: std::time::Duration,
) -> Run {
    use std::io::{Read, Write};
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let feeder = child.stdin.take().map(|mut pipe| {
        let bytes = stdin.unwrap_or_default();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`entitled {what}` did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    Run {
        what,
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}
