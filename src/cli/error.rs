//! The one error type of the command line: what the user must change (exit 2), or text to print
//! and exit 0 (`--help`, `--version`).

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    Msg(String),
    /// --help / --version: print and exit 0.
    #[error("{0}")]
    Display(String),
}

pub fn usage(msg: impl Into<String>) -> UsageError {
    UsageError::Msg(msg.into())
}
