//! Rogue detection: scores how much a GPU process looks like a crypto miner or other abuse.
//!
//! A pure scoring layer: it reads an [`Observed`] process (fed from a live snapshot or
//! from a stored session) and returns a [`Finding`]; it reads no /proc, store or clock.
//!
//! # Signals
//!
//! Each signal that fires adds its weight ([`Weights`]); the score is capped at 100. A
//! weight of 0 turns its signal off.
//!
//! | signal | fires when | default weight |
//! | --- | --- | --- |
//! | `known_miner` | comm, exe basename or argv\[0\] basename is in `known_miners` | 80 |
//! | `pattern` | a `name_patterns` regex matches comm, exe basename or the command line | 30 |
//! | `renamed_miner` | the process is a *renamed miner* (below) | 20 |
//! | `renamed` | the exe basename is another program than both comm and argv\[0\], and not a renamed miner | 10 |
//! | `high_util` | mean SM utilization >= `high_util_pct` over at least `high_util_window` | 20 |
//! | `long_running` | it has run for at least `long_duration` | 10 |
//! | `unusual_hours` | it was observed inside `unusual_hours` | 10 |
//!
//! The score maps to a [`RiskLevel`] by the thresholds in [`Levels`] (by default low 20,
//! medium 40, high 60, critical 80). So a process named like a known miner is critical by
//! itself, a renamed one too, and a busy training job (high utilization for hours, at
//! night, for days) reaches medium at most without a name or command-line signal.
//!
//! Names are compared as *the same program* when they are equal ignoring case, when one is
//! the other plus a version suffix (`python3` and `python3.11`, `python` and `python3`,
//! `xmrig` and `xmrig-6.21`: the rest starts with a digit, or with `.`, `-` or `_` and a
//! digit), or when comm is 15 bytes (the kernel's limit) and the other begins with it.
//! Known miners match the same way. The `renamed` signal needs the exe to differ from
//! argv\[0\] too, because programs set their own comm: PyTorch's `pt_main_thread` (exe
//! `python3.11`, command line `python3 train.py`) and a script started through its `#!`
//! interpreter (comm `train.py`, command line `/usr/bin/python3 ./train.py`) are not renamed.
//!
//! # Renamed miners
//!
//! A process is a renamed miner when its exe basename or its argv\[0\] basename is another
//! program than its comm (see above) and that name is a known miner or matches a
//! `name_patterns` regex: a miner that set its comm to `python3` still says what it is in
//! /proc/PID/exe. Stored history has no exe name, so there only argv\[0\] can tell.
//!
//! # Whitelist
//!
//! [`Whitelist`] has three lists: `users` (user names or uids in decimal, exact),
//! `names` (regexes on comm) and `cmdlines` (regexes on the command line).
//!
//! - The entries of one list are OR'ed: a list matches when any of its entries matches.
//! - The lists are AND'ed: a process is exempt only when every list that is *non-empty*
//!   matches. An empty list places no condition; when all three are empty nothing is exempt.
//! - A renamed miner is never exempt, whatever the lists say: a whitelisted comm (or user,
//!   or command line) does not vouch for an exe that says it is a miner. Its finding says
//!   that the whitelist was overridden.
//!
//! An exempt process gets score 0, level [`RiskLevel::None`], no reasons, and
//! `whitelisted` naming the entries that matched.

mod config;
mod scorer;

pub use config::{HourRange, Levels, RiskLevel, RogueConfig, Weights, Whitelist};
pub use scorer::{Finding, Identity, Observed, RogueConfigError, RogueScorer};
