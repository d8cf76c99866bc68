//! The operator's side of push (`--notify-url`): the parked changes, and replay.
//! 501 `notify_off` without a URL.

use super::access::ready_to_read;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::access::change::AccessChange;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// At most this many parked changes are listed.
const MAX_LISTED: u32 = 1000;

/// A change whose delivery failed for `--notify-retry-for`, and was parked.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedDelivery {
    seq: i64,
    attempts: u32,
    first_failed_at: String,
    last_failed_at: String,
    /// The receiver's status, or the connection's error.
    last_error: String,
    /// The change, as `GET /changes` shows it.
    change: Option<AccessChange>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailedAnswer {
    /// Oldest first, at most 1,000.
    failed: Vec<FailedDelivery>,
}

/// The changes push gave up on.
#[utoipa::path(
    tag = "push",
    responses(
        (status = 200, body = FailedAnswer),
        (status = 401, description = "--read-token is set and was not given", body = ErrorBody),
        (status = 501, description = "`notify_off`: no --notify-url", body = ErrorBody)
    ),
    security((), ("read_token" = []))
)]
#[get("/notify/failed")]
pub async fn failed(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    ready_to_read(&request, &state)?;
    let notifier = state.notifier.clone().ok_or(ApiError::NotifyOff)?;
    let parked = web::block(move || notifier.failed(MAX_LISTED))
        .await
        .map_err(|e| ApiError::store_unavailable(&e))?
        .map_err(|e| ApiError::store_unavailable(&e))?;
    let failed = parked
        .into_iter()
        .map(|(p, change)| FailedDelivery {
            seq: p.seq,
            attempts: p.attempts,
            first_failed_at: p.first_failed_at.to_rfc3339(),
            last_failed_at: p.last_failed_at.to_rfc3339(),
            last_error: p.last_error,
            change,
        })
        .collect();
    Ok(HttpResponse::Ok().json(FailedAnswer { failed }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayQuery {
    /// The first change (`seq`) to send again; every later one follows, in order.
    from_seq: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayAnswer {
    from_seq: i64,
}

/// Send every change from `from_seq` on again (the parked ones leave the failed list).
#[utoipa::path(
    tag = "push",
    params(ReplayQuery),
    responses(
        (status = 200, body = ReplayAnswer),
        (status = 400, description = "No `from_seq`, or not a number", body = ErrorBody),
        (status = 401, description = "--read-token is set and was not given", body = ErrorBody),
        (status = 501, description = "`notify_off`: no --notify-url", body = ErrorBody)
    ),
    security((), ("read_token" = []))
)]
#[post("/notify/replay")]
pub async fn replay(
    request: HttpRequest,
    query: web::Query<ReplayQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    ready_to_read(&request, &state)?;
    let notifier = state.notifier.clone().ok_or(ApiError::NotifyOff)?;
    let from_seq = query.from_seq.max(1);
    web::block(move || notifier.replay(from_seq))
        .await
        .map_err(|e| ApiError::store_unavailable(&e))?
        .map_err(|e| ApiError::store_unavailable(&e))?;
    Ok(HttpResponse::Ok().json(ReplayAnswer { from_seq }))
}

/// Adds push to the OpenAPI document as what it is, a request entitled *makes*: an
/// OpenAPI 3.1 `webhooks` entry (utoipa has no way to say it), whose body is the
/// `PushMessage` schema.
pub fn describe_push(document: &mut serde_json::Value) {
    let header = |name: &str, description: &str| {
        serde_json::json!({
            "name": name, "in": "header", "required": true,
            "description": description, "schema": {"type": "string"}
        })
    };
    document["webhooks"]["accessChanged"] = serde_json::json!({
        "post": {
            "summary": "A change of the feed, pushed to --notify-url",
            "description": "One change a request, in feed order; the next once this one is \
                confirmed (any 2xx) or parked after --notify-retry-for. Signed the Standard \
                Webhooks way: verify webhook-signature before trusting the body.",
            "parameters": [
                header("webhook-id", "`chg_<seq>`: the same on every retry of the change"),
                header("webhook-timestamp", "Unix seconds of this attempt"),
                header("webhook-signature", "`v1,<base64 HMAC-SHA256 of id.timestamp.body>` with the key of --notify-secret"),
            ],
            "requestBody": {
                "required": true,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PushMessage"}}}
            },
            "responses": {
                "2XX": {"description": "Confirmed: the next change is sent"},
                "default": {"description": "Not confirmed: sent again with backoff"}
            }
        }
    });
}
