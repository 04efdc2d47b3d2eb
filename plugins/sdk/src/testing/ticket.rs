//! The example plugin's flow, in process: `provider = "example_ticket"`, the twin of the
//! out-of-process example plugin (both follow the same wire format to the letter), with a
//! wiremock fake of its provider ([`TicketFake`], [`TicketWire`]) and the contract subject
//! that pairs them ([`TicketSubject`]).
//!
//! The wire format:
//!
//! - **session** (no refresh token yet): `POST {base_url}/session` with JSON
//!   `{"api_key": .., "api_secret": ..}`, answered `{"ticket": .., "expires_in": 60}`. The
//!   ticket is a secret.
//! - **token**: `POST {base_url}/token`, form `grant_type=ticket`, `ticket`, and `scope`
//!   (space-joined: the requested scopes, else `default_scopes`) only when there are any;
//!   answered with an RFC 6749 token response.
//! - **refresh**: `POST {base_url}/token`, form `grant_type=refresh_token`, `refresh_token`,
//!   `scope` as above, HTTP Basic `api_key:api_secret`; the answer rotates the refresh token.
//! - **revoke**: `POST {base_url}/revoke`, form `token`, `token_type_hint`, HTTP Basic.
//!
//! Any non-2xx answer is classified as RFC 6749 §5.2 has it ([`check_status`]); a 4xx whose
//! body is no OAuth error is refused as `http_<status>`.

use crate::error::{ProviderError, RejectKind};
use crate::http::{UpstreamCall, UpstreamRequest, UpstreamResponse};
use crate::oauth::{
    check_status, parse_json_object, parse_token_response, refresh_token_form, revocation_form,
};
use crate::settings::{
    base_url_setting, decode_and_validate, effective_scopes, endpoint, required_secret,
};
use crate::{
    Capabilities, FetchRequest, IssuedToken, Provider, ScopeSet, Secret, SettingsError,
    TokenTypeHint,
};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use url::Url;

mod fake;
mod subject;

pub use fake::{TicketEndpoint, TicketFake, TicketWire};
pub use subject::{BuildProvider, TicketSubject};

/// The plugin kind.
pub const KIND: &str = "example_ticket";
/// The settings fields holding secrets.
pub const SECRET_FIELDS: &[&str] = &["api_secret"];

/// Step names as recorded in upstream events.
pub const STEP_SESSION: &str = "session";
pub const STEP_TOKEN: &str = "token";
pub const STEP_REFRESH: &str = "refresh";
pub const STEP_REVOKE: &str = "revoke";

/// The lifetime of a token whose answer states none (and that is no JWT with `exp`).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    base_url: String,
    api_key: String,
    api_secret: Option<Secret>,
    #[serde(default)]
    default_scopes: Vec<String>,
}

/// The validated settings of one `example_ticket` credential.
#[derive(Clone)]
pub struct TicketSettings {
    pub base_url: Url,
    pub api_key: String,
    pub api_secret: Secret,
    pub default_scopes: Vec<String>,
}

impl TicketSettings {
    /// Decodes and validates settings; errors start with `example_ticket settings: ` and
    /// name the field.
    pub fn from_value(settings: Value) -> Result<Self, SettingsError> {
        decode_and_validate(KIND, settings, Self::validate)
    }

    fn validate(raw: RawSettings) -> Result<Self, SettingsError> {
        let base_url = base_url_setting(
            "base_url",
            Some(raw.base_url.as_str()),
            "https://tickets.example.com/api",
        )?;
        if raw.api_key.trim().is_empty() {
            return Err(SettingsError("`api_key` must not be empty".into()));
        }
        if raw.api_key.contains(':') || raw.api_key.chars().any(char::is_control) {
            return Err(SettingsError(
                "`api_key` must not contain `:` or control characters: it is sent as the HTTP Basic user name"
                    .into(),
            ));
        }
        let api_secret = required_secret(
            "api_secret",
            raw.api_secret,
            "(the API secret issued with the key)",
        )?;
        if raw.default_scopes.iter().any(|s| s.trim().is_empty()) {
            return Err(SettingsError(
                "`default_scopes` must not contain empty entries".into(),
            ));
        }
        Ok(Self {
            base_url,
            api_key: raw.api_key,
            api_secret,
            default_scopes: ScopeSet::new(&raw.default_scopes).as_slice().to_vec(),
        })
    }
}

/// One `example_ticket` credential.
pub struct TicketProvider {
    settings: TicketSettings,
}

impl TicketProvider {
    pub fn new(settings: TicketSettings) -> Self {
        Self { settings }
    }

    /// Decodes and validates settings, then builds the provider.
    pub fn from_settings(settings: Value) -> Result<Self, SettingsError> {
        TicketSettings::from_value(settings).map(Self::new)
    }

    pub fn settings(&self) -> &TicketSettings {
        &self.settings
    }

    fn url(&self, segment: &str) -> Url {
        endpoint(&self.settings.base_url, &[segment])
    }

    /// `scope` for the requested scopes, else the defaults, when there are any.
    fn scope_param(&self, requested: &ScopeSet) -> Option<(String, String)> {
        let scopes = effective_scopes(requested, &self.settings.default_scopes);
        (!scopes.is_empty()).then(|| ("scope".to_owned(), scopes.join(" ")))
    }

    fn basic(&self, req: UpstreamRequest) -> UpstreamRequest {
        req.basic_auth(&self.settings.api_key, &self.settings.api_secret)
    }

    /// Step `session`: the short-lived ticket, learnt as a secret before its event is
    /// recorded.
    async fn session(&self, call: &UpstreamCall) -> Result<Secret, ProviderError> {
        let body = json!({
            "api_key": self.settings.api_key,
            "api_secret": self.settings.api_secret.expose(),
        });
        let req = UpstreamRequest::post_json(self.url("session"), body);
        let resp = call
            .send_with_secret_fields(STEP_SESSION, req, &["ticket"])
            .await?;
        check(STEP_SESSION, &resp, call)?;
        let obj = parse_json_object(STEP_SESSION, &resp)?;
        match obj.get("ticket") {
            Some(Value::String(t)) if !t.is_empty() => {
                let ticket = Secret::from(t.as_str());
                call.redactor().learn(&ticket);
                Ok(ticket)
            }
            _ => Err(ProviderError::transient(
                STEP_SESSION,
                format!("provider answered HTTP {} without a ticket", resp.status),
            )),
        }
    }

    /// Sends a token-endpoint request and parses the RFC 6749 answer.
    async fn token_request(
        &self,
        call: &UpstreamCall,
        step: &str,
        req: UpstreamRequest,
    ) -> Result<IssuedToken, ProviderError> {
        let resp = call.send(step, req).await?;
        check(step, &resp, call)?;
        let parsed = parse_token_response(step, &resp, call)?;
        Ok(IssuedToken::from_response(parsed, DEFAULT_LIFETIME))
    }

    /// Steps `session` then `token`.
    async fn primary_grant(
        &self,
        call: &UpstreamCall,
        scopes: &ScopeSet,
    ) -> Result<IssuedToken, ProviderError> {
        let ticket = self.session(call).await?;
        let mut form = vec![
            ("grant_type".to_owned(), "ticket".to_owned()),
            ("ticket".to_owned(), ticket.expose().to_owned()),
        ];
        form.extend(self.scope_param(scopes));
        let req = UpstreamRequest::post_form(self.url("token"), form);
        self.token_request(call, STEP_TOKEN, req).await
    }

    /// Step `refresh`.
    async fn refresh(
        &self,
        call: &UpstreamCall,
        refresh_token: &Secret,
        scopes: &ScopeSet,
    ) -> Result<IssuedToken, ProviderError> {
        call.redactor().learn(refresh_token);
        let mut form = refresh_token_form(refresh_token);
        form.extend(self.scope_param(scopes));
        let req = self.basic(UpstreamRequest::post_form(self.url("token"), form));
        self.token_request(call, STEP_REFRESH, req).await
    }
}

/// RFC 6749 classification of a non-2xx answer, where a 4xx that is no OAuth error (which
/// [`check_status`] calls transient) is a refused request, `http_<status>`.
pub fn check(
    step: &str,
    resp: &UpstreamResponse,
    call: &UpstreamCall,
) -> Result<(), ProviderError> {
    match check_status(step, resp, call) {
        Err(ProviderError::Transient { .. })
            if (400..500).contains(&resp.status) && !matches!(resp.status, 408 | 429) =>
        {
            Err(ProviderError::Rejected {
                kind: RejectKind::Request,
                step: step.to_owned(),
                code: format!("http_{}", resp.status),
                description: None,
            })
        }
        other => other,
    }
}

#[async_trait]
impl Provider for TicketProvider {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            revoke: true,
            refresh_token: true,
            ..Capabilities::default()
        }
    }

    fn default_scopes(&self) -> Vec<String> {
        self.settings.default_scopes.clone()
    }

    fn secrets(&self) -> Vec<Secret> {
        vec![self.settings.api_secret.clone()]
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
        match req.refresh_token {
            Some(rt) => self.refresh(req.call, rt, req.scopes).await,
            None => self.primary_grant(req.call, req.scopes).await,
        }
    }

    async fn revoke(
        &self,
        call: &UpstreamCall,
        token: &Secret,
        hint: TokenTypeHint,
    ) -> Result<(), ProviderError> {
        call.redactor().learn(token);
        let form = revocation_form(token, Some(hint.as_str()));
        let req = self.basic(UpstreamRequest::post_form(self.url("revoke"), form));
        let resp = call.send(STEP_REVOKE, req).await?;
        check(STEP_REVOKE, &resp, call)
    }
}

impl std::fmt::Debug for TicketProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketProvider")
            .field("base_url", &self.settings.base_url.as_str())
            .field("api_key", &self.settings.api_key)
            .field("default_scopes", &self.settings.default_scopes)
            .finish_non_exhaustive()
    }
}

crate::provider_factory! {
    /// Builds [`TicketProvider`]s for `provider = "example_ticket"`.
    pub struct TicketFactory => TicketProvider {
        kind: KIND,
        secret_fields: SECRET_FIELDS,
    }
}
