//! Client-facing side: the listener, login, and one session task per client.

mod cancel;
mod listener;
mod login;
mod params;
mod responses;
mod retry;
mod rewrite;
mod session;
mod sql;
mod statements;
mod tracker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

pub use cancel::{CancelRegistry, CancelSlot};
pub use listener::Proxy;
pub use params::{ClientParams, parse_options};
pub use session::SessionError;

use crate::backend::PoolRegistry;
use crate::config::Config;

/// State shared by every task of one proxy, passed as `Arc` instead of living in globals.
#[derive(Debug)]
pub struct ProxyContext {
    /// The configuration the proxy was started with.
    pub config: Arc<Config>,
    /// Server pools by (database, user).
    pub pools: PoolRegistry,
    /// Cancel keys of live clients.
    pub cancels: CancelRegistry,
    /// Client connections open now.
    pub clients: AtomicUsize,
    /// Clients pinned to a server connection in transaction mode, since start.
    pub pinned_clients: AtomicU64,
}

impl ProxyContext {
    /// A context with no pools and no clients yet.
    #[must_use]
    pub fn new(config: Config) -> Arc<Self> {
        let config = Arc::new(config);
        Arc::new(Self {
            pools: PoolRegistry::new(Arc::clone(&config)),
            config,
            cancels: CancelRegistry::default(),
            clients: AtomicUsize::new(0),
            pinned_clients: AtomicU64::new(0),
        })
    }
}
