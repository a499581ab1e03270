//! An impostor authority: it answers `GetBundle` with a bundle of its choosing, presents an
//! authority SVID of its own CA, and counts the join-token redemptions that reach it (a joiner
//! must never send one: the token's pin does not match, or the impostor cannot prove an SVID
//! under the real bundle).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ringzero_policy::svid::SigningCa;
use ringzero_policy::testing::{bundle_source, svid};
use ringzero_policy::tls::{PeerMatch, SpiffeClientVerifier};
use ringzero_proto::pb;
use rustls_pki_types::CertificateDer;

use crate::cluster::TD;

struct Impostor {
    bundle: pb::Bundle,
    redemptions: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl pb::authority_server::Authority for Impostor {
    async fn get_bundle(
        &self,
        _: tonic::Request<pb::GetBundleRequest>,
    ) -> Result<tonic::Response<pb::Bundle>, tonic::Status> {
        Ok(tonic::Response::new(self.bundle.clone()))
    }
    async fn redeem_join_token(
        &self,
        _: tonic::Request<pb::RedeemJoinTokenRequest>,
    ) -> Result<tonic::Response<pb::RedeemJoinTokenReply>, tonic::Status> {
        self.redemptions.fetch_add(1, Ordering::SeqCst);
        Err(tonic::Status::unavailable("impostor"))
    }
    async fn status(
        &self,
        _: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("impostor"))
    }
    async fn members(
        &self,
        _: tonic::Request<pb::MembersRequest>,
    ) -> Result<tonic::Response<pb::MembersReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("impostor"))
    }
    async fn create_join_token(
        &self,
        _: tonic::Request<pb::CreateJoinTokenRequest>,
    ) -> Result<tonic::Response<pb::CreateJoinTokenReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("impostor"))
    }
    async fn join_cluster(
        &self,
        _: tonic::Request<pb::JoinClusterRequest>,
    ) -> Result<tonic::Response<pb::JoinClusterReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("impostor"))
    }
    async fn remove_member(
        &self,
        _: tonic::Request<pb::RemoveMemberRequest>,
    ) -> Result<tonic::Response<pb::RemoveMemberReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("impostor"))
    }
}

/// Starts an impostor on `rt`, on a free port, serving `bundle_cas` as its bundle and
/// presenting an SVID for `authority/1` from `rogue` (a CA of the trust domain [`TD`]);
/// returns its address and redemption counter.
pub fn start_impostor(
    rt: &tokio::runtime::Runtime,
    rogue: &SigningCa,
    bundle_cas: Vec<CertificateDer<'static>>,
) -> (String, Arc<AtomicUsize>) {
    let tls = svid(rogue, &format!("spiffe://{TD}/ringzero/authority/1")).server_config(
        SpiffeClientVerifier::optional(bundle_source(rogue), PeerMatch::AnyInTrustDomain),
    );
    let redemptions = Arc::new(AtomicUsize::new(0));
    let service = Impostor {
        bundle: pb::Bundle {
            trust_domain: TD.into(),
            keys: bundle_cas
                .into_iter()
                .enumerate()
                .map(|(i, c)| pb::BundleKey {
                    key_id: i as u64 + 1,
                    authority: 1,
                    kind: "x509-ca".into(),
                    public_key: c.to_vec(),
                    status: "active".into(),
                    not_after_ms: 0,
                })
                .collect(),
            members: vec![],
        },
        redemptions: redemptions.clone(),
    };
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = ringzero_proto::transport::incoming(listener, tls, Default::default());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::authority_server::AuthorityServer::new(service))
                .serve_with_incoming(incoming),
        );
        addr
    });
    (addr, redemptions)
}
