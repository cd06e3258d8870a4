//! pgsidecar: a PostgreSQL-wire sidecar proxy with transaction and session pooling.
//!
//! The layout follows the data path: [`frontend`] talks to clients, [`backend`] owns server
//! connections and pools, [`wire`] frames the protocol for both, [`config`] and [`auth`] feed them.

// Protocol message names (ReadyForQuery, ParameterStatus, ...) are the vocabulary of these docs;
// backticking every one of them would bury the prose.
#![allow(clippy::doc_markdown)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod backup;
pub mod config;
pub mod dev;
pub mod frontend;
pub mod gate;
pub mod health;
pub mod migrate;
pub mod pgbin;
pub mod telemetry;
pub mod tls;
pub mod wire;
