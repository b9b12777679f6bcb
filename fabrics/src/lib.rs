//! Fabric discovery, endpoint assignment, the per-node endpoint table, and the transports and tree
//! collective used by rlaunch's daemons.
//!
//! - [`discover`]: InfiniBand/RoCE ports and Ethernet interfaces from sysfs (root is a parameter);
//! - [`verbs`]: libibverbs loaded at run time, reporting "unavailable: <why>" instead of failing;
//! - [`endpoints`]: the pure rule mapping every rank to a NIC, port and (for RDMA) GID;
//! - [`table`]: the shared-memory file through which a daemon publishes endpoints to its ranks;
//! - [`hwloc`]: the node's topology exported once as hwloc XML for its ranks (libhwloc loaded at run time);
//! - [`topology`] and [`placement`]: a node's CPUs, caches, NUMA nodes and devices, and the pure
//!   engine that gives each rank its CPUs, GPUs and NIC;
//! - [`sensors`]: the node's health (temperatures, memory errors and headroom, NICs, load) read
//!   under a root that tests point elsewhere, and the pure engine that turns readings into states;
//! - [`collective`]: a k-ary tree barrier/allgather as a pure state machine;
//! - [`transport`] and [`rdma`]: the links it runs over (in-memory, TCP, RDMA send/receive).
//!
//! It does not depend on the `rlaunch` binary crate nor on `launchers`.

pub mod carrier;
pub mod collective;
pub mod cpuset;
pub mod discover;
pub mod endpoints;
pub mod hwloc;
pub mod placement;
pub mod rdma;
pub mod sensors;
pub mod sim_link;
pub mod startup;
pub mod table;
pub mod topology;
pub mod transport;
pub mod verbs;
pub mod verbs_link;

pub use collective::{Collective, Kind, Tree};
pub use cpuset::CpuSet;
pub use discover::{IfAddr, Inventory};
pub use topology::Topology;
pub use endpoints::{assign, reserve_port_base, Assignment, Endpoint, Fabric, FabricChoice};
pub use table::{EndpointTable, TableReader, TableWriter};
pub use transport::{run_barrier, run_collective, MemTransport, TcpTransport, Transport};
