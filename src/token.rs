//! Every mio token of rlaunch's two event loops (the front end's and a daemon's), in one place:
//! a few fixed sources, then one range per kind of numbered source. [`classify`] turns a token
//! back into what it stands for, so no loop does arithmetic on token numbers.

use mio::Token;

/// The listening socket (the front end's for its children, a daemon's for its children).
pub const LISTENER: Token = Token(0);
/// The signal pipe ([`crate::sig::SignalPipe`]).
pub const SIGNALS: Token = Token(1);
/// Another thread has news for the loop: the front end's stdin reader posted a chunk or a start
/// thread (in-process ssh) saw its daemon end; libpmix's progress thread queued an upcall in a
/// daemon. One token because mio allows one `Waker` per `Poll`: the loop looks at every source.
pub const WAKE: Token = Token(2);
/// A daemon's link to its parent.
pub const PARENT: Token = Token(3);
/// A daemon's own standard input: its EOF means whoever started the daemon is gone.
pub const BOOT_STDIN: Token = Token(4);
/// The front end's own stdout and stderr: an error or hang-up there means their reader is gone.
pub const SINKS: Token = Token(5);

const LINK_BASE: usize = 1 << 20;
const RANK_PIPE_BASE: usize = 1 << 24;
const DAEMON_STDERR_BASE: usize = 1 << 26;
const PMI_BASE: usize = 1 << 28;
const IMAGE_BASE: usize = 1 << 30;
/// Rank pipes per local rank (stdout, stderr, stdin, one spare).
const PIPES_PER_RANK: usize = 4;

/// One of a local rank's pipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
    Stdin,
}

/// What a token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// One of the fixed tokens above.
    Fixed(Token),
    /// A tree link, numbered in accept order.
    Link(usize),
    /// A pipe of the local rank at this index of the daemon's rank table.
    RankPipe { idx: usize, pipe: Pipe },
    /// The stderr of the daemon (or its carrier) of this node, at the front end.
    DaemonStderr(u32),
    /// A PMI socket or listener ([`crate::pmi::host`]), numbered by the PMI host.
    Pmi(usize),
    /// A rank's image socket, numbered by the daemon's image service.
    Image(usize),
}

pub fn link(k: usize) -> Token {
    Token(LINK_BASE + k)
}

pub fn rank_pipe(idx: usize, pipe: Pipe) -> Token {
    let what = match pipe {
        Pipe::Stdout => 0,
        Pipe::Stderr => 1,
        Pipe::Stdin => 2,
    };
    Token(RANK_PIPE_BASE + idx * PIPES_PER_RANK + what)
}

pub fn daemon_stderr(node: u32) -> Token {
    Token(DAEMON_STDERR_BASE + node as usize)
}

pub fn pmi(k: usize) -> Token {
    Token(PMI_BASE + k)
}

pub fn image(k: usize) -> Token {
    Token(IMAGE_BASE + k)
}

pub fn classify(t: Token) -> Source {
    match t.0 {
        n if n >= IMAGE_BASE => Source::Image(n - IMAGE_BASE),
        n if n >= PMI_BASE => Source::Pmi(n - PMI_BASE),
        n if n >= DAEMON_STDERR_BASE => Source::DaemonStderr((n - DAEMON_STDERR_BASE) as u32),
        n if n >= RANK_PIPE_BASE => {
            let k = n - RANK_PIPE_BASE;
            let pipe = match k % PIPES_PER_RANK {
                0 => Pipe::Stdout,
                1 => Pipe::Stderr,
                _ => Pipe::Stdin,
            };
            Source::RankPipe { idx: k / PIPES_PER_RANK, pipe }
        }
        n if n >= LINK_BASE => Source::Link(n - LINK_BASE),
        _ => Source::Fixed(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        assert_eq!(classify(link(7)), Source::Link(7));
        assert_eq!(classify(rank_pipe(300, Pipe::Stderr)), Source::RankPipe { idx: 300, pipe: Pipe::Stderr });
        assert_eq!(classify(rank_pipe(0, Pipe::Stdin)), Source::RankPipe { idx: 0, pipe: Pipe::Stdin });
        assert_eq!(classify(daemon_stderr(4095)), Source::DaemonStderr(4095));
        assert_eq!(classify(pmi(0)), Source::Pmi(0));
        assert_eq!(classify(pmi((1 << 30) - (1 << 28) - 1)), Source::Pmi((1 << 30) - (1 << 28) - 1));
        assert_eq!(classify(image(5)), Source::Image(5));
        assert_eq!(classify(WAKE), Source::Fixed(WAKE));
        // The ranges hold their largest members: a million ranks per node, 64k nodes.
        assert_eq!(classify(rank_pipe((1 << 20) - 1, Pipe::Stdout)), Source::RankPipe { idx: (1 << 20) - 1, pipe: Pipe::Stdout });
        assert_eq!(classify(link((1 << 24) - (1 << 20) - 1)), Source::Link((1 << 24) - (1 << 20) - 1));
    }
}
