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

/// Where ranks' output goes to files instead of (or besides) the terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputFiles {
    /// `--output-dir DIR`: `DIR/rank.N.stdout` and `DIR/rank.N.stderr`, nothing on the terminal.
    Dir(std::path::PathBuf),
    /// Open MPI's `--output-filename DIR[:nojobid,nocopy]`: `DIR/1/rank.N/stdout` and `stderr` (N
    /// zero-padded to the digits of the job size; `DIR/rank.N/...` with `nojobid`), also copied to
    /// the terminal unless `nocopy`.
    OpenMpi { dir: std::path::PathBuf, jobid: bool, copy: bool, width: usize },
    /// Hydra's `-outfile-pattern` / `-errfile-pattern`: `%r` the rank, `%h` its host, `%g` the
    /// process group (0), `%%` a '%'; a stream without a pattern stays on the terminal.
    Pattern { out: Option<String>, err: Option<String>, hosts: Vec<String> },
}

impl OutputFiles {
    /// Open MPI's `DIR[:nojobid,nocopy]`, for a job of `size` ranks.
    pub fn open_mpi(spec: &str, size: u32) -> Result<OutputFiles, String> {
        let (dir, opts) = spec.split_once(':').unwrap_or((spec, ""));
        let (mut jobid, mut copy) = (true, true);
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "nojobid" => jobid = false,
                "nocopy" => copy = false,
                _ => return Err(format!("unknown modifier ':{o}'; use nojobid and/or nocopy")),
            }
        }
        if dir.is_empty() {
            return Err("expected a directory".into());
        }
        Ok(OutputFiles::OpenMpi { dir: dir.into(), jobid, copy, width: size.to_string().len() })
    }

    /// The file a rank's stream goes to, if any.
    pub fn path(&self, rank: u32, stream: crate::wire::Stream) -> Option<std::path::PathBuf> {
        use crate::wire::Stream;
        let name = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        match self {
            OutputFiles::Dir(d) => Some(d.join(format!("rank.{rank}.{name}"))),
            OutputFiles::OpenMpi { dir, jobid, width, .. } => {
                let base = if *jobid { dir.join("1") } else { dir.clone() };
                Some(base.join(format!("rank.{rank:0width$}")).join(name))
            }
            OutputFiles::Pattern { out, err, hosts } => {
                let pattern = match stream {
                    Stream::Stdout => out.as_ref()?,
                    Stream::Stderr => err.as_ref()?,
                };
                Some(expand_pattern(pattern, rank, hosts.get(rank as usize).map_or("", String::as_str)).into())
            }
        }
    }

    /// Whether a rank's stream is also (or only) shown on the terminal.
    pub fn on_terminal(&self, stream: crate::wire::Stream) -> bool {
        match self {
            OutputFiles::Dir(_) => false,
            OutputFiles::OpenMpi { copy, .. } => *copy,
            OutputFiles::Pattern { .. } => self.path(0, stream).is_none(),
        }
    }
}

/// Hydra's file pattern for one rank: `%r` rank, `%h` host, `%g` process group (always 0: rlaunch
/// starts one group), `%%` '%'; anything else is kept as written.
pub fn expand_pattern(pattern: &str, rank: u32, host: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push_str(&rank.to_string()),
            Some('h') => out.push_str(host),
            Some('g') => out.push('0'),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The local time as ctime(3) writes it, without its newline: `Wed Dec  2 04:36:53 2026`.
pub fn ctime_now() -> String {
    // SAFETY: time(NULL); localtime_r into a zeroed tm we own; strftime into a buffer of its length.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        let mut buf = [0u8; 64];
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c"%a %b %e %H:%M:%S %Y".as_ptr(), &tm);
        String::from_utf8_lossy(&buf[..n]).into_owned()
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
    fn output_file_layouts() {
        use crate::wire::Stream;
        let d = OutputFiles::Dir("logs".into());
        assert_eq!(d.path(3, Stream::Stderr).unwrap(), std::path::Path::new("logs/rank.3.stderr"));
        assert!(!d.on_terminal(Stream::Stdout));
        let o = OutputFiles::open_mpi("out", 12).unwrap();
        assert_eq!(o.path(3, Stream::Stdout).unwrap(), std::path::Path::new("out/1/rank.03/stdout"));
        assert!(o.on_terminal(Stream::Stdout), "Open MPI copies the output to the terminal");
        let o = OutputFiles::open_mpi("out:nojobid,nocopy", 4).unwrap();
        assert_eq!(o.path(3, Stream::Stderr).unwrap(), std::path::Path::new("out/rank.3/stderr"));
        assert!(!o.on_terminal(Stream::Stderr));
        assert_eq!(OutputFiles::open_mpi("out:copy", 4).unwrap_err(), "unknown modifier ':copy'; use nojobid and/or nocopy");
        let p = OutputFiles::Pattern { out: Some("o-%h-%r.%g.log%%".into()), err: None, hosts: vec!["a".into(), "b".into()] };
        assert_eq!(p.path(1, Stream::Stdout).unwrap(), std::path::Path::new("o-b-1.0.log%"));
        assert_eq!(p.path(1, Stream::Stderr), None);
        assert!(p.on_terminal(Stream::Stderr) && !p.on_terminal(Stream::Stdout));
        assert_eq!(expand_pattern("x%q%", 2, "h"), "x%q%");
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
