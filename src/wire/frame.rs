//! Finding message boundaries in a read buffer, and reading single messages during login.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::WireError;

/// The length of a regular message header: one tag byte and a big-endian length word.
pub const HEADER_LEN: usize = 5;

/// The tag and total length of one complete message at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type byte.
    pub tag: u8,
    /// Bytes the whole message occupies, tag and length word included.
    pub total_len: usize,
}

impl FrameHeader {
    /// Looks at the front of `buf` and returns the header of the first message if the whole
    /// message is present. A declared length above `limit` or below 4 is an error, so a hostile
    /// peer cannot make the proxy buffer without bound.
    ///
    /// # Errors
    /// [`WireError::TooLarge`] or [`WireError::Protocol`] for an impossible length.
    pub fn peek(buf: &[u8], limit: usize) -> Result<Option<Self>, WireError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let declared = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if declared < 4 {
            return Err(WireError::protocol(format!(
                "message '{}' declares an invalid length {declared}",
                char::from(buf[0]).escape_default()
            )));
        }
        if declared > limit {
            return Err(WireError::TooLarge {
                len: declared,
                limit,
            });
        }
        let total_len = declared + 1;
        Ok((buf.len() >= total_len).then_some(Self {
            tag: buf[0],
            total_len,
        }))
    }
}

/// One whole message, owned, with its body split from the header.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Message type byte.
    pub tag: u8,
    /// Message body, without tag and length word.
    pub body: Bytes,
}

impl Frame {
    /// Splits the first complete message off `buf`, if there is one.
    ///
    /// # Errors
    /// As [`FrameHeader::peek`].
    pub fn split(buf: &mut BytesMut, limit: usize) -> Result<Option<Self>, WireError> {
        let Some(header) = FrameHeader::peek(buf, limit)? else {
            return Ok(None);
        };
        let mut whole = buf.split_to(header.total_len);
        whole.advance(HEADER_LEN);
        Ok(Some(Self {
            tag: header.tag,
            body: whole.freeze(),
        }))
    }
}

/// Reads from `reader` into `buf` until one whole message is available and returns it. Used
/// where the proxy converses message by message (login, authentication, session reset), not on
/// the forwarding path.
///
/// # Errors
/// [`WireError::Closed`] when the peer closes between messages; otherwise as [`Frame::split`] or
/// the socket's error.
pub async fn read_frame<R>(
    reader: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Frame, WireError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if let Some(frame) = Frame::split(buf, limit)? {
            return Ok(frame);
        }
        buf.reserve(HEADER_LEN.max(512));
        if reader.read_buf(buf).await? == 0 {
            return Err(if buf.is_empty() {
                WireError::Closed
            } else {
                WireError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tag::client;

    #[test]
    fn incomplete_message_waits_for_more() {
        assert_eq!(FrameHeader::peek(b"Q\0\0\0", 100).unwrap(), None);
        assert_eq!(FrameHeader::peek(b"Q\0\0\0\x06a", 100).unwrap(), None);
    }

    #[test]
    fn complete_message_is_found() {
        let header = FrameHeader::peek(b"Q\0\0\0\x05aZ", 100).unwrap().unwrap();
        assert_eq!(
            header,
            FrameHeader {
                tag: client::QUERY,
                total_len: 6
            }
        );
    }

    #[test]
    fn oversized_and_impossible_lengths_are_refused() {
        assert!(matches!(
            FrameHeader::peek(b"Q\x7f\0\0\0", 1024),
            Err(WireError::TooLarge { limit: 1024, .. })
        ));
        assert!(matches!(
            FrameHeader::peek(b"Q\0\0\0\x02", 1024),
            Err(WireError::Protocol(_))
        ));
    }

    #[test]
    fn split_leaves_the_rest() {
        let mut buf = BytesMut::from(&b"S\0\0\0\x04X\0\0"[..]);
        let frame = Frame::split(&mut buf, 100).unwrap().unwrap();
        assert_eq!(frame.tag, client::SYNC);
        assert!(frame.body.is_empty());
        assert_eq!(&buf[..], b"X\0\0");
    }
}
