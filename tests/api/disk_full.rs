//! A full disk: the database lives on a small tmpfs the test mounts, and a filler file
//! takes every free byte while events come in. Then every webhook answers 200 only for
//! an event that is committed, and 503 with `Retry-After` otherwise (never a 4xx,
//! which Adapty would not retry); `/healthz` and the access lookups keep answering
//! from memory, showing committed state only; once the filler is deleted the same
//! daemon, without a restart, stores the retries and new events; and in the end every
//! acknowledged event is in `events`, the file passes `PRAGMA integrity_check`, and
//! `entitled rebuild --check` finds the projection equal to the fold of the log.
//!
//! Mounting needs root (as here and in CI). `ENTITLED_TESTS_NO_MOUNT=1` skips these
//! tests where it cannot be had. The mount is undone by a guard, lazily if busy, so a
//! failing test leaves none behind.

use crate::helpers::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

/// Room for the schema, the WAL and the events of a test; small enough to fill in an
/// instant.
const FILESYSTEM_SIZE: &str = "16m";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_keeps_reads_and_recovers_without_a_restart() {
    let Some(mount) = Tmpfs::mount() else { return };
    let logs = tempfile::tempdir().expect("a temporary directory");
    mount.keep_logs_in(logs.path());
    let daemon = Daemon::start_in(mount.path(), &[]);
    let t = now();

    // Committed before the disk fills: what reads must go on showing.
    let before_events = [
        subscription_started("full-before-1")
            .user("full-user")
            .at(t - days(3))
            .expires(t + days(27)),
        subscription_started("full-before-2")
            .at(t - days(40))
            .expires(t - days(10)),
        access_level_updated("full-before-3", "gold", true, Some(t + days(5)))
            .user("full-user")
            .at(t - days(1)),
    ];
    daemon.store_all(&before_events).await;
    let reads = [
        "/profiles/full-before-1/access",
        "/profiles/full-before-2/access",
        "/profiles/full-before-3/access",
        "/users/full-user/access",
    ];
    let mut before = Vec::new();
    for path in reads {
        let resp = daemon.get(path).await;
        resp.expect(200);
        before.push(without_clock(resp.json.clone()));
    }
    assert_eq!(before[0]["premium"], json!(true), "{}", before[0]);
    assert_eq!(before[3]["premium"], json!(true), "{}", before[3]);

    let filler = mount.fill();

    // New events for new profiles while the disk is full: each answer is a 200 for a
    // committed event or a 503 to retry later, until a few 503s have come.
    let mut acked: Vec<Ev> = Vec::new();
    let mut refused: Vec<Ev> = Vec::new();
    for n in 0..300 {
        if refused.len() >= 5 {
            break;
        }
        let event = subscription_started(&format!("full-during-{n}"))
            .user("full-user")
            .at(t - hours(2))
            .expires(t + days(30));
        let answer = post(&daemon, &event).await;
        match answer.status {
            200 => {
                answer.expect_stored(&event);
                assert!(
                    daemon
                        .stored_body(&event.profile_id(), &event.event_id())
                        .is_some(),
                    "200 on a full disk for an event that is not committed: {answer}"
                );
                acked.push(event);
            }
            503 => {
                answer.expect_retry_later();
                refused.push(event);
            }
            _ => panic!("a full disk must give 200 or 503, never: {answer}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "300 events were all stored on a full filesystem: the filler did not fill it \
         (the test did not test); logs:\n{}",
        daemon.logs()
    );

    // Reads go on, from memory, and show committed state only.
    daemon.get("/healthz").await.expect(200);
    for (path, before) in reads.iter().zip(&before) {
        let resp = daemon.get(path).await;
        resp.expect(200);
        if !path.starts_with("/users/") {
            assert_eq!(
                &without_clock(resp.json.clone()),
                before,
                "{path} changed while the disk was full"
            );
        }
    }
    let stored = daemon.stored_ids();
    for event in &refused {
        let answer = daemon.profile(&event.profile_id()).await;
        let visible = answer["premium"] == json!(true);
        assert_eq!(
            visible,
            stored.contains(&event.event_id()),
            "a lookup must show an event exactly when it is committed: {answer}"
        );
    }

    // Space comes back: the same daemon stores the retries and what comes next.
    std::fs::remove_file(&filler).expect("deleting the filler");
    for event in &refused {
        let answer = retry_until_stored(&daemon, event).await;
        assert!(
            matches!(answer.json["status"].as_str(), Some("stored" | "duplicate")),
            "{answer}"
        );
        acked.push(event.clone());
    }
    for n in 0..20 {
        let event = subscription_started(&format!("full-after-{n}"))
            .at(t - hours(1))
            .expires(t + days(30));
        daemon.store(&event).await;
        acked.push(event);
    }
    for event in &acked {
        assert!(
            daemon.active(&event.profile_id(), "premium").await,
            "{} was acknowledged, yet its profile is not premium",
            event.event_id()
        );
    }
    let ready = poll_until(
        StdDuration::from_secs(10),
        StdDuration::from_millis(50),
        || {
            let daemon = &daemon;
            async move { daemon.get("/readyz").await.status == 200 }
        },
    )
    .await;
    assert!(
        ready,
        "/readyz stays 503 after the disk recovered: {}",
        daemon.get("/readyz").await
    );

    let mut daemon = daemon;
    assert_all_stored(&daemon, acked.iter().map(Ev::event_id));
    assert_integrity(&daemon);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM ended the daemon with {status}");
    assert_rebuild_matches(&daemon.db());
}

/// Monitoring sees a full disk: after a refused event `/readyz` answers 503 for as
/// long as the disk stays full, also after the writer's clock ticks (one a second)
/// commit their empty transactions; it is 200 again once an event is stored. The
/// deploy guide's alert on `/readyz` counts on this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_readyz_at_503_until_an_event_is_stored_again() {
    let Some(mount) = Tmpfs::mount() else { return };
    let logs = tempfile::tempdir().expect("a temporary directory");
    mount.keep_logs_in(logs.path());
    let daemon = Daemon::start_in(mount.path(), &[]);
    let t = now();
    daemon
        .store(
            &subscription_started("ready-before")
                .at(t - hours(1))
                .expires(t + days(30)),
        )
        .await;
    daemon.get("/readyz").await.expect(200);

    let filler = mount.fill();
    let mut refused = None;
    for n in 0..100 {
        let event = subscription_started(&format!("ready-during-{n}"))
            .at(t - hours(1))
            .expires(t + days(30));
        let answer = post(&daemon, &event).await;
        if answer.status == 503 {
            answer.expect_retry_later();
            refused = Some(event);
            break;
        }
        answer.expect_stored(&event);
        assert!(
            daemon
                .stored_body(&event.profile_id(), &event.event_id())
                .is_some(),
            "200 on a full disk for an event that is not committed: {answer}"
        );
    }
    let refused = refused.expect("a full filesystem refuses an event within 100");

    // Watch for three seconds: three clock ticks, none of which can store anything.
    let mut seen = Vec::new();
    let watched = std::time::Instant::now();
    while watched.elapsed() < StdDuration::from_secs(3) {
        let readiness = daemon.get("/readyz").await;
        if readiness.status != 503 {
            seen.push(format!(
                "{:.1} s: {readiness}",
                watched.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    assert!(
        seen.is_empty(),
        "/readyz said ready while the disk was still full and events were refused:\n{}",
        seen.join("\n")
    );

    std::fs::remove_file(&filler).expect("deleting the filler");
    retry_until_stored(&daemon, &refused).await;
    daemon.get("/readyz").await.expect(200);
}

/// Concurrent senders that retry every 503 (as Adapty does) while the filesystem
/// fills up under them and frees again: each answer is a 200 or a 503, every event is
/// stored in the end, exactly once, and nothing acknowledged is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_the_disk_during_concurrent_ingestion_loses_no_acknowledged_event() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 40;

    let Some(mount) = Tmpfs::mount() else { return };
    let logs = tempfile::tempdir().expect("a temporary directory");
    mount.keep_logs_in(logs.path());
    let mut daemon = Daemon::start_in(mount.path(), &[]);
    let t = now();

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let wrong = Arc::new(Mutex::new(Vec::<String>::new()));
    let (acks, refusals) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut all = Vec::new();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let events: Vec<Ev> = (0..PER_TASK)
            .map(|n| task_event(task, n, t))
            .collect::<Vec<_>>();
        all.extend(events.iter().map(Ev::event_id));
        let (client, url) = (daemon.client.clone(), daemon.url("/webhooks/adapty"));
        let (acked, wrong) = (acked.clone(), wrong.clone());
        let (acks, refusals) = (acks.clone(), refusals.clone());
        tasks.push(tokio::spawn(async move {
            for event in events {
                // Retry (as Adapty would) until stored; bounded.
                for attempt in 0.. {
                    let answer = post_with(&client, &url, &event).await;
                    if answer.status == 200 {
                        if answer.json["profile_event_id"] != json!(event.event_id()) {
                            wrong.lock().expect("lock").push(answer.to_string());
                        }
                        acked.lock().expect("lock").push(event.event_id());
                        acks.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    if answer.status != 503 || answer.retry_after.is_none() || attempt > 2_000 {
                        wrong.lock().expect("lock").push(answer.to_string());
                        return;
                    }
                    refusals.fetch_add(1, Ordering::SeqCst);
                    // Not a synchronisation: a retrying sender's pause.
                    tokio::time::sleep(StdDuration::from_millis(20)).await;
                }
            }
        }));
    }

    let count = |n: &Arc<AtomicUsize>| n.load(Ordering::SeqCst);
    let started = poll_until(
        StdDuration::from_secs(60),
        StdDuration::from_millis(5),
        || {
            let acks = acks.clone();
            async move { acks.load(Ordering::SeqCst) >= 20 }
        },
    )
    .await;
    assert!(
        started,
        "not 20 events stored within 60 s: {}",
        daemon.logs()
    );
    let filler = mount.fill();
    let refused = poll_until(
        StdDuration::from_secs(60),
        StdDuration::from_millis(5),
        || {
            let refusals = refusals.clone();
            async move { refusals.load(Ordering::SeqCst) >= 20 }
        },
    )
    .await;
    let acked_while_full = count(&acks);
    let acked_so_far = acked.lock().expect("lock").clone();
    assert_all_stored(&daemon, acked_so_far.into_iter());
    assert!(
        refused,
        "a full filesystem gave fewer than 20 503s in 60 s ({} so far, {acked_while_full} \
         acknowledged): the filler did not fill it; logs:\n{}",
        count(&refusals),
        daemon.logs()
    );
    daemon.get("/healthz").await.expect(200);
    daemon.profile(&task_event(0, 0, t).profile_id()).await;
    std::fs::remove_file(&filler).expect("deleting the filler");

    for task in tasks {
        tokio::time::timeout(StdDuration::from_secs(120), task)
            .await
            .expect("the senders finish within 120 s once space is back")
            .expect("a sender task");
    }
    let wrong = wrong.lock().expect("lock").clone();
    assert!(
        wrong.is_empty(),
        "answers that must not happen on a full disk:\n{}\nlogs:\n{}",
        wrong.join("\n"),
        daemon.logs()
    );
    eprintln!(
        "{} acknowledged ({acked_while_full} before space came back), {} 503s",
        count(&acks),
        count(&refusals)
    );
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len(), all.len(), "every event got its 200 in the end");
    assert_all_stored(&daemon, all.iter().cloned());
    assert_eq!(
        daemon.events_count(),
        all.len() as i64,
        "each event is stored exactly once"
    );
    assert_integrity(&daemon);
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM ended the daemon with {status}");
    assert_rebuild_matches(&daemon.db());
}

/// The `n`th event of sender `task`: a few lifecycles, over a few profiles each.
fn task_event(task: usize, n: usize, t: chrono::DateTime<chrono::Utc>) -> Ev {
    let profile = format!("full-conc-{task}-{}", n % 5);
    let at = t - days(20) + hours(n as i64);
    let event = match n / 5 % 4 {
        0 => subscription_started(&profile).expires(at + days(30)),
        1 => subscription_renewal_cancelled(&profile).expires(at + days(30)),
        2 => access_level_updated(&profile, "premium", true, Some(at + days(30))),
        _ => subscription_renewed(&profile).expires(at + days(30)),
    };
    event.at(at).user(&format!("full-conc-user-{task}"))
}

// ---- the filesystem ---------------------------------------------------------------

/// A tmpfs mounted for one test, unmounted (lazily if busy) when dropped.
struct Tmpfs {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

/// The effective uid, from /proc (the crate forbids `unsafe`, so no `geteuid`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            uids.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

impl Tmpfs {
    /// `None` (with a note) when `ENTITLED_TESTS_NO_MOUNT` is set, or when a developer
    /// runs `cargo test` without root, so the README's test command passes anywhere.
    /// As root, or in CI (`CI` set), a mount that fails is a failure, never a skip.
    fn mount() -> Option<Tmpfs> {
        if std::env::var_os("ENTITLED_TESTS_NO_MOUNT").is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!("ENTITLED_TESTS_NO_MOUNT is set: skipping the disk-full test");
            return None;
        }
        if !running_as_root() && std::env::var_os("CI").is_none() {
            eprintln!(
                "SKIPPED: the disk-full test mounts a tmpfs, which needs root; \
                 run the tests as root (CI does) to include it"
            );
            return None;
        }
        let parent = tempfile::Builder::new()
            .prefix("entitled-disk-full-")
            .tempdir()
            .expect("a temporary directory");
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path).expect("a mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={FILESYSTEM_SIZE},mode=0700"))
            .arg("entitled-test")
            .arg(&path)
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs {
                path,
                _parent: parent,
            }),
            result => panic!(
                "could not mount a {FILESYSTEM_SIZE} tmpfs on {} for the disk-full test \
                 ({}). Run the tests as root, or set ENTITLED_TESTS_NO_MOUNT=1 to skip it.",
                path.display(),
                match result {
                    Ok(output) => format!(
                        "{}: {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                    Err(error) => format!("mount(8) did not run: {error}"),
                }
            ),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// The daemon writes `stderr-N.log` beside its database; a full filesystem would
    /// swallow them, so they go to `dir` through symlinks (for its first 3 starts).
    fn keep_logs_in(&self, dir: &Path) {
        for n in 1..=3 {
            let name = format!("stderr-{n}.log");
            std::os::unix::fs::symlink(dir.join(&name), self.path.join(&name))
                .expect("a symlink for the logs");
        }
    }

    /// Writes a filler file until the filesystem refuses another byte; its path.
    fn fill(&self) -> PathBuf {
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).expect("the filler file");
        for chunk in [64 * 1024, 1] {
            let bytes = vec![0xa5u8; chunk];
            loop {
                match file.write(&bytes) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => panic!("writing the filler: {e}"),
                }
            }
        }
        // The filesystem is full for everyone: not one more byte fits.
        let probe = self.path.join("probe");
        let refused = std::fs::File::create(&probe)
            .and_then(|mut f| f.write_all(b"x"))
            .is_err();
        let _ = std::fs::remove_file(&probe);
        assert!(refused, "the filesystem still takes bytes after the filler");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (a daemon not yet reaped): detach now, freed when the last user goes.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

// ---- HTTP and checks ----------------------------------------------------------------

impl Answer {
    #[track_caller]
    fn expect_stored(&self, event: &Ev) {
        assert_eq!(
            (self.status, &self.json),
            (
                200,
                &json!({"status": "stored", "profile_event_id": event.event_id()})
            ),
            "{self}"
        );
    }

    /// A 503 Adapty retries: `Retry-After` and the store's error code.
    #[track_caller]
    fn expect_retry_later(&self) {
        assert_eq!(self.status, 503, "{self}");
        assert!(
            self.retry_after
                .as_deref()
                .is_some_and(|v| v.parse::<u32>().is_ok_and(|s| s > 0)),
            "a 503 needs Retry-After in seconds: {self}"
        );
        assert!(
            matches!(
                self.json["error"].as_str(),
                Some("store_unavailable" | "saturated")
            ),
            "{self}"
        );
    }
}

async fn post(daemon: &Daemon, event: &Ev) -> Answer {
    post_with(&daemon.client, &daemon.url("/webhooks/adapty"), event).await
}

async fn post_with(client: &reqwest::Client, url: &str, event: &Ev) -> Answer {
    post_webhook(client, url, event)
        .await
        .unwrap_or_else(|e| panic!("{e} (did the daemon die?)"))
}

/// Posts `event` until a 200 (a 503 in between is fine: space may still be settling),
/// within 30 s.
async fn retry_until_stored(daemon: &Daemon, event: &Ev) -> Answer {
    let started = std::time::Instant::now();
    loop {
        let answer = post(daemon, event).await;
        if answer.status == 200 {
            return answer;
        }
        answer.expect_retry_later();
        assert!(
            started.elapsed() < StdDuration::from_secs(30),
            "{} is still refused 30 s after space came back: {answer}; logs:\n{}",
            event.event_id(),
            daemon.logs()
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

#[track_caller]
fn assert_all_stored(daemon: &Daemon, ids: impl Iterator<Item = String>) {
    let stored = daemon.stored_ids();
    let lost: Vec<String> = ids.filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events are not in the events table, such as {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

#[track_caller]
fn assert_integrity(daemon: &Daemon) {
    let integrity: String = daemon
        .sqlite()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
}

/// `entitled rebuild --check` on the file (the daemon stopped): the projection is the
/// fold of the log.
#[track_caller]
fn assert_rebuild_matches(db: &Path) {
    let output = entitled()
        .args(["rebuild", "--check", "--db"])
        .arg(db)
        .env_remove("RUST_LOG")
        .output()
        .expect("entitled rebuild runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("matches: "),
        "rebuild --check after the full disk: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
