//! Per-client cancel keys. Each client gets its own BackendKeyData; a CancelRequest carrying it is
//! forwarded to the server connection that client is using at that moment, and to nobody else.
//! The registry of keys is also the list of live clients the admin console shows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures_util::task::AtomicWaker;

use rand::RngExt;

use crate::backend::{CancelTarget, PoolKey};

/// Who a client is, for the admin console.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Client-facing database and user: its pool's key, shared with the pool.
    pub pool: Arc<PoolKey>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The proxy address it connected to.
    pub local: Option<SocketAddr>,
    /// When it connected.
    pub connected_at: SystemTime,
    /// `application_name` from its startup packet.
    pub application_name: Box<str>,
    /// The TLS protocol and cipher suite, when the connection is encrypted.
    pub tls: Option<Box<str>>,
}

/// The instant transaction ages count from, one for all clients (a slot then need not carry
/// its own).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

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
    /// When its current transaction was admitted, in microseconds since [`EPOCH`] plus one; 0
    /// when it has none.
    transaction_since: AtomicU64,
    /// Why the session must end, once something asked it to.
    abort_reason: OnceLock<&'static str>,
    /// A nudge not yet seen by the session.
    nudged: AtomicBool,
    /// The session's task, woken by an abort or a nudge. One slot is enough: only the session's
    /// own task waits on it, and a wait registers no future of its own (an idle session stays
    /// small).
    waker: AtomicWaker,
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
            u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1
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
                EPOCH
                    .elapsed()
                    .saturating_sub(Duration::from_micros(since - 1)),
            ),
        }
    }

    /// Asks the session to end now (its transaction, if any, is rolled back), for `reason`. The
    /// first reason given is the one the client is told.
    pub fn abort(&self, reason: &'static str) {
        let _ = self.abort_reason.set(reason);
        self.waker.wake();
    }

    /// Wakes the session if it waits between transactions, without ending it: it then looks at
    /// the gate again (a drain that started).
    pub fn nudge(&self) {
        self.nudged.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready with the abort reason, or with `None` when [`CancelSlot::nudge`] woke the session
    /// (the nudge is then used up): the caller checks what changed. Polled from the session's
    /// own task only.
    pub fn poll_interrupted(&self, cx: &mut Context<'_>) -> Poll<Option<&'static str>> {
        self.waker.register(cx.waker());
        if let Some(reason) = self.abort_reason.get() {
            return Poll::Ready(Some(reason));
        }
        if self.nudged.swap(false, Ordering::AcqRel) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Ready with the reason once [`CancelSlot::abort`] was called; a nudge is left for the
    /// next wait between transactions. Polled from the session's own task only.
    pub fn poll_aborted(&self, cx: &mut Context<'_>) -> Poll<&'static str> {
        self.waker.register(cx.waker());
        match self.abort_reason.get() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
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
            abort_reason: OnceLock::new(),
            nudged: AtomicBool::new(false),
            waker: AtomicWaker::new(),
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

    fn client() -> ClientInfo {
        ClientInfo {
            pool: Arc::new(PoolKey {
                database: "d".into(),
                user: "u".into(),
            }),
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: None,
            connected_at: SystemTime::now(),
            application_name: Box::default(),
            tls: None,
        }
    }

    /// Polls with a waker that counts its wake-ups.
    struct Counted(Arc<std::sync::atomic::AtomicUsize>);

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted_waker() -> (std::task::Waker, Arc<std::sync::atomic::AtomicUsize>) {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (Arc::new(Counted(Arc::clone(&count))).into(), count)
    }

    #[test]
    fn a_nudge_wakes_the_waiting_session_once_and_is_used_up() {
        let slot = CancelRegistry::default().issue(client());
        let (waker, wake_count) = counted_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(slot.poll_interrupted(&mut cx), Poll::Pending);
        slot.nudge();
        assert_eq!(wake_count.load(Ordering::SeqCst), 1);
        assert_eq!(slot.poll_interrupted(&mut cx), Poll::Ready(None));
        assert_eq!(slot.poll_interrupted(&mut cx), Poll::Pending);
    }

    #[test]
    fn a_nudge_during_a_transaction_waits_for_the_next_idle_wait() {
        let slot = CancelRegistry::default().issue(client());
        let (waker, _) = counted_waker();
        let mut cx = Context::from_waker(&waker);
        slot.nudge();
        assert_eq!(slot.poll_aborted(&mut cx), Poll::Pending);
        assert_eq!(slot.poll_interrupted(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn an_abort_ends_every_wait_with_its_first_reason() {
        let slot = CancelRegistry::default().issue(client());
        let (waker, wake_count) = counted_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(slot.poll_aborted(&mut cx), Poll::Pending);
        slot.abort("first");
        slot.abort("second");
        assert!(wake_count.load(Ordering::SeqCst) >= 1);
        assert_eq!(slot.poll_aborted(&mut cx), Poll::Ready("first"));
        assert_eq!(slot.poll_interrupted(&mut cx), Poll::Ready(Some("first")));
        assert_eq!(slot.poll_interrupted(&mut cx), Poll::Ready(Some("first")));
    }

    #[test]
    fn only_the_right_secret_resolves() {
        let registry = CancelRegistry::default();
        let slot = registry.issue(client());
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
