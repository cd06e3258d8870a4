//! Decoding and re-encoding the extended-protocol messages whose statement names the proxy
//! rewrites: Parse, Bind, Describe and Close.

use bytes::{BufMut, BytesMut};

use super::WireError;
use super::messages::take_cstr;
use super::tag::{client, server, target_kind};

fn put_header(out: &mut BytesMut, tag: u8, body_len: usize) {
    out.put_u8(tag);
    out.put_u32(u32::try_from(body_len + 4).expect("rewritten messages stay below 4 GiB"));
}

/// Appends a whole message of type `tag` with `body`: for messages the proxy builds from parts
/// it already holds (its own queries, test input).
///
/// # Panics
/// If `body` is 4 GiB or longer.
pub fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    put_header(out, tag, body.len());
    out.put_slice(body);
}

/// A Parse body split into the statement name and the rest (query text and parameter types).
#[derive(Debug)]
pub struct ParseMessage<'a> {
    /// Statement name; empty for the unnamed statement.
    pub name: &'a str,
    /// Query text, its terminator, and the parameter type list, as sent.
    pub tail: &'a [u8],
}

impl<'a> ParseMessage<'a> {
    /// Splits a Parse body.
    ///
    /// # Errors
    /// [`WireError::Protocol`] for a body without a statement name.
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let (name, tail) = take_cstr(body)?;
        Ok(Self { name, tail })
    }

    /// The query text.
    #[must_use]
    pub fn query(&self) -> &'a str {
        take_cstr(self.tail).map(|(q, _)| q).unwrap_or_default()
    }

    /// The query text as sent, not checked as UTF-8: for callers that only keep or hash it,
    /// such as the query-cycle log, which would otherwise pay for the check on every Parse.
    #[must_use]
    pub fn query_bytes(&self) -> &'a [u8] {
        std::ffi::CStr::from_bytes_until_nul(self.tail).map_or(&[], std::ffi::CStr::to_bytes)
    }
}

/// Appends a Parse of `tail` (query and parameter types) under `name`.
pub fn put_parse(out: &mut BytesMut, name: &str, tail: &[u8]) {
    put_header(out, client::PARSE, name.len() + 1 + tail.len());
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(tail);
}

/// A Bind body split around the statement name.
#[derive(Debug)]
pub struct BindMessage<'a> {
    /// Portal name, as sent.
    pub portal: &'a str,
    /// Statement name; empty for the unnamed statement.
    pub statement: &'a str,
    /// Formats, parameters and result formats, as sent.
    pub tail: &'a [u8],
}

impl<'a> BindMessage<'a> {
    /// Splits a Bind body.
    ///
    /// # Errors
    /// [`WireError::Protocol`] for a body without portal and statement names.
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let (portal, rest) = take_cstr(body)?;
        let (statement, tail) = take_cstr(rest)?;
        Ok(Self {
            portal,
            statement,
            tail,
        })
    }

    /// Appends this Bind with the statement renamed to `statement`.
    pub fn put_renamed(&self, out: &mut BytesMut, statement: &str) {
        put_header(
            out,
            client::BIND,
            self.portal.len() + statement.len() + 2 + self.tail.len(),
        );
        out.put_slice(self.portal.as_bytes());
        out.put_u8(0);
        out.put_slice(statement.as_bytes());
        out.put_u8(0);
        out.put_slice(self.tail);
    }
}

/// Describe or Close: a kind byte (`S` statement, `P` portal) and a name.
#[derive(Debug)]
pub struct TargetMessage<'a> {
    /// `S` or `P`.
    pub kind: u8,
    /// Statement or portal name.
    pub name: &'a str,
}

impl<'a> TargetMessage<'a> {
    /// Splits a Describe or Close body.
    ///
    /// # Errors
    /// [`WireError::Protocol`] for an empty body or a kind other than `S`/`P`.
    pub fn decode(body: &'a [u8]) -> Result<Self, WireError> {
        let (&kind, rest) = body
            .split_first()
            .ok_or_else(|| WireError::protocol("empty Describe/Close"))?;
        if kind != target_kind::STATEMENT && kind != target_kind::PORTAL {
            return Err(WireError::protocol(format!(
                "invalid Describe/Close kind {kind}"
            )));
        }
        let (name, _) = take_cstr(rest)?;
        Ok(Self { kind, name })
    }
}

/// Appends a Describe ([`client::DESCRIBE`]) or Close ([`client::CLOSE`]) of `kind` `name`.
pub fn put_target(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    put_header(out, tag, name.len() + 2);
    out.put_u8(kind);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}

/// Appends a message with an empty body (ParseComplete `1`, CloseComplete `3`, ...).
pub fn put_empty(out: &mut BytesMut, tag: u8) {
    put_header(out, tag, 0);
}

/// Appends CommandComplete with `tag`.
pub fn put_command_complete(out: &mut BytesMut, tag: &str) {
    put_header(out, server::COMMAND_COMPLETE, tag.len() + 1);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Frame;

    #[test]
    fn parse_round_trips_under_a_new_name() {
        let mut out = BytesMut::new();
        put_parse(&mut out, "s1", b"SELECT $1\0\0\x01\0\0\0\x17");
        let frame = Frame::split(&mut out, 1 << 20).unwrap().unwrap();
        let parse = ParseMessage::decode(&frame.body).unwrap();
        assert_eq!((parse.name, parse.query()), ("s1", "SELECT $1"));
        assert_eq!(parse.query_bytes(), b"SELECT $1");
        let mut renamed = BytesMut::new();
        put_parse(&mut renamed, "pgsc_x", parse.tail);
        let again = Frame::split(&mut renamed, 1 << 20).unwrap().unwrap();
        assert_eq!(ParseMessage::decode(&again.body).unwrap().tail, parse.tail);
    }

    #[test]
    fn bind_is_renamed_byte_exactly() {
        let body = b"portal\0s1\0\0\0\0\x01\0\0\0\x01x\0\0";
        let bind = BindMessage::decode(body).unwrap();
        let mut out = BytesMut::new();
        bind.put_renamed(&mut out, "s1");
        assert_eq!(&out[5..], &body[..]);
    }

    #[test]
    fn describe_and_close_decode() {
        let target = TargetMessage::decode(b"Sname\0").unwrap();
        assert_eq!((target.kind, target.name), (target_kind::STATEMENT, "name"));
        assert!(TargetMessage::decode(b"Xname\0").is_err());
        assert!(TargetMessage::decode(b"").is_err());
    }
}
