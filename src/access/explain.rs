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
    /// The profile the event was addressed to: another member's, on a shared level.
    pub profile_id: String,
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
    /// The profile whose events the state comes from, when shared (its group's
    /// events are listed below, each with its `profile_id`); null when its own.
    pub shared_from: Option<String>,
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

/// Explains one profile from the logged events of it and of every profile linked with
/// it (`links`, by level, as [`crate::store::history::shared_events`] reads them):
/// also what `entitled events` prints. A shared level lists the events of its group
/// (each names its profile), and its state's `shared_from` names the holder.
pub fn explain_profile(
    profile_id: &str,
    logged: &[LoggedEvent],
    links: &projection::LinksByLevel,
    rules: &projection::Rules,
    at: Timestamp,
) -> ExplainAnswer {
    let describe = |logged: &LoggedEvent, changed: Vec<String>| ExplainedEvent {
        profile_event_id: logged.event.id.to_string(),
        profile_id: logged.event.profile_id.to_string(),
        event_type: logged.received_type.clone(),
        canonical_type: logged.event.event_type.map(|t| t.name().to_owned()),
        event_datetime: logged.event.event_datetime.to_rfc3339(),
        received_at: logged.received_at.map(Timestamp::to_rfc3339),
        vendor_product_id: logged.event.vendor_product_id.as_deref().map(str::to_owned),
        changed,
    };
    let own: Arc<str> = Arc::from(profile_id);
    let mut levels: std::collections::BTreeSet<Arc<str>> = Default::default();
    let mut ignored_events = Vec::new();
    for logged in logged {
        let event = &logged.event;
        let level = rules.level_of(event);
        if level.is_none() && event.api_levels.is_none() && event.profile_id == own {
            ignored_events.push(describe(logged, Vec::new()));
        }
        levels.extend(level.into_iter().chain(rules.listed_levels(event)));
    }
    let by_id: BTreeMap<&str, &LoggedEvent> = logged.iter().map(|l| (&*l.event.id, l)).collect();
    let mut access_levels = BTreeMap::new();
    for level in levels {
        let views: Vec<std::borrow::Cow<'_, projection::Event>> = logged
            .iter()
            .filter_map(|l| rules.view(&l.event, &level))
            .collect();
        let ordered = projection::in_order(views.iter().map(|v| &**v));
        let level_links = links.get(&level).cloned().unwrap_or_default();
        // Shown: the events of the profiles in the profile's group now, and of those
        // that were in it when they came (a member that left since).
        let last =
            projection::Groups::with_links(level_links.clone()).fold_all(ordered.iter().copied());
        let mut groups = projection::Groups::with_links(level_links);
        let mut before = None;
        let mut expires_at_set_by = None;
        let mut events = Vec::new();
        for event in ordered {
            let in_group = |groups: &projection::Groups| groups.same_group(&own, &event.profile_id);
            let shown = in_group(&last) || in_group(&groups);
            groups.apply(event);
            if !(shown || in_group(&groups)) {
                continue;
            }
            let after = groups.state_of(&own);
            let changed = projection::describe_change(before.as_ref(), after.as_ref());
            let expiry =
                |s: &Option<projection::Entitlement>| s.as_ref().map(|e| e.window.expires_at);
            if expiry(&before) != expiry(&after) {
                expires_at_set_by = Some(event.id.to_string());
            }
            events.push(describe(by_id[&*event.id], changed));
            before = after;
        }
        if events.is_empty() {
            continue;
        }
        let shared_from = before
            .as_ref()
            .and_then(|e| e.shared_from.as_deref().map(str::to_owned));
        let state = before.map(|e| {
            let index = Index::new();
            index.apply([Change::Level {
                profile_id: own.clone(),
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
                shared_from,
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
