//! The rank side of rlaunch's recovery images (`man 3 rlaunch_image`).
//!
//! A rank hands its daemon an image of its state ([`client::Client::save`], `rli_save`), tagged
//! with an epoch of its own (an iteration number); the daemon keeps it in memory, copies it to
//! partner daemons and, with `--image-dir`, to disk. A restarted rank loads it back
//! ([`client::Client::load`], `rli_load`). [`proto`] is the wire between rank and daemon, shared
//! with the daemon; [`ffi`] is the C ABI of `include/rlaunch_image.h`.
//!
//! Outside rlaunch (no `RLAUNCH_IMAGE_FD`) saving and polling do nothing and loading finds
//! nothing, so a program using the API still runs on its own.

pub mod client;
pub mod ffi;
pub mod proto;
