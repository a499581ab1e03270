//! # ringzero-proto
//!
//! The wire contracts: ringzero's own gRPC API (authority, enrollment, Raft transport) and the
//! standard SPIFFE Workload API, compiled with a pure-Rust `.proto` compiler so no system
//! `protoc` is needed. Also the one mTLS transport every ringzero process uses: a tonic server
//! fed by rustls connections whose peer SPIFFE ID reaches every handler, and a tonic channel
//! that verifies the server's SVID.
//!
//! # Layout
//!
//! - `proto/ringzero/v1/authority.proto` → [`pb`]: generated messages, clients and servers
//!   (`ringzero.v1`: the `Authority` and `Raft` services).
//! - `proto/spiffe/workload.proto` → [`workload`]: the SPIFFE Workload API, generated messages,
//!   client and server (no package: the service is `SpiffeWorkloadAPI` on the wire).
//! - `proto/ringzero/mesh/v1/mesh.proto` → [`mesh`]: ringzero's extension served beside the
//!   Workload API on the agent's socket (`ringzero.mesh.v1.MeshPolicy`: mesh policies and
//!   revoked serials for the caller's identities).
//! - `proto/ringzero/node/v1/node.proto` → [`node`]: the agent's node API over mTLS
//!   (`ringzero.node.v1.Node`: `ReadLogs`), each call carrying a capability.
//! - `build.rs`: compiles them with protox.
//! - `codec` (`codec.rs`): the Workload API's codec, prost with buffers that start empty
//!   (an agent holds thousands of its streams open).
//! - [`workload_api`] (`workload_api.rs`): what the Workload API's server and clients share —
//!   the security header, `SPIFFE_ENDPOINT_SOCKET`'s endpoint syntax, DER certificate lists.
//! - [`client`] (`client.rs`, `client/`): profiles and the authority client with leader-hint
//!   retry (`client.rs`), first contact (`first_contact.rs`), applying a received bundle to
//!   what a profile trusts (`trust.rs`).
//! - [`transport`] (`transport.rs`, `transport/`): mTLS for tonic on rustls (ring provider)
//!   with the SPIFFE verifiers of `ringzero_policy::tls` — the accept loop (`accepting.rs`),
//!   connection slots per class and source (`admission.rs`), the one server-side connection
//!   type ([`transport::Connection`], `connection.rs`), the per-connection bounds
//!   (`policy.rs`) and the tower layers that refuse calls by peer (`layers.rs`).
//! - [`fs`] (`fs.rs`): [`fs::write_private`], the atomic writer of files that hold secrets.
//! - [`jwks`] (`jwks.rs`): the trust bundle as a SPIFFE bundle document (JWK set), for
//!   `bundle show --format jwks` and the Workload API's `FetchJWTBundles`.
//! - [`job_file`] (`job_file.rs`): the TOML job file of `ringzero job run`, read into a
//!   [`pb::Job`] (bounded, unknown keys refused).
#![forbid(unsafe_code)]

/// Generated from `proto/ringzero/v1/*.proto`.
#[allow(
    rustdoc::invalid_html_tags,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod pb {
    tonic::include_proto!("ringzero.v1");
}

/// The SPIFFE Workload API, generated from `proto/spiffe/workload.proto`. The standard proto
/// has no package, so its methods are `/SpiffeWorkloadAPI/<Method>` on the wire.
#[allow(
    rustdoc::invalid_html_tags,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod workload {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// ringzero's Workload API extension for the mesh sidecar, generated from
/// `proto/ringzero/mesh/v1/mesh.proto` (`/ringzero.mesh.v1.MeshPolicy/Watch` on the wire).
#[allow(
    rustdoc::invalid_html_tags,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod mesh {
    tonic::include_proto!("ringzero.mesh.v1");
}

/// The agent's node API, generated from `proto/ringzero/node/v1/node.proto`
/// (`/ringzero.node.v1.Node/…` on the wire): task logs over mTLS, gated by a capability.
#[allow(
    rustdoc::invalid_html_tags,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod node {
    tonic::include_proto!("ringzero.node.v1");
}

pub mod client;
mod codec;
pub mod fs;
pub mod job_file;
pub mod jwks;
pub mod transport;
pub mod workload_api;

/// The methods of `ringzero.v1.Authority` a client without a certificate may call (the
/// service's "first contact" section): fetching the trust bundle to check it against a pin,
/// redeeming a join token, and logging in with a user invite (`Login` renews with an SVID
/// otherwise). For [`transport::AnonymousAllowListLayer`].
pub const AUTHORITY_FIRST_CONTACT: [&str; 3] = [
    "/ringzero.v1.Authority/GetBundle",
    "/ringzero.v1.Authority/RedeemJoinToken",
    "/ringzero.v1.Authority/Login",
];

/// The path prefix of the Raft service's methods, which only authority members may call. For
/// [`transport::MembersOnlyLayer`].
pub const RAFT_METHODS: &str = "/ringzero.v1.Raft/";
