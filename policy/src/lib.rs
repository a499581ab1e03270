//! # ringzero-policy
//!
//! The security model of ringzero, pure and I/O-free: it parses, signs, verifies and decides,
//! and returns decisions for its callers to log and enforce. No async runtime, no network, no
//! files, no logging; time is always passed in.
//!
//! # Layout
//!
//! - [`spiffe`] (`spiffe.rs`): [`TrustDomain`], [`SpiffeId`] and [`SpiffeIdPattern`], parsed
//!   exactly per the SPIFFE-ID spec.
//! - [`rights`] (`rights.rs`): the closed vocabulary of [`Operation`]s, [`Resource`] paths with
//!   segment-aware prefix matching, [`Right`]s, [`NodeName`] and the built-in [`Role`]s.
//! - [`token`] (`token/`): Biscuit capability tokens — `mint.rs` ([`mint`](token::mint)),
//!   `attenuate.rs` (offline [`attenuate`](token::attenuate)), `inspect.rs`
//!   ([`inspect`](token::inspect)), `authorize.rs` ([`authorize`](token::authorize) with a
//!   caller-supplied key set and revocation set), `shape.rs` (the block whitelist), `reach.rs`
//!   (what a token still allows), `cache.rs` (the verified [`TokenCache`]), `tests.rs`.
//! - [`svid`] (`svid/`): X.509-SVIDs — `ca.rs` (signing CAs, leaf issuance from a CSR or public
//!   key with exactly the SPIFFE profile), `validate.rs` (chain validation against a
//!   [`TrustBundle`](svid::TrustBundle)), `der.rs` (the certificate parts both look at),
//!   `tests.rs`.
//! - [`tls`] (`tls.rs`): rustls client and server certificate verifiers for SPIFFE.
//! - [`audit`] (`audit/`): the audit log as a transparency log — `entry.rs` (the canonical
//!   record), `merkle.rs` (RFC 6962 hashing and proofs), `head.rs` (signed tree heads, pinned
//!   audit keys), `digest.rs` (the bounded leaf digest a verifier keeps), `export/` (the
//!   JSON-lines export: writer and verifier); see its `# Layout`.
//! - [`ids`] (`ids.rs`): identifiers that sort by when they were made (certificate serials,
//!   the authority's command ids).
//! - [`join`] (`join.rs`): one-time join tokens and the trust-bundle pin they carry.
//! - [`jwt`] (`jwt/`): JWT-SVIDs — ES256 signing with an authority key, strict validation of
//!   untrusted tokens against a bundle's JWT keys, and their JWK form.
//! - [`selector`] (`selector.rs`): workload selectors, observed and required.
//! - `fuzzing.rs`, `audit/fuzzing.rs` (feature `fuzzing`): entry points shared by the
//!   cargo-fuzz targets and the corpus replay tests.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use ringzero_policy::{Operation, Resource, Right, SpiffeId};
//! use ringzero_policy::token::{self, Decision, KeySet, Lifetime, MintRequest, NoRevocations,
//!     Request, RootKey, RootKeyId};
//!
//! let root = RootKey::generate(RootKeyId(1));
//! let alice = SpiffeId::parse("spiffe://example.org/user/alice")?;
//! let now = SystemTime::now();
//! let t = token::mint(&root, &MintRequest {
//!     subject: alice.clone(),
//!     rights: vec![Right::new(Operation::LogsRead, Resource::parse("ns/default")?)],
//!     ttl: Some(Duration::from_secs(600)),
//!     bind_to_subject: true,
//!     bind_node: None,
//! }, &Lifetime::default(), now)?;
//!
//! let keys = KeySet::single(root.public());
//! let resource = Resource::parse("ns/default/web")?;
//! let req = Request { operation: Operation::LogsRead, resource: &resource,
//!     peer: Some(&alice), node: None, time: now };
//! let decision = token::authorize(&t, &keys, &NoRevocations, &req, Default::default());
//! assert!(decision.is_allowed());
//!
//! // The same token presented by another identity is refused.
//! let mallory = SpiffeId::parse("spiffe://example.org/user/mallory")?;
//! let stolen = Request { peer: Some(&mallory), ..req };
//! let Decision::Deny(why) = token::authorize(&t, &keys, &NoRevocations, &stolen, Default::default())
//!     else { panic!("a stolen token must be refused") };
//! assert_eq!(why.code(), "peer_mismatch");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod audit;
pub mod ids;
pub mod join;
pub mod jwt;
pub mod rights;
pub mod selector;
pub mod spiffe;
pub mod svid;
pub mod tls;
pub mod token;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "testing")]
pub mod testing;

pub use self::rights::{NodeName, Operation, Resource, Right, Role};
pub use self::spiffe::{SpiffeId, SpiffeIdPattern, TrustDomain};
pub use self::token::TokenCache;
