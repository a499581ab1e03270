//! # ringzero-mesh
//!
//! The mesh sidecar: an inbound listener that terminates mTLS and forwards to the local
//! workload, and an outbound listener that originates mTLS to a peer sidecar and verifies the
//! peer's SPIFFE ID. Peers are authorized by SPIFFE ID pattern or a capability policy; the
//! sidecar's own SVID comes from the Workload API and rotates without dropping live connections.
//!
//! Nothing is implemented here yet.
#![forbid(unsafe_code)]
