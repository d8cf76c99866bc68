//! `POST /webhooks/adapty`: authorize, read, parse, hand to the writer, answer only
//! once the event and its effect are committed.

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::adapty::{self, Webhook};
use crate::store::writer::{Outcome, SendError};
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;

/// Adapty's bodies are a few KB; this leaves room for large attribution blocks.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Adapty gives up after 10 s; past this we answer 503 ourselves so it retries.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(8);

pub async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.webhook_auth.check(&request)?;
    let body = read_body(&request, payload).await?;
    let received = match adapty::parse(&body, &state.event_names)? {
        Webhook::Verification {
            adapty_check: Some(check),
        } => return Ok(HttpResponse::Ok().json(json!({ "adapty_check_response": check }))),
        Webhook::Verification { adapty_check: None } => {
            return Ok(HttpResponse::Ok().json(json!({})))
        }
        Webhook::Event(received) => received,
    };
    let is_production = received
        .event
        .environment
        .as_deref()
        .is_some_and(|e| e.eq_ignore_ascii_case("production"));
    if caller == Caller::Sandbox && is_production {
        return Err(ApiError::SandboxTokenForProduction);
    }
    let id = received.event.id.clone();
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
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
        Ok(Ok(Err(error))) => return Err(ApiError::store_unavailable(&error)),
        Ok(Err(_)) => return Err(ApiError::store_unavailable(&"the writer dropped the event")),
        Err(_) => {
            return Err(ApiError::store_unavailable(
                &"the writer did not answer in time",
            ))
        }
    };
    let status = match outcome {
        Outcome::Stored => "stored",
        Outcome::Duplicate => "duplicate",
    };
    Ok(HttpResponse::Ok().json(json!({ "status": status, "profile_event_id": &*id })))
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
