//! # ringzero-authority
//!
//! The cluster's root of trust: 3 or 5 authority nodes replicate one security state machine with
//! openraft on durable redb storage. The state machine holds the trust bundle (each node's own
//! signing CA, Biscuit root key and JWT key — no private key is ever shared), the authority
//! members, enrolled agent nodes, one-time join tokens, registration entries, users and roles,
//! revocations, and the append-only audit log. Every privileged request is authorized with
//! `ringzero-policy`, and its audit record is committed in the same Raft entry as its effect
//! before anything is released.
//!
//! Nothing is implemented here yet: the storage and consensus engine arrive with the "Raft core"
//! issue and the gRPC service with the "Authority service" issue. See `ARCHITECTURE.md`.
#![forbid(unsafe_code)]
