//! The front end: starts the daemons, sends the launch message, and then runs the job from the
//! root of the tree until every node is accounted for.
//!
//! Rooms: [`event_loop`] owns the sockets, links, timers and job state and carries out what the
//! services return ([`effect::Effect`]); the services are [`pmi`] (PMI/PMIx fences, lazy
//! lookups, reports), [`fabric`] (root of the fabric exchange) and [`carriers`] (the processes
//! that start daemons); [`daemons`] and [`ranks`] are the bookkeeping; [`verdict`] decides the
//! exit status and the one line a failure prints; [`reporter`] is the only thing that prints.

mod carriers;
mod daemons;
mod effect;
mod event_loop;
mod fabric;
mod pmi;
mod ranks;
mod rendezvous;
mod report;
mod reporter;
mod stdin;
pub mod verdict;

use crate::wire::Launch;
use launchers::map::ProcMap;
use launchers::nodes::Node;
use launchers::start::Starter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use event_loop::run;

/// Everything the loop needs to run one job.
pub struct Plan {
    pub job_id: String,
    pub launch: Launch,
    pub nodes: Vec<Node>,
    pub map: ProcMap,
    pub starter: Starter,
    pub daemon_path: String,
    pub timeout: Option<Duration>,
    pub launch_timeout: Duration,
    pub tag_output: bool,
    pub output_dir: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub verbose: u8,
    /// Never show launch progress.
    pub quiet: bool,
    /// Listen on loopback only: every daemon runs on this machine.
    pub loopback: bool,
    pub command_line: Vec<String>,
    pub t0: Instant,
}
