//! # ringzero-proto
//!
//! The wire contracts: ringzero's own gRPC API (authority, enrollment, Raft transport, audit)
//! and the standard SPIFFE Workload API (service `SpiffeWorkloadAPI`, no proto package), compiled
//! with a pure-Rust `.proto` compiler so no system `protoc` is needed. The one client of the
//! authority API — mTLS connection, leader-hint retry, bundle and member refresh — lives here and
//! is shared by the CLI, the agent and the scheduler.
//!
//! Nothing is implemented here yet; the protocol arrives with the "Authority service" issue.
#![forbid(unsafe_code)]
