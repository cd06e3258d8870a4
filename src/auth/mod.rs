//! Authentication: the SCRAM-SHA-256 verifier clients log in against, and the server-side
//! exchange. The proxy's own logins to PostgreSQL use postgres-protocol's SCRAM client in
//! `backend::login`.

mod scram;

pub use scram::{ScramError, ScramServer, ScramVerifier};
