//! Client-facing side: accepting clients, their login, and one session task per client. What
//! starts it (and everything else of a running proxy) is [`crate::proxy`]; the state it shares
//! with the admin side is [`crate::context`].

mod cycles;
mod listener;
mod login;
mod negotiate;
mod params;
mod passthrough;
mod responses;
mod retry;
mod rewrite;
mod secrets;
mod session;
mod sql;
mod statements;
mod tracker;

pub use listener::accept_clients;
pub use params::{ClientParams, parse_options};
pub use session::SessionError;
