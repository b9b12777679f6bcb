//! rlaunch's exit codes. Documented in README.md and the man page; keep the three in step.
//!
//! Apart from these, rlaunch exits with the status of the first rank that failed (128+N when that
//! rank was killed by signal N), and 0 when every rank exited 0.

pub const SUCCESS: i32 = 0;
/// Bad command line or input: unknown flag, `-np 0`, a missing or non-executable program, a bad `-x`,
/// an unwritable `--output-dir`, a bad hostfile line.
pub const USAGE: i32 = 2;
/// `--timeout` expired and the job was killed (the same code as timeout(1)).
pub const TIMEOUT: i32 = 124;
/// rlaunch itself failed: a daemon could not be started or reached, a link broke, an internal error.
pub const LAUNCH_FAILED: i32 = 125;
