//! Fabric discovery, transports and the endpoint table for rlaunch.
//!
//! This crate will hold:
//! - discovery of InfiniBand/RoCE ports (sysfs) and Ethernet interfaces, with the sysfs root as a
//!   parameter so that tests run on fixture trees;
//! - the transport interface used by the daemons' tree barrier (TCP now, RDMA where verbs load);
//! - the per-node endpoint table that daemons publish to local ranks in shared memory.
//!
//! It does not depend on the `rlaunch` binary crate nor on `launchers`.
