//! Per-client cancel keys. Each client gets its own BackendKeyData; a CancelRequest carrying it is
//! forwarded to the server connection that client is using at that moment, and to nobody else.
//! The registry of keys is also the list of live clients the admin console shows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rand::RngExt;

use crate::backend::CancelTarget;

/// Who a client is, for the admin console.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Client-facing user.
    pub user: String,
    /// Client-facing database.
    pub database: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The proxy address it connected to.
    pub local: Option<SocketAddr>,
    /// When it connected.
    pub connected_at: SystemTime,
    /// `application_name` from its startup packet.
    pub application_name: String,
}

/// The cancel key the proxy gave one client, and where its query runs right now.
#[derive(Debug)]
pub struct CancelSlot {
    /// The pid the client was told.
    pub pid: i32,
    /// The secret the client was told.
    pub secret: i32,
    /// Who the client is.
    pub info: ClientInfo,
    running_on: Mutex<Option<CancelTarget>>,
    waiting: AtomicBool,
}

impl CancelSlot {
    /// Records the server connection the client now uses, or `None` when it has none.
    ///
    /// # Panics
    /// If the slot's lock was poisoned.
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.running_on.lock().expect("cancel slot lock") = target;
    }

    /// The server connection the client uses now, if any.
    ///
    /// # Panics
    /// If the slot's lock was poisoned.
    #[must_use]
    pub fn current(&self) -> Option<CancelTarget> {
        *self.running_on.lock().expect("cancel slot lock")
    }

    /// Records whether the client is waiting for a server connection.
    pub fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed);
    }

    /// Whether the client is waiting for a server connection.
    #[must_use]
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
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
    pub fn issue(&self, info: ClientInfo) -> Arc<CancelSlot> {
        let mut rng = rand::rng();
        let mut slots = self.slots.lock().expect("cancel registry lock");
        let pid = loop {
            let pid = rng.random_range(1..i32::MAX);
            if !slots.contains_key(&pid) {
                break pid;
            }
        };
        let slot = Arc::new(CancelSlot {
            pid,
            secret: rng.random(),
            info,
            running_on: Mutex::new(None),
            waiting: AtomicBool::new(false),
        });
        slots.insert(pid, Arc::clone(&slot));
        slot
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

    /// Every live client.
    ///
    /// # Panics
    /// If the registry's lock was poisoned.
    #[must_use]
    pub fn all(&self) -> Vec<Arc<CancelSlot>> {
        self.slots
            .lock()
            .expect("cancel registry lock")
            .values()
            .cloned()
            .collect()
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
        let slot = registry.issue(ClientInfo {
            user: "u".into(),
            database: "d".into(),
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: None,
            connected_at: SystemTime::now(),
            application_name: String::new(),
        });
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
