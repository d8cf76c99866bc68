//! `POST /profiles/{id}/refresh`, `POST /users/{customer_user_id}/refresh`: ask
//! Adapty's server-side API now, fold its answer in, and answer as the access routes
//! do. Header `entitled-refresh`: `changed` or `unchanged` (the access answer,
//! which event decided it aside). 501 without `--adapty-secret-key`.

use super::access::ready_to_read;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::{body, user_answer, ProfileAnswer, UserAnswer};
use crate::refresh::{ApiError as AdaptyError, RefreshError, Refreshed, Who};
use crate::timestamp::Timestamp;
use actix_web::{post, web, HttpRequest, HttpResponse};

/// Fetch this profile from Adapty now, fold it in, and answer its access.
#[utoipa::path(
    tag = "adapty",
    params(("profile_id" = String, Path, description = "Adapty's profile id")),
    responses(
        (status = 200, body = ProfileAnswer, description = "The access answer after the refresh; header `entitled-refresh: changed|unchanged`"),
        (status = 401, description = "--read-token is set and was not given", body = ErrorBody),
        (status = 404, description = "`unknown_to_adapty`", body = ErrorBody),
        (status = 501, description = "`adapty_api_off`: no --adapty-secret-key", body = ErrorBody),
        (status = 502, description = "`adapty_unauthorized` or `adapty_unavailable`", body = ErrorBody),
        (status = 503, description = "Start-up is not finished, or the store is busy", body = ErrorBody)
    ),
    security((), ("read_token" = []))
)]
#[post("/profiles/{profile_id}/refresh")]
pub async fn profile(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    ready_to_read(&request, &state)?;
    let profile_id = path.into_inner();
    let changed = refreshed(&state, Who::Profile(&profile_id)).await?;
    let now = Timestamp::now();
    let mut answer = Vec::with_capacity(1024);
    state.index.with_profile(&profile_id, |known| {
        body::write_profile(&mut answer, &profile_id, known, None, now)
    });
    body::close(&mut answer, now);
    Ok(reply(changed, answer))
}

/// Fetch this user's profile from Adapty now, fold it in, and answer the user's access.
#[utoipa::path(
    tag = "adapty",
    params(("customer_user_id" = String, Path, description = "Your own user id, as set in Adapty")),
    responses(
        (status = 200, body = UserAnswer, description = "The access answer after the refresh; header `entitled-refresh: changed|unchanged`"),
        (status = 401, description = "--read-token is set and was not given", body = ErrorBody),
        (status = 404, description = "`unknown_to_adapty`", body = ErrorBody),
        (status = 501, description = "`adapty_api_off`: no --adapty-secret-key", body = ErrorBody),
        (status = 502, description = "`adapty_unauthorized` or `adapty_unavailable`", body = ErrorBody),
        (status = 503, description = "Start-up is not finished, or the store is busy", body = ErrorBody)
    ),
    security((), ("read_token" = []))
)]
#[post("/users/{customer_user_id}/refresh")]
pub async fn user(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    ready_to_read(&request, &state)?;
    let customer_user_id = path.into_inner();
    let changed = refreshed(&state, Who::User(&customer_user_id)).await?;
    let profile_ids = state.index.profiles_of_user(&customer_user_id);
    let answer = user_answer(
        &state.index,
        &customer_user_id,
        profile_ids,
        None,
        Timestamp::now(),
    );
    Ok(reply(
        changed,
        serde_json::to_vec(&answer).unwrap_or_default(),
    ))
}

/// Refreshes; whether the answer changed.
async fn refreshed(state: &AppState, who: Who<'_>) -> Result<bool, ApiError> {
    let refresher = state.refresher.as_ref().ok_or(ApiError::AdaptyApiOff)?;
    match refresher.refresh(who, "refresh").await {
        Ok(Refreshed::Folded { changed, .. }) => Ok(changed),
        Ok(Refreshed::Unknown) => Err(ApiError::UnknownToAdapty),
        Err(RefreshError::Api(AdaptyError::Unauthorized)) => Err(ApiError::AdaptyUnauthorized),
        Err(RefreshError::Api(AdaptyError::Unavailable(why))) => {
            Err(ApiError::AdaptyUnavailable(why))
        }
        Err(RefreshError::Invalid(why)) => Err(ApiError::AdaptyUnavailable(why.to_string())),
        Err(RefreshError::Saturated) => Err(ApiError::Saturated),
        Err(RefreshError::Stopped) => Err(ApiError::NotReady("shutting down".into())),
        Err(RefreshError::Store(error)) => Err(ApiError::store_unavailable(&error)),
    }
}

fn reply(changed: bool, body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            "entitled-refresh",
            if changed { "changed" } else { "unchanged" },
        ))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .content_type("application/json")
        .body(body)
}
