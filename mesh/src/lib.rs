//! # ringzero-mesh
//!
//! The mesh sidecar's data plane. A sidecar runs beside a workload, under its uid, gets the
//! workload's X.509-SVID and trust bundle from the local agent over the standard SPIFFE
//! Workload API, and
//!
//! - **inbound**: terminates mTLS on a listener, requires a client SVID of the trust domain
//!   whose SPIFFE ID an allow rule admits and whose serial is not revoked, and forwards plain
//!   TCP to the local target (optionally preceded by a PROXY v2 header naming the caller);
//! - **outbound**: accepts plain TCP from the local app on a loopback listener, originates
//!   mTLS to a peer and requires the peer's SVID to carry exactly the expected SPIFFE ID.
//!
//! New SVIDs and bundles apply to the next handshake; live connections are kept until they
//! end, reach `max_conn_age` or their peer certificate's expiry, see their peer's serial
//! revoked, or outlast the drain after a shutdown signal. Every refusal is classified
//! ([`Refusal`]), logged once and counted in `/metrics`.
//!
//! **Policy from the authority**: when the agent offers ringzero's mesh extension beside the
//! Workload API, the authority's policies for the sidecar's identity join the local rules in
//! the [`AllowList`] (either one admits a caller) and the revoked serials replace the
//! [`RevokedSerials`], each applying to the next handshake; beside an agent without it (SPIRE's)
//! the sidecar keeps to its local rules. Not here yet: federated bundles. The
//! `ringzero mesh sidecar` command flattens `config::Args` (the `clap` feature)
//! and calls [`Sidecar::run_with_ready`].
//!
//! # Layout
//!
//! - [`config`]: flags and TOML file, merged and validated into a [`Config`] (deny by default).
//! - `identity`: the Workload API client publishing the current [`Identity`] through a
//!   `tokio::sync::watch`, and the rustls certificate resolver that reads it.
//! - `policy_feed`: the client of the agent's mesh extension (authority policies, revoked
//!   serials), applied to the [`AllowList`] and the [`RevokedSerials`].
//! - `verify`: the policy crate's SPIFFE verifiers wrapped with the allow rules
//!   ([`AllowList`]) and the refused serials ([`RevokedSerials`]); refusal classification.
//! - `proxy`: accept loops, the byte pump, connection age, drain.
//! - [`proxy_protocol`]: the PROXY v2 header (ghostunnel's TLVs plus the SPIFFE ID).
//! - `admin`: `/live`, `/ready`, `/metrics`, `/status`.
//! - `metrics`: the counters behind `/metrics`.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ringzero_mesh::config::Settings;
//!
//! let config = Settings {
//!     workload_api: Some("unix:///run/ringzero/agent.sock".into()),
//!     inbound: vec!["0.0.0.0:8443=127.0.0.1:8080".into()],
//!     allow: vec!["spiffe://example.org/ns/shop/*".into()],
//!     admin: Some("127.0.0.1:9901".into()),
//!     ..Settings::default()
//! }
//! .validate(None)?;
//! let sidecar = ringzero_mesh::Sidecar::bind(config).await?;
//! println!("inbound on {:?}", sidecar.inbound_addrs());
//! sidecar.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod admin;
pub mod config;
mod identity;
mod metrics;
mod policy_feed;
mod proxy;
pub mod proxy_protocol;
mod verify;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringzero_policy::tls::BundleSource;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use self::config::Config;
pub use self::identity::Identity;
pub use self::metrics::{Direction, Metrics};
pub use self::verify::{Allow, AllowList, Refusal, RevokedSerials};

/// Why the sidecar could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigErrors),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no SVID from the Workload API at {socket} within {timeout:?}")]
    NoSvid { socket: String, timeout: Duration },
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Raises this process's soft limit on open files to its hard limit, as proxies do: each
/// proxied connection holds two descriptors, so the common soft limit of 1,024 would refuse
/// accepts near 500 connections, well under the 10,000-connection cap. Returns the limit now
/// in force (`None` when unlimited or unknown). For the binary to call once at start-up.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) if current < maximum => {
            let raised = rustix::process::Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => Some(maximum),
                Err(e) => {
                    tracing::warn!(current, maximum, error = %e, "cannot raise the open-file limit");
                    Some(current)
                }
            }
        }
        (current, _) => current,
    }
}

/// A sidecar whose listeners are bound, ready to [`run`](Sidecar::run).
#[derive(Debug)]
pub struct Sidecar {
    config: Config,
    inbound: Vec<TcpListener>,
    outbound: Vec<TcpListener>,
    admin: Option<TcpListener>,
    revoked: RevokedSerials,
    allow: AllowList,
    metrics: Arc<Metrics>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, MeshError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MeshError::Bind { addr, source })
}

impl Sidecar {
    /// Binds every listener of `config` (nothing is served yet).
    pub async fn bind(config: Config) -> Result<Self, MeshError> {
        let mut inbound = Vec::with_capacity(config.inbound.len());
        for i in &config.inbound {
            inbound.push(bind(i.listen).await?);
        }
        let mut outbound = Vec::with_capacity(config.outbound.len());
        for o in &config.outbound {
            outbound.push(bind(o.listen).await?);
        }
        let admin = match config.admin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let allow = AllowList::new(if config.allow.is_empty() && config.allow_trust_domain {
            Allow::AnyInTrustDomain
        } else {
            Allow::OneOf(config.allow.clone())
        });
        Ok(Self {
            config,
            inbound,
            outbound,
            admin,
            revoked: RevokedSerials::default(),
            allow,
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// The bound inbound listener addresses, in configuration order.
    pub fn inbound_addrs(&self) -> Vec<SocketAddr> {
        self.inbound
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound outbound listener addresses, in configuration order.
    pub fn outbound_addrs(&self) -> Vec<SocketAddr> {
        self.outbound
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The refused serials, checked at every handshake (both directions); adding a serial
    /// also closes the live connections of that peer.
    pub fn revocations(&self) -> RevokedSerials {
        self.revoked.clone()
    }

    /// The inbound allow rules, checked at every handshake.
    pub fn allow_list(&self) -> AllowList {
        self.allow.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves until `shutdown` completes, then drains: listeners close at once, live
    /// connections get the drain timeout to finish and are closed after it.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), MeshError> {
        self.run_with_ready(shutdown, |_| {}).await
    }

    /// [`run`](Sidecar::run), calling `ready` with the sidecar's SPIFFE ID once the first SVID
    /// is held and every listener serves (for the CLI's readiness line).
    pub async fn run_with_ready(
        self,
        shutdown: impl Future<Output = ()>,
        ready: impl FnOnce(&ringzero_policy::SpiffeId),
    ) -> Result<(), MeshError> {
        let Sidecar {
            config,
            inbound,
            outbound,
            admin,
            revoked,
            allow,
            metrics,
        } = self;
        tokio::pin!(shutdown);
        let mut current = identity::spawn(config.workload_api.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (hard_tx, hard_rx) = watch::channel(false);
        let tracker = Arc::new(proxy::Tracker::default());
        let mut tasks = JoinSet::new();

        let admin_task = admin.map(|listener| {
            let state = Arc::new(admin::AdminState {
                current: current.clone(),
                metrics: Arc::clone(&metrics),
                inbound: config.inbound.clone(),
                outbound: config.outbound.clone(),
                tracker: Arc::clone(&tracker),
                draining: stop_rx.clone(),
                allow: allow.clone(),
                revoked: revoked.clone(),
                last_probe: tokio::sync::Mutex::default(),
            });
            tokio::spawn(admin::serve(listener, state))
        });
        let _abort_admin = AbortOnDrop(admin_task);

        let first = tokio::select! {
            first = identity::wait_first(&mut current, config.svid_timeout) => first,
            () = &mut shutdown => return Ok(()),
        };
        let Some(first) = first else {
            return Err(MeshError::NoSvid {
                socket: config.workload_api.display().to_string(),
                timeout: config.svid_timeout,
            });
        };
        metrics.svid_updated();
        for pattern in &config.allow {
            if pattern.trust_domain_name() != first.bundle.trust_domain().as_str() {
                tracing::warn!(rule = %pattern, trust_domain = %first.bundle.trust_domain(), "allow rule names another trust domain: it can never match");
            }
        }
        tasks.spawn(policy_feed::follow(
            config.workload_api.clone(),
            policy_feed::Targets {
                current: current.clone(),
                allow: allow.clone(),
                revoked: revoked.clone(),
            },
        ));
        if config.allow.is_empty() && !config.allow_trust_domain && !config.inbound.is_empty() {
            tracing::info!(
                "no local allow rule: inbound callers are admitted by authority policies only (--allow-from-authority)"
            );
        }
        let bundle = BundleSource::new(first.bundle.clone());
        tasks.spawn(follow_bundle(
            current.clone(),
            bundle.clone(),
            Arc::clone(&metrics),
        ));

        let resolver = identity::CertResolver::new(current.clone());
        let shared = Arc::new(proxy::Shared {
            metrics: Arc::clone(&metrics),
            max_conn_age: config.max_conn_age,
            proxy_protocol: config.proxy_protocol,
            revoked: revoked.clone(),
            tracker: Arc::clone(&tracker),
            limit: Arc::new(Semaphore::new(proxy::MAX_CONNECTIONS)),
            handshakes: Arc::default(),
            hard_stop: hard_rx,
        });
        if !inbound.is_empty() {
            let verifier = verify::inbound_verifier(bundle.clone(), allow, revoked.clone());
            let tls = Arc::new(verify::server_config(Arc::clone(&resolver), verifier)?);
            for (listener, spec) in inbound.into_iter().zip(&config.inbound) {
                tasks.spawn(proxy::serve_inbound(
                    listener,
                    spec.target.clone(),
                    Arc::clone(&tls),
                    Arc::clone(&shared),
                    stop_rx.clone(),
                ));
            }
        }
        for (listener, spec) in outbound.into_iter().zip(&config.outbound) {
            let verifier =
                verify::outbound_verifier(bundle.clone(), spec.expect.clone(), revoked.clone());
            let connector = tokio_rustls::TlsConnector::from(Arc::new(verify::client_config(
                Arc::clone(&resolver),
                verifier,
            )?));
            tasks.spawn(proxy::serve_outbound(
                listener,
                spec.target.clone(),
                connector,
                Arc::clone(&shared),
                stop_rx.clone(),
            ));
        }
        tracing::info!(id = %first.id, inbound = config.inbound.len(), outbound = config.outbound.len(), "mesh sidecar serving");
        ready(&first.id);

        shutdown.await;
        let _ = stop_tx.send(true);
        tracing::info!(live = tracker.live(), drain = ?config.drain_timeout, "shutting down: listeners closed, draining");
        if tokio::time::timeout(config.drain_timeout, tracker.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                live = tracker.live(),
                "drain timeout passed; closing live connections"
            );
            let _ = hard_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait_idle()).await;
        }
        tasks.abort_all();
        Ok(())
    }
}

/// Serves `config` until `shutdown` completes: [`Sidecar::bind`] then [`Sidecar::run`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), MeshError> {
    Sidecar::bind(config).await?.run(shutdown).await
}

/// Hands every new bundle to the verifiers.
async fn follow_bundle(
    mut current: identity::Current,
    bundle: BundleSource,
    metrics: Arc<Metrics>,
) {
    // `current` has seen the value the caller applied: `changed` wakes for newer ones only.
    while current.changed().await.is_ok() {
        let next = current.borrow_and_update().clone();
        if let Some(identity) = next {
            bundle.replace(identity.bundle.clone());
            metrics.svid_updated();
        }
    }
}

#[derive(Debug)]
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, getrlimit};
        let before = getrlimit(Resource::Nofile);
        let now = super::raise_fd_limit();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.maximum, before.maximum, "the hard limit is untouched");
        assert_eq!(now, after.current);
        if before.maximum.is_some() {
            assert_eq!(
                after.current, after.maximum,
                "soft limit raised to the hard one"
            );
        }
    }
}
