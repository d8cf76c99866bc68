//! Operations: liveness, readiness, metrics, and the OpenAPI document.

use super::AppState;
use crate::telemetry;
use crate::timestamp::Timestamp;
use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct HealthAnswer {
    /// `ok`, or `unavailable`.
    status: &'static str,
    /// Why not ready, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// 200 while the process serves HTTP.
#[utoipa::path(tag = "operations", responses((status = 200, body = HealthAnswer)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthAnswer {
        status: "ok",
        reason: None,
    })
}

/// 200 when the database is open, its last write succeeded, and the index is warm;
/// 503 with the reason otherwise (start-up on a large database, a storage error).
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, body = HealthAnswer),
        (status = 503, description = "Not ready, and why", body = HealthAnswer)
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.status.readiness() {
        Ok(()) => HttpResponse::Ok().json(HealthAnswer {
            status: "ok",
            reason: None,
        }),
        Err(reason) => HttpResponse::ServiceUnavailable().json(HealthAnswer {
            status: "unavailable",
            reason: Some(reason),
        }),
    }
}

/// Prometheus text format.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain"))
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let now = Timestamp::now();
    // Counting walks the whole index (a million profiles, tens of milliseconds): on the
    // blocking pool, not on the worker that answers lookups.
    // The database's size too: on PostgreSQL it is a query.
    let (index, reader) = (state.index.clone(), state.reader.clone());
    let Ok((counts, database_bytes)) =
        web::block(move || (index.counts(now), reader.disk_bytes())).await
    else {
        return HttpResponse::ServiceUnavailable().finish();
    };
    if let Some(notifier) = &state.notifier {
        ::metrics::gauge!("entitled_notify_lag_seconds").set(notifier.lag_seconds(now));
        ::metrics::gauge!("entitled_notify_pending").set(notifier.pending() as f64);
        ::metrics::gauge!("entitled_notify_oldest_undelivered_seq")
            .set(notifier.oldest_undelivered() as f64);
    }
    let body = telemetry::scrape(telemetry::Snapshot {
        profiles: counts.profiles,
        entitlements: counts.entitlements,
        active_by_level: &counts.active_by_level,
        database_bytes,
        newest_event_age_seconds: state
            .status
            .newest_received()
            .map(|t| (now.as_micros() - t.as_micros()) as f64 / 1e6),
    });
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

/// This document.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 description of every route", content_type = "application/json"))
)]
#[get("/openapi.json")]
pub async fn openapi(api: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    let mut document = serde_json::to_value(api.get_ref()).unwrap_or_default();
    super::notify::describe_push(&mut document);
    HttpResponse::Ok().json(document)
}
