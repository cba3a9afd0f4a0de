//! gpukilld: the per-node GPU daemon. Everything lives in this library; `main.rs` only
//! parses arguments, sets up logging and calls [`run`]. Tests call the same `run`.
//!
//! Data moves one way: vendor backends -> sampler -> snapshot -> ring -> readers (RPC).

pub mod actions;
pub mod authz;
pub mod backends;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod daemon;
pub mod errors;
pub mod guard;
pub mod health;
pub mod health_events;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod node;
pub mod procinfo;
pub mod recorder;
pub mod reservations;
pub mod ring;
pub mod rpc;
pub mod sampler;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod units;
pub mod upload;
pub mod usage_payload;

pub use daemon::{Environment, Error, LoadConfig, run};
