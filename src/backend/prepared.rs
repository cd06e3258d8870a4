//! Which statements one server connection has prepared under pgsidecar's server-side names, with
//! least-recently-used eviction so that a long-lived connection does not accumulate plans forever.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Server-side statements that some connection of a pool has parsed without error. A client's
/// Parse of one of them, outside a transaction, is answered without taking a server connection,
/// so that a driver preparing statements in blocking calls cannot starve the pool.
///
/// It also remembers which statements went stale (a schema change made PostgreSQL refuse their
/// cached plan): every connection's copy prepared before that is replaced before use.
#[derive(Debug, Default)]
pub struct KnownStatements {
    names: Mutex<HashSet<Arc<str>>>,
    /// Bumped each time a statement is found stale; copies prepared at an older epoch are
    /// checked against `stale`.
    epoch: AtomicU64,
    stale: Mutex<HashMap<Arc<str>, u64>>,
    /// Copies prepared before this epoch are all stale (the schema changed under them).
    all_stale_before: AtomicU64,
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

    /// The epoch a statement prepared now belongs to.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records that every copy of `name` prepared until now is stale.
    ///
    /// # Panics
    /// If a lock was poisoned.
    pub fn mark_stale(&self, name: &Arc<str>) {
        self.names
            .lock()
            .expect("known statements lock")
            .remove(name);
        let mut stale = self.stale.lock().expect("stale statements lock");
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if stale.len() >= Self::CAPACITY {
            stale.retain(|_, marked| *marked == epoch);
        }
        stale.insert(Arc::clone(name), epoch);
    }

    /// Records that every copy of every statement prepared until now is stale: a migration
    /// changed the schema, so each is closed and prepared afresh before its next use.
    ///
    /// # Panics
    /// If a lock was poisoned.
    pub fn invalidate_all(&self) {
        self.names.lock().expect("known statements lock").clear();
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.all_stale_before.store(epoch, Ordering::Release);
    }

    /// Whether a copy of `name` prepared at `prepared_at` is stale.
    ///
    /// # Panics
    /// If a lock was poisoned.
    #[must_use]
    pub fn is_stale(&self, name: &str, prepared_at: u64) -> bool {
        if prepared_at >= self.epoch() {
            return false;
        }
        if prepared_at < self.all_stale_before.load(Ordering::Acquire) {
            return true;
        }
        self.stale
            .lock()
            .expect("stale statements lock")
            .get(name)
            .is_some_and(|marked| *marked > prepared_at)
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
    /// Last use (clock tick) and the epoch it was prepared at, per statement.
    last_use: HashMap<Arc<str>, (u64, u64)>,
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

    /// The epoch `name` was prepared at, if it is prepared; a hit counts as a use.
    pub fn touch(&mut self, name: &str) -> Option<u64> {
        let now = self.tick();
        self.last_use.get_mut(name).map(|(used, epoch)| {
            *used = now;
            *epoch
        })
    }

    /// Records `name` as prepared and returns the statements to close to stay within capacity.
    /// Statements used since the last Sync are never evicted: their portals may still be open.
    pub fn insert(&mut self, name: Arc<str>, epoch: u64) -> Vec<Arc<str>> {
        let now = self.tick();
        self.last_use.insert(name, (now, epoch));
        let mut evicted = Vec::new();
        while self.last_use.len() > self.capacity {
            let oldest = self
                .last_use
                .iter()
                .filter(|(_, (used, _))| *used < self.batch_start)
                .min_by_key(|(_, (used, _))| *used)
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
        assert!(set.insert("a".into(), 0).is_empty());
        assert!(set.insert("b".into(), 0).is_empty());
        set.start_batch();
        assert!(set.touch("a").is_some());
        assert_eq!(set.insert("c".into(), 0), vec![Arc::<str>::from("b")]);
        assert!(set.touch("a").is_some() && set.touch("c").is_some() && set.touch("b").is_none());
    }

    #[test]
    fn copies_prepared_before_a_stale_mark_are_stale() {
        let known = KnownStatements::default();
        let name: Arc<str> = "pgsc_x".into();
        let before = known.epoch();
        assert!(!known.is_stale(&name, before));
        known.mark_stale(&name);
        assert!(known.is_stale(&name, before));
        assert!(!known.is_stale(&name, known.epoch()));
        assert!(!known.is_stale("pgsc_other", before));
        let current = known.epoch();
        known.invalidate_all();
        assert!(known.is_stale("pgsc_other", current));
        assert!(!known.is_stale("pgsc_other", known.epoch()));
    }

    #[test]
    fn statements_of_the_current_batch_are_kept_over_capacity() {
        let mut set = PreparedSet::new(1);
        set.start_batch();
        assert!(set.insert("a".into(), 0).is_empty());
        assert!(set.insert("b".into(), 0).is_empty());
        assert_eq!(set.len(), 2);
        set.start_batch();
        assert_eq!(set.insert("c".into(), 0).len(), 2);
    }
}
