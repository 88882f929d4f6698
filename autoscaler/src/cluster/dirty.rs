//! Which services the next reconcile pass visits. Watch events, the engine's decisions and the pass itself
//! mark the services they touch; a change that concerns every service (the ConfigMap, a relist, leadership)
//! marks them all. The pass takes the marks at its start, so a mark made while it runs is kept for the next.

use std::collections::HashSet;
use std::sync::Mutex;

use ebb_config::ServiceId;
use ebb_process::sync::Locked;

/// What the next pass visits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Visit {
    /// Every service.
    All,
    /// These services (maybe none).
    Some(HashSet<ServiceId>),
}

impl Visit {
    /// Adds `ids` (nothing to add to [`Self::All`]).
    pub fn extend(&mut self, ids: impl IntoIterator<Item = ServiceId>) {
        if let Self::Some(set) = self {
            set.extend(ids);
        }
    }

    /// Whether every service is visited.
    pub fn is_all(&self) -> bool {
        matches!(self, Self::All)
    }
}

#[derive(Debug, Default)]
struct Marks {
    all: bool,
    /// The role groups' Deployments changed: every group's entry is visited.
    groups: bool,
    services: HashSet<ServiceId>,
}

/// The marks since the last pass took them.
#[derive(Debug, Default)]
pub(crate) struct Dirty(Mutex<Marks>);

impl Dirty {
    /// Marks one service.
    pub fn mark(&self, id: ServiceId) {
        let mut marks = self.0.locked();
        if !marks.all {
            marks.services.insert(id);
        }
    }

    /// Marks every service.
    pub fn mark_all(&self) {
        let mut marks = self.0.locked();
        marks.all = true;
        marks.services = HashSet::new();
    }

    /// Marks the role groups as changed.
    pub fn mark_groups(&self) {
        self.0.locked().groups = true;
    }

    /// Takes the marks: what to visit, and whether the role groups changed. Leaves none behind.
    pub fn take(&self) -> (Visit, bool) {
        let marks = std::mem::take(&mut *self.0.locked());
        let visit = if marks.all { Visit::All } else { Visit::Some(marks.services) };
        (visit, marks.groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ServiceId {
        ServiceId::new("m", name)
    }

    #[test]
    fn a_pass_visits_only_what_was_marked_since_the_last_and_takes_the_marks() {
        let dirty = Dirty::default();
        dirty.mark(id("a"));
        dirty.mark(id("b"));
        dirty.mark(id("a"));
        let (visit, groups) = dirty.take();
        assert_eq!(visit, Visit::Some([id("a"), id("b")].into()));
        assert!(!groups);
        assert_eq!(dirty.take(), (Visit::Some(HashSet::new()), false), "taken: nothing left");
    }

    #[test]
    fn marking_everything_covers_single_marks_before_and_after_it() {
        let dirty = Dirty::default();
        dirty.mark(id("a"));
        dirty.mark_all();
        dirty.mark(id("b"));
        let (visit, _) = dirty.take();
        assert!(visit.is_all());
        assert_eq!(dirty.take().0, Visit::Some(HashSet::new()), "the next pass is incremental again");
    }

    #[test]
    fn group_changes_are_kept_apart_from_the_services() {
        let dirty = Dirty::default();
        dirty.mark_groups();
        assert_eq!(dirty.take(), (Visit::Some(HashSet::new()), true));
        assert!(!dirty.take().1);
    }

    #[test]
    fn a_visit_grows_unless_it_is_everything() {
        let mut some = Visit::Some(HashSet::new());
        some.extend([id("a")]);
        assert_eq!(some, Visit::Some([id("a")].into()));
        let mut all = Visit::All;
        all.extend([id("a")]);
        assert_eq!(all, Visit::All);
    }
}
