//! Message type bytes by name.
//!
//! The same byte names different messages in each direction (`E` is Execute from a client and
//! ErrorResponse from a server; `S` is Sync and ParameterStatus), so each direction has its own
//! namespace and code says which one it reads. The values are pgwire's where pgwire names them.

/// Messages a client sends to a server (the frontend protocol).
pub mod client {
    use pgwire::messages::{copy, extendedquery, simplequery, startup, terminate};

    /// Simple query: one string, possibly several statements.
    pub const QUERY: u8 = simplequery::MESSAGE_TYPE_BYTE_QUERY;
    /// Extended query: prepare a statement.
    pub const PARSE: u8 = extendedquery::MESSAGE_TYPE_BYTE_PARSE;
    /// Extended query: bind a portal to a statement.
    pub const BIND: u8 = extendedquery::MESSAGE_TYPE_BYTE_BIND;
    /// Extended query: describe a statement or portal.
    pub const DESCRIBE: u8 = extendedquery::MESSAGE_TYPE_BYTE_DESCRIBE;
    /// Extended query: run a portal.
    pub const EXECUTE: u8 = extendedquery::MESSAGE_TYPE_BYTE_EXECUTE;
    /// Extended query: close a statement or portal.
    pub const CLOSE: u8 = extendedquery::MESSAGE_TYPE_BYTE_CLOSE;
    /// Extended query: end of a batch; the server answers with ReadyForQuery.
    pub const SYNC: u8 = extendedquery::MESSAGE_TYPE_BYTE_SYNC;
    /// Extended query: send what is pending without ending the batch.
    pub const FLUSH: u8 = extendedquery::MESSAGE_TYPE_BYTE_FLUSH;
    /// The legacy fast-path function call.
    pub const FUNCTION_CALL: u8 = b'F';
    /// COPY FROM STDIN data.
    pub const COPY_DATA: u8 = copy::MESSAGE_TYPE_BYTE_COPY_DATA;
    /// End of COPY FROM STDIN data.
    pub const COPY_DONE: u8 = copy::MESSAGE_TYPE_BYTE_COPY_DONE;
    /// The client aborts a COPY FROM STDIN.
    pub const COPY_FAIL: u8 = copy::MESSAGE_TYPE_BYTE_COPY_FAIL;
    /// The client closes the session.
    pub const TERMINATE: u8 = terminate::MESSAGE_TYPE_BYTE_TERMINATE;
    /// Password, SASL initial response or SASL response: one tag for the login exchange.
    pub const PASSWORD: u8 = startup::MESSAGE_TYPE_BYTE_PASSWORD_MESSAGE_FAMILY;
}

/// Messages a server sends to a client (the backend protocol).
pub mod server {
    use pgwire::messages::{copy, data, extendedquery, response, startup};

    /// A login request or outcome (`AuthenticationOk`, SASL steps …).
    pub const AUTHENTICATION: u8 = startup::MESSAGE_TYPE_BYTE_AUTHENTICATION;
    /// A run-time parameter's current value.
    pub const PARAMETER_STATUS: u8 = startup::MESSAGE_TYPE_BYTE_PARAMETER_STATUS;
    /// The process id and secret a cancel request must name.
    pub const BACKEND_KEY_DATA: u8 = startup::MESSAGE_TYPE_BYTE_BACKEND_KEY_DATA;
    /// The server does not speak the requested protocol minor version or options.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 =
        startup::MESSAGE_TYPE_BYTE_NEGOTIATE_PROTOCOL_VERSION;
    /// The end of a request cycle, with the transaction status (see [`super::status`]).
    pub const READY_FOR_QUERY: u8 = response::MESSAGE_TYPE_BYTE_READY_FOR_QUERY;
    /// An error; its fields carry the SQLSTATE.
    pub const ERROR_RESPONSE: u8 = response::MESSAGE_TYPE_BYTE_ERROR_RESPONSE;
    /// A warning or notice.
    pub const NOTICE_RESPONSE: u8 = response::MESSAGE_TYPE_BYTE_NOTICE_RESPONSE;
    /// A NOTIFY delivered to a listening session.
    pub const NOTIFICATION_RESPONSE: u8 = response::MESSAGE_TYPE_BYTE_NOTIFICATION_RESPONSE;
    /// A statement finished; its tag says which and how many rows.
    pub const COMMAND_COMPLETE: u8 = response::MESSAGE_TYPE_BYTE_COMMAND_COMPLETE;
    /// The query string was empty.
    pub const EMPTY_QUERY_RESPONSE: u8 = response::MESSAGE_TYPE_BYTE_EMPTY_QUERY_RESPONSE;
    /// The columns of the rows that follow.
    pub const ROW_DESCRIPTION: u8 = data::MESSAGE_TYPE_BYTE_ROW_DESCRITION;
    /// The described statement or portal returns no rows.
    pub const NO_DATA: u8 = data::MESSAGE_TYPE_BYTE_NO_DATA;
    /// The parameter types of a described statement.
    pub const PARAMETER_DESCRIPTION: u8 = data::MESSAGE_TYPE_BYTE_PARAMETER_DESCRITION;
    /// One row of a result.
    pub const DATA_ROW: u8 = data::MESSAGE_TYPE_BYTE_DATA_ROW;
    /// Answer to a Parse.
    pub const PARSE_COMPLETE: u8 = extendedquery::MESSAGE_TYPE_BYTE_PARSE_COMPLETE;
    /// Answer to a Bind.
    pub const BIND_COMPLETE: u8 = extendedquery::MESSAGE_TYPE_BYTE_BIND_COMPLETE;
    /// Answer to a Close.
    pub const CLOSE_COMPLETE: u8 = extendedquery::MESSAGE_TYPE_BYTE_CLOSE_COMPLETE;
    /// An Execute stopped at its row limit; the portal can go on.
    pub const PORTAL_SUSPENDED: u8 = extendedquery::MESSAGE_TYPE_BYTE_PORTAL_SUSPENDED;
    /// COPY FROM STDIN starts: the server now reads the client's CopyData.
    pub const COPY_IN_RESPONSE: u8 = copy::MESSAGE_TYPE_BYTE_COPY_IN_RESPONSE;
    /// COPY TO STDOUT starts.
    pub const COPY_OUT_RESPONSE: u8 = copy::MESSAGE_TYPE_BYTE_COPY_OUT_RESPONSE;
    /// Streaming replication's COPY BOTH starts.
    pub const COPY_BOTH_RESPONSE: u8 = copy::MESSAGE_TYPE_BYTE_COPY_BOTH_RESPONSE;
    /// COPY TO STDOUT data.
    pub const COPY_DATA: u8 = copy::MESSAGE_TYPE_BYTE_COPY_DATA;
}

/// The transaction status a ReadyForQuery carries.
pub mod status {
    /// Not in a transaction block.
    pub const IDLE: u8 = b'I';
    /// In a transaction block.
    pub const IN_TRANSACTION: u8 = b'T';
    /// In a failed transaction block: statements are refused until it ends.
    pub const FAILED: u8 = b'E';
}

/// What a Describe or Close names.
pub mod target_kind {
    /// A prepared statement.
    pub const STATEMENT: u8 = b'S';
    /// A portal.
    pub const PORTAL: u8 = b'P';
}

/// The one-byte answer to an SSLRequest (or GSSENCRequest), sent before any message.
pub mod encryption_answer {
    /// Go ahead: the TLS handshake follows.
    pub const ACCEPTED: u8 = b'S';
    /// Not offered: the startup continues in plain text.
    pub const REFUSED: u8 = b'N';
}

/// Field types of an ErrorResponse or NoticeResponse.
pub mod error_field {
    /// Severity, possibly localized.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (PostgreSQL 9.6 and later).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE.
    pub const CODE: u8 = b'C';
    /// The primary message.
    pub const MESSAGE: u8 = b'M';
}
