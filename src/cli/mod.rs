//! The command line, in two steps as in ripgrep: [`parse`] only looks at the words (no I/O) and
//! gives [`Parsed`]; [`resolve`] checks them against the system (programs, directories, the
//! allocation, the programs' MPI) and gives the [`crate::plan::JobPlan`].
//!
//! Files: `error` (the usage error they all return), `appfile` (expands `--app FILE` /
//! `-configfile FILE` into words, before parsing), `flags` (the one clap table and the typed
//! value parsers), `normalize` (mpirun-style words to clap's), `parse`, `sensors` (the sensor
//! flags, resolved), `resolve`, `dry_run` (the `--dry-run` text). Each imports only files before
//! it in that list (dry_run only the plan), and none imports this one.

mod appfile;
mod dry_run;
mod error;
mod mapping;
mod flags;
mod normalize;
mod parse;
mod rankfile;
mod resolve;
mod sensors;

pub use appfile::{expand as expand_context_files, expand_tune};
pub use dry_run::describe;
pub use error::UsageError;
pub use flags::generate;
pub use parse::{parse, to_strings};
pub use resolve::{resolve, Env};
