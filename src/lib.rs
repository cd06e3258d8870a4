//! pgsidecar: a PostgreSQL-wire sidecar proxy with transaction and session pooling.
//!
//! The layout follows the data path: [`frontend`] talks to clients, [`backend`] owns server
//! connections and pools, [`wire`] frames the protocol for both, [`config`] and [`auth`] feed them.

pub mod auth;
pub mod backend;
pub mod config;
pub mod dev;
pub mod frontend;
pub mod wire;
