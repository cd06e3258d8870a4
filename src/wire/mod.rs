//! PostgreSQL v3 wire framing on top of pgwire's message types.
//!
//! The proxy forwards most traffic as opaque bytes; this module finds message boundaries without
//! copying, decodes only what the proxy has to understand, and builds the few messages the proxy
//! itself sends. It knows nothing of pools, sessions or configuration.

pub mod error;
pub mod extended;
pub mod frame;
pub mod messages;
pub mod splice;
pub mod sqlstate;
pub mod startup;
pub mod tag;

pub use error::WireError;
pub use frame::{Frame, FrameHeader, read_frame};
