//! Which statements one server connection has prepared under pgsidecar's server-side names, with
//! least-recently-used eviction so that a long-lived connection does not accumulate plans forever.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Server-side statements that some connection of a pool has parsed without error. A client's
/// Parse of one of them, outside a transaction, is answered without taking a server connection,
/// so that a driver preparing statements in blocking calls cannot starve the pool.
#[derive(Debug, Default)]
pub struct KnownStatements {
    names: Mutex<HashSet<Arc<str>>>,
}

impl KnownStatements {
    /// Forget everything past this many statements, so that ad-hoc statement texts do not grow
    /// the set without bound.
    const CAPACITY: usize = 10_000;

    /// Records statements that parsed.
    ///
    /// # Panics
    /// If the lock was poisoned.
    pub fn remember(&self, names: Vec<Arc<str>>) {
        if names.is_empty() {
            return;
        }
        let mut known = self.names.lock().expect("known statements lock");
        if known.len() + names.len() > Self::CAPACITY {
            known.clear();
        }
        known.extend(names);
    }

    /// Whether `name` has parsed on some connection.
    ///
    /// # Panics
    /// If the lock was poisoned.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.names
            .lock()
            .expect("known statements lock")
            .contains(name)
    }
}

/// The prepared statements of one server connection.
#[derive(Debug, Clone)]
pub struct PreparedSet {
    capacity: usize,
    last_use: HashMap<Arc<str>, u64>,
    clock: u64,
    batch_start: u64,
}

impl PreparedSet {
    /// An empty set that holds at most `capacity` statements between batches.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            last_use: HashMap::new(),
            clock: 0,
            batch_start: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Whether `name` is prepared; a hit counts as a use.
    pub fn touch(&mut self, name: &str) -> bool {
        let now = self.tick();
        match self.last_use.get_mut(name) {
            Some(used) => {
                *used = now;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared and returns the statements to close to stay within capacity.
    /// Statements used since the last Sync are never evicted: their portals may still be open.
    pub fn insert(&mut self, name: Arc<str>) -> Vec<Arc<str>> {
        let now = self.tick();
        self.last_use.insert(name, now);
        let mut evicted = Vec::new();
        while self.last_use.len() > self.capacity {
            let oldest = self
                .last_use
                .iter()
                .filter(|(_, used)| **used < self.batch_start)
                .min_by_key(|(_, used)| **used)
                .map(|(name, _)| Arc::clone(name));
            let Some(oldest) = oldest else { break };
            self.last_use.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }

    /// Forgets `name` (its Parse failed or it was closed).
    pub fn remove(&mut self, name: &str) {
        self.last_use.remove(name);
    }

    /// Marks a batch boundary (a Sync or simple Query was sent).
    pub fn start_batch(&mut self) {
        self.batch_start = self.tick();
    }

    /// Forgets everything (after `DISCARD ALL` / `DEALLOCATE ALL` on the server).
    pub fn clear(&mut self) {
        self.last_use.clear();
    }

    /// How many statements are prepared.
    #[must_use]
    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    /// Whether none is prepared.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.last_use.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_outside_the_current_batch() {
        let mut set = PreparedSet::new(2);
        assert!(set.insert("a".into()).is_empty());
        assert!(set.insert("b".into()).is_empty());
        set.start_batch();
        assert!(set.touch("a"));
        assert_eq!(set.insert("c".into()), vec![Arc::<str>::from("b")]);
        assert!(set.touch("a") && set.touch("c") && !set.touch("b"));
    }

    #[test]
    fn statements_of_the_current_batch_are_kept_over_capacity() {
        let mut set = PreparedSet::new(1);
        set.start_batch();
        assert!(set.insert("a".into()).is_empty());
        assert!(set.insert("b".into()).is_empty());
        assert_eq!(set.len(), 2);
        set.start_batch();
        assert_eq!(set.insert("c".into()).len(), 2);
    }
}
