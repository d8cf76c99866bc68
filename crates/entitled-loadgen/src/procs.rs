//! Processes: building and starting the daemon (or another server that prints a
//! readiness line), pinning, and what /proc says about them (CPU time, resident
//! memory). Linux only, like the tools.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The tools print an error and exit; none of them matches on its kind.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// How the processes are placed on cores.
#[derive(Clone, Debug)]
pub struct Pinning {
    /// `taskset -c <server_cpu>` prefix for the daemon and the ceiling server, if any.
    pub server_cpu: Option<usize>,
}

impl Pinning {
    /// Daemon on core 0, this process (the load client) on core 1, when `taskset`
    /// exists and there are at least two cores; otherwise nothing is pinned.
    pub fn apply(enabled: bool) -> (Pinning, String) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let none = Pinning { server_cpu: None };
        if !enabled {
            return (none, "not pinned (--no-pin)".into());
        }
        if !taskset {
            return (none, "not pinned: `taskset` not found".into());
        }
        if cores < 2 {
            return (none, format!("not pinned: only {cores} core(s) available"));
        }
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !pinned {
            return (none, "not pinned: `taskset -p` failed".into());
        }
        (
            Pinning {
                server_cpu: Some(0),
            },
            "server (daemon / HTTP-ceiling server) `taskset -c 0`; load client and \
             SQLite baselines (this process) `taskset -a -p -c 1`"
                .into(),
        )
    }

    /// `program`, under `taskset -c` when the server is pinned.
    pub fn command(&self, program: &Path) -> Command {
        match self.server_cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

/// Runs `cargo build --release --bin entitled` in the repository and returns the
/// binary's path.
pub fn build_daemon(repo: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building: cargo build --release --bin entitled");
    let status = Command::new(cargo)
        .current_dir(repo)
        .args(["build", "--release", "--bin", "entitled"])
        .status()?;
    if !status.success() {
        return Err("cargo build --release --bin entitled failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let bin = target.join("release").join("entitled");
    if !bin.exists() {
        return Err(format!("{} not found after the build", bin.display()).into());
    }
    Ok(bin)
}

/// Whether process `pid` has a file whose path contains `name` mapped (a library it
/// loaded).
pub fn has_loaded(pid: u32, name: &str) -> Result<bool> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/maps"))?.contains(name))
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A server process a tool started; killed if dropped without [`Server::stop`].
pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    /// Set once the readiness line was seen.
    ready_line: mpsc::Receiver<String>,
}

/// Starts `entitled serve` on `db`. With `port`, listens there; else on port 0 and the
/// address comes from the readiness line. Returns at once (see [`Server::wait_line`]).
pub fn spawn_daemon(bin: &Path, pin: &Pinning, db: &Path, port: u16, log: &Path) -> Result<Server> {
    spawn_daemon_with(bin, pin, db, port, log, &[])
}

/// [`spawn_daemon`] with more arguments after `serve`'s own (e.g. `--notify-url`).
pub fn spawn_daemon_with(
    bin: &Path,
    pin: &Pinning,
    db: &Path,
    port: u16,
    log: &Path,
    extra: &[String],
) -> Result<Server> {
    let mut cmd = pin.command(bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--db")
        .arg(db)
        .args(extra);
    // The daemon's own defaults: durability FULL, info logs.
    for var in [
        "RUST_LOG",
        "ENTITLED_SYNCHRONOUS",
        "ENTITLED_WEBHOOK_TOKEN",
        "ENTITLED_SANDBOX_WEBHOOK_TOKEN",
        "ENTITLED_READ_TOKEN",
        "ENTITLED_LISTEN",
        "ENTITLED_DB",
        "ENTITLED_SANDBOX",
        "ENTITLED_EVENT_NAMES",
        "ENTITLED_PRODUCT_LEVELS",
        "ENTITLED_LOG_FORMAT",
        "ENTITLED_NOTIFY_URL",
        "ENTITLED_NOTIFY_SECRET",
        "ENTITLED_NOTIFY_ACCESS_LEVELS",
        "ENTITLED_NOTIFY_RETRY_FOR",
    ] {
        cmd.env_remove(var);
    }
    // For tracing the daemon under a benchmark (its log is `log`).
    if let Some(filter) = std::env::var_os("ENTITLED_BENCH_DAEMON_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    spawn_server(cmd, log, "entitled listening on http://", port)
}

/// Starts `cmd` with its stderr to `log`, and watches its stdout for the line that
/// starts with `line_prefix` and ends with the address it listens on (see
/// [`Server::wait_line`]). Until then the address is `127.0.0.1:port`.
pub fn spawn_server(
    mut cmd: Command,
    log: &Path,
    line_prefix: &'static str,
    port: u16,
) -> Result<Server> {
    let log = std::fs::File::create(log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix(line_prefix) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    Ok(Server {
        child: Some(child),
        pid,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        ready_line: rx,
    })
}

impl Server {
    /// Waits for the readiness line on stdout, and takes the address from it.
    pub fn wait_line(&mut self, within: Duration) -> Result<()> {
        let addr = self
            .ready_line
            .recv_timeout(within)
            .map_err(|_| format!("no readiness line within {within:?} (pid {})", self.pid))?;
        self.addr = addr.parse()?;
        Ok(())
    }

    /// Polls `GET /readyz` until it answers 200; returns when it did.
    pub fn poll_ready(&mut self, within: Duration) -> Result<Instant> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(format!("the daemon exited during start-up: {status}").into());
                }
            }
            if http_status(self.addr, "/readyz").ok() == Some(200) {
                return Ok(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(format!("/readyz not 200 within {within:?}").into())
    }

    /// SIGTERM, then wait for the exit (SIGKILL after 30 s).
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    eprintln!("note: pid {} exited with {status}", self.pid);
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        Err(format!("pid {} did not stop within 30 s of SIGTERM", self.pid).into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One blocking HTTP/1.1 GET with `Connection: close`; the status code.
pub fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    Ok(http_get(addr, path)?.0)
}

/// One blocking HTTP/1.1 GET: status, header block, body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).ok_or("no status")?.parse()?;
    Ok((status, head, response[split + 4..].to_vec()))
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_bytes(&status, "VmRSS:").ok_or_else(|| format!("no VmRSS for pid {pid}").into())
}

/// A process's memory from /proc/PID/status, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// `VmRSS`: everything resident.
    pub rss: u64,
    /// `RssAnon`: the heap and stacks (what a leak grows).
    pub anon: u64,
    /// `RssFile`: resident pages of mapped files (the binary; SQLite's mmap).
    pub file: u64,
    /// `VmHWM`: the peak of `VmRSS`.
    pub peak: u64,
}

/// The memory of a process; zeros for what the kernel does not say (or a process
/// that is gone): a soak's row must not fail on a sample.
pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name| status_bytes(&status, name).unwrap_or(0);
    Memory {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        peak: field("VmHWM:"),
    }
}

/// A `/proc/PID/status` field given in kB (`VmRSS:    1234 kB`), in bytes.
fn status_bytes(status: &str, name: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second of /proc/*/stat times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU time of a process (all its threads) so far, in ticks. `None`
/// for `self`.
pub fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    std::fs::read_to_string(path).map_or(0, |stat| stat_ticks(&stat).1)
}

/// User + system CPU time of this process's children that it has waited for (and
/// of theirs), so far, in ticks: `cutime` + `cstime` of `/proc/self/stat`. A child's
/// time is counted once it has exited and been waited for.
pub fn children_cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat").map_or(0, |stat| {
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        // cutime and cstime are fields 16 and 17 of the line; `rest` starts at field 3.
        rest.split_whitespace()
            .skip(13)
            .take(2)
            .filter_map(|f| f.parse::<u64>().ok())
            .sum()
    })
}

/// CPU time so far of every process but `exclude` (kernel threads included), in
/// ticks, by pid, with its name.
pub fn others_cpu_ticks(exclude: &[u32]) -> HashMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        if exclude.contains(&pid) {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, ticks) = stat_ticks(&stat);
        Some((pid, (name.to_owned(), ticks)))
    })
    .collect()
}

/// What the processes of two `others_cpu_ticks` used in between (those alive at both),
/// in ticks: in all, and the biggest user with its share.
pub fn others_used(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
) -> (u64, Option<(String, u64)>) {
    let used = after.iter().filter_map(|(pid, (name, ticks))| {
        let (_, earlier) = before.get(pid)?;
        Some((name, ticks.saturating_sub(*earlier)))
    });
    let (mut total, mut top) = (0, None::<(&String, u64)>);
    for (name, ticks) in used {
        total += ticks;
        if ticks > 0 && top.is_none_or(|(_, most)| ticks > most) {
            top = Some((name, ticks));
        }
    }
    (total, top.map(|(name, ticks)| (name.clone(), ticks)))
}

/// A `/proc/PID/stat` line's command name and utime + stime.
fn stat_ticks(stat: &str) -> (&str, u64) {
    let name = stat
        .split_once(" (")
        .and_then(|(_, r)| r.rsplit_once(") "))
        .map_or("?", |(name, _)| name);
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: `rest` starts at field 3.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (name, get(11) + get(12))
}

/// Each core's time stolen by the hypervisor so far (the `steal` column of
/// `/proc/stat`), in ticks: time the VM wanted a core and the host ran something
/// else. Empty where the kernel does not say.
pub fn steal_ticks() -> Vec<u64> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            // cpuN user nice system idle iowait irq softirq steal ...
            l.split_whitespace()
                .nth(8)
                .and_then(|f| f.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// The number of threads of a process.
pub fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}
