//! Server-facing side: connections the proxy logs in itself, their pools, and the checkout guard
//! that makes sure a dirty connection never reaches another client.

mod error;
mod greeting;
mod host_watch;
mod limits;
mod login;
mod notify;
mod params;
mod pool;
mod prepared;
mod registry;
mod server;
mod shared_settings;
mod topology;

pub use error::BackendError;
pub use greeting::Greeting;
pub use limits::ConnectionCap;
pub use login::LoginTarget;
pub use notify::{ChannelHub, ListenerTarget, MAILBOX_SIZE, Mailbox, NotifyError, NotifyHubs};
pub use params::{
    FIXED_PARAMS_SQL, FixedParams, SESSION_AUTHORIZATION, ServerParams, Settings, is_parameter_name,
};
pub use pool::{AcquireError, Checkout, PoolKey, ServerPool};
pub use prepared::{KnownStatements, PreparedSet};
pub use registry::{Intent, PoolRegistry};
pub use server::{CancelTarget, ServerConn};
pub use topology::{HostState, HostStatus, Topology};
