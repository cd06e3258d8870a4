//! Caps on server connections that span pools: `max_db_connections` (every user's pool of one
//! database) and `max_user_connections` (every database's pool of one user). Each server
//! connection holds a permit of each cap it falls under for its whole life. When a cap is
//! reached, an idle connection of another pool under the same cap is closed to make room (an
//! idle connection would otherwise hold its permit until `server_idle_timeout`), and the new
//! connection waits for a permit within the acquire timeout.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{BackendError, ServerPool};

/// One cap and the pools that share it.
#[derive(Debug)]
pub struct ConnectionCap {
    /// `max_db_connections for database "app"`, for errors and logs.
    name: String,
    limit: usize,
    permits: Arc<Semaphore>,
    sharers: Mutex<Vec<Weak<ServerPool>>>,
}

impl ConnectionCap {
    /// A cap of `limit` connections, described by `name`.
    #[must_use]
    pub fn new(name: String, limit: usize) -> Self {
        Self {
            name,
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            sharers: Mutex::new(Vec::new()),
        }
    }

    /// Puts `pool` under this cap.
    ///
    /// # Panics
    /// If the sharers' lock was poisoned.
    pub fn share(&self, pool: &Arc<ServerPool>) {
        let mut sharers = self.sharers.lock().expect("cap sharers lock");
        sharers.retain(|p| p.strong_count() > 0);
        sharers.push(Arc::downgrade(pool));
    }

    /// Closes one idle connection of a pool under this cap, if there is one.
    async fn make_room(&self) {
        let sharers: Vec<Arc<ServerPool>> = self
            .sharers
            .lock()
            .expect("cap sharers lock")
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for pool in sharers {
            if pool.usage().available > 0 && pool.evict_one_idle().await {
                tracing::info!(cap = %self.name, pool = %pool.key(), "closed an idle server connection to make room under the cap");
                return;
            }
        }
    }
}

/// The permits a new server connection needs under `caps`, waiting up to `wait` in all.
///
/// # Errors
/// [`BackendError::Capped`] when a cap stays full for the whole wait.
pub async fn acquire(
    caps: &[Arc<ConnectionCap>],
    wait: Duration,
) -> Result<Vec<OwnedSemaphorePermit>, BackendError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut permits = Vec::with_capacity(caps.len());
    for cap in caps {
        if let Ok(permit) = Arc::clone(&cap.permits).try_acquire_owned() {
            permits.push(permit);
            continue;
        }
        cap.make_room().await;
        match tokio::time::timeout_at(deadline, Arc::clone(&cap.permits).acquire_owned()).await {
            Ok(Ok(permit)) => permits.push(permit),
            _ => {
                return Err(BackendError::Capped(format!(
                    "{} ({}) reached: every allowed server connection stayed busy for {wait:?}",
                    cap.name, cap.limit
                )));
            }
        }
    }
    Ok(permits)
}
