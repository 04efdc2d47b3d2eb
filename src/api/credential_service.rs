//! `authgate.v1.CredentialService`: credential management and the start of the
//! authorization-code flow, for admin callers.

use super::caller_of;
use super::token_service::{parse_scopes, timestamp};
use crate::config::validate_id;
use crate::context::with_caller;
use crate::credentials::{CredentialManager, CredentialView};
use crate::proto::v1 as pb;
use crate::store::CredentialStatus;
use base64::Engine;
use std::sync::Arc;
use tonic::{Request, Response, Status};

const PAGE_TOKEN_PREFIX: &str = "cr1:";

pub struct GrpcCredentialService {
    manager: CredentialManager,
}

impl GrpcCredentialService {
    pub fn new(manager: CredentialManager) -> Self {
        Self { manager }
    }
}

pub fn status_to_pb(s: CredentialStatus) -> pb::CredentialStatus {
    match s {
        CredentialStatus::Active => pb::CredentialStatus::Active,
        CredentialStatus::NeedsAuthorization => pb::CredentialStatus::NeedsAuthorization,
        CredentialStatus::Invalid => pb::CredentialStatus::Invalid,
    }
}

/// JSON → protobuf `Struct` value.
pub fn json_to_prost(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_prost).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(prost_types::Struct {
            fields: m.into_iter().map(|(k, v)| (k, json_to_prost(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// protobuf `Value` → JSON.
pub fn prost_to_json(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(l)) => l.values.into_iter().map(prost_to_json).collect(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

pub fn struct_to_json(s: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, prost_to_json(v)))
            .collect(),
    )
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
        settings: Some(prost_types::Struct {
            fields: v
                .settings
                .into_iter()
                .map(|(k, val)| (k, json_to_prost(val)))
                .collect(),
        }),
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

#[tonic::async_trait]
impl pb::credential_service_server::CredentialService for GrpcCredentialService {
    async fn put_credential(
        &self,
        request: Request<pb::PutCredentialRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let settings = r.settings.map(struct_to_json).ok_or_else(|| {
            Status::invalid_argument(
                "settings: give the provider's settings (e.g. client_id, client_secret, token_url)",
            )
        })?;
        let view = self
            .manager
            .put(&r.tenant, &r.credential_id, &r.provider, settings);
        let view = with_caller(caller.map(Arc::from), view).await?;
        Ok(Response::new(view_to_pb(view)))
    }

    async fn get_credential(
        &self,
        request: Request<pb::GetCredentialRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let r = request.into_inner();
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
            let bad = || {
                Status::invalid_argument(
                    "page_token: not a token this server issued; pass next_page_token from a previous response",
                )
            };
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&r.page_token)
                .map_err(|_| bad())?;
            let text = String::from_utf8(raw).map_err(|_| bad())?;
            let id = text
                .strip_prefix(PAGE_TOKEN_PREFIX)
                .ok_or_else(bad)?
                .to_owned();
            validate_id("credential_id", &id).map_err(|_| bad())?;
            Some(id)
        };
        let (views, more) = self
            .manager
            .list(&r.tenant, after.as_deref(), limit)
            .await?;
        let next_page_token = match (more, views.last()) {
            (true, Some(last)) => base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!("{PAGE_TOKEN_PREFIX}{}", last.record.id)),
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
        let caller = caller_of(&request);
        let r = request.into_inner();
        let deleted = self
            .manager
            .delete(&r.tenant, &r.credential_id, r.revoke_upstream);
        let (deleted, upstream_revoked) = with_caller(caller.map(Arc::from), deleted).await?;
        Ok(Response::new(pb::DeleteCredentialResponse {
            deleted,
            upstream_revoked,
        }))
    }

    async fn start_authorization(
        &self,
        request: Request<pb::StartAuthorizationRequest>,
    ) -> Result<Response<pb::StartAuthorizationResponse>, Status> {
        let caller = caller_of(&request);
        let r = request.into_inner();
        let scopes = parse_scopes(&r.scopes)?;
        let started = self
            .manager
            .start_authorization(&r.tenant, &r.credential_id, scopes);
        let (url, state, expires_at_ms, redirect_uri) = with_caller(caller.map(Arc::from), started)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::StartAuthorizationResponse {
            authorization_url: url.to_string(),
            state,
            expires_at: Some(timestamp(expires_at_ms)),
            redirect_uri: redirect_uri.to_string(),
        }))
    }
}
