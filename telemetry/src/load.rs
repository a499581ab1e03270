//! A closed-loop load generator and what it measures, shared by `ringzero bench write` and the
//! etcd client of `scripts/bench-vs-etcd.sh`, so that both sides of a comparison have exactly
//! the same load shape and statistics.
//!
//! - [`closed_loop`]: N clients, each with its own state (connection), calling back to back
//!   for a warmup and then a measured window; only calls completing in the window count.
//! - [`Summary`]: successes, rate, p50/p99/p99.9/max (nearest rank), errors by class.
//! - [`CpuProbe`]: the CPU time (user + system) of this process and of the processes listening
//!   on given local addresses, found through `/proc`; "unknown" where `/proc` does not say.
//! - [`Report`]: all of it as one JSON object or a small text table.

mod driver;
mod procfs;
mod report;
mod summary;

pub use driver::{Shape, closed_loop};
pub use procfs::{CpuProbe, CpuSample, CpuUsage, NodeCpu};
pub use report::Report;
pub use summary::Summary;
