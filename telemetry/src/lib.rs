//! Health and metrics for ringzero's daemons (`authority run`, `agent run`, `sched run`):
//! `/live`, `/ready` and `/metrics` in the Prometheus text format, served by [`serve`] on the
//! address given to `--metrics`.
//!
//! Metrics are `prometheus-client` families registered in one [`Registry`] per daemon; what
//! only the daemon's state knows (the Raft term, the earliest SVID expiry) is sampled into its
//! gauges when scraped, through [`Health::refresh`].
//!
//! # Layout
//! - `admin.rs`: the HTTP endpoint — one request per connection, a bounded head read within
//!   a deadline, a bounded number of connections, GET and HEAD only. Unauthenticated by
//!   design (a scraper and a kubelet call it), so it answers only what is safe to tell anyone
//!   who can reach the address, and costs a fixed, small amount per request.
//! - `http.rs`: the HTTP/1.1 it speaks (bounded head read, strict request line, the answer),
//!   shared with the mesh sidecar's admin listener.
//! - `load.rs` with `load/`: the closed-loop load generator of `ringzero bench write` and of
//!   the etcd client beside it (`driver.rs`), its statistics (`summary.rs`), CPU time from
//!   `/proc` (`procfs.rs`) and the report (`report.rs`).

mod admin;
pub mod http;
pub mod load;

pub use admin::{Health, serve};
pub use prometheus_client;
pub use prometheus_client::registry::Registry;

/// Latency buckets in seconds, 100 µs to 10 s, for the daemons' latency histograms.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        10.0,
    ]
    .into_iter()
}

/// Encodes `registry` in the Prometheus text format (version 0.0.4).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
