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
//!
//! ```
//! use rlaunch_image::client::Client;
//! use rlaunch_image::proto::Scope;
//!
//! // The iteration to run next and the state, resumed from the job's latest complete epoch.
//! let (mut next, mut sum) = (0u64, 0u64);
//! let mut conn = Client::from_env()?; // None outside rlaunch
//! if let Some(image) = conn.as_mut().map(|c| c.load(Scope::Job)).transpose()?.flatten() {
//!     let word = |i: usize| u64::from_le_bytes(image.data[i * 8..i * 8 + 8].try_into().unwrap());
//!     (next, sum) = (word(0) + 1, word(1));
//! }
//! for i in next..100 {
//!     sum += i;
//!     if let Some(c) = conn.as_mut() {
//!         c.save(i, &[i.to_le_bytes(), sum.to_le_bytes()].concat())?;
//!     }
//! }
//! assert_eq!(sum, 4950);
//! # Ok::<(), rlaunch_image::client::Error>(())
//! ```

pub mod client;
pub mod ffi;
pub mod proto;
