//! The read API's handlers: "is this profile (or user) premium right now?", answered
//! from the in-memory index; "…as of then?" (`?at=`) and "why?" (`/explain`) answered
//! from the event log. The answers themselves are the read model's ([`crate::access`]);
//! this file adds what HTTP needs: authorization, readiness, `ETag` and
//! `Cache-Control`, and error mapping.

use super::error::{ApiError, ErrorBody};
use super::{read_store, AppState};
use crate::access::explain::{explain_profile, ExplainAnswer};
use crate::access::{body, profile_answer, user_answer, wanted, ProfileAnswer, UserAnswer};
use crate::adapty;
use crate::index::Index;
use crate::refresh::Who;
use crate::telemetry;
use crate::timestamp::Timestamp;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
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
    /// `active`: hold the answer until the profile (or user; the `access_level` when
    /// named) is active, or `timeout` passes, then answer as usual. For the seconds
    /// between a purchase in the app and its webhook. With an Adapty key, entitled
    /// also asks Adapty once after 2 s of waiting.
    wait_for: Option<String>,
    /// Seconds to wait at most with `wait_for` (default 10, at most 60).
    timeout: Option<u64>,
}

/// Default and longest waits of `?wait_for=active`.
pub const DEFAULT_WAIT_SECONDS: u64 = 10;
pub const MAX_WAIT_SECONDS: u64 = 60;
/// After this long waiting, ask Adapty once (when a key is set).
const ASK_ADAPTY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

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
    if let Some(wait) = wait_for(&query)? {
        let who = || vec![Arc::from(profile_id.as_str())];
        wait_until_active(&state, who, Who::Profile(&profile_id), level, wait).await;
    }
    // Written straight from the index entry (access/body.rs): the same bytes as
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
        body::write_profile(&mut body, &profile_id, known, level, checked_at)
    });
    let head = body.len();
    body::close(&mut body, checked_at);
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
    if let Some(wait) = wait_for(&query)? {
        let who = || state.index.profiles_of_user(&customer_user_id);
        wait_until_active(&state, who, Who::User(&customer_user_id), level, wait).await;
    }
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
    let rules = state.rules.clone();
    let up_to = state.status.released_event();
    let answer = read_store(&state, move |reader| {
        let (logged, component) = reader.shared_events(&profile_id, up_to)?;
        Ok(explain_profile(
            &profile_id,
            &logged,
            &component.links,
            &rules,
            Timestamp::now(),
        ))
    })
    .await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// How long `?wait_for=active` may hold the answer; `None` without it.
fn wait_for(query: &AccessQuery) -> Result<Option<std::time::Duration>, ApiError> {
    match query.wait_for.as_deref() {
        None => Ok(None),
        Some(_) if query.at.is_some() => Err(ApiError::BadRequest(
            "`wait_for` waits for the present: it cannot go with `at`".into(),
        )),
        Some("active") => {
            let seconds = query
                .timeout
                .unwrap_or(DEFAULT_WAIT_SECONDS)
                .min(MAX_WAIT_SECONDS);
            Ok(Some(std::time::Duration::from_secs(seconds)))
        }
        Some(other) => Err(ApiError::BadRequest(format!(
            "`wait_for` takes `active`, not {other:?}"
        ))),
    }
}

/// Returns once any of `profiles()` grants (the `level` when named), at `wait`, or at
/// shutdown. Parked on the change feed's watch, as `/changes` long polls are: becoming
/// active is a change, so a webhook's commit wakes it; no thread is held. With a key,
/// asks Adapty once after [`ASK_ADAPTY_AFTER`], in the background: its commit wakes
/// the wait like a webhook's.
async fn wait_until_active(
    state: &AppState,
    profiles: impl Fn() -> Vec<Arc<str>>,
    who: Who<'_>,
    level: Option<&str>,
    wait: std::time::Duration,
) {
    let start = tokio::time::Instant::now();
    let deadline = start + wait;
    let mut changes = state.status.watch_changes();
    let mut ask = state
        .refresher
        .clone()
        .map(|r| (r, start + ASK_ADAPTY_AFTER));
    loop {
        changes.borrow_and_update();
        let now = Timestamp::now();
        let active = profiles().iter().any(|p| {
            state.index.with_profile(p, |known| {
                known.is_some_and(|k| {
                    k.levels
                        .iter()
                        .any(|l| wanted(l, level) && l.window().grants_at(now))
                })
            })
        });
        if active || state.status.is_stopped() || tokio::time::Instant::now() >= deadline {
            return;
        }
        let wake = match &ask {
            Some((_, at)) => (*at).min(deadline),
            None => deadline,
        };
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep_until(wake) => {
                let due = ask.as_ref().is_some_and(|(_, at)| *at <= tokio::time::Instant::now());
                if let Some((refresher, _)) = ask.take_if(|_| due) {
                    let id = who.to_owned();
                    tokio::spawn(async move {
                        if let Err(error) = refresher.refresh(id.who(), "wait_for").await {
                            tracing::warn!(%error, "asking Adapty while waiting for a purchase failed");
                        }
                    });
                }
            }
        }
    }
}

/// Authorized, and the index holds everything committed (else "no" could be wrong).
pub(super) fn ready_to_read(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
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
    let up_to = state.status.released_event();
    read_store(state, move |reader| {
        reader.index_as_of(&profile_ids, at, up_to)
    })
    .await
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
