//! One copy of equal values that many cached objects hold. The pods of a Deployment carry the same queue-proxy
//! with the same variables, which the caches keep for the sidecar checks: about 1.4 KiB a pod, held once for
//! all of them instead. The table holds weak references, so a value goes when its last holder does; the dead
//! entries are swept out once the table has doubled since the last sweep.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, Weak};

use ebb_process::sync::Locked;

/// The fewest entries at which the table is swept.
const FIRST_SWEEP: usize = 1024;

/// A table of shared values, by a keyed hash of their content.
#[derive(Debug)]
pub(crate) struct Interner<T> {
    /// Keyed per process, so that objects written to collide cannot be made to (a collision only costs a copy).
    hasher: RandomState,
    table: Mutex<Table<T>>,
}

#[derive(Debug)]
struct Table<T> {
    by_hash: HashMap<u64, Weak<T>>,
    sweep_at: usize,
}

impl<T: Hash + Eq> Default for Interner<T> {
    fn default() -> Self {
        let table = Table { by_hash: HashMap::new(), sweep_at: FIRST_SWEEP };
        Self { hasher: RandomState::new(), table: Mutex::new(table) }
    }
}

impl<T: Hash + Eq> Interner<T> {
    /// The copy of `value` that others hold already, or `value` itself, shared from now on.
    pub fn share(&self, value: T) -> Arc<T> {
        let hash = self.hasher.hash_one(&value);
        let mut table = self.table.locked();
        if let Some(held) = table.by_hash.get(&hash).and_then(Weak::upgrade)
            && *held == value
        {
            return held;
        }
        let shared = Arc::new(value);
        table.by_hash.insert(hash, Arc::downgrade(&shared));
        if table.by_hash.len() >= table.sweep_at {
            table.by_hash.retain(|_, held| held.strong_count() > 0);
            table.sweep_at = (2 * table.by_hash.len()).max(FIRST_SWEEP);
        }
        shared
    }

    /// Entries in the table, dead ones included until they are swept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.locked().by_hash.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy_and_different_ones_do_not() {
        let interner = Interner::default();
        let a = interner.share(vec!["EBB_UPSTREAM".to_owned(), "127.0.0.1:8080".to_owned()]);
        let b = interner.share(vec!["EBB_UPSTREAM".to_owned(), "127.0.0.1:8080".to_owned()]);
        let c = interner.share(vec!["EBB_UPSTREAM".to_owned(), "127.0.0.1:8000".to_owned()]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, ["EBB_UPSTREAM", "127.0.0.1:8000"]);
    }

    #[test]
    fn a_value_goes_with_its_last_holder_and_the_dead_entries_are_swept() {
        let interner = Interner::default();
        let first = interner.share(1u32);
        drop(first);
        let again = interner.share(1u32);
        assert_eq!(Arc::strong_count(&again), 1, "a new copy: the old one went with its holder");
        // Values that nobody holds any more fill the table up to its sweep, which leaves the live ones.
        let kept: Vec<Arc<u32>> = (0..10).map(|i| interner.share(1000 + i)).collect();
        for i in 0..(FIRST_SWEEP as u32) {
            drop(interner.share(2000 + i));
        }
        assert!(interner.len() < FIRST_SWEEP, "swept: {} entries", interner.len());
        assert!(interner.len() > kept.len(), "the live ones are kept");
        assert!(Arc::ptr_eq(&kept[3], &interner.share(1003)), "the live ones stay shared");
    }
}
