//! `authgate.v1.CredentialService`: credential management and the start of the
//! authorization-code flow, for admin callers.

use super::convert::{
    decode_page_token, encode_page_token, map_to_struct, status_to_pb, struct_to_json, timestamp,
    CREDENTIALS_PAGE_PREFIX,
};
use super::token_service::parse_scopes;
use crate::config::validate_id;
use crate::credentials::{CredentialManager, CredentialView, Started};
use crate::proto::v1 as pb;
use tonic::{Request, Response, Status};

// The integration tests build `Struct` settings through this path.
pub use super::convert::json_to_prost;

pub struct GrpcCredentialService {
    manager: CredentialManager,
}

impl GrpcCredentialService {
    pub fn new(manager: CredentialManager) -> Self {
        Self { manager }
    }
}

fn view_to_pb(v: CredentialView) -> pb::Credential {
    let r = v.record;
    pb::Credential {
        tenant: r.tenant,
        credential_id: r.id,
        provider: r.provider,
        status: status_to_pb(r.status) as i32,
        created_at: Some(timestamp(r.created_at_ms)),
        updated_at: Some(timestamp(r.updated_at_ms)),
        last_error: r.last_error.unwrap_or_default(),
        settings: Some(map_to_struct(v.settings)),
        secret_fields_set: v.secret_fields_set,
        source: r.source.as_str().to_owned(),
        has_refresh_token: v.has_refresh_token,
        tokens: v
            .tokens
            .into_iter()
            .map(|(scopes, exp, iss)| pb::TokenInfo {
                scopes,
                expires_at: Some(timestamp(exp)),
                issued_at: Some(timestamp(iss)),
            })
            .collect(),
        capabilities: v.capabilities.into_iter().map(str::to_owned).collect(),
    }
}

fn started_to_pb(started: Started) -> pb::StartAuthorizationResponse {
    match started {
        Started::Browser {
            url,
            state,
            expires_at_ms,
            redirect_uri,
        } => pb::StartAuthorizationResponse {
            authorization_url: url.to_string(),
            state,
            expires_at: Some(timestamp(expires_at_ms)),
            redirect_uri: redirect_uri.to_string(),
            ..Default::default()
        },
        Started::Device(d) => pb::StartAuthorizationResponse {
            // Where a client that knows only the browser flow sends the user.
            authorization_url: d
                .verification_uri_complete
                .as_ref()
                .unwrap_or(&d.verification_uri)
                .to_string(),
            expires_at: Some(timestamp(d.expires_at_ms)),
            user_code: d.user_code,
            verification_uri: d.verification_uri.to_string(),
            verification_uri_complete: d
                .verification_uri_complete
                .map(|u| u.to_string())
                .unwrap_or_default(),
            interval_seconds: u32::try_from(d.interval.as_secs()).unwrap_or(u32::MAX),
            ..Default::default()
        },
    }
}

/// The ListCredentials cursor: the id of the last credential on the previous page.
fn after_id(page_token: &str) -> Result<String, Status> {
    decode_page_token(CREDENTIALS_PAGE_PREFIX, page_token)
        .ok()
        .filter(|id| validate_id("credential_id", id).is_ok())
        .ok_or_else(|| {
            Status::invalid_argument(
                "page_token: not a token this server issued; pass next_page_token from a previous response",
            )
        })
}

#[tonic::async_trait]
impl pb::credential_service_server::CredentialService for GrpcCredentialService {
    async fn put_credential(
        &self,
        request: Request<pb::PutCredentialRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let r = request.into_inner();
        super::record_credential(&r.credential_id);
        let settings = r.settings.as_ref().map(struct_to_json).ok_or_else(|| {
            Status::invalid_argument(
                "settings: give the provider's settings (e.g. client_id, client_secret, token_url)",
            )
        })?;
        let view = self
            .manager
            .put(&r.tenant, &r.credential_id, &r.provider, settings);
        let view = view.await?;
        Ok(Response::new(view_to_pb(view)))
    }

    async fn get_credential(
        &self,
        request: Request<pb::GetCredentialRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let r = request.into_inner();
        super::record_credential(&r.credential_id);
        Ok(Response::new(view_to_pb(
            self.manager.get(&r.tenant, &r.credential_id).await?,
        )))
    }

    async fn list_credentials(
        &self,
        request: Request<pb::ListCredentialsRequest>,
    ) -> Result<Response<pb::ListCredentialsResponse>, Status> {
        let r = request.into_inner();
        let limit = super::page_size(r.page_size) as usize;
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(after_id(&r.page_token)?)
        };
        let (views, more) = self
            .manager
            .list(&r.tenant, after.as_deref(), limit)
            .await?;
        let next_page_token = match (more, views.last()) {
            (true, Some(last)) => encode_page_token(CREDENTIALS_PAGE_PREFIX, &last.record.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListCredentialsResponse {
            credentials: views.into_iter().map(view_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn delete_credential(
        &self,
        request: Request<pb::DeleteCredentialRequest>,
    ) -> Result<Response<pb::DeleteCredentialResponse>, Status> {
        let r = request.into_inner();
        super::record_credential(&r.credential_id);
        let deleted = self
            .manager
            .delete(&r.tenant, &r.credential_id, r.revoke_upstream);
        let (deleted, upstream_revoked) = deleted.await?;
        Ok(Response::new(pb::DeleteCredentialResponse {
            deleted,
            upstream_revoked,
        }))
    }

    async fn start_authorization(
        &self,
        request: Request<pb::StartAuthorizationRequest>,
    ) -> Result<Response<pb::StartAuthorizationResponse>, Status> {
        let r = request.into_inner();
        super::record_credential(&r.credential_id);
        let scopes = parse_scopes(&r.scopes)?;
        let started = self
            .manager
            .start_authorization(&r.tenant, &r.credential_id, scopes);
        Ok(Response::new(started_to_pb(
            started.await.map_err(Status::from)?,
        )))
    }
}
