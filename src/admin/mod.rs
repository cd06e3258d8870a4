//! The control plane's HTTP side: liveness, readiness and a JSON status of pools and clients,
//! on the admin listener (`admin_listen`). Prometheus metrics and the gate endpoints join it here.

mod http;

pub use http::{AdminServer, Status};
