//! # ringzero-agent
//!
//! The node agent, one per machine: it enrolls the node with a pinned one-time join token,
//! keeps the node SVID renewed, receives only the registration entries parented to its own node
//! through an incremental stream, generates workload keys locally, and serves the standard SPIFFE
//! Workload API on a unix socket to processes it attests by peer credentials. Later it also runs
//! jobs and serves their logs and debug sessions, each call gated by a capability.
//!
//! # Layout
//!
//! - [`cache`]: the in-memory [`SvidCache`] of issued identities and trust bundles, which the
//!   sync loop fills and the Workload API reads (a watch channel of immutable snapshots).
//! - [`attest`]: workload attestation of a unix-socket peer into selectors, pinned to the
//!   process (pidfd, start time, executable) so that pid reuse and exec are caught.
//! - [`workload`]: the SPIFFE Workload API server ([`workload::serve`]).
//! - [`fetch`]: the client behind `ringzero agent fetch`.
//! - [`pb`]: the Workload API's generated gRPC code (the standard proto, no package).
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ringzero_agent::SvidCache;
//!
//! let cache = SvidCache::new();
//! // The sync loop calls cache.set_bundle(..) and cache.upsert(..) as SVIDs are issued.
//! let stop = tokio::signal::ctrl_c();
//! ringzero_agent::workload::serve(
//!     std::path::Path::new("/run/ringzero/agent.sock"),
//!     cache,
//!     async { let _ = stop.await; },
//! )
//! .await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod attest;
pub mod cache;
pub mod fetch;
pub mod workload;

/// The SPIFFE Workload API, generated from `proto/workload.proto`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

pub use self::attest::{Attestation, Attestor};
pub use self::cache::{Identity, Snapshot, SvidCache};
