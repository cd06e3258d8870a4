//! SQLSTATE codes the proxy itself reports.

/// No error: the code of an informational NOTICE.
pub const SUCCESSFUL_COMPLETION: &str = "00000";
/// Malformed or unexpected protocol traffic.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// The connection to the server was lost.
pub const CONNECTION_FAILURE: &str = "08006";
/// The server could not be reached at all.
pub const CONNECTION_EXCEPTION: &str = "08001";
/// Pool exhausted, client limit reached.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// Wrong password.
pub const INVALID_PASSWORD: &str = "28P01";
/// Unknown user or authentication method not allowed.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// A message over the size limit.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
/// Something the proxy does not support.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// The proxy is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// The proxy is starting or not accepting this client right now.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// A command the admin console does not know.
pub const SYNTAX_ERROR: &str = "42601";
/// A pause that could not take hold, a resume of something not paused.
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
/// `idle_transaction_timeout` fired (PostgreSQL's idle_in_transaction_session_timeout).
pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
/// `transaction_timeout` fired (PostgreSQL 17's transaction_timeout).
pub const TRANSACTION_TIMEOUT: &str = "25P04";
/// `client_idle_timeout` fired (PostgreSQL's idle_session_timeout).
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// `query_timeout` fired: the query was cancelled.
pub const QUERY_CANCELED: &str = "57014";
/// A reload whose configuration file does not validate (PostgreSQL's config_file_error).
pub const CONFIG_FILE_ERROR: &str = "F0000";
