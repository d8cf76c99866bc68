//! A fake of Adapty's server-side API for the tests: a real HTTP server on
//! `127.0.0.1:0`, in a thread of its own with its own runtime, serving
//! `GET /api/v2/server-side-api/profile/` the way Adapty documents it
//! (`../shared/adapty-server-api.md`):
//! - `Authorization: Api-Key <key>` must be the key it was started with, else 401
//!   `not_authenticated`;
//! - exactly one of `adapty-profile-id` / `adapty-customer-user-id` picks the profile
//!   (neither or both: 400), an unknown one is 404 `profile_does_not_exist`;
//! - 200 is `{"data": {...profile...}}` with `timestamp` the fake's clock in
//!   milliseconds unless the test fixed it.
//!
//! The test scripts it per profile (its levels and `customer_user_id`; the next N
//! requests answered 429 with `Retry-After: 1`, 500, or slowly; every request 401),
//! and reads back every request it got: when, which headers, which profile, what it
//! answered.

#![allow(dead_code)]

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The route Adapty serves a profile on.
pub const PROFILE_PATH: &str = "/api/v2/server-side-api/profile/";

/// Adapty's datetime shape in the server-side API: six fraction digits, `+00:00`.
pub fn api_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// One entry of a profile's `access_levels`.
#[derive(Clone, Debug)]
pub struct Level {
    pub access_level_id: String,
    pub store: String,
    pub store_product_id: String,
    pub transaction_id: String,
    pub original_transaction_id: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub purchased_at: DateTime<Utc>,
    pub originally_purchased_at: DateTime<Utc>,
    /// `None`: no expiry (lifetime).
    pub expires_at: Option<DateTime<Utc>>,
    /// Auto-renew turned off at.
    pub renewal_cancelled_at: Option<DateTime<Utc>>,
    pub is_lifetime: bool,
}

impl Level {
    /// An App Store subscription of `com.example.premium.monthly` granting `level`
    /// until `expires_at`, bought a day ago, first bought sixty days ago.
    pub fn subscription(level: &str, expires_at: DateTime<Utc>) -> Level {
        let t = crate::helpers::now();
        Level {
            access_level_id: level.to_owned(),
            store: "app_store".to_owned(),
            store_product_id: crate::helpers::MONTHLY.to_owned(),
            transaction_id: "2000000598765432".to_owned(),
            original_transaction_id: "2000000500000001".to_owned(),
            starts_at: None,
            purchased_at: t - Duration::days(1),
            originally_purchased_at: t - Duration::days(60),
            expires_at: Some(expires_at),
            renewal_cancelled_at: None,
            is_lifetime: false,
        }
    }

    /// A lifetime purchase of `com.example.lifetime`: `expires_at` null.
    pub fn lifetime(level: &str) -> Level {
        let t = crate::helpers::now();
        Level {
            store_product_id: crate::helpers::LIFETIME.to_owned(),
            purchased_at: t - Duration::days(100),
            originally_purchased_at: t - Duration::days(100),
            expires_at: None,
            is_lifetime: true,
            ..Level::subscription(level, t)
        }
    }

    /// Access begins at `t` (may be in the future).
    pub fn starting(mut self, t: DateTime<Utc>) -> Level {
        self.starts_at = Some(t);
        self
    }

    pub fn product(mut self, product: &str) -> Level {
        self.store_product_id = product.to_owned();
        self
    }

    pub fn store(mut self, store: &str) -> Level {
        self.store = store.to_owned();
        self
    }

    /// Auto-renew turned off at `t`.
    pub fn renewal_cancelled(mut self, t: DateTime<Utc>) -> Level {
        self.renewal_cancelled_at = Some(t);
        self
    }

    /// The entry as Adapty writes it.
    pub fn to_json(&self) -> Value {
        json!({
            "access_level_id": self.access_level_id,
            "store": self.store,
            "store_product_id": self.store_product_id,
            "store_base_plan_id": null,
            "store_transaction_id": self.transaction_id,
            "store_original_transaction_id": self.original_transaction_id,
            "offer": null,
            "environment": "Production",
            "starts_at": self.starts_at.map(api_time),
            "purchased_at": api_time(self.purchased_at),
            "originally_purchased_at": api_time(self.originally_purchased_at),
            "expires_at": self.expires_at.map(api_time),
            "renewal_cancelled_at": self.renewal_cancelled_at.map(api_time),
            "billing_issue_detected_at": null,
            "is_in_grace_period": false,
            "cancellation_reason": null,
            "is_refund": false,
            "is_lifetime": self.is_lifetime,
        })
    }
}

/// What the next request(s) for a profile get instead of the normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: 1`.
    TooManyRequests,
    /// 500.
    ServerError,
    /// The normal answer (200 or 404), after this delay.
    Slow(std::time::Duration),
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Request {
    /// When it arrived (the fake's clock).
    pub at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    /// Every header, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The profile it was about: the `adapty-profile-id` header, or the profile the
    /// `adapty-customer-user-id` header resolved to (None: an unknown user, or no
    /// selector).
    pub profile_id: Option<String>,
    /// The status answered.
    pub status: u16,
    /// The `timestamp` of a 200 answer.
    pub timestamp: Option<i64>,
    /// The body answered.
    pub body: String,
}

impl Request {
    /// The value of a header (the first one of that name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug)]
struct Profile {
    customer_user_id: Option<String>,
    levels: Vec<Level>,
    /// A fixed `timestamp`; None: the clock.
    timestamp: Option<i64>,
}

#[derive(Default)]
struct State {
    profiles: HashMap<String, Profile>,
    faults: HashMap<String, VecDeque<Fault>>,
    all_unauthorized: bool,
    requests: Vec<Request>,
}

struct Shared {
    key: String,
    app_id: String,
    state: Mutex<State>,
}

/// The fake, serving until dropped.
pub struct FakeAdapty {
    /// `http://127.0.0.1:PORT`: what `--adapty-api-url` gets.
    pub url: String,
    shared: Arc<Shared>,
    handle: ServerHandle,
}

impl FakeAdapty {
    /// Starts serving, accepting `Api-Key <key>`.
    pub fn start(key: &str) -> FakeAdapty {
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            app_id: "6a1b2c3d-0000-4000-8000-00000000fa4e".to_owned(),
            state: Mutex::default(),
        });
        let data = web::Data::from(shared.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("fake-adapty".to_owned())
            .spawn(move || {
                let system = actix_web::rt::System::new();
                system.block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .route(PROFILE_PATH, web::get().to(profile))
                            .default_service(web::to(elsewhere))
                    })
                    .workers(4)
                    .backlog(1024)
                    .max_connection_rate(1024)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .bind(("127.0.0.1", 0))
                    .expect("the fake Adapty binds a port");
                    let addr = server.addrs()[0];
                    let server = server.run();
                    tx.send((addr, server.handle())).expect("the test waits");
                    let _ = server.await;
                });
            })
            .expect("a thread for the fake Adapty");
        let (addr, handle) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the fake Adapty starts");
        FakeAdapty {
            url: format!("http://{addr}"),
            shared,
            handle,
        }
    }

    pub fn key(&self) -> &str {
        &self.shared.key
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("the fake's state")
    }

    /// Creates or replaces a profile.
    pub fn set_profile(
        &self,
        profile_id: &str,
        customer_user_id: Option<&str>,
        levels: Vec<Level>,
    ) {
        self.state().profiles.insert(
            profile_id.to_owned(),
            Profile {
                customer_user_id: customer_user_id.map(str::to_owned),
                levels,
                timestamp: None,
            },
        );
    }

    /// Replaces a profile's levels (creating it, with no customer_user_id, if new).
    pub fn set_levels(&self, profile_id: &str, levels: Vec<Level>) {
        let mut state = self.state();
        let profile = state
            .profiles
            .entry(profile_id.to_owned())
            .or_insert_with(|| Profile {
                customer_user_id: None,
                levels: Vec::new(),
                timestamp: None,
            });
        profile.levels = levels;
    }

    /// Sets a known profile's customer_user_id.
    pub fn set_customer_user_id(&self, profile_id: &str, customer_user_id: Option<&str>) {
        let mut state = self.state();
        let profile = state
            .profiles
            .get_mut(profile_id)
            .unwrap_or_else(|| panic!("the fake has no profile {profile_id}"));
        profile.customer_user_id = customer_user_id.map(str::to_owned);
    }

    /// Fixes a known profile's `timestamp` (milliseconds), or back to the clock.
    pub fn set_timestamp(&self, profile_id: &str, timestamp_ms: Option<i64>) {
        let mut state = self.state();
        let profile = state
            .profiles
            .get_mut(profile_id)
            .unwrap_or_else(|| panic!("the fake has no profile {profile_id}"));
        profile.timestamp = timestamp_ms;
    }

    /// Forgets a profile: it answers 404 from now on.
    pub fn remove_profile(&self, profile_id: &str) {
        self.state().profiles.remove(profile_id);
    }

    /// The next `n` requests about `profile_id` (by either header) get `fault`, after
    /// any already scripted.
    pub fn fail_next(&self, profile_id: &str, n: usize, fault: Fault) {
        let mut state = self.state();
        let queue = state.faults.entry(profile_id.to_owned()).or_default();
        queue.extend(std::iter::repeat_n(fault, n));
    }

    /// Drops the faults still scripted for a profile.
    pub fn clear_faults(&self, profile_id: &str) {
        self.state().faults.remove(profile_id);
    }

    /// Every request answered 401 (true) or back to checking the key (false).
    pub fn set_unauthorized(&self, all: bool) {
        self.state().all_unauthorized = all;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    pub fn requests_total(&self) -> usize {
        self.state().requests.len()
    }

    /// The requests about a profile (by either header).
    pub fn requests_for(&self, profile_id: &str) -> Vec<Request> {
        self.state()
            .requests
            .iter()
            .filter(|r| r.profile_id.as_deref() == Some(profile_id))
            .cloned()
            .collect()
    }

    /// The requests that named this customer_user_id.
    pub fn requests_for_user(&self, customer_user_id: &str) -> Vec<Request> {
        self.state()
            .requests
            .iter()
            .filter(|r| r.header("adapty-customer-user-id") == Some(customer_user_id))
            .cloned()
            .collect()
    }

    /// The requests so far, shown one a line (for failure messages).
    pub fn describe_requests(&self) -> String {
        self.requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} profile={:?} -> {}",
                    r.at.format("%H:%M:%S%.3f"),
                    r.method,
                    r.path,
                    r.profile_id,
                    r.status
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for FakeAdapty {
    fn drop(&mut self) {
        // The stop command is sent now; the thread ends on its own.
        drop(self.handle.stop(false));
    }
}

fn error_body(status: u16, code: &str, message: &str) -> String {
    json!({
        "errors": [{"source": null, "errors": [message]}],
        "error_code": code,
        "status_code": status,
    })
    .to_string()
}

fn answer(status: u16, body: String, retry_after: bool) -> HttpResponse {
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("a status code"));
    response.content_type("application/json");
    if retry_after {
        response.insert_header(("Retry-After", "1"));
    }
    response.body(body)
}

fn headers_of(req: &HttpRequest) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Any other route: 404, recorded (a test then shows which path was asked).
async fn elsewhere(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let body = json!({"detail": "Not found."}).to_string();
    shared
        .state
        .lock()
        .expect("the fake's state")
        .requests
        .push(Request {
            at: Utc::now(),
            method: req.method().to_string(),
            path: req.uri().to_string(),
            headers: headers_of(&req),
            profile_id: None,
            status: 404,
            timestamp: None,
            body: body.clone(),
        });
    answer(404, body, false)
}

/// What one request gets, decided under the lock.
enum Decision {
    Now(u16, String, bool, Option<i64>),
    /// Answer after a delay: the profile is read again then.
    Later(std::time::Duration),
}

async fn profile(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let arrived = Utc::now();
    let headers = headers_of(&req);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let by_profile = header("adapty-profile-id");
    let by_user = header("adapty-customer-user-id");
    let authorized = header("authorization") == Some(format!("Api-Key {}", shared.key));

    let (decision, profile_id) = {
        let mut state = shared.state.lock().expect("the fake's state");
        let profile_id = match (&by_profile, &by_user) {
            (Some(id), None) => Some(id.clone()),
            (None, Some(user)) => state
                .profiles
                .iter()
                .filter(|(_, p)| p.customer_user_id.as_deref() == Some(user.as_str()))
                .map(|(id, _)| id.clone())
                .min(),
            _ => None,
        };
        let decision = if state.all_unauthorized || !authorized {
            Decision::Now(
                401,
                error_body(401, "not_authenticated", "Invalid API key"),
                false,
                None,
            )
        } else if by_profile.is_some() == by_user.is_some() {
            Decision::Now(
                400,
                error_body(
                    400,
                    "bad_request",
                    "Exactly one of adapty-profile-id and adapty-customer-user-id is required",
                ),
                false,
                None,
            )
        } else {
            let key = profile_id
                .clone()
                .or_else(|| by_user.clone())
                .unwrap_or_default();
            match state.faults.get_mut(&key).and_then(VecDeque::pop_front) {
                Some(Fault::TooManyRequests) => Decision::Now(
                    429,
                    error_body(429, "throttled", "Request was throttled."),
                    true,
                    None,
                ),
                Some(Fault::ServerError) => Decision::Now(
                    500,
                    error_body(500, "server_error", "Internal server error"),
                    false,
                    None,
                ),
                Some(Fault::Slow(delay)) => Decision::Later(delay),
                None => read_profile(&state, &shared.app_id, profile_id.as_deref()),
            }
        };
        (decision, profile_id)
    };

    let (status, body, retry_after, timestamp) = match decision {
        Decision::Now(status, body, retry_after, timestamp) => {
            (status, body, retry_after, timestamp)
        }
        Decision::Later(delay) => {
            actix_web::rt::time::sleep(delay).await;
            let state = shared.state.lock().expect("the fake's state");
            match read_profile(&state, &shared.app_id, profile_id.as_deref()) {
                Decision::Now(status, body, retry_after, timestamp) => {
                    (status, body, retry_after, timestamp)
                }
                Decision::Later(_) => unreachable!("read_profile answers now"),
            }
        }
    };
    shared
        .state
        .lock()
        .expect("the fake's state")
        .requests
        .push(Request {
            at: arrived,
            method: req.method().to_string(),
            path: req.uri().to_string(),
            headers,
            profile_id,
            status,
            timestamp,
            body: body.clone(),
        });
    answer(status, body, retry_after)
}

/// 200 with the profile, or 404.
fn read_profile(state: &State, app_id: &str, profile_id: Option<&str>) -> Decision {
    let found = profile_id.and_then(|id| state.profiles.get(id).map(|p| (id, p)));
    let Some((id, profile)) = found else {
        return Decision::Now(
            404,
            error_body(404, "profile_does_not_exist", "Profile does not exist"),
            false,
            None,
        );
    };
    let timestamp = profile
        .timestamp
        .unwrap_or_else(|| Utc::now().timestamp_millis());
    let body = json!({
        "data": {
            "app_id": app_id,
            "profile_id": id,
            "customer_user_id": profile.customer_user_id,
            "total_revenue_usd": 0,
            "segment_hash": "8f2b3c1e4d5a6b7c",
            "timestamp": timestamp,
            "custom_attributes": [],
            "access_levels": profile.levels.iter().map(Level::to_json).collect::<Vec<_>>(),
            "subscriptions": [],
            "non_subscriptions": [],
        }
    });
    Decision::Now(200, body.to_string(), false, Some(timestamp))
}
