//! A real PostgreSQL server for the tests, started by the harness itself: no service to
//! set up, no credentials, nothing left running.
//!
//! - The binaries: the highest `/usr/lib/postgresql/*/bin` (Debian's layout), else
//!   `pg_config --bindir`, else `PATH`. When there are none, Debian's `postgresql`
//!   package is installed first (`apt-get`, as root or through `sudo -n`), as `.ci/run`
//!   also does: `cargo test` alone passes on a fresh machine.
//! - `initdb` in a fresh temporary directory (`-A trust -U entitled`, UTF-8, the C
//!   collation: text sorts by bytes, as SQLite's default `BINARY` collation does), then
//!   `postgres` on `127.0.0.1` and a free port, with its socket in that directory.
//!   `fsync` stays on: the durability tests (kill -9 of the server, of a daemon) count
//!   on a commit being on disk. Run as root (as in CI), both run as the `postgres` user,
//!   since PostgreSQL refuses to run as root.
//! - The server dies with the test process, even one killed by SIGKILL: `postgres`
//!   runs under a `sh` whose stdin is a pipe only the test process holds (Rust opens
//!   pipes close-on-exec, so no other child inherits it). The `sh` blocks reading it;
//!   the test process's end closing, however it ends, is the EOF that makes the `sh`
//!   send SIGINT (a fast shutdown) and wait. Likewise a janitor `sh` removes the
//!   directory once the server is gone.
//! - [`shared`]: one server per test process, started on first use; each daemon gets
//!   its own database on it ([`PgServer::fresh_database`]). [`PgServer::dedicated`]: a
//!   server of the test's own, which it may stop, kill and start again on the same
//!   directory and port.
//!
//! The `postgres` crate is a blocking client that runs a runtime of its own, which
//! tokio refuses inside a running runtime (the tests are `#[tokio::test]`s): every
//! query here runs on a thread of its own ([`blocking`]).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The database role `initdb` creates (a superuser; trust authentication).
pub const USER: &str = "entitled";
/// How long a start may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take.
const STOP_WITHIN: Duration = Duration::from_secs(60);

/// The server the test process shares: started on first use, stopped when the
/// process exits (see the module's documentation).
pub fn shared() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(PgServer::new)
}

/// A PostgreSQL server in a temporary directory of its own.
pub struct PgServer {
    bin: PathBuf,
    /// The temporary directory: `data/` (the cluster), the socket, `server.log`.
    dir: PathBuf,
    port: u16,
    /// The user and group the server runs as (the `postgres` user when we are root).
    owner: Option<(u32, u32)>,
    running: Option<Running>,
    /// Its stdin's EOF removes `dir` (once the server is down).
    janitor: Option<(Child, ChildStdin)>,
}

/// One start of the server: the `sh` it runs under, that `sh`'s stdin, the postmaster.
struct Running {
    sh: Child,
    stdin: ChildStdin,
    postmaster: u32,
}

impl PgServer {
    /// A server of the test's own, to stop and start again (the shared one must stay
    /// up for every other test). Removed when dropped.
    pub fn dedicated() -> PgServer {
        PgServer::new()
    }

    fn new() -> PgServer {
        let bin = bindir();
        let dir = tempfile::Builder::new()
            .prefix("entitled-pg-")
            .tempdir()
            .expect("a temporary directory for PostgreSQL")
            .keep();
        let owner = server_owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {} to the postgres user: {e}", dir.display()));
        }
        let janitor = janitor(&dir);
        let mut server = PgServer {
            bin,
            dir,
            port: 0,
            owner,
            running: None,
            janitor: Some(janitor),
        };
        server.initdb();
        // The port is chosen free, but another process may take it before the server
        // binds it: a few tries, each on another port.
        for attempt in 1..=3 {
            server.port = free_port();
            match server.try_start() {
                Ok(()) => return server,
                Err(why) if attempt < 3 => eprintln!("PostgreSQL did not start ({why}); again"),
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!()
    }

    /// `postgres://entitled@127.0.0.1:PORT/NAME`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the server logged, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A new, empty database (a name unique in the test run); its URL.
    pub fn fresh_database(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "entitled_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let sql = format!("CREATE DATABASE \"{name}\"");
        with_client(&self.url("postgres"), move |client| {
            client
                .batch_execute(&sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        });
        self.url(&name)
    }

    /// Whether a server is running (started and not stopped or killed).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts the server again on the same directory and port (after `stop` or
    /// `kill_9`), and waits until it accepts connections (after a kill, that includes
    /// its crash recovery).
    pub fn start(&mut self) {
        assert!(self.running.is_none(), "the server is already running");
        self.try_start().unwrap_or_else(|why| panic!("{why}"));
    }

    /// A fast shutdown (SIGINT: sessions are cut, in-flight transactions rolled back,
    /// a checkpoint written); returns once the server has exited.
    pub fn stop(&mut self) {
        let running = self.running.take().expect("a running server");
        let log = self.log();
        running.shut_down(&log);
    }

    /// SIGKILL to the postmaster and to every process it started, as a machine losing
    /// power would leave them: no checkpoint, no goodbye to the clients. `start` then
    /// recovers from the WAL.
    pub fn kill_9(&mut self) {
        let running = self.running.take().expect("a running server");
        // Stopped first, it starts no process while its children are listed.
        send("STOP", &[running.postmaster]);
        let mut victims = children_of(running.postmaster);
        victims.push(running.postmaster);
        send("KILL", &victims);
        let started = Instant::now();
        while victims.iter().any(|&pid| alive(pid)) {
            assert!(
                started.elapsed() < STOP_WITHIN,
                "PostgreSQL's processes outlived SIGKILL: {victims:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The `sh` reaps the postmaster and exits.
        let log = self.log();
        running.shut_down(&log);
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(&self.dir);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}/initdb: {e}", self.bin.display()));
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `postgres` under its `sh` and waits until it accepts connections.
    fn try_start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("the server's log file");
        // `$@` is the server's command line; its stdout goes to the log too, so that
        // nothing it writes depends on the pipe the pid is read from.
        let script = r#""$@" >&2 &
pid=$!
echo "$pid"
read _
kill -INT "$pid" 2>/dev/null
wait "$pid""#;
        let mut sh = self.command_sh(script);
        sh.arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=300"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = sh.spawn().expect("sh starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the postmaster's pid");
        let postmaster: u32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("sh printed {line:?}, not the postmaster's pid"));
        let running = Running {
            sh: child,
            stdin,
            postmaster,
        };
        let started = Instant::now();
        let url = self.url("postgres");
        loop {
            if !alive(postmaster) {
                running.shut_down("");
                return Err(format!(
                    "PostgreSQL exited at start (port {}); its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            let probe = url.clone();
            if blocking(move || connect(&probe).is_ok()) {
                self.running = Some(running);
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                send("KILL", &[postmaster]);
                running.shut_down("");
                return Err(format!(
                    "PostgreSQL did not accept connections within {READY_WITHIN:?}; its log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `sh -c SCRIPT sh ARGS…`, as the server's user.
    fn command_sh(&self, script: &str) -> Command {
        let mut command = Command::new("sh");
        command.current_dir(&self.dir).args(["-c", script, "sh"]);
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Running {
    /// Closes the `sh`'s stdin (it sends SIGINT and waits for the server) and waits for
    /// the `sh`.
    fn shut_down(self, log: &str) {
        let Running {
            mut sh,
            stdin,
            postmaster,
        } = self;
        drop(stdin);
        let started = Instant::now();
        loop {
            match sh.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if started.elapsed() > STOP_WITHIN => {
                    send("KILL", &[postmaster]);
                    let _ = sh.kill();
                    let _ = sh.wait();
                    panic!("PostgreSQL did not stop within {STOP_WITHIN:?}; its log:\n{log}");
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for PostgreSQL's sh: {e}"),
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // No panic in a drop (it may run while a failed test unwinds).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                running.shut_down("");
            }));
        }
        if let Some((mut janitor, stdin)) = self.janitor.take() {
            drop(stdin);
            let _ = janitor.wait();
        }
    }
}

/// A `sh` (as the current user) that removes `dir` when its stdin reaches EOF: when the
/// server is dropped, or the test process ends in any way. It waits (up to 30 s) for
/// the server to be gone first: the two `sh`s see their EOF at the same time.
fn janitor(dir: &Path) -> (Child, ChildStdin) {
    let script = r#"read _
i=0
while [ -e "$1/data/postmaster.pid" ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
rm -rf "$1""#;
    let mut child = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    let stdin = child.stdin.take().expect("piped stdin");
    (child, stdin)
}

/// Where the PostgreSQL programs are ([`find_bindir`]); on a machine without them,
/// Debian's `postgresql` package is installed first (once per test process; as root, or
/// through passwordless `sudo`), so that `cargo test` alone passes on a fresh machine.
fn bindir() -> PathBuf {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR
        .get_or_init(|| {
            if let Some(bin) = find_bindir() {
                return bin;
            }
            install_postgresql();
            find_bindir().unwrap_or_else(|| {
                panic!(
                    "no PostgreSQL server programs (initdb, postgres) in \
                     /usr/lib/postgresql/*/bin, `pg_config --bindir` or PATH, even after \
                     installing Debian's `postgresql` package: the postgres tests start a \
                     server of their own"
                )
            })
        })
        .clone()
}

/// `apt-get install postgresql` (what `.ci/run` does too), as root or with `sudo -n`.
fn install_postgresql() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    let run = |args: &[&str]| {
        let mut command = if root {
            Command::new(args[0])
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("-n").arg(args[0]);
            sudo
        };
        command
            .args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null());
        match command.status() {
            Ok(status) if status.success() => {}
            other => panic!(
                "installing Debian's `postgresql` package for the postgres tests failed \
                 ({} : {other:?}); install it by hand",
                args.join(" ")
            ),
        }
    };
    eprintln!("no PostgreSQL server programs: installing Debian's `postgresql` package");
    run(&["apt-get", "update", "-q"]);
    run(&[
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "postgresql",
    ]);
}

/// The highest `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`, else a `PATH`
/// directory with `initdb` and `postgres`.
fn find_bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&bin) {
            return Some(bin);
        }
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_server(dir)))
}

/// `Some((uid, gid))` of the `postgres` user when we are root (PostgreSQL refuses to
/// run as root); `None` otherwise: the server runs as us.
fn server_owner() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id(&["-u"]).expect("`id -u` runs") != 0 {
        return None;
    }
    let uid = id(&["-u", "postgres"]);
    let gid = id(&["-g", "postgres"]);
    match (uid, gid) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => panic!(
            "running as root, and there is no `postgres` user to run PostgreSQL as \
             (Debian's `postgresql` package creates it)"
        ),
    }
}

/// A free TCP port on 127.0.0.1 below the ephemeral range, so that neither a daemon
/// (which listens on port 0) nor an outgoing connection takes it while a dedicated
/// server is down between a stop and a start.
fn free_port() -> u16 {
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (
        ephemeral_low.saturating_sub(12_000).max(1024),
        ephemeral_low,
    );
    let mut state = std::process::id() as u64 ^ (nanos() << 16);
    for _ in 0..1000 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = (low + ((state >> 33) as u32) % (high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

// ---- processes ----------------------------------------------------------------------

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let parent: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

/// kill(1): the tests stay free of `unsafe` (and so of `libc::kill`).
fn send(signal: &str, pids: &[u32]) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

// ---- clients ------------------------------------------------------------------------

/// Runs `f` on a thread of its own and returns what it returns (its panic goes on in
/// the caller): the `postgres` crate's blocking client cannot run on a thread that
/// drives a tokio runtime.
pub fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A connection to `url` (no TLS: the server is on 127.0.0.1), bounded to 5 s.
pub fn connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    config.connect(postgres::NoTls)
}

/// Runs `f` with a connection to `url`, on a thread of its own ([`blocking`]); panics
/// if there is no connection.
pub fn with_client<T: Send>(url: &str, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
    blocking(move || {
        let mut client = connect(url).unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        f(&mut client)
    })
}

/// Drops the database of `url` (`WITH (FORCE)`: its sessions are cut), if the server is
/// up; never panics (a daemon's drop calls it, maybe while a failed test unwinds).
pub fn drop_database(url: &str) {
    let Some((server, name)) = url.rsplit_once('/') else {
        return;
    };
    let (admin, sql) = (
        format!("{server}/postgres"),
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    );
    let _ = std::panic::catch_unwind(move || {
        blocking(move || {
            if let Ok(mut client) = connect(&admin) {
                let _ = client.batch_execute(&sql);
            }
        })
    });
}

// ---- the harness's own tests ----------------------------------------------------------

postgres_only! {
#[cfg(test)]
mod tests {
    use super::*;

    fn one_integer(url: &str, sql: &'static str) -> Result<i64, postgres::Error> {
        let url = url.to_owned();
        blocking(move || connect(&url)?.query_one(sql, &[])?.try_get(0))
    }

    #[test]
    fn a_fresh_database_accepts_a_query() {
        let url = shared().fresh_database();
        assert!(
            url.starts_with(&format!("postgres://{USER}@127.0.0.1:{}/", shared().port())),
            "{url}"
        );
        with_client(&url, |client| {
            client
                .batch_execute(
                    "CREATE TABLE t (id BIGINT PRIMARY KEY, body TEXT NOT NULL); \
                     INSERT INTO t VALUES (1, 'one'), (2, 'two')",
                )
                .expect("a table and two rows");
            let body: String = client
                .query_one("SELECT body FROM t WHERE id = $1", &[&2_i64])
                .expect("a row")
                .get(0);
            assert_eq!(body, "two");
            let encoding: String = client
                .query_one("SHOW server_encoding", &[])
                .expect("the encoding")
                .get(0);
            assert_eq!(encoding, "UTF8");
        });
    }

    #[test]
    fn two_fresh_databases_differ() {
        let (one, two) = (shared().fresh_database(), shared().fresh_database());
        assert_ne!(one, two);
        with_client(&one, |client| {
            client
                .batch_execute("CREATE TABLE only_in_one (x INT)")
                .expect("a table")
        });
        assert_eq!(
            one_integer(&one, "SELECT count(*) FROM only_in_one").expect("the table is there"),
            0
        );
        let err = one_integer(&two, "SELECT count(*) FROM only_in_one")
            .expect_err("the other database has no such table");
        assert_eq!(
            err.code(),
            Some(&postgres::error::SqlState::UNDEFINED_TABLE),
            "{err:?}"
        );
    }

    #[test]
    fn a_dedicated_server_restarts_and_keeps_data() {
        let mut server = PgServer::dedicated();
        let url = server.fresh_database();
        with_client(&url, |client| {
            client
                .batch_execute("CREATE TABLE kept (x INT); INSERT INTO kept VALUES (1)")
                .expect("a committed row")
        });
        let port = server.port();

        server.stop();
        assert!(!server.is_running());
        assert!(
            one_integer(&url, "SELECT 1::bigint").is_err(),
            "a stopped server answered"
        );
        server.start();
        assert_eq!(server.port(), port, "the same port");
        assert_eq!(
            one_integer(&url, "SELECT count(*) FROM kept").expect("after a stop"),
            1
        );

        // A commit survives a kill -9 of every server process (fsync is on).
        with_client(&url, |client| {
            client
                .batch_execute("INSERT INTO kept VALUES (2)")
                .expect("a second row")
        });
        server.kill_9();
        assert!(
            one_integer(&url, "SELECT 1::bigint").is_err(),
            "a killed server answered"
        );
        server.start();
        assert_eq!(
            one_integer(&url, "SELECT count(*) FROM kept").expect("after a kill -9"),
            2
        );

        // Dropped: the server stops and its directory goes.
        let dir = server.dir().to_owned();
        drop(server);
        assert!(
            one_integer(&url, "SELECT 1::bigint").is_err(),
            "a dropped server answered"
        );
        assert!(!dir.exists(), "{} is still there", dir.display());
    }

    #[test]
    fn a_dropped_database_is_gone_from_the_server() {
        let url = shared().fresh_database();
        assert_eq!(
            one_integer(&url, "SELECT 1::bigint").expect("a database"),
            1
        );
        drop_database(&url);
        assert!(
            one_integer(&url, "SELECT 1::bigint").is_err(),
            "{url} is still there"
        );
    }
}
}
