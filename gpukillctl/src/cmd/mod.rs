//! One module per subcommand, named like the RPC it makes (and like the daemon's `rpc/`).

pub mod events;
pub mod kill;
pub mod list;
pub mod reset;
pub mod version;
