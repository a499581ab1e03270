//! An authority node's life: bootstrap the first node, join an existing cluster, run.
//!
//! Data directory layout:
//!
//! ```text
//! D/node.toml          node id, trust domain, listen address, Biscuit key id
//! D/keys/              ca.der, ca.key, biscuit.key, jwt.key, audit.key   (private keys 0600)
//! D/raft/              log.redb, log/ (the log's segments), state.redb, snapshots/
//! D/trust-bundle.der   the bundle learned at join, until the replicated one is applied
//! D/admin.profile      written by bootstrap (0600)
//! D/admin.sock         the break-glass admin socket while the node runs (0600, root only)
//! ```

mod admin;
pub mod admin_socket;
mod bootstrap;
mod join;
mod layout;
mod parts;
mod serve;
mod tasks;

use std::path::PathBuf;
use std::time::Duration;

use crate::StateError;
use crate::keys::KeyError;

use self::admin::*;
pub(crate) use self::admin::{admin_profile, pin_audit_keys};
pub use self::bootstrap::bootstrap;
pub use self::join::{FirstContact, join};
pub use self::layout::NodeConfig;
use self::layout::*;
pub(crate) use self::parts::own_svid;
use self::parts::*;
use self::serve::serve;
pub use self::serve::{listen_address, run, run_with_metrics};
use self::tasks::*;

/// The lifetime of a node's own SVID, re-issued by its own CA at every start.
pub const NODE_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The default lifetime of the bootstrap admin credential.
pub const ADMIN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Errors running a node. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("storage: {0}")]
    State(#[from] StateError),
    #[error("{path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("{0} already holds an authority node; use `ringzero authority run --data-dir {0}`")]
    AlreadyInitialized(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("join: {0}")]
    Join(String),
    #[error(transparent)]
    NotPrivate(#[from] crate::private_fs::NotPrivate),
    #[error(
        "this authority node was removed from the cluster and its private keys were deleted \
         ({0}/REMOVED says when); it cannot serve again: join a new node with a new token \
         (`ringzero authority join-token`) in a new data directory"
    )]
    Removed(String),
    #[error("{0}")]
    Identity(#[from] ringzero_policy::spiffe::IdError),
    #[error("{0}")]
    Svid(#[from] ringzero_policy::svid::SvidError),
    #[error("{0}")]
    Token(#[from] ringzero_policy::token::TokenError),
    #[error("{0}")]
    Role(#[from] ringzero_policy::rights::RoleError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile: {0}")]
    Profile(#[from] ringzero_proto::client::ClientError),
    #[error("{path}: {source}")]
    ConfigWrite {
        path: PathBuf,
        source: toml::ser::Error,
    },
    /// The state machine refused a command this node needed (bootstrap, break-glass).
    #[error("{what}: refused by the state machine: {why}")]
    Refused {
        what: &'static str,
        why: crate::command::Rejection,
    },
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("a node task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn raft_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Raft(e.to_string())
}
