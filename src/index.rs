//! Committed state in memory: what the read API answers from. Warmed from the
//! database at start, then changed only by the writer, after its transaction commits,
//! so a reader never sees an answer the database could lose.

use crate::projection::{AccessWindow, Entitlement};
use crate::timestamp::Timestamp;
use dashmap::DashMap;
use smallvec::SmallVec;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// What a level is, as opposed to its state. A database holds a handful of distinct
/// combinations (levels × stores × products × environments), so the index keeps one
/// shared copy of each instead of four strings per level.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LevelLabels {
    pub access_level_id: Arc<str>,
    pub store: Option<Arc<str>>,
    pub vendor_product_id: Option<Arc<str>>,
    pub environment: Option<Arc<str>>,
}

/// One access level of one profile, as the read API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelAccess {
    pub labels: Arc<LevelLabels>,
    pub window: AccessWindow,
    pub will_renew: bool,
    pub in_grace_period: bool,
    pub is_refund: bool,
    /// `event_datetime` of the newest event folded into the level.
    pub updated_at: Timestamp,
}

impl LevelAccess {
    pub fn access_level_id(&self) -> &Arc<str> {
        &self.labels.access_level_id
    }
}

/// What the index knows of one profile.
#[derive(Clone, Debug, Default)]
pub struct ProfileAccess {
    pub customer_user_id: Option<Arc<str>>,
    pub levels: Vec<LevelAccess>,
}

/// A change the writer committed, to be applied to the index.
#[derive(Debug)]
pub enum Change {
    Level {
        profile_id: Arc<str>,
        access_level_id: Arc<str>,
        entitlement: Option<Entitlement>,
    },
    CustomerUserId {
        profile_id: Arc<str>,
        customer_user_id: Arc<str>,
    },
}

/// What [`Index::counts`] found.
#[derive(Debug, Default)]
pub struct Counts {
    pub profiles: usize,
    pub entitlements: usize,
    pub active_by_level: Vec<(Arc<str>, usize)>,
}

#[derive(Default)]
pub struct Index {
    profiles: DashMap<Arc<str>, ProfileAccess>,
    /// `customer_user_id` → the profiles that carry it: nearly always one, held
    /// inline (a `Vec` would allocate room for four, ~80 bytes a user).
    users: DashMap<Arc<str>, SmallVec<[Arc<str>; 1]>>,
    /// The distinct [`LevelLabels`]: one copy of each.
    labels: Mutex<HashSet<Arc<LevelLabels>>>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index sized for `profiles` profiles, so warm-up never rehashes.
    pub fn with_capacity(profiles: usize) -> Self {
        Index {
            profiles: DashMap::with_capacity(profiles),
            ..Self::default()
        }
    }

    /// Calls `f` with the profile's committed state (`None`: never seen) and returns
    /// what it returns. No reference escapes, so no lock is held beyond the call.
    pub fn with_profile<R>(
        &self,
        profile_id: &str,
        f: impl FnOnce(Option<&ProfileAccess>) -> R,
    ) -> R {
        match self.profiles.get(profile_id) {
            Some(entry) => f(Some(entry.value())),
            None => f(None),
        }
    }

    /// The profiles that carry `customer_user_id`, sorted.
    pub fn profiles_of_user(&self, customer_user_id: &str) -> Vec<Arc<str>> {
        let mut ids = self
            .users
            .get(customer_user_id)
            .map(|ids| ids.value().to_vec())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub fn profile_count(&self) -> usize {
        self.profiles.len()
    }

    /// Sizes, and how many entitlements of each level grant access at `now` (every
    /// level known appears, with 0 when none is active). Walks the whole index: for
    /// `/metrics`, not for the request path.
    pub fn counts(&self, now: Timestamp) -> Counts {
        let mut counts = Counts {
            profiles: self.profiles.len(),
            ..Counts::default()
        };
        let mut active: std::collections::BTreeMap<Arc<str>, usize> = Default::default();
        for profile in self.profiles.iter() {
            for level in &profile.levels {
                counts.entitlements += 1;
                *active.entry(level.access_level_id().clone()).or_default() +=
                    usize::from(level.window.grants_at(now));
            }
        }
        counts.active_by_level = active.into_iter().collect();
        counts
    }

    /// Applies committed changes. Called by the writer after commit, and at warm-up.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            match change {
                Change::Level {
                    profile_id,
                    access_level_id,
                    entitlement,
                } => self.set_level(profile_id, access_level_id, entitlement),
                Change::CustomerUserId {
                    profile_id,
                    customer_user_id,
                } => self.set_customer_user_id(profile_id, customer_user_id),
            }
        }
    }

    fn intern(&self, labels: LevelLabels) -> Arc<LevelLabels> {
        let mut known = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        match known.get(&labels) {
            Some(known) => known.clone(),
            None => {
                let labels = Arc::new(labels);
                known.insert(labels.clone());
                labels
            }
        }
    }

    fn set_level(&self, profile_id: Arc<str>, level: Arc<str>, entitlement: Option<Entitlement>) {
        let access = entitlement.map(|e| LevelAccess {
            labels: self.intern(LevelLabels {
                access_level_id: level.clone(),
                store: e.store,
                vendor_product_id: e.vendor_product_id,
                environment: e.environment,
            }),
            window: e.window,
            will_renew: e.will_renew,
            in_grace_period: e.in_grace_period,
            is_refund: e.is_refund,
            updated_at: e.last_event_at,
        });
        let mut profile = self.profiles.entry(profile_id).or_default();
        let levels = &mut profile.levels;
        let position = levels.iter().position(|l| *l.access_level_id() == level);
        match (position, access) {
            (Some(i), Some(access)) => levels[i] = access,
            (Some(i), None) => {
                levels.remove(i);
            }
            (None, Some(access)) => {
                levels.push(access);
                levels.sort_by(|a, b| a.access_level_id().cmp(b.access_level_id()));
            }
            (None, None) => {}
        }
        levels.shrink_to_fit();
    }

    fn set_customer_user_id(&self, profile_id: Arc<str>, customer_user_id: Arc<str>) {
        let previous = {
            let mut profile = self.profiles.entry(profile_id.clone()).or_default();
            profile.customer_user_id.replace(customer_user_id.clone())
        };
        if previous.as_ref() == Some(&customer_user_id) {
            return;
        }
        if let Some(previous) = previous {
            if let Some(mut ids) = self.users.get_mut(&previous) {
                ids.retain(|id| *id != profile_id);
            }
            self.users.remove_if(&previous, |_, ids| ids.is_empty());
        }
        self.users
            .entry(customer_user_id)
            .or_default()
            .push(profile_id);
    }
}
