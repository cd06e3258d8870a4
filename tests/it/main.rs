//! Integration tests: one binary, a module per area, all against a real PostgreSQL.

#![allow(clippy::doc_markdown)]

mod support;

mod admin;
mod auth;
mod backup;
mod cli;
mod console;
mod containers;
mod copy;
mod crash;
mod deploy;
mod expand;
mod failures;
mod fleet;
mod fuzz;
mod gate;
mod greeting;
mod health;
mod hostile;
mod migrate;
mod notify;
mod pooling;
mod prepared;
mod protocol;
mod replicas;
mod retrieval;
mod session_state;
mod telemetry;
mod timeouts;
mod tls;
mod tools;
