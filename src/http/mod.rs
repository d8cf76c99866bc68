//! The HTTP surface: routes, shared state, the OpenAPI document (generated from the
//! handlers' annotations as they are registered), request spans and metrics, and JSON
//! answers for what actix would otherwise answer in plain text.

pub mod access;
pub mod auth;
pub mod changes;
pub mod error;
pub mod health;
pub mod notify;
pub mod refresh;
pub mod webhook;

use crate::adapty::Decoder;
use crate::index::Index;
use crate::projection::Rules;
use crate::status::Status;
use crate::store::reader::Reader;
use crate::store::writer::WriterHandle;
use crate::store::StoreError;
use crate::telemetry;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::JsonPayloadError;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use auth::{ReadAuth, WebhookAuth};
use error::ApiError;
use std::sync::Arc;
use std::time::Instant;
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Built once, outside the server factory, and shared by every worker.
pub struct AppState {
    pub writer: WriterHandle,
    pub index: Arc<Index>,
    pub status: Arc<Status>,
    pub decoder: Decoder,
    /// What the fold depends on: explain folds the log again.
    pub rules: Arc<Rules>,
    /// The one read path to the store beyond the index.
    pub reader: Arc<dyn Reader>,
    pub webhook_auth: WebhookAuth,
    pub read_auth: ReadAuth,
    /// Adapty's server-side API; `None` without `--adapty-secret-key`.
    pub refresher: Option<Arc<crate::refresh::Refresher>>,
    /// Push delivery; `None` without `--notify-url`.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
}

/// The parts of the OpenAPI document that are not in a handler's annotation.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "entitled",
        description = "Adapty subscription webhooks in; \"is this user premium right now?\" out."
    ),
    components(schemas(crate::access::change::PushMessage)),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "webhook_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "The exact value entered in Adapty's dashboard (no Bearer prefix)",
            ))),
        );
        components.add_security_scheme(
            "read_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route. Registered through `utoipa_actix_web`, so a route that is served is a
/// route that is documented.
pub fn routes(config: &mut utoipa_actix_web::service_config::ServiceConfig<'_>) {
    config
        .service(webhook::receive)
        .service(access::profile)
        .service(access::user)
        .service(access::lookup)
        .service(access::explain)
        .service(refresh::profile)
        .service(refresh::user)
        .service(notify::failed)
        .service(notify::replay)
        .service(changes::changes)
        .service(health::healthz)
        .service(health::readyz)
        .service(health::metrics)
        .service(health::openapi);
}

/// Extractor settings that answer bad input with our JSON 400, not actix's text.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into())
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(webhook::MAX_BODY_BYTES)
        .error_handler(|e, _| ApiError::BadRequest(json_error(&e)).into())
}

/// What is wrong with a JSON body, without quoting it: serde's messages repeat the
/// offending value (a customer's email, say), and refusals are logged.
fn json_error(error: &JsonPayloadError) -> String {
    use serde_json::error::Category;
    let JsonPayloadError::Deserialize(error) = error else {
        // Size, content type, a broken connection: no content in these.
        return error.to_string();
    };
    let what = match error.classify() {
        Category::Syntax => "is not valid JSON",
        Category::Eof => "ends early",
        Category::Data => "does not have the shape this route takes (see /openapi.json)",
        Category::Io => "could not be read",
    };
    format!(
        "the body {what}: line {}, column {}",
        error.line(),
        error.column()
    )
}

/// Runs a read of the store on the blocking pool: the one path from a handler to the
/// database. A failure is a 503: the caller may retry.
pub async fn read_store<T: Send + 'static>(
    state: &AppState,
    read: impl FnOnce(&dyn Reader) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let reader = state.reader.clone();
    web::block(move || read(&*reader))
        .await
        .map_err(|e| ApiError::store_unavailable(&e))?
        .map_err(|e| ApiError::store_unavailable(&e))
}

pub async fn not_found() -> Result<&'static str, ApiError> {
    Err(ApiError::NotFound)
}

/// Per request: latency by route (the pattern, never the raw path) and the request id
/// echoed as `x-request-id`.
pub async fn observe(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = request.method().clone();
    let request_id = request.extensions().get::<RequestId>().copied();
    let mut response = next.call(request).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    telemetry::http_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    // Written into a stack buffer: `to_string()` was an allocation a request.
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = request_id.map(|id| &*id.hyphenated().encode_lower(&mut text));
    if let Some(id) = id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), id);
    }
    Ok(response)
}

/// The request span: method, route, request id, status and error; never the client's
/// address, user agent or body. It is a `debug` span: at the default level it is off
/// and costs nothing (formatting its fields was a tenth of a lookup's CPU), and the
/// info-level lines of refused and failed requests carry the same fields themselves.
pub struct RootSpan;

fn request_id(request: &actix_web::HttpRequest) -> String {
    request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.to_string())
        .unwrap_or_default()
}

impl RootSpanBuilder for RootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        // Field values are computed only when the span is on. The route is recorded at
        // the end: before routing, `match_pattern` would match the path again.
        tracing::debug_span!(
            "request",
            method = %request.method(),
            route = tracing::field::Empty,
            request_id = %request_id(request.request()),
            status = tracing::field::Empty,
            error = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(
        span: Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        let (request, status, error) = match outcome {
            Ok(response) => (
                Some(response.request()),
                response.status(),
                response.response().error().map(|e| e.to_string()),
            ),
            Err(error) => (
                None,
                error.as_response_error().status_code(),
                Some(error.to_string()),
            ),
        };
        let served = !status.is_client_error() && !status.is_server_error();
        if served && span.is_disabled() {
            return;
        }
        // After routing this is a lookup of the matched resource, not a match.
        let route = request
            .and_then(|r| r.match_pattern())
            .unwrap_or_else(|| "unmatched".into());
        span.record("route", route.as_str());
        span.record("status", status.as_u16());
        if let Some(error) = &error {
            span.record("error", error.as_str());
        }
        let _entered = span.enter();
        let method = request.map(|r| r.method().as_str()).unwrap_or_default();
        let request_id = request.map(request_id).unwrap_or_default();
        if status.is_server_error() {
            tracing::error!(
                request_id,
                method,
                route,
                status = status.as_u16(),
                error = error.as_deref(),
                "request failed"
            );
        } else if status.is_client_error() {
            tracing::info!(
                request_id,
                method,
                route,
                status = status.as_u16(),
                error = error.as_deref(),
                "request refused"
            );
        } else {
            tracing::debug!(status = status.as_u16(), "request served");
        }
    }
}
