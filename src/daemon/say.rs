//! The daemon's only voice on its stderr: every line it prints goes through [`say`], so the
//! prefix is the same everywhere ("rlaunch daemon on node N: ...").

use std::fmt::Display;

/// Prints one line on the daemon's stderr, as node `node`, or by host name before the daemon
/// knows its node (`None`).
pub fn say(node: Option<u32>, text: impl Display) {
    match node {
        Some(n) => eprintln!("rlaunch daemon on node {n}: {text}"),
        None => eprintln!("rlaunch daemon on {}: {text}", launchers::local_hostname()),
    }
}
