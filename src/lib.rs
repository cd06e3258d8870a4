//! pgsidecar: a PostgreSQL-wire sidecar proxy with transaction and session pooling.
//!
//! [`proxy`] is the composition root: it starts the client listeners ([`frontend`]), the admin
//! endpoints ([`admin`]), the fleet member and the health monitor around one shared
//! [`context::ProxyContext`]. [`backend`] owns server connections and pools, [`wire`] frames the
//! protocol for both sides, [`config`] and [`auth`] feed them.

// Protocol message names (ReadyForQuery, ParameterStatus, ...) are the vocabulary of these docs;
// backticking every one of them would bury the prose.
#![allow(clippy::doc_markdown)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod backup;
pub mod config;
pub mod context;
pub mod dev;
pub mod frontend;
pub mod gate;
pub mod health;
pub mod migrate;
pub mod pgbin;
pub mod proxy;
pub mod telemetry;
pub mod tls;
pub mod wire;
