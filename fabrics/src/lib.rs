//! Fabric discovery, endpoint assignment, the per-node endpoint table, and the transports and tree
//! collective used by rlaunch's daemons.
//!
//! - [`discover`]: InfiniBand/RoCE ports and Ethernet interfaces from sysfs (root is a parameter);
//! - [`verbs`]: libibverbs loaded at run time, reporting "unavailable: <why>" instead of failing;
//! - [`endpoints`]: the pure rule mapping every rank to a NIC, port and (for RDMA) GID;
//! - [`table`]: the shared-memory file through which a daemon publishes endpoints to its ranks;
//! - [`collective`] and [`transport`]: a k-ary tree barrier/allgather and the links it runs over.
//!
//! It does not depend on the `rlaunch` binary crate nor on `launchers`.

pub mod discover;
pub mod verbs;

pub use discover::{IfAddr, Inventory};
pub mod endpoints;
pub mod table;
pub mod collective;
pub mod transport;
pub mod rdma;
