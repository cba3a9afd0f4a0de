//! One module per subcommand, named like the RPC it makes (and like the daemon's `rpc/`);
//! `audit` makes the Sessions RPC, `uploads` the Uploads, UploadShow and UploadRetry RPCs.

pub mod audit;
pub mod cluster;
pub mod collection;
pub mod events;
pub mod export;
pub mod guard;
pub mod guard_policy;
pub mod history;
pub mod import;
pub mod kill;
pub mod list;
pub mod reset;
pub mod uploads;
pub mod version;
