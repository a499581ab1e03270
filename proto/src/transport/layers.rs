//! Tower layers that refuse a call from what its connection's [`PeerInfo`] says, before any
//! handler runs and before the request body is read. For `Server::layer` of a tonic server fed
//! by [`incoming`](super::incoming), whose connections put a [`PeerInfo`] in every request.
//!
//! - [`RefuseExpiredLayer`]: a client certificate past its `not_after` authenticates nothing,
//!   even on a connection opened while it was valid.
//! - [`AnonymousAllowListLayer`]: a client without a certificate may call only the listed
//!   gRPC methods (the first-contact ones).
//! - [`MembersOnlyLayer`]: methods under the given prefixes are for authority members only
//!   (the Raft service): nobody else gets to send them a body to decode.
//!
//! A refusal is a gRPC `Unauthenticated` (or `PermissionDenied`) answer in the response
//! headers; the request body is dropped unread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use http::{Request, Response};
use tower::{Layer, Service};

use super::{ConnectionClass, PeerInfo};

/// The message of a call refused because the client certificate has expired.
pub const EXPIRED_MESSAGE: &str = "client certificate expired";
/// The message of an anonymous call to a method that needs a client certificate.
pub const ANONYMOUS_MESSAGE: &str =
    "this call needs a client certificate (only first-contact calls are open without one)";
/// The message of a call by a non-member to a members-only method.
pub const MEMBERS_ONLY_MESSAGE: &str =
    "the caller is not an authority node: only authority members may call this method";

pin_project_lite::pin_project! {
    /// The response future of the layers here: the inner service's, or a refusal.
    #[project = RefusalProj]
    #[derive(Debug)]
    pub enum RefusalFuture<F, B> {
        /// Passed to the inner service.
        Inner { #[pin] inner: F },
        /// Refused: answered at once.
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for RefusalFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RefusalProj::Inner { inner } => inner.poll(cx),
            RefusalProj::Refused { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                // Polled again after completion: answer with an empty refusal rather than
                // panicking (futures may not be polled after Ready, but never panic on it).
                None => Poll::Ready(Ok(
                    tonic::Status::internal("polled after completion").into_http()
                )),
            },
        }
    }
}

/// Answers `status` if `refusal` says so, else calls `inner`.
fn gate<S, ReqBody, ResBody>(
    inner: &mut S,
    req: Request<ReqBody>,
    refusal: impl FnOnce(&PeerInfo, &str) -> Option<tonic::Status>,
) -> RefusalFuture<S::Future, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    let refused = match req.extensions().get::<PeerInfo>() {
        Some(peer) => refusal(peer, req.uri().path()),
        // No connection info: not a server fed by `incoming`; nothing to decide on. The
        // handlers' own checks (which see an empty peer) still apply.
        None => None,
    };
    match refused {
        Some(status) => RefusalFuture::Refused {
            response: Some(status.into_http()),
        },
        None => RefusalFuture::Inner {
            inner: inner.call(req),
        },
    }
}

/// The method paths (or prefixes) a layer is configured with.
fn strings(paths: impl IntoIterator<Item = impl Into<String>>) -> Arc<[String]> {
    paths.into_iter().map(Into::into).collect()
}

macro_rules! refusal_service {
    ($layer:ident, $service:ident, $decide:expr) => {
        impl<S> Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> Self::Service {
                $service {
                    inner,
                    layer: self.clone(),
                }
            }
        }

        /// The service of the layer of the same name.
        #[derive(Debug, Clone)]
        pub struct $service<S> {
            inner: S,
            layer: $layer,
        }

        impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for $service<S>
        where
            S: Service<Request<ReqBody>, Response = Response<ResBody>>,
            ResBody: Default,
        {
            type Response = Response<ResBody>;
            type Error = S::Error;
            type Future = RefusalFuture<S::Future, ResBody>;

            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                self.inner.poll_ready(cx)
            }

            fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
                let layer = &self.layer;
                gate(&mut self.inner, req, |peer, path| {
                    $decide(layer, peer, path)
                })
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------

/// Refuses every call whose client certificate has expired (`PeerInfo::not_after` in the
/// past) with `Unauthenticated` ([`EXPIRED_MESSAGE`]).
///
/// [`incoming`](super::incoming) already cuts a connection when its certificate expires; this
/// layer holds even when that deadline fires late (the wall clock stepped forward, a loaded
/// runtime) or the server is fed otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseExpiredLayer;

impl RefuseExpiredLayer {
    fn decide(&self, peer: &PeerInfo, _path: &str) -> Option<tonic::Status> {
        let expired = peer.not_after.is_some_and(|t| t < SystemTime::now());
        expired.then(|| tonic::Status::unauthenticated(EXPIRED_MESSAGE))
    }
}

refusal_service!(
    RefuseExpiredLayer,
    RefuseExpired,
    RefuseExpiredLayer::decide
);

// ---------------------------------------------------------------------------------------------

/// Lets a client without a certificate call only the listed gRPC methods (full paths,
/// `/package.Service/Method`); any other anonymous call is refused with `Unauthenticated`
/// ([`ANONYMOUS_MESSAGE`]) before its handler runs and before its body is read.
#[derive(Debug, Clone)]
pub struct AnonymousAllowListLayer {
    allowed: Arc<[String]>,
}

impl AnonymousAllowListLayer {
    /// Allows anonymous calls to exactly `paths`.
    pub fn new(paths: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            allowed: strings(paths),
        }
    }

    /// Whether an anonymous call to `path` is allowed.
    pub fn allows(&self, path: &str) -> bool {
        self.allowed.iter().any(|p| p == path)
    }

    fn decide(&self, peer: &PeerInfo, path: &str) -> Option<tonic::Status> {
        (peer.spiffe_id.is_none() && !self.allows(path))
            .then(|| tonic::Status::unauthenticated(ANONYMOUS_MESSAGE))
    }
}

refusal_service!(
    AnonymousAllowListLayer,
    AnonymousAllowList,
    AnonymousAllowListLayer::decide
);

// ---------------------------------------------------------------------------------------------

/// Reserves the methods under the given path prefixes (such as `/ringzero.v1.Raft/`) to
/// authority members ([`ConnectionClass::Member`]): anyone else is refused before the body is
/// read, `Unauthenticated` without a certificate, `PermissionDenied` with one
/// ([`MEMBERS_ONLY_MESSAGE`]). The handler still decides whether the member is a current one.
#[derive(Debug, Clone)]
pub struct MembersOnlyLayer {
    prefixes: Arc<[String]>,
}

impl MembersOnlyLayer {
    /// Reserves every method whose path starts with one of `prefixes`.
    pub fn new(prefixes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            prefixes: strings(prefixes),
        }
    }

    fn decide(&self, peer: &PeerInfo, path: &str) -> Option<tonic::Status> {
        if !self.prefixes.iter().any(|p| path.starts_with(p.as_str())) {
            return None;
        }
        match ConnectionClass::of(peer) {
            ConnectionClass::Member(_) => None,
            ConnectionClass::Anonymous => {
                Some(tonic::Status::unauthenticated(MEMBERS_ONLY_MESSAGE))
            }
            ConnectionClass::Authenticated => {
                Some(tonic::Status::permission_denied(MEMBERS_ONLY_MESSAGE))
            }
        }
    }
}

refusal_service!(MembersOnlyLayer, MembersOnly, MembersOnlyLayer::decide);
