//! The messages the proxy writes itself, encoded with pgwire, and the few it reads field by field.

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::error::ErrorInfo;
use pgwire::messages::Message;
use pgwire::messages::data::{DataRow, FORMAT_CODE_TEXT, FieldDescription, RowDescription};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};

use super::WireError;
use super::tag::{error_field, status};

/// Severity of an error the proxy reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

fn encode(message: &impl Message, out: &mut BytesMut) {
    message
        .encode(out)
        .expect("messages the proxy builds are far below pgwire's size limits");
}

/// Appends a Terminate, which a server connection gets before the proxy closes it, so that
/// PostgreSQL logs an orderly disconnection rather than an unexpected EOF.
pub fn put_terminate(out: &mut BytesMut) {
    encode(&pgwire::messages::terminate::Terminate::new(), out);
}

/// Appends an ErrorResponse with the given severity, SQLSTATE and message.
pub fn put_error(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let mut info = ErrorInfo::new(
        severity.as_str().to_owned(),
        code.to_owned(),
        message.to_owned(),
    );
    info.severity_nonlocalized = Some(severity.as_str().to_owned());
    encode(&ErrorResponse::from(info), out);
}

/// Builds a standalone ErrorResponse.
#[must_use]
pub fn error(severity: Severity, code: &str, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    put_error(&mut out, severity, code, message);
    out.freeze()
}

/// Appends a NoticeResponse (severity WARNING) for things the client should know but that are
/// not errors.
pub fn put_warning(out: &mut BytesMut, code: &str, message: &str) {
    put_notice_with(out, "WARNING", code, message);
}

/// Appends a NoticeResponse (severity NOTICE): information about the client's request, such as
/// a wait for a server connection.
pub fn put_notice(out: &mut BytesMut, code: &str, message: &str) {
    put_notice_with(out, "NOTICE", code, message);
}

fn put_notice_with(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    let mut info = ErrorInfo::new(severity.to_owned(), code.to_owned(), message.to_owned());
    info.severity_nonlocalized = Some(severity.to_owned());
    encode(&NoticeResponse::from(info), out);
}

/// Appends ReadyForQuery with the given transaction status byte (`I`, `T` or `E`).
pub fn put_ready_for_query(out: &mut BytesMut, status: u8) {
    let status = match status {
        status::IN_TRANSACTION => TransactionStatus::Transaction,
        status::FAILED => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status), out);
}

/// Appends a ParameterStatus.
pub fn put_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    encode(
        &ParameterStatus::new(name.to_owned(), value.to_owned()),
        out,
    );
}

/// Appends the BackendKeyData the client will use for CancelRequest.
pub fn put_backend_key(out: &mut BytesMut, pid: i32, secret: i32) {
    encode(&BackendKeyData::new(pid, SecretKey::I32(secret)), out);
}

/// Appends an Authentication message.
pub fn put_authentication(out: &mut BytesMut, auth: &Authentication) {
    encode(auth, out);
}

/// Appends NegotiateProtocolVersion: the proxy speaks 3.0 and none of the `_pq_` options.
pub fn put_negotiate_protocol(out: &mut BytesMut, unsupported: Vec<String>) {
    encode(&NegotiateProtocolVersion::new(0, unsupported), out);
}

/// Reads a NUL-terminated string at the front of `body`, returning it and the rest.
///
/// # Errors
/// [`WireError::Protocol`] when the terminator is missing or the text is not UTF-8.
pub fn take_cstr(body: &[u8]) -> Result<(&str, &[u8]), WireError> {
    // CStr finds the terminator a word at a time, which matters for long query strings.
    let text = std::ffi::CStr::from_bytes_until_nul(body)
        .map_err(|_| WireError::protocol("string without terminator"))?;
    let end = text.count_bytes();
    let text = text
        .to_str()
        .map_err(|_| WireError::protocol("string is not valid UTF-8"))?;
    Ok((text, &body[end + 1..]))
}

/// The name and value of a ParameterStatus body.
///
/// # Errors
/// As [`take_cstr`].
pub fn parse_parameter_status(body: &[u8]) -> Result<(String, String), WireError> {
    let (name, rest) = take_cstr(body)?;
    let (value, _) = take_cstr(rest)?;
    Ok((name.to_owned(), value.to_owned()))
}

/// The fields of an ErrorResponse or NoticeResponse the proxy acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// Non-localized severity (`ERROR`, `FATAL`, ...).
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
}

/// Appends a RowDescription of text-format columns, each `(name, type oid)`.
pub fn put_row_description(out: &mut BytesMut, columns: &[(&str, u32)]) {
    let fields = columns
        .iter()
        .map(|&(name, type_id)| {
            FieldDescription::new(name.to_owned(), 0, 0, type_id, -1, -1, FORMAT_CODE_TEXT)
        })
        .collect();
    encode(&RowDescription::new(fields), out);
}

/// Appends a DataRow of text values (`None` is NULL).
pub fn put_data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    let mut data = BytesMut::new();
    for value in values {
        match value {
            Some(text) => {
                data.put_i32(i32::try_from(text.len()).unwrap_or(i32::MAX));
                data.put_slice(text.as_bytes());
            }
            None => data.put_i32(-1),
        }
    }
    let field_count = i16::try_from(values.len()).unwrap_or(i16::MAX);
    encode(&DataRow::new(data, field_count), out);
}

/// The SQLSTATE of an ErrorResponse body, found without allocating.
#[must_use]
pub fn error_code(body: &[u8]) -> Option<[u8; 5]> {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            return None;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        if kind == error_field::CODE {
            return tail[..end].try_into().ok();
        }
        rest = &tail[end + 1..];
    }
    None
}

/// Rows a CommandComplete tag reports (`SELECT 5`, `INSERT 0 3`, `UPDATE 2`); 0 for tags
/// without a count.
#[must_use]
pub fn command_rows(body: &[u8]) -> u64 {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    let count = tag.rsplit(|b| *b == b' ').next().unwrap_or_default();
    if count.is_empty() || count.len() == tag.len() {
        return 0;
    }
    std::str::from_utf8(count)
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

impl ErrorFields {
    /// Decodes the body of an ErrorResponse; unknown fields are skipped.
    #[must_use]
    pub fn parse(body: &[u8]) -> Self {
        let mut fields = Self::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let Ok((value, after)) = take_cstr(tail) else {
                break;
            };
            match kind {
                error_field::SEVERITY_NONLOCALIZED => value.clone_into(&mut fields.severity),
                error_field::SEVERITY if fields.severity.is_empty() => {
                    value.clone_into(&mut fields.severity);
                }
                error_field::CODE => value.clone_into(&mut fields.code),
                error_field::MESSAGE => value.clone_into(&mut fields.message),
                _ => {}
            }
            rest = after;
        }
        fields
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Frame;
    use crate::wire::tag::server;

    #[test]
    fn error_round_trips_through_the_parser() {
        let bytes = error(Severity::Fatal, "53300", "pool is full");
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = Frame::split(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(frame.tag, server::ERROR_RESPONSE);
        let fields = ErrorFields::parse(&frame.body);
        assert_eq!(fields.code, "53300");
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.message, "pool is full");
    }

    #[test]
    fn parameter_status_parses() {
        let mut out = BytesMut::new();
        put_parameter_status(&mut out, "TimeZone", "UTC");
        let frame = Frame::split(&mut out, 1024).unwrap().unwrap();
        let (name, value) = parse_parameter_status(&frame.body).unwrap();
        assert_eq!((name.as_str(), value.as_str()), ("TimeZone", "UTC"));
    }
}
