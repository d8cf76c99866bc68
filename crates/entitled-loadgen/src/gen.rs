//! Realistic Adapty webhook bodies, generated deterministically from a namespace and an
//! index, so that the load client, the database generator and the micro-benchmarks
//! all see the same events without storing them.
//!
//! Every profile lives through one of ten 4-event flows (trial → conversion, renewal,
//! cancellation → expiry, billing issue → grace, refund, immediate upgrade, trial
//! cancel/reactivate/expire, pause → deferral, one-time purchases, auto-renew flips)
//! which together use all 20 canonical event types. Bodies carry the fields Adapty
//! sends (envelope, `event_properties` with money, ids and paywall data, attributions,
//! user attributes, integration ids) and weigh 2–3 KB.
//! See /work/shared/adapty-wire-format.md for the format.

use entitled::projection::{Event, EventType, Snapshot};
use entitled::timestamp::Timestamp;
use std::fmt::Write as _;
use std::sync::Arc;

/// Events per profile in every flow.
pub const EVENTS_PER_PROFILE: u64 = 4;

const SECOND: i64 = 1_000_000;
const HOUR: i64 = 3600 * SECOND;
const DAY: i64 = 24 * HOUR;
/// 2031-01-01T00:00:00Z: profiles start within 180 days of it (far from today, so no
/// access expires while a benchmark runs and the cached database never goes stale).
const BASE: i64 = 1_924_992_000 * SECOND;

/// SplitMix64: small, fast, good enough for load generation, and reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uuid-shaped id (version 4 layout), a pure function of its inputs.
pub fn uuid(namespace: u64, index: u64, salt: u64) -> String {
    let a = mix(namespace ^ mix(index ^ mix(salt)));
    let b = mix(a ^ 0x5851_f42d_4c95_7f2d);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// The profile id of profile `p` of a namespace.
pub fn profile_id(namespace: u64, p: u64) -> String {
    uuid(namespace, p, 1)
}

/// The `access_level_updated` part of an event.
#[derive(Clone, Debug)]
pub struct Alu {
    pub access_level_id: &'static str,
    pub is_active: bool,
    pub expires_at: Option<i64>,
    pub will_renew: bool,
    pub is_lifetime: bool,
    pub in_grace: bool,
    pub is_refund: bool,
}

/// One generated event, before it becomes a body.
#[derive(Clone, Debug)]
pub struct GenEvent {
    pub kind: EventType,
    pub profile_id: String,
    pub profile_event_id: String,
    pub customer_user_id: Option<String>,
    /// `event_datetime`, microseconds since the epoch.
    pub at: i64,
    pub subscription_expires_at: Option<i64>,
    pub product: &'static str,
    pub store: &'static str,
    pub environment: &'static str,
    pub cancellation_reason: Option<&'static str>,
    pub alu: Option<Alu>,
    /// Drives the fields that decide nothing (money, country, paywall, devices).
    pub noise: u64,
    pub install_at: i64,
    pub original_purchase_at: i64,
}

const PRODUCTS: [(&str, i64); 3] = [
    ("com.example.app.premium.monthly", 30 * DAY),
    ("com.example.app.premium.yearly", 365 * DAY),
    ("com.example.app.premium.weekly", 7 * DAY),
];
const COINS: &str = "com.example.app.coins.500";

/// The four events of profile `p` of a namespace, in `event_datetime` order.
pub fn profile_events(namespace: u64, p: u64) -> Vec<GenEvent> {
    profile_events_with_id(namespace, p, profile_id(namespace, p))
}

/// The same, under a given profile id (e.g. `bench-mixed-…` for rows deleted later).
pub fn profile_events_with_id(namespace: u64, p: u64, profile_id: String) -> Vec<GenEvent> {
    use EventType as T;
    let mut rng = Rng::new(mix(namespace.wrapping_mul(31) ^ p));
    let b = BASE + rng.below(180 * DAY as u64) as i64 + rng.below(SECOND as u64) as i64;
    let (product, period) = PRODUCTS[rng.below(3) as usize];
    let customer_user_id = rng.percent(70).then(|| format!("user-{namespace}-{p}"));
    let store = match rng.below(100) {
        0..=59 => "app_store",
        60..=97 => "play_store",
        _ => "stripe",
    };
    let environment = if rng.percent(3) {
        "Sandbox"
    } else {
        "Production"
    };
    let install_at = b - rng.below(30 * DAY as u64) as i64;
    let base = GenEvent {
        kind: T::SubscriptionStarted,
        profile_id,
        profile_event_id: String::new(),
        customer_user_id,
        at: b,
        subscription_expires_at: None,
        product,
        store,
        environment,
        cancellation_reason: None,
        alu: None,
        noise: rng.next_u64(),
        install_at,
        original_purchase_at: b,
    };
    let ev = |kind: EventType, at: i64, exp: Option<i64>| GenEvent {
        kind,
        at,
        subscription_expires_at: exp,
        ..base.clone()
    };
    let alu = |at: i64, active: bool, exp: Option<i64>, renew: bool| GenEvent {
        alu: Some(Alu {
            access_level_id: "premium",
            is_active: active,
            expires_at: exp,
            will_renew: renew,
            is_lifetime: false,
            in_grace: false,
            is_refund: false,
        }),
        ..ev(T::AccessLevelUpdated, at, exp)
    };
    let with_reason = |mut e: GenEvent, reason: &'static str| {
        e.cancellation_reason = Some(reason);
        e
    };
    let (trial, p2) = (3 * DAY, b + period);
    let mut events = match rng.below(100) {
        // Trial, then conversion.
        0..=29 => vec![
            ev(T::TrialStarted, b, Some(b + trial)),
            alu(b + SECOND, true, Some(b + trial), true),
            ev(T::TrialConverted, b + trial, Some(b + trial + period)),
            alu(b + trial + SECOND, true, Some(b + trial + period), true),
        ],
        // Purchase, then a renewal.
        30..=54 => vec![
            ev(T::SubscriptionStarted, b, Some(p2)),
            alu(b + SECOND, true, Some(p2), true),
            ev(T::SubscriptionRenewed, p2, Some(p2 + period)),
            alu(p2 + SECOND, true, Some(p2 + period), true),
        ],
        // Cancellation, then expiry with no snapshot.
        55..=64 => vec![
            ev(T::SubscriptionStarted, b, Some(p2)),
            ev(T::SubscriptionRenewalCancelled, b + 5 * DAY, Some(p2)),
            alu(b + 5 * DAY + SECOND, true, Some(p2), false),
            with_reason(
                ev(T::SubscriptionExpired, p2, Some(p2)),
                "voluntarily_cancelled",
            ),
        ],
        // Billing issue, then grace.
        65..=69 => {
            let grace_end = p2 + 16 * DAY;
            let mut snapshot = alu(p2 + SECOND, true, Some(grace_end), true);
            if let Some(a) = snapshot.alu.as_mut() {
                a.in_grace = true;
            }
            vec![
                ev(T::SubscriptionRenewed, b, Some(p2)),
                ev(T::BillingIssueDetected, p2, Some(p2)),
                ev(T::EnteredGracePeriod, p2, Some(grace_end)),
                snapshot,
            ]
        }
        // Refund.
        70..=73 => {
            let refund_at = b + 10 * DAY;
            let mut snapshot = alu(refund_at + SECOND, false, Some(refund_at), false);
            if let Some(a) = snapshot.alu.as_mut() {
                a.is_refund = true;
            }
            vec![
                ev(T::SubscriptionStarted, b, Some(p2)),
                alu(b + SECOND, true, Some(p2), true),
                with_reason(
                    ev(T::SubscriptionRefunded, refund_at, Some(refund_at)),
                    "refund",
                ),
                snapshot,
            ]
        }
        // Immediate upgrade to the yearly plan.
        74..=77 => {
            let up = b + 15 * DAY;
            let (yearly, year) = PRODUCTS[1];
            let mut new_start = ev(T::SubscriptionStarted, up, Some(up + year));
            new_start.product = yearly;
            let mut snapshot = alu(up + SECOND, true, Some(up + year), true);
            snapshot.product = yearly;
            vec![
                ev(T::SubscriptionStarted, b, Some(p2)),
                with_reason(ev(T::SubscriptionRefunded, up, Some(up)), "upgraded"),
                new_start,
                snapshot,
            ]
        }
        // Trial: renewal off, back on, then expired.
        78..=83 => vec![
            ev(T::TrialStarted, b, Some(b + 7 * DAY)),
            ev(T::TrialRenewalCancelled, b + DAY, Some(b + 7 * DAY)),
            ev(T::TrialRenewalReactivated, b + 2 * DAY, Some(b + 7 * DAY)),
            with_reason(
                ev(T::TrialExpired, b + 7 * DAY, Some(b + 7 * DAY)),
                "billing_error",
            ),
        ],
        // Play pause, then a deferral.
        84..=87 => vec![
            ev(T::SubscriptionStarted, b, Some(p2)),
            ev(T::SubscriptionRenewalReactivated, b + 2 * DAY, Some(p2)),
            ev(T::SubscriptionPaused, p2 - DAY, Some(p2)),
            ev(T::SubscriptionDeferred, p2, Some(p2 + 30 * DAY)),
        ],
        // One-time purchases and annotations: no level (coins are not listed).
        88..=91 => {
            let mut coins = ev(T::NonSubscriptionPurchase, b, None);
            coins.product = COINS;
            let mut refund = ev(T::NonSubscriptionPurchaseRefunded, b + 2 * DAY, None);
            refund.product = COINS;
            vec![
                coins,
                ev(T::TrialActive, b + HOUR, Some(b + trial)),
                refund,
                ev(T::SubscriptionActive, b + 3 * DAY, Some(p2)),
            ]
        }
        // Auto-renew off and on again, then a renewal.
        _ => vec![
            ev(T::SubscriptionStarted, b, Some(p2)),
            ev(T::SubscriptionRenewalCancelled, b + 3 * DAY, Some(p2)),
            ev(T::SubscriptionRenewalReactivated, b + 4 * DAY, Some(p2)),
            ev(T::SubscriptionRenewed, p2, Some(p2 + period)),
        ],
    };
    for (step, e) in events.iter_mut().enumerate() {
        e.profile_event_id = uuid(namespace, p, 100 + step as u64);
        e.noise = mix(e.noise ^ step as u64);
    }
    events
}

/// Event `i` of a namespace: event `i % 4` of profile `i / 4`.
pub fn event(namespace: u64, i: u64) -> GenEvent {
    profile_events(namespace, i / EVENTS_PER_PROFILE).swap_remove((i % EVENTS_PER_PROFILE) as usize)
}

/// Adapty's datetime shape: six fraction digits and `+0000`.
pub fn adapty_time(micros: i64) -> String {
    Timestamp::from_micros(micros)
        .to_datetime()
        .format("%Y-%m-%dT%H:%M:%S%.6f+0000")
        .to_string()
}

fn opt_time(t: Option<i64>) -> String {
    t.map_or_else(|| "null".to_owned(), |t| format!("\"{}\"", adapty_time(t)))
}

fn opt_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), |s| format!("\"{s}\""))
}

const COUNTRIES: [&str; 8] = ["US", "DE", "GB", "FR", "BR", "JP", "IN", "CA"];
const CURRENCIES: [&str; 8] = ["USD", "EUR", "GBP", "EUR", "BRL", "JPY", "INR", "CAD"];

/// The webhook body of an event, as Adapty would POST it.
pub fn body(e: &GenEvent) -> String {
    let mut n = Rng::new(e.noise);
    let c = n.below(COUNTRIES.len() as u64) as usize;
    let refund = matches!(
        e.kind,
        EventType::SubscriptionRefunded | EventType::NonSubscriptionPurchaseRefunded
    );
    let trial = matches!(e.kind, EventType::TrialStarted | EventType::TrialActive);
    let price = if trial {
        0.0
    } else {
        [4.99, 9.99, 49.99, 79.99][n.below(4) as usize]
    };
    let price = if refund { -price } else { price };
    let fx = 0.8 + n.below(40) as f64 / 100.0;
    let tx = 200_000_000_000_000 + n.below(1_000_000_000_000);
    let (idfv, idfa) = (uuid(e.noise, 1, 2), uuid(e.noise, 3, 4));
    let mut props = String::with_capacity(1600);
    let _ = write!(
        props,
        r#"{{"store":"{store}","currency":"{currency}","price_usd":{price:.2},"price_local":{local:.2},"proceeds_usd":{proceeds:.4},"proceeds_local":{proceeds_local:.4},"net_revenue_usd":{net:.4},"net_revenue_local":{net_local:.4},"tax_amount_usd":{tax:.4},"tax_amount_local":{tax_local:.4},"environment":"{env}","vendor_product_id":"{product}","transaction_id":"{tx}","original_transaction_id":"{otx}","purchase_date":"{purchase}","original_purchase_date":"{original}","subscription_expires_at":{expires},"profile_event_id":"{id}","profile_id":"{profile}","event_datetime":"{at}","store_country":"{country}","profile_country":"{country}","profile_ip_address":"10.{ip1}.{ip2}.{ip3}","profile_total_revenue_usd":{total:.2},"profile_has_access_level":{has},"cancellation_reason":{reason},"trial_duration":{trial_duration},"consecutive_payments":{payments},"rate_after_first_year":false,"promotional_offer_id":null,"paywall_name":"onboarding_paywall_v{pw}","paywall_revision":"{rev}","variation_id":"{variation}","developer_id":"main_placement","ab_test_name":"price_test_{pw}","ab_test_revision":{rev},"cohort_name":"All Users","store_offer_category":null,"store_offer_discount_type":null,"original_price_usd":{price:.2},"original_price_local":{local:.2}"#,
        store = e.store,
        currency = CURRENCIES[c],
        local = price * fx,
        proceeds = price * 0.7,
        proceeds_local = price * fx * 0.7,
        net = price * 0.6,
        net_local = price * fx * 0.6,
        tax = price * 0.1,
        tax_local = price * fx * 0.1,
        env = e.environment,
        product = e.product,
        otx = tx - n.below(1_000_000),
        purchase = adapty_time(e.at),
        original = adapty_time(e.original_purchase_at),
        expires = opt_time(e.subscription_expires_at),
        id = e.profile_event_id,
        profile = e.profile_id,
        at = adapty_time(e.at),
        country = COUNTRIES[c],
        ip1 = n.below(256),
        ip2 = n.below(256),
        ip3 = n.below(256),
        total = price.abs() * (1 + n.below(12)) as f64,
        has = e.alu.as_ref().is_none_or(|a| a.is_active),
        reason = opt_str(e.cancellation_reason),
        trial_duration = opt_str(trial.then_some("3 days")),
        payments = n.below(24),
        pw = 1 + n.below(9),
        rev = 1 + n.below(30),
        variation = uuid(e.noise, 5, 6),
    );
    if let Some(a) = &e.alu {
        let _ = write!(
            props,
            r#","access_level_id":"{level}","is_active":{active},"expires_at":{expires},"starts_at":null,"will_renew":{renew},"is_lifetime":{lifetime},"is_in_grace_period":{grace},"is_refund":{refund},"activated_at":"{activated}","renewed_at":"{renewed}","billing_issue_detected_at":{billing},"active_introductory_offer_type":null,"active_promotional_offer_type":null,"active_promotional_offer_id":null"#,
            level = a.access_level_id,
            active = a.is_active,
            expires = opt_time(a.expires_at),
            renew = a.will_renew,
            lifetime = a.is_lifetime,
            grace = a.in_grace,
            refund = a.is_refund,
            activated = adapty_time(e.original_purchase_at),
            renewed = adapty_time(e.at),
            billing = if a.in_grace {
                format!("\"{}\"", adapty_time(e.at))
            } else {
                "null".to_owned()
            },
        );
    }
    props.push('}');
    let android = e.store == "play_store";
    let user_agent = if android {
        "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UQ1A.240205.004)"
    } else {
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
    };
    format!(
        r#"{{"profile_id":"{profile}","customer_user_id":{cuid},"idfv":"{idfv}","idfa":{idfa},"advertising_id":"{adid}","profile_install_datetime":"{install}","user_agent":"{user_agent}","email":{email},"event_type":"{kind}","event_datetime":"{at}","event_properties":{props},"event_api_version":1,"attributions":{{"appsflyer":{{"ad_set":"broad_us_{set}","status":"non_organic","channel":"Facebook Ads","ad_group":null,"campaign":"summer_sale_2031_{set}","creative":"video_{creative}","created_at":"{install}","network_user_id":"{net_user}-{creative}"}}}},"user_attributes":{{"favourite_sport":"tennis","onboarding_completed":"true","app_language":"en","theme":"dark"}},"integration_ids":{{"firebase_app_instance_id":"{firebase:032x}","branch_id":null,"one_signal_player_id":"{onesignal}","amplitude_user_id":{cuid}}},"profiles_sharing_access_level":null,"play_store_purchase_token":{token}}}"#,
        profile = e.profile_id,
        cuid = opt_str(e.customer_user_id.as_deref()),
        idfa = if android {
            "null".to_owned()
        } else {
            format!("\"{idfa}\"")
        },
        adid = if android {
            uuid(e.noise, 7, 8)
        } else {
            String::new()
        },
        install = adapty_time(e.install_at),
        email = opt_str(
            e.customer_user_id
                .as_ref()
                .map(|u| format!("{u}@example.com"))
                .as_deref()
        ),
        kind = e.kind.name(),
        at = adapty_time(e.at),
        set = n.below(40),
        creative = n.below(1000),
        net_user = 1_700_000_000_000 + n.below(1_000_000_000),
        firebase = u128::from(n.next_u64()) << 64 | u128::from(n.next_u64()),
        onesignal = uuid(e.noise, 9, 10),
        token = if android {
            format!(
                "\"{}.AO-J1Oz{:016x}{:016x}\"",
                idfv,
                n.next_u64(),
                n.next_u64()
            )
        } else {
            "null".to_owned()
        },
    )
}

/// The event as entitled's parser reads `body(e)`: for the projection and the checks.
pub fn to_event(e: &GenEvent) -> Event {
    let time = Timestamp::from_micros;
    Event {
        id: Arc::from(e.profile_event_id.as_str()),
        profile_id: Arc::from(e.profile_id.as_str()),
        customer_user_id: e.customer_user_id.as_deref().map(Arc::from),
        event_type: Some(e.kind),
        event_datetime: time(e.at),
        environment: Some(Arc::from(e.environment)),
        store: Some(Arc::from(e.store)),
        vendor_product_id: Some(Arc::from(e.product)),
        subscription_expires_at: e.subscription_expires_at.map(time),
        cancellation_reason: e.cancellation_reason.map(Arc::from),
        snapshot: e.alu.as_ref().map(|a| Snapshot {
            access_level_id: Arc::from(a.access_level_id),
            is_active: a.is_active,
            expires_at: a.expires_at.map(time),
            starts_at: None,
            will_renew: a.will_renew,
            is_lifetime: a.is_lifetime,
            is_in_grace_period: a.in_grace,
            is_refund: a.is_refund,
        }),
        shared_with: Vec::new(),
        api_levels: None,
    }
}
