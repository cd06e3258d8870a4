//! One pause, start to finish: stop admitting, wait for the transactions in flight up to the
//! deadline, then hold — or give up, resume, and name the transactions that were in the way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Gate, Phase, Scope};

/// How long stragglers that were told to end get to let go of the gate.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// What a pause asks for.
#[derive(Debug, Clone)]
pub struct PauseOptions {
    /// All databases or one.
    pub scope: Scope,
    /// How long to wait for transactions in flight.
    pub deadline: Duration,
    /// The pause lifts by itself after this, whatever happens to the resume.
    pub max_hold: Duration,
    /// At the deadline, end the transactions still running instead of giving up.
    pub cancel_stragglers: bool,
}

/// A transaction that kept a pause waiting.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Straggler {
    /// Client-facing database.
    pub database: String,
    /// Client-facing user.
    pub user: String,
    /// The client's `application_name`.
    pub application_name: String,
    /// The client's address.
    pub client_addr: String,
    /// PostgreSQL backend pid of its server connection, if it holds one.
    pub server_pid: Option<i32>,
    /// How long its transaction has been open.
    pub transaction_seconds: f64,
    /// What the server connection runs or ran last (`pg_stat_activity.query`), when the
    /// reporter could ask the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// Who holds transactions open in a scope, and how to end them; implemented by the proxy.
pub trait Stragglers {
    /// The transactions in flight in `scope`.
    fn list(&self, scope: &Scope) -> Vec<Straggler>;
    /// Ends the sessions whose transactions are in flight in `scope` (their transactions roll
    /// back); returns how many.
    fn terminate(&self, scope: &Scope) -> usize;
}

/// A pause that took hold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PauseReport {
    /// What is paused.
    pub scope: String,
    /// From the request to Paused.
    pub took_seconds: f64,
    /// Sessions ended to make room (with `cancel_stragglers`).
    pub terminated: usize,
    /// The scope was paused already; this request changed nothing.
    pub already_paused: bool,
}

/// Why a pause did not take hold. Traffic flows again in every case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PauseError {
    /// Transactions were still running at the deadline.
    #[error(
        "pause of {scope} failed: {} transaction(s) still running at the {deadline:?} deadline; traffic resumed",
        stragglers.len()
    )]
    Deadline {
        /// What was to be paused.
        scope: Scope,
        /// The deadline.
        deadline: Duration,
        /// The transactions in the way.
        stragglers: Vec<Straggler>,
    },
    /// The sidecar is shutting down.
    #[error("pgsidecar is draining; it cannot be paused")]
    Draining,
}

/// Pauses `options.scope`: returns once no transaction of it is in flight (new ones wait), or
/// fails at the deadline with the transactions that held it — after ending them first when
/// `cancel_stragglers` is set.
///
/// # Errors
/// [`PauseError`]; the gate is open again when it is returned.
///
/// # Panics
/// If the gate's lock was poisoned.
pub async fn pause(
    gate: &Arc<Gate>,
    options: &PauseOptions,
    stragglers: &(dyn Stragglers + Sync),
) -> Result<PauseReport, PauseError> {
    let scope = &options.scope;
    let report = |took: Duration, terminated, already_paused| PauseReport {
        scope: scope.to_string(),
        took_seconds: took.as_secs_f64(),
        terminated,
        already_paused,
    };
    if gate.is_draining() {
        return Err(PauseError::Draining);
    }
    if gate.held.lock().expect("gate lock").contains_key(scope) {
        return Ok(report(Duration::ZERO, 0, true));
    }
    let started = Instant::now();
    gate.set_phase(scope, Phase::Pausing);
    let mut pausing = Pausing {
        gate,
        scope,
        given_up: true,
    };
    let mut acquire = Box::pin(gate.lock_of(scope).write_owned());
    let mut terminated = 0;
    let guard = match tokio::time::timeout(options.deadline, &mut acquire).await {
        Ok(guard) => Some(guard),
        Err(_) if options.cancel_stragglers => {
            terminated = stragglers.terminate(scope);
            tracing::warn!(%scope, terminated, "pause deadline reached: ending the transactions in the way");
            tokio::time::timeout(TERMINATE_GRACE, &mut acquire)
                .await
                .ok()
        }
        Err(_) => None,
    };
    let Some(guard) = guard else {
        let in_the_way = stragglers.list(scope);
        drop(acquire);
        drop(pausing);
        return Err(PauseError::Deadline {
            scope: scope.clone(),
            deadline: options.deadline,
            stragglers: in_the_way,
        });
    };
    pausing.given_up = false;
    gate.hold(scope, guard, options.max_hold);
    Ok(report(started.elapsed(), terminated, false))
}

/// Puts a scope back to Open when a pause is given up — including when the task waiting for
/// it is dropped (a fleet resume abandons a pause still waiting).
struct Pausing<'a> {
    gate: &'a Gate,
    scope: &'a Scope,
    given_up: bool,
}

impl Drop for Pausing<'_> {
    fn drop(&mut self) {
        if self.given_up
            && !self
                .gate
                .held
                .lock()
                .expect("gate lock")
                .contains_key(self.scope)
        {
            self.gate.set_phase(self.scope, Phase::Open);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::gate::Ticket;

    /// Tickets held by "sessions" the test controls.
    #[derive(Default)]
    struct Held(Mutex<Vec<Ticket>>);

    impl Stragglers for Held {
        fn list(&self, _: &Scope) -> Vec<Straggler> {
            let held = self.0.lock().unwrap().len();
            (0..held)
                .map(|_| Straggler {
                    database: "app".into(),
                    user: "u".into(),
                    application_name: "stuck".into(),
                    client_addr: "127.0.0.1".into(),
                    server_pid: Some(42),
                    transaction_seconds: 1.0,
                    query: None,
                })
                .collect()
        }

        fn terminate(&self, _: &Scope) -> usize {
            let mut held = self.0.lock().unwrap();
            let n = held.len();
            held.clear();
            n
        }
    }

    fn options(cancel_stragglers: bool) -> PauseOptions {
        PauseOptions {
            scope: Scope::Database("app".into()),
            deadline: Duration::from_millis(50),
            max_hold: Duration::from_secs(60),
            cancel_stragglers,
        }
    }

    #[tokio::test]
    async fn a_stuck_transaction_fails_the_pause_and_traffic_resumes() {
        let gate = Arc::new(Gate::default());
        let db = gate.database("app");
        let held = Held::default();
        let ticket = gate.admit(&db).await.unwrap();
        held.0.lock().unwrap().push(ticket);
        let err = pause(&gate, &options(false), &held).await.unwrap_err();
        let PauseError::Deadline { stragglers, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(stragglers.len(), 1);
        assert_eq!(stragglers[0].application_name, "stuck");
        assert!(gate.status().paused.is_empty());
        // New transactions are admitted again at once.
        gate.admit(&db).await.unwrap();
    }

    #[tokio::test]
    async fn cancel_stragglers_ends_them_and_the_pause_holds() {
        let gate = Arc::new(Gate::default());
        let db = gate.database("app");
        let held = Held::default();
        let ticket = gate.admit(&db).await.unwrap();
        held.0.lock().unwrap().push(ticket);
        let report = pause(&gate, &options(true), &held).await.unwrap();
        assert_eq!(report.terminated, 1);
        assert!(!report.already_paused);
        assert_eq!(gate.status().paused["app"], Phase::Paused);
        let again = pause(&gate, &options(false), &held).await.unwrap();
        assert!(again.already_paused);
        assert!(gate.resume(&Scope::Database("app".into())));
    }
}
