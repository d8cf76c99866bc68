//! `POST /webhooks/adapty`: authorize, read, parse, hand to the writer, answer only
//! once the event and its effect are committed.

use super::auth::Caller;
use super::error::ApiError;
use super::error::ErrorBody;
use super::AppState;
use crate::adapty::{self, Webhook};
use crate::store::writer::{Outcome, SendError};
use crate::store::StoreError;
use crate::telemetry;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{post, web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use std::time::Duration;
use utoipa::ToSchema;

/// Adapty's bodies are a few KB; this leaves room for large attribution blocks.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Adapty gives up after 10 s; past this (counted from when the handler starts, once
/// the request's head is in, so the body's time included) we answer 503 ourselves so
/// it retries. The head has a 5 s limit of its own (`client_request_timeout`), and
/// arrives in one packet from Adapty.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(8);
/// A body that takes longer than this to arrive is cut off with a 503: a slow-drip
/// client must not hold a connection (and memory) for as long as it likes, and Adapty
/// retries a delivery that stalled.
pub const BODY_WITHIN: Duration = Duration::from_secs(5);

/// The answer to an event.
#[derive(Serialize, ToSchema)]
pub struct EventAnswer {
    /// `stored` (new, committed with its effect) or `duplicate` (seen before: nothing changed).
    status: &'static str,
    profile_event_id: String,
}

/// The endpoint Adapty calls: verification requests and events.
#[utoipa::path(
    tag = "webhook",
    request_body(
        content = serde_json::Value,
        description = "An Adapty webhook body; `{}` or `{\"adapty_check\": s}` to verify",
        content_type = "application/json"
    ),
    responses(
        (status = 200, description = "Stored or duplicate (verification: `{}` or `{\"adapty_check_response\": s}`)", body = EventAnswer),
        (status = 400, description = "Never processable: Adapty does not retry", body = ErrorBody),
        (status = 401, description = "Missing or wrong Authorization", body = ErrorBody),
        (status = 403, description = "The sandbox token with an event not marked Sandbox (Production, another environment, or none)", body = ErrorBody),
        (status = 503, description = "Transient (a body that stalled, a busy or failing store): Adapty retries", body = ErrorBody)
    ),
    security((), ("webhook_token" = []))
)]
#[post("/webhooks/adapty")]
pub async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let result = handle(request, payload, state).await;
    match &result {
        Ok((_, outcome)) => telemetry::webhook(outcome),
        Err(ApiError::Unauthorized) => telemetry::webhook("unauthorized"),
        Err(e) if e.status_code().is_client_error() => telemetry::webhook_refused(e.code()),
        Err(_) => telemetry::webhook("failed"),
    }
    result.map(|(response, _)| response)
}

/// The webhook, and the outcome label of its metric.
async fn handle(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<(HttpResponse, &'static str), ApiError> {
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    let caller = state.webhook_auth.check(&request)?;
    let body = tokio::time::timeout(BODY_WITHIN, read_body(&request, payload))
        .await
        .map_err(|_| ApiError::BodyTimeout(format!("not complete within {BODY_WITHIN:?}")))??;
    let received = match adapty::parse(&body, state.decoder.names())? {
        Webhook::Verification {
            adapty_check: Some(check),
        } => {
            let answer = json!({ "adapty_check_response": check });
            return Ok((HttpResponse::Ok().json(answer), "verification"));
        }
        Webhook::Verification { adapty_check: None } => {
            return Ok((HttpResponse::Ok().json(json!({})), "verification"));
        }
        Webhook::Event(received) => received,
    };
    if caller == Caller::Sandbox && !received.event.is_sandbox() {
        // An allow-list, not a deny-list: an event the sandbox token delivers must say
        // it is one, or `--sandbox ignore` (live and in `rebuild`) would count it.
        return Err(match received.event.environment.as_deref() {
            Some(e) if e.eq_ignore_ascii_case("production") => ApiError::SandboxTokenForProduction,
            Some(e) => ApiError::SandboxTokenForUnmarkedEvent(format!("{e:?}")),
            None => ApiError::SandboxTokenForUnmarkedEvent("missing".into()),
        });
    }
    if !state.status.is_warmed() {
        return Err(ApiError::NotReady("the index is warming".into()));
    }
    let id = received.event.id.to_string();
    let answer = state
        .writer
        .send(received, deadline)
        .await
        .map_err(|e| match e {
            SendError::Saturated => ApiError::Saturated,
            SendError::Stopped => ApiError::store_unavailable(&"the writer is shutting down"),
        })?;
    let outcome = match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(Ok(outcome))) => outcome,
        Ok(Ok(Err(error))) => {
            return Err(match &*error {
                StoreError::Unstorable(why) => ApiError::BadRequest(why.clone()),
                _ => ApiError::store_unavailable(&error),
            })
        }
        Ok(Err(_)) => return Err(ApiError::store_unavailable(&"the writer dropped the event")),
        Err(_) => {
            return Err(ApiError::store_unavailable(
                &"the writer did not answer in time",
            ))
        }
    };
    let (status, label) = match outcome {
        Outcome::Stored => ("stored", "stored"),
        Outcome::Ignored => ("stored", "ignored"),
        Outcome::Duplicate => ("duplicate", "duplicate"),
    };
    let answer = EventAnswer {
        status,
        profile_event_id: id,
    };
    Ok((HttpResponse::Ok().json(answer), label))
}

/// Reads the body up to [`MAX_BODY_BYTES`], refusing early on a declared length.
async fn read_body(request: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, ApiError> {
    let too_large = ApiError::BodyTooLarge {
        limit: MAX_BODY_BYTES,
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(4096));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::UnreadableBody(e.to_string()))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
