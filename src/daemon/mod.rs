//! The per-node daemon (`rlaunch __daemon`): reads its bootstrap line on stdin, joins the tree,
//! receives the launch message, computes the process map itself, starts and supervises its local
//! ranks, and relays traffic for the daemons below it.
//!
//! A small loop ([`node`]) owns every socket, pipe and timer; services own their state, take the
//! job ([`crate::job::JobView`]) and an input, and return [`effect::Effect`]s for the loop to
//! carry out: PMI ([`pmi`]), PMIx ([`pmix`]), the fabric exchange ([`fabric`]) with placement
//! ([`binding`]), the local rank
//! table ([`ranks`]) with spawning ([`spawn`]), tree spawn ([`tree_spawn`]), restarts
//! ([`restart`]), tree repair ([`repair`]), the node's sensors ([`sensors`]), and the sweep of
//! descendants that escaped their rank ([`adopted`]).

mod adopted;
mod binding;
mod boot;
mod cgroup;
mod effect;
mod exec;
mod fabric;
mod guard;
mod images;
mod node;
mod pmi;
mod pmix;
mod ranks;
mod repair;
mod restart;
mod say;
mod sensors;
mod spawn;
mod topology;
mod traces;
mod tree_spawn;

/// Entry point of `rlaunch __daemon`. Never returns.
/// `t0`: when the process started, the zero of its launch timeline.
pub fn main(t0: std::time::Instant) -> ! {
    // Descendants that leave their rank are adopted here, to be killed at the end of the job.
    adopted::become_subreaper();
    let code = match node::Daemon::run(t0) {
        Ok(code) => code,
        Err(e) => {
            say::say(None, format_args!("{e:#}"));
            crate::exitcode::LAUNCH_FAILED
        }
    };
    std::process::exit(code)
}
