//! Capability tokens: Biscuit (biscuit-auth 6) tokens with Ed25519 roots.
//!
//! # Shape of a token
//!
//! The authority block, signed by an authority node's root key, says who the token was minted
//! for and what it allows, and always carries an expiry:
//!
//! ```text
//! subject("spiffe://example.org/user/alice");
//! right("node", "node:evict", "node");            // operation node:evict on prefix `node`
//! check if time($time), $time < 2026-11-27T10:00:00Z;
//! check if peer("spiffe://example.org/user/alice");   // when bound at mint
//! ```
//!
//! Every later block only adds checks, so it can only narrow:
//!
//! ```text
//! check if time($time), $time < 2026-11-26T22:10:00Z;
//! check if operation($op), {"logs:read"}.contains($op);
//! check if resource_within("ns/default/web");
//! check if peer("spiffe://example.org/ns/ci/deployer");
//! check if node("n7");
//! ```
//!
//! The verifier states the request as facts — `operation`, `resource`, `peer`, `node`, `time`,
//! and one `resource_within(p)` for every prefix `p` that covers the requested resource by
//! whole segments — and allows only if a `right` of the authority block matches. Stating the
//! covering prefixes as facts keeps prefix matching exact (`ns/a` never covers `ns/ab`) and
//! turns it into an equality join, which is what Datalog is fast at.
//!
//! # Bounded evaluation
//!
//! A token's blocks are attacker-written (any holder can append one offline), and biscuit-auth
//! checks its time limit only between checks, so a single check joining a few predicates could
//! run for minutes. Every block is therefore vetted against a whitelist of the shapes above
//! before any Datalog runs — no rules, no facts outside the authority block, no scopes, no
//! third-party blocks, only the listed single-predicate checks, at most
//! [`MAX_CHECKS_PER_BLOCK`] checks per block, [`MAX_RIGHTS`] rights and [`MAX_SET_LEN`]
//! operations per set — and anything else is denied as `unsupported_block` or
//! `limits_exceeded` (see [`ShapeError`]). Each accepted check then costs one scan of at most
//! ~520 facts (257 from the token, the request's own), and a token holds at most
//! `MAX_BLOCKS × MAX_CHECKS_PER_BLOCK` = 512 checks, so evaluation is bounded by
//! 512 × 520 fact matches plus the allow policy's join
//! (1 × ≤256 rights × the resource's prefixes). The explicit [`Limits`] (facts, iterations,
//! time) still apply during evaluation; with these shapes biscuit's between-checks time limit
//! is an effective hard deadline.

mod attenuate;
mod authorize;
mod cache;
mod inspect;
mod mint;
mod native;
mod reach;
mod shape;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

pub use self::attenuate::{Attenuation, attenuate};
pub use self::authorize::{CheckKind, Decision, Denial, Grant, Limits, Request, authorize};
pub use self::cache::TokenCache;
pub use self::inspect::{BlockView, TokenView, inspect, revocation_ids};
pub use self::mint::{Lifetime, MintRequest, mint};
pub use self::reach::{BlockReach, Reach, ReachRight, reach, verify_signature};
pub use self::shape::{MAX_CHECKS_PER_BLOCK, MAX_RIGHTS, MAX_SET_LEN, ShapeError};

/// The largest token accepted, in bytes of its base64 form. Larger input is refused before it is
/// decoded.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// The most blocks a token may have (authority block plus attenuations).
pub const MAX_BLOCKS: usize = 32;

/// Identifies which root key signed a token; carried in the token, resolved in a [`KeySet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RootKeyId(pub u32);

impl fmt::Display for RootKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A root key pair that can mint tokens. Its `Debug` form never shows the private half.
pub struct RootKey {
    id: RootKeyId,
    pair: biscuit_auth::KeyPair,
}

impl RootKey {
    /// Generates a fresh Ed25519 root key.
    pub fn generate(id: RootKeyId) -> Self {
        Self {
            id,
            pair: biscuit_auth::KeyPair::new_with_algorithm(biscuit_auth::Algorithm::Ed25519),
        }
    }

    /// Loads a private key in biscuit's text form, `ed25519-private/<hex>`.
    pub fn from_private_text(id: RootKeyId, text: &str) -> Result<Self, TokenError> {
        let private: biscuit_auth::PrivateKey = text
            .trim()
            .parse()
            .map_err(|_| TokenError::BadKey("expected ed25519-private/<64 hex digits>".into()))?;
        if private.algorithm() != biscuit_auth::format::schema::public_key::Algorithm::Ed25519 {
            return Err(TokenError::BadKey("root keys are Ed25519".into()));
        }
        Ok(Self {
            id,
            pair: biscuit_auth::KeyPair::from(&private),
        })
    }

    /// The private key in biscuit's text form. Handle as a secret.
    pub fn private_text(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(self.pair.private().to_prefixed_string())
    }

    pub fn id(&self) -> RootKeyId {
        self.id
    }

    /// The public half, for verifiers.
    pub fn public(&self) -> PublicRootKey {
        PublicRootKey {
            id: self.id,
            key: self.pair.public(),
        }
    }

    pub(crate) fn pair(&self) -> &biscuit_auth::KeyPair {
        &self.pair
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKey")
            .field("id", &self.id)
            .field("public", &self.pair.public().to_string())
            .finish_non_exhaustive()
    }
}

/// The public half of a root key, with its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicRootKey {
    pub id: RootKeyId,
    pub key: biscuit_auth::PublicKey,
}

impl PublicRootKey {
    /// Parses biscuit's public key text form, `ed25519/<hex>`.
    pub fn from_text(id: RootKeyId, text: &str) -> Result<Self, TokenError> {
        let key: biscuit_auth::PublicKey = text
            .trim()
            .parse()
            .map_err(|_| TokenError::BadKey("expected ed25519/<64 hex digits>".into()))?;
        Ok(Self { id, key })
    }

    /// Parses the 32 raw bytes of an Ed25519 key, as a trust bundle carries it.
    pub fn from_bytes(id: RootKeyId, bytes: &[u8]) -> Result<Self, TokenError> {
        let key = biscuit_auth::PublicKey::from_bytes(bytes, biscuit_auth::Algorithm::Ed25519)
            .map_err(|_| TokenError::BadKey("expected 32 bytes of an Ed25519 key".into()))?;
        Ok(Self { id, key })
    }

    /// The key in biscuit's text form, `ed25519/<hex>`.
    pub fn to_text(&self) -> String {
        self.key.to_string()
    }
}

/// The root public keys a verifier trusts, by id. Rotation adds a key under a new id; removing a
/// key makes every token it signed unverifiable at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: BTreeMap<RootKeyId, biscuit_auth::PublicKey>,
}

impl KeySet {
    pub fn new() -> Self {
        Self::default()
    }

    /// A key set holding one key.
    pub fn single(key: PublicRootKey) -> Self {
        let mut s = Self::new();
        s.insert(key);
        s
    }

    pub fn insert(&mut self, key: PublicRootKey) {
        self.keys.insert(key.id, key.key);
    }

    pub fn remove(&mut self, id: RootKeyId) -> bool {
        self.keys.remove(&id).is_some()
    }

    pub fn get(&self, id: RootKeyId) -> Option<&biscuit_auth::PublicKey> {
        self.keys.get(&id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A revocation id: the signature of one block. Revoking a token's last block revokes it and
/// every token attenuated from it, never its parent.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevocationId(pub Vec<u8>);

impl RevocationId {
    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Result<Self, TokenError> {
        let bytes = hex::decode(s.trim())
            .map_err(|_| TokenError::Malformed("revocation id is not hex".into()))?;
        if bytes.is_empty() || bytes.len() > 128 {
            return Err(TokenError::Malformed(
                "revocation id has the wrong length".into(),
            ));
        }
        Ok(Self(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for RevocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for RevocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RevocationId({})", self.to_hex())
    }
}

impl serde::Serialize for RevocationId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// The set of revoked block ids a verifier knows. Checked before any signature or Datalog work.
pub trait Revocations {
    fn is_revoked(&self, id: &[u8]) -> bool;
}

impl Revocations for HashSet<RevocationId> {
    fn is_revoked(&self, id: &[u8]) -> bool {
        // `RevocationId` borrows as its bytes through this lookup key.
        self.contains(&RevocationId(id.to_vec()))
    }
}

impl Revocations for BTreeSet<RevocationId> {
    fn is_revoked(&self, id: &[u8]) -> bool {
        self.contains(&RevocationId(id.to_vec()))
    }
}

impl Revocations for HashSet<Vec<u8>> {
    fn is_revoked(&self, id: &[u8]) -> bool {
        self.contains(id)
    }
}

/// No revocations known (offline verification).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRevocations;

impl Revocations for NoRevocations {
    fn is_revoked(&self, _: &[u8]) -> bool {
        false
    }
}

/// Errors minting, attenuating or decoding a token (authorization itself returns a
/// [`Decision`], never an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("a token needs at least one right")]
    NoRights,
    #[error("lifetime of {} s is above the cap of {} s", asked.as_secs(), cap.as_secs())]
    TtlAboveCap { asked: Duration, cap: Duration },
    #[error("lifetime must be at least one second")]
    TtlTooShort,
    #[error("nothing to attenuate: give at least one restriction")]
    EmptyAttenuation,
    #[error("token has {0} blocks; at most {MAX_BLOCKS} are accepted")]
    TooManyBlocks(usize),
    #[error("token is larger than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    #[error("{0} rights; a token holds at most {MAX_RIGHTS}")]
    TooManyRights(usize),
    /// A block has a shape ringzero never writes (see [`ShapeError`]); such a token can
    /// authorize nothing.
    #[error("unsupported token: {0}")]
    Unsupported(ShapeError),
    #[error("biscuit: {0}")]
    Biscuit(String),
}

/// Decodes the base64url text form of a token, bounding its size first.
pub(crate) fn decode_unverified(
    token: &str,
) -> Result<biscuit_auth::UnverifiedBiscuit, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge);
    }
    if token.is_empty() {
        return Err(TokenError::Malformed("empty token".into()));
    }
    let unverified = biscuit_auth::UnverifiedBiscuit::from_base64(token)
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    if unverified.block_count() > MAX_BLOCKS {
        return Err(TokenError::TooManyBlocks(unverified.block_count()));
    }
    Ok(unverified)
}

/// Checks, without verifying any signature, that every block of `token` has a shape ringzero
/// writes (see [`ShapeError`]). [`authorize`] makes the same check before any Datalog runs.
pub fn check_shape(token: &str) -> Result<(), TokenError> {
    shape::shape_of(&decode_unverified(token)?)?;
    Ok(())
}

/// When `token` stops being valid: the earliest expiry across every time check of every block,
/// or `None` if no block has one. Signatures are not verified: use it on a token already
/// authorized (as `MintToken` does with the caller's own token, to cap a delegated one).
///
/// The instant returned is the first one at which the token is no longer valid, which is what
/// [`mint`] writes as `check if time($time), $time < <instant>`: the verifier states the time
/// in whole seconds (truncated), so `$time < D` expires at D and `$time <= D` — valid through
/// second D — at D + 1 s. A token minted with `ttl` ending at or before this instant never
/// outlives `token`. A date too far away for `SystemTime` bounds nothing.
///
/// A token with any block outside the whitelist is refused with [`TokenError::Unsupported`],
/// as [`authorize`] refuses it: so every token that can authorize has its expiry found here.
pub fn expiry(token: &str) -> Result<Option<SystemTime>, TokenError> {
    Ok(shape::shape_of(&decode_unverified(token)?)?.expires_at())
}

pub(crate) fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
