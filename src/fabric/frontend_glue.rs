//! The front end's side of the fabric exchange (`crate::fabric`): it is the root of the
//! allgather; it checks the request against every node's inventory before sending the full set
//! down, prints `--inventory`, and ends the job with exit 2 when the request is impossible.

use super::{ms_since, Frontend, Outcome};
use crate::exitcode;
use crate::wire::Msg;
use mio::Token;
use std::io::Write;

impl Frontend {
    pub(super) fn on_fabric(&mut self, t: Token, data: Vec<u8>) {
        let Some(node) = self.links.get(&t).and_then(|l| l.peer_link()) else {
            return;
        };
        let now = ms_since(self.plan.t0).unwrap_or(0.0);
        let chosen_before = self.fabric.fabric().is_some();
        let step = self.fabric.on_message(node, &data, now);
        for (child, data) in step.down {
            if let Some(l) = self
                .links
                .values_mut()
                .find(|l| l.peer_link() == Some(child))
            {
                l.send(&Msg::Fabric { data });
                let _ = l.flush();
            }
        }
        if self.plan.verbose > 0 && !chosen_before && self.fabric.fabric().is_some() {
            if let Some(line) = self.fabric.verbose_line() {
                eprintln!("{line}");
            }
        }
        if let Some(text) = step.print {
            let mut out = std::io::stdout().lock();
            if out
                .write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                self.stdout_broken = true;
            }
        }
        if let Some(e) = step.usage_error {
            // Bad input found only once the nodes answered: still the user's to fix, so exit 2.
            eprintln!("rlaunch: {e}");
            self.fail(Outcome::LaunchFailed, exitcode::USAGE);
        }
        if let Some(e) = step.error {
            eprintln!("rlaunch: {e}");
            self.fail(Outcome::LaunchFailed, exitcode::LAUNCH_FAILED);
        }
    }
}
