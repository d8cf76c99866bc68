//! The store's property test on PostgreSQL (the `postgres` binary only): two instances
//! on one database, random events of a few profiles sent to both at once, and the
//! `entitlements` table afterwards is exactly `project()` of the stored events, as one
//! SQLite writer's table is (src/store/ingest.rs, `the_table_is_the_projection_…`).
//!
//! Each case: 1–19 webhooks over 4 profiles (subscription_started, renewed, expired,
//! refunded, renewal_cancelled, billing_issue_detected, and access_level_updated of
//! `premium` or `pro`, active or not, with and without `profiles_sharing_access_level`
//! lists naming the case's profiles), on 6 distinct days so ties happen, of two
//! products, some sandbox; a few of them sent twice; and for some profiles an Adapty
//! API snapshot (a fake Adapty's answer, fetched through `POST /profiles/{id}/refresh`,
//! sometimes twice: the second is a duplicate). Everything is shuffled and sent
//! concurrently, alternately to each instance. Then:
//! - every request answers 200, and each webhook is `stored` exactly once (its copies
//!   `duplicate`);
//! - the stored events are exactly those sent (a webhook's body byte for byte);
//! - every column of the case's rows but the clock's (`reported_active`) equals
//!   `project` of the events under the rules of a daemon with no flags;
//! - both instances answer each profile alike (clock fields aside) within 2 s.
//!
//! Driven by proptest's [`TestRunner`] inside one `#[test]` (the properties of
//! security.rs and hostile.rs do the same): the two daemons and the fake Adapty are
//! started once and serve every case, each case on profiles of its own (a prefix), so
//! a case costs only its requests; a failure still shrinks to a minimal case. The
//! `proptest!` macro would start them per case, or leave them running in statics.

use crate::fake_adapty::{FakeAdapty, Level};
use crate::helpers::*;
use crate::pg_server::with_client;
use chrono::{DateTime, SubsecRound, Utc};
use entitled::adapty::Decoder;
use entitled::projection::{project, Entitlement, Event, Rules};
use entitled::timestamp::Timestamp;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration as StdDuration, Instant};

/// Cases per run: each takes a fraction of a second.
const CASES: u32 = 24;
/// Profiles per case.
const PROFILES: usize = 4;
const LEVELS: [&str; 2] = ["premium", "pro"];
const PRODUCTS: [&str; 2] = [MONTHLY, YEARLY];
/// How long the instances may take to answer a profile alike.
const AGREE_WITHIN: StdDuration = StdDuration::from_secs(2);
/// The top-level field of a sharing declaration.
const SHARING: &str = "profiles_sharing_access_level";

// ---- the cases ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Lifecycle {
    Started,
    Renewed,
    Expired,
    Refunded,
    RenewalCancelled,
    BillingIssue,
}

#[derive(Clone, Debug)]
enum Kind {
    Lifecycle(Lifecycle),
    /// `access_level_updated` of `LEVELS[level]`, listing `shared` (indices of the
    /// case's profiles; its own and repeats included: the parser drops them) when not
    /// empty.
    Updated {
        level: usize,
        active: bool,
        shared: Vec<usize>,
    },
}

/// One webhook: of profile `profile` (an index), on `day`, expiring on `expiry`.
#[derive(Clone, Debug)]
struct Hook {
    kind: Kind,
    profile: usize,
    day: i64,
    expiry: Option<i64>,
    product: usize,
    sandbox: bool,
}

/// One level of an API snapshot: until `expiry` (`None`: lifetime).
#[derive(Clone, Debug)]
struct ApiLevel {
    level: usize,
    expiry: Option<i64>,
    product: usize,
    renewing: bool,
}

/// A profile as Adapty's API answers it, at `day`, fetched `refreshes` times.
#[derive(Clone, Debug)]
struct Api {
    day: i64,
    levels: Vec<ApiLevel>,
    refreshes: usize,
}

#[derive(Clone, Debug)]
struct Case {
    hooks: Vec<Hook>,
    /// Per profile, its API snapshot, if any.
    api: Vec<Option<Api>>,
    /// Webhooks sent twice.
    duplicates: Vec<Index>,
    /// The arrival order's shuffle.
    seed: u64,
}

fn arb_hook() -> impl Strategy<Value = Hook> {
    use Lifecycle as L;
    let lifecycle = prop::sample::select(vec![
        L::Started,
        L::Renewed,
        L::Expired,
        L::Refunded,
        L::RenewalCancelled,
        L::BillingIssue,
    ])
    .prop_map(Kind::Lifecycle);
    let updated = (
        0..LEVELS.len(),
        any::<bool>(),
        prop::collection::vec(0..PROFILES, 0..3),
    )
        .prop_map(|(level, active, shared)| Kind::Updated {
            level,
            active,
            shared,
        });
    (
        prop_oneof![6 => lifecycle, 3 => updated],
        0..PROFILES,
        0i64..6, // few days, so ties happen
        prop::option::of(1i64..12),
        0..PRODUCTS.len(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(kind, profile, day, expiry, product, sandbox)| Hook {
            kind,
            profile,
            day,
            expiry,
            product,
            sandbox,
        })
}

fn arb_api() -> impl Strategy<Value = Api> {
    let level = |level: usize| {
        prop::option::of((
            prop::option::weighted(0.8, 1i64..12),
            0..PRODUCTS.len(),
            any::<bool>(),
        ))
        .prop_map(move |spec| {
            spec.map(|(expiry, product, renewing)| ApiLevel {
                level,
                expiry,
                product,
                renewing,
            })
        })
    };
    (0i64..6, level(0), level(1), 1usize..=2).prop_map(|(day, premium, pro, refreshes)| Api {
        day,
        levels: premium.into_iter().chain(pro).collect(),
        refreshes,
    })
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(arb_hook(), 1..20),
        prop::collection::vec(prop::option::weighted(0.2, arb_api()), PROFILES),
        prop::collection::vec(any::<Index>(), 0..4),
        any::<u64>(),
    )
        .prop_map(|(hooks, api, duplicates, seed)| Case {
            hooks,
            api,
            duplicates,
            seed,
        })
}

// ---- time ---------------------------------------------------------------------------

/// Day `n` of the run: day 3 is half a day after the run started, so the instant the
/// clock crosses an expiry (always a whole number of days from day 0) is at least 12 h
/// from any instant of the run: the instances' answers cannot differ by the clock.
fn day(n: i64) -> DateTime<Utc> {
    static ORIGIN: OnceLock<DateTime<Utc>> = OnceLock::new();
    *ORIGIN.get_or_init(|| now().trunc_subsecs(0) - days(3) + hours(12)) + days(n)
}

// ---- what is sent -------------------------------------------------------------------

/// The webhook of `hook`, with id `id`, among the case's `profiles`.
fn webhook(hook: &Hook, id: &str, profiles: &[String]) -> Ev {
    use Lifecycle as L;
    let profile = &profiles[hook.profile];
    let ev = match &hook.kind {
        Kind::Lifecycle(L::Started) => subscription_started(profile),
        Kind::Lifecycle(L::Renewed) => subscription_renewed(profile),
        Kind::Lifecycle(L::Expired) => subscription_expired(profile),
        Kind::Lifecycle(L::Refunded) => subscription_refunded(profile),
        Kind::Lifecycle(L::RenewalCancelled) => subscription_renewal_cancelled(profile),
        Kind::Lifecycle(L::BillingIssue) => billing_issue_detected(profile),
        Kind::Updated {
            level,
            active,
            shared,
        } => {
            let ev = access_level_updated(profile, LEVELS[*level], *active, hook.expiry.map(day))
                .prop("is_refund", json!(!active));
            if shared.is_empty() {
                ev
            } else {
                let list: Vec<Value> = shared
                    .iter()
                    .map(|&p| json!({"profile_id": profiles[p], "customer_user_id": null}))
                    .collect();
                ev.top(SHARING, json!(list))
            }
        }
    };
    let ev = ev
        .id(id)
        .at(day(hook.day))
        .product(PRODUCTS[hook.product])
        .prop(
            "subscription_expires_at",
            json!(hook.expiry.map(|d| adapty_time(day(d)))),
        );
    if hook.sandbox {
        ev.sandbox()
    } else {
        ev
    }
}

/// The fake's levels for an API snapshot.
fn api_levels(api: &Api) -> Vec<Level> {
    api.levels
        .iter()
        .map(|l| {
            let level = match l.expiry {
                Some(d) => {
                    Level::subscription(LEVELS[l.level], day(d)).product(PRODUCTS[l.product])
                }
                None => Level::lifetime(LEVELS[l.level]),
            };
            if l.renewing {
                level
            } else {
                level.renewal_cancelled(day(api.day))
            }
        })
        .collect()
}

/// One request of a case.
#[derive(Clone, Debug)]
enum Arrival {
    /// `POST /webhooks/adapty` of this body.
    Hook { id: String, body: String },
    /// `POST /profiles/{profile}/refresh`.
    Refresh { profile: String },
}

/// What an instance answered to an arrival.
struct Answered {
    to: char,
    arrival: Arrival,
    status: u16,
    json: Value,
    text: String,
}

/// Sends every arrival at once, the `n`th to `a` when `n` is even, else to `b`.
async fn send_all(a: &Daemon, b: &Daemon, arrivals: Vec<Arrival>) -> Vec<Answered> {
    let mut tasks = Vec::with_capacity(arrivals.len());
    for (n, arrival) in arrivals.into_iter().enumerate() {
        let (to, daemon) = if n % 2 == 0 { ('A', a) } else { ('B', b) };
        let client = daemon.client.clone();
        let request = match &arrival {
            Arrival::Hook { body, .. } => client
                .post(daemon.url("/webhooks/adapty"))
                .header("content-type", "application/json")
                .body(body.clone()),
            Arrival::Refresh { profile } => {
                client.post(daemon.url(&format!("/profiles/{profile}/refresh")))
            }
        };
        tasks.push(tokio::spawn(async move {
            let resp = Resp::read(request.send().await, &format!("{arrival:?} to {to}")).await;
            Answered {
                to,
                arrival,
                status: resp.status,
                json: resp.json,
                text: resp.text,
            }
        }));
    }
    let mut answered = Vec::with_capacity(tasks.len());
    for task in tasks {
        answered.push(task.await.expect("a sender task"));
    }
    answered
}

// ---- what is stored -----------------------------------------------------------------

/// The columns of an `entitlements` row that the projection decides (all but the
/// key, `reported_active`, which the clock decides, and `written_xid`), as text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    is_active: bool,
    expires_at: Option<String>,
    starts_at: Option<String>,
    will_renew: bool,
    is_lifetime: bool,
    in_grace_period: bool,
    is_refund: bool,
    store: Option<String>,
    vendor_product_id: Option<String>,
    environment: Option<String>,
    last_event_id: String,
    last_event_type: String,
    last_event_at: String,
    shared_from: Option<String>,
    sharing_group: Option<String>,
}

type Table = BTreeMap<(String, String), Row>;

fn expected_row(e: &Entitlement) -> Row {
    let text = |s: &Option<std::sync::Arc<str>>| s.as_deref().map(str::to_owned);
    Row {
        is_active: e.window.is_active,
        expires_at: e.window.expires_at.map(Timestamp::to_rfc3339),
        starts_at: e.window.starts_at.map(Timestamp::to_rfc3339),
        will_renew: e.will_renew,
        is_lifetime: e.window.is_lifetime,
        in_grace_period: e.in_grace_period,
        is_refund: e.is_refund,
        store: text(&e.store),
        vendor_product_id: text(&e.vendor_product_id),
        environment: text(&e.environment),
        last_event_id: e.last_event_id.to_string(),
        last_event_type: e.last_event_type.name().to_owned(),
        last_event_at: e.last_event_at.to_rfc3339(),
        shared_from: text(&e.shared_from),
        sharing_group: text(&e.sharing_group),
    }
}

/// The stored events of these profiles: `(profile_id, profile_event_id) -> body`.
fn stored_events(url: &str, profiles: &[String]) -> BTreeMap<(String, String), String> {
    let profiles = profiles.to_vec();
    with_client(url, move |client| {
        client
            .query(
                "SELECT profile_id, profile_event_id, body FROM events WHERE profile_id = ANY($1)",
                &[&profiles],
            )
            .expect("the case's events")
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect()
    })
}

/// The `entitlements` rows of these profiles.
fn stored_table(url: &str, profiles: &[String]) -> Table {
    let profiles = profiles.to_vec();
    with_client(url, move |client| {
        client
            .query(
                "SELECT profile_id, access_level_id, is_active, expires_at, starts_at, \
                 will_renew, is_lifetime, in_grace_period, is_refund, store, \
                 vendor_product_id, environment, last_event_id, last_event_type, \
                 last_event_at, shared_from, sharing_group \
                 FROM entitlements WHERE profile_id = ANY($1)",
                &[&profiles],
            )
            .expect("the case's rows")
            .iter()
            .map(|r| {
                let row = Row {
                    is_active: r.get(2),
                    expires_at: r.get(3),
                    starts_at: r.get(4),
                    will_renew: r.get(5),
                    is_lifetime: r.get(6),
                    in_grace_period: r.get(7),
                    is_refund: r.get(8),
                    store: r.get(9),
                    vendor_product_id: r.get(10),
                    environment: r.get(11),
                    last_event_id: r.get(12),
                    last_event_type: r.get(13),
                    last_event_at: r.get(14),
                    shared_from: r.get(15),
                    sharing_group: r.get(16),
                };
                ((r.get(0), r.get(1)), row)
            })
            .collect()
    })
}

/// Where the stored table and the expected one differ, key by key.
fn differences(expected: &Table, stored: &Table) -> String {
    let keys: BTreeSet<&(String, String)> = expected.keys().chain(stored.keys()).collect();
    let mut out = String::new();
    for key in keys {
        let (e, s) = (expected.get(key), stored.get(key));
        if e != s {
            out.push_str(&format!(
                "  {}/{}:\n    expected {e:?}\n    stored   {s:?}\n",
                key.0, key.1
            ));
        }
    }
    out
}

// ---- one case -----------------------------------------------------------------------

struct Instances<'a> {
    a: &'a Daemon,
    b: &'a Daemon,
    fake: &'a FakeAdapty,
}

/// Sends case `n` and checks the property; panics (for proptest to shrink) if not.
async fn run_case(on: &Instances<'_>, n: usize, case: &Case) {
    let prefix = format!("pgprop-{n}");
    let profiles: Vec<String> = (0..PROFILES).map(|p| format!("{prefix}-p{p}")).collect();

    // The webhooks (their ids, their bodies) and the API's answers.
    let hooks: Vec<(String, String, String)> = case
        .hooks
        .iter()
        .enumerate()
        .map(|(i, hook)| {
            let id = format!("{prefix}-e{i:02}");
            let ev = webhook(hook, &id, &profiles);
            (ev.profile_id(), id, ev.0.to_string())
        })
        .collect();
    let mut arrivals: Vec<Arrival> = hooks
        .iter()
        .map(|(_, id, body)| Arrival::Hook {
            id: id.clone(),
            body: body.clone(),
        })
        .collect();
    for d in &case.duplicates {
        let again = d.get(&arrivals[..hooks.len()]).clone();
        arrivals.push(again);
    }
    let mut snapshot_ids = BTreeSet::new();
    for (p, api) in case.api.iter().enumerate() {
        let Some(api) = api else { continue };
        let profile = &profiles[p];
        let at = day(api.day).timestamp_millis();
        on.fake.set_levels(profile, api_levels(api));
        on.fake.set_timestamp(profile, Some(at));
        snapshot_ids.insert((profile.clone(), format!("adapty-api:{profile}:{at}")));
        for _ in 0..api.refreshes {
            arrivals.push(Arrival::Refresh {
                profile: profile.clone(),
            });
        }
    }
    let arrivals = shuffled(&arrivals, case.seed);

    let answered = send_all(on.a, on.b, arrivals).await;
    let order: String = answered
        .iter()
        .map(|a| match &a.arrival {
            Arrival::Hook { id, .. } => format!("  {} <- {id}\n", a.to),
            Arrival::Refresh { profile } => format!("  {} <- refresh {profile}\n", a.to),
        })
        .collect();
    let mut stored_answers: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &answered {
        assert_eq!(
            a.status, 200,
            "{:?} to {}: {} {}\narrivals:\n{order}",
            a.arrival, a.to, a.status, a.text
        );
        if let Arrival::Hook { id, .. } = &a.arrival {
            let status = a.json["status"].as_str().unwrap_or_default();
            assert!(
                status == "stored" || status == "duplicate",
                "{id} to {}: {}",
                a.to,
                a.text
            );
            assert_eq!(a.json["profile_event_id"], json!(id), "{}", a.text);
            *stored_answers.entry(id).or_default() += usize::from(status == "stored");
        }
    }
    for (_, id, _) in &hooks {
        assert_eq!(
            stored_answers.get(id.as_str()),
            Some(&1),
            "{id}: not `stored` exactly once among its copies\narrivals:\n{order}"
        );
    }

    // The stored events are those sent; the projection of them is the table.
    let url = on.a.db_arg();
    let stored = stored_events(&url, &profiles);
    let mut expected_ids: BTreeSet<(String, String)> = hooks
        .iter()
        .map(|(profile, id, _)| (profile.clone(), id.clone()))
        .collect();
    expected_ids.extend(snapshot_ids.iter().cloned());
    let stored_ids: BTreeSet<(String, String)> = stored.keys().cloned().collect();
    assert_eq!(stored_ids, expected_ids, "the stored events");
    let decoder = Decoder::default();
    let decode = |body: &str| -> Event {
        decoder
            .decode(body)
            .unwrap_or_else(|| panic!("a body that does not decode: {body}"))
    };
    let mut events: Vec<Event> = Vec::new();
    for (profile, id, body) in &hooks {
        let kept = &stored[&(profile.clone(), id.clone())];
        assert_eq!(kept, body, "{id}: the stored body is not the one sent");
        events.push(decode(body));
    }
    for key in &snapshot_ids {
        events.push(decode(&stored[key]));
    }
    let expected: Table = project(&events, &Rules::default())
        .iter()
        .map(|((p, l), e)| ((p.to_string(), l.to_string()), expected_row(e)))
        .collect();
    let table = stored_table(&url, &profiles);
    if table != expected {
        let listing: String = case
            .hooks
            .iter()
            .enumerate()
            .map(|(i, h)| format!("  {prefix}-e{i:02}: {h:?}\n"))
            .collect();
        panic!(
            "the table is not the projection of the stored events\n{}\
             webhooks (profile: index into {prefix}-p0..p3; days from the run's day 0):\n\
             {listing}API snapshots by profile: {:?}\narrivals:\n{order}",
            differences(&expected, &table),
            case.api
        );
    }

    // Both instances answer each profile alike.
    for profile in &profiles {
        let started = Instant::now();
        loop {
            let from_a = without_clock(on.a.profile(profile).await);
            let from_b = without_clock(on.b.profile(profile).await);
            if from_a == from_b {
                break;
            }
            assert!(
                started.elapsed() < AGREE_WITHIN,
                "{profile}: the instances disagree after {AGREE_WITHIN:?}\nA: {from_a}\nB: {from_b}\n\
                 arrivals:\n{order}"
            );
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        }
    }
}

#[test]
fn the_table_is_the_projection_whatever_instance_gets_what_in_whatever_order() {
    let key = format!("secret_live_{}", uuid().replace('-', ""));
    let fake = FakeAdapty::start(&key);
    let flags = [
        "--adapty-secret-key",
        &key,
        "--adapty-api-url",
        &fake.url,
        // Only the snapshots the case asks for: no lapse asks Adapty on its own.
        "--verify-before-lapse",
        "off",
    ];
    let a = Daemon::start(&flags);
    let b = Daemon::start_beside(&a, &flags);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a runtime");
    let on = Instances {
        a: &a,
        b: &b,
        fake: &fake,
    };
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 400,
        ..Config::default()
    };
    let runs = AtomicUsize::new(0);
    let started = Instant::now();
    let result = TestRunner::new(config).run(&arb_case(), |case| {
        let n = runs.fetch_add(1, Ordering::Relaxed);
        rt.block_on(run_case(&on, n, &case));
        Ok(())
    });
    if let Err(failure) = result {
        let problems = |daemon: &Daemon| -> String {
            daemon
                .logs()
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .map(|l| format!("  {l}\n"))
                .collect()
        };
        panic!(
            "{failure}\nwarnings and errors of A:\n{}of B:\n{}",
            problems(&a),
            problems(&b)
        );
    }
    eprintln!(
        "pg_property: {} cases in {:?}",
        runs.load(Ordering::Relaxed),
        started.elapsed()
    );
}
