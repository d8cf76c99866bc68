//! The read API: "is this profile (or user) premium right now?", answered from the
//! in-memory index; "…as of then?" (`?at=`) and "why?" (`/explain`) answered from the
//! event log. "No" is the common answer, not an error: an unknown profile or user is a
//! 200 with `"premium": false`.

use super::access_body;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::adapty;
use crate::index::{Index, LevelAccess};
use crate::projection;
use crate::store::{self, history};
use crate::telemetry;
use crate::timestamp::Timestamp;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};
use utoipa::{IntoParams, ToSchema};

/// Callers may cache an answer this long at most, even when nothing is scheduled to
/// change it: a refund or a new purchase can come at any moment.
pub const MAX_CACHE_SECONDS: i64 = 60;
/// At most this many ids in one `POST /access/lookup`.
pub const MAX_BATCH_IDS: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccessQuery {
    /// Answer for this access level only.
    access_level: Option<String>,
    /// Answer as of this instant (RFC 3339 or Adapty's `+0000` shape): what the events
    /// with `event_datetime` up to it said, evaluated at it.
    at: Option<String>,
}

/// One access level. Datetimes are RFC 3339 UTC with six fraction digits.
#[derive(Debug, Serialize, ToSchema)]
pub struct LevelView {
    /// Grants access at `checked_at`: the event said active, and the clock has not
    /// ended it.
    active: bool,
    #[schema(value_type = Option<String>)]
    expires_at: Option<Timestamp>,
    #[schema(value_type = Option<String>)]
    starts_at: Option<Timestamp>,
    will_renew: bool,
    is_lifetime: bool,
    in_grace_period: bool,
    is_refund: bool,
    #[schema(value_type = Option<String>)]
    store: Option<Arc<str>>,
    #[schema(value_type = Option<String>)]
    vendor_product_id: Option<Arc<str>>,
    #[schema(value_type = Option<String>)]
    environment: Option<Arc<str>>,
    /// `event_datetime` of the newest event folded into the level.
    #[schema(value_type = String)]
    updated_at: Timestamp,
    /// On the users route: the profile this level comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    profile_id: Option<Arc<str>>,
    #[serde(skip)]
    reach: (bool, Option<Timestamp>),
}

impl LevelView {
    fn new(level: &LevelAccess, at: Timestamp, profile_id: Option<Arc<str>>) -> Self {
        let w = level.window();
        LevelView {
            active: w.grants_at(at),
            expires_at: w.expires_at,
            starts_at: w.starts_at,
            will_renew: level.will_renew,
            is_lifetime: w.is_lifetime,
            in_grace_period: level.in_grace_period,
            is_refund: level.is_refund,
            store: level.labels.store.clone(),
            vendor_product_id: level.labels.vendor_product_id.clone(),
            environment: level.labels.environment.clone(),
            updated_at: level.updated_at,
            profile_id,
            reach: (w.is_lifetime || w.expires_at.is_none(), w.expires_at),
        }
    }
}

/// The next instant at which a level's answer changes with no new event: its expiry
/// while it grants, its start while it waits for one.
pub(super) fn next_change(level: &LevelAccess, at: Timestamp) -> Option<Timestamp> {
    let w = level.window();
    if w.grants_at(at) {
        w.expires_at.filter(|_| !w.is_lifetime)
    } else if w.is_active {
        w.starts_at.filter(|start| *start > at)
    } else {
        None
    }
}

/// A profile's access. An unknown profile is `premium: false` with no levels.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileAnswer {
    profile_id: String,
    #[schema(value_type = Option<String>)]
    customer_user_id: Option<Arc<str>>,
    /// Any listed level grants access at `checked_at`.
    premium: bool,
    #[schema(value_type = BTreeMap<String, LevelView>)]
    access_levels: BTreeMap<Arc<str>, LevelView>,
    /// The next instant this answer can change with no new event (an expiry, a grace
    /// end, a `starts_at`); null when nothing is scheduled.
    #[schema(value_type = Option<String>)]
    valid_until: Option<Timestamp>,
    // Must stay the last field: the ETag is a hash of the answer before it.
    /// The instant the answer is for: now, or `at`.
    #[schema(value_type = String)]
    checked_at: Timestamp,
}

#[cfg(test)]
impl ProfileAnswer {
    pub(super) fn valid_until(&self) -> Option<Timestamp> {
        self.valid_until
    }
}

/// A user's access over every profile that carries the `customer_user_id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserAnswer {
    customer_user_id: String,
    #[schema(value_type = Vec<String>)]
    profile_ids: Vec<Arc<str>>,
    premium: bool,
    #[schema(value_type = BTreeMap<String, LevelView>)]
    access_levels: BTreeMap<Arc<str>, LevelView>,
    #[schema(value_type = Option<String>)]
    valid_until: Option<Timestamp>,
    // Must stay the last field: the ETag is a hash of the answer before it.
    /// The instant the answer is for: now, or `at`.
    #[schema(value_type = String)]
    checked_at: Timestamp,
}

pub(super) fn wanted(level: &LevelAccess, access_level: Option<&str>) -> bool {
    access_level.is_none_or(|wanted| **level.access_level_id() == *wanted)
}

/// The answer for one profile from an index, evaluated at `at`.
pub fn profile_answer(
    index: &Index,
    profile_id: &str,
    access_level: Option<&str>,
    at: Timestamp,
) -> ProfileAnswer {
    let mut valid_until: Option<Timestamp> = None;
    let (customer_user_id, access_levels) = index.with_profile(profile_id, |known| {
        let Some(known) = known else {
            return (None, BTreeMap::new());
        };
        let levels = known
            .levels
            .iter()
            .filter(|level| wanted(level, access_level))
            .map(|level| {
                valid_until = earliest(valid_until, next_change(level, at));
                (
                    level.access_level_id().clone(),
                    LevelView::new(level, at, None),
                )
            })
            .collect();
        (known.customer_user_id.clone(), levels)
    });
    ProfileAnswer {
        profile_id: profile_id.to_owned(),
        customer_user_id,
        premium: access_levels.values().any(|l| l.active),
        access_levels,
        valid_until,
        checked_at: at,
    }
}

/// The answer for a user over `profile_ids` from an index, evaluated at `at`.
pub fn user_answer(
    index: &Index,
    customer_user_id: &str,
    profile_ids: Vec<Arc<str>>,
    access_level: Option<&str>,
    at: Timestamp,
) -> UserAnswer {
    let mut access_levels: BTreeMap<Arc<str>, LevelView> = BTreeMap::new();
    let mut valid_until: Option<Timestamp> = None;
    for profile_id in &profile_ids {
        index.with_profile(profile_id, |known| {
            for level in known.iter().flat_map(|p| &p.levels) {
                if !wanted(level, access_level) {
                    continue;
                }
                valid_until = earliest(valid_until, next_change(level, at));
                let candidate = LevelView::new(level, at, Some(profile_id.clone()));
                match access_levels.get(level.access_level_id()) {
                    Some(best) if better(best, &candidate) != Ordering::Less => {}
                    _ => {
                        access_levels.insert(level.access_level_id().clone(), candidate);
                    }
                }
            }
        });
    }
    UserAnswer {
        customer_user_id: customer_user_id.to_owned(),
        profile_ids,
        premium: access_levels.values().any(|l| l.active),
        access_levels,
        valid_until,
        checked_at: at,
    }
}

pub(super) fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Across a user's profiles, the level to show: an active one over an inactive one;
/// among those, lifetime or no end, then the later `expires_at`, then the newer event.
fn better(a: &LevelView, b: &LevelView) -> Ordering {
    (a.active, a.reach, &a.updated_at).cmp(&(b.active, b.reach, &b.updated_at))
}

/// Is this profile premium right now (or as of `at`)?
#[utoipa::path(
    tag = "access",
    params(("profile_id" = String, Path, description = "Adapty's profile id"), AccessQuery),
    responses(
        (status = 200, body = ProfileAnswer, description = "With ETag and Cache-Control derived from valid_until"),
        (status = 304, description = "If-None-Match matched the ETag"),
        (status = 400, description = "`at` does not parse", body = ErrorBody),
        (status = 401, description = "--read-token is set and was not given", body = ErrorBody),
        (status = 503, description = "Start-up is not finished", body = ErrorBody)
    ),
    security((), ("read_token" = []))
)]
#[get("/profiles/{profile_id}/access")]
pub async fn profile(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<AccessQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    ready_to_read(&request, &state)?;
    telemetry::lookup("profile");
    let profile_id = path.into_inner();
    let level = query.access_level.as_deref();
    // Written straight from the index entry (access_body.rs): the same bytes as
    // serializing `profile_answer(…)`, at a fraction of the cost.
    let past: Index;
    let (index, checked_at) = match parse_at(&query)? {
        None => (&*state.index, Timestamp::now()),
        Some(at) => {
            past = as_of(&state, vec![profile_id.clone()], at).await?;
            (&past, at)
        }
    };
    let mut body = Vec::with_capacity(1024);
    let valid_until = index.with_profile(&profile_id, |known| {
        access_body::write_profile(&mut body, &profile_id, known, level, checked_at)
    });
    let head = body.len();
    access_body::close(&mut body, checked_at);
    Ok(cacheable(&request, valid_until, body, head))
}

/// Is this user (your own id, over all their profiles) premium right now (or as of `at`)?
#[utoipa::path(
    tag = "access",
    params(("customer_user_id" = String, Path, description = "Your own user id, as set in Adapty"), AccessQuery),
    responses(
        (status = 200, body = UserAnswer, description = "With ETag and Cache-Control derived from valid_until"),
        (status = 304, description = "If-None-Match matched the ETag"),
        (status = 400, description = "`at` does not parse", body = ErrorBody),
        (status = 401, description = "--read-token is set and was not given", body = ErrorBody),
        (status = 503, description = "Start-up is not finished", body = ErrorBody)
    ),
    security((), ("read_token" = []))
)]
#[get("/users/{customer_user_id}/access")]
pub async fn user(
    request: HttpRequest,
    path: web::Path<String>,
    query: web::Query<AccessQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    ready_to_read(&request, &state)?;
    telemetry::lookup("user");
    let customer_user_id = path.into_inner();
    let level = query.access_level.as_deref();
    let profile_ids = state.index.profiles_of_user(&customer_user_id);
    let answer = match parse_at(&query)? {
        None => user_answer(
            &state.index,
            &customer_user_id,
            profile_ids,
            level,
            Timestamp::now(),
        ),
        Some(at) => {
            let ids = profile_ids.iter().map(|id| id.to_string()).collect();
            let past = as_of(&state, ids, at).await?;
            user_answer(&past, &customer_user_id, profile_ids, level, at)
        }
    };
    // Serializing these types cannot fail: every map has string keys.
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    let head = before_checked_at(&body);
    Ok(cacheable(&request, answer.valid_until, body, head))
}

/// Up to 1,000 profile ids and customer user ids in one request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LookupRequest {
    #[serde(default)]
    profile_ids: Vec<String>,
    #[serde(default)]
    customer_user_ids: Vec<String>,
    /// Answer for this access level only.
    access_level: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LookupAnswer {
    /// In the order asked.
    profiles: Vec<ProfileAnswer>,
    /// In the order asked.
    users: Vec<UserAnswer>,
    checked_at: String,
}

/// Many profiles and users in one round trip, each answered as the single lookups
/// answer, all at one instant.
#[utoipa::path(
    tag = "access",
    request_body = LookupRequest,
    responses(
        (status = 200, body = LookupAnswer),
        (status = 400, description = "Not the expected JSON, or over 1,000 ids", body = ErrorBody),
        (status = 401, description = "--read-token is set and was not given", body = ErrorBody),
        (status = 503, description = "Start-up is not finished", body = ErrorBody)
    ),
    security((), ("read_token" = []))
)]
#[post("/access/lookup")]
pub async fn lookup(
    request: HttpRequest,
    body: web::Json<LookupRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    ready_to_read(&request, &state)?;
    let asked = body.profile_ids.len() + body.customer_user_ids.len();
    if asked > MAX_BATCH_IDS {
        return Err(ApiError::BadRequest(format!(
            "{asked} ids asked; at most {MAX_BATCH_IDS} in one lookup"
        )));
    }
    telemetry::lookup("batch");
    let now = Timestamp::now();
    let level = body.access_level.as_deref();
    let profiles = body
        .profile_ids
        .iter()
        .map(|id| profile_answer(&state.index, id, level, now))
        .collect();
    let users = body
        .customer_user_ids
        .iter()
        .map(|id| {
            user_answer(
                &state.index,
                id,
                state.index.profiles_of_user(id),
                level,
                now,
            )
        })
        .collect();
    Ok(HttpResponse::Ok().json(LookupAnswer {
        profiles,
        users,
        checked_at: now.to_rfc3339(),
    }))
}

/// One event as `explain` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainedEvent {
    profile_event_id: String,
    /// As received.
    event_type: String,
    /// Adapty's canonical name; null when no name map knows it.
    canonical_type: Option<String>,
    event_datetime: String,
    received_at: Option<String>,
    vendor_product_id: Option<String>,
    /// What it changed in the level, in words; empty when nothing.
    changed: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainedLevel {
    /// The state now (as the access route shows it).
    state: Option<LevelView>,
    /// The event that set the current `expires_at`.
    expires_at_set_by: Option<String>,
    /// Every event folded into the level, in the order they were folded.
    events: Vec<ExplainedEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainAnswer {
    profile_id: String,
    access_levels: BTreeMap<String, ExplainedLevel>,
    /// Stored events that touch no level (unknown or annotation types, ignored sandbox
    /// events, consumables, snapshots without a level).
    ignored_events: Vec<ExplainedEvent>,
    checked_at: String,
}

/// Why is this profile (not) premium? Per level, the events that produced the state,
/// what each changed, and which one set `expires_at`.
#[utoipa::path(
    tag = "access",
    params(("profile_id" = String, Path, description = "Adapty's profile id")),
    responses(
        (status = 200, body = ExplainAnswer),
        (status = 401, description = "--read-token is set and was not given", body = ErrorBody),
        (status = 503, description = "The database cannot be read now", body = ErrorBody)
    ),
    security((), ("read_token" = []))
)]
#[get("/profiles/{profile_id}/access/explain")]
pub async fn explain(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    ready_to_read(&request, &state)?;
    let profile_id = path.into_inner();
    let db = state.db_path.clone();
    let (rules, decoder) = (state.rules.clone(), state.decoder.clone());
    let id = profile_id.clone();
    let up_to = state.status.released_event();
    let answer = web::block(move || {
        let conn = store::open_read_only(&db)?;
        let logged = history::profile_events(&conn, &id, up_to, &decoder)?;
        Ok::<_, store::StoreError>(explain_profile(&id, &logged, &rules, Timestamp::now()))
    })
    .await
    .map_err(|e| ApiError::store_unavailable(&e))?
    .map_err(|e| ApiError::store_unavailable(&e))?;
    Ok(HttpResponse::Ok().json(answer))
}

/// Explains one profile from its logged events: also what `entitled events` prints.
pub fn explain_profile(
    profile_id: &str,
    logged: &[history::LoggedEvent],
    rules: &projection::Rules,
    at: Timestamp,
) -> ExplainAnswer {
    let describe = |logged: &history::LoggedEvent, changed: Vec<String>| ExplainedEvent {
        profile_event_id: logged.event.id.to_string(),
        event_type: logged.received_type.clone(),
        canonical_type: logged.event.event_type.map(|t| t.name().to_owned()),
        event_datetime: logged.event.event_datetime.to_rfc3339(),
        received_at: logged.received_at.map(Timestamp::to_rfc3339),
        vendor_product_id: logged.event.vendor_product_id.as_deref().map(str::to_owned),
        changed,
    };
    let mut by_level: BTreeMap<Arc<str>, Vec<&history::LoggedEvent>> = BTreeMap::new();
    let mut ignored_events = Vec::new();
    for logged in logged {
        match rules.level_of(&logged.event) {
            Some(level) => by_level.entry(level).or_default().push(logged),
            None => ignored_events.push(describe(logged, Vec::new())),
        }
    }
    let mut access_levels = BTreeMap::new();
    for (level, logged_events) in by_level {
        let by_id: BTreeMap<&str, &history::LoggedEvent> =
            logged_events.iter().map(|l| (&*l.event.id, *l)).collect();
        let steps = projection::fold_steps(logged_events.iter().map(|l| &l.event));
        let mut before = None;
        let mut expires_at_set_by = None;
        let mut events = Vec::new();
        for (event, after) in &steps {
            let changed = projection::describe_change(before.as_ref(), after.as_ref());
            let expiry =
                |s: &Option<projection::Entitlement>| s.as_ref().map(|e| e.window.expires_at);
            if expiry(&before) != expiry(after) {
                expires_at_set_by = Some(event.id.to_string());
            }
            events.push(describe(by_id[&*event.id], changed));
            before = after.clone();
        }
        let state = before.map(|e| {
            let index = Index::new();
            index.apply([crate::index::Change::Level {
                profile_id: Arc::from(profile_id),
                access_level_id: level.clone(),
                entitlement: Some(e),
            }]);
            index.with_profile(profile_id, |p| {
                p.and_then(|p| p.levels.first())
                    .map(|l| LevelView::new(l, at, None))
            })
        });
        access_levels.insert(
            level.to_string(),
            ExplainedLevel {
                state: state.flatten(),
                expires_at_set_by,
                events,
            },
        );
    }
    ExplainAnswer {
        profile_id: profile_id.to_owned(),
        access_levels,
        ignored_events,
        checked_at: at.to_rfc3339(),
    }
}

/// Authorized, and the index holds everything committed (else "no" could be wrong).
fn ready_to_read(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    state.read_auth.check(request)?;
    if !state.status.is_warmed() {
        return Err(ApiError::NotReady("the index is warming".into()));
    }
    Ok(())
}

fn parse_at(query: &AccessQuery) -> Result<Option<Timestamp>, ApiError> {
    query
        .at
        .as_deref()
        .map(|at| {
            adapty::datetime::parse(at).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "`at` must be a datetime such as 2031-03-05T09:10:11Z, not {at:?}"
                ))
            })
        })
        .transpose()
}

/// The state of these profiles as of `at`, folded from the log.
async fn as_of(
    state: &AppState,
    profile_ids: Vec<String>,
    at: Timestamp,
) -> Result<Index, ApiError> {
    let db = state.db_path.clone();
    let (rules, decoder) = (state.rules.clone(), state.decoder.clone());
    let up_to = state.status.released_event();
    web::block(move || {
        let conn = store::open_read_only(&db)?;
        history::index_as_of(&conn, &profile_ids, at, up_to, &rules, &decoder)
    })
    .await
    .map_err(|e| ApiError::store_unavailable(&e))?
    .map_err(|e| ApiError::store_unavailable(&e))
}

/// Where the final `checked_at` field of a serialized answer begins (every answer type
/// ends with it). A quote inside a JSON string is always escaped, so `,"checked_at":`
/// can only be that field.
fn before_checked_at(body: &[u8]) -> usize {
    const CLOCK: &[u8] = b",\"checked_at\":";
    body.windows(CLOCK.len())
        .rposition(|w| w == CLOCK)
        .unwrap_or(body.len())
}

/// A strong ETag over what an answer says, not when it was asked: a hash of its body
/// before the final `checked_at`. foldhash's fixed-seed hasher (64 bits; a tenth of
/// SipHash's cost here) is stable for a given build; an upgrade may change every ETag
/// once, which costs callers one full answer each, nothing more.
fn etag(head: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = foldhash::quality::FixedState::with_seed(0x656e_7464).hash_one(head);
    let mut tag = *b"\"0000000000000000\"";
    for (i, digit) in tag[1..17].iter_mut().rev().enumerate() {
        *digit = HEX[((hash >> (4 * i)) & 0xf) as usize];
    }
    tag
}

/// `Cache-Control: private, max-age=N` for N in 0..=60, made once.
fn cache_control(max_age: i64) -> HeaderValue {
    static VALUES: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        (0..=MAX_CACHE_SECONDS)
            .map(|s| {
                HeaderValue::try_from(format!("private, max-age={s}"))
                    .expect("ASCII text is a header value")
            })
            .collect()
    });
    let i = usize::try_from(max_age.clamp(0, MAX_CACHE_SECONDS)).unwrap_or_default();
    VALUES[i].clone()
}

/// 200 with the answer, or 304 when `If-None-Match` has its ETag; both with
/// `Cache-Control: private, max-age` up to `valid_until`, at most 60 s. `head` is the
/// length of the body before its `checked_at` field: the part the ETag covers.
fn cacheable(
    request: &HttpRequest,
    valid_until: Option<Timestamp>,
    body: Vec<u8>,
    head: usize,
) -> HttpResponse {
    let tag = etag(&body[..head]);
    let now = Timestamp::now();
    let max_age = valid_until.map_or(MAX_CACHE_SECONDS, |until| {
        (until.as_micros() - now.as_micros()) / 1_000_000
    });
    let matches = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| {
            // Weak comparison, as RFC 9110 asks of If-None-Match: a proxy that
            // compresses the answer hands the client `W/"…"` for our tag.
            v.as_bytes()
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .any(|t| t == b"*" || t.strip_prefix(b"W/").unwrap_or(t) == tag)
        });
    let mut response = if matches {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::with_body(StatusCode::OK, body).map_into_boxed_body()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, cache_control(max_age));
    if let Ok(value) = HeaderValue::from_bytes(&tag) {
        headers.insert(header::ETAG, value);
    }
    if !matches {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(index: &Index, profile_id: &str, at: Timestamp) -> Vec<u8> {
        serde_json::to_vec(&profile_answer(index, profile_id, None, at)).unwrap()
    }

    fn tag(body: &[u8]) -> [u8; 18] {
        etag(&body[..before_checked_at(body)])
    }

    #[test]
    fn the_etag_ignores_when_the_answer_was_asked_and_nothing_else() {
        let index = Index::new();
        let at = Timestamp::from_micros(1_900_000_000_000_000);
        let later = at.saturating_add_micros(1);
        // A profile id that spells the field name cannot shorten what is hashed.
        let tricky = r#"p,"checked_at":"#;
        for id in ["p1", tricky] {
            let (a, b) = (body(&index, id, at), body(&index, id, later));
            assert_ne!(a, b, "the bodies differ by checked_at");
            assert_eq!(tag(&a), tag(&b), "{id}");
        }
        assert_ne!(tag(&body(&index, "p1", at)), tag(&body(&index, "p2", at)));
        assert_ne!(tag(&body(&index, tricky, at)), tag(&body(&index, "p", at)));
    }
}
