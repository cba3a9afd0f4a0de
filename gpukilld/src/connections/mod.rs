//! What every listener of the daemon does to stay available to everyone: a cap on the
//! connections one caller may hold (per uid on the Unix socket, per address on TCP) and on
//! all of them together, deadlines on the first bytes, on silence and on a peer that stops
//! reading, and a backoff when accept(2) fails (out of file descriptors).
//!
//! - [`admission`]: who may open one more connection; refusals counted and logged once per
//!   burst.
//! - [`guarded`]: the connection wrapper that enforces the deadlines and gives its slot back
//!   when it closes.
//! - [`accept`]: the backoff after a failed accept(2), and raising `RLIMIT_NOFILE`.
//! - [`bursts`]: one log line per burst of refusals or failures, with the count.

pub mod accept;
pub mod admission;
pub mod bursts;
pub mod guarded;

pub use accept::{AcceptBackoff, raise_nofile_limit};
pub use admission::{Admission, AdmissionCounters, Limits, PeerAddress, PeerUid, Permit, Refused};
pub use bursts::Bursts;
pub use guarded::{Activity, Guarded, Timeouts};
