//! Per-client cancel keys. Each client gets its own BackendKeyData; a CancelRequest carrying it is
//! forwarded to the server connection that client is using at that moment, and to nobody else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::RngExt;

use crate::backend::CancelTarget;

/// The cancel key the proxy gave one client, and where its query runs right now.
#[derive(Debug)]
pub struct CancelSlot {
    /// The pid the client was told.
    pub pid: i32,
    /// The secret the client was told.
    pub secret: i32,
    running_on: Mutex<Option<CancelTarget>>,
}

impl CancelSlot {
    /// Records the server connection the client now uses, or `None` when it has none.
    ///
    /// # Panics
    /// If the slot's lock was poisoned.
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.running_on.lock().expect("cancel slot lock") = target;
    }

    fn current(&self) -> Option<CancelTarget> {
        *self.running_on.lock().expect("cancel slot lock")
    }
}

/// All live cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<i32, Arc<CancelSlot>>>,
}

impl CancelRegistry {
    /// Issues a fresh key for a new client.
    ///
    /// # Panics
    /// If the registry's lock was poisoned.
    pub fn issue(&self) -> Arc<CancelSlot> {
        let mut rng = rand::rng();
        let mut slots = self.slots.lock().expect("cancel registry lock");
        loop {
            let pid = rng.random_range(1..i32::MAX);
            if slots.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                pid,
                secret: rng.random(),
                running_on: Mutex::new(None),
            });
            slots.insert(pid, Arc::clone(&slot));
            return slot;
        }
    }

    /// Forgets a client's key when its session ends.
    ///
    /// # Panics
    /// If the registry's lock was poisoned.
    pub fn remove(&self, pid: i32) {
        self.slots
            .lock()
            .expect("cancel registry lock")
            .remove(&pid);
    }

    /// The server to cancel for this key, if the key is valid and its client is running something.
    ///
    /// # Panics
    /// If the registry's lock was poisoned.
    #[must_use]
    pub fn resolve(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let slot = self
            .slots
            .lock()
            .expect("cancel registry lock")
            .get(&pid)
            .cloned()?;
        (slot.secret == secret).then(|| slot.current()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_secret_resolves() {
        let registry = CancelRegistry::default();
        let slot = registry.issue();
        let target = CancelTarget {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 42,
            secret: 7,
        };
        assert_eq!(registry.resolve(slot.pid, slot.secret), None);
        slot.set(Some(target));
        assert_eq!(registry.resolve(slot.pid, slot.secret), Some(target));
        assert_eq!(
            registry.resolve(slot.pid, slot.secret.wrapping_add(1)),
            None
        );
        registry.remove(slot.pid);
        assert_eq!(registry.resolve(slot.pid, slot.secret), None);
    }
}
