//! Where rlaunch's nodes come from (hostfiles, `--host`, Slurm, PBS, Grid Engine, LSF), where its ranks go, and how
//! its daemons get started.
//!
//! [`nodes`], [`map`] and [`slurm`] are pure: text and environment lookups in, values out, so
//! every rule is tested without a cluster. [`pbs::detect_pbs`] reads the node file PBS names.
//! [`allocation::allocate`] combines them with the command line's wishes into one plan: nodes,
//! [`start::Starter`] and map policy. [`start`] holds one module per way of starting daemons
//! (local, launch agent, in-process ssh, srun, Grid Engine's and LSF's agents). Environment
//! lookups are passed in as closures so that tests never touch the real environment.

pub mod allocation;
pub mod batch;
pub mod map;
pub mod nodes;
pub mod pbs;
pub mod slurm;
pub mod start;

pub use allocation::{allocate, AllocationError, AllocationPlan, AllocationRequest, LauncherKind};
pub use map::{compute_map, compute_map_apps, compute_map_for_nodes, AppRequest, MapBy, MapError, MapPolicy, ProcMap, RankBy, RankPlace};
pub use nodes::{local_hostname, parse_host_list, parse_hostfile, Node, NodeListError};
pub use pbs::{detect_pbs, parse_pbs_nodefile, PbsAllocation};
pub use slurm::{detect_slurm, parse_nodelist, parse_tasks_per_node, SlurmAllocation, SlurmError};
