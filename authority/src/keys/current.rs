//! The keys a running node signs with, replaced at run time by a key rotation.

use std::sync::{Arc, RwLock};

use super::NodeKeys;

/// The node's current keys. Every signer (X.509 CA, Biscuit minting, JWT-SVIDs, audit tree
/// heads) calls [`CurrentKeys::load`] once per use, so a rotation takes effect at the next
/// signature without a restart; a signature already under way finishes with the keys it read.
#[derive(Clone)]
pub(crate) struct CurrentKeys(Arc<RwLock<Arc<NodeKeys>>>);

impl std::fmt::Debug for CurrentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CurrentKeys").field(&self.load()).finish()
    }
}

impl CurrentKeys {
    pub(crate) fn new(keys: NodeKeys) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(keys))))
    }

    /// The keys to sign with now.
    pub(crate) fn load(&self) -> Arc<NodeKeys> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Signs with `keys` from now on.
    pub(crate) fn replace(&self, keys: NodeKeys) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }
}
