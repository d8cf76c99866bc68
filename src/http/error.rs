//! The one error type of the HTTP boundary. Every variant says its status; every
//! body is JSON `{"error": <stable code>, "message": <for people>}`. Bad input stays
//! in 400–404, which Adapty does not retry; what may pass (a busy or failing disk)
//! is a 503, which it does.

use crate::adapty::ParseError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body can never be processed.
    #[error(transparent)]
    Malformed(#[from] ParseError),
    /// 400, not 413: Adapty retries a 413, and a body this large will not shrink.
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// 400: the connection broke off mid-body, or its framing is corrupt. A sender
    /// that hung up hears no answer (and retries); a corrupt body stays corrupt.
    #[error("the body could not be read: {0}")]
    UnreadableBody(String),
    /// 503: the body did not arrive in time on a live connection. That is the delivery
    /// stalling, not the event: Adapty retries, and the retry is read afresh.
    #[error("the body did not arrive in time: {0}")]
    BodyTimeout(String),
    /// 400: a query string or path the route cannot read.
    #[error("{0}")]
    BadRequest(String),
    /// 401: the token is missing or wrong.
    #[error("the Authorization header is missing or wrong")]
    Unauthorized,
    /// 403: the sandbox token may only deliver sandbox events.
    #[error("the sandbox token cannot deliver a Production event")]
    SandboxTokenForProduction,
    /// 403: the sandbox token with an event whose `environment` is missing or neither
    /// `Sandbox` nor `Production`. Adapty marks every event; one that is not marked
    /// cannot be kept out of access by `--sandbox ignore`, so the sandbox token may not
    /// deliver it.
    #[error("the sandbox token delivers only events whose `environment` is `Sandbox`; this one's is {0}")]
    SandboxTokenForUnmarkedEvent(String),
    /// 404.
    #[error("no such route")]
    NotFound,
    /// 503: start-up is not finished (the index is warming) or shutdown has begun.
    #[error("not ready: {0}")]
    NotReady(String),
    /// 503: more events are waiting for the writer than it takes.
    #[error("too many events are waiting to be stored; retry shortly")]
    Saturated,
    /// 503: the store failed or did not answer in time. The cause is in the log
    /// under `reference`; the event may or may not be stored, and a retry is safe.
    #[error("the event could not be stored now; retry (reference {reference})")]
    StoreUnavailable { reference: String },
    /// 501: a route of Adapty's server-side API, with no `--adapty-secret-key`.
    #[error("Adapty's server-side API is off: start entitled with --adapty-secret-key (ENTITLED_ADAPTY_SECRET_KEY)")]
    AdaptyApiOff,
    /// 404: Adapty does not know the profile or user.
    #[error("Adapty knows no such profile")]
    UnknownToAdapty,
    /// 502: Adapty refused the secret key.
    #[error("Adapty refused the secret key (401): check --adapty-secret-key")]
    AdaptyUnauthorized,
    /// 501: a push route with no `--notify-url`.
    #[error("push is off: start entitled with --notify-url and --notify-secret")]
    NotifyOff,
    /// 502: Adapty's API did not answer usably, after retries.
    #[error("Adapty's API did not answer: {0}")]
    AdaptyUnavailable(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed(e) => e.code(),
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::UnreadableBody(_) => "unreadable_body",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::SandboxTokenForProduction => "sandbox_token_for_production",
            ApiError::SandboxTokenForUnmarkedEvent(_) => "sandbox_token_for_unmarked_event",
            ApiError::NotFound => "not_found",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Saturated => "saturated",
            ApiError::StoreUnavailable { .. } => "store_unavailable",
            ApiError::AdaptyApiOff => "adapty_api_off",
            ApiError::NotifyOff => "notify_off",
            ApiError::UnknownToAdapty => "unknown_to_adapty",
            ApiError::AdaptyUnauthorized => "adapty_unauthorized",
            ApiError::AdaptyUnavailable(_) => "adapty_unavailable",
        }
    }

    /// A 503 whose cause is logged here, once, under a reference the body repeats.
    pub fn store_unavailable(cause: &dyn std::fmt::Display) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let reference = format!(
            "{:x}-{}",
            crate::timestamp::Timestamp::now().as_micros(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        tracing::error!(%reference, error = %cause, "store unavailable; answering 503");
        ApiError::StoreUnavailable { reference }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_)
            | ApiError::BodyTooLarge { .. }
            | ApiError::UnreadableBody(_)
            | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::SandboxTokenForProduction | ApiError::SandboxTokenForUnmarkedEvent(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound | ApiError::UnknownToAdapty => StatusCode::NOT_FOUND,
            ApiError::AdaptyApiOff | ApiError::NotifyOff => StatusCode::NOT_IMPLEMENTED,
            ApiError::AdaptyUnauthorized | ApiError::AdaptyUnavailable(_) => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::BodyTimeout(_)
            | ApiError::NotReady(_)
            | ApiError::Saturated
            | ApiError::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header((header::RETRY_AFTER, "5"));
        }
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        })
    }
}

/// Every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine code: `invalid_json`, `not_an_object`, `missing_field`,
    /// `invalid_field`, `body_too_large`, `unreadable_body`, `bad_request`,
    /// `unauthorized`, `sandbox_token_for_production`, `sandbox_token_for_unmarked_event`,
    /// `not_found`, `body_timeout`, `not_ready`, `saturated`, `store_unavailable`,
    /// `adapty_api_off`, `unknown_to_adapty`, `adapty_unauthorized`, `adapty_unavailable`,
    /// `notify_off`.
    pub error: &'static str,
    /// For people; a 503 from the store carries a reference that is also in the log.
    pub message: String,
}
