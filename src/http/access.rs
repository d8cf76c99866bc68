//! The read API: `GET /profiles/{id}/access` and `GET /users/{customer_user_id}/access`,
//! answered from the in-memory index. "No" is the common answer, not an error: an
//! unknown profile or user is a 200 with `"premium": false`.

use super::error::ApiError;
use super::error::ErrorBody;
use super::AppState;
use crate::index::LevelAccess;
use crate::telemetry;
use crate::timestamp::Timestamp;
use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccessQuery {
    /// Answer for this access level only.
    access_level: Option<String>,
}

/// One access level. Datetimes are RFC 3339 UTC with six fraction digits.
#[derive(Debug, Serialize, ToSchema)]
pub struct LevelView {
    /// Grants access now: the event said active, and the clock has not ended it.
    active: bool,
    expires_at: Option<String>,
    starts_at: Option<String>,
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
    updated_at: String,
    /// On the users route: the profile this level comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    profile_id: Option<Arc<str>>,
}

impl LevelView {
    fn new(level: &LevelAccess, now: Timestamp, profile_id: Option<Arc<str>>) -> Self {
        LevelView {
            active: level.window.grants_at(now),
            expires_at: level.window.expires_at.map(Timestamp::to_rfc3339),
            starts_at: level.window.starts_at.map(Timestamp::to_rfc3339),
            will_renew: level.will_renew,
            is_lifetime: level.window.is_lifetime,
            in_grace_period: level.in_grace_period,
            is_refund: level.is_refund,
            store: level.store.clone(),
            vendor_product_id: level.vendor_product_id.clone(),
            environment: level.environment.clone(),
            updated_at: level.updated_at.to_rfc3339(),
            profile_id,
        }
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
    checked_at: String,
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
    checked_at: String,
}

fn wanted(level: &LevelAccess, query: &AccessQuery) -> bool {
    query
        .access_level
        .as_deref()
        .is_none_or(|wanted| *level.access_level_id == *wanted)
}

/// Is this profile premium right now?
#[utoipa::path(
    tag = "access",
    params(("profile_id" = String, Path, description = "Adapty's profile id"), AccessQuery),
    responses(
        (status = 200, body = ProfileAnswer),
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
    let now = Timestamp::now();
    let profile_id = path.into_inner();
    let (customer_user_id, access_levels) = state.index.with_profile(&profile_id, |known| {
        let Some(known) = known else {
            return (None, BTreeMap::new());
        };
        let levels = known
            .levels
            .iter()
            .filter(|level| wanted(level, &query))
            .map(|level| {
                (
                    level.access_level_id.clone(),
                    LevelView::new(level, now, None),
                )
            })
            .collect();
        (known.customer_user_id.clone(), levels)
    });
    Ok(HttpResponse::Ok().json(ProfileAnswer {
        profile_id,
        customer_user_id,
        premium: access_levels.values().any(|l| l.active),
        access_levels,
        checked_at: now.to_rfc3339(),
    }))
}

/// Is this user (your own id, over all their profiles) premium right now?
#[utoipa::path(
    tag = "access",
    params(("customer_user_id" = String, Path, description = "Your own user id, as set in Adapty"), AccessQuery),
    responses(
        (status = 200, body = UserAnswer),
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
    let now = Timestamp::now();
    let customer_user_id = path.into_inner();
    let profile_ids = state.index.profiles_of_user(&customer_user_id);
    let mut access_levels: BTreeMap<Arc<str>, LevelView> = BTreeMap::new();
    for profile_id in &profile_ids {
        state.index.with_profile(profile_id, |known| {
            for level in known.iter().flat_map(|p| &p.levels) {
                if !wanted(level, &query) {
                    continue;
                }
                let candidate = LevelView::new(level, now, Some(profile_id.clone()));
                match access_levels.get(&level.access_level_id) {
                    Some(best) if better(best, &candidate) != Ordering::Less => {}
                    _ => {
                        access_levels.insert(level.access_level_id.clone(), candidate);
                    }
                }
            }
        });
    }
    Ok(HttpResponse::Ok().json(UserAnswer {
        customer_user_id,
        profile_ids,
        premium: access_levels.values().any(|l| l.active),
        access_levels,
        checked_at: now.to_rfc3339(),
    }))
}

/// Authorized, and the index holds everything committed (else "no" could be wrong).
fn ready_to_read(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    state.read_auth.check(request)?;
    if !state.status.is_warmed() {
        return Err(ApiError::NotReady("the index is warming".into()));
    }
    Ok(())
}

/// Across a user's profiles, the level to show: an active one over an inactive one;
/// among those, lifetime or no end, then the later `expires_at`, then the newer event.
fn better(a: &LevelView, b: &LevelView) -> Ordering {
    let reach = |l: &LevelView| {
        (
            l.is_lifetime || l.expires_at.is_none(),
            l.expires_at.clone(),
        )
    };
    (a.active, reach(a), &a.updated_at).cmp(&(b.active, reach(b), &b.updated_at))
}
