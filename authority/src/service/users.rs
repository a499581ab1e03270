//! Users: `AddUser`, `InviteUser`, `Login`, `ListUsers`, `RemoveUser`.

use ringzero_proto::pb;

use super::AuthorityService;

impl AuthorityService {
    pub(crate) async fn add_user_impl(
        &self,
        _req: tonic::Request<pb::AddUserRequest>,
    ) -> Result<tonic::Response<pb::UserCredentials>, tonic::Status> {
        Err(tonic::Status::unimplemented("AddUser"))
    }

    pub(crate) async fn invite_user_impl(
        &self,
        _req: tonic::Request<pb::InviteUserRequest>,
    ) -> Result<tonic::Response<pb::InviteReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("InviteUser"))
    }

    pub(crate) async fn login_impl(
        &self,
        _req: tonic::Request<pb::LoginRequest>,
    ) -> Result<tonic::Response<pb::UserCredentials>, tonic::Status> {
        Err(tonic::Status::unimplemented("Login"))
    }

    pub(crate) async fn list_users_impl(
        &self,
        _req: tonic::Request<pb::ListUsersRequest>,
    ) -> Result<tonic::Response<pb::ListUsersReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("ListUsers"))
    }

    pub(crate) async fn remove_user_impl(
        &self,
        _req: tonic::Request<pb::RemoveUserRequest>,
    ) -> Result<tonic::Response<pb::RemoveUserReply>, tonic::Status> {
        Err(tonic::Status::unimplemented("RemoveUser"))
    }
}
