//! Credential management at run time: create, replace, inspect and delete credentials, the
//! authorization-code (3-legged) flow with its callback, and the keep-alive that refreshes
//! refresh tokens before they expire while idle.
//!
//! Secrets are write-only: settings are stored encrypted, and every view of a credential is
//! built without them.

use crate::api::convert::normalize_numbers;
use crate::broker::{BrokerError, CredentialRuntime, TokenBroker, TokenRequest};
use crate::clock::{Clock, UnixMillis};
use crate::config::validate_id;
use crate::events::EventKind;
use crate::plugins;
use crate::store::crypto::SecretSlot;
use crate::store::{CredentialRecord, CredentialStatus};
use authgate_plugin_sdk::redact::is_secret_field;
use authgate_plugin_sdk::{
    AuthorizationRequest, CodeExchange, ProviderError, ScopeSet, Secret, TokenTypeHint,
    UpstreamCall,
};
use base64::Engine;
use dashmap::DashMap;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How long a started authorization may take (the user's login and consent).
pub const AUTHORIZATION_TTL: Duration = Duration::from_secs(600);

/// A credential as the API shows it: never a secret.
#[derive(Debug, Clone)]
pub struct CredentialView {
    pub record: CredentialRecord,
    /// Settings without secret fields.
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub secret_fields_set: Vec<String>,
    pub has_refresh_token: bool,
    /// (scopes, expires_at_ms, issued_at_ms) of tokens held in memory.
    pub tokens: Vec<(Vec<String>, UnixMillis, UnixMillis)>,
    pub capabilities: Vec<&'static str>,
}

/// An authorization waiting for the provider's redirect.
#[derive(Clone)]
struct PendingAuthorization {
    tenant: String,
    credential_id: String,
    provider: String,
    /// The scopes as StartAuthorization named them: the cache key of the exchanged token.
    scopes: ScopeSet,
    code_verifier: Option<Secret>,
    redirect_uri: Url,
    expires_at_ms: UnixMillis,
    caller: Option<String>,
    /// Set once the callback used it; kept until expiry so a replay is recognised.
    consumed: bool,
}

/// What the callback page tells the human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackOutcome {
    pub success: bool,
    pub title: String,
    pub detail: String,
}

impl CallbackOutcome {
    fn fail(title: &str, detail: impl Into<String>) -> Self {
        Self {
            success: false,
            title: title.to_owned(),
            detail: detail.into(),
        }
    }
}

/// The query of a provider's redirect to `/oauth/callback`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

#[derive(Clone)]
pub struct CredentialManager {
    broker: TokenBroker,
    clock: Arc<dyn Clock>,
    pending: Arc<DashMap<String, PendingAuthorization>>,
    redirect_uri: Arc<std::sync::RwLock<Url>>,
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn invalid(msg: impl Into<String>) -> BrokerError {
    BrokerError::InvalidArgument(msg.into())
}

impl CredentialManager {
    pub fn new(broker: TokenBroker, clock: Arc<dyn Clock>, redirect_uri: Url) -> Self {
        Self {
            broker,
            clock,
            pending: Arc::new(DashMap::new()),
            redirect_uri: Arc::new(std::sync::RwLock::new(redirect_uri)),
        }
    }

    /// The redirect URI registered with providers (known once the HTTP port is bound).
    pub fn set_redirect_uri(&self, uri: Url) {
        *self
            .redirect_uri
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = uri;
    }

    pub fn redirect_uri(&self) -> Url {
        self.redirect_uri
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn check_ids(tenant: &str, id: &str) -> Result<(), BrokerError> {
        validate_id("tenant", tenant).map_err(|m| invalid(format!("tenant: {m}")))?;
        validate_id("credential_id", id).map_err(|m| invalid(format!("credential_id: {m}")))
    }

    fn not_found(tenant: &str, id: &str) -> BrokerError {
        BrokerError::NotFound {
            tenant: tenant.to_owned(),
            credential: id.to_owned(),
        }
    }

    /// Creates or replaces an API-managed credential.
    pub async fn put(
        &self,
        tenant: &str,
        id: &str,
        provider: &str,
        settings: serde_json::Value,
        caller: Option<&str>,
    ) -> Result<CredentialView, BrokerError> {
        Self::check_ids(tenant, id)?;
        let factory = plugins::factory(provider).ok_or_else(|| {
            invalid(format!(
                "provider: unknown provider `{provider}`; use one of: {}",
                plugins::kinds().join(", ")
            ))
        })?;
        let settings = normalize_numbers(settings);
        let built = factory
            .build(settings.clone())
            .map_err(|e| invalid(format!("settings: {e}")))?;
        let store = self.broker.store();
        let existing = store.get_credential(tenant, id).await?;
        if existing.as_ref().is_some_and(|e| e.source == "config") {
            return Err(BrokerError::Misconfigured(format!(
                "credential `{id}` of tenant `{tenant}` is managed by the config file; change it there"
            )));
        }
        let now = self.clock.now_ms();
        let configured_rt = built.configured_refresh_token();
        let status = if built.requires_refresh_token() && configured_rt.is_none() {
            CredentialStatus::NeedsAuthorization
        } else {
            CredentialStatus::Active
        };
        let rec = CredentialRecord {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            provider: provider.to_owned(),
            settings_sealed: self.broker.cipher().seal(
                SecretSlot {
                    tenant,
                    credential: id,
                    field: "settings",
                },
                settings.to_string().as_bytes(),
            ),
            settings_digest: self.broker.settings_digest(provider, &settings),
            status,
            last_error: None,
            source: "api".into(),
            created_at_ms: existing.as_ref().map_or(now, |e| e.created_at_ms),
            updated_at_ms: now,
        };
        store.put_credential(&rec).await?;
        store.delete_tokens(tenant, id, None).await?;
        // Replacing a credential starts it over: a refresh token of the old settings may
        // belong to another client, so only the one given now (if any) is kept.
        let sealed_rt = configured_rt
            .as_ref()
            .map(|rt| self.broker.seal_refresh_token(tenant, id, rt));
        store
            .put_refresh_token(tenant, id, sealed_rt.as_deref(), now)
            .await?;
        self.broker.load_credential(rec.clone()).await?;
        let events = self.broker.events();
        let what = if existing.is_some() {
            "replaced"
        } else {
            "created"
        };
        events
            .record(
                tenant,
                id,
                EventKind::CredentialChanged,
                caller,
                format!("credential {what} through the API (provider {provider})"),
                None,
            )
            .await;
        let before = existing.map(|e| e.status);
        if before != Some(status) {
            events
                .record(
                    tenant,
                    id,
                    EventKind::StatusChanged,
                    caller,
                    format!(
                        "{} → {}: credential {what}",
                        before.map_or("NONE", CredentialStatus::as_str),
                        status.as_str()
                    ),
                    None,
                )
                .await;
        }
        self.get(tenant, id).await
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<CredentialView, BrokerError> {
        Self::check_ids(tenant, id)?;
        let rec = self
            .broker
            .store()
            .get_credential(tenant, id)
            .await?
            .ok_or_else(|| Self::not_found(tenant, id))?;
        self.view(rec).await
    }

    async fn view(&self, rec: CredentialRecord) -> Result<CredentialView, BrokerError> {
        let plain = self
            .broker
            .cipher()
            .open(
                SecretSlot {
                    tenant: &rec.tenant,
                    credential: &rec.id,
                    field: "settings",
                },
                &rec.settings_sealed,
            )
            .map_err(|e| BrokerError::Misconfigured(e.to_string()))?;
        let all: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&plain).unwrap_or_default();
        let secret_names = plugins::factory(&rec.provider)
            .map(|f| f.secret_fields())
            .unwrap_or(&[]);
        let mut settings = serde_json::Map::new();
        let mut secret_fields_set = Vec::new();
        for (k, v) in all {
            if secret_names.contains(&k.as_str()) || is_secret_field(&k) {
                secret_fields_set.push(k);
            } else {
                settings.insert(k, v);
            }
        }
        let has_refresh_token = self
            .broker
            .store()
            .get_refresh_token(&rec.tenant, &rec.id)
            .await?
            .is_some();
        let runtime = self.broker.credential(&rec.tenant, &rec.id);
        let capabilities = runtime
            .as_ref()
            .map(|c| {
                let caps = c.provider.capabilities();
                [
                    (caps.revoke, "revoke"),
                    (caps.authorization_code, "authorization_code"),
                    (caps.pkce, "pkce"),
                    (caps.refresh_token, "refresh_token"),
                ]
                .into_iter()
                .filter_map(|(on, name)| on.then_some(name))
                .collect()
            })
            .unwrap_or_default();
        let tokens = self
            .broker
            .cached_tokens(&rec.tenant, &rec.id)
            .iter()
            .map(|t| (t.scopes.clone(), t.expires_at_ms, t.issued_at_ms))
            .collect();
        Ok(CredentialView {
            record: rec,
            settings,
            secret_fields_set,
            has_refresh_token,
            tokens,
            capabilities,
        })
    }

    /// A tenant's credentials ordered by id, `limit` after `after`.
    pub async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<CredentialView>, bool), BrokerError> {
        validate_id("tenant", tenant).map_err(|m| invalid(format!("tenant: {m}")))?;
        let mut recs: Vec<CredentialRecord> = self
            .broker
            .store()
            .list_credentials()
            .await?
            .into_iter()
            .filter(|r| r.tenant == tenant && after.is_none_or(|a| r.id.as_str() > a))
            .collect();
        recs.sort_by(|a, b| a.id.cmp(&b.id));
        let more = recs.len() > limit;
        recs.truncate(limit);
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            out.push(self.view(r).await?);
        }
        Ok((out, more))
    }

    /// Deletes a credential with its tokens, refresh token and events; optionally revokes
    /// its tokens at the provider first.
    pub async fn delete(
        &self,
        tenant: &str,
        id: &str,
        revoke_upstream: bool,
        caller: Option<&str>,
    ) -> Result<(bool, u32), BrokerError> {
        Self::check_ids(tenant, id)?;
        let store = self.broker.store();
        let Some(rec) = store.get_credential(tenant, id).await? else {
            return Err(Self::not_found(tenant, id));
        };
        if rec.source == "config" {
            return Err(BrokerError::Misconfigured(format!(
                "credential `{id}` of tenant `{tenant}` is managed by the config file; remove it there"
            )));
        }
        let mut revoked = 0;
        if revoke_upstream {
            if let Some(cred) = self.broker.credential(tenant, id) {
                revoked = self.revoke_everything(&cred, caller).await;
            }
        }
        self.broker.forget_credential(tenant, id);
        let deleted = store.delete_credential(tenant, id).await?;
        tracing::info!(
            tenant,
            credential = id,
            revoked,
            "credential deleted with its tokens and events"
        );
        Ok((deleted, revoked))
    }

    async fn revoke_everything(&self, cred: &CredentialRuntime, caller: Option<&str>) -> u32 {
        if !cred.provider.capabilities().revoke {
            return 0;
        }
        let call = UpstreamCall::new(
            self.broker.http().clone(),
            self.broker.events().sink(&cred.tenant, &cred.id, caller),
            cred.call_redactor(),
        );
        let mut n = 0;
        for tok in self.broker.cached_tokens(&cred.tenant, &cred.id) {
            call.redactor().learn(&tok.access_token);
            if cred
                .provider
                .revoke(&call, &tok.access_token, TokenTypeHint::AccessToken)
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        if let Some(rt) = cred.refresh_token() {
            if cred
                .provider
                .revoke(&call, &rt, TokenTypeHint::RefreshToken)
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Starts the authorization-code flow: a single-use `state` (256 random bits) bound to
    /// the credential, PKCE S256 unless the provider cannot do it, valid 10 minutes.
    pub async fn start_authorization(
        &self,
        tenant: &str,
        id: &str,
        scopes: ScopeSet,
        caller: Option<&str>,
    ) -> Result<(Url, String, UnixMillis, Url), BrokerError> {
        Self::check_ids(tenant, id)?;
        let cred = self
            .broker
            .credential(tenant, id)
            .ok_or_else(|| Self::not_found(tenant, id))?;
        let caps = cred.provider.capabilities();
        if !caps.authorization_code {
            return Err(BrokerError::Misconfigured(format!(
                "credential `{id}` (provider {}) does not use the authorization-code flow; it gets tokens without a browser step",
                cred.provider_kind
            )));
        }
        let now = self.clock.now_ms();
        self.pending.retain(|_, p| p.expires_at_ms > now);
        let state = random_token(32);
        let verifier = caps.pkce.then(|| random_token(32));
        let challenge = verifier.as_ref().map(|v| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes()))
        });
        let redirect_uri = self.redirect_uri();
        let call = UpstreamCall::new(
            self.broker.http().clone(),
            self.broker.events().sink(tenant, id, caller),
            cred.call_redactor(),
        );
        let url = cred
            .provider
            .authorization_url(
                &call,
                &AuthorizationRequest {
                    scopes: scopes.clone(),
                    state: state.clone(),
                    code_challenge: challenge,
                    redirect_uri: redirect_uri.clone(),
                },
            )
            .await
            .map_err(provider_error)?;
        let expires_at_ms = now + AUTHORIZATION_TTL.as_millis() as i64;
        self.pending.insert(
            state.clone(),
            PendingAuthorization {
                tenant: tenant.to_owned(),
                credential_id: id.to_owned(),
                provider: cred.provider_kind.clone(),
                scopes,
                code_verifier: verifier.map(Secret::from),
                redirect_uri: redirect_uri.clone(),
                expires_at_ms,
                caller: caller.map(str::to_owned),
                consumed: false,
            },
        );
        self.broker
            .events()
            .record(
                tenant,
                id,
                EventKind::StatusChanged,
                caller,
                "authorization started; waiting for the provider's redirect (valid 10 minutes)"
                    .into(),
                None,
            )
            .await;
        Ok((url, state, expires_at_ms, redirect_uri))
    }

    /// Handles the provider's redirect. `received_uri` is the callback URL as this request
    /// reached us (scheme, host, port, path), compared exactly with the registered one.
    pub async fn complete_authorization(
        &self,
        q: CallbackQuery,
        received_uri: &str,
    ) -> CallbackOutcome {
        let now = self.clock.now_ms();
        let Some(state) = q.state.as_deref().filter(|s| !s.is_empty()) else {
            return CallbackOutcome::fail(
                "Missing state",
                "This page is only reached through an authorization started by authgate. Start again with `authgate authorize`.",
            );
        };
        // Take the state out under the map's lock: two concurrent redirects with the same
        // state cannot both get past this point.
        let pending = match self.pending.get_mut(state) {
            None => {
                self.record_unknown_state().await;
                return CallbackOutcome::fail(
                    "Unknown authorization request",
                    "authgate did not start this authorization (or restarted since). Start again with `authgate authorize`.",
                );
            }
            Some(mut p) => {
                let snapshot = p.clone();
                p.consumed = true;
                snapshot
            }
        };
        let (tenant, id) = (pending.tenant.as_str(), pending.credential_id.as_str());
        let caller = pending.caller.as_deref();
        let record = |message: String| async move {
            self.broker
                .events()
                .record(tenant, id, EventKind::TokenFailed, caller, message, None)
                .await;
        };
        if pending.consumed {
            record(
                "authorization callback rejected: state already used (replayed redirect)".into(),
            )
            .await;
            return CallbackOutcome::fail(
                "Authorization already completed",
                "This authorization link was already used. Start again with `authgate authorize` if you need to.",
            );
        }
        if now >= pending.expires_at_ms {
            record("authorization callback rejected: state expired".into()).await;
            return CallbackOutcome::fail(
                "Authorization expired",
                "More than 10 minutes passed since the authorization started. Start again with `authgate authorize`.",
            );
        }
        if received_uri != pending.redirect_uri.as_str() {
            record(format!(
                "authorization callback rejected: reached at {received_uri}, but the registered redirect URI is {}",
                pending.redirect_uri
            ))
            .await;
            return CallbackOutcome::fail(
                "Redirect URI mismatch",
                format!(
                    "The provider sent the browser to {received_uri}, not to the registered {}. Fix the redirect URI registered with the provider or authgate's server.public_url.",
                    pending.redirect_uri
                ),
            );
        }
        if let Some(error) = q.error.as_deref() {
            let desc = q.error_description.as_deref().unwrap_or("");
            let shown = format!(
                "{error}{}",
                if desc.is_empty() {
                    String::new()
                } else {
                    format!(": {desc}")
                }
            );
            let shown: String = shown.chars().take(300).collect();
            record(format!("authorization refused by the provider: {shown}")).await;
            let detail = if error == "access_denied" {
                "Consent was denied, so authgate has no access. Run `authgate authorize` again to retry.".to_owned()
            } else {
                format!("The provider answered `{shown}`. Run `authgate authorize` again; if it repeats, check the credential's settings.")
            };
            return CallbackOutcome::fail("Authorization refused", detail);
        }
        let Some(code) = q.code.filter(|c| !c.is_empty()) else {
            record("authorization callback rejected: no code in the redirect".into()).await;
            return CallbackOutcome::fail(
                "No authorization code",
                "The provider's redirect carried no code. Start again.",
            );
        };
        let Some(cred) = self
            .broker
            .credential(tenant, id)
            .filter(|c| c.provider_kind == pending.provider)
        else {
            record(
                "authorization callback rejected: the credential changed or was deleted meanwhile"
                    .into(),
            )
            .await;
            return CallbackOutcome::fail(
                "Credential changed",
                "The credential was deleted or changed during the authorization. Start again.",
            );
        };
        let call = UpstreamCall::new(
            self.broker.http().clone(),
            self.broker
                .events()
                .sink(tenant, id, pending.caller.as_deref()),
            cred.call_redactor(),
        );
        let code = Secret::from(code);
        call.redactor().learn(&code);
        // Exchanged exactly once: a code is single-use, so no automatic retry.
        let exchanged = cred
            .provider
            .exchange_code(
                &call,
                CodeExchange {
                    code,
                    code_verifier: pending.code_verifier.clone(),
                    redirect_uri: pending.redirect_uri.clone(),
                },
            )
            .await;
        match exchanged {
            Ok(issued) => {
                match self
                    .broker
                    .complete_authorization(tenant, id, &pending.scopes, issued, pending.caller.as_deref())
                    .await
                {
                    Ok(()) => CallbackOutcome {
                        success: true,
                        title: "authgate is authorized".into(),
                        detail: format!(
                            "Credential `{id}` of tenant `{tenant}` is active. You can close this window."
                        ),
                    },
                    Err(e) => {
                        record(format!("authorization code exchanged but could not be stored: {e}")).await;
                        CallbackOutcome::fail("Could not store the authorization", format!("{e}"))
                    }
                }
            }
            Err(e) => {
                record(format!("authorization code exchange failed: {e}")).await;
                CallbackOutcome::fail(
                    "Code exchange failed",
                    format!("{e}. Start again with `authgate authorize`."),
                )
            }
        }
    }

    async fn record_unknown_state(&self) {
        tracing::warn!("authorization callback with an unknown state (forged, expired long ago, or from before a restart)");
        self.broker
            .events()
            .record(
                "_authgate",
                "_callback",
                EventKind::TokenFailed,
                None,
                "authorization callback rejected: unknown state".into(),
                None,
            )
            .await;
    }

    /// Refreshes, in the background, every credential whose refresh token would expire
    /// while idle: once it has been unused for two thirds of its idle lifetime.
    pub fn spawn_keep_alive(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.keep_alive_pass().await;
            }
        })
    }

    pub async fn keep_alive_pass(&self) {
        let now = self.clock.now_ms();
        for cred in self.broker.credentials() {
            let Some(idle) = cred.provider.refresh_token_idle_lifetime() else {
                continue;
            };
            if cred.status() != CredentialStatus::Active || cred.refresh_token().is_none() {
                continue;
            }
            let threshold = (idle.as_millis() as i64) * 2 / 3;
            if now - cred.refresh_token_used_at_ms() < threshold {
                continue;
            }
            let req = TokenRequest {
                tenant: cred.tenant.clone(),
                credential_id: cred.id.clone(),
                scopes: ScopeSet::default(),
                min_ttl: Duration::ZERO,
                force_refresh: true,
                caller: Some("keep-alive".into()),
            };
            match self.broker.get_token(&req, None).await {
                Ok(_) => {
                    tracing::debug!(tenant = %cred.tenant, credential = %cred.id, "refresh token kept alive")
                }
                Err(e) => {
                    tracing::warn!(tenant = %cred.tenant, credential = %cred.id, error = %e, "refresh-token keep-alive failed")
                }
            }
        }
    }
}

fn provider_error(e: ProviderError) -> BrokerError {
    match e {
        ProviderError::Transient { .. } | ProviderError::TimedOut { .. } => {
            BrokerError::Unavailable {
                message: format!("{e}; retry shortly"),
                retry_after: e.retry_after(),
            }
        }
        other => BrokerError::Misconfigured(other.to_string()),
    }
}
