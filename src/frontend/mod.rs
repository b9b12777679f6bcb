//! The front end: starts the daemons, sends the launch message, and then runs the job from the
//! root of the tree until every node is accounted for.
//!
//! Rooms: [`event_loop`] owns the sockets, links, timers and job state and carries out what the
//! services return ([`effect::Effect`]); the services are [`pmi`] (PMI/PMIx fences, lazy
//! lookups, reports), [`fabric`] (root of the fabric exchange), [`sensors`] (the nodes' sensor
//! changes) and [`carriers`] (the processes that start daemons); [`daemons`] and [`ranks`] are
//! the bookkeeping; [`verdict`] decides the exit status and the one line a failure prints;
//! [`restart`] decides whether a failed rank is restarted first, and [`recovery`] carries that
//! out; [`reporter`] is the only thing that prints; [`sinks`] notices when nobody reads what it
//! prints.

mod carriers;
mod daemons;
mod effect;
mod event_loop;
mod fabric;
mod lost;
mod images;
mod interrupts;
mod pmi;
mod ranks;
mod recovery;
mod rendezvous;
mod report;
mod reporter;
mod restart;
mod sensors;
mod sinks;
mod stdin;
mod traces;
pub mod verdict;

pub use event_loop::run;
pub use reporter::{print, say};
