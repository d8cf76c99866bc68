//! Crash safety, further than durability.rs's single kill -9: rounds of concurrent
//! ingestion (16 senders; every event type over a few dozen profiles; out of order;
//! with duplicates, replays of earlier rounds, and ids reused with another body), each
//! round ended by SIGKILL at a moment a seeded RNG picks, sometimes in the middle of a
//! graceful shutdown (SIGTERM, then SIGKILL). After every crash, with the daemon down:
//! every event that got a 2xx in any round so far is in `events`; `PRAGMA
//! integrity_check` is `ok`; `entitled rebuild --check` finds the projection equal to
//! the fold of the log; `profiles` and the change feed agree with the log. After the
//! restart, every access answer for the profiles and users of the round equals what
//! `entitled access --json` reads from the file, and the next round ingests on.
//!
//! The seed is printed (`crash seed: N`); `ENTITLED_CRASH_SEED=N` replays its choices
//! (the kill still lands wherever the scheduler has got to). The long version is
//! `ENTITLED_CRASH_ROUNDS=200 cargo test --test api crash:: -- --ignored`.

use crate::helpers::*;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

/// Profiles a round's events are spread over.
const PROFILES: u64 = 36;
/// How far the window of profiles moves each round: later rounds refold old profiles
/// (late events for known state) and start new ones, and no profile's log grows
/// without bound over a long run.
const PROFILE_SHIFT: u64 = 8;
/// Concurrent senders.
const TASKS: usize = 16;
/// Fresh events a round prepares (duplicates and replays come on top).
const EVENTS_PER_ROUND: usize = 400;
/// The flags of every daemon and CLI run here: one-time purchases of the lifetime
/// product grant the `lifetime` level.
const PRODUCT_LEVELS: &str = "com.example.lifetime=lifetime";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_of_concurrent_ingestion_loses_no_acknowledged_event() {
    crash_rounds(3, &[]).await;
}

/// `--synchronous normal` promises to survive a crash of the process (only power loss
/// may take its last commits), so kill -9 must lose nothing there either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_event_with_synchronous_normal() {
    crash_rounds(2, &["--synchronous", "normal"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: ENTITLED_CRASH_ROUNDS rounds (default 50) of kill -9 during ingestion"]
async fn many_sigkills_lose_no_acknowledged_event() {
    let rounds = match std::env::var("ENTITLED_CRASH_ROUNDS") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("ENTITLED_CRASH_ROUNDS={text} is not a count")),
        Err(_) => 50,
    };
    crash_rounds(rounds, &[]).await;
}

/// What a round's senders saw.
#[derive(Default)]
struct Seen {
    /// Every `profile_event_id` that got a 2xx, over all rounds, with the event type
    /// (for the failure message).
    acked: HashMap<String, String>,
    /// Answers that must never happen (a 4xx, a 5xx outside a shutdown, a wrong body).
    wrong: Vec<String>,
}

async fn crash_rounds(rounds: u32, flags: &[&str]) {
    let seed = match std::env::var("ENTITLED_CRASH_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("ENTITLED_CRASH_SEED={text} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_nanos() as u64,
    };
    eprintln!("crash seed: {seed} (ENTITLED_CRASH_SEED={seed} replays it), {rounds} rounds");
    let mut rng = Rng(seed);
    let mut args = vec!["--product-levels", PRODUCT_LEVELS];
    args.extend_from_slice(flags);
    let mut daemon = Daemon::start(&args);
    let t = now();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut sent: Vec<Ev> = Vec::new();
    let mut in_flight_kills = 0;

    for round in 0..rounds {
        let first_profile = u64::from(round) * PROFILE_SHIFT;
        let pool = round_events(&mut rng, t, first_profile, &sent);
        sent.extend(pool.iter().cloned());
        let touched: BTreeSet<String> = pool.iter().map(Ev::profile_id).collect();
        let users: BTreeSet<String> = pool
            .iter()
            .filter_map(|e| e.0["customer_user_id"].as_str().map(str::to_owned))
            .collect();

        let during_shutdown = rng.chance(25);
        // The random moment: after `target` acknowledgements and `delay` more.
        let target = 1 + rng.below(EVENTS_PER_ROUND as u64 * 6 / 10) as usize;
        let delay = StdDuration::from_millis(rng.below(30));
        let term_to_kill = StdDuration::from_millis(rng.below(150));

        let queue = Arc::new(Mutex::new(VecDeque::from(pool)));
        let acks = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            tasks.push(tokio::spawn(send_until_gone(
                client(),
                daemon.url("/webhooks/adapty"),
                queue.clone(),
                seen.clone(),
                acks.clone(),
                during_shutdown,
            )));
        }
        let reached = poll_until(
            StdDuration::from_secs(90),
            StdDuration::from_millis(1),
            || {
                let acks = acks.clone();
                async move { acks.load(Ordering::SeqCst) >= target }
            },
        )
        .await;
        assert!(
            reached,
            "round {round}: not {target} acknowledgements within 90 s (seed {seed}); logs:\n{}",
            daemon.logs()
        );
        // Not a synchronisation: the seeded part of where the kill lands.
        tokio::time::sleep(delay).await;
        if during_shutdown {
            send_signal(daemon.pid(), "TERM");
            tokio::time::sleep(term_to_kill).await;
        }
        if !queue.lock().expect("queue").is_empty() {
            in_flight_kills += 1;
        }
        daemon.crash();
        for task in tasks {
            task.await.expect("a sender task");
        }
        {
            let seen = seen.lock().expect("seen");
            assert!(
                seen.wrong.is_empty(),
                "round {round} (seed {seed}): answers that must not happen:\n{}\nlogs:\n{}",
                seen.wrong.join("\n"),
                daemon.logs()
            );
        }
        eprintln!(
            "round {round}: killed after {} acks ({} in all){}",
            acks.load(Ordering::SeqCst),
            seen.lock().expect("seen").acked.len(),
            if during_shutdown {
                ", during a graceful shutdown"
            } else {
                ""
            }
        );

        // With the daemon down: the file, as the crash left it.
        let acked = seen.lock().expect("seen").acked.clone();
        check_file(&daemon, &acked, round, seed);
        let expected = cli_answers(&daemon, &touched, &users);

        daemon.start_again();
        let premium = expected
            .values()
            .filter(|a| a["premium"] == json!(true))
            .count();
        eprintln!(
            "round {round}: {premium} of {} answers compared say premium",
            expected.len()
        );
        for ((kind, id), cli) in &expected {
            let path = format!("/{kind}/{id}/access");
            let answer = daemon.get(&path).await;
            answer.expect(200);
            assert_eq!(
                without_clock(answer.json.clone()),
                without_clock(cli.clone()),
                "round {round} (seed {seed}): after the restart {path} differs from \
                 `entitled access --json` on the file"
            );
        }
    }
    assert!(
        in_flight_kills > 0 || rounds < 2,
        "no round was killed with events still to send (seed {seed}): the test did not test"
    );
    // Still a working daemon after all that: one more event, then a clean stop.
    daemon
        .store(
            &subscription_started("crash-after")
                .at(t - hours(3))
                .expires(t + days(30)),
        )
        .await;
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM ended the daemon with {status}");
}

/// Posts events from the shared queue until it is empty or the daemon is gone.
async fn send_until_gone(
    client: reqwest::Client,
    url: String,
    queue: Arc<Mutex<VecDeque<Ev>>>,
    seen: Arc<Mutex<Seen>>,
    acks: Arc<AtomicUsize>,
    shutting_down: bool,
) {
    loop {
        let Some(event) = queue.lock().expect("queue").pop_front() else {
            return;
        };
        let result = client
            .post(&url)
            .header("content-type", "application/json")
            .body(event.0.to_string())
            .send()
            .await;
        // Refused or cut: the daemon is gone (or going).
        let Ok(resp) = result else { return };
        let status = resp.status().as_u16();
        let id = event.event_id();
        if status == 200 {
            // A 200 status line counts as acknowledged even if the body never arrives:
            // Adapty would not resend it.
            seen.lock()
                .expect("seen")
                .acked
                .insert(id.clone(), event.event_type());
            acks.fetch_add(1, Ordering::SeqCst);
        }
        let Ok(text) = resp.text().await else { return };
        match status {
            200 => {
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let ok = matches!(body["status"].as_str(), Some("stored" | "duplicate"))
                    && body["profile_event_id"] == json!(id);
                if !ok {
                    seen.lock()
                        .expect("seen")
                        .wrong
                        .push(format!("200 for {id} with body {text}"));
                }
            }
            // A graceful shutdown may refuse what comes in after it began.
            503 if shutting_down => {}
            _ => {
                seen.lock()
                    .expect("seen")
                    .wrong
                    .push(format!("{status} for {} {id}: {text}", event.event_type()));
                return;
            }
        }
    }
}

/// The round's events: fresh ones over the round's window of profiles, some sent
/// twice, some replayed from earlier rounds, some ids reused with another body; in a
/// random order.
fn round_events(rng: &mut Rng, t: DateTime<Utc>, first_profile: u64, sent: &[Ev]) -> Vec<Ev> {
    let mut pool = Vec::new();
    for _ in 0..EVENTS_PER_ROUND {
        let profile = first_profile + rng.below(PROFILES);
        let event = random_event(rng, t, profile);
        if rng.chance(10) {
            pool.push(event.clone());
        }
        if rng.chance(2) {
            // The same id with another body: whichever arrives first is the one kept.
            let other = {
                let profile = first_profile + rng.below(PROFILES);
                random_event(rng, t, profile).id(&event.event_id())
            };
            pool.push(other);
        }
        pool.push(event);
    }
    if !sent.is_empty() {
        for _ in 0..EVENTS_PER_ROUND / 25 {
            pool.push(sent[rng.below(sent.len() as u64) as usize].clone());
        }
    }
    shuffled(&pool, rng.next())
}

/// One event of a profile's life, at a random past moment (up to 60 days back), with
/// expiries kept at least 12 hours from the test's `t` so that no access flips while
/// the test compares answers.
fn random_event(rng: &mut Rng, t: DateTime<Utc>, profile: u64) -> Ev {
    let profile_id = format!("crash-prof-{profile:04}");
    let back = 2 * 3_600 + rng.below(60 * 86_400) as i64;
    let at = t - secs(back) - chrono::Duration::microseconds(rng.below(1_000_000) as i64);
    let period = |length| away_from(at + days(length), t);
    let event = match rng.below(22) {
        0..=3 => subscription_started(&profile_id).expires(period(30)),
        4 | 5 => subscription_renewed(&profile_id).expires(period(30)),
        6 => trial_started(&profile_id).expires(period(3)),
        7 => trial_converted(&profile_id).expires(period(30)),
        8 => subscription_renewal_cancelled(&profile_id).expires(period(30)),
        9 => subscription_renewal_reactivated(&profile_id).expires(period(30)),
        10 => subscription_expired(&profile_id).expires(at),
        11 if rng.chance(25) => subscription_refunded(&profile_id)
            .reason("upgraded")
            .expires(at),
        11 => subscription_refunded(&profile_id).expires(at),
        12 => billing_issue_detected(&profile_id).expires(period(30)),
        13 => entered_grace_period(&profile_id).expires(period(6)),
        14 => subscription_paused(&profile_id).expires(period(30)),
        15 => non_subscription_purchase(&profile_id),
        16 if rng.chance(30) => non_subscription_purchase_refunded(&profile_id),
        16 => non_subscription_purchase(&profile_id).product(COINS),
        17 | 18 => access_level_updated(
            &profile_id,
            if rng.chance(70) { "premium" } else { "gold" },
            rng.chance(65),
            Some(period(30)),
        ),
        19 => trial_expired(&profile_id).expires(at),
        20 => Ev::new("subscription_active", &profile_id).expires(period(30)),
        _ => trial_renewal_cancelled(&profile_id).expires(period(3)),
    };
    let subscription = !matches!(
        event.event_type().as_str(),
        "non_subscription_purchase" | "non_subscription_purchase_refunded"
    );
    let mut event = event.at(at);
    if subscription && rng.chance(20) {
        event = event.product(YEARLY);
    }
    if rng.chance(5) {
        event = event.sandbox();
    }
    // Mostly the profile's own user; sometimes none (which never erases one), and
    // sometimes a neighbour's (a shared device, a re-login).
    match rng.below(10) {
        0..=6 => event.user(&format!("crash-user-{:04}", profile / 3)),
        7 | 8 => event,
        _ => event.user(&format!("crash-user-{:04}", (profile + 3) / 3)),
    }
}

/// `x`, moved a day later when it falls within 12 hours of `t`.
fn away_from(x: DateTime<Utc>, t: DateTime<Utc>) -> DateTime<Utc> {
    if (x - t).num_hours().abs() < 12 {
        x + days(1)
    } else {
        x
    }
}

/// With the daemon down, the file as the crash left it: intact, holding every
/// acknowledged event, and its projection, profiles and change feed what the log says.
fn check_file(daemon: &Daemon, acked: &HashMap<String, String>, round: u32, seed: u64) {
    let context = format!("round {round} (seed {seed})");
    let db = daemon.db();
    let rebuild = entitled_cli(&[
        "rebuild",
        "--check",
        "--db",
        db.to_str().expect("a UTF-8 path"),
        "--product-levels",
        PRODUCT_LEVELS,
    ]);
    let stdout = String::from_utf8_lossy(&rebuild.stdout).into_owned();
    assert!(
        rebuild.status.success() && stdout.starts_with("matches: "),
        "{context}: `entitled rebuild --check` says the projection is not the fold of the log \
         ({}):\n{stdout}{}",
        rebuild.status,
        String::from_utf8_lossy(&rebuild.stderr)
    );
    let events = daemon.events_count();
    assert!(
        stdout.starts_with(&format!("matches: {events} events ")),
        "{context}: rebuild folded another number of events than the table's {events}: {stdout}"
    );

    let integrity: String = daemon
        .sqlite()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok", "{context}: the file is damaged");

    let stored = daemon.stored_ids();
    let lost: BTreeMap<&String, &String> = acked
        .iter()
        .filter(|(id, _)| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{context}: {} acknowledged events are not in the file, such as {:?}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );

    // Every profile of the log has its row, and no other profile has one.
    let unlisted = daemon.count(
        "SELECT count(DISTINCT profile_id) FROM events \
         WHERE profile_id NOT IN (SELECT profile_id FROM profiles)",
    );
    let orphans = daemon.count(
        "SELECT count(*) FROM profiles WHERE profile_id NOT IN (SELECT profile_id FROM events)",
    );
    assert_eq!(
        (unlisted, orphans),
        (0, 0),
        "{context}: profiles (without a row, without an event)"
    );
    // Each carries the customer_user_id of its newest event that had one.
    let wrong_user = daemon.count(
        "SELECT count(*) FROM profiles AS p WHERE p.customer_user_id IS NOT \
         (SELECT e.customer_user_id FROM events AS e \
          WHERE e.profile_id = p.profile_id AND e.customer_user_id IS NOT NULL \
          ORDER BY e.event_datetime DESC, e.profile_event_id DESC LIMIT 1)",
    );
    assert_eq!(
        wrong_user, 0,
        "{context}: profiles whose customer_user_id is not their newest event's"
    );

    check_change_feed(daemon, &context);
}

/// The change feed against the table: per level, changes alternate gained/lost
/// starting with a gain (never the same change twice, none skipped), the last one is
/// what `entitlements.reported_active` says, and each names a stored event.
fn check_change_feed(daemon: &Daemon, context: &str) {
    let conn = daemon.sqlite();
    let mut feed: BTreeMap<(String, String), Vec<(i64, bool)>> = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare(
                "SELECT seq, profile_id, access_level_id, active FROM access_changes ORDER BY seq",
            )
            .expect("a query");
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                ))
            })
            .expect("rows");
        for row in rows {
            let (seq, profile, level, active) = row.expect("a row");
            feed.entry((profile, level))
                .or_default()
                .push((seq, active));
        }
    }
    let mut reported: BTreeMap<(String, String), bool> = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT profile_id, access_level_id, reported_active FROM entitlements")
            .expect("a query");
        let rows = stmt
            .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
            .expect("rows");
        for row in rows {
            let (key, active) = row.expect("a row");
            reported.insert(key, active);
        }
    }
    for (key, changes) in &feed {
        let mut expected = true;
        for (seq, active) in changes {
            assert_eq!(
                *active, expected,
                "{context}: change {seq} of {key:?} repeats the previous one: {changes:?}"
            );
            expected = !expected;
        }
        let last = changes.last().map(|c| c.1).unwrap_or(false);
        let saved = reported.get(key).copied().unwrap_or(false);
        assert_eq!(
            last, saved,
            "{context}: the feed's last word on {key:?} is not the table's reported_active"
        );
    }
    for (key, active) in &reported {
        if *active {
            assert!(
                feed.contains_key(key),
                "{context}: {key:?} is reported active with no change in the feed"
            );
        }
    }
    let dangling = daemon.count(
        "SELECT count(*) FROM access_changes WHERE profile_event_id IS NOT NULL \
         AND profile_event_id NOT IN (SELECT profile_event_id FROM events)",
    );
    assert_eq!(
        dangling, 0,
        "{context}: changes naming an event not in the log"
    );
}

/// `entitled access --json` for each profile and user, from the file: keyed by
/// (`profiles` or `users`, id).
fn cli_answers(
    daemon: &Daemon,
    profiles: &BTreeSet<String>,
    users: &BTreeSet<String>,
) -> BTreeMap<(&'static str, String), Value> {
    let db = daemon.db();
    let db = db.to_str().expect("a UTF-8 path");
    let mut answers = BTreeMap::new();
    let asks = profiles
        .iter()
        .map(|p| ("profiles", p, vec![p.as_str()]))
        .chain(
            users
                .iter()
                .map(|u| ("users", u, vec!["--user", u.as_str()])),
        );
    for (kind, id, who) in asks {
        let mut args = vec![
            "access",
            "--json",
            "--db",
            db,
            "--product-levels",
            PRODUCT_LEVELS,
        ];
        args.extend(who);
        let output = entitled_cli(&args);
        assert!(
            output.status.success(),
            "entitled {args:?}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "entitled {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
        answers.insert((kind, id.clone()), answer);
    }
    answers
}

/// Runs the `entitled` binary with `args` (not `serve`) and waits for it.
fn entitled_cli(args: &[&str]) -> Output {
    entitled()
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("ENTITLED_DB")
        .output()
        .expect("the entitled binary runs")
}

/// splitmix64: small, seedable, and good enough to pick moments and events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
