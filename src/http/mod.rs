//! The HTTP surface: routes, shared state, and JSON answers for what actix would
//! otherwise answer in plain text.

pub mod access;
pub mod auth;
pub mod error;
pub mod webhook;

use crate::adapty::EventNames;
use crate::index::Index;
use crate::store::writer::WriterHandle;
use actix_web::web;
use auth::{ReadAuth, WebhookAuth};
use error::ApiError;
use std::sync::Arc;

/// Built once, outside the server factory, and shared by every worker.
pub struct AppState {
    pub writer: WriterHandle,
    pub index: Arc<Index>,
    pub event_names: Arc<EventNames>,
    pub webhook_auth: WebhookAuth,
    pub read_auth: ReadAuth,
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .app_data(
            web::QueryConfig::default()
                .error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
        )
        .service(
            web::resource("/webhooks/adapty")
                .route(web::post().to(webhook::receive))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/profiles/{profile_id}/access")
                .route(web::get().to(access::profile))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/users/{customer_user_id}/access")
                .route(web::get().to(access::user))
                .default_service(web::to(method_not_allowed)),
        )
        .default_service(web::to(not_found));
}

async fn not_found() -> Result<&'static str, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed() -> Result<&'static str, ApiError> {
    Err(ApiError::MethodNotAllowed)
}
