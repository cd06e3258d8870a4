//! The gate: pause, drain and resume traffic. A transaction is admitted by taking a shared
//! hold on the gate of the whole sidecar and on its database's gate; a pause takes the exclusive
//! hold, so it waits for the transactions in flight while new ones queue behind it, and resume
//! lets the queue through in arrival order (tokio's `RwLock` is fair). Every pause has a
//! deadline and a maximum hold, so neither a stuck transaction nor a lost resume can turn into an
//! outage. Draining stops admission for good and ends sessions at their next transaction
//! boundary.

pub mod fleet;
mod pause;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, watch};

pub use pause::{PauseError, PauseOptions, PauseReport, Straggler, Stragglers, pause};

/// How long a pause waits for transactions in flight when the request does not say.
pub const DEFAULT_PAUSE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a pause holds at most when the request does not say.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(60);

/// What a pause or resume applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every database of this sidecar.
    All,
    /// One client-facing database.
    Database(String),
}

impl Scope {
    /// `All` for `None`, else that database.
    #[must_use]
    pub fn from_database(database: Option<&str>) -> Self {
        database.map_or(Self::All, |d| Self::Database(d.to_owned()))
    }

    /// Whether a client of `database` is affected.
    #[must_use]
    pub fn covers(&self, database: &str) -> bool {
        match self {
            Self::All => true,
            Self::Database(d) => d == database,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all databases"),
            Self::Database(d) => write!(f, "database {d}"),
        }
    }
}

/// Where a scope's gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Admitting transactions.
    Open,
    /// Not admitting new transactions, waiting for those in flight.
    Pausing,
    /// No transaction in flight; new ones wait.
    Paused,
}

/// The gate's state as `/v1/status` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GateStatus {
    /// `open`, or `draining` once shutdown began.
    pub sidecar: &'static str,
    /// Scopes that are not open: `"*"` for all databases, else the database name.
    pub paused: BTreeMap<String, Phase>,
}

/// Admission of one transaction; the gate cannot pause its scope until this is dropped.
#[derive(Debug)]
pub struct Ticket {
    _all: OwnedRwLockReadGuard<()>,
    _database: OwnedRwLockReadGuard<()>,
}

/// A held pause: the exclusive side of a scope's gate.
struct Held {
    id: u64,
    _guard: OwnedRwLockWriteGuard<()>,
}

/// Why admission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pgsidecar is shutting down")]
pub struct Draining;

/// The gate of one sidecar.
pub struct Gate {
    all: Arc<RwLock<()>>,
    databases: Mutex<HashMap<String, Arc<RwLock<()>>>>,
    phases: Mutex<BTreeMap<Scope, Phase>>,
    held: Mutex<HashMap<Scope, Held>>,
    next_id: std::sync::atomic::AtomicU64,
    draining: watch::Sender<Option<Instant>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("status", &self.status())
            .finish()
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            all: Arc::new(RwLock::new(())),
            databases: Mutex::new(HashMap::new()),
            phases: Mutex::new(BTreeMap::new()),
            held: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            draining: watch::Sender::new(None),
        }
    }
}

/// A database's gate, looked up once per session.
#[derive(Debug, Clone)]
pub struct DatabaseGate(Arc<RwLock<()>>);

impl Gate {
    fn lock_of(&self, scope: &Scope) -> Arc<RwLock<()>> {
        match scope {
            Scope::All => Arc::clone(&self.all),
            Scope::Database(database) => self.database(database).0,
        }
    }

    /// The gate of `database`, for a session to keep.
    ///
    /// # Panics
    /// If the gate's lock was poisoned.
    #[must_use]
    pub fn database(&self, database: &str) -> DatabaseGate {
        let mut databases = self.databases.lock().expect("gate lock");
        DatabaseGate(Arc::clone(
            databases
                .entry(database.to_owned())
                .or_insert_with(|| Arc::new(RwLock::new(()))),
        ))
    }

    /// Admits one transaction of the database behind `gate`, waiting while it is paused.
    ///
    /// # Errors
    /// [`Draining`] when the sidecar started shutting down (before or while waiting).
    pub async fn admit(&self, gate: &DatabaseGate) -> Result<Ticket, Draining> {
        if self.is_draining() {
            return Err(Draining);
        }
        if let (Ok(all), Ok(database)) = (
            Arc::clone(&self.all).try_read_owned(),
            Arc::clone(&gate.0).try_read_owned(),
        ) {
            return Ok(Ticket {
                _all: all,
                _database: database,
            });
        }
        let mut draining = self.draining.subscribe();
        let admitted = async {
            let all = Arc::clone(&self.all).read_owned().await;
            let database = Arc::clone(&gate.0).read_owned().await;
            Ticket {
                _all: all,
                _database: database,
            }
        };
        tokio::select! {
            ticket = admitted => Ok(ticket),
            _ = draining.wait_for(Option::is_some) => Err(Draining),
        }
    }

    fn set_phase(&self, scope: &Scope, phase: Phase) {
        let mut phases = self.phases.lock().expect("gate lock");
        if phase == Phase::Open {
            phases.remove(scope);
        } else {
            phases.insert(scope.clone(), phase);
        }
    }

    /// Holds a pause acquired by [`pause`] until [`Gate::resume`] or `max_hold` elapses.
    fn hold(self: &Arc<Self>, scope: &Scope, guard: OwnedRwLockWriteGuard<()>, max_hold: Duration) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.held
            .lock()
            .expect("gate lock")
            .insert(scope.clone(), Held { id, _guard: guard });
        self.set_phase(scope, Phase::Paused);
        let gate = Arc::downgrade(self);
        let scope = scope.clone();
        tokio::spawn(async move {
            tokio::time::sleep(max_hold).await;
            if let Some(gate) = gate.upgrade()
                && gate.resume_if(&scope, Some(id))
            {
                tracing::warn!(%scope, ?max_hold, "pause held for its maximum; resumed by itself");
            }
        });
    }

    fn resume_if(&self, scope: &Scope, id: Option<u64>) -> bool {
        let mut held = self.held.lock().expect("gate lock");
        let matches = held
            .get(scope)
            .is_some_and(|h| id.is_none_or(|id| h.id == id));
        if matches {
            held.remove(scope);
            self.set_phase(scope, Phase::Open);
        }
        matches
    }

    /// Lifts a held pause of `scope`; the transactions waiting are admitted in arrival order.
    /// Returns false when that scope was not paused.
    pub fn resume(&self, scope: &Scope) -> bool {
        self.resume_if(scope, None)
    }

    /// Stops admitting transactions for good; sessions end at their next transaction boundary.
    /// `deadline` is when the remaining ones are closed.
    pub fn drain(&self, deadline: Instant) {
        self.draining.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(deadline);
                true
            } else {
                false
            }
        });
    }

    /// Whether the sidecar is draining.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.borrow().is_some()
    }

    /// When the remaining sessions are closed, once draining started.
    #[must_use]
    pub fn drain_deadline(&self) -> Option<Instant> {
        *self.draining.borrow()
    }

    /// Resolves once draining starts.
    pub async fn drain_started(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// The gate's state now.
    ///
    /// # Panics
    /// If the gate's lock was poisoned.
    #[must_use]
    pub fn status(&self) -> GateStatus {
        let paused = self
            .phases
            .lock()
            .expect("gate lock")
            .iter()
            .map(|(scope, phase)| {
                let name = match scope {
                    Scope::All => "*".to_owned(),
                    Scope::Database(d) => d.clone(),
                };
                (name, *phase)
            })
            .collect();
        GateStatus {
            sidecar: if self.is_draining() {
                "draining"
            } else {
                "open"
            },
            paused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pause_waits_for_tickets_and_queues_new_ones() {
        let gate = Arc::new(Gate::default());
        let db = gate.database("app");
        let ticket = gate.admit(&db).await.unwrap();
        let lock = gate.lock_of(&Scope::Database("app".into()));
        let mut pausing = Box::pin(lock.write_owned());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut pausing)
                .await
                .is_err(),
            "a pause cannot complete while a transaction is in flight"
        );
        drop(ticket);
        let guard = pausing.await;
        gate.hold(
            &Scope::Database("app".into()),
            guard,
            Duration::from_secs(60),
        );
        assert_eq!(gate.status().paused["app"], Phase::Paused);
        let other = gate.database("other");
        gate.admit(&other).await.unwrap();
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.admit(&db).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert!(gate.resume(&Scope::Database("app".into())));
        waiting.await.unwrap().unwrap();
        assert!(gate.status().paused.is_empty());
    }

    #[tokio::test]
    async fn draining_refuses_waiters_and_newcomers() {
        let gate = Arc::new(Gate::default());
        let db = gate.database("app");
        let guard = gate.lock_of(&Scope::All).write_owned().await;
        gate.hold(&Scope::All, guard, Duration::from_secs(60));
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            let db = db.clone();
            async move { gate.admit(&db).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.drain(Instant::now() + Duration::from_secs(5));
        assert_eq!(waiting.await.unwrap(), Err(Draining));
        assert_eq!(gate.admit(&db).await.map(|_| ()), Err(Draining));
        assert_eq!(gate.status().sidecar, "draining");
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_pause_ends_at_its_maximum_hold() {
        let gate = Arc::new(Gate::default());
        let guard = gate.lock_of(&Scope::All).write_owned().await;
        gate.hold(&Scope::All, guard, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(31)).await;
        tokio::task::yield_now().await;
        assert!(gate.status().paused.is_empty());
        let db = gate.database("app");
        gate.admit(&db).await.unwrap();
    }
}
