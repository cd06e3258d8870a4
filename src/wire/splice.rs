//! Building an outgoing byte stream from a read buffer: forwarded untouched (no copy) unless a
//! message is cut out or one is inserted, in which case only then is the stream copied.

use bytes::{Buf, BytesMut};

/// Accumulates cuts and insertions against the front of a read buffer.
#[derive(Debug, Default)]
pub struct Splicer {
    out: Option<BytesMut>,
    kept_upto: usize,
}

impl Splicer {
    fn catch_up(&mut self, src: &[u8], at: usize) -> &mut BytesMut {
        let kept_upto = self.kept_upto;
        let out = self
            .out
            .get_or_insert_with(|| BytesMut::with_capacity(at + 256));
        out.extend_from_slice(&src[kept_upto..at]);
        self.kept_upto = at;
        out
    }

    /// Drops `src[start..end]` from the output.
    pub fn cut(&mut self, src: &[u8], start: usize, end: usize) {
        self.catch_up(src, start);
        self.kept_upto = end;
    }

    /// Inserts `bytes` before `src[at..]`.
    pub fn insert(&mut self, src: &[u8], at: usize, bytes: &[u8]) {
        self.catch_up(src, at).extend_from_slice(bytes);
    }

    /// Whether anything was cut or inserted.
    #[must_use]
    pub fn is_modified(&self) -> bool {
        self.out.is_some()
    }

    /// Takes the first `total` bytes of `src` with the edits applied.
    pub fn finish(mut self, src: &mut BytesMut, total: usize) -> BytesMut {
        if self.out.is_none() {
            return src.split_to(total);
        }
        self.catch_up(src, total);
        src.advance(total);
        self.out.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_stream_is_split_off() {
        let mut src = BytesMut::from(&b"abcdef"[..]);
        let out = Splicer::default().finish(&mut src, 4);
        assert_eq!((&out[..], &src[..]), (&b"abcd"[..], &b"ef"[..]));
    }

    #[test]
    fn cuts_and_inserts_apply_in_order() {
        let mut src = BytesMut::from(&b"0123456789"[..]);
        let mut splicer = Splicer::default();
        splicer.insert(&src, 0, b"<");
        splicer.cut(&src, 2, 4);
        splicer.insert(&src, 6, b"!");
        assert!(splicer.is_modified());
        let out = splicer.finish(&mut src, 8);
        assert_eq!(&out[..], b"<0145!67");
        assert_eq!(&src[..], b"89");
    }
}
