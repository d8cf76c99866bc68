//! Micro-benchmarks of the pure parts, per event and per core (divan, one thread):
//! `adapty::parse` of realistic 2–3 KB webhook bodies, `projection::project` over
//! profiles' events, `projection::fold_all` over one level's history, and `fold` of
//! one event onto a saved state (the in-order ingest path).
//!
//! ```sh
//! cargo bench --bench projection
//! ```
//!
//! divan prints time per iteration and, with the counters below, events per second.
//! The bodies come from the load tools' generator (`entitled_loadgen::gen`).

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use entitled::adapty::{self, EventNames};
use entitled::projection::{self, Event, EventType, Rules};
use entitled_loadgen::gen;

fn main() {
    divan::main();
}

/// Events of `profiles` profiles of the generator (4 each, all event types).
fn events(profiles: u64) -> Vec<gen::GenEvent> {
    (0..profiles)
        .flat_map(|p| gen::profile_events(7, p))
        .collect()
}

/// One subscription renewed monthly `renewals` times, each with its snapshot:
/// `2 × renewals + 1` events of one level (a long-lived subscriber).
fn long_history(renewals: usize) -> Vec<Event> {
    let template = gen::profile_events(7, 1_000_003);
    let start = &template[0];
    let month = 30 * 24 * 3600 * 1_000_000_i64;
    let mut history = vec![gen::GenEvent {
        kind: EventType::SubscriptionStarted,
        alu: None,
        subscription_expires_at: Some(start.at + month),
        ..start.clone()
    }];
    for r in 1..=renewals as i64 {
        let at = start.at + r * month;
        let id = |k: i64| gen::uuid(7, r as u64, k as u64);
        history.push(gen::GenEvent {
            kind: EventType::SubscriptionRenewed,
            at,
            subscription_expires_at: Some(at + month),
            profile_event_id: id(1),
            alu: None,
            ..start.clone()
        });
        history.push(gen::GenEvent {
            kind: EventType::AccessLevelUpdated,
            at: at + 1_000_000,
            subscription_expires_at: Some(at + month),
            profile_event_id: id(2),
            alu: Some(gen::Alu {
                access_level_id: "premium",
                is_active: true,
                expires_at: Some(at + month),
                will_renew: true,
                is_lifetime: false,
                in_grace: false,
                is_refund: false,
            }),
            ..start.clone()
        });
    }
    history.iter().map(gen::to_event).collect()
}

/// `adapty::parse` of realistic bodies (2.4–3.0 KB, all event types).
#[divan::bench]
fn parse(bencher: Bencher) {
    let bodies: Vec<String> = events(64).iter().map(gen::body).collect();
    let names = EventNames::default();
    bencher.counter(ItemsCount::new(bodies.len())).bench(|| {
        for body in &bodies {
            black_box(adapty::parse(black_box(body.as_bytes()), &names).is_ok());
        }
    });
}

/// `projection::project` over the events of many profiles (grouping, ordering, folding).
#[divan::bench(args = [1, 1000])]
fn project(bencher: Bencher, profiles: u64) {
    let events: Vec<Event> = events(profiles).iter().map(gen::to_event).collect();
    let rules = Rules::default();
    bencher
        .counter(ItemsCount::new(events.len()))
        .bench(|| black_box(projection::project(black_box(&events), &rules)));
}

/// `projection::fold_all` over one level's whole history (the out-of-order refold).
#[divan::bench(args = [12, 120])]
fn fold_all(bencher: Bencher, renewals: usize) {
    let history = long_history(renewals);
    bencher
        .counter(ItemsCount::new(history.len()))
        .bench(|| black_box(projection::fold_all(black_box(&history))));
}

/// `projection::fold` of the next event onto a saved state (the in-order path).
#[divan::bench]
fn fold_one(bencher: Bencher) {
    let history = long_history(12);
    let (last, earlier) = history.split_last().expect("a history");
    let saved = projection::fold_all(earlier);
    bencher
        .counter(ItemsCount::new(1usize))
        .bench(|| black_box(projection::fold(black_box(saved.clone()), black_box(last))));
}
