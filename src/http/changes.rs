//! `GET /changes`: the change feed, with long-polling, so a consumer loop is a few
//! lines: remember the last `seq`, ask for what came after, react, repeat.

use super::error::{ApiError, ErrorBody};
use super::{read_store, AppState};
use crate::access::change::AccessChange;
use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// At most this many changes an answer.
pub const MAX_LIMIT: u32 = 1000;
/// At most this long a wait.
pub const MAX_WAIT_SECONDS: u64 = 60;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// The last `seq` seen; 0 (the default) for the beginning.
    after: Option<i64>,
    /// How many changes at most (default 100, at most 1000).
    limit: Option<u32>,
    /// When there are none yet, wait up to this many seconds for one (at most 60).
    wait: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChangesAnswer {
    changes: Vec<AccessChange>,
    /// Pass as `after` next time: the last `seq` returned, or `after` when none.
    next_after: i64,
}

/// Every flip of a level's effective access, in order: gained or lost, and why.
#[utoipa::path(
    tag = "access",
    params(ChangesQuery),
    responses(
        (status = 200, body = ChangesAnswer),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 401, description = "--read-token is set and was not given", body = ErrorBody),
        (status = 503, description = "The database cannot be read now", body = ErrorBody)
    ),
    security((), ("read_token" = []))
)]
#[get("/changes")]
pub async fn changes(
    request: HttpRequest,
    query: web::Query<ChangesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.read_auth.check(&request)?;
    let after = query.after.unwrap_or(0).max(0);
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT_SECONDS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut newest = state.status.watch_changes();
    loop {
        // Mark the current value seen before reading, so a commit in between wakes us.
        let newest_seen = *newest.borrow_and_update();
        // Only up to what the writer has released: a change committed but not yet on
        // disk could vanish with the power, and its `seq` be given to another.
        let found = if newest_seen > after {
            read_store(&state, move |r| r.changes_after(after, newest_seen, limit)).await?
        } else {
            Vec::new()
        };
        let done = tokio::time::Instant::now() >= deadline || state.status.is_stopped();
        if !found.is_empty() || done {
            let next_after = found.last().map_or(after, |c| c.seq);
            return Ok(HttpResponse::Ok().json(ChangesAnswer {
                changes: found.into_iter().map(AccessChange::from).collect(),
                next_after,
            }));
        }
        if tokio::time::timeout_at(deadline, newest.changed())
            .await
            .is_err()
        {
            // Timed out: one last look happens at the top of the loop.
            continue;
        }
    }
}
