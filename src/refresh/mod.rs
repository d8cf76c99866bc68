//! What Adapty knows, asked for: a profile fetched from Adapty's server-side API is
//! stored and folded like a webhook (an `adapty_api_snapshot` event,
//! [`crate::adapty::api`]), through the one writer, so the index, the change feed and
//! `rebuild` all see it. Off without `--adapty-secret-key`.
//!
//! Who asks: `entitled sync` ([`sync`]), the refresh routes and `?wait_for=` (HTTP),
//! and the check before a lapse ([`lapse`]).

pub mod client;
pub mod lapse;
pub mod sync;

use crate::adapty::{self, ReceivedEvent};
use crate::index::{Index, ProfileAccess};
use crate::store::writer::{SendError, WriterHandle};
use crate::store::StoreError;
use crate::timestamp::Timestamp;
pub use client::{AdaptyApi, Answer, ApiError, Id, Who};
use std::sync::Arc;
use std::time::Duration;

/// How long a fetched profile may wait for room in the writer's queue.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Fetches profiles and hands them to the writer.
pub struct Refresher {
    pub api: Arc<AdaptyApi>,
    writer: WriterHandle,
    index: Arc<Index>,
}

/// What a refresh found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// Adapty answered; the profile's snapshot is folded in. `changed`: the profile's
    /// access answer is not what it was (which event decided it aside).
    Folded { profile_id: Arc<str>, changed: bool },
    /// Adapty does not know the profile (404).
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Invalid(#[from] adapty::api::ApiParseError),
    #[error("the writer's queue stayed full")]
    Saturated,
    #[error("shutting down")]
    Stopped,
    #[error("storing the profile failed: {0}")]
    Store(Arc<StoreError>),
}

impl Refresher {
    pub fn new(api: Arc<AdaptyApi>, writer: WriterHandle, index: Arc<Index>) -> Self {
        Refresher { api, writer, index }
    }

    /// Fetches a profile now and folds it in; answers once it is committed, on disk and
    /// in the index. `source` is kept in the stored event (`refresh`, `verify`, …).
    pub async fn refresh(&self, who: Who<'_>, source: &str) -> Result<Refreshed, RefreshError> {
        let body = match self.api.fetch(who).await? {
            Answer::Unknown => return Ok(Refreshed::Unknown),
            Answer::Profile(body) => body,
        };
        let fetched = adapty::api::envelope(&body, source, Timestamp::now())?;
        let profile_id = fetched.event.profile_id.clone();
        let before = self.access_of(&profile_id);
        let received = ReceivedEvent {
            event: fetched.event,
            received_type: adapty::api::SNAPSHOT_TYPE.to_owned(),
            body: fetched.body,
        };
        let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
        let reply = self
            .writer
            .send(Box::new(received), deadline)
            .await
            .map_err(|e| match e {
                SendError::Saturated => RefreshError::Saturated,
                SendError::Stopped => RefreshError::Stopped,
            })?;
        reply
            .await
            .map_err(|_| RefreshError::Stopped)?
            .map_err(RefreshError::Store)?;
        let changed = before != self.access_of(&profile_id);
        Ok(Refreshed::Folded {
            profile_id,
            changed,
        })
    }

    /// What a profile's answer depends on, `updated_at` left out.
    fn access_of(&self, profile_id: &str) -> Option<Vec<impl PartialEq>> {
        self.index.with_profile(profile_id, |known| {
            known.map(|p: &ProfileAccess| {
                p.levels
                    .iter()
                    .map(|l| {
                        (
                            l.labels.clone(),
                            l.window(),
                            l.will_renew,
                            l.in_grace_period,
                            l.is_refund,
                        )
                    })
                    .collect()
            })
        })
    }
}
