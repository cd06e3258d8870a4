//! Large server messages pass through as they arrive instead of being held whole: a 256 MiB
//! value or a single huge COPY row would otherwise make the session buffer all of it. Only
//! DataRow and CopyData qualify: the relay forwards them untouched and learns nothing from
//! their bodies, so forwarding them in pieces changes nothing for either side.

use crate::wire::frame::HEADER_LEN;
use crate::wire::tag::server;

/// Messages at least this large are streamed.
pub const STREAM_FROM: usize = 256 * 1024;

/// When the incomplete message at the front of `buf` is a DataRow or CopyData of at least
/// [`STREAM_FROM`] bytes, the bytes of it still to come; `None` for anything else (a complete
/// message, another type, a small one, a header not yet whole).
#[must_use]
pub fn remaining_of_large_message(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..HEADER_LEN)?;
    let (tag, length) = (header[0], &header[1..]);
    if !matches!(tag, server::DATA_ROW | server::COPY_DATA) {
        return None;
    }
    let length = u32::from_be_bytes(length.try_into().ok()?);
    let total = 1 + usize::try_from(length).ok()?;
    (total >= STREAM_FROM && buf.len() < total).then(|| total - buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn start_of(tag: u8, total: usize, present: usize) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u8(tag);
        buf.put_u32(u32::try_from(total - 1).unwrap());
        buf.resize(present, b'x');
        buf
    }

    #[test]
    fn a_large_data_row_or_copy_row_is_streamed_for_what_is_still_to_come() {
        let buf = start_of(server::DATA_ROW, 1 << 20, 4096);
        assert_eq!(remaining_of_large_message(&buf), Some((1 << 20) - 4096));
        let buf = start_of(server::COPY_DATA, STREAM_FROM, 100);
        assert_eq!(remaining_of_large_message(&buf), Some(STREAM_FROM - 100));
    }

    #[test]
    fn small_complete_or_other_messages_are_framed_as_usual() {
        assert_eq!(
            remaining_of_large_message(&start_of(server::DATA_ROW, 1000, 10)),
            None
        );
        assert_eq!(
            remaining_of_large_message(&start_of(server::ERROR_RESPONSE, 1 << 20, 10)),
            None
        );
        assert_eq!(
            remaining_of_large_message(&start_of(server::DATA_ROW, 1 << 20, 1 << 20)),
            None
        );
        assert_eq!(
            remaining_of_large_message(&BytesMut::from(&b"D\0\0"[..])),
            None
        );
    }
}
