//! "Why is this profile (not) premium?": per level, the events folded into it, what
//! each changed, and which one set `expires_at`. `GET /profiles/{id}/access/explain`
//! and `entitled events` both show it.

use super::LevelView;
use crate::index::{Change, Index};
use crate::projection;
use crate::store::history::LoggedEvent;
use crate::timestamp::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// One event as `explain` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainedEvent {
    pub profile_event_id: String,
    /// As received.
    pub event_type: String,
    /// Adapty's canonical name; null when no name map knows it.
    pub canonical_type: Option<String>,
    pub event_datetime: String,
    pub received_at: Option<String>,
    pub vendor_product_id: Option<String>,
    /// What it changed in the level, in words; empty when nothing.
    pub changed: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainedLevel {
    /// The state now (as the access route shows it).
    pub state: Option<LevelView>,
    /// The event that set the current `expires_at`.
    pub expires_at_set_by: Option<String>,
    /// Every event folded into the level, in the order they were folded.
    pub events: Vec<ExplainedEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainAnswer {
    pub profile_id: String,
    pub access_levels: BTreeMap<String, ExplainedLevel>,
    /// Stored events that touch no level (unknown or annotation types, ignored sandbox
    /// events, consumables, snapshots without a level).
    pub ignored_events: Vec<ExplainedEvent>,
    pub checked_at: String,
}

/// Explains one profile from its logged events: also what `entitled events` prints.
pub fn explain_profile(
    profile_id: &str,
    logged: &[LoggedEvent],
    rules: &projection::Rules,
    at: Timestamp,
) -> ExplainAnswer {
    let describe = |logged: &LoggedEvent, changed: Vec<String>| ExplainedEvent {
        profile_event_id: logged.event.id.to_string(),
        event_type: logged.received_type.clone(),
        canonical_type: logged.event.event_type.map(|t| t.name().to_owned()),
        event_datetime: logged.event.event_datetime.to_rfc3339(),
        received_at: logged.received_at.map(Timestamp::to_rfc3339),
        vendor_product_id: logged.event.vendor_product_id.as_deref().map(str::to_owned),
        changed,
    };
    let mut by_level: BTreeMap<Arc<str>, Vec<&LoggedEvent>> = BTreeMap::new();
    let mut ignored_events = Vec::new();
    for logged in logged {
        match rules.level_of(&logged.event) {
            Some(level) => by_level.entry(level).or_default().push(logged),
            None => ignored_events.push(describe(logged, Vec::new())),
        }
    }
    let mut access_levels = BTreeMap::new();
    for (level, logged_events) in by_level {
        let by_id: BTreeMap<&str, &LoggedEvent> =
            logged_events.iter().map(|l| (&*l.event.id, *l)).collect();
        let steps = projection::fold_steps(logged_events.iter().map(|l| &l.event));
        let mut before = None;
        let mut expires_at_set_by = None;
        let mut events = Vec::new();
        for (event, after) in &steps {
            let changed = projection::describe_change(before.as_ref(), after.as_ref());
            let expiry =
                |s: &Option<projection::Entitlement>| s.as_ref().map(|e| e.window.expires_at);
            if expiry(&before) != expiry(after) {
                expires_at_set_by = Some(event.id.to_string());
            }
            events.push(describe(by_id[&*event.id], changed));
            before = after.clone();
        }
        let state = before.map(|e| {
            let index = Index::new();
            index.apply([Change::Level {
                profile_id: Arc::from(profile_id),
                access_level_id: level.clone(),
                entitlement: Some(e),
            }]);
            index.with_profile(profile_id, |p| {
                p.and_then(|p| p.levels.first())
                    .map(|l| LevelView::new(l, at, None))
            })
        });
        access_levels.insert(
            level.to_string(),
            ExplainedLevel {
                state: state.flatten(),
                expires_at_set_by,
                events,
            },
        );
    }
    ExplainAnswer {
        profile_id: profile_id.to_owned(),
        access_levels,
        ignored_events,
        checked_at: at.to_rfc3339(),
    }
}
