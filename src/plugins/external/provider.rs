//! The gateway's side of an out-of-process plugin: [`ExternalFactory`] builds one
//! [`ExternalProvider`] per credential (the plugin's `Validate` gives the credential's
//! facts), and the provider turns each [`Provider`] call into one call to the plugin, with
//! the operation's [`UpstreamCall`] registered for the plugin's `Host.Send`.

use super::supervisor::Supervisor;
use super::wire;
use crate::proto::plugin::v1 as pb;
use authgate_plugin_sdk::provider::BuildFuture;
use authgate_plugin_sdk::{
    AuthorizationRequest, Capabilities, CodeExchange, FetchRequest, IssuedToken, Provider,
    ProviderError, ProviderFactory, Secret, SettingsError, TokenTypeHint, UpstreamCall,
};
use std::sync::Arc;
use std::time::Duration;
use tonic::Request;
use url::Url;

/// Builds providers of one plugin's kind.
pub struct ExternalFactory {
    kind: &'static str,
    secret_fields: &'static [&'static str],
    plugin: Arc<Supervisor>,
}

impl ExternalFactory {
    /// The kind and the secret fields live as long as the process: the factory trait hands
    /// them out as `'static` (a few bytes per configured plugin).
    pub(super) fn new(plugin: Arc<Supervisor>) -> Self {
        let kind: &'static str = Box::leak(plugin.kind().to_owned().into_boxed_str());
        let fields: Vec<&'static str> = plugin
            .description()
            .secret_fields
            .iter()
            .map(|f| &*Box::leak(f.clone().into_boxed_str()))
            .collect();
        Self {
            kind,
            secret_fields: Box::leak(fields.into_boxed_slice()),
            plugin,
        }
    }

    /// The settings' secret values: every string under a secret field name, at any depth.
    fn secrets(&self, settings: &serde_json::Value) -> Vec<Secret> {
        fn walk(value: &serde_json::Value, fields: &[&str], out: &mut Vec<Secret>) {
            match value {
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        if fields.contains(&k.as_str()) {
                            every_string(v, out);
                        } else {
                            walk(v, fields, out);
                        }
                    }
                }
                serde_json::Value::Array(items) => {
                    items.iter().for_each(|v| walk(v, fields, out));
                }
                _ => {}
            }
        }
        /// Under a secret field everything is secret: a string, or the strings of a list.
        fn every_string(value: &serde_json::Value, out: &mut Vec<Secret>) {
            match value {
                serde_json::Value::String(s) => out.push(Secret::from(s.as_str())),
                serde_json::Value::Array(items) => items.iter().for_each(|v| every_string(v, out)),
                serde_json::Value::Object(map) => map.values().for_each(|v| every_string(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(settings, self.secret_fields, &mut out);
        out
    }

    fn unvalidated(&self, settings: serde_json::Value) -> Result<ExternalProvider, SettingsError> {
        if !settings.is_object() {
            return Err(SettingsError(format!(
                "{} settings: must be a table of fields",
                self.kind
            )));
        }
        let secrets = self.secrets(&settings);
        for s in &secrets {
            self.plugin.redactor().learn(s);
        }
        Ok(ExternalProvider {
            plugin: self.plugin.clone(),
            settings_json: Secret::from(settings.to_string()),
            secrets,
            facts: Facts::default(),
        })
    }

    async fn build_validated(
        &self,
        settings: serde_json::Value,
    ) -> Result<Arc<dyn Provider>, SettingsError> {
        let mut provider = self.unvalidated(settings)?;
        let settings_json = provider.settings_json.expose().to_owned();
        let answer = self
            .plugin
            .call("Validate", None, |mut client, _, timeout| {
                let mut req = Request::new(pb::ValidateRequest { settings_json });
                req.set_timeout(timeout);
                async move { client.validate(req).await }
            })
            .await
            .map_err(|e| {
                SettingsError(format!(
                    "{} settings could not be checked by the plugin: {e}",
                    self.kind
                ))
            })?;
        let scrub = |text: &str| {
            let scrubbed = self.plugin.redactor().scrub(text);
            authgate_plugin_sdk::redact::truncate_chars(&scrubbed, 1024)
        };
        if !answer.error.is_empty() {
            return Err(SettingsError(format!(
                "{} settings: {}",
                self.kind,
                scrub(&answer.error)
            )));
        }
        provider.facts = Facts::from(answer);
        if let Some(rt) = &provider.facts.configured_refresh_token {
            self.plugin.redactor().learn(rt);
            provider.secrets.push(rt.clone());
        }
        Ok(Arc::new(provider))
    }
}

impl ProviderFactory for ExternalFactory {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        self.secret_fields
    }

    /// The checks that need no call to the plugin (the config file's, before any port is
    /// bound): the provider is not validated and is only dropped. The gateway holds the
    /// ones [`ProviderFactory::build_async`] builds.
    fn build(&self, settings: serde_json::Value) -> Result<Arc<dyn Provider>, SettingsError> {
        Ok(Arc::new(self.unvalidated(settings)?))
    }

    fn build_async(&self, settings: serde_json::Value) -> BuildFuture<'_> {
        Box::pin(self.build_validated(settings))
    }
}

/// What the plugin's `Validate` said about one credential.
#[derive(Default)]
struct Facts {
    default_scopes: Vec<String>,
    requires_refresh_token: bool,
    configured_refresh_token: Option<Secret>,
    refresh_token_idle_lifetime: Option<Duration>,
}

impl From<pb::ValidateResponse> for Facts {
    fn from(v: pb::ValidateResponse) -> Self {
        Self {
            default_scopes: v.default_scopes,
            requires_refresh_token: v.requires_refresh_token,
            configured_refresh_token: (!v.configured_refresh_token.is_empty())
                .then(|| Secret::from(v.configured_refresh_token)),
            refresh_token_idle_lifetime: (v.refresh_token_idle_lifetime_seconds > 0)
                .then(|| Duration::from_secs(v.refresh_token_idle_lifetime_seconds)),
        }
    }
}

/// One credential on an out-of-process plugin.
pub struct ExternalProvider {
    plugin: Arc<Supervisor>,
    /// The settings as sent to the plugin on every call (secrets included).
    settings_json: Secret,
    secrets: Vec<Secret>,
    facts: Facts,
}

impl std::fmt::Debug for ExternalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalProvider")
            .field("kind", &self.plugin.kind())
            .finish_non_exhaustive()
    }
}

impl ExternalProvider {
    fn settings(&self) -> String {
        self.settings_json.expose().to_owned()
    }

    fn error(&self, error: pb::Error, call: &UpstreamCall) -> ProviderError {
        wire::provider_error(
            self.plugin.kind(),
            error,
            call.redactor(),
            self.plugin.call_timeout(),
        )
    }

    fn no_result(&self, rpc: &str) -> ProviderError {
        ProviderError::transient(
            wire::PLUGIN_STEP,
            format!(
                "plugin `{}` answered {rpc} with neither a result nor an error",
                self.plugin.kind()
            ),
        )
    }

    fn token(
        &self,
        rpc: &str,
        result: pb::TokenResult,
        call: &UpstreamCall,
    ) -> Result<IssuedToken, ProviderError> {
        match result.result {
            Some(pb::token_result::Result::Token(t)) => {
                wire::issued_token(self.plugin.kind(), t, call.redactor())
            }
            Some(pb::token_result::Result::Error(e)) => Err(self.error(e, call)),
            None => Err(self.no_result(rpc)),
        }
    }
}

/// A request with the call's deadline, so the plugin knows how long it has.
fn with_deadline<T>(message: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(message);
    req.set_timeout(timeout);
    req
}

#[async_trait::async_trait]
impl Provider for ExternalProvider {
    fn capabilities(&self) -> Capabilities {
        self.plugin.description().capabilities
    }

    fn default_scopes(&self) -> Vec<String> {
        self.facts.default_scopes.clone()
    }

    fn secrets(&self) -> Vec<Secret> {
        self.secrets.clone()
    }

    fn configured_refresh_token(&self) -> Option<Secret> {
        self.facts.configured_refresh_token.clone()
    }

    fn requires_refresh_token(&self) -> bool {
        self.facts.requires_refresh_token
    }

    fn refresh_token_idle_lifetime(&self) -> Option<Duration> {
        self.facts.refresh_token_idle_lifetime
    }

    async fn fetch(&self, req: FetchRequest<'_>) -> Result<IssuedToken, ProviderError> {
        if let Some(rt) = req.refresh_token {
            req.call.redactor().learn(rt);
        }
        let message = |call_id| pb::FetchRequest {
            call_id,
            settings_json: self.settings(),
            scopes: req.scopes.as_slice().to_vec(),
            refresh_token: req
                .refresh_token
                .map(|s| s.expose().to_owned())
                .unwrap_or_default(),
        };
        let result = self
            .plugin
            .call(
                "Fetch",
                Some(req.call),
                |mut client, id, timeout| async move {
                    client.fetch(with_deadline(message(id), timeout)).await
                },
            )
            .await?;
        self.token("Fetch", result, req.call)
    }

    async fn revoke(
        &self,
        call: &UpstreamCall,
        token: &Secret,
        hint: TokenTypeHint,
    ) -> Result<(), ProviderError> {
        if !self.capabilities().revoke {
            return Err(ProviderError::Unsupported("revocation".into()));
        }
        call.redactor().learn(token);
        let message = |call_id| pb::RevokeRequest {
            call_id,
            settings_json: self.settings(),
            token: token.expose().to_owned(),
            hint: match hint {
                TokenTypeHint::AccessToken => pb::TokenTypeHint::AccessToken,
                TokenTypeHint::RefreshToken => pb::TokenTypeHint::RefreshToken,
            }
            .into(),
        };
        let answer = self
            .plugin
            .call("Revoke", Some(call), |mut client, id, timeout| async move {
                client.revoke(with_deadline(message(id), timeout)).await
            })
            .await?;
        match answer.error {
            Some(e) => Err(self.error(e, call)),
            None => Ok(()),
        }
    }

    async fn authorization_url(
        &self,
        call: &UpstreamCall,
        req: &AuthorizationRequest,
    ) -> Result<Url, ProviderError> {
        if !self.capabilities().authorization_code {
            return Err(ProviderError::Unsupported("authorization code flow".into()));
        }
        let message = |call_id| pb::AuthorizationUrlRequest {
            call_id,
            settings_json: self.settings(),
            scopes: req.scopes.as_slice().to_vec(),
            state: req.state.clone(),
            code_challenge: req.code_challenge.clone().unwrap_or_default(),
            redirect_uri: req.redirect_uri.to_string(),
        };
        let answer = self
            .plugin
            .call(
                "AuthorizationUrl",
                Some(call),
                |mut client, id, timeout| async move {
                    client
                        .authorization_url(with_deadline(message(id), timeout))
                        .await
                },
            )
            .await?;
        match answer.result {
            Some(pb::authorization_url_response::Result::Url(u)) => Url::parse(&u)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    ProviderError::config(format!(
                        "plugin `{}` returned an authorization URL that is not an http(s) URL",
                        self.plugin.kind()
                    ))
                }),
            Some(pb::authorization_url_response::Result::Error(e)) => Err(self.error(e, call)),
            None => Err(self.no_result("AuthorizationUrl")),
        }
    }

    async fn exchange_code(
        &self,
        call: &UpstreamCall,
        req: CodeExchange,
    ) -> Result<IssuedToken, ProviderError> {
        if !self.capabilities().authorization_code {
            return Err(ProviderError::Unsupported("authorization code flow".into()));
        }
        call.redactor().learn(&req.code);
        if let Some(v) = &req.code_verifier {
            call.redactor().learn(v);
        }
        let message = |call_id| pb::ExchangeCodeRequest {
            call_id,
            settings_json: self.settings(),
            code: req.code.expose().to_owned(),
            code_verifier: req
                .code_verifier
                .as_ref()
                .map(|v| v.expose().to_owned())
                .unwrap_or_default(),
            redirect_uri: req.redirect_uri.to_string(),
        };
        let result = self
            .plugin
            .call(
                "ExchangeCode",
                Some(call),
                |mut client, id, timeout| async move {
                    client
                        .exchange_code(with_deadline(message(id), timeout))
                        .await
                },
            )
            .await?;
        self.token("ExchangeCode", result, call)
    }
}
