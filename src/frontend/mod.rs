//! Client-facing side: the listener, login, and one session task per client.

mod cancel;
mod cycles;
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
use std::sync::atomic::AtomicUsize;

pub use cancel::{CancelRegistry, CancelSlot, ClientInfo};
pub use listener::{Proxy, StartError};
pub use params::{ClientParams, parse_options};
pub use session::SessionError;

use crate::backend::PoolRegistry;
use crate::config::Config;
use crate::telemetry::{Telemetry, TracingError};

/// The virtual database that opens the admin console instead of a pool.
pub const ADMIN_DATABASE: &str = "pgsidecar";

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
    /// Metrics and query spans.
    pub telemetry: Telemetry,
    /// When the proxy started, for uptime figures.
    pub started: std::time::SystemTime,
}

impl ProxyContext {
    /// A context with no pools and no clients yet. Must run inside the tokio runtime.
    ///
    /// # Errors
    /// [`TracingError`] when the configured OTLP exporter cannot be set up.
    pub fn new(config: Config) -> Result<Arc<Self>, TracingError> {
        let telemetry = Telemetry::start(&config)?;
        let config = Arc::new(config);
        Ok(Arc::new(Self {
            pools: PoolRegistry::new(Arc::clone(&config), Arc::clone(&telemetry.metrics)),
            config,
            cancels: CancelRegistry::default(),
            clients: AtomicUsize::new(0),
            telemetry,
            started: std::time::SystemTime::now(),
        }))
    }
}
