//! Roles and delegation: `ApplyRoles`, `ListRoles`, `MintToken`, `RevokeToken`.

use ringzero_proto::pb;

use super::AuthorityService;

impl AuthorityService {
    pub(crate) async fn apply_roles_impl(
        &self,
        _req: tonic::Request<pb::ApplyRolesRequest>,
    ) -> Result<tonic::Response<pb::ApplyRolesReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("ApplyRoles"))
    }

    pub(crate) async fn list_roles_impl(
        &self,
        _req: tonic::Request<pb::ListRolesRequest>,
    ) -> Result<tonic::Response<pb::ListRolesReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("ListRoles"))
    }

    pub(crate) async fn mint_token_impl(
        &self,
        _req: tonic::Request<pb::MintTokenRequest>,
    ) -> Result<tonic::Response<pb::MintTokenReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("MintToken"))
    }

    pub(crate) async fn revoke_token_impl(
        &self,
        _req: tonic::Request<pb::RevokeTokenRequest>,
    ) -> Result<tonic::Response<pb::RevokeTokenReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("RevokeToken"))
    }
}
