//! One row of the change feed as the API shows it: `GET /changes` lists them, and
//! push (`--notify-url`) sends each as its `data`.

use crate::store;
use crate::timestamp::Timestamp;
use serde::Serialize;
use utoipa::ToSchema;

/// One row of `access_changes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessChange {
    // Fields as `access_changes` has them (schema.sql).
    /// The cursor: pass the last one seen as `after`.
    seq: i64,
    profile_id: String,
    /// The profile's `customer_user_id` when the change was recorded (for changes
    /// recorded before schema version 3: when the file was upgraded).
    customer_user_id: Option<String>,
    access_level_id: String,
    /// `true`: gained access; `false`: lost it.
    active: bool,
    /// The canonical event type that did it (`shared:<type>` when it was another
    /// member's of the profile's sharing group), `expired` or `started` (the clock),
    /// or `rebuild`.
    reason: String,
    profile_event_id: Option<String>,
    expires_at: Option<String>,
    changed_at: String,
    /// The profile whose event did it, when not this one (shared access); else null.
    shared_from: Option<String>,
}

impl From<store::AccessChange> for AccessChange {
    fn from(row: store::AccessChange) -> Self {
        AccessChange {
            seq: row.seq,
            profile_id: row.profile_id,
            customer_user_id: row.customer_user_id,
            access_level_id: row.access_level_id,
            active: row.active,
            reason: row.reason,
            profile_event_id: row.profile_event_id,
            expires_at: row.expires_at,
            changed_at: row.changed_at,
            shared_from: row.shared_from,
        }
    }
}

/// What push (`--notify-url`) POSTs: one change of the feed, in the Standard Webhooks
/// envelope (`type`, `timestamp`, `data`).
#[derive(Debug, Serialize, ToSchema)]
pub struct PushMessage<'a> {
    /// Always `access.changed`.
    #[serde(rename = "type")]
    #[schema(example = "access.changed")]
    pub kind: &'static str,
    /// When this attempt was sent (each retry has its own).
    #[schema(value_type = String)]
    pub timestamp: Timestamp,
    /// The change, exactly as `GET /changes` shows it.
    pub data: &'a AccessChange,
}

impl<'a> PushMessage<'a> {
    pub fn new(data: &'a AccessChange, timestamp: Timestamp) -> Self {
        PushMessage {
            kind: "access.changed",
            timestamp,
            data,
        }
    }
}
