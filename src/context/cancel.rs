//! Per-client cancel keys. Each client gets its own BackendKeyData; a CancelRequest carrying it is
//! forwarded to the server connection that client is using at that moment, and to nobody else.
//! The registry of keys is also the list of live clients the admin console shows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

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
    /// The TLS protocol and cipher suite, when the connection is encrypted.
    pub tls: Option<String>,
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
    /// When its current transaction was admitted, in microseconds since `epoch` plus one; 0
    /// when it has none.
    transaction_since: AtomicU64,
    epoch: Instant,
    abort_reason: Mutex<Option<&'static str>>,
    abort: Notify,
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

    /// Records that the client's transaction was admitted now, or ended (`false`).
    pub fn set_in_transaction(&self, in_transaction: bool) {
        let since = if in_transaction {
            u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1
        } else {
            0
        };
        self.transaction_since.store(since, Ordering::Relaxed);
    }

    /// How long the client's current transaction has been open, if it has one.
    #[must_use]
    pub fn transaction_age(&self) -> Option<Duration> {
        match self.transaction_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_micros(since - 1)),
            ),
        }
    }

    /// Asks the session to end now (its transaction, if any, is rolled back), for `reason`.
    ///
    /// # Panics
    /// If the slot's lock was poisoned.
    pub fn abort(&self, reason: &'static str) {
        self.abort_reason
            .lock()
            .expect("cancel slot lock")
            .get_or_insert(reason);
        self.abort.notify_one();
    }

    /// Wakes the session if it waits between transactions, without ending it: it then looks at
    /// the gate again (a drain that started). One signal for both keeps an idle wait to one
    /// registration.
    pub fn nudge(&self) {
        self.abort.notify_one();
    }

    /// Resolves with the abort reason, or with `None` when [`CancelSlot::nudge`] woke the
    /// session (or a wake-up was left over): the caller then checks what changed.
    ///
    /// # Panics
    /// If the slot's lock was poisoned.
    pub async fn interrupted(&self) -> Option<&'static str> {
        if let Some(reason) = *self.abort_reason.lock().expect("cancel slot lock") {
            return Some(reason);
        }
        self.abort.notified().await;
        *self.abort_reason.lock().expect("cancel slot lock")
    }

    /// Resolves with the reason once [`CancelSlot::abort`] was called.
    ///
    /// # Panics
    /// If the slot's lock was poisoned.
    pub async fn aborted(&self) -> &'static str {
        loop {
            if let Some(reason) = *self.abort_reason.lock().expect("cancel slot lock") {
                return reason;
            }
            self.abort.notified().await;
        }
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
            transaction_since: AtomicU64::new(0),
            epoch: Instant::now(),
            abort_reason: Mutex::new(None),
            abort: Notify::new(),
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
            tls: None,
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
        assert_eq!(slot.transaction_age(), None);
        slot.set_in_transaction(true);
        assert!(slot.transaction_age().is_some());
        slot.set_in_transaction(false);
        assert_eq!(slot.transaction_age(), None);
    }
}
