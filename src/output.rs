//! Splitting a rank's byte stream into whole lines, so that the front end never interleaves two ranks
//! inside one line. Pure: bytes in, chunks out. A daemon forwards a rank's bytes exactly
//! ([`LineBuffer::exact`]); the front end, when it tags lines, ends every piece it tags as a line.

/// A line longer than this is forwarded in pieces of this size: a rank that writes gigabytes without a
/// newline must not make its daemon buffer them all.
pub const MAX_LINE: usize = 1 << 20;

/// Holds a partial line until its newline, the end of the stream or [`MAX_LINE`]. By default
/// (what tagged output needs) every piece it lets go ends with a newline, added if the rank did not
/// write one; [`LineBuffer::exact`] adds nothing.
#[derive(Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
    exact: bool,
}

impl LineBuffer {
    /// A buffer whose output, concatenated, is exactly its input.
    pub fn exact() -> LineBuffer {
        LineBuffer { pending: Vec::new(), exact: true }
    }

    /// Appends `data` and returns the bytes that are ready to forward: every complete line (with its
    /// newline), plus a `MAX_LINE` piece of an overlong line. Returns an empty vector when nothing is.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(data);
        match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(last_nl) => {
                let rest = self.pending.split_off(last_nl + 1);
                let out = std::mem::replace(&mut self.pending, rest);
                if self.pending.len() >= MAX_LINE {
                    let mut out = out;
                    out.extend(self.take_overlong());
                    return out;
                }
                out
            }
            None if self.pending.len() >= MAX_LINE => self.take_overlong(),
            None => Vec::new(),
        }
    }

    fn take_overlong(&mut self) -> Vec<u8> {
        let rest = self.pending.split_off(MAX_LINE);
        let mut piece = std::mem::replace(&mut self.pending, rest);
        if !self.exact {
            piece.push(b'\n');
        }
        piece
    }

    /// At end of stream: whatever is left, terminated by a newline (unless exact) so the next rank's
    /// line starts on a line of its own.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.pending);
        if !self.exact && !rest.is_empty() && rest.last() != Some(&b'\n') {
            rest.push(b'\n');
        }
        rest
    }
}

/// Prefixes every line of `data` (which holds only whole lines) with `prefix`.
pub fn tag_lines(prefix: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + prefix.len() * 4);
    for line in data.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(prefix);
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn holds_partial_lines() {
        let mut b = LineBuffer::default();
        assert_eq!(b.push(b"abc"), b"");
        assert_eq!(b.push(b"d\nef"), b"abcd\n");
        assert_eq!(b.push(b"\n\ng"), b"ef\n\n");
        assert_eq!(b.finish(), b"g\n");
        assert_eq!(b.finish(), b"");
    }

    #[test]
    fn overlong_line_is_cut_at_max_line() {
        let mut b = LineBuffer::default();
        let big = vec![b'x'; MAX_LINE + 10];
        let out = b.push(&big);
        assert_eq!(out.len(), MAX_LINE + 1);
        assert_eq!(*out.last().unwrap(), b'\n');
        assert_eq!(b.finish().len(), 11);
    }

    #[test]
    fn tags_each_line() {
        assert_eq!(tag_lines(b"[3] ", b"a\nb\n"), b"[3] a\n[3] b\n");
    }

    #[test]
    fn exact_mode_holds_partial_lines_and_adds_nothing() {
        let mut b = LineBuffer::exact();
        assert_eq!(b.push(b"abc"), b"");
        assert_eq!(b.push(b"d\nef"), b"abcd\n");
        let big = vec![b'x'; MAX_LINE + 10];
        let out = b.push(&big);
        assert_eq!(out.len(), MAX_LINE, "a piece of an overlong line is let go as it is");
        assert_eq!(&out[..2], b"ef");
        assert_eq!(b.finish(), vec![b'x'; 12]);
        assert_eq!(b.finish(), b"");
    }

    proptest! {
        #[test]
        fn exact_mode_gives_back_every_byte(data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(0u8)], 0..200), cuts in proptest::collection::vec(0usize..200, 0..10)) {
            let mut b = LineBuffer::exact();
            let mut out = Vec::new();
            let mut pos = 0;
            let mut cuts = cuts; cuts.sort();
            for c in cuts {
                let c = c.min(data.len());
                if c >= pos {
                    let piece = b.push(&data[pos..c]);
                    prop_assert!(piece.is_empty() || piece.ends_with(b"\n"), "only whole lines below the bound");
                    out.extend(piece);
                    pos = c;
                }
            }
            out.extend(b.push(&data[pos..]));
            out.extend(b.finish());
            prop_assert_eq!(out, data);
        }

        #[test]
        fn any_split_gives_same_lines(data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'b')], 0..200), cuts in proptest::collection::vec(0usize..200, 0..10)) {
            let mut b = LineBuffer::default();
            let mut out = Vec::new();
            let mut pos = 0;
            let mut cuts = cuts; cuts.sort();
            for c in cuts { let c = c.min(data.len()); if c >= pos { out.extend(b.push(&data[pos..c])); pos = c; } }
            out.extend(b.push(&data[pos..]));
            out.extend(b.finish());
            let mut expect = data.clone();
            if !expect.is_empty() && *expect.last().unwrap() != b'\n' { expect.push(b'\n'); }
            prop_assert_eq!(out, expect);
        }
    }
}
