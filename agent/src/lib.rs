//! # ringzero-agent
//!
//! The node agent, one per machine: it enrolls the node with a pinned one-time join token,
//! keeps the node SVID renewed, receives only the registration entries parented to its own node
//! through an incremental stream, generates workload keys locally, and serves the standard SPIFFE
//! Workload API on a unix socket to processes it attests by peer credentials. Later it also runs
//! jobs and serves their logs and debug sessions, each call gated by a capability.
//!
//! Nothing is implemented here yet; it arrives with the "Node enrollment and the agent" issue.
#![forbid(unsafe_code)]
