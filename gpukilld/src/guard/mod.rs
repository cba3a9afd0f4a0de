//! Guard: policies enforced continuously, and rogue (miner/abuse) detection.

pub mod clock;
pub mod counters;
pub mod edit;
pub mod engine;
pub mod evaluate;
pub mod notify;
pub mod policy;
pub mod rogue;
pub mod tracker;
