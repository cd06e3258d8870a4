//! The control plane's HTTP side: liveness, readiness and a JSON status of pools and clients,
//! on the admin listener (`admin_listen`), with Prometheus metrics; and the SQL admin console on
//! the proxy port. The gate endpoints join them here.

pub mod client;
pub mod console;
mod http;

pub use http::{AdminServer, Status};

/// The virtual database that opens the admin console instead of a pool.
pub const ADMIN_DATABASE: &str = "pgsidecar";
