//! `authgate.v1.TokenService`: GetToken, Revoke, ListEvents, ExchangeToken (its edge in
//! [`super::exchange`]), WatchEvents (its streams in [`super::watch`]).

use super::convert::{self, kind_from_pb, kind_to_pb, millis, timestamp, EVENTS_PAGE_PREFIX};
use super::watch::{WatchStream, Watchers};
use super::{caller_deadline, MAX_SCOPES, MAX_SCOPE_LEN};
use crate::api::auth::AllowedScopes;
use crate::broker::{BrokerError, CachedToken, TokenBroker, TokenRequest};
use crate::config::validate_id;
use crate::events::HttpExchange;
use crate::proto::v1 as pb;
use crate::store::{EventQuery, EventRecord, Store};
use authgate_plugin_sdk::ScopeSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Longest `min_ttl_seconds` accepted: one day.
const MAX_MIN_TTL_SECONDS: u32 = 86_400;

pub struct GrpcTokenService {
    broker: TokenBroker,
    store: Arc<dyn Store>,
    watchers: Watchers,
}

impl GrpcTokenService {
    pub fn new(broker: TokenBroker, store: Arc<dyn Store>, watchers: Watchers) -> Self {
        Self {
            broker,
            store,
            watchers,
        }
    }
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

fn check_ids(tenant: &str, credential_id: &str) -> Result<(), Status> {
    validate_id("tenant", tenant).map_err(|m| invalid("tenant", m))?;
    validate_id("credential_id", credential_id).map_err(|m| invalid("credential_id", m))
}

/// Scopes as RFC 6749 §3.3 allows them, bounded in number and length.
pub fn parse_scopes(scopes: &[String]) -> Result<ScopeSet, Status> {
    let set = ScopeSet::new(scopes);
    if set.len() > MAX_SCOPES {
        return Err(invalid(
            "scopes",
            format!(
                "{} scopes requested; at most {MAX_SCOPES} are allowed",
                set.len()
            ),
        ));
    }
    for s in set.iter() {
        if s.len() > MAX_SCOPE_LEN {
            return Err(invalid(
                "scopes",
                format!(
                    "a scope is {} characters long; at most {MAX_SCOPE_LEN} are allowed",
                    s.len()
                ),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|&c| !matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e'))
        {
            return Err(invalid(
                "scopes",
                format!("scope contains {c:?}; RFC 6749 scopes are printable ASCII without quotes or backslashes"),
            ));
        }
    }
    Ok(set)
}

fn token_response(tok: &CachedToken, requested: &ScopeSet) -> pb::GetTokenResponse {
    pb::GetTokenResponse {
        access_token: tok.access_token.expose().to_owned(),
        token_type: tok.token_type().to_owned(),
        expires_at: Some(timestamp(tok.expires_at_ms)),
        scopes: tok.scopes(requested),
        metadata: tok
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub fn event_to_pb(e: EventRecord) -> pb::Event {
    let http = e
        .http
        .as_deref()
        .and_then(|j| serde_json::from_str::<HttpExchange>(j).ok())
        .map(|h| pb::HttpExchange {
            step: h.step,
            method: h.method,
            url: h.url,
            status: u32::from(h.status.unwrap_or(0)),
            latency_ms: h.latency_ms.min(u64::from(u32::MAX)) as u32,
            request_headers: h.request_headers.into_iter().collect(),
            request_body: h.request_body,
            response_headers: h.response_headers.into_iter().collect(),
            response_body: h.response_body,
            error: h.error.unwrap_or_default(),
        });
    pb::Event {
        id: e.id.to_string(),
        tenant: e.tenant,
        credential_id: e.credential_id,
        kind: kind_to_pb(&e.kind) as i32,
        occurred_at: Some(timestamp(e.occurred_at_ms)),
        message: e.message,
        caller: e.caller.unwrap_or_default(),
        http,
    }
}

/// The ListEvents cursor: the (time, id) of the last event on the page.
pub fn encode_page_token(at: i64, id: i64) -> String {
    convert::encode_page_token(EVENTS_PAGE_PREFIX, &format!("{at}:{id}"))
}

pub fn decode_page_token(token: &str) -> Result<(i64, i64), Status> {
    let cursor = || {
        let payload = convert::decode_page_token(EVENTS_PAGE_PREFIX, token).ok()?;
        let (at, id) = payload.split_once(':')?;
        Some((at.parse().ok()?, id.parse().ok()?))
    };
    cursor().ok_or_else(|| {
        invalid(
            "page_token",
            "not a token this server issued; pass the next_page_token of a previous ListEvents response, or leave it empty for the first page",
        )
    })
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for GrpcTokenService {
    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>, Status> {
        let deadline = caller_deadline(&request);
        let allowed = request.extensions().get::<AllowedScopes>().cloned();
        let r = request.into_inner();
        check_ids(&r.tenant, &r.credential_id)?;
        let scopes = parse_scopes(&r.scopes)?;
        if let Some(scope) = allowed.as_ref().and_then(|a| a.refused(scopes.iter())) {
            return Err(Status::permission_denied(format!(
                "scope {scope:?} is not in this caller's allowed_scopes ([[callers]] in the config)"
            )));
        }
        if r.min_ttl_seconds > MAX_MIN_TTL_SECONDS {
            return Err(invalid(
                "min_ttl_seconds",
                format!(
                    "{} is more than the maximum of {MAX_MIN_TTL_SECONDS}",
                    r.min_ttl_seconds
                ),
            ));
        }
        let req = TokenRequest {
            tenant: r.tenant,
            credential_id: r.credential_id,
            scopes,
            min_ttl: Duration::from_secs(u64::from(r.min_ttl_seconds)),
            force_refresh: r.force_refresh,
        };
        super::record_credential(&req.credential_id);
        let tok = self.broker.get_token(&req, deadline).await?;
        Ok(Response::new(token_response(&tok, &req.scopes)))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let r = request.into_inner();
        check_ids(&r.tenant, &r.credential_id)?;
        let scopes = if r.scopes.is_empty() {
            None
        } else {
            Some(parse_scopes(&r.scopes)?)
        };
        super::record_credential(&r.credential_id);
        let (dropped, upstream_revoked) = self
            .broker
            .revoke(&r.tenant, &r.credential_id, scopes.as_ref(), r.upstream)
            .await?;
        Ok(Response::new(pb::RevokeResponse {
            dropped,
            upstream_revoked,
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let r = request.into_inner();
        validate_id("tenant", &r.tenant).map_err(|m| invalid("tenant", m))?;
        let credential_id = if r.credential_id.is_empty() {
            None
        } else {
            validate_id("credential_id", &r.credential_id)
                .map_err(|m| invalid("credential_id", m))?;
            Some(r.credential_id)
        };
        let mut kinds = Vec::with_capacity(r.kinds.len());
        for k in &r.kinds {
            let kind = pb::EventKind::try_from(*k)
                .map_err(|_| invalid("kinds", format!("{k} is not an EventKind value")))?;
            if let Some(kind) = kind_from_pb(kind) {
                kinds.push(kind.as_str().to_owned());
            }
        }
        let since_ms = r.since.as_ref().map(millis);
        let until_ms = r.until.as_ref().map(millis);
        if let (Some(s), Some(u)) = (since_ms, until_ms) {
            if s > u {
                return Err(invalid("since", "is after `until`; swap them"));
            }
        }
        let limit = super::page_size(r.page_size);
        let before = if r.page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(&r.page_token)?)
        };
        let mut records = self
            .store
            .list_events(&EventQuery {
                tenant: r.tenant,
                credential_id,
                since_ms,
                until_ms,
                kinds,
                limit: limit + 1,
                before,
            })
            .await
            .map_err(BrokerError::from)?;
        let next_page_token = if records.len() > limit as usize {
            records.truncate(limit as usize);
            records
                .last()
                .map(|e| encode_page_token(e.occurred_at_ms, e.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListEventsResponse {
            events: records.into_iter().map(event_to_pb).collect(),
            next_page_token,
        }))
    }

    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        Ok(Response::new(self.watchers.watch(request).await?))
    }

    async fn exchange_token(
        &self,
        request: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::ExchangeTokenResponse>, Status> {
        let deadline = caller_deadline(&request);
        let allowed = request.extensions().get::<AllowedScopes>().cloned();
        let req = super::exchange::exchange_request(request.into_inner(), allowed.as_ref())?;
        super::record_credential(&req.credential_id);
        let tok = self.broker.exchange_token(req, deadline).await?;
        Ok(Response::new(super::exchange::exchange_response(&tok)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn page_token_round_trip_and_garbage() {
        let t = encode_page_token(1_700_000_000_123, 42);
        assert_eq!(decode_page_token(&t).unwrap(), (1_700_000_000_123, 42));
        for bad in [
            "",
            "!!!",
            "ZXYx",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("ev1:x:1"),
        ] {
            assert_eq!(
                decode_page_token(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }

    #[test]
    fn scopes_are_bounded_and_checked() {
        assert!(parse_scopes(&["a b".into(), "c".into()]).is_ok());
        let many: Vec<String> = (0..10_000).map(|i| format!("s{i}")).collect();
        assert_eq!(
            parse_scopes(&many).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(parse_scopes(&["x\"y".into()]).is_err());
        assert!(parse_scopes(&["a".repeat(300)]).is_err());
    }
}
