//! Shared access: the profiles that share an access level (Adapty's "Sharing paid
//! access between user accounts", on by default) answer with one state.
//!
//! The rule, per access level (docs/access-rules.md, "Shared access", tells it in
//! prose):
//! - A **sharing declaration** is an active `access_level_updated` whose
//!   `profiles_sharing_access_level` lists other profiles. It puts its own profile and
//!   every listed one in one **group** (joining their groups, transitively).
//! - A group's state is the fold of every member's events of the level, in the usual
//!   order ([`super::order_key`]); every member answers with it. So a renewal or a
//!   refund that fires only on the holder reaches every member at the same instant.
//! - A member **leaves** its group at an inactive `access_level_updated` with no list
//!   (how Adapty's "transfer access" mode takes access from the old profile). That
//!   event is folded into the group first, so a refund or expiry that comes as such a
//!   snapshot still ends everyone's access; after it, the member and the group go
//!   their own ways, each keeping the state as it was.
//! - A group holds at most [`MAX_SHARING_GROUP`] profiles: a declaration that would
//!   make it larger links only the profiles that still fit.
//!
//! Groups change only at events, so the fold of a set of events in order is one
//! answer whatever order they arrived in: [`Groups`] is that fold.

use super::{fold, in_order, Entitlement, Event, EventType, SharedProfile};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// A sharing link: two profiles (each link is held both ways).
pub type Link = (Arc<str>, Arc<str>);
/// Links by access level.
pub type LinksByLevel = HashMap<Arc<str>, HashSet<Link>>;

/// The most profiles one sharing group may hold (all installs of one store account:
/// a handful in practice). Every event of a member rewrites every member's row, so the
/// bound is the bound on an event's work; past it, links are refused with a warning.
pub const MAX_SHARING_GROUP: usize = 100;

/// What an event of a level does to the groups of that level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership<'a> {
    /// A sharing declaration: its profile and these share the level from now on.
    Joins(&'a [SharedProfile]),
    /// An inactive snapshot with no list: its profile leaves its group after it.
    Leaves,
    /// Anything else: folded into the profile's group, which stays as it is.
    Stays,
}

/// What `event` does to the groups of its level.
pub fn membership(event: &Event) -> Membership<'_> {
    if event.event_type != Some(EventType::AccessLevelUpdated) {
        return Membership::Stays;
    }
    match &event.snapshot {
        Some(s) if s.is_active && !event.shared_with.is_empty() => {
            Membership::Joins(&event.shared_with)
        }
        Some(s) if !s.is_active && event.shared_with.is_empty() => Membership::Leaves,
        _ => Membership::Stays,
    }
}

/// A group's state: the level's fold, and the profile it comes from (whose event last
/// changed it; a declaration keeps the holder's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupState {
    pub entitlement: Entitlement,
    pub source: Arc<str>,
}

impl GroupState {
    /// The group's state read back from the row of `member`.
    pub fn of_member(member: &Arc<str>, row: Entitlement) -> Self {
        GroupState {
            source: row.shared_from.clone().unwrap_or_else(|| member.clone()),
            entitlement: row,
        }
    }

    /// The row of `member` in a group named `group` (`None`: alone).
    pub fn for_member(&self, member: &Arc<str>, group: Option<&Arc<str>>) -> Entitlement {
        Entitlement {
            shared_from: (self.source != *member).then(|| self.source.clone()),
            sharing_group: group.cloned(),
            ..self.entitlement.clone()
        }
    }

    /// Folds an event that changes no membership and sorts after every event folded
    /// in (see [`super::Entitlement::last_key`]).
    pub fn fold(&self, event: &Event) -> GroupState {
        let next =
            fold(Some(self.entitlement.clone()), event).expect("a fold onto a state keeps a state");
        GroupState {
            source: if same_access(&self.entitlement, &next) {
                self.source.clone()
            } else {
                event.profile_id.clone()
            },
            entitlement: next,
        }
    }
}

/// The state a sharing declaration leaves in the group it makes: its snapshot, coming
/// from the holder's purchase, which is the first of the joined groups' states
/// (`joined`, the declaring profile's own first) that grants at its instant; from the
/// declaring profile when none does.
pub fn declared<'a>(
    joined: impl IntoIterator<Item = &'a GroupState>,
    event: &Event,
) -> Option<GroupState> {
    let mut joined = joined.into_iter();
    let own = joined.next();
    let source = own
        .into_iter()
        .chain(joined)
        .find(|s| s.entitlement.window.grants_at(event.event_datetime))
        .map_or_else(|| event.profile_id.clone(), |s| s.source.clone());
    let entitlement = fold(own.map(|s| s.entitlement.clone()), event)?;
    Some(GroupState {
        entitlement,
        source,
    })
}

/// Whether two states grant the same thing (what last changed them aside).
fn same_access(a: &Entitlement, b: &Entitlement) -> bool {
    a.window == b.window
        && a.will_renew == b.will_renew
        && a.in_grace_period == b.in_grace_period
        && a.is_refund == b.is_refund
        && a.store == b.store
        && a.vendor_product_id == b.vendor_product_id
        && a.environment == b.environment
}

struct Group {
    members: BTreeSet<Arc<str>>,
    state: Option<GroupState>,
}

/// The groups of one access level, folded from its events in order.
#[derive(Default)]
pub struct Groups {
    group_of: HashMap<Arc<str>, usize>,
    groups: Vec<Group>,
    /// Every profile ever linked with each (the groups' union over time): what the
    /// size bound is checked against, as the store's `sharing_links` is.
    ever_linked: HashMap<Arc<str>, usize>,
    linked_sets: Vec<BTreeSet<Arc<str>>>,
    /// When given: only these links may be made (both ways), and no bound applies: the
    /// links the store's `sharing_links` holds, whose bound it checked as they came.
    allowed: Option<HashSet<Link>>,
    /// Links the bound refused: (event id, profile not linked).
    pub refused: Vec<(Arc<str>, Arc<str>)>,
}

impl Groups {
    /// Groups that make only these links (the store's `sharing_links`, whose bound it
    /// checked as the links came); any other is refused.
    pub fn with_links(links: HashSet<Link>) -> Self {
        Groups {
            allowed: Some(links),
            ..Groups::default()
        }
    }

    /// Folds the events of one level (of any profiles) in order, each id once.
    pub fn fold_all<'a>(mut self, events: impl IntoIterator<Item = &'a Event>) -> Self {
        for event in in_order(events) {
            self.apply(event);
        }
        self
    }

    fn group_index(&mut self, profile: &Arc<str>) -> usize {
        if let Some(&g) = self.group_of.get(profile) {
            return g;
        }
        self.groups.push(Group {
            members: BTreeSet::from([profile.clone()]),
            state: None,
        });
        let g = self.groups.len() - 1;
        self.group_of.insert(profile.clone(), g);
        g
    }

    fn linked_index(&mut self, profile: &Arc<str>) -> usize {
        if let Some(&l) = self.ever_linked.get(profile) {
            return l;
        }
        self.linked_sets.push(BTreeSet::from([profile.clone()]));
        let l = self.linked_sets.len() - 1;
        self.ever_linked.insert(profile.clone(), l);
        l
    }

    /// Links `a` and `b` for good, unless that passes the bound; whether they are.
    fn link(&mut self, a: &Arc<str>, b: &Arc<str>) -> bool {
        if let Some(allowed) = &self.allowed {
            if !allowed.contains(&(a.clone(), b.clone())) {
                return false;
            }
        }
        let (la, lb) = (self.linked_index(a), self.linked_index(b));
        if la == lb {
            return true;
        }
        if self.allowed.is_none()
            && self.linked_sets[la].len() + self.linked_sets[lb].len() > MAX_SHARING_GROUP
        {
            return false;
        }
        let moved = std::mem::take(&mut self.linked_sets[lb]);
        for p in &moved {
            self.ever_linked.insert(p.clone(), la);
        }
        self.linked_sets[la].extend(moved);
        true
    }

    /// Folds one event, which must sort after every event applied before.
    pub fn apply(&mut self, event: &Event) {
        let own = &event.profile_id;
        let mut g = self.group_index(own);
        match membership(event) {
            Membership::Joins(shared) => {
                let mut candidates = vec![g];
                for other in shared {
                    if self.link(own, &other.profile_id) {
                        let h = self.group_index(&other.profile_id);
                        if !candidates.contains(&h) {
                            candidates.push(h);
                        }
                    } else {
                        self.refused
                            .push((event.id.clone(), other.profile_id.clone()));
                    }
                }
                let next = declared(
                    candidates
                        .iter()
                        .filter_map(|&c| self.groups[c].state.as_ref()),
                    event,
                );
                for &h in &candidates[1..] {
                    let members = std::mem::take(&mut self.groups[h].members);
                    self.groups[h].state = None;
                    for m in &members {
                        self.group_of.insert(m.clone(), g);
                    }
                    self.groups[g].members.extend(members);
                }
                self.groups[g].state = next;
            }
            membership => {
                let next = match self.groups[g].state.take() {
                    Some(state) => Some(state.fold(event)),
                    None => fold(None, event).map(|entitlement| GroupState {
                        entitlement,
                        source: own.clone(),
                    }),
                };
                self.groups[g].state = next;
                if membership == Membership::Leaves && self.groups[g].members.len() > 1 {
                    self.groups[g].members.remove(own);
                    let state = self.groups[g].state.clone();
                    self.groups.push(Group {
                        members: BTreeSet::from([own.clone()]),
                        state,
                    });
                    g = self.groups.len() - 1;
                    self.group_of.insert(own.clone(), g);
                }
            }
        }
    }

    /// Whether two profiles are in one group now (a profile is in its own).
    pub fn same_group(&self, a: &Arc<str>, b: &Arc<str>) -> bool {
        a == b
            || matches!((self.group_of.get(a), self.group_of.get(b)), (Some(x), Some(y)) if x == y)
    }

    /// The row of `profile`: its group's state as it sees it, `None` when the group
    /// has none (or the profile was never seen).
    pub fn state_of(&self, profile: &Arc<str>) -> Option<Entitlement> {
        let group = &self.groups[*self.group_of.get(profile)?];
        let name = group_name(&group.members);
        Some(group.state.as_ref()?.for_member(profile, name.as_ref()))
    }

    /// Every profile seen, with its row (`None`: no state).
    pub fn rows(&self) -> impl Iterator<Item = (&Arc<str>, Option<Entitlement>)> + '_ {
        self.group_of.keys().map(|p| (p, self.state_of(p)))
    }
}

/// A link a declaration made: (level, profile, shared_with, declaration id).
pub type LevelLink = (Arc<str>, Arc<str>, Arc<str>, Arc<str>);

/// The links the declarations among `events` make under `rules`: each level's in event
/// order up to the bound ([`links_in_order`]), each link once, one way. What a rebuild
/// (and PostgreSQL's writer, for a sharing component) writes to `sharing_links`.
pub fn declared_links<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    rules: &super::Rules,
) -> Vec<LevelLink> {
    let mut by_level: std::collections::BTreeMap<Arc<str>, Vec<&Event>> = Default::default();
    for event in events {
        if let (Some(level), Membership::Joins(_)) = (rules.level_of(event), membership(event)) {
            by_level.entry(level).or_default().push(event);
        }
    }
    let mut links = Vec::new();
    for (level, declarations) in by_level {
        for (a, b, id) in links_in_order(declarations) {
            links.push((level.clone(), a, b, id));
        }
    }
    links
}

/// `links` by level, each both ways: what the fold of a sharing component is given.
pub fn by_level(links: &[LevelLink]) -> LinksByLevel {
    let mut by_level = LinksByLevel::new();
    for (level, a, b, _) in links {
        let pairs = by_level.entry(level.clone()).or_default();
        pairs.insert((a.clone(), b.clone()));
        pairs.insert((b.clone(), a.clone()));
    }
    by_level
}

/// The links the declarations of one level make, in event order up to the bound:
/// `(profile, shared_with, declaration id)`, each link once, one way (what
/// `entitled rebuild` writes to `sharing_links`, both ways).
pub fn links_in_order<'a>(
    declarations: impl IntoIterator<Item = &'a Event>,
) -> Vec<(Arc<str>, Arc<str>, Arc<str>)> {
    let mut groups = Groups::default();
    let mut links = Vec::new();
    let mut seen = HashSet::new();
    for event in in_order(declarations) {
        if let Membership::Joins(shared) = membership(event) {
            for other in shared {
                let (a, b) = (&event.profile_id, &other.profile_id);
                let pair = if a < b {
                    (a.clone(), b.clone())
                } else {
                    (b.clone(), a.clone())
                };
                if groups.link(a, b) && seen.insert(pair) {
                    links.push((
                        event.profile_id.clone(),
                        other.profile_id.clone(),
                        event.id.clone(),
                    ));
                }
            }
        }
    }
    links
}

/// A group's name (`entitlements.sharing_group`): its smallest profile id; `None` for
/// a profile alone.
fn group_name(members: &BTreeSet<Arc<str>>) -> Option<Arc<str>> {
    (members.len() > 1)
        .then(|| members.first().cloned())
        .flatten()
}
