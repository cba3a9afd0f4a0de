//! One module per subcommand, named like the RPC it makes (and like the daemon's `rpc/`);
//! `audit` makes the Sessions RPC, `uploads` the Uploads, UploadShow and UploadRetry RPCs,
//! `status` the Reservations RPC, `drain` the Drain and Undrain RPCs. `completions` and `man` ask no daemon: they render this
//! command line.

pub mod audit;
pub mod cluster;
pub mod collection;
pub mod completions;
pub mod drain;
pub mod events;
pub mod export;
pub mod guard;
pub mod guard_policy;
pub mod health;
pub mod history;
pub mod import;
pub mod kill;
pub mod list;
pub mod man;
pub mod release;
pub mod reserve;
pub mod reset;
pub mod run;
pub mod status;
pub mod uploads;
pub mod version;
