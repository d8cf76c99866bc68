//! Committed state in memory: what the read API answers from. Warmed from the
//! database at start, then changed only by the writer, after its transaction commits,
//! so a reader never sees an answer the database could lose.

use crate::projection::{AccessWindow, Entitlement};
use crate::timestamp::Timestamp;
use dashmap::DashMap;
use smallvec::SmallVec;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

/// The maps' hasher: foldhash, randomly seeded (SipHash cost start-up 7 %:
/// docs/performance.md#warm-up-by-whole-profiles). foldhash resists collision attacks only
/// "minimally", which is enough here: keys are inserted only by the writer, from the
/// webhooks it stores (which a token guards once set); a lookup's key is hashed but
/// never stored.
type RandomState = foldhash::fast::RandomState;

/// One level as the store reads it at warm-up, borrowed from the row that holds it:
/// the index keeps its own packed copy ([`LevelAccess`]).
#[derive(Clone, Copy, Debug)]
pub struct LevelRow<'a> {
    pub access_level_id: &'a str,
    pub store: Option<&'a str>,
    pub vendor_product_id: Option<&'a str>,
    pub environment: Option<&'a str>,
    /// The profile the level's state comes from, when shared.
    pub shared_from: Option<&'a str>,
    pub window: AccessWindow,
    pub will_renew: bool,
    pub in_grace_period: bool,
    pub is_refund: bool,
    /// `event_datetime` of the newest event folded into the level.
    pub last_event_at: Timestamp,
}

/// What a level is, as opposed to its state. A database holds a handful of distinct
/// combinations (levels × stores × products × environments), so the index keeps one
/// shared copy of each instead of four strings per level. A shared level's labels
/// also name the profile it is shared from: one more combination per holder of a
/// shared purchase (all its group's members hold the same copy), and none for the
/// levels that are their profile's own, which cost what they did before sharing.
#[derive(Debug, PartialEq, Eq)]
pub struct LevelLabels {
    pub access_level_id: Arc<str>,
    pub store: Option<Arc<str>>,
    pub vendor_product_id: Option<Arc<str>>,
    pub environment: Option<Arc<str>>,
    pub shared_from: Option<Arc<str>>,
}

/// [`LevelLabels`] borrowed: what the intern table is searched with, so a known
/// combination costs no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LabelsKey<'a> {
    access_level_id: &'a str,
    store: Option<&'a str>,
    vendor_product_id: Option<&'a str>,
    environment: Option<&'a str>,
    shared_from: Option<&'a str>,
}

impl LevelLabels {
    fn key(&self) -> LabelsKey<'_> {
        LabelsKey {
            access_level_id: &self.access_level_id,
            store: self.store.as_deref(),
            vendor_product_id: self.vendor_product_id.as_deref(),
            environment: self.environment.as_deref(),
            shared_from: self.shared_from.as_deref(),
        }
    }
}

/// Hashed as its key, so that the table finds it from a [`LabelsKey`].
impl Hash for LevelLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl hashbrown::Equivalent<Arc<LevelLabels>> for LabelsKey<'_> {
    fn equivalent(&self, labels: &Arc<LevelLabels>) -> bool {
        *self == labels.key()
    }
}

/// One access level of one profile, as the read API shows it. Packed: the window's
/// optional instants are held as plain microseconds with `i64::MIN` for "none" (no
/// instant the parser accepts is that far back), so a level is 40 bytes, not 64: a
/// 48-byte allocation per profile instead of 80.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelAccess {
    pub labels: Arc<LevelLabels>,
    expires_at: i64,
    starts_at: i64,
    /// `event_datetime` of the newest event folded into the level.
    pub updated_at: Timestamp,
    is_active: bool,
    is_lifetime: bool,
    pub will_renew: bool,
    pub in_grace_period: bool,
    pub is_refund: bool,
}

const NO_INSTANT: i64 = i64::MIN;

fn pack(t: Option<Timestamp>) -> i64 {
    t.map_or(NO_INSTANT, |t| t.as_micros().max(NO_INSTANT + 1))
}

fn unpack(micros: i64) -> Option<Timestamp> {
    (micros != NO_INSTANT).then(|| Timestamp::from_micros(micros))
}

impl LevelAccess {
    pub fn access_level_id(&self) -> &Arc<str> {
        &self.labels.access_level_id
    }

    /// When the level grants access.
    pub fn window(&self) -> AccessWindow {
        AccessWindow {
            is_active: self.is_active,
            is_lifetime: self.is_lifetime,
            expires_at: unpack(self.expires_at),
            starts_at: unpack(self.starts_at),
        }
    }
}

/// What the index knows of one profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileAccess {
    pub customer_user_id: Option<Arc<str>>,
    /// Sorted by access level id. A boxed slice, not a `Vec`: 8 bytes less in each of
    /// the table's buckets, which at 1M profiles are 2M.
    pub levels: Box<[LevelAccess]>,
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
    profiles: DashMap<Arc<str>, ProfileAccess, RandomState>,
    /// `customer_user_id` → the profiles that carry it: nearly always one, held
    /// inline (a `Vec` would allocate room for four, ~80 bytes a user).
    users: DashMap<Arc<str>, SmallVec<[Arc<str>; 1]>, RandomState>,
    /// The distinct [`LevelLabels`]: one copy of each.
    labels: Mutex<hashbrown::HashSet<Arc<LevelLabels>>>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index sized for `profiles` profiles, so warm-up never rehashes.
    pub fn with_capacity(profiles: usize) -> Self {
        Index {
            profiles: DashMap::with_capacity_and_hasher(profiles, RandomState::default()),
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
                    usize::from(level.window().grants_at(now));
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

    fn level_access(&self, row: &LevelRow<'_>) -> LevelAccess {
        LevelAccess {
            labels: self.intern(LabelsKey {
                access_level_id: row.access_level_id,
                store: row.store,
                vendor_product_id: row.vendor_product_id,
                environment: row.environment,
                shared_from: row.shared_from,
            }),
            expires_at: pack(row.window.expires_at),
            starts_at: pack(row.window.starts_at),
            is_active: row.window.is_active,
            is_lifetime: row.window.is_lifetime,
            will_renew: row.will_renew,
            in_grace_period: row.in_grace_period,
            is_refund: row.is_refund,
            updated_at: row.last_event_at,
        }
    }

    /// Warm-up: puts in a whole profile the index does not hold yet (from
    /// [`ProfileAssembler`]).
    pub fn insert_profile(&self, profile_id: Arc<str>, profile: ProfileAccess) {
        if let Some(user) = &profile.customer_user_id {
            self.users
                .entry(user.clone())
                .or_default()
                .push(profile_id.clone());
        }
        let previous = self.profiles.insert(profile_id, profile);
        debug_assert!(previous.is_none(), "warm-up read a profile twice");
    }

    /// The shared copy of these labels; allocated only the first time they are seen.
    fn intern(&self, key: LabelsKey<'_>) -> Arc<LevelLabels> {
        let mut known = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        known
            .get_or_insert_with(&key, |key| {
                Arc::new(LevelLabels {
                    access_level_id: key.access_level_id.into(),
                    store: key.store.map(Arc::from),
                    vendor_product_id: key.vendor_product_id.map(Arc::from),
                    environment: key.environment.map(Arc::from),
                    shared_from: key.shared_from.map(Arc::from),
                })
            })
            .clone()
    }

    fn set_level(&self, profile_id: Arc<str>, level: Arc<str>, entitlement: Option<Entitlement>) {
        let access = entitlement.map(|e| {
            self.level_access(&LevelRow {
                access_level_id: &level,
                store: e.store.as_deref(),
                vendor_product_id: e.vendor_product_id.as_deref(),
                environment: e.environment.as_deref(),
                shared_from: e.shared_from.as_deref(),
                window: e.window,
                will_renew: e.will_renew,
                in_grace_period: e.in_grace_period,
                is_refund: e.is_refund,
                last_event_at: e.last_event_at,
            })
        });
        let mut profile = self.profiles.entry(profile_id).or_default();
        let position = profile
            .levels
            .iter()
            .position(|l| *l.access_level_id() == level);
        match (position, access) {
            (Some(i), Some(access)) => profile.levels[i] = access,
            // New slices are allocated at their exact size: a `Vec` grown by `push`
            // and shrunk after leaves a free fragment beside every profile's levels,
            // which the allocator keeps (100 MB resident on 1M profiles).
            (Some(i), None) => {
                let old = std::mem::take(&mut profile.levels).into_vec();
                let mut levels = Vec::with_capacity(old.len() - 1);
                levels.extend(
                    old.into_iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, l)| l),
                );
                profile.levels = levels.into_boxed_slice();
            }
            (None, Some(access)) => {
                let old = std::mem::take(&mut profile.levels).into_vec();
                let mut levels = Vec::with_capacity(old.len() + 1);
                levels.extend(old);
                levels.push(access);
                levels.sort_by(|a, b| a.access_level_id().cmp(b.access_level_id()));
                profile.levels = levels.into_boxed_slice();
            }
            (None, None) => {}
        }
    }

    fn set_customer_user_id(&self, profile_id: Arc<str>, customer_user_id: Arc<str>) {
        // The users map holds the profile table's own copy of the id, not the caller's
        // (a second copy of every id was 39 MB of a 1M-profile warm-up).
        let (profile_id, previous) = {
            let mut profile = self.profiles.entry(profile_id).or_default();
            let previous = profile.customer_user_id.replace(customer_user_id.clone());
            (profile.key().clone(), previous)
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

/// Warm-up: whole profiles from the rows of [`crate::store::each_level_and_user`],
/// which come grouped by profile, levels sorted. Each profile then costs one map
/// insert instead of one per row, and its levels one allocation of their exact size.
#[derive(Default)]
pub struct ProfileAssembler {
    profile_id: Option<Arc<str>>,
    customer_user_id: Option<Arc<str>>,
    levels: Vec<LevelAccess>,
}

/// A profile [`ProfileAssembler`] finished, for [`Index::insert_profile`].
pub type AssembledProfile = (Arc<str>, ProfileAccess);

impl ProfileAssembler {
    /// Adds a level of `profile_id`; returns the previous profile if this one starts
    /// another.
    pub fn level(
        &mut self,
        index: &Index,
        profile_id: &str,
        row: &LevelRow<'_>,
    ) -> Option<AssembledProfile> {
        let finished = self.start(profile_id);
        debug_assert!(self
            .levels
            .last()
            .is_none_or(|l| &**l.access_level_id() < row.access_level_id));
        self.levels.push(index.level_access(row));
        finished
    }

    /// Sets the profile's `customer_user_id`; returns the previous profile if this one
    /// starts another.
    pub fn customer_user_id(
        &mut self,
        profile_id: &str,
        customer_user_id: &str,
    ) -> Option<AssembledProfile> {
        let finished = self.start(profile_id);
        self.customer_user_id = Some(customer_user_id.into());
        finished
    }

    /// The last profile, once the rows are done.
    pub fn finish(&mut self) -> Option<AssembledProfile> {
        let profile_id = self.profile_id.take()?;
        let profile = ProfileAccess {
            customer_user_id: self.customer_user_id.take(),
            levels: self.levels.drain(..).collect(),
        };
        Some((profile_id, profile))
    }

    fn start(&mut self, profile_id: &str) -> Option<AssembledProfile> {
        if self.profile_id.as_deref() == Some(profile_id) {
            return None;
        }
        let finished = self.finish();
        self.profile_id = Some(profile_id.into());
        finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::EventType;

    #[test]
    fn a_level_is_packed_and_gives_back_its_window() {
        // The memory budget (docs/performance.md#memory-per-profile) counts on these sizes.
        assert!(size_of::<LevelAccess>() <= 40);
        assert!(size_of::<(Arc<str>, ProfileAccess)>() <= 48);
        let index = Index::new();
        let instants = [
            None,
            Some(Timestamp::from_micros(0)),
            Some(Timestamp::from_micros(-1)),
        ];
        for expires_at in instants {
            for starts_at in instants {
                let window = AccessWindow {
                    is_active: true,
                    is_lifetime: false,
                    expires_at,
                    starts_at,
                };
                index.apply([Change::Level {
                    profile_id: "p".into(),
                    access_level_id: "premium".into(),
                    entitlement: Some(Entitlement {
                        window,
                        will_renew: true,
                        in_grace_period: false,
                        is_refund: true,
                        store: None,
                        vendor_product_id: None,
                        environment: None,
                        last_event_id: "e".into(),
                        last_event_type: EventType::SubscriptionStarted,
                        last_event_at: Timestamp::from_micros(7),
                        shared_from: None,
                        sharing_group: None,
                    }),
                }]);
                index.with_profile("p", |p| {
                    let level = &p.unwrap().levels[0];
                    assert_eq!(level.window(), window);
                    assert!(level.will_renew && level.is_refund && !level.in_grace_period);
                });
            }
        }
    }
}
