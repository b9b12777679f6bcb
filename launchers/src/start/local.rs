//! The local backend: fork/exec the daemon on this machine (one node, or several "nodes" that all
//! live here, as `--launcher local` with a node list does for tests).

use super::common::{hand_over, prepare, DaemonProcess, StartError};
use std::process::Command;

/// Starts `daemon_path __daemon` here and writes `bootstrap` (one line) to its stdin; `node` only
/// names it in messages.
pub fn start(node: &str, daemon_path: &str, bootstrap: &str) -> Result<DaemonProcess, StartError> {
    let mut cmd = Command::new(daemon_path);
    cmd.arg("__daemon");
    prepare(&mut cmd);
    let child = cmd.spawn().map_err(|source| StartError::Local { path: daemon_path.to_string(), source })?;
    hand_over(child, node, bootstrap)
}
